"""Combining and buffering masks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["dilate"]


def dilate(mask: xr.DataArray, pixels: int) -> xr.DataArray:
    """Grow True regions of a (time, y, x) mask by ``pixels`` in y and x (square element).

    Runs per chunk with a halo of ``pixels`` (``map_overlap``), so the result across chunk edges
    equals dilating the whole array at once.
    """
    if pixels <= 0:
        return mask
    data = mask.data
    if not isinstance(data, da.Array):
        return mask.copy(data=_dilate_block(np.asarray(data), pixels))
    out = data.map_overlap(_dilate_block, depth={0: 0, 1: pixels, 2: pixels}, boundary=False,
                           pixels=pixels, dtype=bool, meta=np.array((), dtype=bool))
    return mask.copy(data=out)


def _dilate_block(block: np.ndarray, pixels: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    structure = np.zeros((1, 2 * pixels + 1, 2 * pixels + 1), dtype=bool)
    structure[0] = True  # never across time
    return binary_dilation(block, structure=structure)
