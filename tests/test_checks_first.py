"""Cheap checks come before any cluster: a run that cannot start submits no worker job.

An HPC user's run starts its cluster from a profile (``runtime.cluster``: SLURM here). The output
checks (exists without overwrite, resume with overwrite, resume of a foreign store or of another
spec), the search and the grid come first; the cluster start is made observable by replacing
the function that starts a profile's cluster. A real SLURM, where there is one, shows that no
job was queued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import s2mosaic
from s2mosaic import _cluster
from s2mosaic._profile import packaged_profile
from s2mosaic._spec import MosaicSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import EmptySearchError, WriteError

from .test_cluster import _for_this_machine, _squeue, slurm  # noqa: F401 - slurm is a fixture

SLURM_PROFILE = packaged_profile("slurm-cpu")
#: A corner of the demo AOI: 2 tiles of 64 px, a run of a few seconds.
SMALL_AOI = [11.995, 47.495, 12.002, 47.5]


class ClusterStarted(AssertionError):
    """What the watched cluster start raises: the run got past its checks."""


@pytest.fixture()
def starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Cluster starts, recorded: a start from a profile raises :class:`ClusterStarted`."""
    seen: list[str] = []
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)

    def from_profile(profile: Any, **kw: Any) -> Any:
        seen.append(str(profile))
        raise ClusterStarted(f"a cluster was started from {profile}")

    def local(runtime: Any) -> Any:
        seen.append("LocalCluster")
        raise ClusterStarted("a LocalCluster was started")

    monkeypatch.setattr(_cluster, "_from_profile", from_profile)
    monkeypatch.setattr(_cluster, "_local", local)
    return seen


def _spec(catalog: Path, out: Path, **kw: Any) -> MosaicSpec:
    """The demo spec on a small AOI, its cluster from the SLURM profile."""
    spec = demo_spec(catalog, out)
    return spec.replace(aoi=SMALL_AOI, runtime={"chunks": 64, "tile_size": 64,
                                                "cluster": SLURM_PROFILE},
                        output={"zarr": out / "m.zarr", "cog": out / "m.tif"}, **kw)


def _series(spec: MosaicSpec) -> MosaicSpec:
    return spec.replace(series={"periods": "monthly"})


def _synchronous(spec: MosaicSpec) -> MosaicSpec:
    return spec.replace(runtime=dataclasses.replace(spec.runtime, cluster=None,
                                                    scheduler="synchronous"))


RUNNERS: dict[str, tuple[Callable[..., Any], Callable[[MosaicSpec], MosaicSpec]]] = {
    "mosaic": (s2mosaic.run, lambda s: s),
    "series": (s2mosaic.run_series, _series),
}


@pytest.mark.parametrize("kind", RUNNERS)
def test_the_watched_start_is_on_the_path(kind: str, demo_catalog: Path, tmp_path: Path,
                                          starts: list[str]) -> None:
    """A run that passes its checks does start the profile's cluster (the watch works)."""
    runner, shape = RUNNERS[kind]
    with pytest.raises(ClusterStarted):
        runner(shape(_spec(demo_catalog, tmp_path)))
    assert starts == [str(SLURM_PROFILE)]


@pytest.mark.parametrize("kind", RUNNERS)
def test_existing_output_fails_before_the_cluster(kind: str, demo_catalog: Path, tmp_path: Path,
                                                  starts: list[str]) -> None:
    runner, shape = RUNNERS[kind]
    spec = shape(_spec(demo_catalog, tmp_path))
    (tmp_path / "m.zarr").mkdir()
    with pytest.raises(WriteError, match=r"m\.zarr already exists.*--resume.*--overwrite"):
        runner(spec)
    with pytest.raises(WriteError, match="exclude each other"):
        runner(spec.replace(output=dataclasses.replace(spec.output, overwrite=True)), resume=True)
    with pytest.raises(WriteError, match="no s2mosaic run manifest"):
        runner(spec, resume=True)
    assert starts == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_empty_search_fails_before_the_cluster(kind: str, demo_catalog: Path, tmp_path: Path,
                                               starts: list[str]) -> None:
    runner, shape = RUNNERS[kind]
    spec = shape(_spec(demo_catalog, tmp_path, period=["2019-01-01", "2019-02-28"]))
    with pytest.raises(EmptySearchError):
        runner(spec)
    assert starts == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_resume_of_another_spec_fails_before_the_cluster(
        kind: str, demo_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, shape = RUNNERS[kind]
    spec = shape(_spec(demo_catalog, tmp_path))
    report = runner(_synchronous(spec))
    assert report.stages_s.keys() >= {"search_s", "cluster_s", "store_s", "tiles_s"}
    seen: list[str] = []
    monkeypatch.setattr(_cluster, "_from_profile",
                        lambda p, **kw: seen.append(str(p)) or pytest.fail("cluster started"))
    other = spec.replace(composite={"method": "percentile", "percentile": 50})
    with pytest.raises(WriteError, match=r"different spec.*composite\.percentile: 25\.0 -> 50"):
        runner(other, resume=True)
    other_kind = "series" if kind == "mosaic" else "mosaic"
    with pytest.raises(WriteError, match=f"holds a {kind}, not a {other_kind}"):
        RUNNERS[other_kind][0](_series(spec), resume=True)
    assert seen == []


@pytest.mark.slurm
def test_no_job_is_queued_for_an_existing_output(demo_catalog: Path, tmp_path: Path,
                                                 slurm: Path) -> None:  # noqa: F811
    """A real SLURM profile: the run fails on its output and sbatch is never called."""
    profile = _for_this_machine(s2mosaic.load_profile(SLURM_PROFILE), slurm).replace(
        adapt=None, jobs=1, wait_workers=1, wait_timeout=60)
    profile.to_yaml(tmp_path / "slurm.yaml")
    spec = _spec(demo_catalog, tmp_path / "out").replace(
        runtime={"chunks": 64, "tile_size": 64, "cluster": tmp_path / "slurm.yaml"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m.tif").write_bytes(b"")
    assert _squeue() == []
    with pytest.raises(WriteError, match=r"m\.tif already exists"):
        s2mosaic.run(spec)
    assert _squeue() == []
    assert not slurm.exists() or not any(slurm.iterdir()), "a worker job wrote logs"
