"""OmniCloudMask plumbing, offline: a randomly initialised model of OCM's own architecture.

OCM v4 is an ensemble of two segmentation-models-pytorch U-Nets on timm encoders
(``tu-regnety_004`` and ``tu-edgenext_small``; 3 inputs, 4 classes). Built with
``encoder_weights=None`` nothing is downloaded, and their state dicts saved as safetensors have
exactly the published files' sizes, so the weights-directory path runs for real too. The
chunked, halo'd result must equal ``omnicloudmask.predict_from_array`` on the same padded
windows, computed here independently.
"""

from __future__ import annotations

import csv
import itertools
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from s2mosaic._cluster import keep_annotations
from s2mosaic._spec import OCM_WEIGHTS_ENV, MaskSpec
from s2mosaic.errors import CubeError, MissingDependencyError, ModelWeightsError, SpecError
from s2mosaic.masks import MaskContext, valid_mask
from s2mosaic.masks._chunks import plan_chunks
from s2mosaic.masks.omnicloud import (
    NO_INPUT,
    OCM_MODEL_VERSION,
    OCM_WEIGHT_FILES,
    cluster_has_gpu,
    import_omnicloudmask,
    load_count,
    ocm_classes,
    ocm_factor,
    resolve_weights_dir,
)

try:
    import_omnicloudmask()  # torch, and torchvision beside a CPU-only torch
except MissingDependencyError as e:
    pytest.skip(str(e), allow_module_level=True)
import torch

CHUNK = 64
HALO = 16  # OCM pixels


@pytest.fixture(scope="module")
def models() -> list[torch.nn.Module]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return [smp.Unet(encoder_name=w.timm_model_name, encoder_weights=None, in_channels=3,
                     classes=4).eval() for w in OCM_WEIGHT_FILES]


@pytest.fixture(scope="module")
def weights_dir(models: list[torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random models saved under the real v4 file names."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ocm-weights")
    for w, m in zip(OCM_WEIGHT_FILES, models, strict=True):
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / w.name))
    return d


def _cube(shape: tuple[int, int, int] = (3, 150, 131), res: float = 10.0, seed: int = 0) -> xr.Dataset:
    """Red, green, NIR with smooth 'clouds', some nodata, 10 m pixels, CHUNK px chunks."""
    t, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = {}
    for k, name in enumerate(["B04", "B03", "B8A"]):
        base = 800 + 300 * k + rng.integers(0, 400, (t, h, w))
        blob = 4000 * np.exp(-(((yy - 60 - 20 * np.arange(t)[:, None, None]) / 25.0) ** 2
                               + ((xx - 70) / 30.0) ** 2))
        out[name] = (base + blob).astype(np.uint16)
    out["B04"][0, :20, :] = 0  # a strip of nodata in one band only
    for name in out:
        out[name][1:2, 100:, 90:] = 0  # a swath edge: all bands nodata
        out[name][2:3, :64, :64] = 0  # one whole chunk without data
    coords = {"time": np.arange(t), "y": 5_000_000 - res * (np.arange(h) + 0.5),
              "x": 400_000 + res * (np.arange(w) + 0.5)}
    ds = xr.Dataset({n: xr.DataArray(da.from_array(v, chunks=(t, CHUNK, CHUNK)),
                                     dims=("time", "y", "x"), attrs={"nodata": 0})
                     for n, v in out.items()}, coords=coords)
    return ds.assign_attrs(mask_bands=["B04", "B03", "B8A"])


def _expected(cube: xr.Dataset, models: list[torch.nn.Module], mask: MaskSpec, f: int) -> np.ndarray:
    """predict_from_array on each chunk's window (chunk + halo, cut at the array edges),
    decimated by f (mean of valid pixels), padded to 32 px, classes repeated back, trimmed."""
    from omnicloudmask import predict_from_array

    x = np.stack([cube[n].values for n in cube.attrs["mask_bands"]], axis=1).astype(np.float32)
    x[x == 0] = np.nan
    t, _, h, w = x.shape
    d = mask.ocm_halo * f
    out = np.zeros((t, h, w), dtype=np.uint8)
    # The masker widens chunks shorter than the halo (here the last 3 columns) and aligns them
    # to f; the windows follow its chunks.
    ys = np.cumsum((0, *plan_chunks(cube.B04.data.chunks[1], d, f)))
    xs = np.cumsum((0, *plan_chunks(cube.B04.data.chunks[2], d, f)))
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            wy0, wy1, wx0, wx1 = max(0, y0 - d), min(h, y1 + d), max(0, x0 - d), min(w, x1 + d)
            win = x[:, :, wy0:wy1, wx0:wx1]
            hh, ww = -(-win.shape[2] // f), -(-win.shape[3] // f)
            padded = np.full((t, 3, hh * f, ww * f), np.nan, dtype=np.float32)
            padded[:, :, :win.shape[2], :win.shape[3]] = win
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
                low = np.nanmean(padded.reshape(t, 3, hh, f, ww, f), axis=(3, 5))
            for i in range(t):
                cls = np.full((hh, ww), NO_INPUT, dtype=np.uint8)
                if not np.isnan(low[i]).all():
                    big = np.full((3, max(hh, 32), max(ww, 32)), np.nan, dtype=np.float32)
                    big[:, :hh, :ww] = low[i]
                    patch = min(mask.ocm_patch_size, *big.shape[1:])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        pred = predict_from_array(big, patch_size=patch,
                                                  patch_overlap=min(mask.ocm_overlap, patch // 2),
                                                  inference_device="cpu", no_data_value=np.nan,
                                                  custom_models=models)
                    cls = pred[0, :hh, :ww].copy()
                    cls[np.isnan(low[i]).any(axis=0)] = NO_INPUT
                up = np.repeat(np.repeat(cls, f, axis=0), f, axis=1)
                out[i, y0:y1, x0:x1] = up[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    return out


@pytest.mark.parametrize(("ocm_resolution", "patch"), [(10, 64), (20, 48)])
def test_chunked_result_equals_the_model_on_the_same_padded_windows(
        models: list[torch.nn.Module], ocm_resolution: float, patch: int) -> None:
    cube = _cube()
    mask = MaskSpec(method="ocm", ocm_resolution=ocm_resolution, ocm_halo=HALO, ocm_patch_size=patch,
                    ocm_overlap=8)
    classes = ocm_classes(cube, mask, MaskContext(gpu=False, models=models))
    f = ocm_factor(ocm_resolution, (10.0, 10.0))
    assert f == ((1, 1) if ocm_resolution == 10 else (2, 2))
    assert classes.dtype == np.uint8 and classes.dims == ("time", "y", "x")
    assert classes.shape == cube.B04.shape and classes.data.chunks == cube.B04.data.chunks
    with dask.config.set(scheduler="synchronous"):
        got = classes.values
    expected = _expected(cube, models, mask, f[0])
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) <= {0, 1, 2, 3, NO_INPUT}
    assert (got == 0).any() and ((got > 0) & (got < 4)).any()
    if f[0] == 2:  # classes are whole 2 × 2 blocks of the output grid
        np.testing.assert_array_equal(got[:, 0:150:2, 0:130:2], got[:, 1:150:2, 1:131:2])


def test_nodata_is_never_clear(models: list[torch.nn.Module]) -> None:
    cube = _cube()
    mask = MaskSpec(method="ocm", ocm_halo=HALO, ocm_patch_size=48, ocm_overlap=8)
    ctx = MaskContext(gpu=False, models=models)
    with dask.config.set(scheduler="synchronous"):
        classes = ocm_classes(cube, mask, ctx).values
        valid = valid_mask(cube, ["B04"], mask, ctx).values
        valid_nir = valid_mask(cube, ["B8A"], mask, ctx).values
    assert (classes[2, :64, :64] == NO_INPUT).all()  # a chunk without any data
    assert (classes[1, 100:, 90:] == NO_INPUT).all()  # the swath edge
    assert not valid[2, :64, :64].any() and not valid[1, 100:, 90:].any()
    # Red is nodata in the strip: OCM's input is incomplete there, so even a NIR-only mosaic
    # treats those observations as invalid.
    assert (classes[0, :20] == NO_INPUT).all() and not valid_nir[0, :20].any()
    assert valid.any()
    np.testing.assert_array_equal(valid, (classes == 0) & (cube.B04.values != 0))


def test_resource_annotation_only_with_gpu_workers(models: list[torch.nn.Module]) -> None:
    cube = _cube((2, 80, 80))
    mask = MaskSpec(method="ocm", ocm_halo=HALO)

    def annotations(gpu: bool) -> list[Any]:
        graph = ocm_classes(cube, mask, MaskContext(gpu=gpu, models=models)).data.__dask_graph__()
        return [layer.annotations for layer in graph.layers.values() if layer.annotations]

    with_gpu = annotations(True)
    assert with_gpu == [{"resources": {"GPU": 1}}]  # the inference layer, and only it
    assert annotations(False) == []


def test_cpu_note_for_reduced_precision(models: list[torch.nn.Module]) -> None:
    with pytest.warns(UserWarning, match="runs in fp32 on CPU"):
        ocm_classes(_cube((1, 64, 64)), MaskSpec(method="ocm", ocm_dtype="bf16"),
                    MaskContext(gpu=False, models=models))


def test_distributed_gpu_cluster_loads_models_once_per_worker(
        weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real LocalCluster whose worker advertises GPU=1: the tasks carry the resource, the
    weights directory comes from the environment variable, and the ensemble is built once in
    the worker process although it serves many chunks."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Restrictions(SchedulerPlugin):
        name = "ocm-restrictions"

        def __init__(self) -> None:
            self.seen: dict[str, Any] = {}

        async def start(self, scheduler: Any) -> None:
            self.scheduler = scheduler

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if finish == "processing":
                self.seen[str(key)] = self.scheduler.tasks[key].resource_restrictions

    monkeypatch.setenv(OCM_WEIGHTS_ENV, str(weights_dir))
    cube = _cube((2, 128, 128))
    mask = MaskSpec(method="ocm", ocm_halo=HALO, ocm_patch_size=64, ocm_overlap=8)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        plugin = Restrictions()
        client.register_plugin(plugin)
        assert cluster_has_gpu(client)
        classes = ocm_classes(cube, mask)  # gpu=None: asks the current client
        with keep_annotations(classes):  # as s2mosaic.write computes
            got = client.compute(classes.data).result()
        loads = client.run(load_count)
        seen = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[
            "ocm-restrictions"].seen)
    assert list(loads.values()) == [1]  # 4 chunks × 2 dates, one load
    # The 4 inference tasks (fused with their trim by dask's blockwise fusion) ask for the GPU;
    # the others (array slices, halo exchange) do not.
    restricted = {k for k, r in seen.items() if r}
    assert len(restricted) == 4 and all(seen[k] == {"GPU": 1} for k in restricted)
    assert len(seen) > 4
    with dask.config.set(scheduler="synchronous"):
        local = ocm_classes(cube, mask, MaskContext(gpu=False)).values
    np.testing.assert_array_equal(got, local)


def test_cpu_only_cluster_gets_no_annotation(dask_client: Any) -> None:
    assert not cluster_has_gpu(dask_client)
    assert not cluster_has_gpu()  # no default client in this test: no GPU


def test_weights_are_loaded_once_per_process(weights_dir: Path) -> None:
    cube = _cube((1, 64, 64))
    mask = MaskSpec(method="ocm", ocm_weights=weights_dir, ocm_halo=0)
    before = load_count()
    with dask.config.set(scheduler="synchronous"):
        for _ in range(2):
            ocm_classes(cube, mask, MaskContext(gpu=False)).values  # noqa: B018
    assert load_count() - before <= 1


def test_random_weights_have_the_published_sizes(weights_dir: Path) -> None:
    """Same architecture ⇒ same tensors ⇒ same safetensors size as the real v4 files."""
    for w in OCM_WEIGHT_FILES:
        assert (weights_dir / w.name).stat().st_size == w.size
    assert resolve_weights_dir(MaskSpec(method="ocm", ocm_weights=weights_dir)) == weights_dir


def test_our_file_list_matches_omnicloudmask(weights_dir: Path) -> None:
    with (resources.files("omnicloudmask") / "model_download_links.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if float(r["version"]) == OCM_MODEL_VERSION]
    assert [(r["file_name"], r["timm_model_name"], r["model_library"], r["google_drive_id"])
            for r in rows] == [(w.name, w.timm_model_name, w.model_library, w.google_drive_id)
                               for w in OCM_WEIGHT_FILES]


def test_missing_weights_error_lists_files_sizes_checksums_and_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OCM_WEIGHTS_ENV, raising=False)
    with pytest.raises(ModelWeightsError, match=f"neither mask.ocm_weights nor \\${OCM_WEIGHTS_ENV}"):
        resolve_weights_dir(MaskSpec(method="ocm+scl"))
    with pytest.raises(ModelWeightsError) as e:
        ocm_classes(_cube((1, 64, 64)), MaskSpec(method="ocm", ocm_weights=tmp_path),
                    MaskContext(gpu=False))
    text = str(e.value)
    for w in OCM_WEIGHT_FILES:
        assert f"{w.name} is missing" in text
        assert f"{w.size:,} bytes" in text and w.sha256 in text
        assert w.url in text and w.google_drive_id in text
    assert str(tmp_path) in text and "never downloads" in text and "get_models" in text
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / OCM_WEIGHT_FILES[0].name).write_bytes(b"x" * 1000)
    monkeypatch.setenv(OCM_WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(ModelWeightsError, match=r"has 1,000 bytes, expected 27,094,520") as e:
        resolve_weights_dir(MaskSpec(method="ocm"))
    assert f"(from ${OCM_WEIGHTS_ENV})" in str(e.value)


def test_cube_without_mask_bands_is_a_clear_error(models: list[torch.nn.Module]) -> None:
    with pytest.raises(CubeError, match="red, green and NIR"):
        ocm_classes(_cube((1, 64, 64)).assign_attrs(mask_bands=[]), MaskSpec(method="ocm"),
                    MaskContext(gpu=False, models=models))


def test_ocm_plus_scl_on_real_l2a_is_the_union(s2_data: Path, weights_dir: Path) -> None:
    """Barbellino (no B8A: NIR falls back to B08), through load_cube and valid_mask."""
    import s2mosaic
    from s2mosaic._cube import SCL_VAR, load_cube
    from s2mosaic._grid import output_geobox
    from s2mosaic._spec import MosaicSpec

    spec = MosaicSpec(aoi=[10.0416, 46.0641, 10.0448, 46.0679], period=["2017-01-01", "2019-12-31"],
                      source={"stac": str(s2_data / "catalog.json")}, bands=["red", "nir"],
                      grid={"resolution": "native"},
                      mask={"method": "ocm+scl", "ocm_weights": str(weights_dir), "ocm_halo": 8},
                      runtime={"chunks": 16, "scheduler": "synchronous"})
    items = s2mosaic.search(spec)
    gbox = output_geobox(spec, items)
    cube = load_cube(items, spec, gbox)
    assert cube.attrs["mask_bands"] == ["red", "mask_B03", "nir"]
    assert SCL_VAR in cube
    ctx = MaskContext(geobox=gbox, gpu=False)
    with dask.config.set(scheduler="synchronous"):
        valid = valid_mask(cube, spec.bands, spec.mask, ctx).values
        classes = ocm_classes(cube, spec.mask, ctx).values
        scl = cube[SCL_VAR].values
        nodata = ((cube.red == cube.red.nodata) | (cube.nir == cube.nir.nodata)
                  | (cube.mask_B03 == cube.mask_B03.nodata)).values
    expected = ~(nodata | np.isin(scl, spec.mask.scl_classes) | (classes != 0))
    np.testing.assert_array_equal(valid, expected)
    ocm_only = valid_mask(cube, spec.bands, spec.mask.__class__(method="ocm", ocm_halo=8,
                                                                ocm_weights=weights_dir), ctx)
    with dask.config.set(scheduler="synchronous"):
        assert (ocm_only.values >= valid).all()  # the union masks at least as much


@pytest.mark.parametrize(("field", "value", "phrase"), [
    ("ocm_resolution", 5, ">= 10"),
    ("ocm_resolution", 60, "<= 50"),
    ("ocm_batch_size", 0, ">= 1"),
    ("ocm_dtype", "fp64", "'fp32', 'fp16', 'bf16'"),
    ("ocm_patch_size", 16, ">= 32"),
    ("ocm_overlap", 1000, "< ocm_patch_size (1000)"),
    ("ocm_halo", -1, ">= 0"),
    ("ocm_weights", "", "file system path"),
    ("buffer_m", -5, ">= 0"),
    ("method", "ocm-scl", "'ocm+scl'"),
])
def test_mask_spec_options_are_validated(field: str, value: object, phrase: str) -> None:
    with pytest.raises(SpecError, match=re.escape(phrase)) as e:
        MaskSpec(**{field: value})  # type: ignore[arg-type]
    assert e.value.field == field and e.value.value == value


def test_dilation_and_buffer_are_exclusive() -> None:
    with pytest.raises(SpecError, match="not both") as e:
        MaskSpec(dilation=1, buffer_m=20)
    assert e.value.field == "buffer_m"
    m = MaskSpec(method="ocm+scl", buffer_m=30, ocm_dtype="fp16")
    assert m.uses_ocm and m.uses_scl and MaskSpec().method == "scl"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda)")
def test_gpu_path_runs_on_cuda_in_half_precision(models: list[torch.nn.Module]) -> None:
    cube = _cube()
    mask = MaskSpec(method="ocm", ocm_halo=HALO, ocm_dtype="fp16", ocm_patch_size=48, ocm_overlap=8)
    gpu_models = [m.to("cuda") for m in models]
    with dask.config.set(scheduler="synchronous"):
        got = ocm_classes(cube, mask, MaskContext(gpu=True, models=gpu_models)).values
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1, 2, 3, NO_INPUT}
    assert (got[2, :64, :64] == NO_INPUT).all()


def test_relative_weights_dir_resolves_against_the_yaml(tmp_path: Path) -> None:
    from s2mosaic._spec import MosaicSpec

    (tmp_path / "spec.yaml").write_text(
        "aoi: [10.0, 46.0, 10.01, 46.01]\nperiod: [2020-01-01, 2020-02-01]\n"
        "source: catalog.json\nmask: {method: ocm+scl, ocm_weights: models/ocm-v4}\n")
    spec = MosaicSpec.from_yaml(tmp_path / "spec.yaml")
    assert spec.mask.ocm_weights == tmp_path / "models" / "ocm-v4"


def test_in_memory_models_are_named_by_identity_not_by_weights(models: list[torch.nn.Module]) -> None:
    """ctx.models get a cheap token (no hashing of weights at each graph build) that still tells
    different models apart: the same objects give the same task names, a copy with other
    weights gives other names."""
    import copy

    from dask.base import tokenize

    from s2mosaic.masks.omnicloud import InMemoryModels

    cube, mask = _cube(), MaskSpec(method="ocm", ocm_halo=HALO)
    name = ocm_classes(cube, mask, MaskContext(gpu=False, models=models)).data.name
    assert ocm_classes(cube, mask, MaskContext(gpu=False, models=models)).data.name == name
    other = [copy.deepcopy(m) for m in models]
    with torch.no_grad():
        next(other[0].parameters()).add_(1.0)
    assert ocm_classes(cube, mask, MaskContext(gpu=False, models=other)).data.name != name
    token = InMemoryModels(tuple(models)).__dask_tokenize__()
    assert tokenize(InMemoryModels(tuple(models))) == tokenize(InMemoryModels(tuple(models)))
    assert len(token[1]) == len(models) and len(set(token[1])) == len(models)
