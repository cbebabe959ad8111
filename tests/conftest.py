"""Shared fixtures: real data from ../shared, the demo catalog, a real distributed cluster."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2mosaic._spec import MosaicSpec

from .objectstore import ObjectStore
from .served import Scenes

REPO = Path(__file__).resolve().parents[1]


def shared_s2() -> Path | None:
    """../shared/data/s2 beside the repository (or $S2MOSAIC_SHARED_DATA), if present."""
    env = os.environ.get("S2MOSAIC_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "s2"]:
        if (cand / "catalog.json").exists():
            return cand
    return None


#: Test processes pytest-xdist starts for ``-n auto`` (pyproject's addopts): one per core, at
#: most this many - each test may start a LocalCluster of its own.
MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(MAX_TEST_PROCESSES, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The SLURM tests share one single-node cluster: one test process runs them all, in turn
    # (``--dist loadgroup``); the others share out the rest.
    for item in items:
        if item.get_closest_marker("slurm") is not None or "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def s2_data() -> Path:
    path = shared_s2()
    if path is None:
        pytest.skip("real Sentinel-2 test data not found: expected ../shared/data/s2 beside the "
                    "repository or S2MOSAIC_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog (default size), generated once per test session."""
    from s2mosaic.demo import make_demo_catalog

    return make_demo_catalog(tmp_path_factory.mktemp("demo") / "catalog", seed=0)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A real distributed LocalCluster with worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def cupy_gpu() -> object:
    """CuPy with a usable CUDA device, else skip with the reason."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: pip install 's2mosaic-stream[gpu]'")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver
        pytest.skip(f"CuPy finds no usable CUDA GPU: {err}")
    if n_devices < 1:
        pytest.skip("CuPy finds no CUDA GPU")
    return cupy


def _check_address(address: object) -> None:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")
                                      or host.startswith("/")):
        raise OSError(f"test tried to reach the network: {address!r}")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests are offline by construction: only loopback (and UNIX socket) connections pass."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        _check_address(address)
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        _check_address(address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# -- six demo scenes served over loopback HTTP (tests/served.py): test_faults, test_dropped ------
@pytest.fixture(scope="module")
def scenes(demo_catalog: Path) -> Scenes:
    return Scenes(demo_catalog)


@pytest.fixture(scope="module")
def served_clean(scenes: Scenes, tmp_path_factory: pytest.TempPathFactory) -> MosaicSpec:
    """A fault-free run of ``scenes`` from the local files, to compare with."""
    import s2mosaic

    spec = scenes.spec(tmp_path_factory.mktemp("clean"))
    report = s2mosaic.run(spec, items=scenes.items)
    assert report.tiles["total"] == report.tiles["computed"] == 2
    return spec


@pytest.fixture
def store(scenes: Scenes) -> Iterator[ObjectStore]:
    """The loopback object store serving the demo catalog's folder; faults go in ``.faults``."""
    with ObjectStore(scenes.catalog.parent) as s:
        yield s
