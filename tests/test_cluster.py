"""Clusters: profiles and their job scripts (as text), make_client, GPU resource annotations, and
real batch-system runs.

The job-script tests need no batch system (like dask-jobqueue's own tests). The ``slurm`` tests
submit real jobs with ``sbatch`` (and ``qsub`` through Slurm's Torque wrappers) to a running
SLURM (``.ci/run`` starts one with ``../shared/infra/slurm_up.sh``); they skip, saying why, where
there is none.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

import s2mosaic
from s2mosaic import _cluster as cl
from s2mosaic._cluster import (
    ClusterProfile,
    gpu_annotate,
    gpu_resources,
    job_script,
    keep_annotations,
    load_profile,
    make_client,
    without_task_fusion,
)
from s2mosaic._spec import MosaicSpec, RuntimeSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import ClusterError, GPUFallbackWarning, SpecError

from .oracle import assert_identical_outputs

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "s2mosaic" / "profiles"
PARTITION = os.environ.get("SLURM_PARTITION", "debug")


# -- profiles and job scripts (no batch system needed) -------------------------------------------
def test_every_example_profile_loads() -> None:
    names = sorted(p.name for p in PROFILES.glob("*.yaml"))
    assert names == ["local.yaml", "pbs.yaml", "slurm-cpu.yaml", "slurm-gpu.yaml"]
    kinds = {n: load_profile(PROFILES / n).kind for n in names}
    assert kinds == {"local.yaml": "local", "pbs.yaml": "pbs", "slurm-cpu.yaml": "slurm",
                     "slurm-gpu.yaml": "slurm"}
    for n in ("pbs.yaml", "slurm-cpu.yaml", "slurm-gpu.yaml"):
        p = load_profile(PROFILES / n)
        assert p.adapt is not None and p.adapt[0] >= 1 and p.wait_workers == 1
        # Round trip through the YAML shape.
        assert ClusterProfile.from_dict(yaml.safe_load(p.to_yaml()), source=p.source) == p


def _lines(script: str) -> list[str]:
    return script.splitlines()


def _worker_command(script: str) -> str:
    (cmd,) = [line for line in _lines(script) if "distributed.cli.dask_worker" in line]
    return cmd


def test_slurm_cpu_job_script() -> None:
    s = job_script(PROFILES / "slurm-cpu.yaml")
    lines = _lines(s)
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH -J s2mosaic-worker", "#SBATCH -p normal", "#SBATCH -n 1",
                      "#SBATCH --cpus-per-task=8", "#SBATCH --mem=30G", "#SBATCH -t 01:00:00"):
        assert directive in lines, directive
    assert not any("--gres" in line for line in lines)
    # The prologue runs before the worker starts, in order.
    i = lines.index("module load python/3.11")
    assert lines[i + 1] == "source $HOME/venvs/s2mosaic/bin/activate"
    assert lines.index(next(ln for ln in lines if "dask_worker" in ln)) > i + 1
    cmd = _worker_command(s)
    assert cmd.startswith("python -m distributed.cli.dask_worker tcp://<scheduler-address>:8786")
    assert "--nworkers 2 " in cmd and "--nthreads 4 " in cmd and "--nanny" in cmd
    assert "--lifetime 55m --lifetime-stagger 4m" in cmd
    assert "--lifetime-restart" not in cmd  # the walltime would kill a restarted worker mid-task
    assert "--local-directory $TMPDIR" in cmd


def test_slurm_gpu_job_script() -> None:
    s = job_script(PROFILES / "slurm-gpu.yaml")
    lines = _lines(s)
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH -p gpu" in lines and "#SBATCH -J s2mosaic-gpu" in lines
    assert "module load cuda/12.4" in lines
    cmd = _worker_command(s)
    assert "--resources GPU=1" in cmd
    assert "--nworkers" not in cmd  # one worker process per job: it owns the job's GPU
    assert "--nthreads 8 " in cmd and "--lifetime 55m" in cmd


def test_pbs_job_script() -> None:
    s = job_script(PROFILES / "pbs.yaml")
    lines = _lines(s)
    for directive in ("#PBS -N s2mosaic-worker", "#PBS -q workq",
                      "#PBS -l select=1:ncpus=8:mem=32GB", "#PBS -l walltime=01:00:00",
                      "#PBS -j oe"):
        assert directive in lines, directive
    assert not any(line.startswith("#SBATCH") for line in lines)
    assert "source $HOME/venvs/s2mosaic/bin/activate" in lines
    assert "--lifetime 55m --lifetime-stagger 4m" in _worker_command(s)


def test_local_profile_has_no_job_script() -> None:
    with pytest.raises(ClusterError, match="LocalCluster"):
        job_script(PROFILES / "local.yaml")


def test_job_script_equals_the_one_the_cluster_object_submits() -> None:
    """Built without a scheduler, the script is dask-jobqueue's own, up to the address."""
    from dask_jobqueue import SLURMCluster

    p = load_profile(PROFILES / "slurm-gpu.yaml").with_options(
        interface="lo", scheduler_options={"dashboard_address": ":0"})
    ours = job_script(p)
    with SLURMCluster(**{cl.kwarg(k): v for k, v in p.options.items()}) as cluster:
        theirs = cluster.job_script()
        address = cluster.scheduler.address
    assert theirs == ours.replace("tcp://<scheduler-address>:8786", address)


def test_jobqueue_part_works_as_a_dask_config_entry() -> None:
    """The `jobqueue:` part is dask-jobqueue's config shape: as dask config, the cluster class
    alone produces the same script; and a profile may leave every option to that config."""
    from dask_jobqueue import SLURMCluster

    entry = yaml.safe_load((PROFILES / "slurm-gpu.yaml").read_text())["jobqueue"]["slurm"]
    with dask.config.set({f"jobqueue.slurm.{k}": v for k, v in entry.items()}):
        job = SLURMCluster.job_cls("tcp://<scheduler-address>:8786", name="dummy-name")
        assert job.job_script() == job_script(PROFILES / "slurm-gpu.yaml")
        bare = ClusterProfile.from_dict({"s2mosaic": {"cluster": "slurm"}})
        assert "#SBATCH --gres=gpu:1" in job_script(bare)


def test_cli_cluster_script() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["cluster", "script", str(PROFILES / "slurm-gpu.yaml")])
    assert res.exit_code == 0, res.output
    assert "#SBATCH --gres=gpu:1" in res.stdout and "--resources GPU=1" in res.stdout
    res = runner.invoke(app, ["cluster", "script", str(PROFILES / "local.yaml")])
    assert res.exit_code == 2 and "LocalCluster" in res.output
    res = runner.invoke(app, ["cluster", "script", "no/such/profile.yaml"])
    assert res.exit_code == 2 and "no/such/profile.yaml" in res.output


def test_no_writes_into_home_and_no_jobqueue_at_import(tmp_path: Path) -> None:
    """dask-jobqueue copies jobqueue.yaml into ~/.config/dask when imported; we keep it out."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_CONFIG"} | {"HOME": str(tmp_path)}
    code = ("import sys, s2mosaic; assert 'dask_jobqueue' not in sys.modules; "
            "from s2mosaic._cluster import job_script; "
            f"job_script({str(PROFILES / 'slurm-cpu.yaml')!r}); "
            "assert 'dask_jobqueue' in sys.modules")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not (tmp_path / ".config" / "dask").exists()


@pytest.mark.parametrize("data,field,phrase", [
    ({"jobqueue": {"slurm": {"cpus": 4}}}, "jobqueue.slurm.cpus", "valid keys are"),
    ({"jobqueue": {"slurm": {}, "pbs": {}}}, "s2mosaic._cluster", "say which cluster"),
    ({"s2mosaic": {"cluster": "kubernetes"}}, "s2mosaic._cluster", "valid values are"),
    ({"jobqueue": {"slurm": {}}, "distributed": {}}, "distributed", "unknown key"),
    ({"s2mosaic": {"cluster": "local", "local": {"workers": 2}}}, "s2mosaic.local.workers",
     "n_workers"),
    ({"jobqueue": {"slurm": {}}, "s2mosaic": {"scale": {"jobs": 2}, "adapt": {"maximum_jobs": 3}}},
     "s2mosaic.scale", "not both"),
    ({"jobqueue": {"slurm": {}}, "s2mosaic": {"adapt": {"minimum_jobs": 4, "maximum_jobs": 2}}},
     "s2mosaic.adapt.maximum_jobs", ">= 4"),
    ({"jobqueue": {"slurm": {}}, "s2mosaic": {"adapt": {"minimum_jobs": 0, "maximum_jobs": 2},
                                              "wait": {"workers": 1}}},
     "s2mosaic.wait.workers", "minimum_jobs"),
    ({"jobqueue": {"slurm": {}}, "s2mosaic": {"wait": {"timeout": "soon"}}},
     "s2mosaic.wait.timeout", "'10m'"),
    ({"jobqueue": {"slurm": {}}, "s2mosaic": {"scale": 3}}, "s2mosaic.scale", "{jobs: N}"),
])
def test_profile_errors_name_the_field(data: dict[str, Any], field: str, phrase: str) -> None:
    with pytest.raises(SpecError) as e:
        ClusterProfile.from_dict(data, source="x.yaml")
    assert e.value.field == f"x.yaml: {field}"
    assert phrase in str(e.value)


def test_profile_defaults_and_durations() -> None:
    p = ClusterProfile.from_dict({"jobqueue": {"slurm": {"job_extra_directives": ["--x"],
                                                         "name": "w", "queue": None}},
                                  "s2mosaic": {"wait": {"timeout": "1h"}}})
    # underscore or hyphen spellings; None left to the dask config
    assert dict(p.options) == {"job-extra-directives": ["--x"], "name": "w"}
    assert p.wait_timeout == 3600 and p.wait_workers == 1 and p.jobs is None and p.adapt is None
    lazy = ClusterProfile.from_dict({"jobqueue": {"pbs": {}},
                                     "s2mosaic": {"adapt": {"maximum_jobs": 5}}})
    assert lazy.adapt == (0, 5) and lazy.wait_workers == 0  # nothing starts before there is work
    assert "adaptive 0-5 job(s)" in lazy.describe()


# -- RuntimeSpec.cluster ----------------------------------------------------------------------------
def test_runtime_cluster_is_relative_to_the_spec_file(demo_catalog: Path, tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    spec = demo_spec(demo_catalog, tmp_path / "out").to_dict()
    spec["runtime"]["cluster"] = "profiles/p.yaml"
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = MosaicSpec.from_yaml(path)
    assert loaded.runtime.cluster == tmp_path / "specs" / "profiles" / "p.yaml"
    assert MosaicSpec.from_dict(loaded.to_dict()).runtime == loaded.runtime


@pytest.mark.parametrize("runtime,phrase", [
    ({"cluster": "cluster/local.txt"}, "YAML"),
    ({"cluster": "p.yaml", "scheduler": "synchronous"}, "not both"),
    ({"cluster": "p.yaml", "n_workers": 2}, "n_workers"),
    ({"cluster": 3}, "path"),
])
def test_runtime_cluster_errors(runtime: dict[str, Any], phrase: str) -> None:
    with pytest.raises(SpecError) as e:
        MosaicSpec(aoi=[11.99, 47.49, 12.0, 47.5], period=["2024-05-01", "2024-05-31"],
                   source={"stac": "c.json"}, runtime=runtime)
    assert e.value.field == "runtime.cluster" and phrase in str(e.value)


def test_missing_profile_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"runtime.cluster: invalid value .*nope.yaml.*no such"):
        make_client(RuntimeSpec(cluster=tmp_path / "nope.yaml"))


def test_batch_profile_without_the_submit_command(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / qsub here
    with pytest.raises(ClusterError, match=r"slurm-cpu.yaml.*'sbatch' is not on PATH"):
        make_client(PROFILES / "slurm-cpu.yaml")
    with pytest.raises(ClusterError, match=r"pbs.yaml, queue 'workq'.*'qsub' is not on PATH"):
        make_client(PROFILES / "pbs.yaml")


# -- make_client on this machine ------------------------------------------------------------------
def _small_local(**changes: Any) -> ClusterProfile:
    return load_profile(PROFILES / "local.yaml").with_options(
        n_workers=1, threads_per_worker=1, dashboard_address=":0").replace(**changes)


def test_local_profile_connection() -> None:
    conn = make_client(_small_local())
    try:
        assert conn.client is not None and conn.cluster is not None
        assert len(conn.client.scheduler_info(n_workers=-1)["workers"]) == 1
        assert conn.dashboard_link and conn.dashboard_link.startswith("http://127.0.0.1:")
        assert "LocalCluster from cluster profile" in conn.description
        assert "dashboard" in repr(conn) and "<" in conn._repr_html_()
        assert conn.client.submit(lambda x: x + 1, 1).result() == 2
    finally:
        conn.close()
    assert conn.client is None


def test_local_profile_adaptive_and_scaled() -> None:
    with make_client(_small_local(adapt=(1, 2))) as client:
        assert 1 <= len(client.scheduler_info(n_workers=-1)["workers"]) <= 2
    with make_client(_small_local(jobs=2, wait_workers=2)) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2


def test_no_worker_arrives_error_names_profile() -> None:
    # One job can bring at most one worker; whether it has joined within 2 s depends on how
    # loaded the machine is, so the count may be 0 or 1 - what matters is that it is named.
    p = _small_local(jobs=1, wait_workers=3, wait_timeout=2.0)
    with pytest.raises(ClusterError, match=r"only [01] of 3 Dask worker\(s\) joined within 2 s "
                                           r"\(LocalCluster from cluster profile .*local.yaml"):
        make_client(p)


def test_local_schedulers_and_passed_client() -> None:
    before = dask.config.get("scheduler", None)
    with make_client("synchronous") as c:
        assert c is None and dask.config.get("scheduler") == "synchronous"
    assert dask.config.get("scheduler", None) == before
    sentinel = object()
    with make_client("cluster/ignored.yaml", client=sentinel) as c:
        assert c is sentinel


def test_cli_run_with_cluster_profile(demo_catalog: Path, tmp_path: Path) -> None:
    profile = tmp_path / "one-worker.yaml"
    _small_local().to_yaml(profile)
    spec = demo_spec(demo_catalog, tmp_path / "out").replace(
        aoi=[11.995, 47.495, 12.005, 47.502], runtime={"chunks": 256})
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(path), "--cluster", str(profile)])
    assert res.exit_code == 0, res.output
    assert "Dask cluster: LocalCluster from cluster profile" in res.output
    assert "Dask dashboard: http://127.0.0.1:" in res.output
    res = runner.invoke(app, ["run", str(path), "--cluster", str(profile), "--scheduler", "threads"])
    assert res.exit_code == 2 and "not both" in res.output


# -- GPU resources ---------------------------------------------------------------------------------
@pytest.fixture()
def cpu_and_gpu_workers() -> Iterator[Any]:
    """A real scheduler with two workers: 'cpu' (no resources) and 'gpu' (resources GPU=1)."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    opts = {"nthreads": 1, "host": "127.0.0.1"}
    workers = {"cpu": {"cls": Worker, "options": opts},
               "gpu": {"cls": Worker, "options": opts | {"resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2)
        yield client


def _which_worker(block: np.ndarray, *_: Any) -> np.ndarray:
    from distributed import get_worker

    return np.full(block.shape, 1 if get_worker().name == "gpu" else 0, np.uint8)


def test_gpu_tasks_run_only_on_gpu_workers(cpu_and_gpu_workers: Any) -> None:
    client = cpu_and_gpu_workers
    assert gpu_resources(client) == {"GPU": 1}
    a = da.random.random((60, 60), chunks=10)
    b = da.random.random((60, 60), chunks=10)
    with gpu_annotate(client, what="test kernel") as gpu:
        assert gpu == {"GPU": 1}
        on_gpu = da.map_blocks(_which_worker, a, b, dtype=np.uint8)
    result = (on_gpu + 0) * (a > -1)  # unannotated work after it, as in a real graph
    with keep_annotations(result):
        assert dask.config.get("optimization.fuse.active") is False
        got = client.compute(result).result()
    assert got.shape == (60, 60) and got.min() == 1  # all 36 blocks ran on the GPU worker
    ds = xr.Dataset({"v": (("y", "x"), on_gpu)})
    with keep_annotations(ds):
        assert client.compute(ds).result()["v"].values.min() == 1
    # Plain graphs are left alone.
    with keep_annotations(xr.Dataset({"v": (("y", "x"), a)})):
        assert dask.config.get("optimization.fuse.active", None) is not False


def test_task_fusion_is_restored_when_threads_leave_out_of_order() -> None:
    """Concurrent jobs (run_batch threads) turn fusion off and leave in any order; the user's
    setting comes back once the last one is out (with bare dask.config.set it stayed off)."""
    import threading

    entered, leave_first = threading.Barrier(2), threading.Event()
    seen: list[Any] = []

    def job(first: bool) -> None:
        with without_task_fusion():
            entered.wait(timeout=30)
            if not first:
                leave_first.wait(timeout=30)  # the other thread leaves first
            seen.append(dask.config.get("optimization.fuse.active"))
        if first:
            leave_first.set()

    with dask.config.set({"optimization.fuse.active": True}):
        for order in ((True, False), (False, True)):
            threads = [threading.Thread(target=job, args=(f,)) for f in order]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert dask.config.get("optimization.fuse.active") is True
        assert seen == [False] * 4
        with without_task_fusion(), without_task_fusion():  # nested in one thread
            assert dask.config.get("optimization.fuse.active") is False
        assert dask.config.get("optimization.fuse.active") is True


def test_gpu_fallback_warns_once_and_computes(dask_client: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cl, "_WARNED", set())
    assert gpu_resources(dask_client) is None
    with pytest.warns(GPUFallbackWarning, match="test reducer: no Dask worker has a 'GPU'"), \
            gpu_annotate(dask_client, what="test reducer") as gpu:
        assert gpu is None
        x = da.ones((40, 40), chunks=10).map_blocks(lambda b: b * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gpu_annotate(dask_client, what="test reducer") as gpu:  # once per kind of task
            assert gpu is None
    assert not any(layer.annotations for layer in x.dask.layers.values())
    assert dask_client.compute(x.sum()).result() == 3200


def test_no_client_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    def no_client() -> None:
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", no_client)
    assert gpu_resources() is None


# -- a real SLURM ----------------------------------------------------------------------------------
def _slurm_state() -> str | None:
    """None when SLURM can take jobs here, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here: sinfo/sbatch not on PATH (start one with ../shared/infra/slurm_up.sh)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0:
        return f"SLURM is not running here (sinfo: {out.stderr.strip() or out.returncode})"
    states = [s.rstrip("*") for s in out.stdout.split()]
    if not any(s in ("idle", "mixed") for s in states):
        return f"SLURM has no idle node (sinfo node states: {states})"
    return None


@functools.cache
def _slurm_skip_reason() -> str | None:
    return _slurm_state()  # once per session: sinfo takes ~9 s to give up on a stopped slurmctld


@pytest.fixture()
def slurm(tmp_path: Path) -> Iterator[Path]:
    """A running SLURM; yields a directory for job logs. Checks no job is left afterwards."""
    why = _slurm_skip_reason()
    if why:
        pytest.skip(why)
    logs = tmp_path / "slurm-logs"
    yield logs
    deadline = time.time() + 30
    while _squeue() and time.time() < deadline:
        time.sleep(0.5)
    assert not _squeue(), f"jobs left in the queue: {_squeue()}"


def _squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                         timeout=20, check=False)
    return [line for line in out.stdout.splitlines() if "s2mosaic" in line]


def _for_this_machine(profile: ClusterProfile, logs: Path, **options: Any) -> ClusterProfile:
    """The example profile, sized for the CI machine: 1 core and 2 GB per job, on loopback, with
    this interpreter; the prologue marks the worker's environment."""
    base: dict[str, Any] = dict(
        cores=1, processes=1, memory="2GB", walltime="00:10:00", queue=PARTITION,
        interface="lo", python=sys.executable, log_directory=str(logs),
        local_directory=str(logs.parent), job_script_prologue=["export S2MOSAIC_PROLOGUE=ran"],
        scheduler_options={"dashboard_address": ":0"})
    return profile.with_options(**(base | options))


def _job_env(client: Any) -> dict[str, tuple[str | None, str | None]]:
    def env() -> tuple[str | None, str | None]:
        return os.environ.get("SLURM_JOB_ID"), os.environ.get("S2MOSAIC_PROLOGUE")

    return client.run(env)


@pytest.mark.slurm
def test_slurm_mosaic_is_byte_identical_to_synchronous(
        demo_catalog: Path, tmp_path: Path, slurm: Path) -> None:
    profile = _for_this_machine(load_profile(PROFILES / "slurm-cpu.yaml"), slurm).replace(
        adapt=None, jobs=2, wait_workers=2, wait_timeout=120)
    profile.to_yaml(tmp_path / "slurm.yaml")
    sync = demo_spec(demo_catalog, tmp_path / "sync").replace(
        runtime={"chunks": 256, "scheduler": "synchronous"})
    clus = demo_spec(demo_catalog, tmp_path / "slurm").replace(
        runtime={"chunks": 256, "cluster": tmp_path / "slurm.yaml"})
    s2mosaic.run(sync)

    seen: dict[str, Any] = {}

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "cluster":
            seen["t"] = time.perf_counter()
            seen["env"] = _job_env(info["client"])
            seen["description"] = info["cluster"]
            seen["jobs"] = _squeue()

    t0 = time.perf_counter()
    report = s2mosaic.run(clus, on_stage=on_stage)
    print(f"SLURM: 2 workers after {seen['t'] - t0:.1f} s, run {report.wall_time_s:.1f} s")
    # The workers were SLURM jobs (two different ones), set up by the profile's prologue.
    env = seen["env"]
    assert len(env) == 2 and all(job and mark == "ran" for job, mark in env.values()), env
    assert len({job for job, _ in env.values()}) == 2
    assert "SLURMCluster from cluster profile" in seen["description"]
    assert f"queue {PARTITION!r}" in seen["description"]
    assert len(seen["jobs"]) == 2 and all(j.endswith("RUNNING") for j in seen["jobs"])
    assert report.dashboard and report.dashboard.startswith("http://127.0.0.1:")
    # Byte for byte: the COG and every Zarr chunk.
    assert_identical_outputs(sync.output, clus.output)
    assert any(slurm.glob("*.out")), "sbatch wrote the worker logs into log-directory"


@pytest.mark.slurm
def test_slurm_gpu_profile_workers_take_the_gpu_tasks(slurm: Path) -> None:
    """slurm-gpu.yaml for real, minus its --gres line (this SLURM has no GPUs): the workers
    advertise GPU=1 and the annotated tasks run there."""
    profile = _for_this_machine(load_profile(PROFILES / "slurm-gpu.yaml"), slurm,
                                job_extra_directives=[]).replace(adapt=(1, 1))
    assert "--gres" not in job_script(profile) and "--resources GPU=1" in job_script(profile)
    with make_client(profile) as client:
        assert gpu_resources(client) == {"GPU": 1}
        assert all(job for job, _ in _job_env(client).values())
        with gpu_annotate(client, what="test kernel") as gpu:
            assert gpu is not None
            x = da.ones((40, 40), chunks=10).map_blocks(lambda b: b * 3)
        with keep_annotations(x):
            assert int(client.compute(x.sum()).result()) == 4800


@pytest.mark.slurm
def test_slurm_no_worker_error_names_profile_and_queue(slurm: Path) -> None:
    profile = _for_this_machine(load_profile(PROFILES / "slurm-cpu.yaml"), slurm,
                                queue="no-such-partition").replace(wait_timeout=5.0)
    with pytest.raises(ClusterError) as e:
        make_client(profile)
    msg = str(e.value)
    assert "only 0 of 1 Dask worker(s) joined within 5 s" in msg
    assert "slurm-cpu.yaml" in msg and "queue 'no-such-partition'" in msg
    # sbatch's own complaint, which dask-jobqueue only logs on the cluster's event loop
    assert "submitting the jobs failed (sbatch said: sbatch: error: invalid partition" in msg


@pytest.mark.slurm
def test_pbs_profile_through_torque_wrappers(slurm: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """pbs.yaml through qsub/qstat/qdel (Slurm's Torque wrappers): dask-jobqueue's PBS code
    path for real — #PBS script, qsub, job-id parsing, qdel on close."""
    if shutil.which("qsub") is None:
        pytest.skip("no qsub: start SLURM with SLURM_TORQUE_WRAPPERS=1 slurm_up.sh")
    monkeypatch.chdir(tmp_path)  # the wrapper writes <script>.o<jobid> into the cwd
    profile = _for_this_machine(load_profile(PROFILES / "pbs.yaml"), slurm,
                                resource_spec=None).replace(adapt=None, jobs=1)
    script = job_script(profile)
    assert "#PBS -l select=1:ncpus=1:mem=" in script and f"#PBS -q {PARTITION}" in script
    with make_client(profile) as client:
        assert client.submit(lambda x: x + 1, 41).result() == 42
        env = _job_env(client)
        assert all(job and mark == "ran" for job, mark in env.values()), env


def test_slurm_state_reason_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    why = _slurm_state()
    assert why is not None and re.search(r"sinfo/sbatch not on PATH", why)


def test_profile_replace_and_with_options_validate() -> None:
    p = load_profile(PROFILES / "slurm-cpu.yaml")
    assert p.replace(adapt=None, jobs=3).jobs == 3
    with pytest.raises(SpecError, match="not both"):
        p.replace(jobs=3)  # adapt is still set
    with pytest.raises(SpecError, match=r"jobqueue.slurm.gpus"):
        p.with_options(gpus=1)
    q = p.with_options(queue="short", job_extra_directives=["--qos=low"], account=None)
    assert q.options["queue"] == "short" and q.options["job-extra-directives"] == ["--qos=low"]
    assert "account" not in q.options and q.source == p.source


def test_cluster_init_copies_a_packaged_profile_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    dest = tmp_path / "mine.yaml"
    res = runner.invoke(app, ["cluster", "init", "slurm-cpu", str(dest)])
    assert res.exit_code == 0, res.output
    assert dest.read_text() == (PROFILES / "slurm-cpu.yaml").read_text()
    dest.write_text("# edited\n")
    res = runner.invoke(app, ["cluster", "init", "slurm-cpu", str(dest)])
    assert res.exit_code == 2 and "already exists" in res.output
    assert dest.read_text() == "# edited\n"
    res = runner.invoke(app, ["cluster", "init", "kubernetes", str(tmp_path)])
    assert res.exit_code == 2 and "slurm-cpu" in res.output


def test_a_bare_profile_name_is_the_packaged_one(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_profile("slurm-gpu").to_yaml() == load_profile(PROFILES / "slurm-gpu.yaml").to_yaml()
    rt = RuntimeSpec(cluster=tmp_path / "pbs")  # as `--cluster pbs` resolves it
    assert rt.cluster == PROFILES / "pbs.yaml"
    (tmp_path / "pbs.yaml").write_text("s2mosaic: {cluster: local}\n")
    assert RuntimeSpec(cluster=tmp_path / "pbs.yaml").cluster == tmp_path / "pbs.yaml"
