"""Find the STAC items of a spec: a STAC API (pystac-client) or a static catalog / ItemCollection.

Both paths apply the same filters (AOI, period and months, ``eo:cloud_cover``, MGRS tile), drop
reprocessed duplicates of one acquisition (keeping the newest processing baseline) and return
items sorted by acquisition time. What each item's fields mean (datetime, MGRS tile, processing
baseline) is read through :mod:`s2mosaic._items`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import shapely.geometry

from ._items import footprint, format_baseline, item_datetime, mgrs_tile, processing_baseline
from ._sign import load_callable
from ._spec import MosaicSpec, SourceSpec
from .errors import EmptySearchError, SearchError

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
    found = _search_api(q) if spec.source.is_api else _search_static(q)
    kept, dropped = _filter(found, q, spec)
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


def _search_static(q: _Query) -> list[pystac.Item]:
    path = Path(q.source.stac)
    if not path.exists():
        raise SearchError(
            f"source.stac {q.source.stac!r} does not exist; give a STAC API URL or the path of a "
            "catalog.json, collection.json or ItemCollection (FeatureCollection) JSON file"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SearchError(f"source.stac {str(path)!r} is not readable JSON: {e}") from e
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in ("FeatureCollection", "Catalog", "Collection", "Feature"):
        raise SearchError(
            f"source.stac {str(path)!r} is JSON but not STAC (type {kind!r}); expected a "
            "catalog.json, collection.json, item or ItemCollection (FeatureCollection)"
        )
    bad = (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError)
    if kind == "FeatureCollection":
        try:
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        except bad as e:
            raise SearchError(f"source.stac {str(path)!r} is not a valid ItemCollection: {e}") from e
        for item in items:
            _absolute_hrefs(item, path.resolve().parent)
        return items
    try:
        root = pystac.read_file(str(path.resolve()))
    except bad as e:
        raise SearchError(f"source.stac {str(path)!r} is not a STAC catalog or collection: {e}") from e
    if isinstance(root, pystac.Item):
        items = [root]
    elif isinstance(root, pystac.Catalog):
        items = list(root.get_items(recursive=True))
    else:  # pragma: no cover - read_file returns Catalog/Collection/Item
        raise SearchError(f"source.stac {str(path)!r}: unsupported STAC object {type(root).__name__}")
    for item in items:
        item.make_asset_hrefs_absolute()
    return items


def _absolute_hrefs(item: pystac.Item, base: Path) -> None:
    for asset in item.assets.values():
        href = asset.href
        if "://" not in href and not Path(href).is_absolute():
            asset.href = str((base / href).resolve())


# -- filters ------------------------------------------------------------------------------------
def _filter(items: list[pystac.Item], q: _Query, spec: MosaicSpec) -> tuple[list[pystac.Item], list[DroppedItem]]:
    aoi = spec.aoi.geometry
    src = spec.source
    kept: list[pystac.Item] = []
    dropped: list[DroppedItem] = []
    for item in items:
        reason = None
        if item.collection_id not in (None, src.collection):
            continue  # other collections in the same catalog are not "dropped", just not ours
        when = item_datetime(item)
        fp = footprint(item)
        if fp is None or not fp.intersects(aoi):
            continue
        if not spec.period.contains(when):
            continue
        cc = item.properties.get("eo:cloud_cover")
        if src.max_cloud_cover is not None and cc is not None and cc > src.max_cloud_cover:
            reason = f"eo:cloud_cover {cc} > source.max_cloud_cover {src.max_cloud_cover}"
        tile = mgrs_tile(item)
        if reason is None and src.mgrs_tiles and tile not in src.mgrs_tiles:
            reason = f"MGRS tile {tile} not in source.mgrs_tiles {list(src.mgrs_tiles)}"
        if reason is None:
            kept.append(item)
        else:
            dropped.append(DroppedItem(item.id, reason))
    return kept, dropped


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
