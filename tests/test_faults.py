"""Reads over a network that misbehaves: runs whose scenes come from the loopback object store
(tests/objectstore.py) while it stalls, refuses, resets, cuts bodies short or is down, finish
with the same bytes as a run from local files.

The time-outs, retries and backoff are the spec's ``runtime`` fields - the settings users have -
made short here so a fault costs a second or two. No assertion is timed: what is checked is the
outcome (complete, byte-identical), the store's log of what happened, and the run report.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

import s2mosaic
from s2mosaic._cube import gdal_settings
from s2mosaic._spec import MosaicSpec, RuntimeSpec
from s2mosaic._tiles import MAX_RETRY_WAIT_S, TileLoop
from s2mosaic.errors import SpecError

from .objectstore import Fault, ObjectStore
from .oracle import assert_identical_outputs
from .served import FAST, Scenes


def _second(match: str, kind: str) -> Fault:
    """``kind`` once, on the second request matching ``match``: GDAL opens a file with a HEAD
    (which has no body to cut), then reads it with range GETs."""
    return Fault(match, kind, times=1, every=2, seen=1)


def _after(store: ObjectStore, fault: str) -> list[tuple[str, str | None]]:
    """(path, range) of each request that hit ``fault`` and was then answered in full by a
    later request for the same bytes: what a retry looks like in the log."""
    log = list(store.log)
    out = []
    for i, r in enumerate(log):
        if r.fault == fault and any(later.path == r.path and later.range == r.range
                                    and later.status in (200, 206) and later.fault is None
                                    for later in log[i + 1:]):
            out.append((r.path, r.range))
    return out


# -- what each fault does to a run ------------------------------------------------------------
@pytest.mark.timeout(120, method="thread")  # without a read time-out the stall hangs for good
def test_a_stalled_request_is_abandoned_and_retried(scenes: Scenes, served_clean: MosaicSpec,
                                                    store: ObjectStore, tmp_path: Path) -> None:
    store.faults.append(_second("B04.tif", "stall"))
    spec = scenes.spec(tmp_path, **FAST)
    report = s2mosaic.run(spec, items=scenes.served(store))
    assert report.status == "complete" and report.tiles["retried"] == 0  # GDAL absorbed it
    stalled = store.requests(path="B04.tif")
    assert [r.fault for r in stalled].count("stall") == 1
    (_path, rng), = _after(store, "stall")
    assert rng is not None  # a range request never answered, then asked again and answered
    assert_identical_outputs(served_clean.output, spec.output)


def test_transient_http_faults_are_absorbed(scenes: Scenes, served_clean: MosaicSpec, store: ObjectStore,
                                           tmp_path: Path) -> None:
    """GDAL retries the 503s, the 429 and the reset itself; the short body cuts a read of a whole
    (small) SCL file, which fails its tile: the tile's retry reads it again."""
    store.faults += [
        Fault("B02.tif", "status", status=503, times=2),
        Fault("B03.tif", "status", status=429, retry_after=1, times=1),
        _second("B08.tif", "reset"),
        _second("SCL.tif", "truncate"),
    ]
    spec = scenes.spec(tmp_path, **FAST)
    report = s2mosaic.run(spec, items=scenes.served(store))
    assert report.status == "complete"
    assert [f.hits for f in store.faults] == [2, 1, 1, 1]
    assert {s for s in (503, 429) if store.requests(status=s)} == {503, 429}
    assert _after(store, "reset") and _after(store, "truncate")
    assert_identical_outputs(served_clean.output, spec.output)


def test_a_server_down_for_seconds_is_ridden_out(scenes: Scenes, served_clean: MosaicSpec,
                                                 store: ObjectStore, tmp_path: Path) -> None:
    went_down: list[int] = []
    downtime: list[threading.Thread] = []

    def outage() -> None:  # once the tiles are reading: connections refused for 3 s
        while len(store.log) < 10:
            threading.Event().wait(0.005)
        went_down.append(len(store.log))
        downtime.append(store.down(3))

    watcher = threading.Thread(target=outage, daemon=True)
    watcher.start()
    # GDAL does not retry a refused connection: the tiles reading then fail, and their retries
    # (after 1-3, 2-6, 4-12 s: the third is past the outage whatever the jitter) read it again.
    spec = scenes.spec(tmp_path, **{**FAST, "read_backoff_s": 0.5, "retries": 4})
    report = s2mosaic.run(spec, items=scenes.served(store))
    watcher.join(timeout=30)
    downtime[0].join(timeout=30)
    assert report.status == "complete" and report.tiles["failed"] == 0
    assert went_down and len(store.log) > went_down[0]  # reads went on after the outage
    assert report.tiles["retried"] >= 1 and report.retry_wait_s > 0
    assert_identical_outputs(served_clean.output, spec.output)


@pytest.mark.timeout(120, method="thread")  # a worker without the time-out hangs for good
def test_time_outs_reach_distributed_workers(scenes: Scenes, served_clean: MosaicSpec, store: ObjectStore,
                                             tmp_path: Path, dask_client: Any) -> None:
    """The read time-out travels in the graph to worker processes, whose environment has none."""
    import os

    assert not any(dask_client.run(lambda: "GDAL_HTTP_TIMEOUT" in os.environ).values())
    store.faults.append(_second("B04.tif", "stall"))
    spec = scenes.spec(tmp_path, **{**FAST, "scheduler": None})
    report = s2mosaic.run(spec, items=scenes.served(store), client=dask_client)
    assert report.status == "complete"
    assert len(_after(store, "stall")) == 1
    assert_identical_outputs(served_clean.output, spec.output)


def test_a_fault_outlasting_gdal_retries_fails_the_tile_once(
        scenes: Scenes, served_clean: MosaicSpec, store: ObjectStore, tmp_path: Path) -> None:
    """503s on one scene's file until GDAL gives up: the tile fails, waits its backoff, and its
    retry reads the file afresh (GDAL had remembered it as missing) and succeeds."""
    # prune_dates off: item 2's date has no clear pixel in these tiles, so date pruning would
    # never read its B04 (tests/test_prune.py); here the tile retry is under test.
    spec = scenes.spec(tmp_path, **{**FAST, "read_retries": 1, "read_backoff_s": 0.1,
                                    "prune_dates": "off"})
    victim = scenes.items[2].assets["B04"].get_absolute_href()
    assert victim is not None
    name = str(Path(victim).relative_to(scenes.catalog.parent))
    store.faults.append(Fault(name, "status", status=503, times=spec.runtime.read_retries + 1))
    report = s2mosaic.run(spec, items=scenes.served(store))
    assert report.status == "complete" and report.tiles["failed"] == 0
    assert report.tiles["retried"] >= 1 and report.retry_wait_s > 0
    assert '"retry_wait_s"' in (tmp_path / "m.report.json").read_text()
    assert len(store.requests(path=name, status=503)) == spec.runtime.read_retries + 1
    assert store.requests(path=name, status=200)  # read afresh on the tile's retry
    assert_identical_outputs(served_clean.output, spec.output)


# -- the settings -----------------------------------------------------------------------------
def test_read_settings_become_gdal_options() -> None:
    rt = RuntimeSpec(read_timeout_s=7.5, connect_timeout_s=3, read_retries=2, read_backoff_s=0.25)
    opts = gdal_settings(rt)
    assert {k: opts[k] for k in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_CONNECTTIMEOUT",
                                 "GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_RETRY_DELAY")} == {
        "GDAL_HTTP_TIMEOUT": "7.5", "GDAL_HTTP_CONNECTTIMEOUT": "3", "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_RETRY_DELAY": "0.25"}
    d = RuntimeSpec()
    assert (d.read_timeout_s, d.connect_timeout_s, d.read_retries, d.read_backoff_s) == \
        (120, 30, 5, 1.0)


@pytest.mark.parametrize(("field", "value", "hint"), [
    ("read_timeout_s", 0, "number > 0"),
    ("read_timeout_s", "2m", "expected a number"),
    ("connect_timeout_s", -1, "number > 0"),
    ("read_retries", 1.5, "expected an integer"),
    ("read_retries", -1, "integer >= 0"),
    ("read_backoff_s", -0.5, "number >= 0"),
])
def test_read_settings_are_validated(scenes: Scenes, field: str, value: Any, hint: str) -> None:
    with pytest.raises(SpecError, match=rf"runtime\.{field}") as e:
        scenes.spec(scenes.catalog.parent, **{field: value})
    assert hint in str(e.value) and repr(value) in str(e.value)


def test_resume_with_other_read_settings_recomputes_nothing(scenes: Scenes,
                                                            tmp_path: Path) -> None:
    spec = scenes.spec(tmp_path)
    s2mosaic.run(spec, items=scenes.items)
    other = spec.replace(runtime={**_runtime(spec.runtime), "read_timeout_s": 5,
                                  "connect_timeout_s": 2, "read_retries": 0, "read_backoff_s": 3})
    again = s2mosaic.run(other, items=scenes.items, resume=True)
    assert again.tiles["computed"] == 0 and again.tiles["resumed"] == again.tiles["total"]


def _runtime(rt: RuntimeSpec) -> dict[str, Any]:
    return {k: getattr(rt, k) for k in RuntimeSpec.field_names()}


@pytest.mark.parametrize("attempt", [0, 1, 2, 10])
def test_tile_backoff_grows_with_jitter_and_a_cap(attempt: int) -> None:
    loop = TileLoop(None, 1, 3, lambda t: None, lambda p, r: None,  # type: ignore[arg-type,return-value]
                    backoff_s=1.0, rng=random.Random(attempt))
    waits = [loop.backoff(attempt) for _ in range(200)]
    base = 4 * 2**attempt
    assert all(min(0.5 * base, MAX_RETRY_WAIT_S) <= w <= min(1.5 * base, MAX_RETRY_WAIT_S)
               for w in waits)
    assert len(set(waits)) > 1 or base * 0.5 >= MAX_RETRY_WAIT_S  # jittered unless capped
