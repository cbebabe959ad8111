"""Masks from the Sentinel-2 scene classification layer (SCL).

SCL nodata (class 0 "no data", the layer's ``nodata`` attr, or NaN when SCL was loaded as
floats) is never clear, whatever ``classes`` lists: at swath edges the 20 m SCL can be nodata
where the 10 m bands hold values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["scl_clouds", "scl_invalid", "scl_nodata"]


def _nodata_value(scl: xr.DataArray) -> float:
    nodata = scl.attrs.get("nodata", 0)
    return 0.0 if nodata is None else float(nodata)


def scl_nodata(scl: xr.DataArray) -> xr.DataArray:
    """True where SCL is nodata: its ``nodata`` attr (default 0, ESA's "no data" class), or NaN."""
    nodata = _nodata_value(scl)
    out = scl.isnull() if np.issubdtype(scl.dtype, np.floating) else xr.zeros_like(scl, dtype=bool)
    return out if np.isnan(nodata) else out | (scl == nodata)


def scl_clouds(scl: xr.DataArray, classes: Sequence[int]) -> xr.DataArray:
    """True where the SCL class is one of ``classes``, nodata excluded (see :func:`scl_nodata`):
    the part of the SCL mask that a buffer grows."""
    nodata = _nodata_value(scl)
    return scl.isin([c for c in classes if c != nodata])


def scl_invalid(scl: xr.DataArray, classes: Sequence[int]) -> xr.DataArray:
    """True where the SCL class is one of ``classes`` or SCL is nodata (class 0 or NaN), whether
    ``classes`` lists 0 or not."""
    return scl_clouds(scl, classes) | scl_nodata(scl)
