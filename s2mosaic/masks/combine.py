"""Combining and buffering masks: nodata, SCL, OmniCloudMask, s2cloudless, ukis-csmask → one
validity mask.

Every cloud masker returns a lazy boolean ``(time, y, x)`` "invalid" array on the cube's grid.
`valid_mask` takes their union (``ocm+scl``), grows it by ``mask.dilation`` pixels or
``mask.buffer_m`` metres (exact across chunk edges), and adds nodata, which is never valid
and never buffered (its edge pixels are genuine observations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from .._spec import MaskSpec
from ._context import CloudMasker, MaskContext, nodata_mask, pixel_size_m

__all__ = [
    "MASKERS",
    "buffer_pixels",
    "context_pixels",
    "dilate",
    "valid_mask",
]

def _scl(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .._cube import SCL_VAR
    from .scl import scl_clouds

    # SCL nodata is added by valid_mask, unbuffered, for every method.
    return scl_clouds(cube[SCL_VAR], mask.scl_classes)


def _ocm(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .omnicloud import ocm_invalid

    return ocm_invalid(cube, mask, ctx)


def _s2cloudless(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .s2cloudless import s2cloudless_invalid

    return s2cloudless_invalid(cube, mask)


def _csmask(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray:
    from .csmask import csmask_invalid

    return csmask_invalid(cube, mask, ctx)


#: The maskers each ``mask.method`` combines (their union).
MASKERS: dict[str, tuple[CloudMasker, ...]] = {
    "scl": (_scl,),
    "ocm": (_ocm,),
    "ocm+scl": (_ocm, _scl),
    "s2cloudless": (_s2cloudless,),
    "csmask": (_csmask,),
    "csmask+scl": (_csmask, _scl),
    "none": (),
}


def valid_mask(cube: xr.Dataset, bands: Sequence[str], mask: MaskSpec,
               ctx: MaskContext | None = None) -> xr.DataArray:
    """Lazy boolean (time, y, x): observations usable for compositing.

    Invalid where any of ``bands`` is nodata (its ``nodata`` attr, or NaN), where the cube's SCL
    (when it has one, whatever the method) is nodata (class 0 or NaN: at swath edges the 20 m SCL
    and the 10 m bands end at different pixels), or where the masker(s) of ``mask.method`` say so
    (``ocm+scl``: either), grown by ``mask.dilation`` pixels or ``mask.buffer_m`` metres
    (exact across chunk edges). SCL arrives on the band grid already (the loader resamples it
    with nearest). Nodata is not buffered.

    Examples
    --------
    >>> valid = valid_mask(cube, ["red", "nir"], MaskSpec(method="ocm+scl", buffer_m=60))  # doctest: +SKIP
    """
    from .._cube import SCL_VAR
    from .scl import scl_nodata

    ctx = ctx or MaskContext()
    invalid = nodata_mask(cube, bands)
    if SCL_VAR in cube.data_vars:
        invalid = invalid | scl_nodata(cube[SCL_VAR])
    clouds: xr.DataArray | None = None
    for masker in MASKERS[mask.method]:
        c = masker(cube, mask, ctx)
        clouds = c if clouds is None else clouds | c
    if clouds is not None:
        grow = buffer_pixels(mask, cube, ctx.geobox)
        invalid = invalid | (dilate(clouds, grow) if any(grow) else clouds)
    return (~invalid).rename("valid")


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
    OmniCloudMask or ukis-csmask context halo (rounded up to whole model pixels). A tile computed with this
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
    if mask.uses_csmask:
        from .omnicloud import ocm_factor

        factor = ocm_factor(mask.csmask_resolution, pixel_size_m(geobox=geobox))
        reach = [-(-(r + mask.csmask_halo * f) // f) * f
                 for r, f in zip(reach, factor, strict=True)]
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
