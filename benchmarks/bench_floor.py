"""End-to-end throughput against the I/O floor and a hand-written baseline (issue 18).

Run:  python benchmarks/bench_floor.py [--dir /tmp/s2mosaic-bench-floor] [--side 1024]
                                       [--size 1200] [--chunks 256] [--rounds 2]
                                       [--peer-python VENV/bin/python]

On a demo catalog (two ``size``² px tiles, 1200 by default, either side of the 12°E UTM zone
line, 32TQT in EPSG:32632 and 33TTN in EPSG:32633, 12 dates, 4 bands at 10 m + SCL at 20 m,
local DEFLATE COGs with 256 px blocks) and a square AOI of ``side`` px centred on the zone line,
output in EPSG:32632 (so every 33TTN read is a cross-zone warp), on ONE LocalCluster (2 worker
processes × 1 thread), per round:

- **floor**: every COG block the run needs (each asset's internal tiles that intersect the
  output grid's extent in the file's CRS) read and decoded once with rasterio/GDAL, one task per
  asset on the same workers, nothing else (no warp, no mask, no composite, no write);
- **s2mosaic**: ``s2mosaic.run`` of the demo spec (percentile 25, SCL mask, mask-first reads)
  on that AOI, Zarr only, the items given (no search), chunks ``chunks``;
- **s2mosaic, all dates**: the same with mask-first reads off (``runtime.prune_dates: off``);
- **s2mosaic, GDAL warps**: the same with every cross-zone read warped by GDAL
  (``runtime.warp_reuse: off``; the default gathers through an index map per source grid and
  chunk, :mod:`s2mosaic._warp`);
- **s2mosaic, reopen**: the same with each read opening its file (``runtime.keep_open: off``;
  the default keeps files open per worker thread so chunk-edge blocks decode once,
  :mod:`s2mosaic._datasets`);
- **baseline**: what users write by hand - ``odc.stac.load`` (same items, grid, chunks,
  groupby solar day) → ``where(SCL in {4, 5, 6, 7, 11} & band != 0)`` → ``quantile(0.25,
  skipna)`` → ``to_zarr``.

Prints wall time, × floor, baseline / s2mosaic, peak RSS per worker (sampled from outside with
:class:`bench_scale.WorkerPeaks`), and a breakdown of the worker time from Dask's task stream:
band reads, SCL reads, of those the time inside GDAL warps (``rasterio.warp.reproject``, timed
on the workers; it includes decoding the source blocks it warps), the fused mask + composite +
write tasks, and the share of the workers' wall time spent in no task at all (scheduler,
transfers, idle: the scheduler overhead). Then the per-core throughput in Mpx·obs per CPU-second
(output pixels × time slices, 4 bands each, per worker-second) and compressed source MB per
CPU-second (what :data:`s2mosaic._plan.THROUGHPUT` uses).

A warm-up run (Numba's first compile, GDAL, page cache) precedes the rounds; every timing is
with the files in the page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import WorkerPeaks  # the helper lives beside this script

BANDS = ("B02", "B03", "B04", "B08")
SCL = "SCL"
SCL_CLEAR = (4, 5, 6, 7, 11)


def _aoi(side_px: int) -> dict[str, Any]:
    """A square of ``side_px`` 10 m pixels in EPSG:32632 centred on 12°E 47.5°N, its corners on
    60 m multiples (the Sentinel-2 grid of every band: the output is on the SCL's 20 m grid)."""
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    back = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    x, y = (60 * round(v / 60) for v in t.transform(12.0, 47.5))
    half = side_px * 10 / 2
    # 9 m inside the square (under a pixel): the outward snap of the grid must not add a pixel
    # row. An edge straight in lon/lat sags in UTM between these corners: ~1.2 m at 1024 px
    # (1 m once gave 1025 rows), ~5 m at 2048 px (5 m gave 2049 rows)
    i = 9
    ring = [back.transform(x + dx, y + dy) for dx, dy in
            ((-half + i, -half + i), (half - i, -half + i), (half - i, half - i),
             (-half + i, half - i), (-half + i, -half + i))]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


# -- the floor --------------------------------------------------------------------------------


def _needed_blocks(href: str, bounds: tuple[float, float, float, float], crs: str,
                   ) -> tuple[str, list[tuple[int, int]], int]:
    """The internal tiles of ``href`` that intersect ``bounds`` (in ``crs``), and their
    compressed bytes."""
    import rasterio
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    with rasterio.open(href) as src:
        b = transform_bounds(crs, src.crs, *bounds, densify_pts=21)
        w = from_bounds(*b, transform=src.transform)
        bh, bw = src.block_shapes[0]
        r0, r1 = max(0, math.floor(w.row_off / bh)), min(
            math.ceil(src.height / bh), math.ceil((w.row_off + w.height) / bh))
        c0, c1 = max(0, math.floor(w.col_off / bw)), min(
            math.ceil(src.width / bw), math.ceil((w.col_off + w.width) / bw))
        blocks = [(r, c) for r in range(r0, r1) for c in range(c0, c1)]
        nbytes = sum(src.block_size(1, r, c) for r, c in blocks)
    return href, blocks, nbytes


def _read_blocks(href: str, blocks: list[tuple[int, int]], gdal: dict[str, Any]) -> int:
    """Read and decode each block once (GDAL's block cache off: each is decoded here)."""
    import rasterio

    n = 0
    with rasterio.Env(**{**gdal, "GDAL_CACHEMAX": 0}), rasterio.open(href) as src:
        for r, c in blocks:
            n += src.read(1, window=src.block_window(1, r, c)).size
    return n


def floor_run(client: Any, needed: list[tuple[str, list[tuple[int, int]], int]],
              gdal: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    futures = client.map(_read_blocks, [n[0] for n in needed], [n[1] for n in needed],
                         gdal=gdal, pure=False)
    client.gather(futures)
    return time.perf_counter() - t0


# -- the baseline -----------------------------------------------------------------------------


def baseline_run(items: list[Any], gbox: Any, chunks: int, out: Path) -> float:
    import odc.stac

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ds = odc.stac.load(items, bands=[*BANDS, SCL], geobox=gbox, groupby="solar_day",
                       chunks={"time": -1, "y": chunks, "x": chunks}, resampling="nearest")
    clear = ds[SCL].isin(SCL_CLEAR)
    bands = ds[list(BANDS)]
    masked = bands.where(clear & (bands != 0))
    masked.quantile(0.25, dim="time", skipna=True).to_zarr(out, mode="w", compute=True)
    return time.perf_counter() - t0


# -- s2mosaic ---------------------------------------------------------------------------------


#: The s2mosaic rows: (runtime.prune_dates, runtime.warp_reuse, runtime.keep_open).
VARIANTS = {
    "s2mosaic": ("auto", "auto", "auto"),
    "s2mosaic-all-dates": ("off", "auto", "auto"),
    "s2mosaic-gdal-warps": ("auto", "off", "auto"),
    "s2mosaic-reopen": ("auto", "auto", "off"),
}


def s2mosaic_run(spec: Any, items: list[Any], client: Any, *, prune: str = "auto",
                 warp_reuse: str = "auto", keep_open: str = "auto") -> float:
    import dataclasses

    import s2mosaic

    spec = spec.replace(runtime=dataclasses.replace(spec.runtime, prune_dates=prune,
                                                    warp_reuse=warp_reuse,
                                                    keep_open=keep_open))
    shutil.rmtree(spec.output.zarr, ignore_errors=True)
    t0 = time.perf_counter()
    s2mosaic.run(spec, items=items, client=client)
    return time.perf_counter() - t0


# -- measuring ----------------------------------------------------------------------------------


def _install_warp_timer() -> None:
    import rasterio.warp as w

    if not hasattr(w, "_bench_orig"):
        orig = w.reproject

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                w._bench_warp_s += time.perf_counter() - t  # type: ignore[attr-defined]

        w._bench_orig = orig  # type: ignore[attr-defined]
        w.reproject = timed
    w._bench_warp_s = 0.0  # type: ignore[attr-defined]


def _warp_s() -> float:
    import rasterio.warp as w

    return float(getattr(w, "_bench_warp_s", 0.0))


def _kind(prefix: str) -> str:
    if prefix in BANDS:
        return "band reads"
    if prefix.lstrip("_").startswith("read_blocks"):
        return "floor reads"
    if prefix == SCL:
        return "SCL reads"
    # prune: mask-first band reads; apply_offset: a band read fused with its BOA offset
    if prefix.startswith(("open-", "cfg-", "prune", "apply_offset")):
        return "band reads"
    if prefix.lstrip("_").startswith("clear_block"):  # SCL reduced to clear dates per chunk
        return "SCL reads"
    return "mask+composite+write"


def measured(client: Any, fn: Any, *args: Any, **kw: Any) -> dict[str, Any]:
    """Wall time, worker peaks, task-stream breakdown and warp time of ``fn(*args, **kw)``."""
    import os

    from dask.utils import key_split
    from distributed import get_task_stream

    client.run(_install_warp_timer)
    pids = client.run(os.getpid)
    with WorkerPeaks(list(pids.values())) as peaks, get_task_stream(client) as ts:
        wall = fn(*args, **kw)
    busy: dict[str, float] = defaultdict(float)
    starts, stops = [], []
    for rec in ts.data:
        for ss in rec.get("startstops", []):
            if ss.get("action") == "compute":
                busy[_kind(key_split(rec["key"]))] += ss["stop"] - ss["start"]
                starts.append(ss["start"])
                stops.append(ss["stop"])
    warp = sum(client.run(_warp_s).values())
    # the span from the first task's start to the last one's end: outside it the workers wait
    # for the client (graph building, store creation, metadata)
    window = max(stops) - min(starts) if starts else 0.0
    return {"wall": wall, "peak": max(peaks.peaks.values()),
            "peak_total": sum(peaks.peaks.values()), "busy": dict(busy), "warp": warp,
            "window": window}


# -- DPIRD-DMA S2Mosaic 2.0 ---------------------------------------------------------------------


def peer_run(python: str, catalog: Path, bounds: tuple[float, ...], out: Path,
             ) -> dict[str, Any]:
    """S2Mosaic 2.0 on the same items, grid, bands, percentile and SCL mask, in its own venv
    (``peer_s2mosaic2.py``; the LocalCluster's workers sit idle meanwhile). Its wall time is its
    ``mosaic()`` call alone (not the imports: ``process`` has the whole process)."""
    import json
    import subprocess

    script = Path(__file__).with_name("peer_s2mosaic2.py")
    t0 = time.perf_counter()
    p = subprocess.run([python, str(script), "--catalog", str(catalog),
                        "--bounds", *(repr(float(b)) for b in bounds), "--crs", "32632",
                        "--out", str(out), "--workers", "2"],
                       capture_output=True, text=True, check=False)
    process = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"S2Mosaic 2.0 failed (exit {p.returncode}): {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return {"wall": r["wall_s"], "process": process, "peak": r["peak_rss_mib"] * 2**20,
            "peak_total": r["peak_rss_mib"] * 2**20, "busy": {}, "warp": 0.0,
            "window": r["wall_s"]}


def _range(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-floor"))
    ap.add_argument("--side", type=int, default=1024, help="AOI side in 10 m pixels")
    ap.add_argument("--size", type=int, default=1200,
                    help="demo tile side in 10 m pixels (2400 for a 2048 px AOI)")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer-python", default=None,
                    help="python of a venv with DPIRD-DMA S2Mosaic 2.0 (see peer_s2mosaic2.py): "
                    "adds its row; default: the S2MOSAIC_PEER_PYTHON environment variable")
    args = ap.parse_args()
    import os

    peer = args.peer_python or os.environ.get("S2MOSAIC_PEER_PYTHON")

    import dask
    from distributed import Client, LocalCluster

    from s2mosaic._cube import gdal_settings, observation_count
    from s2mosaic._grid import output_geobox
    from s2mosaic._search import search
    from s2mosaic._select import apply_selection
    from s2mosaic.demo import demo_spec, make_demo_catalog

    t0 = time.perf_counter()
    catalog = make_demo_catalog(
        args.dir / ("catalog" if args.size == 1200 else f"catalog-{args.size}"), seed=0,
        size=args.size)
    print(f"demo catalog (2 × {args.size}² px, 12 dates, 4 bands + SCL): "
          f"{time.perf_counter() - t0:.1f} s")
    out = args.dir / "out"
    spec = demo_spec(catalog, out).replace(
        aoi=_aoi(args.side), output={"zarr": out / "m.zarr", "overwrite": True},
        runtime={"chunks": args.chunks, "n_workers": 2, "threads_per_worker": 1})
    items = list(apply_selection(spec, search(spec)))
    gbox = output_geobox(spec, items)
    obs = observation_count(items, spec)
    mpx = gbox.shape.x * gbox.shape.y / 1e6
    print(f"output {gbox.shape.y} × {gbox.shape.x} px in {gbox.crs} (origin on 20 m: "
          f"{gbox.affine.c % 20 == 0 and gbox.affine.f % 20 == 0}), {len(items)} items, "
          f"{obs} observations, chunks {args.chunks}")
    bounds = tuple(gbox.boundingbox)
    needed = [_needed_blocks(i.assets[k].get_absolute_href() or "", bounds, str(gbox.crs))
              for i in items for k in (*BANDS, SCL)]
    needed = [n for n in needed if n[1]]
    src_bytes = sum(n[2] for n in needed)
    print(f"floor: {sum(len(n[1]) for n in needed)} blocks in {len(needed)} assets, "
          f"{src_bytes / 1e6:.1f} MB compressed")
    gdal = gdal_settings(spec.runtime)

    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client, \
            dask.config.set(scheduler=client.get):
        cores = 2
        # warm-up: Numba's first compile on both workers, GDAL, the page cache
        floor_run(client, needed, gdal)
        s2mosaic_run(spec, items, client)
        if peer:  # its Numba kernel compiles (and caches) on the first run
            peer_run(peer, catalog, bounds, out / "peer.tif")
        else:
            print("S2Mosaic 2.0: not run (no --peer-python)")
        for r in range(args.rounds):
            order = ["floor", *VARIANTS, "baseline", *(["s2mosaic-2.0"] if peer else [])]
            order = order[r % len(order):] + order[:r % len(order)]  # no row always goes first
            for name in order:
                if name == "floor":
                    m = measured(client, floor_run, client, needed, gdal)
                elif name == "baseline":
                    m = measured(client, baseline_run, items, gbox, args.chunks, out / "b.zarr")
                elif name == "s2mosaic-2.0":
                    assert peer
                    m = peer_run(peer, catalog, bounds, out / "peer.tif")
                    runs[name].append(m)
                    print(f"round {r + 1} {name:<20} {m['wall']:6.2f} s  peak (one process) "
                          f"{m['peak'] / 2**20:5.0f} MiB  (process with imports "
                          f"{m['process']:.2f} s)", flush=True)
                    continue
                else:
                    prune, reuse, keep = VARIANTS[name]
                    m = measured(client, s2mosaic_run, spec, items, client, prune=prune,
                                 warp_reuse=reuse, keep_open=keep)
                runs[name].append(m)
                print(f"round {r + 1} {name:<20} {m['wall']:6.2f} s  peak/worker "
                      f"{m['peak'] / 2**20:5.0f} MiB  busy "
                      + ", ".join(f"{k} {v:.1f}" for k, v in sorted(m["busy"].items()))
                      + f", in GDAL warps {m['warp']:.1f} s", flush=True)

    def walls(name: str) -> list[float]:
        return [m["wall"] for m in runs[name]]

    fl = walls("floor")
    print(f"\nfloor {_range(fl)} s")
    for name in (*VARIANTS, "baseline"):
        xf = [w / f for w, f in zip(walls(name), fl, strict=True)]
        print(f"{name:<20} {_range(walls(name))} s = {_range(xf)} × floor, peak/worker "
              f"{max(m['peak'] for m in runs[name]) / 2**20:.0f} MiB")
    if peer:
        name = "s2mosaic-2.0"
        xf = [w / f for w, f in zip(walls(name), fl, strict=True)]
        sp = [p / s for p, s in zip(walls(name), walls("s2mosaic"), strict=True)]
        mem = [s["peak_total"] / p["peak"] for s, p in zip(runs["s2mosaic"], runs[name],
                                                           strict=True)]
        print(f"{name:<20} {_range(walls(name))} s (its mosaic() call; the process "
              f"{_range([m['process'] for m in runs[name]])} s) = {_range(xf)} × floor, peak "
              f"{max(m['peak'] for m in runs[name]) / 2**20:.0f} MiB")
        print(f"S2Mosaic 2.0 / s2mosaic: {_range(sp)} ×; peak memory, s2mosaic's workers "
              f"together / S2Mosaic 2.0's process: {_range(mem)}")
    ratio = [b / s for b, s in zip(walls("baseline"), walls("s2mosaic"), strict=True)]
    every = [w / s for w, s in zip(walls("s2mosaic-all-dates"), walls("s2mosaic"), strict=True)]
    warps = [w / s for w, s in zip(walls("s2mosaic-gdal-warps"), walls("s2mosaic"), strict=True)]
    reopen = [w / s for w, s in zip(walls("s2mosaic-reopen"), walls("s2mosaic"), strict=True)]
    print(f"baseline / s2mosaic: {_range(ratio)} ×; all dates / mask-first: {_range(every)} ×; "
          f"GDAL warp per read / index maps: {_range(warps)} ×; open per read / kept open: "
          f"{_range(reopen)} ×")
    for name in (*VARIANTS, "baseline"):
        for m in runs[name]:
            total = m["wall"] * cores
            shares = {k: v / total for k, v in m["busy"].items()}
            reads = m["busy"].get("band reads", 0) + m["busy"].get("SCL reads", 0)
            print(f"  {name:<20} share of {cores} × wall: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items()))
                  + f", in no task {1 - sum(shares.values()):.0%} (of which before the first "
                  f"/ after the last task {1 - m['window'] / m['wall']:.0%}, idle between tasks "
                  f"{(m['window'] * cores - sum(m['busy'].values())) / total:.0%}); GDAL warps "
                  f"{m['warp'] / max(reads, 1e-9):.0%} of read time")
    per_core = [mpx * obs / (w * cores) for w in walls("s2mosaic")]
    mb_core = [src_bytes / 1e6 / (w * cores) for w in walls("s2mosaic")]
    print(f"per-core throughput (s2mosaic): {_range(per_core)} Mpx·obs per CPU-s "
          f"({mpx:.2f} Mpx × {obs} obs × 4 bands), {_range(mb_core)} MB compressed source per "
          f"CPU-s; floor: {_range([src_bytes / 1e6 / (w * cores) for w in fl])} MB per CPU-s")
    # The plan's own byte count of this run: the constant its time estimate divides by.
    from s2mosaic._plan import THROUGHPUT, plan

    p = plan(spec, items, cores=cores)
    planned = p.read["source_bytes"]
    rate = [planned / 1e6 / (w * cores) for w in walls("s2mosaic")]
    print(f"plan: {planned / 1e6:.1f} MB source bytes; measured {_range(rate)} MB per CPU-s "
          f"end to end (THROUGHPUT.read_mb_s_per_core is {THROUGHPUT.read_mb_s_per_core}); "
          f"plan's wall estimate {p.time['wall_s']:.1f} s vs measured {_range(walls('s2mosaic'))} s")
    busy_rate = [planned / 1e6 / (m["window"] * cores) for m in runs["s2mosaic"]]
    print(f"plan bytes per CPU-s while the run's tasks run (first start to last end): "
          f"{_range(busy_rate)} MB (what THROUGHPUT.read_mb_s_per_core holds; the plan adds "
          f"startup_s for the rest)")
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
