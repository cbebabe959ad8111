"""Find the STAC items of a spec: a STAC API (pystac-client) or a static catalog / ItemCollection.

Both paths apply the same filters (AOI, period and months, ``eo:cloud_cover``, MGRS tile), drop
reprocessed duplicates of one acquisition (keeping the newest processing baseline) and return
items sorted by acquisition time. What each item's fields mean (datetime, MGRS tile, processing
baseline) is read through :mod:`s2mosaic._items`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import shapely.geometry

from ._items import (
    asset_problem,
    footprint,
    format_baseline,
    item_datetime,
    mgrs_tile,
    processing_baseline,
    resolve_band,
)
from ._sign import load_callable
from ._spec import MosaicSpec, SourceSpec
from .errors import DataError, EmptySearchError, SearchError

__all__ = [
    "DroppedItem",
    "SearchResult",
    "dedupe",
    "search",
]

@dataclass(frozen=True)
class DroppedItem:
    """An item the search found but did not keep, and why (recorded in the provenance)."""

    id: str
    reason: str


class SearchResult(list[pystac.Item]):
    """A plain ``list`` of items (sorted by time), plus what was dropped and the query used."""

    def __init__(self, items: Iterable[pystac.Item], dropped: Sequence[DroppedItem] = (),
                 query: dict[str, Any] | None = None) -> None:
        super().__init__(items)
        self.dropped: list[DroppedItem] = list(dropped)
        self.query: dict[str, Any] = dict(query or {})


@dataclass
class _Query:
    source: SourceSpec
    intersects: dict[str, Any]
    datetime: str
    months: tuple[int, ...] | None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "stac": self.source.stac,
            "collection": self.source.collection,
            "bbox": list(shapely.geometry.shape(self.intersects).bounds),
            "datetime": self.datetime,
        }
        if self.months:
            d["months"] = list(self.months)
        if self.source.max_cloud_cover is not None:
            d["max_cloud_cover"] = self.source.max_cloud_cover
        if self.source.mgrs_tiles:
            d["mgrs_tiles"] = list(self.source.mgrs_tiles)
        return d


def search(spec: MosaicSpec, *, allow_empty: bool = False) -> SearchResult:
    """Search the spec's STAC source for the items to mosaic.

    Parameters
    ----------
    spec
        The mosaic spec; ``spec.source``, ``spec.aoi`` and ``spec.period`` are used.
    allow_empty
        Return an empty result instead of raising :class:`EmptySearchError`.

    Returns
    -------
    SearchResult
        A list of ``pystac.Item`` sorted by datetime then id, with ``.dropped`` (duplicates and
        items filtered out client-side) and ``.query``.

    Examples
    --------
    >>> items = search(MosaicSpec.from_yaml("my-area.yaml"))  # doctest: +SKIP
    >>> [i.id for i in items][:2]  # doctest: +SKIP
    ['S2B_32TQT_20240502_0_L2A', 'S2B_33TUN_20240502_0_L2A']
    """
    q = _Query(
        source=spec.source,
        intersects=spec.aoi.to_geojson(),
        datetime=spec.period.datetime_range,
        months=spec.period.months,
    )
    unreadable: list[DroppedItem] = []
    found = _search_api(q) if spec.source.is_api else _search_static(q, unreadable)
    kept, dropped = _filter(found, q, spec)
    dropped = unreadable + dropped
    kept, dups = dedupe(kept)
    kept.sort(key=lambda i: (item_datetime(i), i.id))
    result = SearchResult(kept, dropped + dups, q.describe())
    if not result and not allow_empty:
        why = (f"; {len(result.dropped)} item(s) matched but were filtered out: "
               f"{result.dropped[0].reason}{', …' if len(result.dropped) > 1 else ''}"
               if result.dropped else "")
        raise EmptySearchError(
            f"No items found for query {json.dumps(q.describe())}{why}. Widen the period, the AOI "
            "or source.max_cloud_cover, or check source.collection."
        )
    return result


# -- sources ------------------------------------------------------------------------------------
def _search_api(q: _Query) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    # source.sign is deliberately not pystac-client's `modifier`: that would sign the items'
    # hrefs now, and signed hrefs would reach the graph and the run manifest and expire there.
    # Assets are signed per read (s2mosaic._sign); only the API requests can be modified here.
    modifier = load_callable(q.source.request_modifier) if q.source.request_modifier else None
    try:
        client = Client.open(q.source.stac, request_modifier=modifier)
    except (APIError, OSError, ValueError) as e:
        raise SearchError(f"Cannot open the STAC API {q.source.stac!r} (source.stac): {e}") from e
    kwargs: dict[str, Any] = {
        "collections": [q.source.collection],
        "intersects": q.intersects,
        "datetime": q.datetime,
    }
    if q.source.max_cloud_cover is not None:
        # CQL2 where the API has it (pgstac, Planetary Computer); the older `query` extension
        # otherwise (Earth Search). Filters are re-applied client-side below either way.
        if client.conforms_to("FILTER"):
            kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"},
                                                     q.source.max_cloud_cover]}
            kwargs["filter_lang"] = "cql2-json"
        elif client.conforms_to("QUERY"):
            kwargs["query"] = {"eo:cloud_cover": {"lte": q.source.max_cloud_cover}}
    try:
        return list(client.search(**kwargs).items())
    except (APIError, OSError) as e:
        raise SearchError(f"STAC API search failed for {json.dumps(q.describe())}: {e}") from e


def _search_static(q: _Query, dropped: list[DroppedItem]) -> list[pystac.Item]:
    """Items of a local catalog or ItemCollection; items that cannot be read are appended to
    ``dropped`` with the field at fault (one bad item does not fail the search)."""
    path = Path(q.source.stac)
    if not path.exists():
        raise SearchError(
            f"source.stac {q.source.stac!r} does not exist; give a STAC API URL or the path of a "
            "catalog.json, collection.json or ItemCollection (FeatureCollection) JSON file"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SearchError(f"source.stac {str(path)!r} is not readable JSON: {e}") from e
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in ("FeatureCollection", "Catalog", "Collection", "Feature"):
        raise SearchError(
            f"source.stac {str(path)!r} is JSON but not STAC (type {kind!r}); expected a "
            "catalog.json, collection.json, item or ItemCollection (FeatureCollection)"
        )
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise SearchError(f"source.stac {str(path)!r}: 'features' is {features!r}; an "
                              "ItemCollection needs a list of STAC items there")
        items: list[pystac.Item] = []
        for i, feature in enumerate(features):
            item = _parse_item(feature, f"source.stac {str(path)!r} features[{i}]", dropped)
            if item is not None:
                _absolute_hrefs(item, path.resolve().parent)
                items.append(item)
        return items
    try:
        root = pystac.read_file(str(path.resolve()))
    except _BAD as e:
        raise SearchError(f"source.stac {str(path)!r} is not a STAC catalog or collection: {e}") from e
    if isinstance(root, pystac.Item):
        items = [root]
    elif isinstance(root, pystac.Catalog):
        items = list(_catalog_items(root, dropped))
    else:  # pragma: no cover - read_file returns Catalog/Collection/Item
        raise SearchError(f"source.stac {str(path)!r}: unsupported STAC object {type(root).__name__}")
    for item in items:
        item.make_asset_hrefs_absolute()
    return items


_BAD = (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError, AttributeError,
        IndexError)


def _catalog_items(cat: pystac.Catalog, dropped: list[DroppedItem]) -> Iterator[pystac.Item]:
    """``cat.get_items(recursive=True)``, one item link at a time so one unreadable item file
    is dropped (naming it) instead of failing the search."""
    for link in cat.get_links(pystac.RelType.ITEM):
        href = link.get_absolute_href() or link.href
        try:
            link.resolve_stac_object(root=cat.get_root())
        except (*_BAD, OSError, UnicodeDecodeError) as e:
            try:
                raw = json.loads(Path(href).read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                raw = None
            _parse_item(raw, f"item file {href!r} (linked from catalog {cat.id!r})", dropped,
                        error=e)
            continue
        if isinstance(link.target, pystac.Item):
            yield link.target
    for child in cat.get_children():
        yield from _catalog_items(child, dropped)


def _parse_item(data: object, where: str, dropped: list[DroppedItem],
                error: Exception | None = None) -> pystac.Item | None:
    """A STAC item from its JSON, or None with a :class:`DroppedItem` naming the field at fault.

    An item without an id cannot be recorded as dropped: that raises, naming ``where``.
    """
    if not isinstance(data, dict):
        raise SearchError(f"{where} is {type(data).__name__} {str(data)[:80]!r}, not a STAC item "
                          "(a JSON object with 'id', 'geometry', 'properties' and 'assets')")
    item_id = data.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise SearchError(f"{where} has 'id' {item_id!r}; every STAC item needs a non-empty "
                          "string id. Fix or remove that item")
    reason = _item_json_problem(data)
    if reason is None and error is None:
        try:
            return pystac.Item.from_dict(data, preserve_dict=False)
        except _BAD as e:
            error = e
    if reason is None:
        reason = f"not a valid STAC item: {type(error).__name__}: {error}"
    dropped.append(DroppedItem(item_id, f"{reason} ({where})"))
    return None


def _item_json_problem(data: dict[str, Any]) -> str | None:
    """What makes an item's JSON unusable, naming the field; None when it looks readable."""
    props = data.get("properties")
    if not isinstance(props, dict):
        return f"'properties' is {props!r}; expected an object with at least 'datetime'"
    when = props.get("datetime")
    if when is None:
        if props.get("start_datetime") is None:
            return ("'datetime' is null and there is no 'start_datetime'; every item needs an "
                    "acquisition time")
        when = props.get("start_datetime")
    try:
        pystac.utils.str_to_datetime(when)  # type: ignore[arg-type]  # non-str: TypeError
    except (TypeError, ValueError, OverflowError):
        return (f"'datetime' {when!r} is not an RFC 3339 date-time such as "
                "'2024-05-02T10:26:47Z'")
    assets = data.get("assets")
    if not isinstance(assets, dict) or not all(isinstance(a, dict) and isinstance(a.get("href"), str)
                                               for a in assets.values()):
        return f"'assets' is not an object of assets with an 'href' each ({str(assets)[:80]!r})"
    bbox = data.get("bbox")
    if bbox is not None and not (isinstance(bbox, list) and len(bbox) in (4, 6) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)):
        return f"'bbox' {bbox!r} is not [west, south, east, north]"
    return _geometry_problem(data.get("geometry"))


def _geometry_problem(geometry: object) -> str | None:
    if geometry is None:
        return ("'geometry' is null: without a footprint the item cannot be matched to the AOI "
                "(a GeoJSON geometry in EPSG:4326 is needed)")
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as e:  # shapely raises many kinds for malformed GeoJSON
        return f"'geometry' is not valid GeoJSON ({type(e).__name__}: {e}): {str(geometry)[:80]}"
    if shape.is_empty:
        return "'geometry' is empty; the item has no footprint to match to the AOI"
    return None


def _absolute_hrefs(item: pystac.Item, base: Path) -> None:
    for asset in item.assets.values():
        href = asset.href
        if "://" not in href and not Path(href).is_absolute():
            asset.href = str((base / href).resolve())


# -- filters ------------------------------------------------------------------------------------
def _filter(items: list[pystac.Item], q: _Query, spec: MosaicSpec) -> tuple[list[pystac.Item], list[DroppedItem]]:
    aoi = spec.aoi.geometry
    src = spec.source
    ours = [i for i in items if i.collection_id in (None, src.collection)]  # others: not "dropped"
    usable = _usable_bands(ours, spec.bands)
    kept: list[pystac.Item] = []
    dropped: list[DroppedItem] = []
    for item in ours:
        reason = _geometry_problem(item.geometry)
        if reason is None:
            try:
                when = item_datetime(item)
            except SearchError as e:
                reason = str(e)
        if reason is not None:
            dropped.append(DroppedItem(item.id, reason))
            continue
        fp = footprint(item)
        if fp is None or not fp.intersects(aoi):
            continue
        if not spec.period.contains(when):
            continue
        cc = item.properties.get("eo:cloud_cover")
        if cc is not None and (not isinstance(cc, int | float) or isinstance(cc, bool)):
            reason = f"eo:cloud_cover {cc!r} is not a number (percent, 0-100)"
        elif src.max_cloud_cover is not None and cc is not None and cc > src.max_cloud_cover:
            reason = f"eo:cloud_cover {cc} > source.max_cloud_cover {src.max_cloud_cover}"
        tile = mgrs_tile(item)
        if reason is None and src.mgrs_tiles and tile not in src.mgrs_tiles:
            reason = f"MGRS tile {tile} not in source.mgrs_tiles {list(src.mgrs_tiles)}"
        if reason is None:
            reason = _band_problem(item, usable, spec)
        if reason is None:
            kept.append(item)
        else:
            dropped.append(DroppedItem(item.id, reason))
    return kept, dropped


def _usable_bands(items: list[pystac.Item], bands: Sequence[str]) -> list[str]:
    """The spec bands that at least one item has: an item lacking one of these is dropped; a band
    no item has is left for the cube to report (most likely a misspelt name in ``bands``)."""
    out = []
    for band in bands:
        for item in items:
            try:
                resolve_band(item, band)
            except DataError:
                continue
            out.append(band)
            break
    return out


def _band_problem(item: pystac.Item, bands: Sequence[str], spec: MosaicSpec) -> str | None:
    for band in bands:
        try:
            key = resolve_band(item, band)
        except DataError:
            return (f"has no asset for band {band!r} (spec field 'bands'), which other items "
                    f"have; its assets are {sorted(item.assets)}")
        problem = asset_problem(item, key, dtypes=spec.source.band_dtypes,
                                nodata=spec.source.nodata)
        if problem is not None:
            return problem
    return None


def dedupe(items: Iterable[pystac.Item]) -> tuple[list[pystac.Item], list[DroppedItem]]:
    """Keep one item per acquisition (platform, MGRS tile, sensing second).

    Reprocessed products of one acquisition differ in processing baseline and generation time;
    the one with the newest baseline, then the latest generation time, then the largest id is
    kept.
    """
    groups: dict[tuple[Any, ...], list[pystac.Item]] = {}
    for item in items:
        when = item_datetime(item).replace(microsecond=0)
        key = (item.properties.get("platform"), mgrs_tile(item) or item.id, when)
        groups.setdefault(key, []).append(item)
    kept: list[pystac.Item] = []
    dropped: list[DroppedItem] = []
    for group in groups.values():
        group.sort(key=lambda i: (processing_baseline(i),
                                  str(i.properties.get("s2:generation_time", "")), i.id))
        best = group[-1]
        kept.append(best)
        for other in group[:-1]:
            if other.id == best.id:
                reason = "listed more than once by the source"
            else:
                reason = (f"reprocessed duplicate of {best.id} (baseline "
                          f"{format_baseline(other)} vs {format_baseline(best)}; newest kept)")
            dropped.append(DroppedItem(other.id, reason))
    return kept, dropped
