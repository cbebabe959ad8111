"""The s2cloudless masker against the eo-learn L1C series (../shared/data/s2), bit for bit.

The series carries eo-learn's own s2cloudless output (``CLP_S2C`` probabilities as float32 0-1,
``CLM_S2C`` masks; threshold 0.4, average_over 4, dilation_size 2, all 13 bands): our chunked,
halo'd masker must reproduce both exactly, with 32 px chunks so that chunk edges fall inside
the 101 × 100 px scene.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from odc.geo.geobox import GeoBox
from pyproj import Transformer

import s2mosaic
from s2mosaic._cube import load_cube
from s2mosaic._grid import native_geobox
from s2mosaic._items import S2CLOUDLESS_BANDS
from s2mosaic._spec import MaskSpec, MosaicSpec
from s2mosaic.errors import CubeError, SpecError
from s2mosaic.masks import MaskContext, valid_mask
from s2mosaic.masks.s2cloudless import s2cloudless_clouds, s2cloudless_probability

from .oracle import aoi_inside, place, read_native, reduce

pytest.importorskip("s2cloudless", reason="s2cloudless not installed (pip install 's2mosaic-stream[s2cloudless]')")

CHUNK = 32


def _items(s2_data: Path) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(s2_data / "catalog.json"))
    items = [i for i in cat.get_items(recursive=True) if i.collection_id == "sentinel-2-l1c-eolearn"]
    for i in items:
        i.make_asset_hrefs_absolute()
    return sorted(items, key=lambda i: i.datetime)


def _native_geobox(item: pystac.Item) -> GeoBox:
    return native_geobox(item, "B04")


def _aoi(item: pystac.Item) -> shapely.Polygon:
    """The item's grid, 1 m inside its edges, in lon/lat: its native window is the whole grid."""
    gbox = _native_geobox(item)
    to_lonlat = Transformer.from_crs(gbox.crs.to_wkt(), "EPSG:4326", always_xy=True)
    box = shapely.box(*gbox.boundingbox).buffer(-1.0, join_style="mitre")
    return shapely.transform(box, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))


def _spec(s2_data: Path, tmp_path: Path, items: list[pystac.Item], **mask: object) -> MosaicSpec:
    return MosaicSpec(
        aoi=_aoi(items[0]).wkt,
        period=["2015-07-01", "2015-09-30"],
        source={"stac": str(s2_data / "catalog.json"), "collection": "sentinel-2-l1c-eolearn"},
        bands=["B02", "B03", "B04", "B08"],
        grid={"resolution": "native"},
        mask={"method": "s2cloudless", **mask},
        composite={"method": "percentile", "percentile": 25},
        output={"cog": tmp_path / "l1c.tif"},
        runtime={"chunks": CHUNK, "scheduler": "synchronous"},
    )


def _reference(items: list[pystac.Item], key: str) -> np.ndarray:
    out = []
    for item in items:
        with rasterio.open(item.assets[key].get_absolute_href()) as src:
            out.append(src.read(1))
    return np.stack(out)


@pytest.fixture(scope="module")
def eolearn(s2_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[MosaicSpec, list[pystac.Item], object]:
    items = _items(s2_data)
    assert len(items) == 5
    spec = _spec(s2_data, tmp_path_factory.mktemp("s2c"), items)
    cube = load_cube(items, spec, _native_geobox(items[0]))
    with dask.config.set(scheduler="synchronous"):
        cube = cube.persist()  # read the COGs once for the whole module; chunks are kept
    return spec, items, cube


def test_cube_loads_the_13_bands_in_model_order(eolearn: tuple) -> None:
    _, _, cube = eolearn
    names = cube.attrs["mask_bands"]
    assert len(names) == 13
    # Bands of spec.bands are reused, the others are loaded under mask_<asset>.
    assert [n.removeprefix("mask_") for n in names] == list(S2CLOUDLESS_BANDS)
    assert {"B02", "B03", "B04", "B08"} <= set(names)
    assert cube["mask_B10"].dtype == np.uint16
    assert cube["B04"].data.chunks[1:] == ((32, 32, 32, 5), (32, 32, 32, 4))


def test_probability_equals_clp_s2c_bit_for_bit(eolearn: tuple) -> None:
    spec, items, cube = eolearn
    ref = _reference(items, "CLP_S2C")
    assert ref.dtype == np.float32  # stored as float32 probabilities 0-1
    prob = s2cloudless_probability(cube, spec.mask)
    assert prob.dtype == np.float32 and prob.shape == ref.shape
    with dask.config.set(scheduler="synchronous"):
        got = prob.values
    np.testing.assert_array_equal(got, ref)


def test_mask_equals_clm_s2c_exactly_across_chunk_edges(eolearn: tuple) -> None:
    spec, items, cube = eolearn
    ref = _reference(items, "CLM_S2C")
    clouds = s2cloudless_clouds(cube, spec.mask)
    assert clouds.dtype == bool and clouds.data.chunks == cube["B04"].data.chunks
    with dask.config.set(scheduler="synchronous"):
        got = clouds.values
    assert 0 < got.mean() < 1  # the series mixes clear and cloudy dates
    np.testing.assert_array_equal(got, ref.astype(bool))
    # Without the halo, chunk edges would differ: the halo is what makes this exact.
    from s2mosaic.masks._chunks import plan_chunks

    assert plan_chunks((32, 32, 32, 5), 6) == (32, 32, 37)
    assert plan_chunks((32, 32, 32, 4), 6) == (32, 32, 36)


def test_mask_is_exact_with_other_parameters(eolearn: tuple, s2_data: Path, tmp_path: Path) -> None:
    """A different radius/threshold, the 10-band input, 16 px chunks: still the whole-array result."""
    from s2cloudless import S2PixelCloudDetector

    _spec0, items, _cube = eolearn
    spec = _spec(s2_data, tmp_path, items, s2cloudless_threshold=0.3, s2cloudless_average_over=2,
                 s2cloudless_dilation_size=3, s2cloudless_all_bands=False).replace(
        runtime={"chunks": 16, "scheduler": "synchronous"})
    cube = load_cube(items, spec, _native_geobox(items[0]))
    assert len(cube.attrs["mask_bands"]) == 10
    with dask.config.set(scheduler="synchronous"):
        got = s2cloudless_clouds(cube, spec.mask).values
    bands = np.stack([_reference(items, b) for b in S2CLOUDLESS_BANDS], axis=-1)
    det = S2PixelCloudDetector(threshold=0.3, average_over=2, dilation_size=3, all_bands=True)
    expected = det.get_cloud_masks(bands / 10000.0)
    np.testing.assert_array_equal(got, expected.astype(bool))


def test_end_to_end_composite_equals_oracle_masked_with_clm_s2c(s2_data: Path, tmp_path: Path) -> None:
    items = _items(s2_data)
    spec = _spec(s2_data, tmp_path, items)
    report = s2mosaic.run(spec)
    assert report.items == 5
    native = read_native(items, {b: b for b in spec.bands}, None)
    clm = _reference(items, "CLM_S2C").astype(bool)
    valid = native.valid & ~clm
    assert valid.sum(axis=0).min() >= 1 and (valid.sum(axis=0) < 5).all()
    with rasterio.open(tmp_path / "l1c.tif") as cog:
        got = cog.read()
        transform, shape = cog.transform, (cog.height, cog.width)
    assert shape == native.valid.shape[1:]  # the output grid is the item's own grid
    inside = aoi_inside(_aoi(items[0]), native.crs, transform, shape)
    assert inside.all()
    for i, name in enumerate(spec.bands):
        expected = place(reduce(native.bands[name], valid, "percentile", 25), native.transform,
                         transform, shape)
        np.testing.assert_array_equal(got[i], expected, err_msg=name)
    np.testing.assert_array_equal(got[-1], valid.sum(axis=0).astype(np.uint16))


def test_nodata_input_is_invalid_and_not_grown(eolearn: tuple) -> None:
    spec, _, cube = eolearn
    holed = cube.copy()
    b10 = cube["mask_B10"].values.copy()
    b10[0, 50:53, 40:45] = 0  # nodata in one input band, on a clear date
    holed["mask_B10"] = cube["mask_B10"].copy(data=b10)
    with dask.config.set(scheduler="synchronous"):
        v = valid_mask(holed, ["B04"], spec.mask, MaskContext()).values
        prob = s2cloudless_probability(holed, spec.mask).values
    assert not v[0, 50:53, 40:45].any()
    assert prob[0, 50:53, 40:45].max() == 0
    assert v[0, 48:55, 38:47].sum() == 7 * 9 - 15  # clear neighbours stay valid


def test_buffer_m_grows_clouds_by_whole_pixels(eolearn: tuple) -> None:
    spec, items, cube = eolearn
    buffered = MaskSpec(method="s2cloudless", buffer_m=25)
    with dask.config.set(scheduler="synchronous"):
        base = valid_mask(cube, ["B04"], spec.mask).values
        grown = valid_mask(cube, ["B04"], buffered,
                           MaskContext(geobox=_native_geobox(items[0]))).values
        from_coords = valid_mask(cube, ["B04"], buffered).values  # pixel size from the coords
        d3 = valid_mask(cube, ["B04"], MaskSpec(method="s2cloudless", dilation=3)).values
    assert grown.sum() < base.sum()
    # 25 m on ~9.995 m pixels rounds up to 3 pixels: the same as dilation 3.
    np.testing.assert_array_equal(grown, d3)
    np.testing.assert_array_equal(from_coords, d3)


def test_missing_bands_and_bad_options_are_clear_errors(eolearn: tuple) -> None:
    spec, _, cube = eolearn
    with pytest.raises(CubeError, match="13 L1C bands"):
        s2cloudless_clouds(cube.assign_attrs(mask_bands=["B04"]), spec.mask)
    for field, value, phrase in [
        ("s2cloudless_threshold", 1.5, "<= 1"),
        ("s2cloudless_average_over", -1, ">= 0"),
        ("s2cloudless_dilation_size", 1.5, "integer"),
        ("s2cloudless_all_bands", "yes", "true or false"),
    ]:
        with pytest.raises(SpecError, match=phrase) as e:
            MaskSpec(method="s2cloudless", **{field: value})
        assert e.value.field == field and e.value.value == value
