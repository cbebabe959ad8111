"""Write a mosaic: the public :func:`write`, Zarr stores (CF + GeoZarr attributes), provenance.

Everything streams Dask chunks to disk. :func:`write` computes the (expensive) mosaic graph
exactly once: into the Zarr store, or into the COG when no Zarr is asked for; later products are
read back from that file. The COG and RGB writers are :mod:`s2mosaic._raster`'s; the stores a
tiled run fills block by block start here too (:func:`init_zarr`, :func:`write_block`,
:func:`read_digests`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox
from pyproj.enums import WktVersion

from ._cluster import keep_annotations, quiet_rasterio, quiet_workers
from ._raster import (
    COUNT,
    NODATA,
    check_rgb,
    compute,
    exists_error,
    io_errors,
    mosaic_geobox,
    open_cog,
    prepare_target,
    raster_vars,
    scratch_path,
    write_cog,
    write_rgb,
)
from ._spec import OutputSpec
from .errors import WriteError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["GDAL_CRS_ATTR", "PROVENANCE_ATTR", "WriteResult", "grid_info", "init_zarr",
           "metadata_record", "netcdf_attrs", "open_zarr", "provenance_of", "read_digests",
           "write", "write_block", "write_metadata", "write_products", "write_series_zarr",
           "write_zarr"]

#: Dataset attribute under which :func:`s2mosaic.mosaic` hands its provenance record to
#: :func:`write` (which pops it: it goes to the metadata sidecar, not into the product). A JSON
#: string, so the dataset still writes to netCDF; :func:`provenance_of` decodes it.
PROVENANCE_ATTR = "s2mosaic_provenance"
#: The array attribute GDAL's Zarr driver (3.6+, so QGIS) reads the CRS from: an object with
#: ``wkt``/``url``. GDAL before 3.9 ignores CF ``grid_mapping``.
GDAL_CRS_ATTR = "_CRS"
# Blosc+zstd: fast, multithreaded and readable by every Zarr v2 implementation (Python, JS, Java).
# Level 3 (zstd's own default): on a 1024² chunk of real L2A reflectance (29RKH B04/B08) level 5
# encoded in 19 ms to 0.60 of the raw size, level 3 in 7 ms to 0.61; the chunk writes were a
# tenth of a run's worker time at level 5.
_ZARR_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)


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
    carried = provenance_of(ds)
    ds.attrs.pop(PROVENANCE_ATTR, None)
    record = dict(carried if provenance is None else provenance)
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
    mosaic_geobox(mosaic)  # fail before any work when the mosaic has no georeferencing
    meta_path = output.metadata_path
    targets = {"zarr": output.zarr, "cog": output.cog, "rgb": output.rgb, "metadata": meta_path}
    for field, p in targets.items():
        if p is not None and os.path.lexists(p) and not output.overwrite:
            raise exists_error(p, field)
    if output.rgb is not None:
        check_rgb(mosaic, output.rgb, output.rgb_bands)

    zarr_path = cog_path = rgb_path = None
    source = mosaic
    if output.zarr is not None:
        zarr_path = write_zarr(mosaic, output.zarr, overwrite=output.overwrite,
                               client=client, progress=progress)
        # Consolidated metadata lists variables alphabetically: restore the mosaic's band order.
        source = open_zarr(zarr_path)[raster_vars(mosaic)]
    if output.cog is not None:
        cog_path = write_cog(source, output.cog, overwrite=output.overwrite,
                             client=client, progress=progress)
        if zarr_path is None:
            source = open_cog(cog_path)
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
    record["grid"] = grid_info(mosaic_geobox(mosaic))
    record["bands"] = [{"name": n, "dtype": str(mosaic[n].dtype),
                        "nodata": None if n == COUNT else NODATA} for n in raster_vars(mosaic)]
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
    return _stream_zarr(ds, encoding, path, overwrite, client, progress)


def _stream_zarr(ds: xr.Dataset, encoding: dict[str, Any], path: Path, overwrite: bool,
                 client: Client | None, progress: bool) -> Path:
    prepare_target(path, overwrite, "zarr")
    # zarr_format=2: GDAL, zarr-js, older zarr-python and most cloud viewers read v2, not yet v3.
    task = ds.to_zarr(path, mode="w-", consolidated=True, zarr_format=2, encoding=encoding,
                      compute=False)
    with io_errors(path):
        compute(task, client, progress)
    return path


def init_zarr(template: xr.Dataset, path: str | Path, *, overwrite: bool = False,
              before_publish: Callable[[Path], None] | None = None) -> Path:
    """Create a Zarr store for region writes: coordinates, CRS, attributes, empty arrays.

    ``template`` is a lazy mosaic-shaped dataset, or a ``(time, y, x)`` series laid out as
    :func:`write_series_zarr` writes one (its values are never computed); its Dask chunks
    become the Zarr chunks. The store is built under a hidden scratch name, handed to
    ``before_publish`` (the runner adds its manifest and lock there) and renamed into place, so
    ``path`` either does not exist or is a complete, initialised store. With ``overwrite`` an
    existing store is kept until the new one is ready: it is renamed aside, the new one renamed
    into place, and only then deleted (a failure before that leaves the old store as it was).
    Blocks go in with :func:`write_block`.
    """
    from ._manifest import free_space

    path = Path(path)
    ds, encoding = (_series_dataset(template, path) if "time" in template.dims
                    else _zarr_dataset(template))
    old = os.path.lexists(path)
    if old:
        _check_replaceable(path, overwrite)
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_path(path, "init")
    aside: Path | None = None
    try:
        with io_errors(path):
            ds.to_zarr(scratch, mode="w-", consolidated=True, zarr_format=2, encoding=encoding,
                       compute=False)
            if before_publish is not None:
                before_publish(scratch)
        if old:
            aside = scratch_path(path, "old")
            with io_errors(path):
                os.rename(path, aside)
        try:
            os.rename(scratch, path)
        except OSError as e:
            if aside is not None:  # put the old store back: never neither
                os.rename(aside, path)
                aside = None
            if os.path.lexists(path):
                raise WriteError(f"{path} appeared while this run initialised it: another run "
                                 "is writing the same output path; choose another path") from e
            raise WriteError(f"writing {path} failed: {e} ({free_space(path)})") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if aside is not None:
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)
    return path


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to replace ``path`` unless overwriting, and a directory unless a Zarr store (a
    typo must not wipe a directory)."""
    if not overwrite:
        raise exists_error(path, "zarr")
    if path.is_dir() and not path.is_symlink() and not any(
            (path / m).exists() for m in (".zgroup", ".zarray", "zarr.json")):
        raise WriteError(f"{path} exists and is a directory that is not a Zarr store; refusing "
                         "to delete it for output.zarr - choose another path")


def write_block(block: np.ndarray, store: str, name: str, *origin: int,
                ) -> tuple[Any, ...]:
    """Write one chunk-aligned block of variable ``name`` at ``origin`` (``(y0, x0)``, or
    ``(t0, y0, x0)`` for a series) of a Zarr store.

    Every chunk is stored, nodata-only ones too, so the store holds exactly what was computed.
    Returns ``(name, *origin, digest, bytes)`` for the run manifest.
    """
    import zarr

    from ._manifest import block_digest, free_space

    block = np.asarray(block)
    try:
        arr = zarr.open_array(f"{store}/{name}", mode="r+", zarr_format=2).with_config(
            {"write_empty_chunks": True})
        arr[tuple(slice(o, o + n) for o, n in zip(origin, block.shape, strict=True))] = block
    except OSError as e:  # a full disk, a lost mount: the tile fails (and is retried)
        raise WriteError(f"writing {name} at {list(origin)} into {store} failed: {e} "
                         f"({free_space(store)})") from e
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


def write_metadata(path: str | Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``provenance`` as indented JSON (dates, paths and other objects via ``str``)."""
    from ._manifest import write_text_atomic

    return write_text_atomic(path, json.dumps(provenance, indent=2, default=str) + "\n",
                             "the metadata sidecar")


# -- helpers -----------------------------------------------------------------------------------
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
    gbox = mosaic_geobox(mosaic)
    names = raster_vars(mosaic)
    ds = _regular_chunks(mosaic[names], mosaic.odc.spatial_dims)
    crs = gbox.crs
    assert crs is not None
    ref = (ds.coords["spatial_ref"].variable.copy() if "spatial_ref" in ds.coords
           else xr.Variable((), np.int32(crs.epsg or 0)))
    wkt = crs.to_wkt()
    gdal_crs = {"wkt": crs.to_wkt(version=WktVersion.WKT2_2019),
                **({"url": f"http://www.opengis.net/def/crs/EPSG/0/{crs.epsg}"}
                   if crs.epsg else {})}
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
        var.attrs[GDAL_CRS_ATTR] = gdal_crs
        chunks = tuple(c[0] for c in ds[n].chunks or ())
        # count == 0 is a real value (no valid observation): no fill value, so it reopens as
        # uint16, not float with NaN; then every chunk must be stored, since a missing chunk
        # with a null fill value is undefined for Zarr v2 readers.
        fill = None if n == COUNT else NODATA
        encoding[n] = {"chunks": chunks, "compressors": (_ZARR_COMPRESSOR,), "_FillValue": fill,
                       "write_empty_chunks": fill is None}
    attrs = netcdf_attrs(mosaic.attrs)  # JSON for Zarr, and valid netCDF when read back
    grid = grid_info(gbox)
    # Consolidated metadata lists variables alphabetically: keep the band order for readers.
    ds.attrs = {**attrs, "band_order": names,
                **({"proj:code": f"EPSG:{crs.epsg}"} if crs.epsg else {}),
                "proj:wkt2": gdal_crs["wkt"],
                "spatial:dimensions": list(mosaic.odc.spatial_dims),
                "spatial:transform": grid["transform"], "spatial:shape": grid["shape"],
                "spatial:bbox": grid["bounds"], "spatial:registration": "pixel"}
    return ds, encoding


def open_zarr(path: Path) -> xr.Dataset:
    """A mosaic Zarr store, lazily, as written: uint16 with 0 as nodata, bands in their order.

    Attributes come back netCDF-safe (:func:`netcdf_attrs`; GDAL's ``_CRS`` object dropped, the
    ``spatial_ref`` coordinate has the CRS), so ``open_zarr(p).to_netcdf(...)`` works.
    """
    # mask_and_scale=False keeps uint16 with 0 as nodata (no float/NaN copy of the data).
    ds = xr.open_zarr(path, mask_and_scale=False)
    order = [n for n in ds.attrs.get("band_order") or [] if n in ds.data_vars]
    ds = ds[order] if order else ds
    # band_order is the store's layout (applied above), not the mosaic's: not passed on.
    ds.attrs = netcdf_attrs({k: v for k, v in ds.attrs.items() if k != "band_order"})
    for var in ds.variables.values():
        var.attrs = netcdf_attrs({k: v for k, v in var.attrs.items() if k != GDAL_CRS_ATTR})
    return ds


def netcdf_attrs(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    """``attrs`` as every netCDF writer accepts them (netCDF3 too): strings and numbers kept,
    lists of numbers kept, booleans as 0/1, None dropped, anything else (dicts, lists of strings
    or dicts) as a JSON string."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool | np.bool_):
            v = int(v)
        elif isinstance(v, list | tuple) and v and all(
                isinstance(e, int | float | np.number) and not isinstance(e, bool) for e in v):
            v = list(v)
        elif not isinstance(v, str | int | float | np.number):
            v = json.dumps(v, default=str)
        out[str(k)] = v
    return out


def provenance_of(ds: xr.Dataset) -> dict[str, Any]:
    """The provenance record a dataset from :func:`s2mosaic.mosaic` carries (empty if none)."""
    value = ds.attrs.get(PROVENANCE_ATTR)
    if isinstance(value, str):
        return dict(json.loads(value))
    return dict(value or {})


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
    return _stream_zarr(out, encoding, path, overwrite, client, progress)


def _series_dataset(series: xr.Dataset, path: Path) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The dataset and encoding :func:`write_series_zarr` writes for ``series``."""
    if "time" not in series.dims:
        raise WriteError(f"{path}: write_series_zarr writes a (time, y, x) series; this dataset "
                         f"has dims {dict(series.sizes)} (use write_zarr for one mosaic)")
    names = raster_vars(series, series_path=path)
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
