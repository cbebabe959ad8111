"""The fused per-chunk task on NumPy (``s2mosaic._fused``) against the layered CPU path.

Run:  python benchmarks/bench_fused.py [--size 600] [--chunks 256] [--repeat 3] [--device cpu]

On the demo catalog (generated under a temporary directory), with all cores (Dask's threaded
scheduler), prints in one run, per mask × composite method:

- ``compute``: the cube read once and held in memory, so only masking + compositing is timed:
  the layered graph (nodata / SCL / dilation / AOI layers, then the composite task) against the
  fused graph (one task per chunk);
- ``with reads``: the same from the COGs (what a run pays), percentile only;
- the ratio fused / layered (< 1: fused is faster) and the number of tasks in each graph.

Both results are checked byte-identical before a time is printed. ``--device gpu`` times the
fused task on CuPy against the same layered CPU path (needs CuPy and a GPU; see gpu_check.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2mosaic._cube import load_cube  # noqa: E402
from s2mosaic._grid import output_geobox  # noqa: E402
from s2mosaic._search import search  # noqa: E402
from s2mosaic._select import apply_selection  # noqa: E402
from s2mosaic.demo import demo_spec, make_demo_catalog  # noqa: E402
from tests.test_fused import fused_path as fused  # noqa: E402
from tests.test_fused import layered_path as layered  # noqa: E402

MASKS = {"scl": {"method": "scl"}, "scl+dilation 3": {"method": "scl", "dilation": 3}}
METHODS = ("percentile", "mean", "medoid")


def footprints(items: Any) -> Any:
    import shapely
    import shapely.geometry

    return shapely.union_all([shapely.geometry.shape(i.geometry) for i in items])


def n_tasks(ds: xr.Dataset) -> int:
    return len(dict(ds.__dask_graph__()))


def alternate(repeat: int, build_a: Any, build_b: Any) -> tuple[float, float, xr.Dataset,
                                                                 xr.Dataset]:
    """Best of ``repeat`` for two graphs timed in turn (a, b, a, b, ...), so that a change of
    machine load mid-run hits both alike."""
    ta = tb = float("inf")
    a = b = None
    for _ in range(repeat):
        t, a = best_of(1, build_a)
        ta = min(ta, t)
        t, b = best_of(1, build_b)
        tb = min(tb, t)
    assert a is not None and b is not None
    return ta, tb, a, b


def best_of(repeat: int, build: Any) -> tuple[float, xr.Dataset]:
    """Fastest of ``repeat`` computes of the graph ``build()`` returns (built each time)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        ds = build()
        t0 = time.perf_counter()
        out = ds.compute()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return best, out


def same(a: xr.Dataset, b: xr.Dataset) -> None:
    for name in a.data_vars:
        if a[name].values.tobytes() != b[name].values.tobytes():
            raise SystemExit(f"{name}: fused and layered results differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=600, help="demo tile width in pixels")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="array module of the fused task")
    ap.add_argument("--catalog", type=Path, help="an existing demo catalog.json")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    catalog = args.catalog or make_demo_catalog(Path(tmp.name) / "catalog", size=args.size)
    spec = demo_spec(catalog, Path(tmp.name) / "out").replace(runtime={"chunks": args.chunks})
    # The whole area of the two tiles (the demo AOI is a small window of it).
    spec = spec.replace(aoi=list(footprints(search(spec)).bounds))
    items = apply_selection(spec, search(spec))
    gbox = output_geobox(spec, items)
    cores = os.cpu_count() or 1
    dask.config.set(scheduler="threads", num_workers=cores)
    t0 = time.perf_counter()
    cube = load_cube(items, spec, gbox).persist()
    read_s = time.perf_counter() - t0
    shape = (cube.sizes["time"], *gbox.shape.yx)
    print(f"demo cube {shape[0]} × {shape[1]} × {shape[2]} px, {len(spec.bands)} bands, chunks "
          f"{args.chunks}, {cores} cores (threads), best of {args.repeat} timed in turn; read into memory "
          f"{read_s:.2f} s; fused on {args.device}\n")
    print("| case | mask | method | layered s | fused s | fused / layered | tasks layered | "
          "tasks fused |")
    print("|---|---|---|---|---|---|---|---|")
    for mask_name, mask in MASKS.items():
        for method in METHODS:
            comp: dict[str, Any] = {"method": method}
            if method == "percentile":
                comp["percentile"] = 25
            s = spec.replace(mask=mask, composite=comp)
            tl, tf, a, b = alternate(args.repeat, lambda s=s: layered(s, cube, gbox),
                                     lambda s=s: fused(s, cube, gbox, args.device))
            same(a, b)
            print(f"| compute | {mask_name} | {method} | {tl:.3f} | {tf:.3f} | {tf / tl:.2f} | "
                  f"{n_tasks(layered(s, cube, gbox))} | {n_tasks(fused(s, cube, gbox))} |")
    for mask_name, mask in MASKS.items():
        s = spec.replace(mask=mask)
        tl, tf, a, b = alternate(
            args.repeat, lambda s=s: layered(s, load_cube(items, s, gbox), gbox),
            lambda s=s: fused(s, load_cube(items, s, gbox), gbox, args.device))
        same(a, b)
        lazy = load_cube(items, s, gbox)
        print(f"| with reads | {mask_name} | percentile | {tl:.3f} | {tf:.3f} | {tf / tl:.2f} | "
              f"{n_tasks(layered(s, lazy, gbox))} | {n_tasks(fused(s, lazy, gbox))} |")
    print(f"\nall results byte-identical (checked); pixels {int(np.prod(shape[1:]))}")


if __name__ == "__main__":
    main()
