"""One run at a time per store (its lock), overwrite as a rename-swap, and a full disk.

Each run is a tiny area (4 tiles of 64 px) on the demo catalog, on the synchronous scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import s2mosaic
from s2mosaic import _write
from s2mosaic._manifest import Manifest, RunLock, _started
from s2mosaic._spec import MosaicSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import RunError, WriteError

from .oracle import assert_identical_outputs

AOI = [11.995, 47.495, 12.005, 47.502]


def _spec(catalog: Path, out: Path, *, overwrite: bool = False, metadata: Path | None = None,
          **runtime: Any) -> MosaicSpec:
    spec = demo_spec(catalog, out).replace(
        aoi=AOI, runtime={"chunks": 64, "tile_size": 64, "scheduler": "synchronous", **runtime})
    return spec.replace(output=dataclasses.replace(spec.output, overwrite=overwrite,
                                                   metadata=metadata))


def _snapshot(spec: MosaicSpec) -> dict[str, bytes]:
    """Every file of the outputs (the store's files, the COG, sidecar and report)."""
    out = spec.output
    assert out.zarr is not None
    files = {str(p): p.read_bytes() for p in out.zarr.rglob("*") if p.is_file()}
    for p in (out.cog, out.rgb, out.metadata_path):
        if p is not None and p.exists():
            files[str(p)] = p.read_bytes()
    return files


def _write_lock(store: Path, pid: int, host: str | None = None, token: str = "other",
                **more: Any) -> Path:
    lock = RunLock(store, "s2mosaic mosaic elsewhere")
    lock.path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                     "since": "2024-01-01T00:00:00+00:00",
                                     "command": "s2mosaic mosaic elsewhere", "token": token,
                                     **more}))
    return lock.path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer exists
    return proc.pid


@pytest.fixture(scope="module")
def clean(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> MosaicSpec:
    spec = _spec(demo_catalog, tmp_path_factory.mktemp("clean"))
    s2mosaic.run(spec)
    return spec


def _finished(clean: MosaicSpec, demo_catalog: Path, out: Path, **kw: Any) -> MosaicSpec:
    """A copy of the finished clean run's outputs at ``out`` (a run's worth of time saved)."""
    assert clean.output.zarr is not None
    shutil.copytree(clean.output.zarr.parent, out)
    return _spec(demo_catalog, out, **kw)


# -- two runs on one store ---------------------------------------------------------------------
def test_a_held_lock_refuses_run_resume_and_overwrite(demo_catalog: Path, tmp_path: Path,
                                                      clean: MosaicSpec) -> None:
    spec = _finished(clean, demo_catalog, tmp_path / "out")
    assert spec.output.zarr is not None
    owner = subprocess.Popen(["sleep", "60"])
    try:
        lock = _write_lock(spec.output.zarr, owner.pid)
        before = _snapshot(spec)
        held = rf"in use by another run .*pid {owner.pid}, since 2024-01-01.*still running"
        for attempt in (spec, spec.replace(output=dataclasses.replace(spec.output, overwrite=True))):
            with pytest.raises(WriteError, match=held):
                s2mosaic.run(attempt)
        with pytest.raises(WriteError, match=held):
            s2mosaic.run(spec, resume=True)
        assert _snapshot(spec) == before  # the lock itself included: still the owner's
        assert json.loads(lock.read_text())["pid"] == owner.pid
    finally:
        owner.kill()
        owner.wait()
    # A lock taken on another host cannot be checked from here: refused, naming the file.
    _write_lock(spec.output.zarr, _dead_pid(), host="elsewhere.example")
    with pytest.raises(WriteError, match=rf"on another host.*if that run is gone, delete {lock}"):
        s2mosaic.run(spec, resume=True)
    with pytest.raises(WriteError, match="on another host"):
        s2mosaic.run(spec.replace(output=dataclasses.replace(spec.output, overwrite=True)))
    assert _snapshot(spec) == {**before, str(lock): lock.read_bytes()}


def test_a_stale_lock_is_taken_over_held_during_the_run_and_released(
        demo_catalog: Path, tmp_path: Path, clean: MosaicSpec) -> None:
    spec = _finished(clean, demo_catalog, tmp_path / "out")
    assert spec.output.zarr is not None
    lock = RunLock(spec.output.zarr, "").path
    seen: list[dict[str, Any]] = []

    def on_stage(name: str, info: dict[str, Any]) -> None:
        if name == "plan":  # before any tile is written
            seen.append(json.loads(lock.read_text()))

    _write_lock(spec.output.zarr, _dead_pid())
    with pytest.warns(UserWarning, match="took over the lock of a run that is gone"):
        report = s2mosaic.run(spec, resume=True, on_stage=on_stage)
    assert report.status == "complete" and report.tiles["resumed"] == report.tiles["total"]
    assert seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert "--resume" in seen[0]["command"]
    assert not lock.exists()  # released after success
    assert_identical_outputs(clean.output, spec.output)


def test_a_reused_pid_does_not_keep_a_dead_run_s_lock(demo_catalog: Path, tmp_path: Path,
                                                      clean: MosaicSpec) -> None:
    """The lock's pid now belongs to another process (its start time differs from the one the
    lock recorded): the run that locked is gone, and its lock is taken over."""
    spec = _finished(clean, demo_catalog, tmp_path / "out")
    assert spec.output.zarr is not None
    other = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(spec.output.zarr, other.pid, pid_start=1)  # not when `sleep` started
        with pytest.warns(UserWarning, match=rf"took over the lock .*pid {other.pid} no longer"):
            report = s2mosaic.run(spec, resume=True)
        assert report.status == "complete"
        # The same pid with its true start time is that run, alive: refused.
        _write_lock(spec.output.zarr, other.pid, pid_start=_started(other.pid))
        with pytest.raises(WriteError, match="still running"):
            s2mosaic.run(spec, resume=True)
    finally:
        other.kill()
        other.wait()


def test_taking_over_a_stale_lock_never_removes_a_live_one(tmp_path: Path) -> None:
    """Two runs find the same stale lock; the first takes it over and locks. The second, acting
    on what it read before, must not remove the first one's lock (it renames the lock aside,
    sees it is not the stale one, and puts it back)."""
    store = tmp_path / "store"
    (store / "s2mosaic_run").mkdir(parents=True)
    stale = json.loads(_write_lock(store, _dead_pid(), token="stale").read_text())
    first, second = RunLock(store, "first"), RunLock(store, "second")
    with pytest.warns(UserWarning, match="took over"):
        first.acquire()
    live = first.path.read_bytes()
    assert second._take_over(stale) is False  # the race, step by step
    assert first.path.read_bytes() == live
    assert [p.name for p in first.path.parent.iterdir()] == ["lock.json"]
    with pytest.raises(WriteError, match="still running"):
        second.acquire()
    first.release()
    assert not first.path.exists()


def test_a_manifest_that_cannot_be_written_fails_the_tile_not_the_run(
        demo_catalog: Path, tmp_path: Path, clean: MosaicSpec,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(demo_catalog, tmp_path / "out", read_backoff_s=0.05)
    real = Manifest.append
    failures: list[str] = []

    def once(self: Manifest, *records: Any, kind: str = "tile") -> None:
        if kind == "tile" and not failures:
            failures.append("x")
            raise WriteError(f"recording finished tiles in {self.path} failed: disk full")
        real(self, *records, kind=kind)

    monkeypatch.setattr(Manifest, "append", once)
    report = s2mosaic.run(spec)
    assert failures and report.status == "complete" and report.tiles["retried"] == 1
    assert len(Manifest(spec.output.zarr).finished()) == report.tiles["total"]  # type: ignore[arg-type]
    assert_identical_outputs(clean.output, spec.output)


def test_overwrite_keeps_the_old_store_until_the_new_one_is_in_place(
        demo_catalog: Path, tmp_path: Path, clean: MosaicSpec,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    spec = _finished(clean, demo_catalog, out)
    assert spec.output.zarr is not None
    before = _snapshot(spec)
    overwrite = _spec(demo_catalog, out, overwrite=True, retries=0)

    # The new store fails while it is built: the old one is left exactly as it was.
    def no_space(self: Manifest, *args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Manifest, "create", no_space)
        with pytest.raises(WriteError, match="No space left"):
            s2mosaic.run(overwrite)
    assert _snapshot(spec) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []

    # The new store is in place and its tiles fail: a complete, resumable new store, never
    # neither (and no old store left aside); the failed run leaves the store unlocked.
    def broken(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EIO, "I/O error")

    with monkeypatch.context() as m:
        m.setattr(_write, "write_block", broken)
        with pytest.raises(RunError):
            s2mosaic.run(overwrite)
    assert Manifest(spec.output.zarr).header()["tiles"] == 4
    assert Manifest(spec.output.zarr).finished() == {}
    assert not RunLock(spec.output.zarr, "").path.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    report = s2mosaic.run(spec, resume=True)
    assert report.tiles["computed"] == report.tiles["total"]
    assert_identical_outputs(clean.output, spec.output)


# -- a full disk -------------------------------------------------------------------------------
@contextlib.contextmanager
def _small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command to make a small file system to fill")
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one ballast file."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return ballast


def test_a_full_disk_fails_the_tiles_cleanly_and_resume_finishes(
        demo_catalog: Path, tmp_path: Path, clean: MosaicSpec) -> None:
    with _small_disk(tmp_path / "disk") as disk:
        spec = _spec(demo_catalog, disk / "out", metadata=tmp_path / "meta" / "m.metadata.json",
                     retries=1, read_backoff_s=0.01)
        ballast: list[Path] = []

        def on_stage(name: str, info: dict[str, Any]) -> None:
            if name == "plan":  # the store is initialised: now the disk fills up
                ballast.append(_fill(disk))

        with pytest.raises(RunError, match=r"tile\(s\) failed after 1 retries") as e:
            s2mosaic.run(spec, on_stage=on_stage)
        report_file = tmp_path / "meta" / "m.report.json"
        assert report_file.stat().st_size > 0
        report = json.loads(report_file.read_text())
        assert report["status"] == "failed" and report["tiles"]["failed"] == 4
        why = next(iter(report["failed_tiles"].values()))
        assert "No space left" in why and str(spec.output.zarr) in why
        assert "MB free on" in why and str(disk) in why
        assert isinstance(e.value.report, s2mosaic.RunReport)
        ballast[0].unlink()  # space freed
        done = s2mosaic.run(spec, resume=True)
        assert done.status == "complete" and done.tiles["computed"] == 4
        assert_identical_outputs(clean.output, spec.output)


def test_a_report_that_cannot_be_written_is_said_with_its_path(demo_catalog: Path,
                                                                tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk") as disk:
        spec = _spec(demo_catalog, disk / "out", retries=0)

        def on_stage(name: str, info: dict[str, Any]) -> None:
            if name == "plan":
                _fill(disk)

        with pytest.raises(RunError, match=r"report could not be written either: could not "
                                           r"write the run report .*m\w*\.report\.json.*No "
                                           r"space left.*MB free on") as e:
            s2mosaic.run(spec, on_stage=on_stage)
        assert e.value.report is None
        out = disk / "out"
        # Neither a torn nor an empty report, nor a temporary file left behind.
        assert [p.name for p in out.iterdir() if "report" in p.name] == []
