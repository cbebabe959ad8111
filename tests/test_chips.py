"""Chips for ML: keys, grids, batches, files read back through GDAL, resume; CLI export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from PIL import Image
from pyproj import Transformer
from typer.testing import CliRunner

import s2mosaic
from s2mosaic._chips import chip_at, chips_over, make_chips
from s2mosaic.cli import app
from s2mosaic.demo import DEMO_AOI_BBOX, demo_spec
from s2mosaic.errors import SpecError, WriteError

BANDS = ("red", "green", "blue", "nir", "count")


def test_chip_keys_are_a_regular_utm_grid() -> None:
    c = chip_at(12.0, 47.5, resolution=5, size=250)
    assert c.key == "5:250:0:33N:219:4212" and c.geobox.shape.yx == (250, 250)
    assert c.geobox.crs.epsg == 32633
    x, y = Transformer.from_crs("EPSG:4326", 32633, always_xy=True).transform(12.0, 47.5)
    b = c.geobox.boundingbox
    assert b.left <= x < b.right and b.bottom <= y < b.top
    assert b.left == 219 * 1250 and b.top == 4213 * 1250
    # A point one chip east lands in the next chip; the same point, the same chip.
    east = Transformer.from_crs(32633, "EPSG:4326", always_xy=True).transform(x + 1250, y)
    assert chip_at(*east, resolution=5, size=250).key == "5:250:0:33N:220:4212"
    assert chip_at(12.0, 47.5, resolution=5, size=250) == c
    padded = chip_at(12.0, 47.5, resolution=5, size=250, pad=8)
    assert padded.geobox.shape.yx == (266, 266) and padded.key.startswith("5:250:8:")
    assert chip_at(-70.0, -33.0, resolution=10, size=100).key.split(":")[3] == "19S"
    for bad in ({"resolution": 0}, {"size": 0}, {"pad": -1}):
        with pytest.raises(SpecError, match=r"chips\."):
            chip_at(12.0, 47.5, **bad)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"chips\.points"):
        chip_at(12.0, 88.0)


def test_chips_over_an_aoi_across_two_zones_cover_it() -> None:
    aoi = shapely.box(*DEMO_AOI_BBOX)
    chips = chips_over(aoi, resolution=10, size=128)
    zones = {c.key.split(":")[3] for c in chips}
    assert zones == {"32N", "33N"}
    union = shapely.union_all([c.geobox.extent.to_crs("EPSG:4326").geom for c in chips])
    assert union.buffer(1e-6).contains(aoi)
    assert [c.key for c in chips] == sorted(c.key for c in chips)


def test_chips_equal_the_mosaic_on_the_same_pixels(demo_catalog: Path, tmp_path: Path) -> None:
    """Chips at 10 m in zone 32 sit on the run's native grid: same pixels, same values."""
    spec = demo_spec(demo_catalog, tmp_path / "run").replace(
        output={"zarr": tmp_path / "run" / "m.zarr"},
        runtime={"chunks": 128, "scheduler": "synchronous"})
    s2mosaic.run(spec)
    z = xr.open_zarr(tmp_path / "run" / "m.zarr", mask_and_scale=False)
    lons = np.linspace(11.976, 11.99, 3)
    lats = np.linspace(47.496, 47.504, 2)
    chips = [chip_at(lon, lat, resolution=10, size=32) for lon in lons for lat in lats]
    report = make_chips(spec, chips, tmp_path / "chips", batch=4)
    assert (report.written, report.skipped, report.batches) == (6, 0, 2)
    lines = [json.loads(line) for line in report.manifest.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["product"] == {"kind": "chips",
                                                                    "format": "tif"}
    rows = [r for r in lines if r["kind"] == "chip"]
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in chips)
    for chip in chips:
        row = next(r for r in rows if r["key"] == chip.key)
        with rasterio.open(tmp_path / "chips" / row["path"]) as src:
            assert src.crs.to_epsg() == 32632 and src.descriptions == BANDS
            assert src.transform == chip.geobox.affine and src.nodata == 0
            got = src.read()
        b = chip.geobox.boundingbox
        window = z.sel(x=slice(b.left, b.right), y=slice(b.top, b.bottom))
        assert window.sizes["x"] == 32 and window.sizes["y"] == 32
        for i, name in enumerate(BANDS):
            np.testing.assert_array_equal(got[i], window[name].values, err_msg=name)
        assert row["valid_fraction"] == pytest.approx((got[4] > 0).mean())
    # A rerun skips every chip already written; a deleted file is redone.
    (tmp_path / "chips" / rows[0]["path"]).unlink()
    again = make_chips(spec, chips, tmp_path / "chips", batch=4)
    assert (again.written, again.skipped) == (1, 5)
    # Chips of another spec never mix into the directory.
    with pytest.raises(WriteError, match=r"another spec or format.*composite"):
        make_chips(spec.replace(composite={"method": "median"}), chips, tmp_path / "chips")


def test_png_chips_and_the_cli(demo_catalog: Path, tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path).replace(runtime={"chunks": 128,
                                                              "scheduler": "synchronous"})
    spec_file = tmp_path / "spec.yaml"
    spec.to_yaml(spec_file)
    pts = tmp_path / "points.csv"
    pts.write_text("lon,lat\n11.98,47.50\n12.02,47.50\n12.0201,47.5001\n")
    res = CliRunner().invoke(app, ["chips", str(spec_file), "-o", str(tmp_path / "png"),
                                   "--points", str(pts), "--size", "48", "--resolution", "5",
                                   "--format", "png"])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2  # the last two points share a chip
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (48, 48, 4) and img[..., 3].max() == 255 and img[..., :3].std() > 1
    bad = tmp_path / "bad.csv"
    bad.write_text("x_coord,y_coord\n1,2\n")
    res = CliRunner().invoke(app, ["chips", str(spec_file), "-o", str(tmp_path / "x"),
                                   "--points", str(bad)])
    assert res.exit_code == 2 and "lon,lat" in res.output


def test_cli_export_streams_a_cog_and_tiles(demo_catalog: Path, tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path).replace(
        output={"zarr": tmp_path / "m.zarr"}, runtime={"chunks": 128, "scheduler": "synchronous"})
    s2mosaic.run(spec)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "m.zarr"), "--cog",
                                   str(tmp_path / "e.tif"), "--tiles", str(tmp_path / "t"),
                                   "--tile-size", "256"])
    assert res.exit_code == 0, res.output
    z = xr.open_zarr(tmp_path / "m.zarr", mask_and_scale=False)
    with rasterio.open(tmp_path / "e.tif") as a, rasterio.open(tmp_path / "t" / "mosaic.vrt") as b:
        assert a.descriptions == b.descriptions == BANDS
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.read(1), z["red"].values)
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--cog", str(tmp_path / "f.tif")])
    assert res.exit_code == 2 and "Zarr store (no .zgroup)" in " ".join(res.output.split())
