"""Know before you spend: what a spec will find, read, write, and roughly cost — before running it.

:func:`plan` searches and selects exactly as a run would (:func:`s2mosaic._search`,
:func:`s2mosaic._select.select`) and then works out, without reading any pixel:

* **bytes to read**: the run reads, tile by tile, per chunk of the tile's context box (the tile
  plus the margin its masks need), per scene and per asset, the COG tiles (blocks) under the
  chunk's footprint, plus the file header on every open — odc-stac opens each asset once per
  chunk; with ``runtime.keep_open: auto`` (the default) each file once, each block once. The
  plan walks the same tiles, chunks and scenes with odc-geo's
  ``compute_reproject_roi`` (what odc-loader uses to decide the window) and adds the block sizes
  from the COG headers when the files can be opened (local files, or remote ones when
  ``remote=True``), from the asset's size (``file:size`` or the file system) spread evenly over
  its pixels otherwise, else from :data:`BYTES_PER_PIXEL`.
* **output size on disk** per format, from the measured compressed density of the source bands
  (the mosaic is the same kind of data) times the output pixels inside the AOI.
* **download everything**: the bytes a pipeline that stages whole scenes would fetch, and the
  Sentinel2Mosaics rule of thumb ``GB ≈ square miles × days × 0.00019`` (all bands).
* **wall time and cost** for a cluster size, from the throughputs measured by
  ``benchmarks/bench_select.py`` and ``benchmarks/bench_composite.py``
  (:data:`THROUGHPUT`, see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from odc.geo.geobox import GeoBox, GeoBoxBase, GeoboxTiles
from odc.geo.overlap import compute_reproject_roi
from pyproj import Geod

from ._grid import native_geobox, output_geobox, tiles
from ._items import (
    asset_dtype,
    mask_band_keys,
    mgrs_tile,
    resolve_band,
    scl_asset_key,
    solar_day,
)
from ._search import search
from ._select import Selection, select
from ._spec import MosaicSpec
from ._tiles import TileGrid
from .errors import CoverageError, SpecError
from .masks import context_pixels

__all__ = [
    "BYTES_PER_PIXEL",
    "OPEN_BYTES",
    "READ_CHUNK",
    "RUN_OVERHEAD_BYTES",
    "SENTINEL2MOSAICS_GB",
    "THROUGHPUT",
    "Plan",
    "Throughput",
    "plan",
]

#: Compressed bytes per source pixel (overviews included) when neither the COG header nor the
#: file size is known: the largest density measured on real Sentinel-2 COGs in
#: ``shared/data/s2`` (tile 29RKH, DEFLATE: 1.78-1.95 B/px for uint16 bands, 0.03 B/px for SCL)
#: and on the demo catalog (1.42 B/px uint16, 0.16 B/px SCL), so the estimate errs high.
BYTES_PER_PIXEL: dict[str, float] = {"uint16": 1.95, "uint8": 0.16}
#: Granularity of every read: the cube turns GDAL's ``VSI_CACHE`` on, and GDAL's cached file
#: handle reads whole 32 KiB chunks (a 23 KB COG tile can cost 64 KiB). Measured on the demo
#: COGs: a window's bytes equal the 32 KiB chunks its tiles touch, exactly.
READ_CHUNK = 32768
#: Bytes GDAL reads on open besides the header's chunks: its format probe (measured 2209 B per
#: open of the demo COGs: 34,977 B in all for a header that fits in the first chunk).
OPEN_BYTES = 2209
#: Bytes every run reads whatever its size, measured with strace on the demo: SQLite pages of
#: PROJ's database (2.2 MB: CRS look-ups) and the package metadata the provenance lists (0.4 MB).
RUN_OVERHEAD_BYTES = 2_600_000
#: Sentinel2Mosaics' storage rule for downloading everything: GB per square mile per day.
SENTINEL2MOSAICS_GB = 0.00019
# When only the file size is known: the assumed internal tile size and the share of the file
# that the full-resolution level holds (overviews halve each level: 1 + 1/4 + 1/16 … = 4/3).
_ASSUMED_BLOCK = 512
# An 8-bit PNG display product, per channel, relative to the 16-bit bands' density: calibrated on
# the demo mosaic (92 KB for 3 × 111,342 px); PNG's filters do better than half the bytes.
_RGB_PNG_RATIO = 0.27
# Zarr metadata besides the arrays: consolidated metadata, attributes, the CF grid mapping and
# the run manifest (27 KB measured on the demo store); the run also keeps its items' STAC JSON.
_ZARR_METADATA = 27_000
_MI2_PER_KM2 = 0.386102


@dataclass(frozen=True)
class Throughput:
    """Per-core throughputs the time estimate uses. Measured, not invented: each field names the
    benchmark that measured it (numbers in ``benchmarks/RESULTS.md``)."""

    read_mb_s_per_core: float
    """Source bytes (MB, as this plan counts them) read, decoded, warped, masked, composited
    and written per CPU-second, from local COGs, end to end (``bench_floor.py``: a 1024² px AOI
    across two UTM zones - half the items warped - 12 dates, 4 bands + SCL, a LocalCluster of
    2 workers × 1 thread, chunks 1024: 23.1 MB/s per core [23.07-23.24] over 3 rounds, counted
    from the run's first task to its last; chunks 512 gave ~24; the earlier one-core
    synchronous figure of ``bench_select.py`` was 33 MB/s). Cores are assumed to scale
    linearly; measured on a shared 2-core machine, so treat many-core estimates as a lower
    bound on time."""
    reduce_gobs_s_per_core: float
    """Band observations reduced per second per core, percentile kernel
    (``bench_composite.py``: 3.58 Gobs/s on 2 cores at T=24)."""
    startup_s: float
    """Search (0.9 s), graph building (0.15 s) and LocalCluster start (~0.5 s) of a run, as
    measured by ``bench_demo.py``."""


#: The measured throughputs (``benchmarks/RESULTS.md``, 2 cores, no GPU).
THROUGHPUT = Throughput(read_mb_s_per_core=23.1, reduce_gobs_s_per_core=1.79, startup_s=1.5)


@dataclass
class _Layout:
    """What is known of one asset's file: grid, tile sizes per level, header and file size."""

    geobox: GeoBox
    block: tuple[int, int]
    """Internal tile (rows, cols)."""
    blocks: list[np.ndarray]
    """Compressed bytes per tile, per level (0: full resolution, then each overview)."""
    offsets: list[np.ndarray] | None
    """File offset of each tile, per level; None when only the file size is known."""
    overviews: list[int]
    """Overview decimation factors (2, 4, …)."""
    size: int
    """Bytes of the whole file."""
    header: int
    """Bytes before the first tile (the header and IFDs of a COG)."""
    source: str
    """``cog-header``, ``asset-size`` or ``estimate``."""


@dataclass
class Plan:
    """The estimates of :func:`plan` (``to_dict``/``to_json`` for machines, ``table`` for people)."""

    name: str
    aoi_km2: float
    periods: list[dict[str, Any]]
    scenes: dict[str, int]
    """``found`` (matching AOI and period), ``filtered`` (cloud cover, tile), ``duplicates``,
    ``after_dedupe``, ``selected``."""
    tiles: dict[str, dict[str, int]]
    """Per MGRS tile: ``after_dedupe`` and ``selected``."""
    coverage: float
    grid: dict[str, Any]
    output_bytes: dict[str, int]
    """Estimated size on disk per format (``zarr``, ``cog``, ``rgb`` where the spec writes them)."""
    read: dict[str, Any]
    """``bytes``: the sum of ``source_bytes`` (the scenes' COGs), ``readback_bytes`` (outputs
    read back to make later products), ``metadata_bytes`` (STAC JSON) and ``overhead_bytes``
    (:data:`RUN_OVERHEAD_BYTES`); ``opens`` (file opens), ``assets`` and ``sources`` (how many
    assets were sized from COG headers / asset sizes / the estimate)."""
    download_everything: dict[str, Any]
    """``bytes`` (whole files of every scene after dedupe) and ``sentinel2mosaics_bytes``."""
    time: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_to_read(self) -> int:
        return int(self.read["bytes"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def table(self) -> Any:
        """A ``rich`` table of the plan (``s2mosaic plan`` prints it)."""
        from rich.table import Table

        t = Table(title=f"Plan for {self.name}", show_header=False)
        t.add_column("what", style="bold")
        t.add_column("estimate")
        s = self.scenes
        t.add_row("AOI", f"{self.aoi_km2:,.2f} km² ({self.aoi_km2 * _MI2_PER_KM2:,.2f} mi²)")
        t.add_row("scenes", f"{s['found']} found, {s['filtered']} filtered out, "
                  f"{s['duplicates']} duplicates → {s['after_dedupe']} after dedupe → "
                  f"{s['selected']} selected")
        for p in self.periods:
            t.add_row(f"period {p['start']}..{p['end']}",
                      f"{p['selected']} of {p['candidates']} scenes, AOI covered "
                      f"{100 * p['coverage']:.2f} % (all scenes: {100 * p['coverage_all']:.2f} %)")
        t.add_row("per tile", ", ".join(f"{k}: {v['selected']}/{v['after_dedupe']}"
                                        for k, v in self.tiles.items()) or "-")
        g = self.grid
        t.add_row("output grid", f"{g['shape'][0]} × {g['shape'][1]} px, {g['crs']}, "
                  f"{g['bands']} bands, {g['chunks']} chunk(s)")
        for fmt, n in self.output_bytes.items():
            t.add_row(f"output {fmt}", _size(n))
        r = self.read
        srcs = ", ".join(f"{k} {v}" for k, v in r["sources"].items() if v)
        t.add_row("bytes to read", f"{_size(r['bytes'])} ({r['opens']} file opens; sized from "
                  f"{srcs or 'nothing'})")
        d = self.download_everything
        t.add_row("download everything", f"{_size(d['bytes'])} (needed assets of every scene); "
                  f"Sentinel2Mosaics rule, all bands: {_size(d['sentinel2mosaics_bytes'])}")
        tm = self.time
        cost = f", cost {tm['cost']:.3g}" if tm.get("cost") is not None else ""
        t.add_row("wall time", f"~{tm['wall_s']:.1f} s on {tm['cores']} core(s) "
                  f"({tm['core_hours']:.4f} core-hours{cost})")
        for w in self.warnings:
            t.add_row("[yellow]warning[/]", w)
        return t


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def plan(spec: MosaicSpec, items: Sequence[pystac.Item] | None = None, *, cores: int | None = None,
         cluster: str | Path | None = None, cost_per_core_hour: float | None = None,
         remote: bool = False, throughput: Throughput = THROUGHPUT) -> Plan:
    """Estimate what running ``spec`` finds, reads, writes, takes and costs, reading no pixels.

    Parameters
    ----------
    spec
        The mosaic spec.
    items
        Search result to plan (default: :func:`s2mosaic._search` of the spec).
    cores
        Cores the run gets; default from ``cluster``, else from ``spec.runtime`` (its cluster
        profile, or the LocalCluster this machine would start; ``synchronous``: 1).
    cluster
        A cluster profile (a YAML file, or a packaged one by name such as ``slurm-cpu``) whose size to plan for.
    cost_per_core_hour
        Price of one core for one hour (any currency); the plan's ``time.cost`` is then
        ``cores × wall hours × price``.
    remote
        Open remote (http, s3) COG headers to size their tiles exactly. Off by default: a plan
        then makes no network request beyond the search; remote assets are sized from
        ``file:size`` or :data:`BYTES_PER_PIXEL`.
    throughput
        Throughputs for the time estimate (default: the measured :data:`THROUGHPUT`).

    Returns
    -------
    Plan

    Examples
    --------
    >>> p = plan(MosaicSpec.from_yaml("my-area.yaml"), cost_per_core_hour=0.05)  # doctest: +SKIP
    >>> print(p.to_json())  # doctest: +SKIP
    """
    if cost_per_core_hour is not None and (not isinstance(cost_per_core_hour, int | float)
                                           or cost_per_core_hour < 0):
        raise SpecError("cost_per_core_hour", cost_per_core_hour, "expected a number >= 0")
    found = search(spec, allow_empty=True) if items is None else items
    warnings: list[str] = []
    sel = _selection(spec, found, warnings)
    scenes, tiles = _scene_counts(found, sel)
    aoi_km2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(spec.aoi.geometry)[0]) / 1e6
    days = (spec.period.end - spec.period.start).days + 1
    periods = sel.summary()["periods"]
    timing = functools.partial(_time, spec=spec, cores=cores, cluster=cluster,
                               price=cost_per_core_hour, tp=throughput)
    if not sel:
        warnings.append("no scenes: nothing would be read or written (the run would fail)")
        empty = {"bytes": 0, "source_bytes": 0, "readback_bytes": 0, "metadata_bytes": 0,
                 "overhead_bytes": 0, "opens": 0, "assets": 0, "sources": {}}
        return Plan(spec.name, aoi_km2, periods, scenes, tiles, sel.coverage,
                    {"crs": None, "shape": [0, 0], "bands": len(spec.bands), "chunks": 0},
                    {}, empty, {"bytes": 0, "sentinel2mosaics_bytes": 0}, timing(0, 0), warnings)
    gbox = output_geobox(spec, sel)
    keys = _asset_keys(spec, sel[0])
    layouts = _Layouts(remote)
    read = _bytes_to_read(spec, sel, gbox, keys, layouts)
    output = _output_bytes(spec, gbox, read.pop("density"))
    _add_run_bytes(read, output, sel, found, gbox)
    everything = sum(layouts.get(i, k).size for i in found for k in keys if k in i.assets)
    s2m = aoi_km2 * _MI2_PER_KM2 * days * SENTINEL2MOSAICS_GB * 1e9
    n_obs = _observations(sel)
    px = gbox.shape[0] * gbox.shape[1]
    chunks = math.ceil(gbox.shape[0] / spec.runtime.chunks) * math.ceil(gbox.shape[1] /
                                                                         spec.runtime.chunks)
    if layouts.remote_skipped:
        warnings.append(f"{layouts.remote_skipped} remote asset(s) sized without opening them "
                        "(pass remote=True / --remote to read their COG headers)")
    return Plan(
        name=spec.name, aoi_km2=aoi_km2, periods=periods, scenes=scenes,
        tiles=dict(sorted(tiles.items())), coverage=sel.coverage,
        grid={"crs": str(gbox.crs), "shape": list(gbox.shape.yx),
              "resolution": abs(gbox.resolution.x), "bands": len(spec.bands), "chunks": chunks,
              "observations": n_obs},
        output_bytes=output, read=read,
        download_everything={"bytes": int(everything), "sentinel2mosaics_bytes": int(s2m),
                             "scenes": len(found), "days": days},
        time=timing(read["source_bytes"], n_obs * px * len(spec.bands)),
        warnings=warnings,
    )


def _selection(spec: MosaicSpec, found: Sequence[pystac.Item], warnings: list[str]) -> Selection:
    """The scenes a run would select; a coverage the run would refuse is a warning here."""
    if not spec.select.require_full_coverage:
        return select(spec, found)
    relaxed = spec.replace(select=dataclasses.replace(spec.select, require_full_coverage=False))
    try:
        select(spec, found)
    except CoverageError as e:
        warnings.append(f"the run would fail: {e}")
    return select(relaxed, found)


def _scene_counts(found: Sequence[pystac.Item], sel: Selection,
                  ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Scenes found, filtered, duplicated, kept and selected; and per MGRS tile."""
    dropped = getattr(found, "dropped", [])
    dups = sum(1 for d in dropped if "duplicate" in d.reason or "more than once" in d.reason)
    scenes = {"found": len(found) + len(dropped), "filtered": len(dropped) - dups,
              "duplicates": dups, "after_dedupe": len(found), "selected": len(sel)}
    tiles: dict[str, dict[str, int]] = {}
    chosen = {i.id for i in sel}
    for item in found:
        t = tiles.setdefault(mgrs_tile(item) or "?", {"after_dedupe": 0, "selected": 0})
        t["after_dedupe"] += 1
        t["selected"] += int(item.id in chosen)
    return scenes, tiles


def _add_run_bytes(read: dict[str, Any], output: dict[str, int], sel: Sequence[pystac.Item],
                   found: Sequence[pystac.Item], gbox: GeoBox) -> None:
    """What a run reads and writes besides the scenes' pixels: the items recorded in the store,
    outputs read back for later products, the STAC JSON, the fixed overhead."""
    if "zarr" in output:  # the run records its items (STAC JSON) and coordinates in the store
        output["zarr"] += sum(_json_size(i) for i in sel)
        output["zarr"] += _ZARR_METADATA + 8 * (gbox.shape[0] + gbox.shape[1])
    # The run computes the mosaic once (into the Zarr, else the COG) and reads the later
    # products (COG, display product) back from that file.
    first = output.get("zarr", output.get("cog", 0))
    later = sum(1 for k in ("cog", "rgb") if k in output) - ("zarr" not in output)
    read["source_bytes"] = read["bytes"]
    read["readback_bytes"] = int(first * max(0, later))
    # The run searches again: the STAC JSON of the scenes (the file or the API's responses).
    read["metadata_bytes"] = sum(_json_size(i) for i in found)
    read["overhead_bytes"] = RUN_OVERHEAD_BYTES
    read["bytes"] = sum(read[k] for k in ("source_bytes", "readback_bytes", "metadata_bytes",
                                          "overhead_bytes"))


def _json_size(item: pystac.Item) -> int:
    return len(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)))


def _observations(sel: Selection | Sequence[pystac.Item]) -> int:
    return len({solar_day(i) for i in sel})


def _asset_keys(spec: MosaicSpec, ref: pystac.Item) -> list[str]:
    keys = [resolve_band(ref, b) for b in spec.bands]
    keys += [k for k in mask_band_keys(ref, spec.mask) if k not in keys]
    if spec.mask.uses_scl:
        keys.append(scl_asset_key(ref))
    return keys


# -- asset layouts ------------------------------------------------------------------------------
class _Layouts:
    def __init__(self, remote: bool) -> None:
        self.remote = remote
        self.remote_skipped = 0
        self._cache: dict[tuple[str, str], _Layout] = {}

    def get(self, item: pystac.Item, key: str) -> _Layout:
        ck = (item.id, key)
        if ck not in self._cache:
            self._cache[ck] = self._load(item, key)
        return self._cache[ck]

    def _load(self, item: pystac.Item, key: str) -> _Layout:
        asset = item.assets[key]
        href = asset.href
        local = _local_path(href)
        if (local is not None and local.exists()) or (local is None and self.remote):
            try:
                return _from_header(str(local) if local is not None else href,
                                    "local" if local is not None else "remote")
            except Exception:  # an unreadable or non-TIFF file: size it as below
                pass
        elif local is None:
            self.remote_skipped += 1
        gbox = native_geobox(item, key)
        dtype = asset_dtype(item, key)
        size = asset.extra_fields.get("file:size")
        if local is not None and local.exists():
            size = local.stat().st_size
        n = gbox.shape[0] * gbox.shape[1]
        source = "asset-size"
        if not isinstance(size, int | float) or size <= 0:
            size = n * BYTES_PER_PIXEL.get(dtype, BYTES_PER_PIXEL["uint16"])
            source = "estimate"
        # Spread the file over the full level and its overviews (1 + 1/4 + 1/16 … = 4/3).
        per_px = size * 3 / 4 / n
        levels = []
        h, w = gbox.shape
        b = _ASSUMED_BLOCK
        for k in range(8):  # full resolution, then overviews while larger than one tile
            lh, lw = math.ceil(h / 2 ** k), math.ceil(w / 2 ** k)
            levels.append(np.full((math.ceil(lh / b), math.ceil(lw / b)), per_px * b * b))
            if max(lh, lw) <= b:
                break
        return _Layout(gbox, (b, b), levels, None, [2 ** k for k in range(1, len(levels))],
                       int(size), 16384, source)


def _local_path(href: str) -> Path | None:
    if href.startswith("file://"):
        return Path(href[7:])
    if "://" in href:
        return None
    return Path(href)


def _from_header(path: str, where: str) -> _Layout:
    import rasterio

    sizes, offsets = [], []
    with rasterio.open(path) as src:
        gbox = GeoBox(src.shape, src.transform, src.crs)
        block = src.block_shapes[0]
        overviews = list(src.overviews(1))
        a, o = _block_table(src)
        sizes.append(a)
        offsets.append(o)
    for k in range(len(overviews)):
        with rasterio.open(path, overview_level=k) as ovr:
            a, o = _block_table(ovr)
            sizes.append(a)
            offsets.append(o)
    ends = [int((o + a).max()) for a, o in zip(sizes, offsets, strict=True)]
    size = os.path.getsize(path) if where == "local" else max(ends)
    header = min(int(o.min()) for o in offsets)
    return _Layout(gbox, block, sizes, offsets, overviews, size, header, "cog-header")


def _block_table(src: Any) -> tuple[np.ndarray, np.ndarray]:
    """Byte size and file offset of every tile of band 1 (GDAL's TIFF metadata domain)."""
    bh, bw = src.block_shapes[0]
    ny, nx = math.ceil(src.height / bh), math.ceil(src.width / bw)
    sizes = np.zeros((ny, nx), dtype=np.int64)
    offsets = np.zeros((ny, nx), dtype=np.int64)
    for i in range(ny):
        for j in range(nx):
            sizes[i, j] = src.block_size(1, i, j)
            offsets[i, j] = int(src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1) or 0)
    return sizes, offsets


# -- the estimates --------------------------------------------------------------------------------
def _bytes_to_read(spec: MosaicSpec, items: Sequence[pystac.Item], gbox: GeoBox,
                   keys: list[str], layouts: _Layouts) -> dict[str, Any]:
    """Walk the tiles × chunks × scenes × assets a run reads, as the run and odc-stac do: each
    tile (``runtime.tile_size``) loads the scenes that touch it on its context box - the tile
    plus the margin its masks need (``masks.context_pixels``: buffers, dilation, OCM halo) -
    chunked as the store, and odc-stac opens each asset once per chunk its image touches. A
    chunk of the margin alone is read only for the mask's inputs: the bands' chunks there are
    cropped away, and Dask never loads them."""
    sources: dict[str, int] = {"cog-header": 0, "asset-size": 0, "estimate": 0}
    dens_bytes = dens_px = 0.0
    band_keys = set(keys[: len(spec.bands)])
    for item in items:
        for k in keys:
            if k not in item.assets:
                continue
            lay = layouts.get(item, k)
            sources[lay.source] += 1
            if k in band_keys:
                dens_bytes += float(lay.blocks[0].sum())
                dens_px += lay.geobox.shape[0] * lay.geobox.shape[1]
    aoi = spec.aoi.odc_geometry().to_crs(gbox.crs)
    grid = TileGrid(gbox, tiles(gbox, spec.runtime.tile_pixels),
                    context_pixels(spec.mask, gbox), aoi, items)
    reads = _Reads(spec, items[0])
    mask_keys = set(keys) - band_keys | set(mask_band_keys(items[0], spec.mask))
    c = spec.runtime.chunks
    for tile in grid.tiles:
        box, ys, xs = grid.context(tile)
        chunks = GeoboxTiles(box, (c, c))
        for item in grid.touching(tile):
            lays = {k: layouts.get(item, k) for k in keys if k in item.assets}
            for iy, ix in chunks.tiles(lays[keys[0]].geobox.extent):
                inner = iy * c < ys.stop and (iy + 1) * c > ys.start and \
                    ix * c < xs.stop and (ix + 1) * c > xs.start
                reads.chunk({k: v for k, v in lays.items() if inner or k in mask_keys},
                            chunks[iy, ix], item.id)
    density = dens_bytes / dens_px if dens_px else BYTES_PER_PIXEL["uint16"]
    return {"bytes": int(reads.total), "opens": reads.opens, "assets": sum(sources.values()),
            "sources": sources, "density": density}


class _Reads:
    """The bytes and file opens of the chunk reads of a run, summed (windows cached by source
    grid and chunk: neighbouring tiles and scenes on one grid share them).

    With ``runtime.keep_open: auto`` a file is opened once and each of its 32 KiB pieces read
    once (:mod:`s2mosaic._datasets`: GDAL's block cache serves the chunks that share a block) -
    exact for one reading thread; with several, a block on a chunk edge may be read by each, so
    this is the low end. ``off``: an open and a window read per chunk, as odc-loader does."""

    def __init__(self, spec: MosaicSpec, ref: pystac.Item) -> None:
        self.scl = scl_asset_key(ref) if spec.mask.uses_scl else None
        self.nearest = spec.grid.resampling == "nearest"
        self.keep_open = spec.runtime.keep_open == "auto"
        self.total = 0.0
        self.opens = 0
        self._rois: dict[tuple[Any, ...], Any] = {}
        self._seen: dict[tuple[str, str], set[Any]] = {}  # per file: what was read already

    def chunk(self, lays: Mapping[str, _Layout], dst: GeoBoxBase, item_id: str) -> None:
        """One output chunk ``dst`` of scene ``item_id``: an open and a window read per asset
        (with files kept open, only the first open and what earlier reads did not read)."""
        from odc.loader._rio import pick_overview

        where = (tuple(dst.shape.yx), tuple(dst.boundingbox))
        for k, lay in lays.items():
            # what earlier reads of this file read: a file opened per read starts afresh
            seen = self._seen.setdefault((item_id, k), set()) if self.keep_open else set()
            self.opens += "open" not in seen
            nearest = k == self.scl or self.nearest
            key = (tuple(lay.geobox.shape.yx), tuple(lay.geobox.affine)[:6], str(lay.geobox.crs),
                   nearest, where)
            if key not in self._rois:
                self._rois[key] = compute_reproject_roi(lay.geobox, dst,
                                                        ttol=0.9 if nearest else 0.05)
            rr = self._rois[key]
            level, roi = 0, rr.roi_src
            if rr.read_shrink > 1:
                ovr = pick_overview(rr.read_shrink, lay.overviews)
                if ovr is not None:
                    level = ovr + 1
                    ovr_gbox = lay.geobox.zoom_out(lay.overviews[ovr])
                    roi = compute_reproject_roi(ovr_gbox, dst, ttol=0.05).roi_src
            self.total += _read_bytes(lay, level, roi, seen)


def _read_bytes(lay: _Layout, level: int, roi: tuple[slice, slice], seen: set[Any]) -> float:
    """Bytes one read of window ``roi`` (at ``level``) costs beyond what ``seen`` holds (what
    earlier reads of the file, kept open, read; updated here; empty for a file opened for this
    read): the open (GDAL's probe and the header's 32 KiB chunks) and the tiles' chunks."""
    lv = min(level, len(lay.blocks) - 1)
    sizes = lay.blocks[lv]
    ys, xs = roi
    bh, bw = lay.block
    y0, y1 = max(0, ys.start) // bh, min(sizes.shape[0], math.ceil(ys.stop / bh))
    x0, x1 = max(0, xs.start) // bw, min(sizes.shape[1], math.ceil(xs.stop / bw))
    empty = ys.stop <= ys.start or xs.stop <= xs.start or y1 <= y0 or x1 <= x0
    header = set(range(math.ceil(lay.header / READ_CHUNK)))
    opening = 0 if "open" in seen else OPEN_BYTES + len(header) * READ_CHUNK
    seen.add("open")
    if lay.offsets is None:
        # Tiles of one row are contiguous in a COG: each row run costs its bytes plus, on
        # average, one chunk of overhang at its ends.
        new = [] if empty else [(lv, i, j) for i in range(y0, y1) for j in range(x0, x1)
                                if (lv, i, j) not in seen]
        seen.update(new)
        rows = len({i for _, i, _ in new})
        return opening + float(sum(sizes[i, j] for _, i, j in new)) + rows * READ_CHUNK
    chunks: set[int] = set()
    if not empty:
        offs = lay.offsets[lv][y0:y1, x0:x1].ravel()
        ends = offs + sizes[y0:y1, x0:x1].ravel()
        for o, e in zip(offs.tolist(), ends.tolist(), strict=True):
            if e > o:
                chunks.update(range(o // READ_CHUNK, (e - 1) // READ_CHUNK + 1))
    new_chunks = {("chunk", c) for c in chunks - header} - seen
    seen.update(new_chunks)
    return opening + len(new_chunks) * READ_CHUNK


def _output_bytes(spec: MosaicSpec, gbox: GeoBox, density: float) -> dict[str, int]:
    """Size on disk per format: output pixels inside the AOI × bands × the sources' density.

    Pixels outside the AOI are nodata and compress to almost nothing; the ``count`` band is
    small integers and adds little; a COG adds its overviews (1/3 of the full level)."""
    aoi = spec.aoi.odc_geometry().to_crs(gbox.crs)
    px_area = abs(gbox.resolution.x * gbox.resolution.y)
    n_px = gbox.shape[0] * gbox.shape[1]
    inside = min(n_px, aoi.area / px_area) if px_area else n_px
    bands = inside * len(spec.bands) * density
    out: dict[str, int] = {}
    o = spec.output
    if o.zarr is not None:
        out["zarr"] = int(bands)
    if o.cog is not None:
        out["cog"] = int(bands * 4 / 3)
    if o.rgb is not None:
        if o.rgb.suffix.lower() == ".png":
            out["rgb"] = int(inside * 3 * density * _RGB_PNG_RATIO)
        else:  # an 8-bit COG: half the bytes of the 16-bit bands per channel, plus overviews
            out["rgb"] = int(inside * 3 * density / 2 * 4 / 3)
    return out


def _cores(spec: MosaicSpec, cores: int | None, cluster: str | Path | None) -> int:
    if cores is not None:
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise SpecError("cores", cores, "expected an integer >= 1")
        return cores
    profile = cluster if cluster is not None else spec.runtime.cluster
    if profile is not None:
        from ._profile import load_profile

        p = load_profile(profile)
        if p.kind == "local":
            return int(p.options.get("n_workers", 1)) * int(p.options.get("threads_per_worker", 1))
        jobs = p.jobs or (p.adapt[1] if p.adapt else 1)
        return int(p.options.get("cores", 1)) * jobs
    if spec.runtime.scheduler == "synchronous":
        return 1
    from ._cluster import local_cluster_size

    w, t = local_cluster_size(spec.runtime)
    return w * t


def _time(read_bytes: float, band_obs: float, *, spec: MosaicSpec, cores: int | None,
          cluster: str | Path | None, price: float | None, tp: Throughput) -> dict[str, Any]:
    n = _cores(spec, cores, cluster)
    compute = (read_bytes / (tp.read_mb_s_per_core * 1e6)
               + band_obs / (tp.reduce_gobs_s_per_core * 1e9)) / n
    wall = tp.startup_s + compute
    core_hours = wall * n / 3600
    return {"cores": n, "wall_s": round(wall, 3), "compute_s": round(compute, 3),
            "core_hours": core_hours,
            "cost": core_hours * price if price is not None else None,
            "cost_per_core_hour": price, "throughput": asdict(tp),
            "assumes": "reads from local disk or in-region object storage (CPU-bound); queue "
                       "waits of batch clusters are not included"}
