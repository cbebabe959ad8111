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
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros

from . import _write
from ._cluster import keep_annotations, make_client, quiet_rasterio, quiet_workers
from ._cube import observation_count
from ._grid import Footprints, Tile, output_geobox, tiles
from ._manifest import Manifest, TileRecord, fingerprint, pixel_spec, spec_differences, tile_digest
from ._notify import Notifier
from ._pipeline import PROVENANCE_ATTR, mosaic, provenance
from ._search import SearchResult, search
from ._select import apply_selection
from ._spec import MosaicSpec, OutputSpec
from .errors import RunError, WriteError
from .masks import context_pixels

__all__ = ["RunReport", "run", "write"]

COUNT = _write.COUNT
#: Dataset attributes of a tile's mosaic that describe that tile only (not copied to the store).
_TILE_ATTRS = ("boa_offsets", "mask_bands", PROVENANCE_ATTR)


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
    status: str = "complete"
    """``complete``, or ``failed`` when tiles failed after their retries."""
    tiles: dict[str, int] = field(default_factory=dict)
    """Counts: ``total``, ``computed`` (this run), ``resumed`` (finished before and verified),
    ``empty`` (no item or no AOI pixel: written as nodata), ``failed``, ``retried``."""
    failed_tiles: dict[str, str] = field(default_factory=dict)
    """Tile key → the last error, for tiles that failed after their retries."""
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def write(mosaic_ds: xr.Dataset, output: OutputSpec, *, client: Any = None,
          progress: bool = False) -> _write.WriteResult:
    """Compute and write a mosaic from :func:`s2mosaic.mosaic` to ``output`` as one graph.

    For notebooks and small areas. :func:`run` writes tile by tile instead (bounded memory,
    resumable). The provenance record the mosaic carries is completed (processing time) and
    written as the metadata sidecar; it is not copied into the Zarr/COG attributes.
    """
    if output.zarr is None and output.cog is None:
        raise WriteError("nothing to write: set output.zarr and/or output.cog in the spec")
    ds = mosaic_ds.copy()
    prov: dict[str, Any] = dict(ds.attrs.pop(PROVENANCE_ATTR, None) or {})
    started = time.time()
    if client is not None:
        quiet_workers(client)
    # keep_annotations: GPU tasks (cluster.gpu_annotate) keep their resources through compute.
    with warnings.catch_warnings(), keep_annotations(ds):
        quiet_rasterio()
        result = _write.write(ds, output, provenance=prov, client=client, progress=progress)
    if result.metadata is not None:
        # The processing time is known only now: complete the sidecar the writer made.
        record = json.loads(result.metadata.read_text())
        record["processing_time_s"] = round(time.time() - started, 3)
        record["finished"] = dt.datetime.now(dt.UTC).isoformat()
        _write.write_metadata(result.metadata, record)
    return result


def run(spec: MosaicSpec, *, items: Sequence[pystac.Item] | None = None, client: Any = None,
        progress: bool = False, resume: bool = False,
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
    on_stage
        ``on_stage(name, info)`` after each stage (``cluster``, ``search``, ``plan``,
        ``tiles``); the CLI prints from it.

    Returns
    -------
    RunReport
        Also written to ``<output stem>.report.json``. When tiles fail after
        ``runtime.retries`` retries the others still finish, the report is written, and
        :class:`~s2mosaic.errors.RunError` is raised (rerun with ``resume=True``).

    Examples
    --------
    >>> report = run(MosaicSpec.from_yaml("my-area.yaml"))  # doctest: +SKIP
    >>> report.tiles  # doctest: +SKIP
    {'total': 12, 'computed': 12, 'resumed': 0, 'empty': 1, 'failed': 0, 'retried': 0}
    >>> run(MosaicSpec.from_yaml("my-area.yaml"), resume=True)  # after an interruption  # doctest: +SKIP
    """
    notifier = Notifier.from_env()
    rt = spec.runtime
    where = ("the given client" if client is not None else
             f"cluster profile {rt.cluster}" if rt.cluster is not None else rt.scheduler or "LocalCluster")
    notifier.started(spec.name, cluster=where,
                     outputs={k: getattr(spec.output, k) for k in ("zarr", "cog", "rgb")})
    try:
        report = _Run(spec, resume, progress, on_stage or (lambda _n, _i: None)).execute(items, client)
    except BaseException as e:
        notifier.failed(spec.name, e)
        raise
    notifier.completed(spec.name, asdict(report))
    return report


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


@dataclass
class _Pending:
    tile: Tile
    attempt: int
    started: float
    tasks: int
    items: int
    empty: bool


class _Run:
    """One run of a spec: the preparation, the tile loop, the products and the report."""

    def __init__(self, spec: MosaicSpec, resume: bool, progress: bool,
                 notify: Callable[[str, dict[str, Any]], None]) -> None:
        out = spec.output
        if out.zarr is None and out.cog is None:
            raise WriteError("nothing to write: set output.zarr and/or output.cog in the spec")
        if resume and out.overwrite:
            raise WriteError("resume and overwrite exclude each other: resume continues the store "
                             f"at {store_path(out)}, overwrite deletes it - choose one")
        self.spec, self.resume, self.progress, self.notify = spec, resume, progress, notify
        self.store = store_path(out)
        self.scratch_store = out.zarr is None
        self.manifest = Manifest(self.store)
        self.names = [*spec.bands, COUNT]
        self.chunk = spec.runtime.chunks
        self.t0 = time.time()
        self.stages: dict[str, float] = {}
        self.counts = {"total": 0, "computed": 0, "resumed": 0, "empty": 0, "failed": 0,
                       "retried": 0}
        self.failed: dict[str, str] = {}
        self.max_tasks = 0
        self.limit = 1
        self.bytes_read: int | None = None
        self.bytes_written: int | None = None

    # -- the whole run ----------------------------------------------------------------------
    def execute(self, items: Sequence[pystac.Item] | None, client: Any) -> RunReport:
        spec = self.spec
        conn = make_client(spec.runtime, client=client)
        with conn as c:
            self.client = c
            self.notify("cluster", {"dashboard": conn.dashboard_link, "client": c,
                                    "cluster": conn.description})
            if c is not None:
                quiet_workers(c)
            quiet_rasterio()
            self._prepare(items)
            self.stages["search_s"] = round(time.time() - self.t0, 3)
            self.notify("search", {"items": self.items})
            todo = self._todo()
            self.limit = self._limit()
            self.notify("plan", {"shape": tuple(self.gbox.shape.yx), "tiles": len(self.tiles),
                                 "todo": len(todo), "observations": self.observations,
                                 "store": self.store, "limit": self.limit})
            read0 = _bytes_read(c)
            t1 = time.time()
            self._run_tiles(todo)
            self.stages["tiles_s"] = round(time.time() - t1, 3)
            read1 = _bytes_read(c)
            self.bytes_read = None if read0 is None or read1 is None else max(0, read1 - read0)
            self.notify("tiles", {"counts": dict(self.counts), "failed": dict(self.failed)})
            if self.failed:
                report = self._report({}, "failed")
                keys = ", ".join(f"{k} ({v})" for k, v in list(self.failed.items())[:5])
                raise RunError(
                    f"{len(self.failed)} of {len(self.tiles)} tile(s) failed after "
                    f"{spec.runtime.retries} retries: {keys}. Every other tile is written to "
                    f"{self.store}; rerun with --resume (resume=True) to redo only the failed "
                    f"ones. Report: {report_path(spec.output)}", report)
            t2 = time.time()
            outputs = self._products()
            self.stages["products_s"] = round(time.time() - t2, 3)
        return self._report(outputs, "complete")

    # -- preparation -------------------------------------------------------------------------
    def _prepare(self, items: Sequence[pystac.Item] | None) -> None:
        spec, out = self.spec, self.spec.output
        resuming = self.resume and os.path.lexists(self.store)
        if resuming:
            header = self._check_resumable()
            stored = self.manifest.items()
            if items is not None and [i.id for i in items] != [i.id for i in stored]:
                raise WriteError(f"resume: the items given differ from the {len(stored)} items "
                                 f"recorded in {self.store} when the run started; resume "
                                 "without passing items, or start again with overwrite")
            self.items = stored
        else:
            if not out.overwrite and not self.resume:
                targets = {"zarr": out.zarr, "cog": out.cog, "rgb": out.rgb,
                           "metadata": out.metadata_path, "report": report_path(out)}
                if self.scratch_store:
                    targets["zarr"] = self.store
                for name, p in targets.items():
                    if p is not None and os.path.lexists(p):
                        raise WriteError(
                            f"{p} already exists (output.{name}); pass --resume to continue an "
                            "interrupted run into it, --overwrite (output.overwrite: true) to "
                            "replace it, or choose another path")
            self.items = search(spec) if items is None else (
                items if isinstance(items, SearchResult) else SearchResult(items))
            self.items = apply_selection(spec, self.items)  # spec.select, once for all tiles
        if out.rgb is not None:
            missing = [b for b in out.rgb_bands if b not in spec.bands]
            if missing:
                raise WriteError(f"output.rgb_bands {list(out.rgb_bands)}: {missing} not in "
                                 f"bands {list(spec.bands)}")
        self.gbox = output_geobox(spec, self.items)
        self.tiles = tiles(self.gbox, spec.runtime.tile_pixels)
        self.counts["total"] = len(self.tiles)
        self.halo = context_pixels(spec.mask, self.gbox)
        self.aoi = spec.aoi.odc_geometry().to_crs(self.gbox.crs)
        self.observations = observation_count(self.items, spec)
        self.footprints = Footprints(self.items)
        grid = _write._grid_info(self.gbox)
        self.fingerprint = fingerprint(spec.to_dict(), grid, spec.runtime.tile_pixels,
                                       [i.id for i in self.items])
        if resuming:
            if header.get("fingerprint") != self.fingerprint:
                raise WriteError(f"resume: {self.store} was made for another grid or tiling "
                                 f"({header.get('grid')}, tile_size {header.get('tile_size')}) "
                                 f"than this spec gives ({grid}, tile_size "
                                 f"{spec.runtime.tile_pixels}); use overwrite or another path")
            return
        header = {"fingerprint": self.fingerprint, "spec": pixel_spec(spec.to_dict()),
                  "grid": grid, "tile_size": spec.runtime.tile_pixels, "chunks": self.chunk,
                  "tiles": len(self.tiles), "halo": list(self.halo), "bands": self.names}
        template = self._template()
        _write.init_zarr(template, self.store, overwrite=True,
                         before_publish=lambda p: Manifest(p).create(header, self.items))

    def _check_resumable(self) -> dict[str, Any]:
        if not self.manifest.exists():
            raise WriteError(
                f"resume: {self.store} exists but has no s2mosaic run manifest "
                f"({self.manifest.path}): it was not written by s2mosaic.run; use overwrite to "
                "replace it, or another output path")
        header = self.manifest.header()
        diffs = spec_differences(header.get("spec", {}), pixel_spec(self.spec.to_dict()))
        if diffs:
            raise WriteError(
                f"resume: {self.store} was made from a different spec, so its tiles would not "
                f"match: {'; '.join(diffs[:6])}. Resume with the same spec (only output paths "
                "and scheduling may change), or use overwrite / another output path")
        return header

    def _template(self) -> xr.Dataset:
        """A lazy dataset shaped like the store: the variables of a tile's mosaic, whole grid."""
        attrs: dict[str, Any] = {}
        var_attrs: dict[str, dict[str, Any]] = {n: {"nodata": 0} for n in self.spec.bands}
        var_attrs[COUNT] = {"long_name": "number of valid observations"}
        probe_tile = next((t for t in self.tiles if self._touching(t)[0]), None)
        if probe_tile is not None:
            probe = self._mosaic(probe_tile, self._touching(probe_tile)[0])
            attrs = {k: v for k, v in probe.attrs.items() if k not in _TILE_ATTRS}
            var_attrs = {n: dict(probe[n].attrs) for n in self.names}
        data = {}
        for n in self.names:
            z = xr_zeros(self.gbox, dtype="uint16", chunks=(self.chunk, self.chunk))
            data[n] = z.assign_attrs(var_attrs[n])
        ds = xr.Dataset(data)
        ds.attrs = attrs
        return ds

    def _todo(self) -> list[Tile]:
        """Tiles still to compute; finished ones are checked against their digests first."""
        done = self.manifest.finished()
        if not done:
            return list(self.tiles)
        by_key = {t.key: t for t in self.tiles}
        check = [by_key[k] for k in done if k in by_key]
        verify = [dask.delayed(_write.read_digests, pure=False)(
            str(self.store), self.names, t.y, t.x, self.chunk) for t in check]
        results = self._compute_all(verify)
        good = set()
        for t, digests in zip(check, results, strict=True):
            if tile_digest(digests) == done[t.key].digest:
                good.add(t.key)
            else:
                warnings.warn(f"tile {t.key} in {self.store} does not match the digest its run "
                              "recorded (changed or damaged on disk): computing it again",
                              UserWarning, stacklevel=2)
        self.counts["resumed"] = len(good)
        self.counts["empty"] = sum(1 for k in good if done[k].status == "empty")
        return [t for t in self.tiles if t.key not in good]

    def _compute_all(self, objs: list[Any]) -> list[Any]:
        if not objs:
            return []
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

    def _context(self, tile: Tile) -> tuple[GeoBox, slice, slice]:
        """The tile plus the margin its masks need, within the output grid (the grid's edge is
        the edge of the world for masks, as in a single-graph mosaic), and where the tile lies
        in that box."""
        (py, px), (h, w) = self.halo, self.gbox.shape.yx
        y0, y1 = max(0, tile.y.start - py), min(h, tile.y.stop + py)
        x0, x1 = max(0, tile.x.start - px), min(w, tile.x.stop + px)
        inner = (slice(tile.y.start - y0, tile.y.stop - y0),
                 slice(tile.x.start - x0, tile.x.stop - x0))
        return self.gbox[y0:y1, x0:x1], inner[0], inner[1]

    def _touching(self, tile: Tile) -> tuple[list[pystac.Item], GeoBox]:
        """The items whose footprint touches the tile plus its mask margin, and that box."""
        box = self._context(tile)[0]
        if not self.aoi.intersects(box.extent):
            return [], box
        return self.footprints.touching(box), box

    def _mosaic(self, tile: Tile, items: list[pystac.Item]) -> xr.Dataset:
        box, ys, xs = self._context(tile)
        ds = mosaic(self.spec, SearchResult(items), geobox=box)
        if box.shape != tile.geobox.shape:
            ds = ds.isel(y=ys, x=xs).chunk({"y": self.chunk, "x": self.chunk})
        return ds

    def _graph(self, tile: Tile) -> tuple[Any, int, int, bool]:
        """The delayed writes of one tile, its task count, items used, and whether it is empty."""
        t0 = time.time()
        try:
            return self._build(tile)
        finally:
            self.stages["graphs_s"] = round(self.stages.get("graphs_s", 0.0) + time.time() - t0, 3)

    def _build(self, tile: Tile) -> tuple[Any, int, int, bool]:
        items, _ = self._touching(tile)
        if items:
            ds = self._mosaic(tile, items)
            arrays = [ds[n].data for n in self.names]
            with keep_annotations(ds):
                arrays = list(dask.optimize(*arrays))
        else:
            h, w = tile.geobox.shape.yx
            arrays = [da.zeros((h, w), dtype="uint16", chunks=self.chunk) for _ in self.names]
        writes = []
        store = str(self.store)
        for name, arr in zip(self.names, arrays, strict=True):
            blocks = arr.to_delayed(optimize_graph=False)
            ys = np.cumsum((0, *arr.chunks[0][:-1]))
            xs = np.cumsum((0, *arr.chunks[1][:-1]))
            for i, y0 in enumerate(ys):
                for j, x0 in enumerate(xs):
                    writes.append(dask.delayed(_write.write_block, pure=False)(
                        blocks[i, j], store, name, tile.y.start + int(y0), tile.x.start + int(x0)))
        graph = dask.delayed(list, pure=False)(writes)
        # len(dict(...)): an HLG of delayed writes counts shared layers once per write.
        return graph, len(dict(graph.__dask_graph__())), len(items), not items

    def _record(self, p: _Pending, result: list[tuple[str, int, int, str, int]]) -> None:
        rec = TileRecord(tile=p.tile.key, status="empty" if p.empty else "done",
                         digest=tile_digest([r[:4] for r in result]), chunks=len(result),
                         bytes=sum(r[4] for r in result), items=p.items,
                         seconds=round(time.time() - p.started, 3), attempts=p.attempt + 1)
        self.manifest.append(rec)
        self.counts["computed"] += 1
        self.counts["empty"] += p.empty

    def _run_tiles(self, todo: list[Tile]) -> None:
        if not todo:
            return
        with _progress(self.progress, len(self.tiles), self.counts["resumed"]) as advance:
            if self.client is None:
                self._run_local(todo, advance)
            else:
                self._run_distributed(todo, advance)

    def _run_local(self, todo: list[Tile], advance: Callable[[], None]) -> None:
        for tile in todo:
            for attempt in range(self.spec.runtime.retries + 1):
                graph, tasks, n_items, empty = self._graph(tile)
                self.max_tasks = max(self.max_tasks, tasks)
                p = _Pending(tile, attempt, time.time(), tasks, n_items, empty)
                try:
                    (result,) = dask.compute(graph)
                except Exception as e:  # a tile's failure must not stop the others
                    if attempt < self.spec.runtime.retries:
                        self.counts["retried"] += 1
                        continue
                    self._fail(tile, e)
                else:
                    self._record(p, result)
                break
            advance()

    def _run_distributed(self, todo: list[Tile], advance: Callable[[], None]) -> None:
        from distributed import as_completed

        client, limit = self.client, self.limit
        queue: deque[tuple[Tile, int]] = deque((t, 0) for t in todo)
        running: dict[Any, _Pending] = {}
        done = as_completed(loop=client.loop)  # the given client, not a process default

        def submit() -> None:
            while queue and len(running) < limit:
                tile, attempt = queue.popleft()
                graph, tasks, n_items, empty = self._graph(tile)
                future = client.compute(graph)
                running[future] = _Pending(tile, attempt, time.time(), tasks, n_items, empty)
                done.add(future)
            self.max_tasks = max(self.max_tasks, sum(p.tasks for p in running.values()))

        submit()
        try:
            for future in done:
                p = running.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # a tile's failure must not stop the others
                    if p.attempt < self.spec.runtime.retries:
                        self.counts["retried"] += 1
                        queue.appendleft((p.tile, p.attempt + 1))
                    else:
                        self._fail(p.tile, e)
                        advance()
                else:
                    self._record(p, result)
                    advance()
                future.release()
                submit()
        finally:
            for future in running:  # interrupted (Ctrl-C): leave nothing running for us
                future.cancel()

    def _fail(self, tile: Tile, error: BaseException) -> None:
        self.failed[tile.key] = f"{type(error).__name__}: {error}"[:500]
        self.counts["failed"] += 1

    # -- products and report ------------------------------------------------------------------
    def _products(self) -> dict[str, Path | None]:
        out = self.spec.output
        c, replace = self.client, out.overwrite or self.resume
        source = _write._open_zarr(self.store)[self.names]
        written: dict[str, Path | None] = {"zarr": None if self.scratch_store else self.store,
                                           "cog": None, "rgb": None}
        with warnings.catch_warnings():
            if out.cog is not None:
                written["cog"] = _write.write_cog(source, out.cog, overwrite=replace, client=c,
                                                  progress=self.progress)
            if out.rgb is not None:
                written["rgb"] = _write.write_rgb(source, out.rgb, out.rgb_bands, out.rgb_range,
                                                  overwrite=replace, client=c,
                                                  progress=self.progress)
        meta = out.metadata_path
        assert meta is not None
        written["metadata"] = meta
        prov = provenance(self.spec, self.items, self.gbox, self.observations, self.t0)
        prov["tiling"] = {"tile_size": self.spec.runtime.tile_pixels, "tiles": len(self.tiles),
                          "margin_px": list(self.halo), "store": str(self.store)}
        record = _write.metadata_record(source, prov, written)
        record["processing_time_s"] = round(time.time() - self.t0, 3)
        record["finished"] = dt.datetime.now(dt.UTC).isoformat()
        _write.write_metadata(meta, record)
        if self.scratch_store:
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
            tile_size=spec.runtime.tile_pixels, max_tiles_in_flight=self.limit,
            max_tasks_in_flight=self.max_tasks, bytes_read=self.bytes_read,
            bytes_written=self.bytes_written)
        path = report_path(spec.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.to_json() + "\n")
        return report


@contextlib.contextmanager
def _progress(show: bool, total: int, completed: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over tiles (terminal and Jupyter); a no-op when not shown."""
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task("tiles", total=total, completed=completed)
        yield lambda: bar.advance(task)


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
