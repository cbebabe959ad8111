"""Scene selection: rank scenes by clear-data fraction and date, keep the fewest that cover the AOI.

Descartes Labs' advice for mosaics is to mosaic only the scenes that matter. :func:`min_cover`
picks, greedily, the scene that adds the most not-yet-covered AOI area (each point counted up to
``max_observations`` times) until the AOI is covered or no scene adds anything; among scenes that
add (within :data:`GAIN_TIE_TOLERANCE`) the same area the clearest wins, then the earliest, then
the smallest id, so the choice is deterministic. Clearness comes from STAC metadata only
(:func:`clear_fraction`): nothing is read.

For ``first``/``last`` composites the scenes are taken in date order instead (``order="date"``):
a scene is kept when it covers a point that fewer than ``max_observations`` earlier solar days
cover. Every point's first ``max_observations`` observations are then kept, so a first-valid
mosaic of the selection equals the one of all scenes wherever one of them is valid there (with
``mask.method: none`` and exact footprints: everywhere the scenes cover).

Footprints are compared in a Lambert azimuthal equal-area projection centred on the AOI, so
coverage fractions are true area fractions. Observations are counted per solar day, as the cube
fuses the tiles of one overpass into one observation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pystac
import shapely
import shapely.geometry
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from ._aoi import AOI
from ._items import footprint, item_datetime, mgrs_tile, solar_day
from ._search import DroppedItem, SearchResult
from ._spec import DEFAULT_SCL_INVALID, MosaicSpec, Period, SelectSpec
from .errors import ArgumentError, CoverageError, SearchError

__all__ = [
    "COVERAGE_TOLERANCE",
    "GAIN_TIE_TOLERANCE",
    "ORDERS",
    "PeriodSelection",
    "SceneInfo",
    "Selection",
    "apply_selection",
    "clear_fraction",
    "min_cover",
    "select",
]

#: Area, as a fraction of the AOI, below which an uncovered remainder or a scene's gain is
#: ignored: footprint outlines of one tile differ by metres between dates and leave slivers.
COVERAGE_TOLERANCE = 1e-4
#: Scenes whose gain is within this fraction of the best gain count as equal; the clearest wins.
GAIN_TIE_TOLERANCE = 0.01
#: ``clear``: greedy cover, largest gain first, clearest among equals. ``date`` / ``date-desc``:
#: in date order (first / last valid composites), keeping each point's first observations.
ORDERS: tuple[str, ...] = ("clear", "date", "date-desc")

# SCL class → the s2: property holding its percentage (ESA's granule metadata, as on Earth
# Search and Planetary Computer; percentages of the valid pixels).
_SCL_PERCENTAGE = {
    1: "s2:saturated_defective_pixel_percentage",
    2: "s2:dark_features_percentage",
    3: "s2:cloud_shadow_percentage",
    8: "s2:medium_proba_clouds_percentage",
    9: "s2:high_proba_clouds_percentage",
    10: "s2:thin_cirrus_percentage",
    11: "s2:snow_ice_percentage",
}


@dataclass(frozen=True)
class SceneInfo:
    """One candidate scene as the selection saw it."""

    id: str
    datetime: dt.datetime
    tile: str | None
    """MGRS tile (``"32TQT"``), None when the item does not say."""
    cloud_cover: float | None
    """``eo:cloud_cover`` (%), None when absent."""
    clear_fraction: float | None
    """Fraction of the tile that is valid and clear by its metadata (:func:`clear_fraction`)."""
    aoi_fraction: float
    """Fraction of the AOI its footprint covers."""
    selected: bool
    rank: int | None = None
    """1 for the first scene chosen, 2 for the next, …; None when not chosen."""
    geometry: dict[str, Any] | None = None
    """The footprint (GeoJSON, EPSG:4326)."""


@dataclass(frozen=True)
class PeriodSelection:
    """What the selection reached in one period."""

    start: dt.date
    end: dt.date
    candidates: int
    selected: int
    coverage: float
    """Fraction of the AOI the chosen scenes cover at least once."""
    coverage_all: float
    """Fraction of the AOI all candidate scenes cover (the most any selection can reach)."""
    full_depth: float
    """Fraction of the AOI covered ``max_observations`` times by the chosen scenes."""

    @property
    def uncovered(self) -> float:
        return max(0.0, 1.0 - self.coverage)


class Selection(SearchResult):
    """The chosen items (a list, in the input order) with what was left out and why.

    ``dropped`` holds the search's dropped items plus every candidate not chosen (with the
    reason), so the provenance record lists them; ``scenes`` describes every candidate and
    ``periods`` the coverage reached per period.
    """

    def __init__(self, items: Iterable[pystac.Item], *, dropped: Sequence[DroppedItem] = (),
                 query: dict[str, Any] | None = None, settings: SelectSpec | None = None,
                 order: str = "clear", scenes: Sequence[SceneInfo] = (),
                 periods: Sequence[PeriodSelection] = ()) -> None:
        super().__init__(items, dropped, query)
        self.settings = settings or SelectSpec()
        self.order = order
        self.scenes: list[SceneInfo] = list(scenes)
        self.periods: list[PeriodSelection] = list(periods)

    @property
    def coverage(self) -> float:
        """The smallest coverage fraction reached over the periods."""
        return min((p.coverage for p in self.periods), default=0.0)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (counts, coverage per period, scenes per tile)."""
        tiles: dict[str, dict[str, int]] = {}
        for s in self.scenes:
            t = tiles.setdefault(s.tile or "?", {"candidates": 0, "selected": 0})
            t["candidates"] += 1
            t["selected"] += int(s.selected)
        return {
            "method": self.settings.method,
            "order": self.order,
            "max_observations": self.settings.max_observations,
            "candidates": len(self.scenes),
            "selected": len(self),
            "coverage": round(self.coverage, 6),
            "periods": [{"start": p.start.isoformat(), "end": p.end.isoformat(),
                         "candidates": p.candidates, "selected": p.selected,
                         "coverage": round(p.coverage, 6), "coverage_all": round(p.coverage_all, 6),
                         "full_depth": round(p.full_depth, 6)} for p in self.periods],
            "tiles": dict(sorted(tiles.items())),
        }


def clear_fraction(item: pystac.Item, scl_classes: Sequence[int] = DEFAULT_SCL_INVALID
                   ) -> float | None:
    """The fraction of an item's tile that is valid and clear, from its STAC metadata.

    ``(1 - s2:nodata_pixel_percentage / 100) * (1 - invalid / 100)`` where ``invalid`` sums the
    ESA percentages (of valid pixels) of the SCL classes in ``scl_classes`` that the item
    declares (cloud shadow, medium and high probability cloud, thin cirrus, ...). Without any
    ``s2:*_percentage`` class property, ``eo:cloud_cover`` stands for the invalid part.

    Returns
    -------
    float or None
        In [0, 1]; None when the item has neither the ``s2:`` percentages nor ``eo:cloud_cover``.

    Examples
    --------
    >>> item = pystac.Item("x", None, None, dt.datetime(2024, 5, 2), {
    ...     "s2:nodata_pixel_percentage": 50.0, "s2:high_proba_clouds_percentage": 10.0,
    ...     "s2:cloud_shadow_percentage": 10.0})
    >>> round(clear_fraction(item), 3)
    0.4
    """
    p = item.properties
    keys = [_SCL_PERCENTAGE[c] for c in scl_classes if c in _SCL_PERCENTAGE]
    found = [float(p[k]) for k in keys if isinstance(p.get(k), int | float)]
    if found:
        invalid = sum(found)
    elif isinstance(p.get("eo:cloud_cover"), int | float):
        invalid = float(p["eo:cloud_cover"])
    else:
        return None
    nodata = p.get("s2:nodata_pixel_percentage")
    valid = 1.0 - float(nodata) / 100 if isinstance(nodata, int | float) else 1.0
    return _clip01(valid * (1.0 - invalid / 100))


def _clip01(v: float) -> float:
    return min(1.0, max(0.0, v))


# -- geometry -------------------------------------------------------------------------------------
class _Area:
    """AOI and footprints in an equal-area CRS centred on the AOI."""

    def __init__(self, aoi: BaseGeometry) -> None:
        c = aoi.centroid
        crs = CRS.from_proj4(f"+proj=laea +lat_0={c.y} +lon_0={c.x} +datum=WGS84 +units=m")
        self._tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        self.aoi = shapely.make_valid(self.project(aoi))
        self.area = self.aoi.area

    def project(self, geom: BaseGeometry) -> BaseGeometry:
        def fn(xy: np.ndarray) -> np.ndarray:
            x, y = self._tr.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        return shapely.transform(geom, fn)

    def footprint(self, item: pystac.Item) -> BaseGeometry:
        fp = footprint(item)
        if fp is None:
            raise SearchError(f"item {item.id!r} has no geometry; scene selection needs each "
                              "item's footprint (select.method: all does not)")
        geom = shapely.make_valid(self.project(fp))
        return geom.intersection(self.aoi)


class _Layers:
    """``layers[j]`` is the part of the AOI covered at least ``j + 1`` times."""

    def __init__(self, aoi: BaseGeometry, depth: int) -> None:
        self.aoi = aoi
        self.layers: list[BaseGeometry] = [shapely.geometry.Polygon()] * depth

    def gain(self, geom: BaseGeometry) -> float:
        total, below = 0.0, self.aoi
        for layer in self.layers:
            total += below.intersection(geom).difference(layer).area
            below = layer
        return total

    def add(self, geom: BaseGeometry) -> None:
        new = list(self.layers)
        below = self.aoi
        for j, layer in enumerate(self.layers):
            new[j] = layer.union(below.intersection(geom))
            below = layer
        self.layers = new

    def fraction(self, j: int, area: float) -> float:
        return _clip01(self.layers[j].area / area) if area > 0 else 0.0


# -- selection ------------------------------------------------------------------------------------
def min_cover(items: Sequence[pystac.Item], aoi: AOI | BaseGeometry, *, max_observations: int = 1,
              order: str = "clear", scl_classes: Sequence[int] = DEFAULT_SCL_INVALID,
              period: Period | None = None) -> Selection:
    """The fewest scenes whose footprints cover ``aoi``, each point up to ``max_observations``
    times.

    Parameters
    ----------
    items
        Candidate scenes (e.g. from :func:`s2mosaic._search`), each with a footprint geometry.
    aoi
        The area to cover: an :class:`~s2mosaic._aoi.AOI` or a shapely geometry in EPSG:4326.
    max_observations
        Observations (solar days) wanted per point; scenes are added until every point has as
        many or no scene adds any.
    order
        ``clear`` (greedy: the scene adding the most area, the clearest among equals), ``date``
        (date order, for first-valid composites) or ``date-desc`` (for last-valid ones).
    scl_classes
        SCL classes counted as not clear in :func:`clear_fraction`.
    period
        Reported in :attr:`Selection.periods` (default: the span of the items' dates).

    Returns
    -------
    Selection
        The chosen items in input order; ``.periods[0].coverage`` is the covered fraction.

    Examples
    --------
    >>> sel = min_cover(items, spec.aoi, max_observations=2)  # doctest: +SKIP
    >>> len(sel), sel.coverage  # doctest: +SKIP
    (4, 1.0)
    """
    if order not in ORDERS:
        raise ArgumentError(f"min_cover: order {order!r} is not one of {list(ORDERS)}")
    if isinstance(max_observations, bool) or not isinstance(max_observations, int) \
            or max_observations < 1:
        raise ArgumentError(f"min_cover: max_observations {max_observations!r}: expected an "
                            "integer >= 1")
    geom = aoi.geometry if isinstance(aoi, AOI) else aoi
    space = _Area(geom)
    chosen, infos, summary = _cover(list(items), space, max_observations, order, scl_classes,
                                    period)
    return _result(items, chosen, infos, [summary], SelectSpec("min-cover", max_observations),
                   order, getattr(items, "dropped", []), query=getattr(items, "query", None))


def select(spec: MosaicSpec, items: Sequence[pystac.Item]) -> Selection:
    """Apply ``spec.select`` to the items of a search: every scene, or a minimal cover.

    With ``select.method: min-cover`` the cover is made per period: each sub-period of
    ``spec.series`` when it has some, else ``spec.period``. The order follows the composite:
    date order for ``first`` (latest first for ``last``), clearest first otherwise.

    Raises
    ------
    CoverageError
        ``select.require_full_coverage`` is set and some period's scenes leave part of the AOI
        uncovered (the message names the period and the fraction).

    Examples
    --------
    >>> items = select(spec, search(spec))  # doctest: +SKIP
    >>> items.summary()["coverage"]  # doctest: +SKIP
    1.0
    """
    settings = spec.select
    if isinstance(items, Selection) and items.settings == settings:
        return items  # already applied (e.g. by plan(), then handed to mosaic())
    method = spec.composite.method
    order = "date" if method == "first" else "date-desc" if method == "last" else "clear"
    periods = _periods(spec)
    space = _Area(spec.aoi.geometry)
    chosen: list[pystac.Item] = []
    infos: dict[str, SceneInfo] = {}
    summaries = []
    for period in periods:
        cands = [i for i in items if period.contains(item_datetime(i))]
        if settings.method == "all":
            c, inf, s = _keep_all(cands, space, settings.max_observations, spec.mask.scl_classes,
                                  period)
        else:
            c, inf, s = _cover(cands, space, settings.max_observations, order,
                               spec.mask.scl_classes, period)
        chosen += c
        for k, v in inf.items():  # a scene in two periods counts as selected if chosen in one
            infos[k] = v if k not in infos or v.selected else infos[k]
        summaries.append(s)
    result = _result(items, chosen, infos, summaries, settings, order,
                     getattr(items, "dropped", []), query=getattr(items, "query", None))
    if settings.require_full_coverage:
        short = [p for p in result.periods if p.uncovered > COVERAGE_TOLERANCE]
        if short:
            p = short[0]
            raise CoverageError(
                f"select.require_full_coverage: the scenes of period {p.start}..{p.end} cover "
                f"{100 * p.coverage:.2f} % of the AOI; {100 * p.uncovered:.2f} % is uncovered "
                f"({p.candidates} candidate scene(s), all of them together cover "
                f"{100 * p.coverage_all:.2f} %). Widen the period or source.max_cloud_cover, "
                "shrink the AOI, or set select.require_full_coverage: false"
            )
    return result


@overload
def apply_selection(spec: MosaicSpec, items: SearchResult) -> SearchResult: ...
@overload
def apply_selection(spec: MosaicSpec, items: Sequence[pystac.Item]) -> Sequence[pystac.Item]: ...
def apply_selection(spec: MosaicSpec, items: Sequence[pystac.Item]) -> Sequence[pystac.Item]:
    """The items :func:`s2mosaic.mosaic` builds from: ``items`` unchanged for ``select.method:
    all`` (no geometry work) unless ``require_full_coverage`` asks for the check, else
    :func:`select`."""
    if spec.select.method == "all" and not spec.select.require_full_coverage:
        return items
    return select(spec, items)


def _periods(spec: MosaicSpec) -> list[Period]:
    series = getattr(spec, "series", None)
    subs = series.expand(spec.period) if series is not None else []
    return subs or [spec.period]


def _scene(item: pystac.Item, fp: BaseGeometry, area: float, scl: Sequence[int], selected: bool,
           rank: int | None) -> SceneInfo:
    cc = item.properties.get("eo:cloud_cover")
    return SceneInfo(
        id=item.id, datetime=item_datetime(item), tile=mgrs_tile(item),
        cloud_cover=float(cc) if isinstance(cc, int | float) else None,
        clear_fraction=clear_fraction(item, scl),
        aoi_fraction=_clip01(fp.area / area) if area > 0 else 0.0,
        selected=selected, rank=rank, geometry=item.geometry)


def _keep_all(items: list[pystac.Item], space: _Area, depth: int, scl: Sequence[int],
              period: Period | None) -> tuple[list[pystac.Item], dict[str, SceneInfo],
                                              PeriodSelection]:
    layers = _Layers(space.aoi, depth)
    infos = {}
    for day_items in _by_day(items).values():
        day = shapely.union_all([space.footprint(i) for i in day_items])
        layers.add(day)
    for rank, item in enumerate(items, 1):
        infos[item.id] = _scene(item, space.footprint(item), space.area, scl, True, rank)
    cov = layers.fraction(0, space.area)
    return items, infos, _summary(items, period, len(items), cov, cov,
                                  layers.fraction(depth - 1, space.area))


def _by_day(items: Sequence[pystac.Item]) -> dict[dt.date, list[pystac.Item]]:
    days: dict[dt.date, list[pystac.Item]] = {}
    for item in items:
        days.setdefault(solar_day(item), []).append(item)
    return days


def _cover(items: list[pystac.Item], space: _Area, depth: int, order: str, scl: Sequence[int],
           period: Period | None) -> tuple[list[pystac.Item], dict[str, SceneInfo],
                                           PeriodSelection]:
    fps = {i.id: space.footprint(i) for i in items}
    day_of = {i.id: solar_day(i) for i in items}
    clear = {i.id: clear_fraction(i, scl) for i in items}
    eps = COVERAGE_TOLERANCE * space.area
    layers = _Layers(space.aoi, depth)
    chosen: list[pystac.Item] = []
    if order == "clear":
        # Greedy set cover. A scene's footprint minus what chosen scenes of its solar day already
        # cover is what it adds: the cube fuses one day's tiles into one observation.
        left = sorted(items, key=lambda i: (item_datetime(i), i.id))
        day_cover: dict[dt.date, BaseGeometry] = {}
        while left and layers.fraction(depth - 1, space.area) < 1 - COVERAGE_TOLERANCE:
            gains = []
            for item in left:
                add = fps[item.id]
                done = day_cover.get(day_of[item.id])
                if done is not None:
                    add = add.difference(done)
                gains.append((layers.gain(add), add, item))
            best = max(g for g, _, _ in gains)
            if best <= eps:
                break
            tied = [(g, a, i) for g, a, i in gains if g >= best * (1 - GAIN_TIE_TOLERANCE)]
            _, add, pick = min(tied, key=lambda t: (-(clear[t[2].id] or 0.0), item_datetime(t[2]),
                                                   t[2].id))
            layers.add(add)
            d = day_of[pick.id]
            day_cover[d] = day_cover[d].union(fps[pick.id]) if d in day_cover else fps[pick.id]
            chosen.append(pick)
            left.remove(pick)
    else:
        # Date order: a scene is kept when it covers a point that fewer than `depth` earlier
        # solar days cover. Gains are measured against the earlier days only, so every tile of a
        # day that contributes is kept and each point keeps its first `depth` observations.
        days = sorted(_by_day(items).items(), reverse=order == "date-desc")
        for _, day_items in days:
            keep = [i for i in sorted(day_items, key=lambda i: i.id)
                    if layers.gain(fps[i.id]) > eps]
            if keep:
                layers.add(shapely.union_all([fps[i.id] for i in keep]))
                chosen += keep
            if layers.fraction(depth - 1, space.area) >= 1 - COVERAGE_TOLERANCE:
                break
    ranks = {item.id: r for r, item in enumerate(chosen, 1)}
    infos = {i.id: _scene(i, fps[i.id], space.area, scl, i.id in ranks, ranks.get(i.id))
             for i in items}
    everything = shapely.union_all(list(fps.values())) if fps else shapely.geometry.Polygon()
    cov_all = _clip01(everything.area / space.area) if space.area > 0 else 0.0
    return chosen, infos, _summary(items, period, len(chosen), layers.fraction(0, space.area),
                                   cov_all, layers.fraction(depth - 1, space.area))


def _summary(items: Sequence[pystac.Item], period: Period | None, n: int, coverage: float,
             coverage_all: float, full_depth: float) -> PeriodSelection:
    if period is not None:
        start, end = period.start, period.end
    elif items:
        dates = [item_datetime(i).date() for i in items]
        start, end = min(dates), max(dates)
    else:
        start = end = dt.date.today()
    # Below the tolerance, report the slivers as covered (they are outline noise).
    def snap(v: float) -> float:
        return 1.0 if v >= 1 - COVERAGE_TOLERANCE else v

    return PeriodSelection(start, end, len(items), n, snap(coverage), snap(coverage_all),
                           snap(full_depth))


def _result(items: Sequence[pystac.Item], chosen: list[pystac.Item], infos: dict[str, SceneInfo],
            summaries: list[PeriodSelection], settings: SelectSpec, order: str,
            dropped: Sequence[DroppedItem], query: dict[str, Any] | None = None) -> Selection:
    ids = {i.id for i in chosen}
    kept = [i for i in items if i.id in ids]
    not_chosen = [
        DroppedItem(i.id, f"not selected (select.method {settings.method}, max_observations "
                          f"{settings.max_observations}, order {order}): the chosen scenes "
                          "already cover its part of the AOI")
        for i in items if i.id not in ids
    ]
    scenes = [infos[i.id] for i in items if i.id in infos]
    return Selection(kept, dropped=[*dropped, *not_chosen], query=query, settings=settings,
                     order=order, scenes=scenes, periods=summaries)
