"""Grids users can trust: tiled runs in any CRS with any mask margin, AOIs across the
antimeridian, and resolutions or grid sizes that cannot be meant, refused at validation."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import shapely
import xarray as xr
from typer.testing import CliRunner

import s2mosaic
from s2mosaic._grid import Footprints, output_geobox
from s2mosaic._spec import DEFAULT_MAX_PIXELS, MosaicSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError

from .test_demo_pipeline import _single_tile_aoi

BANDS = ["red", "nir", "count"]


# -- tiled runs in any CRS with any mask margin ------------------------------------------------
@pytest.fixture(scope="module")
def small_aoi(demo_catalog: Path) -> list[float]:
    """A small bbox inside one demo tile (about 60 × 40 px at 10 m)."""
    w, s, e, n = _single_tile_aoi(demo_catalog)
    cx, cy = (w + e) / 2, (s + n) / 2
    return [cx - 0.004, cy - 0.002, cx + 0.004, cy + 0.002]


@pytest.mark.parametrize("crs, res", [("EPSG:4326", 0.0001), ("EPSG:3035", 10)])
@pytest.mark.parametrize("mask", [{"dilation": 2}, {"buffer_m": 25}])
def test_tiled_runs_with_mask_margins_equal_one_tile_in_any_crs(
        demo_catalog: Path, tmp_path: Path, small_aoi: list[float], crs: str, res: float,
        mask: dict[str, Any]) -> None:
    """The margin a tile reads for its mask buffer is cut off on the grid's own dimensions
    (``latitude``/``longitude`` in EPSG:4326), and the tiles equal one tile byte for byte."""
    got = {}
    for tile in (32, 4096):
        out = tmp_path / str(tile) / "m.zarr"
        report = s2mosaic.run(demo_spec(demo_catalog, tmp_path).replace(
            aoi=small_aoi, period=["2024-05-01", "2024-05-31"], bands=["red", "nir"],
            grid={"crs": crs, "resolution": res}, mask={"method": "scl", **mask},
            output={"zarr": out},
            runtime={"chunks": 16, "tile_size": tile, "scheduler": "synchronous"}))
        assert report.tiles["total"] >= 4 if tile == 32 else report.tiles["total"] == 1
        got[tile] = xr.open_zarr(out, mask_and_scale=False)
    for n in BANDS:
        np.testing.assert_array_equal(got[32][n].values, got[4096][n].values, err_msg=n)
    assert (got[32]["count"].values > 0).mean() > 0.9
    if "dilation" in mask:  # tiled exports cut on the grid's own dimensions too
        vrt = s2mosaic.export_tiles(tmp_path / "32" / "m.zarr", tmp_path / "tiles", 32)
        with rasterio.open(vrt) as src:
            assert src.crs.to_epsg() == int(crs.split(":")[1])
            for i, n in enumerate(src.descriptions, start=1):
                np.testing.assert_array_equal(src.read(i), got[32][n].values, err_msg=n)


# -- the antimeridian ---------------------------------------------------------------------------
ACROSS = [179.5, -17.0, -179.5, -16.0]  # Fiji: 1° of longitude across 180°
SPLIT = {"type": "MultiPolygon", "coordinates": [
    [[[179.5, -17], [180, -17], [180, -16], [179.5, -16], [179.5, -17]]],
    [[[-180, -17], [-179.5, -17], [-179.5, -16], [-180, -16], [-180, -17]]]]}


def _spec(aoi: Any, **kw: Any) -> MosaicSpec:
    return MosaicSpec(aoi=aoi, period=["2024-05-01", "2024-05-31"],
                      source={"stac": "catalog.json"}, **kw)


@pytest.mark.parametrize("aoi", [ACROSS, SPLIT, {"type": "Feature", "geometry": SPLIT}],
                         ids=["bbox-west>east", "multipolygon", "feature"])
def test_aoi_across_180_gets_a_utm_grid_of_its_own_size(aoi: Any) -> None:
    """Zone 60 or 1 (the centre is on 180°), about 107 × 111 km at 10 m, not a grid round the
    world; the bbox reads back with west > east."""
    spec = _spec(aoi)
    assert spec.aoi.crosses_antimeridian
    assert spec.aoi.bbox == pytest.approx(tuple(ACROSS))
    assert spec.aoi.geometry.equals(shapely.geometry.shape(SPLIT))
    gbox = output_geobox(spec)
    assert gbox.crs is not None and gbox.crs.epsg in (32760, 32701)
    h, w = gbox.shape.yx
    assert 10_500 < w < 11_000 and 11_000 < h < 11_400, (h, w)
    # the AOI fills its grid: both halves are on it, side by side
    assert spec.aoi.odc_geometry().to_crs(gbox.crs).area > 0.95 * gbox.extent.area


def test_aoi_west_of_180_keeps_its_own_zone() -> None:
    spec = _spec([170.2, -17, 171.0, -16])
    assert not spec.aoi.crosses_antimeridian and spec.aoi.bbox == (170.2, -17, 171.0, -16)
    assert output_geobox(spec).crs.epsg == 32759
    # islands on both sides of 180° (none touching it) also lie across it
    pair = _spec("MULTIPOLYGON (((178 -17, 178.5 -17, 178.5 -16, 178 -17)), "
                 "((-178.5 -17, -178 -17, -178 -16, -178.5 -17)))")
    assert pair.aoi.crosses_antimeridian and pair.aoi.bbox[0] > pair.aoi.bbox[2]
    assert output_geobox(pair).crs.epsg in (32760, 32701)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:4258", "EPSG:3857"])
def test_geographic_or_torn_crs_across_180_is_refused_with_the_alternatives(crs: str) -> None:
    with pytest.raises(SpecError) as info:
        _spec(ACROSS, grid={"crs": crs, "resolution": 0.0001 if crs != "EPSG:3857" else 10})
    assert info.value.field == "grid.crs"
    msg = str(info.value)
    assert "antimeridian" in msg and crs in msg
    assert "grid.crs unset" in msg and "EPSG:32701" in msg and "EPSG:3832" in msg
    assert _spec(ACROSS, grid={"crs": "EPSG:3832"}).grid.crs == "EPSG:3832"  # continuous there


def _item(id_: str, geometry: Any) -> pystac.Item:
    geom = shapely.geometry.shape(geometry)
    return pystac.Item(id_, geometry, list(geom.bounds), dt.datetime(2024, 5, 2), {})


def test_footprints_across_180_touch_only_their_side_of_the_world() -> None:
    """A tile across 180° is two lon/lat boxes, not a band round the world."""
    gbox = output_geobox(_spec(ACROSS))
    items = [_item("east", shapely.box(179.0, -17.5, 180, -15.5).__geo_interface__),
             _item("west", shapely.box(-180, -17.5, -179.0, -15.5).__geo_interface__),
             _item("greenwich", shapely.box(-0.5, -17.5, 0.5, -15.5).__geo_interface__)]
    assert [i.id for i in Footprints(items).touching(gbox)] == ["east", "west"]


def test_static_catalog_search_across_180_keeps_both_sides(tmp_path: Path) -> None:
    cat = pystac.Catalog("c", "across 180")
    for name, box in (("east", (179.0, -17.5, 180, -15.5)), ("west", (-180, -17.5, -179.0, -15.5)),
                      ("greenwich", (-0.5, -17.5, 0.5, -15.5))):
        item = _item(name, shapely.box(*box).__geo_interface__)
        item.collection_id = "sentinel-2-l2a"
        cat.add_item(item)
    cat.normalize_hrefs(str(tmp_path))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    spec = _spec(ACROSS).replace(source={"stac": str(tmp_path / "catalog.json")})
    assert sorted(i.id for i in s2mosaic.search(spec)) == ["east", "west"]


# -- resolutions in the wrong units, oversize and zero-area grids ------------------------------
@pytest.mark.parametrize("crs, res, units", [
    (None, 0.0001, "metre"),          # degrees given for the default UTM grid: used to hang
    ("EPSG:32632", 1e9, "metre"),
    (None, 1e-6, "metre"),
    ("EPSG:4326", 10, "degrees"),     # metres given for lon/lat: used to make a 1 px mosaic
    ("EPSG:4326", 1e-7, "degrees"),
    ("EPSG:2263", 0.5, "US survey foot"),  # 0.15 m: 0.5 ft is fine, 0.1 ft is not
])
def test_resolution_in_the_wrong_units_fails_at_validation(crs: str | None, res: float,
                                                            units: str) -> None:
    grid: dict[str, Any] = {"resolution": res} | ({"crs": crs} if crs else {})
    if crs == "EPSG:2263":
        assert _spec([-73.99, 40.7, -73.98, 40.71], grid=grid).grid.resolution == 0.5
        grid["resolution"] = res = 0.1
    with pytest.raises(SpecError) as info:
        _spec([10.0, 46.0, 10.01, 46.01], grid=grid)
    assert info.value.field == "grid.resolution"
    assert repr(float(res)) in str(info.value) and units in str(info.value)


def test_oversize_grid_fails_at_validation_naming_pixels_and_limit() -> None:
    asia = [60, 0, 150, 60]  # 90° × 60°: 8.5e11 px at 10 m in UTM 48
    with pytest.raises(SpecError) as info:
        _spec(asia)
    msg = str(info.value)
    assert info.value.field == "grid.resolution" and "grid.max_pixels" in msg
    assert "8.46e+11 pixels" in msg and f"{DEFAULT_MAX_PIXELS:.3g}" in msg and "metres" in msg
    assert _spec(asia, grid={"max_pixels": 1e12}).grid.max_pixels == 10**12
    assert _spec(asia, grid={"resolution": 20}).grid.resolution == 20
    with pytest.raises(SpecError, match=r"more than grid.max_pixels \(1e\+06\)"):
        _spec([10.0, 46.0, 10.2, 46.2], grid={"max_pixels": 1_000_000})
    with pytest.raises(SpecError) as info:
        _spec([10.0, 46.0, 10.01, 46.01], grid={"max_pixels": 0})
    assert info.value.field == "grid.max_pixels"


def test_whole_globe_is_checked_in_well_under_a_second() -> None:
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as info:  # a UTM zone cannot hold the globe
        _spec([-180, -90, 180, 90])
    assert info.value.field == "grid.crs" and "folds over" in str(info.value)
    with pytest.raises(SpecError, match=r"6.48e\+12 pixels"):
        _spec([-180, -90, 180, 90], grid={"crs": "EPSG:4326", "resolution": 0.0001})
    assert _spec([-180, -90, 180, 90], grid={"crs": "EPSG:4326", "resolution": 0.01})
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize("aoi", [
    [10.0, 46.0, 10.0, 47.0], [10.0, 46.0, 11.0, 46.0], "POINT (10 46)",
    "LINESTRING (10 46, 11 47)", "POLYGON ((10 46, 11 47, 10 46, 10 46))",
    {"type": "Point", "coordinates": [10, 46]},
], ids=["bbox-no-width", "bbox-no-height", "point", "line", "flat-polygon", "geojson-point"])
def test_zero_area_aoi_is_refused(aoi: Any) -> None:
    with pytest.raises(SpecError) as info:
        _spec(aoi)
    assert info.value.field == "aoi" and ("no area" in str(info.value)
                                          or "(an area)" in str(info.value))


def test_plan_and_run_fail_before_any_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the spec and stops: no search, no cluster, in well under a second."""
    import s2mosaic._search

    def no_search(*_a: Any, **_k: Any) -> None:
        raise AssertionError("searched")

    monkeypatch.setattr(s2mosaic._search, "search", no_search)
    (tmp_path / "s.yaml").write_text(
        "aoi: [10.0, 46.0, 10.01, 46.01]\nperiod: [2024-05-01, 2024-05-31]\n"
        "source: {stac: catalog.json}\ngrid: {resolution: 0.0001}\n"
        f"output: {{zarr: {tmp_path / 'm.zarr'}}}\n")
    for cmd in ("plan", "run"):
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, [cmd, str(tmp_path / "s.yaml")])
        assert time.perf_counter() - t0 < 1.0
        assert result.exit_code != 0 and "grid.resolution" in result.output, result.output
        assert "searched" not in result.output
