"""Per-pixel reductions over time: plain arrays in, plain arrays out.

Nothing here knows about xarray, STAC or Dask. ``data`` is an unsigned-integer array shaped
``(T, ...)`` (one band) or ``(T, B, ...)`` (several bands sharing one mask); ``valid`` is a boolean
array shaped ``(T, ...)`` that says which observations are usable. Results are shaped ``(...)`` or
``(B, ...)``, in the dtype of ``data``; ``0`` is the output nodata, written where a pixel has fewer
than ``min_obs`` valid observations.

The percentile is NumPy's default ("linear", Hyndman & Fan type 7) over the valid observations,
rounded half-to-even, and is bit-identical to::

    np.round(np.nanpercentile(np.where(valid, data, np.nan), q, axis=0)).astype(data.dtype)

because the kernel repeats NumPy's float64 arithmetic step by step (see ``_percentile_value``).
Values stay in their integer dtype: the cube is never copied to float64.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any

import numba
import numpy as np
from numba import prange

__all__ = ["METHODS", "count", "first", "mean", "percentile", "reduce"]

METHODS: tuple[str, ...] = ("percentile", "median", "mean", "first")
"""Method names understood by :func:`reduce`."""

_SUPPORTED_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))

# Kernel method codes (Numba compiles one kernel; the branch per pixel is perfectly predicted).
_PERCENTILE, _MEAN, _FIRST = 0, 1, 2
# Below this many values a per-pixel insertion sort beats selection.
_SMALL = 32
# Pixels per parallel work item: large enough to amortise the per-item buffers, small enough to
# balance threads.
_BLOCK = 2048
# Pixels per cache-resident tile inside a work item (see _reduce_range).
_TILE = 128


def _jit(**options: Any) -> Any:
    """``numba.njit(cache=True, nogil=True, ...)`` that degrades to no caching.

    Numba raises at decoration time when no cache location is writable (read-only install, no
    home directory); compiling on first use is then the right fallback, not an import error.
    """

    def decorate(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, nogil=True, **options)(fn)

    return decorate


@_jit()
def _round_half_even(x: float) -> float:
    # np.round semantics for x >= 0; x - floor(x) is exact for |x| < 2**52.
    r = float(math.floor(x))
    frac = x - r
    if frac > 0.5 or (frac == 0.5 and r % 2.0 == 1.0):
        r += 1.0
    return r


@_jit()
def _insertion_sort(buf: np.ndarray, lo: int, hi: int) -> None:
    # Sorts buf[lo:hi + 1] in place.
    for i in range(lo + 1, hi + 1):
        v = buf[i]
        j = i - 1
        while j >= lo and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v


@_jit()
def _min_from(buf: np.ndarray, start: int, stop: int) -> Any:
    m = buf[start]
    for i in range(start + 1, stop):
        if buf[i] < m:
            m = buf[i]
    return m


@_jit()
def _max_of(buf: np.ndarray, n: int) -> Any:
    m = buf[0]
    for i in range(1, n):
        if buf[i] > m:
            m = buf[i]
    return m


@_jit()
def _median3(a: Any, b: Any, c: Any) -> Any:
    if a < b:
        if b < c:
            return b
        return c if a < c else a
    if a < c:
        return a
    return c if b < c else b


@_jit()
def _order_pair(buf: np.ndarray, n: int, k: int) -> tuple[Any, Any]:
    """The k-th and (k+1)-th smallest of ``buf[:n]`` (requires k + 1 < n); reorders ``buf``.

    Quickselect with three-way partitioning (ties are the norm in uint16 reflectances), then an
    insertion sort once the range is small. Invariant: ``buf[:lo] <= buf[lo:hi+1] <= buf[hi+1:n]``.
    """
    lo = 0
    hi = n - 1
    while hi - lo >= _SMALL:
        pivot = _median3(buf[lo], buf[(lo + hi) >> 1], buf[hi])
        lt = lo
        i = lo
        gt = hi
        while i <= gt:
            v = buf[i]
            if v < pivot:
                buf[i] = buf[lt]
                buf[lt] = v
                lt += 1
                i += 1
            elif v > pivot:
                buf[i] = buf[gt]
                buf[gt] = v
                gt -= 1
            else:
                i += 1
        # buf[lo:lt] < pivot, buf[lt:gt + 1] == pivot, buf[gt + 1:hi + 1] > pivot
        if k < lt:
            hi = lt - 1
        elif k > gt:
            lo = gt + 1
        else:
            if k + 1 <= gt:
                return pivot, pivot
            return pivot, _min_from(buf, gt + 1, n)
    _insertion_sort(buf, lo, hi)
    if k + 1 <= hi:
        return buf[k], buf[k + 1]
    return buf[k], _min_from(buf, hi + 1, n)


@_jit()
def _percentile_value(buf: np.ndarray, n: int, qf: float) -> float:
    """NumPy's "linear" quantile of ``buf[:n]`` (n >= 1), in NumPy's own float64 steps.

    numpy.lib._function_base_impl: virtual index ``(n - 1) * quantile``; an index at or past
    ``n - 1`` takes the maximum; otherwise ``_lerp(a, b, gamma)`` with ``gamma = vi - floor(vi)``
    computes ``a + (b - a) * gamma``, or ``b - (b - a) * (1 - gamma)`` where ``gamma >= 0.5``.
    """
    vi = (n - 1) * qf
    if vi >= n - 1:
        return float(_max_of(buf, n))
    k = math.floor(vi)
    gamma = vi - k  # NumPy: virtual index minus the (integer) previous index
    lo_v, hi_v = _order_pair(buf, n, k)
    a = float(lo_v)
    b = float(hi_v)
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1.0 - gamma)
    return a + diff * gamma


@_jit()
def _reduce_range(
    data: np.ndarray,
    valid: np.ndarray,
    code: int,
    qf: float,
    min_obs: int,
    out: np.ndarray,
    start: int,
    stop: int,
) -> None:
    """Reduce pixels ``start:stop`` of ``data`` (T, B, P) under ``valid`` (T, P) into ``out``.

    ``out`` is (B + 1, P) uint16: B reduced bands, then the count of valid observations.
    Pixels go through in tiles of ``_TILE``: each tile is first copied row by row (contiguous,
    prefetch-friendly reads) into a small (B, T, tile) buffer that stays in cache, because
    gathering a pixel's series straight from the cube strides T x B pages apart.
    """
    n_time = data.shape[0]
    n_band = data.shape[1]
    idx = np.empty(n_time, dtype=np.int64)
    buf = np.empty(n_time, dtype=data.dtype)
    tile = np.empty((n_band, n_time, _TILE), dtype=data.dtype)
    tile_valid = np.empty((n_time, _TILE), dtype=np.bool_)
    for p0 in range(start, stop, _TILE):
        width = min(_TILE, stop - p0)
        for t in range(n_time):
            for j in range(width):
                tile_valid[t, j] = valid[t, p0 + j]
            for b in range(n_band):
                for j in range(width):
                    tile[b, t, j] = data[t, b, p0 + j]
        for j in range(width):
            p = p0 + j
            n = 0
            for t in range(n_time):
                if tile_valid[t, j]:
                    idx[n] = t
                    n += 1
            out[n_band, p] = n
            if n < min_obs or n == 0:
                for b in range(n_band):
                    out[b, p] = 0
                continue
            for b in range(n_band):
                if code == _FIRST:
                    out[b, p] = tile[b, idx[0], j]
                elif code == _MEAN:
                    total = np.int64(0)
                    for i in range(n):
                        total += np.int64(tile[b, idx[i], j])
                    # Sums of uint16 are exact in float64, as np.nanmean's float sum is.
                    out[b, p] = np.uint16(_round_half_even(float(total) / float(n)))
                else:
                    for i in range(n):
                        buf[i] = tile[b, idx[i], j]
                    out[b, p] = np.uint16(_round_half_even(_percentile_value(buf, n, qf)))


@_jit(parallel=True)
def _reduce_parallel(
    data: np.ndarray, valid: np.ndarray, code: int, qf: float, min_obs: int, out: np.ndarray
) -> None:
    n_pix = data.shape[2]
    n_blocks = (n_pix + _BLOCK - 1) // _BLOCK
    for i in prange(n_blocks):
        start = i * _BLOCK
        _reduce_range(data, valid, code, qf, min_obs, out, start, min(start + _BLOCK, n_pix))


# --------------------------------------------------------------------------- Python front end


def _check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        valid = ", ".join(repr(m) for m in METHODS)
        raise ValueError(f"method={method!r} is not a composite method; use one of {valid}")
    return method


def _check_q(q: object, name: str = "q") -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{name}={q!r} ({type(q).__name__}) is not a number; give a percentile in [0, 100]"
        )
    qv = float(q)
    if not (0.0 <= qv <= 100.0):  # also rejects NaN
        raise ValueError(f"{name}={q!r} is outside the valid range of percentiles [0, 100]")
    return qv


def _check_min_obs(min_obs: object, name: str = "min_obs") -> int:
    if isinstance(min_obs, bool):
        raise TypeError(f"{name}={min_obs!r} is a bool; give an integer >= 1")
    try:
        value = operator.index(min_obs)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name}={min_obs!r} ({type(min_obs).__name__}) is not an integer; give an integer >= 1"
        ) from None
    if value < 1:
        raise ValueError(
            f"{name}={min_obs!r} is invalid; a pixel needs at least 1 valid observation "
            "to have a value, so give an integer >= 1"
        )
    return value


def _prepare(data: Any, valid: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Check dtypes/shapes; return views ``(T, B, P)``, ``(T, P)`` and the spatial shape."""
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a NumPy (or CuPy) array; got {type(data).__name__}")
    if not isinstance(valid, np.ndarray):
        raise TypeError(f"valid must be a NumPy (or CuPy) array; got {type(valid).__name__}")
    if data.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"data has dtype {data.dtype}; the composite kernels take uint16 (Sentinel-2 L2A "
            "reflectances) or uint8. Load the cube with its native integer dtype instead of "
            "converting to float"
        )
    if valid.dtype != np.bool_:
        raise TypeError(
            f"valid has dtype {valid.dtype}; it must be a boolean array (True = usable "
            "observation), e.g. `mask == 0` rather than the mask itself"
        )
    if data.ndim < 1:
        raise ValueError("data is 0-dimensional; it needs a leading time axis, shape (T, ...)")
    if valid.shape == data.shape:
        n_band = 1
        space = data.shape[1:]
    elif (
        data.ndim == valid.ndim + 1
        and data.shape[0] == valid.shape[0]
        and data.shape[2:] == valid.shape[1:]
    ):
        n_band = data.shape[1]
        space = data.shape[2:]
    else:
        raise ValueError(
            f"valid has shape {valid.shape} but data has shape {data.shape}; valid must have "
            f"the shape of data, or for multi-band data (T, B, ...) the shape (T, ...) = "
            f"{(data.shape[0], *data.shape[2:]) if data.ndim >= 2 else data.shape}"
        )
    n_time = data.shape[0]
    if n_time > np.iinfo(np.uint16).max:
        raise ValueError(f"data has {n_time} time steps; the uint16 count allows at most 65535")
    n_pix = math.prod(space)
    return data.reshape(n_time, n_band, n_pix), valid.reshape(n_time, n_pix), space


_cupy_warned = False


def _is_cupy(x: object) -> bool:
    # Checked by module name so that CuPy stays an optional, lazily imported dependency.
    return type(x).__module__.split(".", 1)[0] == "cupy"


def _via_host(
    method: str, data: Any, valid: Any, q: float | None, min_obs: int, parallel: bool
) -> Any:
    global _cupy_warned
    import cupy  # reachable only with CuPy arrays, so CuPy is installed

    if not _cupy_warned:
        _cupy_warned = True
        warnings.warn(
            "s2mosaic.composite: CuPy arrays are reduced on the host (copied to NumPy and back) "
            "until the GPU kernels land; expect host-device transfers",
            RuntimeWarning,
            stacklevel=4,
        )
    host = _reduce_with_count(method, cupy.asnumpy(data), cupy.asnumpy(valid), q, min_obs, parallel)
    return cupy.asarray(host)


def _reduce_with_count(
    method: str, data: Any, valid: Any, q: float | None, min_obs: int, parallel: bool
) -> Any:
    """Validated NumPy core: ``(B + 1, ...)`` uint16, the reduced bands then the valid count.

    Used by the Dask wrapper so that every band of a chunk and its count come out of one task.
    CuPy inputs are reduced on the host for now, with a one-time warning, and returned as CuPy.
    """
    if _is_cupy(data) or _is_cupy(valid):
        return _via_host(method, data, valid, q, min_obs, parallel)
    method = _check_method(method)
    min_obs = _check_min_obs(min_obs)
    if method == "percentile":
        if q is None:
            raise ValueError("method='percentile' needs q, a percentile in [0, 100]")
        qf = _check_q(q) / 100.0  # NumPy: quantile = true_divide(q, 100)
    elif q is not None:
        raise ValueError(
            f"q={q!r} was given with method={method!r}; q is used only by method='percentile' "
            "(method='median' is q=50)"
        )
    else:
        qf = 0.5
    code = {"percentile": _PERCENTILE, "median": _PERCENTILE, "mean": _MEAN, "first": _FIRST}[
        method
    ]
    d3, v2, space = _prepare(data, valid)
    n_band = d3.shape[1]
    out = np.empty((n_band + 1, d3.shape[2]), dtype=np.uint16)
    if parallel:
        _reduce_parallel(d3, v2, code, qf, min_obs, out)
    else:
        _reduce_range(d3, v2, code, qf, min_obs, out, 0, d3.shape[2])
    return out.reshape((n_band + 1, *space))


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
        ``"percentile"`` (needs ``q``), ``"median"`` (q = 50), ``"mean"`` (rounded half-to-even)
        or ``"first"`` (the first valid observation along time).
    data
        uint16 (or uint8) array, ``(T, ...)``, or ``(T, B, ...)`` for B bands sharing ``valid``.
    valid
        Boolean array ``(T, ...)``: True where the observation is usable.
    q
        Percentile in [0, 100], only for ``method="percentile"``.
    min_obs
        Pixels with fewer valid observations get 0 (the output nodata).
    parallel
        Spread pixels over Numba's thread pool. Pass False inside Dask tasks, whose chunks
        already run in parallel.

    Returns
    -------
    Array shaped ``data.shape[1:]``, in the dtype of ``data``. A CuPy input is reduced on the host
    for now (with a one-time warning) and returned as a CuPy array.

    Examples
    --------
    >>> import numpy as np
    >>> data = np.array([[1, 5], [3, 7], [9, 9]], dtype=np.uint16)
    >>> valid = np.array([[True, True], [True, False], [False, True]])
    >>> reduce("percentile", data, valid, q=50)
    array([2, 7], dtype=uint16)
    """
    stacked = _reduce_with_count(method, data, valid, q, min_obs, parallel)
    result = stacked[:-1] if data.ndim != valid.ndim else stacked[0]
    return result.astype(data.dtype, copy=False)


def percentile(data: Any, valid: Any, q: float, min_obs: int = 1) -> Any:
    """NumPy-"linear" ``q``-th percentile of the valid observations, rounded half-to-even.

    See :func:`reduce` for shapes and nodata.

    >>> import numpy as np
    >>> percentile(np.array([[10], [20], [40]], np.uint16), np.ones((3, 1), bool), 25)
    array([15], dtype=uint16)
    """
    return reduce("percentile", data, valid, q=q, min_obs=min_obs)


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


def count(valid: Any) -> Any:
    """Number of valid observations per pixel, uint16, shaped ``valid.shape[1:]``.

    >>> import numpy as np
    >>> count(np.array([[True, False], [True, True]]))
    array([2, 1], dtype=uint16)
    """
    if getattr(valid, "dtype", None) != np.bool_ or getattr(valid, "ndim", 0) < 1:
        raise TypeError(
            f"valid must be a boolean array shaped (T, ...); got "
            f"{type(valid).__name__} with dtype {getattr(valid, 'dtype', None)}"
        )
    return valid.sum(axis=0, dtype=np.uint16)
