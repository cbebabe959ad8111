"""Open datasets kept per worker thread, so that GDAL decodes a COG block once for the chunks
that share it.

odc-loader opens the file for every read and closes it after, and closing a GDAL dataset drops
the blocks it decoded from GDAL's block cache. A chunk's window rarely falls on the file's
internal tiles (256 or 1024 px), so the blocks along a chunk edge are decoded once for each
chunk they touch: measured on the demo COGs (256 px blocks) at 1024 px chunks, 1.23× the decode
time of each block once; with the datasets kept, 1.05×.

Here each worker thread keeps its last :data:`PER_THREAD` datasets (GDAL datasets are not
thread-safe: a thread reads only what it opened). Local files are keyed by path, size and
modification time (a file rewritten between runs is opened afresh); URLs by the URL - a signed
URL carries its token, so a re-signed read opens anew. A dataset whose read failed is closed,
not kept. :func:`close_datasets` (the tile loop's reset before a tile is retried, beside
``VSICurlClearCache``) has every thread close what it keeps before its next read; so does the
end of a run in the process that ran it (a notebook's synchronous run leaves no file open).

GDAL's block cache is process-wide and, unset, 5 % of the machine's memory per process; the
run's GDAL options cap it (``GDAL_CACHEMAX``, :data:`s2mosaic._cube.GDAL_SETTINGS`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import rasterio

__all__ = ["PER_THREAD", "close_datasets", "kept"]

#: Datasets each worker thread keeps open (a tile's chunks read its items' assets in turn).
PER_THREAD = 128

_generation = 0  # close_datasets() bumps it; a thread whose datasets are older closes them


class _Kept(threading.local):
    def __init__(self) -> None:
        self.open: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.generation = _generation


_kept = _Kept()


def close_datasets() -> None:
    """Have every thread of this process close the datasets it keeps, before its next read."""
    global _generation
    _generation += 1
    _close_all()


def _close_all() -> None:
    while _kept.open:
        _, ds = _kept.open.popitem(last=False)
        ds.close()
    _kept.generation = _generation


def _key(uri: str) -> tuple[Any, ...]:
    path = uri.removeprefix("file://")
    if "://" in path or path.startswith("/vsi"):
        return (uri,)
    try:
        st = os.stat(path)
    except OSError:
        return (uri,)  # rasterio.open says what is wrong with it
    return (uri, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def kept(uri: str) -> Iterator[Any]:
    """``rasterio.open(uri)`` (``sharing=False``, as odc-loader opens), kept open by this
    thread after the block (closed instead where the block raised)."""
    if _kept.generation != _generation:
        _close_all()
    key = _key(uri)
    ds = _kept.open.pop(key, None)
    if ds is None or ds.closed:
        ds = rasterio.open(uri, "r", sharing=False)
    try:
        yield ds
    except BaseException:
        ds.close()
        raise
    _kept.open[key] = ds
    while len(_kept.open) > PER_THREAD:
        _kept.open.popitem(last=False)[1].close()
