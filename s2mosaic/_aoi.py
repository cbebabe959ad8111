"""Areas of interest: parse a bbox, WKT, GeoJSON or GeoPackage into one EPSG:4326 polygon.

An AOI across the antimeridian is stored as GeoJSON wants it (RFC 7946): a MultiPolygon split at
180°. A bbox with west > east means that box. :meth:`AOI.unwrapped` puts such an AOI back into
one continuous longitude range (e.g. 179.5 to 180.5) for its centre and extent.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
import shapely.geometry
from shapely.geometry.base import BaseGeometry

from .errors import SpecError

__all__ = ["AOI"]

_FORMS = (
    "a bbox [west, south, east, north] in EPSG:4326 (west > east: across 180°), a WKT polygon, a GeoJSON mapping, "
    "or a path to a .geojson/.json/.gpkg file"
)
_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg")
#: Longest AOI edge (degrees, about 1 km) before projecting: keeps projected edges on the curve.
_DENSIFY_DEG = 0.01


@dataclass(frozen=True)
class AOI:
    """An area of interest as a (multi)polygon in EPSG:4326 plus where it came from."""

    wkt: str
    """The polygon in EPSG:4326 (lon/lat) as WKT."""
    source: str = field(compare=False)
    """How the user gave it (bbox text, WKT, file path), for messages and provenance."""

    def __dask_tokenize__(self) -> object:
        # `source` is informational (compare=False): equal AOIs must give equal task names.
        return ("s2mosaic.AOI", self.wkt)

    @property
    def geometry(self) -> BaseGeometry:
        return shapely.from_wkt(self.wkt)

    @property
    def bbox(self) -> tuple[float, ...]:
        """(west, south, east, north) in degrees; west > east when the AOI crosses 180°."""
        w, s, e, n = (float(v) for v in self.unwrapped().bounds)
        return (_wrap(w), s, _wrap(e) if e > 180 else e, n)

    @property
    def crosses_antimeridian(self) -> bool:
        """True when the AOI's shortest longitude range runs across 180° (see :meth:`unwrapped`)."""
        return _antimeridian_cut(self.geometry) is not None

    def unwrapped(self) -> BaseGeometry:
        """The geometry in one continuous longitude range: across 180°, the parts west of it are
        moved by +360° (a MultiPolygon split at 180° becomes one area again, lon up to 540)."""
        geom = self.geometry
        cut = _antimeridian_cut(geom)
        if cut is None:
            return geom
        parts = [shapely.transform(p, _east) if p.bounds[0] < cut else p
                 for p in _parts(geom)]
        return shapely.union_all(parts)

    @property
    def centre(self) -> tuple[float, float]:
        """(lon, lat) of the AOI's centroid, taken across 180° where the AOI lies across it;
        lon in [-180, 180). Picks the default UTM zone."""
        c = self.unwrapped().centroid
        return _wrap(float(c.x)), float(c.y)

    def to_geojson(self) -> dict[str, Any]:
        return dict(shapely.geometry.mapping(self.geometry))

    def odc_geometry(self) -> Any:
        """The AOI as an ``odc.geo.geom.Geometry`` in EPSG:4326, its edges densified to 0.01°.

        AOI edges are straight in lon/lat (RFC 7946); projected, they curve, and a polygon of
        the corners alone would cut the curve off (a 5° box in UTM loses 7 km of its north edge).
        """
        from odc.geo.geom import Geometry

        return Geometry(shapely.segmentize(self.geometry, _DENSIFY_DEG), crs="EPSG:4326")

    @staticmethod
    def looks_like_path(text: str) -> bool:
        return text.strip().lower().endswith(_VECTOR_SUFFIXES)

    @classmethod
    def parse(cls, value: Any) -> AOI:
        """Parse any supported AOI form; raises :class:`SpecError` (field ``aoi``) otherwise."""
        if isinstance(value, AOI):
            return value
        if isinstance(value, Path) or (isinstance(value, str) and cls.looks_like_path(value)):
            return cls._from_file(Path(value))
        if isinstance(value, str):
            try:
                geom = shapely.from_wkt(value)
            except shapely.errors.GEOSException:
                raise SpecError("", value, f"not valid WKT; expected {_FORMS}") from None
            return cls._checked(geom, value.strip()[:80])
        if isinstance(value, Mapping):
            return cls._checked(_geojson_geometry(value), "GeoJSON")
        if isinstance(value, Sequence) and len(value) == 4:
            return cls._from_bbox(value)
        raise SpecError("", value, f"expected {_FORMS}")

    @classmethod
    def _from_bbox(cls, value: Sequence[Any]) -> AOI:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise SpecError("", list(value), "a bbox must be four numbers [west, south, east, north]")
        w, s, e, n = (float(v) for v in value)
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
            raise SpecError("", [w, s, e, n], "a bbox must be [west, south, east, north] in degrees "
                            "with -180 <= west, east <= 180 and -90 <= south < north <= 90 (west > "
                            "east: the box across the antimeridian, 180°)")
        if w == e or s == n or (w, e) == (180, -180):
            raise SpecError("", [w, s, e, n], "the bbox has no area (west == east or south == "
                            "north); an AOI must be an area: -180 <= west, east <= 180 with west "
                            "!= east, -90 <= south < north <= 90")
        if w > e:  # across the antimeridian: the two halves, split at 180° as RFC 7946 asks
            geom: BaseGeometry = shapely.MultiPolygon([shapely.box(w, s, 180, n),
                                                       shapely.box(-180, s, e, n)])
            if e == -180 or w == 180:  # one half is empty: a box that touches 180°
                geom = shapely.box(w, s, 180, n) if e == -180 else shapely.box(-180, s, e, n)
        else:
            geom = shapely.box(w, s, e, n)
        return cls._checked(geom, f"bbox {[w, s, e, n]}")

    @classmethod
    def _from_file(cls, path: Path) -> AOI:
        if not path.exists():
            raise SpecError("", str(path), "file not found; expected an existing .geojson, .json "
                            "or .gpkg file")
        if path.suffix.lower() == ".gpkg":
            return cls._checked(_read_gpkg(path), str(path))
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError("", str(path), f"cannot be read as GeoJSON ({e})") from None
        return cls._checked(_geojson_geometry(data), str(path))

    @classmethod
    def _checked(cls, geom: BaseGeometry, source: str) -> AOI:
        if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            raise SpecError("", source, f"the AOI must be a non-empty Polygon or MultiPolygon "
                            f"(an area), got {geom.geom_type}; for a point or a line give a bbox "
                            "[west, south, east, north] or a polygon around it")
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            if geom.geom_type == "GeometryCollection":  # keep the area; drop stray lines/points
                geom = shapely.union_all([g for g in geom.geoms
                                          if g.geom_type in ("Polygon", "MultiPolygon")])
        if geom.is_empty or geom.area == 0:
            raise SpecError("", source, "the AOI has no area (its polygon is degenerate: a point "
                            "or a line); give a bbox [west, south, east, north] or a polygon with "
                            "an extent")
        w, s, e, n = geom.bounds
        if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
            raise SpecError("", source, f"coordinates out of EPSG:4326 range (bounds {geom.bounds}); "
                            "AOIs are given in lon/lat degrees, -180 to 180; across the "
                            "antimeridian give a bbox with west > east or a MultiPolygon split "
                            "at 180° (RFC 7946)")
        # Normalised (canonical ring order and start), so equal areas compare and tokenize equal.
        return cls(wkt=shapely.normalize(geom).wkt, source=source)


def _parts(geom: BaseGeometry) -> list[BaseGeometry]:
    return list(getattr(geom, "geoms", [geom]))


def _east(xy: Any) -> Any:
    """Coordinates (an (n, 2) array) moved 360° east."""
    xy[:, 0] += 360.0
    return xy


def _wrap(lon: float) -> float:
    """``lon`` in [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def _antimeridian_cut(geom: BaseGeometry) -> float | None:
    """Where to cut the circle of longitudes for the AOI's shortest continuous range.

    The widest gap between the parts' longitude spans is the outside of the AOI. When it is the
    gap around 180° (the usual case), longitudes are already continuous: None. Otherwise the
    longitude where the range starts (east of the widest gap); parts west of it lie across 180°.
    """
    spans: list[list[float]] = []
    for w, e in sorted((p.bounds[0], p.bounds[2]) for p in _parts(geom)):
        if spans and w <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([w, e])
    around = spans[0][0] + 360.0 - spans[-1][1]
    gap, start = max(((b[0] - a[1], b[0]) for a, b in itertools.pairwise(spans)),
                     default=(-1.0, 0.0))
    return start if gap > around else None


def _geojson_geometry(data: Mapping[str, Any]) -> BaseGeometry:
    kind = data.get("type")
    try:
        if kind == "FeatureCollection":
            geoms = [shapely.geometry.shape(f["geometry"]) for f in data.get("features", [])]
            if not geoms:
                raise SpecError("", "FeatureCollection", "the FeatureCollection has no features")
            return shapely.union_all(geoms)
        if kind == "Feature":
            return shapely.geometry.shape(data["geometry"])
        return shapely.geometry.shape(data)
    except (KeyError, TypeError, AttributeError, ValueError, shapely.errors.GEOSException) as e:
        raise SpecError("", kind, f"not a valid GeoJSON geometry, Feature or FeatureCollection ({e})") from None


def _read_gpkg(path: Path) -> BaseGeometry:
    try:
        import pyogrio
    except ImportError:  # pragma: no cover - pyogrio is a core dependency
        from .errors import MissingDependencyError

        raise MissingDependencyError("pyogrio", "all", "Reading a GeoPackage AOI") from None
    try:
        meta, _, geometry, _ = pyogrio.raw.read(path)
    except Exception as e:  # pyogrio's DataSourceError, DataLayerError, ... for a broken file
        raise SpecError("", str(path), f"cannot be read as a GeoPackage ({type(e).__name__}: "
                        f"{e}); expected a GeoPackage with a polygon layer, or a .geojson "
                        "file") from None
    if geometry is None or len(geometry) == 0:
        raise SpecError("", str(path), "the GeoPackage layer has no geometries")
    geoms = shapely.from_wkb(geometry)
    geom = shapely.union_all(geoms)
    crs = meta.get("crs")
    if crs and crs.upper() not in ("EPSG:4326", "OGC:CRS84"):
        import numpy as np
        from pyproj import CRS, Transformer

        t = Transformer.from_crs(CRS.from_user_input(crs), "EPSG:4326", always_xy=True)
        geom = shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    return geom
