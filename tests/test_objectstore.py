"""The loopback object store itself (tests/objectstore.py): real GDAL range reads through it,
tokens that expire, and each injected fault doing what it says."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

from .objectstore import Fault, ObjectStore

# GDAL reads over HTTP with short limits, so a fault costs seconds, never a hang.
GDAL_FAST = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_TIMEOUT": "3",
             "GDAL_HTTP_CONNECTTIMEOUT": "2", "GDAL_HTTP_MAX_RETRY": "0",
             "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/http://127.0.0.1"}


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024² uint16 COG with 256² blocks: a read of one window is a few range requests."""
    root = tmp_path_factory.mktemp("bucket")
    path = root / "scenes" / "one" / "B04.tif"
    path.parent.mkdir(parents=True)
    data = (np.arange(1024 * 1024, dtype=np.uint32) % 9973).astype(np.uint16).reshape(1024, 1024)
    with rasterio.open(path, "w", driver="COG", width=1024, height=1024, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=rasterio.transform.from_origin(6e5, 5.2e6, 10, 10),
                       blocksize=256, compress="deflate") as dst:
        dst.write(data, 1)
    return path


def _read(url: str) -> np.ndarray:
    with rasterio.Env(**GDAL_FAST), rasterio.open(f"/vsicurl/{url}") as src:
        return src.read(1, window=((256, 512), (512, 768)))


def test_gdal_reads_windows_with_range_requests(cog: Path) -> None:
    with rasterio.open(cog) as src:
        expected = src.read(1, window=((256, 512), (512, 768)))
    with ObjectStore(cog.parents[2]) as store:
        got = _read(store.url(cog))
        assert np.array_equal(got, expected)
        gets = store.requests(path="B04.tif")
        assert gets and all(r.status in (200, 206) for r in gets)
        ranged = [r for r in gets if r.method == "GET" and r.range]
        assert ranged and all(r.status == 206 for r in ranged)
        assert store.bytes_sent < cog.stat().st_size  # a window, not the whole file


def test_head_etag_and_missing_keys(cog: Path) -> None:
    with ObjectStore(cog.parents[2]) as store:
        req = urllib.request.Request(store.url(cog), method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == cog.stat().st_size
            assert r.headers["Accept-Ranges"] == "bytes" and r.headers["ETag"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(store.url("scenes/none.tif"), timeout=5)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:  # never outside the root
            urllib.request.urlopen(store.url("scenes/one/B04.tif").replace("scenes", "..%2F.."),
                                   timeout=5)
        assert e.value.code == 404


def test_tokens_are_needed_and_expire_on_the_clock(cog: Path) -> None:
    now = [0.0]
    with ObjectStore(cog.parents[2], tokens=True, token_lifetime_s=10, clock=lambda: now[0]) as s:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(s.url(cog), timeout=5)
        assert e.value.code == 403
        token = s.issue_token()
        with urllib.request.urlopen(s.url(cog, token), timeout=5) as r:
            assert r.status == 200
        now[0] = 10.5
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(s.url(cog, token), timeout=5)
        assert e.value.code == 403
        assert len(s.requests(status=403)) == 2


@pytest.mark.parametrize("fault", [Fault("B04", "status", status=503),
                                   Fault("B04", "stall", stall_s=30),
                                   Fault("B04", "reset"),
                                   Fault("B04", "truncate")], ids=lambda f: f.kind)
def test_each_fault_fails_a_read_that_does_not_retry(cog: Path, fault: Fault) -> None:
    with ObjectStore(cog.parents[2]) as store:
        url = store.url(cog)
        _read(url)  # warm: the header is read before the fault
        store.faults.append(fault)
        with pytest.raises(RasterioIOError):
            _read(url)
        assert fault.hits >= 1


def test_retry_after_and_times(cog: Path) -> None:
    with ObjectStore(cog.parents[2]) as store:
        store.faults.append(Fault("B04", "status", status=429, retry_after=3, times=1))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(store.url(cog), timeout=5)
        assert e.value.code == 429 and e.value.headers["Retry-After"] == "3"
        with urllib.request.urlopen(store.url(cog), timeout=5) as r:  # times=1: only once
            assert r.status == 200


def test_down_refuses_connections_then_serves_again(cog: Path) -> None:
    with ObjectStore(cog.parents[2]) as store:
        url = store.url(cog)
        restarted = store.down(1.0)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=5)
        restarted.join(timeout=30)
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
