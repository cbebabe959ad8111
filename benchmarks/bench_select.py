"""Scene selection and plan benchmarks on the demo catalog.

1. First-valid mosaic (``composite.method: first``, SCL masking) of the selected scenes
   (``select.method: min-cover``, ``max_observations`` 1-3) against all scenes: time to compute
   (read + mask + reduce), bytes read (``/proc/self/io`` rchar), and how much of the AOI the
   selection fills and fills with the same values as all scenes.
2. The throughput :mod:`s2mosaic._plan` uses for its time estimate: source bytes read and
   processed per second per core, end to end (percentile mosaic, synchronous scheduler).
3. The plan's estimates against a real in-process run (bytes read, sizes on disk).

    .venv/bin/python benchmarks/bench_select.py [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np

import s2mosaic
from s2mosaic._plan import plan
from s2mosaic._select import select
from s2mosaic.demo import demo_spec, make_demo_catalog


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def timed_compute(ds: Any, scheduler: str, repeat: int) -> tuple[float, int, Any]:
    times, reads, out = [], [], None
    for _ in range(repeat):
        r0, t0 = rchar(), time.perf_counter()
        with dask.config.set(scheduler=scheduler):
            out = ds.compute()
        times.append(time.perf_counter() - t0)
        reads.append(rchar() - r0)
    return statistics.median(times), int(statistics.median(reads)), out


def disk(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-select-"))
    catalog = make_demo_catalog(root / "catalog")
    base = demo_spec(catalog, root / "out")
    items = s2mosaic.search(base)
    first = base.replace(composite={"method": "first"})
    # Warm up: imports, Numba's cache, PROJ's database are read once per process.
    s2mosaic.mosaic(first, select(first.replace(select={"method": "min-cover"}), items)).compute(
        scheduler="synchronous")

    print(f"# 1. first-valid, all scenes vs min-cover (median of {args.repeat}, 2 threads)")
    t_all, r_all, full = timed_compute(s2mosaic.mosaic(first, items), "threads", args.repeat)
    seen = full["count"].values > 0
    print(f"all scenes        : {len(items):2d} scenes, {t_all:6.3f} s, {r_all / 1e6:6.1f} MB read")
    for k in (1, 2, 3):
        spec = first.replace(select={"method": "min-cover", "max_observations": k})
        sel = select(spec, items)
        t, r, part = timed_compute(s2mosaic.mosaic(spec, sel), "threads", args.repeat)
        valid = part["count"].values > 0
        same = np.ones_like(valid)
        for b in base.bands:
            same &= part[b].values == full[b].values
        print(f"min-cover k={k}     : {len(sel):2d} scenes, {t:6.3f} s, {r / 1e6:6.1f} MB read; "
              f"speedup {t_all / t:4.1f}x, bytes {r_all / max(r, 1):4.1f}x fewer; "
              f"AOI filled {100 * valid[seen].mean():5.1f} %, equal to all scenes on "
              f"{100 * (same & valid)[seen].sum() / valid[seen].sum():5.1f} % of the filled "
              f"pixels")
    none = first.replace(mask={"method": "none"})
    t_n, _, full_n = timed_compute(s2mosaic.mosaic(none, items), "threads", args.repeat)
    spec = none.replace(select={"method": "min-cover"})
    sel = select(spec, items)
    t, _, part = timed_compute(s2mosaic.mosaic(spec, sel), "threads", args.repeat)
    equal = all(np.array_equal(part[b].values, full_n[b].values) for b in base.bands)
    print(f"mask none, k=1    : {len(sel):2d} of {len(items)} scenes, {t_n:.3f} s -> {t:.3f} s "
          f"({t_n / t:.1f}x); identical to all scenes: {equal}")

    print("\n# 2. end-to-end throughput (percentile, all scenes)")
    pct = base.replace(runtime=dataclasses.replace(base.runtime, scheduler="synchronous"))
    p = plan(pct)
    for sched, cores in (("synchronous", 1), ("threads", 2)):
        t, r, _ = timed_compute(s2mosaic.mosaic(pct, items), sched, args.repeat)
        print(f"{sched:12s}: {t:.3f} s, {r / 1e6:.1f} MB read (plan: "
              f"{p.read['source_bytes'] / 1e6:.1f} MB) -> {r / 1e6 / t / cores:.1f} MB/s per core")

    print("\n# 3. plan vs a real run (synchronous, in process)")
    for name, sel_spec in (("all", {"method": "all"}), ("min-cover k=2",
                                                          {"method": "min-cover",
                                                           "max_observations": 2})):
        out = root / f"run-{name.replace(' ', '-').replace('=', '')}"
        spec = pct.replace(select=sel_spec, output=dataclasses.replace(
            pct.output, zarr=out / "m.zarr", cog=out / "m.tif", rgb=out / "m.png"))
        t0 = time.perf_counter()
        p = plan(spec)
        t_plan = time.perf_counter() - t0
        r0, t0 = rchar(), time.perf_counter()
        s2mosaic.run(spec)
        t_run, r = time.perf_counter() - t0, rchar() - r0
        print(f"{name:14s}: plan {t_plan:.2f} s, run {t_run:.2f} s (plan said "
              f"{p.time['wall_s']:.1f} s on {p.time['cores']} core); read {r / 1e6:.2f} MB vs "
              f"plan {p.bytes_to_read / 1e6:.2f} MB ({p.bytes_to_read / r - 1:+.1%})")
        for fmt in ("zarr", "cog", "rgb"):
            real = disk(getattr(spec.output, fmt))
            print(f"{'':16s}{fmt:4s}: {real / 1e3:8.1f} KB on disk vs plan "
                  f"{p.output_bytes[fmt] / 1e3:8.1f} KB ({p.output_bytes[fmt] / real - 1:+.1%})")


if __name__ == "__main__":
    main()
