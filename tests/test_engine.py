"""One engine: series and gap-fill through the tiled runner (tiles, manifest, resume, report).

Small AOIs of the demo catalog in tiles of 64 px (4 tiles) with a mask margin, compared byte
for byte with one-tile runs; a series CLI run SIGKILLed mid-way and resumed in a new process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr

from s2mosaic._gapfill import GapFill
from s2mosaic._manifest import Manifest
from s2mosaic._pipeline import mosaic
from s2mosaic._search import search
from s2mosaic._spec import MosaicSpec
from s2mosaic._timeseries import period_items
from s2mosaic._timeseries_run import run_gapfill, run_series
from s2mosaic.demo import demo_spec
from s2mosaic.errors import WriteError

from .killing import kill_after_tiles
from .test_demo_pipeline import _single_tile_aoi

BANDS = ["red", "green", "blue", "nir", "count"]


def _spec(catalog: Path, out: Path, *, tile: int = 64, **kw: Any) -> MosaicSpec:
    """~90×90 px in one UTM zone (reads do not depend on the window), a 2 px mask dilation
    (so tiles need a margin), 32 px chunks."""
    spec = demo_spec(catalog, out).replace(
        aoi=_single_tile_aoi(catalog), period=["2024-05-01", "2024-06-09"],
        series={"periods": "every 20 days"}, mask={"method": "scl", "dilation": 2},
        runtime={"chunks": 32, "tile_size": tile, "scheduler": "synchronous"},
        output={"zarr": out / "s.zarr", "cog": out / "s.tif"})
    return spec.replace(**kw) if kw else spec


def _chunks(store: Path) -> dict[str, bytes]:
    """Every file of a store but the run group and the (attribute) metadata."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and "s2mosaic_run" not in p.parts
            and p.name not in (".zmetadata", ".zattrs")}


def _assert_same_store(a: Path, b: Path) -> None:
    ca, cb = _chunks(a), _chunks(b)
    assert sorted(ca) == sorted(cb) and len(ca) > 20
    for rel in ca:
        assert ca[rel] == cb[rel], rel
    za, zb = xr.open_zarr(a, mask_and_scale=False), xr.open_zarr(b, mask_and_scale=False)
    assert za.attrs == zb.attrs


# -- selection per period ----------------------------------------------------------------------
def test_series_min_cover_reads_only_the_scenes_selected_for_each_period(
        demo_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(demo_catalog, tmp_path, select={"method": "min-cover"})
    items = search(spec)
    picks = period_items(spec, items)
    assert picks is not None and all(picks)
    chosen = {i.id for pick in picks for i in pick}
    in_aoi = {i.id for i in items}
    assert len(chosen) < len(in_aoi)  # the selection leaves scenes out
    opened: list[str] = []
    real_open = rasterio.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", spy)
    report = run_series(spec)
    monkeypatch.undo()
    scenes = {Path(p).parent.name for p in opened if "sentinel-2-l2a" in p}
    assert scenes == chosen, (sorted(scenes - chosen), sorted(chosen - scenes))
    assert report.items == len(chosen) and report.kind == "series"
    header = Manifest(tmp_path / "s.zarr").header()
    assert header["product"]["periods"] == [[i.id for i in pick] for pick in picks]
    # Each period is the min-cover mosaic of that period alone.
    z = xr.open_zarr(tmp_path / "s.zarr", mask_and_scale=False)
    for k, p in enumerate(spec.series.expand(spec.period)):
        one = mosaic(spec.replace(period=p, series={})).compute(scheduler="synchronous")
        for n in BANDS:
            np.testing.assert_array_equal(z[n].isel(time=k).values, one[n].values, err_msg=n)
    meta = json.loads((tmp_path / "s.metadata.json").read_text())
    assert [len(s["dates"]) for s in meta["series"]] == [
        len({i.datetime for i in pick}) for pick in picks]


# -- tiled == one tile ---------------------------------------------------------------------------
def test_tiled_series_equals_one_tile_byte_for_byte(demo_catalog: Path, tmp_path: Path) -> None:
    tiled = run_series(_spec(demo_catalog, tmp_path / "t", tile=64))
    whole = run_series(_spec(demo_catalog, tmp_path / "w", tile=128))
    assert tiled.tiles["total"] == tiled.tiles["computed"] == 4 and whole.tiles["total"] == 1
    assert tiled.kind == "series" and tiled.max_tasks_in_flight > 0
    _assert_same_store(tmp_path / "t" / "s.zarr", tmp_path / "w" / "s.zarr")
    z = xr.open_zarr(tmp_path / "t" / "s.zarr", mask_and_scale=False)
    assert z.red.dims == ("time", "y", "x") and z.red.chunks[0] == (1, 1)
    assert (z["count"].values > 0).mean() > 0.5 and "period_end" in z.coords
    for day in ("2024-05-01", "2024-05-21"):
        a = (tmp_path / "t" / f"s_{day}.tif").read_bytes()
        assert a == (tmp_path / "w" / f"s_{day}.tif").read_bytes(), day
        assert tiled.outputs[f"cog[{day}]"] == str(tmp_path / "t" / f"s_{day}.tif")
    rep = json.loads((tmp_path / "t" / "s.report.json").read_text())
    assert rep["kind"] == "series" and rep["tiles"]["computed"] == 4
    # The margin mattered: without it the dilation would stop at tile edges.
    assert Manifest(tmp_path / "t" / "s.zarr").header()["halo"] == [2, 2]


def test_tiled_gapfill_equals_one_tile_and_resumes(demo_catalog: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Normalised gap-fill: the AOI's illuminance is computed once and recorded, so 4 tiles
    give the bytes of 1; a resume takes it from the manifest and redoes only missing tiles."""
    params = GapFill(duration=16, step=3, normalise=True)

    def spec(out: Path, tile: int) -> MosaicSpec:
        return _spec(demo_catalog, out, tile=tile, series={}, period=["2024-05-01", "2024-05-31"],
                     output={"zarr": out / "g.zarr"})

    tiled = run_gapfill(spec(tmp_path / "t", 64), params)
    whole = run_gapfill(spec(tmp_path / "w", 128), params)
    assert tiled.tiles["total"] == 4 and whole.tiles["total"] == 1 and tiled.kind == "gapfill"
    store = tmp_path / "t" / "g.zarr"
    _assert_same_store(store, tmp_path / "w" / "g.zarr")
    z = xr.open_zarr(store, mask_and_scale=False)
    assert z.sizes["time"] == 11 and z.red.chunks[0] == (11,) and (z.red.values > 0).mean() > 0.5
    header = Manifest(store).header()["product"]
    assert header["params"]["normalise"] is True and len(header["illuminance"]["obs"]) >= 4
    # Not normalising gives other pixels: the recorded illuminance is used.
    plain = run_gapfill(spec(tmp_path / "p", 64), GapFill(duration=16, step=3))
    assert _chunks(tmp_path / "p" / "g.zarr") != _chunks(store)

    # Interrupt: keep the header and one tile record, damage a chunk of a tile not recorded.
    lines = (store / "s2mosaic_run" / "manifest.jsonl").read_text().splitlines()
    (store / "s2mosaic_run" / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (store / "red" / "0.2.2").write_bytes(b"torn")
    import s2mosaic._gapfill as gf
    import s2mosaic._timeseries_run as tr

    def no_second_pass(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("resume recomputed the illuminance instead of reading it")

    monkeypatch.setattr(tr, "gapfill_illuminance", no_second_pass)
    monkeypatch.setattr(gf, "_illuminance", no_second_pass)
    again = run_gapfill(spec(tmp_path / "t", 64), params, resume=True)
    assert again.tiles["resumed"] == 1 and again.tiles["computed"] == 3
    _assert_same_store(store, tmp_path / "w" / "g.zarr")
    with pytest.raises(WriteError, match=r"gap-filled with .*same parameters"):
        run_gapfill(spec(tmp_path / "t", 64), GapFill(duration=20, step=3, normalise=True),
                    resume=True)
    assert plain.tiles["computed"] == 4


# -- SIGKILL, then resume in a new process --------------------------------------------------------
def test_series_killed_mid_run_resumes_byte_identical(demo_catalog: Path, tmp_path: Path) -> None:
    """SIGKILL the whole `s2mosaic series` process group once a tile is recorded; `--resume`
    in a new process then writes the store and the per-period COGs of an uninterrupted run."""
    spec = _spec(demo_catalog, tmp_path / "k", tile=32, runtime={
        "chunks": 32, "tile_size": 32, "scheduler": "synchronous", "max_tiles_in_flight": 1})
    spec_file = tmp_path / "k.yaml"
    spec.to_yaml(spec_file)
    store = tmp_path / "k" / "s.zarr"
    killed_at = kill_after_tiles(["series", str(spec_file)], store, 1)
    assert killed_at == 1
    assert not (tmp_path / "k" / "s_2024-05-01.tif").exists()
    resumed = subprocess.run([sys.executable, "-m", "s2mosaic.cli", "series", str(spec_file),
                              "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr
    report = json.loads((tmp_path / "k" / "s.report.json").read_text())
    assert report["kind"] == "series" and report["tiles"]["resumed"] >= killed_at
    assert report["tiles"]["resumed"] + report["tiles"]["computed"] == 9
    clean = _spec(demo_catalog, tmp_path / "c", tile=32)
    run_series(clean)
    _assert_same_store(store, tmp_path / "c" / "s.zarr")
    for day in ("2024-05-01", "2024-05-21"):
        assert (tmp_path / "k" / f"s_{day}.tif").read_bytes() == \
            (tmp_path / "c" / f"s_{day}.tif").read_bytes(), day


def test_gapfill_killed_mid_run_resumes_byte_identical(demo_catalog: Path, tmp_path: Path) -> None:
    """The same for `s2mosaic gapfill --normalise`: the resumed process takes the illuminance
    from the manifest header and ends with the bytes of an uninterrupted run."""
    def spec(out: Path) -> MosaicSpec:
        return _spec(demo_catalog, out, series={}, period=["2024-05-01", "2024-05-31"],
                     runtime={"chunks": 32, "tile_size": 32, "scheduler": "synchronous",
                              "max_tiles_in_flight": 1},
                     output={"zarr": out / "g.zarr"})

    args = ["--duration", "16", "--step", "3", "--normalise"]
    spec_file = tmp_path / "k.yaml"
    spec(tmp_path / "k").to_yaml(spec_file)
    store = tmp_path / "k" / "g.zarr"
    assert kill_after_tiles(["gapfill", str(spec_file), *args], store, 2) == 2
    resumed = subprocess.run([sys.executable, "-m", "s2mosaic.cli", "gapfill", str(spec_file),
                              *args, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "k" / "g.report.json").read_text())
    assert report["kind"] == "gapfill" and report["tiles"]["resumed"] == 2
    assert report["tiles"]["resumed"] + report["tiles"]["computed"] == report["tiles"]["total"] > 2
    run_gapfill(spec(tmp_path / "c"), GapFill(duration=16, step=3, normalise=True))
    _assert_same_store(store, tmp_path / "c" / "g.zarr")
