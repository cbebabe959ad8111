"""OmniCloudMask (OCM) on every spatial chunk of the lazy cube, on GPU workers when there are any.

OCM is a PyTorch ensemble of two U-Nets that classifies Red, Green, NIR into 0 clear, 1 thick
cloud, 2 thin cloud, 3 cloud shadow. We run the ``omnicloudmask`` library itself
(``predict_from_array`` with the models passed as ``custom_models``) on each chunk plus a halo of
context (``mask.ocm_halo``), trimmed after.

Resolution. The cube is on the output grid (e.g. 10 m); OCM runs at ``mask.ocm_resolution``
(20 m by default). Rather than load a second, coarser cube, each window is decimated in the task
by a whole factor ``f`` (the mean of the valid pixels of each ``f × f`` block) and the classes
are put back by nearest (each class repeated over its block). Chunks and halo are aligned to
``f``, so every block is the same block of the global grid whichever chunk reads it: the result
equals decimating the whole array once, and on a native-aligned S2 grid the 2 × 2 mean of 10 m
pixels is exactly odc-stac's ``average`` resampling to 20 m (20 m bands, replicated at 10 m,
come back unchanged). It costs no second read and no second graph of loads.

Weights are read from a local directory (``mask.ocm_weights`` or ``$S2MOSAIC_OCM_WEIGHTS``) and
checked when the graph is built; they are never downloaded. Models load once per worker process
(a module-level cache keyed by directory, device and dtype), not once per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import threading
import uuid
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import dask
import numpy as np
import xarray as xr

from .._spec import OCM_WEIGHTS_ENV, MaskSpec
from ..errors import CubeError, MissingDependencyError, ModelWeightsError
from ._chunks import dask_inputs, map_overlap_exact
from ._context import MaskContext, nodata_mask, pixel_size_m

__all__ = [
    "NO_INPUT",
    "OCM_CLASSES",
    "OCM_MODEL_VERSION",
    "OCM_WEIGHT_FILES",
    "InMemoryModels",
    "OcmParams",
    "cluster_has_gpu",
    "gpu_annotations",
    "import_omnicloudmask",
    "load_count",
    "ocm_classes",
    "ocm_factor",
    "ocm_invalid",
    "ocm_window",
    "resolve_weights_dir",
    "verify_weights",
]

#: OCM output classes.
OCM_CLASSES: dict[int, str] = {0: "clear", 1: "thick cloud", 2: "thin cloud", 3: "cloud shadow"}
#: Class given where a window had no valid input (never counts as clear).
NO_INPUT = 255
#: The OmniCloudMask model version whose weights we load.
OCM_MODEL_VERSION = 4.0


@dataclass(frozen=True)
class WeightFile:
    """One OCM v4 weights file, as listed in omnicloudmask's ``model_download_links.csv``."""

    name: str
    timm_model_name: str
    model_library: str
    size: int
    sha256: str
    google_drive_id: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/NickWright/OmniCloudMask/resolve/main/{self.name}"


#: The v4 ensemble: file names, architectures (smp U-Net on a timm encoder), sizes in bytes and
#: SHA-256 of the published files.
OCM_WEIGHT_FILES: tuple[WeightFile, ...] = (
    WeightFile("PM_model_OCM_7.97_R_G_NIR_3_smp_regnety_004.pycls_in1k_PT_state.safetensors",
               "tu-regnety_004", "smp", 27_094_520,
               "7f6e4202e17ee73efa4aba7abb5c34f4f90a9f7eb42480820714994dff2db660",
               "1RXo8-hzq_6VDMXRgBDn7sSk4okR4_QHX"),
    WeightFile("PM_model_OCM_7.97_R_G_NIR_3_smp_edgenext_small.usi_in1k_PT_state.safetensors",
               "tu-edgenext_small", "smp", 30_711_472,
               "d5fe67ad00f6fdb73eb8382ad925849e97fb82cedb46225344afff1a734a9c1d",
               "1MncDYSFIKbUfGlbnfw2YaVbUp5K5bNr3"),
)

# OCM's hard minimum window (its models fail below 32 px).
_MIN_WINDOW = 32


@dataclass(frozen=True)
class OcmParams:
    """Inference options that travel inside the graph (tokenizable, no tensors)."""

    patch_size: int = 1000
    """Patch size in OCM pixels; reduced to the window when larger."""
    overlap: int = 300
    """Patch overlap in OCM pixels; at most half the patch."""
    batch_size: int = 1
    """Patches per inference batch."""
    dtype: str = "fp32"
    """Inference dtype on CUDA (``fp32``, ``fp16``, ``bf16``); CPU always uses fp32."""

    @classmethod
    def from_spec(cls, mask: MaskSpec) -> OcmParams:
        return cls(mask.ocm_patch_size, mask.ocm_overlap, mask.ocm_batch_size, mask.ocm_dtype)


# -- dependencies ---------------------------------------------------------------------------
_TORCHVISION_SHIM: Any = None


def import_omnicloudmask() -> ModuleType:
    """Import ``omnicloudmask`` (and torch), or raise with the pip line that installs them."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "ocm", "mask.method: ocm") from None
    _torchvision_compat(torch)
    try:
        import omnicloudmask
    except ImportError:
        raise MissingDependencyError("omnicloudmask", "ocm", "mask.method: ocm") from None
    return omnicloudmask


def _torchvision_compat(torch: Any) -> None:
    """Let torchvision import next to a CPU-only torch.

    PyPI's torchvision wheels are CUDA builds: beside the CPU build of torch their C extension
    does not load, and torchvision 0.28 then fails at import time registering fake kernels for
    ``torchvision::nms``/``qnms``, ops that were never defined. OCM (via timm and
    segmentation-models-pytorch) never calls them: declaring their schemas, without kernels, is
    enough. Nothing changes where the extension loads.
    """
    global _TORCHVISION_SHIM
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision
        return
    except ImportError:
        return  # importing omnicloudmask will say what is missing
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM = lib  # the ops live as long as this object
    import torchvision  # noqa: F401


# -- weights --------------------------------------------------------------------------------
def _weights_help(directory: Path | None) -> str:
    where = str(directory) if directory is not None else "<dir>"
    lines = [f"OmniCloudMask v{OCM_MODEL_VERSION:g} needs these files in {where}:"]
    for w in OCM_WEIGHT_FILES:
        lines.append(f"  {w.name}  ({w.size:,} bytes, sha256 {w.sha256})")
        lines.append(f"      {w.url}")
        lines.append(f"      or https://drive.google.com/uc?id={w.google_drive_id}")
    lines.append(
        "Fetch them on a machine with internet access, e.g. with omnicloudmask itself: "
        "python -c \"from omnicloudmask.download_models import get_models; "
        f"get_models(model_dir='{where}', model_version={OCM_MODEL_VERSION})\", then point "
        f"mask.ocm_weights (or ${OCM_WEIGHTS_ENV}) at the directory. s2mosaic never downloads "
        "weights during a run."
    )
    return "\n".join(lines)


def resolve_weights_dir(mask: MaskSpec) -> Path:
    """The OCM weights directory: ``mask.ocm_weights``, else ``$S2MOSAIC_OCM_WEIGHTS``; checked
    to hold every v4 file at its published size (:class:`ModelWeightsError` otherwise)."""
    raw = mask.ocm_weights if mask.ocm_weights is not None else os.environ.get(OCM_WEIGHTS_ENV)
    if not raw:
        raise ModelWeightsError(
            f"mask.method {mask.method!r} needs the OmniCloudMask weights, but neither "
            f"mask.ocm_weights nor ${OCM_WEIGHTS_ENV} names a directory.\n" + _weights_help(None))
    directory = Path(raw).expanduser()
    _check_files(directory, "mask.ocm_weights" if mask.ocm_weights is not None else
                 f"${OCM_WEIGHTS_ENV}")
    return directory


def _check_files(directory: Path, source: str) -> None:
    problems = []
    for w in OCM_WEIGHT_FILES:
        path = directory / w.name
        if not path.is_file():
            problems.append(f"{w.name} is missing")
        elif path.stat().st_size != w.size:
            problems.append(f"{w.name} has {path.stat().st_size:,} bytes, expected {w.size:,} "
                            "(an interrupted download, or another model version)")
    if problems:
        raise ModelWeightsError(
            f"OmniCloudMask weights directory {str(directory)!r} (from {source}): "
            + "; ".join(problems) + ".\n" + _weights_help(directory))


def verify_weights(directory: str | Path) -> dict[str, bool]:
    """SHA-256 check of each v4 weights file in ``directory``: file name → matches.

    Not run during a mosaic (sizes are checked there); use it once after placing the files.
    """
    out = {}
    for w in OCM_WEIGHT_FILES:
        path = Path(directory) / w.name
        if not path.is_file():
            out[w.name] = False
            continue
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[w.name] = h.hexdigest() == w.sha256
    return out


# -- models, once per process ---------------------------------------------------------------
_MODELS: dict[tuple[str, str, str], list[Any]] = {}
_MODELS_LOCK = threading.Lock()
_LOADS = 0


def load_count() -> int:
    """How many times this process has built the OCM ensemble from weights (tests, diagnostics)."""
    return _LOADS


_CPU_THREADS_SET = False


def _device() -> str:
    """``cuda`` where this process sees a GPU, else ``cpu`` (then torch runs single-threaded).

    On a CPU, parallelism comes from Dask's threads and processes: torch's own intra-op threads
    on top oversubscribe the cores, and under load inference then runs many times slower (a
    64 px window: 0.07 s with one thread, seconds with two on a busy two-core machine). So the
    first CPU inference of a process sets ``torch.set_num_threads(1)`` for that process.
    """
    global _CPU_THREADS_SET
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if not _CPU_THREADS_SET:
        torch.set_num_threads(1)
        _CPU_THREADS_SET = True
    return "cpu"


def _models(directory: str, device: str, dtype: str) -> list[Any]:
    """The ensemble from ``directory`` on ``device``/``dtype``, built once per process."""
    global _LOADS
    key = (directory, device, dtype)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is not None:
            return cached
        _check_files(Path(directory), "the task's weights directory")
        import_omnicloudmask()
        import torch
        from omnicloudmask.model_utils import get_torch_dtype, load_model_from_weights

        models = [
            load_model_from_weights(model_name=w.timm_model_name,
                                    weights_path=str(Path(directory) / w.name),
                                    model_library=w.model_library, device=torch.device(device),
                                    dtype=get_torch_dtype(dtype))
            for w in OCM_WEIGHT_FILES
        ]
        _MODELS[key] = models
        _LOADS += 1
        return models


# -- models given in memory (ctx.models) ----------------------------------------------------------
_MODEL_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_TOKENS_LOCK = threading.Lock()


def _model_token(model: Any) -> str:
    """A random id given to ``model`` the first time it is seen, the same while it lives."""
    with _TOKENS_LOCK:
        try:
            token = _MODEL_TOKENS.get(model)
            if token is None:
                token = _MODEL_TOKENS[model] = uuid.uuid4().hex
            return token
        except TypeError:  # not weak-referenceable: its id is unique while it lives
            return f"id-{id(model):x}"


@dataclass(frozen=True, eq=False)
class InMemoryModels:
    """The ``torch.nn.Module`` ensemble of ``MaskContext.models``, as it travels in the graph.

    Dask tokenizes every argument of a task to name it; for a module that means hashing every
    weight (0.4 s for OCM's ensemble at each graph build). The token here is the identity of the
    model objects instead: the same objects give the same task names, other objects other names.
    Changing a model's weights in place after building a graph is not seen by the token.
    """

    models: tuple[Any, ...]

    def __iter__(self) -> Any:
        return iter(self.models)

    def __dask_tokenize__(self) -> tuple[str, tuple[str, ...]]:
        return ("s2mosaic.ocm-models", tuple(_model_token(m) for m in self.models))


# -- GPU workers ----------------------------------------------------------------------------
def cluster_has_gpu(client: Any = None) -> bool:
    """True when a worker of ``client``'s cluster (default: the current client) advertises the
    Dask resource ``GPU`` (``dask worker --resources GPU=1``); False without a cluster."""
    from .._cluster import gpu_resources

    return gpu_resources(client) is not None


def gpu_annotations(gpu: bool) -> dict[str, Any]:
    """Dask annotations for tasks that need the GPU: one ``GPU`` resource each (so a GPU serves
    one task at a time) when the cluster has GPU workers; none otherwise (a CPU-only cluster
    would never schedule a task that asks for a resource no worker has)."""
    return {"resources": {"GPU": 1}} if gpu else {}


# -- the per-chunk kernel -------------------------------------------------------------------
def ocm_factor(ocm_resolution: float, pixel_m: tuple[float, float]) -> tuple[int, int]:
    """(y, x) decimation factor: the coarsest whole multiple of the output pixel that is not
    larger than ``ocm_resolution`` (1 when the output pixel is already that coarse)."""
    return tuple(max(1, math.floor(ocm_resolution / r + 1e-6)) for r in pixel_m)  # type: ignore[return-value]


def decimate(x: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Mean of the non-NaN values of each ``fy × fx`` block of the last two axes (NaN where a
    block has none); partial blocks at the end average what they hold."""
    if fy == 1 and fx == 1:
        return x
    h, w = x.shape[-2:]
    hh, ww = -(-h // fy), -(-w // fx)
    pad = [(0, 0)] * (x.ndim - 2) + [(0, hh * fy - h), (0, ww * fx - w)]
    xp = np.pad(x, pad, constant_values=np.nan)
    blocks = xp.reshape(*x.shape[:-2], hh, fy, ww, fx)
    ok = ~np.isnan(blocks)
    total = np.where(ok, blocks, 0).sum(axis=(-3, -1), dtype=np.float32)
    count = ok.sum(axis=(-3, -1)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, np.float32(1)),
                        np.float32(np.nan)).astype(np.float32)


def ocm_window(window: np.ndarray, models: list[Any], params: OcmParams, device: str) -> np.ndarray:
    """Classes (uint8, h × w) of one (3, h, w) float32 window at OCM resolution, NaN = nodata.

    ``predict_from_array`` on the window (padded with NaN to OCM's 32 px minimum, cropped
    after); ``NO_INPUT`` where any band is NaN or the whole window is.
    """
    h, w = window.shape[1:]
    missing = np.isnan(window).any(axis=0)
    if missing.all():
        return np.full((h, w), NO_INPUT, dtype=np.uint8)
    ph, pw = max(0, _MIN_WINDOW - h), max(0, _MIN_WINDOW - w)
    if ph or pw:
        window = np.pad(window, [(0, 0), (0, ph), (0, pw)], constant_values=np.nan)
    patch = min(params.patch_size, *window.shape[1:])
    overlap = min(params.overlap, patch // 2)
    from omnicloudmask import predict_from_array

    with warnings.catch_warnings():
        # OCM's notes on small windows / patch sizes: expected at array edges and for small chunks.
        warnings.filterwarnings("ignore", message=r"(Input width|Patch size|Significant no-data)")
        pred = predict_from_array(
            window, patch_size=patch, patch_overlap=overlap, batch_size=params.batch_size,
            inference_device=device, inference_dtype=params.dtype if device != "cpu" else "fp32",
            no_data_value=float("nan"), apply_no_data_mask=True, custom_models=models)
    out = np.asarray(pred[0, :h, :w], dtype=np.uint8)
    out[missing] = NO_INPUT
    return out


def _ocm_block(*bands: np.ndarray, nodata: tuple[float, ...], factor: tuple[int, int],
               params: OcmParams, source: Any) -> np.ndarray:
    """One padded chunk: (T, H, W) red, green, NIR → (T, H, W) uint8 OCM classes."""
    x = np.stack([np.where(b == nd, np.float32(np.nan), b.astype(np.float32))
                  for b, nd in zip(bands, nodata, strict=True)], axis=1)  # (T, 3, H, W)
    t, _, hgt, wid = x.shape
    fy, fx = factor
    low = decimate(x, fy, fx)
    import_omnicloudmask()
    device = _device()
    if isinstance(source, str):
        models = _models(source, device, params.dtype if device != "cpu" else "fp32")
    else:
        models = list(source)
    classes = np.stack([ocm_window(low[i], models, params, device) for i in range(t)]) if t else \
        np.zeros((0, *low.shape[2:]), dtype=np.uint8)
    up = np.repeat(np.repeat(classes, fy, axis=1), fx, axis=2)
    return np.ascontiguousarray(up[:, :hgt, :wid])


def _input_vars(cube: xr.Dataset) -> list[str]:
    from .._cube import MASK_BANDS_ATTR

    names = list(cube.attrs.get(MASK_BANDS_ATTR) or [])
    if len(names) != 3:
        raise CubeError(
            f"OmniCloudMask needs the cube's red, green and NIR bands listed in its "
            f"{MASK_BANDS_ATTR!r} attribute (load_cube sets it for mask.method ocm/ocm+scl); "
            f"got {names}")
    return names


def ocm_classes(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext | None = None) -> xr.DataArray:
    """Lazy uint8 ``(time, y, x)`` OCM classes on the cube's grid.

    0 clear, 1 thick cloud, 2 thin cloud, 3 shadow, 255 no valid input. Each chunk is read with
    ``mask.ocm_halo`` OCM pixels of context, decimated to ``mask.ocm_resolution`` (see the
    module notes), classified, put back by nearest and trimmed. With GPU workers the tasks ask
    for one ``GPU`` resource each.

    Examples
    --------
    >>> classes = ocm_classes(cube, MaskSpec(method="ocm", ocm_weights="~/ocm-v4"))  # doctest: +SKIP
    """
    ctx = ctx or MaskContext()
    names = _input_vars(cube)
    factor = ocm_factor(mask.ocm_resolution, pixel_size_m(cube, ctx.geobox))
    depth = (mask.ocm_halo * factor[0], mask.ocm_halo * factor[1])
    if ctx.models is not None:
        given = ctx.models if isinstance(ctx.models, list | tuple) else [ctx.models]
        source: Any = InMemoryModels(tuple(given))
    else:
        source = str(resolve_weights_dir(mask))
    arrays = dask_inputs(cube, names)
    nodata = tuple(float(cube[n].attrs.get("nodata", 0)) for n in names)
    # Only the inference tasks ask for a GPU. ctx.gpu None: the cluster decides
    # (s2mosaic._cluster.gpu_annotate, which warns once when OCM falls back to CPU).
    if ctx.gpu is None:
        from .._cluster import gpu_annotate

        annotate: contextlib.AbstractContextManager[Any] = gpu_annotate(what="OmniCloudMask")
    else:
        annotate = dask.annotate(**gpu_annotations(ctx.gpu))
    data = map_overlap_exact(_ocm_block, arrays, depth=depth, dtype=np.uint8, multiple=factor,
                             annotate=annotate, name="ocm", nodata=nodata, factor=factor,
                             params=OcmParams.from_spec(mask), source=source)
    gpu = ctx.gpu if ctx.gpu is not None else cluster_has_gpu()
    if not gpu and mask.ocm_dtype != "fp32":
        warnings.warn(f"mask.ocm_dtype {mask.ocm_dtype!r} applies on GPU only; the cluster has "
                      "no GPU workers, so OmniCloudMask runs in fp32 on CPU", UserWarning,
                      stacklevel=2)
    ref = cube[names[0]]
    return xr.DataArray(data, dims=ref.dims, coords=ref.coords, name="ocm",
                        attrs={"flag_values": [*OCM_CLASSES, NO_INPUT],
                               "flag_meanings": "clear thick_cloud thin_cloud cloud_shadow "
                                                "no_input",
                               "ocm_factor": list(factor)})


def ocm_invalid(cube: xr.Dataset, mask: MaskSpec, ctx: MaskContext | None = None) -> xr.DataArray:
    """True where OCM says anything but clear, or where its own input bands are nodata
    (OCM itself calls nodata clear)."""
    names = _input_vars(cube)
    return (ocm_classes(cube, mask, ctx) != 0) | nodata_mask(cube, names)
