"""Chunked windows with a halo: run a per-window function over (time, y, x) Dask arrays so
that the result across chunk edges equals one call on the whole array.

Shared by the cloud maskers that look at neighbouring pixels (OmniCloudMask, s2cloudless);
it knows nothing of masks or specs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["dask_inputs", "map_overlap_exact", "plan_chunks"]


def dask_inputs(cube: xr.Dataset, names: Sequence[str]) -> list[da.Array]:
    """The variables ``names`` as Dask arrays with one chunking (that of the first Dask-backed
    one; NumPy-backed variables are wrapped in it)."""
    data = [cube[n].data for n in names]
    ref = next((d for d in data if isinstance(d, da.Array)), None)
    chunks: Any = ref.chunks if ref is not None else -1
    out = []
    for d in data:
        if not isinstance(d, da.Array):
            d = da.from_array(np.asarray(d), chunks=chunks)
        elif d.chunks != chunks:
            d = d.rechunk(chunks)
        out.append(d)
    return out


def plan_chunks(chunks: tuple[int, ...], depth: int, multiple: int = 1) -> tuple[int, ...]:
    """Chunks along one axis on which a halo of ``depth`` works and every chunk but the last
    starts at a multiple of ``multiple``: each chunk at least ``depth`` long (the last merged
    into its neighbour otherwise). ``chunks`` is returned unchanged when it already fits."""
    n = sum(chunks)
    aligned = all(c % multiple == 0 for c in chunks[:-1])
    if aligned and (len(chunks) == 1 or min(chunks) >= depth):
        return chunks
    size = max(chunks[0], depth, 1)
    size = -(-size // multiple) * multiple
    out = [size] * (n // size)
    if n % size:
        out.append(n % size)
    if len(out) > 1 and out[-1] < depth:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def map_overlap_exact(func: Callable[..., np.ndarray], arrays: Sequence[da.Array], *,
                      depth: tuple[int, int], dtype: Any, multiple: tuple[int, int] = (1, 1),
                      annotate: AbstractContextManager[Any] | None = None,
                      name: str | None = None, **kwargs: Any) -> da.Array:
    """Run ``func`` on windows of (time, y, x) ``arrays``: each chunk plus ``depth`` (y, x)
    pixels of its neighbours, trimmed after.

    No padding beyond the array edges (``boundary="none"``): a window there is just shorter, as
    when the whole array is processed at once. Chunks are first made at least ``depth`` long
    and aligned to ``multiple`` (y, x) so that every window starts at a multiple of it (for
    in-window decimation); the result comes back in the input's chunks. Only the ``func`` layer
    is built inside ``annotate`` (e.g. ``dask.annotate(resources={"GPU": 1})``).
    """
    first = arrays[0]
    target = (first.chunks[0],
              plan_chunks(first.chunks[1], depth[0], multiple[0]),
              plan_chunks(first.chunks[2], depth[1], multiple[1]))
    if target != first.chunks:
        arrays = [a.rechunk(target) for a in arrays]
    # An axis in one chunk has no neighbours to borrow from.
    d = {0: 0, 1: depth[0] if len(target[1]) > 1 else 0, 2: depth[1] if len(target[2]) > 1 else 0}
    boundary = {0: "none", 1: "none", 2: "none"}
    padded = [da.overlap.overlap(a, depth=d, boundary=boundary, allow_rechunk=False)
              for a in arrays]
    with annotate if annotate is not None else contextlib.nullcontext():
        out = da.map_blocks(func, *padded, dtype=dtype, meta=np.array((), dtype=dtype),
                            token=name, **kwargs)
    out = da.overlap.trim_internal(out, d, boundary=boundary)
    return out.rechunk(first.chunks) if target != first.chunks else out
