"""The run manifest kept inside a tiled run's Zarr store: what the store is, which tiles are done.

Layout, in the Zarr group ``s2mosaic_run`` of the store (a real, empty Zarr group, so Zarr
readers that list the store see a group and nothing odd):

* ``manifest.jsonl``: a header line (format, fingerprint, spec, grid, tiling), then one line per
  finished tile (status, digest of what was written, sizes, timings). Append-only and fsync'd
  per line, so a run killed at any moment leaves every finished tile recorded and at most one
  torn last line, which is ignored.
* ``items.json``: the STAC items the run uses (an ItemCollection with absolute asset hrefs),
  plus ``search.json`` (dropped items, query), so a resumed run reads exactly the same scenes
  even when the catalog has changed since.
* ``lock.json``: while a run writes the store, who it is (host, pid, start, command); created
  with ``O_CREAT | O_EXCL``, so one run at a time owns the store (:class:`RunLock`).

A tile's digest is the SHA-256 over the SHA-256 of each chunk it wrote (variable, position,
dtype, shape and bytes of the decoded chunk), in a fixed order: it can be recomputed from the
store alone to check a finished tile (:func:`tile_digest`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from ._search import DroppedItem, SearchResult
from .errors import WriteError

__all__ = ["RUN_GROUP", "Manifest", "RunLock", "TileRecord", "block_digest", "fingerprint",
           "free_space", "tile_digest", "write_text_atomic"]

#: Name of the Zarr group (inside the store) holding the manifest and the items.
RUN_GROUP = "s2mosaic_run"
FORMAT = 1
#: Runtime fields that do not change the pixels written (so they may differ on resume).
_SCHEDULING = ("scheduler", "cluster", "n_workers", "threads_per_worker", "max_tiles_in_flight",
               "retries", "read_timeout_s", "connect_timeout_s", "read_retries", "read_backoff_s",
               "on_read_error", "device", "prune_dates", "warp_reuse", "keep_open")


def block_digest(name: str, origin: Sequence[int], block: np.ndarray) -> str:
    """SHA-256 of one written chunk: variable, origin (``y0, x0``, or ``t0, y0, x0``), dtype,
    shape and bytes."""
    where = ":".join(str(int(o)) for o in origin)
    h = hashlib.sha256(f"{name}:{where}:{block.dtype.str}:{block.shape}".encode())
    h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def tile_digest(chunk_digests: Iterable[tuple[Any, ...]]) -> str:
    """One digest for a tile from its ``(name, *origin, chunk_digest)`` records (any order)."""
    h = hashlib.sha256()
    for rec in sorted(tuple(r) for r in chunk_digests):
        h.update((":".join(str(v) for v in rec) + "\n").encode())
    return h.hexdigest()


def fingerprint(spec_dict: Mapping[str, Any], grid: Mapping[str, Any], tile_size: int,
                item_ids: Sequence[str], product: Mapping[str, Any] | None = None) -> str:
    """What decides the pixels of a store: spec (less output and scheduling), grid, tiling,
    items, and the product with its parameters (none for a mosaic)."""
    doc = {"spec": pixel_spec(spec_dict), "grid": grid, "tile_size": tile_size,
           "items": list(item_ids)}
    if product is not None:
        doc["product"] = dict(product)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def pixel_spec(spec_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``spec_dict`` without the fields that do not change the pixels (outputs, scheduling)."""
    out = {k: v for k, v in spec_dict.items() if k not in ("output", "name")}
    runtime = dict(out.get("runtime") or {})
    for k in _SCHEDULING:
        runtime.pop(k, None)
    out["runtime"] = runtime
    # grid.max_pixels only bounds what may be asked for; it does not change a pixel.
    out["grid"] = {k: v for k, v in dict(out.get("grid") or {}).items() if k != "max_pixels"}
    return out


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted field names whose values differ between two pixel specs."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


@dataclass(frozen=True)
class TileRecord:
    """A finished tile as the manifest records it."""

    tile: str
    status: str
    """``done`` (computed from items), ``empty`` (no item or no AOI pixel: written as nodata) or
    ``degraded`` (computed without the scenes in :attr:`dropped`, which could not be read)."""
    digest: str
    chunks: int
    bytes: int
    items: int
    seconds: float
    attempts: int
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """The scenes left out of a ``degraded`` tile: ``item``, ``asset``, ``url``, ``error`` and
    ``pixels`` (the tile's pixels inside the AOI that the scene's footprint covers)."""


class Manifest:
    """The manifest of the tiled run whose store is ``store`` (in its ``s2mosaic_run`` group),
    or, with ``group=None``, of a job writing files into the plain directory ``store`` (chips:
    each chip a tile of a sparse grid)."""

    def __init__(self, store: str | Path, *, group: str | None = RUN_GROUP) -> None:
        self.store = Path(store)
        self.group = group
        self.dir = self.store / group if group else self.store
        self.path = self.dir / "manifest.jsonl"

    def exists(self) -> bool:
        return self.path.is_file()

    # -- creating ------------------------------------------------------------------------------
    def create(self, header: Mapping[str, Any], items: Sequence[pystac.Item] | None) -> None:
        """Write the run group (into a store being initialised), the items, and the header."""
        if self.group is not None:
            import zarr

            zarr.open_group(str(self.store), mode="r+", zarr_format=2).require_group(self.group)
        self.dir.mkdir(parents=True, exist_ok=True)
        if items is not None:
            self._write_items(items)
        record = {"kind": "header", "format": FORMAT,
                  "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **header}
        self.path.write_text(json.dumps(record, default=str) + "\n")

    def _write_items(self, items: Sequence[pystac.Item]) -> None:
        absolute = []
        for item in items:
            clone = item.clone()
            for asset in clone.assets.values():
                asset.href = asset.get_absolute_href() or asset.href
            absolute.append(clone.to_dict(include_self_link=False, transform_hrefs=False))
        (self.dir / "items.json").write_text(json.dumps(
            {"type": "FeatureCollection", "features": absolute}) + "\n")
        dropped = [{"id": d.id, "reason": d.reason} for d in getattr(items, "dropped", [])]
        (self.dir / "search.json").write_text(json.dumps(
            {"dropped": dropped, "query": getattr(items, "query", {})}, default=str) + "\n")

    def append(self, *records: TileRecord | Mapping[str, Any], kind: str = "tile") -> None:
        """Record finished tiles (``TileRecord`` s, or rows of ``kind``), one line each,
        flushed to disk before returning."""
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        lines = [json.dumps({"kind": kind, **(r.__dict__ if isinstance(r, TileRecord) else r),
                             "at": at}, default=str) for r in records]
        try:
            with open(self.path, "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise WriteError(f"recording finished tiles in {self.path} failed: {e} "
                             f"({free_space(self.path)}); free space and rerun with "
                             "--resume") from e

    # -- reading -------------------------------------------------------------------------------
    def _lines(self) -> list[dict[str, Any]]:
        out = []
        for n, line in enumerate(self.path.read_text().splitlines()):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if n == 0:
                    raise WriteError(f"{self.path}: unreadable manifest header; the store was not "
                                     "initialised completely - rerun with --overwrite") from None
                continue  # a torn last line from a killed run: that tile is simply redone
        return out

    def header(self) -> dict[str, Any]:
        lines = self._lines()
        if not lines or lines[0].get("kind") != "header":
            raise WriteError(f"{self.path} has no header line; not an s2mosaic run manifest")
        if lines[0].get("format") != FORMAT:
            raise WriteError(f"{self.path} has manifest format {lines[0].get('format')}, this "
                             f"s2mosaic writes {FORMAT}; rerun with --overwrite")
        return lines[0]

    def records(self, kind: str) -> list[dict[str, Any]]:
        """Every record of ``kind`` after the header, in order."""
        return [rec for rec in self._lines()[1:] if rec.get("kind") == kind]

    def finished(self) -> dict[str, TileRecord]:
        """Finished tiles by key (the last record of a tile wins)."""
        fields = TileRecord.__dataclass_fields__
        return {rec["tile"]: TileRecord(**{k: rec[k] for k in fields if k in rec})
                for rec in self._lines()[1:] if rec.get("kind") == "tile"}

    def items(self) -> SearchResult:
        """The items recorded at the start of the run, with the search's dropped items and query."""
        doc = json.loads((self.dir / "items.json").read_text())
        items = [pystac.Item.from_dict(f) for f in doc["features"]]
        search = json.loads((self.dir / "search.json").read_text())
        dropped = [DroppedItem(d["id"], d["reason"]) for d in search.get("dropped", [])]
        return SearchResult(items, dropped, search.get("query"))


# -- one run at a time -------------------------------------------------------------------------
class RunLock:
    """The lock of the store ``store`` (``s2mosaic_run/lock.json``): held by the run writing
    it, from before its first tile to its end (success, failure or interruption).

    A lock whose process is gone - on this host, its pid no longer exists - is stale and taken
    over with a warning; a lock held from another host cannot be checked from here and is
    refused, saying which file to delete once that run is known to be gone.
    """

    def __init__(self, store: str | Path, command: str, *, token: str | None = None) -> None:
        self.store = Path(store)
        self.path = self.store / RUN_GROUP / "lock.json"
        self.command = command
        self.token = token or uuid.uuid4().hex
        self.held = False

    def owner(self) -> dict[str, Any] | None:
        """The lock's record (None: not locked; ``{}``: a lock file that cannot be read)."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def check(self) -> None:
        """Raise :class:`WriteError` when another live run holds the store."""
        owner = self.owner()
        if owner is not None and owner.get("token") != self.token and _alive(owner) is not False:
            raise self._held(owner)

    def acquire(self) -> None:
        """Take the lock (a store without a run group - not s2mosaic's - has none to take)."""
        if not self.path.parent.is_dir():
            return
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    continue  # released meanwhile
                if owner.get("token") == self.token:
                    self.held = True
                    return
                if _alive(owner) is not False:
                    raise self._held(owner) from None
                if self._take_over(owner):
                    warnings.warn(f"{self.store}: took over the lock of a run that is gone "
                                  f"({_who(owner)}; pid {owner.get('pid')} no longer runs)",
                                  UserWarning, stacklevel=3)
                continue
            except OSError as e:
                raise WriteError(f"locking {self.store} ({self.path}) failed: {e} "
                                 f"({free_space(self.path)})") from e
            record = {"host": socket.gethostname(), "pid": os.getpid(),
                      "pid_start": _started(os.getpid()),
                      "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      "command": self.command, "token": self.token}
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                self.path.unlink(missing_ok=True)
                raise WriteError(f"locking {self.store} ({self.path}) failed: {e} "
                                 f"({free_space(self.path)})") from e
            self.held = True
            return
        raise WriteError(f"{self.store}: could not take the lock {self.path} (other runs keep "
                         "taking it); try again")

    def _take_over(self, stale: Mapping[str, Any]) -> bool:
        """Remove the lock ``stale`` (read before, its process gone) - only that one: a rename
        moves whatever lock is there aside, and a lock that is not ``stale`` (another run took
        the stale one over meanwhile and locked) is put back. Whether ``stale`` was removed."""
        aside = self.path.with_name(f"lock.{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # released or taken over meanwhile: look again
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if isinstance(moved, dict) and moved.get("token") == stale.get("token"):
            aside.unlink(missing_ok=True)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, self.path)  # back, unless yet another run has locked since
        aside.unlink(missing_ok=True)
        return False

    def release(self) -> None:
        """Remove the lock if this run holds it (a lock another run took over is left)."""
        if not self.held:
            return
        self.held = False
        owner = self.owner()
        if owner is not None and owner.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _held(self, owner: Mapping[str, Any]) -> WriteError:
        if not owner:
            return WriteError(
                f"{self.store} is locked by a run whose lock file {self.path} cannot be read; if "
                f"no other run is writing the store, delete {self.path} and rerun")
        if owner.get("host") != socket.gethostname():
            return WriteError(
                f"{self.store} is in use by another run ({_who(owner)}), on another host, so "
                f"whether it still runs cannot be checked from here. Wait for it to finish or "
                f"write to another output path; if that run is gone, delete {self.path} and "
                "rerun (with --resume to keep its finished tiles)")
        return WriteError(
            f"{self.store} is in use by another run ({_who(owner)}), which is still running. "
            f"Wait for it to finish, stop it, or write to another output path; the lock is "
            f"{self.path}")


def _who(owner: Mapping[str, Any]) -> str:
    return (f"{owner.get('command', '?')} on host {owner.get('host', '?')}, pid "
            f"{owner.get('pid', '?')}, since {owner.get('since', '?')}")


def _alive(owner: Mapping[str, Any]) -> bool | None:
    """Whether the lock's process runs: None where that cannot be told (another host, or an
    unreadable lock). A pid now used by another process (its start time is not the one the
    lock recorded) is a process that is gone."""
    if not owner or owner.get("host") != socket.gethostname():
        return None
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    except (KeyError, TypeError, ValueError, OSError):
        return None
    recorded, now = owner.get("pid_start"), _started(pid)
    return not (recorded is not None and now is not None and recorded != now)


def _started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``; None
    elsewhere): with the pid, it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, after "comm"
    except (OSError, ValueError, IndexError):
        return None


# -- writing that survives a full disk ---------------------------------------------------------
def free_space(path: str | Path) -> str:
    """``"12.3 MB free on /data"`` for the file system of ``path`` (or its nearest existing
    parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return f"free space on {p} unknown"
    return f"{free / 1e6:.1f} MB free on {p}"


def write_text_atomic(path: str | Path, text: str, what: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling renamed over it: ``path`` is the
    old file or the whole new one, never a torn or empty one. A failure (a full disk) raises
    :class:`WriteError` naming ``what``, the path and the free space there."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {what} {path}: {e} ({free_space(path)}); free "
                         "space there and rerun (--resume keeps the finished tiles)") from e
    return path
