"""Gap filling (exact damped smoother, windows, normalisation), regular-grid interpolation,
acquisition filters and indices - against dense NumPy oracles."""

from __future__ import annotations

import datetime as dt

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from s2mosaic._dategrid import interpolate
from s2mosaic._gapfill import GapFill, gapfill
from s2mosaic._timeseries import (
    filter_acquisitions,
    normalized_difference,
    valid_fraction,
    with_indices,
)
from s2mosaic._timeseries_kernels import (
    daily_windows,
    interpolate_linear,
    smooth,
    smooth_fixed_point,
    to_reflectance,
)
from s2mosaic.errors import SpecError


def dense_solution(a: np.ndarray, m: np.ndarray, lam: float) -> np.ndarray:
    """The normal equations (M + lambda D^T D) x = M a, built densely and solved per series."""
    n = a.shape[0]
    diff = np.diff(np.eye(n), axis=0)
    lap = diff.T @ diff
    flat_a, flat_m = a.reshape(n, -1), np.broadcast_to(m, a.shape).reshape(n, -1)
    out = np.full(flat_a.shape, np.nan)
    for p in range(flat_a.shape[1]):
        if flat_m[:, p].any():
            out[:, p] = np.linalg.solve(np.diag(flat_m[:, p]) + lam * lap,
                                        flat_m[:, p] * flat_a[:, p])
    return out.reshape(a.shape)


# --------------------------------------------------------------------------- the solver


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), pixels=st.integers(1, 12), clear=st.floats(0.0, 1.0),
       lam=st.sampled_from([1e-3, 0.1, 1.0, 25.0]), seed=st.integers(0, 2**31 - 1))
def test_smooth_equals_dense_solve(n: int, pixels: int, clear: float, lam: float,
                                   seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 10_000, (n, pixels))
    m = (rng.random((n, pixels)) < clear).astype(float)
    got = smooth(a, m, lam)
    want = dense_solution(a, m, lam)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_smooth_bands_share_weights_and_soft_weights() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 5000, (30, 3, 40))  # (T, B, P)
    m = rng.random((30, 1, 40))  # cloud-free probabilities, shared by the bands
    np.testing.assert_allclose(smooth(a, m, 0.1), dense_solution(a, m, 0.1), rtol=1e-6)


def test_smooth_equals_fixed_point_iteration_at_convergence() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(100, 9000, (48, 200))
    m = (rng.random((48, 200)) < 0.5).astype(float)
    m[:, m.sum(axis=0) == 0] = 0
    m[0, :] = 1  # every series has data; gaps stay short enough to converge in the test's time
    exact = smooth(a, m, 0.1)
    iterated = smooth_fixed_point(a, m, 0.1, iterations=20_000, tol=1e-13)
    np.testing.assert_allclose(exact, iterated, rtol=1e-6)
    # ...and 200 iterations (SpaceEye's cap) have not converged on long gaps: the exact solve
    # is not the same computation with a different stopping rule.
    m2 = np.zeros((48, 1))
    m2[[0, 47]] = 1
    a2 = np.linspace(0, 4700, 48)[:, None]
    gap200 = smooth_fixed_point(a2, m2, 0.1, iterations=200)
    assert np.abs(gap200 - smooth(a2, m2, 0.1)).max() > 1.0


def test_small_damping_is_linear_interpolation_inside_a_gap() -> None:
    a = np.zeros(20)
    m = np.zeros(20)
    a[[3, 11, 16]] = [1000.0, 3000.0, 1500.0]
    m[[3, 11, 16]] = 1
    got = smooth(a, m, 1e-9)
    days = np.arange(20)
    want = np.interp(days, [3, 11, 16], [1000.0, 3000.0, 1500.0])  # constant beyond the ends
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="damping must be > 0"):
        smooth(a, m, 0.0)


def test_no_clear_observation_is_nan_never_zero() -> None:
    a = np.full((10, 3), 500.0)
    m = np.ones((10, 3))
    m[:, 1] = 0
    got = smooth(a, m, 0.1)
    assert np.isnan(got[:, 1]).all()
    np.testing.assert_allclose(got[:, [0, 2]], 500.0)
    r = to_reflectance(np.array([np.nan, 0.2, 0.5, 1.5, 70000.0]))
    assert r.tolist() == [0, 1, 1, 2, 65535]  # rounds half to even; valid never reads as 0


# --------------------------------------------------------------------------- windows


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 400), duration=st.integers(2, 80), overlap=st.floats(0, 0.95))
def test_windows_cover_every_day_once_from_its_most_central_window(
        n: int, duration: int, overlap: float) -> None:
    wins = daily_windows(n, duration, overlap)
    owner = np.full(n, -1)
    for k, w in enumerate(wins):
        assert w.start <= w.first < w.last <= w.stop
        assert w.stop - w.start == min(n, duration)
        assert (owner[w.first:w.last] == -1).all()
        owner[w.first:w.last] = k
    assert (owner >= 0).all()
    centres = np.array([(w.start + w.stop - 1) / 2 for w in wins])
    for d in range(n):
        assert abs(d - centres[owner[d]]) == np.abs(d - centres).min()


def test_spaceeye_windows() -> None:
    wins = daily_windows(120, 48, 0.5)
    assert [(w.start, w.stop) for w in wins] == [(0, 48), (24, 72), (48, 96), (72, 120)]
    assert [(w.first, w.last) for w in wins] == [(0, 36), (36, 60), (60, 84), (84, 120)]


# --------------------------------------------------------------------------- gapfill (xarray)


def _cube(values: np.ndarray, valid: np.ndarray, days: list[int], start: str = "2024-05-01",
          chunk: int = 4) -> tuple[xr.Dataset, xr.DataArray]:
    """A Dask-backed (time, y, x) cube with one band per entry of values (B, T, y, x)."""
    t0 = np.datetime64(start, "ns")
    times = [t0 + np.timedelta64(d, "D") + np.timedelta64(10, "h") for d in days]
    coords = {"time": times, "y": np.arange(values.shape[2]), "x": np.arange(values.shape[3])}
    dims = ("time", "y", "x")
    ch = (-1, chunk, chunk)
    bands = {f"b{i}": (dims, da.from_array(v, chunks=ch)) for i, v in enumerate(values)}
    return (xr.Dataset(bands, coords=coords),
            xr.DataArray(da.from_array(valid, chunks=ch), dims=dims, coords=coords))


def _oracle_gapfill(values: np.ndarray, valid: np.ndarray, days: list[int], n_days: int,
                    p: GapFill) -> np.ndarray:
    """Per window, the dense solve on that window's daily grid; days from the owner window."""
    n_band, _, ny, nx = values.shape
    out = np.zeros((n_band, n_days, ny, nx), np.uint16)
    for w in daily_windows(n_days, p.duration, p.overlap):
        length = w.stop - w.start
        a = np.zeros((length, n_band, ny, nx))
        m = np.zeros((length, 1, ny, nx))
        for i, d in enumerate(days):
            if w.start <= d < w.stop:
                m[d - w.start, 0] += valid[i]
                a[d - w.start] += np.where(valid[i], values[:, i], 0)
        mean = np.divide(a, m, out=np.zeros_like(a), where=m > 0)
        x = dense_solution(mean, m, p.damping)
        out[:, w.first:w.last] = to_reflectance(x[w.first - w.start:w.last - w.start]
                                                ).transpose(1, 0, 2, 3)
    return out[:, ::p.step]


def test_gapfill_equals_windowed_dense_solve() -> None:
    rng = np.random.default_rng(5)
    days = [0, 3, 5, 9, 10, 10, 17, 22, 31, 33, 40, 52, 58]  # two observations on day 10
    n_time = len(days)
    values = rng.integers(1, 10_000, (2, n_time, 6, 7), dtype=np.uint16)
    valid = rng.random((n_time, 6, 7)) < 0.55
    valid[:, 0, 0] = False  # never clear: nodata everywhere
    valid[:7, 1, 1] = False  # clear only late: nodata in the first window's days
    p = GapFill(damping=0.1, duration=24, overlap=0.5, step=1)
    cube, mask = _cube(values, valid, days)
    ds = gapfill(cube, mask, p, start="2024-05-01", end="2024-06-29")
    assert isinstance(ds["b0"].data, da.Array)
    got = ds.compute()
    want = _oracle_gapfill(values, valid, days, 60, p)
    for b in range(2):
        assert got[f"b{b}"].dtype == np.uint16
        assert np.abs(got[f"b{b}"].values.astype(int) - want[b].astype(int)).max() <= 1
        assert (got[f"b{b}"].values[:, 0, 0] == 0).all()
    assert got.sizes["time"] == 60
    assert got.time.values[0] == np.datetime64("2024-05-01", "ns")
    first = daily_windows(60, 24, 0.5)[0]
    assert (got["b0"].values[first.first:first.last, 1, 1] == 0).all()
    assert (got["b0"].values[first.last:, 1, 1] > 0).all()
    # every 5th day is the daily result subsampled
    every5 = gapfill(cube, mask, GapFill(damping=0.1, duration=24, step=5),
                     start="2024-05-01", end="2024-06-29").compute()
    np.testing.assert_array_equal(every5["b1"].values, got["b1"].values[::5])


def test_gapfill_normalise_removes_per_date_illumination() -> None:
    # Uniform ground under a per-date illumination (bright on day 2). Pixel (0, 0) is cloudy on
    # the bright day: without normalisation it misses the brightness, with it the pixel gets
    # the same daily curve as its clear neighbours.
    days = [0, 1, 2, 3, 4]
    light = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    values = (1000 * light[None, :, None, None] * np.ones((1, 5, 4, 4))).astype(np.uint16)
    valid = np.ones((5, 4, 4), bool)
    valid[2, 0, 0] = False
    cube, mask = _cube(values, valid, days)
    plain = gapfill(cube, mask, GapFill(damping=0.5, duration=8)).compute()["b0"].values
    norm = gapfill(cube, mask, GapFill(damping=0.5, duration=8, normalise=True)).compute()
    n = norm["b0"].values
    assert plain[2, 0, 0] < plain[2, 1, 1] - 100
    np.testing.assert_array_equal(n[:, 0, 0], n[:, 1, 1])
    assert norm.attrs["gapfill_normalise"] == 1


def test_gapfill_params_are_validated() -> None:
    for kw, field in [({"damping": 0}, "gapfill.damping"), ({"duration": 1}, "gapfill.duration"),
                      ({"overlap": 1.0}, "gapfill.overlap"), ({"step": 0}, "gapfill.step"),
                      ({"normalise": "yes"}, "gapfill.normalise")]:
        with pytest.raises(SpecError) as err:
            GapFill(**kw)  # type: ignore[arg-type]
        assert err.value.field == field


# --------------------------------------------------------------------------- regular grid


def test_interpolate_linear_equals_np_interp_on_clear_values() -> None:
    rng = np.random.default_rng(7)
    obs_t = np.sort(rng.choice(100, 15, replace=False)).astype(float)
    vals = rng.integers(1, 9000, (15, 50)).astype(np.uint16)
    valid = rng.random((15, 50)) < 0.5
    grid = np.arange(0, 100, 7.0)
    got = interpolate_linear(obs_t, [vals], valid, grid)[0]
    for p in range(50):
        t, v = obs_t[valid[:, p]], vals[valid[:, p], p].astype(float)
        want = (np.interp(grid, t, v, left=np.nan, right=np.nan) if t.size
                else np.full(grid.shape, np.nan))
        np.testing.assert_allclose(got[:, p], want, rtol=1e-12)


def test_interpolate_on_a_16_day_grid() -> None:
    days = [0, 5, 10, 20, 35]
    values = np.stack([np.full((4, 4), v, np.uint16) for v in (100, 900, 300, 500, 800)])[None]
    valid = np.ones((5, 4, 4), bool)
    valid[[2, 3], 2, 2] = False  # days 10 and 20 cloudy: day 5 → day 35 is one straight line
    valid[0, 3, 3] = False  # nothing before day 5: no extrapolation back to day 0
    cube, mask = _cube(values, valid, days)
    out = interpolate(cube, mask, step_days=16).compute()
    assert [str(t)[:10] for t in out.time.values] == ["2024-05-01", "2024-05-17", "2024-06-02"]
    b = out["b0"].values
    assert b[:, 0, 0].tolist() == [100, 420, 740]
    assert b[:, 2, 2].tolist() == [100, 863, 810]
    assert b[:, 3, 3].tolist() == [0, 420, 740]


# --------------------------------------------------------------------------- filters, indices


def test_filter_acquisitions_by_valid_fraction_over_the_aoi() -> None:
    valid = np.ones((4, 4, 4), bool)
    valid[1, :2] = False  # 50 % of the image, 0 % of the AOI below
    valid[2, 2:, :3] = False  # 3 of the 4 AOI pixels
    aoi = np.zeros((4, 4), bool)
    aoi[2:, 2:] = True
    values = np.ones((1, 4, 4, 4), np.uint16)
    cube, mask = _cube(values, valid & aoi, [0, 1, 2, 3])
    aoi_da = xr.DataArray(aoi, dims=("y", "x"))
    np.testing.assert_allclose(valid_fraction(mask, aoi_da).values, [1, 1, 0.5, 1])
    kept, kept_valid = filter_acquisitions(cube, mask, 0.8, aoi=aoi_da)
    assert kept.sizes["time"] == 3 and kept_valid.sizes["time"] == 3
    assert kept.valid_fraction.values.tolist() == [1, 1, 1]
    assert filter_acquisitions(cube, mask, 0.4, aoi=aoi_da)[0].sizes["time"] == 4
    with pytest.raises(SpecError, match="min_fraction"):
        filter_acquisitions(cube, mask, 1.5)


def test_indices_are_lazy_and_nodata_aware() -> None:
    nir = np.array([[3000, 0], [2000, 1]], np.uint16)
    red = np.array([[1000, 400], [2000, 3]], np.uint16)
    green = np.array([[500, 500], [1000, 1]], np.uint16)
    ds = xr.Dataset({n: (("y", "x"), da.from_array(v, chunks=1))
                     for n, v in (("nir", nir), ("red", red), ("green", green))})
    out = with_indices(ds, ["NDVI", "ndwi"])
    assert isinstance(out.ndvi.data, da.Array) and out.ndvi.dtype == np.float32
    ndvi = out.ndvi.values
    np.testing.assert_allclose(ndvi, [[0.5, np.nan], [0.0, -0.5]], rtol=1e-6)
    np.testing.assert_allclose(out.ndwi.values[0, 0], (500 - 3000) / 3500, rtol=1e-6)
    custom = with_indices(ds, {"gn": ("green", "nir")})
    np.testing.assert_array_equal(custom.gn.values, out.ndwi.values)
    with pytest.raises(KeyError, match="unknown index 'evi'"):
        with_indices(ds, ["evi"])
    with pytest.raises(KeyError, match="'swir16' is not in the dataset"):
        normalized_difference(ds, "nir", "swir16")


def test_solver_on_cupy_equals_numpy(cupy_gpu: object) -> None:
    cupy = cupy_gpu
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 9000, (48, 4, 500))
    m = (rng.random((48, 1, 500)) < 0.4).astype(float)
    got = smooth(cupy.asarray(a), cupy.asarray(m), 0.1)  # type: ignore[attr-defined]
    assert type(got).__module__.startswith("cupy")
    np.testing.assert_allclose(cupy.asnumpy(got), smooth(a, m, 0.1), rtol=1e-12)  # type: ignore[attr-defined]
    values = rng.integers(1, 9000, (1, 9, 8, 8), dtype=np.uint16)
    valid = rng.random((9, 8, 8)) < 0.6
    cube, mask = _cube(values, valid, [0, 2, 4, 8, 9, 13, 20, 21, 30])
    gpu_cube = cube.copy(data={"b0": cube["b0"].data.map_blocks(cupy.asarray)})  # type: ignore[attr-defined]
    gpu_mask = mask.copy(data=mask.data.map_blocks(cupy.asarray))  # type: ignore[attr-defined]
    with dask.config.set(scheduler="synchronous"):
        cpu = gapfill(cube, mask, GapFill(duration=12)).compute()
        gpu = gapfill(gpu_cube, gpu_mask, GapFill(duration=12))["b0"].data.compute()
    np.testing.assert_array_equal(cupy.asnumpy(gpu), cpu["b0"].values)  # type: ignore[attr-defined]
    assert dt.date(2024, 5, 1) == dt.date.fromisoformat(str(cpu.time.values[0])[:10])
