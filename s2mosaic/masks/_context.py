"""What every cloud masker is given (:class:`MaskContext`), what it is (:class:`CloudMasker`),
and the cube facts they all read: nodata and the pixel size in metres."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from .._spec import MaskSpec
from ..errors import ArgumentError

__all__ = ["CloudMasker", "MaskContext", "nodata_mask", "pixel_size_m"]

_METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class MaskContext:
    """What a masker needs beyond the cube and the spec."""

    geobox: GeoBox | None = None
    """The output grid (for metres → pixels); None: read from the cube's coordinates."""
    gpu: bool | None = None
    """Whether the cluster has GPU workers (tasks needing a GPU are then annotated with the Dask
    resource ``GPU``). None: ask the current ``distributed`` client, if any."""
    models: Any = None
    """OmniCloudMask only: a list of ``torch.nn.Module`` used instead of the weights directory
    (tests, custom models). They travel inside the graph, so keep them for local schedulers;
    Dask names their tasks by the models' identity, not by hashing their weights."""


class CloudMasker(Protocol):
    """A cloud masker: lazy boolean ``(time, y, x)``, True where an observation is cloudy or
    otherwise unusable according to that masker (its own nodata included)."""

    def __call__(self, cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext) -> xr.DataArray: ...


def nodata_mask(cube: xr.Dataset, bands: Sequence[str]) -> xr.DataArray:
    """True where any of ``bands`` is its ``nodata`` value (attr, default 0) or NaN.

    Float bands are nodata where NaN whatever the attr says (a NaN never equals a nodata value,
    so ``== nodata`` alone would call it clear).
    """
    out: xr.DataArray | None = None
    for name in bands:
        var = cube[name]
        nodata = var.attrs.get("nodata", 0)
        nodata = 0.0 if nodata is None else float(nodata)
        bad = var.isnull() if np.issubdtype(var.dtype, np.floating) else None
        if not math.isnan(nodata):
            bad = var == nodata if bad is None else bad | (var == nodata)
        if bad is None:  # integer data with a NaN nodata attr: nothing is nodata
            bad = xr.zeros_like(var, dtype=bool)
        out = bad if out is None else out | bad
    if out is None:
        raise ArgumentError("nodata_mask: no bands given; pass the cube's band names")
    return out


def _spatial_dims(cube: xr.Dataset | xr.DataArray) -> tuple[str, str]:
    """The cube's (y, x) dimension names: the GeoBox's, else ``y``/``x``."""
    try:
        dims = cube.odc.spatial_dims
    except Exception:  # no odc accessor or no CRS
        dims = None
    return (str(dims[0]), str(dims[1])) if dims else ("y", "x")


def pixel_size_m(cube: xr.Dataset | xr.DataArray | None = None,
                 geobox: GeoBox | None = None) -> tuple[float, float]:
    """(y, x) pixel size in metres of ``geobox`` (or of the cube's ``y``/``x`` coordinates).

    Geographic grids (degrees) are converted at the grid's centre latitude.
    """
    if geobox is not None:
        res = geobox.resolution
        ry, rx = abs(float(res.y)), abs(float(res.x))
        geographic = bool(geobox.crs is not None and geobox.crs.geographic)
        lat = float(geobox.extent.centroid.to_crs("EPSG:4326").coords[0][1]) if geographic else 0.0
    elif cube is not None and all(cube.sizes.get(d, 0) > 1 for d in _spatial_dims(cube)):
        cy, cx = (cube[d] for d in _spatial_dims(cube))  # latitude/longitude on lon/lat grids
        ry = abs(float(cy[1] - cy[0]))
        rx = abs(float(cx[1] - cx[0]))
        crs = getattr(cube, "odc", None)
        geographic = False
        try:
            geographic = bool(crs is not None and crs.crs is not None and crs.crs.geographic)
        except Exception:  # no odc accessor or no CRS: treat as metres
            geographic = False
        lat = float(cy.mean()) if geographic else 0.0
    else:
        got = "no cube" if cube is None else f"a cube with sizes {dict(cube.sizes)}"
        raise ArgumentError(f"pixel_size_m: pixel size unknown ({got}, no geobox); pass the "
                            "output geobox, or a cube with at least 2 y and 2 x coordinates")
    if geographic:
        return (ry * _METRES_PER_DEGREE, rx * _METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return ry, rx
