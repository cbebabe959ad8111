"""The GPU path's checks and numbers in one run, one table (``benchmarks/gpu_check.sh`` runs it).

1. environment: Python, CuPy, CUDA runtime/driver, the device;
2. ``pytest -m gpu`` (fused task, kernels, xarray composite, time series on CuPy vs CPU);
3. kernel: the CUDA percentile/median kernel and the CuPy mean on T=24 × 4 bands × 2048² uint16,
   as a ratio to the device-memory floor (a device-to-device copy of the same bytes);
4. fused task: the demo cube held in memory, composited by the fused task on CuPy against the
   layered CPU path with every core (Dask threads), byte-identical checked; the host→device
   share of one fused task (its ``xp.asarray`` copies, timed alone);
5. end to end: ``s2mosaic.run`` of a generated demo catalog on a LocalCluster with a ``GPU``
   resource, ``device: gpu`` against ``device: cpu``: wall time, stores compared byte for byte,
   the fused tasks' share of the run, peak GPU memory (CuPy's pool).

Without CuPy (or a GPU) every GPU row says "CuPy not available" and the CPU side runs small, so
a CPU machine checks the script itself; the exit code is then 0. Each step checks the time left
(``--budget`` seconds, default 450) and reports "skipped: out of time" rather than overrun.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
ROWS: list[tuple[str, str, str, str]] = []
NO_CUPY = "CuPy not available"


def row(check: str, device: str, result: str, detail: str = "") -> None:
    ROWS.append((check, device, result, detail))
    print(f"  {check} [{device}]: {result} {detail}", flush=True)


def cupy_or_none() -> tuple[Any, str]:
    from s2mosaic._device import DeviceProbe, probe_cupy

    probe = DeviceProbe(**probe_cupy())
    if not probe.ok:
        return None, probe.problem()
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return cupy, (f"CuPy {probe.cupy}, CUDA runtime {probe.cuda_runtime}, driver "
                  f"{probe.cuda_driver}, {probe.devices} device(s): {name}")


def gpu_timed(cupy: Any, fn: Callable[[], Any], repeat: int) -> float:
    """Median of ``repeat`` timings (CUDA events) after a warm-up (compiles the kernel)."""
    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1000)
    return float(np.median(times))


# ---------------------------------------------------------------------------------- steps
def step_pytest(cupy: Any, left: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "tests/test_fused.py", "tests/test_kernels.py", "tests/test_composite_xr.py",
           "tests/test_timeseries.py"]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=max(30, min(240, left - 150)))
        last = [ln for ln in done.stdout.splitlines() if ln.strip()][-1:]
        summary = last[0].strip("= ") if last else f"no output (rc {done.returncode})"
        ok = done.returncode in (0, 5) and "failed" not in summary and "error" not in summary
        if cupy is None:
            row("pytest -m gpu", "gpu", f"{NO_CUPY}: skipped" if ok else "FAILED", summary)
        else:
            row("pytest -m gpu", "gpu", "passed" if ok else "FAILED", summary)
        if not ok:
            print(done.stdout[-4000:], done.stderr[-2000:])
    except subprocess.TimeoutExpired:
        row("pytest -m gpu", "gpu", "TIMED OUT")


def step_kernel(cupy: Any, args: argparse.Namespace) -> None:
    from s2mosaic.composite import reduce

    t, b, n = 24, 4, args.kernel_size
    shape = f"T={t} × {b} × {n}² uint16"
    if cupy is None:
        for what in ("percentile q25 (CUDA kernel)", "median (CUDA kernel)", "mean (CuPy)"):
            row(f"kernel {what}, {shape}", "gpu", NO_CUPY)
        return
    rng = np.random.default_rng(0)
    data = rng.integers(1, 10_000, size=(t, b, n, n), dtype=np.uint16)
    valid = rng.random((t, n, n)) > 0.45
    d_data, d_valid = cupy.asarray(data), cupy.asarray(valid)
    floor = gpu_timed(cupy, lambda: (d_data.copy(), d_valid.copy()), 10)
    nbytes = d_data.nbytes + d_valid.nbytes
    row(f"device memcpy floor, {shape}", "gpu", f"{floor * 1e3:.2f} ms",
        f"{2 * nbytes / floor / 1e12:.2f} TB/s read+write")
    cpu = reduce("percentile", data[:, :, :256, :256], valid[:, :256, :256], q=25)
    got = cupy.asnumpy(reduce("percentile", d_data[:, :, :256, :256], d_valid[:, :256, :256], q=25))
    same = "= CPU on a 256² crop" if np.array_equal(cpu, got) else "DIFFERS from CPU"
    for what, method, kw in (("percentile q25 (CUDA kernel)", "percentile", {"q": 25}),
                             ("median (CUDA kernel)", "median", {}),
                             ("mean (CuPy)", "mean", {})):
        s = gpu_timed(cupy, lambda m=method, k=kw: reduce(m, d_data, d_valid, **k), 10)
        row(f"kernel {what}, {shape}", "gpu", f"{s * 1e3:.2f} ms",
            f"{s / floor:.2f} × floor; {t * b * n * n / s / 1e9:.1f} Gobs/s"
            + (f"; {same}" if method == "percentile" else ""))


def demo_setup(size: int, chunks: int, tmp: Path) -> tuple[Any, Any, Any, Path]:
    from bench_fused import footprints

    from s2mosaic._grid import output_geobox
    from s2mosaic._search import search
    from s2mosaic._select import apply_selection
    from s2mosaic.demo import demo_spec, make_demo_catalog

    catalog = make_demo_catalog(tmp / f"catalog-{size}", size=size)
    spec = demo_spec(catalog, tmp / "out").replace(runtime={"chunks": chunks})
    spec = spec.replace(aoi=list(footprints(search(spec)).bounds))
    items = apply_selection(spec, search(spec))
    return spec, list(items), output_geobox(spec, items), catalog


def step_fused(cupy: Any, args: argparse.Namespace, tmp: Path) -> None:
    import dask
    from bench_fused import best_of, fused, layered, same

    from s2mosaic._cube import load_cube

    size = args.size if cupy is not None else 300
    spec, items, gbox, _ = demo_setup(size, args.chunks, tmp)
    cores = os.cpu_count() or 1
    spec = spec.replace(mask={"method": "scl", "dilation": 3})
    with dask.config.set(scheduler="threads", num_workers=cores):
        cube = load_cube(items, spec, gbox).persist()
        shape = f"{cube.sizes['time']} × {gbox.shape.y} × {gbox.shape.x} px, scl+dilation 3"
        tl, a = best_of(args.repeat, lambda: layered(spec, cube, gbox))
        row(f"fused task vs layered, {shape}", f"cpu ×{cores}", f"{tl:.3f} s", "layered CPU path")
        tf, b = best_of(args.repeat, lambda: fused(spec, cube, gbox, "cpu"))
        same(a, b)
        row(f"fused task vs layered, {shape}", f"cpu ×{cores}", f"{tf:.3f} s",
            f"fused NumPy; {tf / tl:.2f} × layered; byte-identical")
        if cupy is None:
            row(f"fused task vs layered, {shape}", "gpu", NO_CUPY)
            row("host→device share of a fused task", "gpu", NO_CUPY)
            return
        tg, g = best_of(args.repeat, lambda: fused(spec, cube, gbox, "gpu"))
        same(a, g)
        row(f"fused task vs layered, {shape}", "gpu", f"{tg:.3f} s",
            f"fused CuPy; {tl / tg:.1f}× faster than layered CPU ×{cores}; byte-identical")
    # One chunk's task alone: its host→device copies against the whole task.
    from s2mosaic._fused import FusedChunk

    bands = [np.asarray(cube[n].data.blocks[0, 0, 0]) for n in spec.bands]
    scl = np.asarray(cube["scl"].data.blocks[0, 0, 0])
    task_fn = FusedChunk("percentile", 25.0, 1, len(bands), (0.0,) * len(bands), 0.0,
                         (), ("scl",), 0, (0, 0), (0, 0), "gpu")
    aoi = np.ones(bands[0].shape[1:], dtype=bool)
    info = {0: {"chunk-location": (0, 0, 0), "num-chunks": (1, 1, 1)}}
    total = gpu_timed(cupy, lambda: task_fn(*bands, scl, aoi, block_info=info), 5)
    h2d = gpu_timed(cupy, lambda: [cupy.asarray(x) for x in (*bands, scl, aoi)], 5)
    row(f"host→device share of a fused task ({bands[0].shape} chunk)", "gpu",
        f"{100 * h2d / total:.0f} %", f"copies {h2d * 1e3:.2f} ms of {total * 1e3:.2f} ms")


def step_e2e(cupy: Any, args: argparse.Namespace, tmp: Path) -> None:
    import xarray as xr
    from distributed import Client, LocalCluster, get_task_stream

    import s2mosaic

    size = args.size if cupy is not None else 300
    spec, items, _, _ = demo_setup(size, args.chunks, tmp)
    cores = os.cpu_count() or 1
    devices = ["cpu", "gpu"]
    walls: dict[str, float] = {}
    with LocalCluster(n_workers=1, threads_per_worker=cores, processes=False,
                      dashboard_address=None, resources={"GPU": 1}) as cluster, \
            Client(cluster) as client:
        for device in devices:
            if device == "gpu" and cupy is None:
                row("end to end s2mosaic.run, demo", "gpu", NO_CUPY)
                continue
            s = spec.replace(output={"zarr": tmp / f"{device}.zarr", "overwrite": True},
                             runtime={"chunks": args.chunks, "device": device})
            if cupy is not None:
                cupy.get_default_memory_pool().free_all_blocks()
            with get_task_stream(client) as ts:
                report = s2mosaic.run(s, items=items, client=client)
            walls[device] = report.wall_time_s
            fused_s = sum(sum(x["stop"] - x["start"] for x in t["startstops"]
                              if x["action"] == "compute")
                          for t in ts.data if "fused" in str(t["key"]))
            if device == "gpu":
                peak = cupy.get_default_memory_pool().total_bytes()
                detail = (f"fused tasks {fused_s:.2f} s of {report.wall_time_s:.2f} s wall; peak "
                          f"GPU pool {peak / 2**20:.0f} MiB; {walls['cpu'] / walls['gpu']:.2f}× "
                          "the CPU run")
            else:
                detail = f"{cores} threads; {report.status}"
            row(f"end to end s2mosaic.run, demo {size} px tiles", device,
                f"{report.wall_time_s:.2f} s", detail)
    if "gpu" in walls:
        a, b = xr.open_zarr(tmp / "cpu.zarr"), xr.open_zarr(tmp / "gpu.zarr")
        ok = all(np.array_equal(a[v].values, b[v].values) for v in a.data_vars)
        row("end to end stores", "gpu vs cpu", "byte-identical" if ok else "DIFFER")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=450, help="seconds for all steps")
    ap.add_argument("--size", type=int, default=900, help="demo tile width (GPU machine)")
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument("--kernel-size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t0 = time.time()
    cupy, env = cupy_or_none()
    row("environment", "host", f"Python {platform.python_version()}, {os.cpu_count()} cores",
        platform.platform())
    row("CuPy", "gpu", "available" if cupy is not None else NO_CUPY, env)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        steps: list[tuple[str, Callable[[], None], float]] = [
            ("pytest -m gpu", lambda: step_pytest(cupy, args.budget - (time.time() - t0)), 60),
            ("kernel", lambda: step_kernel(cupy, args), 20),
            ("fused task", lambda: step_fused(cupy, args, Path(tmp)), 60),
            ("end to end", lambda: step_e2e(cupy, args, Path(tmp)), 60),
        ]
        for name, step, needs in steps:
            if args.budget - (time.time() - t0) < needs:
                row(name, "-", "skipped: out of time", f"needs ~{needs:.0f} s")
                continue
            try:
                step()
            except Exception as err:
                failed = True
                traceback.print_exc()
                row(name, "-", "ERROR", f"{type(err).__name__}: {err}"[:200])
    print(f"\n## gpu_check ({time.time() - t0:.0f} s)\n")
    print("| check | device | result | detail |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    return 1 if failed or any("FAILED" in r[2] or "DIFFER" in r[2] for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
