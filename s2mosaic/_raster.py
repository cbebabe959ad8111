"""Raster products on disk: the COG writer, the 8-bit RGB display product, shared plumbing.

Everything streams Dask chunks to disk; nothing loads the whole mosaic except the small PNG
display product. The plumbing under every product (:mod:`s2mosaic._write`'s Zarr stores too):
georeferencing and variable checks, refusing or safely replacing an existing target (scratch
siblings renamed into place), I/O errors as :class:`~s2mosaic.errors.WriteError`, and computing
on a client or the current scheduler with optional progress.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.enums
import rasterio.shutil
import xarray as xr
from dask.diagnostics import ProgressBar
from dask.utils import SerializableLock
from odc.geo.geobox import GeoBox
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .errors import WriteError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["COUNT", "MAX_PNG_PIXELS", "NODATA", "REFLECTANCE_SCALE", "check_rgb", "compute",
           "exists_error", "io_errors", "is_reflectance", "mosaic_geobox", "open_cog",
           "prepare_target", "raster_vars", "scratch_path", "stretch_rgb", "write_cog",
           "write_rgb"]

NODATA = 0
COUNT = "count"
#: Band values are reflectance × 10000 (uint16): reflectance = value × scale + 0.
REFLECTANCE_SCALE = 0.0001
#: Largest PNG display product (pixels); beyond this write a ``.tif`` display COG instead.
MAX_PNG_PIXELS = 16384 * 16384
_BLOCK = 512
# GDAL's COG driver options. DEFLATE over ZSTD: every GeoTIFF reader in the wild decodes it.
_COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "BIGTIFF": "IF_SAFER",
                "NUM_THREADS": "ALL_CPUS"}


def write_cog(mosaic: xr.Dataset, path: str | Path, *, overwrite: bool = False,
              client: Client | None = None, progress: bool = False) -> Path:
    """Write a Cloud-Optimized GeoTIFF: every band variable in order, then ``count``.

    uint16, nodata 0, DEFLATE + horizontal predictor, 512² blocks (256² below 2048 px),
    internal overviews (nearest, so overview pixels are real observations), band descriptions =
    variable names, tags ``AREA_OR_POINT=Area`` and ``s2mosaic_<attr>`` for scalar attributes.
    Reflectance bands carry scale 0.0001 and offset 0 (``count`` and float variables none);
    colour interpretation is red/green/blue only when the first three bands are exactly
    ``red, green, blue`` (else undefined: a NIR false-colour order must not pass for RGB).
    """
    names = raster_vars(mosaic)
    # Only plain scalar attrs with identifier keys: GDAL splits metadata keys at ':' and '=', and
    # the proj:/spatial: attrs of a reopened Zarr are already in the GeoTIFF keys.
    tags = {f"s2mosaic_{k}": str(v) for k, v in mosaic.attrs.items()
            if str(k).isidentifier() and isinstance(v, str | int | float | bool | np.generic)}
    data = _stack(mosaic, names)
    _write_cog_array(data, mosaic_geobox(mosaic), Path(path), names, tags=tags,
                     rgb=False, colour=list(names[:3]) == ["red", "green", "blue"],
                     scaled=[is_reflectance(n, mosaic[n].dtype) for n in names],
                     overwrite=overwrite, client=client, progress=progress)
    return Path(path)


def is_reflectance(name: str, dtype: Any) -> bool:
    """Whether variable ``name`` holds reflectance × 10000 (uint16 bands, not ``count``)."""
    return name != COUNT and np.dtype(dtype) == np.uint16


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
    check_rgb(mosaic, path, bands)
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise WriteError(f"RGB value_range {tuple(value_range)} for {path}: expected low < high "
                         "(output.rgb_range, e.g. [0, 3000])")
    count = mosaic[COUNT].data if COUNT in mosaic.data_vars else None
    rgb, valid = stretch_rgb(_stack(mosaic, list(bands)), count, (low, high))
    if path.suffix.lower() != ".png":
        _write_cog_array(rgb, mosaic_geobox(mosaic), path, list(bands), tags={}, rgb=True,
                         colour=True, scaled=[False] * 3, overwrite=overwrite, client=client,
                         progress=progress)
        return path
    from PIL import Image

    prepare_target(path, overwrite, "rgb")
    alpha = (valid * np.uint8(255)).astype("uint8")[None]
    (pixels,) = compute(da.concatenate([rgb, alpha]), client, progress)
    partial = scratch_path(path, "partial")
    with io_errors(path):
        Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels, 0, -1))).save(partial, "PNG")
        os.replace(partial, path)
    return path


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


def open_cog(path: Path) -> xr.Dataset:
    import rioxarray

    with warnings.catch_warnings():  # count has no scale: values are read unscaled anyway
        warnings.filterwarnings("ignore", "Scales differ across bands", UserWarning)
        arr = rioxarray.open_rasterio(path, chunks={"band": -1, "y": 4 * _BLOCK,
                                                    "x": 4 * _BLOCK})
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
                     tags: Mapping[str, str], rgb: bool, colour: bool, scaled: Sequence[bool],
                     overwrite: bool, client: Client | None, progress: bool) -> None:
    """Stream ``(band, y, x)`` Dask blocks into a tiled GeoTIFF, then copy it to a COG.

    Why not ``odc.geo.cog.save_cog_with_dask``: it pads the raster to a multiple of 2**levels
    (301x501 px became 302x502, changing the extent) and cannot set dataset tags. Why not
    ``to_raster(driver="COG")`` on Dask: its overviews come out zeroed. So blocks go through
    windowed writes (one short-lived handle per block, under a lock) into an intermediate tiled
    GeoTIFF, and GDAL's COG driver builds the overviews from that file and lays out the final COG
    (via rasterio, so no extra dependency). The COG is renamed into place only when complete.
    """
    field = "rgb" if rgb else "cog"
    prepare_target(path, overwrite, field)
    crs = gbox.crs
    assert crs is not None
    h, w = gbox.shape
    tmp, partial = scratch_path(path, "tmp"), scratch_path(path, "partial")
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
        with io_errors(path), rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = tuple(names)
            # GDAL band metadata (GDAL_METADATA tag; the COG driver copies it): rio info,
            # gdalinfo, QGIS and rioxarray (mask_and_scale) read scale/offset from it.
            dst.scales = tuple(REFLECTANCE_SCALE if s else 1.0 for s in scaled)
            dst.offsets = (0.0,) * len(names)
            if colour:  # the display product, or bands that start red, green, blue
                ci = rasterio.enums.ColorInterp
                dst.colorinterp = [ci.red, ci.green, ci.blue, *[ci.undefined] * (len(names) - 3)]
            dst.update_tags(AREA_OR_POINT="Area", **tags)
        target: Any = _WindowWriter(str(tmp))  # any object with __setitem__ will do
        task = da.store(data, target, lock=_lock(client), compute=False)
        compute(task, client, progress)
        with io_errors(path):
            rasterio.shutil.copy(str(tmp), str(partial), driver="COG", **options)
            os.replace(partial, path)
    finally:
        for p in (tmp, partial):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


# -- helpers -----------------------------------------------------------------------------------
def mosaic_geobox(ds: xr.Dataset) -> GeoBox:
    gbox = ds.odc.geobox
    if not isinstance(gbox, GeoBox) or gbox.crs is None:
        raise WriteError("the mosaic has no usable georeferencing (odc-geo found no GeoBox/CRS); "
                         "expected y/x coordinates and a spatial_ref coordinate as produced by "
                         "odc.stac.load or odc.geo.xr.xr_zeros")
    return gbox


def raster_vars(ds: xr.Dataset, series_path: Path | None = None) -> list[str]:
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


def check_rgb(ds: xr.Dataset, path: Path, bands: Sequence[str]) -> None:
    missing = [b for b in bands if b not in ds.data_vars]
    if len(bands) != 3 or missing:
        raise WriteError(f"RGB display product {path}: output.rgb_bands must name three variables "
                         f"of the mosaic; missing {missing or list(bands)}, available "
                         f"{[str(n) for n in ds.data_vars]}")
    h, w = mosaic_geobox(ds).shape
    if path.suffix.lower() == ".png" and h * w > MAX_PNG_PIXELS:
        raise WriteError(f"RGB display product {path}: {w}x{h} pixels is too large for a PNG "
                         f"(limit {MAX_PNG_PIXELS} pixels, built in memory); use a .tif path for "
                         "output.rgb, which is written as a tiled COG")


def exists_error(path: Path, field: str) -> WriteError:
    return WriteError(f"{path} already exists (output.{field}); pass `output.overwrite: true` "
                      "(overwrite=True) to replace it, or choose another path")


def prepare_target(path: Path, overwrite: bool, field: str) -> None:
    """Refuse an existing ``path`` unless overwriting; create parents.

    Files (COG, PNG) are kept until the new one is complete and renamed over them; a Zarr store
    (a directory) has to go before the write starts.
    """
    if os.path.lexists(path):
        if not overwrite:
            raise exists_error(path, field)
        if path.is_dir() and not path.is_symlink():
            # Only ever delete something that is a Zarr store: a typo must not wipe a directory.
            if not any((path / m).exists() for m in (".zgroup", ".zarray", "zarr.json")):
                raise WriteError(f"{path} exists and is a directory that is not a Zarr store; "
                                 f"refusing to delete it for output.{field} - choose another path")
            shutil.rmtree(path)
        elif field == "zarr":
            path.unlink()
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def scratch_path(path: Path, kind: str) -> Path:
    """A hidden sibling of ``path`` (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}{path.suffix}")


@contextlib.contextmanager
def io_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, RasterioError) as e:
        raise WriteError(f"writing {path} failed: {e}; check the path is writable and the disk "
                         "has space") from e


def compute(obj: Any, client: Client | None, progress: bool) -> tuple[Any, ...]:
    """Compute on ``client`` if given, else on the current scheduler; optionally show progress."""
    if client is not None:
        future = client.compute(obj)
        if progress:
            from distributed import progress as dist_progress

            # The widget only in Jupyter with ipywidgets (else distributed raises on import);
            # a text bar everywhere else.
            dist_progress(future, notebook=in_jupyter() and has_widgets())
        return (future.result(),)
    with ProgressBar() if progress else contextlib.nullcontext():
        return tuple(dask.compute(obj))


def interactive() -> bool:
    """Whether progress can be drawn live: stdout is a terminal, or this is Jupyter with
    ``ipywidgets`` (without it rich warns and distributed raises: callers print plain lines)."""
    from rich.console import Console

    return Console().is_terminal or (in_jupyter() and has_widgets())


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (as rich detects it)."""
    from rich.console import Console

    return Console().is_jupyter


def has_widgets() -> bool:
    """Whether ``ipywidgets`` imports (the ``notebook`` extra), needed for live progress in Jupyter."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
