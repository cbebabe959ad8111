"""``ds.s2``: s2mosaic's masks, harmonisation and composite for cubes loaded elsewhere.

For a cube of Sentinel-2 L2A bands and SCL loaded by another library, e.g.
``odc.stac.load(items, bands=["B04", "B08", "SCL"], chunks={"time": -1, "x": 1024, "y": 1024},
groupby="solar_day")``. The accessor is registered when xarray and ``s2mosaic`` have both been
imported, whichever came first (see ``s2mosaic/__init__.py``).

>>> import s2mosaic  # doctest: +SKIP
>>> m = ds.s2.harmonise(items).s2.composite(method="percentile", q=25)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    DataError,
    HarmonisationWarning,
    SpecError,
    UnknownNameError,
)

if TYPE_CHECKING:
    import pystac

# This module is imported while xarray is being imported by someone else (odc-stac, ...): at
# module level it may import only xarray, NumPy and the standard library; the rest of s2mosaic
# (Dask, odc, pystac) is imported by the methods when they run.

__all__ = ["BOA_OFFSETS_ATTR", "HARMONISED_SINCE", "S2Accessor"]

#: Cube attribute ``{band: [BOA offset per time slice]}``: set by :meth:`S2Accessor.harmonise`
#: and by s2mosaic's own loader, and the mark that a cube's offsets were removed.
BOA_OFFSETS_ATTR = "boa_offsets"
#: First sensing day of processing baseline 04.00 (ESA's BOA_ADD_OFFSET of −1000 DN). Later
#: acquisitions carry the offset (older ones too when reprocessed, which cannot be told here).
HARMONISED_SINCE = dt.date(2022, 1, 25)
#: Name of the SCL variable in s2mosaic's own cubes (``s2mosaic._cube.SCL_VAR``).
SCL_VAR = "scl"
#: A time slice and an item more than this far apart do not belong together.
_MATCH_WINDOW = np.timedelta64(1, "D")


@xr.register_dataset_accessor("s2")
class S2Accessor:
    """``ds.s2``: validity mask, BOA-offset removal and composite of a ``(time, y, x)`` cube of
    Sentinel-2 bands (one variable each) and, for :meth:`valid`, its SCL layer.

    Band variables are every ``(time, y, x)`` variable that is neither SCL (``scl`` in any case)
    nor boolean (e.g. ``valid`` of :func:`s2mosaic.load`).
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # -- what the cube holds ----------------------------------------------------------------------
    def _scl_name(self, scl: str | None) -> str:
        names = [str(v) for v in self._ds.data_vars]
        if scl is not None:
            if scl not in names:
                raise UnknownNameError(f"scl={scl!r} is not a variable of the cube; its variables "
                                       f"are {names}")
            return scl
        found = [n for n in names if n.lower() == SCL_VAR]
        if not found:
            raise UnknownNameError(
                f"the cube has no SCL variable (looked for 'scl' in any case) among {names}; "
                "load the scene classification too (odc.stac.load(items, bands=[..., 'SCL'])) "
                "or name it with scl='...'")
        if len(found) > 1:
            raise ArgumentError(f"the cube has several SCL variables {found}; pick one with "
                                f"scl={found[0]!r}")
        return found[0]

    def bands(self) -> list[str]:
        """The band variables: every ``(time, y, x)`` variable but SCL and boolean ones."""
        out = []
        for name, var in self._ds.data_vars.items():
            if (var.ndim == 3 and var.dims[0] == "time" and str(name).lower() != SCL_VAR
                    and var.dtype != np.bool_):
                out.append(str(name))
        if not out:
            raise ArgumentError(
                f"the cube has no (time, y, x) band variables (variables: "
                f"{[str(v) for v in self._ds.data_vars]}); load bands with time first, as "
                "odc.stac.load does")
        return out

    # -- the three steps --------------------------------------------------------------------------
    def valid(self, scl: str | None = None, classes: Sequence[int] | None = None) -> xr.DataArray:
        """Boolean ``(time, y, x)``: True where an observation is clear.

        False where any band is nodata (each variable's ``nodata`` attr, else its
        ``_FillValue`` attr or encoding, else 0; NaN for floats), where SCL is nodata, or where
        its class is one of ``classes``.

        Parameters
        ----------
        scl
            Name of the SCL variable; None finds ``scl`` in any case (``SCL``, ``scl``).
        classes
            SCL classes that are not clear; None: ``(0, 1, 3, 8, 9, 10)`` (nodata, defective,
            shadow, clouds, cirrus; snow is kept).

        Examples
        --------
        >>> ds.s2.valid().mean("time").plot()  # doctest: +SKIP
        """
        from ._spec import DEFAULT_SCL_INVALID, MaskSpec
        from .masks import valid_mask

        name = self._scl_name(scl)
        try:
            given: Any = classes  # validated (and made a tuple) by MaskSpec
            mask = MaskSpec(method="scl", scl_classes=DEFAULT_SCL_INVALID if given is None
                            else given)
        except SpecError as e:
            raise ArgumentError(f"classes={classes!r}: {e.valid}") from None
        bands = self.bands()
        cube = xr.Dataset({**{b: _with_nodata(self._ds[b]) for b in bands},
                           SCL_VAR: _with_nodata(self._ds[name])})
        return valid_mask(cube, bands, mask).transpose(*self._ds[bands[0]].dims)

    def harmonise(self, items: Iterable[pystac.Item]) -> xr.Dataset:
        """The cube with each time slice's BOA offset removed (reflectance × 10000 again).

        Products of processing baseline ≥ 04.00 store reflectance × 10000 + 1000; which items
        do is read from their metadata as :func:`s2mosaic.mosaic` does (``raster:bands`` offset,
        ``earthsearch:boa_offset_applied``, the baseline). Each item belongs to the time slice
        it was loaded into: the last slice at or before its datetime (``groupby="solar_day"``,
        ``"time"`` or ``"id"``). Variables that are no asset of the items are left as they are.

        Parameters
        ----------
        items
            The items the cube was loaded from.

        Returns
        -------
        xr.Dataset
            Lazy, with ``attrs["boa_offsets"]`` (``{band: [offset per time slice]}``), which
            tells :meth:`composite` the cube is harmonised.

        Raises
        ------
        DataError
            An item matches no time slice or a slice no item, or one slice fuses items with
            different offsets (load with ``groupby="time"`` then).
        """
        import pystac

        from ._cube import apply_boa_offsets
        from ._items import boa_offset, resolve_band

        ds = self._ds
        found = list(items)
        if not found or any(not isinstance(i, pystac.Item) for i in found):
            raise ArgumentTypeError("items must be the non-empty list of pystac.Item the cube was "
                                    "loaded from")
        slice_of = _time_slices(ds, found)
        names: list[str] = []
        per_item: list[list[int]] = []
        for name in self.bands():
            try:
                resolve_band(found[0], name)
            except DataError:
                continue  # a variable of the user's own (an index, a mask): not an asset
            names.append(name)
            per_item.append([boa_offset(i, resolve_band(i, name)) for i in found])
        offsets: list[tuple[int, ...]] = []
        for t in range(ds.sizes["time"]):
            members = [k for k, s in enumerate(slice_of) if s == t]
            row = []
            for name, values in zip(names, per_item, strict=True):
                seen = {values[k] for k in members}
                if len(seen) > 1:
                    detail = ", ".join(f"{found[k].id}: {values[k]}" for k in members)
                    raise DataError(
                        f"time slice {t} ({_when(ds, t)}) fuses items with different BOA offsets "
                        f"for {name!r} ({detail}); load with groupby='time' so that each slice "
                        "has one offset, or use s2mosaic.load, which keeps them apart")
                row.append(seen.pop())
            offsets.append(tuple(row))
        out = apply_boa_offsets(
            ds.assign({n: _with_nodata(ds[n]) for n in names}), names, offsets)
        out.attrs = {**ds.attrs,
                     BOA_OFFSETS_ATTR: {n: [o[i] for o in offsets] for i, n in enumerate(names)}}
        return out

    def composite(self, method: str = "percentile", q: float = 25.0,
                  valid: xr.DataArray | None = None, min_observations: int = 1) -> xr.Dataset:
        """Reduce the cube to a ``(y, x)`` mosaic over its valid observations.

        ``valid`` None: the cube's boolean ``valid`` variable when it has one
        (:func:`s2mosaic.load`), else :meth:`valid`. The rest is
        :func:`s2mosaic.composite.composite` (time must be one chunk). Warns
        (:class:`~s2mosaic.errors.HarmonisationWarning`) when the cube has acquisitions from
        2022-01-25 on (BOA offset) and was not harmonised (:meth:`harmonise`).

        Examples
        --------
        >>> m = ds.s2.harmonise(items).s2.composite("median")  # doctest: +SKIP
        """
        from .composite import composite as composite_cube

        ds = self._ds
        if valid is None:
            has = "valid" in ds.data_vars and ds["valid"].dtype == np.bool_
            valid = ds["valid"] if has else self.valid()
        if BOA_OFFSETS_ATTR not in ds.attrs and "time" in ds.coords and ds.sizes.get("time"):
            last = np.datetime64(ds["time"].values.max(), "D").astype(object)
            if isinstance(last, dt.date) and last >= HARMONISED_SINCE:
                warnings.warn(
                    f"the cube has acquisitions from {HARMONISED_SINCE} on (up to {last}), whose "
                    "products (processing baseline ≥ 04.00) store reflectance × 10000 + 1000, and "
                    "ds.s2.harmonise(items) was not applied; call it first (it does nothing to "
                    "items without the offset)", HarmonisationWarning, stacklevel=2)
        return composite_cube(ds[self.bands()], valid, method=method, q=q,
                              min_observations=min_observations)


def _with_nodata(var: xr.DataArray) -> xr.DataArray:
    """``var`` with its nodata in the ``nodata`` attr (from ``_FillValue`` where only that is
    set), as s2mosaic's maskers read it."""
    if var.attrs.get("nodata") is not None:
        return var
    fill = var.attrs.get("_FillValue", var.encoding.get("_FillValue"))
    return var if fill is None else var.assign_attrs(nodata=fill)


def _when(ds: xr.Dataset, t: int) -> str:
    return str(np.datetime64(ds["time"].values[t], "s"))


def _time_slices(ds: xr.Dataset, items: Sequence[pystac.Item]) -> list[int]:
    """The time slice each item was loaded into: the last at or before its datetime."""
    from ._items import item_datetime

    if "time" not in ds.coords:
        raise ArgumentError("the cube has no 'time' coordinate; harmonise needs the time of each "
                            "slice to match it with its items")
    times = ds["time"].values.astype("datetime64[ns]")
    if len(times) > 1 and not (np.diff(times) > np.timedelta64(0, "ns")).all():
        raise ArgumentError("the cube's times are not increasing and unique; load with "
                            "groupby='solar_day' (or 'time') so that each slice has its own time")
    out = []
    for item in items:
        when = item_datetime(item)
        if when.tzinfo is not None:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        t = np.datetime64(when, "ns")
        k = int(np.searchsorted(times, t, side="right")) - 1
        if k < 0 or t - times[k] > _MATCH_WINDOW:
            raise DataError(
                f"item {item.id!r} ({when.isoformat()}) matches no time slice of the cube (times "
                f"{str(times[0])[:19]} … {str(times[-1])[:19]}); pass the items the cube was "
                "loaded from")
        out.append(k)
    empty = sorted(set(range(len(times))) - set(out))
    if empty:
        raise DataError(f"time slice {empty[0]} ({_when(ds, empty[0])}) matches none of the "
                        f"{len(items)} items; pass all the items the cube was loaded from")
    return out

