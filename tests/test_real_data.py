"""End to end on real Sentinel-2 data from ../shared/data/s2, against the independent oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
import xarray as xr

import s2mosaic
from s2mosaic._spec import MosaicSpec

from .oracle import aoi_inside, place, read_native, reduce

BARBELLINO_BBOX = [10.0416, 46.0641, 10.0448, 46.0679]


def _items(s2_data: Path, collection: str, contains: str = "") -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(s2_data / "catalog.json"))
    items = [i for i in cat.get_items(recursive=True)
             if i.collection_id == collection and contains in i.id]
    for i in items:
        i.make_asset_hrefs_absolute()
    return sorted(items, key=lambda i: i.datetime)


@pytest.mark.parametrize(("method", "q"), [("percentile", 25), ("percentile", 90), ("median", 50),
                                           ("mean", 0), ("first", 0)])
def test_barbellino_equals_oracle(s2_data: Path, tmp_path: Path, method: str, q: float) -> None:
    spec = MosaicSpec(
        aoi=BARBELLINO_BBOX,
        period=["2017-01-01", "2019-12-31"],
        source={"stac": str(s2_data / "catalog.json")},
        bands=["red", "nir", "B02", "swir16"],
        grid={"resolution": "native"},
        composite={"method": method, "percentile": q},
        output={"zarr": tmp_path / "m.zarr", "cog": tmp_path / "m.tif"},
        runtime={"chunks": 16, "scheduler": "synchronous"},
    )
    report = s2mosaic.run(spec)
    assert report.items == 2

    items = _items(s2_data, "sentinel-2-l2a", "Barbellino")
    native = read_native(items, {"red": "B04", "nir": "B08", "B02": "B02", "swir16": "B11"}, "SCL")
    with rasterio.open(tmp_path / "m.tif") as cog:
        got = cog.read()
        transform, shape = cog.transform, (cog.height, cog.width)
        assert cog.crs.to_epsg() == 32632
        assert cog.descriptions == ("red", "nir", "B02", "swir16", "count")
    inside = aoi_inside(shapely.box(*BARBELLINO_BBOX), "EPSG:32632", transform, shape)
    for i, name in enumerate(["red", "nir", "B02", "swir16"]):
        expected = place(reduce(native.bands[name], native.valid, method, q), native.transform,
                         transform, shape)
        expected = np.where(inside, expected, 0)
        np.testing.assert_array_equal(got[i], expected, err_msg=f"band {name} ({method} {q})")
    count = place(native.valid.sum(axis=0).astype(np.uint16), native.transform, transform, shape)
    np.testing.assert_array_equal(got[4], np.where(inside, count, 0))
    # Clouds in 2017 (SCL 8/9) really were masked: some pixels have a single observation.
    assert (got[4] == 1).any() and (got[4] == 2).any()

    z = xr.open_zarr(tmp_path / "m.zarr", mask_and_scale=False)
    np.testing.assert_array_equal(z["red"].values, got[0])


def test_eolearn_l1c_equals_oracle(s2_data: Path, tmp_path: Path) -> None:
    """13-band L1C series, no SCL (mask.method none), non-square 9.99 m pixels kept natively."""
    items = _items(s2_data, "sentinel-2-l1c-eolearn")
    assert len(items) == 5
    bbox = list(shapely.geometry.shape(items[0].geometry).buffer(-0.0002).bounds)
    spec = MosaicSpec(
        aoi=bbox,
        period=["2015-07-01", "2015-09-30"],
        source={"stac": str(s2_data / "catalog.json"), "collection": "sentinel-2-l1c-eolearn"},
        bands=["B02", "B03", "B04", "B08"],
        grid={"resolution": "native"},
        mask={"method": "none"},
        composite={"method": "percentile", "percentile": 25},
        output={"cog": tmp_path / "l1c.tif"},
        runtime={"chunks": 32, "scheduler": "synchronous"},
    )
    s2mosaic.run(spec)
    native = read_native(items, {b: b for b in spec.bands}, None)
    with rasterio.open(tmp_path / "l1c.tif") as cog:
        got = cog.read()
        transform, shape = cog.transform, (cog.height, cog.width)
    assert transform.a == pytest.approx(native.transform.a)
    assert transform.e == pytest.approx(native.transform.e)
    inside = aoi_inside(shapely.box(*bbox), native.crs, transform, shape)
    for i, name in enumerate(spec.bands):
        expected = place(reduce(native.bands[name], native.valid, "percentile", 25),
                         native.transform, transform, shape)
        np.testing.assert_array_equal(got[i], np.where(inside, expected, 0), err_msg=name)


def test_sidecar_lists_every_item(s2_data: Path, tmp_path: Path) -> None:
    spec = MosaicSpec(
        aoi=BARBELLINO_BBOX,
        period=["2017-01-01", "2019-12-31"],
        source={"stac": str(s2_data / "catalog.json")},
        bands=["red"],
        output={"zarr": tmp_path / "m.zarr"},
        runtime={"scheduler": "synchronous"},
    )
    s2mosaic.run(spec)
    meta = json.loads((tmp_path / "m.metadata.json").read_text())
    ids = {i["id"] for i in meta["items"]}
    assert ids == {i.id for i in _items(s2_data, "sentinel-2-l2a", "Barbellino")}
    for rec in meta["items"]:
        assert Path(rec["assets"]["B04"]).exists() and Path(rec["assets"]["SCL"]).exists()
    assert meta["notice"] == "Contains modified Copernicus Sentinel data [2017-2019]"
    assert "linear" in meta["composite"]["definition"]
    assert meta["software"]["s2mosaic"]
    assert meta["processing_time_s"] > 0
    assert MosaicSpec.from_dict(meta["spec"]) == spec
