"""The items-first API (``mosaic(items, bands, ...)``, ``load``) and the ``ds.s2`` accessor."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import dask
import numpy as np
import pystac
import pytest
import xarray as xr

import s2mosaic
from s2mosaic.demo import DEMO_AOI_BBOX, demo_spec
from s2mosaic.errors import (
    ArgumentError,
    ArgumentTypeError,
    DataError,
    HarmonisationWarning,
    UnknownNameError,
)

BANDS = ["red", "green", "blue", "nir"]
ASSETS = ["B04", "B03", "B02", "B08"]
DUPLICATE = "S2B_32TQT_20240621_0_L2A"  # the older processing of a reprocessed acquisition
OFFSET_DAY = "2024-06-01"  # baseline 05.10: DN = reflectance x 10000 + 1000


@pytest.fixture(autouse=True)
def _synchronous() -> object:
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def items(demo_catalog: Path) -> list[pystac.Item]:
    """Every item of the demo catalog, the reprocessed duplicate included."""
    out = list(pystac.Catalog.from_file(str(demo_catalog)).get_items(recursive=True))
    for i in out:
        i.make_asset_hrefs_absolute()
    assert DUPLICATE in {i.id for i in out}
    return out


@pytest.fixture(scope="module")
def kept(items: list[pystac.Item]) -> list[pystac.Item]:
    return [i for i in items if i.id != DUPLICATE]


def _assert_same(a: xr.Dataset, b: xr.Dataset, names: list[str] | None = None) -> None:
    names = names or [str(v) for v in a.data_vars]
    assert a.odc.geobox == b.odc.geobox
    for name in names:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _load(items: list[pystac.Item], geobox: object, **kw: object) -> xr.Dataset:
    import odc.stac

    return odc.stac.load(items, bands=[*ASSETS, "SCL"], geobox=geobox, groupby="solar_day",
                         chunks=kw.pop("chunks", {"time": -1, "x": 256, "y": 256}), **kw)


# -- mosaic(items, ...) ---------------------------------------------------------------------------
def test_items_first_equals_spec_path(demo_catalog: Path, items: list[pystac.Item],
                                      tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path)
    found = s2mosaic.search(spec)
    expected = s2mosaic.mosaic(spec, items=found).compute()
    got = s2mosaic.mosaic(items, bands=BANDS, crs="EPSG:32632", resolution=10,
                          bbox=list(DEMO_AOI_BBOX), chunks={"x": 256, "y": 256}).compute()
    _assert_same(expected, got)
    assert int(got["count"].max()) > 0
    # positional bands, and the old positional spec call, give the same
    again = s2mosaic.mosaic(items, BANDS, crs=32632, resolution=10, bbox=list(DEMO_AOI_BBOX),
                            chunks=256).compute()
    _assert_same(expected, again)
    _assert_same(expected, s2mosaic.mosaic(spec, found).compute())


def test_items_first_dedupes_and_harmonises(items: list[pystac.Item],
                                            kept: list[pystac.Item]) -> None:
    m = s2mosaic.mosaic(items, bands=["red"], crs="EPSG:32632", resolution=10,
                        bbox=list(DEMO_AOI_BBOX), chunks=256, method="last")
    record = m.attrs["s2mosaic_provenance"]
    record = json.loads(record) if isinstance(record, str) else record
    assert DUPLICATE in [d["id"] for d in record["dropped_items"]]
    assert DUPLICATE not in [i["id"] for i in record["items"]]
    assert record["spec"]["source"]["stac"] == "<given items>"
    assert record["spec"]["period"]["start"] == "2024-05-02"
    offsets = {i["id"]: i["boa_offset"]["red"] for i in record["items"]}
    assert {v for k, v in offsets.items() if "20240601" in k} == {-1000}
    # Only the offset day seen ("last" of one day): harmonised, it is the reflectance the
    # loader reads minus 1000, wherever valid.
    gbox = m.odc.geobox
    day = [i for i in kept if i.datetime.date().isoformat() == OFFSET_DAY]
    one = s2mosaic.mosaic(day, bands=["red"], geobox=gbox, chunks=256, method="last",
                          mask="none").compute()
    raw = _load(day, gbox).B04.isel(time=0).values
    ok = raw != 0
    assert ok.any()
    np.testing.assert_array_equal(one.red.values[ok], np.maximum(raw[ok], 1001) - 1000)


def test_default_area_is_the_union_of_footprints(kept: list[pystac.Item]) -> None:
    import shapely
    import shapely.geometry

    from s2mosaic._items import footprint

    spec = s2mosaic._api.items_spec(kept, ["red"])
    union = shapely.union_all([footprint(i) for i in kept])
    assert spec.aoi.geometry.symmetric_difference(union).area < 1e-9
    assert spec.grid.resolution == "native"


def test_load_is_the_masked_harmonised_cube(items: list[pystac.Item]) -> None:
    m = s2mosaic.mosaic(items, bands=BANDS, crs="EPSG:32632", resolution=10,
                        bbox=list(DEMO_AOI_BBOX), chunks=256)
    cube = s2mosaic.load(items, BANDS, crs="EPSG:32632", resolution=10,
                         bbox=list(DEMO_AOI_BBOX), chunks=256)
    assert list(cube.data_vars) == [*BANDS, "valid"]
    assert cube.valid.dtype == bool and cube.valid.dims == ("time", "y", "x")
    assert cube.red.dtype == np.uint16
    assert cube.attrs["boa_offsets"]["red"].count(-1000) == 1
    _assert_same(m.compute(), cube.s2.composite(q=25).compute())


# -- ds.s2 on a cube loaded by odc-stac -------------------------------------------------------------
def test_accessor_equals_mosaic(items: list[pystac.Item], kept: list[pystac.Item]) -> None:
    m = s2mosaic.mosaic(items, bands=ASSETS, crs="EPSG:32632", resolution=10,
                        bbox=list(DEMO_AOI_BBOX), chunks=256)
    gbox = m.odc.geobox
    expected = s2mosaic.mosaic(items, bands=ASSETS, geobox=gbox, chunks=256).compute()
    ds = _load(kept, gbox)
    harmonised = ds.s2.harmonise(kept)
    assert harmonised.attrs["boa_offsets"]["B04"].count(-1000) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", HarmonisationWarning)
        got = harmonised.s2.composite(method="percentile", q=25).compute()
    _assert_same(expected, got, [*ASSETS, "count"])
    # without harmonising, the offset day shifts the result, and a warning says why
    with pytest.warns(HarmonisationWarning, match="harmonise"):
        raw = ds.s2.composite(q=25)
    assert (raw.B04.values != got.B04.values).any()


def test_harmonise_refuses_mixed_offsets_in_one_slice(kept: list[pystac.Item]) -> None:
    gbox = s2mosaic.mosaic(kept, bands=["red"], crs="EPSG:32632", resolution=10,
                           bbox=list(DEMO_AOI_BBOX)).odc.geobox
    ds = _load(kept, gbox)
    day = [i for i in kept if i.datetime.date().isoformat() == OFFSET_DAY]
    clone = day[0].clone()
    clone.id = "same-slice-no-offset"
    clone.properties["s2:processing_baseline"] = "03.00"
    for key in ASSETS:
        clone.assets[key].extra_fields["raster:bands"][0]["offset"] = 0.0
    with pytest.raises(DataError, match="different BOA offsets"):
        ds.s2.harmonise([*kept, clone])
    with pytest.raises(DataError, match="matches none of the"):
        ds.s2.harmonise([i for i in kept if i not in day])


def test_scl_found_by_any_case() -> None:
    scl = np.array([[[4, 9]], [[0, 5]]], np.uint8)
    red = np.array([[[10, 20]], [[30, 40]]], np.uint16)
    dims = ("time", "y", "x")
    expected = np.array([[[True, False]], [[False, True]]])
    for name in ("scl", "SCL", "Scl"):
        ds = xr.Dataset({"red": (dims, red), name: (dims, scl)})
        np.testing.assert_array_equal(ds.s2.valid().values, expected, err_msg=name)
    ds = xr.Dataset({"red": (dims, red), "classes": (dims, scl)})
    with pytest.raises(UnknownNameError, match="no SCL variable"):
        ds.s2.valid()
    np.testing.assert_array_equal(ds.s2.valid(scl="classes").values, expected)
    # classes: 9 kept, 5 dropped
    np.testing.assert_array_equal(ds.s2.valid(scl="classes", classes=[5]).values,
                                  [[[True, True]], [[False, False]]])
    with pytest.raises(ArgumentError, match="classes"):
        ds.s2.valid(scl="classes", classes=[42])


def test_nodata_honoured_from_attrs_and_fill_value() -> None:
    dims = ("time", "y", "x")
    red = np.array([[[65535, 7, 0]]], np.uint16)
    scl = np.array([[[4, 4, 4]]], np.uint8)
    ds = xr.Dataset({"red": (dims, red, {"nodata": 65535}), "SCL": (dims, scl)})
    np.testing.assert_array_equal(ds.s2.valid().values, [[[False, True, True]]])
    ds = xr.Dataset({"red": (dims, red, {"_FillValue": 65535}), "SCL": (dims, scl)})
    np.testing.assert_array_equal(ds.s2.valid().values, [[[False, True, True]]])
    ds = xr.Dataset({"red": (dims, red), "SCL": (dims, scl)})
    ds.red.encoding["_FillValue"] = 7
    np.testing.assert_array_equal(ds.s2.valid().values, [[[True, False, True]]])
    ds = xr.Dataset({"red": (dims, red), "SCL": (dims, scl)})  # no nodata: 0, S2's convention
    np.testing.assert_array_equal(ds.s2.valid().values, [[[True, True, False]]])
    # SCL's own nodata
    ds = xr.Dataset({"red": (dims, red, {"nodata": 65535}),
                     "scl": (dims, scl, {"nodata": 4})})
    assert not ds.s2.valid().values.any()


def test_composite_refuses_split_time_chunks(kept: list[pystac.Item]) -> None:
    gbox = s2mosaic.mosaic(kept, bands=["red"], crs="EPSG:32632", resolution=10,
                           bbox=list(DEMO_AOI_BBOX)).odc.geobox
    ds = _load(kept, gbox, chunks={"time": 1, "x": 256, "y": 256}).s2.harmonise(kept)
    with pytest.raises(ArgumentError, match="time must be a single chunk"):
        ds.s2.composite()


def test_accessor_registered_whatever_the_import_order() -> None:
    for code in ("import s2mosaic; import xarray as xr",
                 "import xarray as xr; import s2mosaic",
                 "import s2mosaic; import odc.stac; import xarray as xr"):
        out = subprocess.run([sys.executable, "-c", f"{code}; print(hasattr(xr.Dataset, 's2'))"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True", code
    from s2mosaic._accessor import SCL_VAR
    from s2mosaic._cube import SCL_VAR as CUBE_SCL

    assert SCL_VAR == CUBE_SCL


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "mode"}, r"^method: invalid value 'mode'.*percentile"),
    ({"q": 120}, r"^q: invalid value 120"),
    ({"min_observations": 0}, r"^min_observations: invalid value 0"),
    ({"resolution": -10}, r"^resolution: invalid value -10"),
    ({"resampling": "bicubic"}, r"^resampling: invalid value 'bicubic'.*bilinear"),
    ({"crs": "EPSG:999999"}, r"^crs: invalid value"),
    ({"mask": "clouds"}, r"^mask: invalid value 'clouds'.*ocm\+scl"),
    ({"mask": {"methd": "scl"}}, r"^mask=.*valid keys"),
    ({"chunks": {"time": 1, "x": 256, "y": 256}}, r"^chunks=.*'time': -1"),
    ({"chunks": {"x": 256, "y": 128}}, r"^chunks=.*same n"),
    ({"groupby": "time"}, r"^groupby='time'.*solar_day"),
    ({"bbox": [1, 2, 3]}, r"^bbox=\[1, 2, 3\]: expected \[west, south, east, north\]"),
    ({"bbox": [11, 47, 12, 48], "aoi": "x.geojson"}, r"^bbox and aoi are given"),
    ({"bands": ["red", "red"]}, r"^bands: invalid value.*unique"),
])
def test_bad_arguments_name_the_argument(kept: list[pystac.Item], kwargs: dict[str, object],
                                         match: str) -> None:
    kw: dict[str, object] = {"bands": ["red"], **kwargs}
    with pytest.raises(ArgumentError, match=match):
        s2mosaic.mosaic(kept, **kw)  # type: ignore[call-overload]


def test_bad_calls(kept: list[pystac.Item], demo_catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="bands is required"):
        s2mosaic.mosaic(kept)  # type: ignore[call-overload]
    with pytest.raises(ArgumentTypeError, match=r"items must be pystac\.Items"):
        s2mosaic.mosaic("catalog.json", ["red"])  # type: ignore[call-overload]
    with pytest.raises(ArgumentError, match="items is empty"):
        s2mosaic.mosaic([], ["red"])
    gbox = s2mosaic.mosaic(kept, ["red"], crs=32632, resolution=10,
                           bbox=list(DEMO_AOI_BBOX)).odc.geobox
    with pytest.raises(ArgumentError, match="resolution is given with geobox"):
        s2mosaic.mosaic(kept, ["red"], geobox=gbox, resolution=20)
    spec = demo_spec(demo_catalog, tmp_path)
    with pytest.raises(ArgumentError, match="method is given with a MosaicSpec"):
        s2mosaic.mosaic(spec, method="median")  # type: ignore[call-overload]
