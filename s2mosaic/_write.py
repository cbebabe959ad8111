"""Write a mosaic: Zarr (CF + GeoZarr attributes), COG, an 8-bit RGB display product, provenance.

Everything streams Dask chunks to disk; nothing loads the whole mosaic except the small PNG
display product. :func:`write` computes the (expensive) mosaic graph exactly once: into the Zarr
store, or into the COG when no Zarr is asked for; later products are read back from that file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numcodecs
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from dask.diagnostics import ProgressBar
from dask.utils import SerializableLock
from odc.geo.geobox import GeoBox
from pyproj.enums import WktVersion
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ._cluster import keep_annotations, quiet_rasterio, quiet_workers
from ._spec import OutputSpec
from .errors import WriteError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["PROVENANCE_ATTR", "WriteResult", "export_cog", "export_tiles", "grid_info",
           "init_zarr", "metadata_record", "open_zarr", "read_digests", "stretch_rgb", "write",
           "write_block", "write_cog", "write_metadata", "write_products", "write_rgb",
           "write_series_zarr", "write_zarr"]

#: Dataset attribute under which :func:`s2mosaic.mosaic` hands its provenance record to
#: :func:`write` (which pops it: it goes to the metadata sidecar, not into the product).
PROVENANCE_ATTR = "s2mosaic_provenance"
NODATA = 0
COUNT = "count"
#: Largest PNG display product (pixels); beyond this write a ``.tif`` display COG instead.
MAX_PNG_PIXELS = 16384 * 16384
_BLOCK = 512
# Blosc+zstd: fast, multithreaded and readable by every Zarr v2 implementation (Python, JS, Java).
_ZARR_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
# GDAL's COG driver options. DEFLATE over ZSTD: every GeoTIFF reader in the wild decodes it.
_COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "BIGTIFF": "IF_SAFER",
                "NUM_THREADS": "ALL_CPUS"}


@dataclass(frozen=True)
class WriteResult:
    """Paths of the products written (None where not requested)."""

    zarr: Path | None
    cog: Path | None
    rgb: Path | None
    metadata: Path | None


def write(mosaic: xr.Dataset, output: OutputSpec, *, provenance: Mapping[str, Any] | None = None,
          client: Client | None = None, progress: bool = False) -> WriteResult:
    """Compute a mosaic and write every product ``output`` asks for, as one graph.

    For notebooks and small areas: :func:`s2mosaic.run` writes tile by tile instead (bounded
    memory, resumable). The mosaic graph is computed once: into the Zarr store, or into the COG
    when no Zarr is asked for; the other products are read back from that file. All target paths
    are checked before anything is computed, so an existing path fails fast instead of after
    hours of work. The provenance record is completed (outputs, grid, bands, processing time)
    and written as the metadata sidecar; it is not copied into the Zarr/COG attributes.

    Parameters
    ----------
    mosaic
        Lazy ``(y, x)`` dataset from :func:`s2mosaic.mosaic`: uint16 band variables (nodata 0)
        and optionally ``count``, with an odc-geo ``spatial_ref`` coordinate.
    output
        Paths and options (``zarr``, ``cog``, ``rgb``, ``metadata``, ``overwrite``).
    provenance
        The provenance record to complete; default: the one the mosaic carries (its
        ``s2mosaic_provenance`` attribute, set by :func:`s2mosaic.mosaic`).
    client
        A ``distributed.Client`` to compute on; None uses the current Dask scheduler.
    progress
        Show progress: ``distributed.progress`` with a client, else a Dask ``ProgressBar``.

    Returns
    -------
    WriteResult
        The paths written (None where not requested).

    Examples
    --------
    >>> m = s2mosaic.mosaic(spec)  # doctest: +SKIP
    >>> res = s2mosaic.write(m, spec.output)  # doctest: +SKIP
    >>> res.cog, res.metadata  # doctest: +SKIP
    (PosixPath('m.tif'), PosixPath('m.metadata.json'))
    """
    started = time.time()
    ds = mosaic.copy()
    carried = ds.attrs.pop(PROVENANCE_ATTR, None)
    record = dict((carried or {}) if provenance is None else provenance)
    if client is not None:
        quiet_workers(client)
    # keep_annotations: GPU tasks (cluster.gpu_annotate) keep their resources through compute.
    with warnings.catch_warnings(), keep_annotations(ds):
        quiet_rasterio()
        written = write_products(ds, output, client=client, progress=progress)
    meta_path = output.metadata_path
    assert meta_path is not None  # zarr or cog is set (write_products checks), so metadata too
    record = metadata_record(ds, record, {**written, "metadata": meta_path})
    record["processing_time_s"] = round(time.time() - started, 3)
    record["finished"] = dt.datetime.now(dt.UTC).isoformat()
    write_metadata(meta_path, record)
    return WriteResult(zarr=written["zarr"], cog=written["cog"], rgb=written["rgb"],
                       metadata=meta_path)


def write_products(mosaic: xr.Dataset, output: OutputSpec, *, client: Client | None = None,
                   progress: bool = False) -> dict[str, Path | None]:
    """Write the raster products ``output`` asks for (Zarr, COG, RGB), computing the graph once.

    Order: Zarr (computes the graph), then COG and RGB read back from the Zarr store; without a
    Zarr the COG computes the graph and the RGB is read from the COG. Every target path (the
    metadata sidecar's too) is checked first. Returns the paths written by product name
    (``zarr``, ``cog``, ``rgb``; None where not requested); the sidecar is :func:`write`'s.
    """
    if output.zarr is None and output.cog is None:
        raise WriteError("nothing to write: at least one of output.zarr / output.cog is required "
                         "(the RGB display product and metadata are derived from them)")
    _geobox(mosaic)  # fail before any work when the mosaic has no georeferencing
    meta_path = output.metadata_path
    targets = {"zarr": output.zarr, "cog": output.cog, "rgb": output.rgb, "metadata": meta_path}
    for field, p in targets.items():
        if p is not None and os.path.lexists(p) and not output.overwrite:
            raise _exists(p, field)
    if output.rgb is not None:
        _check_rgb(mosaic, output.rgb, output.rgb_bands)

    zarr_path = cog_path = rgb_path = None
    source = mosaic
    if output.zarr is not None:
        zarr_path = write_zarr(mosaic, output.zarr, overwrite=output.overwrite,
                               client=client, progress=progress)
        # Consolidated metadata lists variables alphabetically: restore the mosaic's band order.
        source = open_zarr(zarr_path)[_raster_vars(mosaic)]
    if output.cog is not None:
        cog_path = write_cog(source, output.cog, overwrite=output.overwrite,
                             client=client, progress=progress)
        if zarr_path is None:
            source = _open_cog(cog_path)
    if output.rgb is not None:
        rgb_path = write_rgb(source, output.rgb, output.rgb_bands, output.rgb_range,
                             overwrite=output.overwrite, client=client, progress=progress)
    return {"zarr": zarr_path, "cog": cog_path, "rgb": rgb_path}


def metadata_record(mosaic: xr.Dataset, provenance: Mapping[str, Any],
                    written: Mapping[str, Path | None]) -> dict[str, Any]:
    """The provenance sidecar's content: ``provenance`` plus outputs, time, grid and bands."""
    record = dict(provenance)
    record["outputs"] = {k: str(v) for k, v in written.items() if v is not None}
    record["written_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record["grid"] = grid_info(_geobox(mosaic))
    record["bands"] = [{"name": n, "dtype": str(mosaic[n].dtype),
                        "nodata": None if n == COUNT else NODATA} for n in _raster_vars(mosaic)]
    return record


def write_zarr(mosaic: xr.Dataset, path: str | Path, *, overwrite: bool = False,
               client: Client | None = None, progress: bool = False) -> Path:
    """Stream ``mosaic`` into a consolidated Zarr v2 store with a CF grid mapping.

    Each variable is chunked like its Dask chunks, Blosc/zstd-compressed, carries
    ``grid_mapping="spatial_ref"``; bands have ``_FillValue`` 0. The group carries GeoZarr-style
    ``proj:*``/``spatial:*`` attributes, so rioxarray, odc-geo and plain Zarr readers all see the
    grid. Reopen with ``xr.open_zarr(path)``.
    """
    path = Path(path)
    ds, encoding = _zarr_dataset(mosaic)
    _prepare(path, overwrite, "zarr")
    # zarr_format=2: GDAL, zarr-js, older zarr-python and most cloud viewers read v2, not yet v3.
    task = ds.to_zarr(path, mode="w-", consolidated=True, zarr_format=2, encoding=encoding,
                      compute=False)
    with _io_errors(path):
        _compute(task, client, progress)
    return path


def write_cog(mosaic: xr.Dataset, path: str | Path, *, overwrite: bool = False,
              client: Client | None = None, progress: bool = False) -> Path:
    """Write a Cloud-Optimized GeoTIFF: every band variable in order, then ``count``.

    uint16, nodata 0, DEFLATE + horizontal predictor, 512² blocks (256² below 2048 px),
    internal overviews (nearest, so overview pixels are real observations), band descriptions =
    variable names, tags ``AREA_OR_POINT=Area`` and ``s2mosaic_<attr>`` for scalar attributes.
    """
    names = _raster_vars(mosaic)
    # Only plain scalar attrs with identifier keys: GDAL splits metadata keys at ':' and '=', and
    # the proj:/spatial: attrs of a reopened Zarr are already in the GeoTIFF keys.
    tags = {f"s2mosaic_{k}": str(v) for k, v in mosaic.attrs.items()
            if str(k).isidentifier() and isinstance(v, str | int | float | bool | np.generic)}
    _write_cog_array(_stack(mosaic, names), _geobox(mosaic), Path(path), names, tags=tags,
                     rgb=False, overwrite=overwrite, client=client, progress=progress)
    return Path(path)


def write_rgb(mosaic: xr.Dataset, path: str | Path, bands: Sequence[str] = ("red", "green", "blue"),
              value_range: tuple[float, float] = (0, 3000), *, overwrite: bool = False,
              client: Client | None = None, progress: bool = False) -> Path:
    """Write an 8-bit RGB display product (``.png`` or a ``.tif`` COG).

    Stretch: a source value ``v`` (reflectance × 10000) with ``low, high = value_range`` maps to
    ``clip(rint(1 + 254 * (v - low) / (high - low)), 1, 255)`` (``rint`` rounds half to even),
    computed in float64. Nodata - a pixel where any of the three bands is 0, or ``count`` is 0 -
    is 0 in all three channels; the PNG is RGBA with alpha 0 there and 255 elsewhere, the
    ``.tif`` has nodata 0. A PNG is computed in memory, so it is limited to ``MAX_PNG_PIXELS``.
    """
    path = Path(path)
    _check_rgb(mosaic, path, bands)
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise WriteError(f"RGB value_range {tuple(value_range)} for {path}: expected low < high "
                         "(output.rgb_range, e.g. [0, 3000])")
    count = mosaic[COUNT].data if COUNT in mosaic.data_vars else None
    rgb, valid = stretch_rgb(_stack(mosaic, list(bands)), count, (low, high))
    if path.suffix.lower() != ".png":
        _write_cog_array(rgb, _geobox(mosaic), path, list(bands), tags={}, rgb=True,
                         overwrite=overwrite, client=client, progress=progress)
        return path
    from PIL import Image

    _prepare(path, overwrite, "rgb")
    alpha = (valid * np.uint8(255)).astype("uint8")[None]
    (pixels,) = _compute(da.concatenate([rgb, alpha]), client, progress)
    partial = _scratch(path, "partial")
    with _io_errors(path):
        Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels, 0, -1))).save(partial, "PNG")
        os.replace(partial, path)
    return path


def init_zarr(template: xr.Dataset, path: str | Path, *, overwrite: bool = False,
              before_publish: Callable[[Path], None] | None = None) -> Path:
    """Create a Zarr store for region writes: coordinates, CRS, attributes, empty arrays.

    ``template`` is a lazy mosaic-shaped dataset, or a ``(time, y, x)`` series laid out as
    :func:`write_series_zarr` writes one (its values are never computed); its Dask chunks
    become the Zarr chunks. The store is built under a hidden scratch name, handed to
    ``before_publish`` (the runner adds its manifest there) and renamed into place, so ``path``
    either does not exist or is a complete, initialised store. Blocks go in with
    :func:`write_block`.
    """
    path = Path(path)
    ds, encoding = (_series_dataset(template, path) if "time" in template.dims
                    else _zarr_dataset(template))
    _prepare(path, overwrite, "zarr")
    scratch = _scratch(path, "init")
    try:
        with _io_errors(path):
            ds.to_zarr(scratch, mode="w-", consolidated=True, zarr_format=2, encoding=encoding,
                       compute=False)
            if before_publish is not None:
                before_publish(scratch)
            os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def write_block(block: np.ndarray, store: str, name: str, *origin: int,
                ) -> tuple[Any, ...]:
    """Write one chunk-aligned block of variable ``name`` at ``origin`` (``(y0, x0)``, or
    ``(t0, y0, x0)`` for a series) of a Zarr store.

    Every chunk is stored, nodata-only ones too, so the store holds exactly what was computed.
    Returns ``(name, *origin, digest, bytes)`` for the run manifest.
    """
    import zarr

    from ._manifest import block_digest

    block = np.asarray(block)
    arr = zarr.open_array(f"{store}/{name}", mode="r+", zarr_format=2).with_config(
        {"write_empty_chunks": True})
    arr[tuple(slice(o, o + n) for o, n in zip(origin, block.shape, strict=True))] = block
    return name, *origin, block_digest(name, origin, block), int(block.nbytes)


def read_digests(store: str, names: Sequence[str], y: slice, x: slice, chunk: int,
                 ) -> list[tuple[Any, ...]]:
    """Digests of the chunks of ``names`` in window ``(y, x)`` (every chunk of any leading
    dimension such as ``time``), read back from the store: the same ``(name, *origin, digest)``
    records :func:`write_block` returned when writing them."""
    import itertools

    import zarr

    from ._manifest import block_digest

    out: list[tuple[Any, ...]] = []
    for name in names:
        arr = zarr.open_array(f"{store}/{name}", mode="r", zarr_format=2)
        lead = [range(0, n, c) for n, c in zip(arr.shape[:-2], arr.chunks[:-2], strict=True)]
        for origin in itertools.product(*lead, range(y.start, y.stop, chunk),
                                        range(x.start, x.stop, chunk)):
            stops = [*(min(o + c, n) for o, c, n in zip(origin[:-2], arr.chunks[:-2],
                                                         arr.shape[:-2], strict=True)),
                     min(origin[-2] + chunk, y.stop), min(origin[-1] + chunk, x.stop)]
            try:
                block = arr[tuple(slice(o, e) for o, e in zip(origin, stops, strict=True))]
            except Exception as e:  # a torn or damaged chunk file: the tile gets redone
                out.append((name, *origin, f"unreadable: {type(e).__name__}: {e}"))
                continue
            out.append((name, *origin, block_digest(name, origin, np.asarray(block))))
    return out


def export_cog(store: str | Path, path: str | Path, *, overwrite: bool = False,
               client: Client | None = None, progress: bool = False) -> Path:
    """Stream a mosaic Zarr store (from :func:`s2mosaic._run`) into one COG, chunk by chunk,
    without loading it whole (overviews built by GDAL from a tiled scratch GeoTIFF; BIGTIFF
    when needed)."""
    store = Path(store)
    if not (store / ".zgroup").exists():
        raise WriteError(f"{store} is not a Zarr store (no .zgroup); expected the output.zarr "
                         "of a run")
    return write_cog(open_zarr(store), path, overwrite=overwrite, client=client,
                     progress=progress)


def export_tiles(store: str | Path, directory: str | Path, tile_size: int, *,
                 overwrite: bool = False, client: Client | None = None,
                 progress: bool = False) -> Path:
    """Export a mosaic Zarr store as one COG per ``tile_size`` tile plus a VRT over them.

    For areas too large for one file: ``<directory>/<row>_<col>.tif`` (same bands, nodata,
    compression and overviews as :func:`write_cog`) and ``<directory>/mosaic.vrt``, which GDAL,
    QGIS and rasterio open as the whole mosaic. Returns the VRT path.
    """
    from ._grid import tiles

    directory = Path(directory)
    ds = open_zarr(Path(store))
    names = _raster_vars(ds)
    gbox = _geobox(ds)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise _exists(directory, "tiles")
    directory.mkdir(parents=True, exist_ok=True)
    sources = []
    dy, dx = gbox.dimensions  # ("latitude", "longitude") on a geographic grid
    for t in tiles(gbox, tile_size):
        path = directory / f"{t.key}.tif"
        write_cog(ds[names].isel({dy: t.y, dx: t.x}), path, overwrite=True, client=client,
                  progress=progress)
        sources.append((path.name, t))
    vrt = directory / "mosaic.vrt"
    crs = gbox.crs
    assert crs is not None
    dtype = {"uint16": "UInt16", "uint8": "Byte"}[str(ds[names[0]].dtype)]
    lines = [f'<VRTDataset rasterXSize="{gbox.shape.x}" rasterYSize="{gbox.shape.y}">',
             f"  <SRS>{_xml(crs.to_wkt())}</SRS>",
             "  <GeoTransform>" + ", ".join(repr(float(v)) for v in gbox.affine.to_gdal())
             + "</GeoTransform>"]
    for b, name in enumerate(names, start=1):
        lines += [f'  <VRTRasterBand dataType="{dtype}" band="{b}">',
                  f"    <Description>{_xml(name)}</Description>"]
        if name != COUNT:
            lines.append(f"    <NoDataValue>{NODATA}</NoDataValue>")
        for file, t in sources:
            h, w = t.geobox.shape.yx
            lines += ["    <SimpleSource>",
                      f'      <SourceFilename relativeToVRT="1">{_xml(file)}</SourceFilename>',
                      f"      <SourceBand>{b}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                      f'      <DstRect xOff="{t.x.start}" yOff="{t.y.start}" xSize="{w}" '
                      f'ySize="{h}"/>',
                      "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    with _io_errors(vrt):
        vrt.write_text("\n".join(lines) + "\n")
    return vrt


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def stretch_rgb(stack: Any, count: Any, value_range: Sequence[float]) -> tuple[Any, Any]:
    """The display stretch of :func:`write_rgb` on a ``(3, y, x)`` NumPy or Dask stack.

    Returns ``(uint8 rgb, valid)``: ``clip(rint(1 + 254 (v - low) / (high - low)), 1, 255)`` in
    float64 where all three bands are non-zero (and ``count``, if given, is non-zero), else 0.
    """
    low, high = float(value_range[0]), float(value_range[1])
    valid = (stack != NODATA).all(axis=0)
    if count is not None:
        valid &= count != 0
    scaled = np.clip(np.rint(1 + 254 * (stack.astype("float64") - low) / (high - low)), 1, 255)
    return np.where(valid, scaled, 0).astype("uint8"), valid


def write_metadata(path: str | Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``provenance`` as indented JSON (dates, paths and other objects via ``str``)."""
    path = Path(path)
    with _io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    return path


# -- helpers -----------------------------------------------------------------------------------
def _geobox(ds: xr.Dataset) -> GeoBox:
    gbox = ds.odc.geobox
    if not isinstance(gbox, GeoBox) or gbox.crs is None:
        raise WriteError("the mosaic has no usable georeferencing (odc-geo found no GeoBox/CRS); "
                         "expected y/x coordinates and a spatial_ref coordinate as produced by "
                         "odc.stac.load or odc.geo.xr.xr_zeros")
    return gbox


def _raster_vars(ds: xr.Dataset, series_path: Path | None = None) -> list[str]:
    """Band variables in dataset order, then ``count``; all must be 2-D on the spatial dims
    (``(time, y, x)`` for the series written to ``series_path``)."""
    dims = tuple(ds.odc.spatial_dims or ())
    if series_path is not None:
        dims = ("time", *dims)
    names = [str(n) for n in ds.data_vars if n != COUNT]
    names += [COUNT] if COUNT in ds.data_vars else []
    for n in names:
        if ds[n].dims == dims:
            continue
        if series_path is not None:
            raise WriteError(f"{series_path}: variable {n!r} has dims {ds[n].dims}; every "
                             f"variable of a series must have dims {dims}")
        raise WriteError(f"variable {n!r} has dims {ds[n].dims}; every variable written must "
                         f"have exactly the spatial dims {dims} (select a single time first)")
    if not names:
        raise WriteError("the mosaic has no data variables to write")
    return names


def _stack(ds: xr.Dataset, names: Sequence[str]) -> da.Array:
    """``(band, y, x)`` Dask array of the named variables in a common dtype."""
    dtype = np.result_type(*(ds[n].dtype for n in names))
    return da.stack([da.asarray(ds[n].data).astype(dtype) for n in names])


def _check_rgb(ds: xr.Dataset, path: Path, bands: Sequence[str]) -> None:
    missing = [b for b in bands if b not in ds.data_vars]
    if len(bands) != 3 or missing:
        raise WriteError(f"RGB display product {path}: output.rgb_bands must name three variables "
                         f"of the mosaic; missing {missing or list(bands)}, available "
                         f"{[str(n) for n in ds.data_vars]}")
    h, w = _geobox(ds).shape
    if path.suffix.lower() == ".png" and h * w > MAX_PNG_PIXELS:
        raise WriteError(f"RGB display product {path}: {w}x{h} pixels is too large for a PNG "
                         f"(limit {MAX_PNG_PIXELS} pixels, built in memory); use a .tif path for "
                         "output.rgb, which is written as a tiled COG")


def _exists(path: Path, field: str) -> WriteError:
    return WriteError(f"{path} already exists (output.{field}); pass `output.overwrite: true` "
                      "(overwrite=True) to replace it, or choose another path")


def _prepare(path: Path, overwrite: bool, field: str) -> None:
    """Refuse an existing ``path`` unless overwriting; create parents.

    Files (COG, PNG) are kept until the new one is complete and renamed over them; a Zarr store
    (a directory) has to go before the write starts.
    """
    if os.path.lexists(path):
        if not overwrite:
            raise _exists(path, field)
        if path.is_dir() and not path.is_symlink():
            # Only ever delete something that is a Zarr store: a typo must not wipe a directory.
            if not any((path / m).exists() for m in (".zgroup", ".zarray", "zarr.json")):
                raise WriteError(f"{path} exists and is a directory that is not a Zarr store; "
                                 f"refusing to delete it for output.{field} - choose another path")
            shutil.rmtree(path)
        elif field == "zarr":
            path.unlink()
    with _io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def _scratch(path: Path, kind: str) -> Path:
    """A hidden sibling of ``path`` (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}{path.suffix}")


@contextlib.contextmanager
def _io_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, RasterioError) as e:
        raise WriteError(f"writing {path} failed: {e}; check the path is writable and the disk "
                         "has space") from e


def _compute(obj: Any, client: Client | None, progress: bool) -> tuple[Any, ...]:
    """Compute on ``client`` if given, else on the current scheduler; optionally show progress."""
    if client is not None:
        future = client.compute(obj)
        if progress:
            from distributed import progress as dist_progress

            dist_progress(future)  # widget in a notebook, text bar in a terminal
        return (future.result(),)
    with ProgressBar() if progress else contextlib.nullcontext():
        return tuple(dask.compute(obj))


def _regular_chunks(ds: xr.Dataset, dims: Sequence[str]) -> xr.Dataset:
    """Zarr needs one chunk size per dim (last may be short); rechunk irregular/numpy input."""
    ds = ds.unify_chunks()
    want = {}
    for d in dims:
        sizes = ds.chunksizes.get(d)
        first = sizes[0] if sizes else min(ds.sizes[d], 1024)
        if not sizes or any(c != first for c in sizes[:-1]) or sizes[-1] > first:
            want[d] = first
    return ds.chunk(want) if want else ds


def _zarr_dataset(mosaic: xr.Dataset) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    gbox = _geobox(mosaic)
    names = _raster_vars(mosaic)
    ds = _regular_chunks(mosaic[names], mosaic.odc.spatial_dims)
    crs = gbox.crs
    assert crs is not None
    ref = (ds.coords["spatial_ref"].variable.copy() if "spatial_ref" in ds.coords
           else xr.Variable((), np.int32(crs.epsg or 0)))
    wkt = crs.to_wkt()
    # rioxarray reads crs_wkt/spatial_ref + GeoTransform (GDAL order); CF readers read crs_wkt.
    ref.attrs.update(crs_wkt=wkt, spatial_ref=wkt,
                     GeoTransform=" ".join(repr(float(v)) for v in gbox.affine.to_gdal()))
    ds = ds.assign_coords(spatial_ref=ref)
    encoding: dict[str, dict[str, Any]] = {}
    for n in names:
        var = ds[n].variable
        var.encoding = {}  # odc-geo keeps grid_mapping in .encoding, which to_zarr drops
        var.attrs = {k: v for k, v in var.attrs.items() if k != "_FillValue"}
        var.attrs["grid_mapping"] = "spatial_ref"
        chunks = tuple(c[0] for c in ds[n].chunks or ())
        # count == 0 is a real value (no valid observation): no fill value, so it reopens as
        # uint16, not float with NaN; then every chunk must be stored, since a missing chunk
        # with a null fill value is undefined for Zarr v2 readers.
        fill = None if n == COUNT else NODATA
        encoding[n] = {"chunks": chunks, "compressors": (_ZARR_COMPRESSOR,), "_FillValue": fill,
                       "write_empty_chunks": fill is None}
    attrs = json.loads(json.dumps(dict(mosaic.attrs), default=str))  # Zarr attrs must be JSON
    grid = grid_info(gbox)
    # Consolidated metadata lists variables alphabetically: keep the band order for readers.
    ds.attrs = {**attrs, "band_order": names,
                "proj:code": f"EPSG:{crs.epsg}" if crs.epsg else None,
                "proj:wkt2": crs.to_wkt(version=WktVersion.WKT2_2019),
                "spatial:dimensions": list(mosaic.odc.spatial_dims),
                "spatial:transform": grid["transform"], "spatial:shape": grid["shape"],
                "spatial:bbox": grid["bounds"], "spatial:registration": "pixel"}
    return ds, encoding


def open_zarr(path: Path) -> xr.Dataset:
    """A mosaic Zarr store, lazily, as written: uint16 with 0 as nodata, bands in their order."""
    # mask_and_scale=False keeps uint16 with 0 as nodata (no float/NaN copy of the data).
    ds = xr.open_zarr(path, mask_and_scale=False)
    order = [n for n in ds.attrs.get("band_order") or [] if n in ds.data_vars]
    return ds[order] if order else ds


def _open_cog(path: Path) -> xr.Dataset:
    import rioxarray

    arr = rioxarray.open_rasterio(path, chunks={"band": -1, "y": 4 * _BLOCK, "x": 4 * _BLOCK})
    assert isinstance(arr, xr.DataArray)  # band descriptions come back as long_name
    return arr.assign_coords(band=list(arr.attrs["long_name"])).to_dataset(dim="band")


def _lock(client: Client | None) -> Any:
    """A lock that serialises writes to one file across every worker of the scheduler in use."""
    if client is None:
        # A default distributed client shows up as the scheduler's bound ``Client.get``.
        client = getattr(dask.base.get_scheduler(), "__self__", None)
    import distributed

    if isinstance(client, distributed.Client):
        return distributed.Lock(f"s2mosaic-write-{uuid.uuid4().hex}")  # shared by name
    return SerializableLock()


class _WindowWriter:
    """``dask.array.store`` target; each block reopens the file, so tasks pickle to any worker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setitem__(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        _, ys, xs = key
        with rasterio.open(self.path, "r+") as dst:
            dst.write(block, window=Window.from_slices((ys.start, ys.stop), (xs.start, xs.stop)))


def _write_cog_array(data: da.Array, gbox: GeoBox, path: Path, names: Sequence[str], *,
                     tags: Mapping[str, str], rgb: bool, overwrite: bool, client: Client | None,
                     progress: bool) -> None:
    """Stream ``(band, y, x)`` Dask blocks into a tiled GeoTIFF, then copy it to a COG.

    Why not ``odc.geo.cog.save_cog_with_dask``: it pads the raster to a multiple of 2**levels
    (301x501 px became 302x502, changing the extent) and cannot set dataset tags. Why not
    ``to_raster(driver="COG")`` on Dask: its overviews come out zeroed. So blocks go through
    windowed writes (one short-lived handle per block, under a lock) into an intermediate tiled
    GeoTIFF, and GDAL's COG driver builds the overviews from that file and lays out the final COG
    (via rasterio, so no extra dependency). The COG is renamed into place only when complete.
    """
    field = "rgb" if rgb else "cog"
    _prepare(path, overwrite, field)
    crs = gbox.crs
    assert crs is not None
    h, w = gbox.shape
    tmp, partial = _scratch(path, "tmp"), _scratch(path, "partial")
    profile: dict[str, Any] = {
        "driver": "GTiff", "dtype": str(data.dtype), "count": len(names), "width": w, "height": h,
        "crs": f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt(), "transform": gbox.affine,
        "nodata": NODATA, "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK,
        # Fast compression for the scratch copy; SPARSE_OK so creation writes no empty tiles.
        "compress": "DEFLATE", "zlevel": 1, "predictor": 2, "bigtiff": "IF_SAFER",
        "sparse_ok": True, **({"photometric": "RGB"} if rgb else {}),
    }
    # Align blocks with whole 512² tiles so every compressed tile is written exactly once.
    cy = -(-max(data.chunksize[1], 1) // _BLOCK) * _BLOCK
    cx = -(-max(data.chunksize[2], 1) // _BLOCK) * _BLOCK
    data = data.rechunk((len(names), cy, cx))
    # GDAL adds overview levels until one fits in a block: 256² blocks for small rasters, so
    # they still get overviews; 512² otherwise (fewer requests for large reads).
    options = dict(_COG_OPTIONS, BLOCKSIZE=str(_BLOCK if min(h, w) >= 4 * _BLOCK else _BLOCK // 2),
                   # Nearest keeps overview pixels real observations (and counts integers); the
                   # display product looks better averaged (GDAL's average skips nodata).
                   OVERVIEW_RESAMPLING="AVERAGE" if rgb else "NEAREST")
    try:
        with _io_errors(path), rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = tuple(names)
            dst.update_tags(AREA_OR_POINT="Area", **tags)
        target: Any = _WindowWriter(str(tmp))  # any object with __setitem__ will do
        task = da.store(data, target, lock=_lock(client), compute=False)
        _compute(task, client, progress)
        with _io_errors(path):
            rasterio.shutil.copy(str(tmp), str(partial), driver="COG", **options)
            os.replace(partial, path)
    finally:
        for p in (tmp, partial):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def grid_info(gbox: GeoBox) -> dict[str, Any]:
    """The output grid as recorded in metadata: CRS, transform, shape, bounds, resolution."""
    crs, res = gbox.crs, gbox.resolution
    assert crs is not None
    return {"crs": f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt(),
            "transform": list(gbox.affine)[:6], "shape": list(gbox.shape),
            "bounds": list(gbox.boundingbox)[:4], "resolution": [abs(res.x), abs(res.y)]}


def write_series_zarr(series: xr.Dataset, path: str | Path, *, overwrite: bool = False,
                      client: Client | None = None, progress: bool = False) -> Path:
    """Stream a ``(time, y, x)`` series into one consolidated Zarr v2 store.

    For the products of :mod:`s2mosaic._timeseries` (period series, gap-filled days, regular
    date grids). Each time step is stored as :func:`write_zarr` stores a mosaic - same CRS and
    GeoZarr attributes, CF grid mapping, Blosc/zstd, ``_FillValue`` 0 for bands, none for
    ``count`` (NaN for float variables such as indices) - with ``time`` (and any coordinate
    along it, e.g. ``period_end``) written as CF time coordinates. Zarr chunks are the Dask
    chunks: ``(time chunk, y chunk, x chunk)``. Reopen with
    ``xr.open_zarr(path, mask_and_scale=False)``.
    """
    path = Path(path)
    out, encoding = _series_dataset(series, path)
    _prepare(path, overwrite, "zarr")
    task = out.to_zarr(path, mode="w-", consolidated=True, zarr_format=2, encoding=encoding,
                       compute=False)
    with _io_errors(path):
        _compute(task, client, progress)
    return path


def _series_dataset(series: xr.Dataset, path: Path) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The dataset and encoding :func:`write_series_zarr` writes for ``series``."""
    if "time" not in series.dims:
        raise WriteError(f"{path}: write_series_zarr writes a (time, y, x) series; this dataset "
                         f"has dims {dict(series.sizes)} (use write_zarr for one mosaic)")
    names = _raster_vars(series, series_path=path)
    ds = _regular_chunks(series[names], ("time", *(series.odc.spatial_dims or ())))
    # One time step through the single-mosaic path gives the grid mapping, attributes and
    # per-variable encoding; the series adds the time chunk in front.
    plane, plane_encoding = _zarr_dataset(ds.isel(time=0, drop=True))
    sizes = ds.chunksizes.get("time")
    t_chunk = sizes[0] if sizes else ds.sizes["time"]
    variables = {}
    encoding: dict[str, dict[str, Any]] = {}
    for n in names:
        var = ds[n].variable.copy(deep=False)
        var.encoding = {}
        var.attrs = dict(plane[n].attrs)
        enc = dict(plane_encoding[n], chunks=(t_chunk, *plane_encoding[n]["chunks"]))
        if np.issubdtype(var.dtype, np.floating):
            enc["_FillValue"] = np.nan
        variables[n] = var
        encoding[n] = enc
    out = xr.Dataset(variables, coords=ds.drop_vars(names).coords, attrs=plane.attrs)
    return out.assign_coords(spatial_ref=plane.coords["spatial_ref"]), encoding
