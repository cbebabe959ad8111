"""s2cloudless (Sentinel Hub's pixel cloud detector) per spatial chunk, for L1C collections.

Its LightGBM model ships inside the ``s2cloudless`` package, so it works offline. Input: the 13
L1C bands (or the 10 the model uses) as TOA reflectance, ``DN / 10000``. The probability is a
per-pixel prediction; the mask averages it over a disk of radius ``average_over``, thresholds
it and dilates the result with a disk of radius ``dilation_size``. Those two steps are spatial,
so each chunk is read with a halo of ``average_over + dilation_size`` pixels: inside a chunk
every averaged and dilated value then sees exactly the pixels it would see in the whole array,
and at the array's own edges the window is not padded, so OpenCV's border rule applies at the
same place as for the whole array. The chunked result is identical to one call on everything.

Nodata: a pixel with any input band nodata gets probability 0 before averaging (so swath edges
do not grow clouds into valid pixels) and is invalid anyway.
"""

from __future__ import annotations

import threading
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .._spec import MaskSpec
from ..errors import CubeError, MissingDependencyError
from ._chunks import dask_inputs, map_overlap_exact
from ._context import nodata_mask

__all__ = ["s2cloudless_clouds", "s2cloudless_invalid", "s2cloudless_probability"]

_DETECTORS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _detector(threshold: float, average_over: int, dilation_size: int, all_bands: bool) -> Any:
    """An ``S2PixelCloudDetector``, one per parameter set and process (its model loads once)."""
    key = (threshold, average_over, dilation_size, all_bands)
    with _LOCK:
        det = _DETECTORS.get(key)
        if det is None:
            try:
                from s2cloudless import S2PixelCloudDetector
            except ImportError:
                raise MissingDependencyError("s2cloudless", "s2cloudless",
                                             "mask.method: s2cloudless") from None
            det = S2PixelCloudDetector(threshold=threshold, all_bands=all_bands,
                                       average_over=average_over or None,
                                       dilation_size=dilation_size or None)
            _ = det.classifier  # load the LightGBM booster now, under the lock
            _DETECTORS[key] = det
        return det


def _probability(bands: tuple[np.ndarray, ...], nodata: tuple[float, ...], det: Any) -> np.ndarray:
    """(T, H, W) float32 cloud probability of (T, H, W) uint16 bands; 0 where any is nodata."""
    t, h, w = bands[0].shape
    out = np.zeros((t, h, w), dtype=np.float32)
    for i in range(t):  # one date at a time bounds the float64 working set
        x = np.stack([b[i] for b in bands], axis=-1)
        missing = np.zeros((h, w), dtype=bool)
        for k, nd in enumerate(nodata):
            missing |= x[..., k] == nd
        refl = (x / 10000.0).astype(np.float32)  # as Sentinel Hub delivers L1C reflectance
        p = det.get_cloud_probability_maps(refl[None])[0]
        out[i] = np.where(missing, np.float32(0), p)
    return out


def _prob_block(*bands: np.ndarray, nodata: tuple[float, ...], params: tuple[Any, ...]) -> np.ndarray:
    return _probability(bands, nodata, _detector(*params))


def _mask_block(*bands: np.ndarray, nodata: tuple[float, ...], params: tuple[Any, ...]) -> np.ndarray:
    det = _detector(*params)
    prob = _probability(bands, nodata, det)
    return det.get_mask_from_prob(prob).astype(bool)


def _inputs(cube: xr.Dataset, mask: MaskSpec) -> tuple[list[str], list[da.Array], tuple[float, ...],
                                                        tuple[Any, ...]]:
    from .._cube import MASK_BANDS_ATTR

    names = list(cube.attrs.get(MASK_BANDS_ATTR) or [])
    expected = 13 if mask.s2cloudless_all_bands else 10
    if len(names) != expected:
        raise CubeError(
            f"s2cloudless needs the cube's {expected} L1C bands listed in its "
            f"{MASK_BANDS_ATTR!r} attribute (load_cube sets it for mask.method s2cloudless); "
            f"got {names}")
    arrays = dask_inputs(cube, names)
    nodata = tuple(float(cube[n].attrs.get("nodata", 0)) for n in names)
    params = (mask.s2cloudless_threshold, mask.s2cloudless_average_over,
              mask.s2cloudless_dilation_size, mask.s2cloudless_all_bands)
    return names, arrays, nodata, params


def s2cloudless_probability(cube: xr.Dataset, mask: MaskSpec) -> xr.DataArray:
    """Lazy float32 ``(time, y, x)`` cloud probability (0-1), per pixel, chunk by chunk."""
    names, arrays, nodata, params = _inputs(cube, mask)
    data = da.map_blocks(_prob_block, *arrays, dtype=np.float32,
                         meta=np.array((), dtype=np.float32), token="s2cloudless-prob",
                         nodata=nodata, params=params)
    ref = cube[names[0]]
    return xr.DataArray(data, dims=ref.dims, coords=ref.coords, name="cloud_probability")


def s2cloudless_clouds(cube: xr.Dataset, mask: MaskSpec) -> xr.DataArray:
    """Lazy boolean ``(time, y, x)`` s2cloudless cloud mask (averaged, thresholded, dilated),
    identical to running it on the whole array at once."""
    names, arrays, nodata, params = _inputs(cube, mask)
    halo = mask.s2cloudless_average_over + mask.s2cloudless_dilation_size
    data = map_overlap_exact(_mask_block, arrays, depth=(halo, halo), dtype=bool,
                             name="s2cloudless", nodata=nodata, params=params)
    ref = cube[names[0]]
    return xr.DataArray(data, dims=ref.dims, coords=ref.coords, name="clouds")


def s2cloudless_invalid(cube: xr.Dataset, mask: MaskSpec) -> xr.DataArray:
    """True where s2cloudless sees cloud, or where any of its input bands is nodata."""
    names = _inputs(cube, mask)[0]
    return s2cloudless_clouds(cube, mask) | nodata_mask(cube, names)
