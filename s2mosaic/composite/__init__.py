"""Per-pixel compositing of a (time, y, x) cube into a (y, x) mosaic.

``composite`` wraps the array kernels of :mod:`s2mosaic.composite._kernels` for xarray and Dask.
The array type of a chunk picks the implementation: NumPy arrays run the Numba kernels
(:mod:`._cpu`), CuPy arrays the CuPy/CUDA kernels (:mod:`._gpu`); both share the plans of
:mod:`._plan` and agree bit for bit with NumPy.
"""

from __future__ import annotations

from ._kernels import METHODS, count, first, last, mean, median, medoid, percentile, reduce
from ._xr import PERCENTILE_DEFINITION, composite

__all__ = [
    "METHODS",
    "PERCENTILE_DEFINITION",
    "composite",
    "count",
    "first",
    "last",
    "mean",
    "median",
    "medoid",
    "percentile",
    "reduce",
]
