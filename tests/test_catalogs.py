"""Real catalog shapes, offline: Planetary Computer items (no ``raster:bands``), Earth Search v1
(BOA offset already removed, ``earthsearch:boa_offset_applied``) and c1 (offset declared in
``raster:bands``), all built from the real item JSON in ``../shared/data/s2/stac_examples`` with
their hrefs pointing at small local GeoTIFFs holding the same reflectance.

The expected mosaic is computed here from the arrays written, with NumPy only: SCL validity
(nodata never clear), band nodata, BOA offset removal, the percentile over valid observations.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

import s2mosaic
from s2mosaic._cube import load_cube
from s2mosaic._grid import output_geobox
from s2mosaic._spec import MosaicSpec
from s2mosaic.errors import DataError, SpecError

from .oracle import place, reduce

EPSG = 32606  # the real Planetary Computer item's tile, 06VVN
X0, Y0, SIZE = 400_000.0, 6_800_000.0, 40  # top-left corner; SIZE x SIZE 10 m pixels
T10 = Affine(10, 0, X0, 0, -10, Y0)
T20 = Affine(20, 0, X0, 0, -20, Y0)
PC_ITEM = "odc-stac_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
PC_COLLECTION = "odc-stac_sentinel-2-l2a.collection.json"
ES_V1 = "earth-search_sentinel-2-l2a_2025-07-31_utm20-24.json"
ES_C1 = "earth-search_sentinel-2-c1-l2a_2025-07-31_utm20-24.json"
BANDS = {"blue": "B02", "red": "B04", "nir": "B08"}  # spec name -> ESA id (PC asset key)
CLASSES = (0, 1, 3, 8, 9, 10)  # the default mask.scl_classes
Q = 25.0


@dataclass
class Scene:
    """One acquisition: reflectance × 10000 per band, SCL at 20 m, baseline, kept or not."""

    when: dt.datetime
    baseline: str
    generated: str
    refl: dict[str, np.ndarray]  # ESA id -> (SIZE, SIZE) uint16, 0 = nodata
    scl: np.ndarray  # (SIZE // 2, SIZE // 2) uint8, 0 = nodata
    kept: bool = True  # False: an older reprocessing of another scene's acquisition

    @property
    def offset(self) -> int:  # DN the product stores above reflectance × 10000
        return 1000 if tuple(int(x) for x in self.baseline.split(".")) >= (4, 0) else 0


def _scenes() -> list[Scene]:
    rng = np.random.default_rng(13)

    def scene(when: str, baseline: str, generated: str, kept: bool = True) -> Scene:
        refl = {b: rng.integers(1200, 6000, (SIZE, SIZE)).astype(np.uint16) for b in BANDS.values()}
        scl = rng.choice(np.array([4, 5, 6, 7, 11, 8, 9, 3], dtype=np.uint8), (SIZE // 2, SIZE // 2),
                         p=[0.3, 0.2, 0.1, 0.05, 0.05, 0.15, 0.1, 0.05])
        return Scene(dt.datetime.fromisoformat(when), baseline, generated, refl, scl, kept)

    a = scene("2019-06-29T21:25:29.024+00:00", "02.12", "2020-10-06T08:05:31Z")
    b = scene("2020-07-08T21:25:19+00:00", "02.14", "2020-07-08T23:00:00Z")
    # Left swath edge: the bands end at x = 7, the 20 m SCL at x = 6; so at x = 6 the bands are
    # nodata where SCL is clear.
    for r in b.refl.values():
        r[:, :7] = 0
    b.scl[:, :3] = 0
    b.scl[:, 3] = 4
    c = scene("2022-06-23T21:25:29+00:00", "04.00", "2022-06-24T01:00:00Z")
    # Right swath edge: SCL nodata from x = 34, the bands from x = 35; so at x = 34 SCL is nodata
    # where every band holds a value. And a few pixels where only B08 is nodata.
    for r in c.refl.values():
        r[:, 35:] = 0
    c.scl[:, 17:] = 0
    c.scl[:, 16] = 5
    c.refl["B08"][10:14, 20:22] = 0
    d = scene("2023-06-18T21:25:31+00:00", "05.09", "2023-06-19T02:00:00Z")
    d_old = scene("2023-06-18T21:25:31+00:00", "04.00", "2023-06-18T23:00:00Z", kept=False)
    return [a, b, c, d, d_old]


def _write(path: Path, data: np.ndarray, transform: Affine) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype, crs=f"EPSG:{EPSG}", transform=transform,
                       nodata=0, tiled=True, blockxsize=16, blockysize=16,
                       compress="deflate") as dst:
        dst.write(data, 1)
    return path.resolve().as_uri()  # absolute, as real hrefs are (items keep their https self link)


def _footprint() -> tuple[dict[str, Any], list[float]]:
    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    x1, y1 = X0 + SIZE * 10, Y0 - SIZE * 10
    ring = [t.transform(x, y) for x, y in [(X0, Y0), (x1, Y0), (x1, y1), (X0, y1), (X0, Y0)]]
    lons, lats = zip(*ring, strict=True)
    return ({"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
            [min(lons), min(lats), max(lons), max(lats)])


def _aoi() -> dict[str, Any]:
    """The tile shrunk by 2 m: every pixel centre lies well inside it."""
    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    x0, y0, x1, y1 = X0 + 2, Y0 - 2, X0 + SIZE * 10 - 2, Y0 - SIZE * 10 + 2
    ring = [list(t.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    return {"type": "Polygon", "coordinates": [ring]}


def _grid(asset: dict[str, Any], key: str) -> None:
    scl = key.lower() == "scl"
    asset["proj:shape"] = [SIZE // 2, SIZE // 2] if scl else [SIZE, SIZE]
    asset["proj:transform"] = list(T20 if scl else T10)[:6]
    for k in ("file:size", "file:checksum", "alternate", "storage:refs"):
        asset.pop(k, None)


def _pc_item(base: dict[str, Any], s: Scene, files: dict[str, str], n: int) -> dict[str, Any]:
    d = copy.deepcopy(base)
    geom, bbox = _footprint()
    stamp = s.when.strftime("%Y%m%dT%H%M%S")
    gen = s.generated.replace("-", "").replace(":", "")[:15]
    d["id"] = f"S2B_MSIL2A_{stamp}_R043_T06VVN_{gen}" if n else d["id"]  # the real id for the first
    d["geometry"], d["bbox"] = geom, bbox
    p = d["properties"]
    p["datetime"] = s.when.isoformat().replace("+00:00", "Z")
    p["s2:processing_baseline"] = s.baseline
    p["s2:generation_time"] = s.generated
    p["s2:product_uri"] = f"S2B_MSIL2A_{stamp}_N{s.baseline.replace('.', '')}_R043_T06VVN_{gen}.SAFE"
    d["assets"] = {k: d["assets"][k] for k in [*BANDS.values(), "SCL"]}
    for key, asset in d["assets"].items():
        asset["href"] = files[key]
        assert "raster:bands" not in asset  # as Planetary Computer serves them
        _grid(asset, key)
    return d


def _es_item(base: dict[str, Any], s: Scene, files: dict[str, str], n: int, c1: bool) -> dict[str, Any]:
    d = copy.deepcopy(base)
    geom, bbox = _footprint()
    d["id"] = f"S2B_06VVN_{s.when:%Y%m%d}_{0 if s.kept else 1}_L2A" if not c1 else \
        f"S2B_T06VVN_{s.when:%Y%m%dT%H%M%S}_L2A{'' if s.kept else '_old'}"
    d["geometry"], d["bbox"] = geom, bbox
    p = d["properties"]
    p.update({"datetime": s.when.isoformat().replace("+00:00", "Z"), "platform": "sentinel-2b",
              "s2:processing_baseline": s.baseline, "s2:generation_time": s.generated,
              "mgrs:utm_zone": 6, "mgrs:latitude_band": "V", "mgrs:grid_square": "VN",
              "grid:code": "MGRS-06VVN", "proj:epsg": EPSG})
    p.pop("proj:centroid", None)
    p.pop("s2:tile_id", None)
    # storage:* describes the real S3 hrefs; pystac warns that it cannot parse file:// ones.
    d["stac_extensions"] = [e for e in d["stac_extensions"] if "/storage/" not in e]
    for k in [k for k in p if k.startswith("storage:")]:
        del p[k]
    p["s2:product_uri"] = f"S2B_MSIL2A_{s.when:%Y%m%dT%H%M%S}_N{s.baseline.replace('.', '')}_R043_T06VVN.SAFE"
    if not c1:
        # Earth Search v1 removed the offset from the pixels and says so; raster:bands still
        # lists the −0.1 (the flag must win).
        p["earthsearch:boa_offset_applied"] = bool(s.offset)
    keys = {"blue": "blue", "red": "red", "nir": "nir", "scl": "scl"}
    d["assets"] = {k: d["assets"][k] for k in keys}
    for key, asset in d["assets"].items():
        asset["href"] = files["SCL" if key == "scl" else BANDS[key]]
        if key != "scl":
            asset["raster:bands"][0]["offset"] = -0.1 if s.offset else 0.0
        _grid(asset, key)
    return d


@dataclass
class Catalogs:
    root: Path
    scenes: list[Scene]
    files: dict[str, Path]  # "pc", "v1", "c1" -> ItemCollection JSON


@pytest.fixture(scope="module")
def catalogs(s2_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Catalogs:
    root = tmp_path_factory.mktemp("catalogs")
    examples = s2_data / "stac_examples"
    pc_base = json.loads((examples / PC_ITEM).read_text())
    v1_base = json.loads((examples / ES_V1).read_text())["features"][0]
    c1_base = json.loads((examples / ES_C1).read_text())["features"][0]
    scenes = _scenes()
    out: dict[str, list[dict[str, Any]]] = {"pc": [], "v1": [], "c1": []}
    for n, s in enumerate(scenes):
        raw, harmonised = {}, {}  # ESA's DN (offset included) and Earth Search v1's (removed)
        for b, r in s.refl.items():
            dn = np.where(r > 0, r + s.offset, 0).astype(np.uint16)
            raw[b] = _write(root / f"s{n}_{b}.tif", dn, T10)
            harmonised[b] = _write(root / f"s{n}_{b}_v1.tif", r, T10) if s.offset else raw[b]
        raw["SCL"] = harmonised["SCL"] = _write(root / f"s{n}_SCL.tif", s.scl, T20)
        out["pc"].append(_pc_item(pc_base, s, raw, n))
        out["v1"].append(_es_item(v1_base, s, harmonised, n, c1=False))
        out["c1"].append(_es_item(c1_base, s, raw, n, c1=True))
    files = {}
    for name, feats in out.items():
        files[name] = root / f"{name}.json"
        files[name].write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return Catalogs(root, scenes, files)


def _spec(cat: Catalogs, shape: str, **kw: Any) -> MosaicSpec:
    collection = "sentinel-2-c1-l2a" if shape == "c1" else "sentinel-2-l2a"
    base: dict[str, Any] = dict(
        aoi=_aoi(), period=["2019-01-01", "2023-12-31"],
        source={"stac": str(cat.files[shape]), "collection": collection},
        bands=list(BANDS), grid={"crs": f"EPSG:{EPSG}", "resolution": 10},
        composite={"method": "percentile", "percentile": Q},
        runtime={"chunks": 16, "scheduler": "synchronous"},
    )
    base.update(kw)
    return MosaicSpec(**base)


def _oracle(scenes: list[Scene], classes: tuple[int, ...] = CLASSES,
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Expected bands and count on the tile's 10 m grid, from the arrays written."""
    kept = [s for s in scenes if s.kept]
    valid = []
    for s in kept:
        scl = np.repeat(np.repeat(s.scl, 2, axis=0), 2, axis=1)
        ok = (scl != 0) & ~np.isin(scl, classes)  # SCL nodata is never clear
        for r in s.refl.values():
            ok &= r != 0
        valid.append(ok)
    v = np.stack(valid)
    bands = {name: reduce(np.stack([s.refl[b] for s in kept]), v, "percentile", Q)
             for name, b in BANDS.items()}
    return bands, v.sum(axis=0).astype(np.uint16)


def _check(result: Any, scenes: list[Scene], classes: tuple[int, ...] = CLASSES) -> None:
    gbox = result.odc.geobox
    shape = gbox.shape.yx
    bands, count = _oracle(scenes, classes)
    with dask.config.set(scheduler="synchronous"):
        got = result.compute()
    for name in BANDS:
        assert got[name].dtype == np.uint16
        expected = place(bands[name], T10, gbox.affine, shape)
        np.testing.assert_array_equal(got[name].values, expected, err_msg=name)
    np.testing.assert_array_equal(got["count"].values, place(count, T10, gbox.affine, shape))


def test_fixture_has_the_cases_the_tests_are_about(catalogs: Catalogs) -> None:
    """Swath edges, band-only nodata, an offset baseline and a duplicate: each changes the
    expected result, so a mosaic that ignored one could not equal the oracle."""
    s = catalogs.scenes
    b_scl = np.repeat(np.repeat(s[1].scl, 2, axis=0), 2, axis=1)
    assert (s[1].refl["B02"][:, 6] == 0).all() and (b_scl[:, 6] != 0).all()
    c_scl = np.repeat(np.repeat(s[2].scl, 2, axis=0), 2, axis=1)
    assert (s[2].refl["B02"][:, 34] != 0).all() and (c_scl[:, 34] == 0).all()
    assert {x.offset for x in s} == {0, 1000}
    _, count = _oracle(s)
    _, count_with_dup = _oracle([*s[:4], dataclasses.replace(s[4], kept=True)])
    assert (count != count_with_dup).any()
    pc = json.loads(catalogs.files["pc"].read_text())["features"]
    assert not any("raster:bands" in a for f in pc for a in f["assets"].values())


def test_planetary_computer_run_equals_oracle(catalogs: Catalogs, tmp_path: Path) -> None:
    """`run` on Planetary Computer items (no raster:bands): uint16 throughout, the oracle's
    values, at the swath edges too."""
    spec = _spec(catalogs, "pc", output={"cog": tmp_path / "pc.tif"})
    items = s2mosaic.search(spec)
    cube = load_cube(items, spec, output_geobox(spec, items))
    assert {str(cube[v].dtype) for v in BANDS} == {"uint16"} and cube.scl.dtype == np.uint8
    assert cube.blue.attrs["nodata"] == 0 and cube.scl.attrs["nodata"] == 0
    report = s2mosaic.run(spec)
    assert report.items == 4  # the older reprocessing dropped
    bands, count = _oracle(catalogs.scenes)
    with rasterio.open(tmp_path / "pc.tif") as cog:
        got = cog.read()
        transform, shape = cog.transform, (cog.height, cog.width)
        assert cog.dtypes[0] == "uint16"
    for i, name in enumerate(BANDS):
        np.testing.assert_array_equal(got[i], place(bands[name], T10, transform, shape), name)
    np.testing.assert_array_equal(got[-1], place(count, T10, transform, shape))


@pytest.mark.parametrize(("shape", "loader"), [("pc", "odc-stac"), ("pc", "stackstac"),
                                               ("v1", "odc-stac"), ("c1", "odc-stac"),
                                               ("v1", "stackstac")])
def test_every_catalog_shape_and_loader_equals_oracle(catalogs: Catalogs, shape: str,
                                                      loader: str) -> None:
    """Earth Search v1 (offset removed in the pixels) and c1 (offset declared) give what the
    Planetary Computer items give, with either loader."""
    spec = _spec(catalogs, shape, runtime={"chunks": 16, "scheduler": "synchronous",
                                           "loader": loader})
    _check(s2mosaic.mosaic(spec), catalogs.scenes)


def test_swath_edges_are_invalid_without_class_0_listed(catalogs: Catalogs) -> None:
    """SCL nodata stays invalid when mask.scl_classes leaves out class 0."""
    classes = (3, 8, 9, 10)
    spec = _spec(catalogs, "pc", mask={"scl_classes": list(classes)})
    _check(s2mosaic.mosaic(spec), catalogs.scenes, classes)


def _renamed(cat: Catalogs, tmp_path: Path, collection: str) -> Path:
    fc = json.loads(cat.files["pc"].read_text())
    for f in fc["features"]:
        f["collection"] = collection
        f["links"] = [link for link in f["links"] if link["rel"] not in ("collection", "parent")]
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(fc))
    return path


def test_unknown_collection_without_raster_bands_is_a_clear_error(catalogs: Catalogs,
                                                                   tmp_path: Path) -> None:
    path = _renamed(catalogs, tmp_path, "my-sentinel-2")
    spec = _spec(catalogs, "pc", source={"stac": str(path), "collection": "my-sentinel-2"})
    with pytest.raises(DataError, match=r"collection 'my-sentinel-2'.*asset 'B02'.*"
                                        r"source\.band_dtypes: \{B02: uint16\}"):
        s2mosaic.mosaic(spec)
    # The field the message names fixes it ("*" for every asset, SCL by its key).
    fixed = spec.replace(source={"stac": str(path), "collection": "my-sentinel-2",
                                 "band_dtypes": {"*": "uint16", "SCL": "uint8"}})
    _check(s2mosaic.mosaic(fixed), catalogs.scenes)


def test_types_come_from_the_collections_item_assets(catalogs: Catalogs, s2_data: Path,
                                                     tmp_path: Path) -> None:
    """An unknown collection whose collection.json (at hand, local) lists item_assets with
    raster:bands: its types are used, nothing is fetched."""
    coll = pystac.Collection.from_file(str(s2_data / "stac_examples" / PC_COLLECTION))
    coll.id = "my-sentinel-2"
    coll.clear_links()
    for f in json.loads(catalogs.files["pc"].read_text())["features"]:
        item = pystac.Item.from_dict(f)
        item.clear_links()
        coll.add_item(item)
    cat = pystac.Catalog("root", "test")
    cat.add_child(coll)
    cat.normalize_and_save(str(tmp_path / "cat"), pystac.CatalogType.SELF_CONTAINED)
    spec = _spec(catalogs, "pc", source={"stac": str(tmp_path / "cat" / "catalog.json"),
                                         "collection": "my-sentinel-2"})
    items = s2mosaic.search(spec)
    cube = load_cube(items, spec, output_geobox(spec, items))
    assert cube.red.dtype == np.uint16 and cube.scl.dtype == np.uint8
    _check(s2mosaic.mosaic(spec, items=items), catalogs.scenes)


def test_band_type_spec_fields_validate(catalogs: Catalogs) -> None:
    with pytest.raises(SpecError, match=r"source\.band_dtypes\.B04.*'uint8', 'uint16'"):
        _spec(catalogs, "pc", source={"stac": "x.json", "band_dtypes": {"B04": "float32"}})
    with pytest.raises(SpecError, match=r"source\.nodata\.SCL"):
        _spec(catalogs, "pc", source={"stac": "x.json", "nodata": {"SCL": -1}})
    with pytest.raises(SpecError, match=r"source\.band_dtypes.*mapping"):
        _spec(catalogs, "pc", source={"stac": "x.json", "band_dtypes": ["uint16"]})
    spec = _spec(catalogs, "pc", source={"stac": "x.json", "nodata": {"*": 0}})
    assert MosaicSpec.from_dict(spec.to_dict()) == spec and hash(spec) == hash(spec.replace())


def test_band_types_of_the_real_items(s2_data: Path) -> None:
    """The table covers every band of a real Planetary Computer and Earth Search v0 item (both
    without raster:bands); what an item declares comes first, the spec's fields before that."""
    from s2mosaic._items import band_type

    examples = s2_data / "stac_examples"
    pc = pystac.Item.from_dict(json.loads((examples / PC_ITEM).read_text()))
    v0 = pystac.Item.from_dict(json.loads((examples / "odc-stac_S2A_28QCH_20200714_0_L2A.json")
                                          .read_text()))
    for item in (pc, v0):
        for key in ["B01", "B02", "B8A", "B09", "B12", "AOT", "WVP", "SCL"]:
            t = band_type(item, key)
            assert (t.dtype, t.nodata) == ("uint8" if key == "SCL" else "uint16", 0), key
    with pytest.raises(DataError, match="asset 'visual'"):  # 3-band uint8 TCI: not guessed
        band_type(pc, "visual")
    c1 = pystac.Item.from_dict(json.loads((examples / ES_C1).read_text())["features"][0],
                               migrate=False)  # pystac's storage migration warns on it
    assert band_type(c1, "scl").source == "raster:bands"
    assert band_type(c1, "red", nodata={"red": 7}).nodata == 7
    assert band_type(c1, "red", dtypes={"*": "uint8"}).dtype == "uint8"
