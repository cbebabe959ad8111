"""Regular date grids: a cube's observations onto days, one task per spatial chunk.

The plumbing every date-grid product shares - the day grid (:func:`day_grid`), the checks on a
cube and its mask (:func:`check_cube`), one Dask task per spatial chunk with every band and the
mask in (:func:`blockwise`) and the output dataset around the result (:func:`assemble`) - and
the simplest such product, :func:`interpolate` (eo-learn's mask-aware linear interpolation).
:func:`s2mosaic._gapfill.gapfill` builds on the same plumbing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.utils import meta_from_array

from ._timeseries import TIME, cube_dates
from ._timeseries_kernels import interpolate_linear, to_reflectance
from ._validate import number
from .errors import ArgumentError, DataError

__all__ = ["TIME_CHUNK", "assemble", "blockwise", "check_cube", "day_grid", "interpolate",
           "single_block"]

#: Days per Zarr/Dask chunk of gap-filled and resampled outputs (a split of each task's block:
#: no data moves between tasks).
TIME_CHUNK = 16


# --------------------------------------------------------------------------- regular grid


@dataclass(frozen=True)
class _InterpolateChunk:
    """The task function of :func:`interpolate`. Enters the Dask graph."""

    obs_t: tuple[float, ...]
    grid_t: tuple[float, ...]

    def __call__(self, valid: Any, *bands: Any) -> Any:
        valid = single_block(valid)
        bands = tuple(single_block(b) for b in bands)
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
        As for :func:`s2mosaic.gapfill`.
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
    names, space = check_cube(cube, valid)
    first, n_days, obs_day = day_grid(cube, start, end)
    grid = list(range(0, n_days, step))
    # Observations count on their day (as in gapfill), so a clear observation on a grid date
    # is taken as it is; times within a day do not tilt the line.
    task = _InterpolateChunk(tuple(float(d) for d in obs_day), tuple(float(g) for g in grid))
    stacked = blockwise(task, cube, valid, names, len(grid), "interpolate")
    times = [np.datetime64(first + dt.timedelta(days=d), "ns") for d in grid]
    out = assemble(cube, names, space, stacked, times)
    out.attrs["interpolation"] = f"linear over clear observations, every {step} days"
    return out


# --------------------------------------------------------------------------- shared plumbing


def single_block(x: Any) -> Any:
    if isinstance(x, list):
        (x,) = x
    return x


def day_grid(cube: xr.Dataset, start: dt.date | str | None, end: dt.date | str | None,
             ) -> tuple[dt.date, int, list[int]]:
    dates = cube_dates(cube)
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


def check_cube(cube: xr.Dataset, valid: xr.DataArray) -> tuple[list[str], tuple[str, ...]]:
    names = [str(n) for n in cube.data_vars]
    if not names:
        raise ArgumentError("cube has no band variables; it needs one (time, y, x) variable "
                            "per band")
    dims = cube[names[0]].dims
    if len(dims) != 3 or dims[0] != TIME:
        raise ArgumentError(f"cube[{names[0]!r}] has dims {dims}; expected ('time', y, x)")
    if valid.dims != dims or valid.dtype != np.bool_:
        raise ArgumentError(f"valid must be boolean with dims {dims}; got {valid.dtype} "
                            f"{valid.dims}")
    return names, tuple(str(d) for d in dims[1:])


def blockwise(task: Callable[..., Any], cube: xr.Dataset, valid: xr.DataArray,
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


def assemble(cube: xr.Dataset, names: list[str], space: tuple[str, ...], stacked: Any,
             times: Sequence[np.datetime64]) -> xr.Dataset:
    out = cube.drop_vars(list(cube.data_vars)).drop_dims(TIME, errors="ignore")
    out = out.drop_vars([c for c in out.coords if TIME in out[c].dims])
    out = out.assign_coords({TIME: np.array(times, dtype="datetime64[ns]")})
    for i, name in enumerate(names):
        src = cube[name]
        attrs = {k: v for k, v in src.attrs.items() if k != "_FillValue"}
        attrs["nodata"] = 0
        encoding = {k: v for k, v in src.encoding.items() if k == "grid_mapping"}
        values = stacked[i]
        if isinstance(values, da.Array):
            values = values.rechunk({0: TIME_CHUNK})
        out[name] = xr.Variable((TIME, *space), values, attrs=attrs, encoding=encoding)
    out.attrs = {k: v for k, v in cube.attrs.items() if k not in ("boa_offsets", "mask_bands")}
    return out
