"""Run DPIRD-DMA's S2Mosaic 2.0 (the *other* ``s2mosaic`` on PyPI) offline on a local catalog.

What this is
------------
A runner that lets ``bench_floor.py`` time DPIRD-DMA's S2Mosaic 2.0 ("the peer",
https://github.com/DPIRD-DMA/S2Mosaic, commit 3daf520) side by side with our s2mosaic, on the same
static STAC catalog (e.g. the demo catalog of ``bench_floor.py``), the same AOI, output grid,
bands, percentile and SCL cloud mask. The peer is made for online STAC APIs (Planetary Computer,
Element 84); here it reads only the local items of the catalog.

It must run under the peer's own virtual environment: both projects install a package named
``s2mosaic``, so this script never imports ours (it uses only the standard library and the peer's
dependencies).

Creating the peer's venv (python 3.11; offline except for the package registries)
------------------------------------------------------------------------------------
::

    mkdir -p /work/peer-s2m2/src
    git --git-dir=/work/.mirror/DPIRD-DMA+S2Mosaic/repo archive HEAD | tar -x -C /work/peer-s2m2/src
    python3.11 -m venv /work/peer-s2m2/venv
    /work/peer-s2m2/venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    SETUPTOOLS_SCM_PRETEND_VERSION=2.0.0 /work/peer-s2m2/venv/bin/pip install /work/peer-s2m2/src

Torch must be installed first, pinned, or the peer's dependency omnicloudmask pulls the newest
torch. Pin that pair: the CPU-only ``torch==2.13.0`` wheel installs, but PyPI's
``torchvision==0.28.0`` next to it fails to import ("operator torchvision::nms does not exist":
its ``_C.so`` links ``libc10_cuda.so``), and omnicloudmask → segmentation-models-pytorch → timm
import torchvision when the peer's ``s2mosaic.masking`` is imported. ``torch==2.14.1`` with
``torchvision==0.29.1`` is a CUDA build (~6 GB venv) that runs on the CPU. The install takes
about 80 s when the wheels come from a local cache.

How bench_floor calls it
------------------------
::

    /work/peer-s2m2/venv/bin/python benchmarks/peer_s2mosaic2.py \\
        --catalog /tmp/s2mosaic-bench-floor/catalog \\
        --bounds MINX MINY MAXX MAXY --crs 32632 --out /tmp/peer.tif [--workers 2]

The bounds are the output grid's outer edges in ``--crs``: ``tuple(gbox.boundingbox)`` of
bench_floor's output geobox (on 10 m multiples the peer builds the same grid from them). Mind
an odd pixel count: the peer reads SCL on a 20 m grid of ``round(n / 2)`` pixels and stretches
it to the 10 m grid with ``cv2.resize`` nearest, so with an odd count (1025 rows, as
bench_floor's AOI once had) every even row gets the mask of the row above. The date window defaults to the first to
the last item's date (``--start``/``--end`` override it). Everything goes to stderr except one
JSON line printed on stdout at the end::

    {"wall_s": ..., "peak_rss_mib": ..., "out": ..., "items": ..., "threads": {...}, ...}

``wall_s`` is the ``s2mosaic.mosaic()`` call only (``time.perf_counter``). ``peak_rss_mib`` is
the process's ``ru_maxrss`` (KiB → MiB) plus that of any child that outgrew those before the
call: importing the CUDA build of torch forks ``ldconfig -p``, whose ru_maxrss is the parent's
RSS at the fork, not memory of its own (``peak_rss_children_mib`` shows it). It includes
importing torch (``rss_after_import_mib``). ``items`` counts the items after the peer's own
dedup of reprocessed scenes. The peer's percentile kernel is Numba ``cache=True``: the first run
in a fresh venv compiles it inside ``mosaic()``, so do one untimed run first.

What is patched, and why (at run time only; the peer's installed source is untouched)
-------------------------------------------------------------------------------------
1. A ``Source`` named ``LOCAL`` is added to the peer's source registry
   (``s2mosaic.sources._SOURCES``, with ``VALID_SOURCES`` recomputed so its validation accepts
   it). Its ``sign`` is the identity (the hrefs are local ``file://`` URIs that rasterio opens),
   its band map is the identity (the catalog's asset keys are ``B02`` ... ``SCL``, as on
   Planetary Computer), and its block sizes are read from the catalog's COGs (the peer sizes its
   adaptive tiles from them; it hard-codes them per source, e.g. 1024 for AWS 10 m bands).
2. The STAC search: the only network step. ``Source.open_catalog`` (called by the peer's
   ``stac_bounds._search_for_items_by_geometry`` to get a ``pystac_client.Client``) returns a
   local stand-in whose ``search(**query).item_collection()`` answers the peer's own query the way
   a STAC API would: collection, datetime interval (closed), ``bbox``/``intersects`` against the
   item geometry, and the ``query`` extension filters (the peer's default ``eo:cloud_cover < 100``),
   newest first as Planetary Computer returns them. The peer's code builds that query and, after
   it, deduplicates reprocessed items, sorts scenes, reads SCL, masks, reads the bands,
   computes the percentile and writes the GeoTIFF, unchanged.
3. Threads, for the 2 cores every contender gets: ``tile_workers=--workers`` (the peer's only
   knob; its SCL fetch pool uses it too), OMP/MKL/OpenBLAS/Numba threads and torch's intra- and
   inter-op threads set to ``--workers``. The peer still sizes a band-read thread pool
   (``min(16, max(4, 4 × tile_workers))``, mostly waiting on GDAL reads) from it; ``--pin``
   also pins the process to ``--workers`` CPUs.
4. Optional, off by default: ``--no-torch`` puts an inert ``omnicloudmask`` module in
   ``sys.modules`` before the peer is imported, so torch/torchvision/timm are never loaded (the
   SCL path never calls OmniCloudMask). This only shows how much of the peak RSS is the torch
   import; the default measures the peer as users install it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

LOG = logging.getLogger("peer_s2mosaic2")
BANDS = ["B02", "B03", "B04", "B08"]
SOURCE_NAME = "LOCAL"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


# -- threads and memory ---------------------------------------------------------------------------


def limit_threads(n: int, pin: bool) -> dict[str, Any]:
    """Cap the native thread pools at ``n`` (call before numpy/torch/numba are imported)."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    info: dict[str, Any] = {var: n for var in THREAD_ENV}
    if pin and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:n]
        os.sched_setaffinity(0, cpus)
        info["cpu_affinity"] = cpus
    return info


def limit_torch_threads(n: int) -> dict[str, Any]:
    """Torch's intra- and inter-op threads, if torch was imported (it is, by omnicloudmask)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch": "not imported"}
    torch.set_num_threads(n)
    # settable only before the first inter-op work (none has run yet)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)
    return {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}


def peak_rss_mib() -> dict[str, float]:
    """``ru_maxrss`` of this process and of its waited-for children, KiB → MiB (Linux units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": own, "children": children}


def stub_omnicloudmask() -> None:
    """Make ``import omnicloudmask`` cheap: an inert module whose predictor refuses to run."""
    mod = types.ModuleType("omnicloudmask")

    def predict_from_array(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("--no-torch: OmniCloudMask is disabled; use cloud_mask='SCL'")

    mod.predict_from_array = predict_from_array  # type: ignore[attr-defined]
    sys.modules["omnicloudmask"] = mod


# -- the local catalog ----------------------------------------------------------------------------


def load_items(catalog: Path) -> list[Any]:
    """Every item of a static catalog (``catalog.json``, walked) or of an ItemCollection file,
    with absolute asset hrefs."""
    import pystac

    path = catalog / "catalog.json" if catalog.is_dir() else catalog
    if not path.exists() and catalog.is_dir():
        path = catalog / "itemcollection.json"
    doc = json.loads(path.read_text())
    if doc.get("type") == "FeatureCollection":
        items = list(pystac.ItemCollection.from_file(str(path)))
    else:
        cat = pystac.read_file(str(path))
        items = list(cat.get_items(recursive=True))
    for item in items:
        for asset in item.assets.values():
            asset.href = asset.get_absolute_href() or asset.href
    return items


def _parse_dt(text: str, end: bool) -> datetime | None:
    if text in ("", ".."):
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if end and len(text) == 10:  # a bare date as an end means that whole day
        value += timedelta(days=1) - timedelta(microseconds=1)
    return value


def _in_interval(item: Any, interval: str | None) -> bool:
    """STAC API ``datetime`` semantics: a closed interval ``start/end`` or one instant."""
    if not interval:
        return True
    when = item.datetime
    if "/" not in interval:
        return when == _parse_dt(interval, end=False)
    lo_text, hi_text = interval.split("/", 1)
    lo, hi = _parse_dt(lo_text, end=False), _parse_dt(hi_text, end=True)
    return (lo is None or when >= lo) and (hi is None or when <= hi)


_QUERY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, x: v == x,
    "neq": lambda v, x: v != x,
    "lt": lambda v, x: v < x,
    "lte": lambda v, x: v <= x,
    "gt": lambda v, x: v > x,
    "gte": lambda v, x: v >= x,
    "startsWith": lambda v, x: str(v).startswith(x),
    "endsWith": lambda v, x: str(v).endswith(x),
    "contains": lambda v, x: x in str(v),
    "in": lambda v, x: v in x,
}


def _matches_query(item: Any, query: dict[str, Any] | None) -> bool:
    """The STAC ``query`` extension: every ``{property: {op: value}}`` must hold; an item without
    the property does not match."""
    for prop, ops in (query or {}).items():
        if prop not in item.properties:
            return False
        for op, value in ops.items():
            if op not in _QUERY_OPS:
                raise ValueError(f"local search: unsupported query operator {op!r}")
            if not _QUERY_OPS[op](item.properties[prop], value):
                return False
    return True


class _LocalSearch:
    """What ``pystac_client.Client.search`` returns, as far as the peer uses it."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def item_collection(self) -> Any:
        from pystac.item_collection import ItemCollection

        return ItemCollection(self._items, clone_items=False)


class LocalCatalog:
    """A stand-in for the ``pystac_client.Client`` of a STAC API, over a static catalog's items.

    ``search`` accepts the keywords the peer's ``_search_for_items_by_geometry`` and
    ``search_for_items`` send and filters like a STAC API server would.
    """

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self.returned: list[Any] = []

    def search(self, *, collections: Iterable[str] | None = None, datetime: str | None = None,
               bbox: Sequence[float] | None = None, intersects: dict[str, Any] | None = None,
               query: dict[str, Any] | None = None, **unsupported: Any) -> _LocalSearch:
        from shapely.geometry import box, shape

        if unsupported:
            raise TypeError(f"local search: unsupported arguments {sorted(unsupported)}")
        area = shape(intersects) if intersects else box(*bbox) if bbox else None
        wanted = set(collections) if collections else None
        found = [
            item for item in self.items
            if (wanted is None or item.collection_id in wanted)
            and _in_interval(item, datetime)
            and (area is None or shape(item.geometry).intersects(area))
            and _matches_query(item, query)
        ]
        # newest first, as Planetary Computer's API answers by default
        found.sort(key=lambda i: (i.datetime, i.id), reverse=True)
        LOG.info("local search: %d of %d items (datetime=%s, bbox=%s, query=%s)",
                 len(found), len(self.items), datetime, bbox, query)
        self.returned = found
        return _LocalSearch(found)


def block_sizes(items: Sequence[Any], keys: Iterable[str]) -> dict[str, int]:
    """Internal block size (the larger side) of each asset key, read from the first item."""
    import rasterio

    sizes = {}
    for key in keys:
        with rasterio.open(items[0].assets[key].href) as src:
            sizes[key] = max(src.block_shapes[0])
    return sizes


def register_local_source(catalog: LocalCatalog, sizes: dict[str, int]) -> Any:
    """Add the ``LOCAL`` source to the peer's registry; return it."""
    import s2mosaic.sources as peer_sources

    @dataclass(frozen=True)
    class LocalSource(peer_sources.Source):  # type: ignore[misc, name-defined]
        """The peer's ``Source`` whose catalog is the local stand-in instead of a STAC API."""

        local_catalog: Any = None

        def open_catalog(self, stac_io: Any) -> Any:
            return self.local_catalog

    source = LocalSource(
        name=SOURCE_NAME,
        stac_url="local://" + str(SOURCE_NAME),
        collection_id="sentinel-2-l2a",
        sign=lambda href: href,  # local files: nothing to sign
        band_assets={},  # asset keys are the canonical band ids
        asset_block_sizes=sizes,
        default_block_size=max(sizes.values()),
        local_catalog=catalog,
    )
    peer_sources._SOURCES[SOURCE_NAME] = source
    peer_sources.VALID_SOURCES = frozenset(peer_sources._SOURCES)
    return source


class _KeptScenes(logging.Handler):
    """Picks the peer's "Streaming user bands for K/N kept scenes" log line."""

    pattern = re.compile(r"Streaming user bands for (\d+)/(\d+) kept scenes")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.kept: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        m = self.pattern.search(record.getMessage())
        if m:
            self.kept = int(m.group(1))


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, required=True,
                    help="static catalog dir (catalog.json or itemcollection.json), or the file")
    ap.add_argument("--bounds", type=float, nargs=4, required=True,
                    metavar=("MINX", "MINY", "MAXX", "MAXY"), help="output extent in --crs")
    ap.add_argument("--crs", type=int, default=32632, help="EPSG code of --bounds")
    ap.add_argument("--out-crs", type=int, default=None, help="output EPSG (default: --crs)")
    ap.add_argument("--resolution", type=int, default=10)
    ap.add_argument("--percentile", type=float, default=25.0)
    ap.add_argument("--out", type=Path, required=True, help="GeoTIFF to write")
    ap.add_argument("--workers", type=int, default=2,
                    help="tile_workers and the native thread caps (default 2)")
    ap.add_argument("--start", type=date.fromisoformat, default=None,
                    help="first day (default: the earliest item's date)")
    ap.add_argument("--end", type=date.fromisoformat, default=None,
                    help="day after the last (exclusive; default: the latest item's date + 1)")
    ap.add_argument("--pin", action="store_true", help="pin the process to --workers CPUs")
    ap.add_argument("--no-torch", action="store_true",
                    help="stub omnicloudmask so torch is never imported (SCL path only)")
    ap.add_argument("-v", "--verbose", action="store_true", help="the peer's INFO log on stderr")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    LOG.setLevel(logging.INFO)
    threads = limit_threads(args.workers, args.pin)
    if args.no_torch:
        stub_omnicloudmask()

    # the peer's s2mosaic (this binds ``s2mosaic`` too): this script runs in the peer's venv
    try:
        import s2mosaic.sources
    except ImportError:
        sys.exit("this is not DPIRD-DMA's S2Mosaic 2.x: run me with the peer venv's python")
    if not hasattr(s2mosaic.sources, "_SOURCES"):
        sys.exit("this is not DPIRD-DMA's S2Mosaic 2.x: run me with the peer venv's python")
    threads.update(limit_torch_threads(args.workers))
    threads["tile_workers"] = args.workers
    threads["scl_fetch_workers"] = args.workers
    threads["band_read_workers"] = min(16, max(len(BANDS), args.workers * len(BANDS)))
    rss_import = peak_rss_mib()["self"]

    items = load_items(args.catalog)
    if not items:
        sys.exit(f"no items in {args.catalog}")
    catalog = LocalCatalog(items)
    source = register_local_source(catalog, block_sizes(items, [*BANDS, "SCL"]))
    days = sorted({i.datetime.astimezone(UTC).date() for i in items})
    start = args.start or days[0]
    end = args.end or days[-1] + timedelta(days=1)
    kept = _KeptScenes()
    peer_log = logging.getLogger("s2mosaic")
    peer_log.setLevel(logging.INFO)
    peer_log.addHandler(kept)
    if not args.verbose:
        # the root handler prints only the peer's warnings; INFO records reach ``kept`` only
        logging.getLogger().handlers[0].setLevel(logging.WARNING)
    else:
        logging.getLogger().setLevel(logging.INFO)
    LOG.info("peer s2mosaic %s at %s; %d catalog items; %s .. %s (exclusive); source blocks %s",
             getattr(s2mosaic, "__version__", "?"), Path(s2mosaic.__file__).parent, len(items),
             start, end, source.asset_block_sizes)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    children_before = peak_rss_mib()["children"]
    t0 = time.perf_counter()
    out = s2mosaic.mosaic(
        bounds=tuple(args.bounds),
        input_crs=args.crs,
        start_year=start.year,
        start_month=start.month,
        start_day=start.day,
        duration_days=(end - start).days,
        bands=list(BANDS),
        mosaic_method="percentile",
        percentile=args.percentile,
        cloud_mask="SCL",
        output_crs=args.out_crs or args.crs,
        resolution=args.resolution,
        output_path=args.out,
        overwrite=True,
        source=SOURCE_NAME,
        tile_workers=args.workers,
        show_progress=False,
    )
    wall = time.perf_counter() - t0

    from s2mosaic.stac import filter_latest_processing_baselines

    used = len(filter_latest_processing_baselines(catalog.returned))
    rss = peak_rss_mib()
    # Children count only if one outgrew those before the run: importing the CUDA build of torch
    # forks ``ldconfig -p`` (ctypes.util.find_library), whose ru_maxrss is the parent's RSS at
    # the fork (shared copy-on-write pages), not memory of its own.
    children_run = rss["children"] if rss["children"] > children_before else 0.0
    print(json.dumps({
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(rss["self"] + children_run, 1),
        "peak_rss_self_mib": round(rss["self"], 1),
        "peak_rss_children_mib": round(rss["children"], 1),
        "peak_rss_children_run_mib": round(children_run, 1),
        "rss_after_import_mib": round(rss_import, 1),
        "out": str(out),
        "items": used,
        "items_found": len(catalog.returned),
        "scenes_kept": kept.kept,
        "dates": [start.isoformat(), end.isoformat()],
        "threads": threads,
        "peer_version": getattr(s2mosaic, "__version__", None),
        "torch_loaded": "torch" in sys.modules,
    }), flush=True)


if __name__ == "__main__":
    main()
