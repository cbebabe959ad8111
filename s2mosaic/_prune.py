"""Tile-level date pruning: read a tile's SCL first, then the bands only of the dates that count.

A time slice of a tile's cube (items fused per solar day) whose SCL has no clear pixel inside the
AOI in the tile - after the mask's dilation or buffer, computed on the tile's context box as the
mosaic computes it - is invalid at every pixel of the tile. It adds no observation to any pixel,
whatever the composite method (percentile, median, mean, first, last, medoid, count all reduce
the valid observations only, in time order), so dropping its items leaves the tile's bytes as
they were. Dropping a slice drops all its items, so the remaining slices fuse the same items in
the same order. The pre-pass is one SCL read per tile (the same read path as the cube's:
native 20 m where aligned, signing, :class:`~s2mosaic.errors.SceneReadError`); where it fails
the tile is built unpruned, so the failure meets the tile's retries and scene drops as before.

Only for cloud masks that read SCL alone (``mask.method: scl``): the other maskers need the
band pixels. Switched by ``runtime.prune_dates`` (``auto`` | ``off``). This is the coarse first
step of issue 18's mask-first reads; the per-chunk version is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pystac
from odc.geo.geobox import GeoBox

from ._cube import SCL_VAR, load_cube, slice_keys
from ._grid import aoi_mask
from ._spec import MosaicSpec
from .masks import MaskContext, valid_mask

__all__ = ["clear_slices", "pruned_items", "prunes"]


def prunes(spec: MosaicSpec) -> bool:
    """Whether a mosaic run of ``spec`` prunes its tiles' dates (``runtime.prune_dates``)."""
    return spec.runtime.prune_dates == "auto" and spec.mask.method == "scl"


def clear_slices(spec: MosaicSpec, items: Sequence[pystac.Item], box: GeoBox,
                 inner: tuple[slice, slice]) -> Any:
    """Lazy ``(time,)`` booleans: whether each time slice of the cube of ``items`` on ``box``
    has at least one pixel in ``box[inner]`` that SCL, the mask's dilation/buffer and the AOI
    leave valid (band nodata aside: a superset of the mosaic's valid pixels). Reads SCL only."""
    cube = load_cube(items, spec, box)
    scl = cube[[SCL_VAR]]
    valid = (valid_mask(scl, [SCL_VAR], spec.mask, MaskContext(geobox=box))
             & aoi_mask(box, spec.aoi, spec.runtime.chunks))
    dy, dx = valid.dims[-2:]
    return valid.isel({dy: inner[0], dx: inner[1]}).any(dim=(dy, dx)).data


def pruned_items(spec: MosaicSpec, items: Sequence[pystac.Item], box: GeoBox,
                 inner: tuple[slice, slice], compute: Callable[[list[Any]], list[Any]],
                 ) -> list[pystac.Item]:
    """``items`` less those of the time slices :func:`clear_slices` finds all invalid,
    computed with ``compute`` (the run's client or dask's scheduler)."""
    (clear,) = compute([clear_slices(spec, items, box, inner)])
    keys = slice_keys(items, spec)
    ordered = sorted(set(keys))
    keep = {k for k, c in zip(ordered, np.asarray(clear), strict=True) if c}
    return [i for i, k in zip(items, keys, strict=True) if k in keep]
