"""An independent NumPy/rasterio oracle for composites (shares no code with s2mosaic).

It reads each item's COGs on their native grid with rasterio, upsamples SCL by pixel repetition,
masks, and reduces with ``np.nanpercentile`` / ``np.nanmean`` — the slow, obvious way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pystac
import rasterio
import rasterio.features
import shapely.geometry
import shapely.ops
from affine import Affine
from pyproj import Transformer

from s2mosaic._spec import OutputSpec


@dataclass
class Native:
    bands: dict[str, np.ndarray]  # name -> (T, Y, X) uint16
    valid: np.ndarray  # (T, Y, X) bool
    transform: Affine
    crs: str


def read_native(items: list[pystac.Item], keys: dict[str, str], scl_key: str | None,
                scl_classes: tuple[int, ...] = (0, 1, 3, 8, 9, 10)) -> Native:
    """Stack the native 10 m pixels of ``items`` (all on one grid) and their validity."""
    bands: dict[str, list[np.ndarray]] = {n: [] for n in keys}
    valid = []
    transform = crs = None
    for item in items:
        ok = None
        for name, key in keys.items():
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                a = src.read(1)
                transform, crs = src.transform, src.crs.to_string()
                bad = a == src.nodata if src.nodata is not None else np.zeros(a.shape, bool)
            bands[name].append(a)
            ok = ~bad if ok is None else ok & ~bad
        assert ok is not None
        if scl_key is not None:
            with rasterio.open(item.assets[scl_key].get_absolute_href()) as src:
                scl = src.read(1)
                fy = round(src.transform.e / transform.e)
                fx = round(src.transform.a / transform.a)
            scl = np.repeat(np.repeat(scl, fy, axis=0), fx, axis=1)[: ok.shape[0], : ok.shape[1]]
            ok &= ~np.isin(scl, scl_classes)
        valid.append(ok)
    assert transform is not None and crs is not None
    return Native({n: np.stack(v) for n, v in bands.items()}, np.stack(valid), transform, crs)


def crop(native: Native, aoi_lonlat: shapely.geometry.base.BaseGeometry, margin: int = 3) -> Native:
    """The window of ``native`` around the AOI (plus ``margin`` pixels): keeps the slow
    ``np.nanpercentile`` oracle to the pixels a test looks at."""
    t = Transformer.from_crs("EPSG:4326", native.crs, always_xy=True)
    x0, y0, x1, y1 = shapely.transform(
        shapely.segmentize(aoi_lonlat, 0.0005),
        lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))).bounds
    inv = ~native.transform
    (c0, r0), (c1, r1) = inv * (x0, y1), inv * (x1, y0)
    h, w = native.valid.shape[1:]
    r0, c0 = max(int(np.floor(r0)) - margin, 0), max(int(np.floor(c0)) - margin, 0)
    r1, c1 = min(int(np.ceil(r1)) + margin, h), min(int(np.ceil(c1)) + margin, w)
    win = (slice(None), slice(r0, r1), slice(c0, c1))
    return Native({n: b[win] for n, b in native.bands.items()}, native.valid[win],
                  native.transform @ Affine.translation(c0, r0), native.crs)


def reduce(data: np.ndarray, valid: np.ndarray, method: str, q: float = 25.0,
           min_obs: int = 1) -> np.ndarray:
    """The reference composite: uint16, nodata 0."""
    x = np.where(valid, data.astype(np.float64), np.nan)
    n = valid.sum(axis=0)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        if method in ("percentile", "median"):
            r = np.nanpercentile(x, 50.0 if method == "median" else q, axis=0)
        elif method == "mean":
            r = np.nanmean(x, axis=0)
        elif method == "first":
            idx = np.argmax(valid, axis=0)
            r = np.take_along_axis(data, idx[None], axis=0)[0].astype(np.float64)
        else:
            raise ValueError(method)
    out = np.where(n >= min_obs, np.round(r), 0)
    return out.astype(np.uint16)


def aoi_inside(aoi_lonlat: shapely.geometry.base.BaseGeometry, crs: str, transform: Affine,
               shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside the AOI, rasterised with rasterio in the grid's CRS."""
    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    geom = shapely.transform(shapely.segmentize(aoi_lonlat, 0.0005), lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    return rasterio.features.geometry_mask([geom], out_shape=shape, transform=transform, invert=True)


def place(values: np.ndarray, src_transform: Affine, dst_transform: Affine,
          dst_shape: tuple[int, int]) -> np.ndarray:
    """Paste a native-grid array into an aligned output grid (integer pixel offset), 0 elsewhere."""
    col = (src_transform.c - dst_transform.c) / dst_transform.a
    row = (src_transform.f - dst_transform.f) / dst_transform.e
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6, (col, row)
    col, row = round(col), round(row)
    out = np.zeros(dst_shape, dtype=values.dtype)
    h, w = values.shape
    y0, x0 = max(row, 0), max(col, 0)
    y1, x1 = min(row + h, dst_shape[0]), min(col + w, dst_shape[1])
    out[y0:y1, x0:x1] = values[y0 - row : y1 - row, x0 - col : x1 - col]
    return out


def assert_identical_outputs(a: OutputSpec, b: OutputSpec) -> None:
    """The COGs and every Zarr chunk of two runs are byte-identical (metadata aside)."""
    assert a.cog is not None and b.cog is not None and a.zarr is not None and b.zarr is not None
    assert a.cog.read_bytes() == b.cog.read_bytes()
    files_a = sorted(p.relative_to(a.zarr) for p in a.zarr.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.zarr) for p in b.zarr.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 5
    for rel in files_a:
        # The run group records times and item paths; what it says is checked elsewhere.
        if rel.name not in (".zmetadata", ".zattrs") and rel.parts[0] != "s2mosaic_run":
            assert (a.zarr / rel).read_bytes() == (b.zarr / rel).read_bytes(), rel
