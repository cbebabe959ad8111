"""Six demo scenes served from the loopback object store (tests/objectstore.py), for the tests
of reads that fail: test_faults (transient faults ride through) and test_dropped (a scene that
cannot be read is dropped and named). Their fixtures (``scenes``, ``served_clean``, ``store``) are
in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pystac
import shapely

import s2mosaic
from s2mosaic._spec import MosaicSpec
from s2mosaic.demo import demo_spec

from .objectstore import ObjectStore

#: Short limits for loopback reads: a stalled request is abandoned after a second.
FAST: dict[str, Any] = {"read_timeout_s": 1, "connect_timeout_s": 1, "read_retries": 4,
                        "read_backoff_s": 0.25}


class Scenes:
    """Six scenes of tile 32TQT and an AOI inside it that makes two run tiles."""

    def __init__(self, catalog: Path) -> None:
        self.catalog = catalog
        found = s2mosaic.search(demo_spec(catalog, catalog.parent))
        self.items = [i for i in found if i.properties["s2:mgrs_tile"] == "32TQT"][:6]
        other = next(i for i in found if i.properties["s2:mgrs_tile"] == "33TTN")
        only = shapely.geometry.shape(self.items[0].geometry).difference(
            shapely.geometry.shape(other.geometry).buffer(0.002))
        c = only.representative_point()
        self.aoi = [c.x - 0.005, c.y - 0.0025, c.x + 0.005, c.y + 0.0025]  # 60 x 79 px

    def spec(self, out: Path, **runtime: Any) -> MosaicSpec:
        return demo_spec(self.catalog, out).replace(
            aoi=self.aoi, runtime={"chunks": 64, "tile_size": 64, "scheduler": "synchronous",
                                   **runtime},
            output={"zarr": out / "m.zarr", "cog": out / "m.tif"})

    def served(self, store: ObjectStore) -> list[pystac.Item]:
        """The scenes with every asset read from ``store`` (copies: the originals stay)."""
        out = []
        for item in self.items:
            copy = item.clone()
            for asset in copy.assets.values():
                asset.href = store.url(asset.get_absolute_href() or asset.href)
            out.append(copy)
        return out
