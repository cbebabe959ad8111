"""Running a spec end to end, tile by tile: search → tiles → one Zarr store → COG / RGB → report.

The output grid is split into tiles aligned with the Zarr chunks (``runtime.tile_size``). Each
tile is its own small graph - the items that touch it, the mosaic of its pixels (plus the
margin its masks need), one write task per chunk - so the graph of a continent is never built
at once. At most ``runtime.max_tiles_in_flight`` tiles run at a time over the client. The store
is initialised first (coordinates, CRS, attributes, empty arrays); each tile then writes only
its own chunks, and each finished tile is appended to the manifest inside the store
(:mod:`s2mosaic._manifest`) with a digest of what it wrote. ``resume=True`` (``s2mosaic run
--resume``) checks those digests, skips the finished tiles and redoes the rest, so an
interrupted run finishes with the same bytes an uninterrupted one writes. The COG and the RGB
display product are streamed from the store at the end; a report of the run (tiles done,
resumed, empty, failed, retried; items; bytes read and written; wall time) is written beside
the outputs.

What a run computes is a *product* (:class:`Product`): the mosaic here (:class:`MosaicProduct`),
the series and the gap-fill in :mod:`s2mosaic._timeseries_run` - its store variables and
``time`` axis, the lazy dataset of a tile from the items that touch it, its run-wide state
(recorded in the manifest header) and its exports. :class:`_Store` prepares or reopens the
store, :class:`s2mosaic._tiles.TileLoop` schedules the tiles, :class:`_Run` ties them together.

A run posts notifications (start, completion with the report, failure) to the webhook in
``$S2MOSAIC_WEBHOOK`` when it is set (:mod:`s2mosaic._notify`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros

from . import _raster, _write
from ._cluster import client_source, make_client, quiet_rasterio, quiet_workers
from ._cube import clear_read_cache, observation_count
from ._datasets import close_datasets
from ._device import resolve_device
from ._drops import SceneDrops, dropped_scenes
from ._grid import Tile, output_geobox, tiles
from ._manifest import (
    Manifest,
    RunLock,
    TileRecord,
    fingerprint,
    pixel_spec,
    spec_differences,
    tile_digest,
    write_text_atomic,
)
from ._notify import Notifier
from ._pipeline import mosaic, provenance
from ._raster import interactive
from ._search import SearchResult, search
from ._select import apply_selection
from ._spec import MosaicSpec, OutputSpec
from ._stacout import product_items
from ._tiles import Pending, TileGraph, TileGrid, TileLoop, block_writes, tile_arrays
from .errors import ArgumentError, DroppedScenesWarning, RunError, WriteError
from .masks import context_pixels

__all__ = ["MosaicProduct", "Product", "RunReport", "dated", "execute", "export_rasters", "run"]

COUNT = _raster.COUNT
#: Dataset attributes of a tile's mosaic that describe that tile only (not copied to the store).
_TILE_ATTRS = ("boa_offsets", "mask_bands", _write.PROVENANCE_ATTR)


@dataclass
class RunReport:
    """What a run did: inputs, outputs, tiles, bytes, time (also written as ``*.report.json``)."""

    product: str
    items: int
    dropped: int
    observations: int
    shape: tuple[int, int]
    crs: str
    outputs: dict[str, str | None]
    wall_time_s: float
    dashboard: str | None = None
    stages_s: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: ``search_s`` (output checks, search or the resumed store's items,
    grid), ``cluster_s`` (the client started or connected), ``store_s`` (run-wide state, store
    initialised, finished tiles verified), ``tiles_s`` (of which ``graphs_s`` building tile
    graphs), ``products_s`` (COG / RGB exports and the metadata)."""
    status: str = "complete"
    """``complete``; ``degraded``: complete, with scenes that could not be read left out of
    some tiles (:attr:`scenes_dropped`; ``runtime.on_read_error: skip``); or ``failed`` when
    tiles failed after their retries."""
    tiles: dict[str, int] = field(default_factory=dict)
    """Counts: ``total``, ``computed`` (this run), ``resumed`` (finished before and verified),
    ``empty`` (no item or no AOI pixel: written as nodata), ``degraded`` (in the store now:
    computed without scenes that could not be read), ``failed``, ``retried``."""
    failed_tiles: dict[str, str] = field(default_factory=dict)
    """Tile key → the last error, for tiles that failed after their retries."""
    retry_wait_s: float = 0.0
    """Seconds tile retries waited before they started (each retry's backoff, summed; other
    tiles ran meanwhile). Waits of GDAL's own request retries are not counted."""
    tile_size: int = 0
    max_tiles_in_flight: int = 0
    max_tasks_in_flight: int = 0
    """Largest number of tasks of in-flight tile graphs at any time (bounded by the tile
    concurrency, not by the area)."""
    bytes_read: int | None = None
    """Bytes the workers read from files (Linux ``/proc/<pid>/io`` ``rchar``; reads over HTTP
    are not counted); None where not measurable."""
    bytes_written: int | None = None
    """Size of the Zarr store on disk."""
    kind: str = "mosaic"
    """What was computed: ``mosaic`` (:func:`run`), ``series`` or ``gapfill``."""
    scenes_dropped: list[dict[str, Any]] = field(default_factory=list)
    """The scenes left out of degraded tiles because they could not be read, one entry per
    item and asset: ``item``, ``asset``, ``url``, ``error``, ``tiles`` and ``pixels`` (of those
    tiles, inside the AOI, that the scene's footprint covers). Also in ``metadata.json``."""

    @property
    def scenes_dropped_count(self) -> int:
        """How many scenes (items) were left out of at least one tile."""
        return len({d["item"] for d in self.scenes_dropped})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def run(spec: MosaicSpec, *, items: Sequence[pystac.Item] | None = None, client: Any = None,
        progress: bool = False, resume: bool = False, retry_dropped: bool = False,
        on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> RunReport:
    """Search, then build and write the mosaic of ``spec`` tile by tile on its Dask runtime.

    Parameters
    ----------
    spec
        What to mosaic and where to write it (``output.zarr`` and/or ``output.cog``; without a
        Zarr path the tiles go to a hidden store beside the COG, removed once the COG is done).
    items
        Use these items instead of searching.
    client
        A ``distributed.Client`` to run on; None: from ``spec.runtime`` (a LocalCluster, a
        scheduler address, or a cluster profile in ``runtime.cluster``; see
        :func:`s2mosaic._cluster.make_client`).
    progress
        Show a progress bar over tiles (and over the COG export).
    resume
        Continue the run whose store is at the output path: finished tiles are checked against
        their recorded digests and skipped, the others computed. The store's recorded items
        are reused (not searched again); a store made from a different spec is refused. With no
        store yet, the run starts from scratch.
    retry_dropped
        With ``resume``: compute the ``degraded`` tiles again too, from all their items - the
        scenes an earlier run could not read are read again (byte-identical to a run that never
        lost them, once they read).
    on_stage
        ``on_stage(name, info)`` after each stage (``search``, ``cluster``, ``plan``,
        ``tiles``); the CLI prints from it. The output and resume checks and the search come
        before the cluster is started: a run that cannot start submits no worker job.

    Returns
    -------
    RunReport
        Also written to ``<output stem>.report.json``. When tiles fail after
        ``runtime.retries`` retries the others still finish, the report is written, and
        :class:`~s2mosaic.errors.RunError` is raised (rerun with ``resume=True``). Scenes that
        cannot be read are, under ``runtime.on_read_error: skip`` (the default), left out of the
        tiles they touch: the run completes with ``status`` ``degraded``, names them in
        ``scenes_dropped`` and warns (:class:`~s2mosaic.errors.DroppedScenesWarning`).

    Examples
    --------
    >>> report = run(MosaicSpec.from_yaml("my-area.yaml"))  # doctest: +SKIP
    >>> report.tiles  # doctest: +SKIP
    {'total': 12, 'computed': 12, 'resumed': 0, 'empty': 1, 'failed': 0, 'retried': 0}
    >>> run(MosaicSpec.from_yaml("my-area.yaml"), resume=True)  # after an interruption  # doctest: +SKIP
    """
    return execute(spec, MosaicProduct(spec), items=items, client=client, progress=progress,
                   resume=resume, retry_dropped=retry_dropped, on_stage=on_stage)


def execute(spec: MosaicSpec, product: Product, *, items: Sequence[pystac.Item] | None = None,
            client: Any = None, progress: bool = False, resume: bool = False,
            retry_dropped: bool = False,
            on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> RunReport:
    """Run ``product`` of ``spec`` tile by tile: what :func:`run`,
    :func:`s2mosaic.run_series` and :func:`s2mosaic.run_gapfill` share (the arguments are
    :func:`run`'s), with the start/completion/failure notifications around it."""
    if retry_dropped and not resume:
        raise ArgumentError("retry_dropped=True (--retry-dropped) reads again the scenes a run "
                            "dropped from its store's tiles: pass resume=True (--resume) too")
    notifier = Notifier.from_env()
    notifier.started(spec.name, cluster=client_source(spec.runtime, client),
                     outputs={k: getattr(spec.output, k) for k in ("zarr", "cog", "rgb")})
    try:
        runner = _Run(spec, product, resume, progress, on_stage or (lambda _n, _i: None),
                      retry_dropped=retry_dropped)
        try:
            report = runner.execute(items, client)
        finally:  # also on failure and Ctrl-C: the store is free for the next run
            runner.out.lock.release()
            close_datasets()  # files this process's reads kept open (runtime.keep_open)
    except BaseException as e:
        notifier.failed(spec.name, e)
        raise
    notifier.completed(spec.name, asdict(report))
    if report.scenes_dropped:
        warnings.warn(f"{spec.name}: complete with {report.scenes_dropped_count} scene(s) "
                      f"dropped that could not be read ({_scenes_line(report)}); the report lists "
                      "them with their tiles. Once they can be read, rerun with resume=True, "
                      "retry_dropped=True (--resume --retry-dropped) to add them",
                      DroppedScenesWarning, stacklevel=3)
    return report


def _scenes_line(report: RunReport, most: int = 3) -> str:
    items = list(dict.fromkeys(d["item"] for d in report.scenes_dropped))
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def report_path(output: OutputSpec) -> Path:
    """Where a run's report goes: ``<metadata sidecar stem>.report.json``."""
    meta = output.metadata_path
    if meta is None:
        raise WriteError("nothing to write: set output.zarr and/or output.cog in the spec")
    stem = meta.name.removesuffix(".json").removesuffix(".metadata")
    return meta.with_name(f"{stem}.report.json")


def store_path(output: OutputSpec) -> Path:
    """The Zarr store the tiles go to: ``output.zarr``, else a hidden one beside the COG."""
    if output.zarr is not None:
        return output.zarr
    if output.cog is None:
        raise WriteError("nothing to write: set output.zarr and/or output.cog in the spec")
    return output.cog.with_name(f".{output.cog.name}.tiles.zarr")


# -- products ----------------------------------------------------------------------------------
class Product(Protocol):
    """What a run computes. The runner does the rest - tiles, store, manifest, resume, retries,
    report - the same way for every product (:class:`MosaicProduct`, and the series and
    gap-fill products of :mod:`s2mosaic._timeseries_run`)."""

    kind: str
    """``mosaic``, ``series`` or ``gapfill``: recorded in the manifest and the run report."""
    names: list[str]
    """The variables of the store, in order."""
    time: dict[str, np.ndarray] | None
    """Coordinates along ``time`` (``time`` first) of a ``(time, y, x)`` product; None for a
    single ``(y, x)`` mosaic."""
    time_chunk: int
    """Time steps per Zarr chunk (ignored without ``time``)."""

    def check(self, output: OutputSpec) -> dict[str, Path | None]:
        """Raise for outputs the product cannot write; its output files by name (a new run
        refuses to replace them without ``overwrite``)."""
        ...

    def select(self, items: SearchResult) -> SearchResult:
        """The items the run uses, chosen once for the whole area (a resumed run reuses the
        recorded ones)."""
        ...

    def prepare(self, items: SearchResult, gbox: GeoBox, recorded: Mapping[str, Any] | None,
                ) -> dict[str, Any]:
        """Run-wide state computed before the tiles - the product's parameters first - as
        recorded in the manifest header; ``recorded`` is that record when resuming."""
        ...

    def build(self, items: list[pystac.Item], box: GeoBox) -> xr.Dataset:
        """The lazy product on ``box`` (a tile plus its mask margin) from ``items``, the run's
        items that touch it."""
        ...

    def exports(self, source: xr.Dataset, output: OutputSpec, *, overwrite: bool, client: Any,
                progress: bool) -> dict[str, Path | None]:
        """Write the products streamed from the finished store ``source`` (COG, RGB)."""
        ...

    def record(self, prov: dict[str, Any], source: xr.Dataset,
               written: Mapping[str, Path | None]) -> dict[str, Any]:
        """The metadata sidecar from the run's provenance record ``prov``."""
        ...


class MosaicProduct:
    """One composite over ``spec.period``: ``(y, x)`` bands and ``count``; COG and RGB."""

    kind = "mosaic"
    time: dict[str, np.ndarray] | None = None
    time_chunk = 1

    def __init__(self, spec: MosaicSpec) -> None:
        self.spec = spec
        self.names = [*spec.bands, COUNT]
        self.device: str | None = None  # runtime.device, resolved once the client is up

    def check(self, output: OutputSpec) -> dict[str, Path | None]:
        return {"cog": output.cog, "rgb": output.rgb}

    def select(self, items: SearchResult) -> SearchResult:
        return apply_selection(self.spec, items)  # spec.select, once for all tiles

    def prepare(self, items: SearchResult, gbox: GeoBox, recorded: Mapping[str, Any] | None,
                ) -> dict[str, Any]:
        return {"kind": self.kind}

    def build(self, items: list[pystac.Item], box: GeoBox) -> xr.Dataset:
        return mosaic(self.spec, SearchResult(items), geobox=box, device=self.device)

    def exports(self, source: xr.Dataset, output: OutputSpec, *, overwrite: bool, client: Any,
                progress: bool) -> dict[str, Path | None]:
        return export_rasters(source, output, "", overwrite=overwrite, client=client,
                               progress=progress)

    def record(self, prov: dict[str, Any], source: xr.Dataset,
               written: Mapping[str, Path | None]) -> dict[str, Any]:
        return _write.metadata_record(source, prov, written)


def export_rasters(source: xr.Dataset, output: OutputSpec, day: dt.date | str, *,
                    overwrite: bool, client: Any, progress: bool) -> dict[str, Path | None]:
    """``output.cog`` / ``output.rgb`` of ``source`` (one ``(y, x)`` plane), named
    ``<stem>_<day><suffix>`` (``cog[<day>]``) when ``day`` is given."""
    written: dict[str, Path | None] = {}
    with warnings.catch_warnings():
        for kind, path in (("cog", output.cog), ("rgb", output.rgb)):
            key = f"{kind}[{day}]" if day else kind
            if path is None:
                if not day:
                    written[key] = None
                continue
            target = dated(path, day) if day else path
            written[key] = (
                _raster.write_cog(source, target, overwrite=overwrite, client=client,
                                 progress=progress) if kind == "cog" else
                _raster.write_rgb(source, target, output.rgb_bands, output.rgb_range,
                                 overwrite=overwrite, client=client, progress=progress))
    return written


def dated(path: Path, day: dt.date | str) -> Path:
    """``out/m.tif`` → ``out/m_2024-05-01.tif``."""
    iso = day.isoformat() if isinstance(day, dt.date) else day
    return path.with_name(f"{path.stem}_{iso}{path.suffix}")


# -- the runner ----------------------------------------------------------------------------------
class _Store:
    """A run's Zarr store and manifest: a new run's output checks and the store initialised
    (grid, template, header, items), or a resumed run's store checked against the spec; then
    the finished tiles verified against their digests."""

    def __init__(self, spec: MosaicSpec, product: Product, resume: bool) -> None:
        out = spec.output
        self.path = store_path(out)
        if resume and out.overwrite:
            raise WriteError("resume and overwrite exclude each other: resume continues the store "
                             f"at {self.path}, overwrite deletes it - choose one")
        self.targets = product.check(out)
        if out.rgb is not None:
            missing = [b for b in out.rgb_bands if b not in product.names]
            if missing:
                raise WriteError(f"output.rgb_bands {list(out.rgb_bands)}: {missing} not in "
                                 f"bands {list(spec.bands)}")
        self.spec, self.product, self.resume = spec, product, resume
        self.scratch = out.zarr is None
        self.manifest = Manifest(self.path)
        #: ((item ids, context box), lazy product) of the tile the template was built from:
        #: the tile loop reuses it for that tile instead of building the same graph again.
        self.probe: tuple[tuple[list[str], GeoBox], xr.Dataset] | None = None
        self.lock = RunLock(self.path, f"s2mosaic {product.kind} {spec.name}"
                                       f"{' --resume' if resume else ''}"
                                       f"{' --overwrite' if out.overwrite else ''}")
        """Held from before the first tile is written to the end of the run: one run at a
        time writes a store (a resumed or overwritten one is locked when it is opened, a new one
        carries the lock from before it is renamed into place)."""
        self.chunk = spec.runtime.chunks
        self.header: dict[str, Any] | None = None
        """The manifest header of the store being resumed (None: a new store)."""

    def open(self, items: Sequence[pystac.Item] | None) -> tuple[SearchResult, TileGrid]:
        """The run's items and tiles, before any cluster is started: a resumed store's
        recorded items (its header checked against the spec), else the output checks, then
        the items searched (unless given) and selected by the product."""
        spec = self.spec
        if os.path.lexists(self.path):
            if self.resume or spec.output.overwrite:
                self.lock.acquire()
            else:
                self.lock.check()  # say who uses it rather than only that it exists
        self.header = self._resumable() if self.resume and os.path.lexists(self.path) else None
        items = self._new_items(items) if self.header is None else self._recorded_items(items)
        gbox = output_geobox(spec, items)
        aoi = spec.aoi.odc_geometry().to_crs(gbox.crs)
        grid = TileGrid(gbox, tiles(gbox, spec.runtime.tile_pixels),
                        context_pixels(spec.mask, gbox), aoi, items)
        if self.header is not None:  # the recorded state: cheap, and checked before the cluster
            state = self.product.prepare(items, gbox, self.header.get("product"))
            fp = self._fingerprint(items, grid, state)
            if self.header.get("fingerprint") != fp:
                info = _write.grid_info(gbox)
                raise WriteError(f"resume: {self.path} was made for another grid or tiling "
                                 f"({self.header.get('grid')}, tile_size "
                                 f"{self.header.get('tile_size')}) than this spec gives ({info}, "
                                 f"tile_size {spec.runtime.tile_pixels}); use overwrite or "
                                 "another path")
        return items, grid

    def initialise(self, items: SearchResult, grid: TileGrid) -> None:
        """A new run's store: the product's run-wide state (which may compute, on the run's
        client), then the store and its manifest header. A resumed store is left as it is."""
        if self.header is not None:
            return
        state = self.product.prepare(items, grid.gbox, None)
        header = {"fingerprint": self._fingerprint(items, grid, state),
                  "spec": pixel_spec(self.spec.to_dict()), "grid": _write.grid_info(grid.gbox),
                  "tile_size": self.spec.runtime.tile_pixels, "chunks": self.chunk,
                  "tiles": len(grid.tiles), "halo": list(grid.halo),
                  "bands": self.product.names, "product": state}
        _write.init_zarr(self._template(grid), self.path, overwrite=self.spec.output.overwrite,
                         before_publish=lambda p: self._publish(p, header, items))

    def _publish(self, scratch: Path, header: dict[str, Any], items: SearchResult) -> None:
        """The run group of a new store, before it is renamed into place: manifest, items and
        this run's lock (so the store is never visible unlocked)."""
        Manifest(scratch).create(header, items)
        RunLock(scratch, self.lock.command, token=self.lock.token).acquire()
        self.lock.held = True

    def _fingerprint(self, items: SearchResult, grid: TileGrid, state: dict[str, Any]) -> str:
        spec = self.spec
        return fingerprint(spec.to_dict(), _write.grid_info(grid.gbox), spec.runtime.tile_pixels,
                           [i.id for i in items], None if self.product.kind == "mosaic" else state)

    def _new_items(self, items: Sequence[pystac.Item] | None) -> SearchResult:
        out = self.spec.output
        if not out.overwrite and not self.resume:
            targets = {"zarr": self.path, "metadata": out.metadata_path,
                       "report": report_path(out), **self.targets}
            for name, p in targets.items():
                if p is not None and os.path.lexists(p):
                    raise WriteError(
                        f"{p} already exists (output.{name}); pass --resume to continue an "
                        "interrupted run into it, --overwrite (output.overwrite: true) to "
                        "replace it, or choose another path")
        found = search(self.spec) if items is None else (
            items if isinstance(items, SearchResult) else SearchResult(items))
        return self.product.select(found)

    def _recorded_items(self, items: Sequence[pystac.Item] | None) -> SearchResult:
        stored = self.manifest.items()
        if items is not None and [i.id for i in items] != [i.id for i in stored]:
            raise WriteError(f"resume: the items given differ from the {len(stored)} items "
                             f"recorded in {self.path} when the run started; resume "
                             "without passing items, or start again with overwrite")
        return stored

    def _resumable(self) -> dict[str, Any]:
        """The manifest header of the store to resume, checked against this run's spec."""
        if not self.manifest.exists():
            raise WriteError(
                f"resume: {self.path} exists but has no s2mosaic run manifest "
                f"({self.manifest.path}): it was not written by s2mosaic.run; use overwrite to "
                "replace it, or another output path")
        header = self.manifest.header()
        made = (header.get("product") or {}).get("kind", "mosaic")
        if made != self.product.kind:
            raise WriteError(f"resume: {self.path} holds a {made}, not a {self.product.kind}; "
                             "resume it with the command that made it, or use overwrite / "
                             "another output path")
        diffs = spec_differences(header.get("spec", {}), pixel_spec(self.spec.to_dict()))
        if diffs:
            raise WriteError(
                f"resume: {self.path} was made from a different spec, so its tiles would not "
                f"match: {'; '.join(diffs[:6])}. Resume with the same spec (only output paths "
                "and scheduling may change), or use overwrite / another output path")
        return header

    def _template(self, grid: TileGrid) -> xr.Dataset:
        """A lazy dataset shaped like the store (its values never computed): the product's
        variables over the whole grid, attributes from the product of the first tile with
        items (less those describing that tile only)."""
        names = self.product.names
        attrs: dict[str, Any] = {}
        var_attrs = {n: {"long_name": "number of valid observations"} if n == COUNT
                     else {"nodata": 0} for n in names}
        probe = next((t for t in grid.tiles if grid.touching(t)), None)
        if probe is not None:
            touching, box = grid.touching(probe), grid.context(probe)[0]
            ds = self.product.build(touching, box)
            self.probe = (([i.id for i in touching], box), ds)
            attrs = {k: v for k, v in ds.attrs.items() if k not in _TILE_ATTRS}
            var_attrs = {n: dict(ds[n].attrs) for n in names}
        data = {n: self.zeros(grid.gbox).assign_attrs(var_attrs[n]) for n in names}
        return xr.Dataset(data, attrs=attrs)

    def zeros(self, gbox: GeoBox) -> xr.DataArray:
        """Lazy uint16 zeros on ``gbox``, chunked as the store (with its ``time`` axis)."""
        plane = xr_zeros(gbox, dtype="uint16", chunks=(self.chunk, self.chunk))
        time_coords = self.product.time
        if time_coords is None:
            return plane
        steps = len(time_coords["time"])
        data = da.zeros((steps, *gbox.shape.yx), dtype="uint16",
                        chunks=(self.product.time_chunk, self.chunk, self.chunk))
        coords: dict[str, Any] = {str(k): v for k, v in plane.coords.items()}
        coords["time"] = time_coords["time"]
        coords |= {k: ("time", v) for k, v in time_coords.items() if k != "time"}
        return xr.DataArray(data, dims=("time", *plane.dims), coords=coords)

    def finished(self, grid: TileGrid, compute: Callable[[list[Any]], list[Any]],
                 ) -> dict[str, TileRecord]:
        """The tiles recorded as finished whose chunks in the store still have the digest the
        run recorded (the others are warned about, to be computed again)."""
        done = self.manifest.finished()
        by_key = {t.key: t for t in grid.tiles}
        check = [by_key[k] for k in done if k in by_key]
        verify = [dask.delayed(_write.read_digests, pure=False)(
            str(self.path), self.product.names, t.y, t.x, self.chunk) for t in check]
        good = {}
        for t, digests in zip(check, compute(verify) if verify else [], strict=True):
            if tile_digest(digests) == done[t.key].digest:
                good[t.key] = done[t.key]
            else:
                warnings.warn(f"tile {t.key} in {self.path} does not match the digest its run "
                              "recorded (changed or damaged on disk): computing it again",
                              UserWarning, stacklevel=3)
        return good


class _Run:
    """One run of a product: its store (:class:`_Store`), the tile loop
    (:class:`s2mosaic._tiles.TileLoop`), the exports and the report."""

    def __init__(self, spec: MosaicSpec, product: Product, resume: bool, progress: bool,
                 notify: Callable[[str, dict[str, Any]], None], *,
                 retry_dropped: bool = False) -> None:
        self.out = _Store(spec, product, resume)
        self.retry_dropped = retry_dropped
        self.store = self.out.path
        self.spec, self.product, self.resume, self.progress = spec, product, resume, progress
        self.notify = notify
        self.chunk = spec.runtime.chunks
        self.t0 = time.time()
        self.stages: dict[str, float] = {}
        self.counts = dict.fromkeys(("total", "computed", "resumed", "empty", "degraded",
                                     "failed", "retried"), 0)
        self.scenes: list[dict[str, Any]] = []
        self.failed: dict[str, str] = {}
        self.retry_wait_s = 0.0
        self.max_tasks = 0
        self.limit = 1
        self.bytes_read: int | None = None
        self.bytes_written: int | None = None

    def execute(self, items: Sequence[pystac.Item] | None, client: Any) -> RunReport:
        # Everything that can fail cheaply - output checks, resume checks, search, grid - comes
        # before the cluster: no worker job is queued for a run that cannot start.
        self.items, self.grid = self.out.open(items)
        self.gbox = self.grid.gbox
        self.drops = SceneDrops(self.items, self.grid.aoi, self.spec.runtime.on_read_error)
        self.observations = observation_count(self.items, self.spec)
        self.stages["search_s"] = round(time.time() - self.t0, 3)
        self.notify("search", {"items": self.items})
        t1 = time.time()
        conn = make_client(self.spec.runtime, client=client)
        with conn as c:
            self.client = c
            self.stages["cluster_s"] = round(time.time() - t1, 3)
            self.notify("cluster", {"dashboard": conn.dashboard_link, "client": c,
                                    "cluster": conn.description})
            if c is not None:
                quiet_workers(c)
            quiet_rasterio()
            if isinstance(self.product, MosaicProduct):  # series, gap-fill: CPU
                self.product.device = resolve_device(self.spec.runtime.device, c)
            t2 = time.time()
            self.out.initialise(self.items, self.grid)
            todo = self._todo()
            self.stages["store_s"] = round(time.time() - t2, 3)
            self.limit = self._limit()
            self.notify("plan", {"shape": tuple(self.gbox.shape.yx), "tiles": len(self.grid.tiles),
                                 "todo": len(todo), "observations": self.observations,
                                 "store": self.store, "limit": self.limit,
                                 "kind": self.product.kind})
            self._run_tiles(todo)
            if self.failed:
                raise self._failure()
            t3 = time.time()
            outputs = self._exports()
            self.stages["products_s"] = round(time.time() - t3, 3)
        return self._report(outputs, "degraded" if self.scenes else "complete")

    def _failure(self) -> RunError:
        try:
            report: RunReport | None = self._report({}, "failed")
            where = f"Report: {report_path(self.spec.output)}"
        except WriteError as e:  # a full disk: say so rather than hide the tiles' failure
            report, where = None, f"The report could not be written either: {e}"
        keys = ", ".join(f"{k} ({v})" for k, v in list(self.failed.items())[:5])
        return RunError(
            f"{len(self.failed)} of {len(self.grid.tiles)} tile(s) failed after "
            f"{self.spec.runtime.retries} retries: {keys}. Every other tile is written to "
            f"{self.store}; rerun with --resume (resume=True) to redo only the failed "
            f"ones. {where}", report)

    def _todo(self) -> list[Tile]:
        """Tiles still to compute: all but the finished ones that check out."""
        good = self.out.finished(self.grid, self._compute_all)
        if self.retry_dropped:  # their dropped scenes are read again, with the others
            good = {k: r for k, r in good.items() if r.status != "degraded"}
        self.counts.update(total=len(self.grid.tiles), resumed=len(good),
                           empty=sum(1 for r in good.values() if r.status == "empty"))
        return [t for t in self.grid.tiles if t.key not in good]

    def _compute_all(self, objs: list[Any]) -> list[Any]:
        if self.client is not None:
            return list(self.client.gather(self.client.compute(objs)))
        return list(dask.compute(*objs))

    # -- tiles -------------------------------------------------------------------------------
    def _limit(self) -> int:
        rt = self.spec.runtime
        if rt.max_tiles_in_flight is not None:
            return rt.max_tiles_in_flight
        threads = sum(self.client.nthreads().values()) if self.client is not None else os.cpu_count() or 1
        per_tile = math.ceil(rt.tile_pixels / self.chunk) ** 2
        return max(1, math.ceil(threads / per_tile)) + 1

    def _run_tiles(self, todo: list[Tile]) -> None:
        loop = TileLoop(self.client, self.limit, self.spec.runtime.retries, self._tile_graph,
                        self._record, backoff_s=self.spec.runtime.read_backoff_s,
                        reset=clear_read_cache, salvage=self._salvage)
        read0 = _bytes_read(self.client)
        t1 = time.time()
        with _progress(self.progress and bool(todo), len(self.grid.tiles),
                       self.counts["resumed"]) as advance:
            loop.run(todo, advance)
        self.stages["tiles_s"] = round(time.time() - t1, 3)
        self.stages["graphs_s"] = round(loop.graph_s, 3)
        read1 = _bytes_read(self.client)
        self.bytes_read = None if read0 is None or read1 is None else max(0, read1 - read0)
        self.failed, self.max_tasks = loop.failed, loop.max_tasks
        self.retry_wait_s = round(loop.retry_wait_s, 3)
        final = self.out.manifest.finished()  # with the tiles of earlier runs of this store
        self.scenes = dropped_scenes(final[t.key] for t in self.grid.tiles if t.key in final)
        self.counts.update(retried=loop.retried, failed=len(loop.failed),
                           degraded=sum(1 for t in self.grid.tiles
                                        if t.key in final and final[t.key].status == "degraded"))
        self.notify("tiles", {"counts": dict(self.counts), "failed": dict(self.failed),
                              "scenes_dropped": list(self.scenes)})

    def _tile_graph(self, tile: Tile) -> TileGraph:
        """The delayed writes of one tile: its product on its context box, cut to the tile."""
        left_out = self.drops.excluded(tile)
        items = [i for i in self.grid.touching(tile) if i.id not in left_out]
        ds = None
        if items:
            box = self.grid.context(tile)[0]
            ds = self.grid.crop(self._build(items, box), tile, self.chunk,
                                {"time": self.product.time_chunk} if self.product.time else {})
        arrays = tile_arrays(ds, self.product.names, lambda: self.out.zeros(tile.geobox).data)
        graph, tasks = block_writes(arrays, str(self.store), tile)
        return TileGraph(graph, tasks, len(items), not items)

    def _build(self, items: list[pystac.Item], box: GeoBox) -> xr.Dataset:
        """The lazy product of ``items`` on ``box``: the one the store's template already built
        when it is the same tile with the same items (once), else built now."""
        probe = self.out.probe
        if probe is not None and probe[0] == ([i.id for i in items], box):
            self.out.probe = None
            return probe[1]
        return self.product.build(items, box)

    def _salvage(self, tile: Tile, error: BaseException) -> bool:
        """Whether ``tile``, failed after its retries with ``error``, is computed again without
        the scene that could not be read (``runtime.on_read_error: skip``)."""
        dropped = self.drops.take(tile, self.grid.touching(tile), error)
        if dropped is not None:
            self.notify("dropped", {"tile": tile.key, **dropped})
        return dropped is not None

    def _record(self, p: Pending, result: list[tuple[Any, ...]]) -> None:
        dropped = self.drops.of(p.tile)
        status = "degraded" if dropped else "empty" if p.graph.empty else "done"
        rec = TileRecord(tile=p.tile.key, status=status,
                         digest=tile_digest([r[:-1] for r in result]), chunks=len(result),
                         bytes=sum(r[-1] for r in result), items=p.graph.items,
                         seconds=round(time.time() - p.started, 3), attempts=p.attempt + 1,
                         dropped=dropped)
        self.out.manifest.append(rec)
        self.counts["computed"] += 1
        self.counts["empty"] += p.graph.empty

    # -- exports and report ---------------------------------------------------------------------
    def _exports(self) -> dict[str, Path | None]:
        out = self.spec.output
        source = _write.open_zarr(self.store)[self.product.names]
        written: dict[str, Path | None] = {"zarr": None if self.out.scratch else self.store}
        written |= self.product.exports(source, out, overwrite=out.overwrite or self.resume,
                                        client=self.client,
                                        progress=self.progress and interactive())
        meta = out.metadata_path
        assert meta is not None
        written["metadata"] = meta
        prov = provenance(self.spec, self.items, self.gbox, self.observations, self.t0)
        prov["tiling"] = {"tile_size": self.spec.runtime.tile_pixels,
                          "tiles": len(self.grid.tiles), "margin_px": list(self.grid.halo),
                          "store": str(self.store)}
        # What is missing from the product: scenes left out of tiles because they could not
        # be read (runtime.on_read_error: skip), with their tiles and pixels.
        prov["dropped_scenes"] = list(self.scenes)
        record = self.product.record(prov, source, written)
        record["processing_time_s"] = round(time.time() - self.t0, 3)
        record["finished"] = dt.datetime.now(dt.UTC).isoformat()
        _write.write_metadata(meta, record)
        # STAC item(s) beside the sidecar: <name>.stac.json (one per period for a series).
        product_items(record, self.gbox, {n: source[n].dtype for n in self.product.names},
                      written, meta)
        if self.out.scratch:
            self.bytes_written = _du(self.store)
            shutil.rmtree(self.store, ignore_errors=True)
        return written

    def _report(self, outputs: dict[str, Path | None], status: str) -> RunReport:
        spec = self.spec
        if self.bytes_written is None and self.store.exists():
            self.bytes_written = _du(self.store)
        report = RunReport(
            product=spec.name, items=len(self.items),
            dropped=len(getattr(self.items, "dropped", [])), observations=self.observations,
            shape=(self.gbox.shape.y, self.gbox.shape.x), crs=str(self.gbox.crs),
            outputs={k: (str(v) if v is not None else None) for k, v in outputs.items()},
            wall_time_s=round(time.time() - self.t0, 3),
            dashboard=getattr(self.client, "dashboard_link", None), stages_s=self.stages,
            status=status, tiles=dict(self.counts), failed_tiles=dict(self.failed),
            retry_wait_s=self.retry_wait_s,
            tile_size=spec.runtime.tile_pixels, max_tiles_in_flight=self.limit,
            max_tasks_in_flight=self.max_tasks, bytes_read=self.bytes_read,
            bytes_written=self.bytes_written, kind=self.product.kind,
            scenes_dropped=list(self.scenes))
        path = report_path(spec.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, report.to_json() + "\n", "the run report")
        return report


@contextlib.contextmanager
def _progress(show: bool, total: int, completed: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over tiles on a terminal or in Jupyter with ipywidgets; plain lines
    elsewhere (CI logs, pipes, Jupyter without ipywidgets: :class:`_ProgressLines`); a no-op
    when not shown."""
    if not show:
        yield lambda: None
        return
    if not interactive():
        yield _ProgressLines(total, completed)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task("tiles", total=total, completed=completed)
        yield lambda: bar.advance(task)


class _ProgressLines:
    """Progress for logs: a line on stderr at each tenth of the tiles and at the last one
    (a live bar would write a carriage return per refresh)."""

    def __init__(self, total: int, completed: int) -> None:
        self.total, self.done, self.t0 = total, completed, time.time()
        self.tenth = self._tenth()

    def _tenth(self) -> int:
        return self.done * 10 // max(1, self.total)

    def __call__(self) -> None:
        self.done += 1
        if self._tenth() > self.tenth or self.done == self.total:
            self.tenth = self._tenth()
            print(f"tiles {self.done}/{self.total} ({100 * self.done // max(1, self.total)} %) "
                  f"after {time.time() - self.t0:.0f} s", file=sys.stderr, flush=True)


def _rchar() -> int | None:
    """Bytes this process has read through read()/pread() (Linux), or None."""
    try:
        with open(f"/proc/{os.getpid()}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _bytes_read(client: Any) -> int | None:
    """Sum of :func:`_rchar` over the workers of ``client`` (this process without a client)."""
    if client is None:
        return _rchar()
    try:
        values = list(client.run(_rchar).values())
    except Exception:  # a worker going away mid-call: no number rather than a failed run
        return None
    return None if any(v is None for v in values) else sum(values)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
