"""Readers that sign each href inside the read task (see :mod:`s2mosaic._sign` for why).

odc-stac's ``patch_url`` is no use here: ``odc.stac.load`` applies it to the parsed items while
it builds the graph, so the signed URLs (and their tokens) would be baked into every task and
expire on a long job. Its per-read hook is the reader driver (``odc.stac.load(driver=...)``):
:class:`SigningRioDriver` is odc-loader's rasterio driver whose readers sign the unsigned href
the graph holds at the start of every ``read`` (odc-loader opens the file per read, so the signed
URL lives exactly one read).

stackstac has no ``patch_url`` either; its hook is ``stackstac.stack(reader=...)``.
:func:`stackstac_reader` gives a reader that, likewise, signs at every ``read`` and opens the
signed URL for that read only (stackstac's own reader would keep one open dataset, and the URL
it was opened with, for the whole computation).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any

import numpy as np
from odc.geo.geobox import GeoBox
from odc.loader import RioDriver, RioReader
from odc.loader.types import RasterLoadParams, RasterSource, ReaderSubsetSelection

from ._sign import redact, sign_href

__all__ = ["SigningRioDriver", "SigningRioReader", "stackstac_reader"]


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


class SigningRioReader(RioReader):
    """odc-loader's rasterio reader, signing ``src.uri`` (unsigned) at each read."""

    def __init__(self, src: RasterSource, ctx: Any, sign: str) -> None:
        super().__init__(src, ctx)
        self.sign = sign

    def read(self, cfg: RasterLoadParams, dst_geobox: GeoBox, *, dst: np.ndarray | None = None,
             selection: ReaderSubsetSelection | None = None,
             ) -> tuple[tuple[slice, slice], np.ndarray]:
        _redact_odc_logs()
        href = self._src.uri
        signed = sign_href(self.sign, href)
        reader = RioReader(dataclasses.replace(self._src, uri=signed), self._ctx)
        try:
            return reader.read(cfg, dst_geobox, dst=dst, selection=selection)
        except Exception as e:
            redact(e, signed, href)
            raise


class SigningRioDriver(RioDriver):
    """odc-loader's rasterio driver with :class:`SigningRioReader` readers.

    It enters the graph holding only the signer's name; metadata parsing is left to odc-stac
    (``md_parser`` None: ``odc.stac.load`` builds its own from ``stac_cfg``).
    """

    def __init__(self, sign: str) -> None:
        super().__init__()
        self.sign = sign

    def open(self, src: RasterSource, ctx: Any) -> SigningRioReader:
        return SigningRioReader(src, ctx, self.sign)


def stackstac_reader(sign: str) -> Any:
    """A ``stackstac.stack(reader=...)`` value whose readers sign each read with ``sign``."""
    return functools.partial(_stackstac_reader_class(), sign=sign)


@functools.cache
def _stackstac_reader_class() -> type:
    # stackstac is an optional extra: its reader class is subclassed on first use only. The
    # class is registered under this module's name so that pickle finds it on workers.
    from stackstac.rio_reader import AutoParallelRioReader

    class SigningStackstacReader(AutoParallelRioReader):
        def __init__(self, *, sign: str, **kw: Any) -> None:
            super().__init__(**kw)
            self.sign = sign

        def read(self, window: Any, **kwargs: Any) -> np.ndarray:
            href = self.url
            signed = sign_href(self.sign, href)
            reader = AutoParallelRioReader(**{**super().__getstate__(), "url": signed})
            try:
                return reader.read(window, **kwargs)
            except Exception as e:
                redact(e, signed, href)
                raise
            finally:
                reader.close()

        def __getstate__(self) -> dict[str, Any]:
            return {**super().__getstate__(), "sign": self.sign}

    SigningStackstacReader.__module__ = __name__
    SigningStackstacReader.__qualname__ = "SigningStackstacReader"
    globals()["SigningStackstacReader"] = SigningStackstacReader
    return SigningStackstacReader


def __getattr__(name: str) -> Any:
    # Unpickling on a worker looks the class up here before anything has built it.
    if name == "SigningStackstacReader":
        return _stackstac_reader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
