"""CuPy kernels for the GPU: same inputs, same bits as the Numba kernels, results stay on device.

Two implementations, both exact:

- ``reduce_array_api``: whole-array operations only (sort with a sentinel, ``take_along_axis``,
  reductions), written against an array module ``xp``. It serves every method on the GPU with
  ``xp=cupy`` and, because it runs unchanged with ``xp=numpy``, its arithmetic is checked against
  NumPy on any machine. Each CuPy operation is its own kernel, so no multiply-add is ever fused.
- ``percentile_source``: a CUDA kernel for percentiles and medians (the default product), one
  thread per pixel: the series sits in registers, is sorted by the same pruned sorting network
  as on the CPU (unrolled, so every index is static and nothing spills to local memory), and the
  interpolation uses ``__dmul_rn``/``__dadd_rn``/``__dsub_rn`` (never contracted into an FMA)
  and ``rint`` (round half to even). One pass over the bytes of the chunk. Used for series up to
  ``RAW_MAX_TIME`` observations; longer ones take the sort path.

CuPy is imported inside the functions: this module is imported only when a CuPy array arrives,
and its array-API path is usable (and tested) without CuPy.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ._cpu import FIRST, LAST, MEAN, MEDOID, PERCENTILE
from ._plan import median_plan, percentile_plan

__all__ = ["RAW_MAX_TIME", "percentile_source", "reduce_array_api", "reduce_stacks"]

RAW_MAX_TIME = 64
"""Longest series the CUDA percentile kernel takes (registers); longer ones are sorted."""
_THREADS = 256
_C_TYPES = {np.dtype(np.uint16): "unsigned short", np.dtype(np.uint8): "unsigned char"}


def reduce_stacks(code: int, stacks: tuple[Any, ...], valid: Any, qf: float, min_obs: int) -> Any:
    """``(B + 1, P)`` uint16 CuPy array from CuPy stacks ``(T, Bk, P)`` and ``valid`` ``(T, P)``."""
    import cupy

    dtype = np.result_type(*(s.dtype for s in stacks))
    stacks = tuple(cupy.ascontiguousarray(s, dtype=dtype) for s in stacks)
    valid = cupy.ascontiguousarray(valid)
    if code == PERCENTILE and 0 < valid.shape[0] <= RAW_MAX_TIME and valid.shape[1] > 0:
        return _percentile_raw(stacks, valid, qf, min_obs)
    return reduce_array_api(code, stacks, valid, qf, min_obs, cupy)


# --------------------------------------------------------------------------- array-API path


def reduce_array_api(
    code: int, stacks: tuple[Any, ...], valid: Any, qf: float, min_obs: int, xp: Any
) -> Any:
    """Every method with whole-array operations of ``xp`` (CuPy on the GPU; NumPy in tests).

    Bit for bit what the Numba kernels compute: the same plan tables, the same float64 steps,
    ``rint`` for rounding half to even, and index arithmetic instead of ``argmin``/``argmax``
    so that ties never depend on a library's reduction order.
    """
    n_time, n_pix = valid.shape
    bands = [s[:, i] for s in stacks for i in range(s.shape[1])]
    dtype = bands[0].dtype
    n = valid.sum(axis=0, dtype=xp.int64)
    keep = n >= min_obs
    out = xp.empty((len(bands) + 1, n_pix), dtype=xp.uint16)
    out[-1] = n.astype(xp.uint16)
    zero = dtype.type(0)
    top = dtype.type(np.iinfo(dtype).max)
    if code == PERCENTILE:
        plan = percentile_plan(n_time, qf)
        lo = xp.asarray(plan.row_lo.astype(np.int64))[n][None]
        hi = xp.asarray(plan.row_hi.astype(np.int64))[n][None]
        g = xp.asarray(plan.gamma)[n]
        sentinel = top if plan.high_sentinel else zero
        for b, band in enumerate(bands):
            ordered = xp.sort(xp.where(valid, band, sentinel), axis=0)
            a = xp.take_along_axis(ordered, lo, axis=0)[0].astype(xp.float64)
            c = xp.take_along_axis(ordered, hi, axis=0)[0].astype(xp.float64)
            d = c - a
            r = xp.where(g >= 0.5, c - d * (1.0 - g), a + d * g)  # NumPy's _lerp
            out[b] = xp.where(keep, xp.rint(r), 0.0).astype(xp.uint16)
    elif code == MEAN:
        divisor = xp.maximum(n, 1).astype(xp.float64)
        for b, band in enumerate(bands):
            total = xp.where(valid, band, zero).sum(axis=0, dtype=xp.uint64)
            r = total.astype(xp.float64) / divisor
            out[b] = xp.where(keep, xp.rint(r), 0.0).astype(xp.uint16)
    elif code in (FIRST, LAST):
        t = xp.arange(n_time, dtype=xp.int64)[:, None]
        if code == FIRST:
            idx = xp.where(valid, t, n_time - 1).min(axis=0)
        else:
            idx = xp.where(valid, t, 0).max(axis=0)
        for b, band in enumerate(bands):
            value = xp.take_along_axis(band, idx[None], axis=0)[0]
            out[b] = xp.where(keep, value, zero).astype(xp.uint16)
    elif code == MEDOID:
        plan_m = median_plan(n_time)
        lo = xp.asarray(plan_m.row_lo.astype(np.int64))[n][None]
        hi = xp.asarray(plan_m.row_hi.astype(np.int64))[n][None]
        dist = xp.zeros((n_time, n_pix), dtype=xp.int64)
        for band in bands:
            ordered = xp.sort(xp.where(valid, band, top), axis=0)
            twice_median = xp.take_along_axis(ordered, lo, axis=0).astype(xp.int64)
            twice_median += xp.take_along_axis(ordered, hi, axis=0)
            e = 2 * band.astype(xp.int64) - twice_median
            dist += e * e
        # One key per observation, distance first, then time: the smallest key is the nearest
        # observation, the earliest among equals. dist * T + t < 2**63 for B < 8000 bands.
        t = xp.arange(n_time, dtype=xp.int64)[:, None]
        key = xp.where(valid, dist * n_time + t, np.int64(np.iinfo(np.int64).max))
        best = (key.min(axis=0) % n_time)[None]
        for b, band in enumerate(bands):
            value = xp.take_along_axis(band, best, axis=0)[0]
            out[b] = xp.where(keep, value, zero).astype(xp.uint16)
    else:
        raise ValueError(f"unknown kernel method code {code}")
    return out


# --------------------------------------------------------------------------- CUDA kernel

_PERCENTILE_TEMPLATE = r"""
typedef {value_t} value_t;
#define N_TIME {n_time}
#define N_WORDS {n_words}
#define SENTINEL (({value_t}){sentinel})
#define OK(t) ((ok[(t) >> 5] >> ((t) & 31)) & 1u)
#define CSWAP(i, j) {{ value_t lo_ = x[i] < x[j] ? x[i] : x[j]; \
                      value_t hi_ = x[i] < x[j] ? x[j] : x[i]; x[i] = lo_; x[j] = hi_; }}

extern "C" __global__ void s2m_percentile(
    const unsigned long long* __restrict__ band_ptrs,  /* B device pointers, one per band */
    const long long* __restrict__ band_strides,        /* B time strides, in elements */
    const int n_band,
    const unsigned char* __restrict__ valid,           /* (N_TIME, n_pix), 1 = usable */
    const long long n_pix,
    const unsigned short* __restrict__ row_lo,         /* (N_TIME + 1,) per valid count */
    const unsigned short* __restrict__ row_hi,
    const double* __restrict__ gamma,
    const int min_obs,
    unsigned short* __restrict__ out)                  /* (n_band + 1, n_pix) */
{{
    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pix) return;
    unsigned int ok[N_WORDS];
#pragma unroll
    for (int w = 0; w < N_WORDS; ++w) ok[w] = 0u;
    int n = 0;
#pragma unroll
    for (int t = 0; t < N_TIME; ++t) {{
        const unsigned int v = valid[(long long)t * n_pix + p] != 0;
        ok[t >> 5] |= v << (t & 31);
        n += (int)v;
    }}
    out[(long long)n_band * n_pix + p] = (unsigned short)n;
    const bool keep = n >= min_obs;
    const int lo = row_lo[n];
    const int hi = row_hi[n];
    const double g = gamma[n];
    for (int b = 0; b < n_band; ++b) {{
        const value_t* src = (const value_t*)band_ptrs[b] + p;
        const long long stride = band_strides[b];
        value_t x[N_TIME];
#pragma unroll
        for (int t = 0; t < N_TIME; ++t) x[t] = OK(t) ? src[(long long)t * stride] : SENTINEL;
{network}
        value_t a = 0, c = 0;
#pragma unroll
        for (int r = {first_row}; r <= {last_row}; ++r) {{
            if (r == lo) a = x[r];
            if (r == hi) c = x[r];
        }}
        const double da = (double)a;
        const double dc = (double)c;
        const double d = __dsub_rn(dc, da);
        /* numpy _lerp: a + d * g, or b - d * (1 - g) where g >= 0.5; no FMA. */
        const double r = g >= 0.5 ? __dsub_rn(dc, __dmul_rn(d, __dsub_rn(1.0, g)))
                                  : __dadd_rn(da, __dmul_rn(d, g));
        out[(long long)b * n_pix + p] = keep ? (unsigned short)rint(r) : (unsigned short)0;
    }}
}}
"""


@lru_cache(maxsize=32)
def percentile_source(n_time: int, qf: float, dtype: str) -> str:
    """CUDA C++ source of the percentile kernel for ``n_time`` observations and quantile ``qf``.

    Everything that depends on them is compiled in: the comparators of the pruned network, the
    sentinel, the rows read. ``dtype`` is ``"uint16"`` or ``"uint8"``.
    """
    plan = percentile_plan(n_time, qf)
    np_dtype = np.dtype(dtype)
    network = "\n".join(f"        CSWAP({a}, {b})" for a, b in plan.pairs.tolist())
    return _PERCENTILE_TEMPLATE.format(
        value_t=_C_TYPES[np_dtype],
        n_time=n_time,
        n_words=(n_time + 31) // 32,
        sentinel=np.iinfo(np_dtype).max if plan.high_sentinel else 0,
        network=network,
        first_row=plan.first_row,
        last_row=plan.last_row,
    )


@lru_cache(maxsize=32)
def _percentile_kernel(n_time: int, qf: float, dtype: str) -> Any:
    import cupy

    # --fmad=false as well as the explicit _rn intrinsics: belt and braces for exactness.
    return cupy.RawKernel(
        percentile_source(n_time, qf, dtype), "s2m_percentile", options=("--fmad=false",)
    )


def _percentile_raw(stacks: tuple[Any, ...], valid: Any, qf: float, min_obs: int) -> Any:
    import cupy

    n_time, n_pix = valid.shape
    dtype = stacks[0].dtype
    plan = percentile_plan(n_time, qf)
    ptrs, strides = [], []
    for s in stacks:
        for i in range(s.shape[1]):
            ptrs.append(s.data.ptr + i * n_pix * s.itemsize)
            strides.append(s.shape[1] * n_pix)
    n_band = len(ptrs)
    out = cupy.empty((n_band + 1, n_pix), dtype=cupy.uint16)
    kernel = _percentile_kernel(n_time, qf, dtype.name)
    args = (
        cupy.asarray(np.array(ptrs, dtype=np.uint64)),
        cupy.asarray(np.array(strides, dtype=np.int64)),
        np.int32(n_band),
        valid.view(cupy.uint8),
        np.int64(n_pix),
        cupy.asarray(plan.row_lo),
        cupy.asarray(plan.row_hi),
        cupy.asarray(plan.gamma),
        np.int32(min(min_obs, n_time + 1)),  # n <= n_time: anything above means "never"
        out,
    )
    grid = ((n_pix + _THREADS - 1) // _THREADS,)
    kernel(grid, (_THREADS,), args)
    return out
