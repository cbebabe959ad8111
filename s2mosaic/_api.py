"""The items-first face of the pipeline, in odc-stac's shape: ``mosaic(items, bands, *, ...)``.

The keyword arguments build a :class:`~s2mosaic.MosaicSpec` (:func:`items_spec`), which stays the
single source of truth: the lazy mosaic is then the spec path's (:func:`s2mosaic._pipeline.mosaic`)
on the given items, deduplicated (reprocessed products: newest baseline kept) and harmonised (BOA
offsets removed) as a search would have done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload

import pystac
import shapely
import shapely.geometry
import xarray as xr
from odc.geo.geobox import GeoBox

from . import _pipeline
from ._device import current_client, resolve_device
from ._grid import output_geobox
from ._items import footprint, item_datetime
from ._search import SearchResult, dedupe
from ._spec import MaskSpec, MosaicSpec
from .errors import ArgumentError, ArgumentTypeError, SpecError

__all__ = ["GIVEN_ITEMS", "items_spec", "load", "mosaic"]

#: ``source.stac`` of a spec built from given items: there is no STAC source to search (a
#: :func:`s2mosaic.search` of such a spec fails naming this path, which does not exist).
GIVEN_ITEMS = "<given items>"
#: The only grouping the cube makes: adjacent tiles of one overpass are one observation.
_GROUPBY = ("solar_day",)
#: Which keyword argument of :func:`mosaic` / :func:`load` sets each spec field.
_ARGUMENT = {"grid.crs": "crs", "grid.resolution": "resolution", "grid.resampling": "resampling",
             "grid": "crs/resolution", "composite.method": "method", "composite.percentile": "q",
             "composite.min_observations": "min_observations", "runtime.chunks": "chunks",
             "runtime.device": "device",
             "bands": "bands", "aoi": "bbox/aoi", "mask": "mask"}


def items_spec(
    items: Sequence[pystac.Item],
    bands: Sequence[str] | str,
    *,
    crs: str | int | None = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    aoi: Any = None,
    geobox: GeoBox | None = None,
    chunks: int | Mapping[str, int] | None = None,
    groupby: str = "solar_day",
    mask: str | MaskSpec | Mapping[str, Any] = "scl",
    method: str = "percentile",
    q: float = 25.0,
    min_observations: int = 1,
    resampling: str = "nearest",
    device: str = "auto",
) -> MosaicSpec:
    """The :class:`~s2mosaic.MosaicSpec` that :func:`mosaic` and :func:`load` build from their
    arguments (see :func:`mosaic`): ``period`` spans the items' dates, ``source.stac`` is
    :data:`GIVEN_ITEMS`, ``aoi`` is ``bbox``, ``aoi``, the extent of ``geobox`` or the union of
    the items' footprints."""
    if not items:
        raise ArgumentError("items is empty; mosaic/load need at least one pystac.Item")
    if groupby not in _GROUPBY:
        raise ArgumentError(f"groupby={groupby!r} is not supported; valid: {list(_GROUPBY)} "
                            "(items of one overpass are fused into one observation per solar day)")
    given = [n for n, v in (("bbox", bbox), ("aoi", aoi), ("geobox", geobox)) if v is not None]
    if len(given) > 1:
        raise ArgumentError(f"{' and '.join(given)} are given; pass at most one of bbox, aoi and "
                            "geobox (none: the union of the items' footprints)")
    grid: dict[str, Any] = {"crs": crs, "resolution": "native" if resolution is None else resolution,
                            "resampling": resampling}
    if geobox is not None:
        if not isinstance(geobox, GeoBox):
            raise ArgumentTypeError(f"geobox must be an odc.geo GeoBox (e.g. ds.odc.geobox); got "
                                    f"{type(geobox).__name__}")
        fixed = [n for n, v in (("crs", crs), ("resolution", resolution)) if v is not None]
        if fixed:
            raise ArgumentError(f"{fixed[0]} is given with geobox, which fixes the grid; drop "
                                f"{fixed[0]} or geobox")
        grid |= {"crs": str(geobox.crs), "resolution": abs(geobox.resolution.x)}
        area: Any = _geobox_aoi(geobox)
    elif bbox is not None:
        if isinstance(bbox, str) or not isinstance(bbox, Sequence) or len(bbox) != 4:
            raise ArgumentError(f"bbox={bbox!r}: expected [west, south, east, north] in EPSG:4326")
        area = list(bbox)
    elif aoi is not None:
        area = aoi
    else:
        area = _footprints_union(items)
    times = [item_datetime(i) for i in items]
    try:
        return MosaicSpec(
            aoi=area,
            period={"start": min(times).date(), "end": max(times).date()},
            source={"stac": GIVEN_ITEMS},
            bands=bands,
            grid=grid,
            mask=_mask_spec(mask),
            composite={"method": method, "percentile": q, "min_observations": min_observations},
            runtime={"chunks": _chunks(chunks), "device": device},
        )
    except SpecError as e:
        arg = next((a for f, a in _ARGUMENT.items() if e.field == f or e.field.startswith(f + ".")),
                   None)
        if arg is None:
            raise
        raise ArgumentError(f"{arg}: invalid value {e.value!r} (spec field {e.field}); "
                            f"{e.valid}") from None


@overload
def mosaic(spec: MosaicSpec, /, items: Sequence[pystac.Item] | None = None, *,
           geobox: GeoBox | None = None, device: str | None = None) -> xr.Dataset: ...


@overload
def mosaic(items: Iterable[pystac.Item], /, bands: Sequence[str] | str, *,
           crs: str | int | None = None, resolution: float | None = None,
           bbox: Sequence[float] | None = None, aoi: Any = None, geobox: GeoBox | None = None,
           chunks: int | Mapping[str, int] | None = None, groupby: str = "solar_day",
           mask: str | MaskSpec | Mapping[str, Any] = "scl", method: str = "percentile",
           q: float = 25.0, min_observations: int = 1, resampling: str = "nearest",
           device: str | None = None) -> xr.Dataset: ...


def mosaic(
    first: MosaicSpec | Iterable[pystac.Item],
    second: Any = None,
    /,
    *,
    items: Sequence[pystac.Item] | None = None,
    bands: Sequence[str] | str | None = None,
    crs: str | int | None = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    aoi: Any = None,
    geobox: GeoBox | None = None,
    chunks: int | Mapping[str, int] | None = None,
    groupby: str = "solar_day",
    mask: str | MaskSpec | Mapping[str, Any] = "scl",
    method: str = "percentile",
    q: float = 25.0,
    min_observations: int = 1,
    resampling: str = "nearest",
    device: str | None = None,
) -> xr.Dataset:
    """The lazy cloud-free mosaic of some STAC items (``mosaic(items, bands, ...)``, like
    ``odc.stac.load``) or of a spec (``mosaic(spec, items=None, geobox=None)``).

    Parameters
    ----------
    first
        The ``pystac.Item``\\ s to mosaic (a list, an ``ItemCollection``, pystac-client's
        ``search.items()``), or a :class:`~s2mosaic.MosaicSpec`.
    second
        With items: ``bands``. With a spec: ``items``.
    items
        Spec path only: the items to use as they are; None searches ``spec.source`` and applies
        ``spec.select``.
    bands
        Bands to mosaic: asset keys (``"B04"``) or common names (``"red"``).
    crs
        Output CRS (``"EPSG:32633"``, an EPSG number). None: the first item's CRS with the
        native resolution, else the UTM zone of the area's centre.
    resolution
        Pixel size in CRS units; None: the native grid of the first item's first band.
    bbox, aoi, geobox
        The area, at most one: ``bbox`` ``[west, south, east, north]`` in EPSG:4326, ``aoi`` any
        AOI a spec takes (GeoJSON mapping, WKT, a file path), or ``geobox`` the exact output grid
        (e.g. ``ds.odc.geobox`` of a cube loaded elsewhere). Pixels outside ``bbox``/``aoi`` are
        nodata. None of them: the union of the items' footprints.
    chunks
        Spatial chunk size in pixels, an int or ``{"x": n, "y": n}`` (time is always one chunk).
        Default 1024.
    groupby
        ``"solar_day"`` only: adjacent tiles of one overpass are one observation.
    mask
        ``"scl"``, ``"ocm"``, ``"ocm+scl"``, ``"s2cloudless"``, ``"csmask"``,
        ``"csmask+scl"``, ``"none"``, a
        :class:`~s2mosaic._spec.MaskSpec` or its fields as a dict.
    method, q, min_observations
        The composite (see :func:`s2mosaic.composite.composite`): ``percentile`` (``q`` in
        [0, 100]), ``median``, ``mean``, ``first``, ``last`` or ``medoid``; pixels with fewer
        valid observations are nodata.
    resampling
        Resampling of reflectance bands onto the grid (SCL always uses nearest).
    device
        ``"auto"``, ``"cpu"`` or ``"gpu"`` (``runtime.device``): where masking and compositing
        run (:func:`s2mosaic._device.resolve_device`, on the current Dask client's workers).
        None: the spec's, ``"auto"`` for items.

    Returns
    -------
    xr.Dataset
        Lazy ``(y, x)`` variables named as ``bands`` plus ``count``; nodata 0. The items are
        deduplicated first (reprocessed products of one acquisition: the newest baseline is
        kept, the others listed in the provenance as dropped) and their BOA offsets removed.
        The provenance (``attrs["s2mosaic_provenance"]``) holds the spec built from the
        arguments.

    Raises
    ------
    ArgumentError
        An argument is invalid; the message names it and what is valid.

    Examples
    --------
    >>> import pystac_client, s2mosaic  # doctest: +SKIP
    >>> items = pystac_client.Client.open(url).search(  # doctest: +SKIP
    ...     collections=["sentinel-2-l2a"], bbox=bbox, datetime="2024-06").item_collection()
    >>> m = s2mosaic.mosaic(items, bands=["red", "nir"], crs="EPSG:32633",  # doctest: +SKIP
    ...                     resolution=10, bbox=bbox, q=25)
    """
    if isinstance(first, MosaicSpec):
        extra = _set_options(bands=bands, crs=crs, resolution=resolution, bbox=bbox, aoi=aoi,
                             chunks=chunks, groupby=(groupby, "solar_day"), mask=(mask, "scl"),
                             method=(method, "percentile"), q=(q, 25.0),
                             min_observations=(min_observations, 1),
                             resampling=(resampling, "nearest"))
        if extra:
            raise ArgumentError(f"{extra[0]} is given with a MosaicSpec, which already says it; "
                                f"set it in the spec (spec.replace(...)) or pass items instead")
        if second is not None and items is not None:
            raise ArgumentError("items is given twice (positionally and as items=)")
        resolved = None if device is None else resolve_device(device, current_client())
        return _pipeline.mosaic(first, second if second is not None else items, geobox=geobox,
                                device=resolved)
    if items is not None:
        raise ArgumentError("items= is for mosaic(spec, items=...); with items first, pass them "
                            "as the first argument")
    if second is not None and bands is not None:
        raise ArgumentError("bands is given twice (positionally and as bands=)")
    found = _items(first)
    spec = items_spec(found, _bands(second if second is not None else bands), crs=crs,
                      resolution=resolution, bbox=bbox, aoi=aoi, geobox=geobox, chunks=chunks,
                      groupby=groupby, mask=mask, method=method, q=q,
                      min_observations=min_observations, resampling=resampling,
                      device="auto" if device is None else device)
    return _pipeline.mosaic(spec, found, geobox=geobox)


def load(
    items: Iterable[pystac.Item],
    bands: Sequence[str] | str,
    *,
    crs: str | int | None = None,
    resolution: float | None = None,
    bbox: Sequence[float] | None = None,
    aoi: Any = None,
    geobox: GeoBox | None = None,
    chunks: int | Mapping[str, int] | None = None,
    groupby: str = "solar_day",
    mask: str | MaskSpec | Mapping[str, Any] = "scl",
    resampling: str = "nearest",
) -> xr.Dataset:
    """The masked, harmonised cube of ``items`` (what :func:`mosaic` composites), lazily.

    The arguments are :func:`mosaic`'s (without the composite's). Items are deduplicated and
    their BOA offsets removed, items of one overpass fused per solar day.

    Returns
    -------
    xr.Dataset
        ``(time, y, x)`` variables named as ``bands`` (source dtype, attr ``nodata``) and
        ``valid``, boolean: True where the observation is clear (cloud mask of ``mask``), not
        nodata and inside ``bbox``/``aoi``. Time is one chunk, so
        ``s2mosaic.load(...).s2.composite()`` (which uses ``valid``) reduces it in one pass.

    Examples
    --------
    >>> cube = s2mosaic.load(items, ["red", "nir"], resolution=20, bbox=bbox)  # doctest: +SKIP
    >>> clear = cube.valid.mean("time")  # doctest: +SKIP
    """
    found = _items(items)
    spec = items_spec(found, _bands(bands), crs=crs, resolution=resolution, bbox=bbox, aoi=aoi,
                      geobox=geobox, chunks=chunks, groupby=groupby, mask=mask,
                      resampling=resampling)
    gbox = geobox or output_geobox(spec, found)
    cube, valid = _pipeline.masked_cube(spec, found, gbox)
    out = cube[list(spec.bands)].assign(valid=valid.transpose(*cube[spec.bands[0]].dims))
    out.attrs = dict(cube.attrs)
    return out


# -- arguments ----------------------------------------------------------------------------------
def _items(items: Any) -> SearchResult:
    """The items, deduplicated (newest processing kept) and sorted by time then id."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise ArgumentTypeError(
            f"items must be pystac.Items (a list, an ItemCollection, pystac-client's "
            f"search.items()), or a MosaicSpec as the only positional argument; got "
            f"{type(items).__name__}")
    found = list(items)
    bad = next((i for i in found if not isinstance(i, pystac.Item)), None)
    if bad is not None:
        raise ArgumentTypeError(f"items must all be pystac.Item; got a {type(bad).__name__} "
                                "(read dicts with pystac.Item.from_dict)")
    if not found:
        raise ArgumentError("items is empty; mosaic/load need at least one pystac.Item")
    kept, dropped = dedupe(found)
    kept.sort(key=lambda i: (item_datetime(i), i.id))
    return SearchResult(kept, dropped, {"items": "given"})


def _bands(bands: Any) -> Sequence[str] | str:
    if bands is None:
        raise ArgumentError("bands is required, e.g. mosaic(items, bands=['red', 'green', 'blue']) "
                            "(asset keys such as 'B04' or common names such as 'red')")
    if not isinstance(bands, str | Sequence) or any(not isinstance(b, str) for b in bands):
        raise ArgumentTypeError(f"bands must be band names (str), e.g. ['red', 'nir']; got "
                                f"{bands!r}")
    return bands


def _mask_spec(mask: Any) -> MaskSpec:
    if isinstance(mask, MaskSpec):
        return mask
    try:
        if isinstance(mask, str):
            return MaskSpec(method=mask)
        if isinstance(mask, Mapping):
            return MaskSpec(**mask)
    except SpecError as e:
        raise ArgumentError(f"mask: invalid value {e.value!r} for {e.field}; {e.valid}") from None
    except TypeError as e:
        raise ArgumentError(f"mask={dict(mask)!r}: {e}; valid keys are "
                            f"{sorted(MaskSpec.field_names())}") from None
    raise ArgumentTypeError(f"mask must be a method name ('scl', 'ocm', 'ocm+scl', 's2cloudless', "
                            f"'csmask', 'csmask+scl', 'none'), a MaskSpec or a dict of its fields; "
                            f"got {mask!r}")


def _chunks(chunks: Any) -> int:
    if chunks is None:
        return 1024
    if isinstance(chunks, int) and not isinstance(chunks, bool):
        return chunks
    if isinstance(chunks, Mapping):
        unknown = sorted(set(chunks) - {"x", "y", "time"})
        xy = {chunks.get("x"), chunks.get("y")} - {None}
        if not unknown and chunks.get("time", -1) == -1 and len(xy) == 1:
            (size,) = xy
            if isinstance(size, int) and not isinstance(size, bool):
                return size
    raise ArgumentError(f"chunks={chunks!r}: expected a spatial chunk size in pixels (an int, or "
                        "{'x': n, 'y': n} with the same n); time is always one chunk "
                        "({'time': -1})")


def _set_options(**options: Any) -> list[str]:
    """Names of the items-first options given (not None, or not their default) with a spec."""
    out = []
    for name, value in options.items():
        if isinstance(value, tuple) and len(value) == 2 and name != "bbox":
            if value[0] != value[1]:
                out.append(name)
        elif value is not None:
            out.append(name)
    return out


def _footprints_union(items: Sequence[pystac.Item]) -> dict[str, Any]:
    shapes = []
    for item in items:
        fp = footprint(item)
        if fp is None:
            raise ArgumentError(f"item {item.id!r} has no geometry, so the area cannot be taken "
                                "from the items' footprints; pass bbox, aoi or geobox")
        shapes.append(fp)
    return dict(shapely.geometry.mapping(shapely.union_all(shapes)))


def _geobox_aoi(geobox: GeoBox) -> dict[str, Any]:
    """The extent of ``geobox`` in EPSG:4326, grown by about a metre so that the AOI contains
    every pixel of the grid (the AOI mask is then all True: the grid is the area)."""
    # edges densified every 10 pixels, so the curved edges in EPSG:4326 are followed
    extent = geobox.extent.to_crs("EPSG:4326", resolution=abs(geobox.resolution.x) * 10)
    return dict(shapely.geometry.mapping(extent.geom.buffer(1e-5)))

