"""Exports of a finished mosaic Zarr store: one COG, or one COG per tile plus a VRT over them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._raster import (
    COUNT,
    NODATA,
    REFLECTANCE_SCALE,
    exists_error,
    io_errors,
    is_reflectance,
    mosaic_geobox,
    raster_vars,
    write_cog,
)
from ._stacout import product_item, tiles_collection, write_json
from ._write import open_zarr
from .errors import WriteError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["export_cog", "export_tiles"]


def export_cog(store: str | Path, path: str | Path, *, overwrite: bool = False,
               client: Client | None = None, progress: bool = False) -> Path:
    """Stream a mosaic Zarr store (from :func:`s2mosaic._run`) into one COG, chunk by chunk,
    without loading it whole (overviews built by GDAL from a tiled scratch GeoTIFF; BIGTIFF
    when needed)."""
    store = Path(store)
    if not (store / ".zgroup").exists():
        raise WriteError(f"{store} is not a Zarr store (no .zgroup); expected the output.zarr "
                         "of a run")
    return write_cog(open_zarr(store), path, overwrite=overwrite, client=client,
                     progress=progress)


def export_tiles(store: str | Path, directory: str | Path, tile_size: int, *,
                 overwrite: bool = False, client: Client | None = None,
                 progress: bool = False) -> Path:
    """Export a mosaic Zarr store as one COG per ``tile_size`` tile plus a VRT over them.

    For areas too large for one file: ``<directory>/<row>_<col>.tif`` (same bands, nodata,
    compression and overviews as :func:`write_cog`) and ``<directory>/mosaic.vrt``, which GDAL,
    QGIS and rasterio open as the whole mosaic; a STAC item per tile
    (``<directory>/<row>_<col>.stac.json``) and ``<directory>/collection.json`` over them.
    Returns the VRT path.
    """
    from ._grid import tiles

    directory = Path(directory)
    ds = open_zarr(Path(store))
    names = raster_vars(ds)
    gbox = mosaic_geobox(ds)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise exists_error(directory, "tiles")
    directory.mkdir(parents=True, exist_ok=True)
    sources = []
    dy, dx = gbox.dimensions  # ("latitude", "longitude") on a geographic grid
    for t in tiles(gbox, tile_size):
        path = directory / f"{t.key}.tif"
        write_cog(ds[names].isel({dy: t.y, dx: t.x}), path, overwrite=True, client=client,
                  progress=progress)
        sources.append((path.name, t))
    _tile_stac(Path(store), directory, ds, names, sources)
    vrt = directory / "mosaic.vrt"
    crs = gbox.crs
    assert crs is not None
    dtype = {"uint16": "UInt16", "uint8": "Byte"}[str(ds[names[0]].dtype)]
    lines = [f'<VRTDataset rasterXSize="{gbox.shape.x}" rasterYSize="{gbox.shape.y}">',
             f"  <SRS>{_xml(crs.to_wkt())}</SRS>",
             "  <GeoTransform>" + ", ".join(repr(float(v)) for v in gbox.affine.to_gdal())
             + "</GeoTransform>"]
    for b, name in enumerate(names, start=1):
        lines += [f'  <VRTRasterBand dataType="{dtype}" band="{b}">',
                  f"    <Description>{_xml(name)}</Description>"]
        if name != COUNT:
            lines.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
        if is_reflectance(name, ds[name].dtype):
            lines += ["    <Offset>0</Offset>", f"    <Scale>{REFLECTANCE_SCALE}</Scale>"]
        if names[:3] == ["red", "green", "blue"] and b <= 3:
            lines.append(f"    <ColorInterp>{names[b - 1].capitalize()}</ColorInterp>")
        for file, t in sources:
            h, w = t.geobox.shape.yx
            lines += ["    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="1">{_xml(file)}</SourceFilename>',
                      f"      <SourceBand>{b}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                      f'      <DstRect xOff="{t.x.start}" yOff="{t.y.start}" xSize="{w}" '
                      f'ySize="{h}"/>',
                      "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    with io_errors(vrt):
        vrt.write_text("\n".join(lines) + "\n")
    return vrt


def _tile_stac(store: Path, directory: Path, ds: Any, names: list[str],
               sources: list[tuple[str, Any]]) -> None:
    """One STAC item per tile COG and a collection over them (the period from the run
    manifest in the store)."""
    from ._manifest import Manifest

    period = {"start": "1970-01-01", "end": "1970-01-01"}  # a store written without a manifest
    with contextlib.suppress(WriteError, OSError, KeyError, TypeError):
        recorded = Manifest(store).header()["spec"]["period"]
        period = {"start": str(recorded["start"]), "end": str(recorded["end"])}
    items = []
    for file, t in sources:
        item = product_item(t.key, t.geobox, {n: ds[n].dtype for n in names}, directory,
                            {"cog": directory / file}, start=period["start"], end=period["end"])
        item["collection"] = directory.name or "tiles"
        item["links"] = [{"rel": "collection", "href": "./collection.json",
                          "type": "application/json"}]
        write_json(directory / f"{t.key}.stac.json", item)
        items.append(item)
    write_json(directory / "collection.json",
               tiles_collection(directory.name or "tiles", items, period["start"], period["end"]))


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
