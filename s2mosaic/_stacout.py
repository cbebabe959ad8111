"""STAC items describing the products written: so STAC browsers, odc-stac and QGIS find them.

One item per product (``<name>.stac.json`` beside the metadata sidecar): the mosaic, or one per
period of a series (``<name>_<start>.stac.json``, the period's COG/RGB and the shared Zarr);
a STAC collection over per-tile COG exports. Items use STAC 1.1.0 with the projection (v1.1.0,
``proj:epsg`` as the input catalogs and odc-stac/stackstac read it), raster and eo (v1.1.0)
and processing extensions; hrefs are relative, so the folder can be moved or uploaded whole.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from odc.geo.geobox import GeoBox

from ._items import EARTH_SEARCH_NAMES
from ._raster import COUNT, NODATA, REFLECTANCE_SCALE, io_errors, is_reflectance

__all__ = ["EXTENSIONS", "item_path", "product_item", "product_items", "tiles_collection",
           "write_json"]

EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_MEDIA = {".tif": _COG_TYPE, ".tiff": _COG_TYPE, ".png": "image/png", ".json": "application/json",
          ".zarr": "application/vnd+zarr", ".vrt": "application/xml"}
# eo common name and centre wavelength (µm, Sentinel-2A) by ESA band id.
_EO = {"B01": ("coastal", 0.443), "B02": ("blue", 0.49), "B03": ("green", 0.56),
       "B04": ("red", 0.665), "B05": ("rededge", 0.704), "B06": ("rededge", 0.74),
       "B07": ("rededge", 0.783), "B08": ("nir", 0.842), "B8A": ("nir08", 0.865),
       "B09": ("nir09", 0.945), "B10": ("cirrus", 1.375), "B11": ("swir16", 1.61),
       "B12": ("swir22", 2.19)}
_BY_NAME = {**{k.lower(): v for k, v in _EO.items()},
            **{es: _EO[b] for b, es in EARTH_SEARCH_NAMES.items()}}


def item_path(metadata: Path, day: str = "") -> Path:
    """``out/m.metadata.json`` → ``out/m.stac.json`` (``out/m_<day>.stac.json`` for a period)."""
    stem = metadata.name.removesuffix(".json").removesuffix(".metadata")
    return metadata.with_name(f"{stem}{'_' + day if day else ''}.stac.json")


def product_item(item_id: str, gbox: GeoBox, bands: Mapping[str, Any], where: Path,
                 assets: Mapping[str, Path | None], *, start: str, end: str,
                 software: Mapping[str, str] | None = None, description: str | None = None,
                 rgb_bands: Sequence[str] = ("red", "green", "blue")) -> dict[str, Any]:
    """A STAC item (dict) for one raster product on ``gbox``.

    ``bands``: variable name → dtype, in file order. ``assets``: key → path (``zarr``, ``cog``,
    ``rgb``, ``metadata``, any ``*.tif``; None skipped), written relative to ``where`` (the
    item's folder). ``start``/``end``: the period, ISO dates (inclusive).
    """
    crs = gbox.crs
    assert crs is not None
    # Corners and two points per side projected: a small polygon, close to the true outline.
    geo = gbox.footprint("epsg:4326", npoints=3)
    props: dict[str, Any] = {
        "datetime": None, "start_datetime": f"{start}T00:00:00Z",
        "end_datetime": f"{end}T23:59:59Z",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "proj:epsg": crs.epsg, "proj:shape": list(gbox.shape),
        "proj:transform": list(gbox.affine)[:6], "proj:bbox": list(gbox.boundingbox)[:4],
        "processing:software": dict(software or {}),
    }
    if crs.epsg is None:
        props["proj:wkt2"] = crs.to_wkt()
    if description:
        props["description"] = description
    res = abs(gbox.resolution.x)
    out_assets: dict[str, Any] = {}
    for key, path in assets.items():
        if path is None:
            continue
        asset: dict[str, Any] = {"href": os.path.relpath(path, where),
                                 "type": _MEDIA.get(Path(path).suffix.lower(), "")}
        if key == "metadata":
            asset.update(title="Provenance (s2mosaic metadata sidecar)", roles=["metadata"])
        elif key.startswith("rgb"):
            asset.update(title="RGB display product (8-bit)", roles=["visual", "overview"],
                         **_band_fields({b: "uint8" for b in rgb_bands}, res,
                                        display=True))
        else:
            kind = "Zarr store" if key == "zarr" else "Cloud-Optimized GeoTIFF"
            asset.update(title=f"Mosaic ({kind})", roles=["data"],
                         **({} if key == "zarr" else _band_fields(bands, res)))
        out_assets[key] = {k: v for k, v in asset.items() if v != ""}
    item = {
        "type": "Feature", "stac_version": "1.1.0", "stac_extensions": list(EXTENSIONS.values()),
        "id": item_id, "bbox": list(geo.boundingbox)[:4], "geometry": geo.json,
        "properties": props, "links": [], "assets": out_assets,
    }
    return dict(json.loads(json.dumps(item)))  # plain JSON types (tuples → lists)


def product_items(record: Mapping[str, Any], gbox: GeoBox, bands: Mapping[str, Any],
                  written: Mapping[str, Path | None], metadata: Path) -> list[Path]:
    """Write the STAC items of a run's products beside ``metadata`` (its sidecar): one for a
    mosaic, one per period for a series (keys ``cog[<start>]``/``rgb[<start>]`` in ``written``).
    ``record`` is the sidecar's content (period, series periods, software). Returns the paths."""
    stem = metadata.name.removesuffix(".json").removesuffix(".metadata")
    software = {"s2mosaic": str((record.get("software") or {}).get("s2mosaic", ""))}
    where = metadata.parent
    shared = {"zarr": written.get("zarr"), "metadata": metadata}
    rgb = ((record.get("spec") or {}).get("output") or {}).get("rgb_bands") or ("red", "green",
                                                                                 "blue")
    paths = []
    periods = record.get("series")
    if periods is None:
        period = (record.get("spec") or {}).get("period") or {}
        item = product_item(stem, gbox, bands, where, {**shared, "cog": written.get("cog"),
                                                      "rgb": written.get("rgb")},
                            start=str(period.get("start")), end=str(period.get("end")),
                            software=software, rgb_bands=rgb)
        paths.append(write_json(item_path(metadata), item))
        return paths
    for k, p in enumerate(periods):
        day = str(p["start"])
        item = product_item(f"{stem}_{day}", gbox, bands, where,
                            {**shared, "cog": written.get(f"cog[{day}]"),
                             "rgb": written.get(f"rgb[{day}]")},
                            start=day, end=str(p["end"]), software=software,
                            description=f"period {k} of the series: time index {k} in the "
                                        "Zarr store", rgb_bands=rgb)
        paths.append(write_json(item_path(metadata, day), item))
    return paths


def tiles_collection(collection_id: str, items: Sequence[Mapping[str, Any]],
                     start: str, end: str) -> dict[str, Any]:
    """A STAC collection (dict) over ``items`` (each written as ``<id>.stac.json`` beside it)."""
    boxes = [i["bbox"] for i in items]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return {
        "type": "Collection", "stac_version": "1.1.0", "id": collection_id,
        "description": "s2mosaic mosaic exported as one Cloud-Optimized GeoTIFF per tile",
        "license": "other",
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [[f"{start}T00:00:00Z", f"{end}T23:59:59Z"]]}},
        "links": [{"rel": "item", "href": f"./{i['id']}.stac.json", "type": "application/json"}
                  for i in items],
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> Path:
    with io_errors(path):
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _band_fields(bands: Mapping[str, Any], res: float, display: bool = False) -> dict[str, Any]:
    eo, raster = [], []
    for name, dtype in bands.items():
        band: dict[str, Any] = {"name": name}
        common = _BY_NAME.get(name.lower())
        if common is not None:
            band["common_name"] = common[0]
            if not display:
                band["center_wavelength"] = common[1]
        eo.append(band)
        rb: dict[str, Any] = {"data_type": str(dtype), "spatial_resolution": res}
        if name != COUNT:
            rb["nodata"] = NODATA
        if not display and is_reflectance(name, dtype):
            rb.update(scale=REFLECTANCE_SCALE, offset=0)
        raster.append(rb)
    return {"eo:bands": eo, "raster:bands": raster}
