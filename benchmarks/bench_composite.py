"""The composite kernels against the memory floor and against what users reach for.

Run:  python benchmarks/bench_composite.py [--size 2048] [--times 24 60] [--q 25]

For each T, one cube of T x 4 bands x size² uint16 with ~45 % of observations masked (i.i.d.,
deterministic seed) and, in one run:

- the memory floor: one Numba pass (parallel, blocked like the kernel) over the same uint16 and
  mask bytes, doing nothing but reading them;
- s2mosaic's percentile kernel (``reduce("percentile", ...)``, Numba's thread pool): time,
  throughput in observations (band values) per second, ratio to the floor, and its peak extra
  memory, measured in a fresh process as the rise of the kernel call's peak RSS (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs``) over the RSS before it;
- the same composite through ``s2mosaic.composite.composite`` on Dask (the product's chunking:
  time whole, 1024² pixels, chunks persisted in memory, threaded scheduler, serial kernel per
  task);
- every other method (median, mean, first, last, medoid, count), timed once;
- baselines, all computing the same NumPy-"linear" percentile over the valid values:
  ``np.nanpercentile`` on a float64 NaN cube; ``xarray.DataArray.quantile(skipna=True)`` of
  ``.where(mask)`` on the Dask cube with the product's chunking (on Dask arrays xarray calls
  ``np.nanquantile``, which Dask runs per chunk with numbagg when it is installed, as it is in
  the dev extra, and with its own vectorised sort otherwise); ``numbagg.nanquantile`` on a
  float64 NaN cube; and a sort +
  ``take_along_axis`` NumPy baseline (sentinel-sorted uint16, the strongest plain-NumPy way).
  The slow ones run on a crop and are scaled linearly to the full cube: every such row says so;
- where CuPy finds a GPU: the device-memory floor (a device-to-device copy of the same bytes),
  the CUDA percentile kernel (checked equal to the CPU result), the sort-based CuPy path, the
  other methods, and the GPU's speedup over the CPU kernel.

Times are the best of ``--repeat`` runs for the fast ones and one run for the slow ones. The load
average is printed before and after: the numbers mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import prange

N_BAND = 4
MASKED = 0.45
SEED = 20240601


# --------------------------------------------------------------------------- the cube


def make_cube(n_time: int, size: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4, size, size) uint16 reflectances and a (T, size, size) mask, ~45 % masked.

    Generated one time step at a time so that building it never holds a float copy of the cube.
    """
    rng = np.random.default_rng(seed)
    data = np.empty((n_time, N_BAND, size, size), dtype=np.uint16)
    valid = np.empty((n_time, size, size), dtype=bool)
    for t in range(n_time):
        data[t] = rng.integers(0, 10_000, (N_BAND, size, size), dtype=np.uint16)
        valid[t] = rng.random((size, size), dtype=np.float32) >= MASKED
    return data, valid


# --------------------------------------------------------------------------- the floor


@numba.njit(parallel=True, nogil=True, cache=True)
def _stream(data: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    # Reads every uint16 and mask byte once, in pixel blocks as the kernel does (any order of
    # the same bytes would do; this one is as fast as a flat pass here), and keeps a tiny result
    # so that nothing can be optimised away.
    n_time, n_band, n_pix = data.shape
    n_blocks = (n_pix + width - 1) // width
    res = np.zeros(n_blocks, dtype=np.uint16)
    for blk in prange(n_blocks):
        p0 = blk * width
        w = min(width, n_pix - p0)
        acc = np.zeros(width, dtype=np.uint16)
        for t in range(n_time):
            for b in range(n_band):
                row = data[t, b, p0 : p0 + w]
                for j in range(w):
                    acc[j] = max(acc[j], row[j])
            ok = valid[t, p0 : p0 + w]
            for j in range(w):
                acc[j] ^= np.uint16(ok[j])
        res[blk] = acc.max()
    return res


def memory_floor(data: np.ndarray, valid: np.ndarray, repeat: int) -> float:
    d = data.reshape(data.shape[0], data.shape[1], -1)
    v = valid.reshape(valid.shape[0], -1)
    _stream(d[:, :, :4096], v[:, :4096], 8192)
    return best_of(lambda: _stream(d, v, 8192), repeat)


# --------------------------------------------------------------------------- baselines


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def nan_cube(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid[:, None], data, np.nan)


def sort_take_along_axis(data: np.ndarray, valid: np.ndarray, q: float) -> np.ndarray:
    """NumPy-"linear" percentile with np.sort on uint16 (masked = 65535) and take_along_axis."""
    ordered = np.sort(np.where(valid[:, None], data, np.uint16(65535)), axis=0)
    n = valid.sum(axis=0)[None, None]
    vi = (np.maximum(n, 1) - 1) * (q / 100)
    k = np.floor(vi).astype(np.int64)
    gamma = vi - k
    a = np.take_along_axis(ordered, k, axis=0).astype(np.float64)
    b = np.take_along_axis(ordered, np.minimum(k + 1, data.shape[0] - 1), axis=0)
    d = b - a
    r = np.where(gamma >= 0.5, b - d * (1 - gamma), a + d * gamma)
    return np.where(n > 0, np.rint(r), 0).astype(np.uint16)[0]


def xarray_quantile(data: np.ndarray, valid: np.ndarray, q: float, chunk: int):
    import dask
    import xarray as xr

    chunks = {"time": -1, "band": -1, "y": chunk, "x": chunk}
    cube = xr.DataArray(data, dims=("time", "band", "y", "x")).chunk(chunks)
    mask = xr.DataArray(valid, dims=("time", "y", "x")).chunk({"time": -1, "y": chunk, "x": chunk})
    with dask.config.set(scheduler="threads"):
        return cube.where(mask).quantile(q / 100, dim="time", skipna=True).compute()


def dask_inputs(data: np.ndarray, valid: np.ndarray, chunk: int) -> tuple[Any, Any]:
    """The cube as the product sees it: one Dask variable per band, time whole, square chunks."""
    import dask.array as da
    import xarray as xr

    dims = ("time", "y", "x")
    ch = (-1, chunk, chunk)

    def chunked(a: np.ndarray) -> Any:
        # Each chunk its own contiguous array in memory, as a loader returns them (slices of
        # one big array would be strided views, which the kernels would copy first).
        return da.from_array(a, chunks=ch, name=False).map_blocks(np.ascontiguousarray).persist()

    bands = {f"b{b}": (dims, chunked(data[:, b])) for b in range(data.shape[1])}
    return xr.Dataset(bands), xr.DataArray(chunked(valid), dims=dims)


def s2mosaic_dask(cube: Any, mask: Any, q: float) -> Any:
    import dask

    from s2mosaic.composite import composite

    with dask.config.set(scheduler="threads"):
        return composite(cube, mask, method="percentile", q=q).compute()


# --------------------------------------------------------------------------- peak memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak_memory(n_time: int, size: int, q: float) -> dict[str, float]:
    """Runs in a fresh process: peak RSS rise of one kernel call, in MiB."""
    from s2mosaic.composite import reduce

    data, valid = make_cube(n_time, size)
    reduce("percentile", data[:, :, :8], valid[:, :8], q=q)  # compile / load from cache
    rss_before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    out = reduce("percentile", data, valid, q=q)
    peak = _status_kib("VmHWM")
    return {
        "extra_peak_mib": (peak - rss_before) / 1024,
        "output_mib": out.nbytes / 2**20,
        "output_with_count_mib": out.nbytes * (N_BAND + 1) / N_BAND / 2**20,
    }


def peak_memory_in_fresh_process(n_time: int, size: int, q: float) -> dict[str, float] | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    cmd = [sys.executable, __file__, "--_memory", str(n_time), str(size), str(q)]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        print(f"  (peak memory not measured: {err.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run


def run_one(n_time: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from s2mosaic.composite import count, reduce

    size, q, repeat = args.size, args.q, args.repeat
    print(f"\n=== T={n_time} x {N_BAND} bands x {size}² uint16, {MASKED:.0%} masked, q={q} ===")
    t0 = time.perf_counter()
    data, valid = make_cube(n_time, size)
    print(f"cube built in {time.perf_counter() - t0:.1f} s ({data.nbytes / 2**20:.0f} MiB + mask)")
    n_obs = data.size
    rows: list[dict[str, Any]] = []

    floor = memory_floor(data, valid, repeat)
    rows.append({"what": "memory floor: one Numba pass over the bytes", "time": floor})

    reduce("percentile", data[:, :, :16], valid[:, :16], q=q)  # compile or load from cache
    result = reduce("percentile", data, valid, q=q)
    ours = best_of(lambda: reduce("percentile", data, valid, q=q), repeat)
    rows.append({"what": f"s2mosaic percentile q={q} (Numba, parallel)", "time": ours, "ours": 1})
    ours_serial = best_of(lambda: reduce("percentile", data, valid, q=q, parallel=False), 2)
    rows.append({"what": "  same, serial kernel (1 thread)", "time": ours_serial})
    cube, mask = dask_inputs(data, valid, 1024)
    s2mosaic_dask(cube, mask, q)  # compile the serial kernel for this many bands
    rows.append(
        {
            "what": "  same via composite() on Dask, chunks 1024, threads",
            "time": best_of(lambda: s2mosaic_dask(cube, mask, q), 3),
        }
    )
    for method in ("median", "mean", "first", "last", "medoid"):
        reduce(method, data[:, :, :16], valid[:, :16])
        rows.append(
            {
                "what": f"s2mosaic {method}",
                "time": best_of(lambda m=method: reduce(m, data, valid), 1),
            }
        )
    rows.append({"what": "s2mosaic count", "time": best_of(lambda: count(valid), 1)})

    # Baselines: each also checked against our result on its crop.
    def crop(c: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        c = min(c, size)
        w = c if width is None else width
        return data[:, :, :c, :w], valid[:, :c, :w], (size * size) / (c * w)

    def baseline(
        label: str, fn: Callable[..., Any], c: int, width: int | None = None, check: bool = True
    ) -> None:
        d, v, scale = crop(c, width)
        t0 = time.perf_counter()
        got = fn(d, v)
        t = (time.perf_counter() - t0) * scale
        ok = ""
        if check:
            same = np.array_equal(np.asarray(got), result[:, : d.shape[2], : d.shape[3]])
            ok = " [= ours]" if same else " [DIFFERS]"
        note = f"crop {d.shape[2]}x{d.shape[3]}, x{scale:g}" if scale > 1 else "full cube"
        rows.append({"what": f"{label} ({note}){ok}", "time": t, "baseline": 1})

    def np_nanpercentile(d: np.ndarray, v: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = np.nanpercentile(nan_cube(d, v), q, axis=0)
        return np.where(np.isnan(r), 0, np.round(r)).astype(np.uint16)

    def numbagg_nanquantile(d: np.ndarray, v: np.ndarray) -> np.ndarray:
        import numbagg

        r = numbagg.nanquantile(nan_cube(d, v), q / 100, axis=0)
        return np.where(np.isnan(r), 0, np.round(r)).astype(np.uint16)

    def xr_quantile(d: np.ndarray, v: np.ndarray) -> np.ndarray:
        r = xarray_quantile(d, v, q, 1024).values
        return np.where(np.isnan(r), 0, np.round(r)).astype(np.uint16)

    import numbagg

    numbagg.nanquantile(nan_cube(*crop(8)[:2]), q / 100, axis=0)  # compile numbagg
    xr_quantile(*crop(8)[:2])  # first-call costs (imports, Dask's thread pool)
    baseline("np.nanpercentile (float64 NaN cube)", np_nanpercentile, args.numpy_crop)
    baseline(  # full rows: the crop keeps as many 1024² chunks per thread as the full cube
        "xarray .where().quantile(skipna) on Dask, chunks 1024",
        xr_quantile,
        args.xarray_rows,
        width=size,
    )
    baseline("numbagg.nanquantile (float64 NaN cube)", numbagg_nanquantile, args.crop)
    baseline(
        "np.sort + take_along_axis (uint16 sentinel)",
        lambda d, v: sort_take_along_axis(d, v, q),
        args.crop,
    )

    mem = peak_memory_in_fresh_process(n_time, size, q)
    print_table(rows, floor, ours, n_obs)
    if mem:
        print(
            f"peak extra memory of the percentile call (fresh process, VmHWM - VmRSS): "
            f"{mem['extra_peak_mib']:.1f} MiB; its output array (4 bands + the count) is "
            f"{mem['output_with_count_mib']:.1f} MiB"
        )
    gpu = gpu_rows(data, valid, q, repeat, result)
    if gpu:
        print(f"\n--- GPU: {gpu[0]['device']} ---")
        print_table(gpu, gpu[0]["time"], gpu[1]["time"], n_obs)
        print(f"GPU percentile vs the CPU kernel above: {ours / gpu[1]['time']:.0f}x faster")
        rows += gpu
    for r in rows:
        r["T"] = n_time
    if mem:
        rows.append({"T": n_time, "what": "peak extra memory (MiB)", **mem})
    return rows


def gpu_rows(
    data: np.ndarray, valid: np.ndarray, q: float, repeat: int, expected: np.ndarray
) -> list[dict[str, Any]]:
    """The same cube on the GPU, if CuPy finds one: floor, CUDA kernel, sort path, methods."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as err:  # ImportError, or CUDARuntimeError without a driver
        print(f"GPU: not measured ({type(err).__name__}: {err})")
        return []
    from s2mosaic.composite import _gpu, reduce
    from s2mosaic.composite._cpu import PERCENTILE

    def timed(fn: Callable[[], Any], n: int) -> float:
        fn()
        cupy.cuda.Device().synchronize()
        best = math.inf
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            cupy.cuda.Device().synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    d_data, d_valid = cupy.asarray(data), cupy.asarray(valid)
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    got = reduce("percentile", d_data, d_valid, q=q)
    same = bool((cupy.asnumpy(got) == expected).all())
    stacks = (d_data.reshape(data.shape[0], data.shape[1], -1),)
    flat_valid = d_valid.reshape(valid.shape[0], -1)
    rows: list[dict[str, Any]] = [
        {
            "what": "GPU memory floor: device-to-device copy of the same bytes",
            "time": timed(lambda: (d_data.copy(), d_valid.copy()), repeat),
            "device": name,
        },
        {
            "what": f"s2mosaic percentile on GPU (CUDA kernel) [{'= CPU' if same else 'DIFFERS'}]",
            "time": timed(lambda: reduce("percentile", d_data, d_valid, q=q), repeat),
        },
        {
            "what": "  same, the sort-based CuPy path",
            "time": timed(
                lambda: _gpu.reduce_array_api(PERCENTILE, stacks, flat_valid, q / 100, 1, cupy), 2
            ),
        },
    ]
    for method in ("median", "mean", "first", "last", "medoid"):
        rows.append(
            {
                "what": f"s2mosaic {method} on GPU",
                "time": timed(lambda m=method: reduce(m, d_data, d_valid), 1),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], floor: float, ours: float, n_obs: int) -> None:
    print(f"{'what':<78} {'time s':>9} {'Gobs/s':>7} {'x floor':>8} {'ours x':>8}")
    for r in rows:
        t = r["time"]
        speed = ""
        if r.get("baseline"):
            speed = f"{t / ours:.0f}" if t / ours >= 10 else f"{t / ours:.1f}"
        print(f"{r['what']:<78} {t:9.4f} {n_obs / t / 1e9:7.2f} {t / floor:8.2f} {speed:>8}")
    print("Gobs/s: 10^9 band values (T x bands x pixels) per second; 'ours x': baseline / ours")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=2048, help="pixels per side")
    ap.add_argument("--times", type=int, nargs="+", default=[24, 60], help="values of T")
    ap.add_argument("--q", type=float, default=25.0, help="percentile")
    ap.add_argument("--repeat", type=int, default=5, help="runs of the fast measurements")
    ap.add_argument("--crop", type=int, default=512, help="crop side for numbagg and sort")
    ap.add_argument("--numpy-crop", type=int, default=128, help="crop side for NumPy nan*")
    ap.add_argument(
        "--xarray-rows", type=int, default=2048, help="rows (full width) for xarray on Dask"
    )
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    ap.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory:
        n_time, size, q = int(args._memory[0]), int(args._memory[1]), float(args._memory[2])
        print(json.dumps(measure_peak_memory(n_time, size, q)))
        return
    if args.threads:
        numba.set_num_threads(args.threads)
    print(
        f"cores: {os.cpu_count()}, Numba threads: {numba.get_num_threads()}, "
        f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}"
    )
    rows = []
    for n_time in args.times:
        rows += run_one(n_time, args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
