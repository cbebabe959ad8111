"""Find the STAC items of a spec: a STAC API (pystac-client) or a static catalog / ItemCollection.

Both paths apply the same filters (AOI, period and months, ``eo:cloud_cover``, MGRS tile), drop
reprocessed duplicates of one acquisition (keeping the newest processing baseline) and return
items sorted by acquisition time. The BOA offset of each item (processing baseline ≥ 04.00) is
worked out here, in one place, so the cube can put every item on one reflectance scale.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import shapely.geometry

from ._spec import MosaicSpec, SourceSpec
from .errors import EmptySearchError, SearchError

__all__ = [
    "DroppedItem",
    "SearchResult",
    "boa_offset",
    "dedupe",
    "item_datetime",
    "mgrs_tile",
    "search",
]

_REFLECTANCE = re.compile(r"B(0[1-9]|1[0-2]|8A)")
_REFLECTANCE_NAMES = {"coastal", "blue", "green", "red", "rededge", "nir", "nir08", "nir09",
                      "cirrus", "swir16", "swir22"}
_MGRS_IN_ID = re.compile(r"(?:^|_)T?(\d{2}[C-X][A-Z]{2})(?:_|$)")


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

    try:
        client = Client.open(q.source.stac)
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
        if item.geometry is None or not shapely.geometry.shape(item.geometry).intersects(aoi):
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
        elif item.geometry is not None:
            dropped.append(DroppedItem(item.id, reason))
    return kept, dropped


def item_datetime(item: pystac.Item) -> dt.datetime:
    """The acquisition time of an item: ``datetime``, else ``start_datetime``."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise SearchError(f"item {item.id!r} has no datetime (nor start_datetime)")
    return when


def mgrs_tile(item: pystac.Item) -> str | None:
    """The MGRS tile of an item (``"32TNS"``) from ``s2:mgrs_tile``, the mgrs/grid extensions or
    the id; None when none says."""
    p = item.properties
    if p.get("s2:mgrs_tile"):
        return str(p["s2:mgrs_tile"]).upper().removeprefix("T")
    if {"mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"} <= p.keys():
        return f"{int(p['mgrs:utm_zone']):02d}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}".upper()
    code = p.get("grid:code", "")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    m = _MGRS_IN_ID.search(item.id)
    return m.group(1) if m else None


def _baseline(item: pystac.Item) -> tuple[int, ...]:
    p = item.properties
    text = p.get("s2:processing_baseline") or p.get("processing:version") or ""
    if not text:
        m = re.search(r"_N(\d{2})(\d{2})_", str(p.get("s2:product_uri", "")) + "_" + item.id + "_")
        text = f"{m.group(1)}.{m.group(2)}" if m else ""
    try:
        return tuple(int(x) for x in str(text).split("."))
    except ValueError:
        return ()


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
        group.sort(key=lambda i: (_baseline(i), str(i.properties.get("s2:generation_time", "")), i.id))
        best = group[-1]
        kept.append(best)
        for other in group[:-1]:
            if other.id == best.id:
                reason = "listed more than once by the source"
            else:
                reason = (f"reprocessed duplicate of {best.id} (baseline "
                          f"{_fmt_baseline(other)} vs {_fmt_baseline(best)}; newest kept)")
            dropped.append(DroppedItem(other.id, reason))
    return kept, dropped


def _fmt_baseline(item: pystac.Item) -> str:
    return ".".join(f"{x:02d}" for x in _baseline(item)) or "unknown"


def boa_offset(item: pystac.Item, asset_key: str) -> int:
    """The offset in DN to add to ``asset_key`` of ``item`` to reach reflectance × 10000.

    Products with processing baseline ≥ 04.00 store DN = reflectance × 10000 + 1000 (ESA's
    ``BOA_ADD_OFFSET`` of −1000). Decided in this order:

    1. ``earthsearch:boa_offset_applied: true``: Earth Search already subtracted it → 0
       (its ``raster:bands`` still lists −0.1, so the flag must win).
    2. the asset's ``raster:bands[0].offset`` / ``scale`` when an offset is declared;
    3. baseline ≥ 04.00 without any declaration (e.g. Planetary Computer) → −1000 for
       reflectance bands (B01–B12, B8A, or their common names); AOT/WVP/SCL are not shifted;
    4. otherwise 0.
    """
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    asset = item.assets.get(asset_key)
    bands = (asset.extra_fields.get("raster:bands") if asset is not None else None) or []
    if bands and isinstance(bands[0], dict) and "offset" in bands[0]:
        offset = float(bands[0].get("offset") or 0.0)
        scale = float(bands[0].get("scale") or 0.0001)
        return round(offset / scale)
    reflectance = (asset is not None and "reflectance" in (asset.roles or [])) or bool(
        _REFLECTANCE.fullmatch(asset_key.upper()))
    if asset is not None and not reflectance:
        names = {str(b.get("common_name", "")) for b in asset.extra_fields.get("eo:bands") or []
                 if isinstance(b, dict)}
        reflectance = bool(names & _REFLECTANCE_NAMES)
    return -1000 if reflectance and _baseline(item) >= (4, 0) else 0
