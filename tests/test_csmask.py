"""mask.method csmask / csmask+scl: ukis-csmask's trained ONNX models (shipped in its wheel) on
real Sentinel-2 data, per chunk with a halo, in full runs, on a distributed cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr

import s2mosaic
from s2mosaic._cube import load_cube
from s2mosaic._grid import native_geobox
from s2mosaic._spec import MaskSpec, MosaicSpec
from s2mosaic.errors import MissingDependencyError, SpecError
from s2mosaic.masks import MaskContext, valid_mask

from .oracle import assert_identical_outputs
from .test_real_data import BARBELLINO_BBOX, _items

pytest.importorskip("ukis_csmask", reason="ukis-csmask is not installed: "
                    "pip install 's2mosaic-stream[csmask]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: "
                    "pip install 's2mosaic-stream[csmask]'")

from s2mosaic.masks.csmask import (
    NO_INPUT,
    csmask_classes,
    csmask_level,
    import_csmask,
    session_count,
)

EOLEARN_PERIOD = ["2015-07-01", "2015-09-30"]


def _kappa(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.ravel().astype(bool), ref.ravel().astype(bool)
    po = float((pred == ref).mean())
    p1, r1 = pred.mean(), ref.mean()
    pe = float(p1 * r1 + (1 - p1) * (1 - r1))
    return (po - pe) / (1 - pe)


def _read(items: list[Any], key: str) -> np.ndarray:
    out = []
    for item in items:
        with rasterio.open(item.assets[key].get_absolute_href()) as src:
            out.append(src.read(1))
    return np.stack(out)


def _eolearn_cube(s2_data: Path, bands: int, chunks: int = 1024,
                  out_bands: tuple[str, ...] = ("B04",)) -> tuple[xr.Dataset, MosaicSpec, Any]:
    items = _items(s2_data, "sentinel-2-l1c-eolearn")
    gbox = native_geobox(items[0], "B04")
    spec = MosaicSpec(aoi=[0, 0, 1, 1], period=EOLEARN_PERIOD,
                      source={"stac": str(s2_data / "catalog.json"),
                              "collection": "sentinel-2-l1c-eolearn"},
                      bands=list(out_bands), mask={"method": "csmask", "csmask_bands": bands},
                      runtime={"chunks": chunks, "scheduler": "synchronous"})
    return load_cube(items, spec, gbox), spec, gbox


@pytest.mark.parametrize("bands", [4, 6])
def test_eolearn_l1c_dates_and_pixels_agree_with_clm(s2_data: Path, bands: int) -> None:
    """Against Sentinel Hub's CLM on the 5 real L1C dates (two fully cloudy, three clear): every
    date is classified as CLM classifies it, and the pixels agree with kappa >= 0.9."""
    cube, spec, gbox = _eolearn_cube(s2_data, bands)
    assert csmask_level(cube, spec.mask) == "L1C"  # from the items (MSIL1C, -l1c collection)
    with dask.config.set(scheduler="synchronous"):
        classes = csmask_classes(cube, spec.mask, MaskContext(geobox=gbox, gpu=False)).values
    clm = _read(_items(s2_data, "sentinel-2-l1c-eolearn"), "CLM").astype(bool)
    assert classes.shape == clm.shape and set(np.unique(classes)) <= {0, 1, 2}
    cloud = classes == 1
    cloudy_dates = cloud.mean(axis=(1, 2)) > 0.5
    np.testing.assert_array_equal(cloudy_dates, clm.mean(axis=(1, 2)) > 0.5)
    assert cloudy_dates.sum() == 2
    assert _kappa(cloud, clm) >= 0.9


def test_chunked_with_halo_agrees_with_whole_image(s2_data: Path) -> None:
    """Default chunking (1024 px) and halo (64 px) on 1098 × 600 px of the real 29RKH tile
    (100 m): 2 chunks, against one window over the whole area."""
    items = _items(s2_data, "sentinel-2-l2a", "29RKH")
    gbox = native_geobox(items[0], "B04")[:, :600]
    spec = MosaicSpec(aoi=[0, 0, 1, 1], period=["2020-01-01", "2020-12-31"],
                      source={"stac": str(s2_data / "catalog.json")}, bands=["B04"],
                      mask={"method": "csmask"}, runtime={"scheduler": "synchronous"})
    assert spec.runtime.chunks == 1024 and spec.mask.csmask_halo == 64
    ctx = MaskContext(geobox=gbox, gpu=False)
    chunked_cube = load_cube(items, spec, gbox)
    assert chunked_cube["B04"].data.numblocks == (1, 2, 1)
    whole_cube = load_cube(items, spec.replace(runtime={"chunks": 2048}), gbox)
    with dask.config.set(scheduler="synchronous"):
        chunked = csmask_classes(chunked_cube, spec.mask, ctx).values
        whole = csmask_classes(whole_cube, spec.mask, ctx).values
    assert (whole == 1).any() and (whole == 0).any()  # both classes present: not trivial
    assert (chunked == whole).mean() >= 0.99


def test_nodata_is_never_clear_and_masker_only_bands_do_not_shrink_validity(
        s2_data: Path) -> None:
    """An output band's nodata is invalid; nodata in SWIR loaded only for the 6-band model
    leaves the output bands' validity as it was (the masker has no input there: NO_INPUT)."""
    cube, spec, gbox = _eolearn_cube(s2_data, 6, chunks=64)
    assert "mask_B11" in cube and "B11" not in cube
    red = cube["B04"].values.copy()
    red[:, :10, :] = 0
    swir = cube["mask_B11"].values.copy()
    swir[:, 50:70, :] = 0  # whole 30 m blocks (rows 51-68) without SWIR
    holed = cube.assign(B04=cube["B04"].copy(data=red), mask_B11=cube["mask_B11"].copy(data=swir))
    ctx = MaskContext(geobox=gbox, gpu=False)
    with dask.config.set(scheduler="synchronous"):
        before = valid_mask(cube, ["B04"], spec.mask, ctx).values
        after = valid_mask(holed, ["B04"], spec.mask, ctx).values
        classes = csmask_classes(holed, spec.mask, ctx).values
    assert not after[:, :10, :].any()
    assert (classes[:, 51:69, :] == NO_INPUT).all()
    clear = ~np.isin(np.arange(5), [1, 2])  # the three clear dates
    np.testing.assert_array_equal(after[clear][:, 51:69], before[clear][:, 51:69])
    assert after[clear][:, 51:69].all()


def _barbellino_spec(s2_data: Path, tmp: Path, method: str) -> MosaicSpec:
    return MosaicSpec(aoi=BARBELLINO_BBOX, period=["2017-01-01", "2019-12-31"],
                      source={"stac": str(s2_data / "catalog.json")}, bands=["red", "nir"],
                      grid={"resolution": "native"}, mask={"method": method},
                      output={"zarr": tmp / "m.zarr", "cog": tmp / "m.tif"},
                      runtime={"chunks": 16, "scheduler": "synchronous"})


def test_run_csmask_scl_on_real_l2a(s2_data: Path, tmp_path: Path) -> None:
    """A full run on the Barbellino L2A pair: csmask+scl keeps a subset of what SCL alone keeps,
    and records the model in the provenance."""
    union = _barbellino_spec(s2_data, tmp_path / "union", "csmask+scl")
    scl = _barbellino_spec(s2_data, tmp_path / "scl", "scl")
    report = s2mosaic.run(union)
    s2mosaic.run(scl)
    assert report.items == 2
    with rasterio.open(union.output.cog) as a, rasterio.open(scl.output.cog) as b:
        count_union, count_scl = a.read(3), b.read(3)
    assert (count_union <= count_scl).all() and (count_union > 0).any()
    meta = union.output.cog.with_suffix(".metadata.json")
    assert '"csmask"' in meta.read_text()


def test_demo_run_cluster_equals_synchronous(demo_catalog: Path, tmp_path: Path,
                                             dask_client: Any) -> None:
    """csmask+scl on the demo catalog: the same bytes from a distributed LocalCluster (two
    worker processes) as from the synchronous scheduler; one ONNX session per worker."""
    from s2mosaic.demo import demo_spec

    def spec(out: Path, scheduler: str | None) -> MosaicSpec:
        runtime: dict[str, Any] = {"chunks": 128}
        if scheduler:
            runtime["scheduler"] = scheduler
        return demo_spec(demo_catalog, out).replace(
            aoi=[11.995, 47.497, 12.005, 47.503], mask={"method": "csmask+scl"},
            output={"zarr": out / "m.zarr", "cog": out / "m.tif"}, runtime=runtime)

    sync, clus = spec(tmp_path / "sync", "synchronous"), spec(tmp_path / "cluster", None)
    s2mosaic.run(sync)
    s2mosaic.run(clus, client=dask_client)
    assert_identical_outputs(sync.output, clus.output)
    sessions = dask_client.run(session_count)
    assert sorted(sessions.values()) in ([0, 1], [1, 1])  # at most one per worker process
    assert sum(sessions.values()) >= 1
    z = xr.open_zarr(sync.output.zarr, mask_and_scale=False)
    assert (z["count"].values > 0).mean() > 0.8  # the grid's corners outside the AOI are nodata


def test_missing_extra_names_the_pip_line(monkeypatch: pytest.MonkeyPatch, s2_data: Path) -> None:
    cube, spec, gbox = _eolearn_cube(s2_data, 4)
    for module in ("ukis_csmask", "onnxruntime"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # import raises ImportError
            with pytest.raises(MissingDependencyError) as err:
                csmask_classes(cube, spec.mask, MaskContext(geobox=gbox, gpu=False))
            assert "pip install 's2mosaic-stream[csmask]'" in str(err.value)
            assert "mask.method: csmask" in str(err.value)
    import_csmask()  # restored


@pytest.mark.parametrize(("fields", "match"), [
    ({"csmask_bands": 5}, r"csmask_bands: invalid value 5; expected 4 .* or 6"),
    ({"csmask_bands": True}, r"csmask_bands: invalid value True"),
    ({"csmask_level": "L3"}, r"csmask_level: invalid value 'L3'; expected one of \['L1C', 'L2A'\]"),
    ({"csmask_resolution": 5}, r"csmask_resolution: invalid value 5; expected a number >= 10"),
    ({"csmask_halo": -1}, r"csmask_halo: invalid value -1; expected an integer >= 0"),
    ({"csmask_batch_size": 0}, r"csmask_batch_size: invalid value 0"),
    ({"method": "csmsk"}, r"method: invalid value 'csmsk'; valid values are .*'csmask', 'csmask\+scl'"),
])
def test_spec_validation(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        MaskSpec(**fields)


def test_spec_fields_and_methods() -> None:
    m = MaskSpec(method="csmask+scl", csmask_level="l2a", csmask_bands=6)
    assert m.csmask_level == "L2A" and m.uses_scl and m.uses_csmask and not m.uses_ocm
    assert not MaskSpec(method="csmask").uses_scl


def test_level_from_items_or_spec(s2_data: Path) -> None:
    cube, spec, _ = _eolearn_cube(s2_data, 4)
    assert csmask_level(cube, spec.mask) == "L1C"
    assert csmask_level(cube, MaskSpec(method="csmask", csmask_level="L2A")) == "L2A"
    for levels in (["L1C", "L2A"], ["unknown"]):
        with pytest.raises(SpecError, match=r"mask.csmask_level.*set mask.csmask_level to L1C"):
            csmask_level(cube.assign_attrs(processing_levels=levels), spec.mask)


def test_gpu_annotation_only_for_gpu_workers(s2_data: Path) -> None:
    cube, spec, gbox = _eolearn_cube(s2_data, 4, chunks=64)

    def annotations(gpu: bool) -> list[Any]:
        graph = csmask_classes(cube, spec.mask, MaskContext(geobox=gbox, gpu=gpu)).data
        return [layer.annotations for layer in graph.__dask_graph__().layers.values()
                if layer.annotations]

    assert annotations(True) == [{"resources": {"GPU": 1}}]
    assert annotations(False) == []


def test_six_band_model_on_a_catalog_without_swir_is_a_clear_error(demo_catalog: Path) -> None:
    import pystac

    from s2mosaic._items import mask_band_keys
    from s2mosaic.errors import DataError

    item = next(pystac.Catalog.from_file(str(demo_catalog)).get_items(recursive=True))
    assert mask_band_keys(item, MaskSpec(method="csmask")) == ["B02", "B03", "B04", "B08"]
    with pytest.raises(DataError, match=r"none of the bands \['B11', 'swir16'\] that mask.method "
                                        r"csmask\+scl with mask.csmask_bands 6 needs"):
        mask_band_keys(item, MaskSpec(method="csmask+scl", csmask_bands=6))


@pytest.mark.parametrize("bands", [4, 6])
def test_window_kernel_equals_the_library(s2_data: Path, bands: int) -> None:
    """Our cached-session kernel gives exactly the classes of ukis_csmask.CSmask (which builds a
    session per call) on a real L1C date."""
    import warnings

    from ukis_csmask.mask import CSmask

    from s2mosaic.masks.csmask import CsmaskParams, _session, csmask_window

    cube, _, _ = _eolearn_cube(s2_data, bands)
    with dask.config.set(scheduler="synchronous"):
        x = np.stack([cube[n].values[0] for n in cube.attrs["mask_bands"]]) / np.float32(10000)
    session, meta = _session(CsmaskParams(bands, "L1C"))
    ours = csmask_window(x.astype(np.float32), session, meta)
    names = ["blue", "green", "red", "nir", "swir16", "swir22"][:bands]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "smaller than the internal tiling size"
        lib = CSmask(np.moveaxis(x, 0, -1).astype(np.float32), band_order=names,
                     product_level="l1c", intra_op_num_threads=1,
                     providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ours, lib.csm[..., 0])
    assert (ours == 0).any()  # 07-11 is clear


def test_buffer_in_metres_is_exact_across_chunk_edges(s2_data: Path) -> None:
    """buffer_m grows csmask's cloud/shadow by whole output pixels (30 m on the 9.99 m grid:
    4 px), across the edges of 64 px chunks exactly as scipy on the whole array."""
    from scipy.ndimage import binary_dilation

    cube, _, gbox = _eolearn_cube(s2_data, 4, chunks=64)
    mask = MaskSpec(method="csmask", buffer_m=30)
    ctx = MaskContext(geobox=gbox, gpu=False)
    with dask.config.set(scheduler="synchronous"):
        classes = csmask_classes(cube, mask, ctx).values
        valid = valid_mask(cube, ["B04"], mask, ctx).values
    cloud = (classes == 1) | (classes == 2)
    element = np.zeros((1, 9, 9), dtype=bool)
    element[0] = True
    expected = ~binary_dilation(cloud, structure=element)
    np.testing.assert_array_equal(valid, expected)
    assert (valid != ~cloud).any()  # the buffer did something (clouds on the clear dates)


def test_context_pixels_include_the_halo_in_whole_model_pixels() -> None:
    """Tiles of a run read this margin: the halo (64 model px of 30 m = 192 px at 10 m) plus the
    buffer, rounded up to whole 3 × 3 blocks."""
    from odc.geo.geobox import GeoBox

    from s2mosaic.masks import context_pixels

    gbox = GeoBox.from_bbox((400_000, 5_000_000, 410_000, 5_010_000), "EPSG:32632", resolution=10)
    assert context_pixels(MaskSpec(method="csmask"), gbox) == (192, 192)
    assert context_pixels(MaskSpec(method="csmask+scl", buffer_m=60), gbox) == (198, 198)
    assert context_pixels(MaskSpec(method="csmask", csmask_halo=10, dilation=2), gbox) == (33, 33)


def test_cli_run_with_csmask_scl_and_a_bad_level(s2_data: Path, tmp_path: Path) -> None:
    """The CLI runner on a YAML spec with csmask+scl; a misspelt csmask_level is a usage error
    that names the field and the valid values."""
    from typer.testing import CliRunner

    from s2mosaic.cli import app

    spec = _barbellino_spec(s2_data, tmp_path / "out", "csmask+scl")
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    assert spec.output.cog is not None and spec.output.cog.is_file()
    path.write_text(path.read_text().replace("csmask_level: null", "csmask_level: L2"))
    res = CliRunner().invoke(app, ["run", str(path), "--overwrite"])
    assert res.exit_code != 0
    assert "csmask_level" in res.output and "'L1C', 'L2A'" in res.output
