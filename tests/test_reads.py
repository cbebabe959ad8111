"""SCL at its native 20 m (``s2mosaic._sclread``): the bytes of the warped read, on the demo.

Every comparison is against the path the cube took before (SCL warped onto the output grid by
odc-stac, nearest), obtained by switching the native plan off; each case also asserts which path
the native run took, so that a case meant to read natively cannot pass by falling back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import pytest
import xarray as xr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geobox import GeoBox

import s2mosaic
import s2mosaic._cube as cube_mod
from s2mosaic._cube import load_cube
from s2mosaic._grid import output_geobox
from s2mosaic._sclread import NativeScl, native_factor, plan_native_scl, replicate_blocks
from s2mosaic._spec import MosaicSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import DroppedScenesWarning, SceneReadError

from .objectstore import Fault, ObjectStore
from .test_faults import FAST, Scenes

QUICK: dict[str, Any] = {**FAST, "read_retries": 1, "read_backoff_s": 0.05, "retries": 1}


@pytest.fixture(scope="module")
def items(demo_catalog: Path) -> list[pystac.Item]:
    return list(s2mosaic.search(demo_spec(demo_catalog, demo_catalog.parent)))


@pytest.fixture(scope="module")
def spec(demo_catalog: Path) -> MosaicSpec:
    return demo_spec(demo_catalog, demo_catalog.parent).replace(
        runtime={"chunks": 64, "scheduler": "synchronous"})


class Spy:
    """Records the plans load_cube makes; ``off`` forces the warped path, ``mutate`` edits one."""

    def __init__(self, off: bool = False, mutate: Any = None) -> None:
        self.plans: list[NativeScl | None] = []
        self.off, self.mutate = off, mutate

    def __call__(self, *a: Any, **kw: Any) -> NativeScl | None:
        plan = None if self.off else plan_native_scl(*a, **kw)
        if plan is not None and self.mutate is not None:
            self.mutate(plan)
        self.plans.append(plan)
        return plan


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def install(**kw: Any) -> Spy:
        s = Spy(**kw)
        monkeypatch.setattr(cube_mod, "plan_native_scl", s)
        return s

    yield install


def _scl(items: list[pystac.Item], spec: MosaicSpec, gbox: GeoBox) -> np.ndarray:
    with dask.config.set(scheduler="synchronous"):
        return load_cube(items, spec, gbox).scl.values


def _grid(name: str, items: list[pystac.Item], spec: MosaicSpec) -> GeoBox:
    tqt = next(i for i in items if i.properties["s2:mgrs_tile"] == "32TQT")
    west, north = (tqt.assets["SCL"].extra_fields["proj:transform"][i] for i in (2, 5))
    x0, y0 = west + 400, north - 400
    if name == "aligned":
        return GeoBox((250, 237), Affine(10, 0, x0, 0, -10, y0), "EPSG:32632")
    if name == "odd-x":
        return GeoBox((250, 237), Affine(10, 0, x0 + 10, 0, -10, y0), "EPSG:32632")
    if name == "odd-y":
        return GeoBox((251, 236), Affine(10, 0, x0, 0, -10, y0 - 10), "EPSG:32632")
    if name == "tile-edge":  # past the tile's west and north edges: nodata there
        return GeoBox((131, 129), Affine(10, 0, west - 600, 0, -10, north + 400),
                      "EPSG:32632")
    crs = {"cross-zone-32632": "EPSG:32632", "cross-zone-32633": "EPSG:32633"}[name]
    return output_geobox(spec.replace(grid={"crs": crs, "resolution": 10}), items)


#: grid → (native factor expected, or None for the warped fallback)
CASES = {"aligned": 2, "tile-edge": 2, "cross-zone-32632": 2, "cross-zone-32633": 2,
         "odd-x": None, "odd-y": None}


@pytest.mark.parametrize("name", list(CASES))
def test_native_scl_is_byte_identical_to_the_warped_read(
        name: str, items: list[pystac.Item], spec: MosaicSpec, spy: Any) -> None:
    gbox = _grid(name, items, spec)
    native_run = spy()
    got = _scl(items, spec, gbox)
    (plan,) = native_run.plans
    assert (plan.k if plan else None) == CASES[name]
    if name.startswith("cross-zone"):  # one zone read natively, the other warped
        assert plan is not None and plan.native and plan.warped
    spy(off=True)
    want = _scl(items, spec, gbox)
    assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape
    assert len(np.unique(want)) > 3  # the comparison sees clouds, shadows and ground
    if name == "tile-edge":  # and nodata, outside the file
        assert (want == 0).any() and (want != 0).any()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("chunks", [50, 63])
def test_chunks_not_on_the_coarse_grid(chunks: int, items: list[pystac.Item], spec: MosaicSpec,
                                       spy: Any) -> None:
    """Chunks of 50 px (25 coarse px, last block partial) read natively; 63 px cannot."""
    spec = spec.replace(runtime={"chunks": chunks, "scheduler": "synchronous"})
    gbox = _grid("cross-zone-32633", items, spec)
    run = spy()
    got = _scl(items, spec, gbox)
    assert (run.plans[0] is not None) == (chunks % 2 == 0)
    spy(off=True)
    np.testing.assert_array_equal(got, _scl(items, spec, gbox))


def test_each_grid_gets_its_own_scl_keys(items: list[pystac.Item], spec: MosaicSpec,
                                         spy: Any) -> None:
    """Two tiles in flight on one cluster must not share task keys (they once did when a tile
    read SCL natively only: the replicate layer was named from the variable's name)."""
    run = spy()
    grid = _grid("aligned", items, spec)
    one_zone = [i for i in items if i.properties["s2:mgrs_tile"] == "32TQT"]
    a = load_cube(one_zone, spec, grid).scl.data
    b = load_cube(one_zone, spec, grid[:64, 64:128]).scl.data
    assert all(p is not None and not p.warped for p in run.plans)
    assert a.name.startswith("scl-native-") and a.name != b.name


def test_the_identity_check_sees_fusion_order(items: list[pystac.Item], spec: MosaicSpec,
                                              spy: Any) -> None:
    """Where both zones have data the fusion order decides the bytes: fusing in the wrong order
    (native first in every time slice) must differ, or the tests above would prove nothing."""
    gbox = _grid("cross-zone-32633", items, spec)
    spy(off=True)
    want = _scl(items, spec, gbox)
    run = spy(mutate=lambda p: setattr(p, "warped_first", []))
    wrong = _scl(items, spec, gbox)
    assert run.plans[0] is not None
    assert (wrong != want).sum() > 100


@pytest.mark.parametrize("method", ["percentile", "mean", "first", "last", "medoid"])
def test_a_mosaic_with_native_scl_has_the_warped_bytes(
        method: str, items: list[pystac.Item], spec: MosaicSpec, spy: Any,
        dask_client: Any) -> None:
    spec = spec.replace(composite={"method": method}, runtime={"chunks": 64})
    gbox = _grid("cross-zone-32632", items, spec)
    run = spy()
    got = s2mosaic.mosaic(spec, items, geobox=gbox).compute(scheduler=dask_client.get)
    assert run.plans[0] is not None
    spy(off=True)
    want = s2mosaic.mosaic(spec, items, geobox=gbox).compute(scheduler=dask_client.get)
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())


def test_native_factor_needs_the_same_crs_and_edges() -> None:
    src = GeoBox((100, 100), Affine(20, 0, 600000, 0, -20, 5000040), "EPSG:32632")

    def dst(x: float, y: float, res: float = 10, crs: str = "EPSG:32632") -> GeoBox:
        return GeoBox((10, 10), Affine(res, 0, x, 0, -res, y), crs)

    assert native_factor(src, dst(600040, 5000000)) == 2
    assert native_factor(src, dst(599960, 5000100)) == 2  # outside the file: still its grid
    assert native_factor(src, dst(600040, 5000000, res=5)) == 4
    assert native_factor(src, dst(600010, 5000000)) is None
    assert native_factor(src, dst(600040, 5000010)) is None
    assert native_factor(src, dst(600040, 5000000, res=20)) is None  # nothing to gain
    assert native_factor(src, dst(600040, 5000000, res=15)) is None
    assert native_factor(src, dst(600040, 5000000, crs="EPSG:32633")) is None


def test_replicate_blocks_against_numpy() -> None:
    rng = np.random.default_rng(0)
    native = rng.integers(0, 4, (3, 5, 4), dtype=np.uint8)
    warped = rng.integers(0, 4, (2, 9, 7), dtype=np.uint8)
    info = {None: {"chunk-shape": (4, 9, 7)}}
    out = replicate_blocks(native, warped, k=2, nodata=0, n_slices=4, native_slices=[0, 1, 3],
                           warped_slices=[1, 2], warped_first=[1], block_info=info)
    up = np.kron(native, np.ones((1, 2, 2), np.uint8))[:, :9, :7]
    want = np.zeros((4, 9, 7), np.uint8)
    want[[0, 1, 3]] = up
    want[1] = np.where(warped[0] != 0, warped[0], up[1])  # warped first in slice 1
    want[2] = warped[1]
    np.testing.assert_array_equal(out, want)


@st.composite
def _blocks(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(2, 4))
    n = draw(st.integers(1, 5))
    hy, wx = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    where = draw(st.lists(st.sampled_from(["native", "warped", "both"]), min_size=n,
                          max_size=n))
    native_slices = [t for t, w in enumerate(where) if w != "warped"]
    warped_slices = [t for t, w in enumerate(where) if w != "native"]
    first = [t for t in warped_slices if where[t] == "both" and draw(st.booleans())]
    elems = st.integers(0, 3)
    from hypothesis.extra.numpy import arrays

    native = draw(arrays(np.uint8, (len(native_slices), -(-hy // k), -(-wx // k)), elements=elems))
    warped = draw(arrays(np.uint8, (len(warped_slices), hy, wx), elements=elems))
    return {"k": k, "n": n, "shape": (hy, wx), "native": native, "warped": warped,
            "native_slices": native_slices, "warped_slices": warped_slices, "first": first}


@settings(max_examples=200, deadline=None)
@given(_blocks())
def test_replicate_blocks_is_first_valid_fusion(b: dict[str, Any]) -> None:
    """Against the fusion odc-loader does, pixel by pixel: each slice's sources in order, a
    pixel taken from the first source that is not nodata (0)."""
    if not b["native_slices"]:
        return  # the plan never makes a native load without native items
    hy, wx = b["shape"]
    out = replicate_blocks(
        b["native"], b["warped"] if b["warped_slices"] else None, k=b["k"], nodata=0,
        n_slices=b["n"], native_slices=b["native_slices"], warped_slices=b["warped_slices"],
        warped_first=b["first"], block_info={None: {"chunk-shape": (b["n"], hy, wx)}})
    want = np.zeros((b["n"], hy, wx), np.uint8)
    for t in range(b["n"]):
        sources = []
        if t in b["native_slices"]:
            coarse = b["native"][b["native_slices"].index(t)]
            sources.append(np.repeat(np.repeat(coarse, b["k"], 0), b["k"], 1)[:hy, :wx])
        if t in b["warped_slices"]:
            w = b["warped"][b["warped_slices"].index(t)]
            sources.insert(0 if t in b["first"] else len(sources), w)
        for y in range(hy):
            for x in range(wx):
                want[t, y, x] = next((int(s[y, x]) for s in sources if s[y, x] != 0), 0)
    np.testing.assert_array_equal(out, want)


def _aligned_scenes(scenes: Scenes, tmp: Path) -> MosaicSpec:
    """``scenes.spec`` with its AOI nudged west until the grid's edges are on 20 m edges."""
    for step in range(4):
        w, s, e, n = scenes.aoi
        d = step * 0.00007
        spec = scenes.spec(tmp, **QUICK).replace(aoi=[w - d, s - d, e - d, n - d])
        g = output_geobox(spec, scenes.items)
        if g.affine.c % 20 == 0 and g.affine.f % 20 == 0:
            return spec
    raise AssertionError("no aligned AOI found")  # pragma: no cover


@pytest.mark.parametrize("on_read_error", ["skip", "fail"])
def test_an_unreadable_scl_is_the_same_scene_read_error(
        demo_catalog: Path, tmp_path: Path, spy: Any, on_read_error: str) -> None:
    """A corrupt SCL read natively (over HTTP, through the same driver) is a SceneReadError
    naming its URL: dropped under ``skip``, the tile's failure under ``fail``."""
    scenes = Scenes(demo_catalog)
    spec = _aligned_scenes(scenes, tmp_path / "run")
    spec = spec.replace(runtime={"on_read_error": on_read_error})
    victim = scenes.items[2]
    href = victim.assets["SCL"].get_absolute_href() or ""
    with ObjectStore(scenes.catalog.parent) as store:
        store.faults.append(Fault(str(Path(href).relative_to(scenes.catalog.parent)), "corrupt"))
        run = spy()
        if on_read_error == "skip":
            with pytest.warns(DroppedScenesWarning, match=victim.id):
                report = s2mosaic.run(spec, items=scenes.served(store))
            (dropped,) = report.scenes_dropped
            assert (dropped["item"], dropped["asset"]) == (victim.id, "SCL")
            assert dropped["url"] == store.url(href)
        else:
            with pytest.raises(Exception, match=r"could not read .*SCL") as e:
                s2mosaic.run(spec, items=scenes.served(store))
            assert isinstance(e.value, SceneReadError) or "SCL" in str(e.value)
    # The failed read was a native one (later graphs of a run that dropped it lack the item).
    first = run.plans[0]
    assert first is not None and all(p is not None for p in run.plans)
    assert victim.id in {i.id for i in first.native}
