"""Gap filling: the exact tridiagonal solve against SpaceEye's fixed-point iteration.

Run:  python benchmarks/bench_gapfill.py [--size 512] [--bands 4] [--window 48] [--iterations 200]

One 48-day window (SpaceEye's ``duration``) of ``bands`` x ``size``² pixels: an acquisition every
5 days (10 of 48 days), each clear with probability 0.5 per pixel (i.i.d., fixed seed), damping
0.1. On the same data, in one run:

- s2mosaic's solver (:func:`s2mosaic._timeseries_kernels.solve_smoother`: the Thomas algorithm
  vectorised over pixels, float64) as the gap-fill task calls it: pixel blocks of
  ``gapfill_mod._PIXEL_BLOCK``, the bands sharing the mask's pivots; and once on the whole array;
- SpaceEye's fixed-point iteration (``x <- W (m a + (1 - m) x)``, ``W = (I + lambda L)^-1``, a
  dense 48 x 48 product per step, 200 steps as FarmVibes.AI's ``max_iter``; no early stop, since
  SpaceEye checks convergence only every 5 steps against a 1e-3 tolerance and our data does not
  reach it) in NumPy with float32 (what SpaceEye runs in torch) and float64 (the precision of
  ours). It runs on a crop of ``--crop`` pixels and is scaled linearly to the full array; the
  row says so;
- the accuracy: the largest difference to a dense ``numpy.linalg.solve`` of the normal
  equations on 2000 pixels, for ours and for the iteration after 200 steps;
- ``gapfill_mod.gapfill`` end to end on an in-memory Dask cube (one year, an acquisition every
  5 days, daily output, windows of 48 days overlapping by half, threaded scheduler);
- with CuPy and a GPU: the same solver on the device.

Throughput is in pixel-days per second: pixels x days of the window, every band included (one
pixel-day = ``bands`` values). Times are the best of ``--repeat`` runs. The load average is
printed before and after.
"""

from __future__ import annotations

import os

# Both sides single-threaded: our solver is one NumPy thread, and OpenBLAS spinning on both cores
# of a shared 2-core machine made the iteration's times swing 10x between runs. Run with
# OPENBLAS_NUM_THREADS=2 to give the iteration's matrix products both cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse

import numpy as np
from bench_composite import best_of  # the same timing rule as the composite benchmark

from s2mosaic import _gapfill as gapfill_mod
from s2mosaic._timeseries_kernels import smooth_fixed_point, solve_smoother

SEED = 20240601
DAMPING = 0.1


def make_window(size: int, n_bands: int, n_days: int, seed: int = SEED
                ) -> tuple[np.ndarray, np.ndarray]:
    """(days, bands, pixels) float64 values and (days, 1, pixels) 0/1 weights."""
    rng = np.random.default_rng(seed)
    n_pix = size * size
    weights = np.zeros((n_days, 1, n_pix))
    values = np.zeros((n_days, n_bands, n_pix))
    for d in range(0, n_days, 5):
        weights[d, 0] = rng.random(n_pix) < 0.5
        values[d] = rng.integers(1, 10_000, (n_bands, n_pix))
    return values, weights


def ours_blocked(rhs: np.ndarray, weights: np.ndarray, block: int) -> None:
    n_pix = rhs.shape[-1]
    for p0 in range(0, n_pix, block):
        sl = slice(p0, min(p0 + block, n_pix))
        solve_smoother(rhs[..., sl], weights[..., sl], DAMPING)


def dense(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n = values.shape[0]
    diff = np.diff(np.eye(n), axis=0)
    lap = DAMPING * diff.T @ diff
    out = np.full(values.shape, np.nan)
    for p in range(values.shape[-1]):
        w = weights[:, 0, p]
        if w.any():
            out[:, :, p] = np.linalg.solve(np.diag(w) + lap, w[:, None] * values[:, :, p])
    return out


def bench_gapfill_call(size: int, n_bands: int, repeat: int) -> tuple[float, int]:
    import dask
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(SEED)
    days = list(range(0, 365, 5))
    shape = (len(days), size, size)
    t0 = np.datetime64("2024-01-01T10:00", "ns")
    coords = {"time": [t0 + np.timedelta64(d, "D") for d in days]}
    dims = ("time", "y", "x")
    chunks = (-1, 256, 256)
    cube = xr.Dataset({f"b{b}": (dims, da.from_array(rng.integers(1, 10_000, shape, np.uint16),
                                                      chunks=chunks))
                       for b in range(n_bands)}, coords=coords)
    valid = xr.DataArray(da.from_array(rng.random(shape) < 0.5, chunks=chunks), dims=dims,
                         coords=coords)
    out = gapfill_mod.gapfill(cube, valid, gapfill_mod.GapFill(damping=DAMPING))
    with dask.config.set(scheduler="threads"):
        t = best_of(lambda: out.compute(), repeat)
    return t, out.sizes["time"] * size * size


def gpu_rows(values: np.ndarray, weights: np.ndarray, repeat: int, pixel_days: int) -> None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as err:  # ImportError, or CUDARuntimeError without a driver
        print(f"GPU: not measured ({type(err).__name__}: {err})")
        return
    d_rhs = cupy.asarray(values * weights)
    d_w = cupy.asarray(weights)

    def run() -> None:
        solve_smoother(d_rhs, d_w, DAMPING)
        cupy.cuda.Device().synchronize()

    run()
    t = best_of(run, repeat)
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"{'s2mosaic solver on GPU (' + str(name) + ')':<70} {t:9.4f} {pixel_days / t / 1e6:10.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="pixels per side")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--window", type=int, default=48, help="days (SpaceEye's duration)")
    ap.add_argument("--iterations", type=int, default=200, help="fixed-point steps")
    ap.add_argument("--crop", type=int, default=32768, help="pixels the iteration runs on")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gapfill-size", type=int, default=256, help="side of the gapfill() cube")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"cores: {os.cpu_count()}, load average: {load[0]:.2f} {load[1]:.2f}, "
          f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    values, weights = make_window(args.size, args.bands, args.window)
    rhs = values * weights
    n_pix = values.shape[-1]
    pixel_days = n_pix * args.window
    print(f"window: {args.window} days x {args.bands} bands x {args.size}² px, "
          f"{weights.mean():.1%} of pixel-days clear")
    print(f"{'what':<70} {'time s':>9} {'Mpx-day/s':>10}")
    block = gapfill_mod._PIXEL_BLOCK
    ours = best_of(lambda: ours_blocked(rhs, weights, block), args.repeat)
    print(f"{f's2mosaic solver, pixel blocks of {block} (as in gapfill)':<70} {ours:9.4f} "
          f"{pixel_days / ours / 1e6:10.1f}")
    whole = best_of(lambda: solve_smoother(rhs, weights, DAMPING), args.repeat)
    print(f"{'s2mosaic solver, whole array at once':<70} {whole:9.4f} "
          f"{pixel_days / whole / 1e6:10.1f}")
    crop = min(args.crop, n_pix)
    scale = n_pix / crop
    fixed = {}
    for dtype in (np.float32, np.float64):
        v, w = values[..., :crop].astype(dtype), weights[..., :crop].astype(dtype)
        t = best_of(lambda v=v, w=w: smooth_fixed_point(v, w, DAMPING, iterations=args.iterations),
                    1) * scale
        fixed[np.dtype(dtype).name] = t
        what = (f"fixed-point iteration, {args.iterations} steps, {np.dtype(dtype).name} "
                f"({crop} px, x{scale:.0f})")
        print(f"{what:<70} {t:9.4f} {pixel_days / t / 1e6:10.1f}")
    for name, t in fixed.items():
        print(f"speedup over the {name} iteration: {t / ours:.0f}x (blocked), "
              f"{t / whole:.0f}x (whole array)")
    sub = slice(0, 2000)
    exact = dense(values[..., sub], weights[..., sub])
    got = solve_smoother(rhs[..., sub], weights[..., sub], DAMPING)
    it = smooth_fixed_point(values[..., sub], weights[..., sub], DAMPING,
                            iterations=args.iterations)
    ok = ~np.isnan(exact)
    print(f"max |error| vs dense solve (reflectance x 10000): ours "
          f"{np.abs(got - exact)[ok].max():.2e}, iteration after {args.iterations} steps "
          f"{np.abs(it - exact)[ok].max():.2e}")
    gpu_rows(values, weights, args.repeat, pixel_days)
    t, out_pixel_days = bench_gapfill_call(args.gapfill_size, args.bands, 1)
    print(f"{f'gapfill() end to end: 1 year, {args.gapfill_size}² px, daily, threads':<70} "
          f"{t:9.4f} {out_pixel_days / t / 1e6:10.1f}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f}")


if __name__ == "__main__":
    main()
