"""Series of period composites (series.periods) and the gap-fill run, on the demo catalog."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr
from typer.testing import CliRunner

from s2mosaic._gapfill import GapFill
from s2mosaic._pipeline import mosaic
from s2mosaic._spec import MosaicSpec, Period, SeriesSpec
from s2mosaic._timeseries import series
from s2mosaic._timeseries_run import run_gapfill, run_series
from s2mosaic._write import provenance_of
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError, WriteError

# Inside both demo tiles and across the UTM zone line, small enough for a fast test.
AOI = [11.995, 47.497, 12.005, 47.503]
BASE = {"aoi": [10.0, 46.0, 10.01, 46.01], "source": "catalog.json"}


def _spans(spec: MosaicSpec) -> list[tuple[str, str]]:
    return [(p.start.isoformat(), p.end.isoformat()) for p in spec.series.expand(spec.period)]


# --------------------------------------------------------------------------- spec


def test_periods_rules_expand_within_the_period() -> None:
    period = ["2024-05-10", "2025-01-05"]
    monthly = MosaicSpec(period=period, series={"periods": "monthly"}, **BASE)
    spans = _spans(monthly)
    assert spans[0] == ("2024-05-10", "2024-05-31") and spans[-1] == ("2025-01-01", "2025-01-05")
    assert len(spans) == 9
    quarterly = _spans(MosaicSpec(period=period, series={"periods": "quarterly"}, **BASE))
    assert quarterly == [("2024-05-10", "2024-06-30"), ("2024-07-01", "2024-09-30"),
                         ("2024-10-01", "2024-12-31"), ("2025-01-01", "2025-01-05")]
    yearly = _spans(MosaicSpec(period=period, series={"periods": "yearly"}, **BASE))
    assert yearly == [("2024-05-10", "2024-12-31"), ("2025-01-01", "2025-01-05")]
    every = MosaicSpec(period=["2024-05-01", "2024-06-30"], series={"periods": "Every 16 Days"},
                       **BASE)
    assert every.series.periods == "every 16 days"
    assert _spans(every) == [("2024-05-01", "2024-05-16"), ("2024-05-17", "2024-06-01"),
                             ("2024-06-02", "2024-06-17"), ("2024-06-18", "2024-06-30")]
    # the month filter carries over, and months it removes entirely are left out
    summer = MosaicSpec(period={"start": "2024-01-01", "end": "2024-12-31", "months": [6, 7]},
                        series={"periods": "monthly"}, **BASE)
    subs = summer.series.expand(summer.period)
    assert [(p.start.month, p.months) for p in subs] == [(6, (6, 7)), (7, (6, 7))]


def test_explicit_periods_and_round_trip(tmp_path: Path) -> None:
    spec = MosaicSpec(period=["2024-05-01", "2024-06-30"],
                      series={"periods": [["2024-05-01", "2024-05-20"],
                                          {"start": "2024-06-01", "end": "2024-06-30"}]}, **BASE)
    assert _spans(spec) == [("2024-05-01", "2024-05-20"), ("2024-06-01", "2024-06-30")]
    spec.to_yaml(tmp_path / "s.yaml")
    assert MosaicSpec.from_yaml(tmp_path / "s.yaml").series == spec.series
    assert MosaicSpec.from_dict(spec.to_dict()) == spec
    assert MosaicSpec(period=["2024-05-01", "2024-06-30"], **BASE).series == SeriesSpec()
    assert SeriesSpec().expand(Period("2024-05-01", "2024-05-02")) == []


@pytest.mark.parametrize(("periods", "field", "says"), [
    ("weekly", "series.periods", "'every N days'"),
    ("every 0 days", "series.periods", "N >= 1"),
    ([], "series.periods", "non-empty list"),
    (5, "series.periods", "non-empty list"),
    ([["2024-06-01"]], "series.periods[0]", "mapping with keys"),
    ([["2024-06-10", "2024-06-01"]], "series.periods[0].end", "on or after start"),
    ([["2024-04-20", "2024-05-10"]], "series.periods[0]", "within period [2024-05-01, 2024-06-30]"),
])
def test_invalid_periods_name_the_field(periods: object, field: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        MosaicSpec(period=["2024-05-01", "2024-06-30"], series={"periods": periods}, **BASE)
    assert err.value.field == field
    assert says in str(err.value)
    with pytest.raises(SpecError, match=r"series\.cadence: .*unknown key"):
        MosaicSpec(period=["2024-05-01", "2024-06-30"], series={"cadence": "monthly"}, **BASE)


# --------------------------------------------------------------------------- series


@pytest.fixture(scope="module")
def series_spec(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> MosaicSpec:
    out = tmp_path_factory.mktemp("series")
    base = demo_spec(demo_catalog, out)
    # 2024-06-30 has no acquisition: the last period is empty.
    return base.replace(aoi=AOI, series={"periods": "every 20 days"},
                        runtime={"chunks": 64, "scheduler": "synchronous"},
                        output={"zarr": out / "series.zarr", "cog": out / "m.tif",
                                "overwrite": True})


def test_each_period_equals_its_single_period_mosaic(series_spec: MosaicSpec) -> None:
    s = series(series_spec)
    periods = series_spec.series.expand(series_spec.period)
    assert [str(t)[:10] for t in s.time.values] == [p.start.isoformat() for p in periods]
    assert [str(t)[:10] for t in s.period_end.values] == [p.end.isoformat() for p in periods]
    prov = provenance_of(s)
    assert [len(p["dates"]) for p in prov["series"]] == [4, 4, 4, 0]
    with dask.config.set(scheduler="synchronous"):
        got = s.compute()
        for i, p in enumerate(periods[:3]):
            single = mosaic(series_spec.replace(period=p, series={})).compute()
            for name in [*series_spec.bands, "count"]:
                a, b = got[name].isel(time=i).values, single[name].values
                assert a.dtype == b.dtype == np.uint16
                assert a.tobytes() == b.tobytes(), (p, name)
            assert int(single["count"].max()) > 0
    for name in [*series_spec.bands, "count"]:
        assert not got[name].isel(time=3).values.any()  # no acquisition: nodata, count 0


def test_series_reads_each_scene_once(series_spec: MosaicSpec) -> None:
    """A 4-period series has one read task per asset and spatial chunk (the cube's), not one
    per period: the periods select time slices of the same loaded chunks."""
    from collections import Counter

    s = series(series_spec)
    # mask-first band reads (runtime.prune_dates) are named prune-<asset>-<token>-clear_block
    layers = Counter(
        "gated " + name.split("-")[1] if name.startswith("prune-") else name.rsplit("-", 1)[0]
        for name in (str(k[0]) for k in dict(s.__dask_graph__()) if isinstance(k, tuple)))
    n_chunks = int(np.prod(s.red.data.numblocks[1:]))
    assert n_chunks > 1
    for asset in ("B04", "B03", "B02", "B08"):  # odc-stac: one task per chunk and band
        assert layers[f"gated {asset}"] == n_chunks, (asset, layers)
    assert layers["SCL"] == n_chunks, layers
    assert layers["s2mosaic-composite-percentile"] == 3 * n_chunks  # the empty period: zeros


def test_run_series_writes_one_zarr_and_a_cog_per_period(series_spec: MosaicSpec) -> None:
    report = run_series(series_spec)
    out = series_spec.output
    assert out.zarr is not None and out.cog is not None
    z = xr.open_zarr(out.zarr, mask_and_scale=False)
    assert z.red.dims == ("time", "y", "x") and z.red.dtype == np.uint16
    assert z.sizes["time"] == 4 and z.red.attrs["grid_mapping"] == "spatial_ref"
    assert z.attrs["proj:code"] == "EPSG:32632"
    with dask.config.set(scheduler="synchronous"):
        lazy = series(series_spec).compute()
    for name in [*series_spec.bands, "count"]:
        np.testing.assert_array_equal(z[name].values, lazy[name].values)
    first = out.cog.with_name("m_2024-05-01.tif")
    assert report.outputs["cog[2024-05-01]"] == str(first)
    with rasterio.open(first) as src:
        assert src.descriptions == (*series_spec.bands, "count")
        np.testing.assert_array_equal(src.read(1), z.red.isel(time=0).values)
    meta = json.loads(Path(report.outputs["metadata"] or "").read_text())
    assert meta["kind"] == "series" and len(meta["series"]) == 4
    with pytest.raises(WriteError, match="already exists"):
        run_series(series_spec.replace(output={**_plain_output(series_spec), "overwrite": False}))


def _plain_output(spec: MosaicSpec) -> dict[str, object]:
    return {"zarr": spec.output.zarr, "cog": spec.output.cog}


def test_run_gapfill_writes_daily_rasters(series_spec: MosaicSpec, tmp_path: Path) -> None:
    spec = series_spec.replace(series={}, period=["2024-05-01", "2024-05-31"],
                               output={"zarr": tmp_path / "daily.zarr"})
    report = run_gapfill(spec, GapFill(duration=20, step=2))
    z = xr.open_zarr(tmp_path / "daily.zarr", mask_and_scale=False)
    assert z.sizes["time"] == 16
    assert z.time.values[0] == np.datetime64("2024-05-01")
    assert z.time.values[-1] == np.datetime64(dt.date(2024, 5, 31))
    red = z.red.values
    assert red.dtype == np.uint16 and (red > 0).mean() > 0.5  # cloud-free almost everywhere
    meta = json.loads(Path(report.outputs["metadata"] or "").read_text())
    assert meta["gapfill"]["duration"] == 20
    with pytest.raises(WriteError, match=r"output\.cog"):
        run_gapfill(spec.replace(output={"zarr": tmp_path / "d2.zarr",
                                         "cog": tmp_path / "d2.tif"}))


def test_cli_series_needs_periods(series_spec: MosaicSpec, tmp_path: Path) -> None:
    path = tmp_path / "single.yaml"
    series_spec.replace(series={}).to_yaml(path)
    result = CliRunner().invoke(app, ["series", str(path)])
    assert result.exit_code == 2
    assert "series.periods" in result.output
