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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.transform import Affine
from scipy import ndimage

from .errors import SpecError, WriteError
from .spec import MosaicSpec

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
_DATES = tuple(date(2024, 5, 2) + timedelta(days=5 * i) for i in range(12))
_CLOUD_FRACTION = (0.01, 0.30, 0.80, 0.15, 0.45, 0.05, 0.10, 0.65, 0.25, 0.03, 0.40, 0.20)
_OFFSET_DATE, _SWATH_DATE, _DUP_DATE = 6, 8, 10  # 06-01 (both tiles), 06-11 (33TTN), 06-21 (32TQT)
_ZONE_LINE = (12.0, 47.5)  # lon, lat of the centre of the layout
_COMMON_EPSG = 32632
# Shadows fall 720 m away from the sun (azimuth 146°, elevation 64°, clouds ~1.5 km high). The
# shift is whole cells of the cloud lattices (200 m, 50 m), so shadows reuse the cloud fields.
_SHADOW_SHIFT = (-400.0, 600.0)
_SUN_AZIMUTH = round(math.degrees(math.atan2(-_SHADOW_SHIFT[0], -_SHADOW_SHIFT[1])) % 360, 1)
_SUN_ELEVATION = round(math.degrees(math.atan2(1500, math.hypot(*_SHADOW_SHIFT))), 1)

# Cover types: 0 early crop, 1 late crop, 2 grassland, 3 fallow, 4 forest, 5 urban/road, 6 water.
# Pure spectra (B02, B03, B04, B08, reflectance x 10000) mixed with bare soil by a vegetation
# fraction; forest, urban and water are pure.
# fmt: off
_PURE = np.array([[300, 600, 330, 3700], [320, 620, 350, 3500], [380, 700, 450, 3100],
                  [380, 700, 450, 3100], [230, 430, 240, 2800], [1100, 1200, 1300, 1700],
                  [560, 520, 320, 130]], dtype=np.float32).T
# fmt: on
_SOIL = np.array([1250, 1550, 1950, 2450], dtype=np.float32)[:, None, None]
_CLOUD_TINT = np.array([1.04, 1.02, 1.0, 0.96], dtype=np.float32)[:, None, None]


@dataclass(frozen=True)
class _Tile:
    mgrs: str
    epsg: int
    x0: float
    """West edge (m), a multiple of 60 so the 10/20/60 m grids align."""
    y0: float
    """North edge (m), a multiple of 60."""
    size: int

    def transform(self, res: int) -> Affine:
        return Affine(res, 0.0, self.x0, 0.0, -res, self.y0)

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - 10 * self.size, self.x0 + 10 * self.size, self.y0)


def _tiles(size: int) -> tuple[_Tile, _Tile]:
    """Two windows on the real MGRS squares either side of 12°E, each reaching 6 % past it."""
    lon, lat = _ZONE_LINE
    width, reach = 10 * size, 60 * round(0.6 * size / 60)
    tiles = []
    for mgrs, epsg in (("32TQT", 32632), ("33TTN", 32633)):
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        x0 = 60 * round((x + reach) / 60) - width if epsg == 32632 else 60 * round((x - reach) / 60)
        tiles.append(_Tile(mgrs, epsg, float(x0), float(60 * round((y + width / 2) / 60)), size))
    return tiles[0], tiles[1]


class _Field:
    """A smooth N(0, 1) random field on the common plane: a Gaussian-filtered lattice."""

    def __init__(
        self, rng: np.random.Generator, bounds: tuple[float, ...], cell: float, sigma: float = 1.5
    ) -> None:
        w, s, e, n = bounds
        shape = (int((n - s) / cell) + 2, int((e - w) / cell) + 2)
        grid = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        self.grid = ((grid - grid.mean()) / grid.std()).astype(np.float32)
        self.origin, self.cell = (w, n), cell

    def shifted(self, dx: float, dy: float) -> _Field:
        """The field moved by (dx, dy) m in whole cells: its value at p is the old one at p - d."""
        cols, rows = round(-dx / self.cell), round(dy / self.cell)
        out = object.__new__(_Field)
        out.origin, out.cell = self.origin, self.cell
        out.grid = np.roll(self.grid, (-rows, -cols), axis=(0, 1))  # margins absorb the wrap
        return out


class _Points:
    """Pixel centres of one tile in the common plane; bilinear weights cached per lattice cell."""

    def __init__(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> None:
        self.x, self.y = x, y
        self._cache: dict[tuple[float, int], tuple[NDArray[Any], ...]] = {}

    def __call__(self, field: _Field) -> NDArray[np.float32]:
        ncols = field.grid.shape[1]
        key = (field.cell, ncols)
        if key not in self._cache:
            w, n = field.origin
            rows, cols = (n - self.y) / field.cell, (self.x - w) / field.cell
            r0, c0 = np.floor(rows), np.floor(cols)
            index = (r0 * ncols + c0).astype(np.int32)
            weights = (cols - c0).astype(np.float32), (rows - r0).astype(np.float32)
            self._cache[key] = (index, *weights)
        index, wx, wy = self._cache[key]
        g = field.grid.ravel()
        top = g[index] + (g[index + 1] - g[index]) * wx
        low = g[index + ncols] + (g[index + ncols + 1] - g[index + ncols]) * wx
        return top + (low - top) * wy


def _hash01(a: NDArray[np.int64], b: NDArray[np.int64], seed: int) -> NDArray[np.float32]:
    """Deterministic uniform [0, 1) per integer pair (splitmix64 finaliser): parcel attributes."""
    h = (a * 73856093 ^ b * 19349663 ^ (seed % 2**31 + 1) * 83492791).view(np.uint64)
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = (h ^ (h >> np.uint64(33))) * np.uint64(mult)
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(2**24)).astype(np.float32)


class _World:
    """The ground and the weather, as functions of position in EPSG:32632 coordinates."""

    def __init__(self, seed: int, tiles: tuple[_Tile, _Tile]) -> None:
        to_common = Transformer.from_crs(tiles[1].epsg, _COMMON_EPSG, always_xy=True)
        w, s, e, n = tiles[0].bounds()
        xs, ys = to_common.transform(*np.meshgrid(tiles[1].bounds()[::2], tiles[1].bounds()[1::2]))
        w, s, e, n = min(w, xs.min()), min(s, ys.min()), max(e, xs.max()), max(n, ys.max())
        self.bounds = (w - 2000, s - 2000, e + 2000, n + 2000)  # room for the shadow shift
        # Sample points over the union of the tiles, to set each date's cloud fraction.
        self.sample = _Points(*np.meshgrid(np.linspace(w, e, 128), np.linspace(s, n, 128)))
        self.seed = seed
        to_common = Transformer.from_crs(4326, _COMMON_EPSG, always_xy=True)
        self.centre = to_common.transform(*_ZONE_LINE)
        rng = np.random.default_rng([seed, 1])
        self.forest, self.lake = _Field(rng, self.bounds, 250), _Field(rng, self.bounds, 300)
        self.soil, self.texture = _Field(rng, self.bounds, 400), _Field(rng, self.bounds, 30)
        self.river_phase = float(rng.uniform(0, 2 * np.pi))

    def ground(self, at: _Points) -> dict[str, NDArray[Any]]:
        """Static layers: cover type, per-parcel vigour, soil brightness, fine texture."""
        (cx, cy), x, y = self.centre, at.x, at.y
        # Parcels: a rotated, staggered grid of ~170 x 260 m fields with hashed crop types.
        theta = 0.21
        u = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
        v = (y - cy) * math.cos(theta) - (x - cx) * math.sin(theta)
        pu = np.floor(u / 170).astype(np.int64)
        pv = np.floor(v / 260 + _hash01(pu, pu * 0, self.seed)).astype(np.int64)
        h = _hash01(pu, pv, self.seed)
        cover = np.searchsorted(np.array([0.30, 0.58, 0.80, 0.90], np.float32), h, side="right")
        cover = cover.astype(np.uint8)  # 4 (h >= 0.9) is a small wood
        texture = at(self.texture)
        cover[at(self.forest) > 0.9] = 4
        village = np.hypot(x - cx - 600, y - cy + 400) < 450 + 150 * texture
        roads = (np.abs((x - cx) * 0.57 - (y - cy) * 0.82) < 6) | (
            np.abs((x - cx - 900) * 0.94 + (y - cy) * 0.34) < 5
        )
        cover[village | roads] = 5
        # A meandering ~30 m river crossing both tiles, and a few lakes.
        river_y = cy - 700 + 500 * np.sin((x - cx) / 1100 + self.river_phase)
        cover[(np.abs(y - river_y) < 15) | (at(self.lake) > 2.0)] = 6
        return {
            "cover": cover,
            "vigour": 0.9 + 0.2 * _hash01(pv, pu, self.seed + 7),
            "soil": np.clip(1 + 0.12 * at(self.soil), 0.75, 1.25),
            "texture": texture,
        }

    def weather(self, day: int) -> dict[str, Any]:
        """Cloud fields of one date, and the level that gives its cloud fraction over the tiles."""
        rng = np.random.default_rng([self.seed, 2, day])
        coarse, fine = _Field(rng, self.bounds, 200), _Field(rng, self.bounds, 50)
        density = self.sample(coarse) + 0.35 * self.sample(fine)
        return {
            "coarse": coarse,
            "fine": fine,
            "cirrus": _Field(rng, self.bounds, 200, sigma=4),  # where edges are thin cirrus
            "bright": _Field(rng, self.bounds, 50, sigma=3),
            "level": float(np.quantile(density, 1 - _CLOUD_FRACTION[day])),
        }


def _veg_fraction(day: int) -> NDArray[np.float32]:
    """Vegetation fraction per cover type on a date: crops ripen or green up, the rest is stable."""
    t = (_DATES[day] - _DATES[0]).days
    early = 0.85 - 0.55 * min(max((t - 28) / 22, 0), 1)
    late = 0.12 + 0.73 * min(max((t - 5) / 45, 0), 1)
    return np.array([early, late, 0.75, 0.08, 1, 1, 1], dtype=np.float32)


def _render(
    world: _World, ground: dict[str, NDArray[Any]], at: _Points, tile_index: int, day: int
) -> tuple[NDArray[np.uint16], NDArray[np.uint8], NDArray[np.bool_]]:
    """One tile on one date: 10 m DNs (4, n, n), 20 m SCL, and the 10 m cloud/shadow truth."""
    n = at.x.shape[0]
    cover = ground["cover"]
    f = _veg_fraction(day)[cover]
    crops = cover < 4
    f[crops] = np.clip(f[crops] * ground["vigour"][crops] + 0.04 * ground["texture"][crops], 0, 1)
    surface = f * _PURE[:, cover] + (1 - f) * _SOIL * ground["soil"]
    rng = np.random.default_rng([world.seed, 3, tile_index, day])
    noise = rng.standard_normal(surface.shape, dtype=np.float32)
    surface *= (1 + 0.04 * ground["texture"]) * (1 + 0.006 * noise)

    sky = world.weather(day)
    dx, dy = _SHADOW_SHIFT

    def opacity(coarse: _Field, fine: _Field) -> NDArray[np.float32]:
        return np.clip((at(coarse) + 0.35 * at(fine) - sky["level"]) / 0.5, 0, 1)

    alpha = opacity(sky["coarse"], sky["fine"])
    # The opacity of the cloud up-sun of each pixel: its shadow.
    shade = opacity(sky["coarse"].shifted(dx, dy), sky["fine"].shifted(dx, dy))
    cloud = np.clip(7200 + 1300 * at(sky["bright"]), 4500, 9800) * _CLOUD_TINT
    dn = surface * (1 - 0.6 * np.minimum(4 * shade, 1))  # x0.4 in the umbra
    dn = dn * (1 - alpha) + cloud * alpha
    # Priority per 10 m pixel: 4 high cloud (9), 3 medium (8), 2 cirrus (10), 1 shadow (3), 0 clear.
    rank = (shade > 0).astype(np.uint8)
    rank[alpha > 0] = np.where(at(sky["cirrus"])[alpha > 0] > 0.3, 2, 3)
    rank[alpha >= 0.15] = 3
    rank[alpha >= 0.5] = 4
    # SCL at 20 m takes the highest priority of its four 10 m pixels, so a mask is never short.
    rank20 = rank.reshape(n // 2, 2, n // 2, 2).max(axis=(1, 3))
    sub = surface[:, ::2, ::2]
    ndvi = (sub[3] - sub[2]) / (sub[3] + sub[2])
    scl = np.where(cover[::2, ::2] == 6, 6, np.where(ndvi > 0.4, 4, 5)).astype(np.uint8)
    scl = np.where(rank20 > 0, np.array([0, 3, 10, 8, 9], np.uint8)[rank20], scl).astype(np.uint8)
    if tile_index == 1 and day == _SWATH_DATE:
        scl[~_swath_valid(n // 2)] = 0
    dn = np.clip(np.rint(dn), 1, 64535).astype(np.uint16)
    # The truth for tests: every pixel whose DN a cloud or a shadow changed.
    changed = (dn != np.clip(np.rint(surface), 1, 64535).astype(np.uint16)).any(axis=0)
    dn[:, np.repeat(np.repeat(scl == 0, 2, 0), 2, 1)] = 0
    return dn, scl, changed


def _swath_valid(n: int) -> NDArray[np.bool_]:
    """Pixels west of a swath edge running from 55 % of the top edge to 95 % of the bottom."""
    frac = (np.arange(n) + 0.5) / n
    return frac[None, :] < 0.55 + 0.40 * frac[:, None]


def _write_cog(path: Path, arr: NDArray[Any], tile: _Tile, res: int, resampling: str) -> None:
    # Force at least one overview level so even small test tiles are COGs with overviews.
    levels = max(1, math.ceil(math.log2(arr.shape[0] / 256)))
    grid = {"crs": f"EPSG:{tile.epsg}", "transform": tile.transform(res), "dtype": arr.dtype}
    overviews = {"overview_count": levels, "overview_resampling": resampling}
    with rasterio.open(
        path, "w", width=arr.shape[1], height=arr.shape[0], **grid, **overviews, **_COG_PROFILE
    ) as dst:
        dst.write(arr, 1)


def _footprint(tile: _Tile, swath_cut: bool) -> dict[str, Any]:
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
    tile: _Tile, day: int, seq: int, baseline: str, generated: datetime, scl: NDArray[np.uint8]
) -> pystac.Item:
    platform = "S2B" if day % 2 == 0 else "S2A"  # S2A and S2B alternate on one relative orbit
    when = datetime.combine(_DATES[day], datetime.min.time(), UTC) + timedelta(
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
        "view:sun_azimuth": _SUN_AZIMUTH,
        "view:sun_elevation": _SUN_ELEVATION,
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
    tile: _Tile, key: str, title: str, res: int, dtype: str, scaling: dict[str, float]
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


def _pixel_centres(tile: _Tile) -> _Points:
    cols, rows = np.meshgrid(np.arange(tile.size) + 0.5, np.arange(tile.size) + 0.5)
    x, y = tile.x0 + 10 * cols, tile.y0 - 10 * rows
    if tile.epsg != _COMMON_EPSG:
        x, y = Transformer.from_crs(tile.epsg, _COMMON_EPSG, always_xy=True).transform(x, y)
    return _Points(x, y)


def _generate(root: Path, seed: int, size: int) -> list[str]:
    """Write rasters and STAC JSON under ``root``; return the relative paths written."""
    tiles = _tiles(size)
    world = _World(seed, tiles)
    scenes = []
    for tile_index, tile in enumerate(tiles):
        at = _pixel_centres(tile)
        scenes += [(tile_index, day, at, world.ground(at)) for day in range(len(_DATES))]

    def render(k: int) -> tuple[NDArray[np.uint16], NDArray[np.uint8], NDArray[np.bool_]]:
        tile_index, day, at, ground = scenes[k]
        return _render(world, ground, at, tile_index, day)

    items: list[pystac.Item] = []
    # Render the next scene (NumPy, mostly without the GIL) while GDAL writes this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(render, 0)
        for k, (tile_index, day, _, _) in enumerate(scenes):
            (dn, scl, _), tile = ahead.result(), tiles[tile_index]
            if k + 1 < len(scenes):
                ahead = pool.submit(render, k + 1)
            generated = datetime.combine(_DATES[day], datetime.min.time(), UTC) + timedelta(
                hours=12, minutes=(17 * day) % 60, seconds=11
            )
            # (sequence, baseline, generation time, DN shift); see the module docstring.
            versions = [(0, "03.01", generated, 0)]
            if day == _OFFSET_DATE:
                versions = [(0, "05.10", generated, 1000)]  # BOA offset from baseline 04.00 on
            elif day == _DUP_DATE and tile_index == 0:
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
        Tile width in 10 m pixels, a multiple of 6 (so the 60 m grid aligns) from 300 to 1200.
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
    if not isinstance(size, int) or isinstance(size, bool) or size % 6 or not 300 <= size <= 1200:
        raise SpecError(
            "size", size, "a multiple of 6 from 300 to 1200 (10 m pixels per tile side)"
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
        grid={"crs": f"EPSG:{_COMMON_EPSG}", "resolution": 10},
        composite={"method": "percentile", "percentile": 25},
        output={"zarr": out / "mosaic.zarr", "cog": out / "mosaic.tif", "rgb": out / "rgb.png",
                "overwrite": True},
        runtime={"chunks": 256},
    )
