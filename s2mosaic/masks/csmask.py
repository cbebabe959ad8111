"""ukis-csmask (DLR's cloud and cloud-shadow CNN) on every spatial chunk of the lazy cube.

ukis-csmask is a U-Net (EfficientNet-B4 encoder) exported to ONNX, whose trained weights ship
inside the ``ukis-csmask`` wheel, so it runs offline: 4-band (blue, green, red, NIR) and 6-band
(adds SWIR 1.6/2.2 µm) models, each for L1C (TOA) and L2A (BOA) reflectance. It classifies
0 clear, 1 cloud, 2 cloud shadow. We run its models through ``onnxruntime`` directly, with the
library's own model metadata (band order, fixed mean/std normalisation, 256 px tiles) and its
tiling helpers (``tile_array``/``untile_array``: 20 % overlap, smooth blending), exactly as
``ukis_csmask.mask.CSmask`` does, but with one ONNX session per worker process instead of one
per call (``CSmask`` builds its session in ``__init__``), single-threaded inside Dask tasks
(onnxruntime's own thread pool on top of Dask's threads oversubscribes the cores), on CUDA
where the task runs on a GPU worker (the ``GPU`` resource annotation OCM uses).

Resolution and windows follow :mod:`.omnicloud`: each chunk plus ``mask.csmask_halo`` model
pixels of context is decimated in the task by a whole factor to ``mask.csmask_resolution``
(30 m by default, the resolution the models were trained at), classified, put back by nearest
and trimmed. ``CSmask`` pads every call by a 256 px tile on the far edges, so a window of a
few hundred pixels pays for proportionally more tiles than a large one: larger
``runtime.chunks`` are faster per pixel (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import dask
import numpy as np
import xarray as xr

from .._spec import MaskSpec
from ..errors import CubeError, MissingDependencyError, SpecError
from ._chunks import dask_inputs, map_overlap_exact
from ._context import MaskContext, nodata_mask, pixel_size_m
from .omnicloud import decimate, gpu_annotations, ocm_factor

__all__ = [
    "CSMASK_CLASSES",
    "NO_INPUT",
    "CsmaskParams",
    "csmask_classes",
    "csmask_invalid",
    "csmask_level",
    "csmask_window",
    "import_csmask",
    "session_count",
]

#: ukis-csmask output classes.
CSMASK_CLASSES: dict[int, str] = {0: "clear", 1: "cloud", 2: "cloud shadow"}
#: Class given where the window had no valid input for a pixel (never counts as clear).
NO_INPUT = 255
# CSmask's tile overlap (its _csm uses 0.2 with smooth blending).
_OVERLAP = 0.2
_FEATURE = "mask.method: csmask"


@dataclass(frozen=True)
class CsmaskParams:
    """Which model and how to run it; travels inside the graph (tokenizable, no session)."""

    bands: int = 4
    """4 or 6 input bands."""
    level: str = "L2A"
    """``L1C`` or ``L2A`` model."""
    batch_size: int = 1
    """256 px tiles per ``session.run``."""
    gpu: bool = False
    """The task is annotated for a GPU worker: use onnxruntime's CUDA provider when present."""


def import_csmask() -> tuple[ModuleType, ModuleType]:
    """Import ``onnxruntime`` and ``ukis_csmask``, or raise with the pip line of the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "csmask", _FEATURE) from None
    try:
        import ukis_csmask
    except ImportError:
        raise MissingDependencyError("ukis-csmask", "csmask", _FEATURE) from None
    return onnxruntime, ukis_csmask


def model_path(bands: int, level: str) -> Path:
    """The ONNX file of the ``bands``-band ``level`` model inside the installed ukis-csmask."""
    _, ukis_csmask = import_csmask()
    return Path(str(ukis_csmask.__file__)).parent / f"model_{bands}b_{level.lower()}.onnx"


# -- sessions, once per process ------------------------------------------------------------
_SESSIONS: dict[tuple[int, str, bool], tuple[Any, dict[str, Any]]] = {}
_LOCK = threading.Lock()
_LOADS = 0


def session_count() -> int:
    """How many ONNX sessions this process has created (tests, diagnostics)."""
    return _LOADS


def _session(params: CsmaskParams) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session, model metadata) for ``params``, built once per process."""
    global _LOADS
    ort, _ = import_csmask()
    cuda = params.gpu and "CUDAExecutionProvider" in ort.get_available_providers()
    key = (params.bands, params.level, cuda)
    with _LOCK:
        cached = _SESSIONS.get(key)
        if cached is not None:
            return cached
        path = model_path(params.bands, params.level)
        meta = json.loads(path.with_suffix(".json").read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # Dask's threads are the parallelism
        so.inter_op_num_threads = 1
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda
                     else ["CPUExecutionProvider"])
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        _SESSIONS[key] = (session, meta)
        _LOADS += 1
        return session, meta


# -- the per-window kernel ------------------------------------------------------------------
def csmask_window(window: np.ndarray, session: Any, meta: dict[str, Any],
                  batch_size: int = 1) -> np.ndarray:
    """Classes (uint8, h × w) of one (bands, h, w) float32 reflectance window (0-1, NaN = nodata)
    in the model's band order: 0 clear, 1 cloud, 2 shadow, ``NO_INPUT`` where any band is NaN.

    Nodata is filled with 0 reflectance (what ``CSmask`` sees for nodata 0), then the window is
    normalised with the model's fixed statistics, tiled, classified and blended as in
    ``CSmask._csm``.
    """
    from scipy.special import softmax
    from ukis_csmask.utils import tile_array, untile_array

    h, w = window.shape[1:]
    missing = np.isnan(window).any(axis=0)
    if missing.all():
        return np.full((h, w), NO_INPUT, dtype=np.uint8)
    stats = meta["data"]["dataset_statistics"]["img"]
    mean = np.asarray(stats[0], dtype=np.float32)
    std = np.asarray(stats[1], dtype=np.float32)
    img = np.moveaxis(np.where(np.isnan(window), np.float32(0), window), 0, -1)
    img = ((img - mean) / std).astype(np.float32)
    ty, tx = meta["data"]["target_size"]
    tiles = np.moveaxis(tile_array(img, xsize=ty, ysize=tx, overlap=_OVERLAP), -1, 1)
    name = session.get_inputs()[0].name
    probs = np.concatenate([softmax(session.run(None, {name: tiles[i:i + batch_size]})[0], axis=1)
                            for i in range(0, len(tiles), batch_size)])
    probs = untile_array(np.moveaxis(probs, 1, -1), (h, w, probs.shape[1]), overlap=_OVERLAP,
                         smooth_blending=True)
    out = np.argmax(probs, axis=-1).astype(np.uint8)
    out[missing] = NO_INPUT
    return out


def _csmask_block(*bands: np.ndarray, nodata: tuple[float, ...], factor: tuple[int, int],
                  params: CsmaskParams) -> np.ndarray:
    """One padded chunk: (T, H, W) uint16 reflectance × 10000 per band → (T, H, W) classes."""
    x = np.stack([np.where(b == nd, np.float32(np.nan), b.astype(np.float32) / np.float32(10000))
                  for b, nd in zip(bands, nodata, strict=True)], axis=1)  # (T, B, H, W)
    t, _, hgt, wid = x.shape
    fy, fx = factor
    low = decimate(x, fy, fx)
    session, meta = _session(params)
    classes = (np.stack([csmask_window(low[i], session, meta, params.batch_size)
                         for i in range(t)]) if t else
               np.zeros((0, *low.shape[2:]), dtype=np.uint8))
    up = np.repeat(np.repeat(classes, fy, axis=1), fx, axis=2)
    return np.ascontiguousarray(up[:, :hgt, :wid])


# -- xarray ---------------------------------------------------------------------------------
def csmask_level(cube: xr.Dataset, mask: MaskSpec) -> str:
    """``mask.csmask_level``, else the items' one processing level (cube attr
    ``processing_levels``, set by ``load_cube``); raises :class:`SpecError` when they are
    unknown or mixed."""
    from .._cube import LEVELS_ATTR

    if mask.csmask_level is not None:
        return mask.csmask_level
    levels = list(cube.attrs.get(LEVELS_ATTR) or ["unknown"])
    if len(levels) == 1 and levels[0] in ("L1C", "L2A"):
        return str(levels[0])
    why = ("mixed" if len(levels) > 1 else "not stated") + f" ({', '.join(levels)})"
    raise SpecError("mask.csmask_level", None,
                    f"the items' processing level is {why}: set mask.csmask_level to L1C "
                    "(top-of-atmosphere) or L2A (surface reflectance) to pick the model")


def _input_vars(cube: xr.Dataset, mask: MaskSpec) -> list[str]:
    from .._cube import MASK_BANDS_ATTR

    names = list(cube.attrs.get(MASK_BANDS_ATTR) or [])
    if len(names) != mask.csmask_bands:
        raise CubeError(
            f"ukis-csmask ({mask.csmask_bands}-band model) needs the cube's blue, green, red, NIR"
            f"{' and SWIR' if mask.csmask_bands == 6 else ''} bands listed in its "
            f"{MASK_BANDS_ATTR!r} attribute (load_cube sets it for mask.method csmask); got {names}")
    return names


def csmask_classes(cube: xr.Dataset, mask: MaskSpec,
                   ctx: MaskContext | None = None) -> xr.DataArray:
    """Lazy uint8 ``(time, y, x)`` ukis-csmask classes on the cube's grid.

    0 clear, 1 cloud, 2 cloud shadow, 255 no valid input. Each chunk is read with
    ``mask.csmask_halo`` model pixels of context, decimated to ``mask.csmask_resolution``,
    classified, put back by nearest and trimmed. With GPU workers the tasks ask for one ``GPU``
    resource each and run on onnxruntime's CUDA provider.

    Examples
    --------
    >>> classes = csmask_classes(cube, MaskSpec(method="csmask", csmask_bands=6))  # doctest: +SKIP
    """
    ctx = ctx or MaskContext()
    import_csmask()  # fail when the graph is built, not in a task
    names = _input_vars(cube, mask)
    level = csmask_level(cube, mask)
    factor = ocm_factor(mask.csmask_resolution, pixel_size_m(cube, ctx.geobox))
    depth = (mask.csmask_halo * factor[0], mask.csmask_halo * factor[1])
    if ctx.gpu is None:
        from .._cluster import gpu_resources

        gpu = gpu_resources() is not None  # CPU is a first-class path here: no fallback warning
    else:
        gpu = ctx.gpu
    params = CsmaskParams(mask.csmask_bands, level, mask.csmask_batch_size, gpu)
    nodata = tuple(float(cube[n].attrs.get("nodata", 0)) for n in names)
    data = map_overlap_exact(_csmask_block, dask_inputs(cube, names), depth=depth,
                             dtype=np.uint8, multiple=factor,
                             annotate=dask.annotate(**gpu_annotations(gpu)), name="csmask",
                             nodata=nodata, factor=factor, params=params)
    ref = cube[names[0]]
    return xr.DataArray(data, dims=ref.dims, coords=ref.coords, name="csmask",
                        attrs={"flag_values": [*CSMASK_CLASSES, NO_INPUT],
                               "flag_meanings": "clear cloud cloud_shadow no_input",
                               "csmask_factor": list(factor), "csmask_level": level,
                               "csmask_bands": mask.csmask_bands})


def csmask_invalid(cube: xr.Dataset, mask: MaskSpec,
                   ctx: MaskContext | None = None) -> xr.DataArray:
    """True where ukis-csmask sees cloud or shadow, or where one of its inputs that is also an
    output band is nodata.

    Bands loaded for the masker only (``mask_B11`` for the 6-band model when ``bands`` lacks
    SWIR) do not invalidate pixels by their own nodata: where only they are missing the
    masker has no opinion (class ``NO_INPUT``) and the output bands' validity stands.
    """
    from .._cube import MASK_VAR_PREFIX

    names = _input_vars(cube, mask)
    classes = csmask_classes(cube, mask, ctx)
    invalid = (classes == 1) | (classes == 2)
    own = [n for n in names if not n.startswith(MASK_VAR_PREFIX)]
    return invalid | nodata_mask(cube, own) if own else invalid
