"""The spine as one lazy expression: search → grid → cube → mask → composite, and its provenance."""

from __future__ import annotations

import datetime as dt
import functools
import platform
import time
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from typing import Any

import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from ._cube import load_cube
from ._device import current_client, resolve_device
from ._fused import fused_composite
from ._grid import aoi_mask, output_geobox
from ._items import boa_offset, item_datetime, mask_band_keys, resolve_band, scl_asset_key
from ._prune import SclInvalid, prunes
from ._search import SearchResult, search
from ._select import apply_selection
from ._spec import MosaicSpec
from ._write import PROVENANCE_ATTR, netcdf_attrs
from .composite import PERCENTILE_DEFINITION
from .errors import DISTRIBUTION
from .masks import MaskContext, scl_invalid, valid_mask

__all__ = ["masked_cube", "mosaic", "provenance", "scl_gate", "software_versions"]

_PACKAGES = ("s2mosaic", "numpy", "numba", "dask", "distributed", "xarray", "odc-stac", "odc-geo",
             "odc-loader", "pystac", "pystac-client", "rasterio", "zarr", "stackstac",
             "omnicloudmask", "torch", "s2cloudless", "lightgbm", "ukis-csmask", "onnxruntime")


def mosaic(spec: MosaicSpec, items: Sequence[pystac.Item] | None = None, *,
           geobox: GeoBox | None = None, device: str | None = None) -> xr.Dataset:
    """Build the lazy mosaic of ``spec``.

    Parameters
    ----------
    spec
        What to mosaic.
    items
        The items to use as they are (e.g. from :func:`s2mosaic._search` or
        :func:`s2mosaic._select`); when None, searched and selected by ``spec.select``.
    geobox
        Override the output grid (default: :func:`s2mosaic._grid.output_geobox`).
    device
        ``"cpu"`` or ``"gpu"``, already resolved (a run resolves it once); None: resolve
        ``spec.runtime.device`` against the current client (:func:`s2mosaic._device.resolve_device`).
        Masking and compositing run as one task per chunk (:mod:`s2mosaic._fused`), NumPy on
        ``"cpu"``, CuPy on ``"gpu"``.

    Returns
    -------
    xr.Dataset
        Lazy ``(y, x)`` ``uint16`` variables named as ``spec.bands`` plus ``count`` (valid
        observations per pixel); nodata 0, outside the AOI too. Nothing is read until it is
        computed or written; the provenance record travels in ``attrs``.

    Examples
    --------
    >>> spec = MosaicSpec.from_yaml("my-area.yaml")  # doctest: +SKIP
    >>> m = mosaic(spec)  # doctest: +SKIP
    >>> m.red.sel(x=600_000, y=5_200_000, method="nearest").item()  # doctest: +SKIP
    """
    started = time.time()
    if items is None:  # given items are used as they are (run() selects before tiling)
        items = apply_selection(spec, search(spec))  # spec.select: all, or a minimal cover
    items = list(items) if not isinstance(items, SearchResult) else items
    gbox = geobox or output_geobox(spec, items)
    # One task per chunk masks and composites (NumPy or CuPy): byte-identical to masked_cube +
    # composite, whose mask layers cost more than the composite itself on the CPU too.
    cube = load_cube(items, spec, gbox, prune=scl_gate(spec))
    result = fused_composite(spec, cube, aoi_mask(gbox, spec.aoi, spec.runtime.chunks),
                             device=device or resolve_device(spec.runtime.device, current_client()),
                             ctx=MaskContext(geobox=gbox))
    result.attrs[PROVENANCE_ATTR] = provenance(spec, items, gbox, cube.sizes["time"], started)
    result.attrs = netcdf_attrs(result.attrs)  # dicts as JSON strings: to_netcdf works
    return result


def masked_cube(spec: MosaicSpec, items: Sequence[pystac.Item], geobox: GeoBox, *,
                prune: bool = False) -> tuple[xr.Dataset, xr.DataArray]:
    """The front half of every product: the lazy cube of ``items`` on ``geobox``
    (:func:`s2mosaic._cube.load_cube`) and its boolean ``(time, y, x)`` mask of clear
    observations inside the AOI (cloud mask of ``spec.mask`` and ``aoi_mask``).

    :func:`s2mosaic.series`, :func:`s2mosaic.observations` and the gap-fill start here, on the
    whole grid or on a run tile's context box; :func:`mosaic` loads the same cube and computes
    the same mask inside its fused per-chunk task (:mod:`s2mosaic._fused`, byte-identical).
    ``prune``: the caller composites the cube (series periods: band values of invalid
    observations are never seen), so band chunks skip the dates their SCL finds all cloudy
    where ``spec`` reads mask-first (:func:`scl_gate`).
    """
    cube = load_cube(items, spec, geobox, prune=scl_gate(spec) if prune else None)
    valid = (valid_mask(cube, spec.bands, spec.mask, MaskContext(geobox=geobox))
             & aoi_mask(geobox, spec.aoi, spec.runtime.chunks))
    return cube, valid


def scl_gate(spec: MosaicSpec) -> SclInvalid | None:
    """What the mask-first reads of a composite of ``spec`` take (``prune`` of
    :func:`s2mosaic._cube.load_cube`): what makes an SCL pixel invalid under ``spec.mask`` (its
    classes, and nodata); None where ``spec`` reads every date (:func:`s2mosaic._prune.prunes`)."""
    if not prunes(spec):
        return None
    return functools.partial(scl_invalid, classes=tuple(spec.mask.scl_classes))


def provenance(spec: MosaicSpec, items: Sequence[pystac.Item], gbox: GeoBox, observations: int,
               started: float) -> dict[str, Any]:
    """The record written beside every output (``metadata.json``); ``observations`` is the
    number of time slices of the cube (items fused per solar day)."""
    years = sorted({item_datetime(i).year for i in items})
    keys = {name: resolve_band(items[0], name) for name in spec.bands} if items else {}
    mask_keys = [k for k in mask_band_keys(items[0], spec.mask) if k not in keys.values()] \
        if items else []
    scl = scl_asset_key(items[0]) if items and spec.mask.uses_scl else None
    dropped = getattr(items, "dropped", [])
    return {
        "product": spec.name,
        "spec": spec.to_dict(),
        "items": [
            {
                "id": i.id,
                "datetime": str(item_datetime(i)),
                "collection": i.collection_id,
                "eo:cloud_cover": i.properties.get("eo:cloud_cover"),
                "s2:processing_baseline": i.properties.get("s2:processing_baseline"),
                "boa_offset": {name: boa_offset(i, key) for name, key in keys.items()},
                "assets": {k: i.assets[k].href for k in [*keys.values(), *mask_keys, scl]
                           if k in i.assets},
            }
            for i in items
        ],
        "dropped_items": [{"id": d.id, "reason": d.reason} for d in dropped],
        "search_query": getattr(items, "query", {}),
        "observations": observations,
        "mask": _mask_record(spec),
        "grid": {"crs": str(gbox.crs), "shape": list(gbox.shape.yx),
                 "transform": list(gbox.affine)[:6]},
        "composite": {"method": spec.composite.method, "percentile": spec.composite.q,
                      "min_observations": spec.composite.min_observations,
                      "definition": PERCENTILE_DEFINITION},
        "reflectance": "uint16 reflectance × 10000 (BOA offsets of baseline ≥ 04.00 removed); "
                       "nodata 0",
        "software": software_versions(),
        "build_started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "notice": f"Contains modified Copernicus Sentinel data [{_years(years)}]",
    }


def _mask_record(spec: MosaicSpec) -> dict[str, Any]:
    """What masked the observations, beyond the spec: model versions and weights used."""
    m = spec.mask
    out: dict[str, Any] = {"method": m.method}
    if m.uses_ocm:
        from .masks.omnicloud import OCM_MODEL_VERSION, OCM_WEIGHT_FILES, resolve_weights_dir

        out["omnicloudmask"] = {
            "model_version": OCM_MODEL_VERSION,
            "weights_dir": str(resolve_weights_dir(m)),
            "published_sha256": {w.name: w.sha256 for w in OCM_WEIGHT_FILES},
            "resolution_m": m.ocm_resolution,
        }
    if m.uses_csmask:
        out["csmask"] = {"bands": m.csmask_bands, "level": m.csmask_level or "from the items",
                         "resolution_m": m.csmask_resolution, "halo": m.csmask_halo}
    if m.method == "s2cloudless":
        out["s2cloudless"] = {"threshold": m.s2cloudless_threshold,
                              "average_over": m.s2cloudless_average_over,
                              "dilation_size": m.s2cloudless_dilation_size}
    return out


def _years(years: list[int]) -> str:
    if not years:
        return str(dt.date.today().year)
    return str(years[0]) if years[0] == years[-1] else f"{years[0]}-{years[-1]}"


def software_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the result (also `s2mosaic show-versions`)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    # once per process: the package metadata lookups cost 7-20 ms, twice per run (template and
    # tiles), and the imported libraries cannot change under a running process
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(DISTRIBUTION if name == "s2mosaic" else name)
        except importlib_metadata.PackageNotFoundError:
            continue
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out
