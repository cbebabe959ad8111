"""Decode time of chunk reads with files opened per read vs kept open (``runtime.keep_open``).

Run:  python benchmarks/bench_keep_open.py [--dir /tmp/s2mosaic-bench-keep-open] [--offset 100]
                                            [--rounds 3]

On the demo catalog at 2400² px per tile (local DEFLATE COGs, 256 px blocks), one band (B04) of
the 32TQT items (12 dates and a reprocessed duplicate), four 1024 px chunk windows (2 × 2) starting ``offset`` px off the block
grid, one thread, files in the page cache:

- **floor**: each block the four windows touch read and decoded once (GDAL's cache off);
- **open per read**: each window of each file opened, read, closed (odc-loader's way);
- **kept open**: each file opened once, the four windows read from it (GDAL's block cache, as
  ``s2mosaic._datasets`` keeps files for a worker thread);
- **on the block grid**: open per read, the windows moved onto the block grid (fewer blocks).

Prints the best of ``rounds`` for each and its ratio to the floor.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

CHUNK = 1024
BLOCK = 256


def _blocks(w: Window) -> list[tuple[int, int]]:
    return [(r, c) for r in range(int(w.row_off) // BLOCK,
                                  math.ceil((w.row_off + w.height) / BLOCK))
            for c in range(int(w.col_off) // BLOCK, math.ceil((w.col_off + w.width) / BLOCK))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-keep-open"))
    ap.add_argument("--offset", type=int, default=100, help="px off the block grid")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import pystac

    from s2mosaic.demo import make_demo_catalog

    catalog = make_demo_catalog(args.dir / "catalog", seed=0, size=2400)
    items = [i for i in pystac.read_file(str(catalog)).get_items(recursive=True)  # type: ignore[attr-defined]
             if "_32TQT_" in i.id]
    hrefs = sorted(i.assets["B04"].get_absolute_href() for i in items)
    off = args.offset
    windows = [Window(off + j * CHUNK, off + i * CHUNK, CHUNK, CHUNK)
               for i in range(2) for j in range(2)]
    aligned = [Window(j * CHUNK, i * CHUNK, CHUNK, CHUNK) for i in range(2) for j in range(2)]
    needed = sorted({b for w in windows for b in _blocks(w)})

    def floor() -> None:
        with rasterio.Env(GDAL_CACHEMAX=0):
            for h in hrefs:
                with rasterio.open(h) as src:
                    for r, c in needed:
                        src.read(1, window=src.block_window(1, r, c))

    def per_read(wins: list[Window]) -> None:
        for w in wins:
            for h in hrefs:
                with rasterio.open(h, sharing=False) as src:
                    src.read(1, window=w)

    def kept() -> None:
        with rasterio.Env(GDAL_CACHEMAX=64 * 2**20):
            files = {h: rasterio.open(h, sharing=False) for h in hrefs}
            try:
                for w in windows:
                    for h in hrefs:
                        files[h].read(1, window=w)
            finally:
                for f in files.values():
                    f.close()

    rows = {"floor": floor, "open per read": lambda: per_read(windows), "kept open": kept,
            "on the block grid": lambda: per_read(aligned)}
    for fn in rows.values():  # warm-up: page cache, GDAL
        fn()
    best = {}
    for name, fn in rows.items():
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    print(f"{len(hrefs)} files, 4 windows of {CHUNK}² px at offset {off}: {len(needed)} blocks "
          f"needed, {sum(len(_blocks(w)) for w in windows)} block reads per pass")
    for name, t in best.items():
        print(f"{name:<18} {t:.3f} s  {t / best['floor']:.2f} × floor")


if __name__ == "__main__":
    main()
