"""Masks from the Sentinel-2 scene classification layer (SCL).

SCL nodata (class 0 "no data", the layer's ``nodata`` attr, or NaN when SCL was loaded as
floats) is never clear, whatever ``classes`` lists: at swath edges the 20 m SCL can be nodata
where the 10 m bands hold values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["in_classes", "scl_clouds", "scl_invalid", "scl_nodata"]


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
    wanted = tuple(c for c in classes if c != nodata)
    return xr.apply_ufunc(in_classes, scl, kwargs={"classes": wanted}, dask="parallelized",
                          output_dtypes=[bool], keep_attrs=False)


def in_classes(values: Any, classes: Sequence[int]) -> Any:
    """Whether each of ``values`` (a NumPy or CuPy array) is one of ``classes``: what
    ``xp.isin`` answers, as one comparison per class. SCL has a dozen classes and a mask lists a
    few: on a (12, 1024, 1024) uint8 block this takes ~10 ms where ``np.isin`` takes ~120 ms."""
    if not classes:
        return np.zeros_like(values, dtype=bool)  # CuPy's own for a CuPy array
    out = values == classes[0]
    for c in classes[1:]:
        out |= values == c
    return out


def scl_invalid(scl: xr.DataArray, classes: Sequence[int]) -> xr.DataArray:
    """True where the SCL class is one of ``classes`` or SCL is nodata (class 0 or NaN), whether
    ``classes`` lists 0 or not."""
    return scl_clouds(scl, classes) | scl_nodata(scl)
