"""The Dask client a run uses: a LocalCluster sized to the machine, an existing scheduler, or none."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dask

from .errors import S2MosaicError
from .spec import RuntimeSpec

__all__ = ["LOCAL_SCHEDULERS", "local_cluster_size", "make_client"]

#: runtime.scheduler values that mean "no distributed cluster, use a dask local scheduler".
LOCAL_SCHEDULERS = ("synchronous", "threads")


def local_cluster_size(runtime: RuntimeSpec) -> tuple[int, int]:
    """(workers, threads per worker) for a LocalCluster on this machine.

    One worker process per 4 cores (at least one) keeps GDAL reads and the Numba reducer, which
    both release the GIL, sharing memory inside a process; threads fill the remaining cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = runtime.n_workers or max(1, cores // 4)
    threads = runtime.threads_per_worker or max(1, cores // workers)
    return workers, threads


@contextlib.contextmanager
def make_client(runtime: RuntimeSpec, *, client: Any = None) -> Iterator[Any]:
    """Yield the ``distributed.Client`` for ``runtime`` (None for a dask local scheduler).

    - ``client`` given: it is used as is and left open.
    - ``runtime.scheduler`` None: a new ``LocalCluster`` (closed on exit); dashboard on :8787 or
      the next free port.
    - ``"synchronous"`` / ``"threads"``: no cluster; dask's local scheduler of that name.
    - anything else: the address of a running scheduler (``tcp://host:8786``); the client is
      closed on exit, the cluster is not.
    """
    if client is not None:
        yield client
        return
    sched = runtime.scheduler
    if sched in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=sched):
            yield None
        return
    from distributed import Client, LocalCluster

    if sched is None:
        workers, threads = local_cluster_size(runtime)
        with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                          dashboard_address=":8787") as cluster, Client(cluster) as c:
            yield c
        return
    try:
        c = Client(sched, timeout="20s")
    except OSError as e:
        raise S2MosaicError(
            f"cannot connect to the Dask scheduler at runtime.scheduler={sched!r} ({e}); give a "
            "running scheduler's address (tcp://host:8786), or null for a LocalCluster"
        ) from e
    try:
        yield c
    finally:
        c.close()
