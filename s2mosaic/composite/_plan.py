"""What a reduction needs to know before it touches a pixel: pure Python, shared by CPU and GPU.

Percentiles are computed by *sorting with a sentinel*: masked observations are replaced by the
largest value of the dtype (or by 0, see below) and every pixel's series of ``T`` values is sorted
by one fixed sorting network, the same comparators for every pixel. That makes the work identical
across pixels, so it vectorises across pixels (32 uint16 lanes per AVX-512 instruction on the CPU,
one thread per pixel on the GPU), with no branch on the mask.

With the sentinel at the top, the ``n`` valid values of a pixel are the first ``n`` sorted values
(a valid value equal to the sentinel is indistinguishable from it, and that is fine: only values
matter), so the k-th smallest valid value sits in row ``k``. For a high percentile the sentinel is
0 instead and the valid values are the last ``n`` rows, the k-th in row ``T - n + k``; either way
only a few rows are read, and the comparators that cannot reach those rows are dropped.

NumPy's "linear" quantile depends on a pixel only through its count ``n``: the two rows read and
the interpolation weight are tabulated per ``n`` here, in NumPy's own float64 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MedianPlan", "PercentilePlan", "median_plan", "percentile_plan", "sorting_network"]


@lru_cache(maxsize=64)
def _merge_sort_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` inputs, as ``(low, high)`` comparators.

    Built for the next power of two and cut to ``n``: a comparator that touches an index ``>= n``
    would compare against a ``+inf`` padding value and never swap, because every comparator of
    this network puts the minimum at the lower index.
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < n)


def sorting_network(n: int, rows: tuple[int, ...] | None = None) -> np.ndarray:
    """Comparators ``(C, 2)`` (int64) that sort ``n`` values, or just put ``rows`` in place.

    With ``rows``, comparators that cannot influence those output rows are dropped (walking the
    network backwards); the other rows come out partially sorted.

    >>> sorting_network(3).tolist()
    [[0, 1], [0, 2], [1, 2]]
    """
    pairs = _merge_sort_network(n)
    if rows is not None:
        needed = set(rows)
        kept: list[tuple[int, int]] = []
        for a, b in reversed(pairs):
            if a in needed or b in needed:
                kept.append((a, b))
                needed.update((a, b))
        pairs = tuple(reversed(kept))
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    out.flags.writeable = False
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class PercentilePlan:
    """Everything the percentile kernels need for ``n_time`` observations and quantile ``qf``.

    Per valid count ``n`` (index ``0..n_time``): the sorted rows holding NumPy's two neighbouring
    order statistics and the interpolation weight. The result for a pixel with ``n`` valid values
    is ``lerp(sorted[row_lo[n]], sorted[row_hi[n]], gamma[n])`` with NumPy's ``_lerp``.
    """

    n_time: int
    qf: float
    """The quantile in [0, 1], computed as NumPy does: ``q / 100``."""
    high_sentinel: bool
    """Masked values become the dtype's maximum (True, quantiles <= 0.5) or 0 (False)."""
    pairs: np.ndarray
    """(C, 2) int64 comparators, pruned to the rows in ``row_lo``/``row_hi``."""
    row_lo: np.ndarray
    """(n_time + 1,) uint16: row of the lower order statistic for each valid count."""
    row_hi: np.ndarray
    """(n_time + 1,) uint16: row of the upper order statistic (equal weight 0 where absent)."""
    gamma: np.ndarray
    """(n_time + 1,) float64: NumPy's interpolation weight ``vi - floor(vi)``."""
    first_row: int
    last_row: int


@lru_cache(maxsize=64)
def percentile_plan(n_time: int, qf: float) -> PercentilePlan:
    """The plan for NumPy's "linear" quantile ``qf`` in [0, 1] over ``n_time`` observations.

    numpy.lib._function_base_impl: virtual index ``vi = (n - 1) * quantile``; an index at or past
    ``n - 1`` takes the maximum; otherwise ``gamma = vi - floor(vi)`` and ``_lerp(a, b, gamma)``.
    Python floats are IEEE doubles, so these are NumPy's float64 values bit for bit.

    >>> p = percentile_plan(3, 0.25)
    >>> p.row_lo.tolist(), p.row_hi.tolist(), p.gamma.tolist()
    ([0, 0, 0, 0], [0, 1, 1, 1], [0.0, 0.0, 0.25, 0.5])
    """
    high = qf <= 0.5
    row_lo = np.zeros(n_time + 1, dtype=np.uint16)
    row_hi = np.zeros(n_time + 1, dtype=np.uint16)
    gamma = np.zeros(n_time + 1, dtype=np.float64)
    for n in range(1, n_time + 1):
        vi = (n - 1) * qf
        if vi >= n - 1:
            k, g = n - 1, 0.0
        else:
            k = math.floor(vi)
            g = vi - k
        gamma[n] = g
        offset = 0 if high else n_time - n
        row_lo[n] = offset + k
        # With gamma == 0 the upper value is multiplied by 0 (NumPy's lerp gives exactly the
        # lower value), so any finite row will do: clamp into the array.
        row_hi[n] = min(offset + k + 1, n_time - 1)
    rows = tuple(sorted({int(r) for r in (*row_lo[1:], *row_hi[1:])})) or (0,)
    return PercentilePlan(
        n_time=n_time,
        qf=qf,
        high_sentinel=high,
        pairs=sorting_network(n_time, rows),
        row_lo=_readonly(row_lo),
        row_hi=_readonly(row_hi),
        gamma=_readonly(gamma),
        first_row=rows[0],
        last_row=rows[-1],
    )


@dataclass(frozen=True, eq=False)
class MedianPlan:
    """Rows whose sum is twice the median of ``n`` valid values (sentinel at the top).

    ``2 * median = sorted[row_lo[n]] + sorted[row_hi[n]]``, exact in integers: the medoid compares
    squared distances to the median in these doubled units, so no rounding ever happens.
    """

    n_time: int
    pairs: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray
    first_row: int
    last_row: int


@lru_cache(maxsize=64)
def median_plan(n_time: int) -> MedianPlan:
    """The plan for the (doubled) median of each band, used by the medoid.

    >>> p = median_plan(4)
    >>> p.row_lo.tolist(), p.row_hi.tolist()
    ([0, 0, 0, 1, 1], [0, 0, 1, 1, 2])
    """
    row_lo = np.zeros(n_time + 1, dtype=np.uint16)
    row_hi = np.zeros(n_time + 1, dtype=np.uint16)
    for n in range(1, n_time + 1):
        row_lo[n] = (n - 1) // 2
        row_hi[n] = n // 2
    rows = tuple(sorted({int(r) for r in (*row_lo[1:], *row_hi[1:])})) or (0,)
    return MedianPlan(
        n_time=n_time,
        pairs=sorting_network(n_time, rows),
        row_lo=_readonly(row_lo),
        row_hi=_readonly(row_hi),
        first_row=rows[0],
        last_row=rows[-1],
    )
