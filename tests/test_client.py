"""The user's own Dask cluster: a run uses the client that is there, or DASK_SCHEDULER_ADDRESS.

A real scheduler and two real workers, each its own process (``dask scheduler`` / ``dask
worker``, as a user starts them); the tasks each worker executed are counted from the workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import s2mosaic
from s2mosaic import _cluster
from s2mosaic.demo import demo_spec

BIN = Path(sys.executable).parent
AOI = [11.995, 47.495, 12.005, 47.502]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a scheduler with two single-thread workers, all separate processes."""
    tmp = tmp_path_factory.mktemp("cluster")
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    common = ["--scheduler-file", str(sched_file)]
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--dashboard-address", ":0", *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.monotonic() + 120
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "the dask scheduler did not start within 120 s"
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--nworkers", "1", "--nthreads", "1", "--name",
                 name, "--host", "127.0.0.1", "--dashboard-address", ":0", "--local-directory",
                 str(tmp / name), *common],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        address = json.loads(sched_file.read_text())["address"]
        from distributed import Client

        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _executed(address: str) -> dict[str, int]:
    """Tasks executed so far by each worker of the scheduler at ``address``."""
    from distributed import Client

    with Client(address, set_as_default=False) as c:
        return {str(k): int(v) for k, v in
                c.run(lambda dask_worker: dask_worker.state.executed_count).items()}


def _no_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(runtime: Any) -> Any:
        raise AssertionError("a LocalCluster was started although a cluster was there")

    monkeypatch.setattr(_cluster, "_local", refuse)


def test_run_uses_the_current_client_and_leaves_it_open(
        scheduler: str, demo_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client

    _no_local_cluster(monkeypatch)
    spec = demo_spec(demo_catalog, tmp_path / "out").replace(aoi=AOI, runtime={"chunks": 256})
    assert spec.runtime.scheduler is None and spec.runtime.cluster is None
    before = _executed(scheduler)
    with Client(scheduler) as client:  # the notebook user's client, the process default
        report = s2mosaic.run(spec)
        assert client.status == "running"  # not closed by the run
        assert report.dashboard == client.dashboard_link
    after = _executed(scheduler)
    done = {w: after[w] - before.get(w, 0) for w in after}
    assert sum(done.values()) > 0, done
    assert report.status == "complete" and Path(report.outputs["cog"] or "").exists()


def test_an_explicit_scheduler_beats_the_current_client(
        scheduler: str, demo_catalog: Path, tmp_path: Path) -> None:
    from distributed import Client

    spec = demo_spec(demo_catalog, tmp_path / "out").replace(
        aoi=AOI, runtime={"chunks": 256, "scheduler": "synchronous"})
    before = _executed(scheduler)
    with Client(scheduler):
        s2mosaic.run(spec)
    assert _executed(scheduler) == before  # nothing ran on the cluster


def test_cli_uses_dask_scheduler_address(scheduler: str, demo_catalog: Path,
                                         tmp_path: Path) -> None:
    spec = demo_spec(demo_catalog, tmp_path / "out").replace(aoi=AOI, runtime={"chunks": 256})
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    before = _executed(scheduler)
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": scheduler, "COLUMNS": "200"}
    res = subprocess.run([str(BIN / "s2mosaic"), "run", str(path)], env=env, text=True,
                         capture_output=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"Dask cluster: scheduler {scheduler}" in out, out
    assert "LocalCluster" not in out
    after = _executed(scheduler)
    assert sum(after[w] - before.get(w, 0) for w in after) > 0
