"""What a permanently broken asset costs a run: wall time of a fault-free run over loopback HTTP
against runs where one scene's B04 answers 404 for good, under ``runtime.on_read_error: skip``
with the default read settings and with short ones, and under ``fail``.

    .venv/bin/python benchmarks/bench_dropped.py [--rounds 1]

Uses the project's loopback object store (``tests/objectstore.py``) and the demo catalog it
generates; prints one table with each run's wall time, × the fault-free run, status and the
scenes dropped. The defaults are what users get: GDAL retries each failed request 5 times
(1 + 2 + 4 + 8 + 16 s of backoff), then the tile is retried twice (after ~4 s and ~8 s), then
the scene is dropped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import s2mosaic  # noqa: E402
from s2mosaic.demo import make_demo_catalog  # noqa: E402
from s2mosaic.errors import DroppedScenesWarning, RunError  # noqa: E402
from tests.objectstore import Fault, ObjectStore  # noqa: E402
from tests.served import Scenes  # noqa: E402

SHORT: dict[str, Any] = {"read_timeout_s": 1, "connect_timeout_s": 1, "read_retries": 1,
                         "read_backoff_s": 0.05, "retries": 1}


def one(scenes: Scenes, store: ObjectStore, out: Path, broken: str | None,
        **runtime: Any) -> tuple[float, str, int]:
    store.faults.clear()
    if broken:
        store.faults.append(Fault(broken, "status", status=404))
    spec = scenes.spec(out, **runtime)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DroppedScenesWarning)
            report = s2mosaic.run(spec, items=scenes.served(store))
        status, dropped = report.status, report.scenes_dropped_count
    except RunError as e:
        status, dropped = f"failed ({e.report.tiles['failed']} tiles)", 0
    return time.perf_counter() - t0, status, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = make_demo_catalog(root / "demo" / "catalog", seed=0)
        scenes = Scenes(catalog)
        href = scenes.items[2].assets["B04"].get_absolute_href()
        assert href is not None
        broken = str(Path(href).relative_to(catalog.parent))
        cases = [("fault-free", None, {}),
                 ("404 for good, skip, default read settings", broken, {}),
                 ("404 for good, skip, short settings", broken, SHORT),
                 ("404 for good, fail, short settings", broken, {**SHORT, "on_read_error": "fail"})]
        rows: dict[str, list[tuple[float, str, int]]] = {name: [] for name, _b, _r in cases}
        with ObjectStore(catalog.parent) as store:
            for r in range(args.rounds):
                for k, (name, bad, runtime) in enumerate(cases):
                    rows[name].append(one(scenes, store, root / f"r{r}c{k}", bad, **runtime))
        base = min(t for t, _s, _d in rows["fault-free"])
        print(f"{'case':<44} {'wall s':>8} {'× clean':>8}  status, scenes dropped")
        for name, runs in rows.items():
            t = min(w for w, _s, _d in runs)
            _w, status, dropped = runs[-1]
            print(f"{name:<44} {t:8.1f} {t / base:8.1f}  {status}, {dropped}")


if __name__ == "__main__":
    main()
