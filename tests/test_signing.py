"""``source.sign``: hrefs signed at read time, on the worker; no token is ever written to disk.

The Planetary Computer-shaped catalog of :mod:`tests.test_catalogs`, its assets served by a
loopback :class:`~tests.objectstore.ObjectStore` that answers 403 without a live token. Tokens
live ``LIFETIME_S`` on a fake clock that advances one second per token issued
(:class:`tests.signer.TokenService`), so a run that signs once per read spans many lifetimes,
while a token taken when the graph is built would be dead before its tile is read.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
import xarray as xr

import s2mosaic
from s2mosaic._cube import load_cube
from s2mosaic._grid import output_geobox
from s2mosaic._sign import signer
from s2mosaic._spec import MosaicSpec
from s2mosaic.errors import MissingDependencyError, SpecError

from .killing import kill_after_tiles
from .objectstore import ObjectStore
from .oracle import assert_identical_outputs
from .signer import ENV, FakeClock, TokenService
from .test_catalogs import Catalogs, _spec, catalogs  # noqa: F401 - the fixture

LIFETIME_S = 4.0
SIGN = "tests.signer:sign"
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Served:
    store: ObjectStore
    tokens: TokenService
    local: Catalogs  # hrefs: local files
    http: Catalogs  # hrefs: the object store, unsigned


@pytest.fixture(scope="module")
def served(catalogs: Catalogs) -> Iterator[Served]:  # noqa: F811
    clock = FakeClock()
    with ObjectStore(catalogs.root, tokens=True, token_lifetime_s=LIFETIME_S,
                     clock=clock) as store, TokenService(store, clock) as tokens:
        doc = json.loads(catalogs.files["pc"].read_text())
        for feature in doc["features"]:
            for asset in feature["assets"].values():
                asset["href"] = store.url(Path(urllib.parse.urlparse(asset["href"]).path))
        path = catalogs.root / "pc_http.json"
        path.write_text(json.dumps(doc))
        yield Served(store, tokens, catalogs,
                     dataclasses.replace(catalogs, files={**catalogs.files, "pc": path}))


@pytest.fixture
def token_env(served: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    monkeypatch.setenv(ENV, served.tokens.url)  # worker processes and CLI children inherit it
    return served


def _run_spec(cat: Catalogs, out: Path, loader: str = "odc-stac", scheduler: str | None
              = "synchronous", **source: Any) -> MosaicSpec:
    spec = _spec(cat, "pc", runtime={"chunks": 16, "tile_size": 32, "scheduler": scheduler,
                                     "loader": loader},
                 output={"zarr": out / "m.zarr", "cog": out / "m.tif"})
    return spec.replace(source={**dataclasses.asdict(spec.source), **source})


def _reference(served: Served, tmp_path: Path, loader: str = "odc-stac") -> MosaicSpec:
    """The same mosaic from the local files, unsigned."""
    spec = _run_spec(served.local, tmp_path / "reference", loader)
    s2mosaic.run(spec)
    return spec


def _no_token_on_disk(root: Path, tokens: list[str]) -> int:
    """Assert no file below ``root`` holds a token; returns how many files were read."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        data = p.read_bytes()
        assert b"token=" not in data, p
        for t in tokens:
            assert t.encode() not in data, (p, t)
    return len(files)


def _check_run(served: Served, spec: MosaicSpec, ref: MosaicSpec, since: int, issued_before: int,
               ) -> dict[str, Any]:
    log = served.store.log[since:]
    issued = served.tokens.issued[issued_before:]
    assert log and all(r.token in issued for r in log)  # every request signed, freshly
    assert [r for r in log if r.status == 403] == []  # no read ever held a dead token
    # The run outlived many tokens: one taken when the graph was built would have died.
    assert len(issued) >= 5 * LIFETIME_S, len(issued)
    assert_identical_outputs(ref.output, spec.output)
    out = spec.output.zarr.parent  # type: ignore[union-attr]
    files = _no_token_on_disk(out, served.tokens.issued)
    items = json.loads((spec.output.zarr / "s2mosaic_run" / "items.json").read_text())  # type: ignore[operator]
    hrefs = {a["href"] for f in items["features"] for a in f["assets"].values()}
    assert all(h.startswith(f"http://127.0.0.1:{served.store.port}/") and "?" not in h
               for h in hrefs)  # the manifest holds the unsigned hrefs
    return {"requests": len(log), "bytes": sum(r.bytes for r in log), "tokens": len(issued),
            "files": files}


def test_each_read_signs_afresh_and_no_token_reaches_disk(token_env: Served,
                                                         tmp_path: Path) -> None:
    served = token_env
    ref = _reference(served, tmp_path)
    spec = _run_spec(served.http, tmp_path / "signed", sign=SIGN)
    since, before = len(served.store.log), len(served.tokens.issued)
    report = s2mosaic.run(spec)
    assert report.status == "complete" and report.items == 4
    print(f"odc-stac run: {_check_run(served, spec, ref, since, before)}")


def test_stackstac_signs_each_read(token_env: Served, tmp_path: Path) -> None:
    """The stackstac loader's cube, read through signed hrefs, equals the local files' cube.
    (At the cube: a stackstac run cannot write Zarr yet, signed or not.)"""
    served = token_env
    cubes = []
    since, before = len(served.store.log), len(served.tokens.issued)
    for cat, sign in ((served.local, "none"), (served.http, SIGN)):
        spec = _run_spec(cat, tmp_path, "stackstac", sign=sign)
        items = s2mosaic.search(spec)
        cube = load_cube(items, spec, output_geobox(spec, items))
        assert "token" not in repr(dict(cube.__dask_graph__()))  # the graph holds no token
        with dask.config.set(scheduler="synchronous"):
            cubes.append(cube.compute())
    xr.testing.assert_identical(cubes[0], cubes[1])
    log = served.store.log[since:]
    issued = served.tokens.issued[before:]
    assert log and all(r.token in issued for r in log) and not [r for r in log if r.status == 403]
    assert len(issued) >= 5 * LIFETIME_S
    print(f"stackstac cube: requests {len(log)}, bytes {sum(r.bytes for r in log)}, "
          f"tokens {len(issued)}")


def test_unsigned_reads_are_denied(token_env: Served, tmp_path: Path) -> None:
    """The store does refuse what is not signed: the tests above prove something."""
    spec = _run_spec(token_env.http, tmp_path / "unsigned")
    since = len(token_env.store.log)
    with pytest.raises(s2mosaic.errors.RunError):
        s2mosaic.run(spec.replace(runtime={**dataclasses.asdict(spec.runtime), "retries": 0,
                                           "on_read_error": "fail"}))
    assert {r.status for r in token_env.store.log[since:]} == {403}


def test_on_a_two_worker_cluster(token_env: Served, tmp_path: Path) -> None:
    """Worker processes import the signer themselves and sign their own reads."""
    from distributed import Client, LocalCluster

    served = token_env
    ref = _reference(served, tmp_path)
    spec = _run_spec(served.http, tmp_path / "cluster", scheduler=None, sign=SIGN)
    since, before = len(served.store.log), len(served.tokens.issued)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      ) as cluster, Client(cluster, set_as_default=False) as client:
        s2mosaic.run(spec, client=client)
        workers = client.run(lambda: sys.modules.get("tests.signer") is not None)
    assert list(workers.values()) == [True, True]  # both signed reads
    print(f"cluster: {_check_run(served, spec, ref, since, before)}")


def test_killed_run_resumes_with_fresh_tokens(token_env: Served, tmp_path: Path) -> None:
    """Kill the CLI after 2 tiles, expire every token, ``--resume``: byte-identical to a clean
    run, and no token from before the kill is presented again."""
    served = token_env
    ref = _reference(served, tmp_path)
    spec = _run_spec(served.http, tmp_path / "killed", sign=SIGN)
    spec_file = tmp_path / "killed.yaml"
    spec.to_yaml(spec_file)
    assert "token" not in spec_file.read_text()
    store = spec.output.zarr
    assert store is not None
    assert kill_after_tiles(["run", str(spec_file)], store, 2, timeout=120) == 2
    served.store.expire_all_tokens()
    since, before = len(served.store.log), len(served.tokens.issued)
    resumed = subprocess.run([sys.executable, "-m", "s2mosaic.cli", "run", str(spec_file),
                              "--resume"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr
    for t in served.tokens.issued:
        assert t not in resumed.stderr and t not in resumed.stdout
    report = json.loads((tmp_path / "killed" / "m.report.json").read_text())
    assert report["tiles"]["resumed"] >= 2 and report["tiles"]["computed"] > 0
    stats = _check_run(served, spec, ref, since, before)
    print(f"resume: {stats}")


def test_a_failed_read_reports_the_unsigned_href(token_env: Served, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """GDAL's error quotes the URL it opened; the run's failure record must not - neither a
    failed tile's (``on_read_error: fail``) nor a dropped scene's (``skip``)."""
    from .objectstore import Fault

    served = token_env
    spec = _run_spec(served.http, tmp_path / "failed", sign=SIGN)
    spec = spec.replace(runtime={**dataclasses.asdict(spec.runtime), "retries": 0,
                                 "on_read_error": "fail"})
    served.store.faults.append(Fault("s1_B04", "status", status=404))
    try:
        with pytest.raises(s2mosaic.errors.RunError) as e:
            s2mosaic.run(spec)
        skip = _run_spec(served.http, tmp_path / "skipped", sign=SIGN)
        with pytest.warns(s2mosaic.errors.DroppedScenesWarning):
            report = s2mosaic.run(skip.replace(runtime={**dataclasses.asdict(skip.runtime),
                                                        "retries": 0}))
    finally:
        served.store.faults.clear()
    messages = " ".join(e.value.report.failed_tiles.values())
    assert "404" in messages and "token" not in messages
    assert "could not read http://" in messages  # the URL, unsigned
    (dropped,) = report.scenes_dropped
    assert dropped["asset"] == "B04" and "404" in dropped["error"]
    assert "token" not in json.dumps(report.scenes_dropped) and "?" not in dropped["url"]
    _no_token_on_disk(tmp_path / "skipped", served.tokens.issued)
    assert not [r for r in caplog.records if "token=" in r.getMessage()]
    _no_token_on_disk(tmp_path / "failed", served.tokens.issued)


def test_planetary_computer_without_the_package(served: Served,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # absent, whatever is installed
    signer.cache_clear()
    with pytest.raises(MissingDependencyError) as e:
        _run_spec(served.http, Path("unused"), sign="planetary-computer")
    assert str(e.value).endswith("Install it with: pip install 's2mosaic-stream[pc]'")
    assert "source.sign: planetary-computer" in str(e.value)
    signer.cache_clear()


@pytest.mark.parametrize(("field", "value", "says"), [
    ("sign", "no_such_module_s2m:sign", "cannot import module 'no_such_module_s2m'"),
    ("sign", "tests.signer:nope", "has no attribute 'nope'"),
    ("sign", "tests.signer:NOT_CALLABLE", "not callable"),
    ("sign", "tests/signer.py", "'module:function'"),
    ("sign", 3, "'none' or 'planetary-computer'"),
    ("request_modifier", "tests.signer:nope", "has no attribute 'nope'"),
])
def test_bad_signer_is_a_spec_error(served: Served, field: str, value: Any, says: str) -> None:
    with pytest.raises(SpecError) as e:
        _run_spec(served.http, Path("unused"), **{field: value})
    assert e.value.field == f"source.{field}" and says in str(e.value)
