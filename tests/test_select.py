"""Scene selection: clear fraction, greedy minimal cover on real footprints and the demo, the
``select`` spec section, and first-valid equality with and without selection."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import shapely
import shapely.geometry
from pyproj import Geod

from s2mosaic import mosaic, run, search
from s2mosaic._select import Selection, clear_fraction, min_cover, select
from s2mosaic._spec import MosaicSpec, SelectSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import CoverageError, SpecError

EXAMPLES = "stac_examples"


def _items(s2_data: Path, name: str) -> list[pystac.Item]:
    data = json.loads((s2_data / EXAMPLES / name).read_text())
    return list(pystac.ItemCollection.from_dict(data))


def _area_fraction(aoi: shapely.Geometry, geoms: list[shapely.Geometry]) -> float:
    """Geodesic area fraction of ``aoi`` covered by ``geoms`` (an independent oracle)."""
    geod = Geod(ellps="WGS84")
    covered = shapely.union_all(geoms).intersection(aoi)
    return abs(geod.geometry_area_perimeter(covered)[0]) / abs(geod.geometry_area_perimeter(aoi)[0])


def _shape(item: pystac.Item) -> shapely.Geometry:
    return shapely.geometry.shape(item.geometry)


# -- clear fraction ----------------------------------------------------------------------------
def test_clear_fraction_from_real_metadata(s2_data: Path) -> None:
    items = {i.id: i for i in _items(s2_data, "odc-stac_site2-2020_jun_jul-35MNM.geojson")}
    item = items["S2A_MSIL2A_20200701T080611_R078_T35MNM_20200824T191001"]
    p = item.properties
    invalid = sum(p[k] for k in ("s2:saturated_defective_pixel_percentage",
                                 "s2:cloud_shadow_percentage",
                                 "s2:medium_proba_clouds_percentage",
                                 "s2:high_proba_clouds_percentage",
                                 "s2:thin_cirrus_percentage"))
    expected = (1 - p["s2:nodata_pixel_percentage"] / 100) * (1 - invalid / 100)
    assert clear_fraction(item) == pytest.approx(expected)
    # Snow counts only when the mask drops it (class 11).
    with_snow = clear_fraction(item, (0, 1, 3, 8, 9, 10, 11))
    assert with_snow == pytest.approx(
        (1 - p["s2:nodata_pixel_percentage"] / 100)
        * (1 - (invalid + p["s2:snow_ice_percentage"]) / 100))


def test_clear_fraction_falls_back_to_eo_cloud_cover() -> None:
    item = pystac.Item("x", None, None, dt.datetime(2024, 5, 2), {"eo:cloud_cover": 30.0})
    assert clear_fraction(item) == pytest.approx(0.7)
    bare = pystac.Item("y", None, None, dt.datetime(2024, 5, 2), {})
    assert clear_fraction(bare) is None


# -- minimal cover on real footprints ----------------------------------------------------------
def test_min_cover_tall_strip_picks_the_tiles_under_the_aoi(s2_data: Path) -> None:
    """Nine tiles of one overpass stacked north-south: an AOI across two of them needs two."""
    items = _items(s2_data, "odc-stac_site1-20200606-tall-strip-africa.geojson")
    by_tile = {i.properties["s2:mgrs_tile"]: i for i in items}
    a, b = _shape(by_tile["35LNK"]), _shape(by_tile["35LNJ"])
    seam = a.intersection(b).centroid
    aoi = shapely.geometry.box(seam.x - 0.2, seam.y - 0.3, seam.x + 0.2, seam.y + 0.3)
    assert not a.contains(aoi) and not b.contains(aoi)
    sel = min_cover(items, aoi)
    assert {i.properties["s2:mgrs_tile"] for i in sel} == {"35LNK", "35LNJ"}
    assert sel.coverage == 1.0
    assert sel.periods[0].candidates == len(items)


def test_min_cover_is_fewest_and_reports_coverage(s2_data: Path) -> None:
    """13 dates of tile 35MNM with partial swaths: no smaller subset reaches the same coverage
    (brute force), and the coverage reported equals a geodesic oracle."""
    items = _items(s2_data, "odc-stac_site2-2020_jun_jul-35MNM.geojson")
    # An AOI over the tile's western edge, where the swath cuts the footprints differently.
    shapes = [_shape(i) for i in items]
    w, s, _, n = shapely.union_all(shapes).bounds
    aoi = shapely.geometry.box(w - 0.05, s + 0.3, w + 0.4, n - 0.3)
    for k in (1, 2):
        sel = min_cover(items, aoi, max_observations=k)
        got = sel.periods[0]
        assert got.coverage == pytest.approx(_area_fraction(aoi, [_shape(i) for i in sel]),
                                             abs=2e-4)
        assert got.coverage_all == pytest.approx(_area_fraction(aoi, shapes), abs=2e-4)
        assert got.coverage < 1.0  # the AOI sticks out of the tile: some of it is never covered
        if k == 1:
            for size in range(1, len(sel)):
                for subset in itertools.combinations(items, size):
                    assert _area_fraction(aoi, [_shape(i) for i in subset]) < got.coverage - 2e-4
    # Deterministic: the same input in another order gives the same choice.
    again = min_cover(list(reversed(items)), aoi, max_observations=2)
    assert sorted(i.id for i in again) == sorted(i.id for i in sel)


def test_min_cover_prefers_clear_scenes(s2_data: Path) -> None:
    items = _items(s2_data, "odc-stac_site2-2020_jun_jul-35MNM.geojson")
    inner = shapely.geometry.box(*_shape(items[0]).buffer(-0.2).bounds)
    assert all(_shape(i).contains(inner) for i in items)
    sel = min_cover(items, inner, max_observations=3)
    assert len(sel) == 3
    clear = sorted((clear_fraction(i) or 0 for i in items), reverse=True)
    assert sorted((clear_fraction(i) or 0 for i in sel), reverse=True) == clear[:3]
    ranks = sorted((s.rank, s.id) for s in sel.scenes if s.selected)
    assert [r for r, _ in ranks] == [1, 2, 3]


def test_min_cover_date_order_keeps_the_first_observations(s2_data: Path) -> None:
    items = _items(s2_data, "odc-stac_site2-2020_jun_jul-35MNM.geojson")
    inner = shapely.geometry.box(*_shape(items[0]).buffer(-0.2).bounds)
    first = min_cover(items, inner, max_observations=2, order="date")
    dates = sorted(i.datetime for i in items)
    assert sorted(i.datetime for i in first) == dates[:2]
    last = min_cover(items, inner, order="date-desc")
    assert [i.datetime for i in last] == dates[-1:]
    with pytest.raises(ValueError, match="order 'newest'"):
        min_cover(items, inner, order="newest")
    with pytest.raises(ValueError, match="max_observations 0"):
        min_cover(items, inner, max_observations=0)


# -- on the demo catalog -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[MosaicSpec, Any]:
    spec = demo_spec(demo_catalog, tmp_path_factory.mktemp("select-out"))
    spec = spec.replace(runtime=dataclasses.replace(spec.runtime, scheduler="synchronous"))
    return spec, search(spec)


def test_demo_min_cover_per_tile_and_clearest(demo: tuple[MosaicSpec, Any]) -> None:
    spec, items = demo
    for k in (1, 3):
        sel = select(spec.replace(select={"method": "min-cover", "max_observations": k}), items)
        assert isinstance(sel, Selection)
        assert len(sel) == 2 * k  # the AOI straddles both tiles: k scenes of each
        assert sel.coverage == 1.0 and sel.periods[0].full_depth == 1.0
        tiles = sel.summary()["tiles"]
        assert tiles == {"32TQT": {"candidates": 12, "selected": k},
                         "33TTN": {"candidates": 12, "selected": k}}
        # Both tiles of a date are chosen together (one solar day, one observation).
        assert len({i.datetime.date() for i in sel}) == k
    sel = select(spec.replace(select={"method": "min-cover"}), items)
    assert {i.datetime.date() for i in sel} == {dt.date(2024, 5, 2)}  # the nearly clear date
    reasons = {d.id: d.reason for d in sel.dropped}
    assert "S2B_32TQT_20240621_0_L2A" in reasons  # the search's duplicate is still listed
    assert reasons["S2A_32TQT_20240507_0_L2A"].startswith("not selected (select.method min-cover")


def test_demo_all_reports_coverage_and_require_full_coverage(demo: tuple[MosaicSpec, Any]
                                                             ) -> None:
    spec, items = demo
    sel = select(spec, items)
    assert len(sel) == len(items) and sel.coverage == 1.0
    # Only one tile: the AOI is not covered; the error names the uncovered fraction.
    one = [i for i in items if "32TQT" in i.id]
    sel = select(spec.replace(select={"method": "min-cover"}), one)
    assert 0.3 < sel.coverage < 0.9
    strict = spec.replace(select={"method": "min-cover", "require_full_coverage": True})
    with pytest.raises(CoverageError, match=r"% is uncovered") as err:
        select(strict, one)
    assert f"{100 * (1 - sel.coverage):.2f} % is uncovered" in str(err.value)
    assert "require_full_coverage: false" in str(err.value)
    # run() applies the selection (and the check) itself, before computing anything.
    with pytest.raises(CoverageError):
        run(strict, items=one)


def test_demo_select_per_series_period(demo: tuple[MosaicSpec, Any]) -> None:
    spec, items = demo
    if "series" not in MosaicSpec.field_names():
        pytest.skip("this checkout has no series section")
    monthly = spec.replace(select={"method": "min-cover"}, series={"periods": "monthly"})
    sel = select(monthly, items)
    assert [(p.start.month, p.selected) for p in sel.periods] == [(5, 2), (6, 2)]
    assert {i.datetime.month for i in sel} == {5, 6}


def _first_valid(spec: MosaicSpec, items: Any) -> Any:
    return mosaic(spec, items).compute()


@pytest.mark.parametrize("mask", ["none", "scl"])
def test_demo_first_valid_equals_all_scenes(demo: tuple[MosaicSpec, Any], mask: str) -> None:
    """A first-valid mosaic of the selection equals the one of all scenes wherever the chosen
    scenes give a valid observation (with only nodata masked: everywhere)."""
    spec, items = demo
    base = spec.replace(composite={"method": "first"}, mask={"method": mask})
    full = _first_valid(base, items)
    sel_spec = base.replace(select={"method": "min-cover", "max_observations": 2})
    picked = select(sel_spec, items)
    assert len(picked) == 4 and len(picked) < len(items)
    part = _first_valid(sel_spec, picked)
    valid = part["count"].values > 0
    seen = full["count"].values > 0  # inside the AOI polygon, with some valid observation
    if mask == "none":
        np.testing.assert_array_equal(valid, seen)
    else:
        assert valid[seen].mean() > 0.9  # 2 observations per pixel; clouds take the rest
    for band in spec.bands:
        np.testing.assert_array_equal(part[band].values[valid], full[band].values[valid])


# -- the spec section --------------------------------------------------------------------------
BASE: dict[str, Any] = {
    "aoi": [10.04, 46.064, 10.045, 46.068],
    "period": {"start": "2017-07-01", "end": "2019-07-31"},
    "source": {"stac": "/data/s2/catalog.json"},
}


def test_select_spec_defaults_and_yaml_round_trip(tmp_path: Path) -> None:
    spec = MosaicSpec.from_dict(BASE)
    assert spec.select == SelectSpec(method="all", max_observations=1, require_full_coverage=False)
    spec = MosaicSpec.from_dict({**BASE, "select": {"method": "min-cover", "max_observations": 3,
                                                    "require_full_coverage": True}})
    path = tmp_path / "s.yaml"
    spec.to_yaml(path)
    assert MosaicSpec.from_yaml(path).select == spec.select


@pytest.mark.parametrize(("select", "field", "needle"), [
    ({"method": "fewest"}, "select.method", "['all', 'min-cover']"),
    ({"method": "min-cover", "max_observations": 0}, "select.max_observations", ">= 1"),
    ({"method": "min-cover", "max_observations": 1.5}, "select.max_observations", "integer"),
    ({"max_observations": 2}, "select.max_observations", "only to method 'min-cover'"),
    ({"require_full_coverage": "yes"}, "select.require_full_coverage", "true or false"),
    ({"method": "min-cover", "limit": 3}, "select.limit", "valid keys of 'select'"),
    ("min-cover", "select", "expected a mapping"),
])
def test_select_spec_bad_values(select: Any, field: str, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        MosaicSpec.from_dict({**BASE, "select": select})
    assert err.value.field == field
    assert needle in str(err.value)
