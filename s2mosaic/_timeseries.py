"""Time series: period composites in one job, the observations they start from, indices.

Everything here starts from the same masked cube as a mosaic (:func:`observations`: search →
grid → lazy cube → ``valid_mask & aoi_mask``) and returns lazy ``(time, y, x)`` datasets:

- :func:`series` - one composite per sub-period of ``spec.series.periods`` (monthly, quarterly,
  every N days, an explicit list). With ``select.method: all``, from ONE cube over the whole
  period: each period selects its time slices of the shared read tasks, so a scene is read
  once per chunk however many periods it falls in. With ``min-cover``, each period reads only
  the scenes the selection picks for it (:func:`period_items`). Each period equals the
  single-period :func:`s2mosaic.mosaic` of that period.
- :func:`filter_acquisitions` drops acquisitions whose clear fraction over the AOI is too low;
  :func:`normalized_difference` / :func:`with_indices` add NDVI, NDWI or any normalised
  difference, lazily.

Daily and regular date grids from the same observations: :func:`s2mosaic._gapfill.gapfill`
(SpaceEye's damped interpolation) and :func:`s2mosaic._dategrid.interpolate` (eo-learn's linear
interpolation). :func:`s2mosaic._timeseries_run.run_series` and
:func:`~s2mosaic._timeseries_run.run_gapfill` run a spec end to end through the tiled runner of
:func:`s2mosaic.run`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from ._grid import aoi_mask, output_geobox
from ._items import item_datetime
from ._pipeline import masked_cube, provenance
from ._raster import COUNT
from ._search import SearchResult, search
from ._select import apply_selection, select
from ._spec import MosaicSpec, Period
from ._validate import number
from ._write import PROVENANCE_ATTR, netcdf_attrs
from .composite import composite
from .errors import DataError, UnknownNameError

__all__ = [
    "INDICES",
    "TIME",
    "Observations",
    "cube_dates",
    "filter_acquisitions",
    "normalized_difference",
    "observations",
    "period_items",
    "series",
    "valid_fraction",
    "with_indices",
]

TIME = "time"
#: Named indices: name → (a, b) of ``(a - b) / (a + b)``, bands as named in the spec.
INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),  # McFeeters (1996): open water
    "ndmi": ("nir", "swir16"),
    "nbr": ("nir", "swir22"),
}


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


def cube_dates(cube: xr.Dataset | xr.DataArray) -> list[dt.datetime]:
    return [t.astype("datetime64[us]").item() for t in cube[TIME].values]


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
    out.attrs = netcdf_attrs(out.attrs)  # dicts as JSON strings: to_netcdf works
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
        cube, valid = masked_cube(spec, items, gbox, prune=True)  # periods are composites
        when = cube_dates(cube)
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
            cube, valid = masked_cube(spec, chosen, gbox, prune=True)
            parts.append(reduce(cube, valid))
            dates.append(cube_dates(cube))
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
    out = xr.concat(filled, dim=xr.DataArray(starts, dims=TIME, name=TIME), coords="minimal",
                    compat="override", combine_attrs="override")
    out = out.assign_coords(period_end=(TIME, np.array([np.datetime64(p.end, "ns")
                                                         for p in periods])))
    out.attrs = {k: v for k, v in template.attrs.items() if k != PROVENANCE_ATTR}
    return out


# --------------------------------------------------------------------------- filters, indices


def valid_fraction(valid: xr.DataArray, aoi: xr.DataArray | None = None) -> xr.DataArray:
    """Lazy ``(time,)`` fraction of the AOI's pixels (all pixels when ``aoi`` is None) that are
    valid in each acquisition."""
    space = [d for d in valid.dims if d != TIME]
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
