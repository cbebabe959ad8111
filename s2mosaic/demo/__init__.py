"""An offline, synthetic Sentinel-2 L2A STAC catalog for the demo and the tests.

Users without internet (and CI) run the default demo on this. It mirrors the conventions of the
real data in ``shared/data/s2`` (Planetary Computer asset keys, uint16 reflectance x 10000, nodata
0, COGs, projection/eo/raster extensions v1.1.0, relative hrefs, one folder per item).

Layout (fixed; ``size`` only changes the extent of each tile):

* Two tiles straddling the 12°E UTM zone line at 47.5°N: ``32TQT`` (EPSG:32632, east edge of zone
  32) and ``33TTN`` (EPSG:32633, west edge of zone 33), the real MGRS squares at that place. Each is
  ``size`` x ``size`` px at 10 m; their footprints overlap by ~12 % of a tile across the line
  (real MGRS tiles overlap by 9.8 of 109.8 km).
* 12 dates, every 5 days from 2024-05-02 to 2024-06-26, orbit R065, both tiles at the same sensing
  time. Cloud cover varies per date: 2024-05-02 is nearly clear, 2024-05-12 is > 60 % cloudy.
* Deliberate fixtures (tests and downstream code rely on them):

  - **BOA offset** (harmonisation): the 2024-06-01 acquisition (both tiles) has processing baseline
    ``05.10``; its DNs are reflectance x 10000 + 1000 and its band assets declare
    ``raster:bands[0].offset = -0.1``. Every other item has baseline < 04.00 and offset 0.
  - **Reprocessed duplicate** (dedupe): ``32TQT`` on 2024-06-21 exists twice.
    ``S2B_32TQT_20240621_0_L2A`` (baseline ``03.00``, generated the same day) and
    ``S2B_32TQT_20240621_1_L2A`` (baseline ``03.01``, generated 2024-07-09, DNs +1). The ``_1``
    item is the **newest** and the one a dedupe must keep.
  - **Partial swath**: ``33TTN`` on 2024-06-11 is cut by a diagonal swath edge; beyond it every
    band and SCL are 0 (nodata) and the geometry is the valid footprint.

The ground is a function of position in one common plane (EPSG:32632 coordinates), so the
overlap of the two tiles shows the same fields, forest, river and roads on every date. SCL is
derived from the pixels generated here and is exact at 20 m: every 10 m pixel whose reflectance a
cloud or shadow changed lies in an SCL pixel of class 3, 8, 9 or 10.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from numpy.typing import NDArray
from pyproj import Transformer

from .._spec import MosaicSpec
from ..errors import SpecError, WriteError
from . import _scene

__all__ = ["DEMO_AOI_BBOX", "DEMO_PERIOD", "demo_spec", "make_demo_catalog"]

DEMO_AOI_BBOX: tuple[float, float, float, float] = (11.97, 47.49, 12.03, 47.51)
"""[W, S, E, N], EPSG:4326: straddles 12°E, inside the union of the two tiles for every size."""
DEMO_PERIOD: tuple[str, str] = ("2024-05-01", "2024-06-30")
"""ISO start and end dates covering every generated acquisition."""

_MARKER = "demo-params.json"
_FORMAT = 1  # bump when the output changes, so old demo catalogs are regenerated
_COLLECTION = "sentinel-2-l2a"
_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
# DEFLATE level 1 is as small as the default here and twice as fast; the demo must take seconds.
_COG_PROFILE = {"driver": "COG", "count": 1, "nodata": 0, "compress": "DEFLATE", "level": 1}
_COG_PROFILE |= {"predictor": 2, "blocksize": 256}
_SCL_STATS = {"high_proba_clouds": 9, "medium_proba_clouds": 8, "thin_cirrus": 10}
_SCL_STATS |= {"cloud_shadow": 3, "vegetation": 4, "not_vegetated": 5, "water": 6, "snow_ice": 11}
# name, common name, centre wavelength, FWHM (µm), title
_BANDS = (
    ("B02", "blue", 0.49, 0.098, "Blue (band 2) - 10m"),
    ("B03", "green", 0.56, 0.045, "Green (band 3) - 10m"),
    ("B04", "red", 0.665, 0.038, "Red (band 4) - 10m"),
    ("B08", "nir", 0.842, 0.145, "NIR 1 (band 8) - 10m"),
)


def _write_cog(path: Path, arr: NDArray[Any], tile: _scene.Tile, res: int, resampling: str) -> None:
    # Force at least one overview level so even small test tiles are COGs with overviews.
    levels = max(1, math.ceil(math.log2(arr.shape[0] / 256)))
    grid = {"crs": f"EPSG:{tile.epsg}", "transform": tile.transform(res), "dtype": arr.dtype}
    overviews = {"overview_count": levels, "overview_resampling": resampling}
    with rasterio.open(
        path, "w", width=arr.shape[1], height=arr.shape[0], **grid, **overviews, **_COG_PROFILE
    ) as dst:
        dst.write(arr, 1)


def _footprint(tile: _scene.Tile, swath_cut: bool) -> dict[str, Any]:
    """The valid-data outline in EPSG:4326, densified so it follows the projected edges."""
    w, s, e, n = tile.bounds()
    width = e - w
    corners = [(w, s), (e, s), (e, n), (w, n)]
    if swath_cut:
        corners = [(w, s), (w + 0.95 * width, s), (w + 0.55 * width, n), (w, n)]
    ring = [
        (x0 + (x1 - x0) * k / 16, y0 + (y1 - y0) * k / 16)
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True)
        for k in range(16)
    ]
    xs, ys = np.array(ring).T
    lon, lat = Transformer.from_crs(tile.epsg, 4326, always_xy=True).transform(xs, ys)
    coords = [[round(a, 7), round(b, 7)] for a, b in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [[*coords, coords[0]]]}


def _percent(mask: NDArray[np.bool_], of: int) -> float:
    return round(100.0 * float(mask.sum()) / of, 6) if of else 0.0


def _item(
    tile: _scene.Tile, day: int, seq: int, baseline: str, generated: datetime,
    scl: NDArray[np.uint8],
) -> pystac.Item:
    platform = "S2B" if day % 2 == 0 else "S2A"  # S2A and S2B alternate on one relative orbit
    when = datetime.combine(_scene.DATES[day], datetime.min.time(), UTC) + timedelta(
        hours=10, minutes=26, seconds=47, milliseconds=24
    )
    valid = scl > 0
    n_valid = int(valid.sum())
    geometry = _footprint(tile, swath_cut=not valid.all())
    lons, lats = zip(*geometry["coordinates"][0], strict=True)
    offset = -0.1 if baseline >= "04.00" else 0.0
    props: dict[str, Any] = {
        "platform": f"sentinel-2{platform[-1].lower()}",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": _percent(np.isin(scl, (8, 9, 10)), n_valid),
        "proj:epsg": tile.epsg,
        "proj:shape": [tile.size, tile.size],
        "proj:transform": list(tile.transform(10))[:6],
        "proj:bbox": list(tile.bounds()),
        "grid:code": f"MGRS-{tile.mgrs}",
        "sat:relative_orbit": 65,
        "sat:orbit_state": "descending",
        "view:sun_azimuth": _scene.SUN_AZIMUTH,
        "view:sun_elevation": _scene.SUN_ELEVATION,
        "s2:mgrs_tile": tile.mgrs,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "s2:product_uri": f"{platform}_MSIL2A_{when:%Y%m%d}T101559_N{baseline.replace('.', '')}"
        f"_R065_T{tile.mgrs}_{generated:%Y%m%dT%H%M%S}.SAFE",
        "s2:nodata_pixel_percentage": _percent(~valid, scl.size),
    }
    for key, cls in _SCL_STATS.items():
        props[f"s2:{key}_percentage"] = _percent(scl == cls, n_valid)
    item = pystac.Item(
        id=f"{platform}_{tile.mgrs}_{when:%Y%m%d}_{seq}_L2A",
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        datetime=when,
        properties=props,
        stac_extensions=list(_EXTENSIONS),
    )
    for name, common, centre, fwhm, title in _BANDS:
        scaling = {"scale": 0.0001, "offset": offset}
        item.add_asset(name, _asset(tile, name, title, 10, "uint16", scaling))
        eo: dict[str, Any] = {
            "name": name,
            "common_name": common,
            "description": title.removesuffix(" - 10m"),
        }
        eo |= {"center_wavelength": centre, "full_width_half_max": fwhm}
        item.assets[name].extra_fields["eo:bands"] = [eo]
    item.add_asset("SCL", _asset(tile, "SCL", "Scene classification map (SCL)", 20, "uint8", {}))
    return item


def _asset(
    tile: _scene.Tile, key: str, title: str, res: int, dtype: str, scaling: dict[str, float]
) -> pystac.Asset:
    band = {"nodata": 0, "data_type": dtype, "spatial_resolution": float(res), **scaling}
    return pystac.Asset(
        href=f"./{key}.tif",
        title=title,
        media_type=_COG_TYPE,
        roles=["data"],
        extra_fields={
            "gsd": float(res),
            "proj:shape": [10 * tile.size // res] * 2,
            "proj:transform": list(tile.transform(res))[:6],
            "raster:bands": [band],
        },
    )


def _generate(root: Path, seed: int, size: int) -> list[str]:
    """Write rasters and STAC JSON under ``root``; return the relative paths written."""
    tiles = _scene.tiles(size)
    world = _scene.World(seed, tiles)
    scenes = []
    for tile_index, tile in enumerate(tiles):
        at = _scene.pixel_centres(tile)
        scenes += [(tile_index, day, at, world.ground(at)) for day in range(len(_scene.DATES))]

    def render(k: int) -> tuple[NDArray[np.uint16], NDArray[np.uint8], NDArray[np.bool_]]:
        tile_index, day, at, ground = scenes[k]
        return _scene.render(world, ground, at, tile_index, day)

    items: list[pystac.Item] = []
    # Render the next scene (NumPy, mostly without the GIL) while GDAL writes this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(render, 0)
        for k, (tile_index, day, _, _) in enumerate(scenes):
            (dn, scl, _), tile = ahead.result(), tiles[tile_index]
            if k + 1 < len(scenes):
                ahead = pool.submit(render, k + 1)
            generated = datetime.combine(_scene.DATES[day], datetime.min.time(), UTC) + timedelta(
                hours=12, minutes=(17 * day) % 60, seconds=11
            )
            # (sequence, baseline, generation time, DN shift); see the module docstring.
            versions = [(0, "03.01", generated, 0)]
            if day == _scene.OFFSET_DATE:
                versions = [(0, "05.10", generated, 1000)]  # BOA offset from baseline 04.00 on
            elif day == _scene.DUP_DATE and tile_index == 0:
                later = datetime(2024, 7, 9, 8, 14, 27, tzinfo=UTC)
                versions = [(0, "03.00", generated, 0), (1, "03.01", later, 1)]
            for seq, baseline, gen_time, shift in versions:
                item = _item(tile, day, seq, baseline, gen_time, scl)
                folder = root / _COLLECTION / item.id
                folder.mkdir(parents=True, exist_ok=True)
                shifted = np.where(dn > 0, dn + np.uint16(shift), dn) if shift else dn
                for b, (name, *_) in enumerate(_BANDS):
                    _write_cog(folder / f"{name}.tif", shifted[b], tile, 10, "AVERAGE")
                _write_cog(folder / "SCL.tif", scl, tile, 20, "NEAREST")
                items.append(item)
    return _write_stac(root, items)


def _write_stac(root: Path, items: list[pystac.Item]) -> list[str]:
    corners = np.array([i.bbox for i in items])
    bbox = [*corners[:, :2].min(axis=0).tolist(), *corners[:, 2:].max(axis=0).tolist()]
    times = sorted(i.datetime for i in items if i.datetime)
    collection = pystac.Collection(
        id=_COLLECTION,
        title="Synthetic Sentinel-2 L2A (s2mosaic demo)",
        description="Synthetic Sentinel-2 L2A surface reflectance and SCL generated offline by "
        "s2mosaic.demo; no Copernicus pixels. Deliberate fixtures: a baseline 05.10 acquisition "
        "with the +1000 BOA offset, a reprocessed duplicate, a partial swath.",
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]])
        ),
        license="other",
        summaries=pystac.Summaries(
            {
                "platform": ["sentinel-2a", "sentinel-2b"],
                "constellation": ["sentinel-2"],
                "instruments": ["msi"],
                "gsd": [10.0, 20.0],
                "proj:epsg": sorted({i.properties["proj:epsg"] for i in items}),
                "s2:mgrs_tile": sorted({i.properties["s2:mgrs_tile"] for i in items}),
            }
        ),
    )
    # What every item's assets share: not the href, the grid, nor the offset (baseline-dependent).
    item_assets = {key: deepcopy(asset.to_dict()) for key, asset in items[0].assets.items()}
    for asset in item_assets.values():  # what all items share: no href, grid or offset
        for key in ("href", "proj:shape", "proj:transform"):
            del asset[key]
        asset["raster:bands"][0].pop("offset", None)
    collection.extra_fields["item_assets"] = item_assets
    collection.add_items(items)
    catalog = pystac.Catalog(
        id="s2mosaic-demo",
        title="s2mosaic demo data (synthetic Sentinel-2)",
        description="Offline synthetic Sentinel-2 L2A catalog for the s2mosaic demo and tests.",
    )
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    # The same items for loading into a STAC API (pypgstac load items): asset hrefs are absolute
    # file:// URIs, since a bare "/path" would resolve against the API's URL (RFC 3986).
    features = []
    for item in items:
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        for key, asset in d["assets"].items():
            asset["href"] = (root / _COLLECTION / item.id / f"{key}.tif").resolve().as_uri()
        features.append(d)
    with open(root / "itemcollection.json", "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f, indent=1)
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != _MARKER
    )


def make_demo_catalog(
    path: str | Path, *, seed: int = 0, size: int = 600, overwrite: bool = False
) -> Path:
    """Write the synthetic Sentinel-2 L2A demo catalog under ``path``; return its catalog.json.

    Two ``size`` x ``size`` px tiles at 10 m (32TQT, EPSG:32632 and 33TTN, EPSG:32633) either
    side of the 12°E zone line, 12 dates from 2024-05-02 to 2024-06-26 (25 items: one tile has a
    reprocessed duplicate), COGs for B02, B03, B04, B08 (uint16, 10 m) and SCL (uint8, 20 m). The
    module docstring lists the deliberate fixtures (BOA offset, duplicate, partial swath).

    Parameters
    ----------
    path
        Directory to write into; created if missing. Must be empty, absent or an earlier demo
        catalog unless ``overwrite`` is True.
    seed
        Seed of the landscape and the weather. The same seed gives byte-identical files.
    size
        Tile width in 10 m pixels, a multiple of 6 (so the 60 m grid aligns) from 300 to 2400.
    overwrite
        Regenerate even when a complete demo catalog with these parameters exists, and replace
        ``catalog.json``, ``itemcollection.json`` and ``sentinel-2-l2a/`` in a directory that
        is not a demo catalog (other files there are left alone).

    Returns
    -------
    Path
        ``path / "catalog.json"``. A complete catalog made with the same parameters is returned
        as is, without rewriting (``demo-params.json`` records the parameters).

    Raises
    ------
    SpecError
        ``seed`` or ``size`` is out of range.
    WriteError
        ``path`` is a file, or a non-empty directory that is no demo catalog and ``overwrite``
        is False.

    Examples
    --------
    >>> import pystac, tempfile
    >>> from s2mosaic.demo import make_demo_catalog
    >>> cat = pystac.Catalog.from_file(make_demo_catalog(tempfile.mkdtemp(), size=300))
    >>> len(list(cat.get_items(recursive=True)))
    25
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError("seed", seed, "a non-negative integer")
    if not isinstance(size, int) or isinstance(size, bool) or size % 6 or not 300 <= size <= 2400:
        raise SpecError(
            "size", size, "a multiple of 6 from 300 to 2400 (10 m pixels per tile side)"
        )
    root = Path(path)
    params = {"generator": "s2mosaic.demo", "format": _FORMAT, "seed": seed, "size": size}
    if root.exists() and not root.is_dir():
        raise WriteError(
            f"demo catalog path {str(root)!r} is a file; choose a directory (absent or empty)"
        )
    marker = _read_marker(root / _MARKER)
    if marker is not None and not overwrite and marker.get("complete") is True:
        files = marker.get("files", [])
        same = all(marker.get(k) == v for k, v in params.items())
        if same and all((root / f).is_file() for f in files):
            return root / "catalog.json"
    if marker is None and root.is_dir() and any(root.iterdir()) and not overwrite:
        raise WriteError(
            f"cannot write the demo catalog into {str(root)!r}: the directory is not empty and "
            "holds no demo catalog. Pass overwrite=True or choose an empty directory."
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in ("catalog.json", "itemcollection.json", _MARKER):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / _COLLECTION, ignore_errors=True)
    # Written first as incomplete so an interrupted run is still recognised as ours next time.
    _write_marker(root, {**params, "complete": False})
    files = _generate(root, seed, size)
    _write_marker(root, {**params, "complete": True, "files": files})
    return root / "catalog.json"


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == "s2mosaic.demo" else None


def _write_marker(root: Path, data: dict[str, Any]) -> None:
    (root / _MARKER).write_text(json.dumps(data, indent=1) + "\n")


def demo_spec(catalog: str | Path, output_dir: str | Path) -> MosaicSpec:
    """The spec ``s2mosaic demo`` runs: the demo AOI across both UTM zones, onto EPSG:32632.

    Outputs (overwritten on each run): ``mosaic.zarr``, ``mosaic.tif``, ``rgb.png`` and
    ``mosaic.metadata.json`` in ``output_dir``.

    Examples
    --------
    >>> spec = demo_spec("s2mosaic-demo/catalog/catalog.json", "s2mosaic-demo/output")
    >>> spec.composite.method, spec.grid.crs
    ('percentile', 'EPSG:32632')
    """
    out = Path(output_dir)
    return MosaicSpec(
        name="s2mosaic-demo",
        aoi=list(DEMO_AOI_BBOX),
        period=list(DEMO_PERIOD),
        source={"stac": str(catalog), "collection": _COLLECTION},
        bands=["red", "green", "blue", "nir"],
        grid={"crs": f"EPSG:{_scene.COMMON_EPSG}", "resolution": 10},
        composite={"method": "percentile", "percentile": 25},
        output={"zarr": out / "mosaic.zarr", "cog": out / "mosaic.tif", "rgb": out / "rgb.png",
                "overwrite": True},
        runtime={"chunks": 256},
    )
