"""Mask-first reads (``runtime.prune_dates``): the same bytes, fewer band reads.

A copy of the demo catalog made cloudier: three dates fully cloudy in SCL, one more cloudy on
one MGRS tile only, and the north third of ``32TQT`` cloudy on every date (chunks there have no
clear date at all, so their bands are never read). Runs with pruning ``auto`` and ``off`` must
write byte-identical stores for every composite method, synchronously and on a real
``distributed`` LocalCluster; a counting reader shows the cloudy dates' bands were not read and
SCL was read no more often. The per-chunk test itself is checked against NumPy.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr

import s2mosaic
from s2mosaic._readers import AssetRioReader
from s2mosaic._spec import COMPOSITE_METHODS, MosaicSpec, RuntimeSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError

from .oracle import assert_identical_outputs

#: Dates (``YYYYMMDD`` in the item ids) whose SCL is all cloud on both tiles.
CLOUDY_DATES = ("20240507", "20240522", "20240606")
#: A date cloudy on the ``33TTN`` tile only.
HALF_CLOUDY = ("20240616", "33TTN")


def _cloud(path: Path, rows: slice = slice(None)) -> None:
    """Set the SCL COG at ``path`` to high-probability cloud (9) in ``rows``, nodata kept."""
    with rasterio.open(path) as src:
        profile, scl = src.profile, src.read(1)
    part = scl[rows]
    part[part != 0] = 9
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scl, 1)


@pytest.fixture(scope="module")
def cloudy_catalog(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cloudy") / "catalog"
    shutil.copytree(demo_catalog.parent, root)
    scls = sorted(root.rglob("SCL.tif"))
    assert scls
    for path in scls:
        name = path.parent.name
        if any(d in name for d in CLOUDY_DATES) or all(s in name for s in HALF_CLOUDY):
            _cloud(path)
        elif "32TQT" in name:
            _cloud(path, slice(0, path_rows(path) // 3))
    return root / demo_catalog.name


def path_rows(path: Path) -> int:
    with rasterio.open(path) as src:
        return int(src.height)


def _spec(catalog: Path, out: Path, prune: str, **kw: Any) -> MosaicSpec:
    """Chunks of 128 px; the runs' tiles hold 2 × 2 of them (the demo's 241 × 462 px grid:
    2 × 4 chunks, 1 × 2 tiles)."""
    rt = {"chunks": 128, "tile_size": 256, "scheduler": "synchronous", "prune_dates": prune}
    rt |= kw.pop("runtime", {})
    kw.setdefault("mask", {"method": "scl"})
    return demo_spec(catalog, out).replace(
        runtime=rt, output={"zarr": out / "m.zarr", "cog": out / "m.tif"}, **kw)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Asset reads by file name (``B04.tif``, ``SCL.tif``) and item folder, in this process."""
    seen: Counter[str] = Counter()
    real = AssetRioReader.read

    def counting(self: AssetRioReader, *a: Any, **kw: Any) -> Any:
        uri = Path(str(self._src.uri))
        seen[f"{uri.parent.name}/{uri.name}"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(AssetRioReader, "read", counting)
    return seen


def _band_reads(n: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in n.items() if not k.endswith("SCL.tif")}


def test_pruned_mosaic_is_byte_identical_for_every_method(cloudy_catalog: Path, tmp_path: Path,
                                                           reads: Counter[str]) -> None:
    """Every composite method: the lazy mosaics (chunks of 128 px) of all six computed together,
    synchronously, so each setting reads its chunks once."""
    from s2mosaic._pipeline import mosaic

    got, seen = {}, {}
    for prune in ("off", "auto"):
        spec = _spec(cloudy_catalog, tmp_path, prune)
        reads.clear()
        with dask.config.set(scheduler="synchronous"):
            got[prune] = dask.compute(*[mosaic(spec.replace(composite={"method": m}))
                                        for m in COMPOSITE_METHODS])
        seen[prune] = Counter(reads)
    for method, a, b in zip(COMPOSITE_METHODS, got["off"], got["auto"], strict=True):
        assert list(a.data_vars) == list(b.data_vars)
        for name in a.data_vars:
            assert a[name].dtype == b[name].dtype, (method, name)
            assert np.array_equal(a[name].values, b[name].values), (method, name)
    bands, bands_off = _band_reads(seen["auto"]), _band_reads(seen["off"])
    # The fully cloudy dates' bands were never read; the others' were, fewer times.
    assert any(d in k for k in bands_off for d in CLOUDY_DATES)
    assert not any(d in k for k in bands for d in CLOUDY_DATES)
    assert sum(bands.values()) < sum(bands_off.values())
    # SCL was read as often as without pruning (once per chunk and item).
    scl = {k: v for k, v in seen["auto"].items() if k.endswith("SCL.tif")}
    assert scl == {k: v for k, v in seen["off"].items() if k.endswith("SCL.tif")}


def test_pruned_run_is_byte_identical(cloudy_catalog: Path, tmp_path: Path,
                                      reads: Counter[str]) -> None:
    """The tiled run: Zarr and COG byte for byte, the same report, fewer band reads."""
    runs = {}
    for prune in ("off", "auto"):
        spec = _spec(cloudy_catalog, tmp_path / prune, prune)
        reads.clear()
        report = s2mosaic.run(spec)
        runs[prune] = (spec, report, Counter(reads))
    (off, r_off, n_off), (auto, r_auto, n_auto) = runs["off"], runs["auto"]
    assert_identical_outputs(off.output, auto.output)
    assert r_off.tiles == r_auto.tiles and r_off.observations == r_auto.observations
    assert sum(_band_reads(n_auto).values()) < sum(_band_reads(n_off).values())


def test_pruned_series_is_byte_identical(cloudy_catalog: Path, tmp_path: Path,
                                         reads: Counter[str]) -> None:
    """A series' periods are composites too: the same bytes, fewer band reads (one cube shared
    by the periods, and min-cover picks per period)."""
    from s2mosaic._timeseries import series

    for select in ("all", "min-cover"):
        got, bands = {}, {}
        for prune in ("off", "auto"):
            spec = _spec(cloudy_catalog, tmp_path, prune, series={"periods": "every 10 days"},
                         select={"method": select})
            reads.clear()
            with dask.config.set(scheduler="synchronous"):
                got[prune] = series(spec).compute()
            bands[prune] = sum(_band_reads(reads).values())
        assert got["off"].sizes["time"] > 1
        for name in got["off"].data_vars:
            assert np.array_equal(got["off"][name].values, got["auto"][name].values), name
        assert bands["auto"] < bands["off"], select


def test_pruned_run_is_byte_identical_on_a_cluster(cloudy_catalog: Path, tmp_path: Path,
                                                   dask_client: Any) -> None:
    specs = [_spec(cloudy_catalog, tmp_path / p, p, mask={"method": "scl", "dilation": 2},
                   composite={"method": "first"}) for p in ("off", "auto")]
    reports = [s2mosaic.run(s, client=dask_client) for s in specs]
    assert_identical_outputs(specs[0].output, specs[1].output)
    assert reports[0].tiles == reports[1].tiles


def test_pruning_is_off_for_other_masks_and_when_asked(cloudy_catalog: Path, tmp_path: Path,
                                                       reads: Counter[str]) -> None:
    from s2mosaic._pipeline import scl_gate
    from s2mosaic._prune import prunes
    from s2mosaic.masks import scl_invalid

    spec = _spec(cloudy_catalog, tmp_path, "auto")
    assert prunes(spec)
    gate = scl_gate(spec)
    assert isinstance(gate, functools.partial)
    assert gate.func is scl_invalid and gate.keywords == {"classes": tuple(spec.mask.scl_classes)}
    assert not prunes(spec.replace(runtime=dataclasses.replace(spec.runtime, prune_dates="off")))
    assert not prunes(spec.replace(mask={"method": "ocm+scl"}))
    assert scl_gate(spec.replace(mask={"method": "ocm+scl"})) is None
    assert not prunes(spec.replace(runtime=dataclasses.replace(spec.runtime, loader="stackstac")))
    with pytest.raises(SpecError, match=r"prune_dates.*'auto', 'off'"):
        RuntimeSpec(prune_dates="on")


def test_resume_after_a_partial_pruned_run(cloudy_catalog: Path, tmp_path: Path) -> None:
    """A store begun without pruning is finished with it (and vice versa): the setting may
    change on resume, and the result is the uninterrupted run's."""
    from s2mosaic._manifest import Manifest

    clean = _spec(cloudy_catalog, tmp_path / "clean", "off")
    s2mosaic.run(clean)
    spec = _spec(cloudy_catalog, tmp_path / "resumed", "off")
    s2mosaic.run(spec)
    # Forget half the tiles, as a run killed half way would have left the manifest.
    store = tmp_path / "resumed" / "m.zarr"
    log = store / "s2mosaic_run" / "manifest.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
    done = len(Manifest(store).finished())
    again = s2mosaic.run(spec.replace(runtime=dataclasses.replace(spec.runtime, prune_dates="auto")),
                         resume=True)
    assert again.tiles["resumed"] == done and again.tiles["computed"] == again.tiles["total"] - done
    assert 0 < done < again.tiles["total"]
    assert_identical_outputs(clean.output, spec.output)


def test_an_unreadable_scl_is_dropped_as_without_pruning(cloudy_catalog: Path,
                                                         tmp_path: Path) -> None:
    """The pre-pass meets the missing SCL first: the tile is built unpruned, its reads fail,
    and the retries and scene drops (``on_read_error: skip``) go as they do without pruning."""
    root = tmp_path / "catalog"
    shutil.copytree(cloudy_catalog.parent, root)
    (scl,) = [p for p in root.rglob("SCL.tif") if "20240502" in p.parent.name
              and "33TTN" in p.parent.name]
    scl.unlink()
    runs = []
    for prune in ("off", "auto"):
        spec = _spec(root / cloudy_catalog.name, tmp_path / prune, prune,
                     runtime={"retries": 0})
        runs.append((spec, s2mosaic.run(spec)))
    (off, r_off), (auto, r_auto) = runs
    assert r_off.status == r_auto.status == "degraded"
    assert r_off.tiles == r_auto.tiles and r_off.scenes_dropped == r_auto.scenes_dropped
    assert_identical_outputs(off.output, auto.output)


def test_a_broken_band_of_a_pruned_date_is_never_read(cloudy_catalog: Path,
                                                      tmp_path: Path) -> None:
    """The one difference pruning makes: a band asset that cannot be read, of a date with no
    clear pixel, is not read, so the tile completes instead of dropping that scene (which
    would have added nothing to it). The pixels are the same either way."""
    root = tmp_path / "catalog"
    shutil.copytree(cloudy_catalog.parent, root)
    (b04,) = [p for p in root.rglob("B04.tif") if CLOUDY_DATES[0] in p.parent.name
              and "33TTN" in p.parent.name]
    b04.unlink()
    runs = []
    for prune in ("off", "auto"):
        spec = _spec(root / cloudy_catalog.name, tmp_path / prune, prune, runtime={"retries": 0})
        runs.append((spec, s2mosaic.run(spec)))
    (off, r_off), (auto, r_auto) = runs
    assert r_off.status == "degraded" and r_off.scenes_dropped
    assert r_auto.status == "complete" and not r_auto.scenes_dropped
    assert_identical_outputs(off.output, auto.output)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_clear_per_chunk_is_numpys_any_per_block(dtype: str) -> None:
    """One ``(time, 1, 1)`` block per spatial chunk: any pixel whose class is not masked, not
    SCL nodata (0, or NaN for float SCL) and inside the AOI - chunk edges not on the grid's."""
    from s2mosaic._prune import clear_per_chunk
    from s2mosaic.masks import scl_invalid

    rng = np.random.default_rng(3)
    scl = rng.choice(np.array([0, 4, 5, 8, 9], dtype=dtype), size=(6, 70, 45),
                     p=[0.2, 0.002, 0.002, 0.5, 0.296])
    scl[2] = 9  # a fully cloudy slice
    if dtype == "float32":
        scl[scl == 0] = np.nan
    aoi = rng.random((70, 45)) < 0.9
    aoi[:32] = False  # the first row of chunks lies outside the AOI
    gate = functools.partial(scl_invalid, classes=(8, 9))  # what _pipeline.scl_gate makes
    nodata = np.nan if dtype == "float32" else 0
    arr = xr.DataArray(da.from_array(scl, chunks=(6, 32, 16)), dims=("time", "y", "x"),
                       attrs={"nodata": nodata})
    got = clear_per_chunk(arr, gate, xr.DataArray(da.from_array(aoi, chunks=(32, 16)),
                                                  dims=("y", "x")))
    assert got.chunks == ((6,), (1, 1, 1), (1, 1, 1))
    ok = ~np.isin(scl, [8, 9]) & ~np.isnan(scl.astype(float)) & (scl != 0) & aoi
    want = np.array([[[ok[t, y:y + 32, x:x + 16].any() for x in range(0, 45, 16)]
                      for y in range(0, 70, 32)] for t in range(6)])
    np.testing.assert_array_equal(got.compute(), want)
    assert not want[:, 0].any() and not want[2].any() and want.any()
    no_aoi = clear_per_chunk(arr, gate).compute()
    assert no_aoi[:, 0].any() and (no_aoi >= want).all()


def test_reads_of_an_unknown_graph_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A band that is not odc-loader's per-chunk read tasks comes back as it is, with a warning
    that mask-first reads are off, rather than a wrong graph."""
    from s2mosaic import _prune
    from s2mosaic._prune import gate_reads

    _prune._unknown_graph.cache_clear()  # it says so once per process
    band = da.ones((3, 64, 64), dtype="uint16", chunks=(3, 32, 32))
    clear = da.ones((3, 2, 2), dtype=bool, chunks=(3, 1, 1))
    with caplog.at_level("WARNING", logger="s2mosaic._prune"):
        assert gate_reads(band, clear) is band
    assert "mask-first reads are off" in caplog.text


def test_read_tasks_open_their_own_sources(demo_catalog: Path) -> None:
    """odc-loader's one task per (item, band) that only builds a reader is gone: each read task
    opens its sources (shared by several chunks here), and reads the same bytes."""
    import odc.stac

    from s2mosaic._prune import _read_chunk, open_in_reads
    from s2mosaic._search import search

    spec = demo_spec(demo_catalog, demo_catalog.parent / "unused")
    items = list(search(spec))
    raw = odc.stac.load(items, bands=["B04", "SCL"], crs="EPSG:32632", resolution=20,
                        chunks={"time": -1, "x": 100, "y": 100}, groupby="solar_day")
    for name in ("B04", "SCL"):
        before = raw[name].data
        after = open_in_reads(before)
        layers = after.__dask_graph__().layers
        assert any(str(k).startswith("open-") for k in before.__dask_graph__().layers)
        assert not any(str(k).startswith("open-") for k in layers), name
        assert all(t.func is _read_chunk for t in layers[after.name].values())
        assert after.numblocks[1] * after.numblocks[2] > 1  # sources shared by chunks
        with dask.config.set(scheduler="sync"):
            a, b = dask.compute(before, after)
        assert a.tobytes() == b.tobytes(), name
    other = da.ones((3, 64, 64), dtype="uint16", chunks=(3, 32, 32))
    assert open_in_reads(other) is other


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("classes", [(), (9,), (0, 3, 8, 9, 10), (3, 300), (-1, 4)])
def test_in_classes_is_numpys_isin(dtype: str, classes: tuple[int, ...]) -> None:
    """The SCL class test (one comparison per class) answers what ``np.isin`` does, whatever
    the dtype, classes outside its range and NaN included."""
    from s2mosaic.masks.scl import in_classes

    values = np.arange(-2, 260).astype(dtype).reshape(2, 131) if dtype != "uint8" else \
        np.arange(256, dtype=dtype).reshape(2, 128)
    if dtype == "float32":
        values[0, :5] = np.nan
    np.testing.assert_array_equal(in_classes(values, classes), np.isin(values, classes))
