"""The readers of every run: each read names its asset's URL when it fails, and signs its href
inside the read task when ``source.sign`` asks for it (see :mod:`s2mosaic._sign` for why).

A failed read - after GDAL's own retries of each request - raises
:class:`~s2mosaic.errors.SceneReadError` carrying the asset's unsigned href, whatever GDAL or
rasterio raised (``WarpOperationError('Chunk and warp failed')`` names no file). That is what
lets a run drop exactly that scene from a tile (``runtime.on_read_error: skip``) or fail with
the URL in the message (``fail``).

odc-stac's ``patch_url`` is no use for signing: ``odc.stac.load`` applies it to the parsed items
while it builds the graph, so the signed URLs (and their tokens) would be baked into every task
and expire on a long job. Its per-read hook is the reader driver (``odc.stac.load(driver=...)``):
:class:`AssetRioDriver` is odc-loader's rasterio driver whose readers sign the unsigned href the
graph holds at the start of every ``read`` (odc-loader opens the file per read, so the signed URL
lives exactly one read; with ``runtime.keep_open`` a worker thread keeps the file open under the
signed URL it was opened with, and a new token - a new URL - opens it anew, :mod:`s2mosaic._datasets`).

stackstac has no ``patch_url`` either; its hook is ``stackstac.stack(reader=...)``.
:func:`stackstac_reader` gives a reader that likewise names the URL of a failed read and, when
signing, signs at every ``read`` and opens the signed URL for that read only (stackstac's own
reader would keep one open dataset, and the URL it was opened with, for the whole computation).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any

import numpy as np
import rasterio
from odc.geo.converters import rio_geobox
from odc.geo.geobox import GeoBox
from odc.geo.overlap import compute_reproject_roi
from odc.loader import RioDriver, RioReader
from odc.loader._reader import pick_overview, resolve_band_query
from odc.loader._rio import _do_read, rio_env
from odc.loader.types import RasterLoadParams, RasterSource, ReaderSubsetSelection

from . import _datasets, _warp
from ._sign import redact, sign_href
from .errors import SceneReadError

__all__ = ["AssetRioDriver", "AssetRioReader", "stackstac_reader"]


_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


class _RedactQuery(logging.Filter):
    """Drops the query (the token) of URLs in odc-loader's log records: it logs the URL of a
    failed read, and that URL is the signed one."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "?" in msg:
            record.msg, record.args = _QUERY.sub(r"\1?<signature redacted>", msg), None
        return True


@functools.cache
def _redact_odc_logs() -> None:  # once per worker process, when it first signs a read
    logging.getLogger("odc.loader").addFilter(_RedactQuery())
    logging.getLogger("odc.loader._rio").addFilter(_RedactQuery())


def read_error(e: BaseException, href: str, signed: str) -> SceneReadError:
    """``e``, raised reading ``signed``, as the :class:`SceneReadError` of ``href`` (no token
    in its message, GDAL's error in it as text).

    Raise it outside the ``except`` block that caught ``e``: ``distributed`` pickles a task's
    exception with its ``__context__`` and ``__cause__`` (tblib), and rasterio's exceptions do
    not unpickle - the client would get a bare ``Exception`` holding a repr instead."""
    redact(e, signed, href)
    return SceneReadError(href, f"{type(e).__name__}: {e}"[:500])


class AssetRioReader(RioReader):
    """odc-loader's rasterio reader whose failures name ``src.uri``; with a signer it signs
    ``src.uri`` (unsigned in the graph) at each read. With ``reuse_warps`` a nearest-neighbour
    read across grids gathers through the worker's index map (:mod:`s2mosaic._warp`); with
    ``keep_open`` reads use the files the worker thread keeps open (:mod:`s2mosaic._datasets`).
    """

    def __init__(self, src: RasterSource, ctx: Any, sign: str, reuse_warps: bool = False,
                 keep_open: bool = False) -> None:
        super().__init__(src, ctx)
        self.sign = sign
        self.reuse_warps = reuse_warps
        self.keep_open = keep_open

    def read(self, cfg: RasterLoadParams, dst_geobox: GeoBox, *, dst: np.ndarray | None = None,
             selection: ReaderSubsetSelection | None = None,
             ) -> tuple[tuple[slice, slice], np.ndarray]:
        href = self._src.uri
        signed = href
        try:
            src = self._src
            if self.sign != "none":
                _redact_odc_logs()
                signed = sign_href(self.sign, href)
                src = dataclasses.replace(src, uri=signed)
            if self.reuse_warps and dst is None and selection is None:
                done = _warp.read(src, cfg, dst_geobox, keep_open=self.keep_open)
                if done is not None:
                    return done
            if self.keep_open:
                done = _read_kept(src, cfg, dst_geobox, dst, selection)
                if done is not None:
                    return done
            return RioReader(src, self._ctx).read(cfg, dst_geobox, dst=dst, selection=selection)
        except Exception as e:
            failed = read_error(e, href, signed)
        raise failed  # outside the handler: see read_error


class AssetRioDriver(RioDriver):
    """odc-loader's rasterio driver with :class:`AssetRioReader` readers.

    It enters the graph holding only the signer's name (``none``: no signing) and whether
    warped reads reuse index maps (``runtime.warp_reuse``) and whether reads use the files
    each worker thread keeps open (``runtime.keep_open``); metadata parsing is left to odc-stac
    (``md_parser`` None: ``odc.stac.load`` builds its own from ``stac_cfg``).
    """

    def __init__(self, sign: str = "none", reuse_warps: bool = False, keep_open: bool = False,
                 ) -> None:
        super().__init__()
        self.sign = sign
        self.reuse_warps = reuse_warps
        self.keep_open = keep_open

    def open(self, src: RasterSource, ctx: Any) -> AssetRioReader:
        return AssetRioReader(src, ctx, self.sign, self.reuse_warps, self.keep_open)


def _read_kept(src: RasterSource, cfg: RasterLoadParams, dst_geobox: GeoBox,
               dst: np.ndarray | None, selection: ReaderSubsetSelection | None,
               ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """odc-loader's ``rio_read`` (its ``_rio_read`` and ``_do_read``) from the file this thread
    keeps open (:func:`s2mosaic._datasets.kept`); None where odc-loader reads it instead (an
    overview read, a multi-band source, a caller that asks to be told failures as empty reads).
    """
    if not cfg.fail_on_error or (dst is not None and dst.ndim != 2) or src.ydim != 0:
        return None
    ttol = 0.9 if cfg.nearest else 0.05  # odc-loader's: nearest ignores sub-pixel shifts
    with _datasets.kept(src.uri) as rdr:
        bidx = resolve_band_query(src, rdr.count, selection=selection)
        if not isinstance(bidx, int):
            return None
        rr = compute_reproject_roi(rio_geobox(rdr), dst_geobox, ttol=ttol)
        if cfg.use_overviews and rr.read_shrink > 1 and \
                pick_overview(rr.read_shrink, rdr.overviews(bidx)) is not None:
            return None
        with rio_env(VSI_CACHE=False):
            return _do_read(rasterio.band(rdr, bidx), cfg, dst_geobox, rr, dst=dst)


def stackstac_reader(sign: str) -> Any:
    """A ``stackstac.stack(reader=...)`` value whose readers name the URL of a failed read
    and sign each read with ``sign`` (``none``: no signing)."""
    return functools.partial(_stackstac_reader_class(), sign=sign)


@functools.cache
def _stackstac_reader_class() -> type:
    # stackstac is an optional extra: its reader class is subclassed on first use only. The
    # class is registered under this module's name so that pickle finds it on workers.
    from stackstac.rio_reader import AutoParallelRioReader

    class AssetStackstacReader(AutoParallelRioReader):
        def __init__(self, *, sign: str, **kw: Any) -> None:
            super().__init__(**kw)
            self.sign = sign

        def read(self, window: Any, **kwargs: Any) -> np.ndarray:
            href = self.url
            signed = href if self.sign == "none" else sign_href(self.sign, href)
            reader = self if signed == href else AutoParallelRioReader(
                **{**super().__getstate__(), "url": signed})
            try:
                if reader is self:
                    return super().read(window, **kwargs)
                return reader.read(window, **kwargs)
            except Exception as e:
                failed = read_error(e, href, signed)
            finally:
                if reader is not self:
                    reader.close()
            raise failed  # outside the handler: see read_error

        def __getstate__(self) -> dict[str, Any]:
            return {**super().__getstate__(), "sign": self.sign}

    AssetStackstacReader.__module__ = __name__
    AssetStackstacReader.__qualname__ = "AssetStackstacReader"
    globals()["AssetStackstacReader"] = AssetStackstacReader
    return AssetStackstacReader


def __getattr__(name: str) -> Any:
    # Unpickling on a worker looks the class up here before anything has built it.
    if name == "AssetStackstacReader":
        return _stackstac_reader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
