"""Files kept open per worker thread (runtime.keep_open, s2mosaic._datasets): the same bytes as
opening per read, a rewritten file read afresh, a failed read not kept, a retry's reset honoured
by every thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.loader._rio import rio_read
from odc.loader.types import RasterLoadParams, RasterSource

import s2mosaic
from s2mosaic import _datasets
from s2mosaic._cube import clear_read_cache
from s2mosaic._readers import AssetRioReader
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SceneReadError, SpecError

from .oracle import assert_identical_outputs


def _cog(path: Path, value: int, size: int = 600) -> str:
    data = (np.arange(size * size, dtype=np.uint16).reshape(size, size) + value)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint16", crs="EPSG:32632", nodata=0, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate",
                       transform=rasterio.Affine(10, 0, 600000, 0, -10, 5300000)) as dst:
        dst.write(data, 1)
    return str(path)


def _read(uri: str, gbox: GeoBox, keep_open: bool) -> np.ndarray:
    src = RasterSource(uri, band=1)
    cfg = RasterLoadParams(dtype="uint16", fill_value=0, fail_on_error=True)
    roi, pix = AssetRioReader(src, None, "none", keep_open=keep_open).read(cfg, gbox)
    out = np.zeros(gbox.shape.yx, np.uint16)
    out[roi] = pix
    return out


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    _datasets.close_datasets()
    yield
    _datasets.close_datasets()


def _windows(uri: str) -> list[GeoBox]:
    with rasterio.open(uri) as f:
        full = GeoBox.from_rio(f)
    off_edge = GeoBox((400, 300), full.affine * Affine.translation(-50, 300), full.crs)
    # unaligned chunk windows (shared blocks), one off the file's edge, one across grids
    return [full[100:356, 100:356], full[356:612, 100:356], off_edge,
            full[100:356, 100:356].to_crs("EPSG:32633")]


def test_kept_reads_equal_odc_loaders_reads(tmp_path: Path) -> None:
    uri = _cog(tmp_path / "a.tif", 1)
    cfg = RasterLoadParams(dtype="uint16", fill_value=0, fail_on_error=True)
    for gbox in _windows(uri):
        roi, pix = rio_read(RasterSource(uri, band=1), cfg, gbox)
        want = np.zeros(gbox.shape.yx, np.uint16)
        want[roi] = pix
        for _ in range(2):  # the second read from the kept dataset
            np.testing.assert_array_equal(_read(uri, gbox, keep_open=True), want)
    assert len(_datasets._kept.open) == 1


def test_a_rewritten_file_is_opened_afresh(tmp_path: Path) -> None:
    uri = _cog(tmp_path / "a.tif", 1)
    gbox = _windows(uri)[0]
    first = _read(uri, gbox, keep_open=True)
    _cog(tmp_path / "a.tif", 7)  # same path and size, new bytes
    np.testing.assert_array_equal(_read(uri, gbox, keep_open=True), first + 6)


def test_a_failed_read_is_not_kept(tmp_path: Path) -> None:
    uri = _cog(tmp_path / "a.tif", 1)
    gbox = _windows(uri)[0]
    _read(uri, gbox, keep_open=True)
    (ds,) = _datasets._kept.open.values()
    with pytest.raises(RuntimeError), _datasets.kept(uri):
        raise RuntimeError("a read failed")
    assert ds.closed and not _datasets._kept.open
    with pytest.raises(SceneReadError, match=r"missing\.tif"):
        _read(str(tmp_path / "missing.tif"), gbox, keep_open=True)
    assert not _datasets._kept.open


def test_threads_keep_their_own_and_a_reset_closes_them(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_datasets, "PER_THREAD", 3)
    uris = [_cog(tmp_path / f"{i}.tif", i) for i in range(5)]
    gbox = _windows(uris[0])[0]

    def reads(todo: list[str]) -> list[Any]:
        for uri in todo:
            _read(uri, gbox, keep_open=True)
        return list(_datasets._kept.open.values())

    with ThreadPoolExecutor(1) as a, ThreadPoolExecutor(1) as b:
        kept_a, kept_b = a.submit(reads, uris).result(), b.submit(reads, uris).result()
        assert len(kept_a) == len(kept_b) == 3  # the last three, per thread
        assert not {id(d) for d in kept_a} & {id(d) for d in kept_b}
        assert not any(d.closed for d in kept_a + kept_b)
        clear_read_cache()  # the tile loop's reset before a retry, from another thread
        assert not any(d.closed for d in kept_a)  # a thread's datasets are its own to close...
        again = a.submit(reads, uris[:1]).result()
        assert all(d.closed for d in kept_a) and len(again) == 1  # ...at its next read
        assert not any(d.closed for d in kept_b)


def test_runs_with_and_without_kept_files_are_byte_identical(demo_catalog: Path, tmp_path: Path,
                                                             dask_client: Any) -> None:
    specs = [demo_spec(demo_catalog, tmp_path / k).replace(
        output={"zarr": tmp_path / k / "m.zarr", "cog": tmp_path / k / "m.tif"},
        runtime={"chunks": 192, "keep_open": k}) for k in ("off", "auto")]
    for spec in specs:
        s2mosaic.run(spec, client=dask_client)
    assert_identical_outputs(specs[0].output, specs[1].output)


def test_a_run_in_this_process_leaves_no_file_open(demo_catalog: Path, tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path).replace(
        output={"zarr": tmp_path / "m.zarr"}, runtime={"chunks": 256, "scheduler": "synchronous"})
    opened: list[Any] = []
    real = _datasets.kept

    def spy(uri: str) -> Any:
        opened.append(uri)
        return real(uri)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_datasets, "kept", spy)
        s2mosaic.run(spec)
    assert opened and not _datasets._kept.open  # read through kept files, closed at the end


def test_spec_setting() -> None:
    from tests.test_spec import make_spec

    assert make_spec().runtime.keep_open == "auto"
    assert make_spec(**{"runtime.keep_open": "off"}).runtime.keep_open == "off"
    with pytest.raises(SpecError, match=r"keep_open.*'always'.*auto.*off"):
        make_spec(**{"runtime.keep_open": "always"})
