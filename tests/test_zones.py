"""AOIs across UTM zones, outputs in EPSG:4326 / 5070 / 3035: no seam, no hole, at zone lines
and tile edges.

The oracle warps every scene of both zones onto the output grid with GDAL itself
(``rasterio.warp.reproject``, nearest), fuses the two tiles of each date first-valid, masks with
the warped SCL and reduces with NumPy - sharing no code with s2mosaic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
import xarray as xr
from pyproj import Transformer

import s2mosaic
from s2mosaic.demo import DEMO_AOI_BBOX, demo_spec

from .oracle import aoi_inside, reduce
from .test_demo_pipeline import KEYS, _tile_items

SCL_INVALID = (0, 1, 3, 8, 9, 10)


def _warp(href: str, shape: tuple[int, int], transform: rasterio.Affine, crs: str,
          dtype: str) -> np.ndarray:
    out = np.zeros(shape, dtype)
    with rasterio.open(href) as src:
        rasterio.warp.reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs,
                                dst_transform=transform, dst_crs=crs, src_nodata=0,
                                dst_nodata=0, resampling=rasterio.warp.Resampling.nearest)
    return out


def _oracle(catalog: Path, shape: tuple[int, int], transform: rasterio.Affine, crs: str,
            west_first: bool) -> dict[str, np.ndarray]:
    """Percentile-25 composite of both zones on the output grid, fusing each date's two tiles
    first-valid in the given order."""
    tiles = ["32TQT", "33TTN"] if west_first else ["33TTN", "32TQT"]
    by_date: dict[str, list] = {}
    for tile in tiles:
        for item in _tile_items(catalog, tile):
            by_date.setdefault(item.datetime.date().isoformat(), []).append(item)
    stacks: dict[str, list[np.ndarray]] = {n: [] for n in KEYS}
    valid = []
    for date in sorted(by_date):
        fused = {n: np.zeros(shape, np.uint16) for n in KEYS}
        ok = np.zeros(shape, bool)
        for item in by_date[date]:
            bands = {n: _warp(item.assets[k].get_absolute_href(), shape, transform, crs, "uint16")
                     for n, k in KEYS.items()}
            if item.assets["B04"].extra_fields["raster:bands"][0].get("offset", 0.0):
                for v in bands.values():
                    v[v != 0] = np.maximum(v[v != 0], 1001) - 1000
            scl = _warp(item.assets["SCL"].get_absolute_href(), shape, transform, crs, "uint8")
            has = np.all([v != 0 for v in bands.values()], axis=0)
            take = has & ~(fused["red"] != 0)  # first valid (non-nodata) item wins
            for n in KEYS:
                fused[n][take] = bands[n][take]
            ok[take] = ~np.isin(scl[take], SCL_INVALID)
        for n in KEYS:
            stacks[n].append(fused[n])
        valid.append(ok)
    v = np.stack(valid)
    return {n: reduce(np.stack(stacks[n]), v, "percentile", 25) for n in KEYS}


def _near(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Where ``got`` equals a value of ``expected``'s 3×3 neighbourhood."""
    pad = np.pad(expected, 1)
    h, w = got.shape
    near = np.zeros(got.shape, bool)
    for dy in range(3):
        for dx in range(3):
            near |= pad[dy:dy + h, dx:dx + w] == got
    return near


def test_zone_line_has_no_seam_in_a_tiled_geographic_mosaic(demo_catalog: Path,
                                                           tmp_path: Path) -> None:
    """EPSG:4326 output over both zones in 128 px tiles: identical to one untiled graph (no tile
    seam), no hole inside the AOI, and along 12°E equal to the GDAL-warped oracle up to
    scattered nearest-pick differences (no zone seam)."""
    res = 0.0001
    runs = {}
    for tile in (128, 4096):
        out = tmp_path / str(tile)
        spec = demo_spec(demo_catalog, out).replace(
            grid={"crs": "EPSG:4326", "resolution": res}, output={"cog": out / "m.tif"},
            runtime={"chunks": 128, "tile_size": tile, "scheduler": "synchronous"})
        report = s2mosaic.run(spec)
        assert report.tiles["total"] == (10 if tile == 128 else 1)
        with rasterio.open(out / "m.tif") as cog:
            runs[tile] = cog.read()
            transform, shape = cog.transform, (cog.height, cog.width)
            assert cog.crs.to_epsg() == 4326
    np.testing.assert_array_equal(runs[128], runs[4096])
    got = runs[128]
    inside = aoi_inside(shapely.box(*DEMO_AOI_BBOX), "EPSG:4326", transform, shape)
    count = got[4]
    assert (count[inside] > 0).all(), "holes inside the AOI"
    # The zone line: the column whose pixels straddle 12°E; the strip around it lies in the
    # overlap of the two tiles, where both zones' scenes compete for every pixel.
    line = round((12.0 - transform.c) / transform.a)
    strip = slice(line - 24, line + 24)
    oracle = _oracle(demo_catalog, shape, transform, "EPSG:4326", west_first=True)
    for i, name in enumerate(KEYS):
        exp = np.where(inside, oracle[name], 0)
        off = ~_near(exp, got[i]) & inside
        # Differences are nearest picks that GDAL's per-window approximate transformer moves
        # by one source pixel (values from the oracle's 3×3 neighbourhood) and, rarely, the
        # 20 m SCL picking its own neighbour; a seam would be a column of them.
        columns = off[:, strip].mean(axis=0)
        assert off[:, strip].mean() < 0.04, f"{name}: {off[:, strip].mean():.2%} in the strip"
        assert columns.max() < 0.15, f"{name}: a column near 12°E differs in {columns.max():.0%}"
        assert off[:, :100].mean() < 0.01 and off[:, -100:].mean() < 0.01


@pytest.mark.parametrize("crs", ["EPSG:5070", "EPSG:3035"])
def test_continental_equal_area_grids(demo_catalog: Path, tmp_path: Path, crs: str) -> None:
    """CONUS Albers and LAEA Europe: the grid covers the AOI, data on both sides of 12°E."""
    spec = demo_spec(demo_catalog, tmp_path).replace(
        grid={"crs": crs, "resolution": 10},
        output={"zarr": tmp_path / "m.zarr"},
        runtime={"chunks": 128, "tile_size": 128, "scheduler": "synchronous"})
    report = s2mosaic.run(spec)
    assert report.crs == crs
    z = xr.open_zarr(tmp_path / "m.zarr", mask_and_scale=False)
    assert z.rio.crs.to_epsg() == int(crs.split(":")[1])
    count = z["count"].values
    t = z.rio.transform()
    # Both sides of 12°E are filled (the grid is rotated and sheared against lon/lat here, so
    # sample points inside the AOI rather than rows).
    lon, lat = np.meshgrid(np.r_[np.linspace(11.975, 11.995, 21), np.linspace(12.005, 12.025, 21)],
                           np.linspace(47.495, 47.505, 11))
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    col, row = ~t * (x, y)
    hit = count[np.floor(row).astype(int), np.floor(col).astype(int)]
    assert (hit > 0).all(), f"{int((hit == 0).sum())} AOI points without data"
