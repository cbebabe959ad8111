"""`MosaicSpec`: every field's validation, the AOI forms, YAML round trips and tokenization.

Offline by construction: the network is blocked for every test in this module.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.ops
import yaml
from dask.base import tokenize

from s2mosaic._aoi import AOI
from s2mosaic._spec import (
    COMPOSITE_METHODS,
    LOADERS,
    RESAMPLING_METHODS,
    SCL_CLASSES,
    CompositeSpec,
    MosaicSpec,
    Period,
    SourceSpec,
)
from s2mosaic.errors import S2MosaicError, SpecError

pytestmark = pytest.mark.filterwarnings("error")

# The Barbellino crop of the shared test data (lon/lat).
BBOX = [10.04, 46.064, 10.045, 46.068]

BASE: dict[str, Any] = {
    "aoi": BBOX,
    "period": {"start": "2017-07-01", "end": "2019-07-31"},
    "source": {"stac": "/data/s2/catalog.json"},
    "bands": ["red", "green", "blue", "nir"],
    "output": {"zarr": "/out/mosaic.zarr"},
}


#: A value for :func:`spec_dict` that removes the field.
DELETE = object()


def spec_dict(**changes: Any) -> dict[str, Any]:
    """A copy of BASE with dotted-path changes: ``spec_dict(**{"composite.method": "mean"})``;
    a value of :data:`DELETE` removes the field."""
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = d
        for p in parents:
            target = target.setdefault(p, {})
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return d


def make_spec(**changes: Any) -> MosaicSpec:
    return MosaicSpec.from_dict(spec_dict(**changes))


# -- invalid values -------------------------------------------------------------------------------
_ALL_SCL = str(sorted(SCL_CLASSES))


def case(
    dotted: str,
    value: Any,
    field: str,
    *phrases: str,
    shown: str | None = None,
    id: str | None = None,
) -> Any:
    """One bad value: set ``dotted`` to ``value``; expect ``field`` and ``phrases`` in the message.

    ``shown`` is how the bad value appears in the message (default: its repr).
    """
    return pytest.param(
        dotted,
        value,
        field,
        shown if shown is not None else repr(value),
        phrases,
        id=id or f"{dotted}={value!r}",
    )


BAD_VALUES = [
    # aoi
    case(
        "aoi",
        [10.04, 46.064, 10.04, 46.068],
        "aoi",
        "no area",
        "west != east",
        shown="10.04",
        id="aoi-bbox-west==east",
    ),
    case(
        "aoi",
        [10.04, 46.068, 10.045, 46.064],
        "aoi",
        "south < north",
        shown="46.068",
        id="aoi-bbox-south>north",
    ),
    case(
        "aoi",
        [170, 0, 190, 10],
        "aoi",
        "-180 <= west, east <= 180",
        "west > east",
        shown="190.0",
        id="aoi-bbox-lon-out-of-range",
    ),
    case(
        "aoi",
        [0, -95, 1, 0],
        "aoi",
        "-90 <= south < north <= 90",
        shown="-95.0",
        id="aoi-bbox-lat-out-of-range",
    ),
    case(
        "aoi",
        [1, 2, 3],
        "aoi",
        "[west, south, east, north]",
        "WKT",
        "GeoJSON",
        id="aoi-bbox-3-numbers",
    ),
    case("aoi", [1, 2, 3, 4, 5], "aoi", "[west, south, east, north]", id="aoi-bbox-5-numbers"),
    case("aoi", ["a", 0, 1, 1], "aoi", "four numbers", id="aoi-bbox-not-numbers"),
    case("aoi", "POLYGON ((1 2, 3", "aoi", "not valid WKT", "GeoJSON", ".gpkg", id="aoi-bad-wkt"),
    case("aoi", "somewhere nice", "aoi", "not valid WKT", id="aoi-free-text"),
    case("aoi", "POINT (10 46)", "aoi", "Polygon or MultiPolygon", "got Point", id="aoi-point-wkt"),
    case("aoi", "POLYGON EMPTY", "aoi", "non-empty", id="aoi-empty-polygon"),
    case(
        "aoi",
        "POLYGON ((580560 5101700, 580800 5101700, 580800 5102120, 580560 5102120, "
        "580560 5101700))",
        "aoi",
        "out of EPSG:4326 range",
        "lon/lat",
        shown="580560",
        id="aoi-projected-coordinates",
    ),
    case(
        "aoi",
        "/nonexistent-s2mosaic/area.geojson",
        "aoi",
        "file not found",
        ".gpkg",
        id="aoi-missing-file",
    ),
    case(
        "aoi",
        {"type": "Feature", "properties": {}},
        "aoi",
        "not a valid GeoJSON geometry, Feature or FeatureCollection",
        shown="'Feature'",
        id="aoi-feature-without-geometry",
    ),
    case(
        "aoi",
        {"type": "Feature", "geometry": None, "properties": {}},
        "aoi",
        "not a valid GeoJSON geometry",
        shown="'Feature'",
        id="aoi-feature-null-geometry",
    ),
    case(
        "aoi",
        {"type": "FeatureCollection", "features": []},
        "aoi",
        "no features",
        shown="'FeatureCollection'",
        id="aoi-empty-featurecollection",
    ),
    case(
        "aoi",
        {"type": "Polygon"},
        "aoi",
        "not a valid GeoJSON geometry",
        shown="'Polygon'",
        id="aoi-geojson-without-coordinates",
    ),
    case("aoi", 5, "aoi", "a bbox [west, south, east, north]", id="aoi-number"),
    # period
    case(
        "period",
        ["2019-07-31", "2017-07-01"],
        "period.end",
        "on or after start (2019-07-31)",
        shown="'2017-07-01'",
        id="period-start-after-end",
    ),
    case("period.start", "2019-02-30", "period.start", "ISO date", "'2024-05-01'"),
    case("period.end", "July 2019", "period.end", "ISO date"),
    case("period.start", 2019, "period.start", "ISO date"),
    case("period.months", [0], "period.months", "1-12"),
    case("period.months", [13], "period.months", "1-12"),
    case("period.months", [6, 13], "period.months", "1-12"),
    case("period.months", ["may"], "period.months", "integer 1-12"),
    case("period.months", [], "period.months", "at least one month", "null"),
    case("period.months", "may", "period.months", "list of month numbers 1-12"),
    case("period.months", [True], "period.months", "integer 1-12"),
    case("period", ["2019-01-01"], "period", "mapping", "'start'", id="period-one-date"),
    case("period", None, "period", "required", id="period-null"),
    case("period.weeks", [1], "period.weeks", "unknown key", "'months'"),
    # source
    case("source.stac", "", "source.stac", "STAC API URL", "catalog.json"),
    case("source.stac", "   ", "source.stac", "STAC API URL"),
    case("source.stac", 5, "source.stac", "STAC API URL"),
    case("source.collection", "", "source.collection", "collection id", "'sentinel-2-l2a'"),
    case("source.collection", 2, "source.collection", "collection id"),
    case("source.max_cloud_cover", -1, "source.max_cloud_cover", ">= 0", "<= 100"),
    case("source.max_cloud_cover", 101, "source.max_cloud_cover", ">= 0", "<= 100"),
    case("source.max_cloud_cover", "x", "source.max_cloud_cover", "expected a number"),
    case("source.max_cloud_cover", math.inf, "source.max_cloud_cover", "finite"),
    case("source.mgrs_tiles", ["XYZ"], "source.mgrs_tiles", "'32TNS'", "zone 01-60", shown="'XYZ'"),
    case("source.mgrs_tiles", ["61ABC"], "source.mgrs_tiles", "zone 01-60", shown="'61ABC'"),
    case("source.mgrs_tiles", "61ABC", "source.mgrs_tiles", "zone 01-60", id="mgrs-as-string"),
    case(
        "source.mgrs_tiles", ["32TNR", "00TNR"], "source.mgrs_tiles", "zone 01-60", shown="'00TNR'"
    ),
    case("source.mgrs_tiles", 32, "source.mgrs_tiles", "list of MGRS tile ids"),
    case("source.cloud", 10, "source.cloud", "unknown key", "'max_cloud_cover'"),
    # bands
    case("bands", [], "bands", "non-empty list of band names"),
    case("bands", ["red", "red"], "bands", "unique"),
    case("bands", ["red", "scl"], "bands", "'scl' is the mask layer"),
    case("bands", ["red", "SCL"], "bands", "'scl' is the mask layer"),
    case("bands", ["red", 4], "bands", "non-empty string", shown="4"),
    case("bands", ["red", ""], "bands", "non-empty string", shown="''"),
    case("bands", 4, "bands", "non-empty list of band names"),
    # grid
    case("grid.crs", "EPSG:99999999", "grid.crs", "not a CRS pyproj understands", "'EPSG:32633'"),
    case("grid.crs", "foo", "grid.crs", "not a CRS pyproj understands"),
    case("grid.crs", 1.5, "grid.crs", "CRS string"),
    case("grid.resolution", 0, "grid.resolution", "> 0"),
    case("grid.resolution", -10, "grid.resolution", "> 0"),
    case("grid.resolution", "abc", "grid.resolution", "positive number", "'native'"),
    case("grid.resolution", math.nan, "grid.resolution", "finite"),
    case("grid.resolution", True, "grid.resolution", "number"),
    case("grid.resolution", 0.0001, "grid.resolution", "metre", "0.1 to 100000 m", "EPSG:4326"),
    case("grid.max_pixels", 0, "grid.max_pixels", ">= 1"),
    case("grid.resampling", "nearst", "grid.resampling", *(repr(m) for m in RESAMPLING_METHODS)),
    case("grid.resampling", None, "grid.resampling", "'nearest'"),
    # mask
    case("mask.method", "cloud", "mask.method", "valid values are", "'scl'"),
    case("mask.scl_classes", [12], "mask.scl_classes", _ALL_SCL, shown="12"),
    case("mask.scl_classes", [8, -1], "mask.scl_classes", _ALL_SCL, shown="-1"),
    case("mask.scl_classes", ["8"], "mask.scl_classes", _ALL_SCL, shown="'8'"),
    case("mask.scl_classes", 8, "mask.scl_classes", "list of SCL classes", _ALL_SCL),
    case("mask.dilation", -1, "mask.dilation", "integer >= 0"),
    case("mask.dilation", 1.5, "mask.dilation", "integer"),
    case("mask.dilation", "2", "mask.dilation", "integer"),
    # composite
    case("composite.method", "mode", "composite.method", *(repr(m) for m in COMPOSITE_METHODS)),
    case("composite.percentile", -1, "composite.percentile", ">= 0", "<= 100"),
    case("composite.percentile", 100.5, "composite.percentile", ">= 0", "<= 100"),
    case("composite.percentile", math.nan, "composite.percentile", "finite"),
    case("composite.percentile", "25", "composite.percentile", "number"),
    case("composite.min_observations", 0, "composite.min_observations", "integer >= 1"),
    case("composite.min_observations", 2.5, "composite.min_observations", "integer"),
    # output
    case("output.cog", "x.png", "output.cog", ".tif", ".tiff"),
    case("output.rgb", "x.jpg", "output.rgb", ".png", ".tif"),
    case("output.zarr", 5, "output.zarr", "file system path"),
    case("output.rgb_bands", ["red", "green"], "output.rgb_bands", "three band names"),
    case("output.rgb_bands", "red", "output.rgb_bands", "three band names"),
    case("output.rgb_range", [3000, 0], "output.rgb_range", "0 <= low < high <= 65535"),
    case("output.rgb_range", [0, 70000], "output.rgb_range", "0 <= low < high <= 65535"),
    case("output.rgb_range", [0], "output.rgb_range", "[low, high]"),
    case("output.overwrite", "yes", "output.overwrite", "true or false"),
    case("output.overwrite", 1, "output.overwrite", "true or false"),
    case("output.geotiff", "x.tif", "output.geotiff", "unknown key", "'cog'"),
    # runtime
    case("runtime.chunks", 0, "runtime.chunks", "integer >= 16"),
    case("runtime.chunks", 8, "runtime.chunks", "integer >= 16"),
    case("runtime.chunks", 512.5, "runtime.chunks", "integer"),
    case("runtime.loader", "rioxarray", "runtime.loader", *(repr(m) for m in LOADERS)),
    case("runtime.n_workers", 0, "runtime.n_workers", "integer >= 1"),
    case("runtime.threads_per_worker", 0, "runtime.threads_per_worker", "integer >= 1"),
    case("runtime.scheduler", "", "runtime.scheduler", "'synchronous'", "scheduler address"),
    # whole sections, name and unknown keys
    case("grid", 5, "grid", "mapping", "'resolution'", id="section-not-a-mapping"),
    case(
        "grid.pixel_size",
        10,
        "grid.pixel_size",
        "unknown key",
        "'resolution'",
        id="unknown-section-key",
    ),
    case(
        "colour",
        "blue",
        "colour",
        "unknown key",
        "valid top-level keys",
        "'composite'",
        id="unknown-top-level-key",
    ),
    case("name", "", "name", "non-empty string"),
]


@pytest.mark.parametrize(("dotted", "value", "field", "shown", "phrases"), BAD_VALUES)
def test_bad_value_names_field_value_and_what_is_valid(
    dotted: str, value: Any, field: str, shown: str, phrases: tuple[str, ...]
) -> None:
    with pytest.raises(SpecError) as info:
        MosaicSpec.from_dict(spec_dict(**{dotted: value}))
    e = info.value
    assert isinstance(e, ValueError)
    assert isinstance(e, S2MosaicError)
    assert e.field == field
    msg = str(e)
    assert msg.startswith(f"{field}: ")
    assert shown in msg, f"bad value {shown} not in message {msg!r}"
    for phrase in phrases:
        assert phrase in msg, f"{phrase!r} not in message {msg!r}"


def test_display_band_not_in_bands() -> None:
    with pytest.raises(SpecError) as info:
        make_spec(**{"output.rgb": "/out/rgb.png", "output.rgb_bands": ["red", "green", "swir16"]})
    e = info.value
    assert e.field == "output.rgb_bands"
    assert "'swir16'" in str(e)
    assert "missing ['swir16']" in str(e)
    assert "['red', 'green', 'blue', 'nir']" in str(e)  # the valid choices: the spec's bands


def test_display_bands_only_checked_when_rgb_is_written() -> None:
    spec = make_spec(bands=["nir", "swir16"])
    assert spec.output.rgb is None
    assert spec.output.rgb_bands == ("red", "green", "blue")


def test_bad_values_through_keyword_construction() -> None:
    with pytest.raises(SpecError) as info:
        MosaicSpec(
            aoi=BBOX,
            period=["2019-01-01", "2019-12-31"],
            source={"stac": "c.json"},
            composite=CompositeSpec(method="median"),
            grid={"resampling": "nearst"},
        )
    assert info.value.field == "grid.resampling"


def test_section_error_alone_has_local_field() -> None:
    with pytest.raises(SpecError) as info:
        CompositeSpec(percentile=150)
    assert info.value.field == "percentile"
    assert info.value.value == 150


@pytest.mark.parametrize(
    ("text", "field", "phrase"),
    [
        ("- just\n- a list\n", "<spec>", "mapping"),
        ("aoi: [1, 2\n", "<spec file>", "not valid YAML"),
    ],
)
def test_bad_yaml_file(tmp_path: Path, text: str, field: str, phrase: str) -> None:
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as info:
        MosaicSpec.from_yaml(p)
    assert info.value.field == field
    assert phrase in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        MosaicSpec.from_yaml(p)
    assert info.value.field == "<spec file>"
    assert str(p) in str(info.value)
    assert "cannot be read" in str(info.value)


# -- regressions: bugs found while writing these tests, fixed since ------------------------------
@pytest.mark.parametrize(
    ("dotted", "field"),
    [("source", "source"), ("period.end", "period.end"), ("source.stac", "source.stac")],
)
def test_missing_required_key_is_a_spec_error(dotted: str, field: str) -> None:
    d = spec_dict()
    *parents, leaf = dotted.split(".")
    target = d
    for p in parents:
        target = target[p]
    del target[leaf]
    with pytest.raises(SpecError) as info:
        MosaicSpec.from_dict(d)
    assert info.value.field == field
    assert "required" in str(info.value)


def test_source_given_as_string_error_has_full_field_path() -> None:
    with pytest.raises(SpecError) as info:
        MosaicSpec(aoi=BBOX, period=["2019-01-01", "2019-12-31"], source="")
    assert info.value.field == "source.stac"


@pytest.mark.parametrize(
    ("section", "key", "field"),
    [("output", "zarr", "output.zarr"), ("source", "stac", "source.stac")],
)
def test_empty_path_in_yaml_is_rejected(tmp_path: Path, section: str, key: str, field: str) -> None:
    d = spec_dict(**{f"{section}.{key}": ""})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(SpecError) as info:
        MosaicSpec.from_yaml(tmp_path / "spec.yaml")
    assert info.value.field == field


def test_non_finite_message_reads_well() -> None:
    with pytest.raises(SpecError) as info:
        make_spec(**{"composite.percentile": math.nan})
    assert "a finite a" not in str(info.value)
    assert "finite number" in str(info.value)


@pytest.mark.parametrize("tile", ["32INR", "32ONR", "32ANR", "32TNO"])
def test_impossible_mgrs_tile_is_rejected(tile: str) -> None:
    with pytest.raises(SpecError) as info:
        make_spec(**{"source.mgrs_tiles": [tile]})
    assert info.value.field == "source.mgrs_tiles"


# -- AOI forms ------------------------------------------------------------------------------------
def assert_bbox(aoi: AOI, expected: list[float], tol: float = 1e-9) -> None:
    assert aoi.bbox == pytest.approx(tuple(expected), abs=tol)


POLY = {
    "type": "Polygon",
    "coordinates": [
        [[10.04, 46.064], [10.045, 46.064], [10.045, 46.068], [10.04, 46.068], [10.04, 46.064]]
    ],
}


def test_aoi_bbox() -> None:
    spec = make_spec(aoi=BBOX)
    assert isinstance(spec.aoi, AOI)
    assert_bbox(spec.aoi, BBOX)
    assert spec.aoi.geometry.geom_type == "Polygon"
    assert spec.aoi.geometry.area == pytest.approx(0.005 * 0.004)


def test_aoi_bbox_tuple_and_ints() -> None:
    assert_bbox(make_spec(aoi=(10, 46, 11, 47)).aoi, [10, 46, 11, 47])


def test_aoi_wkt() -> None:
    wkt = shapely.geometry.shape(POLY).wkt
    spec = make_spec(aoi=wkt)
    assert_bbox(spec.aoi, BBOX)
    assert spec.aoi.geometry.equals(shapely.geometry.shape(POLY))


def test_aoi_wkt_multipolygon() -> None:
    spec = make_spec(aoi="MULTIPOLYGON (((0 0, 1 0, 1 1, 0 1, 0 0)), ((2 2, 3 2, 3 3, 2 3, 2 2)))")
    assert spec.aoi.geometry.geom_type == "MultiPolygon"
    assert_bbox(spec.aoi, [0, 0, 3, 3])


@pytest.mark.parametrize(
    "geojson",
    [
        POLY,
        {"type": "Feature", "properties": {"name": "Barbellino"}, "geometry": POLY},
        {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {}, "geometry": POLY}],
        },
    ],
    ids=["geometry", "Feature", "FeatureCollection"],
)
def test_aoi_geojson_mapping(geojson: dict[str, Any]) -> None:
    spec = make_spec(aoi=geojson)
    assert_bbox(spec.aoi, BBOX)
    assert spec.aoi.to_geojson()["type"] == "Polygon"


def test_aoi_featurecollection_is_the_union() -> None:
    other = {"type": "Polygon", "coordinates": [[[11, 47], [12, 47], [12, 48], [11, 48], [11, 47]]]}
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": POLY},
            {"type": "Feature", "properties": {}, "geometry": other},
        ],
    }
    aoi = make_spec(aoi=fc).aoi
    assert aoi.geometry.geom_type == "MultiPolygon"
    assert_bbox(aoi, [10.04, 46.064, 12, 48])


@pytest.mark.parametrize("suffix", [".geojson", ".json"])
def test_aoi_geojson_file(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"area{suffix}"
    p.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": POLY}))
    for value in (str(p), p):
        aoi = make_spec(aoi=value).aoi
        assert_bbox(aoi, BBOX)
        assert aoi.source == str(p)


def test_aoi_unreadable_geojson_file(tmp_path: Path) -> None:
    p = tmp_path / "area.geojson"
    p.write_text("{not json")
    with pytest.raises(SpecError) as info:
        make_spec(aoi=str(p))
    assert info.value.field == "aoi"
    assert str(p) in str(info.value)
    assert "cannot be read as GeoJSON" in str(info.value)


def write_gpkg(path: Path, lonlat_bbox: list[float], crs: str) -> None:
    """A one-feature GeoPackage holding ``lonlat_bbox`` as a polygon in ``crs``."""
    import pyogrio.raw
    from pyproj import Transformer

    poly = shapely.box(*lonlat_bbox)
    if crs != "EPSG:4326":
        t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        poly = shapely.transform(poly, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    pyogrio.raw.write(
        str(path),
        geometry=np.array([shapely.to_wkb(poly)], dtype=object),
        field_data=[],
        fields=[],
        crs=crs,
        geometry_type="Polygon",
        driver="GPKG",
    )


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:32632", "EPSG:4326"])
def test_aoi_geopackage_is_reprojected_to_lonlat(tmp_path: Path, crs: str) -> None:
    p = tmp_path / "area.gpkg"
    write_gpkg(p, BBOX, crs)
    aoi = make_spec(aoi=str(p)).aoi
    assert aoi.source == str(p)
    # Only the four corners are reprojected (there and back), so the lon/lat box comes back.
    assert_bbox(aoi, BBOX, tol=1e-6)
    assert aoi.geometry.area == pytest.approx(0.005 * 0.004, rel=1e-6)


def test_aoi_geopackage_in_3857_has_projected_coordinates_on_disk(tmp_path: Path) -> None:
    """Guard the test above: the file really is in metres, so the reprojection is exercised."""
    import pyogrio

    p = tmp_path / "area.gpkg"
    write_gpkg(p, BBOX, "EPSG:3857")
    info = pyogrio.read_info(p)
    assert info["crs"] == "EPSG:3857"
    assert info["features"] == 1
    west_m = math.radians(BBOX[0]) * 6378137.0  # 10.04° E on the web-mercator sphere
    assert info["total_bounds"][0] == pytest.approx(west_m, abs=1e-3)


def test_aoi_passes_through_an_aoi_instance() -> None:
    aoi = AOI.parse(BBOX)
    assert make_spec(aoi=aoi).aoi is aoi


# -- period ---------------------------------------------------------------------------------------
def test_period_as_list() -> None:
    p = make_spec(period=["2017-07-01", "2019-07-31"]).period
    assert p == Period(start=dt.date(2017, 7, 1), end=dt.date(2019, 7, 31))
    assert p.months is None
    assert p.datetime_range == "2017-07-01T00:00:00Z/2019-07-31T23:59:59.999999Z"


def test_period_as_dict_with_months() -> None:
    p = make_spec(
        period={"start": "2017-01-01", "end": "2019-12-31", "months": [8, 6, 7, 6]}
    ).period
    assert p.months == (6, 7, 8)  # sorted, unique
    utc = dt.UTC
    assert p.contains(dt.datetime(2018, 6, 1, tzinfo=utc))
    assert not p.contains(dt.datetime(2018, 9, 1, tzinfo=utc))
    assert not p.contains(dt.datetime(2020, 7, 1, tzinfo=utc))
    assert p.contains(dt.datetime(2019, 7, 31, 23, 59, tzinfo=utc))  # end is inclusive


def test_period_accepts_dates_and_datetimes() -> None:
    p = make_spec(period=[dt.date(2019, 1, 1), dt.datetime(2019, 2, 1, 12, 30)]).period
    assert (p.start, p.end) == (dt.date(2019, 1, 1), dt.date(2019, 2, 1))
    assert type(p.end) is dt.date


def test_period_single_day() -> None:
    p = make_spec(period=["2019-07-23", "2019-07-23"]).period
    assert p.start == p.end


# -- other valid values ---------------------------------------------------------------------------
def test_coercions_and_defaults() -> None:
    spec = make_spec(
        **{
            "grid.crs": 32632,
            "grid.resolution": 20,
            "mask.scl_classes": [9, 8, 3, 8],
            "source.mgrs_tiles": ["t32tnr", "33UXP"],
            "source.max_cloud_cover": 20,
        }
    )
    assert spec.grid.crs == "EPSG:32632"
    assert spec.grid.resolution == 20.0 and isinstance(spec.grid.resolution, float)
    assert spec.mask.scl_classes == (3, 8, 9)
    assert spec.source.mgrs_tiles == ("32TNR", "33UXP")
    assert spec.source.max_cloud_cover == 20.0
    assert spec.bands == ("red", "green", "blue", "nir")
    assert isinstance(spec.output.zarr, Path)
    assert spec.composite.method == "percentile"
    assert spec.mask.scl_classes and spec.runtime.loader == "odc-stac"


def test_native_resolution_is_accepted() -> None:
    assert make_spec(**{"grid.resolution": "native"}).grid.resolution == "native"


def test_source_as_plain_string() -> None:
    d = spec_dict(source="/data/catalog.json")
    spec = MosaicSpec.from_dict(d)
    assert spec.source == SourceSpec(stac="/data/catalog.json")
    assert not spec.source.is_api


@pytest.mark.parametrize(
    ("stac", "is_api"),
    [
        ("https://earth-search.aws.element84.com/v1", True),
        ("https://planetarycomputer.microsoft.com/api/stac/v1", True),
        ("https://example.com/static/catalog.json", False),
        ("catalog.json", False),
    ],
)
def test_source_is_api(stac: str, is_api: bool) -> None:
    assert SourceSpec(stac=stac).is_api is is_api


def test_metadata_path_defaults_beside_the_output() -> None:
    assert make_spec().output.metadata_path == Path("/out/mosaic.metadata.json")
    spec = make_spec(output={"cog": "/out/m.tif"})
    assert spec.output.metadata_path == Path("/out/m.metadata.json")
    spec = make_spec(output={"cog": "/out/m.tif", "metadata": "/prov/p.json"})
    assert spec.output.metadata_path == Path("/prov/p.json")


def test_composite_q() -> None:
    assert make_spec(**{"composite.method": "median"}).composite.q == 50.0
    assert (
        make_spec(**{"composite.method": "median", "composite.percentile": 10}).composite.q == 50.0
    )
    assert make_spec(**{"composite.percentile": 10}).composite.q == 10.0
    assert CompositeSpec().q == 25.0


# -- YAML -----------------------------------------------------------------------------------------
def full_spec(tmp_path: Path) -> MosaicSpec:
    """A spec with every section away from its defaults and absolute paths."""
    return MosaicSpec.from_dict(
        {
            "aoi": POLY,
            "period": {"start": "2017-01-01", "end": "2019-12-31", "months": [6, 7, 8]},
            "source": {
                "stac": str(tmp_path / "catalog.json"),
                "collection": "sentinel-2-l2a",
                "max_cloud_cover": 40,
                "mgrs_tiles": ["32TNR"],
            },
            "bands": ["B04", "B03", "B02", "B08"],
            "grid": {"crs": "EPSG:32632", "resolution": 20, "resampling": "bilinear"},
            "mask": {"scl_classes": [3, 8, 9, 10, 11], "dilation": 2},
            "composite": {"method": "percentile", "percentile": 30.5, "min_observations": 2},
            "output": {
                "zarr": str(tmp_path / "m.zarr"),
                "cog": str(tmp_path / "m.tif"),
                "rgb": str(tmp_path / "m.png"),
                "rgb_bands": ["B04", "B03", "B02"],
                "rgb_range": [100, 2500],
                "metadata": str(tmp_path / "m.json"),
                "overwrite": True,
            },
            "runtime": {
                "chunks": 512,
                "loader": "stackstac",
                "scheduler": "threads",
                "n_workers": 2,
                "threads_per_worker": 3,
            },
            "name": "barbellino",
        }
    )


def test_yaml_round_trip(tmp_path: Path) -> None:
    spec = full_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    text = spec.to_yaml(path)
    assert path.read_text() == text
    back = MosaicSpec.from_yaml(path)
    assert back == spec
    assert back.to_dict() == spec.to_dict()
    assert tokenize(back) == tokenize(spec)


def test_to_dict_is_plain_json() -> None:
    d = make_spec(**{"period.months": [7]}).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["period"] == {"start": "2017-07-01", "end": "2019-07-31", "months": [7]}
    assert d["aoi"]["type"] == "Polygon"
    assert d["output"]["zarr"] == "/out/mosaic.zarr"


def test_yaml_round_trip_of_a_bbox_aoi_keeps_the_geometry(tmp_path: Path) -> None:
    spec = make_spec()
    back = MosaicSpec.from_yaml(_write(tmp_path / "s.yaml", spec.to_yaml()))
    assert back.aoi.wkt == spec.aoi.wkt
    assert back.to_dict() == spec.to_dict()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_round_trip_of_a_bbox_aoi_is_equal(tmp_path: Path) -> None:
    spec = make_spec()
    back = MosaicSpec.from_yaml(_write(tmp_path / "s.yaml", spec.to_yaml()))
    assert back.aoi.source == "GeoJSON" and spec.aoi.source.startswith("bbox")
    assert back == spec
    assert hash(back) == hash(spec)


def test_equal_specs_have_equal_tokens(tmp_path: Path) -> None:
    spec = make_spec()
    back = MosaicSpec.from_yaml(_write(tmp_path / "s.yaml", spec.to_yaml()))
    assert back == spec
    assert tokenize(back) == tokenize(spec)
    assert tokenize(make_spec(aoi=POLY)) == tokenize(spec)


def test_relative_paths_resolve_against_the_yaml_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "area.geojson").write_text(json.dumps(POLY))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the YAML's directory
    (cfg / "spec.yaml").write_text(
        textwrap.dedent("""\
        aoi: area.geojson
        period: [2017-07-01, 2019-07-31]
        source:
          stac: data/catalog.json
        output:
          zarr: out/m.zarr
          cog: m.tif
          rgb: ../m.png
          metadata: prov/m.json
        """)
    )
    spec = MosaicSpec.from_yaml(cfg / "spec.yaml")

    def same(p: str | Path | None, want: Path) -> bool:
        return p is not None and Path(p).is_absolute() and Path(p).resolve() == want.resolve()

    assert same(spec.aoi.source, cfg / "area.geojson")
    assert_bbox(spec.aoi, BBOX)
    assert same(spec.source.stac, cfg / "data" / "catalog.json")
    assert same(spec.output.zarr, cfg / "out" / "m.zarr")
    assert same(spec.output.cog, cfg / "m.tif")
    assert same(spec.output.rgb, tmp_path / "m.png")
    assert same(spec.output.metadata, cfg / "prov" / "m.json")
    # YAML dates arrive as datetime.date objects
    assert spec.period.start == dt.date(2017, 7, 1)


def test_relative_geopackage_aoi_and_string_source_in_yaml(tmp_path: Path) -> None:
    write_gpkg(tmp_path / "area.gpkg", BBOX, "EPSG:3857")
    (tmp_path / "spec.yaml").write_text(
        "aoi: area.gpkg\nperiod: [2017-07-01, 2019-07-31]\nsource: catalog.json\n"
    )
    spec = MosaicSpec.from_yaml(tmp_path / "spec.yaml")
    assert_bbox(spec.aoi, BBOX, tol=1e-6)
    assert Path(spec.source.stac).resolve() == (tmp_path / "catalog.json").resolve()


@pytest.mark.parametrize(
    "stac",
    ["https://earth-search.aws.element84.com/v1", "s3://bucket/catalog.json", "/abs/catalog.json"],
)
def test_urls_and_absolute_paths_are_left_alone(tmp_path: Path, stac: str) -> None:
    d = spec_dict(**{"source.stac": stac})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    assert MosaicSpec.from_yaml(tmp_path / "spec.yaml").source.stac == stac


def test_from_dict_without_base_dir_keeps_relative_paths() -> None:
    spec = MosaicSpec.from_dict(spec_dict(**{"output.zarr": "rel/m.zarr"}))
    assert spec.output.zarr == Path("rel/m.zarr")


# -- immutability, replace, hashing, tokens -------------------------------------------------------
def test_replace() -> None:
    spec = make_spec()
    med = spec.replace(composite={"method": "median"})
    assert med.composite.method == "median" and med.composite.q == 50.0
    assert spec.composite.method == "percentile"  # the original is untouched
    assert med.aoi == spec.aoi and med.source == spec.source
    other = spec.replace(bands=["nir"], period=["2018-01-01", "2018-12-31"])
    assert other.bands == ("nir",)
    assert other.period.start == dt.date(2018, 1, 1)


def test_replace_validates() -> None:
    with pytest.raises(SpecError) as info:
        make_spec().replace(composite={"percentile": 150})
    assert info.value.field == "composite.percentile"
    with pytest.raises(SpecError) as info:
        make_spec().replace(bands=["red", "scl"])
    assert info.value.field == "bands"


def test_spec_is_frozen() -> None:
    spec = make_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.bands = ("red",)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.composite.percentile = 50  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.aoi.wkt = "POLYGON EMPTY"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.period.months = (1,)  # type: ignore[misc]


def test_spec_is_hashable() -> None:
    a, b = make_spec(), make_spec()
    assert a == b and a is not b
    assert hash(a) == hash(b)
    assert len({a, b, make_spec(**{"composite.percentile": 30})}) == 2


def test_tokenize_is_deterministic() -> None:
    a = make_spec()
    assert tokenize(a) == tokenize(a)
    assert tokenize(a) == tokenize(make_spec())
    assert tokenize(a) != tokenize(make_spec(**{"composite.percentile": 30}))
    assert tokenize(a) != tokenize(make_spec(aoi=[10.0, 46.0, 10.1, 46.1]))
    assert tokenize(a) != tokenize(make_spec(**{"period.months": [7]}))
    assert tokenize(a.composite) != tokenize(a.replace(composite={"percentile": 26}).composite)


def test_tokenize_is_stable_across_processes(tmp_path: Path) -> None:
    """Task names must not depend on the process (hash seed) that built the graph."""
    code = textwrap.dedent(f"""
        from dask.base import tokenize
        from s2mosaic._spec import MosaicSpec
        print(tokenize(MosaicSpec.from_dict({BASE!r})))
    """)
    tokens = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        tokens.add(out.stdout.strip())
    assert tokens == {tokenize(MosaicSpec.from_dict(BASE))}
