"""The synthetic scene behind the demo catalog: tile layout, ground, clouds, shadows and SCL.

Everything here makes pixels; :mod:`s2mosaic.demo` writes them out as COGs and STAC items. The
layout and the deliberate fixtures are described in the docstring of :mod:`s2mosaic.demo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.transform import Affine
from scipy import ndimage

DATES = tuple(date(2024, 5, 2) + timedelta(days=5 * i) for i in range(12))
_CLOUD_FRACTION = (0.01, 0.30, 0.80, 0.15, 0.45, 0.05, 0.10, 0.65, 0.25, 0.03, 0.40, 0.20)
OFFSET_DATE, _SWATH_DATE, DUP_DATE = 6, 8, 10  # 06-01 (both tiles), 06-11 (33TTN), 06-21 (32TQT)
_ZONE_LINE = (12.0, 47.5)  # lon, lat of the centre of the layout
COMMON_EPSG = 32632
# Shadows fall 720 m away from the sun (azimuth 146°, elevation 64°, clouds ~1.5 km high). The
# shift is whole cells of the cloud lattices (200 m, 50 m), so shadows reuse the cloud fields.
_SHADOW_SHIFT = (-400.0, 600.0)
SUN_AZIMUTH = round(math.degrees(math.atan2(-_SHADOW_SHIFT[0], -_SHADOW_SHIFT[1])) % 360, 1)
SUN_ELEVATION = round(math.degrees(math.atan2(1500, math.hypot(*_SHADOW_SHIFT))), 1)

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
class Tile:
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


def tiles(size: int) -> tuple[Tile, Tile]:
    """Two windows on the real MGRS squares either side of 12°E, each reaching 6 % past it."""
    lon, lat = _ZONE_LINE
    width, reach = 10 * size, 60 * round(0.6 * size / 60)
    tiles = []
    for mgrs, epsg in (("32TQT", 32632), ("33TTN", 32633)):
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        x0 = 60 * round((x + reach) / 60) - width if epsg == 32632 else 60 * round((x - reach) / 60)
        tiles.append(Tile(mgrs, epsg, float(x0), float(60 * round((y + width / 2) / 60)), size))
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


class World:
    """The ground and the weather, as functions of position in EPSG:32632 coordinates."""

    def __init__(self, seed: int, tiles: tuple[Tile, Tile]) -> None:
        to_common = Transformer.from_crs(tiles[1].epsg, COMMON_EPSG, always_xy=True)
        w, s, e, n = tiles[0].bounds()
        xs, ys = to_common.transform(*np.meshgrid(tiles[1].bounds()[::2], tiles[1].bounds()[1::2]))
        w, s, e, n = min(w, xs.min()), min(s, ys.min()), max(e, xs.max()), max(n, ys.max())
        self.bounds = (w - 2000, s - 2000, e + 2000, n + 2000)  # room for the shadow shift
        # Sample points over the union of the tiles, to set each date's cloud fraction.
        self.sample = _Points(*np.meshgrid(np.linspace(w, e, 128), np.linspace(s, n, 128)))
        self.seed = seed
        to_common = Transformer.from_crs(4326, COMMON_EPSG, always_xy=True)
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
    t = (DATES[day] - DATES[0]).days
    early = 0.85 - 0.55 * min(max((t - 28) / 22, 0), 1)
    late = 0.12 + 0.73 * min(max((t - 5) / 45, 0), 1)
    return np.array([early, late, 0.75, 0.08, 1, 1, 1], dtype=np.float32)


def render(
    world: World, ground: dict[str, NDArray[Any]], at: _Points, tile_index: int, day: int
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


def pixel_centres(tile: Tile) -> _Points:
    cols, rows = np.meshgrid(np.arange(tile.size) + 0.5, np.arange(tile.size) + 0.5)
    x, y = tile.x0 + 10 * cols, tile.y0 - 10 * rows
    if tile.epsg != COMMON_EPSG:
        x, y = Transformer.from_crs(tile.epsg, COMMON_EPSG, always_xy=True).transform(x, y)
    return _Points(x, y)
