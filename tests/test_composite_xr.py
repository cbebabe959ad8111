"""`composite` on xarray/Dask cubes shaped like odc-stac's output."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_zeros

from s2mosaic.composite import PERCENTILE_DEFINITION, composite, reduce
from s2mosaic.composite import _xr as composite_xr

T, NY, NX, CHUNK = 7, 64, 96, 32
BANDS = ("red", "nir")
N_SPATIAL_CHUNKS = (NY // CHUNK) * (NX // CHUNK)


def _geobox() -> GeoBox:
    return GeoBox.from_bbox(
        (500_000, 4_000_000, 500_000 + NX * 10, 4_000_000 + NY * 10), "EPSG:32633", resolution=10
    )


def make_cube(*, dask_backed: bool = True, time_chunk: int = -1, seed: int = 0):
    """A 2-band uint16 cube and mask like ``odc.stac.load`` returns (spatial_ref, grid_mapping)."""
    rng = np.random.default_rng(seed)
    template = xr_zeros(_geobox(), dtype="uint16")
    coords = {
        "time": np.array([f"2024-06-{d:02d}" for d in range(1, T + 1)], dtype="datetime64[ns]"),
        **template.coords,
        "platform": ("time", ["sentinel-2a", "sentinel-2b"] * 3 + ["sentinel-2c"]),
    }
    dims = ("time", "y", "x")
    chunks = (time_chunk, CHUNK, CHUNK)

    def wrap(values):
        return da.from_array(values, chunks=chunks) if dask_backed else values

    bands = {}
    for name in BANDS:
        values = rng.integers(0, 10_000, (T, NY, NX), dtype=np.uint16)
        values[:, :4, :4] = 1234  # ties
        var = xr.DataArray(
            wrap(values), dims=dims, coords=coords, attrs={"nodata": 0, "units": "1"}
        )
        var.encoding["grid_mapping"] = "spatial_ref"
        bands[name] = var
    mask = rng.random((T, NY, NX)) < 0.55
    mask[:, 0, :] = False  # a row with no valid observation
    mask[:, 1, :] = True
    valid = xr.DataArray(wrap(mask), dims=dims, coords=coords)
    return xr.Dataset(bands), valid


def _numpy_expected(cube, valid, method, **kw):
    data = np.stack([np.asarray(cube[b].values) for b in BANDS], axis=1)
    return reduce(method, data, np.asarray(valid.values), **kw)


CASES = [
    ("percentile", {"q": 25.0}, {"q": 25.0}),
    ("percentile", {"q": 12.5, "min_observations": 3}, {"q": 12.5, "min_obs": 3}),
    ("median", {}, {}),
    ("mean", {"min_observations": 2}, {"min_obs": 2}),
    ("first", {}, {}),
    ("last", {"min_observations": 2}, {"min_obs": 2}),
    ("medoid", {}, {}),
    ("medoid", {"min_observations": 3}, {"min_obs": 3}),
]


@pytest.mark.parametrize(("method", "kwargs", "kernel_kwargs"), CASES)
def test_dask_result_equals_kernels(method, kwargs, kernel_kwargs):
    cube, valid = make_cube()
    out = composite(cube, valid, method=method, **kwargs)
    assert isinstance(out.red.data, da.Array)  # lazy
    computed = out.compute()
    expected = _numpy_expected(cube, valid, method, **kernel_kwargs)
    for i, name in enumerate(BANDS):
        assert computed[name].dims == ("y", "x")
        assert computed[name].dtype == np.uint16
        np.testing.assert_array_equal(computed[name].values, expected[i])
    np.testing.assert_array_equal(computed["count"].values, valid.values.sum(axis=0))
    assert computed["count"].dtype == np.uint16


@pytest.mark.parametrize("method", ["percentile", "medoid"])
def test_one_reduction_task_per_spatial_chunk(monkeypatch, method):
    cube, valid = make_cube()
    out = composite(cube, valid, method=method)
    layers = out.__dask_graph__().layers
    reductions = [name for name in layers if name.startswith("s2mosaic-composite-")]
    assert len(reductions) == 1
    assert len(layers[reductions[0]]) == N_SPATIAL_CHUNKS
    # ...and every band and the count share those tasks.
    assert out.red.data.chunks == ((CHUNK,) * 2, (CHUNK,) * 3)

    calls = []
    original = composite_xr._ChunkReducer.__call__

    def counting(self, valid_block, *band_blocks):
        calls.append(len(band_blocks))
        # The chunks reach the task as Dask holds them: the one block along time of each band.
        for blocks in (valid_block, *band_blocks):
            assert isinstance(blocks, list) and len(blocks) == 1 and blocks[0].ndim == 3
        return original(self, valid_block, *band_blocks)

    concatenated = []
    concatenate3 = dask.array.core.concatenate3

    def recording(arrays):
        # Input chunks would come as [block (T, y, x)]; the outputs are assembled from nested
        # lists of (y, x) blocks, which is the one concatenation expected.
        if isinstance(arrays[0], np.ndarray) and arrays[0].ndim == 3:
            concatenated.append(arrays[0].shape)
        return concatenate3(arrays)

    monkeypatch.setattr(composite_xr._ChunkReducer, "__call__", counting)
    monkeypatch.setattr(dask.array.core, "concatenate3", recording)
    dask.compute(out, scheduler="sync")
    assert calls == [len(BANDS)] * N_SPATIAL_CHUNKS
    assert concatenated == []  # no input chunk is "concatenated" (copied) on its way in


def test_coordinates_attrs_and_grid_mapping_kept():
    cube, valid = make_cube()
    out = composite(cube, valid, q=33.333, min_observations=2)
    assert "time" not in out.dims and "time" not in out.coords
    assert "platform" not in out.coords  # per-observation coordinates go with time
    assert set(out.data_vars) == {*BANDS, "count"}
    xr.testing.assert_identical(out.coords["spatial_ref"], cube.coords["spatial_ref"])
    np.testing.assert_array_equal(out.y.values, cube.y.values)
    np.testing.assert_array_equal(out.x.values, cube.x.values)
    for name in (*BANDS, "count"):
        assert out[name].encoding["grid_mapping"] == "spatial_ref"
        assert "_FillValue" not in out[name].attrs
    assert out.red.attrs == {"nodata": 0, "units": "1"}
    assert out.attrs == {
        "composite_method": "percentile",
        "composite_percentile": 33.333,
        "percentile_definition": PERCENTILE_DEFINITION,
        "min_observations": 2,
    }
    assert out.odc.geobox == _geobox()  # the grid survives for the writer


def test_median_and_mean_attrs():
    cube, valid = make_cube()
    assert composite(cube, valid, method="median").attrs["composite_percentile"] == 50.0
    attrs = composite(cube, valid, method="mean").attrs
    assert attrs == {"composite_method": "mean", "min_observations": 1}
    attrs = composite(cube, valid, method="medoid", q=10).attrs  # q is ignored but for percentile
    assert attrs == {"composite_method": "medoid", "min_observations": 1}


def test_count_and_nodata():
    cube, valid = make_cube()
    out = composite(cube, valid, min_observations=T).compute()
    assert (out["count"].values[0] == 0).all()
    assert (out["count"].values[1] == T).all()
    full = out["count"].values == T
    assert (out.red.values[~full] == 0).all()
    assert (out.red.values[1] > 0).all()


def test_time_split_into_chunks_is_an_error():
    cube, valid = make_cube(time_chunk=3)
    with pytest.raises(ValueError, match=r"split into 3 chunks along 'time' \(3, 3, 1\)") as err:
        composite(cube, valid)
    assert "chunks={'time': -1" in str(err.value)


def test_numpy_backed_input_is_computed_eagerly():
    cube, valid = make_cube(dask_backed=False)
    out = composite(cube, valid, q=75.0)
    assert isinstance(out.red.data, np.ndarray)
    expected = _numpy_expected(cube, valid, "percentile", q=75.0)
    np.testing.assert_array_equal(out.nir.values, expected[1])
    np.testing.assert_array_equal(out["count"].values, valid.values.sum(axis=0))


def test_dask_cube_with_numpy_mask():
    cube, valid = make_cube()
    valid = valid.compute()
    out = composite(cube, valid)
    assert isinstance(out.red.data, da.Array)
    np.testing.assert_array_equal(
        out.red.values, _numpy_expected(cube, valid, "percentile", q=25.0)[0]
    )


def test_task_names_are_deterministic():
    cube, valid = make_cube()
    a = composite(cube, valid, q=25.0)
    b = composite(cube, valid, q=25.0)
    c = composite(cube, valid, q=30.0)
    assert a.red.data.name == b.red.data.name
    assert a.red.data.name != c.red.data.name
    reducer = composite_xr._ChunkReducer("percentile", 25.0, 1, parallel=False)
    assert pickle.loads(pickle.dumps(reducer)) == reducer


def test_uint8_band_keeps_its_dtype():
    cube, valid = make_cube()
    cube["scl_like"] = (cube.red // 40).astype(np.uint8)
    out = composite(cube, valid, method="first").compute()
    assert out.scl_like.dtype == np.uint8
    np.testing.assert_array_equal(
        out.scl_like.values, reduce("first", cube.scl_like.values, valid.values)
    )


def test_input_errors_name_the_problem():
    cube, valid = make_cube()
    with pytest.raises(ValueError, match="method='mode' is not a composite method"):
        composite(cube, valid, method="mode")
    with pytest.raises(ValueError, match=r"q=120 is outside the valid range"):
        composite(cube, valid, q=120)
    with pytest.raises(ValueError, match="min_observations=0 is invalid"):
        composite(cube, valid, min_observations=0)
    with pytest.raises(TypeError, match=r"cube\['red'\] has dtype float32"):
        composite(cube.assign(red=cube.red.astype("float32")), valid)
    with pytest.raises(TypeError, match="valid has dtype uint8"):
        composite(cube, valid.astype("uint8"))
    with pytest.raises(ValueError, match="valid does not share the coordinates of cube"):
        composite(cube, valid.assign_coords(x=valid.x + 5))
    with pytest.raises(ValueError, match="band named 'count'"):
        composite(cube.rename(nir="count"), valid)


def test_cube_without_coordinates():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 100, (5, 3, 4), dtype=np.uint16)
    mask = rng.random(data.shape) < 0.7
    dims = ("time", "y", "x")
    cube = xr.Dataset({"b": (dims, da.from_array(data, chunks=(-1, 2, 2)))})
    out = composite(cube, xr.DataArray(mask, dims=dims), method="median").compute()
    assert dict(out.sizes) == {"y": 3, "x": 4} and not out.coords
    np.testing.assert_array_equal(out.b.values, reduce("median", data, mask))


def test_computes_on_worker_processes(dask_client):
    # The task function pickles to worker processes and the Numba kernel runs there.
    cube, valid = make_cube(seed=3)
    out = composite(cube, valid, q=40.0)
    computed = dask_client.compute(out).result()
    expected = _numpy_expected(cube, valid, "percentile", q=40.0)
    np.testing.assert_array_equal(computed.nir.values, expected[1])
    np.testing.assert_array_equal(computed["count"].values, valid.values.sum(axis=0))


def test_medoid_keeps_real_spectra():
    # Every output pixel is one valid observation of the cube, all bands from the same date.
    cube, valid = make_cube(seed=5)
    out = composite(cube, valid, method="medoid").compute()
    red, nir, ok = cube.red.values, cube.nir.values, valid.values
    n = out["count"].values
    for y, x in [(2, 3), (10, 40), (33, 95), (63, 0), (1, 1)]:
        if n[y, x] == 0:
            continue
        dates = [
            t
            for t in range(T)
            if ok[t, y, x]
            and red[t, y, x] == out.red.values[y, x]
            and nir[t, y, x] == out.nir.values[y, x]
        ]
        assert dates, (y, x)


def test_mixed_band_dtypes_in_one_task():
    cube, valid = make_cube()
    cube["scl_like"] = (cube.red // 40).astype(np.uint8)
    out = composite(cube, valid, method="medoid").compute()
    assert out.scl_like.dtype == np.uint8 and out.red.dtype == np.uint16
    data = np.stack([cube[b].values.astype(np.uint16) for b in ("red", "nir", "scl_like")], axis=1)
    expected = reduce("medoid", data, valid.values)
    np.testing.assert_array_equal(out.scl_like.values, expected[2])
    np.testing.assert_array_equal(out.red.values, expected[0])


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["percentile", "median", "mean", "last", "medoid"])
def test_cupy_chunks_stay_on_the_gpu(cupy_gpu, method):
    cupy = cupy_gpu
    cube, valid = make_cube()

    def to_gpu(arr):
        return arr.copy(data=arr.data.map_blocks(cupy.asarray))

    gpu_cube = cube.map(to_gpu)
    out = composite(gpu_cube, to_gpu(valid), method=method)
    assert type(out.red.data._meta).__module__.startswith("cupy")  # the graph stays on device
    computed = out.compute()
    assert type(computed.red.data).__module__.startswith("cupy")
    expected = composite(cube, valid, method=method).compute()
    for name in (*BANDS, "count"):
        np.testing.assert_array_equal(cupy.asnumpy(computed[name].data), expected[name].values)
