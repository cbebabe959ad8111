"""The xarray/Dask face of the composite: a (time, y, x) cube in, a (y, x) mosaic out.

All bands of a spatial chunk, and their count of valid observations, come out of ONE task:
``dask.array.blockwise`` takes every band and the mask of a chunk as separate arguments, contracts
the (single) time chunk and adds a band axis. Stacking bands with ``da.stack`` first would give
the band axis chunks of size 1 and so one task per band, or an extra concatenation layer. The
task hands the band chunks to the kernels as they are (no stacked copy); the medoid, which needs
every band of a pixel at once, is reduced in that same task.

Parallelism: inside a Dask graph each task runs the *serial* Numba kernel, because Dask already
runs one task per thread: a parallel kernel per task would oversubscribe the cores, and Numba's
``workqueue`` threading layer (its fallback where TBB and OpenMP are absent) must not be entered
from several threads at once. A NumPy-backed cube is reduced in one call of the *parallel*
kernel, which is the right tool for one big call. CuPy chunks run the GPU kernels and stay on the
GPU: the result's chunks are CuPy arrays (``meta`` follows the input), moved to the host only by
whoever writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.utils import meta_from_array

from ..errors import ArgumentError, ArgumentTypeError
from ._kernels import check_method, check_min_obs, check_q, is_cupy, reduce_bands

__all__ = ["PERCENTILE_DEFINITION", "composite"]

_TIME = "time"
_COUNT = "count"
_BAND_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))
#: How the percentile is defined: recorded in the composite's attrs and the provenance record.
PERCENTILE_DEFINITION = (
    "NumPy's default 'linear' percentile (method='linear') over the valid observations of each "
    "pixel, rounded half to even to the source dtype; pixels with fewer than min_observations "
    "valid observations are nodata (0)"
)


@dataclass(frozen=True)
class _ChunkReducer:
    """The task function: reduces one spatial chunk of every band (NumPy or CuPy). Enters the
    Dask graph.

    A frozen dataclass so that it pickles to distributed workers and tokenizes by value, which
    keeps task names stable for identical inputs.
    """

    method: str
    """Kernel method name (one of ``METHODS``)."""
    q: float | None
    """Percentile for ``method="percentile"``; None otherwise."""
    min_obs: int
    """Pixels with fewer valid observations become 0."""
    parallel: bool
    """Use Numba's thread pool; False inside Dask, whose chunks already run in parallel."""

    def __call__(self, valid: Any, *bands: Any) -> Any:
        # The (T, y, x) blocks go to the kernels as they are: no stacked copy of the chunk.
        # In the graph, each argument is the list of its blocks along time: exactly one.
        valid = _single_block(valid)
        bands = tuple(_single_block(b) for b in bands)
        return reduce_bands(self.method, bands, valid, self.q, self.min_obs, self.parallel)


def _single_block(x: Any) -> Any:
    if isinstance(x, list):
        (x,) = x
    return x


def composite(
    cube: xr.Dataset,
    valid: xr.DataArray,
    *,
    method: str = "percentile",
    q: float = 25.0,
    min_observations: int = 1,
) -> xr.Dataset:
    """Reduce a (time, y, x) cube to a (y, x) mosaic, pixel by pixel, over valid observations.

    Parameters
    ----------
    cube
        One data variable per band, dims ``("time", y, x)``, uint16 (or uint8), Dask- or
        NumPy-backed. A Dask cube must hold ``time`` in a single chunk (``odc.stac.load(...,
        chunks={"time": -1, "x": 2048, "y": 2048})``).
    valid
        Boolean ``("time", y, x)``, True where an observation is usable; same coordinates (and
        ideally the same chunks) as ``cube``.
    method
        ``"percentile"``, ``"median"``, ``"mean"``, ``"first"`` / ``"last"`` (first / last valid
        in time order) or ``"medoid"`` (per pixel, the valid observation nearest to the per-band
        median, in squared Euclidean distance over all bands; every band then comes from that
        one observation).
    q
        Percentile in [0, 100], used by ``method="percentile"`` only (``"median"`` is 50).
        NumPy's default "linear" definition over the valid observations, rounded half-to-even.
    min_observations
        Pixels with fewer valid observations get 0, the output nodata.

    Returns
    -------
    xr.Dataset
        The band variables (dims ``(y, x)``, source dtype, ``nodata=0``) plus ``count`` (uint16,
        valid observations per pixel), with every coordinate of ``cube`` that does not depend on
        time (``y``, ``x``, ``spatial_ref``). Lazy when ``cube`` is Dask-backed: one task per
        spatial chunk computes all bands and the count.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> red = xr.DataArray(np.array([[[10]], [[20]], [[40]]], np.uint16), dims=("time", "y", "x"))
    >>> ok = xr.DataArray(np.ones((3, 1, 1), bool), dims=("time", "y", "x"))
    >>> out = composite(xr.Dataset({"red": red}), ok, method="percentile", q=25)
    >>> int(out.red[0, 0]), int(out["count"][0, 0])
    (15, 3)
    """
    method_name = check_method(method)
    min_obs = check_min_obs(min_observations, "min_observations")
    q_kernel = check_q(q, "q") if method_name == "percentile" else None
    names, dims = _check_inputs(cube, valid)
    try:
        cube, valid = xr.align(cube, valid.transpose(*dims), join="exact")
    except ValueError as err:
        raise ArgumentError(
            f"valid does not share the coordinates of cube ({err}); build the mask from the "
            "same loaded cube (same items, grid and time steps)"
        ) from None

    bands = [cube[name].data for name in names]
    mask = valid.data
    lazy = any(isinstance(a, da.Array) for a in (*bands, mask))
    if lazy:
        stacked = _lazy_reduce(names, bands, mask, method_name, q_kernel, min_obs)
    else:
        reducer = _ChunkReducer(method_name, q_kernel, min_obs, parallel=True)
        stacked = reducer(_as_array(mask), *(_as_array(b) for b in bands))
    return assemble(cube, names, dims[1:], stacked, method_name, q_kernel, min_obs)


def _as_array(x: Any) -> Any:
    """NumPy arrays and CuPy arrays as they are (CuPy refuses ``np.asarray``)."""
    return x if is_cupy(x) else np.asarray(x)


def _check_inputs(cube: xr.Dataset, valid: xr.DataArray) -> tuple[list[str], tuple[str, ...]]:
    if not isinstance(cube, xr.Dataset):
        raise ArgumentTypeError(
            f"cube must be an xarray.Dataset (one variable per band); got {type(cube)}")
    if not isinstance(valid, xr.DataArray):
        raise ArgumentTypeError(f"valid must be a boolean xarray.DataArray; got {type(valid)}")
    names = [str(name) for name in cube.data_vars]
    if not names:
        raise ArgumentError("cube has no data variables; it needs one variable per band")
    if _COUNT in names:
        raise ArgumentError(
            f"cube has a band named {_COUNT!r}, which the composite uses for the number of "
            "valid observations; rename the band"
        )
    dims = cube[names[0]].dims
    if len(dims) != 3 or dims[0] != _TIME:
        raise ArgumentError(
            f"cube[{names[0]!r}] has dims {dims}; expected ('time', y, x), e.g. "
            "('time', 'y', 'x') as odc.stac.load returns"
        )
    for name in names:
        var = cube[name]
        if var.dims != dims:
            raise ArgumentError(
                f"cube[{name!r}] has dims {var.dims}; expected {dims} like {names[0]!r}"
            )
        if var.dtype not in _BAND_DTYPES:
            raise ArgumentTypeError(
                f"cube[{name!r}] has dtype {var.dtype}; the composite takes uint16 (or uint8) "
                "bands. Load with the native dtype (odc.stac.load(..., dtype='uint16'))"
            )
    if set(valid.dims) != set(dims):
        raise ArgumentError(f"valid has dims {valid.dims}; expected {dims} like the cube's bands")
    if valid.dtype != np.bool_:
        raise ArgumentTypeError(
            f"valid has dtype {valid.dtype}; it must be boolean (True = usable)")
    return names, tuple(str(d) for d in dims)


def _lazy_reduce(
    names: list[str],
    bands: list[Any],
    mask: Any,
    method: str,
    q: float | None,
    min_obs: int,
) -> da.Array:
    """One blockwise layer: per spatial chunk, (B + 1, y, x) = reduced bands + count."""
    template = next(a for a in (*bands, mask) if isinstance(a, da.Array))
    spatial_chunks = template.chunks[1:]
    arrays = [
        a if isinstance(a, da.Array) else da.from_array(a, chunks=(-1, *spatial_chunks))
        for a in (mask, *bands)
    ]
    labels = ["valid", *(f"cube[{n!r}]" for n in names)]
    for label, arr in zip(labels, arrays, strict=True):
        if arr.numblocks[0] != 1:
            raise ArgumentError(
                f"{label} is split into {arr.numblocks[0]} chunks along 'time' "
                f"{arr.chunks[0]}; the composite reduces all observations of a pixel in one task, "
                "so time must be a single chunk. Load with chunks={'time': -1, 'x': ..., "
                "'y': ...} (rechunking time after loading shuffles the whole cube)"
            )
    reducer = _ChunkReducer(method, q, min_obs, parallel=False)
    args: list[Any] = []
    for arr in arrays:
        args += [arr, "tyx"]
    return da.blockwise(
        reducer,
        "byx",
        *args,
        new_axes={"b": len(names) + 1},
        # Lists of blocks along the contracted time index (one block each, checked above):
        # concatenate=True would "concatenate" each single block into a fresh copy.
        concatenate=False,
        dtype=np.uint16,
        meta=meta_from_array(template, ndim=3, dtype=np.uint16),
        token=f"s2mosaic-composite-{method}",
    )


def assemble(
    cube: xr.Dataset,
    names: list[str],
    space: tuple[str, ...],
    stacked: Any,
    method: str,
    q: float | None,
    min_obs: int,
) -> xr.Dataset:
    """The composite Dataset from the ``(B + 1, y, x)`` uint16 ``stacked`` result (bands, then
    the count); also used by the fused per-chunk task (:mod:`s2mosaic._fused`)."""
    # Every coordinate that does not depend on time: y, x, spatial_ref, ...
    out = cube.drop_vars(list(cube.data_vars)).drop_dims(_TIME, errors="ignore")
    grid_mappings: set[tuple[str, Any]] = set()
    for i, name in enumerate(names):
        src = cube[name]
        values = stacked[i]
        if values.dtype != src.dtype:
            values = values.astype(src.dtype)
        attrs = {k: v for k, v in src.attrs.items() if k != "_FillValue"}
        attrs["nodata"] = 0
        # odc-stac records grid_mapping in .encoding, other loaders in .attrs; keep it where it
        # was (xarray refuses to encode a key present in both).
        encoding = {}
        if "grid_mapping" in src.attrs:
            grid_mappings.add(("attrs", src.attrs["grid_mapping"]))
        elif "grid_mapping" in src.encoding:
            encoding["grid_mapping"] = src.encoding["grid_mapping"]
            grid_mappings.add(("encoding", src.encoding["grid_mapping"]))
        out[name] = xr.Variable(space, values, attrs=attrs, encoding=encoding)
    count = xr.Variable(
        space, stacked[len(names)], attrs={"long_name": "number of valid observations"}
    )
    if len(grid_mappings) == 1:
        where, grid_mapping = grid_mappings.pop()
        (count.attrs if where == "attrs" else count.encoding)["grid_mapping"] = grid_mapping
    out[_COUNT] = count
    ds_attrs: dict[str, Any] = {**cube.attrs, "composite_method": method}
    if method in ("percentile", "median"):
        ds_attrs["composite_percentile"] = 50.0 if q is None else q
        ds_attrs["percentile_definition"] = PERCENTILE_DEFINITION
    ds_attrs["min_observations"] = min_obs
    out.attrs = ds_attrs
    return out
