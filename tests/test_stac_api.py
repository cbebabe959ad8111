"""`s2mosaic._search` and `s2mosaic.mosaic` against a real STAC API (pgstac) serving the demo catalog.

The API and the static ``catalog.json`` it was loaded from must give the same items, in the same
order, with the same reprocessed duplicate dropped, and the same mosaic. Needs:

* ``STAC_API_URL``: a STAC API loaded with the demo catalog (``shared/infra/stac_api_up.sh``
  with ``STAC_FIXTURE_DIR`` from ``tests/stac_fixture.py``);
* ``S2MOSAIC_DEMO_CATALOG``: the demo catalog directory (or its ``catalog.json``) that was loaded.

``.ci/run`` sets both. Elsewhere every test here skips, saying which variable is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import dask
import numpy as np
import pystac
import pytest
import shapely.geometry
from shapely.geometry.base import BaseGeometry

import s2mosaic
from s2mosaic._items import mgrs_tile
from s2mosaic.demo import DEMO_AOI_BBOX, DEMO_PERIOD

API_URL = os.environ.get("STAC_API_URL", "")
DEMO_CATALOG = os.environ.get("S2MOSAIC_DEMO_CATALOG", "")
COLLECTION = "sentinel-2-l2a"
DUPLICATE = "reprocessed duplicate"

_missing = [
    n for n, v in (("STAC_API_URL", API_URL), ("S2MOSAIC_DEMO_CATALOG", DEMO_CATALOG)) if not v
]
pytestmark = [
    pytest.mark.stacapi,
    pytest.mark.skipif(
        bool(_missing),
        reason=f"{' and '.join(_missing)} not set: these tests need a STAC API loaded with the demo "
        "catalog (python tests/stac_fixture.py OUTDIR; STAC_FIXTURE_DIR=OUTDIR/fixture bash "
        "../shared/infra/stac_api_up.sh; STAC_API_URL=http://127.0.0.1:8082 "
        "S2MOSAIC_DEMO_CATALOG=OUTDIR/catalog), as .ci/run does",
    ),
]


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_json() -> Path:
    p = Path(DEMO_CATALOG)
    p = p / "catalog.json" if p.is_dir() else p
    assert p.is_file(), f"S2MOSAIC_DEMO_CATALOG={DEMO_CATALOG!r}: no catalog.json there"
    return p


@pytest.fixture(scope="module")
def static_items(catalog_json: Path) -> dict[str, pystac.Item]:
    """Every item of the static catalog, asset hrefs made absolute (as `search` does)."""
    items = {}
    for item in pystac.read_file(str(catalog_json.resolve())).get_items(recursive=True):
        item.make_asset_hrefs_absolute()
        items[item.id] = item
    return items


@pytest.fixture(scope="module")
def client() -> Any:
    from pystac_client import Client

    return Client.open(API_URL)


def make_spec(
    stac: str | Path,
    aoi: Any = DEMO_AOI_BBOX,
    period: Any = DEMO_PERIOD,
    max_cloud_cover: float | None = None,
) -> s2mosaic.MosaicSpec:
    return s2mosaic.MosaicSpec(
        aoi=list(aoi),
        period=list(period),
        source={"stac": str(stac), "max_cloud_cover": max_cloud_cover},
        runtime={"scheduler": "synchronous", "chunks": 256},
    )


def duplicates(result: s2mosaic.SearchResult) -> list[str]:
    return sorted(d.id for d in result.dropped if d.reason.startswith(DUPLICATE))


def tile_region(items: dict[str, pystac.Item], aoi: BaseGeometry) -> tuple[str, BaseGeometry]:
    """An MGRS tile and the part of the AOI that only its footprints cover."""
    by_tile: dict[str, list[BaseGeometry]] = {}
    for item in items.values():
        by_tile.setdefault(str(mgrs_tile(item)), []).append(shapely.geometry.shape(item.geometry))
    assert len(by_tile) == 2, f"the demo catalog should hold two MGRS tiles, not {sorted(by_tile)}"
    unions = {t: shapely.union_all(g) for t, g in by_tile.items()}
    for tile, union in sorted(unions.items()):
        others = shapely.union_all([u for t, u in unions.items() if t != tile])
        only = union.difference(others).intersection(aoi)
        if not only.is_empty:
            return tile, only
    raise AssertionError("no part of the AOI is covered by one tile only")


def small_box_in(region: BaseGeometry, half: float = 0.002) -> list[float]:
    """A bbox of about 2*half degrees inside ``region``."""
    p = region.representative_point()
    while half > 1e-5:
        box = [p.x - half, p.y - half, p.x + half, p.y + half]
        if region.contains(shapely.geometry.box(*box)):
            return box
        half /= 2
    raise AssertionError(f"no box fits in {region.wkt[:200]}")


def query_cases(items: dict[str, pystac.Item]) -> dict[str, dict[str, Any]]:
    """The searches compared between the API and the static catalog (built from the data)."""
    aoi = shapely.geometry.box(*DEMO_AOI_BBOX)
    days = sorted({i.datetime.date() for i in items.values() if i.datetime})
    mid = days[len(days) // 2]
    _, only = tile_region(items, aoi)
    return {
        "full": {},
        "sub-period": {"period": [DEMO_PERIOD[0], mid.isoformat()]},
        "one-tile-bbox": {"aoi": small_box_in(only)},
        "cloud<=30": {"max_cloud_cover": 30},
        "cloud<=60": {"max_cloud_cover": 60},
        "one-tile-cloud<=60-late": {
            "aoi": small_box_in(only),
            "max_cloud_cover": 60,
            "period": [mid.isoformat(), DEMO_PERIOD[1]],
        },
    }


CASES = ["full", "sub-period", "one-tile-bbox", "cloud<=30", "cloud<=60", "one-tile-cloud<=60-late"]


def oracle(
    items: dict[str, pystac.Item], spec: s2mosaic.MosaicSpec, lt: float | None = None
) -> set[str]:
    """Ids a correct search returns before dedupe, worked out here from the static items."""
    aoi = spec.aoi.geometry
    out = set()
    for item in items.values():
        cc = item.properties["eo:cloud_cover"]
        if not shapely.geometry.shape(item.geometry).intersects(aoi):
            continue
        if not spec.period.contains(item.datetime):
            continue
        limit = spec.source.max_cloud_cover
        if (limit is not None and cc > limit) or (lt is not None and not cc < lt):
            continue
        out.add(item.id)
    return out


# -- the API serves the catalog -------------------------------------------------------------------
def test_api_serves_the_demo_catalog_unchanged(
    client: Any, static_items: dict[str, pystac.Item]
) -> None:
    assert client.conforms_to("ITEM_SEARCH")
    api = {i.id: i for i in client.search(collections=[COLLECTION]).items()}
    assert sorted(api) == sorted(static_items), (
        "the API does not hold exactly the items of S2MOSAIC_DEMO_CATALOG; was another catalog "
        "loaded into it?"
    )
    for item_id, item in static_items.items():
        a, s = api[item_id].to_dict(), item.to_dict()
        for asset in a["assets"].values():  # the fixture turns local paths into file:// URIs
            asset["href"] = unquote(urlparse(asset["href"]).path)
        for key in ("properties", "assets", "geometry", "bbox", "collection"):
            assert a.get(key) == s.get(key), f"{item_id}: {key} changed on the way through the API"


def test_api_asset_hrefs_are_existing_local_files(
    client: Any, static_items: dict[str, pystac.Item]
) -> None:
    for item in client.search(collections=[COLLECTION]).items():
        for key, asset in item.assets.items():
            # What readers open: the href resolved against the item's URL on the API.
            href = asset.get_absolute_href() or ""
            url = urlparse(href)
            path = Path(unquote(url.path))
            assert url.scheme in ("", "file") and path.is_absolute() and path.is_file(), (
                f"item {item.id} asset {key}: href {asset.href!r} (resolved: {href!r}) is not an "
                "existing local file, so a mosaic from the API could not read it"
            )
            assert path == Path(static_items[item.id].assets[key].href)


# -- s2mosaic._search: API == static catalog -------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_search_api_equals_static(
    case: str, catalog_json: Path, static_items: dict[str, pystac.Item]
) -> None:
    kwargs = query_cases(static_items)[case]
    spec_api = make_spec(API_URL, **kwargs)
    spec_static = make_spec(catalog_json, **kwargs)

    api = s2mosaic.search(spec_api)
    static = s2mosaic.search(spec_static)

    api_ids, static_ids = [i.id for i in api], [i.id for i in static]
    assert api_ids == static_ids
    assert api_ids == [i.id for i in sorted(api, key=lambda i: (i.datetime, i.id))]
    assert duplicates(api) == duplicates(static)
    # Against an oracle computed here: kept + dropped duplicates = every matching item.
    assert set(api_ids) | set(duplicates(api)) == oracle(static_items, spec_api)
    assert not set(api_ids) & set(duplicates(api))

    if case == "full":
        # The demo's reprocessed pair: the older `_0` is dropped, the newer `_1` kept.
        assert len(duplicates(api)) == 1 and duplicates(api)[0].endswith("_0_L2A"), duplicates(api)
        kept = duplicates(api)[0].removesuffix("_0_L2A") + "_1_L2A"
        assert kept in api_ids
    if case.startswith("one-tile"):
        tiles = {mgrs_tile(i) for i in api}
        assert len(tiles) == 1, f"a bbox inside one tile found items of {sorted(map(str, tiles))}"
    if case == "sub-period":
        assert 0 < len(api_ids) < len(s2mosaic.search(make_spec(API_URL)))


def test_cloud_cover_thresholds_nest(catalog_json: Path) -> None:
    ids = {
        n: [i.id for i in s2mosaic.search(make_spec(API_URL, max_cloud_cover=n))]
        for n in (30, 60, None)
    }
    assert set(ids[30]) < set(ids[60]) < set(ids[None]), "the demo's cloud cover should span 30-60"


# -- the `query` extension agrees with the CQL2 `filter` ------------------------------------------
@pytest.mark.parametrize("limit", [30, 60])
def test_query_extension_agrees_with_cql2_filter(
    limit: float, client: Any, static_items: dict[str, pystac.Item]
) -> None:
    assert client.conforms_to("QUERY") and client.conforms_to("FILTER")
    spec = make_spec(API_URL)
    common = {
        "collections": [COLLECTION],
        "bbox": list(DEMO_AOI_BBOX),
        "datetime": spec.period.datetime_range,
    }

    def ids(**kw: Any) -> set[str]:
        return {i.id for i in client.search(**common, **kw).items()}

    by_query = ids(query={"eo:cloud_cover": {"lt": limit}})
    by_filter = ids(
        filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, limit]}, filter_lang="cql2-json"
    )
    assert by_query == by_filter
    assert by_query == oracle(static_items, spec, lt=limit)
    assert by_query, f"no demo item has eo:cloud_cover < {limit}"

    # s2mosaic.search (CQL2 `<=` since the API conforms to FILTER), kept + duplicates:
    result = s2mosaic.search(make_spec(API_URL, max_cloud_cover=limit))
    by_query_lte = ids(query={"eo:cloud_cover": {"lte": limit}})
    assert {i.id for i in result} | set(duplicates(result)) == by_query_lte


def test_search_query_extension_path_equals_filter_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide FILTER conformance: `search` falls back to `query` (Earth Search style), same items."""
    from pystac_client import Client

    spec = make_spec(API_URL, max_cloud_cover=40)
    sent: list[dict[str, Any]] = []
    search, conforms = Client.search, Client.conforms_to

    def spy(self: Any, *args: Any, **kw: Any) -> Any:
        sent.append(kw)
        return search(self, *args, **kw)

    monkeypatch.setattr(Client, "search", spy)
    with_filter = s2mosaic.search(spec)
    assert "filter" in sent[-1] and "query" not in sent[-1]

    monkeypatch.setattr(
        Client,
        "conforms_to",
        lambda self, c: (
            False if str(getattr(c, "name", c)).upper() == "FILTER" else conforms(self, c)
        ),
    )
    with_query = s2mosaic.search(spec)
    assert "query" in sent[-1] and "filter" not in sent[-1], sent[-1]
    assert [i.id for i in with_query] == [i.id for i in with_filter]
    assert duplicates(with_query) == duplicates(with_filter)


# -- empty searches -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("aoi", "period"),
    [
        (DEMO_AOI_BBOX, ("2019-01-01", "2019-01-31")),  # no acquisitions then
        ((-30.0, -10.0, -29.9, -9.9), DEMO_PERIOD),  # mid-Atlantic
    ],
    ids=["period", "bbox"],
)
def test_empty_search_raises_with_the_query(aoi: Any, period: Any) -> None:
    spec = make_spec(API_URL, aoi=aoi, period=period)
    with pytest.raises(s2mosaic.EmptySearchError) as info:
        s2mosaic.search(spec)
    msg = str(info.value)
    assert spec.period.datetime_range in msg
    assert period[0] in msg
    for v in aoi:
        assert json.dumps(float(v)) in msg, f"bbox value {v} not in: {msg}"
    assert s2mosaic.search(spec, allow_empty=True) == []


# -- end to end: a mosaic from the API's items equals one from the static catalog -----------------
def test_mosaic_from_api_items_equals_static(
    catalog_json: Path, static_items: dict[str, pystac.Item]
) -> None:
    # ~450 m x 450 m across the 12°E zone line: both tiles (two CRSs), the duplicate, the
    # baseline-05.10 BOA offset and the partial swath all take part.
    lon, lat = 12.0, 47.5
    aoi = [lon - 0.003, lat - 0.002, lon + 0.003, lat + 0.002]
    spec_api = make_spec(API_URL, aoi=aoi, max_cloud_cover=80)
    spec_static = make_spec(catalog_json, aoi=aoi, max_cloud_cover=80)
    api_items = s2mosaic.search(spec_api)
    static_items_found = s2mosaic.search(spec_static)
    assert [i.id for i in api_items] == [i.id for i in static_items_found]
    assert {mgrs_tile(i) for i in api_items} == {mgrs_tile(i) for i in static_items.values()}
    assert duplicates(api_items) and duplicates(api_items) == duplicates(static_items_found)
    assert any(i.properties.get("s2:processing_baseline", "") >= "04.00" for i in api_items)

    with dask.config.set(scheduler="synchronous"):
        m_api = s2mosaic.mosaic(spec_api, items=api_items).compute()
        m_static = s2mosaic.mosaic(spec_static, items=static_items_found).compute()

    assert sorted(m_api.data_vars) == sorted(m_static.data_vars)
    assert set(spec_api.bands) <= set(m_api.data_vars)
    assert m_api.sizes == m_static.sizes
    for name in m_api.data_vars:
        a, s = m_api[name].values, m_static[name].values
        assert a.dtype == s.dtype, name
        assert np.array_equal(a, s), f"{name}: {int((a != s).sum())} of {a.size} pixels differ"
    for name in m_api.coords:
        assert np.array_equal(m_api[name].values, m_static[name].values), name
    count = m_api["count"].values if "count" in m_api else None
    assert count is None or count.max() > 0, "the mosaic is all nodata: the test proves nothing"
    assert int((m_api[spec_api.bands[0]].values > 0).sum()) > 0
    # the provenance names the API as the source
    prov = json.loads(m_api.attrs.get("s2mosaic_provenance", "{}"))
    assert not prov or prov["search_query"].get("stac") == API_URL
