"""Areas of interest: parse a bbox, WKT, GeoJSON or GeoPackage into one EPSG:4326 polygon."""

from __future__ import annotations

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
    "a bbox [west, south, east, north] in EPSG:4326, a WKT polygon, a GeoJSON mapping, "
    "or a path to a .geojson/.json/.gpkg file"
)
_VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg")


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
        """(west, south, east, north) in degrees."""
        return tuple(float(v) for v in self.geometry.bounds)

    def to_geojson(self) -> dict[str, Any]:
        return dict(shapely.geometry.mapping(self.geometry))

    def odc_geometry(self) -> Any:
        """The AOI as an ``odc.geo.geom.Geometry`` in EPSG:4326."""
        from odc.geo.geom import Geometry

        return Geometry(self.geometry, crs="EPSG:4326")

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
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            raise SpecError("", [w, s, e, n], "a bbox must be [west, south, east, north] in degrees "
                            "with -180 <= west < east <= 180 and -90 <= south < north <= 90")
        return cls._checked(shapely.box(w, s, e, n), f"bbox {[w, s, e, n]}")

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
            raise SpecError("", source, f"the AOI must be a non-empty Polygon or MultiPolygon, "
                            f"got {geom.geom_type}")
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        w, s, e, n = geom.bounds
        if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
            raise SpecError("", source, f"coordinates out of EPSG:4326 range (bounds {geom.bounds}); "
                            "AOIs are given in lon/lat degrees")
        # Normalised (canonical ring order and start), so equal areas compare and tokenize equal.
        return cls(wkt=shapely.normalize(geom).wkt, source=source)


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
    meta, _, geometry, _ = pyogrio.raw.read(path)
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
