"""SCL read at its native 20 m where the output grid allows, and replicated to the band grid.

The scene classification layer is a 20 m raster; the cube holds it on the 10 m band grid. Read
through odc-stac like a band, every 10 m chunk of it is a GDAL warp of the 20 m file
(``rasterio.warp.reproject``, nearest) - the costliest read of the cube although it holds a
quarter of a band's pixels. Where the output grid lies on the SCL file's own grid - same CRS, a
resolution that divides 20 m an integer number of times ``k``, pixel edges on 20 m edges -
nearest resampling is pure replication: output pixel ``(i, j)`` takes source pixel
``(i // k, j // k)``. Those items are read at 20 m onto a 20 m copy of the output grid
(odc-loader pastes: a windowed read, no warp) and each block is replicated ``k × k`` in the task
that consumes it (a blockwise function Dask fuses into the mask task).

Items on another CRS or an offset grid are warped as before. Both reads go through
``odc.stac.load`` with the cube's own arguments (:class:`~s2mosaic._readers.AssetRioDriver`:
signing at read time, :class:`~s2mosaic.errors.SceneReadError` naming the asset of a failed
read), so an unreadable SCL asset fails - or is dropped by ``runtime.on_read_error`` - exactly as
it does today.

Byte-identity with the warped path (``tests/test_reads.py``) rests on odc-loader's fusion rule:
the items of one time slice are pasted first-valid in the order ``(group, datetime, id)``. Per
time slice made of a run of aligned items and a run of others (either order: two UTM zones), the
aligned run is read natively and the other warped; first-valid over a sequence is first-valid of
its prefix, then of its suffix where the prefix left nodata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

__all__ = ["NativeScl", "native_factor", "plan_native_scl", "replicate_blocks"]

#: Loads ``items``' SCL onto a geobox with square chunks of the given size (the cube's
#: ``odc.stac.load`` call, with its groupby, driver and config), as a ``(time, y, x)`` array.
Loader = Callable[[Sequence[pystac.Item], GeoBox, int], xr.DataArray]

_TOL = 1e-9


def native_factor(src: GeoBox, dst: GeoBox) -> int | None:
    """``k`` (≥ 2) when every pixel of ``dst`` lies inside one pixel of ``src``'s grid and
    ``k × k`` pixels of ``dst`` tile each ``src`` pixel with edges on its edges; else None.

    Needs the same CRS, both grids axis-aligned with square pixels, ``src`` resolution ``k``
    times ``dst``'s and ``dst``'s origin on a pixel corner of ``src``.
    """
    if src.crs is None or dst.crs is None or src.crs != dst.crs:
        return None
    a, b = src.affine, dst.affine
    if a.b or a.d or b.b or b.d or a.a <= 0 or b.a <= 0 or a.a != -a.e or b.a != -b.e:
        return None
    ratio = a.a / b.a
    k = round(ratio)
    if k < 2 or abs(ratio - k) > _TOL:
        return None
    for off in ((b.c - a.c) / a.a, (a.f - b.f) / a.a):
        if abs(off - round(off)) > _TOL * max(1.0, abs(off)):
            return None
    return k


class NativeScl:
    """Which items of a load read SCL natively, and the arrays that put them together."""

    def __init__(self, k: int, native: list[pystac.Item], warped: list[pystac.Item],
                 native_slices: list[int], warped_slices: list[int], n_slices: int,
                 warped_first: list[int]) -> None:
        self.k = k
        self.native = native
        """Items read at 20 m, replicated."""
        self.warped = warped
        """Items warped onto the output grid as before."""
        self.native_slices = native_slices
        """Cube time slice of each time slice of the native load."""
        self.warped_slices = warped_slices
        """Cube time slice of each time slice of the warped load."""
        self.n_slices = n_slices
        self.warped_first = warped_first
        """Cube time slices whose warped items come before the native ones in fusion order."""

    def load(self, geobox: GeoBox, chunk: int, loader: Loader) -> xr.DataArray:
        """The ``(time, y, x)`` SCL of the cube on ``geobox`` (chunks ``chunk``): the native
        items at ``k``× the pixel size, replicated, fused with the warped items."""
        k = self.k
        coarse = GeoBox((math.ceil(geobox.shape.y / k), math.ceil(geobox.shape.x / k)),
                        geobox.affine * geobox.affine.scale(k), geobox.crs)
        a = loader(self.native, coarse, chunk // k)
        nodata = a.attrs.get("nodata", 0)
        args: list[Any] = [a.data]
        if self.warped:
            b = loader(self.warped, geobox, chunk)
            args.append(b.data)
        ys, xs = da.core.normalize_chunks((chunk, chunk), geobox.shape.yx)
        data = da.map_blocks(
            replicate_blocks, *args, k=k, nodata=nodata, n_slices=self.n_slices,
            native_slices=self.native_slices, warped_slices=self.warped_slices,
            warped_first=self.warped_first,
            chunks=((self.n_slices,), ys, xs), dtype=a.dtype,
            # the inputs' dask names (not the DataArray's "SCL"): tiles must not share keys
            name="scl-native-" + da.core.tokenize([x.name for x in args], k, self.native_slices,
                                                  self.warped_slices, self.warped_first),
            meta=np.empty((0, 0, 0), a.dtype),
        )
        return xr.DataArray(data, dims=("time", "y", "x"), attrs=dict(a.attrs))


def plan_native_scl(items: Sequence[pystac.Item], scl: str, item_keys: Sequence[Any],
                    geobox: GeoBox, chunk: int, stac_cfg: dict[str, Any]) -> NativeScl | None:
    """The native/warped split of ``items``' SCL asset ``scl`` on ``geobox``, or None when no
    item can be read natively (or ``chunk`` is not a multiple of the factor).

    ``item_keys`` are the time-slice keys of ``items`` (the cube's groupby); the split keeps
    odc-loader's order inside each slice, ``(key, datetime, id)``: where a slice's items are
    one run of aligned items then one of others (or the reverse), fusing each run and then the
    second where the first left nodata is the fusion of the warped path; a slice with more
    runs is warped whole.
    """
    import odc.stac

    parsed = list(odc.stac.parse_items(items, cfg=stac_cfg))
    factors: list[int | None] = []
    for p in parsed:
        band = next((p[b] for b in p.bands if b[0] == scl), None)
        src = getattr(band, "geobox", None)  # None: no projection metadata, warp
        factors.append(native_factor(src, geobox) if isinstance(src, GeoBox) else None)
    ks = {f for f in factors if f is not None}
    if len(ks) != 1:  # nothing aligned, or aligned at different factors (not Sentinel-2 SCL)
        return None
    k = ks.pop()
    if chunk % k:
        return None
    order = sorted(range(len(items)),
                   key=lambda i: (item_keys[i], parsed[i].nominal_datetime, parsed[i].id))
    groups: dict[Any, list[int]] = {}
    for i in order:
        groups.setdefault(item_keys[i], []).append(i)
    native: list[int] = []
    warped: list[int] = []
    warped_first: set[Any] = set()
    for key, members in groups.items():
        kinds = [factors[i] is not None for i in members]
        runs = sum(1 for j, kind in enumerate(kinds) if j == 0 or kind != kinds[j - 1])
        if runs > 2:  # native, warped, native...: fusion order needs a warp of them all
            warped += members
            continue
        native += [i for i in members if factors[i] is not None]
        warped += [i for i in members if factors[i] is None]
        if not kinds[0]:
            warped_first.add(key)
    if not native:
        return None
    slices = sorted(set(item_keys))
    where = {key: t for t, key in enumerate(slices)}
    return NativeScl(
        k, [items[i] for i in sorted(native)], [items[i] for i in sorted(warped)],
        [where[key] for key in sorted({item_keys[i] for i in native})],
        [where[key] for key in sorted({item_keys[i] for i in warped})], len(slices),
        sorted(where[key] for key in warped_first))


def replicate_blocks(native: np.ndarray, warped: np.ndarray | None = None, *, k: int,
                     nodata: float, n_slices: int, native_slices: Sequence[int],
                     warped_slices: Sequence[int], warped_first: Sequence[int] = (),
                     block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """One ``(time, y, x)`` block of the cube's SCL: ``native`` (coarse, its time slices at
    ``native_slices``) replicated ``k × k`` and cut to the output block (Dask's
    ``block_info``; the last block of an axis may end inside a coarse pixel), then ``warped``
    (at ``warped_slices``) wherever that left nodata - or first, its nodata filled by the
    native pixels, in the slices ``warped_first`` whose warped items come first."""
    tn, h, w = native.shape
    if block_info is not None:
        hy, wx = block_info[None]["chunk-shape"][1:]
    else:  # called by hand: the whole replicated block
        hy, wx = h * k, w * k
    fine = np.empty((tn, h * k, w * k), native.dtype)
    fine.reshape(tn, h, k, w, k)[...] = native[:, :, None, :, None]
    if warped is None and list(native_slices) == list(range(n_slices)):
        return fine if (hy, wx) == fine.shape[1:] else np.ascontiguousarray(fine[:, :hy, :wx])
    out = np.full((n_slices, hy, wx), nodata, native.dtype)
    out[list(native_slices)] = fine[:, :hy, :wx]
    if warped is not None:
        first = set(warped_first)
        for j, t in enumerate(warped_slices):
            # first-valid: the warped items fill what the native ones left, or go first
            holes = out[t] if t not in first else warped[j]
            fill = np.isnan(holes) if np.isnan(nodata) else holes == nodata
            np.copyto(out[t], warped[j], where=fill if t not in first else ~fill)
    return out
