"""The demo catalog as a fixture for a real STAC API (pgstac), for the ``stacapi`` tests and CI.

    python tests/stac_fixture.py OUTDIR [--catalog DIR] [--seed N] [--size PX]

writes

* the synthetic demo catalog (``s2mosaic.demo.make_demo_catalog``) into ``--catalog DIR``
  (default ``OUTDIR/catalog``): ``catalog.json`` → collection ``sentinel-2-l2a`` → items, COGs;
* ``OUTDIR/fixture/`` for ``shared/infra/stac_api_up.sh`` (``STAC_FIXTURE_DIR``):

  - ``collection.json``  the collection, without its relative (file-system) links;
  - ``items.ndjson``     one item per line, asset hrefs absolute ``file://`` URIs of the local
    COGs (so a mosaic built from what the API returns reads the same files as one built from
    the static catalog; a bare ``/path`` would resolve against the API's URL),
    ``collection`` set to the collection id, relative links dropped;
  - ``queryables.json``  JSON Schema of the searchable properties. pgstac needs it to treat
    ``eo:cloud_cover`` as a number when sorting (without it, it sorts the values as text).

Then start the API and point the tests at it::

    STAC_FIXTURE_DIR=OUTDIR/fixture bash ../shared/infra/stac_api_up.sh
    STAC_API_URL=http://127.0.0.1:8082 S2MOSAIC_DEMO_CATALOG=OUTDIR/catalog \
        .venv/bin/python -m pytest -m stacapi

Importable too: :func:`build` does the above, :func:`pgstac_records` returns the records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pystac

COLLECTION = "sentinel-2-l2a"

QUERYABLES: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "$id": "https://stac-api.example.invalid/queryables",
    "type": "object",
    "title": "Queryables for the s2mosaic demo Sentinel-2 L2A collection",
    "properties": {
        "datetime": {
            "description": "Acquisition (sensing) time",
            "type": "string",
            "format": "date-time",
        },
        "eo:cloud_cover": {
            "description": "Cloud cover of the scene, percent",
            "type": "number",
            "minimum": 0,
            "maximum": 100,
        },
        "s2:mgrs_tile": {
            "description": "MGRS tile of the product, e.g. 32TQT",
            "type": "string",
        },
    },
    "additionalProperties": True,
}


def _url_links(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Keep only links that point at URLs; file-system links mean nothing inside a database."""
    return [link for link in d.get("links", []) if "://" in str(link.get("href", ""))]


def pgstac_records(catalog_json: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The collection and its items as pgstac-loadable dicts (asset hrefs: ``file://`` URIs).

    Raises ``FileNotFoundError`` when an asset href does not point at an existing file: an API
    serving such items could be searched but not mosaicked.
    """
    root = pystac.read_file(str(Path(catalog_json).resolve()))
    if not isinstance(root, pystac.Catalog):
        raise ValueError(f"{catalog_json} is not a STAC catalog or collection")
    found = root if isinstance(root, pystac.Collection) and root.id == COLLECTION else None
    found = found or next((c for c in root.get_children() if c.id == COLLECTION), None)
    if not isinstance(found, pystac.Collection):
        raise ValueError(f"{catalog_json} holds no collection {COLLECTION!r}")
    collection: pystac.Collection = found

    col = collection.to_dict(include_self_link=False, transform_hrefs=False)
    col["links"] = _url_links(col)
    items = []
    for item in sorted(collection.get_items(recursive=True), key=lambda i: i.id):
        item.make_asset_hrefs_absolute()
        d = item.to_dict(include_self_link=False, transform_hrefs=False)
        d["collection"] = collection.id
        d["links"] = _url_links(d)
        for key, asset in d["assets"].items():
            href = asset["href"]
            if "://" not in href:
                if not Path(href).is_file():
                    raise FileNotFoundError(
                        f"item {item.id!r} asset {key!r}: {href} does not exist"
                    )
                # A file URI, not a bare path: an item fetched from http://host/... resolves the
                # href "/tmp/x.tif" against its own URL (RFC 3986) to http://host/tmp/x.tif.
                asset["href"] = Path(href).resolve().as_uri()
        items.append(d)
    if not items:
        raise ValueError(f"collection {COLLECTION!r} in {catalog_json} has no items")
    return col, items


def write_fixture(catalog_json: str | Path, fixture_dir: str | Path) -> Path:
    """Write ``collection.json``, ``items.ndjson`` and ``queryables.json`` into ``fixture_dir``."""
    out = Path(fixture_dir)
    out.mkdir(parents=True, exist_ok=True)
    col, items = pgstac_records(catalog_json)
    (out / "collection.json").write_text(json.dumps(col, indent=1) + "\n")
    with open(out / "items.ndjson", "w") as f:
        for d in items:
            f.write(json.dumps(d, separators=(",", ":")) + "\n")
    (out / "queryables.json").write_text(json.dumps(QUERYABLES, indent=1) + "\n")
    return out


def build(
    outdir: str | Path, catalog: str | Path | None = None, *, seed: int = 0, size: int = 600
) -> tuple[Path, Path]:
    """Generate the demo catalog and the pgstac fixture; return (catalog dir, fixture dir)."""
    from s2mosaic.demo import make_demo_catalog

    outdir = Path(outdir).resolve()
    catalog_dir = Path(catalog).resolve() if catalog is not None else outdir / "catalog"
    catalog_json = make_demo_catalog(catalog_dir, seed=seed, size=size)
    return catalog_dir, write_fixture(catalog_json, outdir / "fixture")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("outdir", help="writes OUTDIR/fixture (and OUTDIR/catalog without --catalog)")
    ap.add_argument("--catalog", help="where to write the demo catalog (default OUTDIR/catalog)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=600, help="tile width in 10 m px (default 600)")
    ns = ap.parse_args(argv)
    catalog_dir, fixture_dir = build(ns.outdir, ns.catalog, seed=ns.seed, size=ns.size)
    n = len((fixture_dir / "items.ndjson").read_text().splitlines())
    print(f"demo catalog: {catalog_dir / 'catalog.json'}")
    print(f"pgstac fixture: {fixture_dir} ({n} items, collection {COLLECTION!r})")
    print(f"  STAC_FIXTURE_DIR={fixture_dir} bash ../shared/infra/stac_api_up.sh")
    print(f"  export STAC_API_URL=http://127.0.0.1:8082 S2MOSAIC_DEMO_CATALOG={catalog_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
