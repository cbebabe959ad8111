"""Many jobs on one cluster: ``run_many(specs, max_concurrent=N)`` and ``s2mosaic batch jobs.yaml``.

Each job is a spec (AOI × period × ...). Jobs run in a pool of ``max_concurrent`` threads over
ONE Dask client, each through :func:`s2mosaic._run` (or :func:`s2mosaic._timeseries_run.run_series`
when its spec has ``series.periods``), so the cluster is started once and shared. Every job gets
its own status, attempts, time and error; a job that fails - even one whose spec does not load -
is recorded and never stops the others. Failures are retried up to ``retries`` times, except
those that would fail the same way again (an invalid spec, a search that finds nothing).

A batch file (YAML)::

    max_concurrent: 2          # jobs running at once (default 2)
    retries: 1                 # extra attempts per failed job (default 1)
    runtime: {cluster: slurm-cpu}   # the shared cluster (runtime keys)
    defaults:                  # merged into every job (sections key by key)
      source: {stac: catalog.json}
      bands: [red, green, blue, nir]
      output: {zarr: "out/{name}.zarr"}   # {name} becomes the job's name
    jobs:
      - name: lake-2024-05
        aoi: [11.97, 47.49, 12.03, 47.51]
        period: [2024-05-01, 2024-05-31]
      - spec: monthly.yaml     # a spec file; the other keys override it
        name: monthly

Relative paths are relative to the batch file (those inside a ``spec:`` file to that file).
The jobs' own ``runtime.scheduler`` / ``runtime.cluster`` are not used: every job runs on the
batch's client (``runtime.chunks`` and the other per-job settings are).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._cluster import make_client
from ._spec import MosaicSpec, RuntimeSpec, resolve_paths
from ._validate import fail, number
from .errors import EmptySearchError, SpecError

__all__ = ["BatchFile", "BatchReport", "JobResult", "load_batch", "run_many"]

#: Errors that a retry would only repeat: the input itself is wrong.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (SpecError, EmptySearchError)
_BATCH_KEYS = ("max_concurrent", "retries", "runtime", "defaults", "jobs")

Job = MosaicSpec | str | Path | Mapping[str, Any]


@dataclass
class JobResult:
    """What happened to one job."""

    name: str
    status: str = "pending"
    """``pending``, ``running``, ``done`` or ``failed``."""
    kind: str = "mosaic"
    """``mosaic`` or ``series``."""
    attempts: int = 0
    wall_time_s: float = 0.0
    error: str | None = None
    """``ErrorType: message`` of the last failure (None once the job is done)."""
    attempt_errors: list[str] = field(default_factory=list)
    """The error of every failed attempt, in order (a retry's error can hide the cause)."""
    outputs: dict[str, str | None] = field(default_factory=dict)
    scenes_dropped: list[dict[str, Any]] = field(default_factory=list)
    """Scenes the job's run could not read and left out (``RunReport.scenes_dropped``): the
    job is done, its outputs lack them until rerun with ``--resume --retry-dropped``."""


@dataclass
class BatchReport:
    """The summary of :func:`run_many`: one :class:`JobResult` per job, in input order."""

    jobs: list[JobResult]
    max_concurrent: int
    max_running: int
    """The most jobs that ran at the same time."""
    wall_time_s: float

    @property
    def failed(self) -> list[JobResult]:
        return [j for j in self.jobs if j.status != "done"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"ok": self.ok, "failed": [j.name for j in self.failed]},
                          indent=2, default=str)

    def table(self) -> Any:
        """A ``rich`` table: job, kind, status, attempts, time, main output or error."""
        from rich.markup import escape
        from rich.table import Table

        done = len(self.jobs) - len(self.failed)
        t = Table(title=f"{done}/{len(self.jobs)} job(s) done, {len(self.failed)} failed "
                        f"(at most {self.max_running} at once, {self.wall_time_s:.1f} s)")
        t.add_column("job", no_wrap=True)
        for col in ("kind", "status", "attempts", "time s", "output / error"):
            t.add_column(col, justify="right" if col in ("attempts", "time s") else "left")
        for j in self.jobs:
            lost = len({d["item"] for d in j.scenes_dropped})
            style = "red" if j.status != "done" else "yellow" if lost else "green"
            main = j.outputs.get("zarr") or j.outputs.get("cog") or ""
            if lost:
                main = f"{main} ({lost} scene{'s' if lost != 1 else ''} dropped)"
            t.add_row(j.name, j.kind, f"[{style}]{j.status}[/]", str(j.attempts),
                      f"{j.wall_time_s:.1f}", escape(j.error or str(main)))
        return t


@dataclass(frozen=True)
class BatchFile:
    """A parsed batch file: the jobs (loaded lazily, so a bad one fails alone) and settings."""

    jobs: tuple[tuple[str, Callable[[], MosaicSpec]], ...]
    max_concurrent: int = 2
    retries: int = 1
    runtime: RuntimeSpec | None = None


def load_batch(path: str | Path) -> BatchFile:
    """Read a batch file (see the module docstring). Problems with the file itself raise
    :class:`~s2mosaic.errors.SpecError`; problems with one job surface when that job runs."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise fail("<batch file>", str(p), f"cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise fail("<batch file>", str(p), f"is not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise fail("<batch file>", str(p), f"expected a mapping with keys {list(_BATCH_KEYS)}")
    unknown = sorted(set(data) - set(_BATCH_KEYS))
    if unknown:
        raise fail(f"batch.{unknown[0]}", data[unknown[0]],
                   f"unknown key; valid keys are {list(_BATCH_KEYS)}")
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise fail("batch.jobs", jobs, "expected a non-empty list of jobs (spec mappings, or "
                   "{spec: path.yaml, ...overrides})")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise fail("batch.defaults", defaults, "expected a mapping of spec keys")
    runtime = data.get("runtime")
    rt = None
    if runtime is not None:
        if not isinstance(runtime, Mapping):
            raise fail("batch.runtime", runtime, "expected a mapping of runtime keys")
        if runtime.get("cluster") is not None:
            c = Path(str(runtime["cluster"])).expanduser()
            runtime = {**runtime, "cluster": c if c.is_absolute() else p.parent / c}
        try:
            rt = RuntimeSpec(**runtime)
        except (SpecError, TypeError) as e:
            raise fail("batch.runtime", dict(runtime), str(e)) from None
    base = p.parent
    entries: list[tuple[str, Callable[[], MosaicSpec]]] = []
    for i, job in enumerate(jobs):
        name = (str(job.get("name")) if isinstance(job, Mapping) and job.get("name")
                else f"job-{i + 1}")
        entries.append((name, _job_loader(job, dict(defaults), base, name, i)))
    return BatchFile(
        jobs=tuple(entries),
        max_concurrent=number("batch.max_concurrent", data.get("max_concurrent", 2), low=1,
                              integer=True),
        retries=number("batch.retries", data.get("retries", 1), low=0, integer=True),
        runtime=rt,
    )


def _job_loader(job: Any, defaults: dict[str, Any], base: Path, name: str, index: int,
                ) -> Callable[[], MosaicSpec]:
    def load() -> MosaicSpec:
        if not isinstance(job, Mapping):
            raise fail(f"jobs[{index}]", job, "expected a spec mapping or {spec: path.yaml}")
        own = dict(job)
        merged: dict[str, Any] = {}
        spec_file = own.pop("spec", None)
        if spec_file is not None:
            f = Path(str(spec_file)).expanduser()
            merged = _spec_file(f if f.is_absolute() else base / f)
        merged = _merge(_merge(defaults, merged), own)
        merged.setdefault("name", name)
        return MosaicSpec.from_dict(_template(merged, name), base_dir=base)

    return load


def _spec_file(path: Path) -> dict[str, Any]:
    """The keys a spec file sets (not the defaults of the others, so batch defaults still
    apply), with its relative paths resolved against its own folder."""
    MosaicSpec.from_yaml(path)  # a broken file fails here, with its own message
    data = yaml.safe_load(path.read_text()) or {}
    return resolve_paths(dict(data), path.parent)


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, Mapping) and isinstance(out.get(k),
                                                                           Mapping) else v
    return out


def _template(v: Any, name: str) -> Any:
    if isinstance(v, str):
        return v.replace("{name}", name)
    if isinstance(v, Mapping):
        return {k: _template(x, name) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_template(x, name) for x in v]
    return v


def run_many(specs: Sequence[Job] | Mapping[str, Job] | BatchFile, *, max_concurrent: int = 2,
             retries: int = 1, client: Any = None, runtime: RuntimeSpec | None = None,
             progress: bool = False, on_update: Callable[[JobResult], None] | None = None,
             ) -> BatchReport:
    """Run many specs on one cluster, at most ``max_concurrent`` at a time.

    Parameters
    ----------
    specs
        Specs, spec file paths or spec mappings (a mapping ``{name: spec}`` names the jobs), or
        a :class:`BatchFile` from :func:`load_batch` (its settings then apply).
    max_concurrent
        Jobs running at once, each in its own thread, all over the same client.
    retries
        Extra attempts for a failed job (not for an invalid spec or an empty search).
    client
        A ``distributed.Client`` to share; default: one from ``runtime`` (a LocalCluster
        unless it names a scheduler or cluster profile), closed at the end.
    progress
        Show each job's progress bar (interleaved when jobs overlap).
    on_update
        Called with a job's :class:`JobResult` whenever its status changes.

    Returns
    -------
    BatchReport
        Every job's status; ``report.ok`` is False when any failed. Never raises for a job.

    Examples
    --------
    >>> report = run_many(["a.yaml", "b.yaml", "c.yaml"], max_concurrent=2)  # doctest: +SKIP
    >>> print(report.to_json())  # doctest: +SKIP
    """
    if isinstance(specs, BatchFile):
        jobs = list(specs.jobs)
        max_concurrent, retries = specs.max_concurrent, specs.retries
        runtime = runtime or specs.runtime
    else:
        jobs = _named(specs)
    n = number("max_concurrent", max_concurrent, low=1, integer=True)
    retries = number("retries", retries, low=0, integer=True)
    notify = on_update or (lambda _r: None)
    results = [JobResult(name) for name, _ in jobs]
    state = _Running()
    t0 = time.time()
    loaded: list[MosaicSpec | None] = []
    for (_, load), res in zip(jobs, results, strict=True):
        try:
            spec = load()
        except Exception as e:  # a job whose spec cannot be built fails alone
            res.status, res.error = "failed", _describe(e)
            spec = None
            notify(res)
        loaded.append(spec)
    _claim_outputs(loaded, results, notify)
    shared = runtime or RuntimeSpec()
    with make_client(shared, client=client) as c, \
            ThreadPoolExecutor(max_workers=n, thread_name_prefix="s2mosaic-job") as pool:
        if c is None:  # dask's local 'synchronous'/'threads' scheduler: no client to share,
            # so each job is told to use that scheduler instead of starting its own cluster.
            loaded = [_on_local(s, shared.scheduler or "threads") for s in loaded]
        futures = [pool.submit(_attempt, spec, res, c, retries, progress, state, notify)
                   for spec, res in zip(loaded, results, strict=True)
                   if spec is not None and res.status == "pending"]
        for f in futures:
            f.result()  # _attempt never raises; this only waits
    return BatchReport(results, n, state.peak, round(time.time() - t0, 3))


def _on_local(spec: MosaicSpec | None, scheduler: str) -> MosaicSpec | None:
    if spec is None:
        return None
    rt = dataclasses.replace(spec.runtime, scheduler=scheduler, cluster=None, n_workers=None,
                             threads_per_worker=None)
    return spec.replace(runtime=rt)


def _named(specs: Sequence[Job] | Mapping[str, Job]) -> list[tuple[str, Callable[[], MosaicSpec]]]:
    pairs: list[tuple[str | None, Job]] = (
        [(str(k), v) for k, v in specs.items()] if isinstance(specs, Mapping)
        else [(None, s) for s in specs])
    out: list[tuple[str, Callable[[], MosaicSpec]]] = []
    seen: set[str] = set()
    for i, (name, job) in enumerate(pairs):
        if name is None:
            name = (job.name if isinstance(job, MosaicSpec)
                    else Path(job).stem if isinstance(job, str | Path)
                    else str(job.get("name") or f"job-{i + 1}"))
        unique, k = name, 2
        while unique in seen:
            unique, k = f"{name}#{k}", k + 1
        seen.add(unique)
        out.append((unique, _loader(job, i)))
    return out


def _loader(job: Job, index: int) -> Callable[[], MosaicSpec]:
    def load() -> MosaicSpec:
        if isinstance(job, MosaicSpec):
            return job
        if isinstance(job, str | Path):
            return MosaicSpec.from_yaml(job)
        if isinstance(job, Mapping):
            return MosaicSpec.from_dict(job)
        raise fail(f"jobs[{index}]", job, "expected a MosaicSpec, a spec file path or a mapping")

    return load


def _outputs(spec: MosaicSpec) -> dict[str, Path]:
    paths = {k: getattr(spec.output, k) for k in ("zarr", "cog", "rgb")}
    paths["metadata"] = spec.output.metadata_path
    return {k: p for k, p in paths.items() if p is not None}


def _claim_outputs(specs: list[MosaicSpec | None], results: list[JobResult],
                   notify: Callable[[JobResult], None]) -> None:
    """Two jobs writing the same path would overwrite each other: the later ones fail."""
    owner: dict[Path, str] = {}
    for spec, res in zip(specs, results, strict=True):
        if spec is None:
            continue
        paths = _outputs(spec)
        clash = next(((k, p) for k, p in paths.items() if p.resolve() in owner), None)
        if clash is not None:
            res.status = "failed"
            res.error = (f"SpecError: output.{clash[0]} {clash[1]} is also written by job "
                         f"{owner[clash[1].resolve()]!r}; give each job its own outputs "
                         "(e.g. 'out/{name}.zarr' in the batch defaults)")
            notify(res)
            continue
        for p in paths.values():
            owner[p.resolve()] = res.name


class _Running:
    """Counts jobs running now and the most seen at once (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def _attempt(spec: MosaicSpec, res: JobResult, client: Any, retries: int, progress: bool,
             state: _Running, notify: Callable[[JobResult], None]) -> None:
    res.kind = "series" if spec.series.periods is not None else "mosaic"
    t0 = time.time()
    state.enter()
    try:
        res.status = "running"
        notify(res)
        existed = {p for p in _outputs(spec).values() if p.exists()}
        while True:
            res.attempts += 1
            try:
                report = _execute(spec, client, progress)
            except Exception as e:  # one job's failure is recorded, never raised
                res.error = _describe(e)
                res.attempt_errors.append(res.error)
                if isinstance(e, PERMANENT_ERRORS) or res.attempts > retries:
                    res.status = "failed"
                    break
                if any(p.exists() for p in set(_outputs(spec).values()) - existed):
                    # This job's failed attempt left outputs behind: the retry replaces them
                    # (anything that was there before the job started is still protected).
                    spec = spec.replace(output=dataclasses.replace(spec.output, overwrite=True))
                continue
            res.status, res.error = "done", None
            res.outputs = dict(report.outputs)
            res.scenes_dropped = list(report.scenes_dropped)
            break
    finally:
        state.leave()
        res.wall_time_s = round(time.time() - t0, 3)
        notify(res)


def _execute(spec: MosaicSpec, client: Any, progress: bool) -> Any:
    """Run one job on the shared client: a series or a single mosaic."""
    # Not client.as_current(): it sets dask's global config from several threads at once,
    # which leaks "scheduler: dask.distributed" past the batch. The runners take the client.
    if spec.series.periods is not None:
        from ._timeseries_run import run_series

        return run_series(spec, client=client, progress=progress)
    from ._run import run

    return run(spec, client=client, progress=progress)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
