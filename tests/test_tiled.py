"""Large-region runs: tiles into one Zarr store, manifest, resume after any failure, exports.

Real components throughout: a real ``distributed`` LocalCluster (worker processes, one killed
mid-run), a real SIGKILL of a whole ``s2mosaic run`` process group, real Zarr stores compared
byte for byte, GeoTIFFs and a VRT read back through GDAL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr

import s2mosaic
from s2mosaic._grid import pad_geobox, tiles
from s2mosaic._manifest import Manifest
from s2mosaic._pipeline import mosaic
from s2mosaic._spec import MosaicSpec, RuntimeSpec
from s2mosaic.demo import DEMO_AOI_BBOX, demo_spec
from s2mosaic.errors import RunError, SpecError, WriteError

from .killing import kill_after_tiles, manifest_tiles
from .oracle import assert_identical_outputs

BANDS = ["red", "green", "blue", "nir", "count"]


def _spec(catalog: Path, out: Path, *, tile: int = 128, chunks: int = 64, scheduler: str | None
          = "synchronous", **kw: Any) -> MosaicSpec:
    spec = demo_spec(catalog, out)
    rt: dict[str, Any] = {"chunks": chunks, "tile_size": tile, "scheduler": scheduler}
    rt.update(kw.pop("runtime", {}))
    return spec.replace(runtime=rt, output={"zarr": out / "m.zarr", "cog": out / "m.tif"},
                        **kw)


@pytest.fixture(scope="module")
def clean(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, MosaicSpec]:
    """Uninterrupted runs to compare with, by tile size (64: 32 tiles, 128: 8 tiles)."""
    out = {}
    for tile in (64, 128):
        spec = _spec(demo_catalog, tmp_path_factory.mktemp(f"clean{tile}"), tile=tile, chunks=64)
        s2mosaic.run(spec)
        out[tile] = spec
    return out


def _values(store: Path) -> dict[str, np.ndarray]:
    z = xr.open_zarr(store, mask_and_scale=False)
    return {n: z[n].values for n in BANDS}


# -- the grid of tiles ------------------------------------------------------------------------
def test_tiles_partition_the_grid_on_chunk_boundaries(demo_catalog: Path, tmp_path: Path) -> None:
    from s2mosaic._grid import output_geobox

    gbox = output_geobox(_spec(demo_catalog, tmp_path))
    ts = tiles(gbox, 128)
    cover = np.zeros(gbox.shape.yx, int)
    for t in ts:
        cover[t.y, t.x] += 1
        assert t.y.start % 128 == 0 and t.x.start % 128 == 0
        assert t.geobox == gbox[t.y, t.x]
    assert (cover == 1).all()
    assert [t.key for t in ts][:3] == ["0_0", "0_1", "0_2"]
    padded = pad_geobox(ts[0].geobox, (3, 5))
    assert padded.shape.yx == (ts[0].geobox.shape.y + 6, ts[0].geobox.shape.x + 10)
    assert padded[3:-3, 5:-5] == ts[0].geobox


@pytest.mark.parametrize("field,value,hint", [
    ("tile_size", 100, "multiple of runtime.chunks (64)"),
    ("tile_size", 0, ">= 1"),
    ("max_tiles_in_flight", 0, ">= 1"),
    ("retries", -1, ">= 0"),
    ("retries", 1.5, "integer"),
])
def test_runtime_tiling_fields_are_validated(field: str, value: Any, hint: str) -> None:
    with pytest.raises(SpecError, match=field) as e:
        RuntimeSpec(chunks=64, **{field: value})
    assert hint in str(e.value) and repr(value) in str(e.value)


def test_default_tile_size_is_the_chunk_multiple_nearest_2048() -> None:
    assert RuntimeSpec().tile_pixels == 2048
    assert RuntimeSpec(chunks=1500).tile_pixels == 1500
    assert RuntimeSpec(chunks=700).tile_pixels == 2100
    assert RuntimeSpec(chunks=64, tile_size=192).tile_pixels == 192


# -- tiled = one graph ------------------------------------------------------------------------
def test_tiled_run_equals_the_single_graph_mosaic(demo_catalog: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Both zones, both tiles of the demo: tiles aligned with the chunks change nothing."""
    from s2mosaic._run import MosaicProduct

    builds = []
    real = MosaicProduct.build
    monkeypatch.setattr(MosaicProduct, "build",
                        lambda self, items, box: builds.append(box) or real(self, items, box))
    spec = _spec(demo_catalog, tmp_path, tile=128, chunks=64)
    report = s2mosaic.run(spec)
    assert report.tiles["total"] == report.tiles["computed"] == 8  # 241×462 px in 128² tiles
    # One graph per tile: the store's template was built from the first tile's, reused there.
    assert len(builds) == 8 and len({tuple(b.boundingbox) for b in builds}) == 8
    got = _values(tmp_path / "m.zarr")
    whole = mosaic(spec).compute(scheduler="synchronous")
    for n in BANDS:
        np.testing.assert_array_equal(got[n], whole[n].values, err_msg=n)
    assert (got["count"] > 0).mean() > 0.85  # the rest lies outside the AOI polygon
    # The manifest recorded each tile with the digest of what is in the store.
    done = Manifest(tmp_path / "m.zarr").finished()
    assert sorted(done) == sorted(t.key for t in tiles(whole.odc.geobox, 128))
    assert all(r.status == "done" and r.items > 0 for r in done.values())
    assert sum(r.chunks for r in done.values()) == 4 * 8 * len(BANDS)  # 241×462 in 64² chunks
    rep = json.loads((tmp_path / "m.report.json").read_text())
    assert rep["status"] == "complete" and rep["tiles"]["computed"] == 8
    assert rep["bytes_written"] > 0 and rep["max_tasks_in_flight"] > 0
    meta = json.loads((tmp_path / "m.metadata.json").read_text())
    assert meta["tiling"]["tile_size"] == 128 and meta["observations"] == 12


@pytest.mark.parametrize("mask", [{"dilation": 3}, {"buffer_m": 45}])
def test_tile_margins_make_buffers_exact_across_tile_edges(demo_catalog: Path, tmp_path: Path,
                                                           mask: dict[str, Any]) -> None:
    """Each tile is computed with the margin its mask buffer needs, then cropped.

    One zone (source grid = output grid), where reads do not depend on the window: across
    zones GDAL's approximate warp transformer (0.125 px error) can move a nearest pick by one
    source pixel when a window moves, so there tiled and single-graph runs agree to within
    such picks, not bit for bit.
    """
    from .test_demo_pipeline import _single_tile_aoi

    spec = _spec(demo_catalog, tmp_path, tile=32, chunks=32).replace(
        aoi=_single_tile_aoi(demo_catalog), mask={"method": "scl", **mask})
    report = s2mosaic.run(spec)
    assert report.tiles["total"] >= 9
    got = _values(tmp_path / "m.zarr")
    whole = mosaic(spec).compute(scheduler="synchronous")
    for n in BANDS:
        np.testing.assert_array_equal(got[n], whole[n].values, err_msg=n)
    unbuffered = mosaic(spec.replace(mask={"method": "scl"})).compute(scheduler="synchronous")
    assert (unbuffered["count"].values > got["count"]).any()  # the buffer did mask more


def test_tiles_outside_the_aoi_are_written_as_nodata(demo_catalog: Path, tmp_path: Path) -> None:
    w, s, e, n = DEMO_AOI_BBOX
    triangle = shapely.Polygon([(w, s), (e, s), (w, n)])  # the NE corner tiles hold no AOI pixel
    spec = _spec(demo_catalog, tmp_path, tile=64, chunks=64).replace(
        aoi=shapely.geometry.mapping(triangle))
    report = s2mosaic.run(spec)
    done = Manifest(tmp_path / "m.zarr").finished()
    empty = [k for k, r in done.items() if r.status == "empty"]
    assert empty and report.tiles["empty"] == len(empty)
    assert len(done) == report.tiles["total"]
    got = _values(tmp_path / "m.zarr")
    by_key = {t.key: t for t in tiles(xr.open_zarr(tmp_path / "m.zarr").odc.geobox, 64)}
    for k in empty:
        t = by_key[k]
        assert not got["count"][t.y, t.x].any() and not got["red"][t.y, t.x].any()
    # Written, not skipped: every chunk of every variable is in the store.
    chunks = [p for p in (tmp_path / "m.zarr" / "count").iterdir() if not p.name.startswith(".")]
    assert len(chunks) == len(done)


def test_cog_only_runs_use_a_hidden_store_and_remove_it(demo_catalog: Path, tmp_path: Path) -> None:
    spec = _spec(demo_catalog, tmp_path).replace(output={"cog": tmp_path / "only.tif"})
    report = s2mosaic.run(spec)
    assert report.outputs["zarr"] is None and (tmp_path / "only.tif").exists()
    assert not list(tmp_path.glob(".*.zarr")) and report.bytes_written
    with rasterio.open(tmp_path / "only.tif") as src:
        assert src.count == 5 and src.descriptions == tuple(BANDS)


# -- resume -----------------------------------------------------------------------------------
def test_resume_refuses_another_spec_and_existing_outputs(demo_catalog: Path, tmp_path: Path) -> None:
    spec = _spec(demo_catalog, tmp_path)
    s2mosaic.run(spec)
    with pytest.raises(WriteError, match=r"already exists.*--resume"):
        s2mosaic.run(spec)
    other = spec.replace(composite={"method": "percentile", "percentile": 50})
    with pytest.raises(WriteError, match=r"different spec.*composite\.percentile: 25\.0 -> 50"):
        s2mosaic.run(other, resume=True)
    with pytest.raises(WriteError, match="exclude each other"):
        s2mosaic.run(spec.replace(output=dataclasses.replace(spec.output, overwrite=True)),
                     resume=True)
    # Only outputs and scheduling may differ: a resumed finished run recomputes nothing.
    again = s2mosaic.run(spec.replace(runtime=dataclasses.replace(spec.runtime, scheduler="threads")),
                         resume=True)
    assert again.tiles["computed"] == 0 and again.tiles["resumed"] == again.tiles["total"]
    # The same spec into another store starts from scratch there: stores never mix.
    moved = spec.replace(output={"zarr": tmp_path / "b" / "m.zarr"})
    fresh = s2mosaic.run(moved, resume=True)
    assert fresh.tiles["resumed"] == 0 and fresh.tiles["computed"] == fresh.tiles["total"]
    a, b = _values(tmp_path / "m.zarr"), _values(tmp_path / "b" / "m.zarr")
    for n in BANDS:
        np.testing.assert_array_equal(a[n], b[n])


def test_damaged_tile_is_detected_and_redone(demo_catalog: Path, tmp_path: Path,
                                             clean: dict[int, MosaicSpec]) -> None:
    spec = _spec(demo_catalog, tmp_path / "hurt")
    s2mosaic.run(spec)
    red = tmp_path / "hurt" / "m.zarr" / "red"
    (red / "1.2").write_bytes((red / "1.2").read_bytes()[:-7])  # torn: unreadable (tile 0_1)
    (red / "2.6").write_bytes((red / "2.5").read_bytes())  # readable, wrong pixels (tile 1_3)
    with pytest.warns(UserWarning, match="does not match the digest") as seen:
        report = s2mosaic.run(spec, resume=True)
    assert sorted(str(w.message).split()[1] for w in seen if "digest" in str(w.message)) == \
        ["0_1", "1_3"]
    assert report.tiles["computed"] == 2 and report.tiles["resumed"] == report.tiles["total"] - 2
    assert_identical_outputs(clean[128].output, spec.output)


def test_failed_tiles_leave_the_rest_written_and_resume_finishes(
        demo_catalog: Path, tmp_path: Path, clean: dict[int, MosaicSpec]) -> None:
    """Under ``on_read_error: fail``, a scene file that cannot be read fails the tiles that need
    it after their retries; the other tiles are written, and once the file is back a resumed
    run is byte-identical. (The default, ``skip``: tests/test_dropped.py.)"""
    catalog = tmp_path / "catalog"
    shutil.copytree(demo_catalog.parent, catalog)
    victim = next((catalog / "sentinel-2-l2a").glob("S2B_33TTN_20240522*/B04.tif"))
    saved = victim.read_bytes()
    victim.write_bytes(b"not a tiff")
    spec = _spec(catalog / "catalog.json", tmp_path / "run", runtime={"retries": 1, "read_backoff_s": 0.05,
                                                                "on_read_error": "fail"})
    with pytest.raises(RunError, match=r"tile\(s\) failed after 1 retries.*--resume") as e:
        s2mosaic.run(spec)
    report = e.value.report
    assert isinstance(report, s2mosaic.RunReport) and report.status == "failed"
    assert report.tiles["failed"] == len(report.failed_tiles) > 0
    assert report.tiles["retried"] == report.tiles["failed"]
    assert report.tiles["computed"] > 0  # the tiles west of the 33TTN footprint
    assert f"could not read {victim}" in next(iter(report.failed_tiles.values()))
    assert json.loads((tmp_path / "run" / "m.report.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "m.tif").exists()
    victim.write_bytes(saved)
    done = s2mosaic.run(spec, resume=True)
    assert done.tiles["computed"] == report.tiles["failed"]
    assert done.tiles["resumed"] == report.tiles["computed"]
    assert_identical_outputs(clean[128].output, spec.output)




def test_sigkill_of_the_whole_run_then_resume_is_byte_identical(
        demo_catalog: Path, tmp_path: Path, clean: dict[int, MosaicSpec]) -> None:
    """SIGKILL the CLI process group (client, scheduler, worker processes) part-way."""
    spec = _spec(demo_catalog, tmp_path / "killed", tile=64, chunks=64, scheduler=None,
                 runtime={"n_workers": 1, "threads_per_worker": 1, "max_tiles_in_flight": 1})
    spec_file = tmp_path / "killed.yaml"
    spec.to_yaml(spec_file)
    store = tmp_path / "killed" / "m.zarr"
    killed_at = kill_after_tiles(["run", str(spec_file)], store, 3)
    total = len(tiles(xr.open_zarr(store).odc.geobox, 64))
    assert killed_at == 3 < total, (killed_at, total)
    resumed = subprocess.run([sys.executable, "-m", "s2mosaic.cli", "run", str(spec_file),
                              "--resume", "--scheduler", "synchronous"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr
    report = json.loads((tmp_path / "killed" / "m.report.json").read_text())
    assert report["tiles"]["resumed"] >= killed_at
    assert report["tiles"]["resumed"] + report["tiles"]["computed"] == total
    assert_identical_outputs(clean[64].output, spec.output)


def test_a_worker_killed_mid_run_changes_nothing(demo_catalog: Path, tmp_path: Path,
                                                 clean: dict[int, MosaicSpec]) -> None:
    from distributed import Client, LocalCluster

    spec = _spec(demo_catalog, tmp_path / "hit", tile=64, chunks=64, scheduler=None,
                 runtime={"max_tiles_in_flight": 2})
    store = tmp_path / "hit" / "m.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      ) as cluster, Client(cluster, set_as_default=False) as client:
        killed: list[str] = []

        def kill_one() -> None:
            while manifest_tiles(store) < 2:
                time.sleep(0.02)
            victim = sorted(client.scheduler_info()["workers"])[0]
            killed.append(victim)
            with contextlib.suppress(Exception):  # the worker dies before it can answer
                client.run(os._exit, 1, workers=[victim], wait=False)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        report = s2mosaic.run(spec, client=client)
        killer.join(timeout=30)
    assert killed, "no worker was killed"
    assert report.status == "complete" and report.tiles["failed"] == 0
    assert report.tiles["computed"] == report.tiles["total"]
    assert_identical_outputs(clean[64].output, spec.output)


# -- exports -----------------------------------------------------------------------------------
def test_export_tiles_vrt_reads_back_as_the_store(demo_catalog: Path, tmp_path: Path) -> None:
    spec = _spec(demo_catalog, tmp_path)
    s2mosaic.run(spec)
    vrt = s2mosaic.export_tiles(tmp_path / "m.zarr", tmp_path / "tiles", 256)
    tifs = sorted((tmp_path / "tiles").glob("*.tif"))
    assert [p.name for p in tifs] == ["0_0.tif", "0_1.tif"]
    got = _values(tmp_path / "m.zarr")
    with rasterio.open(vrt) as src, rasterio.open(tmp_path / "m.tif") as cog:
        assert src.crs == cog.crs and src.transform == cog.transform
        assert src.descriptions == tuple(BANDS) and src.nodatavals[0] == 0
        for i, n in enumerate(BANDS, start=1):
            np.testing.assert_array_equal(src.read(i), got[n], err_msg=n)
    with rasterio.open(tifs[1]) as t:
        assert t.overviews(1) or min(t.shape) < 512
    with pytest.raises(WriteError, match="already exists"):
        s2mosaic.export_tiles(tmp_path / "m.zarr", tmp_path / "tiles", 256)
