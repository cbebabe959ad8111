"""Per-pixel reductions over time: plain arrays in, plain arrays out.

Nothing here knows about xarray, STAC or Dask. ``data`` is an unsigned-integer array shaped
``(T, ...)`` (one band) or ``(T, B, ...)`` (several bands sharing one mask); ``valid`` is a boolean
array shaped ``(T, ...)`` that says which observations are usable. Results are shaped ``(...)`` or
``(B, ...)``, in the dtype of ``data``; ``0`` is the output nodata, written where a pixel has fewer
than ``min_obs`` valid observations.

The percentile is NumPy's default ("linear", Hyndman & Fan type 7) over the valid observations,
rounded half-to-even, and is bit-identical to::

    np.round(np.nanpercentile(np.where(valid, data, np.nan), q, axis=0)).astype(data.dtype)

because the kernels repeat NumPy's float64 arithmetic step by step (see :mod:`._plan`). Values
stay in their integer dtype: the cube is never copied to float64.

The array type picks the implementation: NumPy arrays go to the Numba kernels
(:mod:`._cpu`), CuPy arrays to the CuPy kernels (:mod:`._gpu`), which return CuPy arrays so that
a Dask graph can keep its chunks on the GPU. CuPy is imported only when a CuPy array arrives.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ArgumentError, ArgumentTypeError
from . import _cpu

__all__ = [
    "METHODS",
    "count",
    "first",
    "last",
    "mean",
    "median",
    "medoid",
    "percentile",
    "reduce",
]

METHODS: tuple[str, ...] = ("percentile", "median", "mean", "first", "last", "medoid")
"""Method names understood by :func:`reduce`."""

_CODES = {
    "percentile": _cpu.PERCENTILE,
    "median": _cpu.PERCENTILE,
    "mean": _cpu.MEAN,
    "first": _cpu.FIRST,
    "last": _cpu.LAST,
    "medoid": _cpu.MEDOID,
}
_SUPPORTED_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))


# --------------------------------------------------------------------------- argument checks


def check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        valid = ", ".join(repr(m) for m in METHODS)
        raise ArgumentError(f"method={method!r} is not a composite method; use one of {valid}")
    return method


def check_q(q: object, name: str = "q") -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(
            f"{name}={q!r} ({type(q).__name__}) is not a number; give a percentile in [0, 100]"
        )
    qv = float(q)
    if not (0.0 <= qv <= 100.0):  # also rejects NaN
        raise ArgumentError(f"{name}={q!r} is outside the valid range of percentiles [0, 100]")
    return qv


def check_min_obs(min_obs: object, name: str = "min_obs") -> int:
    if isinstance(min_obs, bool):
        raise ArgumentTypeError(f"{name}={min_obs!r} is a bool; give an integer >= 1")
    try:
        value = operator.index(min_obs)  # type: ignore[arg-type]
    except TypeError:
        raise ArgumentTypeError(
            f"{name}={min_obs!r} ({type(min_obs).__name__}) is not an integer; give an integer >= 1"
        ) from None
    if value < 1:
        raise ArgumentError(
            f"{name}={min_obs!r} is invalid; a pixel needs at least 1 valid observation "
            "to have a value, so give an integer >= 1"
        )
    return value


def _quantile(method: str, q: float | None) -> float:
    """The quantile in [0, 1] the kernels use (NumPy: ``true_divide(q, 100)``)."""
    if method == "percentile":
        if q is None:
            raise ArgumentError("method='percentile' needs q, a percentile in [0, 100]")
        return check_q(q) / 100.0
    if q is not None:
        raise ArgumentError(
            f"q={q!r} was given with method={method!r}; q is used only by method='percentile' "
            "(method='median' is q=50)"
        )
    return 0.5


def is_cupy(x: object) -> bool:
    # Checked by module name so that CuPy stays an optional, lazily imported dependency.
    return type(x).__module__.split(".", 1)[0] == "cupy"


def _check_types(arrays: Sequence[Any], valid: Any) -> None:
    for label, arr in [("valid", valid), *(("data", a) for a in arrays)]:
        if not (isinstance(arr, np.ndarray) or is_cupy(arr)):
            raise ArgumentTypeError(
                f"{label} must be a NumPy (CPU) or CuPy (GPU) array; got {type(arr).__name__}"
            )


def _check_arrays(stacks: Sequence[Any], valid: Any) -> None:
    _check_types(stacks, valid)
    if valid.dtype != np.bool_:
        raise ArgumentTypeError(
            f"valid has dtype {valid.dtype}; it must be a boolean array (True = usable "
            "observation), e.g. `mask == 0` rather than the mask itself"
        )
    if valid.ndim < 1:
        raise ArgumentError(
            "valid is 0-dimensional; it needs a leading time axis, shape (T, ...)")
    if valid.shape[0] > np.iinfo(np.uint16).max:
        raise ArgumentError(
            f"data has {valid.shape[0]} time steps; the uint16 count allows at most 65535"
        )
    for stack in stacks:
        if stack.dtype not in _SUPPORTED_DTYPES:
            raise ArgumentTypeError(
                f"data has dtype {stack.dtype}; the composite kernels take uint16 (Sentinel-2 L2A "
                "reflectances) or uint8. Load the cube with its native integer dtype instead of "
                "converting to float"
            )
        if stack.shape[:1] + stack.shape[2:] != valid.shape:
            raise ArgumentError(
                f"a band has shape {stack.shape[:1] + stack.shape[2:]} but valid has shape "
                f"{valid.shape}; every band must have the shape (T, ...) of valid"
            )


def _reduce(
    method: str,
    stacks: Sequence[Any],
    valid: Any,
    q: float | None,
    min_obs: int,
    parallel: bool,
) -> Any:
    """``(B + 1, ...)`` uint16 from stacks ``(T, Bk, ...)`` holding B bands in all."""
    method = check_method(method)
    min_obs = check_min_obs(min_obs)
    qf = _quantile(method, q)
    if not stacks:
        raise ArgumentError("no bands given; pass at least one (T, ...) array")
    _check_arrays(stacks, valid)
    gpu = any(is_cupy(a) for a in (valid, *stacks))
    if gpu:
        import cupy

        # A mask built on the host next to bands on the device (or the reverse): one copy of
        # the smaller pieces to the device, not a round trip of the cube.
        valid = cupy.asarray(valid)
        stacks = [cupy.asarray(s) for s in stacks]
    code = _CODES[method]
    n_time = valid.shape[0]
    space = valid.shape[1:]
    n_pix = math.prod(space)
    if n_time == 0:  # no observation at all: every pixel is nodata
        n_band = sum(s.shape[1] for s in stacks)
        return (cupy if gpu else np).zeros((n_band + 1, *space), dtype=np.uint16)
    flat = tuple(s.reshape(n_time, s.shape[1], n_pix) for s in stacks)
    flat_valid = valid.reshape(n_time, n_pix)
    if gpu:
        from . import _gpu

        out = _gpu.reduce_stacks(code, flat, flat_valid, qf, min_obs)
    else:
        out = _cpu.reduce_blocks(code, flat, flat_valid, qf, min_obs, parallel)
    return out.reshape((out.shape[0], *space))


def reduce_bands(
    method: str,
    bands: Sequence[Any],
    valid: Any,
    q: float | None,
    min_obs: int,
    parallel: bool,
) -> Any:
    """Validated core: ``(B + 1, ...)`` uint16, the reduced bands then the valid count.

    ``bands`` are B arrays shaped like ``valid``, ``(T, ...)``; all of them reduce in one pass
    (the medoid needs them together). Used by the Dask wrapper, which hands over the chunks of
    every band as they are, without stacking them into a copy. NumPy arrays run the Numba
    kernels, CuPy arrays the GPU kernels (and a CuPy array comes back).
    """
    _check_types(bands, valid)
    return _reduce(method, [b[:, None] for b in bands], valid, q, min_obs, parallel)


def _as_stack(data: Any, valid: Any) -> tuple[Any, bool]:
    """``data`` as a ``(T, B, ...)`` view, and whether it had a band axis."""
    if not (isinstance(data, np.ndarray) or is_cupy(data)):
        raise ArgumentTypeError(
            f"data must be a NumPy (or CuPy) array; got {type(data).__name__}")
    if not (isinstance(valid, np.ndarray) or is_cupy(valid)):
        raise ArgumentTypeError(
            f"valid must be a NumPy (or CuPy) array; got {type(valid).__name__}")
    if data.ndim < 1:
        raise ArgumentError(
            "data is 0-dimensional; it needs a leading time axis, shape (T, ...)")
    if valid.shape == data.shape:
        return data[:, None], False
    if (
        data.ndim == valid.ndim + 1
        and data.shape[0] == valid.shape[0]
        and data.shape[2:] == valid.shape[1:]
    ):
        return data, True
    expected = (data.shape[0], *data.shape[2:]) if data.ndim >= 2 else data.shape
    raise ArgumentError(
        f"valid has shape {valid.shape} but data has shape {data.shape}; valid must have "
        f"the shape of data, or for multi-band data (T, B, ...) the shape (T, ...) = {expected}"
    )


def reduce(
    method: str,
    data: Any,
    valid: Any,
    *,
    q: float | None = None,
    min_obs: int = 1,
    parallel: bool = True,
) -> Any:
    """Reduce ``data`` over its first (time) axis, keeping only ``valid`` observations.

    Parameters
    ----------
    method
        ``"percentile"`` (needs ``q``), ``"median"`` (q = 50), ``"mean"`` (rounded half-to-even),
        ``"first"`` / ``"last"`` (the first / last valid observation along time), or ``"medoid"``
        (per pixel, the valid observation whose band vector is nearest, in squared Euclidean
        distance, to the per-band median of the valid observations; ties go to the earliest;
        all bands come from that one observation, so spectra stay real).
    data
        uint16 (or uint8) array, ``(T, ...)``, or ``(T, B, ...)`` for B bands sharing ``valid``.
    valid
        Boolean array ``(T, ...)``: True where the observation is usable.
    q
        Percentile in [0, 100], only for ``method="percentile"``.
    min_obs
        Pixels with fewer valid observations get 0 (the output nodata).
    parallel
        Spread pixels over Numba's thread pool (CPU). Pass False where the caller is already
        parallel (Dask tasks): see :func:`s2mosaic.composite._cpu.reduce_blocks`.

    Returns
    -------
    Array shaped ``data.shape[1:]``, in the dtype of ``data``; a CuPy array for CuPy input
    (computed on the GPU).

    Examples
    --------
    >>> import numpy as np
    >>> data = np.array([[1, 5], [3, 7], [9, 9]], dtype=np.uint16)
    >>> valid = np.array([[True, True], [True, False], [False, True]])
    >>> reduce("percentile", data, valid, q=50)
    array([2, 7], dtype=uint16)
    >>> reduce("last", data, valid)
    array([3, 9], dtype=uint16)
    """
    stack, has_band_axis = _as_stack(data, valid)
    stacked = _reduce(method, [stack], valid, q, min_obs, parallel)
    result = stacked[:-1] if has_band_axis else stacked[0]
    return result.astype(data.dtype, copy=False)


def percentile(data: Any, valid: Any, q: float, min_obs: int = 1) -> Any:
    """NumPy-"linear" ``q``-th percentile of the valid observations, rounded half-to-even.

    See :func:`reduce` for shapes and nodata.

    >>> import numpy as np
    >>> percentile(np.array([[10], [20], [40]], np.uint16), np.ones((3, 1), bool), 25)
    array([15], dtype=uint16)
    """
    return reduce("percentile", data, valid, q=q, min_obs=min_obs)


def median(data: Any, valid: Any, min_obs: int = 1) -> Any:
    """Median of the valid observations (``np.nanmedian``), rounded half-to-even.

    >>> import numpy as np
    >>> median(np.array([[10], [20], [40], [7]], np.uint16), np.ones((4, 1), bool))
    array([15], dtype=uint16)
    """
    return reduce("median", data, valid, min_obs=min_obs)


def mean(data: Any, valid: Any, min_obs: int = 1) -> Any:
    """Mean of the valid observations (exact integer sum / count), rounded half-to-even.

    >>> import numpy as np
    >>> mean(np.array([[1], [2]], np.uint16), np.ones((2, 1), bool))
    array([2], dtype=uint16)
    """
    return reduce("mean", data, valid, min_obs=min_obs)


def first(data: Any, valid: Any, min_obs: int = 1) -> Any:
    """The first valid observation along time (``min_obs`` still applies to the count).

    >>> import numpy as np
    >>> first(np.array([[1], [2]], np.uint16), np.array([[False], [True]]))
    array([2], dtype=uint16)
    """
    return reduce("first", data, valid, min_obs=min_obs)


def last(data: Any, valid: Any, min_obs: int = 1) -> Any:
    """The last valid observation along time (``min_obs`` still applies to the count).

    >>> import numpy as np
    >>> last(np.array([[1], [2], [3]], np.uint16), np.array([[True], [True], [False]]))
    array([2], dtype=uint16)
    """
    return reduce("last", data, valid, min_obs=min_obs)


def medoid(data: Any, valid: Any, min_obs: int = 1) -> Any:
    """The valid observation nearest to the per-band median, all bands from that observation.

    ``data`` is ``(T, B, ...)``; the distance is squared Euclidean over the B bands, the median
    NumPy's (the mean of the two middle values for an even count, not rounded); ties go to the
    earliest observation.

    >>> import numpy as np
    >>> data = np.array([[[1], [9]], [[4], [4]], [[5], [1]]], np.uint16)  # (T=3, B=2, 1 pixel)
    >>> medoid(data, np.ones((3, 1), bool))[:, 0]  # median (4, 4): observation 1 is at 0
    array([4, 4], dtype=uint16)
    """
    return reduce("medoid", data, valid, min_obs=min_obs)


def count(valid: Any) -> Any:
    """Number of valid observations per pixel, uint16, shaped ``valid.shape[1:]``.

    >>> import numpy as np
    >>> count(np.array([[True, False], [True, True]]))
    array([2, 1], dtype=uint16)
    """
    if getattr(valid, "dtype", None) != np.bool_ or getattr(valid, "ndim", 0) < 1:
        raise ArgumentTypeError(
            f"valid must be a boolean array shaped (T, ...); got "
            f"{type(valid).__name__} with dtype {getattr(valid, 'dtype', None)}"
        )
    if valid.shape[0] > np.iinfo(np.uint16).max:
        raise ArgumentError(
            f"valid has {valid.shape[0]} time steps; a uint16 count holds 65535")
    if is_cupy(valid):
        return valid.sum(axis=0, dtype=np.uint16)
    space = valid.shape[1:]
    return _cpu.count_valid(valid.reshape(valid.shape[0], -1)).reshape(space)
