"""Time series: period composites in one job, daily gap filling, regular date grids, indices.

Everything here starts from the same masked cube as a mosaic (:func:`observations`: search →
grid → lazy cube → ``valid_mask & aoi_mask``) and returns lazy ``(time, y, x)`` datasets:

- :func:`series` - one composite per sub-period of ``spec.series.periods`` (monthly, quarterly,
  every N days, an explicit list). With ``select.method: all``, from ONE cube over the whole
  period: each period selects its time slices of the shared read tasks, so a scene is read
  once per chunk however many periods it falls in. With ``min-cover``, each period reads only
  the scenes the selection picks for it (:func:`period_items`). Each period equals the
  single-period :func:`s2mosaic.mosaic` of that period.
- :func:`gapfill` - SpaceEye's temporal damped interpolation onto a daily (or every-N-day)
  grid, solved exactly (:func:`s2mosaic._timeseries_kernels.smooth`) in overlapping windows,
  with optional per-date illumination normalisation.
- :func:`interpolate` - eo-learn's mask-aware linear interpolation onto a regular date grid;
  :func:`filter_acquisitions` drops acquisitions whose clear fraction over the AOI is too low;
  :func:`normalized_difference` / :func:`with_indices` add NDVI, NDWI or any normalised
  difference, lazily.

:func:`s2mosaic._timeseries_run.run_series` and :func:`~s2mosaic._timeseries_run.run_gapfill`
run a spec end to end through the tiled runner of :func:`s2mosaic.run`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import pystac
import xarray as xr
from dask.array.utils import meta_from_array
from odc.geo.geobox import GeoBox

from ._grid import aoi_mask, output_geobox
from ._items import item_datetime
from ._pipeline import masked_cube, provenance
from ._search import SearchResult, search
from ._select import apply_selection, select
from ._spec import MosaicSpec, Period
from ._timeseries_kernels import (
    array_module,
    daily_windows,
    interpolate_linear,
    smooth,
    smooth_fixed_point,
    solve_smoother,
    to_reflectance,
)
from ._validate import fail, number
from ._write import COUNT, PROVENANCE_ATTR
from .composite import composite
from .errors import ArgumentError, DataError, UnknownNameError

__all__ = [
    "INDICES",
    "GapFill",
    "Observations",
    "filter_acquisitions",
    "gapfill",
    "interpolate",
    "normalized_difference",
    "observations",
    "period_items",
    "series",
    "smooth",
    "smooth_fixed_point",
    "valid_fraction",
    "with_indices",
]

_TIME = "time"
#: Named indices: name → (a, b) of ``(a - b) / (a + b)``, bands as named in the spec.
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),  # McFeeters (1996): open water
    "ndmi": ("nir", "swir16"),
    "nbr": ("nir", "swir22"),
}
#: Dates with a smaller clear fraction over the AOI give no illuminance (SpaceEye's 1 %).
MIN_CLEAR_FOR_ILLUMINANCE = 0.01
#: Pixels solved together on the CPU. Larger blocks amortise NumPy's per-call cost (2048 px ran
#: 3x slower than 32768 in benchmarks/bench_gapfill.py; 65536 gained nothing more) while the
#: float64 scratch of a 48-day, 4-band window stays near 100 MB per task whatever the chunk
#: size. The GPU takes a whole chunk at once.
_PIXEL_BLOCK = 32768
#: Days per Zarr/Dask chunk of gap-filled and resampled outputs (a split of each task's block:
#: no data moves between tasks).
TIME_CHUNK = 16


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


# --------------------------------------------------------------------------- observations


class Observations(NamedTuple):
    """The masked cube of a spec: what every time-series product starts from."""

    cube: xr.Dataset
    """Lazy ``(time, y, x)`` uint16 bands (``spec.bands``), time whole per chunk."""
    valid: xr.DataArray
    """Lazy boolean ``(time, y, x)``: clear observations inside the AOI."""
    aoi: xr.DataArray
    """Lazy boolean ``(y, x)``: output pixels inside the AOI."""
    items: Sequence[pystac.Item]
    geobox: GeoBox


def observations(spec: MosaicSpec, items: Sequence[pystac.Item] | None = None) -> Observations:
    """Search (unless ``items`` are given), grid, load and mask, exactly as :func:`s2mosaic.mosaic`.

    Examples
    --------
    >>> obs = observations(MosaicSpec.from_yaml("my-area.yaml"))  # doctest: +SKIP
    >>> ndvi = normalized_difference(obs.cube, "nir", "red")  # doctest: +SKIP
    """
    if items is None:
        items = search(spec)
    gbox = output_geobox(spec, items)
    cube, valid = masked_cube(spec, items, gbox)
    aoi = aoi_mask(gbox, spec.aoi, spec.runtime.chunks)
    return Observations(cube[list(spec.bands)], valid, aoi, items, gbox)


def _dates(cube: xr.Dataset | xr.DataArray) -> list[dt.datetime]:
    return [t.astype("datetime64[us]").item() for t in cube[_TIME].values]


# --------------------------------------------------------------------------- series


def series(spec: MosaicSpec, items: Sequence[pystac.Item] | None = None, *,
           geobox: GeoBox | None = None) -> xr.Dataset:
    """One composite per sub-period of ``spec.series.periods``, stacked along ``time``.

    With ``select.method: all`` the cube is loaded once over ``spec.period`` and an observation
    belongs to every sub-period that contains its acquisition time. With ``min-cover`` each
    period composites only the scenes :func:`period_items` selects for it (each period loads
    its own). A sub-period without observations is nodata with ``count`` 0.

    Parameters
    ----------
    spec
        What to composite; ``series.periods`` splits ``period``.
    items
        Items to select from (default: :func:`s2mosaic.search` of ``spec``).
    geobox
        Override the output grid (default: :func:`s2mosaic._grid.output_geobox`).

    Returns
    -------
    xr.Dataset
        Lazy ``(time, y, x)`` uint16 bands and ``count``; ``time`` is each period's start,
        ``period_end`` its last day; the provenance record (with the periods) in ``attrs``.

    Examples
    --------
    >>> spec = MosaicSpec.from_yaml("monthly.yaml")  # series: {periods: monthly}  # doctest: +SKIP
    >>> s = series(spec)  # doctest: +SKIP
    >>> s.red.sel(time="2024-06").compute()  # doctest: +SKIP
    """
    started = time.time()
    periods = series_periods(spec)
    if items is None:
        items = search(spec)
    picks = period_items(spec, items)
    used = items if picks is None else union(items, picks)
    gbox = geobox or output_geobox(spec, used)
    out, dates = period_composites(spec, used, picks, gbox)
    if not any(dates):
        raise DataError(f"no observation falls in any of the {len(periods)} series periods "
                        f"(series.periods {spec.series.periods!r}); scenes are dated "
                        f"{sorted({item_datetime(i).date().isoformat() for i in items})}")
    n_obs = len({d for ds in dates for d in ds}) if picks is None else sum(map(len, dates))
    prov = provenance(spec, used, gbox, n_obs, started)
    prov["series"] = [
        {"start": p.start.isoformat(), "end": p.end.isoformat(), "observations": len(ds),
         "dates": [d.isoformat() for d in ds]}
        for p, ds in zip(periods, dates, strict=True)]
    out.attrs[PROVENANCE_ATTR] = prov
    return out


def series_periods(spec: MosaicSpec) -> list[Period]:
    """The periods of a series: ``spec.series.periods`` over ``spec.period``, else the period."""
    return spec.series.expand(spec.period) or [spec.period]


def period_items(spec: MosaicSpec, items: Sequence[pystac.Item],
                 ) -> list[list[pystac.Item]] | None:
    """The scenes each period of a series composites, chosen once for the whole AOI.

    With ``select.method: min-cover``, per period the scenes :func:`s2mosaic.select` picks
    among that period's items. None with ``all``: every period takes its observations from one
    cube of all ``items`` (``select.require_full_coverage`` is still checked).
    """
    if spec.select.method == "all":
        apply_selection(spec, items)  # raises when require_full_coverage is not met
        return None
    return [list(select(spec.replace(period=p, series={}), items))
            for p in series_periods(spec)]


def union(items: Sequence[pystac.Item], picks: Sequence[Sequence[pystac.Item]]) -> SearchResult:
    """The items picked for any period, in the order of ``items`` (with its search record)."""
    chosen = {i.id for pick in picks for i in pick}
    return SearchResult([i for i in items if i.id in chosen], getattr(items, "dropped", []),
                        getattr(items, "query", None))


def period_composites(spec: MosaicSpec, items: Sequence[pystac.Item],
                      picks: Sequence[Sequence[pystac.Item]] | None, gbox: GeoBox,
                      ) -> tuple[xr.Dataset, list[list[dt.datetime]]]:
    """The lazy series on ``gbox`` and the observation times each period used.

    ``picks`` as :func:`period_items` gives (None: one cube of ``items`` shared by the
    periods). A run tile passes the items and picks that touch it.
    """
    c = spec.composite
    periods = series_periods(spec)

    def reduce(cube: xr.Dataset, valid: xr.DataArray) -> xr.Dataset:
        return composite(cube[list(spec.bands)], valid, method=c.method, q=c.q,
                         min_observations=c.min_observations)

    parts: list[xr.Dataset | None] = []
    dates: list[list[dt.datetime]] = []
    if picks is None:
        cube, valid = masked_cube(spec, items, gbox)
        when = _dates(cube)
        for p in periods:
            idx = [i for i, d in enumerate(when) if p.contains(d)]
            parts.append(reduce(cube.isel(time=idx), valid.isel(time=idx)) if idx else None)
            dates.append([when[i] for i in idx])
    else:
        for chosen in picks:
            if not chosen:
                parts.append(None)
                dates.append([])
                continue
            cube, valid = masked_cube(spec, chosen, gbox)
            parts.append(reduce(cube, valid))
            dates.append(_dates(cube))
    return _stack_periods(spec, periods, parts, gbox), dates


def _stack_periods(spec: MosaicSpec, periods: Sequence[Period],
                   parts: Sequence[xr.Dataset | None], gbox: GeoBox) -> xr.Dataset:
    """The period composites along ``time``; nodata (``count`` 0) for periods without one."""
    template = next((p for p in parts if p is not None), None)
    if template is None:
        from odc.geo.xr import xr_zeros

        chunk = spec.runtime.chunks
        template = xr.Dataset({n: xr_zeros(gbox, dtype="uint16", chunks=(chunk, chunk))
                               for n in [*spec.bands, COUNT]})
    filled = [p if p is not None else xr.zeros_like(template) for p in parts]
    starts = np.array([np.datetime64(p.start, "ns") for p in periods])
    out = xr.concat(filled, dim=xr.DataArray(starts, dims=_TIME, name=_TIME), coords="minimal",
                    compat="override", combine_attrs="override")
    out = out.assign_coords(period_end=(_TIME, np.array([np.datetime64(p.end, "ns")
                                                         for p in periods])))
    out.attrs = {k: v for k, v in template.attrs.items() if k != PROVENANCE_ATTR}
    return out


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
        valid = _single(valid)
        bands = tuple(_single(b) for b in bands)
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


def _single(x: Any) -> Any:
    if isinstance(x, list):
        (x,) = x
    return x


def _day_grid(cube: xr.Dataset, start: dt.date | str | None, end: dt.date | str | None,
              ) -> tuple[dt.date, int, list[int]]:
    dates = _dates(cube)
    if not dates:
        raise DataError("the cube has no observations (time is empty): nothing to fill from")
    first = _as_date(start, "start") if start is not None else dates[0].date()
    last = _as_date(end, "end") if end is not None else dates[-1].date()
    if last < first:
        raise ArgumentError(f"end {last} is before start {first}; give an end on or after the "
                            "start (or leave either out to use the cube's first/last date)")
    return first, (last - first).days + 1, [(d.date() - first).days for d in dates]


def _as_date(v: dt.date | str, name: str) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    try:
        return dt.date.fromisoformat(str(v))
    except ValueError:
        raise ArgumentError(f"{name}={v!r}: expected an ISO date such as '2024-05-01'") from None


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
        ``(time, y, x)`` uint16 bands, time whole per chunk (as :func:`observations` gives).
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
    first, n_days, obs_day = _day_grid(cube, start, end)
    keep = [i for i, d in enumerate(obs_day) if 0 <= d < n_days]
    return first, n_days, keep, list(range(0, n_days, params.step))


def _kept_days(cube: xr.Dataset, first: dt.date, keep: list[int]) -> list[int]:
    dates = _dates(cube)
    return [(dates[i].date() - first).days for i in keep]


def gapfill_illuminance(cube: xr.Dataset, valid: xr.DataArray, params: GapFill,
                        start: dt.date | str | None, end: dt.date | str | None,
                        ) -> tuple[list[int], Illuminance]:
    """The illumination :func:`gapfill` normalises by (computed now), with the indices of the
    observations of ``cube`` it gives a value for (those on the day grid)."""
    names, _ = _check(cube, valid)
    first, n_days, keep, out_days = gapfill_days(cube, params, start, end)
    illum = _illuminance(cube.isel(time=keep), valid.isel(time=keep), names,
                         _kept_days(cube, first, keep), out_days, n_days, params.damping)
    return keep, illum


def gapfill_with(cube: xr.Dataset, valid: xr.DataArray, p: GapFill,
                 start: dt.date | str | None, end: dt.date | str | None,
                 illuminance: Illuminance | None = None) -> xr.Dataset:
    """:func:`gapfill`, normalised (``p.normalise``) by the given illumination of the
    observations on the day grid: a run tile takes it from the whole AOI's, computed once."""
    names, space = _check(cube, valid)
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
    stacked = _blockwise(task, cube, valid, names, len(out_days), "gapfill")
    times = [np.datetime64(first + dt.timedelta(days=d), "ns") for d in out_days]
    out = _assemble(cube, names, space, stacked, times)
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
    space = [d for d in valid.dims if d != _TIME]
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


# --------------------------------------------------------------------------- regular grid


@dataclass(frozen=True)
class _InterpolateChunk:
    """The task function of :func:`interpolate`. Enters the Dask graph."""

    obs_t: tuple[float, ...]
    grid_t: tuple[float, ...]

    def __call__(self, valid: Any, *bands: Any) -> Any:
        valid = _single(valid)
        bands = tuple(_single(b) for b in bands)
        res = interpolate_linear(np.asarray(self.obs_t), list(bands), valid,
                                 np.asarray(self.grid_t))
        return to_reflectance(res)


def interpolate(cube: xr.Dataset, valid: xr.DataArray, *, step_days: int = 16,
                start: dt.date | str | None = None, end: dt.date | str | None = None,
                ) -> xr.Dataset:
    """Resample onto a regular date grid by mask-aware linear interpolation (eo-learn's
    ``LinearInterpolationTask`` with a resample range).

    At each grid date a pixel takes its clear value there, else the straight line between its
    nearest clear observations before and after (times in whole days: an observation counts on
    its UTC date); with no clear observation on one side it is nodata (0): nothing is
    extrapolated.

    Parameters
    ----------
    cube, valid
        As for :func:`gapfill`.
    step_days
        Days between grid dates (eo-learn's examples use 16).
    start, end
        First grid date and the last date the grid may reach (default: the first and last
        observation's day).

    Returns
    -------
    xr.Dataset
        Lazy ``(time, y, x)`` uint16 bands at midnight of each grid date.
    """
    step = number("step_days", step_days, low=1, integer=True)
    names, space = _check(cube, valid)
    first, n_days, obs_day = _day_grid(cube, start, end)
    grid = list(range(0, n_days, step))
    # Observations count on their day (as in gapfill), so a clear observation on a grid date
    # is taken as it is; times within a day do not tilt the line.
    task = _InterpolateChunk(tuple(float(d) for d in obs_day), tuple(float(g) for g in grid))
    stacked = _blockwise(task, cube, valid, names, len(grid), "interpolate")
    times = [np.datetime64(first + dt.timedelta(days=d), "ns") for d in grid]
    out = _assemble(cube, names, space, stacked, times)
    out.attrs["interpolation"] = f"linear over clear observations, every {step} days"
    return out


# --------------------------------------------------------------------------- filters, indices


def valid_fraction(valid: xr.DataArray, aoi: xr.DataArray | None = None) -> xr.DataArray:
    """Lazy ``(time,)`` fraction of the AOI's pixels (all pixels when ``aoi`` is None) that are
    valid in each acquisition."""
    space = [d for d in valid.dims if d != _TIME]
    n = aoi.sum() if aoi is not None else int(np.prod([valid.sizes[d] for d in space]))
    return (valid.sum(space) / n).rename("valid_fraction")


def filter_acquisitions(cube: xr.Dataset, valid: xr.DataArray, min_fraction: float = 0.8, *,
                        aoi: xr.DataArray | None = None,
                        ) -> tuple[xr.Dataset, xr.DataArray]:
    """Drop acquisitions whose valid fraction over the AOI is below ``min_fraction``.

    eo-learn's ``ValidDataFractionPredicate`` uses 0.8. The fractions are computed now (masks
    only: SCL is small); the returned cube and mask stay lazy, with ``valid_fraction`` kept as
    a coordinate of the acquisitions that remain.

    Examples
    --------
    >>> obs = observations(spec)  # doctest: +SKIP
    >>> cube, valid = filter_acquisitions(obs.cube, obs.valid, 0.8, aoi=obs.aoi)  # doctest: +SKIP
    """
    frac_min = number("min_fraction", min_fraction, low=0, high=1)
    frac = valid_fraction(valid, aoi).compute()
    keep = np.flatnonzero(frac.values >= frac_min)
    coord = ("time", frac.values[keep])
    return (cube.isel(time=keep).assign_coords(valid_fraction=coord),
            valid.isel(time=keep).assign_coords(valid_fraction=coord))


def normalized_difference(ds: xr.Dataset, a: str, b: str, name: str | None = None,
                          ) -> xr.DataArray:
    """Lazy ``(a - b) / (a + b)`` as float32; NaN where either band is nodata (0) or both are 0.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"nir": ("x", np.array([3000, 0], np.uint16)),
    ...                  "red": ("x", np.array([1000, 500], np.uint16))})
    >>> normalized_difference(ds, "nir", "red").values
    array([0.5, nan], dtype=float32)
    """
    for band in (a, b):
        if band not in ds.data_vars:
            raise UnknownNameError(f"band {band!r} is not in the dataset (variables: "
                                   f"{[str(v) for v in ds.data_vars]}); name bands as in "
                                   "spec.bands")
    va, vb = ds[a].astype("float32"), ds[b].astype("float32")
    ok = (ds[a] != 0) & (ds[b] != 0)
    out = ((va - vb) / (va + vb)).where(ok)
    return out.rename(name or f"nd_{a}_{b}").assign_attrs(
        long_name=f"normalised difference ({a} - {b}) / ({a} + {b})", nodata="nan")


def with_indices(ds: xr.Dataset, indices: Sequence[str] | Mapping[str, tuple[str, str]],
                 ) -> xr.Dataset:
    """``ds`` plus lazy index variables: names from :data:`INDICES` (``"ndvi"``, ``"ndwi"``,
    ...) or ``{name: (a, b)}`` for any normalised difference of two bands."""
    pairs: dict[str, tuple[str, str]] = {}
    if isinstance(indices, Mapping):
        pairs = {str(k): (str(v[0]), str(v[1])) for k, v in indices.items()}
    else:
        for n in indices:
            if n.lower() not in INDICES:
                raise UnknownNameError(f"unknown index {n!r}; named indices are "
                                       f"{sorted(INDICES)}, or pass {{name: (band_a, band_b)}} "
                                       "for (a - b) / (a + b)")
            pairs[n.lower()] = INDICES[n.lower()]
    return ds.assign({n: normalized_difference(ds, a, b, n) for n, (a, b) in pairs.items()})


# --------------------------------------------------------------------------- shared plumbing


def _check(cube: xr.Dataset, valid: xr.DataArray) -> tuple[list[str], tuple[str, ...]]:
    names = [str(n) for n in cube.data_vars]
    if not names:
        raise ArgumentError("cube has no band variables; it needs one (time, y, x) variable "
                            "per band")
    dims = cube[names[0]].dims
    if len(dims) != 3 or dims[0] != _TIME:
        raise ArgumentError(f"cube[{names[0]!r}] has dims {dims}; expected ('time', y, x)")
    if valid.dims != dims or valid.dtype != np.bool_:
        raise ArgumentError(f"valid must be boolean with dims {dims}; got {valid.dtype} "
                            f"{valid.dims}")
    return names, tuple(str(d) for d in dims[1:])


def _blockwise(task: Callable[..., Any], cube: xr.Dataset, valid: xr.DataArray,
               names: list[str], n_out: int, label: str) -> Any:
    """One task per spatial chunk: every band and the mask in, ``(B, n_out, y, x)`` out."""
    arrays = [valid.data, *(cube[n].data for n in names)]
    template = next((a for a in arrays if isinstance(a, da.Array)), None)
    if template is None:  # NumPy- (or CuPy-) backed: one call
        return task(*arrays)
    arrays = [a if isinstance(a, da.Array) else da.from_array(a, chunks=template.chunks)
              for a in arrays]
    arrays = [a.rechunk({0: -1}) if a.numblocks[0] != 1 else a for a in arrays]
    args: list[Any] = []
    for a in arrays:
        args += [a, "tyx"]
    return da.blockwise(task, "bdyx", *args, new_axes={"b": len(names), "d": n_out},
                        concatenate=False, dtype=np.uint16,
                        meta=meta_from_array(template, ndim=4, dtype=np.uint16),
                        token=f"s2mosaic-{label}")


def _assemble(cube: xr.Dataset, names: list[str], space: tuple[str, ...], stacked: Any,
              times: Sequence[np.datetime64]) -> xr.Dataset:
    out = cube.drop_vars(list(cube.data_vars)).drop_dims(_TIME, errors="ignore")
    out = out.drop_vars([c for c in out.coords if _TIME in out[c].dims])
    out = out.assign_coords({_TIME: np.array(times, dtype="datetime64[ns]")})
    for i, name in enumerate(names):
        src = cube[name]
        attrs = {k: v for k, v in src.attrs.items() if k != "_FillValue"}
        attrs["nodata"] = 0
        encoding = {k: v for k, v in src.encoding.items() if k == "grid_mapping"}
        values = stacked[i]
        if isinstance(values, da.Array):
            values = values.rechunk({0: TIME_CHUNK})
        out[name] = xr.Variable((_TIME, *space), values, attrs=attrs, encoding=encoding)
    out.attrs = {k: v for k, v in cube.attrs.items() if k not in ("boa_offsets", "mask_bands")}
    return out
