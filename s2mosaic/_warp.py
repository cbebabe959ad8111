"""Cross-CRS reads that ask GDAL once per source grid and chunk which source pixel each output
pixel takes, then decode and gather.

odc-loader reads a source whose grid is not the output's (the next UTM zone, a geographic or web
output) through ``rasterio.warp.reproject`` of the file's band: GDAL decodes the source blocks
and, pixel by pixel, transforms and resamples. A chunk of a band holds every date, and every date
of an MGRS tile has the same grid, so for nearest-neighbour resampling GDAL works out the same
source pixel for every output pixel a dozen times per band, and again for each band of the same
resolution. Measured on the benchmark catalog, that warp is half of the band-read time.

Here, per (source grid, output box) and worker, GDAL warps the column and row numbers of the
source window instead of its values - two small ``uint16`` rasters, through the same call and
options as the band's warp - which gives, for every output pixel, the source pixel GDAL's
nearest-neighbour warp takes, or none. Each read then decodes the window (what the I/O floor
does) and gathers. The result is the GDAL warp's, byte for byte (``tests/test_warp.py`` compares
the two across CRSs, resolutions, shapes and nodata).

Taken only where that holds by construction - nearest resampling, one integer band, nodata (or
none) as its only mask, the output data type the source's, no overview picked, a source window
under 65,535 px a side and small enough that GDAL warps it in one piece, and every mapped pixel
clear of the window's inner edges (the window is padded; GDAL may see past an edge it is given).
Everything else (and every same-grid read, which odc-loader pastes without a warp) goes through
odc-loader as before. Switched by ``runtime.warp_reuse`` (``auto`` | ``off``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
from affine import Affine
from odc.geo.converters import rio_geobox
from odc.geo.geobox import GeoBox
from odc.geo.overlap import compute_reproject_roi
from odc.geo.roi import roi_is_empty
from odc.loader._reader import (
    pick_overview,
    resolve_band_query,
    resolve_dst_dtype,
    resolve_dst_nodata,
    resolve_src_nodata,
)
from odc.loader._rio import rio_env
from odc.loader.types import RasterLoadParams, RasterSource
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from ._datasets import kept

__all__ = ["IndexMap", "index_map", "read"]

#: Source pixels added around odc-geo's source window on every side: GDAL's warp may take a
#: pixel just past the window it is handed where the full file would give it another one.
PAD = 32
#: Output plus window pixels above which GDAL might split its warp into pieces (its default
#: 64 MB warp memory): the index warp and the band warp could then be split differently.
MAX_PIXELS = 8 * 2**20
#: Index maps kept per worker process (each holds 4 bytes per output pixel: 4 MiB at 1024²).
CACHE_SIZE = 32

_cache: OrderedDict[tuple[Any, ...], IndexMap | None] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class IndexMap:
    """Which pixel of the source ``window`` (the bounding box of the pixels taken; empty where
    none is) each output pixel of an output box takes: ``flat`` indexes the window's pixels row
    by row, ``size`` (one past the last) where the output pixel takes none."""

    window: Window
    flat: np.ndarray

    @property
    def size(self) -> int:
        return int(self.window.height * self.window.width)


def read(src: RasterSource, cfg: RasterLoadParams, dst_geobox: GeoBox, *,
         keep_open: bool = False) -> tuple[Any, np.ndarray] | None:
    """odc-loader's ``rio_read(src, cfg, dst_geobox)`` for a warped nearest-neighbour read, from
    a reused index map; None where this module does not take the read (odc-loader does). With
    ``keep_open`` from the file this thread keeps open (:mod:`s2mosaic._datasets`)."""
    if not cfg.nearest:
        return None
    if isinstance(src.geobox, GeoBox):  # the item's projection metadata: spare pastes an open
        rr = compute_reproject_roi(src.geobox, dst_geobox, ttol=0.9)
        if rr.paste_ok and rr.read_shrink == 1:
            return None
    try:
        opened = kept(src.uri) if keep_open else rasterio.open(src.uri, "r", sharing=False)
        with opened as rdr:
            return _read(rdr, src, cfg, dst_geobox)
    except (rasterio.errors.RasterioError, rasterio.errors.RasterioIOError,
            rasterio.errors.RasterBlockError, rasterio.errors.WindowEvaluationError):
        if cfg.fail_on_error:
            raise
        return None  # odc-loader reads it again, logs the failure and leaves the pixels empty


def _read(rdr: Any, src: RasterSource, cfg: RasterLoadParams, dst_geobox: GeoBox,
          ) -> tuple[Any, np.ndarray] | None:
    bidx = resolve_band_query(src, rdr.count)
    if not isinstance(bidx, int):
        return None
    src_gbox = rio_geobox(rdr)
    if not isinstance(src_gbox, GeoBox):
        return None  # georeferenced by ground control points
    rr = compute_reproject_roi(src_gbox, dst_geobox, ttol=0.9)  # odc-loader's, for nearest
    if rr.paste_ok and rr.read_shrink == 1:
        return None  # a paste: no warp to save
    if roi_is_empty(rr.roi_dst) or roi_is_empty(rr.roi_src):
        return None
    if cfg.use_overviews and rr.read_shrink > 1 and \
            pick_overview(rr.read_shrink, rdr.overviews(bidx)) is not None:
        return None
    dtype = np.dtype(rdr.dtypes[bidx - 1])
    if dtype.kind not in "iu" or resolve_dst_dtype(dtype.str, cfg) != dtype:
        return None
    if set(rdr.mask_flag_enums[bidx - 1]) - {MaskFlags.nodata, MaskFlags.all_valid}:
        return None  # a per-dataset mask or alpha band: GDAL's warp would use it
    src_nodata = resolve_src_nodata(rdr.nodatavals[bidx - 1], cfg)
    dst_nodata = resolve_dst_nodata(dtype, cfg, src_nodata)
    if dst_nodata is None:
        return None
    out_box = dst_geobox[rr.roi_dst]
    imap = index_map(src_gbox, out_box, rr.roi_src)
    if imap is None:
        return None
    w = imap.window
    buf = np.empty(imap.size + 1, dtype)
    if imap.size:
        with rio_env(VSI_CACHE=False):
            rdr.read(bidx, window=w, out=buf[:-1].reshape(int(w.height), int(w.width)))
    # What the warp leaves where it takes no pixel (outside the file, or the file's nodata):
    # rasterio's reproject reads a dst_nodata of 0 as none and falls back to the source's
    # nodata (0 when there is none), and odc-loader keeps the warp's pixels as they come.
    empty = dst_nodata if dst_nodata else (src_nodata if src_nodata is not None else 0)
    buf[-1] = empty
    out = buf.take(imap.flat).reshape(out_box.shape.yx)
    if src_nodata is not None and src_nodata != empty:
        np.copyto(out, empty, where=out == src_nodata)
    return rr.roi_dst, out


def index_map(src_gbox: GeoBox, out_box: GeoBox, roi_src: Any) -> IndexMap | None:
    """The :class:`IndexMap` of ``out_box`` from ``src_gbox`` around ``roi_src`` (odc-geo's
    source window of the read: ``(rows, cols)`` slices), from this worker's cache or warped
    now; None where the map cannot stand for GDAL's warp (see the module docstring)."""
    key = (str(src_gbox.crs), tuple(src_gbox.affine)[:6], src_gbox.shape.yx,
           str(out_box.crs), tuple(out_box.affine)[:6], out_box.shape.yx)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    imap = _warp_index(src_gbox, out_box, roi_src)
    with _lock:
        _cache[key] = imap
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return imap


def _warp_index(src_gbox: GeoBox, out_box: GeoBox, roi_src: Any) -> IndexMap | None:
    rows, cols = src_gbox.shape.yx
    ys, xs = roi_src
    y0, y1 = max(int(ys.start) - PAD, 0), min(int(ys.stop) + PAD, rows)
    x0, x1 = max(int(xs.start) - PAD, 0), min(int(xs.stop) + PAD, cols)
    h, w = y1 - y0, x1 - x0
    if max(h, w) >= 2**16 - 1 or h * w + out_box.shape.y * out_box.shape.x > MAX_PIXELS:
        return None
    transform = src_gbox.affine * Affine.translation(x0, y0)
    picked = []
    for numbers in (np.arange(1, w + 1, dtype=np.uint16)[None, :],
                    np.arange(1, h + 1, dtype=np.uint16)[:, None]):
        dst = np.zeros(out_box.shape.yx, np.uint16)
        # the band warp's call (odc-loader's _do_read): nodata 0 is "no source pixel" here
        rasterio.warp.reproject(np.ascontiguousarray(np.broadcast_to(numbers, (h, w))), dst,
                                src_transform=transform, src_crs=str(src_gbox.crs),
                                src_nodata=0, dst_crs=str(out_box.crs),
                                dst_transform=out_box.affine, dst_nodata=0,
                                resampling=Resampling.nearest)
        picked.append(dst)
    col, row = picked
    taken = col > 0
    if (taken != (row > 0)).any():
        return None
    c, r = col[taken], row[taken]
    # a pixel at an edge GDAL was given but the file goes on past: the full file might give it
    # another one; only where the window stops at the file's own edge is the edge real
    if c.size and ((x0 > 0 and c.min() <= 1) or (x1 < cols and c.max() >= w)
                   or (y0 > 0 and r.min() <= 1) or (y1 < rows and r.max() >= h)):
        return None
    # read only what is taken (GDAL decodes no more either): the pixels' bounding box
    r0, c0 = (int(r.min()), int(c.min())) if c.size else (1, 1)
    rh, cw = (int(r.max()) - r0 + 1, int(c.max()) - c0 + 1) if c.size else (0, 0)
    flat = np.full(out_box.shape.yx, rh * cw, np.int32 if rh * cw < 2**31 - 1 else np.int64)
    flat[taken] = (r.astype(np.int64) - r0) * cw + (c - c0)
    return IndexMap(Window(x0 + c0 - 1, y0 + r0 - 1, cw, rh), flat.reshape(-1))
