"""Combining and buffering masks: nodata, SCL, OmniCloudMask, s2cloudless → one validity mask.

Every cloud masker returns a lazy boolean ``(time, y, x)`` "invalid" array on the cube's grid.
`valid_mask` takes their union (``ocm+scl``), grows it by ``mask.dilation`` pixels or
``mask.buffer_m`` metres (exact across chunk edges), and adds nodata, which is never valid
and never buffered (its edge pixels are genuine observations).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import dask.array as da
import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from .._spec import MaskSpec

__all__ = [
    "CloudMasker",
    "MaskContext",
    "buffer_pixels",
    "context_pixels",
    "dask_inputs",
    "dilate",
    "map_overlap_exact",
    "nodata_mask",
    "pixel_size_m",
    "valid_mask",
]

_METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class MaskContext:
    """What a masker needs beyond the cube and the spec."""

    geobox: GeoBox | None = None
    """The output grid (for metres → pixels); None: read from the cube's coordinates."""
    gpu: bool | None = None
    """Whether the cluster has GPU workers (tasks needing a GPU are then annotated with the Dask
    resource ``GPU``). None: ask the current ``distributed`` client, if any."""
    models: Any = None
    """OmniCloudMask only: a list of ``torch.nn.Module`` used instead of the weights directory
    (tests, custom models). They travel inside the graph, so keep them for local schedulers."""


class CloudMasker(Protocol):
    """A cloud masker: lazy boolean ``(time, y, x)``, True where an observation is cloudy or
    otherwise unusable according to that masker (its own nodata included)."""

    def __call__(self, cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray: ...


def _scl(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .._cube import SCL_VAR
    from .scl import scl_invalid

    return scl_invalid(cube[SCL_VAR], mask.scl_classes)


def _ocm(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .omnicloud import ocm_invalid

    return ocm_invalid(cube, mask, ctx)


def _s2cloudless(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .s2cloudless import s2cloudless_invalid

    return s2cloudless_invalid(cube, mask)


#: The maskers each ``mask.method`` combines (their union).
MASKERS: dict[str, tuple[CloudMasker, ...]] = {
    "scl": (_scl,),
    "ocm": (_ocm,),
    "ocm+scl": (_ocm, _scl),
    "s2cloudless": (_s2cloudless,),
    "none": (),
}


def valid_mask(cube: xr.Dataset, bands: Sequence[str], mask: MaskSpec,
               ctx: MaskContext | None = None) -> xr.DataArray:
    """Lazy boolean (time, y, x): observations usable for compositing.

    Invalid where any of ``bands`` is nodata, or where the masker(s) of ``mask.method`` say so
    (``ocm+scl``: either), grown by ``mask.dilation`` pixels or ``mask.buffer_m`` metres
    (exact across chunk edges). SCL arrives on the band grid already (the loader resamples it
    with nearest). Nodata is not buffered.

    Examples
    --------
    >>> valid = valid_mask(cube, ["red", "nir"], MaskSpec(method="ocm+scl", buffer_m=60))  # doctest: +SKIP
    """
    ctx = ctx or MaskContext()
    invalid = nodata_mask(cube, bands)
    clouds: xr.DataArray | None = None
    for masker in MASKERS[mask.method]:
        c = masker(cube, mask, ctx)
        clouds = c if clouds is None else clouds | c
    if clouds is not None:
        grow = buffer_pixels(mask, cube, ctx.geobox)
        invalid = invalid | (dilate(clouds, grow) if any(grow) else clouds)
    return (~invalid).rename("valid")


def nodata_mask(cube: xr.Dataset, bands: Sequence[str]) -> xr.DataArray:
    """True where any of ``bands`` is its ``nodata`` value (attr, default 0)."""
    masks = [cube[name] == cube[name].attrs.get("nodata", 0) for name in bands]
    out = masks[0]
    for other in masks[1:]:
        out = out | other
    return out


def pixel_size_m(cube: xr.Dataset | xr.DataArray | None = None,
                 geobox: GeoBox | None = None) -> tuple[float, float]:
    """(y, x) pixel size in metres of ``geobox`` (or of the cube's ``y``/``x`` coordinates).

    Geographic grids (degrees) are converted at the grid's centre latitude.
    """
    if geobox is not None:
        res = geobox.resolution
        ry, rx = abs(float(res.y)), abs(float(res.x))
        geographic = bool(geobox.crs is not None and geobox.crs.geographic)
        lat = float(geobox.extent.centroid.to_crs("EPSG:4326").coords[0][1]) if geographic else 0.0
    elif cube is not None and cube.sizes.get("y", 0) > 1 and cube.sizes.get("x", 0) > 1:
        ry = abs(float(cube.y[1] - cube.y[0]))
        rx = abs(float(cube.x[1] - cube.x[0]))
        crs = getattr(cube, "odc", None)
        geographic = False
        try:
            geographic = bool(crs is not None and crs.crs is not None and crs.crs.geographic)
        except Exception:  # no odc accessor or no CRS: treat as metres
            geographic = False
        lat = float(cube.y.mean()) if geographic else 0.0
    else:
        raise ValueError("pixel size unknown: pass the output geobox, or a cube with y/x "
                         "coordinates")
    if geographic:
        return (ry * _METRES_PER_DEGREE, rx * _METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return ry, rx


def buffer_pixels(mask: MaskSpec, cube: xr.Dataset | None = None,
                  geobox: GeoBox | None = None) -> tuple[int, int]:
    """(y, x) pixels the cloud mask grows by: ``mask.dilation``, or ``mask.buffer_m`` metres
    rounded up to whole output pixels per axis."""
    if mask.buffer_m:
        ry, rx = pixel_size_m(cube, geobox)
        return (math.ceil(mask.buffer_m / ry - 1e-9), math.ceil(mask.buffer_m / rx - 1e-9))
    return (mask.dilation, mask.dilation)


def context_pixels(mask: MaskSpec, geobox: GeoBox) -> tuple[int, int]:
    """(y, x) output pixels around a pixel that its validity can depend on.

    The buffer/dilation, plus the s2cloudless averaging and dilation window, plus the
    OmniCloudMask context halo (rounded up to whole OCM pixels). A tile computed with this
    margin of extra pixels on every side gets the same mask inside as the whole grid would
    (exactly for SCL, buffers and s2cloudless; OCM sees at least its configured context).
    """
    if not MASKERS[mask.method]:
        return (0, 0)
    reach = list(buffer_pixels(mask, geobox=geobox))
    if mask.method == "s2cloudless":
        extra = mask.s2cloudless_average_over + mask.s2cloudless_dilation_size
        reach = [r + extra for r in reach]
    if mask.uses_ocm:
        from .omnicloud import ocm_factor

        factor = ocm_factor(mask.ocm_resolution, pixel_size_m(geobox=geobox))
        reach = [-(-(r + mask.ocm_halo * f) // f) * f for r, f in zip(reach, factor, strict=True)]
    return (reach[0], reach[1])


def dilate(mask: xr.DataArray, pixels: int | tuple[int, int]) -> xr.DataArray:
    """Grow True regions of a (time, y, x) mask by ``pixels`` in y and x (rectangular element;
    one int: a square).

    Runs per chunk with a halo of ``pixels`` (``map_overlap``), so the result across chunk edges
    equals dilating the whole array at once.
    """
    py, px = (pixels, pixels) if isinstance(pixels, int) else pixels
    if py <= 0 and px <= 0:
        return mask
    data = mask.data
    if not isinstance(data, da.Array):
        return mask.copy(data=_dilate_block(np.asarray(data), py, px))
    out = data.map_overlap(_dilate_block, depth={0: 0, 1: py, 2: px}, boundary=False,
                           py=py, px=px, dtype=bool, meta=np.array((), dtype=bool))
    return mask.copy(data=out)


def _dilate_block(block: np.ndarray, py: int, px: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    structure = np.zeros((1, 2 * py + 1, 2 * px + 1), dtype=bool)
    structure[0] = True  # never across time
    return binary_dilation(block, structure=structure)


# -- chunked windows with a halo ----------------------------------------------------------------
def dask_inputs(cube: xr.Dataset, names: Sequence[str]) -> list[da.Array]:
    """The variables ``names`` as Dask arrays with one chunking (that of the first Dask-backed
    one; NumPy-backed variables are wrapped in it)."""
    data = [cube[n].data for n in names]
    ref = next((d for d in data if isinstance(d, da.Array)), None)
    chunks: Any = ref.chunks if ref is not None else -1
    out = []
    for d in data:
        if not isinstance(d, da.Array):
            d = da.from_array(np.asarray(d), chunks=chunks)
        elif d.chunks != chunks:
            d = d.rechunk(chunks)
        out.append(d)
    return out


def plan_chunks(chunks: tuple[int, ...], depth: int, multiple: int = 1) -> tuple[int, ...]:
    """Chunks along one axis on which a halo of ``depth`` works and every chunk but the last
    starts at a multiple of ``multiple``: each chunk at least ``depth`` long (the last merged
    into its neighbour otherwise). ``chunks`` is returned unchanged when it already fits."""
    n = sum(chunks)
    aligned = all(c % multiple == 0 for c in chunks[:-1])
    if aligned and (len(chunks) == 1 or min(chunks) >= depth):
        return chunks
    size = max(chunks[0], depth, 1)
    size = -(-size // multiple) * multiple
    out = [size] * (n // size)
    if n % size:
        out.append(n % size)
    if len(out) > 1 and out[-1] < depth:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def map_overlap_exact(func: Callable[..., np.ndarray], arrays: Sequence[da.Array], *,
                      depth: tuple[int, int], dtype: Any, multiple: tuple[int, int] = (1, 1),
                      annotate: AbstractContextManager[Any] | None = None,
                      name: str | None = None, **kwargs: Any) -> da.Array:
    """Run ``func`` on windows of (time, y, x) ``arrays``: each chunk plus ``depth`` (y, x)
    pixels of its neighbours, trimmed after.

    No padding beyond the array edges (``boundary="none"``): a window there is just shorter, as
    when the whole array is processed at once. Chunks are first made at least ``depth`` long
    and aligned to ``multiple`` (y, x) so that every window starts at a multiple of it (for
    in-window decimation); the result comes back in the input's chunks. Only the ``func`` layer
    is built inside ``annotate`` (e.g. ``dask.annotate(resources={"GPU": 1})``).
    """
    first = arrays[0]
    target = (first.chunks[0],
              plan_chunks(first.chunks[1], depth[0], multiple[0]),
              plan_chunks(first.chunks[2], depth[1], multiple[1]))
    if target != first.chunks:
        arrays = [a.rechunk(target) for a in arrays]
    # An axis in one chunk has no neighbours to borrow from.
    d = {0: 0, 1: depth[0] if len(target[1]) > 1 else 0, 2: depth[1] if len(target[2]) > 1 else 0}
    boundary = {0: "none", 1: "none", 2: "none"}
    padded = [da.overlap.overlap(a, depth=d, boundary=boundary, allow_rechunk=False)
              for a in arrays]
    with annotate if annotate is not None else contextlib.nullcontext():
        out = da.map_blocks(func, *padded, dtype=dtype, meta=np.array((), dtype=dtype),
                            token=name, **kwargs)
    out = da.overlap.trim_internal(out, d, boundary=boundary)
    return out.rechunk(first.chunks) if target != first.chunks else out
