"""Masks from the Sentinel-2 scene classification layer (SCL)."""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from ..cube import SCL_VAR
from ..spec import MaskSpec
from .combine import dilate

__all__ = ["scl_invalid", "valid_mask"]


def scl_invalid(scl: xr.DataArray, classes: Sequence[int]) -> xr.DataArray:
    """True where the SCL class is one of ``classes`` (or SCL is nodata, class 0, when listed)."""
    return scl.isin(list(classes))


def valid_mask(cube: xr.Dataset, bands: Sequence[str], mask: MaskSpec) -> xr.DataArray:
    """Lazy boolean (time, y, x): observations usable for compositing.

    Invalid where any band is nodata, and with ``mask.method: scl`` where the SCL class is in
    ``mask.scl_classes`` (dilated by ``mask.dilation`` output pixels, exact across chunk edges).
    SCL arrives on the band grid already (the loader resamples it with nearest). Nodata is not
    dilated: it is no cloud, and its edge pixels are genuine observations.
    """
    nodata = [cube[name] == cube[name].attrs.get("nodata", 0) for name in bands]
    invalid = nodata[0]
    for other in nodata[1:]:
        invalid = invalid | other
    if mask.method == "scl":
        clouds = scl_invalid(cube[SCL_VAR], mask.scl_classes)
        invalid = invalid | (dilate(clouds, mask.dilation) if mask.dilation else clouds)
    return (~invalid).rename("valid")
