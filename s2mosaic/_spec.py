"""`MosaicSpec`: everything that defines a mosaic, validated once, frozen afterwards.

A spec comes from YAML (``MosaicSpec.from_yaml``), from a plain dict or from keyword arguments.
Each section is a small frozen dataclass; loose inputs (strings for dates, lists for tuples,
dicts for sections) are coerced in ``__post_init__`` and every invalid value raises
:class:`~s2mosaic.errors.SpecError` naming the field, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from ._aoi import AOI
from ._crs import check_grid
from ._profile import PACKAGED_PROFILES, resolve_profile
from ._sign import SIGNERS, check_callable, signer
from ._validate import (
    Section,
    choice,
    coerce_section,
    date,
    fail,
    number,
    opt_path,
    require,
)
from .errors import SpecError

__all__ = [
    "BAND_DTYPES",
    "COMPOSITE_METHODS",
    "CSMASK_BANDS",
    "CSMASK_LEVELS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_SCL_INVALID",
    "LOADERS",
    "MASK_METHODS",
    "OCM_DTYPES",
    "OCM_WEIGHTS_ENV",
    "RESAMPLING_METHODS",
    "SCL_CLASSES",
    "SELECT_METHODS",
    "SERIES_RULES",
    "CompositeSpec",
    "GridSpec",
    "MaskSpec",
    "MosaicSpec",
    "OutputSpec",
    "Period",
    "RuntimeSpec",
    "SelectSpec",
    "SeriesSpec",
    "SourceSpec",
]

#: Sentinel-2 L2A scene classification classes.
SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels (topographic casted shadows)",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}
#: SCL classes masked by default: nodata, defective, shadow, clouds, cirrus. Snow (11) is kept.
DEFAULT_SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
COMPOSITE_METHODS: tuple[str, ...] = ("percentile", "median", "mean", "first", "last", "medoid")
RESAMPLING_METHODS: tuple[str, ...] = (
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "min",
    "max",
    "med",
    "q1",
    "q3",
)
LOADERS: tuple[str, ...] = ("odc-stac", "stackstac")
#: ``runtime.on_read_error``: drop an unreadable scene from the tile, or fail the tile.
ON_READ_ERROR: tuple[str, ...] = ("skip", "fail")
#: ``runtime.device``: where a mosaic's per-chunk mask + composite runs (:mod:`s2mosaic._device`).
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
#: ``runtime.prune_dates``: band chunks skip the dates their SCL finds all cloudy
#: (:mod:`s2mosaic._prune`).
PRUNE_DATES: tuple[str, ...] = ("auto", "off")
#: ``runtime.warp_reuse``: nearest-neighbour reads across grids gather through an index map
#: GDAL warps once per source grid and chunk (:mod:`s2mosaic._warp`).
WARP_REUSE: tuple[str, ...] = ("auto", "off")
#: ``runtime.keep_open``: worker threads keep the files they read open, so a COG block shared by
#: two chunks is decoded once (:mod:`s2mosaic._datasets`).
KEEP_OPEN: tuple[str, ...] = ("auto", "off")
MASK_METHODS: tuple[str, ...] = ("scl", "ocm", "ocm+scl", "s2cloudless", "csmask", "csmask+scl",
                                  "none")
#: ukis-csmask models: number of input bands, and processing levels (``None``: from the items).
CSMASK_BANDS: tuple[int, ...] = (4, 6)
CSMASK_LEVELS: tuple[str, ...] = ("L1C", "L2A")
#: Scene selection methods (:mod:`s2mosaic._select`).
SELECT_METHODS: tuple[str, ...] = ("all", "min-cover")
#: Default ``grid.max_pixels``: Asia (44.6 million km²) at 10 m, 4.46e11 pixels, rounded up. A
#: larger grid is nearly always a resolution in the wrong units (metres given in degrees).
DEFAULT_MAX_PIXELS = 450_000_000_000
#: Pixel sizes that can be meant, by CRS unit: metres (0.1 m to 100 km) and degrees (1e-6°,
#: about 0.1 m, to 1°). Other linear units (feet) are converted to metres first.
RESOLUTION_RANGE_M: tuple[float, float] = (0.1, 100_000.0)
RESOLUTION_RANGE_DEG: tuple[float, float] = (1e-6, 1.0)
#: Inference dtypes of OmniCloudMask (GPU only: on a CPU it always runs in fp32).
OCM_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: Environment variable naming the OmniCloudMask weights directory when ``mask.ocm_weights`` is
#: not set.
OCM_WEIGHTS_ENV = "S2MOSAIC_OCM_WEIGHTS"
# MGRS tile: UTM zone 01-60, latitude band C-X (no I, O), 100 km square letters (no I, O; rows A-V).
_MGRS = re.compile(r"(0[1-9]|[1-5]\d|60)[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]")


@dataclass(frozen=True)
class Period(Section):
    """Acquisition period, inclusive on both ends, with an optional month filter."""

    start: dt.date
    """First day (inclusive)."""
    end: dt.date
    """Last day (inclusive)."""
    months: tuple[int, ...] | None = None
    """Keep only acquisitions in these calendar months (1-12), e.g. ``[5, 6, 7]`` for May-July."""

    def __post_init__(self) -> None:
        self._set("start", date("start", self.start))
        self._set("end", date("end", self.end))
        if self.end < self.start:
            raise fail("end", self.end.isoformat(),
                        f"must be on or after start ({self.start.isoformat()})")
        if self.months is not None:
            months = self.months
            if isinstance(months, int | str) or not isinstance(months, list | tuple):
                raise fail("months", months, "expected a list of month numbers 1-12, e.g. [5, 6, 7]")
            out = []
            for m in months:
                if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 12:
                    raise fail("months", list(months), "every month must be an integer 1-12")
                out.append(m)
            if not out:
                raise fail("months", list(months), "expected at least one month, or null for all")
            self._set("months", tuple(sorted(set(out))))

    @property
    def datetime_range(self) -> str:
        """The period as a STAC ``datetime`` interval (UTC, inclusive)."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59.999999Z"

    def contains(self, when: dt.datetime) -> bool:
        """True when ``when`` falls within the period and its month filter."""
        d = when.date()
        if not self.start <= d <= self.end:
            return False
        return self.months is None or when.month in self.months


class _Frozen(dict[str, Any]):
    """A mapping-valued spec field: a plain dict that hashes, so a spec stays hashable."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


#: Data types a band can be loaded as (what the composite reduces).
BAND_DTYPES: tuple[str, ...] = ("uint8", "uint16")


def _dtype_value(path: str, value: Any) -> str:
    return choice(path, value, BAND_DTYPES)


def _nodata_value(path: str, value: Any) -> int:
    return int(number(path, value, low=0, high=65535, integer=True))


def _asset_map(path: str, value: Any, check: Any) -> _Frozen:
    """``{asset key: value}`` with each value checked (``check(path, value)``)."""
    if value is None:
        return _Frozen()
    if not isinstance(value, Mapping):
        example = "{B04: uint16, SCL: uint8}" if path == "band_dtypes" else "{'*': 0}"
        raise fail(path, value, f"expected a mapping of asset keys (or '*') to values, e.g. {example}")
    out = _Frozen()
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise fail(path, k, "keys are asset keys, eo:bands names or '*'")
        out[k] = check(f"{path}.{k}", v)
    return out


@dataclass(frozen=True)
class SourceSpec(Section):
    """Where the STAC items come from."""

    stac: str
    """A STAC API URL (``https://…``), or a local static catalog / collection / ItemCollection
    JSON file."""
    collection: str = "sentinel-2-l2a"
    """Collection id to search."""
    max_cloud_cover: float | None = None
    """Keep items whose ``eo:cloud_cover`` is at most this (0-100)."""
    mgrs_tiles: tuple[str, ...] = ()
    """Keep only these MGRS tiles (e.g. ``["32TNS", "33UXP"]``); empty keeps all."""
    band_dtypes: Mapping[str, str] = field(default_factory=_Frozen)
    """Data type of assets whose items do not declare one (no ``raster:bands``) in a collection
    s2mosaic has no table for, e.g. ``{B04: uint16, SCL: uint8}``; keys are asset keys,
    ``eo:bands`` names or ``"*"`` (every asset). Wins over what items declare."""
    nodata: Mapping[str, int] = field(default_factory=_Frozen)
    """Nodata value of assets, keyed like ``band_dtypes`` (e.g. ``{"*": 0}``); wins over what
    items declare. Unset: the item's, the collection's or the Sentinel-2 table's, else 0."""
    sign: str = "none"
    """How asset hrefs are signed: ``"none"``, ``"planetary-computer"`` (needs the ``pc`` extra)
    or ``"module:function"``, an importable callable ``href -> signed href`` (a private bucket, a
    token service). Each read task signs its href just before reading; the graph, the run
    manifest, the provenance and the logs keep the unsigned hrefs, so no token outlives its
    read or is written to disk."""
    request_modifier: str | None = None
    """``"module:function"`` given to pystac-client as ``request_modifier`` for STAC API
    requests (a ``requests.Request`` in, modified in place or returned), e.g. to add an
    ``Authorization`` header for a private API. Not needed for Planetary Computer, whose API is
    public (only its assets are signed, by ``sign``)."""

    def __post_init__(self) -> None:
        self._set("sign", check_callable("sign", self.sign, "href -> signed href", SIGNERS))
        if self.sign == "planetary-computer":
            signer(self.sign)  # MissingDependencyError with the pip line, before any work
        if self.request_modifier is not None:
            self._set("request_modifier", check_callable(
                "request_modifier", self.request_modifier, "requests.Request -> Request | None"))
        self._set("band_dtypes", _asset_map("band_dtypes", self.band_dtypes, _dtype_value))
        self._set("nodata", _asset_map("nodata", self.nodata, _nodata_value))
        if isinstance(self.stac, Path):
            self._set("stac", str(self.stac))
        if not isinstance(self.stac, str) or not self.stac.strip():
            raise fail("stac", self.stac,
                        "expected a STAC API URL (http/https) or a path to a catalog.json, "
                        "collection.json or ItemCollection file")
        if not isinstance(self.collection, str) or not self.collection:
            raise fail("collection", self.collection, "expected a collection id such as 'sentinel-2-l2a'")
        if self.max_cloud_cover is not None:
            self._set("max_cloud_cover",
                      number("max_cloud_cover", self.max_cloud_cover, low=0, high=100))
        tiles = self.mgrs_tiles
        if isinstance(tiles, str):
            tiles = (tiles,)
        if not isinstance(tiles, list | tuple):
            raise fail("mgrs_tiles", tiles, "expected a list of MGRS tile ids such as ['32TNS']")
        out = []
        for t in tiles:
            tt = str(t).upper().removeprefix("T")
            if not _MGRS.fullmatch(tt):
                raise fail("mgrs_tiles", t, "expected MGRS tile ids like '32TNS' (zone 01-60, band "
                            "letter, two-letter square)")
            out.append(tt)
        self._set("mgrs_tiles", tuple(out))

    @property
    def is_api(self) -> bool:
        """True when ``stac`` is a STAC API URL rather than a local/static file."""
        return self.stac.startswith(("http://", "https://")) and not self.stac.endswith(".json")


@dataclass(frozen=True)
class GridSpec(Section):
    """The output pixel grid."""

    crs: str | None = None
    """Output CRS (``"EPSG:32633"``, ``"EPSG:4326"``, WKT). None: the UTM zone of the AOI's
    centre (zone 60 or 1 for an AOI across 180°, where geographic CRSs are refused)."""
    resolution: float | str = 10.0
    """Pixel size in CRS units (metres for UTM: 0.1 to 100000; degrees for EPSG:4326: 1e-6 to
    1), or ``"native"``: the pixel grid (size and alignment) of the first item's reference band,
    e.g. to reproduce source pixels exactly. With ``"native"`` and no ``crs``, the first item's
    CRS is used."""
    resampling: str = "nearest"
    """Resampling of reflectance bands onto the grid. Masks (SCL) always use nearest."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest output grid (pixels, rows × columns of the AOI's bbox in the CRS) a spec may ask
    for; larger ones are refused at validation. Default 4.5e11: Asia at 10 m."""

    def __post_init__(self) -> None:
        if self.crs is not None:
            if isinstance(self.crs, int) and not isinstance(self.crs, bool):
                self._set("crs", f"EPSG:{self.crs}")
            if not isinstance(self.crs, str):
                raise fail("crs", self.crs, "expected a CRS string such as 'EPSG:32633' or null")
            from pyproj import CRS
            from pyproj.exceptions import CRSError

            try:
                crs = CRS.from_user_input(self.crs)
            except CRSError:
                raise fail("crs", self.crs, "not a CRS pyproj understands; use e.g. 'EPSG:32633', "
                            "'EPSG:4326' or a WKT string") from None
            if not (crs.is_geographic or crs.is_projected):
                raise fail("crs", self.crs, "expected a 2D geographic or projected CRS such as "
                            "'EPSG:32633' or 'EPSG:4326'")
        if self.resolution != "native":
            if isinstance(self.resolution, str):
                raise fail("resolution", self.resolution,
                            "expected a positive number in CRS units or 'native'")
            self._set("resolution", number("resolution", self.resolution, low=0, low_open=True))
            self._check_units()
        self._set("resampling", choice("resampling", self.resampling, RESAMPLING_METHODS))
        self._set("max_pixels", number("max_pixels", self.max_pixels, low=1, integer=True))

    def _check_units(self) -> None:
        """A pixel size that cannot be meant in the CRS's units (degrees given in metres, or the
        other way round) fails here, before a search or a 1-pixel (or 10^14-pixel) grid."""
        res = float(self.resolution)
        if self.crs is None:
            crs_name, unit, factor = "the default UTM CRS", "metre", 1.0
        else:
            from pyproj import CRS

            crs = CRS.from_user_input(self.crs)
            axis = crs.axis_info[0] if crs.axis_info else None
            crs_name = f"{self.crs}"
            unit = axis.unit_name if axis is not None else "metre"
            factor = axis.unit_conversion_factor if axis is not None else 1.0
            if crs.is_geographic:
                lo, hi = RESOLUTION_RANGE_DEG
                if not lo <= res <= hi:
                    raise fail("resolution", res, f"{crs_name} is in degrees: expected a pixel "
                               f"size from {lo:g} to {hi:g} degrees (10 m is about 0.0001°), or "
                               "a projected CRS (e.g. a UTM zone) for a size in metres")
                return
        lo, hi = RESOLUTION_RANGE_M
        metres = res * factor
        if not lo <= metres <= hi:
            per = "" if factor == 1.0 else f" ({metres:g} m)"
            raise fail("resolution", res, f"{crs_name}'s unit is the {unit}{per}: expected a pixel size "
                       f"from {lo:g} to {hi:g} m (Sentinel-2 is 10 m); for a size in degrees use "
                       "a geographic CRS such as EPSG:4326")


@dataclass(frozen=True)
class MaskSpec(Section):
    """How invalid (cloud, shadow, nodata) observations are found.

    Nodata is always invalid, whatever the method. ``ocm+scl`` is the recommended method for L2A
    when the OmniCloudMask weights are available (``ocm_weights`` or ``$S2MOSAIC_OCM_WEIGHTS``);
    ``scl`` stays the default because OCM needs weights that a user must place first.
    """

    method: str = "scl"
    """``scl``: the Sentinel-2 scene classification layer (L2A). ``ocm``: OmniCloudMask (a
    PyTorch ensemble; any class but clear is invalid). ``ocm+scl``: the union of both.
    ``s2cloudless``: Sentinel Hub's pixel classifier on the 13 L1C bands (its model ships with
    the package). ``csmask``: DLR's ukis-csmask CNN (ONNX weights ship in its wheel; cloud and
    cloud shadow are invalid); ``csmask+scl``: the union with SCL. ``none``: only nodata is
    masked."""
    scl_classes: tuple[int, ...] = DEFAULT_SCL_INVALID
    """SCL classes treated as invalid. Default: 0, 1, 3, 8, 9, 10 (add 11 to drop snow)."""
    dilation: int = 0
    """Grow the invalid (cloud) mask by this many output pixels (square structuring element).
    Exact across chunk edges. Set this or ``buffer_m``, not both."""
    buffer_m: float = 0.0
    """Grow the invalid (cloud) mask by this many metres, converted to whole output pixels
    (rounded up, per axis) with the output resolution. Set this or ``dilation``, not both."""
    ocm_weights: Path | None = None
    """Directory holding the OmniCloudMask v4 weights (two ``.safetensors`` files). None: the
    directory in ``$S2MOSAIC_OCM_WEIGHTS``. Weights are never downloaded during a run."""
    ocm_resolution: float = 20.0
    """Pixel size (metres, 10-50) OCM runs at: the coarsest whole multiple of the output pixel
    that is not larger than this; its classes are put back on the output grid by nearest."""
    ocm_batch_size: int = 1
    """Patches per inference batch (``predict_from_array``'s ``batch_size``)."""
    ocm_dtype: str = "fp32"
    """Inference dtype on a GPU: ``fp32``, ``fp16`` or ``bf16``. CPU workers always use fp32."""
    ocm_patch_size: int = 1000
    """Patch size (pixels at ``ocm_resolution``, >= 32); reduced to the chunk window when larger."""
    ocm_overlap: int = 300
    """Overlap of neighbouring patches (pixels at ``ocm_resolution``), less than the patch size."""
    ocm_halo: int = 64
    """Context (pixels at ``ocm_resolution``) read beyond each chunk edge and trimmed after."""
    s2cloudless_threshold: float = 0.4
    """Cloud probability above which (after averaging) a pixel is cloud, in [0, 1]."""
    s2cloudless_average_over: int = 4
    """Radius (pixels) of the disk the probabilities are averaged over; 0: no averaging."""
    s2cloudless_dilation_size: int = 2
    """Radius (pixels) of the disk the cloud mask is dilated with; 0: no dilation."""
    s2cloudless_all_bands: bool = True
    """Read all 13 L1C bands (true) or only the 10 the model uses (false); same result."""
    csmask_bands: int = 4
    """ukis-csmask model: 4 (blue, green, red, NIR) or 6 (adds SWIR 1.6 and 2.2 µm, loaded for
    the masker only when ``bands`` lacks them)."""
    csmask_level: str | None = None
    """ukis-csmask model for ``L1C`` (TOA) or ``L2A`` (BOA) input; None: the items' processing
    level (their collection, ``s2:product_type`` or product id)."""
    csmask_resolution: float = 30.0
    """Pixel size (metres, 10-60) ukis-csmask runs at (its models are trained at about 30 m):
    the coarsest whole multiple of the output pixel not larger than this."""
    csmask_halo: int = 64
    """Context (pixels at ``csmask_resolution``) read beyond each chunk edge and trimmed after."""
    csmask_batch_size: int = 1
    """256 px tiles per ONNX inference call."""

    def __post_init__(self) -> None:
        self._set("method", choice("method", self.method, MASK_METHODS))
        classes = self.scl_classes
        if not isinstance(classes, list | tuple):
            raise fail("scl_classes", classes, f"expected a list of SCL classes from {sorted(SCL_CLASSES)}")
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int) or c not in SCL_CLASSES:
                raise fail("scl_classes", c, f"valid SCL classes are {sorted(SCL_CLASSES)}")
        self._set("scl_classes", tuple(sorted(set(classes))))
        self._set("dilation", number("dilation", self.dilation, low=0, high=1000, integer=True))
        self._set("buffer_m", number("buffer_m", self.buffer_m, low=0, high=10_000))
        if self.dilation and self.buffer_m:
            raise fail("buffer_m", self.buffer_m,
                        f"set either dilation (pixels, here {self.dilation}) or buffer_m (metres), "
                        "not both")
        self._set("ocm_weights", opt_path("ocm_weights", self.ocm_weights))
        self._set("ocm_resolution", number("ocm_resolution", self.ocm_resolution, low=10, high=50))
        self._set("ocm_batch_size", number("ocm_batch_size", self.ocm_batch_size, low=1, integer=True))
        self._set("ocm_dtype", choice("ocm_dtype", self.ocm_dtype, OCM_DTYPES))
        self._set("ocm_patch_size", number("ocm_patch_size", self.ocm_patch_size, low=32, integer=True))
        self._set("ocm_overlap", number("ocm_overlap", self.ocm_overlap, low=0, integer=True))
        if self.ocm_overlap >= self.ocm_patch_size:
            raise fail("ocm_overlap", self.ocm_overlap,
                        f"expected an integer >= 0 and < ocm_patch_size ({self.ocm_patch_size})")
        self._set("ocm_halo", number("ocm_halo", self.ocm_halo, low=0, integer=True))
        self._set("s2cloudless_threshold",
                  number("s2cloudless_threshold", self.s2cloudless_threshold, low=0, high=1))
        for name in ("s2cloudless_average_over", "s2cloudless_dilation_size"):
            self._set(name, number(name, getattr(self, name), low=0, integer=True))
        if not isinstance(self.s2cloudless_all_bands, bool):
            raise fail("s2cloudless_all_bands", self.s2cloudless_all_bands, "expected true or false")
        if isinstance(self.csmask_bands, bool) or self.csmask_bands not in CSMASK_BANDS:
            raise fail("csmask_bands", self.csmask_bands,
                       "expected 4 (blue, green, red, NIR) or 6 (also SWIR 1.6 and 2.2 µm)")
        if self.csmask_level is not None:
            level = str(self.csmask_level).upper() if isinstance(self.csmask_level, str) else None
            if level not in CSMASK_LEVELS:
                raise fail("csmask_level", self.csmask_level,
                           f"expected one of {list(CSMASK_LEVELS)}, or null to take it from the items")
            self._set("csmask_level", level)
        self._set("csmask_resolution",
                  number("csmask_resolution", self.csmask_resolution, low=10, high=60))
        self._set("csmask_halo", number("csmask_halo", self.csmask_halo, low=0, integer=True))
        self._set("csmask_batch_size",
                  number("csmask_batch_size", self.csmask_batch_size, low=1, integer=True))

    @property
    def uses_scl(self) -> bool:
        """True when the method reads the SCL layer (``scl``, ``ocm+scl``, ``csmask+scl``)."""
        return self.method in ("scl", "ocm+scl", "csmask+scl")

    @property
    def uses_ocm(self) -> bool:
        """True when the method runs OmniCloudMask (``ocm``, ``ocm+scl``)."""
        return self.method in ("ocm", "ocm+scl")

    @property
    def uses_csmask(self) -> bool:
        """True when the method runs ukis-csmask (``csmask``, ``csmask+scl``)."""
        return self.method in ("csmask", "csmask+scl")


@dataclass(frozen=True)
class CompositeSpec(Section):
    """The per-pixel reduction over time (all methods exact; see ``s2mosaic.composite``)."""

    method: str = "percentile"
    """One of ``percentile``, ``median``, ``mean``, ``first`` / ``last`` (first / last valid in
    date order), ``medoid`` (the valid observation nearest, in squared Euclidean distance over
    all bands, to the per-band median; ties go to the earliest; keeps real spectra)."""
    percentile: float = 25.0
    """q in [0, 100] for ``percentile``; NumPy's "linear" definition over valid observations."""
    min_observations: int = 1
    """Pixels with fewer valid observations are nodata (0 in every band, medoid included)."""

    def __post_init__(self) -> None:
        self._set("method", choice("method", self.method, COMPOSITE_METHODS))
        self._set("percentile", number("percentile", self.percentile, low=0, high=100))
        self._set("min_observations",
                  number("min_observations", self.min_observations, low=1, high=10_000, integer=True))

    @property
    def q(self) -> float:
        """The effective percentile (50 for ``median``)."""
        return 50.0 if self.method == "median" else self.percentile


#: The named period rules of ``series.periods`` (besides ``"every N days"`` and explicit lists).
SERIES_RULES: tuple[str, ...] = ("monthly", "quarterly", "yearly")
_EVERY = re.compile(r"every\s+(\d+)\s+days?", re.IGNORECASE)


@dataclass(frozen=True)
class SeriesSpec(Section):
    """A series of composites in one job: one per sub-period of ``period``.

    The cube is built once over ``period`` and each sub-period is composited from its own time
    slices, so every scene is read once per chunk however many sub-periods it falls in. Runs
    with :func:`s2mosaic._timeseries_run.run_series` (``s2mosaic series spec.yaml``): one Zarr with a
    ``time`` dimension in ``output.zarr``, plus one COG / display product per sub-period when
    ``output.cog`` / ``output.rgb`` are set (named ``<stem>_<start date><suffix>``).
    """

    periods: str | tuple[Period, ...] | None = None
    """None: a single mosaic. ``"monthly"``, ``"quarterly"``, ``"yearly"`` (calendar months,
    quarters, years, clipped to ``period``), ``"every N days"`` (consecutive N-day periods from
    ``period.start``; the last one may be shorter), or an explicit list of periods
    (``[[start, end], ...]`` or ``{start, end}`` mappings) inside ``period``. Sub-periods keep
    ``period.months``; those with no day in those months are left out."""

    def __post_init__(self) -> None:
        p = self.periods
        if p is None:
            return
        if isinstance(p, str):
            rule = p.strip().lower()
            m = _EVERY.fullmatch(rule)
            if rule not in SERIES_RULES and (m is None or int(m.group(1)) < 1):
                raise fail("periods", p, f"expected one of {list(SERIES_RULES)}, 'every N days' "
                            "with N >= 1 (e.g. 'every 16 days'), or a list of [start, end] periods")
            self._set("periods", f"every {int(m.group(1))} days" if m else rule)
            return
        if not isinstance(p, list | tuple) or not p:
            raise fail("periods", p, f"expected one of {list(SERIES_RULES)}, 'every N days', or a "
                        "non-empty list of periods such as [[2024-05-01, 2024-05-31]]")
        out = []
        for i, entry in enumerate(p):
            e: Any = entry
            if isinstance(e, list | tuple) and len(e) == 2:
                e = {"start": e[0], "end": e[1]}
            out.append(coerce_section(Period, e, f"periods[{i}]"))
        self._set("periods", tuple(out))

    def expand(self, period: Period) -> list[Period]:
        """The sub-periods of ``period`` (empty when ``periods`` is None), in order.

        Raises :class:`~s2mosaic.errors.SpecError` naming ``series.periods[i]`` when an explicit
        period does not lie within ``period``.

        Examples
        --------
        >>> s = SeriesSpec(periods="monthly")
        >>> [(p.start.isoformat(), p.end.isoformat()) for p in s.expand(Period("2024-05-10", "2024-06-30"))]
        [('2024-05-10', '2024-05-31'), ('2024-06-01', '2024-06-30')]
        """
        if self.periods is None:
            return []
        if not isinstance(self.periods, str):
            for i, p in enumerate(self.periods):
                if p.start < period.start or p.end > period.end:
                    raise fail(f"series.periods[{i}]", [p.start.isoformat(), p.end.isoformat()],
                               f"every period of a series must lie within period "
                               f"[{period.start.isoformat()}, {period.end.isoformat()}] (the "
                               "search range); widen period or move this one")
            return list(self.periods)
        bounds: list[tuple[dt.date, dt.date]] = []
        start = period.start
        while start <= period.end:
            nxt = _next_start(start, self.periods)
            bounds.append((start, min(nxt - dt.timedelta(days=1), period.end)))
            start = nxt
        out = []
        for a, b in bounds:
            sub = Period(a, b, period.months)
            if period.months is None or any(
                    (a + dt.timedelta(days=k)).month in period.months
                    for k in range(min((b - a).days + 1, 370))):
                out.append(sub)
        return out


def _next_start(day: dt.date, rule: str) -> dt.date:
    """First day of the sub-period after the one holding ``day`` (calendar-aligned rules)."""
    m = _EVERY.fullmatch(rule)
    if m:
        return day + dt.timedelta(days=int(m.group(1)))
    if rule == "yearly":
        return dt.date(day.year + 1, 1, 1)
    step = 3 if rule == "quarterly" else 1
    month0 = (day.month - 1) // step * step + step  # 0-based month of the next boundary
    return dt.date(day.year + month0 // 12, month0 % 12 + 1, 1)


@dataclass(frozen=True)
class OutputSpec(Section):
    """Where and what to write. At least one of ``zarr``/``cog`` is needed to run."""

    zarr: Path | None = None
    """Zarr store path (written with consolidated metadata and a CF grid mapping)."""
    cog: Path | None = None
    """Cloud-Optimized GeoTIFF path (all bands, then the ``count`` band, with overviews)."""
    rgb: Path | None = None
    """Optional 8-bit RGB display product: ``.png`` (small areas) or ``.tif`` (a COG)."""
    rgb_bands: tuple[str, str, str] = ("red", "green", "blue")
    """Bands (as named in ``bands``) used for the display product's R, G, B."""
    rgb_range: tuple[int, int] = (0, 3000)
    """Linear stretch of reflectance × 10000 to 1..255 (0 is nodata in the display product)."""
    metadata: Path | None = None
    """Provenance sidecar path. None: ``<zarr or cog stem>.metadata.json`` beside the output."""
    overwrite: bool = False
    """Replace existing outputs. When false, an existing output path is an error."""

    def __post_init__(self) -> None:
        for name in ("zarr", "cog", "rgb", "metadata"):
            self._set(name, opt_path(name, getattr(self, name)))
        if self.cog is not None and self.cog.suffix.lower() not in (".tif", ".tiff"):
            raise fail("cog", str(self.cog), "a COG path must end in .tif or .tiff")
        if self.rgb is not None and self.rgb.suffix.lower() not in (".png", ".tif", ".tiff"):
            raise fail("rgb", str(self.rgb), "the display product must end in .png, .tif or .tiff")
        rgb = self.rgb_bands
        if not isinstance(rgb, list | tuple) or len(rgb) != 3 or not all(isinstance(b, str) for b in rgb):
            raise fail("rgb_bands", rgb, "expected three band names, e.g. ['red', 'green', 'blue']")
        self._set("rgb_bands", tuple(rgb))
        rr = self.rgb_range
        if (not isinstance(rr, list | tuple) or len(rr) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in rr)
                or not 0 <= rr[0] < rr[1] <= 65535):
            raise fail("rgb_range", rr, "expected [low, high] with 0 <= low < high <= 65535")
        self._set("rgb_range", (rr[0], rr[1]))
        if not isinstance(self.overwrite, bool):
            raise fail("overwrite", self.overwrite, "expected true or false")

    @property
    def metadata_path(self) -> Path | None:
        """Where the provenance sidecar goes."""
        if self.metadata is not None:
            return self.metadata
        main = self.zarr or self.cog
        if main is None:
            return None
        return main.with_name(main.name.rsplit(".", 1)[0] + ".metadata.json")


@dataclass(frozen=True)
class RuntimeSpec(Section):
    """How the computation runs."""

    chunks: int = 1024
    """Spatial chunk size in output pixels (time is always one chunk)."""
    loader: str = "odc-stac"
    """``odc-stac`` (default) or ``stackstac`` (needs ``pip install 's2mosaic-stream[stackstac]'``)."""
    scheduler: str | None = None
    """None: a new LocalCluster sized to this machine. ``synchronous`` or ``threads``: no
    cluster (dask's local schedulers). Anything else: the address of a running scheduler."""
    cluster: Path | None = None
    """A cluster profile (YAML, see ``s2mosaic/profiles/``; a bare name such as ``slurm-cpu``
    selects the packaged one): a LocalCluster or dask-jobqueue workers (SLURM,
    PBS, ...) started for the run and stopped after it. Relative to the spec file. Set this or
    ``scheduler``, not both."""
    n_workers: int | None = None
    """LocalCluster worker processes (default: one per 4 cores, at least 1)."""
    threads_per_worker: int | None = None
    """LocalCluster threads per worker (default: the remaining cores)."""
    tile_size: int | None = None
    """Output pixels per side of a run tile (each tile is its own small graph, written into its
    region of the Zarr store and recorded in the store's manifest, so a rerun resumes). A
    multiple of ``chunks``; None: the multiple of ``chunks`` nearest 2048."""
    max_tiles_in_flight: int | None = None
    """Tiles computed at once (bounds memory and graph size). None: enough tiles to give every
    worker thread a chunk, plus one."""
    retries: int = 2
    """Times a failed tile is retried before the run reports it failed (the others go on). A
    retry waits ``read_backoff_s × 4 × 2^attempt`` seconds (× a random 0.5-1.5, at most 120 s)
    first, so an outage has time to pass; other tiles go on meanwhile."""
    read_timeout_s: float = 120.0
    """Seconds one HTTP(S)/S3 request may take, connection included (``GDAL_HTTP_TIMEOUT``): a
    request that stalls is abandoned after this and retried (``read_retries``), not waited on
    forever. Raise it for large reads over a slow link."""
    connect_timeout_s: float = 30.0
    """Seconds to wait for a connection to the server (``GDAL_HTTP_CONNECTTIMEOUT``)."""
    read_retries: int = 5
    """Times GDAL retries a failed request (``GDAL_HTTP_MAX_RETRY``) before the read - and with
    it the tile - fails. Measured with GDAL 3.10: a time-out, a reset mid-body, HTTP 503 and 429
    are retried; a refused connection is not (the tile retry, after its backoff, covers that)."""
    read_backoff_s: float = 1.0
    """Seconds before GDAL's first retry of a request, doubled each retry
    (``GDAL_HTTP_RETRY_DELAY``; GDAL adds a little jitter): with the defaults GDAL waits about
    1 + 2 + 4 + 8 + 16 s, riding out half a minute of outage. Also scales the wait before a tile retry (``retries``)."""
    on_read_error: str = "skip"
    """What a scene that cannot be read does to a tile, once GDAL's retries (``read_retries``)
    and the tile's (``retries``) are spent. ``skip``: the scene is dropped from that tile, which
    completes and is recorded ``degraded`` with the item, asset, URL and error; the report and
    ``metadata.json`` list every dropped scene with its tiles and pixels, and ``--resume
    --retry-dropped`` reads them again later. ``fail``: the tile fails (its error names the
    URL), and the run with it."""
    device: str = "auto"
    """Where a mosaic's per-chunk masking and compositing runs. ``gpu``: one fused CuPy task
    per chunk on workers with a ``GPU`` resource (fails with the reason when there is none or
    CuPy cannot run there); ``cpu``: the CPU tasks; ``auto``: ``gpu`` when possible, else
    ``cpu`` (said once). Reads, OmniCloudMask scheduling, series and gap-fill are unchanged."""
    prune_dates: str = "auto"
    """Mask-first reads (:mod:`s2mosaic._prune`): each band chunk of a mosaic waits for its SCL
    and reads only the dates with at least one clear pixel in the chunk. ``auto``: for mosaics
    masked by ``scl`` alone, loaded by odc-stac (the other maskers need the band pixels);
    ``off``: every date is read. The output is the same byte for byte either way."""
    warp_reuse: str = "auto"
    """Reads from another grid (another UTM zone, a geographic output) with ``nearest``
    resampling (:mod:`s2mosaic._warp`): ``auto``: GDAL works out once per source grid and chunk
    which source pixel each output pixel takes, and every date and band of that grid gathers
    from it; ``off``: GDAL warps every read. The output is the same byte for byte either way."""
    keep_open: str = "auto"
    """Open files kept per worker thread (:mod:`s2mosaic._datasets`): ``auto``: each thread
    keeps the last 128 files it read open, so the COG blocks two chunks share are decoded once
    (GDAL's block cache, capped at 64 MB per worker process); ``off``: every read opens its file
    and closes it after (odc-loader's way). The output is the same byte for byte either way."""

    def __post_init__(self) -> None:
        self._set("chunks", number("chunks", self.chunks, low=16, integer=True))
        for name in ("read_timeout_s", "connect_timeout_s"):
            self._set(name, number(name, getattr(self, name), low=0, low_open=True))
        self._set("read_retries", number("read_retries", self.read_retries, low=0, high=100,
                                         integer=True))
        self._set("read_backoff_s", number("read_backoff_s", self.read_backoff_s, low=0,
                                           high=3600))
        self._set("loader", choice("loader", self.loader, LOADERS))
        self._set("on_read_error", choice("on_read_error", self.on_read_error, ON_READ_ERROR))
        self._set("device", choice("device", self.device, DEVICES))
        self._set("prune_dates", choice("prune_dates", self.prune_dates, PRUNE_DATES))
        self._set("warp_reuse", choice("warp_reuse", self.warp_reuse, WARP_REUSE))
        self._set("keep_open", choice("keep_open", self.keep_open, KEEP_OPEN))
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler):
            raise fail("scheduler", self.scheduler,
                        "expected null, 'synchronous', 'threads' or a scheduler address "
                        "such as 'tcp://10.0.0.5:8786'")
        for name in ("n_workers", "threads_per_worker", "tile_size", "max_tiles_in_flight"):
            v = getattr(self, name)
            if v is not None:
                self._set(name, number(name, v, low=1, integer=True))
        self._set("retries", number("retries", self.retries, low=0, integer=True))
        if self.tile_size is not None and self.tile_size % self.chunks:
            c = self.chunks
            raise fail("tile_size", self.tile_size,
                       f"a multiple of runtime.chunks ({c}) so tiles write whole Zarr chunks, "
                       f"e.g. {c * max(1, self.tile_size // c)} or {c * (self.tile_size // c + 1)}")
        cluster = opt_path("cluster", self.cluster)
        self._set("cluster", None if cluster is None else resolve_profile(cluster))
        if self.cluster is not None:
            if self.cluster.suffix.lower() not in (".yaml", ".yml"):
                raise fail("cluster", str(self.cluster),
                            "expected a cluster profile YAML file, or a packaged profile by name: "
                            f"{', '.join(PACKAGED_PROFILES)}")
            if self.scheduler is not None:
                raise fail("cluster", str(self.cluster),
                            f"set either scheduler (here {self.scheduler!r}) or cluster, not both")
            sized = [n for n in ("n_workers", "threads_per_worker") if getattr(self, n) is not None]
            if sized:
                raise fail("cluster", str(self.cluster), f"the profile sizes the cluster: remove "
                            f"{sized[0]} (it sizes only the default LocalCluster)")

    @property
    def tile_pixels(self) -> int:
        """The effective :attr:`tile_size`."""
        if self.tile_size is not None:
            return self.tile_size
        return self.chunks * max(1, round(2048 / self.chunks))


@dataclass(frozen=True)
class SelectSpec(Section):
    """Which of the scenes the search keeps go into the mosaic (:mod:`s2mosaic._select`)."""

    method: str = "all"
    """``all``: every scene the search keeps. ``min-cover``: per period (each ``series``
    sub-period), the fewest scenes whose footprints cover the AOI, each point up to
    ``max_observations`` times, preferring clear scenes (by the clear-data fraction in their
    STAC metadata). For ``first``/``last`` composites scenes are taken in date order instead, so
    the mosaic equals the one from all scenes wherever a chosen scene has a valid observation."""
    max_observations: int = 1
    """``min-cover`` only: cover every point of the AOI by up to this many observations (solar
    days)."""
    require_full_coverage: bool = False
    """Fail, naming the uncovered fraction, when the scenes do not cover the whole AOI."""

    def __post_init__(self) -> None:
        self._set("method", choice("method", self.method, SELECT_METHODS))
        self._set("max_observations",
                  number("max_observations", self.max_observations, low=1, integer=True))
        if self.method == "all" and self.max_observations != 1:
            raise fail("max_observations", self.max_observations,
                        "applies only to method 'min-cover' (method 'all' keeps every scene); "
                        "set method: min-cover or remove max_observations")
        if not isinstance(self.require_full_coverage, bool):
            raise fail("require_full_coverage", self.require_full_coverage,
                        "expected true or false")


_SECTIONS: dict[str, type[Any]] = {
    "source": SourceSpec,
    "grid": GridSpec,
    "mask": MaskSpec,
    "composite": CompositeSpec,
    "output": OutputSpec,
    "runtime": RuntimeSpec,
    "series": SeriesSpec,
    "select": SelectSpec,
}


@dataclass(frozen=True)
class MosaicSpec(Section):
    """Everything that defines one mosaic.

    Examples
    --------
    >>> spec = MosaicSpec(
    ...     aoi=[10.04, 46.064, 10.045, 46.068],
    ...     period={"start": "2017-07-01", "end": "2019-07-31"},
    ...     source={"stac": "catalog.json"},
    ...     bands=["red", "nir"],
    ...     output={"zarr": "out.zarr"},
    ... )
    >>> spec.composite.method
    'percentile'
    """

    aoi: AOI
    """Area of interest: bbox ``[west, south, east, north]`` in EPSG:4326, WKT, a GeoJSON mapping,
    or a path to a GeoJSON / GeoPackage file. Output outside the AOI polygon is nodata."""
    period: Period
    """Acquisition period ``{start, end, months}``; also accepts ``[start, end]``."""
    source: SourceSpec
    """STAC source and search filters."""
    bands: tuple[str, ...] = ("red", "green", "blue", "nir")
    """Bands to mosaic: Earth Search / common names (``red``) or asset keys (``B04``)."""
    grid: GridSpec = field(default_factory=GridSpec)
    mask: MaskSpec = field(default_factory=MaskSpec)
    composite: CompositeSpec = field(default_factory=CompositeSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    series: SeriesSpec = field(default_factory=SeriesSpec)
    """Optional series of sub-periods (``series.periods``): one composite each, one job."""
    name: str = "mosaic"
    """A short name for the product (used in metadata and progress output)."""
    select: SelectSpec = field(default_factory=SelectSpec)
    """Scene selection (``select.method``): every scene (default) or the fewest that cover the AOI."""

    SECTIONS: ClassVar[dict[str, type[Any]]] = _SECTIONS

    if TYPE_CHECKING:
        # What the constructor accepts; __post_init__ turns it into the field types above.
        def __init__(
            self,
            aoi: AOI | Sequence[float] | str | Path | Mapping[str, Any],
            period: Period | Sequence[str | dt.date] | Mapping[str, Any],
            source: SourceSpec | str | Path | Mapping[str, Any],
            bands: Sequence[str] | str = ("red", "green", "blue", "nir"),
            grid: GridSpec | Mapping[str, Any] | None = None,
            mask: MaskSpec | Mapping[str, Any] | None = None,
            composite: CompositeSpec | Mapping[str, Any] | None = None,
            output: OutputSpec | Mapping[str, Any] | None = None,
            runtime: RuntimeSpec | Mapping[str, Any] | None = None,
            series: SeriesSpec | Mapping[str, Any] | None = None,
            name: str = "mosaic",
            select: SelectSpec | Mapping[str, Any] | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.aoi, AOI):
            try:
                self._set("aoi", AOI.parse(self.aoi))
            except SpecError as e:
                raise SpecError(f"aoi{'.' + e.field if e.field else ''}", e.value, e.valid) from None
        period: Any = self.period
        if isinstance(period, list | tuple) and len(period) == 2:
            period = {"start": period[0], "end": period[1]}
        self._set("period", coerce_section(Period, period, "period") if period is not None
                  else _raise(fail("period", None, "a period {start, end} is required")))
        if isinstance(self.source, str | Path):
            self._set("source", {"stac": str(self.source)})
        if self.source is None:
            raise fail("source", None, "a source {stac: URL or catalog path} is required")
        for name, cls in _SECTIONS.items():
            self._set(name, coerce_section(cls, getattr(self, name), name))
        bands = self.bands
        if isinstance(bands, str):
            bands = (bands,)
        if not isinstance(bands, list | tuple) or not bands:
            raise fail("bands", bands, "expected a non-empty list of band names such as "
                        "['red', 'green', 'blue'] or ['B04', 'B03', 'B02']")
        for b in bands:
            if not isinstance(b, str) or not b:
                raise fail("bands", b, "every band must be a non-empty string such as 'red' or 'B04'")
        if len(set(bands)) != len(bands):
            raise fail("bands", list(bands), "band names must be unique")
        if any(b.lower() == "scl" for b in bands):
            raise fail("bands", list(bands), "'scl' is the mask layer, not a band to composite; "
                        "remove it (masking reads it automatically)")
        self._set("bands", tuple(bands))
        if not isinstance(self.name, str) or not self.name:
            raise fail("name", self.name, "expected a non-empty string")
        missing = [b for b in self.output.rgb_bands if b not in self.bands]
        if self.output.rgb is not None and missing:
            raise fail("output.rgb_bands", list(self.output.rgb_bands),
                        f"every display band must be one of bands {list(self.bands)}; "
                        f"missing {missing}")
        self.series.expand(self.period)  # explicit periods must lie within period
        check_grid(self.aoi, self.grid.crs, self.grid.resolution, self.grid.max_pixels)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path | None = None) -> MosaicSpec:
        """Build a spec from a mapping (as read from YAML).

        Relative paths (AOI file, local STAC source, outputs) are resolved against ``base_dir``.
        """
        if not isinstance(data, Mapping):
            raise fail("<spec>", data, "expected a mapping of spec fields")
        valid = cls.field_names()
        unknown = sorted(set(data) - valid)
        if unknown:
            raise fail(unknown[0], data[unknown[0]],
                        f"unknown key; valid top-level keys are {sorted(valid)}")
        require(cls, data, "")
        d = dict(data)
        if base_dir is not None:
            d = resolve_paths(d, Path(base_dir))
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MosaicSpec:
        """Read a spec from a YAML file; relative paths are relative to the file."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise fail("<spec file>", str(p), f"cannot be read ({e.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise fail("<spec file>", str(p), f"is not valid YAML: {e}") from None
        return cls.from_dict(data or {}, base_dir=p.parent)

    def replace(self, **changes: Any) -> MosaicSpec:
        """A copy with some fields (or whole sections, as dicts) replaced."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-serialisable mapping that ``from_dict`` reads back."""
        return _plain(dataclasses.asdict(self) | {"aoi": self.aoi.to_geojson()})

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serialise to YAML; write it to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def _raise(e: Exception) -> Any:
    raise e


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def resolve_paths(d: dict[str, Any], base: Path) -> dict[str, Any]:
    """``d`` (spec fields) with its relative paths (AOI file, static catalog, cluster profile,
    OCM weights, outputs) taken relative to ``base``, the directory of the spec's file."""

    def rel(v: Any) -> Any:
        if (isinstance(v, str | Path) and str(v).strip()
                and not str(v).startswith(("http://", "https://", "s3://", "gs://"))):
            p = Path(v).expanduser()
            return str(p if p.is_absolute() else base / p)
        return v

    aoi = d.get("aoi")
    if isinstance(aoi, str) and AOI.looks_like_path(aoi):
        d["aoi"] = rel(aoi)
    src = d.get("source")
    if isinstance(src, Mapping) and "stac" in src:
        d["source"] = {**src, "stac": rel(src["stac"])}
    elif isinstance(src, str):
        d["source"] = {"stac": rel(src)}
    runtime = d.get("runtime")
    if isinstance(runtime, Mapping) and runtime.get("cluster") is not None:
        d["runtime"] = {**runtime, "cluster": rel(runtime["cluster"])}
    mask = d.get("mask")
    if isinstance(mask, Mapping) and mask.get("ocm_weights") is not None:
        d["mask"] = {**mask, "ocm_weights": rel(mask["ocm_weights"])}
    out = d.get("output")
    if isinstance(out, Mapping):
        d["output"] = {k: (rel(v) if k in ("zarr", "cog", "rgb", "metadata") and v is not None else v)
                       for k, v in out.items()}
    return d
