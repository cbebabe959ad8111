"""`s2mosaic.demo`: the offline synthetic Sentinel-2 catalog, read back through GDAL and pystac.

One catalog (size 300) is generated per module; the determinism and error tests write more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import shapely.geometry
from rio_cogeo.cogeo import cog_validate

from s2mosaic import demo
from s2mosaic.demo import DEMO_AOI_BBOX, DEMO_PERIOD, _scene, make_demo_catalog
from s2mosaic.errors import S2MosaicError, SpecError, WriteError

SIZE = 300
BANDS = ("B02", "B03", "B04", "B08")
CLEAR = (4, 5, 6)
MASKED = (3, 8, 9, 10)


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_catalog(tmp_path_factory.mktemp("demo") / "cat", seed=0, size=SIZE)


@pytest.fixture(scope="module")
def items(catalog_json: Path) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(catalog_json))
    return sorted(cat.get_items(recursive=True), key=lambda i: (i.datetime, i.id))


def read(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


def scl10(item: pystac.Item) -> np.ndarray:
    """SCL on the 10 m grid (each 20 m pixel covers 2 x 2 band pixels)."""
    return np.repeat(np.repeat(read(item, "SCL"), 2, 0), 2, 1)


def reflectance(item: pystac.Item, key: str) -> np.ndarray:
    """DN -> reflectance with the asset's own raster:bands scale and offset (nodata -> NaN)."""
    band = item.assets[key].extra_fields["raster:bands"][0]
    dn = read(item, key)
    return np.where(dn == 0, np.nan, dn * band["scale"] + band["offset"])


def epsg(item: pystac.Item) -> int:
    """pystac (1.15 here) migrates projection v1.1 ``proj:epsg`` to v2 ``proj:code`` on read."""
    p = item.properties
    return int(p["proj:epsg"]) if "proj:epsg" in p else int(p["proj:code"].removeprefix("EPSG:"))


def tile(item: pystac.Item) -> str:
    return str(item.properties["s2:mgrs_tile"])


def clearest(items: list[pystac.Item], mgrs: str) -> pystac.Item:
    return min((i for i in items if tile(i) == mgrs), key=lambda i: i.properties["eo:cloud_cover"])


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def offline_validator(s2_data: Path) -> Iterator[None]:
    """pystac validation against the extension schemas in shared/data/s2, without network."""
    from pystac.validation import JsonSchemaSTACValidator, RegisteredValidator, set_validator

    validator = JsonSchemaSTACValidator()
    for path in sorted((s2_data / "_stac_schemas").glob("*.json")):
        schema = json.loads(path.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema
    previous = RegisteredValidator.get_validator()
    set_validator(validator)
    yield
    set_validator(previous)


# -- layout ---------------------------------------------------------------------------------------
def test_two_tiles_in_two_utm_zones_on_every_date(items: list[pystac.Item]) -> None:
    assert len(items) == 25
    assert {epsg(i) for i in items} == {32632, 32633}
    assert {tile(i) for i in items} == {"32TQT", "33TTN"}
    for item in items:
        p = item.properties
        assert p["grid:code"] == f"MGRS-{tile(item)}"
        assert epsg(item) == 32600 + int(tile(item)[:2])
        assert re.fullmatch(r"S2[AB]_(32TQT|33TTN)_2024\d{4}_[01]_L2A", item.id), item.id
        assert (
            item.id[:3].lower() == "s2" + p["platform"][-1] and p["constellation"] == "sentinel-2"
        )
        assert p["proj:shape"] == [SIZE, SIZE]
        assert 10 <= item.datetime.hour < 11, item.datetime
    days = sorted({i.datetime.date() for i in items})
    assert len(days) >= 8
    for day in days:  # one orbit: both tiles, the same sensing time
        same_day = [i for i in items if i.datetime.date() == day]
        assert {tile(i) for i in same_day} == {"32TQT", "33TTN"}
        assert len({i.datetime for i in same_day}) == 1
    start, end = (date.fromisoformat(d) for d in DEMO_PERIOD)
    assert start <= days[0] and days[-1] <= end


def test_grids_align_on_60_m_and_footprints_straddle_the_zone_line(
    items: list[pystac.Item],
) -> None:
    for item in items:
        for key, asset in item.assets.items():
            res, _, x0, _, neg_res, y0 = asset.extra_fields["proj:transform"]
            assert res == -neg_res == (20 if key == "SCL" else 10)
            assert x0 % 60 == 0 and y0 % 60 == 0, (item.id, key, x0, y0)
            assert asset.extra_fields["proj:shape"] == [10 * SIZE // res] * 2
    full = {tile(i): shapely.geometry.shape(i.geometry) for i in items if i.datetime.day == 2}
    west, east = full["32TQT"], full["33TTN"]
    overlap = west.intersection(east)
    assert 0.05 < overlap.area / west.area < 0.3, "the tiles should overlap a little, like MGRS"
    assert west.bounds[0] < 12.0 < west.bounds[2] and east.bounds[0] < 12.0 < east.bounds[2]
    assert west.centroid.x < 12.0 < east.centroid.x
    aoi = shapely.geometry.box(*DEMO_AOI_BBOX)
    assert DEMO_AOI_BBOX[0] < 12.0 < DEMO_AOI_BBOX[2]
    assert west.union(east).contains(aoi), "DEMO_AOI_BBOX must lie inside the two tiles"
    for item in items:
        geom = shapely.geometry.shape(item.geometry)
        assert item.bbox == pytest.approx(list(geom.bounds))


# -- STAC metadata --------------------------------------------------------------------------------
def test_written_json_uses_projection_v1_1_with_integer_epsg(catalog_json: Path) -> None:
    """What is on disk (pystac migrates to projection v2 when it reads, so check the raw JSON)."""
    paths = sorted((catalog_json.parent / "sentinel-2-l2a").glob("*/*.json"))
    assert len(paths) == 25
    for path in paths:
        d = json.loads(path.read_text())
        assert d["stac_version"] == "1.1.0"
        assert sorted(d["stac_extensions"]) == sorted(
            f"https://stac-extensions.github.io/{ext}/v1.1.0/schema.json"
            for ext in ("projection", "eo", "raster")
        )
        p = d["properties"]
        assert type(p["proj:epsg"]) is int and p["proj:epsg"] in (32632, 32633)
        assert "proj:code" not in p
        assert len(p["proj:bbox"]) == 4 and p["proj:shape"] == [SIZE, SIZE]
        for key in (
            "s2:generation_time",
            "s2:processing_baseline",
            "s2:product_uri",
            "s2:nodata_pixel_percentage",
            "s2:high_proba_clouds_percentage",
            "s2:medium_proba_clouds_percentage",
            "s2:thin_cirrus_percentage",
            "s2:cloud_shadow_percentage",
            "s2:vegetation_percentage",
            "s2:water_percentage",
            "s2:not_vegetated_percentage",
            "sat:relative_orbit",
            "instruments",
            "eo:cloud_cover",
        ):
            assert key in p, (path.name, key)
        links = {link["rel"]: link["href"] for link in d["links"]}
        assert links["root"] == "../../catalog.json" and "self" not in links


def test_catalog_validates_offline(catalog_json: Path, offline_validator: None) -> None:
    cat = pystac.Catalog.from_file(str(catalog_json))
    assert cat.catalog_type == pystac.CatalogType.SELF_CONTAINED
    cat.validate_all()  # as pystac reads it (migrated to projection v2)
    # ... and as written, against the declared projection/eo/raster v1.1.0 schemas.
    for path in sorted((catalog_json.parent / "sentinel-2-l2a").glob("*/*.json")):
        validated = pystac.validation.validate_dict(json.loads(path.read_text()))
        for ext in ("projection", "eo", "raster"):
            assert f"https://stac-extensions.github.io/{ext}/v1.1.0/schema.json" in validated


def test_asset_metadata(items: list[pystac.Item]) -> None:
    common = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
    for item in items:
        assert set(item.assets) == {*BANDS, "SCL"}
        for key, asset in item.assets.items():
            assert asset.href == f"./{key}.tif"
            assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
            assert asset.roles == ["data"]
            band = asset.extra_fields["raster:bands"][0]
            assert band["nodata"] == 0
            if key == "SCL":
                assert band["data_type"] == "uint8" and band["spatial_resolution"] == 20
                assert "scale" not in band and "offset" not in band
                assert "eo:bands" not in asset.extra_fields
            else:
                assert band["data_type"] == "uint16" and band["spatial_resolution"] == 10
                assert band["scale"] == 0.0001 and band["offset"] in (0.0, -0.1)
                eo = asset.extra_fields["eo:bands"][0]
                assert eo["name"] == key and eo["common_name"] == common[key]
                assert 0.4 < eo["center_wavelength"] < 0.9
        p = item.properties
        baseline = p["s2:processing_baseline"].replace(".", "")
        assert re.fullmatch(
            rf"S2[AB]_MSIL2A_{item.datetime:%Y%m%d}T\d{{6}}_N{baseline}"
            rf"_R\d{{3}}_T{tile(item)}_\d{{8}}T\d{{6}}\.SAFE",
            p["s2:product_uri"],
        ), p["s2:product_uri"]
        assert isinstance(p["sat:relative_orbit"], int)


def test_collection_and_itemcollection(catalog_json: Path, items: list[pystac.Item]) -> None:
    cat = pystac.Catalog.from_file(str(catalog_json))
    (collection,) = cat.get_children()
    assert isinstance(collection, pystac.Collection) and collection.id == "sentinel-2-l2a"
    assert set(collection.extra_fields["item_assets"]) == {*BANDS, "SCL"}
    summaries = collection.summaries.to_dict()
    assert summaries.get("proj:epsg", summaries.get("proj:code")) in (
        [32632, 32633],
        ["EPSG:32632", "EPSG:32633"],
    )
    (box,) = collection.extent.spatial.bboxes
    span = shapely.geometry.box(*box)
    assert all(span.covers(shapely.geometry.shape(i.geometry)) for i in items)
    interval = collection.extent.temporal.intervals[0]
    assert interval[0] == items[0].datetime and interval[1] == items[-1].datetime

    fc = json.loads((catalog_json.parent / "itemcollection.json").read_text())
    assert fc["type"] == "FeatureCollection"
    by_id = {i.id: i for i in items}
    assert sorted(f["id"] for f in fc["features"]) == sorted(by_id)
    for feature in fc["features"]:
        item = by_id[feature["id"]]
        assert feature["collection"] == "sentinel-2-l2a"
        written = json.loads(Path(item.get_self_href() or "").read_text())
        for key in ("properties", "geometry", "bbox", "stac_extensions"):
            assert feature[key] == written[key], key
        for key, asset in feature["assets"].items():
            assert asset["href"].startswith("file:///")
            path = Path(asset["href"].removeprefix("file://"))
            assert path.is_file() and path == Path(item.assets[key].get_absolute_href())


# -- rasters --------------------------------------------------------------------------------------
def test_every_asset_is_a_cog_with_overviews(items: list[pystac.Item]) -> None:
    for item in items:
        for key, asset in item.assets.items():
            href = asset.get_absolute_href()
            valid, errors, warnings = cog_validate(href, quiet=True)
            assert valid and not errors and not warnings, (item.id, key, errors, warnings)
            with rasterio.open(href) as src:
                assert src.driver == "GTiff" and src.count == 1 and src.nodata == 0
                assert src.overviews(1), (item.id, key)
                assert src.block_shapes[0] == (256, 256)
                assert src.compression is not None and src.compression.name == "deflate"
                assert src.crs.to_epsg() == epsg(item)
                assert list(src.shape) == asset.extra_fields["proj:shape"]
                assert list(src.transform)[:6] == asset.extra_fields["proj:transform"]
                assert src.dtypes[0] == asset.extra_fields["raster:bands"][0]["data_type"]
                # overviews hold data, not zeros
                assert src.read(1, out_shape=(src.height // 2, src.width // 2)).max() > 0


def test_surface_reflectance_is_realistic(items: list[pystac.Item]) -> None:
    ref = clearest(items, "32TQT")
    assert ref.properties["eo:cloud_cover"] < 5, "the demo needs a nearly clear date"
    scl = scl10(ref)
    red, nir = reflectance(ref, "B04"), reflectance(ref, "B08")
    veg, water, bare = scl == 4, scl == 6, scl == 5
    assert veg.mean() > 0.3 and water.any() and bare.mean() > 0.05
    assert 0.02 < np.median(red[veg]) < 0.07 and 0.25 < np.median(nir[veg]) < 0.42
    assert np.median(nir[water]) < 0.03
    assert 0.12 < np.median(red[bare]) < 0.25
    assert not (scl == 11).any(), "no snow in a Bavarian June"


# -- fixtures for harmonisation, dedupe, masking --------------------------------------------------
def test_exactly_the_new_baseline_items_carry_the_boa_offset(items: list[pystac.Item]) -> None:
    def offset(i: pystac.Item) -> float:
        offsets = {i.assets[b].extra_fields["raster:bands"][0]["offset"] for b in BANDS}
        assert len(offsets) == 1
        return offsets.pop()

    new = [i for i in items if i.properties["s2:processing_baseline"] >= "04.00"]
    assert new and len({i.datetime for i in new}) == 1, "one acquisition with baseline >= 04.00"
    assert new[0].datetime.date() == date(2024, 6, 1), "the module docstring names this date"
    assert {i.id for i in items if offset(i) == -0.1} == {i.id for i in new}
    assert all(offset(i) == 0.0 for i in items if i not in new)
    for item in new:
        assert item.properties["s2:processing_baseline"] == "05.10"
        assert "_N0510_" in item.properties["s2:product_uri"]
        ref = min(
            (
                i
                for i in items
                if tile(i) == tile(item) and i not in new and i.properties["eo:cloud_cover"] < 20
            ),
            key=lambda i: abs((i.datetime - item.datetime).days),
        )
        clear = np.isin(scl10(item), CLEAR) & np.isin(scl10(ref), CLEAR)
        assert clear.mean() > 0.5
        for band in BANDS:
            dn, dn_ref = read(item, band), read(ref, band)
            assert dn[dn > 0].min() > 1000, "valid DNs carry the +1000 offset"
            diff = np.median(dn[clear].astype(np.int32) - dn_ref[clear])
            assert 880 < diff < 1120, (band, diff)
            # ... and the declared offset harmonises them.
            refl = np.nanmedian(reflectance(item, band)[clear] - reflectance(ref, band)[clear])
            assert abs(refl) < 0.012, (band, refl)
        assert np.quantile(read(ref, "B04")[clear], 0.05) < 1000


def test_reprocessed_duplicate_newest_has_newer_baseline_and_generation(
    items: list[pystac.Item],
) -> None:
    groups: dict[tuple[str, Any], list[pystac.Item]] = {}
    for item in items:
        groups.setdefault((tile(item), item.datetime), []).append(item)
    pairs = [g for g in groups.values() if len(g) > 1]
    assert len(pairs) == 1 and len(pairs[0]) == 2
    old, new = sorted(pairs[0], key=lambda i: i.id)
    assert new.id == "S2B_32TQT_20240621_1_L2A", "the module docstring names this one"
    assert old.id.endswith("_0_L2A") and new.id.endswith("_1_L2A")
    assert old.id[:-6] == new.id[:-6]
    po, pn = old.properties, new.properties
    assert pn["s2:processing_baseline"] > po["s2:processing_baseline"]
    assert pn["s2:generation_time"] > po["s2:generation_time"]
    assert pn["s2:product_uri"] != po["s2:product_uri"]
    assert all(i.properties["s2:processing_baseline"] < "04.00" for i in (old, new))
    for band in BANDS:
        a, b = read(old, band), read(new, band)
        assert np.array_equal(a == 0, b == 0)
        assert np.array_equal(b[b > 0].astype(np.int32) - a[a > 0], np.ones((a > 0).sum()))
    assert np.array_equal(read(old, "SCL"), read(new, "SCL"))


def test_clouds_are_bright_and_shadows_dark(items: list[pystac.Item]) -> None:
    assert min(i.properties["eo:cloud_cover"] for i in items) < 5
    assert max(i.properties["eo:cloud_cover"] for i in items) > 60
    checked_clouds = checked_shadows = 0
    for item in items:
        ref = clearest(items, tile(item))
        scl, scl_ref = scl10(item), scl10(ref)
        blue, nir = reflectance(item, "B02"), reflectance(item, "B08")
        clear = np.isin(scl, (4, 5))
        if (scl == 9).mean() > 0.01:
            checked_clouds += 1
            assert np.median(blue[scl == 9]) > 0.4, item.id
            assert np.median(blue[scl == 8]) > 2 * np.median(blue[clear]), item.id
            assert np.median(blue[clear]) < 0.1
        shadow = (scl == 3) & np.isin(scl_ref, (4, 5))
        if item is not ref and shadow.mean() > 0.01:
            checked_shadows += 1
            ratio = np.median(nir[shadow] / reflectance(ref, "B08")[shadow])
            assert 0.25 < ratio < 0.7, (item.id, ratio)
    assert checked_clouds >= 5 and checked_shadows >= 5


def test_scl_flags_every_pixel_a_cloud_or_shadow_changed(
    catalog_json: Path, items: list[pystac.Item]
) -> None:
    """The private renderer's 10 m truth against the SCL it wrote (what a masking test trusts)."""
    tiles = _scene.tiles(SIZE)
    world = _scene.World(0, tiles)
    for tile_index in (0, 1):
        at = _scene.pixel_centres(tiles[tile_index])
        ground = world.ground(at)
        for day in (1, 2, 8):
            dn, scl, changed = _scene.render(world, ground, at, tile_index, day)
            assert changed.mean() > 0.1
            up = np.repeat(np.repeat(scl, 2, 0), 2, 1)
            missed = changed & (up != 0) & ~np.isin(up, MASKED)
            assert not missed.any(), f"{int(missed.sum())} changed pixels not flagged"
            # It is what was written.
            written = next(
                i
                for i in items
                if tile(i) == tiles[tile_index].mgrs and i.datetime.date() == _scene.DATES[day]
            )
            assert np.array_equal(read(written, "SCL"), scl)
            assert np.array_equal(read(written, "B02"), dn[0])


def test_partial_swath_is_nodata_in_every_band(items: list[pystac.Item]) -> None:
    cut = [i for i in items if i.properties["s2:nodata_pixel_percentage"] > 0]
    assert len(cut) == 1
    item = cut[0]
    assert item.id == "S2B_33TTN_20240611_0_L2A", "the module docstring names this one"
    scl = scl10(item)
    nodata = scl == 0
    assert 0.1 < nodata.mean() < 0.5
    for band in BANDS:
        dn = read(item, band)
        assert np.array_equal(dn == 0, nodata), band
    pct = 100 * (read(item, "SCL") == 0).mean()
    assert item.properties["s2:nodata_pixel_percentage"] == pytest.approx(pct, abs=1e-4)
    # The geometry is the valid footprint: smaller than the full tile by about that much.
    full = next(i for i in items if tile(i) == tile(item) and i is not item)
    ratio = shapely.geometry.shape(item.geometry).area / shapely.geometry.shape(full.geometry).area
    assert ratio == pytest.approx(1 - pct / 100, abs=0.02)
    # A diagonal edge: the cut narrows from north to south.
    assert nodata[0].mean() > 0.4 and nodata[-1].mean() < 0.1
    for other in items:
        if other is not item:
            assert (read(other, "SCL") > 0).all() and (read(other, "B04") > 0).all()


def test_cloud_statistics_match_scl(items: list[pystac.Item]) -> None:
    for item in items:
        scl = read(item, "SCL")
        valid = scl > 0
        p = item.properties

        def pct(
            classes: tuple[int, ...], scl: np.ndarray = scl, valid: np.ndarray = valid
        ) -> float:
            return 100 * float(np.isin(scl[valid], classes).mean())

        assert p["eo:cloud_cover"] == pytest.approx(pct((8, 9, 10)), abs=1e-4), item.id
        assert p["s2:high_proba_clouds_percentage"] == pytest.approx(pct((9,)), abs=1e-4)
        assert p["s2:medium_proba_clouds_percentage"] == pytest.approx(pct((8,)), abs=1e-4)
        assert p["s2:thin_cirrus_percentage"] == pytest.approx(pct((10,)), abs=1e-4)
        assert p["s2:cloud_shadow_percentage"] == pytest.approx(pct((3,)), abs=1e-4)
        assert p["s2:vegetation_percentage"] == pytest.approx(pct((4,)), abs=1e-4)
        assert p["s2:not_vegetated_percentage"] == pytest.approx(pct((5,)), abs=1e-4)
        assert p["s2:water_percentage"] == pytest.approx(pct((6,)), abs=1e-4)
        assert set(np.unique(scl)) <= {0, 3, 4, 5, 6, 8, 9, 10}
    assert any(i.properties["s2:thin_cirrus_percentage"] > 0 for i in items)


# -- loading --------------------------------------------------------------------------------------
def test_loads_with_odc_stac_and_tiles_agree_in_their_overlap(items: list[pystac.Item]) -> None:
    import odc.stac

    ds = odc.stac.load(items, bands=["B04", "SCL"], crs="EPSG:32632", resolution=20, chunks={})
    assert ds.sizes["time"] == len({i.datetime for i in items})
    assert ds.B04.dtype == np.uint16 and ds.SCL.dtype == np.uint8
    first = ds.isel(time=0).compute()
    assert (first.B04 > 0).mean() > 0.8 and (first.SCL > 0).mean() > 0.8

    # The same ground in both tiles: compare them where they overlap on the clearest date.
    pair = [i for i in items if i.datetime == clearest(items, "32TQT").datetime]
    one = odc.stac.load(pair, bands=["B08"], crs="EPSG:32632", resolution=20, groupby="id")
    a, b = one.B08.isel(time=0).values.astype(float), one.B08.isel(time=1).values.astype(float)
    both = (a > 0) & (b > 0)
    assert both.sum() > 2000
    assert np.corrcoef(a[both], b[both])[0, 1] > 0.8
    assert np.median(np.abs(a[both] - b[both]) / a[both]) < 0.1


# -- determinism, reuse, errors -------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_other_seed_other_pixels(
    catalog_json: Path, items: list[pystac.Item], tmp_path: Path
) -> None:
    root = catalog_json.parent
    other = make_demo_catalog(tmp_path / "again", seed=0, size=SIZE).parent
    a, b = all_files(root), all_files(other)
    assert sorted(a) == sorted(b)
    for name in a:
        expected = a[name]
        if name == "itemcollection.json":  # absolute hrefs name the directory
            expected = expected.replace(root.as_uri().encode(), other.as_uri().encode())
        assert b[name] == expected, f"{name} differs between two runs with seed 0"

    # A demo catalog with other parameters is regenerated in place, without overwrite=True.
    make_demo_catalog(other, seed=1, size=SIZE)
    with rasterio.open(other / "sentinel-2-l2a" / items[0].id / "B04.tif") as src:
        assert not np.array_equal(src.read(1), read(items[0], "B04"))
    assert json.loads((other / "demo-params.json").read_text())["seed"] == 1


def test_existing_catalog_is_returned_without_rewriting(catalog_json: Path) -> None:
    root = catalog_json.parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert make_demo_catalog(root, seed=0, size=SIZE) == catalog_json
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_refuses_a_directory_that_is_not_a_demo_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(
        demo, "_generate", lambda root, seed, size: calls.append((root, seed, size)) or []
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(WriteError) as info:
        make_demo_catalog(mine)
    assert isinstance(info.value, S2MosaicError)
    assert str(mine) in str(info.value) and "overwrite=True" in str(info.value)
    assert "empty directory" in str(info.value)
    assert not calls

    make_demo_catalog(mine, overwrite=True)
    assert calls == [(mine, 0, 600)] and (mine / "notes.txt").read_text() == "keep me"

    a_file = tmp_path / "file.json"
    a_file.write_text("{}")
    with pytest.raises(WriteError, match=re.escape(str(a_file))):
        make_demo_catalog(a_file, overwrite=True)

    # An interrupted run (marker still says incomplete) is ours: regenerated without overwrite.
    (mine / "demo-params.json").write_text(
        json.dumps(
            {"generator": "s2mosaic.demo", "format": 1, "seed": 0, "size": 600, "complete": False}
        )
    )
    make_demo_catalog(mine)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 301}, "size"),
        ({"size": 120}, "size"),
        ({"size": 6000}, "size"),
        ({"seed": -1}, "seed"),
        ({"size": 600.0}, "size"),
    ],
)
def test_invalid_parameters(tmp_path: Path, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        make_demo_catalog(tmp_path / "x", **kwargs)
    assert info.value.field == field
    assert not (tmp_path / "x").exists()


def test_default_demo_covers_the_aoi(tmp_path: Path) -> None:
    """The default demo (size 600; its generation time is measured in benchmarks/, not here)."""
    cat = pystac.Catalog.from_file(str(make_demo_catalog(tmp_path / "d")))
    items = list(cat.get_items(recursive=True))
    assert {tuple(i.properties["proj:shape"]) for i in items} == {(600, 600)}
    first = [i for i in items if i.datetime.date() == date(2024, 5, 2)]
    union = shapely.union_all([shapely.geometry.shape(i.geometry) for i in first])
    assert union.contains(shapely.geometry.box(*DEMO_AOI_BBOX))
