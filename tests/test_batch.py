"""Batches: many jobs on one cluster, a concurrency limit, retries, failures that stay local."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import s2mosaic._batch as batch
from s2mosaic._batch import load_batch, run_many
from s2mosaic._run import RunReport
from s2mosaic._spec import MosaicSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError

AOI_A = [11.995, 47.497, 12.0, 47.5]
AOI_B = [12.0, 47.5, 12.005, 47.503]


def _job(catalog: Path, out: Path, name: str, aoi: list[float], **kw: Any) -> dict[str, Any]:
    spec = demo_spec(catalog, out).replace(name=name, aoi=aoi, runtime={"chunks": 64},
                                           output={"zarr": out / f"{name}.zarr"}, **kw)
    return spec.to_dict()


def test_a_bad_job_does_not_stop_the_others(demo_catalog: Path, tmp_path: Path,
                                            dask_client: Any) -> None:
    bad_aoi = _job(demo_catalog, tmp_path, "bad-aoi", AOI_A) | {"aoi": [200.0, 0.0, 201.0, 1.0]}
    nowhere = _job(demo_catalog, tmp_path, "nowhere", [5.0, 40.0, 5.01, 40.01])
    jobs = [_job(demo_catalog, tmp_path, "a", AOI_A), bad_aoi, nowhere,
            _job(demo_catalog, tmp_path, "b", AOI_B, series={"periods": "monthly"})]
    seen: list[tuple[str, str]] = []
    report = run_many(jobs, max_concurrent=2, retries=2, client=dask_client,
                      on_update=lambda r: seen.append((r.name, r.status)))
    status = {j.name: j for j in report.jobs}
    assert [j.name for j in report.jobs] == ["a", "bad-aoi", "nowhere", "b"]
    assert status["a"].status == "done" and status["b"].status == "done", report.to_json()
    assert status["b"].kind == "series"
    assert (tmp_path / "a.zarr").exists() and (tmp_path / "b.zarr").exists()
    assert status["bad-aoi"].status == "failed" and status["bad-aoi"].attempts == 0
    assert "SpecError: aoi" in (status["bad-aoi"].error or "")
    # nothing found is not retried: a retry would find nothing again
    assert status["nowhere"].status == "failed" and status["nowhere"].attempts == 1
    assert "EmptySearchError" in (status["nowhere"].error or "")
    assert not report.ok and [j.name for j in report.failed] == ["bad-aoi", "nowhere"]
    summary = json.loads(report.to_json())
    assert summary["failed"] == ["bad-aoi", "nowhere"]
    assert ("a", "running") in seen and ("a", "done") in seen
    assert report.max_running <= 2


def _fake_runs(monkeypatch: pytest.MonkeyPatch, fail: dict[str, int],
               delay: float = 0.15) -> dict[str, int]:
    """Replace the job runner: sleeps, fails ``fail[name]`` times, records calls."""
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def execute(spec: MosaicSpec, client: Any, progress: bool) -> RunReport:
        with lock:
            calls[spec.name] = calls.get(spec.name, 0) + 1
            n = calls[spec.name]
        time.sleep(delay)
        if n <= fail.get(spec.name, 0):
            raise RuntimeError(f"transient failure {n} of {spec.name}")
        return RunReport(product=spec.name, items=1, dropped=0, observations=1, shape=(1, 1),
                         crs="EPSG:32632", outputs={"zarr": str(spec.output.zarr)},
                         wall_time_s=delay)

    monkeypatch.setattr(batch, "_execute", execute)
    return calls


def _specs(n: int, tmp_path: Path) -> list[MosaicSpec]:
    return [MosaicSpec(name=f"j{i}", aoi=AOI_A, period=["2024-05-01", "2024-05-31"],
                       source="catalog.json", output={"zarr": tmp_path / f"j{i}.zarr"})
            for i in range(n)]


def test_concurrency_limit_and_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_runs(monkeypatch, fail={"j1": 1, "j2": 99})
    report = run_many(_specs(6, tmp_path), max_concurrent=3, retries=2,
                      runtime=MosaicSpec.SECTIONS["runtime"](scheduler="synchronous"))
    assert report.max_running == 3  # six jobs, three slots: the limit is reached, not passed
    by = {j.name: j for j in report.jobs}
    assert by["j1"].status == "done" and by["j1"].attempts == 2 and by["j1"].error is None
    assert by["j2"].status == "failed" and by["j2"].attempts == 3 == calls["j2"]
    assert by["j2"].error == "RuntimeError: transient failure 3 of j2"
    assert all(by[f"j{i}"].status == "done" for i in (0, 3, 4, 5))
    assert by["j0"].outputs == {"zarr": str(tmp_path / "j0.zarr")}
    serial = run_many(_specs(2, tmp_path), max_concurrent=1, retries=0,
                      runtime=MosaicSpec.SECTIONS["runtime"](scheduler="synchronous"))
    assert serial.max_running == 1 and serial.ok


def test_jobs_writing_the_same_output_fail_before_running(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    calls = _fake_runs(monkeypatch, fail={}, delay=0)
    a, b = _specs(2, tmp_path)
    b = b.replace(output={"zarr": a.output.zarr})
    report = run_many({"first": a, "second": b}, retries=0,
                      runtime=MosaicSpec.SECTIONS["runtime"](scheduler="synchronous"))
    assert [j.status for j in report.jobs] == ["done", "failed"]
    assert "also written by job 'first'" in (report.jobs[1].error or "")
    assert calls == {"j0": 1}


def test_batch_file_defaults_templates_and_spec_files(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "june.yaml").write_text(yaml.safe_dump({
        "aoi": AOI_B, "period": ["2024-06-01", "2024-06-30"], "source": "cat/catalog.json",
        "name": "from-file"}))
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({
        "max_concurrent": 3,
        "retries": 0,
        "runtime": {"scheduler": "synchronous"},
        "defaults": {"source": {"stac": "catalog.json"}, "bands": ["red", "nir"],
                     "output": {"zarr": "out/{name}.zarr"}},
        "jobs": [
            {"name": "may", "aoi": AOI_A, "period": ["2024-05-01", "2024-05-31"]},
            {"spec": "specs/june.yaml", "name": "june", "bands": ["green"]},
            {"name": "broken", "aoi": "not a geometry", "period": ["2024-05-01", "2024-05-31"]},
        ],
    }))
    bf = load_batch(tmp_path / "jobs.yaml")
    assert (bf.max_concurrent, bf.retries) == (3, 0)
    assert bf.runtime is not None and bf.runtime.scheduler == "synchronous"
    names = [n for n, _ in bf.jobs]
    assert names == ["may", "june", "broken"]
    may, june = bf.jobs[0][1](), bf.jobs[1][1]()
    assert may.output.zarr == tmp_path / "out" / "may.zarr"
    assert may.source.stac == str(tmp_path / "catalog.json") and may.bands == ("red", "nir")
    # the spec file's own relative paths stay relative to it; the job's keys override it
    assert june.source.stac == str(tmp_path / "specs" / "cat" / "catalog.json")
    assert june.bands == ("green",) and june.output.zarr == tmp_path / "out" / "june.zarr"
    with pytest.raises(SpecError, match="aoi"):
        bf.jobs[2][1]()


@pytest.mark.parametrize(("content", "field"), [
    ({"jobs": []}, "batch.jobs"),
    ({"jobs": [{}], "concurrency": 2}, "batch.concurrency"),
    ({"jobs": [{}], "max_concurrent": 0}, "batch.max_concurrent"),
    ({"jobs": [{}], "runtime": {"chunks": 3}}, "batch.runtime"),
    ({"jobs": [{}], "defaults": [1]}, "batch.defaults"),
])
def test_batch_file_errors_name_the_key(tmp_path: Path, content: dict[str, Any],
                                        field: str) -> None:
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(SpecError) as err:
        load_batch(tmp_path / "b.yaml")
    assert err.value.field == field


def test_cli_batch_prints_the_summary_and_fails_when_a_job_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_runs(monkeypatch, fail={}, delay=0)
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({
        "runtime": {"scheduler": "synchronous"},
        "defaults": {"source": "catalog.json", "period": ["2024-05-01", "2024-05-31"],
                     "output": {"zarr": "out/{name}.zarr"}},
        "jobs": [{"name": "good", "aoi": AOI_A}, {"name": "bad", "aoi": [200, 0, 201, 1]}],
    }))
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "jobs.yaml"), "--max-concurrent",
                                      "2", "--json", str(summary)])
    assert result.exit_code == 1, result.output
    assert "1/2 job(s) done, 1 failed" in result.output
    assert "bad" in result.output and "SpecError" in result.output
    data = json.loads(summary.read_text())
    assert data["failed"] == ["bad"] and data["max_concurrent"] == 2


def test_the_summary_names_jobs_done_with_scenes_dropped() -> None:
    from rich.console import Console

    from s2mosaic._batch import BatchReport, JobResult

    lost = [{"item": "S2A_X", "asset": "B04"}, {"item": "S2A_X", "asset": "SCL"}]
    jobs = [JobResult("a", status="done", outputs={"zarr": "a.zarr"}, scenes_dropped=lost),
            JobResult("b", status="failed", error="RunError: [x] failed")]
    console = Console(width=200, record=True)
    console.print(BatchReport(jobs, 2, 2, 1.0).table())
    text = console.export_text()
    assert "a.zarr (1 scene dropped)" in text and "RunError: [x] failed" in text
