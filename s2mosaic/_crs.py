"""The output CRS of an AOI, and the checks that an output grid can be meant - before any work.

Ground floor for :mod:`s2mosaic._spec` (which validates with it) and :mod:`s2mosaic._grid`
(which builds the grid in that CRS): it knows AOIs and CRSs, not specs or items.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import shapely
from odc.geo import CRS
from odc.geo.geom import BoundingBox

from ._aoi import AOI
from .errors import SpecError

__all__ = ["check_grid", "grid_crs"]

#: Projected CRSs continuous across 180°, offered when an AOI lies across it.
_ACROSS_180 = ("leave grid.crs unset (the UTM zone of the AOI's centre{utm}) or give a projected "
               "CRS that is continuous across 180°, such as EPSG:3832 (PDC Mercator)")


def grid_crs(aoi: AOI, crs: str | None) -> CRS:
    """``crs``, or by default the UTM zone (WGS 84) of the AOI's centre.

    The centre is the centroid of the AOI taken across 180° where the AOI lies across it (see
    :meth:`AOI.unwrapped`), so an AOI split at the antimeridian gets zone 60 or 1.
    """
    if crs:
        return CRS(crs)
    lon, lat = aoi.centre
    zone = min(int((lon + 180.0) // 6.0), 59) + 1
    return CRS(f"EPSG:{(32600 if lat >= 0 else 32700) + zone}")


def check_grid(aoi: AOI, crs: str | None, resolution: float | str, max_pixels: int) -> None:
    """Raise :class:`SpecError` for an output grid that cannot be meant: a geographic CRS for an
    AOI across 180°, an AOI that the CRS cannot hold, or more than ``max_pixels`` pixels.

    Cheap (the AOI's outline is projected, no grid is built), so specs fail at validation, well
    before any search.
    """
    out = grid_crs(aoi, crs)
    shown = crs if crs is not None else f"{out} (the default)"
    if aoi.crosses_antimeridian and out.geographic:
        raise SpecError("grid.crs", crs, f"the AOI lies across the antimeridian (180°), where "
                        f"{out}'s longitudes jump from 180 to -180; "
                        + _ACROSS_180.format(utm=f", here {grid_crs(aoi, None)}"))
    lonlat = aoi.odc_geometry().geom
    geom = _project(lonlat, out)
    bounds = BoundingBox(*geom.bounds)
    if not all(math.isfinite(v) for v in bounds) or _folds(lonlat, geom, out):
        raise SpecError("grid.crs", shown, f"the AOI (bbox {list(aoi.bbox)}) folds over or tears "
                        f"in {out} (it reaches too far from where the CRS is defined); give a CRS "
                        "made for the area, e.g. EPSG:4326 for the whole globe or a continental "
                        "equal-area CRS")
    if aoi.crosses_antimeridian and geom.area < 0.1 * bounds.span_x * bounds.span_y * _fill(aoi):
        raise SpecError("grid.crs", shown, f"the AOI lies across the antimeridian (180°), and in "
                        f"{out} its two sides fall on opposite edges of the map; "
                        + _ACROSS_180.format(utm=f", here {grid_crs(aoi, None)}"))
    if resolution == "native":
        return  # the pixel size comes from the first item, known after the search
    assert isinstance(resolution, float | int)
    n = math.ceil(bounds.span_x / resolution + 1) * math.ceil(bounds.span_y / resolution + 1)
    if n > max_pixels:
        axis = out.proj.axis_info[0]
        units = "degrees" if out.geographic else "metres" if axis.unit_name == "metre" else (
            f"{axis.unit_name} units")
        raise SpecError("grid.resolution", resolution,
                        f"the output grid of the AOI in {out} at {resolution:g} {units} would "
                        f"have {n:.3g} pixels ({bounds.span_x / resolution:.0f} x "
                        f"{bounds.span_y / resolution:.0f}), more than grid.max_pixels "
                        f"({max_pixels:.3g}); give a coarser resolution (in {units}), a smaller "
                        "AOI, or raise grid.max_pixels")


def _project(lonlat: Any, crs: CRS) -> Any:
    """A shapely geometry from EPSG:4326 (lon, lat) to ``crs`` (x, y), vertex by vertex."""
    return shapely.transform(lonlat, _from_lonlat(crs).transform, interleaved=False)


@functools.lru_cache(maxsize=16)
def _from_lonlat(crs: CRS) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", crs.proj, always_xy=True)


def _folds(lonlat: Any, projected: Any, crs: CRS) -> bool:
    """True when a projected (metric) AOI has far less area than on the ellipsoid: the CRS folds
    it over itself (a transverse Mercator far from its meridian) or tears it."""
    if crs.geographic:
        return False
    # Cylindrical equal-area: exact areas for lon/lat polygons, whole globe and poles included.
    true_m2 = _project(lonlat, CRS("+proj=cea +ellps=WGS84 +units=m +no_defs")).area
    factor = crs.proj.axis_info[0].unit_conversion_factor
    return bool(projected.area * factor ** 2 < 0.5 * true_m2)


def _fill(aoi: AOI) -> float:
    """How much of its bbox the AOI fills where it is continuous (in lon/lat across 180°)."""
    geom = aoi.unwrapped()
    w, s, e, n = geom.bounds
    return float(geom.area / ((e - w) * (n - s)))
