"""Warped reads through reused index maps (s2mosaic._warp) against GDAL's own warp of every read
(odc-loader's ``rio_read``: ``rasterio.warp.reproject`` of the file's band), byte for byte."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.converters import rio_geobox
from odc.geo.geobox import GeoBox
from odc.loader._rio import rio_read
from odc.loader.types import RasterLoadParams, RasterSource

from s2mosaic import _warp
from s2mosaic.errors import SpecError


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    _warp._cache.clear()


def _cog(path: Path, data: np.ndarray, transform: Affine, crs: str, nodata: float | None,
         **extra: Any) -> str:
    profile = {"driver": "GTiff", "height": data.shape[0], "width": data.shape[1], "count": 1,
               "dtype": data.dtype, "crs": crs, "transform": transform, "nodata": nodata,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 10 m band in UTM 33N with nodata 0 holes, a 20 m SCL-like uint8 band, a band without
    nodata, and a band whose nodata is 65535 (as sen2r writes it)."""
    d = tmp_path_factory.mktemp("warp")
    rng = np.random.default_rng(7)
    band = rng.integers(1, 10_000, (700, 650), dtype=np.uint16)
    band[100:180, 200:320] = 0
    band[:, :40] = 0  # a swath edge
    scl = rng.integers(0, 12, (350, 325), dtype=np.uint8)
    t10 = Affine(10, 0, 280_000, 0, -10, 5_300_000)  # UTM 33N near 12°E (the zone line)
    t20 = Affine(20, 0, 280_000, 0, -20, 5_300_000)
    high = band.copy()
    high[band == 0] = 65535
    return {
        "band": _cog(d / "b.tif", band, t10, "EPSG:32633", 0),
        "scl": _cog(d / "scl.tif", scl, t20, "EPSG:32633", 0),
        "no_nodata": _cog(d / "nn.tif", band, t10, "EPSG:32633", None),
        "nodata_65535": _cog(d / "hi.tif", high, t10, "EPSG:32633", 65535),
    }


def _boxes(path: str) -> list[GeoBox]:
    """Output boxes across CRSs and resolutions over ``path``: inside it, across its edge, at
    aligned and fractional origins."""
    with rasterio.open(path) as r:
        src = rio_geobox(r)
    rng = np.random.default_rng(3)
    out = []
    for crs, res in (("EPSG:32632", 10), ("EPSG:32632", 20), ("EPSG:32632", 7.3),
                     ("EPSG:3857", 13.7), ("EPSG:4326", 1e-4), ("EPSG:32634", 30)):
        b = src.extent.to_crs(crs).boundingbox
        for k in range(2):
            cx = rng.uniform(b.left, b.right) if k else (b.left + b.right) / 2
            cy = rng.uniform(b.bottom, b.top) if k else b.top  # k=0: across the top edge
            n, m = (int(v) for v in rng.integers(150, 600, 2))
            x0 = cx - m * res / 2 if k else round(cx / res) * res
            out.append(GeoBox((n, m), Affine(res, 0, x0, 0, -res, cy + n * res / 3), crs))
    return out


def _cfg(dtype: str, nodata: float | None, **kw: Any) -> RasterLoadParams:
    return RasterLoadParams(dtype=dtype, fill_value=nodata, resampling="nearest", **kw)


@pytest.mark.parametrize(("name", "fill"), [("band", "file"), ("scl", "file"), ("no_nodata", 0),
                                            ("nodata_65535", "file"), ("nodata_65535", 0)])
def test_gathers_what_gdal_warps(sources: dict[str, str], name: str, fill: Any) -> None:
    """Nodata as the file declares it, none (the output's fill stands in), and a file nodata
    other than the output's (its pixels become the output's nodata, as GDAL leaves them)."""
    path = sources[name]
    with rasterio.open(path) as r:
        dtype, nodata = r.dtypes[0], r.nodata
    taken = 0
    for box in _boxes(path):
        cfg = _cfg(dtype, nodata if fill == "file" else fill)
        want_roi, want = rio_read(RasterSource(path), cfg, box)
        got = _warp.read(RasterSource(path), cfg, box)
        if got is None:
            continue
        taken += 1
        assert got[0] == want_roi
        assert got[1].dtype == want.dtype and got[1].shape == want.shape
        np.testing.assert_array_equal(got[1], want, err_msg=f"{name} onto {box}")
        # the second read of the grid gathers through the cached map, the same again
        np.testing.assert_array_equal(_warp.read(RasterSource(path), cfg, box)[1], want)
    assert taken >= 10, f"only {taken} of 12 boxes went through index maps"


def test_real_tile_onto_neighbour_zones(s2_data: Path) -> None:
    """The whole real tile 29RKH (decimated to 100/200 m) onto UTM 28 and 30, web mercator and
    geographic boxes: every band and the SCL as GDAL warps them."""
    tifs = sorted(glob.glob(str(s2_data / "sentinel-2-l2a" / "S2A_29RKH_*" / "*.tif")))
    assert tifs
    taken = 0
    for path in tifs:
        with rasterio.open(path) as r:
            src, dtype, nodata = rio_geobox(r), r.dtypes[0], r.nodata
        for crs, res in (("EPSG:32628", 100), ("EPSG:32630", 150), ("EPSG:3857", 120),
                         ("EPSG:4326", 0.001)):
            b = src.extent.to_crs(crs).boundingbox
            n = m = 384
            box = GeoBox((n, m), Affine(res, 0, b.left + res * 17.3, 0, -res,
                                        b.top - res * 40), crs)
            cfg = _cfg(dtype, nodata, use_overviews=False)
            want_roi, want = rio_read(RasterSource(path), cfg, box)
            got = _warp.read(RasterSource(path), cfg, box)
            if got is not None:
                taken += 1
                assert got[0] == want_roi
                np.testing.assert_array_equal(got[1], want, err_msg=f"{path} onto {box}")
    assert taken >= 0.9 * 4 * len(tifs)


def test_other_reads_are_left_to_odc_loader(sources: dict[str, str], tmp_path: Path) -> None:
    path = sources["band"]
    with rasterio.open(path) as r:
        src = rio_geobox(r)
    cfg = _cfg("uint16", 0)
    src_box = RasterSource(path)
    # same grid: odc-loader pastes without a warp
    assert _warp.read(src_box, cfg, src[100:300, 50:250]) is None
    other = _boxes(path)[0]
    # not nearest; another output dtype; a per-dataset mask
    assert _warp.read(src_box, RasterLoadParams(dtype="uint16", fill_value=0,
                                                resampling="bilinear"), other) is None
    assert _warp.read(src_box, _cfg("float32", None), other) is None
    with rasterio.open(path) as r:
        data = r.read(1)
    masked = _cog(tmp_path / "m.tif", data, src.affine, "EPSG:32633", None)
    with rasterio.open(masked, "r+") as r:
        r.write_mask(data > 0)
    assert _warp.read(RasterSource(masked), _cfg("uint16", 0), other) is None
    # an overview odc-loader would pick (output 8× coarser)
    ovr = _cog(tmp_path / "o.tif", data, src.affine, "EPSG:32633", 0)
    with rasterio.open(ovr, "r+") as r:
        r.build_overviews([2, 4, 8])
    coarse = GeoBox((60, 60), Affine(80, 0, other.affine.c, 0, -80, other.affine.f), other.crs)
    assert _warp.read(RasterSource(ovr), cfg, coarse) is None
    assert _warp.read(RasterSource(ovr), _cfg("uint16", 0, use_overviews=False), coarse) \
        is not None


def test_a_paste_known_from_the_items_metadata_is_not_opened(sources: dict[str, str],
                                                            tmp_path: Path) -> None:
    """odc-loader opens every read itself: where the item's projection metadata (the source's
    geobox) already says the read is a paste, this module must not open the file first (over
    HTTP that would be a second header request per read)."""
    with rasterio.open(sources["band"]) as r:
        grid = rio_geobox(r)
    gone = RasterSource(str(tmp_path / "not-there.tif"), geobox=grid)
    assert _warp.read(gone, _cfg("uint16", 0), grid[100:300, 50:250]) is None
    with pytest.raises(rasterio.errors.RasterioIOError):  # a warp still opens it
        _warp.read(gone, _cfg("uint16", 0), _boxes(sources["band"])[0])


def test_a_failed_read_raises_or_is_left_to_odc_loader(tmp_path: Path,
                                                       sources: dict[str, str]) -> None:
    box = _boxes(sources["band"])[0]
    missing = RasterSource(str(tmp_path / "nope.tif"))
    with pytest.raises(rasterio.errors.RasterioIOError):
        _warp.read(missing, _cfg("uint16", 0), box)
    assert _warp.read(missing, _cfg("uint16", 0, fail_on_error=False), box) is None


def test_one_warp_per_grid_and_box(sources: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                   ) -> None:
    calls = []
    real = _warp.rasterio.warp.reproject
    monkeypatch.setattr(_warp.rasterio.warp, "reproject",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    box = _boxes(sources["band"])[0]
    for name in ("band", "no_nodata", "nodata_65535", "band"):  # one grid, three files
        assert _warp.read(RasterSource(sources[name]), _cfg("uint16", 0), box)
    assert len(calls) == 2  # the column and the row numbers, once


def test_spec_setting() -> None:
    from tests.test_spec import make_spec

    assert make_spec().runtime.warp_reuse == "auto"
    assert make_spec(**{"runtime.warp_reuse": "off"}).runtime.warp_reuse == "off"
    with pytest.raises(SpecError, match=r"warp_reuse.*'sometimes'.*auto.*off"):
        make_spec(**{"runtime.warp_reuse": "sometimes"})
