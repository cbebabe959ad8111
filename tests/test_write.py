"""Outputs through real GDAL, Zarr and distributed: Zarr, COG, RGB display product, metadata."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import wrap_xr
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from s2mosaic._raster import write_cog, write_rgb
from s2mosaic._spec import OutputSpec
from s2mosaic._write import WriteResult, write, write_zarr
from s2mosaic.errors import WriteError

write_mod = importlib.import_module("s2mosaic._write")  # the module, not the function
raster_mod = importlib.import_module("s2mosaic._raster")

BANDS = ("red", "green", "blue")
H, W, CHUNK = 300, 500, 128
GRIDS = {
    "utm": GeoBox.from_bbox((500_000, 5_000_000, 505_000, 5_003_000), "EPSG:32632", resolution=10),
    "geo": GeoBox.from_bbox((9.0, 46.0, 9.05, 46.03), "EPSG:4326", resolution=0.0001),
}
CORNER = (slice(0, 40), slice(0, 60))  # nodata in every band and count == 0
RED_HOLE = (slice(100, 110), slice(200, 220))  # only red is 0: nodata for the display product
COUNT_HOLE = (slice(200, 205), slice(300, 330))


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {b: rng.integers(1, 5000, size=(H, W), dtype="uint16") for b in BANDS}
    out["count"] = rng.integers(1, 20, size=(H, W), dtype="uint16")
    for a in out.values():
        a[CORNER] = 0
    out["red"][RED_HOLE] = 0
    out["count"][COUNT_HOLE] = 0  # bands set but no valid observation: nodata for display
    # Known pixels for the stretch: mid-range, clipped high, clipped low.
    out["red"][150, 250], out["green"][150, 250], out["blue"][150, 250] = 1500, 3000, 4000
    out["red"][150, 251], out["green"][150, 251], out["blue"][150, 251] = 1, 5, 1234
    return out


def make_mosaic(gbox: GeoBox, values: dict[str, np.ndarray] | None = None) -> xr.Dataset:
    values = values or arrays()
    assert gbox.shape == (H, W)
    ds = xr.Dataset({n: wrap_xr(a, gbox, nodata=0).chunk(CHUNK) for n, a in values.items()})
    ds.attrs.update(method="percentile", q=25.0)
    return ds


def stretch(v: int, low: float = 0, high: float = 3000) -> int:
    """The documented stretch, written independently (Python's round is half-to-even too)."""
    return min(255, max(1, round(1 + 254 * (v - low) / (high - low))))


def outputs(root: Path, **kw: object) -> OutputSpec:
    return OutputSpec(zarr=root / "m.zarr", cog=root / "m.tif", rgb=root / "m.png", **kw)


@pytest.fixture(scope="module", params=list(GRIDS))
def written(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[GeoBox, WriteResult, Path]:
    gbox = GRIDS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    res = write(make_mosaic(gbox), outputs(root / "out"), provenance={"name": "test"})
    rgb_tif = write_rgb(xr.open_zarr(res.zarr, mask_and_scale=False), root / "rgb.tif")
    return gbox, res, rgb_tif


def check_georef(src: rasterio.DatasetReader, gbox: GeoBox) -> None:
    assert src.crs.to_epsg() == gbox.crs.epsg
    assert src.transform.almost_equals(gbox.affine)
    assert (src.height, src.width) == gbox.shape
    assert src.bounds == pytest.approx(tuple(gbox.boundingbox)[:4])


# -- Zarr --------------------------------------------------------------------------------------
def test_zarr_reopens_georeferenced_with_exact_values(written: tuple[GeoBox, WriteResult, Path]):
    gbox, res, _ = written
    assert res.zarr is not None
    assert (res.zarr / ".zmetadata").exists() and (res.zarr / ".zgroup").exists()  # Zarr v2
    raw = xr.open_zarr(res.zarr, mask_and_scale=False)
    for name, a in arrays().items():
        np.testing.assert_array_equal(raw[name].values, a)
        assert raw[name].dtype == np.uint16 and raw[name].encoding["chunks"] == (CHUNK, CHUNK)
        assert raw[name].encoding["compressors"][0].cname == "zstd"
    ds = xr.open_zarr(res.zarr)  # CF decoding: bands masked at 0, count stays an integer
    assert np.isnan(ds["red"].values[CORNER]).all() and ds["count"].dtype == np.uint16
    assert ds.rio.crs.to_epsg() == gbox.crs.epsg
    assert ds["red"].rio.crs.to_epsg() == gbox.crs.epsg
    assert ds.rio.transform().almost_equals(gbox.affine)
    assert ds.rio.bounds() == pytest.approx(tuple(gbox.boundingbox)[:4])
    assert ds.odc.geobox == gbox
    assert raw.attrs["proj:code"] == f"EPSG:{gbox.crs.epsg}"
    assert raw.attrs["spatial:transform"] == pytest.approx(list(gbox.affine)[:6])
    assert raw.attrs["spatial:shape"] == [H, W]
    assert raw.attrs["spatial:bbox"] == pytest.approx(list(gbox.boundingbox)[:4])
    assert raw.attrs["method"] == "percentile"
    assert {"crs_wkt", "spatial_ref", "GeoTransform"} <= set(raw["spatial_ref"].attrs)
    for name in arrays():  # the CF link itself, not just a coordinate rioxarray happens to find
        zattrs = json.loads((res.zarr / name / ".zattrs").read_text())
        assert zattrs["grid_mapping"] == "spatial_ref"


# -- COG ---------------------------------------------------------------------------------------
def test_cog_is_valid_with_bands_count_and_overviews(written: tuple[GeoBox, WriteResult, Path]):
    gbox, res, _ = written
    is_valid, errors, _warnings = cog_validate(str(res.cog))
    assert is_valid and not errors
    values = arrays()
    with rasterio.open(res.cog) as src:
        check_georef(src, gbox)
        assert src.count == len(BANDS) + 1 and src.dtypes[0] == "uint16" and src.nodata == 0
        assert src.descriptions == (*BANDS, "count")
        assert src.compression.name.upper() in ("DEFLATE", "ZSTD")
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.block_shapes[0] in ((256, 256), (512, 512))
        tags = src.tags()
        assert tags["AREA_OR_POINT"] == "Area" and tags["s2mosaic_method"] == "percentile"
        assert src.overviews(1)
        for i, name in enumerate((*BANDS, "count"), start=1):
            np.testing.assert_array_equal(src.read(i), values[name])
    with rasterio.open(res.cog, overview_level=0) as ovr:
        level1 = ovr.read(1)
    assert level1.shape == (H // 2, W // 2)
    assert (level1[:20, :30] == 0).all()  # the nodata corner stays nodata
    data = level1[20:, 30:]
    assert (data != 0).mean() > 0.99  # not zeroed: real observations (nearest)
    assert np.isin(data[data != 0], values["red"]).all()


# -- RGB display product -----------------------------------------------------------------------
def test_png_stretch_and_alpha(written: tuple[GeoBox, WriteResult, Path]):
    _, res, _ = written
    img = Image.open(res.rgb)
    assert img.mode == "RGBA" and img.size == (W, H)
    px = np.asarray(img)
    assert tuple(px[150, 250]) == (128, 255, 255, 255)
    assert tuple(px[150, 251]) == (1, 1, stretch(1234), 255)
    values = arrays()
    rng = np.random.default_rng(1)
    for r, c in zip(rng.integers(40, H, 20), rng.integers(60, W, 20), strict=True):
        if values["red"][r, c]:
            want = [stretch(int(values[b][r, c])) for b in BANDS]
            assert list(px[r, c, :3]) == want, (r, c)
    assert (px[CORNER] == 0).all()
    assert (px[RED_HOLE] == 0).all() and (px[COUNT_HOLE] == 0).all()
    valid = (np.stack([values[b] for b in BANDS]) != 0).all(axis=0) & (values["count"] != 0)
    np.testing.assert_array_equal(px[..., 3], np.where(valid, 255, 0))


def test_rgb_tif_is_a_cog_matching_the_png(written: tuple[GeoBox, WriteResult, Path]):
    gbox, res, rgb_tif = written
    assert cog_validate(str(rgb_tif))[0]
    png = np.asarray(Image.open(res.rgb))
    with rasterio.open(rgb_tif) as src:
        check_georef(src, gbox)
        assert src.count == 3 and src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.descriptions == BANDS and src.overviews(1)
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), png[..., :3])


# -- metadata ----------------------------------------------------------------------------------
def test_metadata_sidecar(written: tuple[GeoBox, WriteResult, Path]):
    gbox, res, _ = written
    assert res.metadata == res.zarr.with_name("m.metadata.json")
    meta = json.loads(res.metadata.read_text())
    assert meta["name"] == "test"
    assert meta["outputs"] == {k: str(getattr(res, k)) for k in ("zarr", "cog", "rgb", "metadata")}
    assert dt.datetime.fromisoformat(meta["written_at"]).tzinfo is not None
    grid = meta["grid"]
    assert grid["crs"] == f"EPSG:{gbox.crs.epsg}" and grid["shape"] == [H, W]
    assert grid["transform"] == pytest.approx(list(gbox.affine)[:6])
    assert grid["bounds"] == pytest.approx(list(gbox.boundingbox)[:4])
    assert grid["resolution"] == pytest.approx([abs(gbox.resolution.x)] * 2)
    assert [b["name"] for b in meta["bands"]] == [*BANDS, "count"]
    assert meta["bands"][0] == {"name": "red", "dtype": "uint16", "nodata": 0}


# -- behaviour ---------------------------------------------------------------------------------
def exploding(gbox: GeoBox) -> xr.Dataset:
    """A mosaic whose graph fails when computed: proves checks happen before any compute."""
    ds = make_mosaic(gbox)

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the mosaic graph was computed")

    return ds.assign(red=ds["red"].copy(data=ds["red"].data.map_blocks(boom, dtype="uint16")))


def test_existing_path_raises_before_computing(tmp_path: Path):
    out = outputs(tmp_path)
    (tmp_path / "m.tif").write_bytes(b"old")
    with pytest.raises(WriteError, match=r"m\.tif.*output\.overwrite: true"):
        write(exploding(GRIDS["utm"]), out)
    assert (tmp_path / "m.tif").read_bytes() == b"old" and not out.zarr.exists()
    write_zarr(make_mosaic(GRIDS["utm"]), tmp_path / "z.zarr")
    with pytest.raises(WriteError, match=r"z\.zarr.*already exists"):
        write_zarr(make_mosaic(GRIDS["utm"]), tmp_path / "z.zarr")


def test_overwrite_replaces_but_never_deletes_a_plain_directory(tmp_path: Path):
    out = outputs(tmp_path / "a" / "b", overwrite=True)  # parents are created
    write(make_mosaic(GRIDS["utm"]), out)
    values = arrays(seed=5)
    write(make_mosaic(GRIDS["utm"], values), out)
    np.testing.assert_array_equal(xr.open_zarr(out.zarr)["count"].values, values["count"])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("x")
    with pytest.raises(WriteError, match="not a Zarr store"):
        write_zarr(make_mosaic(GRIDS["utm"]), plain, overwrite=True)
    assert (plain / "keep.txt").exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_scratch(tmp_path: Path):
    old = write_cog(make_mosaic(GRIDS["utm"]), tmp_path / "m.tif")
    before = old.read_bytes()
    with pytest.raises(AssertionError, match="graph was computed"):
        write_cog(exploding(GRIDS["utm"]), old, overwrite=True)
    assert old.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_progress_bar_without_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with dask.config.set(scheduler="threads"):
        write_zarr(make_mosaic(GRIDS["utm"]), tmp_path / "m.zarr", progress=True)
    assert "100% Completed" in capsys.readouterr().out
    write_zarr(make_mosaic(GRIDS["utm"]), tmp_path / "quiet.zarr")
    assert capsys.readouterr().out == ""


def test_invalid_requests_fail_before_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mosaic = exploding(GRIDS["utm"])
    with pytest.raises(WriteError, match=r"output\.zarr / output\.cog"):
        write(mosaic, OutputSpec(rgb=tmp_path / "x.png"))
    with pytest.raises(WriteError, match=r"missing \['nir'\]"):
        write(mosaic, outputs(tmp_path, rgb_bands=("nir", "green", "blue")))
    monkeypatch.setattr(raster_mod, "MAX_PNG_PIXELS", 1000)
    with pytest.raises(WriteError, match=r"m\.png.*use a \.tif"):
        write(mosaic, outputs(tmp_path))
    assert not list(tmp_path.iterdir())


def test_graph_is_computed_once(tmp_path: Path):
    calls = []
    lock = threading.Lock()

    def counted(block: np.ndarray) -> np.ndarray:
        if block.size:  # dask probes the function with empty arrays to infer meta
            with lock:
                calls.append(block.shape)
        return block

    ds = make_mosaic(GRIDS["utm"])
    ds = ds.assign(red=ds["red"].copy(data=ds["red"].data.map_blocks(counted, dtype="uint16")))
    nblocks = ds["red"].data.npartitions
    write(ds, outputs(tmp_path / "z"))  # zarr, then COG and PNG from the zarr
    assert len(calls) == nblocks
    calls.clear()
    write(ds, OutputSpec(cog=tmp_path / "c" / "m.tif", rgb=tmp_path / "c" / "m.png"))
    assert len(calls) == nblocks  # COG from the graph, PNG from the COG
    # Same picture whichever file the display product was read back from.
    assert (tmp_path / "c" / "m.png").read_bytes() == (tmp_path / "z" / "m.png").read_bytes()
    with rasterio.open(tmp_path / "c" / "m.tif") as a, rasterio.open(tmp_path / "z" / "m.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.filterwarnings("ignore:Couldn.t detect a suitable IP address:RuntimeWarning")
def test_distributed_and_synchronous_writes_are_byte_identical(tmp_path: Path):
    from distributed import Client, LocalCluster

    mosaic = make_mosaic(GRIDS["utm"])
    with dask.config.set(scheduler="synchronous"):
        write_zarr(mosaic, tmp_path / "sync.zarr")
        write_cog(mosaic, tmp_path / "sync.tif")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        res = write(mosaic, OutputSpec(zarr=tmp_path / "dist.zarr", cog=tmp_path / "dist.tif"),
                    client=client, progress=True)
    assert res.cog is not None and res.zarr is not None
    assert res.cog.read_bytes() == (tmp_path / "sync.tif").read_bytes()
    sync, dist = tree(tmp_path / "sync.zarr"), tree(res.zarr)
    assert sync.keys() == dist.keys() and any(k.startswith("red/0") for k in sync)
    assert sync == dist


def test_cog_from_worker_processes(tmp_path: Path, dask_client: object):
    """Blocks written from separate processes (a distributed.Lock serialises the file)."""
    mosaic = make_mosaic(GRIDS["geo"])
    with dask.config.set(scheduler="synchronous"):
        write_cog(mosaic, tmp_path / "sync.tif")
    write_cog(mosaic, tmp_path / "procs.tif", client=dask_client)
    assert (tmp_path / "procs.tif").read_bytes() == (tmp_path / "sync.tif").read_bytes()


def test_irregular_chunks_are_regularised(tmp_path: Path):
    ds = make_mosaic(GRIDS["utm"]).chunk({"y": (100, 50, 150), "x": 250})
    path = write_zarr(ds, tmp_path / "m.zarr")
    reopened = xr.open_zarr(path, mask_and_scale=False)
    assert reopened["red"].encoding["chunks"] == (100, 250)
    np.testing.assert_array_equal(reopened["blue"].values, arrays()["blue"])
    assert isinstance(reopened["blue"].data, da.Array)


def test_all_zero_count_chunks_are_stored(tmp_path: Path):
    values = arrays()
    values["count"][:CHUNK, :CHUNK] = 0  # e.g. outside the AOI: count has no fill value
    for b in BANDS:
        values[b][:CHUNK, :CHUNK] = 0
    path = write_zarr(make_mosaic(GRIDS["utm"], values), tmp_path / "m.zarr")
    assert (path / "count" / "0.0").exists() and not (path / "red" / "0.0").exists()
    np.testing.assert_array_equal(xr.open_zarr(path)["count"].values, values["count"])


def test_write_completes_the_provenance_the_mosaic_carries(tmp_path: Path):
    """``s2mosaic.write`` is this module's ``write``: it takes the record ``mosaic`` attached,
    completes it (outputs, grid, processing time) into the sidecar, and keeps it out of the
    product's attributes."""
    import s2mosaic

    assert s2mosaic.write is write
    ds = make_mosaic(GRIDS["utm"])
    ds.attrs[write_mod.PROVENANCE_ATTR] = {"name": "carried"}
    res = s2mosaic.write(ds, OutputSpec(zarr=tmp_path / "m.zarr"))
    assert write_mod.PROVENANCE_ATTR in ds.attrs  # the caller's dataset is not changed
    assert res.metadata is not None and res.zarr is not None and res.cog is None
    meta = json.loads(res.metadata.read_text())
    assert meta["name"] == "carried" and meta["processing_time_s"] >= 0
    assert dt.datetime.fromisoformat(meta["finished"]) <= dt.datetime.now(dt.UTC)
    assert meta["outputs"] == {"zarr": str(res.zarr), "metadata": str(res.metadata)}
    assert write_mod.PROVENANCE_ATTR not in xr.open_zarr(res.zarr).attrs
    with pytest.raises(WriteError, match="nothing to write"):
        s2mosaic.write(ds, OutputSpec(rgb=tmp_path / "x.png"))
