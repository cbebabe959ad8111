"""Cloud-mask agreement on the real data in ../shared/data/s2, and OmniCloudMask throughput.

Run:  python benchmarks/bench_masks.py [--data ../shared/data/s2] [--ocm-weights DIR]
                                       [--throughput-size 512]

Prints, in one run:
- eo-learn L1C series (5 dates, 101 × 100 px): our chunked s2cloudless masker (32 px chunks)
  against Sentinel Hub's server-side ``CLM`` and against eo-learn's local ``CLM_S2C``: Cohen's
  kappa, IoU of the cloud class, pixel agreement;
- Barbellino L2A pair (24 × 42 px, the only real series with SCL): SCL's own cloud / shadow
  fractions (there is no independent reference there);
- OmniCloudMask where its weights are present (``--ocm-weights`` or $S2MOSAIC_OCM_WEIGHTS):
  OCM and OCM ∪ SCL against SCL on Barbellino, OCM against ``CLM`` on the L1C series;
  otherwise "weights absent: skipped";
- OCM throughput (megapixels/s) of our per-chunk path against ``omnicloudmask.predict_from_array``
  on the same array, on this machine's device (CUDA when there is one, with peak GPU memory),
  with randomly initialised models of OCM's architecture (speed does not depend on the weights);
- ukis-csmask (``--csmask``; ``--csmask-only`` skips the rest), trained weights: 4- and 6-band
  models against ``CLM`` on the L1C series (kappa, every date cloudy/clear), against SCL on
  Barbellino and the 29RKH tile (kappa), chunked-with-halo against whole-image agreement per
  chunking and halo (29RKH at 100 m), megapixels/s per core and peak memory per window size
  (each in a fresh process, one onnxruntime thread), and the OCM graph-build cost with
  in-memory models (the token of ``InMemoryModels`` against hashing the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import rasterio
import xarray as xr

from s2mosaic._cube import SCL_VAR, load_cube
from s2mosaic._grid import native_geobox, output_geobox
from s2mosaic._spec import OCM_WEIGHTS_ENV, MosaicSpec
from s2mosaic.masks import MaskContext

REPO = Path(__file__).resolve().parents[1]
SCL_CLOUD = (8, 9, 10)
SCL_SHADOW = (3,)


def kappa_iou(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Cohen's kappa, IoU of the True (cloud) class, and pixel agreement of two boolean masks."""
    pred, ref = pred.ravel().astype(bool), ref.ravel().astype(bool)
    po = float((pred == ref).mean())
    p1, r1 = pred.mean(), ref.mean()
    pe = float(p1 * r1 + (1 - p1) * (1 - r1))
    kappa = 1.0 if pe == 1 else (po - pe) / (1 - pe)
    union = (pred | ref).sum()
    iou = float((pred & ref).sum() / union) if union else 1.0
    return kappa, iou, po


def _items(data: Path, collection: str, contains: str = "") -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(data / "catalog.json"))
    items = [i for i in cat.get_items(recursive=True)
             if i.collection_id == collection and contains in i.id]
    for i in items:
        i.make_asset_hrefs_absolute()
    return sorted(items, key=lambda i: i.datetime)


def _read(items: list[pystac.Item], key: str) -> np.ndarray:
    out = []
    for item in items:
        with rasterio.open(item.assets[key].get_absolute_href()) as src:
            out.append(src.read(1))
    return np.stack(out)


def _row(name: str, pred: np.ndarray, ref: np.ndarray) -> str:
    k, iou, po = kappa_iou(pred, ref)
    # kappa is uninformative when the reference holds one class only (all clear / all cloud)
    ks = f"{k:.4f}" if 0 < ref.mean() < 1 else "n/a (ref one class)"
    return (f"| {name} | {ks} | {iou:.4f} | {100 * po:.2f} % | {100 * pred.mean():.1f} % | "
            f"{100 * ref.mean():.1f} % |")


HEADER = ("| masker vs reference | kappa | IoU (cloud) | agreement | cloud (masker) | cloud (ref) |\n"
          "|---|---|---|---|---|---|")


def eolearn(data: Path, weights: Path | None) -> list[str]:
    from s2mosaic.masks.s2cloudless import s2cloudless_clouds

    items = _items(data, "sentinel-2-l1c-eolearn")
    gbox = native_geobox(items[0], "B04")
    spec = MosaicSpec(aoi=[0, 0, 1, 1], period=["2015-07-01", "2015-09-30"],
                      source={"stac": str(data / "catalog.json"),
                              "collection": "sentinel-2-l1c-eolearn"},
                      bands=["B04"], mask={"method": "s2cloudless"},
                      runtime={"chunks": 32, "scheduler": "synchronous"})
    cube = load_cube(items, spec, gbox)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        ours = s2cloudless_clouds(cube, spec.mask).values
    dt = time.perf_counter() - t0
    clm, clm_s2c = _read(items, "CLM").astype(bool), _read(items, "CLM_S2C").astype(bool)
    rows = [HEADER,
            _row("s2cloudless (ours, 32 px chunks) vs Sentinel Hub CLM, 5 dates", ours, clm),
            _row("s2cloudless (ours) vs eo-learn CLM_S2C, 5 dates", ours, clm_s2c)]
    for i, item in enumerate(items):
        rows.append(_row(f"  {item.datetime:%Y-%m-%d} ours vs CLM", ours[i], clm[i]))
    rows.append(f"\ns2cloudless masker (load 13 bands + classify + average + dilate, 16 chunks × 5 "
                f"dates, synchronous): {dt:.2f} s")
    if weights is None:
        rows.append("\nOCM vs CLM on the L1C series: weights absent: skipped")
    else:
        spec_ocm = spec.replace(mask={"method": "ocm", "ocm_weights": str(weights)})
        cube_ocm = load_cube(items, spec_ocm, gbox)
        from s2mosaic.masks.omnicloud import ocm_classes

        with dask.config.set(scheduler="synchronous"):
            cls = ocm_classes(cube_ocm, spec_ocm.mask, MaskContext(geobox=gbox, gpu=False)).values
        rows.append(HEADER)
        rows.append(_row("OCM thick+thin cloud vs CLM (L1C, 20 m)", (cls == 1) | (cls == 2), clm))
    return rows


def barbellino(data: Path, weights: Path | None) -> list[str]:
    items = _items(data, "sentinel-2-l2a", "Barbellino")
    spec = MosaicSpec(aoi=[10.0416, 46.0641, 10.0448, 46.0679], period=["2017-01-01", "2019-12-31"],
                      source={"stac": str(data / "catalog.json")}, bands=["red", "nir"],
                      grid={"resolution": "native"},
                      runtime={"chunks": 16, "scheduler": "synchronous"})
    gbox = output_geobox(spec, items)
    cube = load_cube(items, spec, gbox)
    with dask.config.set(scheduler="synchronous"):
        scl = cube[SCL_VAR].values
    rows = ["| date | SCL cloud (8, 9, 10) | SCL shadow (3) | SCL nodata (0) | "
            "SCL invalid (default classes) |", "|---|---|---|---|---|"]
    for i, item in enumerate(items):
        s = scl[i]
        rows.append(f"| {item.datetime:%Y-%m-%d} | {100 * np.isin(s, SCL_CLOUD).mean():.1f} % | "
                    f"{100 * np.isin(s, SCL_SHADOW).mean():.1f} % | {100 * (s == 0).mean():.1f} % | "
                    f"{100 * np.isin(s, spec.mask.scl_classes).mean():.1f} % |")
    if weights is None:
        rows.append("\nOCM / OCM ∪ SCL vs SCL on Barbellino: weights absent: skipped")
        return rows
    from s2mosaic.masks.omnicloud import ocm_classes

    spec_ocm = spec.replace(mask={"method": "ocm+scl", "ocm_weights": str(weights)})
    cube_ocm = load_cube(items, spec_ocm, gbox)
    with dask.config.set(scheduler="synchronous"):
        cls = ocm_classes(cube_ocm, spec_ocm.mask, MaskContext(geobox=gbox, gpu=False)).values
    ref = np.isin(scl, SCL_CLOUD)
    ocm_cloud = (cls == 1) | (cls == 2)
    rows += ["", HEADER,
             _row("OCM thick+thin cloud vs SCL 8/9/10", ocm_cloud, ref),
             _row("OCM ∪ SCL cloud vs SCL 8/9/10", ocm_cloud | ref, ref),
             _row("OCM any non-clear vs SCL default classes", cls != 0,
                  np.isin(scl, spec.mask.scl_classes))]
    return rows


def throughput(size: int, dates: int) -> list[str]:
    """Our per-chunk path vs predict_from_array on the same (dates, 3, size, size) array."""
    from s2mosaic._spec import MaskSpec
    from s2mosaic.masks._chunks import map_overlap_exact  # noqa: F401  (the path measured)
    from s2mosaic.masks.omnicloud import OCM_WEIGHT_FILES, import_omnicloudmask, ocm_classes

    import_omnicloudmask()
    import segmentation_models_pytorch as smp
    import torch
    from omnicloudmask import predict_from_array

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # what our masker sets on CPU workers: same for both paths
    torch.manual_seed(0)
    models = [smp.Unet(encoder_name=w.timm_model_name, encoder_weights=None, in_channels=3,
                       classes=4).eval().to(device) for w in OCM_WEIGHT_FILES]
    rng = np.random.default_rng(0)
    arr = rng.integers(500, 6000, (dates, 3, size, size)).astype(np.uint16)
    chunk = size // 2
    mask = MaskSpec(method="ocm", ocm_resolution=20, ocm_halo=32)
    coords = {"time": np.arange(dates), "y": 20.0 * np.arange(size)[::-1], "x": 20.0 * np.arange(size)}
    import dask.array as da

    cube = xr.Dataset({n: xr.DataArray(da.from_array(arr[:, k], chunks=(dates, chunk, chunk)),
                                       dims=("time", "y", "x"), attrs={"nodata": 0})
                       for k, n in enumerate(["B04", "B03", "B8A"])},
                      coords=coords).assign_attrs(mask_bands=["B04", "B03", "B8A"])
    lines = [f"device: {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU, 1 torch thread'}); "
             f"array {dates} × 3 × {size} × {size} at 20 m (factor 1), our chunks {chunk} px + "
             f"halo {mask.ocm_halo} px, patch {mask.ocm_patch_size}/overlap {mask.ocm_overlap}"]
    # warm-up (cuDNN autotune, lazy init) on both paths
    predict_from_array(arr[0, :, :64, :64], custom_models=models, inference_device=device,
                       patch_size=64, patch_overlap=0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for t in range(dates):
        predict_from_array(arr[t], custom_models=models, inference_device=device)
    lib = time.perf_counter() - t0
    lib_mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        ocm_classes(cube, mask, MaskContext(gpu=device == "cuda", models=models)).values  # noqa: B018
    ours = time.perf_counter() - t0
    ours_mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    mpx = dates * size * size / 1e6
    lines += ["| path | time | Mpx/s | peak GPU memory |", "|---|---|---|---|",
              f"| omnicloudmask.predict_from_array (whole array, per date) | {lib:.2f} s | "
              f"{mpx / lib:.3f} | {lib_mem:.0f} MiB |",
              f"| s2mosaic per-chunk path (map_overlap, synchronous) | {ours:.2f} s | "
              f"{mpx / ours:.3f} | {ours_mem:.0f} MiB |",
              f"\nours / library time: {ours / lib:.2f}"]
    return lines


# -- ukis-csmask (issue 17) -------------------------------------------------------------------
def _csmask_cube(data: Path, collection: str, contains: str, bands: int, chunks: int = 1024,
                 level: str | None = None, gbox: Any = None) -> tuple[xr.Dataset, MosaicSpec, Any]:
    items = _items(data, collection, contains)
    gbox = gbox if gbox is not None else native_geobox(items[0], "B04")
    spec = MosaicSpec(aoi=[0, 0, 1, 1], period=["2015-01-01", "2020-12-31"],
                      source={"stac": str(data / "catalog.json"), "collection": collection},
                      bands=["B04"], mask={"method": "csmask+scl" if "l2a" in collection else
                                           "csmask", "csmask_bands": bands,
                                           "csmask_level": level},
                      runtime={"chunks": chunks, "scheduler": "synchronous"})
    return load_cube(items, spec, gbox), spec, gbox


def _classes(cube: xr.Dataset, spec: MosaicSpec, gbox: Any, **mask: Any) -> np.ndarray:
    from s2mosaic.masks.csmask import csmask_classes

    m = dataclasses.replace(spec.mask, **mask) if mask else spec.mask
    with dask.config.set(scheduler="synchronous"):
        return csmask_classes(cube, m, MaskContext(geobox=gbox, gpu=False)).values


def csmask_quality(data: Path) -> list[str]:
    rows: list[str] = []
    items = _items(data, "sentinel-2-l1c-eolearn")
    clm = _read(items, "CLM").astype(bool)
    rows += ["**eo-learn L1C series vs Sentinel Hub `CLM`** (5 dates, 101 × 100 px, 30 m model "
             "resolution = 3 × 3 blocks)", "", HEADER]
    dates = []
    for bands in (4, 6):
        cube, spec, gbox = _csmask_cube(data, "sentinel-2-l1c-eolearn", "", bands)
        t0 = time.perf_counter()
        cls = _classes(cube, spec, gbox)
        dt = time.perf_counter() - t0
        cloud = cls == 1
        rows.append(_row(f"csmask {bands}-band L1C cloud vs CLM (whole series, {dt:.1f} s)",
                         cloud, clm))
        frac = cloud.mean(axis=(1, 2))
        right = sum(bool(f > 0.5) == bool(r.mean() > 0.5) for f, r in zip(frac, clm, strict=True))
        dates.append(f"{bands}-band: {right}/5 dates right; cloud fraction per date "
                     + ", ".join(f"{i.datetime:%m-%d} {100 * f:.1f} % (CLM {100 * r.mean():.0f} %)"
                                 for i, f, r in zip(items, frac, clm, strict=True)))
    rows += ["", *dates]
    for name, contains in (("Barbellino pair (24 × 42 px at 10 m)", "Barbellino"),
                           ("29RKH tile (1098 × 1098 px at 100 m; SCL from 200 m)", "29RKH")):
        rows += ["", f"**{name} vs SCL**", "", HEADER]
        for bands in (4, 6):
            cube, spec, gbox = _csmask_cube(data, "sentinel-2-l2a", contains, bands)
            with dask.config.set(scheduler="synchronous"):
                scl = cube[SCL_VAR].values
            cls = _classes(cube, spec, gbox)
            ok = scl != 0
            rows.append(_row(f"csmask {bands}-band L2A cloud vs SCL 8/9/10", (cls == 1)[ok],
                             np.isin(scl, SCL_CLOUD)[ok]))
            rows.append(_row(f"csmask {bands}-band cloud+shadow vs SCL 3/8/9/10",
                             ((cls == 1) | (cls == 2))[ok],
                             np.isin(scl, SCL_CLOUD + SCL_SHADOW)[ok]))
    return rows


def csmask_chunking(data: Path) -> list[str]:
    """Agreement of chunked-with-halo classes with one window over the whole 29RKH tile."""
    cube, spec, gbox = _csmask_cube(data, "sentinel-2-l2a", "29RKH", 4, chunks=2048)
    whole = _classes(cube, spec, gbox)
    rows = ["| chunks (px) | halo (model px) | agreement with whole image | differing pixels |",
            "|---|---|---|---|"]
    for chunks, halo in ((1024, 0), (1024, 32), (1024, 64), (512, 0), (512, 64), (256, 64)):
        c, _, _ = _csmask_cube(data, "sentinel-2-l2a", "29RKH", 4, chunks=chunks)
        got = _classes(c, spec, gbox, csmask_halo=halo)
        rows.append(f"| {chunks} | {halo} | {100 * (got == whole).mean():.3f} % | "
                    f"{int((got != whole).sum())} |")
    return rows


def _speed_child(window: int, bands: int, conn: Any) -> None:
    """In a fresh process: one session, then classify a (bands, window, window) array."""
    import resource

    from s2mosaic.masks.csmask import CsmaskParams, _session, csmask_window

    session, meta = _session(CsmaskParams(bands, "L2A", 1, False))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.6, (bands, window, window)).astype(np.float32)
    csmask_window(x[:, :64, :64], session, meta)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    csmask_window(x, session, meta)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send((dt, base / 1024, peak / 1024))


def csmask_speed(windows: tuple[int, ...] = (256, 512, 1024, 2048)) -> list[str]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = ["| model | window (model px) | time | Mpx/s per core | peak RSS (after session) |",
            "|---|---|---|---|---|"]
    for bands in (4, 6):
        for w in windows:
            a, b = ctx.Pipe()
            p = ctx.Process(target=_speed_child, args=(w, bands, b))
            p.start()
            dt, base, peak = a.recv()
            p.join()
            rows.append(f"| {bands}-band | {w} | {dt:.2f} s | {w * w / 1e6 / dt:.3f} | "
                        f"{peak:.0f} MiB ({base:.0f}) |")
    return rows


def ocm_graph_cost() -> list[str]:
    """Tokenize and graph-build time of OCM with in-memory models (64 chunks)."""
    import dask.array as da
    from dask.base import tokenize

    from s2mosaic._spec import MaskSpec
    from s2mosaic.masks.omnicloud import (
        OCM_WEIGHT_FILES,
        InMemoryModels,
        import_omnicloudmask,
        ocm_classes,
    )

    import_omnicloudmask()
    import segmentation_models_pytorch as smp

    models = [smp.Unet(encoder_name=w.timm_model_name, encoder_weights=None, in_channels=3,
                       classes=4).eval() for w in OCM_WEIGHT_FILES]
    t0 = time.perf_counter()
    tokenize(models)
    raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokenize(InMemoryModels(tuple(models)))
    ours = time.perf_counter() - t0
    size = 2048
    arr = da.zeros((3, size, size), dtype=np.uint16, chunks=(3, 256, 256))
    coords = {"time": np.arange(3), "y": 20.0 * np.arange(size)[::-1],
              "x": 20.0 * np.arange(size)}
    cube = xr.Dataset({n: xr.DataArray(arr, dims=("time", "y", "x"), attrs={"nodata": 0})
                       for n in ["B04", "B03", "B8A"]},
                      coords=coords).assign_attrs(mask_bands=["B04", "B03", "B8A"])
    t0 = time.perf_counter()
    ocm_classes(cube, MaskSpec(method="ocm", ocm_halo=32), MaskContext(gpu=False, models=models))
    build = time.perf_counter() - t0
    return [f"tokenize(list of the 2 OCM modules): {1000 * raw:.1f} ms; "
            f"tokenize(InMemoryModels): {1000 * ours:.3f} ms; "
            f"ocm_classes graph build, 64 chunks, in-memory models: {build:.3f} s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "s2")
    ap.add_argument("--ocm-weights", type=Path, default=os.environ.get(OCM_WEIGHTS_ENV))
    ap.add_argument("--throughput-size", type=int, default=512)
    ap.add_argument("--throughput-dates", type=int, default=1)
    ap.add_argument("--csmask", action="store_true", help="also run the ukis-csmask sections")
    ap.add_argument("--csmask-only", action="store_true", help="run only the ukis-csmask sections")
    ap.add_argument("--skip-quality", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.csmask or args.csmask_only:
        if not args.skip_quality:
            print("\n## ukis-csmask: quality\n")
            print("\n".join(csmask_quality(args.data)))
        print("\n## ukis-csmask: chunked with halo vs whole image (29RKH, 100 m)\n")
        print("\n".join(csmask_chunking(args.data)))
        print("\n## ukis-csmask: speed per window, one onnxruntime thread\n")
        print("\n".join(csmask_speed()))
        print("\n## OCM graph build with in-memory models\n")
        try:
            print("\n".join(ocm_graph_cost()))
        except ImportError as e:
            print(f"omnicloudmask not installed: skipped ({e})")
        if args.csmask_only:
            return
    weights = args.ocm_weights
    if weights is not None:
        from s2mosaic.errors import ModelWeightsError
        from s2mosaic.masks.omnicloud import OCM_WEIGHT_FILES, _check_files

        try:
            _check_files(Path(weights), "--ocm-weights")
        except ModelWeightsError as e:
            print(f"OCM weights unusable ({str(e).splitlines()[0]}): treating as absent")
            weights = None
        else:
            print(f"OCM weights: {weights} ({', '.join(w.name for w in OCM_WEIGHT_FILES)})")
    print("\n## eo-learn L1C series: s2cloudless\n")
    print("\n".join(eolearn(args.data, weights)))
    print("\n## Barbellino L2A pair: SCL\n")
    print("\n".join(barbellino(args.data, weights)))
    print("\n## OmniCloudMask throughput (random weights)\n")
    try:
        print("\n".join(throughput(args.throughput_size, args.throughput_dates)))
    except ImportError as e:
        print(f"omnicloudmask not installed: skipped ({e})")


if __name__ == "__main__":
    main()
