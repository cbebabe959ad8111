"""Mask-first reads (``runtime.prune_dates``, issue 18): band bytes and wall time.

Run:  python benchmarks/bench_prune.py [--dir /tmp/s2mosaic-bench-prune] [--side 1024]
                                       [--tile 512] [--chunks 256] [--cloud 0.4] [--rounds 3]

The demo catalog of ``bench_floor.py`` (two 1200² px tiles either side of 12°E, 12 dates, 4 bands
at 10 m + SCL at 20 m, local DEFLATE COGs), copied with cloudier SCL: per date a cloud fraction
is drawn (mean ``--cloud``: half of it as whole cloudy dates - both MGRS tiles, one overpass - the rest
in 2.56 km cells) and those cells are set to SCL class 9
(high-probability cloud). The bands are unchanged: pruning decides from SCL only. The AOI is
``bench_floor``'s square of ``side`` px on the zone line, the mask ``scl``, percentile 25.

Prints, from the run's own tiles (``TileGrid``) and the pruning's own test
(:func:`s2mosaic._prune.clear_per_chunk`):

- the share of SCL pixels that are cloud, of tile-dates and of chunk-dates (inside the tiles)
  that are fully cloudy (no clear pixel);
- the compressed band bytes the tiles' read chunks need (the COG blocks of each band asset
  that intersect each chunk of each tile's context box, summed) with every date and with the
  dates whose SCL has a clear pixel in the chunk (what ``prune_dates: auto`` reads);
- wall time of ``s2mosaic.run`` with ``prune_dates`` off and auto on ONE LocalCluster
  (2 workers × 1 thread), alternating per round, and the workers' bytes read (``rchar``) from
  the run report; the two stores are checked byte-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import BANDS, _aoi, _needed_blocks, _range  # the helpers live beside this script

CELL = 128  # SCL pixels (20 m): 2.56 km cells of cloud


def cloud_catalog(src: Path, dst: Path, cloud: float, seed: int = 1) -> Path:
    """A copy of the demo catalog at ``src`` (its folder) with cloudier SCL (see the module)."""
    import rasterio

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    by_date: dict[str, list[Path]] = {}
    for p in sorted(dst.rglob("SCL.tif")):
        by_date.setdefault(p.parent.name.split("_")[2], []).append(p)
    # Per date: fully cloudy with probability cloud / 2, else cells cloudy with probability
    # cloud / 2 / (1 - cloud / 2) - mean cloud fraction ``cloud`` (plus the demo's own clouds).
    full = cloud / 2
    part = (cloud - full) / (1 - full)
    for day, paths in enumerate(by_date.values()):
        whole = rng.random() < full
        for p in paths:
            with rasterio.open(p) as s:
                profile, scl = s.profile, s.read(1)
            ny, nx = math.ceil(scl.shape[0] / CELL), math.ceil(scl.shape[1] / CELL)
            # cells on a grid anchored in the tile's CRS: one date's overlap agrees per zone
            x0 = round(profile["transform"].c / 20 / CELL)
            y0 = round(profile["transform"].f / 20 / CELL)
            cells = np.ones((ny, nx), bool) if whole else np.array(
                [[np.random.default_rng([seed, day, y0 - j, x0 + i]).random() < part
                  for i in range(nx)] for j in range(ny)])
            cover = np.kron(cells, np.ones((CELL, CELL), bool))[:scl.shape[0], :scl.shape[1]]
            scl[cover & (scl != 0)] = 9
            with rasterio.open(p, "w", **profile) as d:
                d.write(scl, 1)
    return dst


def shares(spec: Any, items: list[Any], grid: Any, chunks: int) -> dict[str, Any]:
    """Cloud share of SCL pixels, fully cloudy tile-dates and chunk-dates, and the band bytes
    the tiles' chunks need with every date and with the dates mask-first reads keep."""
    import dask

    from s2mosaic._cube import SCL_VAR, load_cube, slice_keys
    from s2mosaic._grid import aoi_mask
    from s2mosaic._pipeline import scl_gate
    from s2mosaic._prune import clear_per_chunk
    from s2mosaic.masks import MaskContext, scl_nodata, valid_mask

    tile_dates = cloudy_tiles = chunk_dates = cloudy_chunks = data_dates = cloudy_data = 0
    bytes_all = bytes_kept = 0
    blocks: dict[tuple[str, Any], int] = {}
    for tile in grid.tiles:
        touching = grid.touching(tile)
        if not touching:
            continue
        box, ys, xs = grid.context(tile)
        cube = load_cube(touching, spec, box)
        aoi = aoi_mask(box, spec.aoi, spec.runtime.chunks)
        valid = (valid_mask(cube[[SCL_VAR]], [SCL_VAR], spec.mask, MaskContext(geobox=box))
                 & aoi)
        has = ~scl_nodata(cube[SCL_VAR]) & aoi
        v, d, clear = dask.compute(valid.isel({valid.dims[-2]: ys, valid.dims[-1]: xs}).data,
                                   has.isel({has.dims[-2]: ys, has.dims[-1]: xs}).data,
                                   clear_per_chunk(cube[SCL_VAR], scl_gate(spec), aoi))
        n = v.shape[0]
        tile_dates += n
        cloudy_tiles += int((~v.any(axis=(1, 2))).sum())
        for y in range(0, v.shape[1], chunks):
            for x in range(0, v.shape[2], chunks):
                c = v[:, y:y + chunks, x:x + chunks].any(axis=(1, 2))
                w = d[:, y:y + chunks, x:x + chunks].any(axis=(1, 2))
                chunk_dates += n
                cloudy_chunks += int((~c).sum())
                data_dates += int(w.sum())
                cloudy_data += int((w & ~c).sum())
        keys = slice_keys(touching, spec)
        order = {k: i for i, k in enumerate(sorted(set(keys)))}
        assert len(order) == n
        crs = str(box.crs)
        for iy in range(clear.shape[1]):
            for ix in range(clear.shape[2]):
                sub = box[iy * chunks:(iy + 1) * chunks, ix * chunks:(ix + 1) * chunks]
                bounds = tuple(sub.boundingbox)
                for item, k in zip(touching, keys, strict=True):
                    for band in BANDS:
                        href = item.assets[band].get_absolute_href() or ""
                        if (href, bounds) not in blocks:
                            blocks[href, bounds] = _needed_blocks(href, bounds, crs)[2]
                        bytes_all += blocks[href, bounds]
                        bytes_kept += blocks[href, bounds] if clear[order[k], iy, ix] else 0
    return {"tile_dates": tile_dates, "cloudy_tile_dates": cloudy_tiles,
            "chunk_dates": chunk_dates, "cloudy_chunk_dates": cloudy_chunks,
            "data_chunk_dates": data_dates, "cloudy_data_chunk_dates": cloudy_data,
            "band_bytes_off": bytes_all, "band_bytes_on": bytes_kept}


def cloud_fraction(items: list[Any]) -> float:
    import rasterio

    cloudy = valid = 0
    for item in items:
        with rasterio.open(item.assets["SCL"].get_absolute_href()) as s:
            scl = s.read(1)
        valid += int((scl != 0).sum())
        cloudy += int(np.isin(scl, (3, 8, 9, 10)).sum())
    return cloudy / max(1, valid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/s2mosaic-bench-prune"))
    ap.add_argument("--side", type=int, default=1024, help="AOI side in 10 m pixels")
    ap.add_argument("--size", type=int, default=1200, help="demo tile side in px")
    ap.add_argument("--tile", type=int, default=512, help="runtime.tile_size")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--cloud", type=float, default=0.4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import dask
    from distributed import Client, LocalCluster

    import s2mosaic
    from s2mosaic._grid import output_geobox, tiles
    from s2mosaic._search import search
    from s2mosaic._select import apply_selection
    from s2mosaic._tiles import TileGrid
    from s2mosaic.demo import demo_spec, make_demo_catalog
    from s2mosaic.masks import context_pixels

    t0 = time.perf_counter()
    demo = make_demo_catalog(args.dir / "demo", seed=0, size=args.size)
    catalog = cloud_catalog(demo.parent, args.dir / "cloudy", args.cloud) / demo.name
    print(f"cloudy catalog: {time.perf_counter() - t0:.1f} s")
    out = args.dir / "out"
    base = demo_spec(catalog, out).replace(
        aoi=_aoi(args.side), mask={"method": "scl"},
        runtime={"chunks": args.chunks, "tile_size": args.tile, "n_workers": 2,
                 "threads_per_worker": 1})
    specs = {p: base.replace(output={"zarr": out / f"{p}.zarr", "overwrite": True},
                             runtime=dataclasses.replace(base.runtime, prune_dates=p))
             for p in ("off", "auto")}
    items = list(apply_selection(base, search(base)))
    gbox = output_geobox(base, items)
    grid = TileGrid(gbox, tiles(gbox, args.tile), context_pixels(base.mask, gbox),
                    base.aoi.odc_geometry().to_crs(gbox.crs), items)
    print(f"output {gbox.shape.y} × {gbox.shape.x} px, {len(grid.tiles)} tiles of {args.tile}, "
          f"chunks {args.chunks}, {len(items)} items; SCL cloud/shadow share "
          f"{cloud_fraction(items):.0%}")
    with dask.config.set(scheduler="threads"):
        s = shares(base, items, grid, args.chunks)
    print(f"fully cloudy tile-dates {s['cloudy_tile_dates']}/{s['tile_dates']} "
          f"({s['cloudy_tile_dates'] / s['tile_dates']:.0%}), chunk-dates "
          f"{s['cloudy_chunk_dates']}/{s['chunk_dates']} "
          f"({s['cloudy_chunk_dates'] / s['chunk_dates']:.0%}); of the chunk-dates with SCL data "
          f"in the AOI {s['cloudy_data_chunk_dates']}/{s['data_chunk_dates']} "
          f"({s['cloudy_data_chunk_dates'] / s['data_chunk_dates']:.0%})")
    print(f"band bytes needed (compressed COG blocks, summed over read chunks): off "
          f"{s['band_bytes_off'] / 1e6:.1f} MB, pruned {s['band_bytes_on'] / 1e6:.1f} MB "
          f"({s['band_bytes_on'] / s['band_bytes_off']:.0%})")

    walls: dict[str, list[float]] = {"off": [], "auto": []}
    read: dict[str, list[int]] = {"off": [], "auto": []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        s2mosaic.run(specs["off"], items=items, client=client)  # warm-up: Numba, GDAL, cache
        for r in range(args.rounds):
            for p in (("off", "auto") if r % 2 == 0 else ("auto", "off")):
                t = time.perf_counter()
                rep = s2mosaic.run(specs[p], items=items, client=client)
                walls[p].append(time.perf_counter() - t)
                read[p].append(rep.bytes_read or 0)
                print(f"round {r + 1} prune {p:<4} {walls[p][-1]:6.2f} s, workers read "
                      f"{read[p][-1] / 1e6:.1f} MB", flush=True)
    ratio = [a / o for a, o in zip(walls["auto"], walls["off"], strict=True)]
    print(f"\nwall off {_range(walls['off'])} s, auto {_range(walls['auto'])} s, auto / off "
          f"{_range(ratio)}; workers read off {statistics.median(read['off']) / 1e6:.1f} MB, "
          f"auto {statistics.median(read['auto']) / 1e6:.1f} MB")
    import xarray as xr

    a, b = (xr.open_zarr(specs[p].output.zarr, mask_and_scale=False) for p in ("off", "auto"))
    same = all(np.array_equal(a[n].values, b[n].values) for n in a.data_vars)
    print(f"stores identical: {same}")


if __name__ == "__main__":
    main()
