"""The lazy cube: loaders agree, BOA harmonisation, solar-day grouping, masks across chunks."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pystac
import pytest
import xarray as xr

import s2mosaic
from s2mosaic._cube import _apply_offset, load_cube, observation_groups
from s2mosaic._grid import output_geobox
from s2mosaic._items import resolve_band
from s2mosaic._spec import MaskSpec, MosaicSpec
from s2mosaic.errors import DataError
from s2mosaic.masks import dilate, nodata_mask, scl_invalid, valid_mask

BBOX = [10.0416, 46.0641, 10.0448, 46.0679]
EOLEARN_BBOX = [14.552, 45.866, 14.564, 45.875]


def _spec(s2_data: Path, **kw: object) -> MosaicSpec:
    base: dict[str, object] = dict(
        aoi=BBOX, period=["2017-01-01", "2019-12-31"],
        source={"stac": str(s2_data / "catalog.json")}, bands=["red", "nir", "B11"],
        grid={"resolution": "native"}, runtime={"chunks": 16, "scheduler": "synchronous"},
    )
    base.update(kw)
    return MosaicSpec(**base)  # type: ignore[arg-type]


def test_stackstac_and_odc_stac_give_the_same_cube(s2_data: Path) -> None:
    spec = _spec(s2_data)
    items = s2mosaic.search(spec)
    gbox = output_geobox(spec, items)
    a = load_cube(items, spec, gbox)
    b = load_cube(items, spec.replace(runtime={"loader": "stackstac", "chunks": 16}), gbox)
    assert list(a.data_vars) == list(b.data_vars) == ["red", "nir", "B11", "scl"]
    np.testing.assert_array_equal(a.time.values.astype("datetime64[s]"),
                                  b.time.values.astype("datetime64[s]"))
    with dask.config.set(scheduler="synchronous"):
        for name in a.data_vars:
            assert a[name].dtype == b[name].dtype
            assert a[name].data.chunks == b[name].data.chunks
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_cube_chunks_keep_time_whole(s2_data: Path) -> None:
    spec = _spec(s2_data)
    items = s2mosaic.search(spec)
    cube = load_cube(items, spec, output_geobox(spec, items))
    assert cube.red.dtype == np.uint16 and cube.scl.dtype == np.uint8
    assert cube.red.data.chunks[0] == (2,)
    assert max(cube.red.data.chunks[1]) == 16


def test_band_names_resolve_both_conventions(s2_data: Path) -> None:
    item = s2mosaic.search(_spec(s2_data))[0]
    assert resolve_band(item, "red") == "B04"
    assert resolve_band(item, "B04") == "B04"
    assert resolve_band(item, "b8a" if "B8A" in item.assets else "b08") in ("B8A", "B08")
    assert resolve_band(item, "swir16") == "B11"
    with pytest.raises(DataError, match=r"band 'rededge9'.*B04 \(red\)"):
        resolve_band(item, "rededge9")


def test_apply_offset_moves_valid_pixels_only() -> None:
    block = np.array([[[0, 1000, 1001, 5000]], [[0, 1000, 1001, 5000]]], dtype=np.uint16)
    out = _apply_offset(block, offsets=np.array([-1000, 0]), nodata=0)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], [[0, 1, 1, 4000]])  # nodata stays, low DN clamps to 1
    np.testing.assert_array_equal(out[1], block[1])
    assert block[0, 0, 3] == 5000  # input untouched


def test_offset_items_are_harmonised_and_grouped_apart(s2_data: Path) -> None:
    """A copy of an item declared as baseline 05.10 with offset −0.1 and +1000 DN: the cube
    subtracts it; same-day items with different offsets stay separate observations."""
    spec = _spec(s2_data)
    items = list(s2mosaic.search(spec))
    shifted = copy.deepcopy(items[1])
    shifted.id += "_N0510"
    shifted.properties["s2:processing_baseline"] = "05.10"
    for asset in shifted.assets.values():
        for b in asset.extra_fields.get("raster:bands", []):
            if "scale" in b:
                b["offset"] = -0.1
    keys = {"red": "B04", "nir": "B08", "B11": "B11"}
    item_keys, offsets = observation_groups([items[0], items[1], shifted], keys)
    assert offsets == [(0, 0, 0), (-1000, -1000, -1000), (0, 0, 0)]
    assert item_keys[1][0] == item_keys[2][0]  # same solar day...
    assert item_keys[1] != item_keys[2]  # ...but not fused
    # A real +1000 DN product is simulated by the offset itself: the cube of the shifted item
    # equals the original minus 1000 (clamped at 1).
    gbox = output_geobox(spec, items)
    orig = load_cube([items[1]], spec, gbox)
    harm = load_cube([shifted], spec, gbox)
    with dask.config.set(scheduler="synchronous"):
        o, h = orig.red.values, harm.red.values
    nodata = int(orig.red.attrs["nodata"])
    ok = o != nodata
    np.testing.assert_array_equal(h[ok], np.maximum(o[ok], 1001) - 1000)
    np.testing.assert_array_equal(h[~ok], o[~ok])
    assert harm.attrs["boa_offsets"]["red"] == [-1000]


def test_missing_scl_is_a_clear_error(s2_data: Path) -> None:
    spec = _spec(s2_data, source={"stac": str(s2_data / "catalog.json"),
                                  "collection": "sentinel-2-l1c-eolearn"},
                 aoi=EOLEARN_BBOX, period=["2015-07-01", "2015-09-30"],
                 bands=["B04"])
    items = s2mosaic.search(spec)
    with pytest.raises(DataError, match=r"has no SCL asset.*mask\.method"):
        load_cube(items, spec, output_geobox(spec, items))


def test_dilation_is_exact_across_chunk_edges() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((3, 70, 90)) > 0.985
    whole = xr.DataArray(mask, dims=("time", "y", "x"))
    chunked = xr.DataArray(da.from_array(mask, chunks=(3, 16, 16)), dims=("time", "y", "x"))
    for px in (1, 3):
        expected = dilate(whole, px).values
        got = dilate(chunked, px).compute().values
        np.testing.assert_array_equal(got, expected)
        # Never across time: each slice dilates on its own.
        assert got[0].sum() > mask[0].sum()
        np.testing.assert_array_equal(dilate(whole.isel(time=[1]), px).values[0], expected[1])


def test_valid_mask_combines_scl_nodata_and_dilation() -> None:
    scl = np.full((2, 8, 8), 4, dtype=np.uint8)
    scl[0, 4, 4] = 9  # a cloud pixel
    red = np.full((2, 8, 8), 500, dtype=np.uint16)
    red[1, 0, 0] = 0  # nodata
    cube = xr.Dataset({
        "red": xr.DataArray(red, dims=("time", "y", "x"), attrs={"nodata": 0}),
        "scl": xr.DataArray(scl, dims=("time", "y", "x")),
    })
    v = valid_mask(cube, ["red"], MaskSpec()).values
    assert not v[0, 4, 4] and v[0, 4, 5] and not v[1, 0, 0] and v[1, 4, 4]
    v1 = valid_mask(cube, ["red"], MaskSpec(dilation=1)).values
    assert v1[0, 3:6, 3:6].sum() == 0 and v1[0].sum() == 64 - 9
    assert v1[1, 0, 0] == False and v1[1, 0, 1] == True  # noqa: E712  (nodata is not dilated)
    vn = valid_mask(cube, ["red"], MaskSpec(method="none")).values
    assert vn[0, 4, 4] and not vn[1, 0, 0]


def _edge_cube(scl_dtype: str, band_dtype: str = "uint16") -> xr.Dataset:
    """A swath edge: SCL nodata at x = 0 (bands valid there), bands nodata at x = 3 (SCL
    clear there), a cloud at x = 5."""
    scl = np.full((1, 4, 8), 4, dtype=scl_dtype)
    scl[0, :, 0] = np.nan if scl_dtype.startswith("float") else 0
    scl[0, :, 5] = 9
    red = np.full((1, 4, 8), 500, dtype=band_dtype)
    red[0, :, 3] = np.nan if band_dtype.startswith("float") else 0
    nodata = {"nodata": float("nan")} if scl_dtype.startswith("float") else {"nodata": 0}
    return xr.Dataset({
        "red": xr.DataArray(red, dims=("time", "y", "x"), attrs={"nodata": 0}),
        "scl": xr.DataArray(scl, dims=("time", "y", "x"), attrs=nodata),
    })


@pytest.mark.parametrize("scl_dtype", ["uint8", "float32"])
@pytest.mark.parametrize("band_dtype", ["uint16", "float32"])
@pytest.mark.parametrize("method", ["scl", "none"])
@pytest.mark.parametrize("classes", [(0, 1, 3, 8, 9, 10), (8, 9)])
def test_nodata_is_never_clear(scl_dtype: str, band_dtype: str, method: str,
                               classes: tuple[int, ...]) -> None:
    """SCL nodata (0, or NaN when SCL is float: NaN is never "in" class 0) and band nodata (0 or
    NaN) are invalid for every method and whether scl_classes lists 0 or not; neither grows
    with the cloud buffer."""
    cube = _edge_cube(scl_dtype, band_dtype)
    v = valid_mask(cube, ["red"], MaskSpec(method=method, scl_classes=classes)).values[0]
    assert not v[:, 0].any(), "SCL nodata, bands valid"
    assert not v[:, 3].any(), "bands nodata, SCL valid"
    assert v[:, 1].all() and v[:, 2].all() and v[:, 4].all()
    assert v[:, 5].all() != (method == "scl")
    d = valid_mask(cube, ["red"], MaskSpec(method=method, scl_classes=classes, dilation=1))
    assert d.values[0, :, 1].all() and d.values[0, :, 2].all()  # next to nodata: still clear
    assert d.values[0, :, 4].all() != (method == "scl")  # next to the cloud: buffered


def test_scl_invalid_includes_nodata_whatever_the_classes() -> None:
    scl = xr.DataArray(np.array([0.0, np.nan, 4.0, 9.0], dtype=np.float32), dims="x")
    np.testing.assert_array_equal(scl_invalid(scl, [9]).values, [True, True, False, True])
    u8 = xr.DataArray(np.array([0, 4, 9], dtype=np.uint8), dims="x")
    np.testing.assert_array_equal(scl_invalid(u8, [9]).values, [True, False, True])
    cube = xr.Dataset({"b": xr.DataArray(np.array([np.nan, 0.0, 3.0]), dims="x",
                                         attrs={"nodata": float("nan")})})
    np.testing.assert_array_equal(nodata_mask(cube, ["b"]).values, [True, False, False])


def test_item_lookup_is_by_pystac_item(s2_data: Path) -> None:
    items = s2mosaic.search(_spec(s2_data))
    assert all(isinstance(i, pystac.Item) for i in items)


@pytest.mark.parametrize("loader", ["odc-stac", "stackstac"])
def test_gdal_settings_travel_inside_the_graph(s2_data: Path, loader: str) -> None:
    """Workers get the GDAL options - the spec's time-outs and retries included - from the
    tasks themselves (captured into the graph, restored in each read task), not from the
    client's environ."""
    import os
    import pickle

    from s2mosaic._cube import gdal_settings

    spec = _spec(s2_data, runtime={"chunks": 16, "scheduler": "synchronous", "loader": loader,
                                   "read_timeout_s": 7.5, "connect_timeout_s": 3,
                                   "read_retries": 2, "read_backoff_s": 0.25})
    items = s2mosaic.search(spec)
    cube = load_cube(items, spec, output_geobox(spec, items))
    graph = pickle.loads(pickle.dumps(dict(cube.red.data.__dask_graph__())))  # as a worker has it
    envs = [e for task in graph.values() for e in _dicts_with(task, "GDAL_HTTP_TIMEOUT")]
    want = gdal_settings(spec.runtime)
    assert want["GDAL_HTTP_TIMEOUT"] == "7.5" and want["GDAL_HTTP_MAX_RETRY"] == "2"
    assert envs and all({k: e.get(k) for k in want} == want for e in envs)
    for key in want:
        assert key not in os.environ


def _dicts_with(obj: object, key: str, depth: int = 0) -> list[dict[str, object]]:
    """The dicts holding ``key`` anywhere inside a task (tuples, Task objects, attributes)."""
    if depth > 8:
        return []
    if isinstance(obj, dict):
        if key in obj:
            return [obj]
        inner: Iterable[object] = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        inner = obj
    elif hasattr(obj, "__dict__"):
        inner = list(vars(obj).values())
    elif hasattr(obj, "__slots__"):
        inner = [getattr(obj, s, None) for s in obj.__slots__]
    else:
        return []
    return [d for v in inner for d in _dicts_with(v, key, depth + 1)]


def test_a_run_with_the_stackstac_loader_writes_the_odc_stac_bytes(demo_catalog: Path,
                                                                   tmp_path: Path) -> None:
    """stackstac's own attrs (a RasterSpec object, ...) never reach a writer, and on the
    native grid of one zone both loaders give the same mosaic."""
    from s2mosaic import run
    from s2mosaic.demo import demo_spec

    from .oracle import assert_identical_outputs
    from .test_demo_pipeline import _single_tile_aoi

    base = demo_spec(demo_catalog, tmp_path / "odc").replace(
        aoi=_single_tile_aoi(demo_catalog), runtime={"chunks": 64, "scheduler": "synchronous"})
    other = base.replace(output={"zarr": tmp_path / "ss" / "m.zarr", "cog": tmp_path / "ss" / "m.tif"},
                         runtime={"chunks": 64, "scheduler": "synchronous", "loader": "stackstac"})
    base = base.replace(output={"zarr": tmp_path / "odc" / "m.zarr", "cog": tmp_path / "odc" / "m.tif"})
    assert run(base).status == run(other).status == "complete"
    assert_identical_outputs(base.output, other.output)
