"""The composite kernels against NumPy as the oracle, bit for bit."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s2mosaic.composite import _kernels as K
from s2mosaic.composite import count, first, mean, percentile, reduce

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXPLICIT_Q = [0.0, 100.0, 25.0, 50.0, 12.5, 33.333]


# --------------------------------------------------------------------------- oracles


def _nan_cube(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, data, np.nan).astype(np.float64)


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


def oracle_first(data, valid, min_obs=1):
    idx = np.argmax(valid, axis=0)
    values = np.take_along_axis(data, idx[None], axis=0)[0]
    keep = valid.sum(axis=0) >= max(min_obs, 1)
    return np.where(keep, values, 0).astype(data.dtype)


# --------------------------------------------------------------------------- inputs


@st.composite
def cubes(draw: st.DrawFn, max_t: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(T, Y, X) uint16 data and a mask, shaped by Hypothesis, filled from a drawn seed.

    Values come from the full uint16 range or from a tiny pool (ties everywhere); the mask
    density ranges from none to all valid, and there is always an all-masked and an all-valid
    pixel once the grid has two pixels.
    """
    n_time = draw(st.integers(1, max_t))
    shape = (n_time, draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        data = rng.integers(0, 65536, shape, dtype=np.uint16)
    else:
        pool = draw(st.lists(st.integers(0, 65535), min_size=1, max_size=4))
        data = rng.choice(np.array(pool, dtype=np.uint16), size=shape)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    valid = rng.random(shape) < density
    flat = valid.reshape(n_time, -1)
    if flat.shape[1] >= 2:
        flat[:, 0] = False
        flat[:, 1] = True
    return data, valid


q_values = st.one_of(st.sampled_from(EXPLICIT_Q), st.floats(0, 100, allow_nan=False))


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(cube=cubes(), q=q_values, min_obs=st.integers(1, 5))
@example(cube=(np.array([[1], [2]], np.uint16), np.ones((2, 1), bool)), q=50.0, min_obs=1)
def test_percentile_matches_numpy(cube, q, min_obs):
    data, valid = cube
    got = percentile(data, valid, q, min_obs=min_obs)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, q, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_median_matches_numpy(cube, min_obs):
    data, valid = cube
    got = reduce("median", data, valid, min_obs=min_obs)
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, 50.0, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_mean_matches_numpy(cube, min_obs):
    data, valid = cube
    np.testing.assert_array_equal(mean(data, valid, min_obs), oracle_mean(data, valid, min_obs))


@SETTINGS
@given(cube=cubes(), min_obs=st.integers(1, 5))
def test_first_and_count_match_numpy(cube, min_obs):
    data, valid = cube
    np.testing.assert_array_equal(first(data, valid, min_obs), oracle_first(data, valid, min_obs))
    got = count(valid)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, valid.sum(axis=0))


@settings(max_examples=50, deadline=None)
@given(cube=cubes(max_t=40), q=q_values, n_band=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_multiband_equals_band_by_band(cube, q, n_band, seed):
    _, valid = cube
    rng = np.random.default_rng(seed)
    shape = (valid.shape[0], n_band, *valid.shape[1:])
    data = rng.integers(0, 65536, shape, dtype=np.uint16)
    for method, kw in [("percentile", {"q": q}), ("mean", {}), ("first", {})]:
        got = reduce(method, data, valid, min_obs=2, **kw)
        assert got.shape == (n_band, *valid.shape[1:])
        for b in range(n_band):
            np.testing.assert_array_equal(
                got[b], reduce(method, data[:, b], valid, min_obs=2, **kw)
            )


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


def test_long_series_with_ties_uses_selection():
    # T above the insertion-sort threshold, heavy ties and both parallel and serial paths.
    rng = np.random.default_rng(7)
    data = rng.choice(np.array([0, 1, 2, 65535], np.uint16), size=(300, 16, 16))
    valid = rng.random(data.shape) < 0.8
    for q in EXPLICIT_Q:
        expected = oracle_percentile(data, valid, q)
        np.testing.assert_array_equal(percentile(data, valid, q), expected)
        np.testing.assert_array_equal(
            reduce("percentile", data, valid, q=q, parallel=False), expected
        )


def test_nodata_and_min_obs():
    data = np.array([[5, 5, 5], [9, 9, 9]], np.uint16)
    valid = np.array([[True, False, False], [True, True, False]])
    np.testing.assert_array_equal(percentile(data, valid, 50, min_obs=2), [7, 0, 0])
    np.testing.assert_array_equal(first(data, valid, min_obs=1), [5, 9, 0])
    np.testing.assert_array_equal(first(data, valid, min_obs=2), [5, 0, 0])
    np.testing.assert_array_equal(count(valid), [2, 1, 0])


def test_uint8_and_other_shapes():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (9, 4, 3, 2), dtype=np.uint8)
    valid = rng.random(data.shape) < 0.5
    got = percentile(data, valid, 40)
    assert got.dtype == np.uint8 and got.shape == (4, 3, 2)
    np.testing.assert_array_equal(got, oracle_percentile(data, valid, 40))
    one_pixel = percentile(data[:, 0, 0, 0].astype(np.uint16), valid[:, 0, 0, 0], 40)
    assert one_pixel.shape == ()
    assert one_pixel == oracle_percentile(data[:, 0, 0, 0], valid[:, 0, 0, 0], 40)


def test_non_contiguous_input():
    rng = np.random.default_rng(4)
    data = rng.integers(0, 65536, (20, 8, 6), dtype=np.uint16)[:, ::2, ::-1]
    valid = (rng.random((20, 8, 6)) < 0.5)[:, ::2, ::-1]
    np.testing.assert_array_equal(percentile(data, valid, 25), oracle_percentile(data, valid, 25))


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


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        ValueError, match="method='medoid' is not a composite method; use one of 'percentile', "
    ):
        reduce("medoid", *_data())


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
    assert K._jit()(namespace["plus_one"])(1) == 2


class _FakeCupyArray(np.ndarray):
    """Looks like a CuPy array to the dispatch (which checks the type's module)."""


_FakeCupyArray.__module__ = "cupy._core.core"


def test_cupy_like_input_goes_through_host_and_back(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.asnumpy = lambda a: np.asarray(a)
    fake.asarray = lambda a: np.asarray(a).view(_FakeCupyArray)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(K, "_cupy_warned", False)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, (12, 2, 8, 8), dtype=np.uint16)
    valid = rng.random((12, 8, 8)) < 0.6
    with pytest.warns(RuntimeWarning, match="reduced on the host"):
        got = reduce("percentile", data.view(_FakeCupyArray), valid, q=25)
    assert isinstance(got, _FakeCupyArray) and got.shape == (2, 8, 8)
    np.testing.assert_array_equal(got[1], oracle_percentile(data[:, 1], valid, 25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        reduce("mean", data.view(_FakeCupyArray), valid)


@pytest.mark.gpu
def test_cupy_input_falls_back_to_host(monkeypatch):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    rng = np.random.default_rng(5)
    data = rng.integers(0, 65536, (12, 8, 8), dtype=np.uint16)
    valid = rng.random(data.shape) < 0.6
    monkeypatch.setattr(K, "_cupy_warned", False)
    with pytest.warns(RuntimeWarning, match="reduced on the host"):
        got = percentile(cupy.asarray(data), cupy.asarray(valid), 25)
    assert K._is_cupy(got)
    np.testing.assert_array_equal(cupy.asnumpy(got), oracle_percentile(data, valid, 25))
