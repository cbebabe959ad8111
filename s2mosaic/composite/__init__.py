"""Per-pixel compositing of a (time, y, x) cube into a (y, x) mosaic.

``composite`` wraps the array kernels of :mod:`s2mosaic.composite._kernels` (NumPy/Numba on the
CPU; CuPy arrays are reduced on the host until the GPU kernels land) for xarray and Dask.
"""

from __future__ import annotations

from ._kernels import METHODS, count, first, mean, percentile, reduce
from ._xr import PERCENTILE_DEFINITION, composite

__all__ = [
    "METHODS",
    "PERCENTILE_DEFINITION",
    "composite",
    "count",
    "first",
    "mean",
    "percentile",
    "reduce",
]
