"""Numba kernels for the CPU: blocks of pixels, vectorised across pixels.

Inputs are a tuple of C-contiguous *stacks* shaped ``(T, Bk, P)`` (time, bands, pixels) holding
B bands in all, and a boolean ``valid`` ``(T, P)`` shared by the bands; the output is
``(B + 1, P)`` uint16, the reduced bands then the count of valid observations. A whole
``(T, B, P)`` cube is one stack; the Dask wrapper passes each band's chunk as a ``(T, 1, P)``
stack of its own, so the chunks are reduced where they lie, never stacked into a copy.
``band_stack[b]`` and ``band_index[b]`` say where band ``b`` lives. C-contiguous types matter:
they tell Numba that a pixel run ``stack[t, i, p0:p1]`` is contiguous, so the loops vectorise.

Why the loops look the way they do:

- Pixels go through in blocks of ``width`` (512). Each band's block is copied once into
  a small ``(T, width)`` buffer that stays in L1/L2, with masked observations replaced by a
  sentinel (see :mod:`._plan`); that copy reads ``T`` runs of ``width`` contiguous values, which
  is as close to a streaming read as a ``(T, P)`` layout allows.
- Every inner loop runs over the pixels of a block with no data-dependent branch (selects, min,
  max), so LLVM vectorises it: one comparator of the sorting network is a ``vpminuw`` and a
  ``vpmaxuw`` on 32 pixels at once with AVX-512. The per-pixel series is never sorted by a
  scalar loop with unpredictable branches.
- No ``fastmath``: the interpolation must repeat NumPy's float64 operations exactly (no fused
  multiply-add, no reassociation). Rounding half to even uses ``(r + 2**52) - 2**52``, exact for
  ``0 <= r < 2**51`` in round-to-nearest-even arithmetic, and vectorises (``np.rint`` followed by
  the integer conversion compiled to scalar code here).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange

from ._plan import median_plan, percentile_plan

__all__ = [
    "FIRST",
    "LAST",
    "MEAN",
    "MEDOID",
    "PERCENTILE",
    "block_width",
    "count_valid",
    "reduce_blocks",
]

# Kernel method codes (the branch on them is taken once per block).
PERCENTILE, MEAN, FIRST, LAST, MEDOID = 0, 1, 2, 3, 4

_TWO52 = 4503599627370496.0  # 2**52: adding and subtracting it rounds half to even
_INT64_MAX = np.int64(np.iinfo(np.int64).max)


def _jit(**options: Any) -> Any:
    """``numba.njit(cache=True, nogil=True, ...)`` that degrades to no caching.

    Numba raises at decoration time when no cache location is writable (read-only install, no
    home directory); compiling on first use is then the right fallback, not an import error.
    ``nogil`` lets Dask's worker threads run chunks concurrently.
    """

    def decorate(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, nogil=True, **options)(fn)

    return decorate


def block_width(n_time: int) -> int:
    """Pixels per block: 512, fewer only once the ``(T, width)`` sort buffer outgrows ~256 KiB.

    The width is the length of the contiguous runs read from the cube, and long runs are what
    keeps the hardware prefetchers streaming: measured with 1 thread on AVX-512, 512 beats 128 by 1.5x at T=24 and 2x at T=60 although a 60 x 512 buffer no longer
    fits L1; the sorting network runs happily out of L2.
    """
    width = 512
    while width > 64 and n_time * width * 2 > 256 * 1024:
        width //= 2
    return width


# --------------------------------------------------------------------------- block steps


@_jit()
def _count(valid: Any, p0: int, w: int, n_valid: Any) -> None:
    for j in range(w):
        n_valid[j] = 0
    for t in range(valid.shape[0]):
        row = valid[t, p0 : p0 + w]
        for j in range(w):
            n_valid[j] += np.uint16(row[j])


@_jit()
def _load_and_sort(
    stack: Any, i: int, valid: Any, p0: int, w: int, sentinel: Any, pairs: Any, buf: Any
) -> None:
    """``buf[:, :w]`` = the block of band ``i`` of ``stack``, masked values set to ``sentinel``,
    sorted by ``pairs``."""
    for t in range(stack.shape[0]):
        src = stack[t, i, p0 : p0 + w]
        ok = valid[t, p0 : p0 + w]
        dst = buf[t]
        for j in range(w):
            x = src[j]
            dst[j] = x if ok[j] else sentinel
    for c in range(pairs.shape[0]):
        lo = buf[pairs[c, 0]]
        hi = buf[pairs[c, 1]]
        for j in range(w):
            a = lo[j]
            b = hi[j]
            lo[j] = min(a, b)
            hi[j] = max(a, b)


@_jit()
def _pick_rows(
    buf: Any, w: int, first_row: int, last_row: int, r_lo: Any, r_hi: Any, v_lo: Any, v_hi: Any
) -> None:
    """``v_lo[j] = buf[r_lo[j], j]`` and the same for ``hi``: per-pixel rows of the sorted block.

    A few rows: a vectorised select over them. Many rows (long series): a scalar gather.
    """
    if last_row - first_row < 16:
        for j in range(w):
            v_lo[j] = 0
            v_hi[j] = 0
        for t in range(first_row, last_row + 1):
            row = buf[t]
            tt = np.uint16(t)
            for j in range(w):
                x = row[j]
                lo = v_lo[j]
                hi = v_hi[j]
                v_lo[j] = x if r_lo[j] == tt else lo
                v_hi[j] = x if r_hi[j] == tt else hi
    else:
        for j in range(w):
            v_lo[j] = buf[r_lo[j], j]
            v_hi[j] = buf[r_hi[j], j]


@_jit()
def _lerp_store(v_lo: Any, v_hi: Any, gamma: Any, keep: Any, w: int, out: Any) -> None:
    """NumPy's ``_lerp(a, b, gamma)`` in float64, rounded half to even, 0 where not ``keep``."""
    for j in range(w):
        a = float(v_lo[j])
        b = float(v_hi[j])
        g = gamma[j]
        d = b - a
        from_below = a + d * g
        from_above = b - d * (1.0 - g)
        r = from_above if g >= 0.5 else from_below
        r = (r + _TWO52) - _TWO52
        v = np.int32(r)
        out[j] = v if keep[j] else np.int32(0)


@_jit()
def _mean_store(
    stack: Any, i: int, valid: Any, p0: int, w: int, n_valid: Any, keep: Any, acc: Any, out: Any
) -> None:
    # Sums of uint16 fit uint32 (T <= 65535) and are exact in float64, as np.nanmean's are.
    for j in range(w):
        acc[j] = 0
    for t in range(stack.shape[0]):
        src = stack[t, i, p0 : p0 + w]
        ok = valid[t, p0 : p0 + w]
        for j in range(w):
            x = np.uint32(src[j])
            acc[j] += x if ok[j] else np.uint32(0)
    for j in range(w):
        r = float(acc[j]) / float(max(n_valid[j], 1))
        r = (r + _TWO52) - _TWO52
        v = np.int32(r)
        out[j] = v if keep[j] else np.int32(0)


@_jit()
def _first_last_store(
    stack: Any, i: int, valid: Any, p0: int, w: int, last: bool, keep: Any, acc: Any, out: Any
) -> None:
    # The last valid value seen wins: walk time forwards for "last", backwards for "first".
    n_time = stack.shape[0]
    for j in range(w):
        acc[j] = 0
    for k in range(n_time):
        t = k if last else n_time - 1 - k
        src = stack[t, i, p0 : p0 + w]
        ok = valid[t, p0 : p0 + w]
        for j in range(w):
            x = src[j]
            a = acc[j]
            acc[j] = x if ok[j] else a
    for j in range(w):
        a = acc[j]
        out[j] = a if keep[j] else 0


@_jit()
def _medoid_store(
    stacks: Any,
    band_stack: Any,
    band_index: Any,
    valid: Any,
    p0: int,
    w: int,
    sentinel: Any,
    pairs: Any,
    first_row: int,
    last_row: int,
    r_lo: Any,
    r_hi: Any,
    keep: Any,
    buf: Any,
    v_lo: Any,
    v_hi: Any,
    twice_median: Any,
    dist: Any,
    best_d: Any,
    best_t: Any,
    out: Any,
) -> None:
    """The valid observation nearest (squared Euclidean) to the per-band median; ties: earliest.

    Distances are taken in doubled units, ``(2 x - 2 median)**2``, so they are exact integers.
    """
    n_band = band_stack.shape[0]
    n_time = valid.shape[0]
    for b in range(n_band):
        _load_and_sort(stacks[band_stack[b]], band_index[b], valid, p0, w, sentinel, pairs, buf)
        _pick_rows(buf, w, first_row, last_row, r_lo, r_hi, v_lo, v_hi)
        m2 = twice_median[b]
        for j in range(w):
            m2[j] = np.int64(v_lo[j]) + np.int64(v_hi[j])
    for j in range(w):
        best_d[j] = _INT64_MAX
        best_t[j] = 0
    for t in range(n_time):
        for j in range(w):
            dist[j] = 0
        for b in range(n_band):
            src = stacks[band_stack[b]][t, band_index[b], p0 : p0 + w]
            m2 = twice_median[b]
            for j in range(w):
                e = 2 * np.int64(src[j]) - m2[j]
                dist[j] += e * e
        ok = valid[t, p0 : p0 + w]
        tt = np.uint16(t)
        for j in range(w):
            d = dist[j]
            bd = best_d[j]
            bt = best_t[j]
            better = ok[j] & (d < bd)
            best_d[j] = d if better else bd
            best_t[j] = tt if better else bt
    for b in range(n_band):
        stack = stacks[band_stack[b]]
        i = band_index[b]
        for j in range(w):
            v_lo[j] = 0
        for t in range(n_time):
            src = stack[t, i, p0 : p0 + w]
            tt = np.uint16(t)
            for j in range(w):
                x = src[j]
                v = v_lo[j]
                v_lo[j] = x if best_t[j] == tt else v
        dst = out[b, p0 : p0 + w]
        for j in range(w):
            v = v_lo[j]
            dst[j] = v if keep[j] else 0


# --------------------------------------------------------------------------- drivers


@_jit()
def _reduce_range(
    stacks: Any,
    band_stack: Any,
    band_index: Any,
    valid: Any,
    out: Any,
    code: int,
    min_obs: int,
    width: int,
    sentinel: Any,
    pairs: Any,
    row_lo: Any,
    row_hi: Any,
    gamma: Any,
    first_row: int,
    last_row: int,
    blk_start: int,
    blk_stop: int,
) -> None:
    """Reduce blocks ``blk_start:blk_stop`` (of ``width`` pixels) into ``out``."""
    n_band = band_stack.shape[0]
    n_time, n_pix = valid.shape
    dtype = stacks[0].dtype
    buf = np.empty((n_time, width), dtype=dtype)
    n_valid = np.empty(width, dtype=np.uint16)
    keep = np.empty(width, dtype=np.bool_)
    r_lo = np.empty(width, dtype=np.uint16)
    r_hi = np.empty(width, dtype=np.uint16)
    g = np.empty(width, dtype=np.float64)
    v_lo = np.empty(width, dtype=dtype)
    v_hi = np.empty(width, dtype=dtype)
    acc = np.empty(width, dtype=np.uint32)
    small = np.empty(width, dtype=dtype)
    twice_median = np.empty((n_band if code == MEDOID else 0, width), dtype=np.int64)
    dist = np.empty(width if code == MEDOID else 0, dtype=np.int64)
    best_d = np.empty(width if code == MEDOID else 0, dtype=np.int64)
    best_t = np.empty(width if code == MEDOID else 0, dtype=np.uint16)
    for blk in range(blk_start, blk_stop):
        p0 = blk * width
        w = min(width, n_pix - p0)
        _count(valid, p0, w, n_valid)
        counts = out[n_band, p0 : p0 + w]
        for j in range(w):
            n = n_valid[j]
            counts[j] = n
            keep[j] = n >= min_obs  # min_obs >= 1: no value without an observation
            r_lo[j] = row_lo[n]
            r_hi[j] = row_hi[n]
            g[j] = gamma[n]
        if code == MEDOID:
            _medoid_store(
                stacks, band_stack, band_index, valid, p0, w, sentinel, pairs, first_row, last_row, r_lo, r_hi, keep,
                buf, v_lo, v_hi, twice_median, dist, best_d, best_t, out,
            )  # fmt: skip
            continue
        for b in range(n_band):
            stack = stacks[band_stack[b]]
            i = band_index[b]
            dst = out[b, p0 : p0 + w]
            if code == PERCENTILE:
                _load_and_sort(stack, i, valid, p0, w, sentinel, pairs, buf)
                _pick_rows(buf, w, first_row, last_row, r_lo, r_hi, v_lo, v_hi)
                _lerp_store(v_lo, v_hi, g, keep, w, dst)
            elif code == MEAN:
                _mean_store(stack, i, valid, p0, w, n_valid, keep, acc, dst)
            else:
                _first_last_store(stack, i, valid, p0, w, code == LAST, keep, small, dst)


@_jit(parallel=True)
def _reduce_parallel(
    stacks: Any,
    band_stack: Any,
    band_index: Any,
    valid: Any,
    out: Any,
    code: int,
    min_obs: int,
    width: int,
    sentinel: Any,
    pairs: Any,
    row_lo: Any,
    row_hi: Any,
    gamma: Any,
    first_row: int,
    last_row: int,
    n_parts: int,
) -> None:
    n_blocks = (valid.shape[1] + width - 1) // width
    for part in prange(n_parts):
        _reduce_range(
            stacks, band_stack, band_index, valid, out, code, min_obs, width, sentinel, pairs, row_lo, row_hi, gamma,
            first_row, last_row, part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts,
        )  # fmt: skip


def reduce_blocks(
    code: int,
    stacks: tuple[np.ndarray, ...],
    valid: np.ndarray,
    qf: float,
    min_obs: int,
    parallel: bool,
) -> np.ndarray:
    """``(B + 1, P)`` uint16: every band of ``stacks`` (``(T, Bk, P)`` each) reduced, then the count.

    ``parallel`` spreads blocks over Numba's thread pool (the ``parallel=True`` kernel); the
    serial kernel is for callers that are already parallel (Dask tasks): nesting Numba's pool
    inside Dask's threads oversubscribes the cores, and Numba's ``workqueue`` threading layer
    (its fallback where TBB and OpenMP are absent) is not safe to enter from several threads at
    once.
    """
    dtype = np.result_type(*(s.dtype for s in stacks))
    # Views where possible: C-contiguous inputs (every Dask chunk, a plain cube) are not copied.
    stacks = tuple(np.ascontiguousarray(s, dtype=dtype) for s in stacks)
    valid = np.ascontiguousarray(valid)
    if len({numba.typeof(s) for s in stacks}) > 1:
        # A Numba tuple needs one array type; read-only and writable chunks mixed: copy.
        stacks = tuple(np.array(s, order="C") for s in stacks)
    band_stack = np.array([k for k, s in enumerate(stacks) for _ in range(s.shape[1])], np.int64)
    band_index = np.array([i for s in stacks for i in range(s.shape[1])], np.int64)
    n_time, n_pix = valid.shape
    n_band = band_stack.shape[0]
    if code == MEDOID:
        mp = median_plan(n_time)
        pairs, row_lo, row_hi, first_row, last_row = (
            mp.pairs, mp.row_lo, mp.row_hi, mp.first_row, mp.last_row
        )  # fmt: skip
        gamma = percentile_plan(n_time, 0.5).gamma  # unused by the medoid; keeps one signature
        high = True
    else:
        pp = percentile_plan(n_time, qf)
        pairs, row_lo, row_hi, gamma, first_row, last_row = (
            pp.pairs, pp.row_lo, pp.row_hi, pp.gamma, pp.first_row, pp.last_row
        )  # fmt: skip
        high = pp.high_sentinel
    sentinel = dtype.type(np.iinfo(dtype).max if high else 0)
    width = block_width(n_time)
    out = np.empty((n_band + 1, n_pix), dtype=np.uint16)
    if n_pix == 0:
        return out
    args = (
        stacks, band_stack, band_index, valid, out, code, min_obs, width, sentinel, pairs,
        row_lo, row_hi, gamma, first_row, last_row,
    )  # fmt: skip
    n_blocks = math.ceil(n_pix / width)
    if parallel and n_blocks > 1:
        # A few parts per thread balance the load without allocating buffers per block.
        n_parts = min(n_blocks, 4 * numba.get_num_threads())
        _reduce_parallel(*args, n_parts)
    else:
        _reduce_range(*args, 0, n_blocks)
    return out


@_jit(parallel=True)
def _count_parallel(valid: Any, out: Any, width: int, n_parts: int) -> None:
    n_blocks = (valid.shape[1] + width - 1) // width
    for part in prange(n_parts):
        for blk in range(part * n_blocks // n_parts, (part + 1) * n_blocks // n_parts):
            p0 = blk * width
            w = min(width, valid.shape[1] - p0)
            _count(valid, p0, w, out[p0 : p0 + w])


def count_valid(valid: np.ndarray) -> np.ndarray:
    """``(P,)`` uint16 number of True along the first axis of ``valid`` ``(T, P)``, in parallel.

    A stream over the mask at memory speed on all cores (``valid.sum(axis=0)`` is one thread:
    0.032 s against 0.042 s for 24 x 2048² on 2 cores).
    """
    valid = np.ascontiguousarray(valid)
    out = np.empty(valid.shape[1], dtype=np.uint16)
    width = 8192
    n_blocks = math.ceil(valid.shape[1] / width)
    if n_blocks:
        _count_parallel(valid, out, width, min(n_blocks, 4 * numba.get_num_threads()))
    return out
