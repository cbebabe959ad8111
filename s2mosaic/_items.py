"""What a Sentinel-2 STAC item means: the one place that reads an item's fields.

Band and asset keys (Earth Search ``red``/``nir`` and Planetary Computer ``B04``/``B08`` alike),
acquisition time and solar day, MGRS tile, processing baseline and BOA offset, each asset's
data type and nodata (declared, or from the Sentinel-2 table when an item declares none) and the
footprint. Every stage (search, select, grid, cube, plan, preview, run) asks here, so items
are interpreted the same way everywhere. This module depends on no stage.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import pystac
import shapely.geometry
from shapely.geometry.base import BaseGeometry

from .errors import DataError, SearchError

__all__ = [
    "CSMASK_BANDS",
    "EARTH_SEARCH_NAMES",
    "OCM_BANDS",
    "S2CLOUDLESS_BANDS",
    "S2CLOUDLESS_MODEL_BANDS",
    "S2_ASSET_TYPES",
    "S2_COLLECTIONS",
    "BandType",
    "MaskBands",
    "asset_dtype",
    "asset_nodata",
    "asset_problem",
    "band_type",
    "boa_offset",
    "footprint",
    "footprint_bounds",
    "format_baseline",
    "item_datetime",
    "mask_band_keys",
    "mgrs_tile",
    "processing_baseline",
    "processing_level",
    "resolve_band",
    "scl_asset_key",
    "solar_day",
]

#: OmniCloudMask inputs: red, green, NIR. Each entry lists the names tried in turn (ESA id, then
#: Earth Search key); NIR is B8A (as OCM's own Sentinel-2 loader reads) or else B08.
OCM_BANDS: tuple[tuple[str, ...], ...] = (("B04", "red"), ("B03", "green"),
                                          ("B8A", "nir08", "B08", "nir"))
#: s2cloudless inputs in its model's order: all 13 L1C bands (``all_bands=True``) ...
S2CLOUDLESS_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                      "B8A", "B09", "B10", "B11", "B12")
#: ... or only the 10 its classifier uses (``all_bands=False``).
S2CLOUDLESS_MODEL_BANDS: tuple[str, ...] = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09",
                                            "B10", "B11", "B12")
#: ukis-csmask inputs in its models' order: blue, green, red, NIR (B08, the 10 m NIR its
#: training used), and for the 6-band models SWIR 1.6 and 2.2 µm.
CSMASK_BANDS: tuple[tuple[str, ...], ...] = (("B02", "blue"), ("B03", "green"), ("B04", "red"),
                                             ("B08", "nir"), ("B11", "swir16"), ("B12", "swir22"))
#: ESA band id → Earth Search asset key.
EARTH_SEARCH_NAMES: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B10": "cirrus", "B11": "swir16", "B12": "swir22",
}

_REFLECTANCE = re.compile(r"B(0[1-9]|1[0-2]|8A)")
_REFLECTANCE_NAMES = {"coastal", "blue", "green", "red", "rededge", "nir", "nir08", "nir09",
                      "cirrus", "swir16", "swir22"}
_MGRS_IN_ID = re.compile(r"(?:^|_)T?(\d{2}[C-X][A-Z]{2})(?:_|$)")


class MaskBands(Protocol):
    """What :func:`mask_band_keys` reads of a ``MaskSpec`` (so this module needs no spec)."""

    @property
    def method(self) -> str: ...
    @property
    def uses_ocm(self) -> bool: ...
    @property
    def s2cloudless_all_bands(self) -> bool: ...
    @property
    def csmask_bands(self) -> int: ...


# -- bands and assets -----------------------------------------------------------------------------
def _names(asset: pystac.Asset) -> set[str]:
    out: set[str] = set()
    for b in asset.extra_fields.get("eo:bands") or []:
        for k in ("name", "common_name"):
            if isinstance(b, dict) and b.get(k):
                out.add(str(b[k]).lower())
    return out


def resolve_band(item: pystac.Item, name: str) -> str:
    """The asset key of band ``name`` in ``item``.

    ``name`` may be an asset key (``B04``, ``red``) or an ``eo:bands`` name or common name, so
    Earth Search names (``red``, ``nir``) and Planetary Computer names (``B04``, ``B08``) both
    work against either catalog.
    """
    if name in item.assets:
        return name
    low = name.lower()
    for key in item.assets:
        if key.lower() == low:
            return key
    for key, asset in item.assets.items():
        if low in _names(asset):
            return key
    available = []
    for key, asset in item.assets.items():
        common = sorted(_names(asset) - {key.lower()})
        available.append(f"{key} ({'/'.join(common)})" if common else key)
    raise DataError(
        f"band {name!r} (spec field 'bands') not found in item {item.id!r}; its assets are "
        f"{available}. Use an asset key or an eo:bands common name from that list."
    )


def scl_asset_key(item: pystac.Item) -> str:
    """The asset key of the scene classification layer (``SCL`` or ``scl``)."""
    for key in item.assets:
        if key.lower() == "scl":
            return key
    raise DataError(
        f"item {item.id!r} has no SCL asset (assets: {sorted(item.assets)}); SCL masking "
        "(mask.method: scl) needs an L2A collection with the scene classification layer"
    )


def _resolve_first(item: pystac.Item, names: Sequence[str], field: str) -> str:
    for name in names:
        try:
            return resolve_band(item, name)
        except DataError:
            continue
    raise DataError(
        f"item {item.id!r} has none of the bands {list(names)} that {field} needs (assets: "
        f"{sorted(item.assets)}); use a collection that has them, or another mask.method"
    )


def mask_band_keys(item: pystac.Item, mask: MaskBands) -> list[str]:
    """Asset keys of the bands ``mask.method``'s cloud masker reads, in the masker's order.

    OmniCloudMask: red, green, NIR (B8A, else B08). s2cloudless: the 13 L1C bands (or the 10 its
    model uses). ukis-csmask: blue, green, red, NIR (B08), plus SWIR 1.6/2.2 µm (B11, B12) for
    the 6-band model. SCL is not listed here (see :func:`scl_asset_key`). Empty for ``scl``/``none``.
    """
    field = f"mask.method {mask.method}"
    if mask.uses_ocm:
        return [_resolve_first(item, names, field) for names in OCM_BANDS]
    if mask.method == "s2cloudless":
        bands = S2CLOUDLESS_BANDS if mask.s2cloudless_all_bands else S2CLOUDLESS_MODEL_BANDS
        return [_resolve_first(item, (b, EARTH_SEARCH_NAMES[b]), field) for b in bands]
    if mask.method in ("csmask", "csmask+scl"):
        field += f" with mask.csmask_bands {mask.csmask_bands}"
        return [_resolve_first(item, names, field) for names in CSMASK_BANDS[:mask.csmask_bands]]
    return []


_LEVEL_IN_TEXT = re.compile(r"(?:^|[^a-z0-9])(?:msi)?(l1c|l2a)(?:$|[^a-z0-9])|msi(l1c|l2a)|s2msi(1c|2a)")


def processing_level(item: pystac.Item) -> str | None:
    """``L1C`` or ``L2A``: the item's processing level, from ``processing:level``,
    ``s2:product_type`` (``S2MSI2A``), its collection id (``sentinel-2-l2a``) or its id
    (``S2A_MSIL1C_…``, ``…_L2A``), in that order; None when none of them says."""
    for text in (item.properties.get("processing:level"), item.properties.get("s2:product_type"),
                 item.collection_id, item.id):
        if not isinstance(text, str):
            continue
        m = _LEVEL_IN_TEXT.search(text.lower())
        if m:
            level = next(g for g in m.groups() if g)
            return "L" + level[-2:].upper() if len(level) == 2 else level.upper()
    return None


# -- data type and nodata -------------------------------------------------------------------------
#: Collections whose Sentinel-2 assets s2mosaic knows the data type and nodata of when an item
#: declares neither (Planetary Computer's ``sentinel-2-l2a`` has no ``raster:bands``):
#: ``sentinel-2-l2a`` (Planetary Computer and Earth Search v1), ``sentinel-2-c1-l2a`` and
#: ``sentinel-2-l1c`` (Earth Search v1), ``sentinel-s2-l2a-cogs`` (Earth Search v0).
S2_COLLECTIONS: tuple[str, ...] = ("sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-2-l1c",
                                   "sentinel-s2-l2a-cogs")
#: Data type and nodata of each kind of asset in :data:`S2_COLLECTIONS`, as ESA's L1C/L2A
#: products store them: reflectance B01–B12 and B8A (``coastal`` … ``swir22``) ``uint16`` with
#: nodata 0; the scene classification ``SCL`` ``uint8``, nodata 0 (its class 0, "no data");
#: aerosol optical thickness ``AOT`` and water vapour ``WVP`` ``uint16``, nodata 0. Asset keys
#: in either naming (``B04``/``SCL`` or ``red``/``scl``, with or without Earth Search's ``-jp2``).
S2_ASSET_TYPES: dict[str, tuple[str, int]] = {
    "reflectance": ("uint16", 0),
    "scl": ("uint8", 0),
    "aot": ("uint16", 0),
    "wvp": ("uint16", 0),
}


@dataclass(frozen=True)
class BandType:
    """How an asset's pixels are stored: what the cube loads it as."""

    dtype: str
    """NumPy data type name (``uint16``, ``uint8``)."""
    nodata: float
    """The value of missing pixels (NaN for float data without one)."""
    source: str
    """Where this came from (``raster:bands``, ``collection item_assets``, the Sentinel-2 table,
    ``source.band_dtypes``), for messages."""


def _s2_kind(item: pystac.Item, key: str) -> str | None:
    """The :data:`S2_ASSET_TYPES` kind of asset ``key``: by its key in either naming, else by its
    ``eo:bands`` names."""
    k = key.lower().removesuffix("-jp2")
    if k in ("scl", "aot", "wvp"):
        return k
    names = {k}
    eo = item.assets[key].extra_fields.get("eo:bands") if key in item.assets else None
    if isinstance(eo, list) and len(eo) == 1:  # not the 3-band uint8 ``visual`` (TCI)
        names |= _names(item.assets[key])
    if any(_REFLECTANCE.fullmatch(n.upper()) for n in names) or names & (
            _REFLECTANCE_NAMES | set(EARTH_SEARCH_NAMES.values())):
        return "reflectance"
    return None


def _declared(fields: object) -> tuple[str | None, float | None]:
    """(data_type, nodata) an asset or item_assets entry declares: ``raster:bands[0]``, else
    the STAC 1.1 ``data_type``/``nodata`` on the asset or its first ``bands`` entry."""
    if not isinstance(fields, Mapping):
        return None, None
    candidates: list[Mapping[str, object]] = [fields]
    for name in ("raster:bands", "bands"):
        bands = fields.get(name)
        if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
            candidates.insert(0, bands[0])
    dtype = next((str(c["data_type"]) for c in candidates if c.get("data_type")), None)
    nodata = next((c["nodata"] for c in candidates if c.get("nodata") is not None), None)
    return dtype, _number(nodata)


def _number(value: object) -> float | None:
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):  # raster:bands allows these
        return float(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _collection_asset(item: pystac.Item, key: str) -> Mapping[str, object] | None:
    """``item_assets[key]`` of the item's collection when it is at hand: already read (a static
    catalog), or a local ``collection.json``. Never fetched over the network."""
    link = item.get_single_link(pystac.RelType.COLLECTION)
    if link is None:
        return None
    if not link.is_resolved():
        href = link.get_absolute_href() or link.href
        if "://" in href and not href.startswith("file://"):
            return None
        try:  # no root: resolving it could fetch the item's remote root catalog
            link.resolve_stac_object()
        except Exception:  # a missing or unreadable local file: as if there were no collection
            return None
    coll = link.target
    entries = coll.extra_fields.get("item_assets") if isinstance(coll, pystac.Collection) else None
    entry = entries.get(key) if isinstance(entries, Mapping) else None
    return entry if isinstance(entry, Mapping) else None


def _override(values: Mapping[str, object], item: pystac.Item, key: str) -> object | None:
    """The value ``values`` (a spec mapping) gives asset ``key``: by asset key (any case), by an
    ``eo:bands`` name of the asset, else by ``"*"``."""
    if not values:
        return None
    names = {key.lower()} | (_names(item.assets[key]) if key in item.assets else set())
    for k, v in values.items():
        if k.lower() in names:
            return v
    return values.get("*")


def band_type(item: pystac.Item, key: str, *, dtypes: Mapping[str, str] | None = None,
              nodata: Mapping[str, float] | None = None) -> BandType:
    """The data type and nodata the cube loads asset ``key`` of ``item`` with.

    Each is taken from the first of: ``dtypes``/``nodata`` (the spec's ``source.band_dtypes`` and
    ``source.nodata``, by asset key, ``eo:bands`` name or ``"*"``); the asset's ``raster:bands``;
    the collection's ``item_assets`` when the collection is at hand (read, or a local file; never
    fetched); the Sentinel-2 table :data:`S2_ASSET_TYPES` for items of :data:`S2_COLLECTIONS`.
    A known data type without a nodata value gets 0 (NaN for floats).

    Raises :class:`~s2mosaic.errors.DataError`, naming the collection, the asset and the spec
    field that fixes it, when nothing says the data type.
    """
    asset = item.assets.get(key)
    found = [("source.band_dtypes/source.nodata",
              _override(dtypes or {}, item, key), _number(_override(nodata or {}, item, key)))]
    found.append(("raster:bands", *_declared(asset.extra_fields if asset is not None else None)))
    if any(d is None or n is None for _, d, n in found):
        found.append(("collection item_assets", *_declared(_collection_asset(item, key))))
    kind = _s2_kind(item, key) if item.collection_id in S2_COLLECTIONS else None
    if kind is not None:
        found.append((f"Sentinel-2 table ({item.collection_id})", *S2_ASSET_TYPES[kind]))
    dtype = next(((str(d), src) for src, d, _ in found if d is not None), None)
    if dtype is None:
        raise DataError(
            f"item {item.id!r} of collection {item.collection_id!r}: asset {key!r} declares no "
            f"data type (no raster:bands data_type, none in the collection's item_assets), and "
            f"{item.collection_id!r} is not one of the collections whose bands s2mosaic knows "
            f"({', '.join(S2_COLLECTIONS)}). Say it in the spec: source.band_dtypes: "
            f"{{{key}: uint16}} (uint8 for a classification layer such as SCL), and "
            f"source.nodata: {{{key}: 0}} if its nodata is not 0"
        )
    nd = next((n for _, _, n in found if n is not None), None)
    if nd is None:
        nd = float("nan") if dtype[0].startswith("float") else 0
    if not dtype[0].startswith("float") and float(nd).is_integer():
        nd = int(nd)  # 0, not 0.0, for integer data
    return BandType(dtype[0], nd, dtype[1])


def asset_problem(item: pystac.Item, key: str, *, dtypes: Mapping[str, str] | None = None,
                  nodata: Mapping[str, float] | None = None) -> str | None:
    """Why the data type or nodata that asset ``key`` of ``item`` declares cannot be used (a
    string ``nodata``, an unknown ``data_type``), naming the field; None when usable or when the
    spec's ``dtypes``/``nodata`` (``source.band_dtypes``/``source.nodata``) override it."""
    import numpy as np

    asset = item.assets.get(key)
    fields = asset.extra_fields if asset is not None else {}
    decl: list[Mapping[str, object]] = [fields]
    for name in ("raster:bands", "bands"):
        bands = fields.get(name)
        if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
            decl.insert(0, bands[0])
            where = f"{name}[0]"
            break
    else:
        where = "asset"
    if _override(nodata or {}, item, key) is None:
        value = next((c["nodata"] for c in decl if c.get("nodata") is not None), None)
        if value is not None and _number(value) is None:
            return (f"asset {key!r} declares {where} nodata {value!r}, not a number (expected a "
                    f"number, 'nan', 'inf' or '-inf'); fix the item, or set it in the spec: "
                    f"source.nodata: {{{key}: 0}}")
    if _override(dtypes or {}, item, key) is None:
        value = next((c["data_type"] for c in decl if c.get("data_type")), None)
        if value is not None:
            try:
                np.dtype(str(value))
            except TypeError:
                return (f"asset {key!r} declares {where} data_type {value!r}, not a data type "
                        f"(expected e.g. uint16, uint8, float32); fix the item, or set it in the "
                        f"spec: source.band_dtypes: {{{key}: uint16}}")
    return None


def asset_dtype(item: pystac.Item, key: str) -> str:
    """The data type of asset ``key`` (:func:`band_type`), ``uint16`` where nothing says it
    (for estimates: loading such an asset raises instead)."""
    try:
        return band_type(item, key).dtype
    except DataError:
        return "uint16"


def asset_nodata(item: pystac.Item, key: str) -> float:
    """The nodata value of asset ``key`` (:func:`band_type`)."""
    return band_type(item, key).nodata


# -- time and place -------------------------------------------------------------------------------
def item_datetime(item: pystac.Item) -> dt.datetime:
    """The acquisition time of an item: ``datetime``, else ``start_datetime``."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise SearchError(f"item {item.id!r} has no datetime (nor start_datetime); every item "
                          "needs one to be placed in the period")
    return when


def solar_day(item: pystac.Item) -> dt.date:
    """The local solar date of the acquisition (UTC shifted by the footprint centre's longitude).

    Adjacent tiles of one overpass share it, so the cube fuses them into one observation.
    """
    when = item_datetime(item)
    fp = footprint(item)
    lon = fp.centroid.x if fp is not None else 0.0
    return (when + dt.timedelta(seconds=lon * 240)).date()  # 240 s of solar time per degree


def mgrs_tile(item: pystac.Item) -> str | None:
    """The MGRS tile of an item (``"32TNS"``) from ``s2:mgrs_tile``, the mgrs/grid extensions or
    the id; None when none says."""
    p = item.properties
    if p.get("s2:mgrs_tile"):
        return str(p["s2:mgrs_tile"]).upper().removeprefix("T")
    if {"mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"} <= p.keys():
        zone, band, square = p["mgrs:utm_zone"], p["mgrs:latitude_band"], p["mgrs:grid_square"]
        return f"{int(zone):02d}{band}{square}".upper()
    code = p.get("grid:code", "")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    m = _MGRS_IN_ID.search(item.id)
    return m.group(1) if m else None


def footprint(item: pystac.Item) -> BaseGeometry | None:
    """The item's footprint (shapely, EPSG:4326) from its ``geometry``; None when it has none."""
    if item.geometry is None:
        return None
    return shapely.geometry.shape(item.geometry)


def footprint_bounds(item: pystac.Item) -> tuple[float, float, float, float] | None:
    """``(west, south, east, north)`` in EPSG:4326: the item's ``bbox``, else its footprint's
    bounds; None when it has neither."""
    if item.bbox is not None:
        b = [float(v) for v in item.bbox]
        if len(b) == 6:  # 3D: west, south, min height, east, north, max height
            return b[0], b[1], b[3], b[4]
        return b[0], b[1], b[2], b[3]
    fp = footprint(item)
    if fp is None:
        return None
    w, s, e, n = (float(v) for v in fp.bounds)
    return w, s, e, n


# -- processing baseline and reflectance scale ----------------------------------------------------
def processing_baseline(item: pystac.Item) -> tuple[int, ...]:
    """The processing baseline as numbers (``(5, 10)`` for ``"05.10"``); ``()`` when unknown.

    From ``s2:processing_baseline`` or ``processing:version``, else the ``_Nxxyy_`` of the
    product URI or the id.
    """
    p = item.properties
    text = p.get("s2:processing_baseline") or p.get("processing:version") or ""
    if not text:
        m = re.search(r"_N(\d{2})(\d{2})_", str(p.get("s2:product_uri", "")) + "_" + item.id + "_")
        text = f"{m.group(1)}.{m.group(2)}" if m else ""
    try:
        return tuple(int(x) for x in str(text).split("."))
    except ValueError:
        return ()


def format_baseline(item: pystac.Item) -> str:
    """The processing baseline as ESA writes it (``"05.10"``), ``"unknown"`` when not known."""
    return ".".join(f"{x:02d}" for x in processing_baseline(item)) or "unknown"


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
    return -1000 if reflectance and processing_baseline(item) >= (4, 0) else 0
