"""The fused per-chunk task (``s2mosaic._fused``) against today's layered CPU path, and
``runtime.device`` resolution on real distributed clusters.

The fused task with NumPy must give the layered path's bytes for every mask method that needs
no torch (``scl``, ``none``, ``csmask+scl``; s2cloudless needs the 13 L1C bands the L2A demo has
not, OCM needs torch), with and without dilation/buffers, for every composite method; the
``gpu`` tests check the same on CuPy and skip here with the reason.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import pytest
import xarray as xr
from typer.testing import CliRunner

import s2mosaic
from s2mosaic import _device, _pipeline
from s2mosaic._cube import load_cube
from s2mosaic._device import DeviceProbe, probe_cupy, resolve_device
from s2mosaic._fused import fused_composite
from s2mosaic._grid import aoi_mask, output_geobox
from s2mosaic._search import search
from s2mosaic._select import apply_selection
from s2mosaic._spec import MosaicSpec
from s2mosaic.cli import app
from s2mosaic.composite import METHODS, composite
from s2mosaic.demo import demo_spec, make_demo_catalog
from s2mosaic.errors import ArgumentError, DeviceError, SpecError
from s2mosaic.masks import MaskContext, combine, valid_mask

#: Mask settings without a model: method × growth (none, dilation, buffer in metres, classes).
MASKS: dict[str, dict[str, Any]] = {
    "scl": {"method": "scl"},
    "scl-dilation3": {"method": "scl", "dilation": 3},
    "scl-buffer45m": {"method": "scl", "buffer_m": 45},
    "scl-classes": {"method": "scl", "scl_classes": [3, 8, 9], "dilation": 1},
    "none": {"method": "none"},
}


def _composite_section(method: str, min_obs: int = 1) -> dict[str, Any]:
    section: dict[str, Any] = {"method": method, "min_observations": min_obs}
    if method == "percentile":
        section["percentile"] = 25
    return section


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[MosaicSpec, list[pystac.Item], Any]:
    """A small demo catalog: its spec (64 px chunks: 4 × 8 chunks with ragged edges), the
    selected items and the output grid."""
    catalog = make_demo_catalog(tmp_path_factory.mktemp("fused") / "catalog", seed=3, size=300)
    spec = demo_spec(catalog, tmp_path_factory.mktemp("fused-out")).replace(runtime={"chunks": 64})
    items = apply_selection(spec, search(spec))
    return spec, list(items), output_geobox(spec, items)


@pytest.fixture(scope="module")
def cube(demo: tuple[MosaicSpec, list[pystac.Item], Any]) -> xr.Dataset:
    """The demo cube read once (bands and SCL), kept in memory as Dask chunks."""
    spec, items, gbox = demo
    with dask.config.set(scheduler="threads"):
        return load_cube(items, spec, gbox).persist()


def layered_path(spec: MosaicSpec, cube: xr.Dataset, gbox: Any) -> xr.Dataset:
    """Today's CPU path on ``cube``: what masked_cube and mosaic do after the read."""
    valid = (valid_mask(cube, spec.bands, spec.mask, MaskContext(geobox=gbox))
             & aoi_mask(gbox, spec.aoi, spec.runtime.chunks))
    c = spec.composite
    return composite(cube[list(spec.bands)], valid, method=c.method, q=c.q,
                     min_observations=c.min_observations)


def fused_path(spec: MosaicSpec, cube: xr.Dataset, gbox: Any, device: str = "cpu") -> xr.Dataset:
    return fused_composite(spec, cube, aoi_mask(gbox, spec.aoi, spec.runtime.chunks),
                           device=device, ctx=MaskContext(geobox=gbox))


def _assert_same(expected: xr.Dataset, got: xr.Dataset) -> None:
    with dask.config.set(scheduler="sync"):
        expected, got = dask.compute(expected, got)
    assert list(got.data_vars) == list(expected.data_vars)
    for name in expected.data_vars:
        a, b = expected[name], got[name]
        assert a.dtype == b.dtype and a.dims == b.dims, name
        assert a.values.tobytes() == b.values.tobytes(), f"{name}: bytes differ"
        assert a.attrs == b.attrs, name
    assert got.attrs == expected.attrs
    xr.testing.assert_identical(expected, got)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask", list(MASKS))
def test_fused_numpy_is_byte_identical(demo: Any, cube: xr.Dataset, mask: str, method: str) -> None:
    spec, _, gbox = demo
    spec = spec.replace(mask=MASKS[mask], composite=_composite_section(method))
    expected = layered_path(spec, cube, gbox)
    # The masks must matter, or the comparison would prove little.
    assert 0 < int(expected["count"].sum()) < cube.sizes["time"] * int(np.prod(gbox.shape.yx))
    _assert_same(expected, fused_path(spec, cube, gbox))


@pytest.mark.parametrize("q", [0, 50, 90, 100])
def test_fused_percentiles_and_min_observations(demo: Any, cube: xr.Dataset, q: float) -> None:
    spec, _, gbox = demo
    spec = spec.replace(mask={"method": "scl", "dilation": 2},
                        composite={"method": "percentile", "percentile": q, "min_observations": 4})
    expected = layered_path(spec, cube, gbox)
    assert (expected["count"].values < 4).any()  # some pixels fall below min_observations
    _assert_same(expected, fused_path(spec, cube, gbox))


def test_fused_halo_larger_than_chunks(demo: Any, cube: xr.Dataset) -> None:
    """A buffer wider than a chunk: chunks are merged for the halo, then the result is put
    back into the cube's chunks; still the same bytes."""
    spec, _, gbox = demo
    spec = spec.replace(mask={"method": "scl", "buffer_m": 250},
                        composite=_composite_section("median"), runtime={"chunks": 16})
    gbox = gbox[40:136, 100:228]  # 96 × 128 px in 16 px chunks; the buffer is 25 px
    small = cube.isel(y=slice(40, 136), x=slice(100, 228)).chunk({"y": 16, "x": 16})
    expected = layered_path(spec, small, gbox)
    got = fused_path(spec, small, gbox)
    assert got["red"].data.chunks == small["red"].data.chunks[1:]
    _assert_same(expected, got)


def test_fused_external_cloud_mask(demo: Any, cube: xr.Dataset, monkeypatch: pytest.MonkeyPatch,
                                   ) -> None:
    """A masker without a chunk form (as OmniCloudMask) runs in its own tasks; its lazy mask is
    a halo'd input of the fused task and is dilated there like the chunk maskers' clouds."""
    spec, _, gbox = demo
    spec = spec.replace(mask={"method": "scl", "dilation": 2},
                        composite=_composite_section("mean"))
    calls: list[int] = []

    def shadows(c: xr.Dataset, mask: Any, ctx: MaskContext) -> xr.DataArray:
        calls.append(1)
        return c["scl"] == 3  # cloud shadow only, computed outside the fused task

    monkeypatch.setitem(combine.MASKERS, "scl", (combine._scl, shadows))
    expected = layered_path(spec, cube, gbox)
    monkeypatch.setitem(combine.MASKERS, "scl", (combine._scl,))
    only_scl = layered_path(spec.replace(mask={"method": "scl", "dilation": 2, "scl_classes": [8, 9]}),
                        cube, gbox)
    monkeypatch.setitem(combine.MASKERS, "scl", (combine._scl, shadows))
    got = fused_path(spec, cube, gbox)
    assert calls == [1, 1]
    _assert_same(expected, got)
    assert not np.array_equal(only_scl["count"].values, got["count"].compute().values)


@pytest.mark.parametrize("method", ["percentile", "medoid"])
def test_fused_with_csmask_is_byte_identical(demo: Any, method: str) -> None:
    """A model masker without torch (ukis-csmask, ONNX) runs in its own tasks and feeds the
    fused task its cloud mask, which the task unites with SCL's and dilates."""
    pytest.importorskip("ukis_csmask", reason="ukis-csmask is not installed: pip install "
                        "'s2mosaic-stream[csmask]'")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install "
                        "'s2mosaic-stream[csmask]'")
    spec, items, gbox = demo
    spec = spec.replace(mask={"method": "csmask+scl", "dilation": 2},
                        composite=_composite_section(method))
    gbox = gbox[0:128, 0:192]
    with dask.config.set(scheduler="threads"):
        cube = load_cube(items, spec, gbox).persist()
    expected = layered_path(spec, cube, gbox)
    scl_only = layered_path(spec.replace(mask={"method": "scl", "dilation": 2}), cube, gbox)
    got = fused_path(spec, cube, gbox)
    _assert_same(expected, got)
    assert not np.array_equal(scl_only["count"].values, got["count"].values)  # csmask matters


def test_fused_graph_has_one_task_per_chunk(demo: Any, cube: xr.Dataset) -> None:
    spec, _, gbox = demo
    spec = spec.replace(mask={"method": "scl", "dilation": 3})
    out = fused_path(spec, cube, gbox)
    graph = out["red"].data.__dask_graph__()
    fused = [name for name in graph.layers if str(name).startswith("s2mosaic-fused-percentile-cpu")]
    assert len(fused) == 1
    assert len(graph.layers[fused[0]]) == np.prod(out["red"].data.numblocks)


def test_pipeline_device_cpu_and_gpu_build(demo: Any) -> None:
    """``mosaic(..., device=)``: both build one fused task per chunk; only gpu's are
    GPU-annotated (not computed here: no CuPy). The CPU one is byte-identical to the layered
    path (masked_cube + composite), whose layers cost more than the kernel itself."""
    spec, items, gbox = demo
    cpu = _pipeline.mosaic(spec, items, geobox=gbox, device="cpu")
    gpu = _pipeline.mosaic(spec, items, geobox=gbox, device="gpu")
    for ds, device, want in ((cpu, "cpu", {}), (gpu, "gpu", {"resources": {"GPU": 1}})):
        layers = ds["red"].data.__dask_graph__().layers
        fused = [layer for name, layer in layers.items() if str(name).startswith("s2mosaic-fused")]
        assert len(fused) == 1 and (fused[0].annotations or {}) == want, device
        assert any(str(n).startswith(f"s2mosaic-fused-percentile-{device}") for n in layers)
    assert list(cpu.data_vars) == list(gpu.data_vars)
    assert cpu.attrs.keys() == gpu.attrs.keys()  # provenance differs only in its start time
    cube, valid = _pipeline.masked_cube(spec, items, gbox, prune=True)
    c = spec.composite
    layered = composite(cube[list(spec.bands)], valid, method=c.method, q=c.q,
                        min_observations=c.min_observations)
    with dask.config.set(scheduler="sync"):
        layered, fused_cpu = dask.compute(layered, cpu)
    assert list(fused_cpu.data_vars) == list(layered.data_vars)
    for name in layered.data_vars:  # (mosaic adds its provenance to the attrs)
        assert fused_cpu[name].values.tobytes() == layered[name].values.tobytes(), name


# -- device resolution --------------------------------------------------------------------------
def _cupy_importable() -> bool:
    return DeviceProbe(**probe_cupy()).cupy is not None


@pytest.fixture
def cpu_cluster() -> Any:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address=":0",
                      ) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(autouse=True)
def _fresh_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-process device messages anew."""
    monkeypatch.setattr(_device, "_SAID", set())


@pytest.fixture
def gpu_process_cluster() -> Any:
    """Worker processes that advertise a GPU resource (the probe crosses into them)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def gpu_cluster() -> Any:
    """In-process workers that advertise a GPU resource, whatever the machine has (they share
    this process's ``sys.modules``, so a test can hand them a stand-in CuPy)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address=":0",
                      resources={"GPU": 1}) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def test_device_cpu_never_probes() -> None:
    assert resolve_device("cpu", object()) == "cpu"  # the client is not even looked at


def test_device_invalid_value() -> None:
    with pytest.raises(ArgumentError, match=r"device='tpu'.*'auto', 'cpu', 'gpu'"):
        resolve_device("tpu")
    with pytest.raises(SpecError, match=r"runtime\.device.*'tpu'.*\['auto', 'cpu', 'gpu'\]"):
        MosaicSpec.from_dict({**_minimal(), "runtime": {"device": "tpu"}})


def _minimal() -> dict[str, Any]:
    return {"aoi": [10.0, 46.0, 10.1, 46.1], "period": ["2024-05-01", "2024-05-31"],
            "source": {"stac": "catalog.json"}, "bands": ["red"]}


def test_auto_without_gpu_workers_is_cpu_said_once(cpu_cluster: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="s2mosaic.device"):
        assert resolve_device("auto", cpu_cluster) == "cpu"
        assert resolve_device("auto", cpu_cluster) == "cpu"
    said = [r for r in caplog.records if r.name == "s2mosaic.device"]
    assert len(said) == 1
    assert "running on CPU" in said[0].message and "'GPU' resource" in said[0].message


def test_gpu_without_gpu_workers_raises(cpu_cluster: Any) -> None:
    with pytest.raises(DeviceError, match=r"none of the cluster's 1 Dask worker\(s\) advertises "
                                          r"a 'GPU' resource.*--resources GPU=1"):
        resolve_device("gpu", cpu_cluster)


@pytest.mark.skipif(_cupy_importable(), reason="CuPy is importable here; this checks its absence")
def test_gpu_workers_without_cupy(gpu_process_cluster: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DeviceError, match=r"2 of 2 GPU worker\(s\) cannot run CuPy.*not "
                                          r"importable.*pip install 's2mosaic-stream\[gpu\]'"):
        resolve_device("gpu", gpu_process_cluster)
    with caplog.at_level(logging.INFO, logger="s2mosaic.device"):
        assert resolve_device("auto", gpu_process_cluster) == "cpu"
        assert resolve_device("auto", gpu_process_cluster) == "cpu"
    said = [r for r in caplog.records if r.name == "s2mosaic.device"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING


def _fake_cupy(runtime: int, driver: int, error: str | None, devices: int = 1) -> types.ModuleType:
    """A stand-in for CuPy's CUDA runtime API, as the workers' ``import cupy`` finds it."""
    class CUDARuntimeError(RuntimeError):
        pass

    def count() -> int:
        if error:
            raise CUDARuntimeError(error)
        return devices

    api = types.SimpleNamespace(runtimeGetVersion=lambda: runtime,
                                driverGetVersion=lambda: driver, getDeviceCount=count)
    mod = types.ModuleType("cupy")
    mod.__version__ = "13.6.0"  # type: ignore[attr-defined]
    mod.cuda = types.SimpleNamespace(runtime=api)  # type: ignore[attr-defined]
    return mod


def test_gpu_workers_with_cuda_mismatch(gpu_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy for CUDA 13 under a CUDA 12.4 driver: the error says so and names both extras."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(
        13000, 12040, "cudaErrorInsufficientDriver: CUDA driver version is insufficient"))
    with pytest.raises(DeviceError, match=r"built for CUDA 13\.0 but the driver supports CUDA "
                                          r"12\.4.*\[gpu\]' for CUDA 12.*\[gpu-cuda13\]'"):
        resolve_device("gpu", gpu_cluster)


def test_gpu_workers_without_devices(gpu_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(12080, 12080, None, devices=0))
    with pytest.raises(DeviceError, match=r"sees no CUDA device.*CUDA_VISIBLE_DEVICES"):
        resolve_device("gpu", gpu_cluster)


def test_run_with_device_gpu_fails_before_tiles(demo: Any, cpu_cluster: Any, tmp_path: Path,
                                                ) -> None:
    spec, items, _ = demo
    spec = spec.replace(output={"zarr": tmp_path / "m.zarr"}, runtime={"chunks": 64, "device": "gpu"})
    with pytest.raises(DeviceError, match="'GPU' resource"):
        s2mosaic.run(spec, items=items, client=cpu_cluster)
    assert not (tmp_path / "m.zarr").exists()  # resolved before the store is created


def test_api_device_argument(demo: Any) -> None:
    _, items, gbox = demo
    with pytest.raises(ArgumentError, match=r"device: invalid value 'tpu'"):
        s2mosaic.mosaic(items, ["red"], geobox=gbox, device="tpu")
    out = s2mosaic.mosaic(items, ["red"], geobox=gbox, device="cpu")
    layers = out["red"].data.__dask_graph__().layers
    fused = [layer for name, layer in layers.items() if str(name).startswith("s2mosaic-fused")]
    assert len(fused) == 1 and not fused[0].annotations  # NumPy, on any worker


def test_cli_device_option(demo: Any, tmp_path: Path) -> None:
    spec, _, _ = demo
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    result = CliRunner().invoke(app, ["run", str(path), "--device", "tpu"])
    assert result.exit_code == 2
    assert "'tpu' is not a device; use auto, cpu or gpu" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["run", str(path), "--device", "gpu",
                                      "--scheduler", "synchronous"])
    if not _cupy_importable():
        assert result.exit_code == 2
        assert "pip install 's2mosaic-stream[gpu]'" in " ".join(result.output.split())


# -- on a GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask", ["scl", "scl-dilation3", "scl-buffer45m", "none"])
def test_fused_cupy_is_byte_identical(cupy_gpu: Any, demo: Any, cube: xr.Dataset, mask: str,
                                      method: str) -> None:
    spec, _, gbox = demo
    spec = spec.replace(mask=MASKS[mask], composite=_composite_section(method))
    _assert_same(layered_path(spec, cube, gbox), fused_path(spec, cube, gbox, device="gpu"))


@pytest.mark.gpu
def test_device_gpu_resolves_on_gpu_workers(cupy_gpu: Any, gpu_cluster: Any) -> None:
    assert resolve_device("gpu", gpu_cluster) == "gpu"
    assert resolve_device("auto", gpu_cluster) == "gpu"


def test_a_tile_graph_composites_each_chunk_once(demo: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A tile's writes (one per variable and chunk) share one fused task per chunk: dask's
    optimisation of each variable on its own once fused that task into every variable's
    ``getitem``, running the mask and composite five times per chunk (four bands + count)."""
    from s2mosaic import _fused as fused_mod
    from s2mosaic._tiles import tile_arrays

    spec, items, gbox = demo
    ds = _pipeline.mosaic(spec, items, geobox=gbox, device="cpu")
    names = [*spec.bands, "count"]
    arrays = tile_arrays(ds, names, lambda: None)  # type: ignore[arg-type,return-value]
    merged: dict[Any, Any] = {}
    for _, arr in arrays:
        merged.update(dict(arr.__dask_graph__()))
    fused_keys = {k for k in merged if str(k[0] if isinstance(k, tuple) else k)
                  .startswith("s2mosaic-fused")}
    chunks = int(np.prod(ds["red"].data.numblocks))
    assert len(fused_keys) == chunks
    calls = []
    real = fused_mod.FusedChunk.__call__

    def counted(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(kw.get("block_info", {}).get(0, {}).get("chunk-location"))
        return real(self, *args, **kw)

    monkeypatch.setattr(fused_mod.FusedChunk, "__call__", counted)
    with dask.config.set(scheduler="sync"):
        dask.compute(*[a for _, a in arrays])
    assert len(calls) == chunks
