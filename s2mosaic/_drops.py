"""Scenes that could not be read, dropped from the tiles they touch (``runtime.on_read_error:
skip``), and named.

A read that still fails after GDAL's retries of its requests and the tile's own retries raises
:class:`~s2mosaic.errors.SceneReadError` with the asset's URL. :class:`SceneDrops` maps that URL
back to the item and asset, leaves the item out of that tile when it is computed again, and
keeps what the manifest records of the tile (``degraded``, with each dropped scene's item,
asset, URL, error and the pixels it would have covered). :func:`dropped_scenes` sums the
manifest's records into the list the run report and ``metadata.json`` carry.

A tile is computed without the whole item - every band and the SCL of that scene - not only
without the asset that failed: a pixel never mixes bands of different observations. So a
degraded tile equals the tile computed from the other items exactly, and ``--resume
--retry-dropped`` computes it again from all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import pystac
from odc.geo.geom import Geometry
from odc.geo.xr import rasterize

from ._grid import Tile
from ._manifest import TileRecord
from .errors import SceneReadError

__all__ = ["SceneDrops", "dropped_scenes", "read_error_of"]


#: A SceneReadError as text, where something between the read and the run made it a repr
#: (an exception ``distributed`` could not pickle becomes ``Exception(repr(e))``).
_AS_TEXT = re.compile(r"SceneReadError\(['\"]could not read (\S+): (.*?)['\"]\)")


def read_error_of(error: BaseException) -> SceneReadError | None:
    """The :class:`SceneReadError` that ``error`` is or was raised from, if any."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, SceneReadError):
            return e
        found = _AS_TEXT.search(str(e))
        if found:
            return SceneReadError(found[1], found[2])
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _plain(url: str) -> str:
    """A URL as readers and items may both spell it (no GDAL prefix, no ``file://``)."""
    for prefix in ("/vsicurl/", "file://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url


class SceneDrops:
    """The scenes dropped from each tile of one run.

    ``policy`` is ``runtime.on_read_error``; with ``fail`` nothing is ever dropped. ``aoi`` is
    the AOI in the output CRS (the pixels a dropped scene would have covered are counted inside
    it).
    """

    def __init__(self, items: Sequence[pystac.Item], aoi: Any, policy: str) -> None:
        self.policy = policy
        self.aoi = aoi
        self.items = {i.id: i for i in items}
        self.by_tile: dict[str, dict[str, dict[str, Any]]] = {}
        self._urls: dict[str, tuple[str, str]] | None = None

    def excluded(self, tile: Tile) -> set[str]:
        """Ids of the items left out of ``tile``."""
        return set(self.by_tile.get(tile.key, ()))

    def of(self, tile: Tile) -> list[dict[str, Any]]:
        """What the manifest records of the scenes dropped from ``tile``."""
        return list(self.by_tile.get(tile.key, {}).values())

    def take(self, tile: Tile, items: Iterable[pystac.Item], error: BaseException,
             ) -> dict[str, Any] | None:
        """Drop the scene whose read failed with ``error`` from ``tile`` (computed from
        ``items``) and return its record; None when the policy is ``fail``, ``error`` is not a
        failed read, or its URL is not an asset of one of ``items`` (then the tile fails)."""
        failed = read_error_of(error)
        if self.policy != "skip" or failed is None:
            return None
        found = self._asset(failed.url)
        if found is None:
            return None
        item_id, key = found
        if item_id not in {i.id for i in items} or item_id in self.excluded(tile):
            return None
        record = {"item": item_id, "asset": key, "url": failed.url, "error": failed.error,
                  "pixels": self._pixels(self.items[item_id], tile)}
        self.by_tile.setdefault(tile.key, {})[item_id] = record
        return record

    def _asset(self, url: str) -> tuple[str, str] | None:
        if self._urls is None:
            self._urls = {}
            for item in self.items.values():
                for key, asset in item.assets.items():
                    for href in (asset.href, asset.get_absolute_href()):
                        if href:
                            self._urls.setdefault(_plain(href), (item.id, key))
        return self._urls.get(_plain(url))

    def _pixels(self, item: pystac.Item, tile: Tile) -> int | None:
        """Pixels of ``tile`` inside the AOI that ``item``'s footprint covers."""
        if item.geometry is None or tile.geobox.crs is None:
            return None
        try:
            shape = Geometry(item.geometry, "EPSG:4326").to_crs(tile.geobox.crs)
            if self.aoi is not None:
                shape = shape & self.aoi
            if shape.is_empty:
                return 0
            return int(rasterize(shape, tile.geobox).sum())
        except Exception:  # a footprint that does not project: the count is unknown, not wrong
            return None


def dropped_scenes(records: Iterable[TileRecord]) -> list[dict[str, Any]]:
    """The scenes dropped from the degraded tiles among ``records`` (the manifest's final
    record of each tile): one entry per item and asset with its URL, last error, tiles and
    pixels (summed over the tiles), in item order."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        for d in rec.dropped if rec.status == "degraded" else ():
            entry = out.setdefault((d["item"], d["asset"]), {
                "item": d["item"], "asset": d["asset"], "url": d["url"], "error": d["error"],
                "tiles": [], "pixels": 0})
            entry["tiles"].append(rec.tile)
            if d.get("pixels") is None or entry["pixels"] is None:
                entry["pixels"] = None
            else:
                entry["pixels"] += d["pixels"]
    return [out[k] for k in sorted(out)]
