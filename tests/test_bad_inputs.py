"""Every bad input gets a clear error: malformed STAC items, bad specs, and the CLI's messages."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import s2mosaic
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import S2MosaicError, SearchError, SpecError

from .test_spec import DELETE, spec_dict

# -- malformed items ------------------------------------------------------------------------------
Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        *parents, leaf = path.split("/")
        for p in parents:
            d = d[p]
        d[leaf] = value
    return edit


def _pop(path: str) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        *parents, leaf = path.split("/")
        for p in parents:
            d = d[p]
        d.pop(leaf)
    return edit


def _nodata(value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["assets"]["B04"]["raster:bands"][0]["nodata"] = value
    return edit


def _data_type(value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["assets"]["B04"]["raster:bands"][0]["data_type"] = value
    return edit


@pytest.fixture(scope="module")
def features(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Four valid items of the demo catalog, as ItemCollection features."""
    out = tmp_path_factory.mktemp("out")
    items = s2mosaic.search(demo_spec(demo_catalog, out))
    return [i.to_dict() for i in items[:4]]


def _collection(tmp_path: Path, feats: list[Any]) -> Path:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


ITEM_CASES = {
    "geometry-null": (_set("geometry", None), r"'geometry' is null"),
    "geometry-garbage": (_set("geometry", {"type": "Polygon", "coordinates": "zz"}),
                         r"'geometry' is not valid GeoJSON"),
    "nodata-string": (_nodata("none"), r"asset 'B04' declares raster:bands\[0\] nodata 'none'.*"
                                       r"source\.nodata"),
    "data-type-unknown": (_data_type("banana"), r"data_type 'banana'.*source\.band_dtypes"),
    "band-missing": (_pop("assets/B08"), r"no asset for band 'nir'.*'B02', 'B03', 'B04', 'SCL'"),
    "datetime-garbage": (_set("properties/datetime", "yesterday"),
                         r"'datetime' 'yesterday' is not an RFC 3339.*features\[1\]"),
    "datetime-null": (_set("properties/datetime", None), r"'datetime' is null.*start_datetime"),
    "properties-null": (_set("properties", None), r"'properties' is None"),
    "assets-missing": (_pop("assets"), r"'assets' is not an object"),
    "bbox-garbage": (_set("bbox", "x"), r"'bbox' 'x'"),
    "cloud-cover-string": (_set("properties/eo:cloud_cover", "cloudy"),
                           r"eo:cloud_cover 'cloudy' is not a number"),
}


@pytest.mark.parametrize("name", sorted(ITEM_CASES))
def test_malformed_item_is_dropped_with_its_reason(name: str, features: list[dict[str, Any]],
                                                   tmp_path: Path) -> None:
    edit, reason = ITEM_CASES[name]
    feats = copy.deepcopy(features)
    bad_id = feats[1]["id"]
    edit(feats[1])
    spec = demo_spec(_collection(tmp_path, feats), tmp_path / "out")
    result = s2mosaic.search(spec)
    assert [i.id for i in result] == [f["id"] for f in features if f["id"] != bad_id]
    assert [d.id for d in result.dropped] == [bad_id]
    assert result.dropped[0].reason
    import re
    assert re.search(reason, result.dropped[0].reason), result.dropped[0].reason
    # The CLI lists the drop reason, verbatim (brackets included), without a traceback.
    spec_file = tmp_path / "spec.yaml"
    spec.to_yaml(spec_file)
    res = CliRunner().invoke(app, ["search", str(spec_file)])
    assert res.exit_code == 0, res.output
    assert f"dropped {bad_id}" in res.output
    flat = " ".join(res.output.split())
    assert "features[1]" in flat or "features[1]" not in result.dropped[0].reason


@pytest.mark.parametrize("feature", [
    pytest.param("no-id", id="no-id"), pytest.param("id-number", id="id-number"),
    pytest.param("not-an-object", id="not-an-object"),
])
def test_unparseable_item_names_the_file_index_and_field(feature: str,
                                                         features: list[dict[str, Any]],
                                                         tmp_path: Path) -> None:
    feats: list[Any] = copy.deepcopy(features)
    if feature == "no-id":
        feats[2].pop("id")
    elif feature == "id-number":
        feats[2]["id"] = 7
    else:
        feats[2] = "an item"
    path = _collection(tmp_path, feats)
    spec = demo_spec(path, tmp_path / "out")
    with pytest.raises(SearchError, match=r"items\.json' features\[2\]") as e:
        s2mosaic.search(spec)
    assert "id" in str(e.value) or "not a STAC item" in str(e.value)
    spec_file = tmp_path / "spec.yaml"
    spec.to_yaml(spec_file)
    res = CliRunner().invoke(app, ["search", str(spec_file)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "features[2]" in " ".join(res.output.split())


def test_features_not_a_list_is_a_search_error(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": {"a": 1}}))
    with pytest.raises(SearchError, match="'features' is"):
        s2mosaic.search(demo_spec(path, tmp_path / "out"))


# -- bad specs ------------------------------------------------------------------------------------
SELF_INTERSECTING = {"type": "Polygon", "coordinates": [[[10.0, 46.0], [10.01, 46.01],
                                                          [10.01, 46.0], [10.0, 46.01],
                                                          [10.0, 46.0]]]}

# (changes, a field the message must name)
SPEC_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "aoi-missing": ({"aoi": DELETE}, "aoi"),
    "aoi-number": ({"aoi": 5}, "aoi"),
    "aoi-three-numbers": ({"aoi": [1.0, 2.0, 3.0]}, "aoi"),
    "aoi-strings": ({"aoi": ["a", "b", "c", "d"]}, "aoi"),
    "aoi-zero-area": ({"aoi": [10.0, 46.0, 10.0, 46.1]}, "aoi"),
    "aoi-out-of-range": ({"aoi": [10.0, 46.0, 200.0, 95.0]}, "aoi"),
    "aoi-bad-wkt": ({"aoi": "POLYGON((1 2, 3"}, "aoi"),
    "aoi-point-wkt": ({"aoi": "POINT (10 46)"}, "aoi"),
    "aoi-degenerate-polygon": ({"aoi": {"type": "Polygon", "coordinates": [
        [[10.0, 46.0], [10.1, 46.1], [10.2, 46.2], [10.0, 46.0]]]}}, "aoi"),
    "aoi-missing-file": ({"aoi": "/nope/aoi.geojson"}, "aoi"),
    "aoi-whole-globe-10m": ({"aoi": [-180, -90, 180, 90]}, "grid"),
    "period-missing": ({"period": DELETE}, "period"),
    "period-bad-date": ({"period.start": "2019-13-45"}, "period.start"),
    "period-not-a-date": ({"period.start": "yesterday"}, "period.start"),
    "period-reversed": ({"period.start": "2020-01-01", "period.end": "2019-01-01"}, "period"),
    "period-number": ({"period": 2019.5}, "period"),
    "period-bad-month": ({"period.months": [13]}, "period.months"),
    "source-missing": ({"source": DELETE}, "source"),
    "source-stac-number": ({"source.stac": 5}, "source.stac"),
    "source-unknown-field": ({"source.colection": "x"}, "colection"),
    "source-cloud-cover-high": ({"source.max_cloud_cover": 150}, "source.max_cloud_cover"),
    "source-cloud-cover-string": ({"source.max_cloud_cover": "low"}, "source.max_cloud_cover"),
    "bands-empty": ({"bands": []}, "bands"),
    "bands-number": ({"bands": 5}, "bands"),
    "bands-duplicate": ({"bands": ["red", "red"]}, "bands"),
    "bands-empty-name": ({"bands": ["red", ""]}, "bands"),
    "unknown-top-field": ({"colour": "red"}, "colour"),
    "section-not-mapping": ({"grid": "fine"}, "grid"),
    "grid-bad-crs": ({"grid.crs": "EPSG:999999"}, "grid.crs"),
    "grid-resolution-tiny": ({"grid.crs": "EPSG:32632", "grid.resolution": 1e-6}, "grid"),
    "grid-resolution-huge": ({"grid.crs": "EPSG:32632", "grid.resolution": 1e9}, "grid"),
    "grid-resolution-negative": ({"grid.resolution": -10}, "grid.resolution"),
    "grid-resolution-string": ({"grid.resolution": "ten"}, "grid.resolution"),
    "grid-resampling-unknown": ({"grid.resampling": "magic"}, "grid.resampling"),
    "mask-method-unknown": ({"mask.method": "fmask"}, "mask.method"),
    "mask-dilation-huge": ({"mask.dilation": 1e9}, "mask.dilation"),
    "mask-dilation-negative": ({"mask.dilation": -1}, "mask.dilation"),
    "mask-dilation-fraction": ({"mask.dilation": 1.5}, "mask.dilation"),
    "mask-buffer-huge": ({"mask.buffer_m": 1e9}, "mask.buffer_m"),
    "mask-scl-class": ({"mask.scl_classes": [42]}, "mask.scl_classes"),
    "mask-unknown-field": ({"mask.dilate": 2}, "dilate"),
    "composite-method-unknown": ({"composite.method": "max"}, "composite.method"),
    "composite-percentile-high": ({"composite.percentile": 101}, "composite.percentile"),
    "composite-percentile-nan": ({"composite.percentile": float("nan")}, "composite.percentile"),
    "composite-min-obs-huge": ({"composite.min_observations": 1e12},
                               "composite.min_observations"),
    "composite-min-obs-zero": ({"composite.min_observations": 0}, "composite.min_observations"),
    "composite-min-obs-bool": ({"composite.min_observations": True},
                               "composite.min_observations"),
    "output-overwrite-string": ({"output.overwrite": "yes"}, "output.overwrite"),
    "output-rgb-two-bands": ({"output.rgb_bands": ["red", "green"]}, "output.rgb_bands"),
}


@pytest.mark.parametrize("name", sorted(SPEC_CASES))
def test_bad_spec_is_a_spec_error_naming_the_field(name: str) -> None:
    changes, fieldname = SPEC_CASES[name]
    with pytest.raises(SpecError) as e:
        s2mosaic.MosaicSpec.from_dict(spec_dict(**changes))
    assert fieldname in str(e.value), str(e.value)


def test_garbage_gpkg_aoi_names_the_file(tmp_path: Path) -> None:
    gpkg = tmp_path / "aoi.gpkg"
    gpkg.write_bytes(b"this is not a geopackage\x00\x01")
    with pytest.raises(SpecError, match=r"aoi.*aoi\.gpkg.*GeoPackage"):
        s2mosaic.MosaicSpec.from_dict(spec_dict(aoi=str(gpkg)))


def test_garbage_geojson_aoi_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aoi.geojson"
    path.write_text("{not json")
    with pytest.raises(SpecError, match=r"aoi.*aoi\.geojson"):
        s2mosaic.MosaicSpec.from_dict(spec_dict(aoi=str(path)))


def test_self_intersecting_aoi_is_repaired_to_a_valid_area() -> None:
    spec = s2mosaic.MosaicSpec.from_dict(spec_dict(aoi=SELF_INTERSECTING))
    assert spec.aoi.geometry.is_valid and spec.aoi.geometry.area > 0


@pytest.mark.parametrize("text", ["aoi: [1, 2\n", "- just\n- a list\n", "", "aoi: !!python/object:os.system x\n"])
def test_bad_yaml_is_a_spec_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError):
        s2mosaic.MosaicSpec.from_yaml(path)


# -- the CLI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aoi-three-numbers", "mask-dilation-huge", "period-bad-date",
                                  "unknown-top-field"])
def test_cli_plan_of_a_bad_spec_exits_2_with_the_message(name: str, tmp_path: Path) -> None:
    changes, fieldname = SPEC_CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**changes)))
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, S2MosaicError)
    flat = " ".join(res.output.split())
    assert "error:" in flat and fieldname in flat


def test_cli_prints_messages_verbatim(tmp_path: Path) -> None:
    """Rich markup must not eat ``[1.0, 2.0]`` (or ``[bold]``) in a message."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec_dict(aoi=[1.0, 2.0])))
    with pytest.raises(SpecError) as e:
        s2mosaic.MosaicSpec.from_yaml(path)
    assert "[1.0, 2.0]" in str(e.value)
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 2
    assert "[1.0, 2.0]" in " ".join(res.output.split())
    path.write_text(yaml.safe_dump(spec_dict(bands=["[bold]red", "[bold]red"])))
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert "[bold]red" in " ".join(res.output.split())
