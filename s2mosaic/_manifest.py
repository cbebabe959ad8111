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

A tile's digest is the SHA-256 over the SHA-256 of each chunk it wrote (variable, position,
dtype, shape and bytes of the decoded chunk), in a fixed order: it can be recomputed from the
store alone to check a finished tile (:func:`tile_digest`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from ._search import DroppedItem, SearchResult
from .errors import WriteError

__all__ = ["RUN_GROUP", "Manifest", "TileRecord", "block_digest", "fingerprint", "tile_digest"]

#: Name of the Zarr group (inside the store) holding the manifest and the items.
RUN_GROUP = "s2mosaic_run"
FORMAT = 1
#: Runtime fields that do not change the pixels written (so they may differ on resume).
_SCHEDULING = ("scheduler", "cluster", "n_workers", "threads_per_worker", "max_tiles_in_flight",
               "retries", "read_timeout_s", "connect_timeout_s", "read_retries", "read_backoff_s")


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
    """``done`` (computed from items) or ``empty`` (no item or no AOI pixel: written as nodata)."""
    digest: str
    chunks: int
    bytes: int
    items: int
    seconds: float
    attempts: int


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
        with open(self.path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

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
        return {rec["tile"]: TileRecord(**{k: rec[k] for k in fields})
                for rec in self._lines()[1:] if rec.get("kind") == "tile"}

    def items(self) -> SearchResult:
        """The items recorded at the start of the run, with the search's dropped items and query."""
        doc = json.loads((self.dir / "items.json").read_text())
        items = [pystac.Item.from_dict(f) for f in doc["features"]]
        search = json.loads((self.dir / "search.json").read_text())
        dropped = [DroppedItem(d["id"], d["reason"]) for d in search.get("dropped", [])]
        return SearchResult(items, dropped, search.get("query"))
