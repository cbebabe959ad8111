"""A scene that cannot be read is a named loss, not a failed tile (``runtime.on_read_error``).

One scene's file is broken for good on the loopback object store (404, or bytes that do not
decode). Under ``skip`` the run completes ``degraded``: exactly that scene is left out of the
tiles it touches - the outputs equal, byte for byte, a run from local files without that scene -
and the report, ``metadata.json``, the manifest and the CLI's last line name it. Once the file
is back, ``--resume --retry-dropped`` recomputes exactly those tiles and ends byte-identical to a
fault-free run. Under ``fail`` the tile fails, and its error names the URL.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer

import s2mosaic
from s2mosaic import cli
from s2mosaic._manifest import Manifest
from s2mosaic._spec import MosaicSpec
from s2mosaic.errors import ArgumentError, DroppedScenesWarning, RunError, SceneReadError

from .objectstore import Fault, ObjectStore
from .oracle import assert_identical_outputs
from .served import FAST, Scenes

#: Give up on a broken file quickly: one GDAL retry per request, one tile retry.
QUICK: dict[str, Any] = {**FAST, "read_retries": 1, "read_backoff_s": 0.05, "retries": 1}


def _path(scenes: Scenes, item: int, asset: str) -> str:
    href = scenes.items[item].assets[asset].get_absolute_href()
    assert href is not None
    return str(Path(href).relative_to(scenes.catalog.parent))


@pytest.mark.parametrize("kind", ["status", "corrupt"])
def test_an_unreadable_scene_is_dropped_named_and_read_again_later(
        scenes: Scenes, served_clean: MosaicSpec, store: ObjectStore, tmp_path: Path,
        kind: str) -> None:
    victim = scenes.items[2]
    name = _path(scenes, 2, "B04")
    store.faults.append(Fault(name, kind, status=404))  # every request for that file, for good
    served = scenes.served(store)
    # Item 2's date has no clear pixel in these tiles: date pruning would never read its B04
    # (nothing lost, nothing named; tests/test_prune.py). Here the drop itself is under test.
    spec = scenes.spec(tmp_path / "run", **QUICK, prune_dates="off")
    with pytest.warns(DroppedScenesWarning, match=rf"complete with 1 scene\(s\) dropped .*"
                                                  rf"{victim.id}.*retry_dropped=True"):
        report = s2mosaic.run(spec, items=served)

    # Exactly that scene is out, from every tile it touches; the tiles completed.
    assert report.status == "degraded" and report.tiles["failed"] == 0
    (dropped,) = report.scenes_dropped
    assert (dropped["item"], dropped["asset"]) == (victim.id, "B04")
    assert dropped["url"] == store.url(victim.assets["B04"].get_absolute_href() or "")
    assert ("404" in dropped["error"]) if kind == "status" else dropped["error"]
    assert sorted(dropped["tiles"]) == ["0_0", "0_1"] == sorted(
        k for k, r in Manifest(spec.output.zarr).finished().items() if r.status == "degraded")
    assert report.tiles["degraded"] == 2 and dropped["pixels"] > 0
    # The independent oracle: a run from local files that never had the scene.
    without = scenes.spec(tmp_path / "without")
    s2mosaic.run(without, items=[i for i in scenes.items if i.id != victim.id])
    assert_identical_outputs(without.output, spec.output)
    # Named everywhere a user looks.
    saved = json.loads((tmp_path / "run" / "m.report.json").read_text())
    assert saved["status"] == "degraded" and saved["scenes_dropped"] == report.scenes_dropped
    meta = json.loads(spec.output.metadata_path.read_text())  # type: ignore[union-attr]
    assert meta["dropped_scenes"] == report.scenes_dropped

    # Resuming without --retry-dropped keeps the degraded tiles (and still names the loss).
    with pytest.warns(DroppedScenesWarning):
        again = s2mosaic.run(spec, items=served, resume=True)
    assert again.tiles["computed"] == 0 and again.status == "degraded"
    assert again.scenes_dropped == report.scenes_dropped

    # The file is back: --resume --retry-dropped reads exactly those tiles again.
    store.faults.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedScenesWarning)
        fixed = s2mosaic.run(spec, items=served, resume=True, retry_dropped=True)
    assert fixed.status == "complete" and fixed.scenes_dropped == []
    assert (fixed.tiles["computed"], fixed.tiles["resumed"], fixed.tiles["degraded"]) == (2, 0, 0)
    assert_identical_outputs(served_clean.output, spec.output)
    assert json.loads(spec.output.metadata_path.read_text())["dropped_scenes"] == []  # type: ignore[union-attr]


def test_scenes_are_dropped_on_distributed_workers_too(
        scenes: Scenes, store: ObjectStore, tmp_path: Path, dask_client: Any) -> None:
    """The read error crosses from the worker processes intact (item and URL found again), and
    a second broken scene is dropped after the first."""
    bad = [_path(scenes, 1, "SCL"), _path(scenes, 4, "B02")]
    store.faults += [Fault(p, "status", status=404) for p in bad]
    spec = scenes.spec(tmp_path / "run", **{**QUICK, "scheduler": None})
    with pytest.warns(DroppedScenesWarning):
        report = s2mosaic.run(spec, items=scenes.served(store), client=dask_client)
    assert report.status == "degraded" and report.scenes_dropped_count == 2
    assert {(d["item"], d["asset"]) for d in report.scenes_dropped} == {
        (scenes.items[1].id, "SCL"), (scenes.items[4].id, "B02")}
    without = scenes.spec(tmp_path / "without")
    s2mosaic.run(without, items=[i for n, i in enumerate(scenes.items) if n not in (1, 4)])
    assert_identical_outputs(without.output, spec.output)


def test_on_read_error_fail_fails_the_tile_naming_the_url(
        scenes: Scenes, store: ObjectStore, tmp_path: Path) -> None:
    name = _path(scenes, 2, "B04")
    store.faults.append(Fault(name, "status", status=404))
    spec = scenes.spec(tmp_path, **{**QUICK, "on_read_error": "fail", "prune_dates": "off"})
    with pytest.raises(RunError, match="2 of 2 tile") as e:
        s2mosaic.run(spec, items=scenes.served(store))
    assert f"could not read {store.url(str(scenes.catalog.parent / name))}" in str(e.value)
    assert e.value.report.status == "failed" and e.value.report.scenes_dropped == []


def test_the_cli_says_complete_with_scenes_dropped(
        scenes: Scenes, store: ObjectStore, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    victim = scenes.items[3]
    store.faults.append(Fault(_path(scenes, 3, "B08"), "status", status=404))
    served = scenes.served(store)
    spec = scenes.spec(tmp_path, **QUICK)
    with pytest.raises(typer.Exit) as e:
        cli._execute(spec, runner=lambda s, **kw: s2mosaic.run(s, items=served, **kw))
    assert e.value.exit_code == cli.EXIT_DEGRADED == 3
    cap = capsys.readouterr()
    out, said = (" ".join(t.split()) for t in (cap.out, cap.err))
    assert f"dropped {victim.id} (asset B08) from 2 tile(s)" in out and "B08.tif: " in out
    assert f"dropped scene {victim.id} (asset B08, could not read http://" in said
    assert said.endswith("complete with 1 scene dropped (2 degraded tile(s)); once "
                                  "they can be read, rerun with --resume --retry-dropped")


def test_retry_dropped_needs_resume_and_on_read_error_is_checked(scenes: Scenes,
                                                                 tmp_path: Path) -> None:
    spec = scenes.spec(tmp_path)
    with pytest.raises(ArgumentError, match=r"pass resume=True \(--resume\) too"):
        s2mosaic.run(spec, items=scenes.items, retry_dropped=True)
    with pytest.raises(s2mosaic.SpecError, match=r"runtime\.on_read_error.*'drop'.*\['skip', "
                                                 r"'fail'\]"):
        scenes.spec(tmp_path, on_read_error="drop")


def test_a_failed_read_reaches_a_distributed_client_as_itself(
        scenes: Scenes, store: ObjectStore) -> None:
    """What a worker sends back for a failed read (``distributed``'s error message, which
    pickles the exception with its context) unpacks as the SceneReadError with its URL: no
    rasterio exception rides along to break the pickling."""
    from distributed.core import error_message
    from distributed.protocol import pickle

    from s2mosaic._cube import load_cube
    from s2mosaic._grid import output_geobox

    store.faults.append(Fault(_path(scenes, 0, "B03"), "status", status=404))
    spec = scenes.spec(store.root, **QUICK)
    items = scenes.served(store)[:1]
    with pytest.raises(SceneReadError) as e:
        load_cube(items, spec, output_geobox(spec, items)).compute(scheduler="synchronous")
    assert e.value.__context__ is None and e.value.__cause__ is None
    back = pickle.loads(error_message(e.value)["exception"].data)
    assert isinstance(back, SceneReadError)
    assert back.url == items[0].assets["B03"].href and "404" in back.error


def test_a_read_error_pickles_with_its_url() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(SceneReadError("https://x/a.tif", "RasterioIOError: 404")))
    assert (e.url, e.error, str(e)) == ("https://x/a.tif", "RasterioIOError: 404",
                                        "could not read https://x/a.tif: RasterioIOError: 404")
