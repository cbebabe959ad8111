"""Series and gap-fill runs: the time-series products of the tiled runner (:mod:`s2mosaic._run`).

:func:`run_series` and :func:`run_gapfill` go through the same runner as :func:`s2mosaic.run`:
output tiles (each with its mask margin), at most ``runtime.max_tiles_in_flight`` in flight,
one Zarr store with a ``time`` axis written chunk by chunk, the manifest with tile digests,
retries, ``resume=True``, progress and the run report. What differs is the product:

- :class:`SeriesProduct` - :func:`s2mosaic._timeseries.series` per tile. The scenes of each
  period are selected once for the whole AOI (``select.method: min-cover``) and recorded in the
  manifest header, so every tile (and a resumed run) composites the same scenes. Per period a
  COG / display product is streamed from the store at the end (``<stem>_<period start>``).
- :class:`GapFillProduct` - :func:`s2mosaic._gapfill.gapfill` per tile. With
  ``normalise=True`` the clear-pixel mean per date over the whole AOI is computed once before
  the tiles and recorded in the manifest header, so a tiled run equals a one-tile run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from ._cube import observation_groups
from ._dategrid import TIME_CHUNK
from ._gapfill import GapFill, gapfill_illuminance, gapfill_with
from ._items import item_datetime, resolve_band
from ._pipeline import masked_cube
from ._raster import COUNT
from ._run import RunReport, dated, execute, export_rasters
from ._search import SearchResult
from ._spec import MosaicSpec, OutputSpec
from ._timeseries import period_composites, period_items, series_periods, union
from .errors import DataError, WriteError

__all__ = ["GapFillProduct", "SeriesProduct", "run_gapfill", "run_series"]

_OBJECTIVE = ("sum_t m_t (x_t - a_t)^2 + damping * sum_t (x_{t+1} - x_t)^2, solved exactly "
              "(tridiagonal) per window; each day from its most central window; no clear "
              "observation in a window: nodata")


def run_series(spec: MosaicSpec, *, items: Sequence[pystac.Item] | None = None,
               client: Any = None, progress: bool = False, resume: bool = False,
               retry_dropped: bool = False,
               on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> RunReport:
    """Build :func:`s2mosaic.series` of ``spec`` tile by tile and write it: one Zarr with a
    ``time`` dimension in ``output.zarr``, one COG / display product per period where
    ``output.cog`` / ``output.rgb`` are set (``<stem>_<period start><suffix>``), the
    provenance sidecar and the run report. Arguments as for :func:`s2mosaic.run` (tiles,
    retries, ``resume``).

    Examples
    --------
    >>> report = run_series(MosaicSpec.from_yaml("monthly.yaml"))  # doctest: +SKIP
    >>> report.outputs["zarr"]  # doctest: +SKIP
    'out/monthly.zarr'
    >>> run_series(MosaicSpec.from_yaml("monthly.yaml"), resume=True)  # doctest: +SKIP
    """
    return execute(spec, SeriesProduct(spec), items=items, client=client, progress=progress,
                   resume=resume, retry_dropped=retry_dropped, on_stage=on_stage)


def run_gapfill(spec: MosaicSpec, params: GapFill | None = None, *,
                items: Sequence[pystac.Item] | None = None, client: Any = None,
                progress: bool = False, resume: bool = False, retry_dropped: bool = False,
                on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> RunReport:
    """Gap-fill ``spec.period`` (:func:`s2mosaic.gapfill`) tile by tile and write the daily
    (or every-N-day) rasters to ``output.zarr`` (one Zarr with a ``time`` dimension) with the
    provenance sidecar and the run report. Arguments as for :func:`s2mosaic.run`."""
    return execute(spec, GapFillProduct(spec, params or GapFill()), items=items, client=client,
                   progress=progress, resume=resume, retry_dropped=retry_dropped,
                   on_stage=on_stage)


class SeriesProduct:
    """One composite per period of ``spec.series``: ``(time, y, x)`` bands and ``count``."""

    kind = "series"
    time_chunk = 1

    def __init__(self, spec: MosaicSpec) -> None:
        self.spec = spec
        self.names = [*spec.bands, COUNT]
        self.periods = series_periods(spec)
        self.time: dict[str, np.ndarray] | None = {
            "time": np.array([np.datetime64(p.start, "ns") for p in self.periods]),
            "period_end": np.array([np.datetime64(p.end, "ns") for p in self.periods])}
        self.chosen: list[list[str]] | None = None
        """Item ids per period (``min-cover``); None: every period from all items."""

    def check(self, output: OutputSpec) -> dict[str, Path | None]:
        return {f"{kind}[{p.start.isoformat()}]": dated(path, p.start) for p in self.periods
                for kind, path in (("cog", output.cog), ("rgb", output.rgb)) if path is not None}

    def select(self, items: SearchResult) -> SearchResult:
        if not any(p.contains(item_datetime(i)) for p in self.periods for i in items):
            raise DataError(f"no scene falls in any of the {len(self.periods)} series periods "
                            f"(series.periods {self.spec.series.periods!r}); scenes are dated "
                            f"{sorted({item_datetime(i).date().isoformat() for i in items})}")
        picks = period_items(self.spec, items)
        if picks is None:
            return items
        self.chosen = [[i.id for i in pick] for pick in picks]
        return union(items, picks)

    def prepare(self, items: SearchResult, gbox: GeoBox, recorded: Mapping[str, Any] | None,
                ) -> dict[str, Any]:
        self.items: Sequence[pystac.Item] = items
        if recorded is not None:
            self.chosen = recorded.get("periods")
        return {"kind": self.kind, "periods": self.chosen}

    def _picks(self, items: Sequence[pystac.Item]) -> list[list[pystac.Item]] | None:
        if self.chosen is None:
            return None
        return [[i for i in items if i.id in ids] for ids in map(set, self.chosen)]

    def build(self, items: list[pystac.Item], box: GeoBox) -> xr.Dataset:
        return period_composites(self.spec, items, self._picks(items), box)[0]

    def exports(self, source: xr.Dataset, output: OutputSpec, *, overwrite: bool, client: Any,
                progress: bool) -> dict[str, Path | None]:
        written: dict[str, Path | None] = {}
        for i, p in enumerate(self.periods):
            written |= export_rasters(source.isel(time=i, drop=True), output, p.start,
                                      overwrite=overwrite, client=client, progress=progress)
        return written

    def record(self, prov: dict[str, Any], source: xr.Dataset,
               written: Mapping[str, Path | None]) -> dict[str, Any]:
        times = observation_times(self.spec, self.items)
        picks = self.chosen
        prov["series"] = []
        for k, p in enumerate(self.periods):
            dates = sorted({when for key, when in times.items()
                            if (picks is None and p.contains(when))
                            or (picks is not None and key[1] in picks[k])})
            prov["series"].append({"start": p.start.isoformat(), "end": p.end.isoformat(),
                                   "observations": len(dates),
                                   "dates": [d.isoformat() for d in dates]})
        return _finish(prov, written, self.kind, source)


class GapFillProduct:
    """Gap-filled rasters every ``params.step`` days over ``spec.period``: ``(time, y, x)``."""

    kind = "gapfill"
    time_chunk = TIME_CHUNK

    def __init__(self, spec: MosaicSpec, params: GapFill) -> None:
        self.spec, self.params = spec, params
        self.names = list(spec.bands)
        first, last = spec.period.start, spec.period.end
        days = range(0, (last - first).days + 1, params.step)
        self.time: dict[str, np.ndarray] | None = {"time": np.array(
            [np.datetime64(first + dt.timedelta(days=d), "ns") for d in days])}
        self.illuminance: dict[str, Any] | None = None
        """Per observation key (solar day, BOA offsets) the AOI's clear-pixel mean per band,
        and the smoothed curve per output day (``normalise`` only)."""

    def check(self, output: OutputSpec) -> dict[str, Path | None]:
        if output.cog is not None or output.rgb is not None:
            raise WriteError("a gapfill writes only output.zarr (one store, one raster per "
                             "day); remove output.cog / output.rgb or export single dates "
                             "from the Zarr")
        if output.zarr is None:
            raise WriteError("a gapfill is written to one Zarr store with a time dimension: "
                             "set output.zarr in the spec")
        return {}

    def select(self, items: SearchResult) -> SearchResult:
        return items  # every acquisition: gap filling needs them all, not a minimal cover

    def prepare(self, items: SearchResult, gbox: GeoBox, recorded: Mapping[str, Any] | None,
                ) -> dict[str, Any]:
        params = dataclasses.asdict(self.params)
        if recorded is not None and recorded.get("params") != params:
            raise WriteError(f"resume: the store was gap-filled with {recorded.get('params')}; "
                             f"this run asks for {params}. Resume with the same parameters, "
                             "or use overwrite / another output path")
        state: dict[str, Any] = {"kind": self.kind, "params": params}
        if self.params.normalise:
            self.illuminance = (dict(recorded["illuminance"]) if recorded is not None
                                else self._illuminance(items, gbox))
            state["illuminance"] = self.illuminance
        return state

    def _illuminance(self, items: Sequence[pystac.Item], gbox: GeoBox) -> dict[str, Any]:
        """The AOI's clear-pixel mean per date, computed now over the whole grid."""
        spec = self.spec
        cube, valid = masked_cube(spec, items, gbox)
        keep, (obs, day) = gapfill_illuminance(cube[list(spec.bands)], valid, self.params,
                                               spec.period.start, spec.period.end)
        keys = observation_keys(spec, items)
        return {"obs": {keys[i]: [b[k] for b in obs] for k, i in enumerate(keep)},
                "day": [list(b) for b in day]}

    def build(self, items: list[pystac.Item], box: GeoBox) -> xr.Dataset:
        spec = self.spec
        cube, valid = masked_cube(spec, items, box)
        cube = cube[list(spec.bands)]
        illum = None
        if self.illuminance is not None:
            keys = observation_keys(spec, items)
            if len(keys) != cube.sizes["time"]:  # pragma: no cover - guards the grouping
                raise DataError(f"{len(keys)} observation keys for {cube.sizes['time']} "
                                "time slices: cannot normalise this tile")
            known = self.illuminance["obs"]
            per_obs = [known[k] for k in keys if k in known]
            illum = (tuple(zip(*per_obs, strict=True)) if per_obs else
                     tuple(() for _ in spec.bands),
                     tuple(tuple(b) for b in self.illuminance["day"]))
        return gapfill_with(cube, valid, self.params, spec.period.start, spec.period.end,
                            illum)

    def exports(self, source: xr.Dataset, output: OutputSpec, *, overwrite: bool, client: Any,
                progress: bool) -> dict[str, Path | None]:
        return {}

    def record(self, prov: dict[str, Any], source: xr.Dataset,
               written: Mapping[str, Path | None]) -> dict[str, Any]:
        prov["gapfill"] = dataclasses.asdict(self.params) | {"objective": _OBJECTIVE}
        return _finish(prov, written, self.kind, source)


def observation_keys(spec: MosaicSpec, items: Sequence[pystac.Item]) -> list[str]:
    """A key for each time slice :func:`s2mosaic._cube.load_cube` makes of ``items`` (solar
    day and BOA offsets), in the cube's time order."""
    if not items:
        return []
    keys = {name: resolve_band(items[0], name) for name in spec.bands}
    return [_key(k) for k in sorted(set(observation_groups(items, keys)[0]))]


def observation_times(spec: MosaicSpec, items: Sequence[pystac.Item],
                      ) -> dict[tuple[str, str], dt.datetime]:
    """The time of each observation of ``items`` (its earliest item's, as the cube stamps it)
    by ``(observation key, item id)``, one entry per item."""
    if not items:
        return {}
    keys = {name: resolve_band(items[0], name) for name in spec.bands}
    item_keys = [_key(k) for k in observation_groups(items, keys)[0]]
    first: dict[str, dt.datetime] = {}
    for item, k in zip(items, item_keys, strict=True):
        when = item_datetime(item).astimezone(dt.UTC).replace(tzinfo=None)
        first[k] = min(first.get(k, when), when)
    return {(k, item.id): first[k] for item, k in zip(items, item_keys, strict=True)}


def _key(k: tuple[str, tuple[int, ...]]) -> str:
    return f"{k[0]}|{','.join(str(o) for o in k[1])}"


def _finish(prov: dict[str, Any], written: Mapping[str, Path | None], kind: str,
            source: xr.Dataset) -> dict[str, Any]:
    prov.update(outputs={k: str(v) for k, v in written.items() if v is not None}, kind=kind,
                times=[str(t) for t in source["time"].values])
    return json.loads(json.dumps(prov, default=str))
