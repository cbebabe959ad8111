"""The Dask client a run uses, and where GPU tasks may run.

A run gets its client from :func:`make_client`, the first of these that applies:

1. a client passed in (``client=``): used as is, never closed;
2. ``runtime.scheduler`` (the spec, or ``--scheduler``): an address or a local scheduler name;
3. the client this process already uses (``distributed.default_client()``, e.g. the
   ``Client(...)`` of a notebook): used as is, never closed;
4. ``DASK_SCHEDULER_ADDRESS`` (dask's ``scheduler-address`` config): that running scheduler;
5. ``runtime.cluster``: a cluster profile;
6. otherwise a ``distributed.LocalCluster`` sized to this machine.

The targets:

- ``"synchronous"`` / ``"threads"``: no cluster, one of dask's local schedulers;
- a scheduler address (``tcp://10.0.0.5:8786``): a running cluster, left running afterwards;
- a **cluster profile** (``s2mosaic/profiles/*.yaml`` by name, a YAML file, or a :class:`ClusterProfile`): a LocalCluster or a
  dask-jobqueue cluster (SLURM, PBS, SGE, LSF, ...) whose worker jobs are submitted for the run,
  scaled (fixed or adaptive) and waited for, then cancelled when the run ends.

A profile's ``jobqueue:`` part is dask-jobqueue's own configuration shape (it works unchanged as
an entry of ``~/.config/dask/jobqueue.yaml``); its ``s2mosaic:`` part says which entry to use,
how to scale and how long to wait for workers. Profiles are read explicitly and passed to the
cluster class as keyword arguments: the global dask configuration is never changed.

GPU tasks (the OmniCloudMask masker, a CuPy reducer) are built inside :func:`gpu_annotate`: on a
cluster with workers started with ``--resources GPU=1`` they carry ``resources={"GPU": 1}`` and
run only there; elsewhere they fall back to CPU with a one-time :class:`GPUFallbackWarning`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from ._profile import (
    CLUSTER_KINDS,
    JOBQUEUE_CLASSES,
    PACKAGED_PROFILES,
    ClusterProfile,
    cluster_class,
    kwarg,
    load_profile,
    resolve_profile,
)
from ._spec import RuntimeSpec
from .errors import ArgumentTypeError, ClusterError, GPUFallbackWarning, SpecError

__all__ = [
    "CLUSTER_KINDS",
    "JOBQUEUE_CLASSES",
    "LOCAL_SCHEDULERS",
    "ClusterProfile",
    "Connection",
    "client_source",
    "gpu_annotate",
    "gpu_resources",
    "job_script",
    "keep_annotations",
    "load_profile",
    "local_cluster_size",
    "make_client",
    "make_cluster",
    "quiet_rasterio",
    "quiet_workers",
    "without_task_fusion",
]

_ADDRESS = re.compile(r"^[A-Za-z][\w+.-]*://\S+$|^[\w.-]+:\d+$")
#: runtime.scheduler values that mean "no distributed cluster, use a dask local scheduler".
LOCAL_SCHEDULERS = ("synchronous", "threads")


# -- clusters -----------------------------------------------------------------------------------
def make_cluster(profile: str | Path | ClusterProfile) -> Any:
    """The (unscaled) cluster object of a profile: a LocalCluster or a dask-jobqueue cluster.

    Nothing is submitted until it is scaled (:func:`make_client` does that).
    """
    p = load_profile(profile)
    if p.kind == "local":
        from distributed import LocalCluster

        opts = dict(p.options)
        workers, threads = local_cluster_size(RuntimeSpec(
            n_workers=opts.get("n_workers"), threads_per_worker=opts.get("threads_per_worker")))
        # With scale/adapt, make_client sizes the cluster afterwards.
        opts["n_workers"] = 0 if (p.jobs is not None or p.adapt is not None) else workers
        opts["threads_per_worker"] = threads
        return LocalCluster(**opts)
    cls = cluster_class(p.kind)
    return cls(**{kwarg(k): v for k, v in p.options.items()})


def job_script(profile: str | Path | ClusterProfile) -> str:
    """The batch script one worker job of ``profile`` would run (what ``sbatch``/``qsub`` get).

    It is dask-jobqueue's own ``job_script()``, built from the profile without starting a
    scheduler or submitting anything; the scheduler address is a placeholder.

    Examples
    --------
    >>> print(job_script("slurm-gpu"))  # doctest: +SKIP
    #!/usr/bin/env bash
    #SBATCH -J s2mosaic-gpu
    ...
    """
    p = load_profile(profile)
    if p.kind == "local":
        raise ClusterError(f"cluster profile {p.source or '<in memory>'} starts a LocalCluster on "
                           "this machine: there is no batch job script to show")
    job_cls = cluster_class(p.kind).job_cls
    cluster_only = {"scheduler-options", "shared-temp-directory"}
    kwargs = {kwarg(k): v for k, v in p.options.items() if k not in cluster_only}
    job = job_cls("tcp://<scheduler-address>:8786", name="dummy-name", config_name=p.kind, **kwargs)
    return str(job.job_script())


def local_cluster_size(runtime: RuntimeSpec) -> tuple[int, int]:
    """(workers, threads per worker) for a LocalCluster on this machine.

    One worker process per 4 cores (at least one) keeps GDAL reads and the Numba reducer, which
    both release the GIL, sharing memory inside a process; threads fill the remaining cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = runtime.n_workers or max(1, cores // 4)
    threads = runtime.threads_per_worker or max(1, cores // workers)
    return workers, threads


# -- clients ------------------------------------------------------------------------------------
class Connection:
    """A Dask client and what :func:`make_client` started for it.

    Use it as a context manager (``with make_client(...) as client:``; the client is None for
    dask's local schedulers), or keep it open across notebook cells and call :meth:`close`.
    Closing closes the client and the cluster it started (cancelling batch jobs), never a
    cluster it only connected to.
    """

    def __init__(self, client: Any, *, cluster: Any = None, owned: bool = True,
                 profile: ClusterProfile | None = None, description: str = "",
                 config: Any = None) -> None:
        self.client = client
        """The ``distributed.Client`` (None for the ``synchronous``/``threads`` schedulers)."""
        self.cluster = cluster
        """The cluster started for this connection (LocalCluster, SLURMCluster, ...), or None."""
        self.profile = profile
        """The cluster profile it was started from, if any."""
        self.description = description
        """One line saying what this is (for logs and notifications)."""
        self._owned = owned
        self._config = config

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard URL, when there is a distributed scheduler."""
        return getattr(self.client, "dashboard_link", None) if self.client is not None else None

    def close(self) -> None:
        """Close the client (if started here) and the cluster (if started here)."""
        _close_quietly(self.client if self._owned else None, self.cluster)
        if self._config is not None:
            self._config.__exit__(None, None, None)
        self.client = self.cluster = self._config = None

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<s2mosaic Connection: {self.description}; dashboard {self.dashboard_link}>"

    def _repr_html_(self) -> str:
        html = getattr(self.client, "_repr_html_", None)
        return html() if html is not None else f"<pre>{self!r}</pre>"


def make_client(target: RuntimeSpec | ClusterProfile | str | Path | None = None, *,
                client: Any = None) -> Connection:
    """Start or connect the Dask client for ``target``.

    Parameters
    ----------
    target
        - None or a ``RuntimeSpec``: ``runtime.scheduler`` when set; else the current client
          of this process (left open); else ``DASK_SCHEDULER_ADDRESS``; else
          ``runtime.cluster``; else a new LocalCluster sized to this machine
          (``runtime.n_workers``/``threads_per_worker``; dashboard on :8787 or the next free
          port).
        - ``"synchronous"`` / ``"threads"`` (or ``runtime.scheduler``): no cluster; dask's local
          scheduler of that name, set for as long as the connection is open.
        - an address (``tcp://host:8786``, or ``runtime.scheduler``): a running scheduler; the
          client is closed afterwards, the cluster is not.
        - a profile path / :class:`ClusterProfile` (or ``runtime.cluster``): its LocalCluster or
          dask-jobqueue cluster, scaled as the profile says; waits for ``wait.workers`` workers.
    client
        An existing client: used as is and left open (``target`` is then ignored).

    Examples
    --------
    >>> with make_client("slurm-cpu") as client:  # doctest: +SKIP
    ...     report = s2mosaic.run(spec, client=client)
    >>> conn = make_client("tcp://10.0.0.5:8786")  # doctest: +SKIP
    >>> conn.client.dashboard_link  # doctest: +SKIP
    """
    if client is not None:
        return Connection(client, owned=False, description=f"client {client!r}")
    if target is None:
        target = RuntimeSpec()
    if isinstance(target, RuntimeSpec):
        if target.scheduler is not None:  # explicit (spec or --scheduler): it wins
            return _from_string(target.scheduler, field="runtime.scheduler")
        current = _current_client()
        if current is not None:
            return current
        address = dask.config.get("scheduler-address", None)
        if address:
            return _connect(str(address), "DASK_SCHEDULER_ADDRESS (dask config scheduler-address)")
        if target.cluster is not None:
            return _from_profile(target.cluster, field="runtime.cluster")
        return _local(target)
    if isinstance(target, ClusterProfile | Path):
        return _from_profile(target)
    if isinstance(target, str):
        return _from_string(target)
    raise ArgumentTypeError(f"make_client(target={target!r}): expected a RuntimeSpec, a cluster "
                            "profile (path or ClusterProfile), a scheduler address, "
                            "'synchronous' or 'threads'")


def client_source(runtime: RuntimeSpec, client: Any = None) -> str:
    """Which client :func:`make_client` will use for ``runtime``, in words, without connecting
    (the same order: given client, runtime.scheduler, current client, DASK_SCHEDULER_ADDRESS,
    runtime.cluster, LocalCluster)."""
    if client is not None:
        return "the given client"
    if runtime.scheduler is not None:
        return str(runtime.scheduler)
    current = _current_client()
    if current is not None:
        return current.description
    address = dask.config.get("scheduler-address", None)
    if address:
        return f"scheduler {address} (DASK_SCHEDULER_ADDRESS)"
    if runtime.cluster is not None:
        return f"cluster profile {runtime.cluster}"
    return "LocalCluster"


def _current_client() -> Connection | None:
    """The client this process already uses (``Client(...)`` in a notebook, or the client of
    the worker this runs on), left open when the run ends; None when there is none."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        c = default_client()
    except ValueError:  # "No clients found"
        return None
    if getattr(c, "status", None) not in ("running", "connecting", "newly-created"):
        return None
    return Connection(c, owned=False, description=f"the current Dask client ({c.scheduler.address})")


def _from_string(target: str, *, field: str = "target") -> Connection:
    if target in LOCAL_SCHEDULERS:
        return Connection(None, config=dask.config.set(scheduler=target),
                          description=f"dask {target!r} scheduler (no cluster)")
    if _ADDRESS.match(target) and not target.endswith((".yaml", ".yml")):
        return _connect(target, field)
    return _from_profile(Path(target), field=field)


def _connect(address: str, field: str) -> Connection:
    from distributed import Client

    try:
        c = Client(address, timeout="20s")
    except OSError as e:
        raise ClusterError(
            f"cannot connect to the Dask scheduler at {field}={address!r} ({e}); give a running "
            "scheduler's address (tcp://host:8786), a cluster profile, or null for a LocalCluster"
        ) from e
    return Connection(c, description=f"scheduler {address}")


def _local(runtime: RuntimeSpec) -> Connection:
    from distributed import Client, LocalCluster

    workers, threads = local_cluster_size(runtime)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                           dashboard_address=":8787")
    client = Client(cluster)
    quiet_workers(client)
    return Connection(client, cluster=cluster,
                      description=f"LocalCluster, {workers} worker(s) × {threads} thread(s)")


def _from_profile(profile: str | Path | ClusterProfile, *, field: str = "profile") -> Connection:
    if not isinstance(profile, ClusterProfile) and not resolve_profile(profile).is_file():
        raise SpecError(field, str(profile), "no such cluster profile file; give a YAML profile, "
                        f"a packaged one by name ({', '.join(PACKAGED_PROFILES)}), "
                        "a scheduler address (tcp://host:8786), "
                        f"or one of {list(LOCAL_SCHEDULERS)}")
    p = load_profile(profile)
    if p.kind != "local":
        submit = cluster_class(p.kind).job_cls.submit_command.split()[0]
        if shutil.which(submit) is None:
            raise ClusterError(f"{p.describe()}: {submit!r} is not on PATH, so no {p.kind} job "
                               "can be submitted from here; run on a login node of the cluster, "
                               "or use the local profile (--cluster local)")
    from distributed import Client

    cluster = make_cluster(p)
    client = None
    submit_errors = _SubmitErrors()
    logging.getLogger().addHandler(submit_errors)
    try:
        client = Client(cluster)
        quiet_workers(client)
        if p.adapt is not None:
            lo, hi = p.adapt
            if p.kind == "local":
                cluster.adapt(minimum=lo, maximum=hi)
            else:
                cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
        elif p.jobs is not None:
            cluster.scale(p.jobs) if p.kind == "local" else cluster.scale(jobs=p.jobs)
        elif p.kind != "local":
            cluster.scale(jobs=1)
        if p.wait_workers:
            _wait(client, p, submit_errors.errors)
    except BaseException:
        _close_quietly(client, cluster)
        raise
    finally:
        logging.getLogger().removeHandler(submit_errors)
    return Connection(client, cluster=cluster, profile=p, description=p.describe())


class _SubmitErrors(logging.Handler):
    """Collects dask-jobqueue's failed submissions (``sbatch``/``qsub`` exiting non-zero), which
    happen on the cluster's event loop and are only logged there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        text = str(exc) if exc is not None else record.getMessage()
        if "Command exited with non-zero exit code" in text:
            # dask-jobqueue's message: "...Command:\nsbatch /tmp/x.sh\nstdout:\n...\nstderr:\n..."
            self.errors.append(text.rpartition("stderr:")[2].strip() or text)


def _close_quietly(client: Any, cluster: Any) -> None:
    """Close what was started; a cluster whose job submissions failed may complain on close
    (distributed asserts on never-started jobs), which must not hide the real error."""
    for obj in (client, cluster):
        if obj is not None:
            try:
                obj.close()
            except Exception as e:
                logging.getLogger(__name__).debug("closing %r: %r", obj, e)


def _wait(client: Any, p: ClusterProfile, submit_errors: list[str]) -> None:
    try:
        client.wait_for_workers(p.wait_workers, timeout=p.wait_timeout)
    except TimeoutError:
        have = len(client.scheduler_info(n_workers=-1)["workers"])
        if p.kind == "local":
            hint = "the machine may be short of memory or processes"
        elif submit_errors:
            submit = cluster_class(p.kind).job_cls.submit_command.split()[0]
            hint = (f"submitting the jobs failed ({submit} said: {submit_errors[0]}); "
                    "fix the profile's jobqueue options (queue, account, resources)")
        else:
            logs = p.options.get("log-directory")
            check = {"slurm": "squeue -u $USER", "pbs": "qstat -u $USER", "sge": "qstat",
                     "lsf": "bjobs"}.get(p.kind, "your batch system's queue listing")
            hint = (f"the jobs may still be pending in queue {p.queue or '(the default)'}: check "
                    f"`{check}` and the worker logs "
                    f"{'in ' + str(logs) if logs else '(set log-directory in the profile)'}")
        raise ClusterError(
            f"only {have} of {p.wait_workers} Dask worker(s) joined within {p.wait_timeout:g} s "
            f"({p.describe()}); {hint}; or raise s2mosaic.wait.timeout in the profile"
        ) from None


def quiet_rasterio() -> None:
    """Ignore rasterio's NotGeoreferencedWarning in this process.

    odc-loader warps through rasterio's in-memory rasters, which warn on every read that they
    have no geotransform although one is passed explicitly: noise, not a problem with the data.
    """
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


class _QuietRasterio(WorkerPlugin):
    """Worker plugin: :func:`quiet_rasterio` inside each worker process."""

    def setup(self, worker: Any) -> None:
        quiet_rasterio()


def quiet_workers(client: Any) -> None:
    """Install :func:`quiet_rasterio` on every worker of ``client``, present and future."""
    client.register_plugin(_QuietRasterio(), name="s2mosaic-quiet-rasterio")


# -- GPU tasks ----------------------------------------------------------------------------------
GPU_RESOURCE = "GPU"
_WARNED: set[str] = set()


def gpu_resources(client: Any = None) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker of ``client`` (default: the current client) has a ``GPU``
    resource, i.e. was started with ``--resources GPU=1`` (the ``slurm-gpu`` profile) or with
    ``resources={"GPU": 1}`` (a LocalCluster); None otherwise, and without a distributed client.
    """
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            return None
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any((w.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1 for w in workers):
        return {GPU_RESOURCE: 1}
    return None


@contextlib.contextmanager
def gpu_annotate(client: Any = None, *, what: str = "GPU tasks") -> Iterator[dict[str, float] | None]:
    """Build GPU tasks inside this block; yields the resources they carry, or None for CPU.

    With GPU workers, the tasks built inside carry ``resources={"GPU": 1}`` and the scheduler
    runs them only on those workers, one per GPU at a time. Without, nothing is annotated, the
    block yields None (so the caller builds its CPU variant) and a :class:`GPUFallbackWarning`
    is issued once per ``what``. Compute the result inside :func:`keep_annotations`
    (``s2mosaic._write`` does).

    Where it plugs in: a GPU cloud masker (``masks/omnicloud.py``) or a CuPy reducer
    (``composite/``) wraps the ``map_blocks``/``apply_ufunc`` call that builds its tasks::

        with gpu_annotate(what="OmniCloudMask") as gpu:
            mask = cube.map_blocks(predict_gpu if gpu else predict_cpu, ...)
    """
    res = gpu_resources(client)
    if res is None:
        if what not in _WARNED:
            _WARNED.add(what)
            warnings.warn(f"{what}: no Dask worker has a {GPU_RESOURCE!r} resource, so they run "
                          "on CPU; start GPU workers with --resources GPU=1 (see "
                          "the slurm-gpu profile) to use GPUs", GPUFallbackWarning, stacklevel=3)
        yield None
        return
    with dask.annotate(resources=res):
        yield res


def keep_annotations(obj: Any) -> contextlib.AbstractContextManager[Any]:
    """Compute ``obj`` inside this so its tasks' ``resources`` annotations reach the scheduler.

    dask's low-level task fusion (on by default for arrays) drops layer annotations
    (dask/dask#7036, #10325): a GPU-annotated task fused with a neighbour would run anywhere.
    When ``obj``'s graph carries a ``resources`` annotation this turns that fusion off for the
    computation (high-level blockwise fusion, which merges annotations, stays on); otherwise it
    changes nothing.
    """
    graph = obj.__dask_graph__() if hasattr(obj, "__dask_graph__") else None
    layers = getattr(graph, "layers", {}) if graph is not None else {}
    if any("resources" in (getattr(layer, "annotations", None) or {}) for layer in layers.values()):
        return without_task_fusion()
    return contextlib.nullcontext()


_FUSION_LOCK = threading.Lock()
_FUSION_OFF = 0  # how many threads are inside without_task_fusion()
_FUSION_SAVED: list[Any] = []  # the setting to put back when the last one leaves


@contextlib.contextmanager
def without_task_fusion() -> Iterator[None]:
    """dask's low-level task fusion off (``optimization.fuse.active: False``) while inside,
    safely across threads.

    ``dask.config.set`` is process-global and each exit restores what *it* saw on entry, so two
    threads entering and leaving out of order (concurrent jobs of :func:`s2mosaic.run_batch`)
    leave fusion off for good. Here the first thread in saves the user's setting and the last one
    out restores it.
    """
    global _FUSION_OFF
    with _FUSION_LOCK:
        if _FUSION_OFF == 0:
            _FUSION_SAVED[:] = [dask.config.get("optimization.fuse.active", None)]
            dask.config.set({"optimization.fuse.active": False})
        _FUSION_OFF += 1
    try:
        yield
    finally:
        with _FUSION_LOCK:
            _FUSION_OFF -= 1
            if _FUSION_OFF == 0:
                dask.config.set({"optimization.fuse.active": _FUSION_SAVED.pop()})
