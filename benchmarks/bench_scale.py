"""Scaling of the tiled runner: AOI areas 1×, 4×, 16× on generated data.

Run:  python benchmarks/bench_scale.py [--dir /tmp/s2mosaic-bench-scale] [--base 256]

On the largest demo catalog (two 1200 × 1200 px tiles across 12°E, 12 dates), square AOIs
centred on the zone line with sides of ``base``, 2 × ``base`` and 4 × ``base`` pixels at 10 m,
each run with ``s2mosaic._run`` on a fresh LocalCluster of 2 worker processes × 1 thread,
``tile_size`` = ``base`` (so 1, 4 and 16 tiles), ``chunks`` = ``base / 2`` and at most 2 tiles
in flight. Prints, per area:

- wall time and wall time per megapixel (linear in area means a flat ratio);
- peak resident memory per worker (``ru_maxrss`` of each worker process over the run) and
  its growth over the worker's resident memory before the run (imports, cluster);
- tasks in flight at most (sum over in-flight tile graphs) against the task count of the same
  mosaic built as one graph, which is what grows with the area without tiles.

Then the ratios 4×/1× and 16×/1× of each. Targets (issue 5): peak memory per worker within
20 % as the area grows 16×; wall time linear within 25 %; graph bounded by the tile concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import dask
import psutil


class WorkerPeaks:
    """Samples the resident memory of the given worker processes every 10 ms; keeps the peaks.

    (``ru_maxrss`` inside a worker is no good here: a process forked from the benchmark starts
    with the benchmark's high-water mark.)"""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peaks = {p: 0 for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.peaks[proc.pid] = max(self.peaks[proc.pid], proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _aoi(side_px: int) -> dict[str, Any]:
    """A square of ``side_px`` 10 m pixels in EPSG:32632 centred near 12°E 47.5°N, as a
    lon/lat polygon through its corners (so the output grid is exactly that square)."""
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    back = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    x, y = (round(v, -1) for v in t.transform(12.0, 47.5))
    half = side_px * 10 / 2
    ring = [back.transform(x + dx, y + dy) for dx, dy in
            ((-half, -half), (half, -half), (half, half), (-half, half), (-half, -half))]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def run_one(catalog: Path, out: Path, side: int, base: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    import s2mosaic
    from s2mosaic._pipeline import mosaic
    from s2mosaic.demo import demo_spec

    spec = demo_spec(catalog, out).replace(
        aoi=_aoi(side), output={"zarr": out / "m.zarr"},
        runtime={"chunks": base // 2, "tile_size": base, "max_tiles_in_flight": 2})
    # The same mosaic as one graph, optimised as the runner optimises a tile's graph.
    whole = mosaic(spec)
    one_graph = len(dask.optimize(*[whole[n].data for n in whole.data_vars])[0].__dask_graph__())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("s2mosaic._run"))  # imports in, so they are the baseline
        before = client.run(_rss)
        pids = client.run(os.getpid)
        with WorkerPeaks(list(pids.values())) as peaks:
            t0 = time.perf_counter()
            report = s2mosaic.run(spec, client=client)
            wall = time.perf_counter() - t0
    h, w = report.shape
    growth = max(peaks.peaks[pids[k]] - before[k] for k in pids)
    return {"side": side, "mpx": h * w / 1e6, "tiles": report.tiles["total"], "wall": wall,
            "peak": max(peaks.peaks.values()), "growth": growth,
            "tasks": report.max_tasks_in_flight, "one_graph": one_graph,
            "read": report.bytes_read, "graphs_s": report.stages_s.get("graphs_s", 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-scale"))
    ap.add_argument("--base", type=int, default=256, help="side of the 1x AOI in pixels")
    args = ap.parse_args()
    from s2mosaic.demo import make_demo_catalog

    t0 = time.perf_counter()
    catalog = make_demo_catalog(args.dir / "catalog", seed=0, size=1200)
    print(f"demo catalog (2 × 1200² px, 12 dates): {time.perf_counter() - t0:.1f} s")
    rows = []
    for k in (1, 2, 4):
        out = args.dir / f"out-{k}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_one(catalog, out, k * args.base, args.base)
        rows.append(r)
        print(f"area {k * k:>2}×: {r['side']}² px ({r['mpx']:.2f} Mpx), {r['tiles']:>2} tiles, "
              f"wall {r['wall']:.1f} s ({r['wall'] / r['mpx']:.1f} s/Mpx), peak/worker "
              f"{r['peak'] / 2**20:.0f} MiB (+{r['growth'] / 2**20:.0f} MiB over idle), tasks in "
              f"flight {r['tasks']} (one graph: {r['one_graph']}), read {r['read'] / 2**20:.0f} MiB, "
              f"client time building tile graphs {r['graphs_s']:.1f} s")
    base = rows[0]
    for r in rows[1:]:
        k = round(r["mpx"] / base["mpx"])
        print(f"{k:>2}× area: wall {r['wall'] / base['wall']:.2f}× (time per Mpx "
              f"{(r['wall'] / r['mpx']) / (base['wall'] / base['mpx']):.2f}× the 1× run), peak "
              f"memory/worker {r['peak'] / base['peak']:.2f}×, growth over idle "
              f"{r['growth'] / max(base['growth'], 1):.2f}×, tasks in flight "
              f"{r['tasks'] / base['tasks']:.2f}× (one graph {r['one_graph'] / base['one_graph']:.2f}×)")


if __name__ == "__main__":
    main()
