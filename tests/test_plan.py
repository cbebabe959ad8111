"""`s2mosaic._plan`: the estimates against a real run of the demo (bytes read through
``/proc/self/io``, sizes on disk), remote items sized from their metadata without network, the
time/cost model and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pystac
import pytest
import shapely.geometry
from typer.testing import CliRunner

from s2mosaic import plan, run, search
from s2mosaic._plan import SENTINEL2MOSAICS_GB, THROUGHPUT
from s2mosaic._profile import packaged_profile
from s2mosaic._spec import MosaicSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.25


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def spec(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> MosaicSpec:
    s = demo_spec(demo_catalog, tmp_path_factory.mktemp("plan-out"))
    return s.replace(runtime=dataclasses.replace(s.runtime, scheduler="synchronous"))


def _measured_run(spec: MosaicSpec) -> int:
    before = _rchar()
    run(spec)
    return _rchar() - before


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_plan_estimates_match_a_real_run(spec: MosaicSpec, tmp_path: Path) -> None:
    """Bytes read and sizes on disk within 25 % of an in-process run (synchronous scheduler,
    so every read shows in this process's rchar)."""
    out = tmp_path
    warm = spec.replace(select={"method": "min-cover"},
                        output=dataclasses.replace(spec.output, zarr=out / "w.zarr",
                                                   cog=out / "w.tif", rgb=out / "w.png"))
    run(warm)  # imports, Numba's cache, PROJ's database: read once per process, not per run
    cover = {"method": "min-cover", "max_observations": 2}
    # Tiles whose mask margin (dilation) makes each tile read its neighbours' edge chunks: a
    # plan that forgot the margin was 15-24 % low here, so this case is held to 10 %.
    margins = spec.replace(select=cover, mask=dataclasses.replace(spec.mask, dilation=2),
                           runtime=dataclasses.replace(spec.runtime, chunks=64, tile_size=128))
    # Files opened per chunk read (runtime.keep_open: off) read the blocks chunks share again.
    reopen = spec.replace(runtime=dataclasses.replace(spec.runtime, keep_open="off"))
    plans = {}
    for name, s, tolerance in (("all", spec, TOLERANCE),
                               ("min-cover", spec.replace(select=cover), TOLERANCE),
                               ("margins", margins, 0.10),
                               ("reopen", reopen, TOLERANCE)):
        s = s.replace(output=dataclasses.replace(s.output, zarr=out / f"{name}.zarr",
                                                 cog=out / f"{name}.tif", rgb=out / f"{name}.png"))
        p = plans[name] = plan(s)
        read = _measured_run(s)
        assert p.read["sources"]["cog-header"] == p.read["assets"] > 0
        assert abs(p.bytes_to_read - read) <= tolerance * read, (name, p.read, read)
        for fmt in ("zarr", "cog", "rgb"):
            real = _disk(getattr(s.output, fmt))
            assert abs(p.output_bytes[fmt] - real) <= TOLERANCE * real, (name, fmt, p.output_bytes,
                                                                        real)
    assert plans["reopen"].bytes_to_read > 1.2 * plans["all"].bytes_to_read
    # The selection reads a fraction of what all scenes need; staging everything reads it all.
    p_all, p_sel = plan(spec), plans["min-cover"]
    assert p_sel.scenes["selected"] == 4 and p_all.scenes["selected"] == 24
    assert p_sel.bytes_to_read < p_all.bytes_to_read / 4
    assert p_all.download_everything["bytes"] == p_sel.download_everything["bytes"]


def test_plan_counts_and_json(spec: MosaicSpec) -> None:
    p = plan(spec.replace(select={"method": "min-cover"}))
    assert p.scenes == {"found": 25, "filtered": 0, "duplicates": 1, "after_dedupe": 24,
                        "selected": 2}
    assert p.tiles == {"32TQT": {"after_dedupe": 12, "selected": 1},
                       "33TTN": {"after_dedupe": 12, "selected": 1}}
    assert p.coverage == 1.0
    # 0.06° × 0.02° at 47.5°N: 4.51 km × 2.22 km.
    assert p.aoi_km2 == pytest.approx(10.05, rel=0.01)
    assert p.grid["shape"] == [241, 462] and p.grid["observations"] == 1
    days = 61
    assert p.download_everything["sentinel2mosaics_bytes"] == pytest.approx(
        p.aoi_km2 * 0.386102 * days * SENTINEL2MOSAICS_GB * 1e9, rel=1e-6)
    d = json.loads(p.to_json())
    assert d["read"]["bytes"] == p.bytes_to_read
    assert set(d["output_bytes"]) == {"zarr", "cog", "rgb"}


def test_plan_time_and_cost_model(spec: MosaicSpec) -> None:
    one = plan(spec, cores=1, cost_per_core_hour=0.10)
    eight = plan(spec, cores=8, cost_per_core_hour=0.10)
    t = one.time
    expected = (one.read["source_bytes"] / (THROUGHPUT.read_mb_s_per_core * 1e6)
                + 12 * 241 * 462 * 4 / (THROUGHPUT.reduce_gobs_s_per_core * 1e9))
    # compute_s and wall_s are rounded to 3 decimals: abs=5e-4 on top of the relative check
    assert t["compute_s"] == pytest.approx(expected, rel=1e-3, abs=5e-4)
    assert eight.time["compute_s"] == pytest.approx(expected / 8, rel=1e-3, abs=5e-4)
    assert t["wall_s"] == pytest.approx(THROUGHPUT.startup_s + expected, rel=1e-3, abs=5e-4)
    assert t["cost"] == pytest.approx(t["core_hours"] * 0.10, rel=1e-3)
    # A cluster profile sizes the estimate: slurm-cpu.yaml adapts up to its maximum jobs.
    slurm = plan(spec, cluster=packaged_profile("slurm-cpu"))
    from s2mosaic._profile import load_profile

    prof = load_profile(packaged_profile("slurm-cpu"))
    jobs = prof.jobs or (prof.adapt[1] if prof.adapt else 1)
    assert slurm.time["cores"] == int(prof.options["cores"]) * jobs
    with pytest.raises(SpecError, match="cost_per_core_hour"):
        plan(spec, cost_per_core_hour=-1)
    with pytest.raises(SpecError, match="cores"):
        plan(spec, cores=0)


def test_plan_remote_items_from_metadata_only(s2_data: Path) -> None:
    """Earth Search items (remote hrefs): sized from ``file:size`` (collection 1) or the
    per-pixel estimate, without any network access (the test blocks it)."""
    data = json.loads((s2_data / "stac_examples" /
                       "earth-search_sentinel-2-c1-l2a_2025-07-31_utm20-24.json").read_text())
    items = list(pystac.ItemCollection.from_dict(data))
    item = next(i for i in items if "24MWV" in i.id)
    c = shapely.geometry.shape(item.geometry).centroid
    spec = MosaicSpec(aoi=[c.x - 0.05, c.y - 0.05, c.x + 0.05, c.y + 0.05],
                      period=["2025-07-31", "2025-07-31"],
                      source={"stac": "unused.json", "collection": "sentinel-2-c1-l2a"},
                      output={"zarr": "out.zarr"})
    mine = [i for i in items if shapely.geometry.shape(i.geometry).intersects(spec.aoi.geometry)]
    p = plan(spec, mine)
    assert p.read["sources"]["asset-size"] == p.read["assets"] > 0
    assert any("remote asset" in w for w in p.warnings)
    keys = ["red", "green", "blue", "nir", "scl"]
    assert p.download_everything["bytes"] == sum(i.assets[k].extra_fields["file:size"]
                                                 for i in mine for k in keys)
    # A 0.1° AOI of a 110 km tile: a small share of the files.
    assert 0 < p.bytes_to_read < p.download_everything["bytes"] / 4
    # The older collection has no file:size: the per-pixel estimate takes over.
    old = json.loads((s2_data / "stac_examples" /
                      "earth-search_sentinel-2-l2a_2025-07-31_utm20-24.json").read_text())
    old_items = [i for i in pystac.ItemCollection.from_dict(old)
                 if shapely.geometry.shape(i.geometry).intersects(spec.aoi.geometry)]
    q = plan(spec.replace(source={"stac": "unused.json", "collection": "sentinel-2-l2a"}),
             old_items)
    assert q.read["sources"]["estimate"] == q.read["assets"] > 0
    assert q.download_everything["bytes"] > 0 and math.isfinite(q.time["wall_s"])


def test_plan_cli_table_and_json(spec: MosaicSpec, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    spec.replace(select={"method": "min-cover"}).to_yaml(path)
    runner = CliRunner()
    res = runner.invoke(app, ["plan", str(path), "--json", "--cores", "4"])
    assert res.exit_code == 0, res.output
    d: dict[str, Any] = json.loads(res.output)
    assert d["scenes"]["selected"] == 2 and d["time"]["cores"] == 4
    res = runner.invoke(app, ["plan", str(path), "--cost-per-core-hour", "0.05"])
    assert res.exit_code == 0, res.output
    for needle in ("bytes to read", "download everything", "2 selected", "wall time", "cost"):
        assert needle in res.output
    res = runner.invoke(app, ["plan", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot be read" in res.output


def test_plan_of_empty_search(spec: MosaicSpec) -> None:
    p = plan(spec, search(spec.replace(period=["2023-01-01", "2023-01-31"]), allow_empty=True))
    assert p.scenes["selected"] == 0 and p.bytes_to_read == 0
    assert any("no scenes" in w for w in p.warnings)
