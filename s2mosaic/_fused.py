"""The mosaic's mask and composite as ONE task per spatial chunk, on NumPy or CuPy.

The layered CPU path (:func:`s2mosaic._pipeline.masked_cube` then
:func:`s2mosaic.composite.composite`) builds a validity mask out of several Dask layers - nodata
per band, SCL classes, a halo'd dilation, the AOI - and hands it to the composite task. Here the
same steps run inside one task written once against an array module ``xp``:

1. the band blocks of a chunk, its SCL window (the chunk plus the buffer's halo, read by the same
   CPU read tasks as before) and its AOI block arrive on the host; each is moved to the device
   once (``xp.asarray``);
2. validity: band nodata, SCL nodata, the cloud classes of every :class:`ChunkMasker` on the
   window, grown by ``mask.dilation``/``mask.buffer_m`` (``cupyx.scipy.ndimage`` on the GPU,
   ``scipy.ndimage`` on the CPU; the halo makes it exact across chunk edges, as the layered
   path's ``map_overlap`` does), outside the AOI;
3. the composite: :func:`s2mosaic.composite._kernels.reduce_bands` (the CUDA percentile kernel
   for percentile/median on CuPy, the array-API kernels for the others; Numba on NumPy);
4. only the ``(B + 1, y, x)`` uint16 result (bands, then the count) returns to the host.

Cloud maskers without a chunk form (OmniCloudMask, s2cloudless) run as today, in their own
(GPU-annotated) tasks; their lazy cloud mask is one more halo'd input of the fused task, so a
``ocm+scl`` mosaic still fuses SCL, the buffer and the composite. With ``xp=numpy`` the result
is byte-identical to the layered path (``tests/test_fused.py``); with CuPy too, on a GPU
(``pytest -m gpu``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._cube import SCL_VAR
from ._spec import MosaicSpec
from .composite._kernels import check_method, check_min_obs, check_q, reduce_bands
from .composite._xr import assemble
from .errors import ArgumentError
from .masks import MASKERS, MaskContext, buffer_pixels
from .masks._chunks import plan_chunks
from .masks.scl import in_classes

__all__ = ["ChunkMasker", "FusedChunk", "SclChunkMasker", "array_module", "fused_composite"]


class ChunkMasker(Protocol):
    """A cloud masker that runs inside the fused task, on one window of one chunk.

    It reads the cube variables ``inputs`` (each a ``(T, h, w)`` array of the window: the chunk
    plus ``halo`` pixels plus the buffer's halo on every side that has a neighbour) and returns
    a boolean ``(T, h, w)``, True where cloudy. It must be a frozen dataclass or otherwise
    picklable and tokenizable: it enters the graph. A deep-learning masker (OmniCloudMask) fits
    this shape - ``xp`` is CuPy on a GPU worker, so the window is already on the device.
    """

    @property
    def inputs(self) -> tuple[str, ...]: ...

    @property
    def halo(self) -> tuple[int, int]: ...

    def __call__(self, blocks: Sequence[Any], xp: ModuleType) -> Any: ...


@dataclass(frozen=True)
class SclChunkMasker:
    """The SCL masker (``mask.method: scl``) as a :class:`ChunkMasker`: True where the class is
    one of ``classes``, SCL nodata excluded (as :func:`s2mosaic.masks.scl_clouds`)."""

    classes: tuple[int, ...]
    """SCL classes that are clouds (``mask.scl_classes`` less the nodata value)."""
    inputs: tuple[str, ...] = (SCL_VAR,)
    halo: tuple[int, int] = (0, 0)

    def __call__(self, blocks: Sequence[Any], xp: ModuleType) -> Any:
        return in_classes(blocks[0], self.classes)


@dataclass(frozen=True)
class FusedChunk:
    """The task function: one spatial chunk's mask and composite (NumPy or CuPy). Frozen so that
    it pickles to workers and tokenizes by value (stable task names)."""

    method: str
    """Kernel method name (``composite.METHODS``)."""
    q: float | None
    """Percentile for ``method="percentile"``; None otherwise."""
    min_obs: int
    """Pixels with fewer valid observations become 0."""
    n_bands: int
    """How many band blocks lead the arguments."""
    band_nodata: tuple[float, ...]
    """Each band's nodata value (NaN: none)."""
    scl_nodata: float | None
    """SCL's nodata (NaN also counts when SCL is float); None: the cube has no SCL."""
    maskers: tuple[Any, ...]
    """The :class:`ChunkMasker` s fused in."""
    window_vars: tuple[str, ...]
    """Names of the halo'd window arguments after the bands (masker inputs, SCL first if any)."""
    n_clouds: int
    """Halo'd cloud masks computed elsewhere (OmniCloudMask, s2cloudless), after the windows."""
    depth: tuple[int, int]
    """(y, x) halo of the window arguments on sides with a neighbour."""
    grow: tuple[int, int]
    """(y, x) pixels the clouds grow by (``mask.dilation`` / ``mask.buffer_m``)."""
    device: str = "cpu"
    """``cpu`` (NumPy) or ``gpu`` (CuPy)."""

    def __call__(self, *args: Any, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        xp = array_module(self.device)
        bands = [xp.asarray(b) for b in args[: self.n_bands]]
        rest = args[self.n_bands:]
        windows = {name: xp.asarray(w) for name, w in zip(self.window_vars, rest, strict=False)}
        clouds_in = [xp.asarray(c) for c in rest[len(self.window_vars):][: self.n_clouds]]
        aoi = xp.asarray(rest[len(self.window_vars) + self.n_clouds])
        t, h, w = bands[0].shape
        # Where the chunk sits in its window: the halo exists only towards a neighbour.
        if block_info is None:
            raise ArgumentError("FusedChunk runs through dask.array.map_blocks, which tells it "
                                "where the chunk lies (block_info)")
        iy, ix = block_info[0]["chunk-location"][1:]
        top = self.depth[0] if iy > 0 else 0
        left = self.depth[1] if ix > 0 else 0
        core = (slice(None), slice(top, top + h), slice(left, left + w))

        invalid = xp.zeros((t, h, w), dtype=bool)
        for band, nodata in zip(bands, self.band_nodata, strict=True):
            if not math.isnan(nodata):
                invalid |= band == nodata
        if self.scl_nodata is not None:
            scl = windows[SCL_VAR][core]
            if np.issubdtype(scl.dtype, np.floating):
                invalid |= xp.isnan(scl)
            if not math.isnan(self.scl_nodata):
                invalid |= scl == self.scl_nodata
        clouds = None
        for masker in self.maskers:
            c = masker([windows[n] for n in masker.inputs], xp)
            clouds = c if clouds is None else clouds | c
        for c in clouds_in:
            clouds = c if clouds is None else clouds | c
        if clouds is not None:
            if any(self.grow):
                clouds = _dilate(clouds, self.grow, xp)
            invalid |= clouds[core]
        valid = ~invalid & aoi[None]
        out = reduce_bands(self.method, bands, valid, self.q, self.min_obs, parallel=False)
        return out.get() if self.device == "gpu" else out  # only the result goes to the host


def array_module(device: str) -> ModuleType:
    """NumPy for ``cpu``, CuPy for ``gpu`` (imported here: CuPy is optional)."""
    if device == "gpu":
        import cupy

        return cupy
    return np


def _dilate(clouds: Any, grow: tuple[int, int], xp: ModuleType) -> Any:
    """Binary dilation by a (2 gy + 1) × (2 gx + 1) rectangle per time step, outside = clear."""
    if xp is np:
        from scipy.ndimage import binary_dilation
    else:
        from cupyx.scipy.ndimage import binary_dilation
    structure = xp.zeros((1, 2 * grow[0] + 1, 2 * grow[1] + 1), dtype=bool)
    structure[0] = True  # never across time
    return binary_dilation(clouds, structure=structure)


def _padded(a: da.Array, depth: tuple[int, int]) -> da.Array:
    """``a`` with ``depth`` (y, x) pixels of each neighbour added to every chunk (none beyond
    the array's edges, as ``boundary="none"``)."""
    d = {0: 0, 1: depth[0] if a.numblocks[1] > 1 else 0, 2: depth[1] if a.numblocks[2] > 1 else 0}
    if not any(d.values()):
        return a
    return da.overlap.overlap(a, depth=d, boundary={0: "none", 1: "none", 2: "none"},
                              allow_rechunk=False)


def fused_composite(spec: MosaicSpec, cube: xr.Dataset, aoi: xr.DataArray, *, device: str,
                    ctx: MaskContext | None = None) -> xr.Dataset:
    """The composite of ``spec.bands`` of ``cube`` masked by ``spec.mask`` inside ``aoi``, one
    fused task per spatial chunk on ``device`` (``"cpu"``: NumPy, ``"gpu"``: CuPy, tasks
    annotated ``resources={"GPU": 1}``).

    The same Dataset as ``composite(cube[bands], masked_cube(...)[1], ...)``, byte for byte.

    Examples
    --------
    >>> cube, _ = masked_cube(spec, items, gbox)  # doctest: +SKIP
    >>> m = fused_composite(spec, cube, aoi_mask(gbox, spec.aoi, 256), device="cpu")  # doctest: +SKIP
    """
    ctx = ctx or MaskContext(geobox=cube.odc.geobox if hasattr(cube, "odc") else None)
    c, m = spec.composite, spec.mask
    method = check_method(c.method)
    q = check_q(c.q) if method == "percentile" else None
    min_obs = check_min_obs(c.min_observations)
    names = list(spec.bands)
    has_scl = SCL_VAR in cube.data_vars
    scl_nodata = None
    if has_scl:
        nd = cube[SCL_VAR].attrs.get("nodata", 0)
        scl_nodata = 0.0 if nd is None else float(nd)

    maskers: list[Any] = []
    others: list[Any] = []
    scl_masker = MASKERS["scl"][0]  # the SCL masker is what method "scl" runs
    for masker in MASKERS[m.method]:
        if masker is scl_masker:
            classes = tuple(int(k) for k in m.scl_classes if scl_nodata is None or k != scl_nodata)
            maskers.append(SclChunkMasker(classes))
        else:  # OmniCloudMask, s2cloudless: their own tasks, as in the layered path
            others.append(masker)
    grow = buffer_pixels(m, cube, ctx.geobox) if (maskers or others) else (0, 0)
    halo = tuple(max([0, *(mk.halo[i] for mk in maskers)]) for i in (0, 1))
    depth = (grow[0] + halo[0], grow[1] + halo[1])

    window_vars = list(dict.fromkeys(
        [*([SCL_VAR] if has_scl else []), *(n for mk in maskers for n in mk.inputs)]))
    bands = [da.asarray(cube[n].data) for n in names]
    ref = bands[0]
    if ref.numblocks[0] != 1:
        raise ArgumentError(f"cube[{names[0]!r}] is split into {ref.numblocks[0]} chunks along "
                            "'time'; the fused composite needs time in one chunk")
    windows = [da.asarray(cube[n].data) for n in window_vars]
    clouds = None
    for masker in others:
        c_ = masker(cube, m, ctx)
        clouds = c_ if clouds is None else clouds | c_
    cloud_arrays = [] if clouds is None else [da.asarray(clouds.transpose(*cube[names[0]].dims).data)]
    aoi_arr = da.asarray(aoi.transpose(*cube[names[0]].dims[1:]).data)

    # Every halo'd window needs chunks at least `depth` long (merged otherwise); the result
    # comes back in the cube's chunks.
    target = (ref.chunks[0], plan_chunks(ref.chunks[1], depth[0]),
              plan_chunks(ref.chunks[2], depth[1]))
    bands = [b.rechunk(target) for b in bands]
    windows = [_padded(w.rechunk(target), depth) for w in windows]
    cloud_arrays = [_padded(a.rechunk(target), depth) for a in cloud_arrays]
    aoi_arr = aoi_arr.rechunk(target[1:])

    task = FusedChunk(method, q, min_obs, len(names),
                      tuple(_band_nodata(cube[n]) for n in names), scl_nodata, tuple(maskers),
                      tuple(window_vars), len(cloud_arrays), depth, grow, device)
    annotations: dict[str, Any] = {"resources": {"GPU": 1}} if device == "gpu" else {}
    with dask.annotate(**annotations):
        stacked = da.map_blocks(
            task, *bands, *windows, *cloud_arrays, aoi_arr,
            chunks=((len(names) + 1,), *target[1:]), dtype=np.uint16,
            meta=np.array((), dtype=np.uint16),
            token=f"s2mosaic-fused-{method}-{device}")
    if target != ref.chunks:
        stacked = stacked.rechunk(((len(names) + 1,), *ref.chunks[1:]))
    dims = cube[names[0]].dims
    return assemble(cube[names], names, tuple(str(d) for d in dims[1:]), stacked, method, q,
                     min_obs)


def _band_nodata(var: xr.DataArray) -> float:
    nodata = var.attrs.get("nodata", 0)
    return 0.0 if nodata is None else float(nodata)
