"""Kill a CLI run at a known point - after its N-th finished tile - whatever the machine's speed.

The CLI runs in its own process group, with :meth:`Manifest.append` wrapped so that the process
parks (sleeps) right after the N-th tile record is on disk; the test then SIGKILLs the whole
group (client, scheduler, worker processes). Tiles that workers finished meanwhile were never
recorded, exactly as when a real run is killed between two records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_PARKED_CLI = """
import sys, time
import s2mosaic._manifest as m
n, args = int(sys.argv[1]), sys.argv[2:]
original, seen = m.Manifest.append, [0]
def append(self, *records, kind="tile"):
    original(self, *records, kind=kind)
    if kind == "tile":
        seen[0] += len(records)
        if seen[0] >= n:
            time.sleep(3600)  # parked: the test kills the process group now
m.Manifest.append = append
from s2mosaic.cli import app
sys.argv = ["s2mosaic", *args]
app()
"""


def manifest_tiles(store: Path) -> int:
    """Tile records in the run manifest of ``store`` (0 before it exists)."""
    path = store / "s2mosaic_run" / "manifest.jsonl"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def kill_after_tiles(cli_args: Sequence[str], store: Path, n: int, timeout: float = 300) -> int:
    """Run ``s2mosaic *cli_args``, SIGKILL its process group once ``n`` tiles are recorded in
    ``store``'s manifest, and return how many are recorded (``n``)."""
    proc = subprocess.Popen([sys.executable, "-c", _PARKED_CLI, str(n), *cli_args],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while manifest_tiles(store) < n:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"no {n} tile(s) recorded within {timeout} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return manifest_tiles(store)
