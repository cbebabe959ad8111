"""Array kernels of :mod:`s2mosaic._timeseries`: NumPy on the CPU, the same code on CuPy arrays.

They know nothing of xarray, STAC or Dask (``DESIGN.md``): arrays in, arrays out, time on axis 0
and any number of pixel axes after it. The array module is taken from the inputs, so a CuPy
chunk is solved on the GPU by the very lines that solve a NumPy chunk on the CPU; CuPy is never
imported here.

The damped smoother
-------------------
SpaceEye's temporal interpolation (FarmVibes.AI, ``DampedInterpolation``) fills clouds by
minimising, per pixel and band, on a daily grid::

    F(x) = sum_t m_t (x_t - a_t)^2 + lambda * sum_t (x_{t+1} - x_t)^2

with ``m`` the clear mask (or weights), ``a`` the observations and ``lambda`` the damping. Its
minimiser solves the normal equations ``(M + lambda L) x = M a`` where ``M = diag(m)`` and
``L = D^T D`` is the path-graph Laplacian (``D`` the forward difference): a symmetric positive
definite *tridiagonal* system whenever one weight is positive. SpaceEye reaches it by a
fixed-point iteration, ``x <- W (M a + (I - M) x)`` with ``W = (I + lambda L)^-1``, a dense
``T x T`` product per step, 200 steps at most. :func:`smooth` solves it exactly, in one forward
and one backward sweep of the Thomas algorithm vectorised over every pixel at once: ``O(T)``
work per pixel instead of ``O(200 T^2)``. Thomas without pivoting is stable here because the
matrix is symmetric positive definite (every pivot is positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError

__all__ = [
    "Window",
    "array_module",
    "daily_windows",
    "interpolate_linear",
    "smooth",
    "smooth_fixed_point",
    "solve_smoother",
    "to_reflectance",
]


def array_module(*arrays: Any) -> Any:
    """``cupy`` when any of ``arrays`` is a CuPy array, else ``numpy``.

    Checked by module name, as :mod:`s2mosaic.composite` does, so CuPy stays optional and is
    imported only when a CuPy array is already there.
    """
    for a in arrays:
        if type(a).__module__.split(".", 1)[0] == "cupy":
            import cupy

            return cupy
    return np


def solve_smoother(rhs: Any, weights: Any, damping: float) -> Any:
    """Solve ``(W + damping L) x = rhs`` along axis 0 for every pixel at once (Thomas algorithm).

    Parameters
    ----------
    rhs
        ``(T, ...)`` float array: the weighted observations ``w_t * a_t`` (sums of the clear
        values of day ``t`` when several observations fall on it).
    weights
        ``(T, ...)`` non-negative weights (clear-observation counts), broadcastable against
        ``rhs[t]`` for every ``t``; typically ``(T, 1, P)`` for ``(T, B, P)`` bands that share a
        mask, so the pivots are computed once per pixel for all bands.
    damping
        ``lambda > 0``.

    Returns
    -------
    array
        ``(T, ...)`` float64, the exact minimiser; NaN where a series has no positive weight
        (the system is singular there: no observation, nothing to interpolate).
    """
    xp = array_module(rhs, weights)
    lam = float(damping)
    if not lam > 0:
        raise ArgumentError(f"damping must be > 0 (lambda of the smoother); got {damping!r}")
    n = rhs.shape[0]
    shape = rhs.shape
    w = weights.astype(xp.float64, copy=False)
    if w.ndim == 1:  # one series: give the per-step arrays a pixel axis to write into
        w = w[:, None]
        rhs = rhs.reshape(n, *(shape[1:] or (1,)))
    empty = ~(w > 0).any(axis=0)
    # inv[t] = 1 / pivot_t. The sub- and super-diagonals are -lambda, so the forward sweep is
    #   pivot_t = w_t + lambda deg_t - lambda^2 / pivot_{t-1}
    #   y_t     = (rhs_t + lambda y_{t-1}) / pivot_t
    # and the back substitution x_t = y_t + lambda x_{t+1} / pivot_t. deg_t is the number of
    # neighbours (1 at the ends, 2 inside, 0 for a single day). A series without weight has a
    # zero last pivot: adding 1 there keeps the sweep finite, and its result is replaced by NaN.
    inv = xp.empty(w.shape, dtype=xp.float64)
    y = xp.empty(rhs.shape, dtype=xp.float64)
    pivot = xp.empty(w.shape[1:], dtype=xp.float64)
    lam2 = lam * lam
    for t in range(n):
        deg = (t > 0) + (t < n - 1)
        xp.add(w[t], lam * deg, out=pivot)
        if t:
            pivot -= lam2 * inv[t - 1]
        if t == n - 1:
            pivot += empty
        xp.divide(1.0, pivot, out=inv[t])
        if t:
            xp.multiply(y[t - 1], lam, out=y[t])
            y[t] += rhs[t]
            y[t] *= inv[t]
        else:
            xp.multiply(rhs[0], inv[0], out=y[0])
    for t in range(n - 2, -1, -1):
        y[t] += lam * inv[t] * y[t + 1]
    return xp.where(empty, xp.nan, y).reshape(shape)


def smooth(values: Any, weights: Any, damping: float = 0.1) -> Any:
    """The exact minimiser of SpaceEye's damped interpolation objective, per series on axis 0.

    ``argmin_x sum_t w_t (x_t - a_t)^2 + damping * sum_t (x_{t+1} - x_t)^2`` for every pixel
    (and band) at once; see the module docstring. NumPy or CuPy arrays (the result lives where
    the inputs do).

    Parameters
    ----------
    values
        ``(T, ...)`` observations ``a`` on a regular (e.g. daily) grid; values where the weight
        is 0 are ignored (any finite number, NaN is not allowed).
    weights
        ``(T, ...)`` weights ``w >= 0`` broadcastable against ``values`` (a 0/1 clear mask,
        or cloud-free probabilities).
    damping
        ``lambda > 0``; larger is smoother. As it goes to 0 the result interpolates the clear
        values linearly across gaps (and holds them constant beyond the first and last).

    Returns
    -------
    array
        ``(T, ...)`` float64; NaN for series with no positive weight.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([10.0, 0, 0, 40])
    >>> m = np.array([1.0, 0, 0, 1])
    >>> np.round(smooth(a, m, 1e-9), 6)
    array([10., 20., 30., 40.])
    """
    xp = array_module(values, weights)
    w = xp.asarray(weights, dtype=xp.float64)
    a = xp.asarray(values, dtype=xp.float64)
    if w.shape[0] != a.shape[0]:
        raise ArgumentError(f"weights have {w.shape[0]} time steps, values {a.shape[0]}; they must "
                            "share axis 0")
    return solve_smoother(a * w, w, damping)


def smooth_fixed_point(values: Any, weights: Any, damping: float = 0.1, *,
                       iterations: int = 200, tol: float | None = None) -> Any:
    """SpaceEye's fixed-point iteration for the same objective (the reference :func:`smooth`
    is checked against, and the baseline of ``benchmarks/bench_gapfill.py``).

    ``x <- W (m a + (1 - m) x)`` with ``W = (I + damping L)^-1`` (a dense ``T x T`` matrix),
    started from each pixel's clear-time average, as in FarmVibes.AI's ``DampedInterpolation``.
    Weights must lie in [0, 1]. Runs ``iterations`` steps, or stops earlier once the largest
    change is at most ``tol`` times the largest value.

    Returns
    -------
    array
        ``(T, ...)`` with the shape of ``values`` (in its float dtype; NumPy/CuPy as given).
    """
    xp = array_module(values, weights)
    a = xp.asarray(values)
    dtype = a.dtype if a.dtype.kind == "f" else xp.float64
    n = a.shape[0]
    a = a.astype(dtype).reshape(n, -1)
    m = xp.broadcast_to(xp.asarray(weights, dtype=dtype), values.shape).reshape(n, -1)
    diff = np.diff(np.eye(n), axis=0)
    w = xp.asarray(np.linalg.inv(np.eye(n) + damping * diff.T @ diff), dtype=dtype)
    n_clear = m.sum(axis=0)
    average = (a * m).sum(axis=0) / xp.maximum(n_clear, 1e-6)
    x = a * m + average * (1 - m)
    f = w @ (m * a)
    rest = 1 - m
    for _ in range(iterations):
        x1 = f + w @ (rest * x)
        if tol is not None and float(abs(x1 - x).max()) <= tol * float(abs(x1).max()):
            return x1.reshape(values.shape)
        x = x1
    return x.reshape(values.shape)


@dataclass(frozen=True)
class Window:
    """One smoothing window of a daily grid, and the days it provides to the output."""

    start: int
    """First day of the window (index into the daily grid)."""
    stop: int
    """One past its last day."""
    first: int
    """First day taken from this window (the days nearer its centre than any other's)."""
    last: int
    """One past the last day taken from this window."""


def daily_windows(n_days: int, duration: int = 48, overlap: float = 0.5) -> list[Window]:
    """Windows of ``duration`` days over a grid of ``n_days``, overlapping by ``overlap``.

    Windows start every ``round(duration * (1 - overlap))`` days (at least 1); the last one is
    moved back to end on the last day, so every window is full length (a grid shorter than
    ``duration`` is one window). Each day is taken from the window whose centre is nearest
    (the earlier one on ties), so every day comes from a window with as much context on both
    sides as the windows allow.

    Examples
    --------
    >>> [(w.start, w.stop, w.first, w.last) for w in daily_windows(120, 48, 0.5)]
    [(0, 48, 0, 36), (24, 72, 36, 60), (48, 96, 60, 84), (72, 120, 84, 120)]
    """
    if n_days < 1:
        raise ArgumentError(f"n_days must be >= 1; got {n_days}")
    if duration < 1:
        raise ArgumentError(f"duration must be >= 1 day; got {duration}")
    if not 0 <= overlap < 1:
        raise ArgumentError(f"overlap must be in [0, 1); got {overlap}")
    if n_days <= duration:
        return [Window(0, n_days, 0, n_days)]
    stride = max(1, round(duration * (1 - overlap)))
    starts = [*range(0, n_days - duration, stride), n_days - duration]
    # Twice the distance to each centre, in integers: |2 d - (2 s + duration - 1)|.
    days = np.arange(n_days)[:, None]
    centres2 = 2 * np.array(starts)[None, :] + duration - 1
    owner = np.abs(2 * days - centres2).argmin(axis=1)  # first minimum: the earlier window
    out = []
    for k, s in enumerate(starts):
        mine = np.flatnonzero(owner == k)
        if mine.size:  # a window nobody needs (ends too close together) is left out
            out.append(Window(s, s + duration, int(mine[0]), int(mine[-1]) + 1))
    return out


def interpolate_linear(obs_t: np.ndarray, bands: list[Any], valid: Any,
                       grid_t: np.ndarray) -> Any:
    """Mask-aware linear interpolation of each pixel's clear observations onto ``grid_t``.

    Parameters
    ----------
    obs_t
        ``(T,)`` increasing observation times (host NumPy, any numeric unit, e.g. days).
    bands
        ``B`` arrays ``(T, ...)`` of observations (NumPy or CuPy).
    valid
        ``(T, ...)`` boolean, True where an observation is clear.
    grid_t
        ``(G,)`` target times in the unit of ``obs_t``.

    Returns
    -------
    array
        ``(B, G, ...)`` float64: at a target time, the clear value there, else the straight line
        between the nearest clear observations before and after it; NaN where a pixel has no
        clear observation on one side (no extrapolation) or none at all.
    """
    xp = array_module(valid, *bands)
    obs_t = np.asarray(obs_t, dtype=np.float64)
    grid_t = np.asarray(grid_t, dtype=np.float64)
    n = obs_t.shape[0]
    pix = valid.shape[1:]
    out = xp.full((len(bands), grid_t.shape[0], *pix), xp.nan, dtype=xp.float64)
    if n == 0:
        return out
    # prev[t]: index of the last clear observation at or before t (-1: none); nxt[t]: of the
    # first at or after t (n: none). One pass each way, vectorised over the pixels.
    prev = xp.empty((n, *pix), dtype=xp.int64)
    nxt = xp.empty((n, *pix), dtype=xp.int64)
    cur = xp.full(pix, -1, dtype=xp.int64)
    for t in range(n):
        cur = xp.where(valid[t], t, cur)
        prev[t] = cur
    cur = xp.full(pix, n, dtype=xp.int64)
    for t in range(n - 1, -1, -1):
        cur = xp.where(valid[t], t, cur)
        nxt[t] = cur
    times = xp.asarray(obs_t)
    for g, gt in enumerate(grid_t.tolist()):
        k = int(np.searchsorted(obs_t, gt, side="right")) - 1  # last observation <= gt
        j = int(np.searchsorted(obs_t, gt, side="left"))  # first observation >= gt
        lo = prev[k] if k >= 0 else xp.full(pix, -1, dtype=xp.int64)
        hi = nxt[j] if j < n else xp.full(pix, n, dtype=xp.int64)
        ok = (lo >= 0) & (hi < n)
        lo_c = xp.clip(lo, 0, n - 1)
        hi_c = xp.clip(hi, 0, n - 1)
        t_lo, t_hi = times[lo_c], times[hi_c]
        span = t_hi - t_lo
        frac = xp.where(span > 0, (gt - t_lo) / xp.where(span > 0, span, 1.0), 0.0)
        for b, band in enumerate(bands):
            v_lo = xp.take_along_axis(band, lo_c[None], axis=0)[0].astype(xp.float64)
            v_hi = xp.take_along_axis(band, hi_c[None], axis=0)[0].astype(xp.float64)
            out[b, g] = xp.where(ok, v_lo + (v_hi - v_lo) * frac, xp.nan)
    return out


def to_reflectance(x: Any, dtype: Any = np.uint16) -> Any:
    """Float results back to the integer reflectance product: NaN is nodata (0), every other
    value is rounded half to even and clipped to ``[1, max]`` so it never reads as nodata."""
    xp = array_module(x)
    top = float(np.iinfo(dtype).max)
    r = xp.clip(xp.rint(xp.nan_to_num(x, nan=0.0)), 1.0, top)
    return xp.where(xp.isnan(x), 0, r).astype(dtype)
