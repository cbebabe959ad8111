"""Mask-first reads: a band block of a date is read only where that date's SCL leaves a clear pixel.

Each band of the cube is one odc-stac read task per spatial chunk, holding every time slice
(items fused per solar day). With ``mask.method: scl`` a slice whose SCL has no clear pixel
inside the AOI in a chunk - every pixel a cloud class of ``mask.scl_classes`` or SCL nodata - is
invalid at every pixel of that chunk whatever the band holds, and a dilation or buffer only takes
validity away. So the read task of each band waits for one small task per chunk that reduces the
chunk's SCL to a boolean per slice (:func:`clear_per_chunk`), and passes odc-loader an empty source
list for the slices it found all cloudy: their pixels stay the band's nodata without a request.

Every composite method (percentile, median, mean, first, last, medoid, count) reduces the valid
observations only, so the mosaic is the same byte for byte; the items, their order and the
provenance are unchanged, and SCL is read once (the mask uses the same chunk). A skipped band
asset is never opened: an asset that cannot be read, of a slice with no clear pixel in a chunk,
fails nothing there (its pixels could not count).

Every odc-stac load of the cube also opens its sources inside its read tasks
(:func:`open_in_reads`): odc-loader gives each (item, band) a task of its own that only builds
a reader object, ~130 tasks for a one-chunk tile of 24 items, each a scheduler round trip, whose
results then pull the read tasks towards the worker that ran most of them.

Only for cloud masks that read SCL alone (the other maskers need the band pixels), composites -
mosaics and the periods of a series (not the cube that :func:`s2mosaic.load` and
``observations`` hand to users, where band values of cloudy dates stay visible, nor gap-fill) -
and the odc-stac loader. Switched by ``runtime.prune_dates``
(``auto`` | ``off``). Where odc-loader builds its read tasks some other way than this module
knows, the reads are left as they are (logged once).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask._task_spec import Task, TaskRef
from dask.highlevelgraph import HighLevelGraph

from ._spec import MosaicSpec

__all__ = ["SclInvalid", "clear_per_chunk", "gate_reads", "open_in_reads", "prunes"]

log = logging.getLogger(__name__)


def prunes(spec: MosaicSpec) -> bool:
    """Whether composites (mosaics, series periods) of ``spec`` read bands mask-first
    (``runtime.prune_dates``)."""
    return (spec.runtime.prune_dates == "auto" and spec.mask.method == "scl"
            and spec.runtime.loader == "odc-stac")


#: What makes an SCL pixel invalid: a function of a ``(time, y, x)`` SCL block (a DataArray with
#: its ``nodata`` attr) to booleans, e.g. :func:`s2mosaic.masks.scl_invalid` with the mask's
#: classes bound (``functools.partial``: it travels to the workers).
SclInvalid = Callable[[xr.DataArray], xr.DataArray]


def clear_per_chunk(scl: xr.DataArray, invalid: SclInvalid, aoi: xr.DataArray | None = None,
                    ) -> da.Array:
    """``(time, chunks along y, chunks along x)`` booleans, one ``(time, 1, 1)`` block per
    spatial chunk of ``scl``: whether the slice has a pixel in the chunk that SCL (``invalid``
    false) and ``aoi`` leave valid - a superset of the mosaic's valid pixels (dilation, buffers
    and band nodata only take validity away)."""
    data = scl.data
    if not isinstance(data, da.Array) or len(data.chunks[0]) != 1:
        raise ValueError(f"SCL must be a Dask array with one chunk along time, got {data!r}")
    nodata = scl.attrs.get("nodata", 0)
    args: list[Any] = [data, "tyx"]
    if aoi is not None:
        args += [aoi.data, "yx"]
    return da.blockwise(
        functools.partial(_clear_block, invalid=invalid, nodata=nodata),
        "tyx", *args, adjust_chunks={"y": 1, "x": 1}, dtype=bool,
        meta=np.empty((0, 0, 0), dtype=bool))


def _clear_block(scl: np.ndarray, aoi: np.ndarray | None = None, *, invalid: SclInvalid,
                 nodata: float) -> np.ndarray:
    ok = ~np.asarray(invalid(xr.DataArray(scl, attrs={"nodata": nodata})).values)
    if aoi is not None:
        ok &= aoi[None]
    return np.asarray(ok.any(axis=(1, 2)))[:, None, None]


def open_in_reads(arr: da.Array) -> da.Array:
    """``arr`` (one variable of an ``odc.stac.load``) whose read task of each chunk opens its
    sources itself (:func:`_read_chunk`) instead of taking each from a task of its own (one per
    item and band, shared by the chunks: it only builds odc-loader's reader object). ``arr``
    itself where its graph is not odc-loader's per-chunk read tasks over such open tasks."""
    from odc.loader._builder import _dask_loader_tyx, _dask_open_reader

    graph = arr.__dask_graph__()
    layer = graph.layers.get(arr.name) if isinstance(graph, HighLevelGraph) else None
    if layer is None or not all(isinstance(t, Task) and t.func is _dask_loader_tyx
                                for t in layer.values()):
        return arr
    assert isinstance(graph, HighLevelGraph)
    sources: dict[Any, Any] = {}  # open task key -> its RasterSource
    opened: set[str] = set()
    for dep in graph.dependencies[arr.name]:
        for key, value in graph.layers[dep].items():
            if isinstance(value, tuple) and value and value[0] is _dask_open_reader:
                sources[key] = value[1]
                opened.add(dep)
    tasks: dict[Any, Any] = {}
    for key, task in layer.items():
        refs = task.args[0]
        if not all(isinstance(r, TaskRef) and r.key in sources for inner in refs for r in inner):
            return arr
        srcs = [[sources[r.key] for r in inner] for inner in refs]
        tasks[key] = Task(key, _read_chunk, srcs, *task.args[1:], _data_producer=True,
                          **task.kwargs)
    if any(opened & set(d) for k, d in graph.dependencies.items() if k != arr.name):
        return arr  # another layer takes the open tasks too: leave them
    layers: dict[str, Any] = {k: v for k, v in graph.layers.items() if k not in opened}
    deps = {k: set(v) - opened for k, v in graph.dependencies.items() if k not in opened}
    layers[arr.name] = tasks
    return da.Array(HighLevelGraph(layers, deps), arr.name, arr.chunks, meta=arr._meta)


def _read_chunk(srcs: Sequence[Sequence[Any]], gbt: Any, iyx: Any, prefix_dims: Any,
                postfix_dims: Any, cfg: Any, rdr: Any, env: Any, load_state: Any,
                selection: Any = None, *, clear: np.ndarray | None = None) -> np.ndarray:
    """odc-loader's read of one chunk (``_dask_loader_tyx``) from its ``RasterSource`` s, opened
    here; with ``clear`` (:func:`clear_per_chunk`'s block) the time slices it marks only."""
    from odc.loader._builder import _dask_loader_tyx, _dask_open_reader

    keep = [True] * len(srcs) if clear is None else clear.reshape(-1).tolist()
    readers = [[_dask_open_reader(s, rdr, env, load_state) for s in layer] if k else []
               for layer, k in zip(srcs, keep, strict=True)]
    return _dask_loader_tyx(readers, gbt, iyx, prefix_dims, postfix_dims, cfg, rdr, env,
                            load_state, selection)


def gate_reads(band: da.Array, clear: da.Array) -> da.Array:
    """``band`` (an odc-stac load, one chunk along time) whose read task of each chunk first
    takes that chunk's block of ``clear`` (:func:`clear_per_chunk`) and reads only the slices
    marked there; the others are left nodata. ``band`` itself where its graph is not odc-loader's
    per-chunk read tasks (as :func:`open_in_reads` makes them, which it applies first)."""
    band = open_in_reads(band)  # the same array where already done
    graph = band.__dask_graph__()
    layer = graph.layers.get(band.name) if isinstance(graph, HighLevelGraph) else None
    known = (isinstance(graph, HighLevelGraph) and layer is not None
             and len(band.chunks[0]) == 1 and clear.numblocks[1:] == band.numblocks[1:]
             and all(isinstance(t, Task) and t.func is _read_chunk for t in layer.values()))
    if not known:
        _unknown_graph()
        return band
    assert isinstance(graph, HighLevelGraph) and layer is not None
    name = f"prune-{band.name}-{clear.name}"
    tasks: dict[Any, Any] = {}
    for key, task in layer.items():
        idx = cast(tuple[Any, ...], key)[1:]  # (name, time block, y block, x block)
        new = (name, *idx)
        tasks[new] = Task(new, _read_chunk, *task.args, _data_producer=True,
                          clear=TaskRef((clear.name, *idx)), **task.kwargs)
    layers: dict[str, Any] = {k: v for k, v in graph.layers.items() if k != band.name}
    deps = {k: set(v) for k, v in graph.dependencies.items() if k != band.name}
    clear_graph = clear.__dask_graph__()
    assert isinstance(clear_graph, HighLevelGraph)
    layers.update(clear_graph.layers)
    deps.update({k: set(v) for k, v in clear_graph.dependencies.items()})
    layers[name] = tasks
    deps[name] = set(graph.dependencies[band.name]) | {clear.name}
    return da.Array(HighLevelGraph(layers, deps), name, band.chunks, meta=band._meta)


@functools.cache
def _unknown_graph() -> None:
    log.warning("mask-first reads are off: odc-loader's read tasks are not the ones s2mosaic "
                "knows (another odc-loader version?); every date is read")
