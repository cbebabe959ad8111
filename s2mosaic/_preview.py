"""Look before you run: a folium map of the AOI, the scenes and their quicklooks, and a static PNG.

:func:`preview` searches and selects as a run would, then writes

* an HTML map (folium): the AOI; every scene's footprint coloured by cloud cover, with a popup
  (id, date, cloud %, clear %, selected or not); a quicklook image per scene; a layer control;
* a PNG of the same (footprints over a quicklook mosaic of the selected scenes), for terminals,
  reports and CI logs.

Quicklooks come from a ``thumbnail`` / ``rendered_preview`` / ``preview`` asset when the item has
a readable one, else they are rendered from the COG overviews of the display bands
(``output.rgb_bands``, stretched by ``output.rgb_range``): GDAL reads the smallest overview that
is large enough, so a quicklook costs kilobytes, not the scene.

The page works offline: Leaflet's JavaScript and CSS are inlined from the ``xstatic-leaflet``
package (no CDN), images are embedded as data URLs, and there is no basemap unless ``tiles``
names one (a basemap needs the internet when the page is opened).
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely.geometry
from PIL import Image, ImageDraw
from pyproj import Transformer

from ._items import footprint_bounds, resolve_band
from ._search import search
from ._select import SceneInfo, Selection, select
from ._spec import MosaicSpec
from .errors import DataError, MissingDependencyError, SpecError

__all__ = ["QUICKLOOK_ASSETS", "QUICKLOOK_SIZE", "PreviewResult", "cloud_colour", "preview",
           "quicklook"]

#: Asset keys tried, in order, for a ready-made quicklook image.
QUICKLOOK_ASSETS: tuple[str, ...] = ("rendered_preview", "thumbnail", "preview")
#: Longest side (pixels) of a quicklook rendered from COG overviews.
QUICKLOOK_SIZE = 256
_MERCATOR = "EPSG:3857"
_MAX_LAT = 85.05


@dataclass(frozen=True)
class PreviewResult:
    """Paths written by :func:`preview` and what the map shows."""

    html: Path | None
    png: Path | None
    scenes: int
    selected: int
    quicklooks: int
    """Scenes with a quicklook (ready-made or rendered)."""


@dataclass(frozen=True)
class _Quicklook:
    rgba: np.ndarray
    """(rows, cols, 4) uint8 in Web Mercator; alpha 0 where there is no data."""
    bounds: tuple[float, float, float, float]
    """(west, south, east, north) in Web Mercator metres."""
    source: str


def cloud_colour(cloud_cover: float | None) -> str:
    """Hex colour of a footprint: green (clear) through yellow to red (cloudy); grey if unknown.

    Examples
    --------
    >>> cloud_colour(0), cloud_colour(100), cloud_colour(None)
    ('#1a9850', '#d73027', '#808080')
    """
    if cloud_cover is None or not math.isfinite(cloud_cover):
        return "#808080"
    t = min(1.0, max(0.0, cloud_cover / 100))
    stops = [(0.0, (0x1A, 0x98, 0x50)), (0.5, (0xFE, 0xE0, 0x8B)), (1.0, (0xD7, 0x30, 0x27))]
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            r, g, b = (round(a + (b_ - a) * f) for a, b_ in zip(c0, c1, strict=True))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#d73027"  # pragma: no cover


def preview(spec: MosaicSpec, html_path: str | Path | None = "preview.html", *,
            png: str | Path | None = None, items: Sequence[pystac.Item] | None = None,
            tiles: str | None = None, attribution: str | None = None, remote: bool = False,
            quicklooks: bool = True) -> PreviewResult:
    """Write a quicklook map (HTML) and/or a static PNG of the scenes a run of ``spec`` would use.

    Parameters
    ----------
    spec
        The mosaic spec (its search, selection, AOI and display bands are used).
    html_path
        Where to write the folium map; None: no map.
    png
        Where to write the static PNG; None: no PNG.
    items
        Search result to show (default: :func:`s2mosaic._search` of the spec).
    tiles
        A basemap: a folium/xyzservices name (``"OpenStreetMap"``) or an XYZ URL template (then
        give ``attribution``). None (default): no basemap, so the page needs no internet.
    attribution
        Attribution of a ``tiles`` URL template.
    remote
        Read quicklooks of remote (http, s3) assets. Off by default: no network access.
    quicklooks
        Add quicklook images (False: footprints only, faster).

    Returns
    -------
    PreviewResult

    Examples
    --------
    >>> preview(MosaicSpec.from_yaml("my-area.yaml"), "preview.html", png="preview.png")  # doctest: +SKIP
    """
    if html_path is None and png is None:
        raise SpecError("preview", None, "give html_path and/or png: there is nothing to write")
    found = search(spec, allow_empty=True) if items is None else items
    import dataclasses

    sel = select(spec.replace(select=dataclasses.replace(spec.select,
                                                         require_full_coverage=False)), found)
    by_id = {i.id: i for i in found}
    looks: dict[str, _Quicklook] = {}
    if quicklooks:
        for s in sel.scenes:
            q = quicklook(by_id[s.id], spec, remote=remote)
            if q is not None:
                looks[s.id] = q
    out_html = out_png = None
    if html_path is not None:
        out_html = Path(html_path)
        _write_html(out_html, spec, sel, looks, tiles, attribution)
    if png is not None:
        out_png = Path(png)
        _write_png(out_png, spec, sel, looks)
    return PreviewResult(out_html, out_png, len(sel.scenes), len(sel), len(looks))


# -- quicklooks ---------------------------------------------------------------------------------
def quicklook(item: pystac.Item, spec: MosaicSpec, *, size: int = QUICKLOOK_SIZE,
              remote: bool = False) -> Any:
    """A small RGBA image of ``item`` in Web Mercator, or None when none can be made offline.

    A ready-made quicklook asset (:data:`QUICKLOOK_ASSETS`) is used when readable; a georeferenced
    one is warped, a plain JPEG/PNG is laid over the item's bbox. Otherwise the display bands are
    read from the COG overviews. Remote hrefs are read only with ``remote=True``.
    """
    for key in QUICKLOOK_ASSETS:
        asset = item.assets.get(key)
        if asset is not None and _readable(asset.href, remote):
            try:
                return _from_image(item, asset.href, size, key)
            except Exception:  # a broken preview asset: render from the COGs instead
                break
    try:
        hrefs = [item.assets[resolve_band(item, b)].href for b in spec.output.rgb_bands]
    except DataError:
        return None
    if not all(_readable(h, remote) for h in hrefs):
        return None
    return _from_cogs(item, hrefs, spec.output.rgb_range, size)


def _readable(href: str, remote: bool) -> bool:
    if href.startswith("file://"):
        return Path(href[7:]).exists()
    if "://" in href:
        return remote
    return Path(href).exists()


def _gdal_path(href: str) -> str:
    return href[7:] if href.startswith("file://") else href


def _target(bounds4326: tuple[float, ...], size: int
            ) -> tuple[Any, int, int, tuple[float, float, float, float]]:
    from rasterio.transform import from_bounds

    w, s, e, n = bounds4326
    s, n = max(s, -_MAX_LAT), min(n, _MAX_LAT)
    tr = Transformer.from_crs("EPSG:4326", _MERCATOR, always_xy=True)
    x0, y0 = tr.transform(w, s)
    x1, y1 = tr.transform(e, n)
    scale = max(x1 - x0, y1 - y0) / size
    cols, rows = max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale))
    return from_bounds(x0, y0, x1, y1, cols, rows), rows, cols, (x0, y0, x1, y1)


def _from_cogs(item: pystac.Item, hrefs: list[str], rgb_range: tuple[int, int],
               size: int) -> _Quicklook:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    bbox = footprint_bounds(item)
    if bbox is None:
        raise DataError(f"item {item.id!r} has neither bbox nor geometry; a quicklook needs one")
    transform, rows, cols, bounds = _target(bbox, size)
    bands = np.zeros((3, rows, cols), dtype=np.float32)
    valid = np.ones((rows, cols), dtype=bool)
    for b, href in enumerate(hrefs):
        with rasterio.open(_gdal_path(href)) as src:
            # A decimated read: GDAL takes it from the smallest overview that is large enough.
            f = max(1, min(src.width, src.height) // size)
            h, w = max(1, src.height // f), max(1, src.width // f)
            arr = src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
            src_tr = src.transform * src.transform.scale(src.width / w, src.height / h)
            nodata = src.nodata if src.nodata is not None else 0
            dst = np.zeros((rows, cols), dtype=np.float32)
            reproject(arr.astype(np.float32), dst, src_transform=src_tr, src_crs=src.crs,
                      src_nodata=nodata, dst_transform=transform, dst_crs=_MERCATOR, dst_nodata=0,
                      resampling=Resampling.nearest)
        bands[b] = dst
        valid &= dst > 0
    lo, hi = rgb_range
    rgb = np.clip((bands - lo) / (hi - lo) * 254 + 1, 1, 255).astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return _Quicklook(np.dstack([*rgb, alpha]), bounds, "cog-overviews")


def _from_image(item: pystac.Item, href: str, size: int, key: str) -> _Quicklook:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rasterio.warp import reproject

    bbox = footprint_bounds(item)
    with rasterio.open(_gdal_path(href)) as src:
        f = max(1, max(src.width, src.height) // size)
        h, w = max(1, src.height // f), max(1, src.width // f)
        arr = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        if src.crs is not None and not src.transform.is_identity:
            src_tr, src_crs = src.transform * src.transform.scale(src.width / w, src.height / h), src.crs
        else:  # a plain image: lay it over the item's bbox
            if bbox is None:
                raise DataError(f"item {item.id!r}: quicklook {key!r} is not georeferenced and "
                                "the item has neither bbox nor geometry")
            src_tr, src_crs = from_bounds(*bbox, w, h), "EPSG:4326"
    rgb = np.repeat(arr[:1], 3, axis=0) if arr.shape[0] < 3 else arr[:3]
    rgb = rgb.astype(np.float32)
    if rgb.max() > 255:  # 16-bit preview: stretch to 8 bits
        rgb = rgb / max(1.0, float(np.percentile(rgb, 98))) * 255
    if bbox is None:
        raise DataError(f"item {item.id!r} has neither bbox nor geometry; a quicklook needs one")
    transform, rows, cols, bounds = _target(bbox, size)
    out = np.zeros((3, rows, cols), dtype=np.float32)
    ones = np.ones(rgb.shape[1:], dtype=np.float32)
    cover = np.zeros((rows, cols), dtype=np.float32)
    for b in range(3):
        reproject(rgb[b], out[b], src_transform=src_tr, src_crs=src_crs, dst_transform=transform,
                  dst_crs=_MERCATOR, resampling=Resampling.bilinear)
    reproject(ones, cover, src_transform=src_tr, src_crs=src_crs, dst_transform=transform,
              dst_crs=_MERCATOR, resampling=Resampling.nearest)
    alpha = np.where((cover > 0) & (out.sum(axis=0) > 0), 255, 0).astype(np.uint8)
    return _Quicklook(np.dstack([*np.clip(out, 0, 255).astype(np.uint8), alpha]), bounds, key)


def _png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


# -- HTML -----------------------------------------------------------------------------------------
def _leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS from the xstatic-leaflet package, images inlined as data URLs."""
    try:
        import xstatic.pkg.leaflet as xs
    except ImportError:
        raise MissingDependencyError("xstatic-leaflet", "preview",
                                     "the offline preview map") from None
    base = Path(xs.BASE_DIR)
    js = (base / "leaflet.js").read_text()
    js = re.sub(r"//# sourceMappingURL=\S+", "", js).replace("</script", "<\\/script")
    css = (base / "leaflet.css").read_text()

    def inline(m: re.Match[str]) -> str:
        p = base / m.group(1)
        if not p.is_file():
            return m.group(0)
        return f"url(data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})"

    css = re.sub(r"url\((images/[^)]+\.png)\)", inline, css)
    return js, css


_POPUP_FIELDS = (("id", "id"), ("date", "date"), ("tile", "tile"), ("cloud", "cloud"),
                 ("clear", "clear (metadata)"), ("aoi", "AOI covered"), ("selected", "selected"))


def _popup_properties(s: SceneInfo) -> dict[str, str]:
    """What a footprint's popup lists (folium's GeoJsonPopup renders them without jQuery)."""
    return {
        "id": s.id,
        "date": s.datetime.strftime("%Y-%m-%d %H:%M UTC"),
        "tile": s.tile or "?",
        "cloud": f"{s.cloud_cover:.1f} %" if s.cloud_cover is not None else "unknown",
        "clear": f"{100 * s.clear_fraction:.1f} %" if s.clear_fraction is not None else "unknown",
        "aoi": f"{100 * s.aoi_fraction:.1f} %",
        "selected": f"yes (#{s.rank})" if s.selected else "no",
    }


def _write_html(path: Path, spec: MosaicSpec, sel: Selection, looks: dict[str, _Quicklook],
                tiles: str | None, attribution: str | None) -> None:
    try:
        import folium
        from branca.element import Element
    except ImportError:
        raise MissingDependencyError("folium", "preview", "s2mosaic preview") from None
    aoi = spec.aoi.geometry
    geoms = [aoi] + [shapely.geometry.shape(s.geometry) for s in sel.scenes if s.geometry]
    w, s_, e, n = shapely.union_all(geoms).bounds
    m = folium.Map(location=[(s_ + n) / 2, (w + e) / 2], tiles=None, control_scale=True,
                   zoom_start=10)
    # No CDN: Leaflet is inlined below; folium's other defaults (jQuery, Bootstrap, awesome
    # markers) are not needed by what this map draws.
    m.default_js = []
    m.default_css = []
    js, css = _leaflet_assets()
    root: Any = m.get_root()  # a branca Figure
    root.header.add_child(Element(f"<style>{css}</style>"), name="leaflet_css_inline")
    root.header.add_child(Element(f"<script>{js}</script>"), name="leaflet_js_inline")
    if tiles is not None:
        folium.TileLayer(tiles, attr=attribution, name="basemap").add_to(m)
    selected = [s for s in sel.scenes if s.selected]
    others = [s for s in sel.scenes if not s.selected]
    ql_sel = folium.FeatureGroup(name=f"Quicklooks: selected scenes ({len(selected)})")
    ql_all = folium.FeatureGroup(name=f"Quicklooks: other scenes ({len(others)})", show=False)
    for group, scenes in ((ql_all, others), (ql_sel, selected)):
        # Best-ranked last, so it is drawn on top.
        for s in sorted(scenes, key=lambda x: -(x.rank or 0)):
            q = looks.get(s.id)
            if q is None:
                continue
            tr = Transformer.from_crs(_MERCATOR, "EPSG:4326", always_xy=True)
            lon0, lat0 = tr.transform(q.bounds[0], q.bounds[1])
            lon1, lat1 = tr.transform(q.bounds[2], q.bounds[3])
            url = "data:image/png;base64," + base64.b64encode(_png_bytes(q.rgba)).decode()
            folium.raster_layers.ImageOverlay(url, bounds=[[lat0, lon0], [lat1, lon1]],
                                              name=s.id, opacity=1.0).add_to(group)
    ql_all.add_to(m)
    ql_sel.add_to(m)
    for name, scenes, weight in ((f"Footprints: other scenes ({len(others)})", others, 1),
                                 (f"Footprints: selected scenes ({len(selected)})", selected, 3)):
        group = folium.FeatureGroup(name=name)
        for s in sorted(scenes, key=lambda x: -(x.rank or 0)):  # the first chosen on top
            if s.geometry is None:
                continue
            colour = cloud_colour(s.cloud_cover)
            gj = folium.GeoJson(
                {"type": "Feature", "geometry": s.geometry, "properties": _popup_properties(s)},
                name=s.id,
                style_function=lambda _f, c=colour, wt=weight: {
                    "color": c, "weight": wt, "fillColor": c, "fillOpacity": 0.03,
                    "dashArray": None if wt > 1 else "4 4"},
                tooltip=f"{s.id} · {s.datetime:%Y-%m-%d} · cloud "
                        + (f"{s.cloud_cover:.0f} %" if s.cloud_cover is not None else "?"),
            )
            gj.add_child(folium.GeoJsonPopup(fields=[f for f, _ in _POPUP_FIELDS],
                                             aliases=[a for _, a in _POPUP_FIELDS]))
            gj.add_to(group)
        group.add_to(m)
    folium.GeoJson({"type": "Feature", "geometry": shapely.geometry.mapping(aoi),
                    "properties": {"name": "AOI"}}, name="AOI",
                   style_function=lambda _f: {"color": "#000000", "weight": 3, "fill": False,
                                              "dashArray": "8 6"},
                   tooltip=f"AOI of {spec.name}").add_to(m)
    folium.LayerControl(collapsed=False).add_to(m)
    m.fit_bounds([[s_, w], [n, e]])
    root.html.add_child(Element(_legend(sel)), name="s2mosaic_legend")
    m.save(str(path))


def _legend(sel: Selection) -> str:
    swatches = "".join(
        f"<span style='display:inline-block;width:14px;height:10px;background:{cloud_colour(v)}'>"
        f"</span> {v} %&nbsp; " for v in (0, 25, 50, 75, 100))
    cov = f"{100 * sel.coverage:.1f} %"
    return ("<div id='s2mosaic-legend' style='position:fixed;bottom:28px;right:12px;z-index:1000;"
            "background:rgba(255,255,255,0.9);padding:6px 8px;font:12px sans-serif;"
            "border-radius:4px'>"
            f"<b>Cloud cover</b><br>{swatches}<br>{len(sel)} of {len(sel.scenes)} scenes "
            f"selected ({sel.settings.method}); AOI covered {cov}</div>")


# -- PNG ----------------------------------------------------------------------------------------
def _write_png(path: Path, spec: MosaicSpec, sel: Selection, looks: dict[str, _Quicklook],
               width: int = 1024) -> None:
    """Footprints over a quicklook mosaic of the selected scenes, in Web Mercator."""
    tr = Transformer.from_crs("EPSG:4326", _MERCATOR, always_xy=True)

    def merc(geom: Any) -> Any:
        def fn(xy: np.ndarray) -> np.ndarray:
            x, y = tr.transform(xy[:, 0], np.clip(xy[:, 1], -_MAX_LAT, _MAX_LAT))
            return np.column_stack([x, y])

        return shapely.transform(geom, fn)

    aoi = merc(spec.aoi.geometry)
    fps = {s.id: merc(shapely.geometry.shape(s.geometry)) for s in sel.scenes if s.geometry}
    x0, y0, x1, y1 = shapely.union_all([aoi, *fps.values()]).bounds
    pad = 0.04 * max(x1 - x0, y1 - y0)
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    scale = (x1 - x0) / width
    height = max(64, round((y1 - y0) / scale))
    legend_h = 46
    img = Image.new("RGBA", (width, height + legend_h), (245, 245, 245, 255))

    def px(x: float, y: float) -> tuple[float, float]:
        return (x - x0) / scale, (y1 - y) / scale

    for s in sorted((s for s in sel.scenes if s.selected), key=lambda s: -(s.rank or 0)):
        q = looks.get(s.id)
        if q is None:
            continue
        a, b = px(q.bounds[0], q.bounds[3])
        c, d = px(q.bounds[2], q.bounds[1])
        w_, h_ = max(1, round(c - a)), max(1, round(d - b))
        tile = Image.fromarray(q.rgba, "RGBA").resize((w_, h_), Image.Resampling.NEAREST)
        img.alpha_composite(tile, (round(a), round(b)))
    draw = ImageDraw.Draw(img)

    def rings(geom: Any) -> list[list[tuple[float, float]]]:
        polys = getattr(geom, "geoms", [geom])
        return [[px(x, y) for x, y in p.exterior.coords] for p in polys if hasattr(p, "exterior")]

    # Others first, then the selected ones, the first chosen last (on top).
    for s in sorted(sel.scenes, key=lambda s: (s.selected, -(s.rank or 0))):
        if s.id in fps:
            selected = s.selected
            for ring in rings(fps[s.id]):
                draw.line(ring, fill=cloud_colour(s.cloud_cover), width=3 if selected else 1)
    for ring in rings(aoi):
        draw.line(ring, fill=(0, 0, 0, 255), width=3)
    # Legend: the cloud colour ramp and the selection summary.
    top = height + 6
    for k in range(0, 101, 5):
        x = 10 + k * 2
        draw.rectangle([x, top, x + 10, top + 12], fill=cloud_colour(k))
    draw.text((10, top + 16), "cloud cover 0 % to 100 %", fill=(0, 0, 0, 255))
    draw.text((240, top), f"{spec.name}: {len(sel)} of {len(sel.scenes)} scenes selected "
              f"({sel.settings.method}); AOI covered {100 * sel.coverage:.1f} %; black: AOI; "
              "thick: selected", fill=(0, 0, 0, 255))
    img.convert("RGB").save(path, format="PNG")
