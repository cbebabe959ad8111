"""The demo end to end: wall time, peak memory, and the same composite done the common way.

Run:  python benchmarks/bench_demo.py [--dir /tmp/bench-demo] [--size 600]

Prints, in one run:
- demo catalog generation time;
- `s2mosaic._run` of the demo spec on a LocalCluster (this machine's default sizing): wall time
  per stage and peak resident memory of the client process and of the workers together;
- the same percentile-25 composite computed the way users commonly write it — the same lazy
  odc-stac cube, masked to float with `where`, reduced with `xarray.DataArray.quantile(skipna)` —
  and the ratio of its compute time to s2mosaic's composite of the same cube (both on the same
  cluster, both computing the values in memory, no writing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil


class PeakRSS:
    """Samples RSS of this process and its children every 20 ms; keeps the peaks."""

    def __init__(self) -> None:
        self.peak_total = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = rss_self = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            self.peak_total = max(self.peak_total, total)
            self.peak_self = max(self.peak_self, rss_self)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-demo"))
    ap.add_argument("--size", type=int, default=600, help="demo tile size in pixels")
    args = ap.parse_args()

    import xarray as xr
    from distributed import Client, LocalCluster

    import s2mosaic
    from s2mosaic._cluster import local_cluster_size
    from s2mosaic._cube import load_cube
    from s2mosaic._grid import aoi_mask, output_geobox
    from s2mosaic.demo import demo_spec, make_demo_catalog
    from s2mosaic.masks import valid_mask

    t = time.perf_counter()
    catalog = make_demo_catalog(args.dir / f"catalog-{args.size}", size=args.size, overwrite=True)
    gen_s = time.perf_counter() - t
    spec = demo_spec(catalog, args.dir / "output")
    workers, threads = local_cluster_size(spec.runtime)
    print(f"machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"LocalCluster {workers} worker(s) × {threads} thread(s)")
    print(f"demo catalog (size {args.size}) generated in {gen_s:.2f} s")

    # 1. The demo run, as `s2mosaic demo` does it (LocalCluster started and closed inside).
    with PeakRSS() as mem:
        t = time.perf_counter()
        report = s2mosaic.run(spec)
        run_s = time.perf_counter() - t
    print(f"\ns2mosaic.run(demo spec): {run_s:.2f} s wall "
          f"(stages {report.stages_s}); output {report.shape[0]}×{report.shape[1]} px, "
          f"{report.observations} observations, {report.items} items")
    print(f"  peak RSS: client process {mem.peak_self / 2**20:.0f} MiB, "
          f"client + workers {mem.peak_total / 2**20:.0f} MiB")

    # 2. Composite only, s2mosaic vs xarray.quantile, same cube, same cluster.
    items = s2mosaic.search(spec)
    gbox = output_geobox(spec, items)
    with LocalCluster(n_workers=workers, threads_per_worker=threads, dashboard_address=":0") as lc, \
            Client(lc) as client:
        cube = load_cube(items, spec, gbox)
        valid = valid_mask(cube, spec.bands, spec.mask) & aoi_mask(gbox, spec.aoi, spec.runtime.chunks)
        ours = s2mosaic.mosaic(spec, items)
        client.compute(ours).result()  # warm-up: Numba compile on the workers, file caches
        t = time.perf_counter()
        ours_v = client.compute(ours).result()
        ours_s = time.perf_counter() - t
        naive = xr.Dataset({
            b: cube[b].where(valid).quantile(0.25, dim="time", skipna=True, method="linear")
            for b in spec.bands
        })
        t = time.perf_counter()
        naive_v = client.compute(naive).result()
        naive_s = time.perf_counter() - t
        # The reduction alone: cube and mask already in worker memory.
        cube_p, valid_p = client.persist([cube[list(spec.bands)], valid])
        from s2mosaic.composite import composite

        red_ours = composite(cube_p, valid_p, method="percentile", q=25)
        red_naive = xr.Dataset({b: cube_p[b].where(valid_p).quantile(0.25, dim="time", skipna=True)
                                for b in spec.bands})
        client.compute(red_ours).result()
        t = time.perf_counter()
        client.compute(red_ours).result()
        red_ours_s = time.perf_counter() - t
        t = time.perf_counter()
        client.compute(red_naive).result()
        red_naive_s = time.perf_counter() - t
    same = all(
        np.array_equal(ours_v[b].values,
                       np.where(np.isnan(naive_v[b].values), 0, np.round(naive_v[b].values)).astype("uint16"))
        for b in spec.bands
    )
    print("\ncomposite of the same lazy cube on the same cluster (read + mask + reduce):")
    print(f"  s2mosaic (Numba kernel, uint16):            {ours_s:7.2f} s")
    print(f"  xarray .where().quantile(skipna=True):      {naive_s:7.2f} s")
    print(f"  ratio xarray / s2mosaic:                    {naive_s / ours_s:7.1f}×   identical values: {same}")

    print("\nreduction only (cube and mask persisted in worker memory):")
    print(f"  s2mosaic composite():                       {red_ours_s:7.3f} s")
    print(f"  xarray .where().quantile(skipna=True):      {red_naive_s:7.3f} s")
    print(f"  ratio xarray / s2mosaic:                    {red_naive_s / red_ours_s:7.1f}×")


if __name__ == "__main__":
    main()
