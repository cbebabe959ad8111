"""The tile loop of a run: which items a tile needs, its write graph, and its scheduling.

A run (:mod:`s2mosaic._run`) splits its output grid into tiles aligned with the Zarr chunks.
:class:`TileGrid` knows each tile's context box (the tile plus the margin its masks need,
``masks.context_pixels``) and the items that touch it; :func:`block_writes` turns a tile's lazy
dataset into one write task per chunk; :class:`TileLoop` runs the tiles - at most ``limit`` in
flight over a ``distributed`` client, one at a time without one - retrying a failed tile up to
``retries`` times and handing each finished one to the runner to record. The loop knows nothing
of what a tile computes (mosaic, series, gap-fill): the runner gives it a graph per tile.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from . import _write
from ._cluster import keep_annotations
from ._grid import Footprints, Tile

__all__ = ["Pending", "TileGraph", "TileGrid", "TileLoop", "block_writes", "tile_arrays"]


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
    ``empty()`` zeros for each when the tile has nothing to compute (``ds`` None)."""
    if ds is None:
        return [(n, empty()) for n in names]
    arrays = [ds[n].data for n in names]
    with keep_annotations(ds):
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
    """Run tiles: at most ``limit`` in flight, ``retries`` retries each; failures are kept."""

    client: Any
    limit: int
    retries: int
    build: Callable[[Tile], TileGraph]
    record: Callable[[Pending, list[Any]], None]
    retried: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    max_tasks: int = 0
    graph_s: float = 0.0

    def run(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        if todo:
            (self._local if self.client is None else self._distributed)(todo, advance)

    def _start(self, tile: Tile, attempt: int) -> Pending:
        t0 = time.time()
        graph = self.build(tile)
        self.graph_s += time.time() - t0
        return Pending(tile, attempt, time.time(), graph)

    def _retry(self, p: Pending, error: BaseException) -> bool:
        """Whether to run the tile again; else it is failed for good."""
        if p.attempt < self.retries:
            self.retried += 1
            return True
        self.failed[p.tile.key] = f"{type(error).__name__}: {error}"[:500]
        return False

    def _local(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        for tile in todo:
            for attempt in range(self.retries + 1):
                p = self._start(tile, attempt)
                self.max_tasks = max(self.max_tasks, p.graph.tasks)
                try:
                    (result,) = dask.compute(p.graph.graph)
                except Exception as e:  # a tile's failure must not stop the others
                    if self._retry(p, e):
                        continue
                else:
                    self.record(p, result)
                break
            advance()

    def _distributed(self, todo: Sequence[Tile], advance: Callable[[], None]) -> None:
        from distributed import as_completed

        client = self.client
        queue: deque[tuple[Tile, int]] = deque((t, 0) for t in todo)
        running: dict[Any, Pending] = {}
        done = as_completed(loop=client.loop)  # the given client, not a process default

        def submit() -> None:
            while queue and len(running) < self.limit:
                p = self._start(*queue.popleft())
                future = client.compute(p.graph.graph)
                running[future] = p
                done.add(future)
            self.max_tasks = max(self.max_tasks, sum(p.graph.tasks for p in running.values()))

        submit()
        try:
            for future in done:
                p = running.pop(future)
                try:
                    result = future.result()
                except Exception as e:  # a tile's failure must not stop the others
                    if self._retry(p, e):
                        queue.appendleft((p.tile, p.attempt + 1))
                    else:
                        advance()
                else:
                    self.record(p, result)
                    advance()
                future.release()
                submit()
        finally:
            for future in running:  # interrupted (Ctrl-C): leave nothing running for us
                future.cancel()
