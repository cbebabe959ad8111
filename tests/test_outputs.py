"""Outputs that every tool opens: GDAL reads the Zarr CRS, COG band metadata, netCDF-safe
attributes, STAC items that validate against the extension schemas (offline)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from referencing import Registry, Resource

import s2mosaic
from s2mosaic._export import export_tiles
from s2mosaic._pipeline import mosaic
from s2mosaic._spec import MosaicSpec
from s2mosaic._timeseries_run import run_series
from s2mosaic._write import open_zarr
from s2mosaic.demo import demo_spec

from .conftest import shared_s2

AOI = [11.995, 47.497, 12.005, 47.503]
SCHEMAS = {"projection": "projection_v1.1.0.json", "raster": "raster_v1.1.0.json",
           "eo": "eo_v1.1.0.json"}


def _spec(catalog: Path, out: Path, **output: Any) -> MosaicSpec:
    return demo_spec(catalog, out).replace(
        aoi=AOI, runtime={"chunks": 64, "scheduler": "synchronous"},
        output={"zarr": out / "m.zarr", "cog": out / "m.tif", "rgb": out / "rgb.tif", **output})


@pytest.fixture(scope="module")
def run_out(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outputs")
    s2mosaic.run(_spec(demo_catalog, out))
    return out


def _gdalinfo(target: str) -> str:
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdalinfo not found: apt-get install gdal-bin (GDAL's own CLI, not "
                    "rasterio's bundled GDAL, is what QGIS and other tools use)")
    return subprocess.run(["gdalinfo", target], capture_output=True, text=True, check=True).stdout


def test_gdal_reads_the_zarr_crs(run_out: Path) -> None:
    info = _gdalinfo(f'ZARR:"{run_out / "m.zarr"}":/red')
    assert 'ID["EPSG",32632]' in info, info[:800]
    assert "Pixel Size = (10.000000000000000,-10.000000000000000)" in info
    # and the readers that already worked still do
    z = xr.open_zarr(run_out / "m.zarr")
    assert z.odc.crs.epsg == 32632 and z.red.rio.crs.to_epsg() == 32632


def test_cog_band_metadata(run_out: Path) -> None:
    with rasterio.open(run_out / "m.tif") as src:
        assert src.descriptions == ("red", "green", "blue", "nir", "count")
        assert src.scales == (0.0001,) * 4 + (1.0,)
        assert src.offsets == (0.0,) * 5
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue", "undefined",
                                                     "undefined"]
    with rasterio.open(run_out / "rgb.tif") as src:
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]
        assert src.scales == (1.0,) * 3


def test_false_colour_cog_is_not_labelled_rgb(demo_catalog: Path, tmp_path: Path) -> None:
    spec = _spec(demo_catalog, tmp_path, rgb=None).replace(bands=["nir", "red", "green"])
    s2mosaic.run(spec)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert not {c.name for c in src.colorinterp} & {"red", "green", "blue"}
        assert src.scales == (0.0001,) * 3 + (1.0,)


def test_mosaic_and_opened_store_write_to_netcdf(demo_catalog: Path, run_out: Path,
                                                 tmp_path: Path) -> None:
    m = mosaic(_spec(demo_catalog, tmp_path))
    m.to_netcdf(tmp_path / "m.nc", engine="scipy")  # netCDF3: the strictest about attributes
    back = xr.open_dataset(tmp_path / "m.nc", engine="scipy")
    assert json.loads(back.attrs["s2mosaic_provenance"])["spec"]["period"]["start"]
    open_zarr(run_out / "m.zarr").to_netcdf(tmp_path / "z.nc", engine="scipy")
    # plain xarray: only GDAL's _CRS object (on each band) is not netCDF4 (the GeoZarr lists of
    # strings are netCDF4, not netCDF3; s2mosaic's open_zarr above makes them JSON strings)
    z = xr.open_zarr(run_out / "m.zarr")
    for name, v in [*z.attrs.items(), *((k, a) for var in z.variables.values()
                                         for k, a in var.attrs.items() if k != "_CRS")]:
        assert isinstance(v, str | int | float | list), (name, v)
        assert not isinstance(v, list) or all(isinstance(e, str | int | float) for e in v), name


def _validate(doc: dict[str, Any], kind: str = "item") -> None:
    from pystac.validation.local_validator import get_local_schema_cache

    data = shared_s2()
    if data is None:
        pytest.skip("STAC extension schemas not found: expected ../shared/data/s2/_stac_schemas")
    cache = get_local_schema_cache()  # STAC 1.1.0 core + GeoJSON, bundled with pystac
    registry: Registry = Registry().with_resources(
        (uri, Resource.from_contents(s)) for uri, s in cache.items())
    core = cache[f"https://schemas.stacspec.org/v1.1.0/{kind}-spec/json-schema/{kind}.json"]
    jsonschema.Draft7Validator(core, registry=registry).validate(doc)
    if kind != "item":
        return
    checked = set()
    for name, file in SCHEMAS.items():  # processing: no local schema, so not validated here
        schema = json.loads((data / "_stac_schemas" / file).read_text())
        url = next(u for u in doc["stac_extensions"] if f"/{name}/" in u)
        assert schema["$id"].rstrip("#") == url
        jsonschema.validators.validator_for(schema)(schema, registry=registry).validate(doc)
        checked.add(name)
    assert checked == set(SCHEMAS)


def test_product_stac_item_validates(run_out: Path) -> None:
    item = json.loads((run_out / "m.stac.json").read_text())
    _validate(item)
    props = item["properties"]
    assert props["proj:epsg"] == 32632 and props["proj:shape"] == [71, 79]
    assert props["start_datetime"].startswith("2024-05-01")
    assert set(item["assets"]) == {"zarr", "cog", "rgb", "metadata"}
    cog = item["assets"]["cog"]
    assert [b.get("common_name") for b in cog["eo:bands"]] == ["red", "green", "blue", "nir", None]
    assert cog["raster:bands"][0]["scale"] == 0.0001 and "scale" not in cog["raster:bands"][4]
    assert (run_out / item["assets"]["cog"]["href"]).exists()
    bad = dict(item, properties={**props, "proj:shape": [71]})
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)


def test_tile_export_collection(run_out: Path, tmp_path: Path) -> None:
    vrt = export_tiles(run_out / "m.zarr", tmp_path / "tiles", 64)
    items = sorted(vrt.parent.glob("*.stac.json"))
    assert len(items) == 4
    for p in items:
        item = json.loads(p.read_text())
        _validate(item)
        assert item["properties"]["start_datetime"].startswith("2024-05-01")
    _validate(json.loads((vrt.parent / "collection.json").read_text()), "collection")
    with rasterio.open(vrt) as src:
        assert src.scales[0] == 0.0001 and src.colorinterp[0].name == "red"


def test_series_items_and_zarr_crs(demo_catalog: Path, tmp_path: Path) -> None:
    spec = _spec(demo_catalog, tmp_path, rgb=None).replace(series={"periods": "every 30 days"})
    run_series(spec)
    items = sorted(tmp_path.glob("m_*.stac.json"))
    assert [p.name for p in items] == ["m_2024-05-01.stac.json", "m_2024-05-31.stac.json",
                                       "m_2024-06-30.stac.json"]
    first = json.loads(items[0].read_text())
    _validate(first)
    assert first["assets"]["cog"]["href"] == "m_2024-05-01.tif"
    with rasterio.open(tmp_path / "m_2024-05-01.tif") as src:
        assert src.scales[0] == 0.0001
    assert 'ID["EPSG",32632]' in _gdalinfo(f'ZARR:"{tmp_path / "m.zarr"}":/red:0')
