"""Lazy (time, y, x) cube of the requested bands plus SCL, on one output grid, one reflectance scale.

odc-stac is the default loader, stackstac the alternative. Either way: items are fused per
solar day (adjacent tiles of one overpass become one observation, so their overlap is not
counted twice), each spatial chunk holds the whole time axis (the reducer needs it and a later
rechunk would be a shuffle), every band loads with the data type and nodata its items declare (or
that :func:`s2mosaic._items.band_type` knows for Sentinel-2 collections that declare none, such
as Planetary Computer's), so the cube stays ``uint16``/``uint8`` and never turns float, and
products with a BOA offset are brought back to reflectance × 10000 chunk by chunk.

GDAL settings live here only (:func:`gdal_settings`: fixed options plus the spec's time-outs and
retries). They go through ``odc.stac.configure_rio``, which odc-stac captures into the graph when
it is built and re-applies inside every read task (``capture_env``/``restore_env`` of its reader
driver), so workers get them without anyone touching ``os.environ``; stackstac carries them in
the ``gdal_env`` of its graph likewise.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from ._datasets import close_datasets
from ._grid import aoi_mask
from ._items import (
    BandType,
    band_type,
    boa_offset,
    item_datetime,
    mask_band_keys,
    processing_level,
    resolve_band,
    scl_asset_key,
    solar_day,
)
from ._prune import SclInvalid, clear_per_chunk, gate_reads, open_in_reads
from ._readers import AssetRioDriver, stackstac_reader
from ._spec import MosaicSpec, RuntimeSpec
from .errors import CubeError, DataError, MissingDependencyError

__all__ = [
    "GDAL_SETTINGS",
    "LEVELS_ATTR",
    "MASK_BANDS_ATTR",
    "SCL_VAR",
    "apply_boa_offsets",
    "band_types",
    "clear_read_cache",
    "gdal_settings",
    "load_cube",
    "observation_count",
    "observation_groups",
    "slice_keys",
]

#: Name of the scene classification variable in the cube.
SCL_VAR = "scl"
#: Cube attribute listing, in the masker's band order, the variables a cloud masker reads.
MASK_BANDS_ATTR = "mask_bands"
#: Cube attribute: the items' processing levels (``L1C``/``L2A``, ``unknown``), sorted, distinct.
LEVELS_ATTR = "processing_levels"
#: Prefix of cube variables loaded only for a masker (bands not already in ``spec.bands``).
MASK_VAR_PREFIX = "mask_"

#: GDAL options for fast, quiet COG reads over HTTP(S)/S3 and local files; the time-outs and
#: retries come from the spec (:func:`gdal_settings`).
GDAL_SETTINGS: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2",
    "VSI_CACHE": "TRUE",
    # GDAL's block cache, per process (unset: 5 % of the machine's memory per worker): what
    # runtime.keep_open's kept files reuse across chunks (s2mosaic._datasets). In bytes: rasterio
    # hands an int to GDALSetCacheMax64
    "GDAL_CACHEMAX": 64 * 2**20,
}


def gdal_settings(runtime: RuntimeSpec) -> dict[str, Any]:
    """The GDAL options of a run's reads: :data:`GDAL_SETTINGS` plus ``runtime.read_timeout_s``
    (``GDAL_HTTP_TIMEOUT``: without it a stalled request hangs its task forever),
    ``connect_timeout_s``, ``read_retries`` and ``read_backoff_s`` (GDAL's own retries of a
    request)."""
    return {
        **GDAL_SETTINGS,
        "GDAL_HTTP_TIMEOUT": f"{runtime.read_timeout_s:g}",
        "GDAL_HTTP_CONNECTTIMEOUT": f"{runtime.connect_timeout_s:g}",
        "GDAL_HTTP_MAX_RETRY": str(runtime.read_retries),
        "GDAL_HTTP_RETRY_DELAY": f"{runtime.read_backoff_s:g}",
    }


def clear_read_cache() -> None:
    """Forget what GDAL knows of remote files in this process (``VSICurlClearCache``).

    Every thread of the process also closes the files it keeps open (:mod:`s2mosaic._datasets`)
    before its next read. GDAL remembers a file it failed to open - an HTTP 503 that outlasted
    its retries, a server that was down - as missing for the life of the process, so a retried
    tile would fail again at once without a request. The tile loop calls this before each tile
    retry (on every worker). A no-op where GDAL's C API is out of reach.
    """
    close_datasets()  # files kept open (runtime.keep_open): opened afresh by the retry
    clear = _vsicurl_clear_cache()
    if clear is not None:
        clear()


@functools.cache
def _vsicurl_clear_cache() -> Any:
    import ctypes

    import rasterio._env

    try:  # rasterio's extension links libgdal: its handle resolves GDAL's symbols
        fn = ctypes.CDLL(rasterio._env.__file__).VSICurlClearCache
    except (OSError, AttributeError):  # pragma: no cover - e.g. Windows
        return None
    fn.argtypes, fn.restype = [], None
    return fn


def observation_groups(items: Sequence[pystac.Item], keys: dict[str, str],
                       ) -> tuple[list[Any], list[tuple[int, ...]]]:
    """Group key per item (solar day, BOA offsets of the assets ``keys``) and the offsets per
    group, in group order: the time slices :func:`load_cube` makes of ``items``.

    Items of one solar day with different BOA offsets stay separate observations, so each time
    slice of the cube has exactly one offset per band.
    """
    item_keys = []
    for item in items:
        offsets = tuple(boa_offset(item, keys[name]) for name in keys)
        item_keys.append((solar_day(item).isoformat(), offsets))
    ordered = sorted(set(item_keys))
    return item_keys, [k[1] for k in ordered]


def observation_count(items: Sequence[pystac.Item], spec: MosaicSpec) -> int:
    """Time slices :func:`load_cube` makes of ``items`` (items fused per solar day and offset)."""
    if not items:
        return 0
    keys = {name: resolve_band(items[0], name) for name in spec.bands}
    return len(observation_groups(items, keys)[1])


def load_cube(items: Sequence[pystac.Item], spec: MosaicSpec, geobox: GeoBox, *,
              prune: SclInvalid | None = None) -> xr.Dataset:
    """Lazily load ``spec.bands``, SCL and the cloud masker's bands of ``items`` onto ``geobox``.

    Returns an ``xr.Dataset`` with one ``(time, y, x)`` variable per band, named as in
    ``spec.bands`` (``uint16`` for Sentinel-2 reflectance, attr ``nodata``), ``scl``
    (``uint8``, attr ``nodata``) when ``mask.method`` reads SCL, and ``mask_<asset>`` for each
    band the cloud masker needs that ``spec.bands`` does not already hold; attr ``mask_bands``
    lists the masker's input variables in its band order. With ``prune`` (what makes an SCL
    pixel invalid; composites of ``runtime.prune_dates: auto``, :mod:`s2mosaic._prune`) each
    band chunk reads only the time slices with an SCL pixel in it that ``prune`` leaves valid
    inside the AOI; the others stay nodata. Chunks are
    ``(all times, spec.runtime.chunks, spec.runtime.chunks)``. Data types and nodata come from
    :func:`band_types`, which raises :class:`~s2mosaic.errors.DataError` (naming the collection,
    asset and spec field) for an asset nothing declares a data type for.
    """
    if not items:
        raise CubeError("no items to load; search returned nothing for this spec")
    ref = items[0]
    keys, mask_vars = _asset_keys(ref, spec)
    scl = scl_asset_key(ref) if spec.mask.uses_scl else None
    for item in items[1:]:
        for name, key in keys.items():
            if key not in item.assets:
                raise DataError(f"item {item.id!r} lacks asset {key!r} (band {name!r}) that "
                                f"item {ref.id!r} has; mixed collections in one mosaic?")
        if scl is not None and scl not in item.assets:
            raise DataError(f"item {item.id!r} lacks the {scl!r} asset needed for masking")
    types = {key: band_types(items, key, spec) for key in [*keys.values(), *([scl] if scl else [])]}
    item_keys, offsets = observation_groups(items, keys)
    if spec.runtime.loader == "stackstac":
        ds = _load_stackstac(items, keys, scl, types, item_keys, geobox, spec)
    else:
        ds = _load_odc(items, keys, scl, types, item_keys, geobox, spec)
        if prune is not None and scl:
            clear = clear_per_chunk(ds[SCL_VAR], prune,
                                    aoi_mask(geobox, spec.aoi, spec.runtime.chunks))
            for name in keys:
                ds[name] = ds[name].copy(data=gate_reads(ds[name].data, clear))
    if ds.sizes["time"] != len(offsets):  # pragma: no cover - guards the grouping contract
        raise CubeError(f"loader returned {ds.sizes['time']} time slices for {len(offsets)} groups")
    ds = apply_boa_offsets(ds, list(keys), offsets)
    ds.attrs["boa_offsets"] = {name: [o[i] for o in offsets] for i, name in enumerate(keys)}
    ds.attrs[MASK_BANDS_ATTR] = mask_vars
    ds.attrs[LEVELS_ATTR] = sorted({processing_level(i) or "unknown" for i in items})
    return ds


def slice_keys(items: Sequence[pystac.Item], spec: MosaicSpec) -> list[Any]:
    """The time-slice key of each of ``items`` in :func:`load_cube` (its groupby); the cube's
    slices are the distinct keys, sorted."""
    return observation_groups(items, _asset_keys(items[0], spec)[0])[0] if items else []


def _asset_keys(ref: pystac.Item, spec: MosaicSpec) -> tuple[dict[str, str], list[str]]:
    """Asset key per cube variable (``spec.bands``, then the masker's other bands as
    ``mask_<asset>``), and the masker's variables in its band order."""
    keys = {name: resolve_band(ref, name) for name in spec.bands}
    mask_vars = []
    for key in mask_band_keys(ref, spec.mask):
        name = next((n for n, k in keys.items() if k == key), None)
        if name is None:
            name = f"{MASK_VAR_PREFIX}{key}"
            keys[name] = key
        mask_vars.append(name)
    return keys, mask_vars


def band_types(items: Sequence[pystac.Item], key: str, spec: MosaicSpec) -> BandType:
    """The data type and nodata asset ``key`` loads with (:func:`s2mosaic._items.band_type`,
    with the spec's ``source.band_dtypes``/``source.nodata``), the same for every item.

    Items that disagree (one declares nodata 0, another 65535) raise: one cube variable has one
    nodata value, and loading both with either would take the other's nodata for data.
    """
    src = spec.source
    ref = band_type(items[0], key, dtypes=src.band_dtypes, nodata=src.nodata)
    for item in items[1:]:
        t = band_type(item, key, dtypes=src.band_dtypes, nodata=src.nodata)
        same_nodata = t.nodata == ref.nodata or (np.isnan(t.nodata) and np.isnan(ref.nodata))
        if t.dtype != ref.dtype or not same_nodata:
            raise DataError(
                f"asset {key!r}: item {items[0].id!r} has data type {ref.dtype} nodata "
                f"{ref.nodata} ({ref.source}) but item {item.id!r} has {t.dtype} nodata "
                f"{t.nodata} ({t.source}); mixed collections in one mosaic? Set source.band_dtypes "
                f"and source.nodata (e.g. {{{key}: {ref.nodata}}}) to load every item alike"
            )
    return ref


def _load_odc(items: Sequence[pystac.Item], keys: dict[str, str], scl: str | None,
              types: dict[str, BandType], item_keys: list[Any], geobox: GeoBox,
              spec: MosaicSpec) -> xr.Dataset:
    import odc.stac
    import rasterio

    gdal = gdal_settings(spec.runtime)
    odc.stac.configure_rio(cloud_defaults=True, **gdal)
    index = {item.id: k for item, k in zip(items, item_keys, strict=True)}
    chunk = spec.runtime.chunks
    # One config for every item whatever its collection (odc-stac reads a top-level "assets" as
    # such): each asset's type, decided above, wins over odc-stac's float32 default for assets
    # without raster:bands.
    stac_cfg = {"assets": {key: {"data_type": t.dtype, "nodata": t.nodata}
                           for key, t in types.items()}}
    # odc-loader captures configure_rio's options *updated by this thread's rasterio env*, which
    # an earlier read in this thread (synchronous scheduler) leaves holding its run's values.
    with warnings.catch_warnings(), rasterio.Env(**gdal):
        # odc-loader warps the 20 m SCL through in-memory arrays; rasterio warns they lack a
        # geotransform although odc passes one explicitly.
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        # SCL with the bands, in one load: a 20 m SCL on a 10 m grid is decoded at 20 m and
        # gathered through the worker's index map of its grid (_warp), no GDAL warp per read
        ds = odc.stac.load(
            list(items),
            bands=[*keys.values(), *([scl] if scl else [])],
            geobox=geobox,
            chunks={"time": -1, "y": chunk, "x": chunk},
            groupby=lambda item, _parsed, _idx: index[item.id],
            resampling={"*": spec.grid.resampling, **({scl: "nearest"} if scl else {})},
            fail_on_error=True,
            stac_cfg=stac_cfg,
            # Every failed read names its URL (SceneReadError); with source.sign each read task
            # signs its own href (not patch_url, which odc-stac applies while building the
            # graph: the tokens would be baked in and expire).
            driver=AssetRioDriver(spec.source.sign, spec.runtime.warp_reuse == "auto",
                                  spec.runtime.keep_open == "auto"),
        )
    for name in ds.data_vars:  # each read task opens its own sources (_prune)
        ds[name] = ds[name].copy(data=open_in_reads(ds[name].data))
    rename = {key: name for name, key in keys.items()}
    if scl:
        rename[scl] = SCL_VAR
    return ds.rename(rename)


def _load_stackstac(items: Sequence[pystac.Item], keys: dict[str, str], scl: str | None,
                    types: dict[str, BandType], item_keys: list[Any], geobox: GeoBox,
                    spec: MosaicSpec) -> xr.Dataset:
    try:
        import stackstac
    except ImportError:
        raise MissingDependencyError("stackstac", "stackstac", "runtime.loader: stackstac") from None
    from odc.geo.xr import xr_coords
    from rasterio.enums import Resampling

    epsg = geobox.crs.epsg if geobox.crs is not None else None
    if epsg is None:
        raise CubeError(f"runtime.loader stackstac needs an EPSG output CRS, got {geobox.crs}")
    chunk = spec.runtime.chunks
    res = geobox.resolution
    b = geobox.boundingbox
    env = stackstac.DEFAULT_GDAL_ENV.updated(always=gdal_settings(spec.runtime))
    # A reader whose failures name the URL, and which signs at each read with source.sign (the
    # graph holds the unsigned hrefs).
    reader = {"reader": stackstac_reader(spec.source.sign)}
    layers: dict[str, xr.DataArray] = {}
    assets = {**keys, **({SCL_VAR: scl} if scl else {})}
    plain = [_plain_item(item) for item in items]
    for name, key in assets.items():
        dtype = np.dtype(types[key].dtype)
        nodata = types[key].nodata
        arr = stackstac.stack(
            plain, assets=[key], epsg=epsg, resolution=(abs(res.x), abs(res.y)),
            bounds=(b.left, b.bottom, b.right, b.top), snap_bounds=False,
            resampling=Resampling.nearest if name == SCL_VAR else Resampling[spec.grid.resampling],
            # a numpy scalar: stackstac checks np.can_cast(type(fill_value), dtype)
            dtype=dtype, fill_value=dtype.type(nodata),
            rescale=False, chunksize=(1, 1, chunk, chunk), gdal_env=env, properties=False,
            band_coords=False, **reader,
        ).isel(band=0, drop=True)
        # Fuse each (solar day, offset) group with first-valid, as odc-stac's groupby does.
        group = xr.DataArray([f"{k[0]}|{k[1]}" for k in item_keys], dims="time")
        fused = arr.groupby(group).map(stackstac.mosaic, dim="time", nodata=nodata)
        fused = fused.rename({"group": "time"}) if "group" in fused.dims else fused
        # stackstac's attrs (its RasterSpec object, its CRS and transform) describe its own
        # grid, not ours, and no writer can store them: the variables carry nodata, as
        # odc-stac's do.
        layers[name] = fused.chunk({"time": -1}).drop_vars(
            [c for c in fused.coords if c not in ("time",)]).drop_attrs().assign_attrs(
            nodata=nodata)
    ds = xr.Dataset(layers)
    # Like odc-stac: each fused observation is stamped with its earliest item's time.
    first: dict[Any, dt.datetime] = {}
    for item, key in zip(items, item_keys, strict=True):
        when = item_datetime(item)
        first[key] = min(first.get(key, when), when)
    times = [np.datetime64(first[k].replace(tzinfo=None), "ns") for k in sorted(first)]
    return ds.assign_coords(time=np.array(times)).assign_coords(xr_coords(geobox))


def _plain_item(item: pystac.Item) -> dict[str, Any]:
    """The item as the dict stackstac reads, with absolute asset hrefs.

    stackstac would call ``item.to_dict()``, which resolves the item's root link to rewrite link
    hrefs: an HTTP request per item for API items (the Planetary Computer root), and a failure
    offline.
    """
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    for key, asset in d.get("assets", {}).items():
        asset["href"] = item.assets[key].get_absolute_href() or asset["href"]
    return d


def apply_boa_offsets(ds: xr.Dataset, bands: list[str], offsets: list[tuple[int, ...]],
                      ) -> xr.Dataset:
    """Add each time slice's BOA offset (≤ 0, in DN) to its valid pixels, in uint16
    (``offsets[t][i]`` for time slice ``t`` of ``bands[i]``; also ``ds.s2.harmonise``).

    Valid DNs below the offset would become ≤ 0: they are clamped to 1 so they stay valid
    (0 is nodata for these products). Nodata pixels are left as they are.
    """
    out = ds.copy()
    for i, name in enumerate(bands):
        per_time = np.array([o[i] for o in offsets], dtype=np.int64)
        if not per_time.any():
            continue
        if (per_time > 0).any():
            raise DataError(f"band {name!r}: positive BOA offsets {sorted(set(per_time.tolist()))} "
                            "are not supported (expected 0 or negative DN offsets such as -1000)")
        var = ds[name]
        nodata = var.attrs.get("nodata", 0)
        data = da.map_blocks(_apply_offset, var.data, offsets=per_time, nodata=nodata,
                             dtype=var.dtype)
        out[name] = var.copy(data=data)
    return out


def _apply_offset(block: np.ndarray, *, offsets: np.ndarray, nodata: float) -> np.ndarray:
    out = block.copy()
    for t, off in enumerate(offsets.tolist()):
        if off == 0:
            continue
        v = out[t]
        ok = ~np.isnan(v) if np.isnan(nodata) else v != nodata
        np.maximum(v, -off + 1, out=v, where=ok)
        np.subtract(v, -off, out=v, where=ok)
    return out
