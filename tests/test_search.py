"""STAC search offline: the shared static catalog, ItemCollection files, dedupe, BOA offsets.

Everything here reads the real offline data in ``../shared/data/s2`` (static catalog with local
COGs, and real Earth Search / odc-stac API responses with remote hrefs, used for metadata only).
The network is blocked for every test in this module.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pystac
import pytest

from s2mosaic._items import boa_offset, mgrs_tile
from s2mosaic._search import DroppedItem, SearchResult, dedupe, search
from s2mosaic._spec import MosaicSpec
from s2mosaic.errors import EmptySearchError, S2MosaicError, SearchError


def _shared_s2() -> Path | None:
    """``<repo>/../shared/data/s2``, else ``$S2MOSAIC_SHARED_DATA`` (the s2 folder or its parent)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "s2"]
    env = os.environ.get("S2MOSAIC_SHARED_DATA")
    if env:
        candidates += [Path(env), Path(env) / "s2"]
    return next((c for c in candidates if (c / "catalog.json").is_file()), None)


S2 = _shared_s2()
pytestmark = [
    pytest.mark.skipif(
        S2 is None,
        reason="real Sentinel-2 test data not found: expected ../shared/data/s2 beside the "
        "repository or S2MOSAIC_SHARED_DATA pointing at it",
    ),
    pytest.mark.filterwarnings("error"),
    # pystac migrates the storage-extension v1 fields of the real Earth Search c1 items and warns
    # that it cannot parse a bucket from their https hrefs; harmless for the metadata read here.
    pytest.mark.filterwarnings("ignore:Could not parse bucket/account from href:UserWarning"),
]

BARBELLINO_2017 = "S2A_MSIL2A_20170703_R022_Barbellino_sen2r"
BARBELLINO_2019 = "S2A_MSIL2A_20190723_R022_Barbellino_sen2r"
BARBELLINO_BBOX = [10.04, 46.064, 10.045, 46.068]
BARBELLINO_PERIOD = ["2017-01-01", "2019-12-31"]
EOLEARN_IDS = [
    "S2A_MSIL1C_20150711T100008_eolearn_TestEOPatch",
    "S2A_MSIL1C_20150731T100009_eolearn_TestEOPatch",
    "S2A_MSIL1C_20150820T100728_eolearn_TestEOPatch",
    "S2A_MSIL1C_20150830T100547_eolearn_TestEOPatch",
    "S2A_MSIL1C_20150909T100017_eolearn_TestEOPatch",
]
ES_L2A = "earth-search_sentinel-2-l2a_2025-07-31_utm20-24.json"
ES_C1 = "earth-search_sentinel-2-c1-l2a_2025-07-31_utm20-24.json"
ODC_SITE1 = "odc-stac_site1-20200606-tall-strip-africa.geojson"
ODC_SITE2 = "odc-stac_site2-2020_jun_jul-35MNM.geojson"
ODC_PC_ITEM = "odc-stac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
ODC_ES_OLD_ITEM = "odc-stac_S2A_28QCH_20200714_0_L2A.json"
RIO_TILER_ITEM = "rio-tiler-pds_S2A_29RKH_20200219_0_L2A.original.json"


# -- helpers --------------------------------------------------------------------------------------
def shared() -> Path:
    assert S2 is not None
    return S2


def item_json(item_id: str, collection: str = "sentinel-2-l2a") -> dict[str, Any]:
    return json.loads((shared() / collection / item_id / f"{item_id}.json").read_text())


def example_dicts(name: str) -> list[dict[str, Any]]:
    data = json.loads((shared() / "stac_examples" / name).read_text())
    return data["features"] if data.get("type") == "FeatureCollection" else [data]


def example_items(name: str) -> list[pystac.Item]:
    return [pystac.Item.from_dict(d) for d in example_dicts(name)]


def catalog_spec(**kw: Any) -> MosaicSpec:
    source = {"stac": str(shared() / "catalog.json"), **kw.pop("source", {})}
    return MosaicSpec(
        aoi=kw.pop("aoi", BARBELLINO_BBOX),
        period=kw.pop("period", BARBELLINO_PERIOD),
        source=source,
        **kw,
    )


def write_fc(path: Path, features: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def bbox_of(d: dict[str, Any]) -> list[float]:
    return [float(v) for v in d["bbox"]]


# -- the static catalog ---------------------------------------------------------------------------
def test_catalog_search_barbellino() -> None:
    result = search(catalog_spec())
    assert isinstance(result, SearchResult) and isinstance(result, list)
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]
    assert [i.datetime for i in result] == sorted(i.datetime for i in result)  # type: ignore[type-var]
    assert result.dropped == []
    for item in result:
        assert item.collection_id == "sentinel-2-l2a"
        assert mgrs_tile(item) == "32TNR"
        assert {"B04", "B08", "SCL"} <= set(item.assets)
        for key, asset in item.assets.items():
            p = Path(asset.href)
            assert p.is_absolute(), (item.id, key, asset.href)
            assert p.is_file(), (item.id, key, asset.href)
            assert p.parent.name == item.id
    assert result.query == {
        "stac": str(shared() / "catalog.json"),
        "collection": "sentinel-2-l2a",
        "bbox": BARBELLINO_BBOX,
        "datetime": "2017-01-01T00:00:00Z/2019-12-31T23:59:59.999999Z",
    }


def test_period_limits_are_inclusive() -> None:
    result = search(catalog_spec(period=["2017-07-03", "2019-07-23"]))
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]
    result = search(catalog_spec(period=["2017-07-04", "2019-07-23"]))
    assert [i.id for i in result] == [BARBELLINO_2019]


def test_max_cloud_cover_drops_the_cloudy_2017_item() -> None:
    cc_2017 = item_json(BARBELLINO_2017)["properties"]["eo:cloud_cover"]
    cc_2019 = item_json(BARBELLINO_2019)["properties"]["eo:cloud_cover"]
    assert cc_2017 == pytest.approx(13.1)  # what the data README calls "13 %"
    assert cc_2019 <= 5
    result = search(catalog_spec(source={"max_cloud_cover": 5}))
    assert [i.id for i in result] == [BARBELLINO_2019]
    assert len(result.dropped) == 1
    dropped = result.dropped[0]
    assert isinstance(dropped, DroppedItem)
    assert dropped.id == BARBELLINO_2017
    assert f"eo:cloud_cover {cc_2017}" in dropped.reason
    assert "source.max_cloud_cover 5" in dropped.reason
    assert result.query["max_cloud_cover"] == 5


def test_max_cloud_cover_is_inclusive() -> None:
    cc_2017 = item_json(BARBELLINO_2017)["properties"]["eo:cloud_cover"]
    result = search(catalog_spec(source={"max_cloud_cover": cc_2017}))
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]


def test_months_filter() -> None:
    july = search(
        catalog_spec(
            period={"start": BARBELLINO_PERIOD[0], "end": BARBELLINO_PERIOD[1], "months": [7]}
        )
    )
    assert [i.id for i in july] == [BARBELLINO_2017, BARBELLINO_2019]
    assert july.query["months"] == [7]


def test_no_items_in_august_repeats_the_query() -> None:
    spec = catalog_spec(
        period={"start": BARBELLINO_PERIOD[0], "end": BARBELLINO_PERIOD[1], "months": [8]}
    )
    with pytest.raises(EmptySearchError) as info:
        search(spec)
    assert isinstance(info.value, SearchError) and isinstance(info.value, S2MosaicError)
    msg = str(info.value)
    assert '"collection": "sentinel-2-l2a"' in msg
    assert f'"bbox": {json.dumps(BARBELLINO_BBOX)}' in msg
    assert '"datetime": "2017-01-01T00:00:00Z/2019-12-31T23:59:59.999999Z"' in msg
    assert '"months": [8]' in msg
    assert str(shared() / "catalog.json") in msg
    # The catalog holds 8 items, none of them in August at Barbellino: no claim that any matched.
    assert "matched" not in msg

    empty = search(spec, allow_empty=True)
    assert list(empty) == [] and empty.dropped == []
    assert empty.query["months"] == [8]


def test_wrong_collection_for_the_aoi_is_empty() -> None:
    with pytest.raises(EmptySearchError, match="sentinel-2-l1c-eolearn"):
        search(catalog_spec(source={"collection": "sentinel-2-l1c-eolearn"}))


def test_l1c_collection_with_the_eolearn_bbox() -> None:
    d = item_json(EOLEARN_IDS[0], "sentinel-2-l1c-eolearn")
    spec = catalog_spec(
        aoi=bbox_of(d),
        period=["2015-01-01", "2015-12-31"],
        source={"collection": "sentinel-2-l1c-eolearn"},
    )
    result = search(spec)
    assert [i.id for i in result] == EOLEARN_IDS
    assert {i.collection_id for i in result} == {"sentinel-2-l1c-eolearn"}
    assert all(Path(a.href).is_file() for i in result for a in i.assets.values())
    # The same bbox in the L2A collection finds nothing.
    l2a = catalog_spec(aoi=bbox_of(d), period=["2015-01-01", "2015-12-31"])
    assert list(search(l2a, allow_empty=True)) == []


@pytest.mark.parametrize("tiles", [["32TNR"], ["T32TNR"], ["32tnr", "33UXP"]])
def test_mgrs_tiles_keep_32TNR(tiles: list[str]) -> None:
    result = search(catalog_spec(source={"mgrs_tiles": tiles}))
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]
    assert result.dropped == []
    assert "32TNR" in result.query["mgrs_tiles"]


def test_mgrs_tiles_drop_other_tiles() -> None:
    spec = catalog_spec(source={"mgrs_tiles": ["32TNS"]})
    result = search(spec, allow_empty=True)
    assert list(result) == []
    assert [d.id for d in result.dropped] == [BARBELLINO_2017, BARBELLINO_2019]
    for d in result.dropped:
        assert "MGRS tile 32TNR not in source.mgrs_tiles ['32TNS']" in d.reason
    with pytest.raises(EmptySearchError) as info:
        search(spec)
    msg = str(info.value)
    assert '"mgrs_tiles": ["32TNS"]' in msg
    assert "2 item(s)" in msg and "32TNR" in msg


def test_collection_json_as_source() -> None:
    spec = catalog_spec(source={"stac": str(shared() / "sentinel-2-l2a" / "collection.json")})
    result = search(spec)
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]
    assert all(Path(a.href).is_file() for i in result for a in i.assets.values())


def test_single_item_json_as_source() -> None:
    path = shared() / "sentinel-2-l2a" / BARBELLINO_2019 / f"{BARBELLINO_2019}.json"
    result = search(catalog_spec(source={"stac": str(path)}))
    assert [i.id for i in result] == [BARBELLINO_2019]
    assert Path(result[0].assets["B04"].href).resolve() == (path.parent / "B04.tif").resolve()


def test_search_from_a_yaml_spec_with_relative_source(tmp_path: Path) -> None:
    rel = os.path.relpath(shared() / "catalog.json", tmp_path)
    (tmp_path / "spec.yaml").write_text(
        f"aoi: {BARBELLINO_BBOX}\nperiod: [2017-01-01, 2019-12-31]\nsource: {{stac: {rel}}}\n"
    )
    result = search(MosaicSpec.from_yaml(tmp_path / "spec.yaml"))
    assert [i.id for i in result] == [BARBELLINO_2017, BARBELLINO_2019]


# -- ItemCollection / FeatureCollection files -----------------------------------------------------
def test_feature_collection_with_relative_hrefs(tmp_path: Path) -> None:
    fc_dir = tmp_path / "fc" / "nested"
    features = []
    for item_id in (BARBELLINO_2019, BARBELLINO_2017):  # out of order on purpose
        d = item_json(item_id)
        d["links"] = []
        item_dir = shared() / "sentinel-2-l2a" / item_id
        for asset in d["assets"].values():
            target = (item_dir / asset["href"]).resolve()
            asset["href"] = os.path.relpath(target, fc_dir)
            assert not Path(asset["href"]).is_absolute() and asset["href"].startswith("..")
        features.append(d)
    path = write_fc(fc_dir / "items.json", features)

    result = search(catalog_spec(source={"stac": str(path)}))
    from_catalog = search(catalog_spec())
    assert (
        [i.id for i in result] == [i.id for i in from_catalog] == [BARBELLINO_2017, BARBELLINO_2019]
    )
    for got, want in zip(result, from_catalog, strict=True):
        assert set(got.assets) == set(want.assets)
        for key, asset in got.assets.items():
            assert Path(asset.href).is_absolute()
            assert Path(asset.href).is_file()
            assert Path(asset.href) == Path(want.assets[key].href).resolve()


def test_earth_search_item_collection_keeps_remote_hrefs(tmp_path: Path) -> None:
    features = example_dicts(ES_L2A)
    first = features[0]
    path = write_fc(tmp_path / "es.json", features)
    spec = MosaicSpec(
        aoi=bbox_of(first), period=["2025-07-31", "2025-07-31"], source={"stac": str(path)}
    )
    result = search(spec)
    assert first["id"] in [i.id for i in result]
    for item in result:
        assert item.assets["red"].href.startswith("https://")
        assert item.properties["earthsearch:boa_offset_applied"] is True


def test_stac_examples_file_as_source_directly() -> None:
    """The real API response (with its extra top-level key) is a valid ItemCollection source."""
    first = example_dicts(ES_C1)[0]
    spec = MosaicSpec(
        aoi=bbox_of(first),
        period=["2025-07-31", "2025-07-31"],
        source={"stac": str(shared() / "stac_examples" / ES_C1), "collection": "sentinel-2-c1-l2a"},
    )
    result = search(spec)
    assert first["id"] in [i.id for i in result]
    assert all(mgrs_tile(i) for i in result)


def test_search_drops_reprocessed_duplicates(tmp_path: Path) -> None:
    original = example_dicts(ES_L2A)[0]
    older = copy.deepcopy(original)
    older["id"] = original["id"].replace("_0_L2A", "_1_L2A")
    older["properties"]["s2:processing_baseline"] = "04.00"
    older["properties"]["s2:generation_time"] = "2022-01-01T00:00:00.000000Z"
    path = write_fc(tmp_path / "dups.json", [older, original])
    spec = MosaicSpec(
        aoi=bbox_of(original), period=["2025-07-31", "2025-07-31"], source={"stac": str(path)}
    )
    result = search(spec)
    assert [i.id for i in result] == [original["id"]]
    assert [d.id for d in result.dropped] == [older["id"]]
    assert original["id"] in result.dropped[0].reason


# -- errors from the source -----------------------------------------------------------------------
def test_missing_source_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "catalog.json"
    with pytest.raises(SearchError) as info:
        search(catalog_spec(source={"stac": str(missing)}))
    assert not isinstance(info.value, EmptySearchError)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
    assert "STAC API URL" in str(info.value)


@pytest.mark.parametrize("content", ["{not json", ""], ids=["broken", "empty"])
def test_unreadable_json_source(tmp_path: Path, content: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(content)
    with pytest.raises(SearchError) as info:
        search(catalog_spec(source={"stac": str(path)}))
    assert str(path) in str(info.value)
    assert "not readable JSON" in str(info.value)


def test_directory_as_source(tmp_path: Path) -> None:
    with pytest.raises(SearchError) as info:
        search(catalog_spec(source={"stac": str(tmp_path)}))
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        {"name": "not stac"},
        [1, 2, 3],
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {},
                    "geometry": {"type": "Point", "coordinates": [10.04, 46.06]},
                }
            ],
        },
    ],
    ids=["object", "list", "plain-geojson"],
)
def test_non_stac_json_source(tmp_path: Path, data: Any) -> None:
    path = tmp_path / "not-stac.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SearchError) as info:
        search(catalog_spec(source={"stac": str(path)}))
    assert str(path) in str(info.value)


# -- dedupe ---------------------------------------------------------------------------------------
_T0 = dt.datetime(2024, 6, 21, 10, 10, 31, 24000, tzinfo=dt.UTC)


def make_item(
    item_id: str,
    *,
    when: dt.datetime = _T0,
    tile: str = "32TNR",
    baseline: str | None = "05.10",
    generated: str = "2024-06-21T12:00:00Z",
    platform: str = "sentinel-2a",
    **props: Any,
) -> pystac.Item:
    properties: dict[str, Any] = {
        "platform": platform,
        "s2:mgrs_tile": tile,
        "s2:generation_time": generated,
        **props,
    }
    if baseline is not None:
        properties["s2:processing_baseline"] = baseline
    return pystac.Item(
        id=item_id,
        geometry={
            "type": "Polygon",
            "coordinates": [[[10, 46], [11, 46], [11, 47], [10, 47], [10, 46]]],
        },
        bbox=[10, 46, 11, 47],
        datetime=when,
        properties=properties,
    )


def test_dedupe_keeps_the_newest_baseline() -> None:
    old = make_item("S2A_MSIL2A_20240621_N0400", baseline="04.00", generated="2024-06-21T12:00:00Z")
    new = make_item("S2A_MSIL2A_20240621_N0509", baseline="05.09", generated="2024-09-01T08:00:00Z")
    for order in ([old, new], [new, old]):
        kept, dropped = dedupe(order)
        assert [i.id for i in kept] == [new.id]
        assert [d.id for d in dropped] == [old.id]
        assert f"duplicate of {new.id}" in dropped[0].reason


def test_dedupe_baseline_wins_over_generation_time() -> None:
    # A later generation of an older baseline (e.g. a late re-run) still loses to the newer baseline.
    old = make_item("old", baseline="04.00", generated="2025-01-01T00:00:00Z")
    new = make_item("new", baseline="05.09", generated="2024-01-01T00:00:00Z")
    kept, _ = dedupe([new, old])
    assert [i.id for i in kept] == ["new"]


def test_dedupe_same_baseline_keeps_the_latest_generation() -> None:
    a = make_item("a", baseline="05.10", generated="2024-06-21T12:00:00Z")
    b = make_item("b", baseline="05.10", generated="2024-06-22T12:00:00Z")
    kept, dropped = dedupe([b, a])
    assert [i.id for i in kept] == ["b"]
    assert dropped == [DroppedItem("a", dropped[0].reason)]
    assert "duplicate of b" in dropped[0].reason


def test_dedupe_reads_the_baseline_from_the_product_uri() -> None:
    old = make_item(
        "old",
        baseline=None,
        **{"s2:product_uri": "S2A_MSIL2A_20240621T101031_N0400_R022_T32TNR_x.SAFE"},
    )
    new = make_item(
        "new",
        baseline=None,
        generated="2020-01-01T00:00:00Z",
        **{"s2:product_uri": "S2A_MSIL2A_20240621T101031_N0510_R022_T32TNR_x.SAFE"},
    )
    kept, _ = dedupe([new, old])
    assert [i.id for i in kept] == ["new"]


def test_dedupe_three_versions() -> None:
    items = [make_item(f"v{b}", baseline=b) for b in ("05.09", "04.00", "05.10")]
    kept, dropped = dedupe(items)
    assert [i.id for i in kept] == ["v05.10"]
    assert sorted(d.id for d in dropped) == ["v04.00", "v05.09"]
    assert all("duplicate of v05.10" in d.reason for d in dropped)


def test_dedupe_merges_within_the_sensing_second() -> None:
    a = make_item("a", when=_T0.replace(microsecond=24000), baseline="04.00")
    b = make_item("b", when=_T0.replace(microsecond=512000), baseline="05.10")
    kept, _ = dedupe([a, b])
    assert [i.id for i in kept] == ["b"]


@pytest.mark.parametrize(
    "other",
    [
        {"tile": "32TNS"},
        {"when": _T0 + dt.timedelta(days=5)},
        {"when": _T0 + dt.timedelta(seconds=3)},
        {"platform": "sentinel-2b"},
    ],
    ids=["other-tile", "other-day", "other-second", "other-platform"],
)
def test_dedupe_does_not_merge_different_acquisitions(other: dict[str, Any]) -> None:
    a = make_item("a", baseline="04.00")
    b = make_item("b", baseline="05.10", **other)
    kept, dropped = dedupe([a, b])
    assert sorted(i.id for i in kept) == ["a", "b"]
    assert dropped == []


def test_dedupe_real_earth_search_copy() -> None:
    original = example_items(ES_C1)[0]
    reprocessed = original.clone()
    reprocessed.id = original.id + "_old"
    reprocessed.properties["s2:processing_baseline"] = "04.00"
    reprocessed.properties["s2:generation_time"] = "2023-01-01T00:00:00.000000Z"
    kept, dropped = dedupe([reprocessed, original])
    assert [i.id for i in kept] == [original.id]
    assert [d.id for d in dropped] == [reprocessed.id]
    assert original.id in dropped[0].reason


def test_dedupe_real_odc_stac_sites() -> None:
    """Two real PC query results overlap in one item; one date holds 9 different tiles."""
    site1, site2 = example_items(ODC_SITE1), example_items(ODC_SITE2)
    shared_ids = {i.id for i in site1} & {i.id for i in site2}
    assert len(shared_ids) == 1
    kept, dropped = dedupe(site1 + site2)
    assert len(kept) == len(site1) + len(site2) - 1
    assert [d.id for d in dropped] == list(shared_ids)
    # site1: one acquisition time, nine tiles, none merged
    kept1, dropped1 = dedupe(site1)
    assert len({i.datetime for i in site1}) == 1
    assert len(kept1) == len(site1) == 9 and dropped1 == []


def test_dedupe_reason_shows_the_baselines_as_written() -> None:
    old = make_item("old", baseline="04.00")
    new = make_item("new", baseline="05.09")
    _, dropped = dedupe([old, new])
    assert "04.00" in dropped[0].reason and "05.09" in dropped[0].reason


# -- BOA offset on real metadata ------------------------------------------------------------------
REFLECTANCE_ES = ["coastal", "blue", "green", "red", "rededge1", "nir", "nir08", "swir16", "swir22"]


def test_boa_offset_earth_search_l2a_flag_wins() -> None:
    items = example_items(ES_L2A)
    assert items
    for item in items:
        assert item.properties["s2:processing_baseline"] == "05.11"
        assert item.properties["earthsearch:boa_offset_applied"] is True
        for key in REFLECTANCE_ES:
            assert item.assets[key].extra_fields["raster:bands"][0]["offset"] == -0.1
            assert boa_offset(item, key) == 0


def test_boa_offset_earth_search_c1_from_raster_bands() -> None:
    items = example_items(ES_C1)
    assert items
    for item in items:
        assert "earthsearch:boa_offset_applied" not in item.properties
        for key in REFLECTANCE_ES:
            assert item.assets[key].extra_fields["raster:bands"][0]["offset"] == -0.1
            assert boa_offset(item, key) == -1000
        # Declared offset 0 with another scale (aerosol optical thickness): nothing to add.
        assert boa_offset(item, "aot") == 0


@pytest.mark.parametrize("name", [ODC_SITE1, ODC_SITE2, ODC_PC_ITEM])
def test_boa_offset_odc_stac_baseline_02(name: str) -> None:
    for item in example_items(name):
        assert item.properties["s2:processing_baseline"].startswith("02.")
        assert "raster:bands" not in item.assets["B04"].extra_fields
        assert boa_offset(item, "B04") == 0


def test_boa_offset_old_earth_search_item_without_metadata() -> None:
    (item,) = example_items(ODC_ES_OLD_ITEM)
    assert "s2:processing_baseline" not in item.properties
    assert boa_offset(item, "B04") == 0


def test_boa_offset_rio_tiler_item_declares_zero() -> None:
    (item,) = example_items(RIO_TILER_ITEM)
    assert item.properties["earthsearch:boa_offset_applied"] is False
    assert item.properties["s2:processing_baseline"] == "02.14"
    assert boa_offset(item, "red") == 0


def test_boa_offset_shared_catalog_items_are_zero() -> None:
    for item in search(catalog_spec()):
        assert boa_offset(item, "B04") == 0
        assert boa_offset(item, "B08") == 0


def pc_like(baseline: str | None = "05.10", **props: Any) -> pystac.Item:
    """The real PC item from odc-stac's tests, moved to a newer processing baseline."""
    (item,) = example_items(ODC_PC_ITEM)
    if baseline is None:
        del item.properties["s2:processing_baseline"]
    else:
        item.properties["s2:processing_baseline"] = baseline
    item.properties.update(props)
    return item


def test_boa_offset_planetary_computer_baseline_05() -> None:
    item = pc_like("05.10")
    assert "raster:bands" not in item.assets["B04"].extra_fields
    assert "earthsearch:boa_offset_applied" not in item.properties
    assert boa_offset(item, "B04") == -1000
    assert boa_offset(item, "B8A") == -1000
    assert boa_offset(pc_like("04.00"), "B04") == -1000
    assert boa_offset(pc_like("03.01"), "B04") == 0


def test_boa_offset_baseline_from_the_product_uri() -> None:
    uri = "S2B_MSIL2A_20230629T212529_N0509_R043_T06VVN_20230629T231234.SAFE"
    assert boa_offset(pc_like(None, **{"s2:product_uri": uri}), "B04") == -1000


def test_boa_offset_flag_false_baseline_04_raster_offset() -> None:
    (item,) = example_items(RIO_TILER_ITEM)
    item.properties["s2:processing_baseline"] = "04.00"
    item.properties["earthsearch:boa_offset_applied"] = False
    item.assets["red"].extra_fields["raster:bands"][0]["offset"] = -0.1
    assert boa_offset(item, "red") == -1000


@pytest.mark.parametrize("key", ["AOT", "WVP"])
def test_boa_offset_only_for_reflectance(key: str) -> None:
    item = pc_like("05.10")
    assert key in item.assets
    assert boa_offset(item, key) == 0


# -- MGRS tile ------------------------------------------------------------------------------------
def strip(item: pystac.Item, *keys: str) -> pystac.Item:
    item = item.clone()
    for k in keys:
        item.properties.pop(k, None)
    return item


MGRS_KEYS = ("s2:mgrs_tile", "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square", "grid:code")


def test_mgrs_tile_from_s2_property() -> None:
    assert mgrs_tile(pystac.Item.from_dict(item_json(BARBELLINO_2017))) == "32TNR"
    (pc,) = example_items(ODC_PC_ITEM)
    assert mgrs_tile(pc) == "06VVN"
    pc.properties["s2:mgrs_tile"] = "T06VVN"
    assert mgrs_tile(pc) == "06VVN"


def test_mgrs_tile_from_mgrs_extension() -> None:
    items = example_items(ES_L2A)
    for item in items:
        item = strip(item, "grid:code")
        p = item.properties
        expected = f"{p['mgrs:utm_zone']:02d}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}"
        assert mgrs_tile(item) == expected
    (rio,) = example_items(RIO_TILER_ITEM)
    rio = strip(rio, "grid:code")
    rio.properties.update({"mgrs:utm_zone": 6, "mgrs:latitude_band": "v", "mgrs:grid_square": "vn"})
    assert mgrs_tile(rio) == "06VVN"  # zero-padded, upper case


def test_mgrs_tile_from_grid_code() -> None:
    for item in example_items(ES_C1):
        code = item.properties["grid:code"]
        assert mgrs_tile(
            strip(item, "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")
        ) == code.removeprefix("MGRS-")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (ES_C1, "20EPT"),  # S2B_T20EPT_20250731T131905_L2A
        (ES_L2A, "20EPT"),  # S2B_20EPT_20250731_0_L2A
        (ODC_PC_ITEM, "06VVN"),  # S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531
        (ODC_ES_OLD_ITEM, "28QCH"),  # S2A_28QCH_20200714_0_L2A
    ],
)
def test_mgrs_tile_from_the_id(name: str, expected: str) -> None:
    item = strip(example_items(name)[0], *MGRS_KEYS)
    assert mgrs_tile(item) == expected


def test_mgrs_tile_unknown() -> None:
    item = strip(pystac.Item.from_dict(item_json(BARBELLINO_2019)), *MGRS_KEYS)
    assert mgrs_tile(item) is None


def test_mgrs_tile_precedence() -> None:
    item = example_items(ES_L2A)[0]
    item.properties["s2:mgrs_tile"] = "33UXP"
    assert mgrs_tile(item) == "33UXP"
    assert re.fullmatch(r"\d{2}[C-X][A-Z]{2}", mgrs_tile(strip(item, "s2:mgrs_tile")) or "")
