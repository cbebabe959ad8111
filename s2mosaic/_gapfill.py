"""Gap filling: SpaceEye's temporal damped interpolation onto a daily (or every-N-day) grid.

:func:`gapfill` solves the smoother exactly (:func:`s2mosaic._timeseries_kernels.smooth`) in
overlapping windows, one task per spatial chunk (:class:`_GapFillChunk`), with optional
per-date illumination normalisation (:func:`gapfill_illuminance`, computed once for a whole
AOI and handed to each run tile through :func:`gapfill_with`). The day grid and the per-chunk
plumbing are :mod:`s2mosaic._dategrid`'s.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr

from ._dategrid import assemble, blockwise, check_cube, day_grid, single_block
from ._timeseries import TIME, cube_dates
from ._timeseries_kernels import (
    array_module,
    daily_windows,
    smooth,
    smooth_fixed_point,
    solve_smoother,
    to_reflectance,
)
from ._validate import fail, number
from .errors import DataError

__all__ = [
    "MIN_CLEAR_FOR_ILLUMINANCE",
    "GapFill",
    "Illuminance",
    "gapfill",
    "gapfill_days",
    "gapfill_illuminance",
    "gapfill_with",
    "smooth",
    "smooth_fixed_point",
]

#: Dates with a smaller clear fraction over the AOI give no illuminance (SpaceEye's 1 %).
MIN_CLEAR_FOR_ILLUMINANCE = 0.01
#: Pixels solved together on the CPU. Larger blocks amortise NumPy's per-call cost (2048 px ran
#: 3x slower than 32768 in benchmarks/bench_gapfill.py; 65536 gained nothing more) while the
#: float64 scratch of a 48-day, 4-band window stays near 100 MB per task whatever the chunk
#: size. The GPU takes a whole chunk at once.
_PIXEL_BLOCK = 32768


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class GapFill:
    """Parameters of :func:`gapfill` (SpaceEye's defaults). Enters the Dask graph.

    Examples
    --------
    >>> GapFill(damping=0.1, duration=48, overlap=0.5, step=1).stride
    24
    """

    damping: float = 0.1
    """``lambda`` of the smoother: the weight of day-to-day changes against the clear data."""
    duration: int = 48
    """Window length in days; each window is solved on its own."""
    overlap: float = 0.5
    """Fraction of a window shared with the next one, in [0, 1)."""
    step: int = 1
    """Output every ``step`` days (1: daily), counted from the first day."""
    normalise: bool = False
    """Divide each date by its clear-pixel mean over the AOI (per band) before smoothing and
    multiply the smoothed daily illuminance back after (SpaceEye's illumination
    normalisation). Costs one extra pass over the cube before the lazy result."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "damping", number("gapfill.damping", self.damping, low=0,
                                                   low_open=True))
        object.__setattr__(self, "duration", number("gapfill.duration", self.duration, low=2,
                                                    integer=True))
        overlap = number("gapfill.overlap", self.overlap, low=0)
        if overlap >= 1:
            raise fail("gapfill.overlap", self.overlap, "expected a fraction >= 0 and < 1")
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "step", number("gapfill.step", self.step, low=1, integer=True))
        if not isinstance(self.normalise, bool):
            raise fail("gapfill.normalise", self.normalise, "expected true or false")

    @property
    def stride(self) -> int:
        """Days between window starts."""
        return max(1, round(self.duration * (1 - self.overlap)))


# --------------------------------------------------------------------------- gap filling


@dataclass(frozen=True)
class _GapFillChunk:
    """The task function: gap-fills one spatial chunk of every band. Enters the Dask graph."""

    obs_day: tuple[int, ...]
    """Day (index into the daily grid) of each observation."""
    out_days: tuple[int, ...]
    """Days written to the output, increasing."""
    windows: tuple[Any, ...]
    """The :class:`~s2mosaic._timeseries_kernels.Window` s of the daily grid."""
    damping: float
    illum_obs: tuple[tuple[float, ...], ...] | None
    """Per band, the illuminance each observation is divided by; None: no normalisation."""
    illum_day: tuple[tuple[float, ...], ...] | None
    """Per band, the smoothed illuminance of each output day, multiplied back."""

    def __call__(self, valid: Any, *bands: Any) -> Any:
        valid = single_block(valid)
        bands = tuple(single_block(b) for b in bands)
        xp = array_module(valid, *bands)
        n_time, ny, nx = valid.shape
        n_pix = ny * nx
        flat_valid = valid.reshape(n_time, n_pix)
        flat = [b.reshape(n_time, n_pix) for b in bands]
        out = xp.zeros((len(bands), len(self.out_days), n_pix), dtype=xp.uint16)
        days = np.asarray(self.out_days)
        block = n_pix if xp is not np else _PIXEL_BLOCK
        scale = (xp.asarray(np.asarray(self.illum_obs).T[:, :, None])  # (T, B, 1)
                 if self.illum_obs is not None else None)
        for w in self.windows:
            k0, k1 = np.searchsorted(days, [w.first, w.last])
            idx = [i for i, d in enumerate(self.obs_day) if w.start <= d < w.stop]
            if k0 == k1 or not idx:
                continue  # no output day here, or nothing observed: nodata
            picks = days[k0:k1] - w.start
            gain = (xp.asarray(np.asarray(self.illum_day)[:, k0:k1].T[:, :, None])  # (K, B, 1)
                    if self.illum_day is not None else None)
            for p0 in range(0, n_pix, block):
                sl = slice(p0, min(p0 + block, n_pix))
                x = self._solve_window(w.stop - w.start, w.start, idx, flat_valid[:, sl],
                                       [f[:, sl] for f in flat], scale, xp)
                sel = x[picks]
                if gain is not None:
                    sel *= gain
                out[:, k0:k1, sl] = to_reflectance(sel).transpose(1, 0, 2)
        return out.reshape(len(bands), len(self.out_days), ny, nx)

    def _solve_window(self, length: int, start: int, idx: list[int], valid: Any,
                      bands: list[Any], scale: Any, xp: Any) -> Any:
        n_pix = valid.shape[1]
        rhs = xp.zeros((length, len(bands), n_pix), dtype=xp.float64)
        weight = xp.zeros((length, 1, n_pix), dtype=xp.float64)
        for i in idx:
            d = self.obs_day[i] - start
            m = valid[i]
            weight[d, 0] += m
            values = xp.stack([xp.where(m, b[i], 0) for b in bands]).astype(xp.float64)
            if scale is not None:
                values /= scale[i]
            rhs[d] += values
        return solve_smoother(rhs, weight, self.damping)


def gapfill(cube: xr.Dataset, valid: xr.DataArray, params: GapFill | None = None, *,
            start: dt.date | str | None = None, end: dt.date | str | None = None) -> xr.Dataset:
    """Cloud-free rasters every ``params.step`` days by SpaceEye's damped interpolation.

    Per pixel and band, on the daily grid from ``start`` to ``end``, the exact minimiser of
    ``sum_t m_t (x_t - a_t)^2 + damping * sum_t (x_{t+1} - x_t)^2`` (``m``: clear observations
    of day ``t``, ``a`` their value) in windows of ``params.duration`` days overlapping by
    ``params.overlap``; each day comes from the window where it is most central. A pixel with
    no clear observation in a window is nodata (0) on the days taken from it, never a made-up
    value.

    Parameters
    ----------
    cube
        ``(time, y, x)`` uint16 bands, time whole per chunk (as :func:`s2mosaic.observations` gives).
    valid
        Boolean ``(time, y, x)``: clear observations (inside the AOI).
    params
        Damping, window, output step, normalisation (default: SpaceEye's 0.1, 48 days, 0.5).
    start, end
        First and last day of the grid (default: the first and last observation's day);
        observations outside are not used.

    Returns
    -------
    xr.Dataset
        Lazy ``(time, y, x)`` uint16 bands (reflectance × 10000, nodata 0) at midnight of each
        output day; one task per spatial chunk (NumPy on the CPU, CuPy for CuPy chunks).

    Examples
    --------
    >>> obs = observations(spec)  # doctest: +SKIP
    >>> daily = gapfill(obs.cube, obs.valid, GapFill(step=1), start="2024-05-01")  # doctest: +SKIP
    """
    return gapfill_with(cube, valid, params or GapFill(), start, end)


#: Illumination per observation and band, and per output day and band: ``(obs, day)``.
Illuminance = tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]


def gapfill_days(cube: xr.Dataset, params: GapFill, start: dt.date | str | None,
                 end: dt.date | str | None) -> tuple[dt.date, int, list[int], list[int]]:
    """The day grid of :func:`gapfill`: its first day, number of days, the indices of the
    observations on it (the others are not used) and the output days."""
    first, n_days, obs_day = day_grid(cube, start, end)
    keep = [i for i, d in enumerate(obs_day) if 0 <= d < n_days]
    return first, n_days, keep, list(range(0, n_days, params.step))


def _kept_days(cube: xr.Dataset, first: dt.date, keep: list[int]) -> list[int]:
    dates = cube_dates(cube)
    return [(dates[i].date() - first).days for i in keep]


def gapfill_illuminance(cube: xr.Dataset, valid: xr.DataArray, params: GapFill,
                        start: dt.date | str | None, end: dt.date | str | None,
                        ) -> tuple[list[int], Illuminance]:
    """The illumination :func:`gapfill` normalises by (computed now), with the indices of the
    observations of ``cube`` it gives a value for (those on the day grid)."""
    names, _ = check_cube(cube, valid)
    first, n_days, keep, out_days = gapfill_days(cube, params, start, end)
    illum = _illuminance(cube.isel(time=keep), valid.isel(time=keep), names,
                         _kept_days(cube, first, keep), out_days, n_days, params.damping)
    return keep, illum


def gapfill_with(cube: xr.Dataset, valid: xr.DataArray, p: GapFill,
                 start: dt.date | str | None, end: dt.date | str | None,
                 illuminance: Illuminance | None = None) -> xr.Dataset:
    """:func:`gapfill`, normalised (``p.normalise``) by the given illumination of the
    observations on the day grid: a run tile takes it from the whole AOI's, computed once."""
    names, space = check_cube(cube, valid)
    first, n_days, keep, out_days = gapfill_days(cube, p, start, end)
    obs_day = _kept_days(cube, first, keep)
    cube, valid = cube.isel(time=keep), valid.isel(time=keep)
    illum_obs = illum_day = None
    if p.normalise:
        illum_obs, illum_day = illuminance or _illuminance(cube, valid, names, obs_day,
                                                           out_days, n_days, p.damping)
        if any(len(b) != len(obs_day) for b in illum_obs):
            raise DataError(f"illumination given for {len(illum_obs[0])} observation(s), the "
                            f"cube has {len(obs_day)} on the day grid: they must match")
    task = _GapFillChunk(tuple(obs_day), tuple(out_days),
                         tuple(daily_windows(n_days, p.duration, p.overlap)), p.damping,
                         illum_obs, illum_day)
    stacked = blockwise(task, cube, valid, names, len(out_days), "gapfill")
    times = [np.datetime64(first + dt.timedelta(days=d), "ns") for d in out_days]
    out = assemble(cube, names, space, stacked, times)
    out.attrs.update(gapfill_damping=p.damping, gapfill_duration_days=p.duration,
                     gapfill_overlap=p.overlap, gapfill_step_days=p.step,
                     gapfill_normalise=int(p.normalise))
    return out


def _illuminance(cube: xr.Dataset, valid: xr.DataArray, names: list[str], obs_day: list[int],
                 out_days: list[int], n_days: int, damping: float,
                 ) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Clear-pixel mean per date and band (computed now), and its smoothed daily curve.

    Dates with less than 1 % of the AOI clear get the smoothed value of their day instead of a
    mean of a few pixels.
    """
    space = [d for d in valid.dims if d != TIME]
    n_clear = valid.sum(space)
    sums = [cube[n].where(valid, 0).astype("float64").sum(space) for n in names]
    total = valid.isel(time=0, drop=True).size
    counts, *band_sums = dask.compute(n_clear, *sums)
    counts = np.asarray(counts, dtype=np.float64)
    means = np.stack([np.asarray(s) for s in band_sums]) / np.maximum(counts, 1)  # (B, T)
    known = counts >= MIN_CLEAR_FOR_ILLUMINANCE * total
    rhs = np.zeros((n_days, len(names)))
    weight = np.zeros((n_days, 1))
    for i, d in enumerate(obs_day):
        if known[i]:
            rhs[d] += means[:, i]
            weight[d] += 1
    if not known.any():
        raise DataError("illumination normalisation (GapFill(normalise=True)) needs one date "
                        f"with at least {MIN_CLEAR_FOR_ILLUMINANCE:.0%} of the AOI clear; none "
                        "has. Use normalise=False or a longer period")
    daily = solve_smoother(rhs, weight, damping)  # (days, B)
    used = np.where(known[None], means, daily[obs_day].T)
    return (tuple(map(tuple, used.tolist())),
            tuple(map(tuple, daily[out_days].T.tolist())))

