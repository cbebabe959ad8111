"""Cross-grid reads: one GDAL warp per read against one index map per source grid and chunk.

Run:  python benchmarks/bench_warp.py [--dir /tmp/s2mosaic-bench-floor] [--side 1024]
                                      [--chunks 512] [--rounds 3]

On bench_floor's demo catalog (two 1200² px tiles either side of the 12°E UTM zone line, 12
dates, 4 bands at 10 m + SCL at 20 m, local DEFLATE COGs in the page cache) and its square AOI of
``side`` px, the whole cube (every band and SCL, every date) is loaded with the synchronous
scheduler (one thread: the read path alone, no scheduler) onto three output grids - EPSG:32632
(the 33TTN half of the items is warped, the 32TQT half pasted), EPSG:3857 and EPSG:4326 (every
read warped) - with ``runtime.warp_reuse: off`` (GDAL warps every read) and ``auto`` (the
default: :mod:`s2mosaic._warp`), alternating, and checks the two cubes are equal byte for byte.
Prints the median [min-max] seconds of each and the ratio off / auto per round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import _aoi, _range  # the helpers live beside this script

GRIDS = {"EPSG:32632": 10, "EPSG:3857": 10, "EPSG:4326": 0.0001}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-floor"))
    ap.add_argument("--side", type=int, default=1024, help="AOI side in 10 m pixels")
    ap.add_argument("--chunks", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import dask

    from s2mosaic import _warp
    from s2mosaic._cube import load_cube
    from s2mosaic._grid import output_geobox
    from s2mosaic._search import search
    from s2mosaic._select import apply_selection
    from s2mosaic.demo import demo_spec, make_demo_catalog

    catalog = make_demo_catalog(args.dir / "catalog", seed=0, size=1200)
    base = demo_spec(catalog, args.dir / "out").replace(aoi=_aoi(args.side))
    print(f"demo catalog, AOI {args.side} px, chunks {args.chunks}, {args.rounds} rounds, "
          "synchronous scheduler; cube = 4 bands + SCL, every date")
    for crs, res in GRIDS.items():
        spec = base.replace(grid={"crs": crs, "resolution": res})
        items = list(apply_selection(spec, search(spec)))
        gbox = output_geobox(spec, items)
        times: dict[str, list[float]] = {"off": [], "auto": []}
        cubes = {}
        with dask.config.set(scheduler="synchronous"):
            for r in range(args.rounds + 1):  # the first round warms GDAL and the page cache
                for mode in ("off", "auto") if r % 2 else ("auto", "off"):
                    _warp._cache.clear()  # every round builds its maps again
                    s = spec.replace(runtime={"chunks": args.chunks, "warp_reuse": mode})
                    cube = load_cube(items, s, gbox)
                    t0 = time.perf_counter()
                    cubes[mode] = cube.compute()
                    if r:
                        times[mode].append(time.perf_counter() - t0)
        same = all(np.array_equal(cubes["off"][v].values, cubes["auto"][v].values)
                   for v in cubes["off"].data_vars)
        ratio = [o / a for o, a in zip(times["off"], times["auto"], strict=True)]
        print(f"{crs:<11} {gbox.shape.y} × {gbox.shape.x} px: GDAL warp per read "
              f"{_range(times['off'])} s, index maps {_range(times['auto'])} s, off / auto "
              f"{_range(ratio)} ×, byte-identical: {same}")
        if not same:
            raise SystemExit("the cubes differ")
    print(f"numpy {np.__version__}")


if __name__ == "__main__":
    main()
