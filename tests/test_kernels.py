"""The composite kernels against NumPy as the oracle, bit for bit: CPU, GPU, and the GPU's code."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s2mosaic.composite import _cpu as C
from s2mosaic.composite import _gpu as G
from s2mosaic.composite import _kernels as K
from s2mosaic.composite import (
    _plan,
    count,
    first,
    last,
    mean,
    median,
    medoid,
    percentile,
    reduce,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXPLICIT_Q = [0.0, 100.0, 25.0, 50.0, 12.5, 33.333]


# --------------------------------------------------------------------------- oracles


def _nan_cube(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    mask = valid if valid.shape == data.shape else valid[:, None]
    return np.where(mask, data, np.nan).astype(np.float64)


def _finish(values: np.ndarray, valid: np.ndarray, min_obs: int, dtype: np.dtype) -> np.ndarray:
    keep = valid.sum(axis=0) >= min_obs
    return np.where(keep, np.round(np.nan_to_num(values)), 0).astype(dtype)


def oracle_percentile(data, valid, q, min_obs=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        values = np.nanpercentile(_nan_cube(data, valid), q, axis=0)
    return _finish(values, valid, min_obs, data.dtype)


def oracle_mean(data, valid, min_obs=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(_nan_cube(data, valid), axis=0)
    return _finish(values, valid, min_obs, data.dtype)


def oracle_first(data, valid, min_obs=1, *, reverse=False):
    v = valid[::-1] if reverse else valid
    d = data[::-1] if reverse else data
    idx = np.argmax(v, axis=0)
    idx = idx.reshape((1,) * (data.ndim - valid.ndim + 1) + idx.shape)  # over bands too
    values = np.take_along_axis(d, idx, axis=0)[0]
    keep = valid.sum(axis=0) >= max(min_obs, 1)
    return np.where(keep, values, 0).astype(data.dtype)


def oracle_last(data, valid, min_obs=1):
    return oracle_first(data, valid, min_obs, reverse=True)


def oracle_medoid(data, valid, min_obs=1):
    """A plain loop: per pixel, np.median of the valid observations, float distances, argmin.

    Exact in float64 (medians are halves, squares of halves below 2**34), and np.argmin keeps
    the first of equal distances: the earliest observation.
    """
    n_time, n_band = data.shape[:2]
    flat = data.reshape(n_time, n_band, -1)
    ok = valid.reshape(n_time, -1)
    out = np.zeros((n_band, flat.shape[2]), dtype=data.dtype)
    for p in range(flat.shape[2]):
        idx = np.flatnonzero(ok[:, p])
        if len(idx) < min_obs or len(idx) == 0:
            continue
        obs = flat[idx, :, p].astype(np.float64)
        dist = ((obs - np.median(obs, axis=0)) ** 2).sum(axis=1)
        out[:, p] = flat[idx[np.argmin(dist)], :, p]
    return out.reshape(n_band, *data.shape[2:])


# --------------------------------------------------------------------------- inputs


def _fill(draw: st.DrawFn, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if draw(st.booleans()):
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    pool = draw(st.lists(st.integers(0, 65535), min_size=1, max_size=4))
    return rng.choice(np.array(pool, dtype=np.uint16), size=shape)  # ties everywhere


@st.composite
def cubes(draw: st.DrawFn, max_t: int = 100, bands: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(T, Y, X) — or (T, B, Y, X) with ``bands`` — uint16 data and a (T, Y, X) mask.

    Values come from the full uint16 range or from a tiny pool (ties everywhere); the mask
    density ranges from none to all valid, and there is always an all-masked and an all-valid
    pixel once the grid has two pixels.
    """
    n_time = draw(st.integers(1, max_t))
    space = (draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_band = (draw(st.integers(1, 4)),) if bands else ()
    data = _fill(draw, (n_time, *n_band, *space), rng)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    valid = rng.random((n_time, *space)) < density
    flat = valid.reshape(n_time, -1)
    if flat.shape[1] >= 2:
        flat[:, 0] = False
        flat[:, 1] = True
    return data, valid


q_values = st.one_of(st.sampled_from(EXPLICIT_Q), st.floats(0, 100, allow_nan=False))


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(cube=cubes(), q=q_values, min_obs=st.integers(1, 5), parallel=st.booleans())
@example(
    cube=(np.array([[1], [2]], np.uint16), np.ones((2, 1), bool)), q=50.0, min_obs=1, parallel=True
)
def test_percentile_matches_numpy(cube, q, min_obs, parallel):
    data, valid = cube
    got = reduce("percentile", data, valid, q=q, min_obs=min_obs, parallel=parallel)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, q, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_median_matches_numpy(cube, min_obs):
    data, valid = cube
    got = median(data, valid, min_obs=min_obs)
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, 50.0, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_mean_matches_numpy(cube, min_obs):
    data, valid = cube
    np.testing.assert_array_equal(mean(data, valid, min_obs), oracle_mean(data, valid, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_first_last_and_count_match_numpy(cube, min_obs):
    data, valid = cube
    np.testing.assert_array_equal(first(data, valid, min_obs), oracle_first(data, valid, min_obs))
    np.testing.assert_array_equal(last(data, valid, min_obs), oracle_last(data, valid, min_obs))
    got = count(valid)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, valid.sum(axis=0))


@SETTINGS
@given(cube=cubes(bands=True), min_obs=st.integers(1, 5), parallel=st.booleans())
def test_medoid_matches_a_numpy_loop(cube, min_obs, parallel):
    data, valid = cube
    got = reduce("medoid", data, valid, min_obs=min_obs, parallel=parallel)
    assert got.dtype == np.uint16 and got.shape == data.shape[1:]
    np.testing.assert_array_equal(got, oracle_medoid(data, valid, min_obs))


@settings(max_examples=50, deadline=None)
@given(cube=cubes(max_t=40), q=q_values, n_band=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_multiband_equals_band_by_band(cube, q, n_band, seed):
    _, valid = cube
    rng = np.random.default_rng(seed)
    shape = (valid.shape[0], n_band, *valid.shape[1:])
    data = rng.integers(0, 65536, shape, dtype=np.uint16)
    for method, kw in [("percentile", {"q": q}), ("mean", {}), ("first", {}), ("last", {})]:
        got = reduce(method, data, valid, min_obs=2, **kw)
        assert got.shape == (n_band, *valid.shape[1:])
        for b in range(n_band):
            np.testing.assert_array_equal(
                got[b], reduce(method, data[:, b], valid, min_obs=2, **kw)
            )


@settings(max_examples=100, deadline=None)
@given(cube=cubes(bands=True), q=q_values, min_obs=st.integers(1, 3))
def test_separate_band_arrays_equal_one_cube(cube, q, min_obs):
    # The Dask wrapper's entry point: one (T, ...) array per band, not stacked.
    data, valid = cube
    for method in K.METHODS:
        kq = q if method == "percentile" else None
        bands = [data[:, b].copy() for b in range(data.shape[1])]
        got = K.reduce_bands(method, bands, valid, kq, min_obs, parallel=False)
        assert got.shape == (data.shape[1] + 1, *valid.shape[1:])
        np.testing.assert_array_equal(got[:-1], reduce(method, data, valid, q=kq, min_obs=min_obs))
        np.testing.assert_array_equal(got[-1], valid.sum(axis=0))


@settings(max_examples=150, deadline=None)
@given(cube=cubes(bands=True), q=q_values, min_obs=st.integers(1, 3))
def test_gpu_array_code_equals_cpu_kernels(cube, q, min_obs):
    # The GPU's sort-based path is written against an array module: run it with NumPy.
    data, valid = cube
    n_time = data.shape[0]
    stacks = (data.reshape(n_time, data.shape[1], -1),)
    flat_valid = valid.reshape(n_time, -1)
    for method, code in K._CODES.items():
        qf = K._quantile(method, q if method == "percentile" else None)
        cpu = C.reduce_blocks(code, stacks, flat_valid, qf, min_obs, parallel=False)
        arr = G.reduce_array_api(code, stacks, flat_valid, qf, min_obs, np)
        assert arr.dtype == np.uint16
        np.testing.assert_array_equal(arr, cpu, err_msg=method)


# --------------------------------------------------------------------------- pinned cases

# Each needs NumPy's exact float64 steps: the virtual index (n - 1) * q (not
# n*q + (alpha + q*(1 - alpha - beta)) - 1, which reads 58981.4999... for the second case) and
# the lerp from the upper bound for gamma >= 0.5 (a + d*g reads 45874.50000000001 for the first).
PINNED = [
    # (values, q, expected)
    ([0] + [65535] * 7, 10.0, 45874),  # 45874.5 -> even
    ([0] + [65535] * 9, 10.0, 58982),  # 58981.5 -> even
    ([1, 2], 50.0, 2),  # 1.5 -> 2
    ([2, 3], 50.0, 2),  # 2.5 -> 2
    ([10, 20, 40], 25.0, 15),
    ([7], 0.0, 7),
    ([3, 1, 2], 100.0, 3),
    ([3, 1, 2], 0.0, 1),
]


@pytest.mark.parametrize(("values", "q", "expected"), PINNED)
def test_pinned_percentiles(values, q, expected):
    data = np.array(values, dtype=np.uint16)[:, None]
    valid = np.ones_like(data, dtype=bool)
    assert oracle_percentile(data, valid, q)[0] == expected  # the oracle agrees with the pin
    assert percentile(data, valid, q)[0] == expected
    stacks, flat = (data[:, None],), valid
    assert G.reduce_array_api(C.PERCENTILE, stacks, flat, q / 100, 1, np)[0, 0] == expected


def test_pinned_medoid_ties_go_to_the_earliest():
    # Valid observations (1, 1), (5, 5), (3, 3): the median (3, 3) is observation 2 itself.
    data = np.array([[1, 1], [5, 5], [3, 3], [2, 2]], np.uint16)[:, :, None]
    valid = np.array([[True], [True], [True], [False]])
    np.testing.assert_array_equal(medoid(data, valid)[:, 0], [3, 3])
    # Median (4, 4): observations 0 and 1 both at squared distance 16, observation 2 at 50.
    data = np.array([[0, 4], [4, 0], [9, 9]], np.uint16)[:, :, None]
    valid = np.ones((3, 1), bool)
    np.testing.assert_array_equal(medoid(data, valid)[:, 0], [0, 4])
    np.testing.assert_array_equal(medoid(data[[1, 0, 2]], valid)[:, 0], [4, 0])
    # An even count: the median (2.5, 2.5) is not a value; (2, 3) and (3, 2) tie at 0.5.
    data = np.array([[2, 3], [3, 2], [0, 0], [5, 5]], np.uint16)[:, :, None]
    valid = np.ones((4, 1), bool)
    np.testing.assert_array_equal(medoid(data, valid)[:, 0], [2, 3])
    np.testing.assert_array_equal(medoid(data, valid), oracle_medoid(data, valid))


def test_long_series_with_ties():
    # Long series (the scalar-gather branch of the row pick), heavy ties, both drivers.
    rng = np.random.default_rng(7)
    data = rng.choice(np.array([0, 1, 2, 65535], np.uint16), size=(300, 16, 16))
    valid = rng.random(data.shape) < 0.8
    for q in EXPLICIT_Q:
        expected = oracle_percentile(data, valid, q)
        np.testing.assert_array_equal(percentile(data, valid, q), expected)
        np.testing.assert_array_equal(
            reduce("percentile", data, valid, q=q, parallel=False), expected
        )
    cube = data[:, None].repeat(2, axis=1)
    np.testing.assert_array_equal(medoid(cube, valid), oracle_medoid(cube, valid))


def test_many_blocks_both_drivers():
    # More pixels than one block, a ragged last block, and the parallel split into parts.
    rng = np.random.default_rng(11)
    data = rng.integers(0, 65536, (24, 3, 37, 101), dtype=np.uint16)
    valid = rng.random((24, 37, 101)) < 0.55
    for parallel in (True, False):
        got = reduce("percentile", data, valid, q=25, parallel=parallel)
        np.testing.assert_array_equal(got, oracle_percentile(data, valid, 25))
        np.testing.assert_array_equal(
            reduce("last", data, valid, parallel=parallel), oracle_last(data, valid)
        )


def test_nodata_and_min_obs():
    data = np.array([[5, 5, 5], [9, 9, 9]], np.uint16)
    valid = np.array([[True, False, False], [True, True, False]])
    np.testing.assert_array_equal(percentile(data, valid, 50, min_obs=2), [7, 0, 0])
    np.testing.assert_array_equal(first(data, valid, min_obs=1), [5, 9, 0])
    np.testing.assert_array_equal(first(data, valid, min_obs=2), [5, 0, 0])
    np.testing.assert_array_equal(last(data, valid, min_obs=1), [9, 9, 0])
    np.testing.assert_array_equal(medoid(data[:, None], valid, min_obs=2)[0], [5, 0, 0])
    np.testing.assert_array_equal(count(valid), [2, 1, 0])


def test_uint8_and_other_shapes():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (9, 4, 3, 2), dtype=np.uint8)
    valid = rng.random(data.shape) < 0.5
    got = percentile(data, valid, 40)
    assert got.dtype == np.uint8 and got.shape == (4, 3, 2)
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, 40))
    np.testing.assert_array_equal(percentile(data, valid, 90), oracle_percentile(data, valid, 90))
    np.testing.assert_array_equal(medoid(data, valid[:, 0]), oracle_medoid(data, valid[:, 0]))
    one_pixel = percentile(data[:, 0, 0, 0].astype(np.uint16), valid[:, 0, 0, 0], 40)
    assert one_pixel.shape == ()
    assert one_pixel == oracle_percentile(data[:, 0, 0, 0], valid[:, 0, 0, 0], 40)


def test_mixed_dtypes_and_read_only_bands():
    rng = np.random.default_rng(8)
    wide = rng.integers(0, 65536, (10, 6, 5), dtype=np.uint16)
    narrow = rng.integers(0, 256, (10, 6, 5), dtype=np.uint8)
    valid = rng.random((10, 6, 5)) < 0.6
    wide.flags.writeable = False
    got = K.reduce_bands("medoid", [wide, narrow], valid, None, 1, parallel=True)
    cube = np.stack([wide, narrow.astype(np.uint16)], axis=1)
    np.testing.assert_array_equal(got[:2], oracle_medoid(cube, valid))


def test_non_contiguous_input():
    rng = np.random.default_rng(4)
    data = rng.integers(0, 65536, (20, 8, 6), dtype=np.uint16)[:, ::2, ::-1]
    valid = (rng.random((20, 8, 6)) < 0.5)[:, ::2, ::-1]
    np.testing.assert_array_equal(percentile(data, valid, 25), oracle_percentile(data, valid, 25))


def test_empty_axes():
    got = reduce("percentile", np.zeros((3, 2, 0), np.uint16), np.zeros((3, 0), bool), q=25)
    assert got.shape == (2, 0)
    for method in K.METHODS:  # no time steps: every pixel nodata
        q = 25 if method == "percentile" else None
        got = reduce(method, np.ones((0, 2, 4), np.uint16), np.ones((0, 4), bool), q=q)
        np.testing.assert_array_equal(got, np.zeros((2, 4), np.uint16))


def test_sorting_networks_sort():
    # 0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input.
    for n in range(1, 13):
        pairs = _plan.sorting_network(n)
        for bits in range(2**n):
            x = [(bits >> i) & 1 for i in range(n)]
            for a, b in pairs:
                if x[a] > x[b]:
                    x[a], x[b] = x[b], x[a]
            assert x == sorted(x), (n, bits)
    rng = np.random.default_rng(0)
    for n in (24, 60, 100, 200):
        pairs = _plan.sorting_network(n)
        x = rng.integers(0, 5, (n, 200))
        for a, b in pairs:
            x[a], x[b] = np.minimum(x[a], x[b]), np.maximum(x[a], x[b])
        np.testing.assert_array_equal(x, np.sort(x, axis=0))


def test_pruned_network_is_smaller():
    full = _plan.sorting_network(24)
    assert len(_plan.percentile_plan(24, 0.25).pairs) < len(full)
    assert len(_plan.median_plan(24).pairs) < len(full)


# --------------------------------------------------------------------------- argument errors


def _data():
    return np.zeros((3, 2, 2), np.uint16), np.ones((3, 2, 2), bool)


@pytest.mark.parametrize("q", [-0.1, 100.5, float("nan")])
def test_q_out_of_range(q):
    with pytest.raises(ValueError, match=r"q=.* is outside the valid range .*\[0, 100\]"):
        percentile(*_data(), q)


def test_q_not_a_number():
    with pytest.raises(TypeError, match=r"q='25' \(str\) is not a number"):
        percentile(*_data(), "25")


@pytest.mark.parametrize("min_obs", [0, -3])
def test_min_obs_below_one(min_obs):
    with pytest.raises(ValueError, match=rf"min_obs={min_obs} is invalid.*integer >= 1"):
        mean(*_data(), min_obs=min_obs)


def test_min_obs_not_an_integer():
    with pytest.raises(TypeError, match=r"min_obs=1.5 \(float\) is not an integer"):
        first(*_data(), min_obs=1.5)


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint32", "float64"])
def test_dtype_rejected_and_named(dtype):
    data, valid = _data()
    with pytest.raises(TypeError, match=rf"data has dtype {dtype}; .* take uint16 .* or uint8"):
        percentile(data.astype(dtype), valid, 25)


def test_valid_must_be_boolean():
    data, valid = _data()
    with pytest.raises(TypeError, match="valid has dtype uint8; it must be a boolean array"):
        percentile(data, valid.astype(np.uint8), 25)


def test_shape_mismatch_named():
    data, _ = _data()
    with pytest.raises(
        ValueError, match=re.escape("valid has shape (3, 3) but data has shape (3, 2, 2)")
    ):
        percentile(data, np.ones((3, 3), bool), 25)
    with pytest.raises(ValueError, match=re.escape("a band has shape (3, 2) but valid has")):
        K.reduce_bands("mean", [data, data[:, 0]], data.astype(bool), None, 1, True)


def test_not_an_array():
    with pytest.raises(TypeError, match=r"data must be a NumPy .* array; got list"):
        percentile([[1]], np.ones((1, 1), bool), 25)
    with pytest.raises(TypeError, match=r"data must be a NumPy .* or CuPy .* array; got list"):
        K.reduce_bands("mean", [[[1]]], np.ones((1, 1), bool), None, 1, True)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        ValueError, match="method='mode' is not a composite method; use one of 'percentile', "
    ) as err:
        reduce("mode", *_data())
    assert "'last', 'medoid'" in str(err.value)


def test_q_required_and_only_for_percentile():
    with pytest.raises(ValueError, match="method='percentile' needs q"):
        reduce("percentile", *_data())
    with pytest.raises(ValueError, match="q=30 was given with method='mean'"):
        reduce("mean", *_data(), q=30)


def test_cupy_is_not_imported():
    code = "import sys, s2mosaic.composite; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jit_falls_back_when_numba_cannot_cache():
    # A function without a source file has no cache locator, like an unwritable install.
    namespace: dict[str, object] = {}
    exec("def plus_one(x):\n    return x + 1", namespace)
    assert C._jit()(namespace["plus_one"])(1) == 2


def test_kernels_vectorise_and_never_fuse():
    # The speed comes from loops LLVM vectorises across pixels; exactness from no FMA. Compile
    # the two hot leaves afresh (cached code cannot be inspected) and read their machine code.
    import numba

    sort = numba.njit(C._load_and_sort.py_func)
    buf = np.zeros((24, 512), np.uint16)
    sort(np.zeros((24, 1, 512), np.uint16), 0, np.ones((24, 512), bool), 0, 512,
         np.uint16(65535), _plan.sorting_network(24), buf)  # fmt: skip
    lerp = numba.njit(C._lerp_store.py_func)
    v = np.zeros(512, np.uint16)
    lerp(v, v, np.zeros(512), np.ones(512, bool), 512, np.zeros(512, np.uint16))
    sort_asm = sort.inspect_asm(sort.signatures[0])
    lerp_asm = lerp.inspect_asm(lerp.signatures[0])
    assert not re.search(r"\bv?fn?m(add|sub)\w*[ps]d\b", lerp_asm)  # no fused multiply-add
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if re.search(r"\bavx2\b", cpu):  # packed unsigned 16-bit min/max: 16 or 32 pixels a go
        assert re.search(r"\bvpminuw\b", sort_asm) and re.search(r"\bvpmaxuw\b", sort_asm)
        assert re.search(r"\bv(add|sub|mul)pd\b", lerp_asm)  # packed doubles


# --------------------------------------------------------------------------- GPU dispatch


class _FakeCupyArray(np.ndarray):
    """Looks like a CuPy array to the dispatch (which checks the type's module)."""


_FakeCupyArray.__module__ = "cupy._core.core"


def test_cupy_arrays_go_to_the_gpu_kernels_and_stay_there(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.asarray = lambda a: np.asarray(a).view(_FakeCupyArray)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    calls = []

    def fake_gpu(code, stacks, valid, qf, min_obs):
        calls.append((code, len(stacks), qf, min_obs))
        assert all(isinstance(a, _FakeCupyArray) for a in (valid, *stacks))  # moved to device
        plain = tuple(np.asarray(s) for s in stacks)
        return G.reduce_array_api(code, plain, np.asarray(valid), qf, min_obs, np).view(
            _FakeCupyArray
        )

    monkeypatch.setattr(G, "reduce_stacks", fake_gpu)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, (12, 2, 8, 8), dtype=np.uint16)
    valid = rng.random((12, 8, 8)) < 0.6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no host fallback, no warning
        got = reduce("percentile", data.view(_FakeCupyArray), valid, q=25)
    assert isinstance(got, _FakeCupyArray) and got.shape == (2, 8, 8)
    np.testing.assert_array_equal(got[1], oracle_percentile(data[:, 1], valid, 25))
    assert calls == [(C.PERCENTILE, 1, 0.25, 1)]
    got = K.reduce_bands(
        "medoid", [data[:, 0], data[:, 1]], valid.view(_FakeCupyArray), None, 2, True
    )
    assert isinstance(got, _FakeCupyArray) and calls[-1] == (C.MEDOID, 2, 0.5, 2)


# --------------------------------------------------------------------------- the CUDA source

# The CUDA kernel compiled for the host by a C++ compiler: CUDA's built-ins replaced by plain
# C++ (one "thread" per loop iteration), its double intrinsics by plain IEEE operations, which
# is what __dadd_rn & co. are. This runs the GPU kernel's logic here, bit for bit.
_HOST_PRELUDE = r"""
#include <math.h>
struct s2m_dim3 { unsigned int x; };
static s2m_dim3 blockIdx, threadIdx, blockDim;
#define __global__
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
"""
_HOST_DRIVER = r"""
extern "C" void s2m_run(const unsigned long long* bp, const long long* bs, int nb,
                        const unsigned char* valid, long long n_pix, const unsigned short* lo,
                        const unsigned short* hi, const double* g, int min_obs,
                        unsigned short* out) {
    blockDim.x = 1;
    threadIdx.x = 0;
    for (long long p = 0; p < n_pix; ++p) {
        blockIdx.x = (unsigned int)p;
        s2m_percentile(bp, bs, nb, valid, n_pix, lo, hi, g, min_obs, out);
    }
}
"""


def _host_kernel(tmp_path: Path, n_time: int, qf: float, dtype: str):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++/clang++) to run the CUDA source on the host")
    src = tmp_path / f"k_{n_time}_{qf}_{dtype}.cpp"
    src.write_text(_HOST_PRELUDE + G.percentile_source(n_time, qf, dtype) + _HOST_DRIVER)
    lib = src.with_suffix(".so")
    flags = ["-O2", "-ffp-contract=off", "-shared", "-fPIC", "-w"]
    subprocess.run([cxx, *flags, "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


@pytest.mark.parametrize(
    ("n_time", "q", "dtype"),
    [(1, 25.0, "uint16"), (2, 50.0, "uint16"), (3, 100.0, "uint16"), (7, 0.0, "uint16"),
     (24, 25.0, "uint16"), (24, 90.0, "uint16"), (33, 50.0, "uint8"), (64, 33.333, "uint16")],
)  # fmt: skip
def test_cuda_percentile_source_on_the_host(tmp_path, n_time, q, dtype):
    lib = _host_kernel(tmp_path, n_time, q / 100, dtype)
    rng = np.random.default_rng(n_time)
    n_band, n_pix = 3, 700
    top = np.iinfo(dtype).max + 1
    data = rng.choice(np.array([0, 1, top - 1, 17], dtype), (n_time, n_band, n_pix))
    data[:, 1] = rng.integers(0, top, (n_time, n_pix), dtype=dtype)  # ties / no ties
    valid = rng.random((n_time, n_pix)) < 0.55
    valid[:, 0] = False
    plan = _plan.percentile_plan(n_time, q / 100)
    out = np.zeros((n_band + 1, n_pix), np.uint16)
    itemsize = data.itemsize
    ptrs = np.array([data.ctypes.data + b * n_pix * itemsize for b in range(n_band)], np.uint64)
    strides = np.full(n_band, n_band * n_pix, np.int64)
    vp = ctypes.c_void_p
    lib.s2m_run(
        vp(ptrs.ctypes.data), vp(strides.ctypes.data), ctypes.c_int(n_band),
        vp(valid.ctypes.data), ctypes.c_longlong(n_pix), vp(plan.row_lo.ctypes.data),
        vp(plan.row_hi.ctypes.data), vp(plan.gamma.ctypes.data), ctypes.c_int(2),
        vp(out.ctypes.data),
    )  # fmt: skip
    expected = C.reduce_blocks(C.PERCENTILE, (data,), valid, q / 100, 2, parallel=False)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:n_band], oracle_percentile(data, valid, q, 2))


def test_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (CUDA toolkit) not found; the CUDA source compiles on first GPU use")
    src = tmp_path / "percentile.cu"
    src.write_text(G.percentile_source(24, 0.25, "uint16"))
    ptx = tmp_path / "percentile.ptx"
    subprocess.run(
        [nvcc, "--ptx", "--fmad=false", "-arch=compute_80", "-o", str(ptx), str(src)], check=True
    )
    text = ptx.read_text()
    assert ".entry s2m_percentile" in text
    assert "fma." not in text  # no fused multiply-add anywhere
    assert ".local" not in text  # the series lives in registers


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("n_time", [1, 5, 24, 64, 65, 150])  # the CUDA kernel, then the sort path
def test_gpu_equals_cpu_bit_for_bit(cupy_gpu, n_time):
    cupy = cupy_gpu
    rng = np.random.default_rng(n_time)
    data = rng.integers(0, 65536, (n_time, 4, 40, 56), dtype=np.uint16)
    data[:, 2] = rng.choice(np.array([0, 3, 65535], np.uint16), (n_time, 40, 56))  # ties
    valid = rng.random((n_time, 40, 56)) < 0.55
    valid[:, 0, 0] = False
    d_data, d_valid = cupy.asarray(data), cupy.asarray(valid)
    for method, q in [("percentile", 0.0), ("percentile", 25.0), ("percentile", 90.0),
                      ("percentile", 100.0), ("median", None), ("mean", None), ("first", None),
                      ("last", None), ("medoid", None)]:  # fmt: skip
        for min_obs in (1, 3):
            got = reduce(method, d_data, d_valid, q=q, min_obs=min_obs)
            assert K._is_cupy(got), method  # stays on the device
            expected = reduce(method, data, valid, q=q, min_obs=min_obs)
            np.testing.assert_array_equal(cupy.asnumpy(got), expected, err_msg=f"{method} {q}")
    np.testing.assert_array_equal(
        cupy.asnumpy(percentile(d_data, d_valid, 25)), oracle_percentile(data, valid, 25)
    )


@pytest.mark.gpu
def test_gpu_separate_bands_uint8_and_host_mask(cupy_gpu):
    cupy = cupy_gpu
    rng = np.random.default_rng(1)
    bands = [rng.integers(0, 256, (24, 33, 17), dtype=np.uint8) for _ in range(3)]
    valid = rng.random((24, 33, 17)) < 0.5
    for method in ("percentile", "medoid"):
        q = 25.0 if method == "percentile" else None
        got = K.reduce_bands(method, [cupy.asarray(b) for b in bands], valid, q, 2, True)
        expected = K.reduce_bands(method, bands, valid, q, 2, True)
        np.testing.assert_array_equal(cupy.asnumpy(got), expected)
