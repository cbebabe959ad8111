"""Masks from the Sentinel-2 scene classification layer (SCL)."""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

__all__ = ["scl_invalid"]


def scl_invalid(scl: xr.DataArray, classes: Sequence[int]) -> xr.DataArray:
    """True where the SCL class is one of ``classes`` (or SCL is nodata, class 0, when listed)."""
    return scl.isin(list(classes))
