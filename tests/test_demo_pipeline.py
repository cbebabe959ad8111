"""End to end on the demo catalog: oracle, foreign grids, cluster vs synchronous bytes, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import shapely.geometry
import xarray as xr
import yaml
from pyproj import Transformer
from typer.testing import CliRunner

import s2mosaic
from s2mosaic._spec import MosaicSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec

from .oracle import aoi_inside, assert_identical_outputs, crop, place, read_native, reduce

KEYS = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08"}


def _all_items(catalog: Path) -> list[pystac.Item]:
    items = list(pystac.Catalog.from_file(str(catalog)).get_items(recursive=True))
    for i in items:
        i.make_asset_hrefs_absolute()
    return items


def _tile_items(catalog: Path, tile: str) -> list[pystac.Item]:
    """Items of one tile, newest processing of each acquisition — chosen independently."""
    best: dict[str, pystac.Item] = {}
    for i in _all_items(catalog):
        if i.properties["s2:mgrs_tile"] != tile:
            continue
        k = i.datetime.isoformat()
        if k not in best or i.properties["s2:generation_time"] > best[k].properties["s2:generation_time"]:
            best[k] = i
    return [best[k] for k in sorted(best)]


def _single_tile_aoi(catalog: Path) -> list[float]:
    """A bbox inside tile 32TQT but outside its overlap with 33TTN."""
    items = _all_items(catalog)
    a = shapely.geometry.shape(next(i for i in items if i.properties["s2:mgrs_tile"] == "32TQT").geometry)
    b = shapely.geometry.shape(next(i for i in items if i.properties["s2:mgrs_tile"] == "33TTN").geometry)
    only_a = a.difference(b.buffer(0.002))
    c = only_a.representative_point()
    box = shapely.box(c.x - 0.006, c.y - 0.004, c.x + 0.006, c.y + 0.004)
    assert only_a.contains(box)
    return list(box.bounds)


def _oracle(catalog: Path, aoi: list[float]) -> tuple[dict[str, np.ndarray], np.ndarray, rasterio.Affine]:
    """Percentile-25 composite of tile 32TQT on its native grid around the AOI, harmonised
    independently."""
    items = _tile_items(catalog, "32TQT")
    native = crop(read_native(items, KEYS, "SCL"), shapely.box(*aoi))
    for t, item in enumerate(items):
        offset = item.assets["B04"].extra_fields["raster:bands"][0].get("offset", 0.0)
        if offset:
            assert offset == pytest.approx(-0.1)
            for name in KEYS:
                v = native.bands[name][t]
                ok = v != 0
                v[ok] = np.maximum(v[ok], 1001) - 1000
    comp = {n: reduce(native.bands[n], native.valid, "percentile", 25) for n in KEYS}
    return comp, native.valid.sum(axis=0).astype(np.uint16), native.transform


def _spec(catalog: Path, tmp: Path, aoi: list[float], **kw: object) -> MosaicSpec:
    base: dict[str, object] = dict(
        aoi=aoi, period=["2024-05-01", "2024-06-30"], source={"stac": str(catalog)},
        bands=list(KEYS), grid={"crs": "EPSG:32632", "resolution": 10},
        output={"zarr": tmp / "m.zarr", "cog": tmp / "m.tif"},
        runtime={"chunks": 128, "scheduler": "synchronous"},
    )
    base.update(kw)
    return MosaicSpec(**base)  # type: ignore[arg-type]


def test_demo_native_grid_equals_oracle(demo_catalog: Path, tmp_path: Path) -> None:
    aoi = _single_tile_aoi(demo_catalog)
    spec = _spec(demo_catalog, tmp_path, aoi)
    report = s2mosaic.run(spec)
    comp, count, ntransform = _oracle(demo_catalog, aoi)
    with rasterio.open(tmp_path / "m.tif") as cog:
        got, transform, shape = cog.read(), cog.transform, (cog.height, cog.width)
    inside = aoi_inside(shapely.box(*aoi), "EPSG:32632", transform, shape)
    for i, name in enumerate(KEYS):
        exp = np.where(inside, place(comp[name], ntransform, transform, shape), 0)
        np.testing.assert_array_equal(got[i], exp, err_msg=name)
    np.testing.assert_array_equal(got[4], np.where(inside, place(count, ntransform, transform, shape), 0))
    assert got[4].max() >= 8  # many clear observations...
    assert (got[4][inside] < got[4].max()).any()  # ...and clouds really masked
    # The reprocessed duplicate was dropped, the rest used; the offset date counted.
    meta = json.loads((tmp_path / "m.metadata.json").read_text())
    assert [d["id"] for d in meta["dropped_items"]] == ["S2B_32TQT_20240621_0_L2A"]
    assert report.observations == 12


@pytest.mark.parametrize("crs,res", [("EPSG:32633", 10.0), ("EPSG:4326", 0.0001)])
def test_foreign_grids_match_the_oracle_warped_with_gdal(demo_catalog: Path, tmp_path: Path,
                                                         crs: str, res: float) -> None:
    aoi = _single_tile_aoi(demo_catalog)
    spec = _spec(demo_catalog, tmp_path, aoi, grid={"crs": crs, "resolution": res})
    s2mosaic.run(spec)
    comp, _, ntransform = _oracle(demo_catalog, aoi)
    with rasterio.open(tmp_path / "m.tif") as cog:
        got, transform, shape = cog.read(), cog.transform, (cog.height, cog.width)
        assert cog.crs == rasterio.crs.CRS.from_user_input(crs)
        bounds = cog.bounds
    # Georeferencing round-trips: the grid covers the AOI, with less than a pixel to spare.
    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    aoi_b = shapely.transform(shapely.segmentize(shapely.box(*aoi), 0.0005),
                              lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))).bounds
    assert bounds.left <= aoi_b[0] < bounds.left + res and bounds.right - res < aoi_b[2] <= bounds.right
    assert bounds.bottom <= aoi_b[1] < bounds.bottom + res and bounds.top - res < aoi_b[3] <= bounds.top
    z = xr.open_zarr(tmp_path / "m.zarr", mask_and_scale=False)
    assert z.rio.crs == rasterio.crs.CRS.from_user_input(crs)
    assert tuple(z.rio.transform())[:6] == pytest.approx(tuple(transform)[:6])

    inside = aoi_inside(shapely.box(*aoi), crs, transform, shape)
    for i, name in enumerate(KEYS):
        exp = np.zeros(shape, np.uint16)
        rasterio.warp.reproject(comp[name], exp, src_transform=ntransform, src_crs="EPSG:32632",
                                dst_transform=transform, dst_crs=crs, src_nodata=0, dst_nodata=0,
                                resampling=rasterio.warp.Resampling.nearest)
        exp = np.where(inside, exp, 0)
        bad = got[i] != exp
        # Nearest-neighbour picks may differ by one source pixel where GDAL's and odc-stac's
        # transforms round differently: every difference must be a value from the 3×3
        # neighbourhood of the oracle, and rare.
        pad = np.pad(exp, 1)
        near = np.zeros_like(bad)
        for dy in range(3):
            for dx in range(3):
                near |= pad[dy : dy + shape[0], dx : dx + shape[1]] == got[i]
        # A value from outside the neighbourhood can only come from a different validity
        # decision (the 20 m SCL warped to a foreign grid picks its own nearest pixel).
        assert (bad & ~near).mean() < 0.002, f"{name}: {int((bad & ~near).sum())} values not from the oracle"
        assert bad.mean() < 0.02, f"{name}: {bad.mean():.3%} of pixels differ"


def test_whole_demo_cluster_and_synchronous_are_byte_identical(
        demo_catalog: Path, tmp_path: Path, dask_client: object) -> None:
    sync = demo_spec(demo_catalog, tmp_path / "sync").replace(
        runtime={"chunks": 128, "scheduler": "synchronous"})
    clus = demo_spec(demo_catalog, tmp_path / "cluster").replace(runtime={"chunks": 128})
    s2mosaic.run(sync)
    s2mosaic.run(clus, client=dask_client)
    assert_identical_outputs(sync.output, clus.output)
    a = sync.output
    # Both zones contribute: the mosaic has data on both sides of 12°E.
    z = xr.open_zarr(a.zarr, mask_and_scale=False)
    cnt = z["count"].values
    assert (cnt > 0).mean() > 0.9
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(a.cog))
    assert valid and not errors


def test_cli_search_run_and_errors(demo_catalog: Path, tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path / "out").replace(
        runtime={"chunks": 256, "scheduler": "synchronous"},
        output={"zarr": tmp_path / "out" / "m.zarr", "cog": tmp_path / "out" / "m.tif"})
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    runner = CliRunner()
    res = runner.invoke(app, ["search", str(path)])
    assert res.exit_code == 0, res.output
    assert "S2B_32TQT_20240502_0_L2A" in res.output and "dropped S2B_32TQT_20240621_0_L2A" in res.output
    res = runner.invoke(app, ["search", str(path), "--json"])
    assert len(json.loads(res.stdout)["items"]) == 24
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    assert spec.output.cog is not None and spec.output.cog.exists()
    report = tmp_path / "out" / "m.report.json"
    # rich wraps long paths anywhere, even inside a name: compare without the whitespace
    assert f"report:{report}" in "".join(res.output.split()) and report.exists()
    res = runner.invoke(app, ["run", str(path), "--resume"])  # finished: nothing to compute
    assert res.exit_code == 0, res.output
    assert "0 tile(s) computed, 1 resumed" in " ".join(res.output.split())
    res = runner.invoke(app, ["run", str(path)])  # outputs exist, no --overwrite
    assert res.exit_code == 2 and "overwrite" in res.output
    assert runner.invoke(app, ["run", str(path), "--overwrite"]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("percentile: 25.0", "percentile: 250"))
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code == 2
    assert "composite.percentile" in res.output and "250" in res.output


def test_demo_command_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's demo command (minus the install): a real LocalCluster in a subprocess,
    into ./s2mosaic-demo; then the spec it wrote, rerun from another directory."""
    proc = subprocess.run([sys.executable, "-m", "s2mosaic.cli", "demo"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dask dashboard" in proc.stderr
    assert "\r" not in proc.stdout + proc.stderr  # not a terminal: progress as plain lines
    demo = tmp_path / "s2mosaic-demo"
    out = demo / "output"
    for name in ("mosaic.zarr", "mosaic.tif", "rgb.png", "mosaic.metadata.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "mosaic.metadata.json").read_text())
    assert meta["notice"] == "Contains modified Copernicus Sentinel data [2024]"
    assert len(meta["items"]) == 24
    # demo.yaml holds paths relative to itself: it reruns from anywhere.
    written = yaml.safe_load((demo / "demo.yaml").read_text())
    assert written["source"]["stac"] == "catalog/catalog.json"
    assert written["output"]["zarr"] == "output/mosaic.zarr"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    res = runner.invoke(app, ["search", "../s2mosaic-demo/demo.yaml"])
    assert res.exit_code == 0 and "24 scene(s)" in res.output, res.output
    before = (out / "mosaic.metadata.json").stat().st_mtime_ns
    res = runner.invoke(app, ["run", str(demo / "demo.yaml"), "--overwrite", "--scheduler",
                              "synchronous"])
    assert res.exit_code == 0, res.output
    assert (out / "mosaic.metadata.json").stat().st_mtime_ns > before
    assert not list(elsewhere.iterdir())
