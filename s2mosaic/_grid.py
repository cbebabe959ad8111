"""The one place that decides the output pixel grid, and which output pixels lie in the AOI."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pystac
import shapely
import xarray as xr
from affine import Affine
from odc.geo import CRS, AnchorEnum
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from ._aoi import AOI
from ._crs import grid_crs
from ._items import footprint, resolve_band
from ._spec import MosaicSpec
from .errors import ArgumentError, DataError, SpecError

__all__ = ["Footprints", "Tile", "aoi_mask", "native_geobox", "output_geobox", "pad_geobox",
           "tiles"]

def output_geobox(spec: MosaicSpec, items: Sequence[pystac.Item] = ()) -> GeoBox:
    """The output GeoBox: the AOI's extent in the spec's CRS at the spec's resolution.

    Pixel edges sit on multiples of the resolution (``anchor=edge``), which is the native
    Sentinel-2 grid in the tiles' own UTM zone. With ``grid.resolution: native`` the pixel grid
    of the first item's first band is used instead (in its CRS: the same pixel size and
    alignment, so source pixels are kept one to one; in another CRS: its pixel size).
    """
    aoi_geom = spec.aoi.odc_geometry()
    if spec.grid.resolution == "native":
        if not items:
            raise SpecError("grid.resolution", "native",
                            "needs at least one item to take the native grid from")
        ref = native_geobox(items[0], _first_band_key(items[0], spec))
        crs = CRS(spec.grid.crs) if spec.grid.crs else ref.crs
        if crs == ref.crs:
            return _snap(ref, aoi_geom.to_crs(crs).boundingbox)
        resolution: Any = ref.resolution
    else:
        crs = grid_crs(spec.aoi, spec.grid.crs)
        resolution = spec.grid.resolution
    try:
        return GeoBox.from_geopolygon(aoi_geom.to_crs(crs), resolution=resolution, crs=crs,
                                      anchor=AnchorEnum.EDGE)
    except (ValueError, ZeroDivisionError) as e:
        raise SpecError("grid", {"crs": str(crs), "resolution": spec.grid.resolution},
                        f"cannot build an output grid for the AOI ({e}); check that the "
                        "resolution is in the CRS's units (degrees for EPSG:4326)") from None


def _snap(ref: GeoBox, bbox: Any) -> GeoBox:
    """The smallest window of ``ref``'s (possibly unbounded) pixel grid that covers ``bbox``."""
    inv = ~ref.affine
    cols, rows = zip(*(inv * xy for xy in ((bbox.left, bbox.top), (bbox.right, bbox.bottom),
                                            (bbox.left, bbox.bottom), (bbox.right, bbox.top))),
                     strict=True)
    eps = 1e-6  # a bbox edge on a pixel edge must not add a row/column of float noise
    c0, r0 = math.floor(min(cols) + eps), math.floor(min(rows) + eps)
    c1, r1 = math.ceil(max(cols) - eps), math.ceil(max(rows) - eps)
    return GeoBox((r1 - r0, c1 - c0), ref.affine @ Affine.translation(c0, r0), ref.crs)


def _first_band_key(item: pystac.Item, spec: MosaicSpec) -> str:
    return resolve_band(item, spec.bands[0])


def native_geobox(item: pystac.Item, asset_key: str) -> GeoBox:
    """The pixel grid of one asset from its (or the item's) ``proj:`` fields."""
    asset = item.assets.get(asset_key)
    fields: dict[str, Any] = dict(item.properties)
    if asset is not None:
        fields.update({k: v for k, v in asset.extra_fields.items() if k.startswith("proj:")})
    transform, shape = fields.get("proj:transform"), fields.get("proj:shape")
    code = fields.get("proj:code") or (f"EPSG:{fields['proj:epsg']}" if fields.get("proj:epsg") else None)
    if not (transform and shape and code):
        raise DataError(
            f"item {item.id!r} asset {asset_key!r} has no complete projection info "
            "(proj:transform, proj:shape and proj:epsg/proj:code); grid.resolution: native needs "
            "it — give a numeric grid.resolution instead"
        )
    return GeoBox(tuple(shape), Affine(*transform[:6]), CRS(code))


def aoi_mask(geobox: GeoBox, aoi: AOI, chunks: int) -> xr.DataArray:
    """A lazy boolean (y, x) DataArray: True where the pixel centre lies inside the AOI polygon."""
    geom = aoi.odc_geometry().to_crs(geobox.crs)
    if geom.contains(geobox.extent):
        data: Any = da.ones(geobox.shape.yx, dtype=bool, chunks=chunks)
    else:
        geojson = geom.json
        data = da.map_blocks(_rasterize_block, dtype=bool, chunks=da.core.normalize_chunks(
            chunks, geobox.shape.yx), geojson=geojson, affine=tuple(geobox.affine)[:6],
            meta=np.array((), dtype=bool))
    return xr.DataArray(data, dims=geobox.dimensions, coords=xr_coords(geobox), name="aoi")


def _rasterize_block(*, geojson: dict[str, Any], affine: tuple[float, ...],
                     block_info: dict[Any, Any] | None = None) -> np.ndarray:
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import geometry_mask

    assert block_info is not None
    info = block_info[None]
    (y0, y1), (x0, x1) = info["array-location"]
    transform = Affine(*affine) @ Affine.translation(x0, y0)
    with warnings.catch_warnings():
        # rasterio's scratch in-memory raster warns that it has no geotransform; ours is passed.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return geometry_mask([geojson], out_shape=(y1 - y0, x1 - x0), transform=transform,
                             invert=True)


@dataclass(frozen=True)
class Tile:
    """One run tile: a window of the output grid that is computed and written on its own."""

    row: int
    col: int
    y: slice
    """Rows of the output grid (``start:stop``)."""
    x: slice
    """Columns of the output grid."""
    geobox: GeoBox
    """The tile's own grid (the output grid's pixels in the window)."""

    @property
    def key(self) -> str:
        """``"<row>_<col>"``: how the manifest and run report name the tile."""
        return f"{self.row}_{self.col}"


def tiles(geobox: GeoBox, size: int) -> list[Tile]:
    """Split ``geobox`` into ``size`` × ``size`` pixel tiles, row-major (edge tiles are smaller).

    With ``size`` a multiple of the Zarr chunk size, every tile covers whole chunks, so no two
    tiles ever write the same chunk.
    """
    if size < 1:
        raise ArgumentError(f"tiles: size must be >= 1 pixel, got {size}")
    h, w = geobox.shape.yx
    out = []
    for r, y0 in enumerate(range(0, h, size)):
        for c, x0 in enumerate(range(0, w, size)):
            ys, xs = slice(y0, min(y0 + size, h)), slice(x0, min(x0 + size, w))
            out.append(Tile(r, c, ys, xs, geobox[ys, xs]))
    return out


def pad_geobox(geobox: GeoBox, pixels: tuple[int, int]) -> GeoBox:
    """``geobox`` grown by ``(y, x)`` pixels on every side, on the same pixel grid."""
    py, px = pixels
    h, w = geobox.shape.yx
    return GeoBox((h + 2 * py, w + 2 * px), geobox.affine @ Affine.translation(-px, -py),
                  geobox.crs)


class Footprints:
    """The footprints (EPSG:4326) of some items, indexed to pick those that touch a grid.

    Used per run tile and per chip: the index is built once, each query is a tree lookup.
    Items without a geometry touch everything.
    """

    def __init__(self, items: Sequence[pystac.Item]) -> None:

        self.items = list(items)
        shapes = [footprint(i) for i in self.items]
        self._open = [n for n, g in enumerate(shapes) if g is None]
        self._index = [n for n, g in enumerate(shapes) if g is not None]
        self._tree = shapely.STRtree([shapes[n] for n in self._index])

    def touching(self, geobox: GeoBox, margin: int = 2) -> list[pystac.Item]:
        """Items whose footprint touches ``geobox`` grown by ``margin`` pixels, in item order.

        The margin errs on the side of reading: footprints are simplified polygons, and a scene
        that only grazes the box changes no pixel centre.
        """
        # wrapdateline: a box across 180° becomes two lon/lat parts, not a band around the world
        area = pad_geobox(geobox, (margin, margin)).extent.to_crs("EPSG:4326",
                                                                   wrapdateline=True).geom
        hits = {self._index[k] for k in self._tree.query(area, predicate="intersects")}
        return [self.items[n] for n in sorted(hits.union(self._open))]
