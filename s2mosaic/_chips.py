"""Chips for ML: many small fixed-size mosaics around points or on a regular grid over an AOI.

Each chip is a ``size`` × ``size`` pixel square (plus ``pad`` pixels each side) on a regular grid
of its own UTM zone, keyed like Descartes Labs' ``DLTile.from_latlon``:
``"<resolution>:<size>:<pad>:<zone><N|S>:<ti>:<tj>"``, where ``ti``/``tj`` count chip widths
east/north from the zone's origin - so the same point always gives the same chip, and
neighbouring chips tile without gaps or overlap.

Chips are computed in batches: one Dask graph per ``batch`` chips (the search runs once for all
of them, each chip reads only the items that touch it), so thousands of chips do not make
thousands of graphs. Each chip is written as a GeoTIFF (every band plus ``count``, uint16,
nodata 0) or an 8-bit RGB PNG, and recorded in ``manifest.jsonl`` beside them - the run
manifest of :mod:`s2mosaic._manifest` kept in a plain directory: a header (spec, format), then
one fsync'd ``chip`` record per chip (key, centre, CRS, bounds, path, valid fraction); a rerun
skips the chips already recorded there whose file exists.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pystac
import shapely
import shapely.geometry
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from pyproj import Transformer

from ._grid import Footprints, pad_geobox
from ._manifest import Manifest
from ._spec import MosaicSpec
from .errors import SpecError, WriteError

__all__ = ["Chip", "ChipsReport", "chip_at", "chips_over", "make_chips"]

_FORMATS = ("tif", "png")


@dataclass(frozen=True)
class Chip:
    """One chip: its key, grid, and the point it was asked for (None for grid chips)."""

    key: str
    geobox: GeoBox
    lon: float | None = None
    lat: float | None = None

    @property
    def filename(self) -> str:
        """The key made safe for file names (``:`` → ``_``)."""
        return self.key.replace(":", "_")


@dataclass
class ChipsReport:
    """What :func:`make_chips` did."""

    written: int
    skipped: int
    """Chips already in the manifest (and on disk) from an earlier run."""
    batches: int
    manifest: Path


def _utm(lon: float, lat: float) -> tuple[int, str, int]:
    zone = min(60, max(1, math.floor((lon + 180) / 6) + 1))
    hemi = "N" if lat >= 0 else "S"
    return zone, hemi, (32600 if hemi == "N" else 32700) + zone


def _check(resolution: float, size: int, pad: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int | float) or resolution <= 0:
        raise SpecError("chips.resolution", resolution, "a pixel size in metres > 0, e.g. 10")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError("chips.size", size, "an integer number of pixels >= 1, e.g. 256")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise SpecError("chips.pad", pad, "an integer number of pixels >= 0")


def _chip(zone: int, hemi: str, epsg: int, ti: int, tj: int, resolution: float, size: int,
          pad: int, lon: float | None = None, lat: float | None = None) -> Chip:
    width = size * resolution
    left = ti * width - pad * resolution
    top = (tj + 1) * width + pad * resolution
    n = size + 2 * pad
    gbox = GeoBox((n, n), Affine(resolution, 0, left, 0, -resolution, top), CRS(f"EPSG:{epsg}"))
    return Chip(f"{resolution:g}:{size}:{pad}:{zone}{hemi}:{ti}:{tj}", gbox, lon, lat)


def chip_at(lon: float, lat: float, *, resolution: float = 10.0, size: int = 256,
            pad: int = 0) -> Chip:
    """The chip of the regular UTM chip grid that contains the point ``(lon, lat)``.

    Examples
    --------
    >>> chip_at(12.0, 47.5, resolution=5, size=250).key
    '5:250:0:33N:219:4212'
    """
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        raise SpecError("chips.points", (lon, lat),
                        "longitude in [-180, 180] and latitude in [-80, 84] (the UTM range)")
    _check(resolution, size, pad)
    zone, hemi, epsg = _utm(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", epsg, always_xy=True).transform(lon, lat)
    width = size * resolution
    return _chip(zone, hemi, epsg, math.floor(x / width), math.floor(y / width), resolution,
                 size, pad, lon, lat)


def chips_over(aoi: Any, *, resolution: float = 10.0, size: int = 256, pad: int = 0) -> list[Chip]:
    """Every chip of the UTM chip grids that touches ``aoi`` (a shapely geometry or GeoJSON in
    EPSG:4326), each in the zone its part of the AOI lies in; ordered by key."""
    _check(resolution, size, pad)
    geom = aoi if isinstance(aoi, shapely.geometry.base.BaseGeometry) else shapely.geometry.shape(aoi)
    west, _, east, _ = geom.bounds
    out: dict[str, Chip] = {}
    for zone in range(_utm(west, 0)[0], _utm(east, 0)[0] + 1):
        band = shapely.geometry.box(-180 + 6 * (zone - 1), -90, -180 + 6 * zone, 90)
        for hemi, half in (("N", shapely.geometry.box(-180, 0, 180, 90)),
                           ("S", shapely.geometry.box(-180, -90, 180, 0))):
            part = geom.intersection(band).intersection(half)
            if part.is_empty:
                continue
            epsg = (32600 if hemi == "N" else 32700) + zone
            to_utm = Transformer.from_crs("EPSG:4326", epsg, always_xy=True)
            local = shapely.transform(shapely.segmentize(part, 0.001), to_utm.transform,
                                      interleaved=False)
            width = size * resolution
            x0, y0, x1, y1 = local.bounds
            for ti in range(math.floor(x0 / width), math.floor(x1 / width) + 1):
                for tj in range(math.floor(y0 / width), math.floor(y1 / width) + 1):
                    cell = shapely.geometry.box(ti * width, tj * width, (ti + 1) * width,
                                                (tj + 1) * width)
                    if cell.intersects(local):
                        c = _chip(zone, hemi, epsg, ti, tj, resolution, size, pad)
                        out[c.key] = c
    return [out[k] for k in sorted(out)]


def make_chips(spec: MosaicSpec, chips: Sequence[Chip], directory: str | Path, *,
               items: Sequence[pystac.Item] | None = None, fmt: str = "tif", batch: int = 64,
               client: Any = None, on_batch: Callable[[int, int], None] | None = None,
               ) -> ChipsReport:
    """Compute and write ``chips`` with ``spec``'s sources, masks and composite.

    Parameters
    ----------
    spec
        Period, source, bands, masks, composite. Its AOI only bounds the search (it should
        cover the chips; :func:`chips_over` / :func:`chip_at` make chips from it); each chip
        is written whole. ``grid`` is ignored: chips carry their own grid.
    chips
        The chips, e.g. ``[chip_at(lon, lat, resolution=5, size=250) for lon, lat in points]``.
    directory
        Where the chip files and ``manifest.jsonl`` go.
    items
        Items to use instead of searching with ``spec``.
    fmt
        ``tif`` (every band and ``count``, uint16, nodata 0, georeferenced) or ``png`` (8-bit
        RGB of ``output.rgb_bands`` stretched by ``output.rgb_range``, alpha 0 on nodata).
    batch
        Chips per Dask graph.
    client
        A ``distributed.Client``; None computes on the current Dask scheduler.
    on_batch
        ``on_batch(done, total)`` after each batch (progress).
    """
    from ._search import search
    from ._select import apply_selection

    if fmt not in _FORMATS:
        raise SpecError("chips.format", fmt, f"one of {list(_FORMATS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError("chips.batch", batch, "an integer >= 1 (chips per Dask graph)")
    keys = [c.key for c in chips]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SpecError("chips", dup, "distinct chips (two points fall in the same chip)")
    directory = Path(directory)
    manifest = _manifest(spec, directory, fmt)
    done = {r["key"] for r in manifest.records("chip") if (directory / r["path"]).exists()}
    todo = [c for c in chips if c.key not in done]
    if items is None:
        items = apply_selection(spec, search(spec)) if todo else []
    footprints = Footprints(items)
    written = batches = 0
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        tasks = [_chip_task(spec, c, footprints, directory, fmt) for c in part]
        rows = (client.gather(client.compute(tasks)) if client is not None
                else dask.compute(*tasks))
        manifest.append(*rows, kind="chip")
        written += len(rows)
        batches += 1
        if on_batch is not None:
            on_batch(len(done) + written, len(chips))
    return ChipsReport(written=written, skipped=len(chips) - len(todo), batches=batches,
                       manifest=manifest.path)


def _manifest(spec: MosaicSpec, directory: Path, fmt: str) -> Manifest:
    """The run manifest of the chips in ``directory`` (a header, then one fsync'd record per
    chip, as a tiled run keeps in its store): created, or checked against this spec."""
    from ._manifest import pixel_spec, spec_differences

    manifest = Manifest(directory, group=None)
    # Chips carry their own grid and chunks; the AOI only bounds the search.
    pixels = {k: v for k, v in pixel_spec(spec.to_dict()).items()
              if k not in ("aoi", "grid", "runtime")}
    header = {"product": {"kind": "chips", "format": fmt}, "spec": pixels}
    if not manifest.exists():
        manifest.create(header, None)
        return manifest
    old = manifest.header()
    diffs = spec_differences(old.get("spec", {}), pixels)
    if old.get("product") != header["product"]:
        diffs.insert(0, f"format: {(old.get('product') or {}).get('format')!r} -> {fmt!r}")
    if diffs:
        raise WriteError(f"{directory} holds chips made with another spec or format "
                         f"({'; '.join(diffs[:6])}); a rerun only adds the missing chips of the "
                         "same spec - use another directory")
    return manifest


def _chip_task(spec: MosaicSpec, chip: Chip, footprints: Footprints, directory: Path,
               fmt: str) -> Any:
    from ._pipeline import mosaic
    from ._search import SearchResult

    gbox = chip.geobox
    # The chip's own AOI: its extent grown by two pixels, so every pixel is inside (whole chip).
    res = abs(gbox.resolution.x)
    area = pad_geobox(gbox, (2, 2)).extent.to_crs("EPSG:4326").geom
    touching = footprints.touching(gbox)
    path = directory / f"{chip.filename}.{fmt}"
    row: dict[str, Any] = {"key": chip.key, "lon": chip.lon, "lat": chip.lat, "crs": str(gbox.crs),
           "bounds": list(gbox.boundingbox), "resolution": res,
           "path": path.name, "items": len(touching)}
    names = [*spec.bands, "count"]
    if not touching:
        data: Any = np.zeros((len(names), *gbox.shape.yx), np.uint16)
        return dask.delayed(_write_chip, pure=False)(data, gbox, path,
                                                     names, fmt, spec.output.rgb_bands,
                                                     spec.output.rgb_range, row)
    runtime = dataclasses.replace(spec.runtime, chunks=max(16, gbox.shape.x), tile_size=None)
    chip_spec = spec.replace(aoi=shapely.geometry.mapping(area), runtime=runtime)
    ds = mosaic(chip_spec, SearchResult(touching), geobox=gbox)
    stack = da.stack([ds[n].data for n in names])
    return dask.delayed(_write_chip, pure=False)(stack, gbox, path, names,
                                                 fmt, spec.output.rgb_bands,
                                                 spec.output.rgb_range, row)


def _write_chip(data: np.ndarray, gbox: GeoBox, path: Path, names: list[str], fmt: str,
                rgb_bands: tuple[str, str, str], rgb_range: tuple[float, float],
                row: dict[str, Any]) -> dict[str, Any]:
    import rasterio

    count = data[names.index("count")]
    row = dict(row, valid_fraction=round(float((count > 0).mean()), 6),
               max_observations=int(count.max()))
    partial = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "tif":
            crs = gbox.crs
            assert crs is not None
            with rasterio.open(partial, "w", driver="GTiff", width=gbox.shape.x,
                               height=gbox.shape.y, count=len(names), dtype="uint16",
                               crs=crs.to_wkt(), transform=gbox.affine, nodata=0,
                               compress="DEFLATE", predictor=2, tiled=gbox.shape.x >= 256,
                               ) as dst:
                dst.write(data)
                dst.descriptions = tuple(names)
        else:
            from PIL import Image

            from ._raster import stretch_rgb

            pixels, valid = stretch_rgb(np.stack([data[names.index(b)] for b in rgb_bands]),
                                        count, rgb_range)
            alpha = (valid * 255).astype("uint8")[None]
            Image.fromarray(np.moveaxis(np.concatenate([pixels, alpha]), 0, -1)).save(
                partial, "PNG")
        os.replace(partial, path)
    except OSError as e:
        raise WriteError(f"writing chip {row['key']} to {path} failed: {e}") from e
    return row
