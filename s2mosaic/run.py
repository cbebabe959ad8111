"""Running a spec end to end: search → mosaic → write, on the spec's cluster, with a report.

A run posts notifications (start, completion with the report, failure) to the webhook in
``$S2MOSAIC_WEBHOOK`` when it is set (:mod:`s2mosaic.notify`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pystac
import xarray as xr

from . import write as _write
from .cluster import keep_annotations, make_client, quiet_rasterio, quiet_workers
from .errors import WriteError
from .notify import Notifier
from .pipeline import PROVENANCE_ATTR, mosaic
from .search import search
from .spec import MosaicSpec, OutputSpec

__all__ = ["RunReport", "run", "write"]


@dataclass
class RunReport:
    """What a run did: inputs, outputs, time."""

    product: str
    items: int
    dropped: int
    observations: int
    shape: tuple[int, int]
    crs: str
    outputs: dict[str, str | None]
    wall_time_s: float
    dashboard: str | None = None
    stages_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def write(mosaic_ds: xr.Dataset, output: OutputSpec, *, client: Any = None,
          progress: bool = False) -> _write.WriteResult:
    """Compute and write a mosaic from :func:`s2mosaic.mosaic` to ``output``.

    The provenance record the mosaic carries is completed (processing time) and written as the
    metadata sidecar; it is not copied into the Zarr/COG attributes.
    """
    if output.zarr is None and output.cog is None:
        raise WriteError("nothing to write: set output.zarr and/or output.cog in the spec")
    ds = mosaic_ds.copy()
    prov: dict[str, Any] = dict(ds.attrs.pop(PROVENANCE_ATTR, None) or {})
    started = time.time()
    if client is not None:
        quiet_workers(client)
    # keep_annotations: GPU tasks (cluster.gpu_annotate) keep their resources through compute.
    with warnings.catch_warnings(), keep_annotations(ds):
        quiet_rasterio()
        result = _write.write(ds, output, provenance=prov, client=client, progress=progress)
    if result.metadata is not None:
        # The processing time is known only now: complete the sidecar the writer made.
        record = json.loads(result.metadata.read_text())
        record["processing_time_s"] = round(time.time() - started, 3)
        record["finished"] = dt.datetime.now(dt.UTC).isoformat()
        _write.write_metadata(result.metadata, record)
    return result


def run(spec: MosaicSpec, *, items: Sequence[pystac.Item] | None = None, client: Any = None,
        progress: bool = False, on_stage: Callable[[str, dict[str, Any]], None] | None = None,
        ) -> RunReport:
    """Search, build and write the mosaic of ``spec`` on the spec's Dask runtime.

    The client comes from ``client`` when given, else from ``spec.runtime`` (a LocalCluster, a
    scheduler address, or a cluster profile in ``runtime.cluster``; see
    :func:`s2mosaic.cluster.make_client`). ``on_stage(name, info)`` is called after each stage
    (the CLI prints from it). With ``$S2MOSAIC_WEBHOOK`` set, the start, the completion (with
    this report) and a failure (error type and message) are posted there; a notification that
    cannot be delivered only logs a warning.

    Examples
    --------
    >>> report = run(MosaicSpec.from_yaml("my-area.yaml"))  # doctest: +SKIP
    >>> report.outputs["cog"]  # doctest: +SKIP
    'out/mosaic.tif'
    """
    notifier = Notifier.from_env()
    rt = spec.runtime
    where = ("the given client" if client is not None else
             f"cluster profile {rt.cluster}" if rt.cluster is not None else rt.scheduler or "LocalCluster")
    notifier.started(spec.name, cluster=where,
                     outputs={k: getattr(spec.output, k) for k in ("zarr", "cog", "rgb")})
    try:
        report = _run(spec, items, client, progress, on_stage or (lambda _n, _i: None))
    except BaseException as e:
        notifier.failed(spec.name, e)
        raise
    notifier.completed(spec.name, asdict(report))
    return report


def _run(spec: MosaicSpec, items: Sequence[pystac.Item] | None, client: Any, progress: bool,
         notify: Callable[[str, dict[str, Any]], None]) -> RunReport:
    t0 = time.time()
    stages: dict[str, float] = {}
    conn = make_client(spec.runtime, client=client)
    with conn as c:
        dashboard = conn.dashboard_link
        notify("cluster", {"dashboard": dashboard, "client": c, "cluster": conn.description})
        if items is None:
            items = search(spec)
        stages["search_s"] = round(time.time() - t0, 3)
        notify("search", {"items": items})
        t1 = time.time()
        ds = mosaic(spec, items)
        stages["graph_s"] = round(time.time() - t1, 3)
        prov = ds.attrs[PROVENANCE_ATTR]
        notify("graph", {"mosaic": ds})
        t2 = time.time()
        result = write(ds, spec.output, client=c, progress=progress)
        stages["compute_write_s"] = round(time.time() - t2, 3)
    return RunReport(
        product=spec.name,
        items=len(items),
        dropped=len(prov["dropped_items"]),
        observations=prov["observations"],
        shape=(prov["grid"]["shape"][0], prov["grid"]["shape"][1]),
        crs=prov["grid"]["crs"],
        outputs={k: (str(v) if v is not None else None) for k, v in asdict(result).items()},
        wall_time_s=round(time.time() - t0, 3),
        dashboard=dashboard,
        stages_s=stages,
    )
