"""The tile loop of a run: which items a tile needs, its write graph, and its scheduling.

A run (:mod:`s2mosaic._run`) splits its output grid into tiles aligned with the Zarr chunks.
:class:`TileGrid` knows each tile's context box (the tile plus the margin its masks need,
``masks.context_pixels``) and the items that touch it; :func:`block_writes` turns a tile's lazy
dataset into one write task per chunk; :class:`TileLoop` runs the tiles - at most ``limit`` in
flight over a ``distributed`` client, one at a time without one - retrying a failed tile up to
``retries`` times and handing each finished one to the runner to record. A retry waits first
(exponential backoff with jitter, :meth:`TileLoop.backoff`) so an outage that outlasted GDAL's
own retries has time to pass; the other tiles go on meanwhile. The loop knows nothing of what a
tile computes (mosaic, series, gap-fill): the runner gives it a graph per tile.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from . import _write
from ._cluster import without_task_fusion
from ._grid import Footprints, Tile

__all__ = ["MAX_RETRY_WAIT_S", "Pending", "TileGraph", "TileGrid", "TileLoop", "block_writes",
           "tile_arrays"]

#: Longest wait before a tile retry, whatever the attempt and backoff.
MAX_RETRY_WAIT_S = 120.0
#: How often the distributed loop looks at the clock while a retry waits and tiles run.
_POLL_S = 0.1


class TileGrid:
    """The tiles of an output grid, each with its context box and the items that touch it."""

    def __init__(self, gbox: GeoBox, tiles: Sequence[Tile], halo: tuple[int, int], aoi: Any,
                 items: Sequence[pystac.Item]) -> None:
        self.gbox, self.tiles, self.halo, self.aoi = gbox, list(tiles), halo, aoi
        self.footprints = Footprints(items)

    def context(self, tile: Tile) -> tuple[GeoBox, slice, slice]:
        """The tile plus the margin its masks need, within the output grid (the grid's edge is
        the edge of the world for masks, as in a single-graph mosaic), and where the tile lies
        in that box."""
        (py, px), (h, w) = self.halo, self.gbox.shape.yx
        y0, y1 = max(0, tile.y.start - py), min(h, tile.y.stop + py)
        x0, x1 = max(0, tile.x.start - px), min(w, tile.x.stop + px)
        inner = (slice(tile.y.start - y0, tile.y.stop - y0),
                 slice(tile.x.start - x0, tile.x.stop - x0))
        return self.gbox[y0:y1, x0:x1], inner[0], inner[1]

    def touching(self, tile: Tile) -> list[pystac.Item]:
        """The items whose footprint touches the tile plus its mask margin (none outside the
        AOI)."""
        box = self.context(tile)[0]
        if not self.aoi.intersects(box.extent):
            return []
        return self.footprints.touching(box)

    def crop(self, ds: xr.Dataset, tile: Tile, chunk: int,
             lead: Mapping[str, int] | None = None) -> xr.Dataset:
        """``ds``, computed on the tile's context box, cut to the tile and chunked as the store
        (``chunk`` pixels; ``lead`` for leading dims such as ``time``)."""
        box, ys, xs = self.context(tile)
        dy, dx = box.dimensions  # ("latitude", "longitude") on a geographic grid
        if box.shape != tile.geobox.shape:
            ds = ds.isel({dy: ys, dx: xs})
        return ds.chunk({**(lead or {}), dy: chunk, dx: chunk})


def block_writes(arrays: Sequence[tuple[str, da.Array]], store: str, tile: Tile,
                 ) -> tuple[Any, int]:
    """One delayed :func:`s2mosaic._write.write_block` per chunk of each ``(name, array)`` (the
    last two axes are the tile's window of the store, leading axes such as ``time`` start at
    0), gathered in one delayed list; and its number of tasks."""
    writes = []
    for name, arr in arrays:
        blocks = arr.to_delayed(optimize_graph=False)
        starts = [np.cumsum((0, *c[:-1])).tolist() for c in arr.chunks]
        starts[-2] = [tile.y.start + s for s in starts[-2]]
        starts[-1] = [tile.x.start + s for s in starts[-1]]
        for index in np.ndindex(*blocks.shape):
            origin = [int(starts[k][i]) for k, i in enumerate(index)]
            writes.append(dask.delayed(_write.write_block, pure=False)(
                blocks[index], store, name, *origin))
    graph = dask.delayed(list, pure=False)(writes)
    # len(dict(...)): an HLG of delayed writes counts shared layers once per write.
    return graph, len(dict(graph.__dask_graph__()))


def tile_arrays(ds: xr.Dataset | None, names: Sequence[str], empty: Callable[[], da.Array],
                ) -> list[tuple[str, da.Array]]:
    """The arrays of ``names`` to write for a tile, optimised together (GPU annotations kept);
    ``empty()`` zeros for each when the tile has nothing to compute (``ds`` None).

    Without low-level task fusion: ``dask.optimize`` fuses each collection on its own, so the one
    task that makes a chunk of every variable (the composite's ``(bands + 1, y, x)`` block) would
    be fused into each variable's ``getitem`` and run once per variable (five times for four
    bands and the count). Blockwise layers (masks, offsets) are still fused."""
    if ds is None:
        return [(n, empty()) for n in names]
    arrays = [ds[n].data for n in names]
    with without_task_fusion():  # also keeps GPU annotations (keep_annotations)
        arrays = list(dask.optimize(*arrays))
    return list(zip(names, arrays, strict=True))


@dataclass
class TileGraph:
    """A tile's write graph and what the manifest records about it."""

    graph: Any
    tasks: int
    items: int
    empty: bool


@dataclass
class Pending:
    """A tile being computed."""

    tile: Tile
    attempt: int
    started: float
    graph: TileGraph


@dataclass
class TileLoop:
    """Run tiles: at most ``limit`` in flight, ``retries`` retries each; failures are kept.

    A failed tile is retried after :meth:`backoff` seconds (scaled by ``backoff_s``, the spec's
    ``runtime.read_backoff_s``), not at once: the failures GDAL does not absorb itself are
    outages longer than its own retries, which an immediate retry would meet again. Before a
    retry starts, ``reset`` runs wherever tiles compute (each worker, or this process): the
    runner passes one that makes GDAL forget the files it failed to open.

    A tile whose retries are spent is handed to ``salvage`` with its last error: when that
    returns True (the runner dropped an unreadable scene from the tile), the tile starts again
    at once with a fresh count of retries, built anew by ``build``.
    """

    client: Any
    limit: int
    retries: int
    build: Callable[[Tile], TileGraph]
    record: Callable[[Pending, list[Any]], None]
    backoff_s: float = 1.0
    reset: Callable[[], None] | None = None
    salvage: Callable[[Tile, BaseException], bool] | None = None
    rng: random.Random = field(default_factory=random.Random)
    retried: int = 0
    retry_wait_s: float = 0.0
    """Seconds the retries were held back, summed (other tiles run meanwhile)."""
    failed: dict[str, str] = field(default_factory=dict)
    max_tasks: int = 0
    graph_s: float = 0.0
    _later: list[tuple[float, int, Tile, int]] = field(default_factory=list, init=False,
                                                       repr=False)
    _order: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)

    def run(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        if todo:
            # A resumed run in the same process must not inherit what an earlier run's failed
            # reads left in GDAL's memory ("file does not exist") either.
            self._forget()
            (self._local if self.client is None else self._distributed)(todo, advance)

    def backoff(self, attempt: int) -> float:
        """Seconds before retrying a tile that failed on ``attempt`` (0: its first run):
        ``backoff_s × 4 × 2^attempt`` - past what GDAL's own retries of a request waited for
        the first retries - times a jitter in [0.5, 1.5], so tiles that failed together do not
        all come back together; at most :data:`MAX_RETRY_WAIT_S`."""
        return min(MAX_RETRY_WAIT_S, self.backoff_s * 4 * 2**attempt * self.rng.uniform(0.5, 1.5))

    def _start(self, tile: Tile, attempt: int) -> Pending:
        t0 = time.time()
        graph = self.build(tile)
        self.graph_s += time.time() - t0
        return Pending(tile, attempt, time.time(), graph)

    def _retry(self, p: Pending, error: BaseException) -> bool:
        """Whether the tile runs again (it is scheduled, after its backoff); else it is failed
        for good."""
        if p.attempt < self.retries:
            self.retried += 1
            wait = self.backoff(p.attempt)
            self.retry_wait_s += wait
            heapq.heappush(self._later, (time.monotonic() + wait, next(self._order), p.tile,
                                         p.attempt + 1))
            return True
        if self.salvage is not None and self.salvage(p.tile, error):
            heapq.heappush(self._later, (time.monotonic(), next(self._order), p.tile, 0))
            return True
        self.failed[p.tile.key] = f"{type(error).__name__}: {error}"[:500]
        return False

    def _due(self, queue: deque[tuple[Tile, int]], wait: bool) -> None:
        """Move the retries whose time has come to the front of ``queue`` (first the earliest
        one, waiting for it when ``wait``), after running ``reset`` where tiles compute."""
        if not self._later:
            return
        if wait:
            time.sleep(max(0.0, self._later[0][0] - time.monotonic()))
        due = []
        while self._later and self._later[0][0] <= time.monotonic():
            due.append(heapq.heappop(self._later)[2:])
        if not due:
            return
        self._forget()
        queue.extendleft(reversed(due))

    def _forget(self) -> None:
        """Run ``reset`` wherever tiles compute (each worker, or this process)."""
        if self.reset is None:
            return
        if self.client is None:
            self.reset()
        else:  # a worker that died meanwhile has nothing to forget
            self.client.run(self.reset, on_error="ignore")

    def _local(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        queue: deque[tuple[Tile, int]] = deque((t, 0) for t in todo)
        while queue or self._later:
            self._due(queue, wait=not queue)  # new tiles go on while a retry waits
            p = self._start(*queue.popleft())
            self.max_tasks = max(self.max_tasks, p.graph.tasks)
            try:
                (result,) = dask.compute(p.graph.graph)
                self.record(p, result)  # a manifest that cannot be written fails the tile
            except Exception as e:  # a tile's failure must not stop the others
                if self._retry(p, e):
                    continue
            advance()

    def _distributed(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        from distributed import as_completed

        client = self.client
        queue: deque[tuple[Tile, int]] = deque((t, 0) for t in todo)
        running: dict[Any, Pending] = {}
        done = as_completed(loop=client.loop)  # the given client, not a process default

        def submit() -> None:
            self._due(queue, wait=not queue and not running)
            while queue and len(running) < self.limit:
                p = self._start(*queue.popleft())
                future = client.compute(p.graph.graph)
                running[future] = p
                done.add(future)
            self.max_tasks = max(self.max_tasks, sum(p.graph.tasks for p in running.values()))

        submit()
        try:
            while running or queue or self._later:
                # Block on the tiles in flight, unless a retry waits: then look at the clock
                # now and then, so it starts on time without holding the others up.
                batch = done.next_batch(block=not self._later) if running else []
                if not batch and running:
                    time.sleep(_POLL_S)
                for future in batch:
                    p = running.pop(future)
                    try:
                        self.record(p, future.result())  # (a failed record fails the tile)
                    except Exception as e:  # a tile's failure must not stop the others
                        if not self._retry(p, e):
                            advance()
                    else:
                        advance()
                    future.release()
                submit()
        finally:
            for future in running:  # interrupted (Ctrl-C): leave nothing running for us
                future.cancel()
