"""Asset hrefs signed at read time, on the worker: ``source.sign``.

A signed URL (a Planetary Computer SAS token, a presigned S3 URL) expires, typically within an
hour; a mosaic job can run for days and resume after a kill. So nothing upstream of a read ever
holds a signed href: the search results, the Dask graph, the run manifest (``items.json``), the
provenance (``metadata.json``) and the logs carry the hrefs as the catalog gives them, and each
read task signs its href just before it opens the file (:mod:`s2mosaic._readers`). A token
then lives no longer than one read, and a resumed run signs afresh.

``source.sign`` is ``"none"``, ``"planetary-computer"`` (the ``planetary-computer`` package's
``sign``; the ``pc`` extra) or ``"module:function"``, any importable callable ``href -> href``
(a private bucket, a token service). Only the *name* enters the graph; each worker process
resolves it on first use, so the callable needs not pickle and a worker never sees a token made
on the client.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

from ._validate import fail
from .errors import MissingDependencyError

__all__ = [
    "SIGNERS",
    "check_callable",
    "load_callable",
    "redact",
    "sign_href",
    "signer",
]

#: Built-in values of ``source.sign`` (besides ``"module:function"``).
SIGNERS: tuple[str, ...] = ("none", "planetary-computer")
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def load_callable(name: str) -> Any:
    """The object ``"module:attr.path"`` names (ImportError/AttributeError when absent)."""
    module, _, attr = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_callable(path: str, value: Any, what: str, builtin: tuple[str, ...] = ()) -> str:
    """Validate a ``"module:function"`` spec field (or one of ``builtin``): importable and
    callable here, else :class:`~s2mosaic.errors.SpecError` naming ``path``."""
    valid = (f"expected {' or '.join(repr(b) for b in builtin)} or " if builtin else "expected ") + \
        f"'module:function' naming an importable callable {what}"
    if not isinstance(value, str) or not value:
        raise fail(path, value, valid)
    if value in builtin:
        return value
    if not _FUNCTION.fullmatch(value):
        raise fail(path, value, valid)
    try:
        obj = load_callable(value)
    except ImportError as e:
        raise fail(path, value, f"cannot import module {value.partition(':')[0]!r} ({e}); "
                                f"{valid}") from None
    except AttributeError:
        module, _, attr = value.partition(":")
        raise fail(path, value, f"module {module!r} has no attribute {attr!r}; {valid}") from None
    if not callable(obj):
        raise fail(path, value, f"{value!r} is a {type(obj).__name__}, not callable; {valid}")
    return value


@functools.cache
def signer(name: str) -> Callable[[str], str] | None:
    """The href signer ``source.sign`` names (None for ``"none"``), resolved once per process.

    ``"planetary-computer"`` without the package raises
    :class:`~s2mosaic.errors.MissingDependencyError` with the ``pip install`` line.
    """
    if name == "none":
        return None
    if name == "planetary-computer":
        try:
            import planetary_computer
        except ImportError:
            raise MissingDependencyError("planetary-computer", "pc",
                                         "source.sign: planetary-computer") from None
        # Its token cache is per process and per storage container: one token request per
        # container and hour, not per read.
        return planetary_computer.sign
    fn: Callable[[str], str] = load_callable(name)
    return fn


def sign_href(name: str, href: str) -> str:
    """``href`` signed by the signer ``name`` names (unchanged for ``"none"``)."""
    fn = signer(name)
    if fn is None:
        return href
    signed = fn(href)
    if not isinstance(signed, str):
        raise TypeError(f"source.sign {name!r} returned {type(signed).__name__} for {href!r}; "
                        "a signer must return the signed href as a string")
    return signed


def redact(exc: BaseException, signed: str, href: str) -> BaseException:
    """Replace ``signed`` by ``href`` in the messages of ``exc`` and its causes, in place.

    A failed read's message (GDAL's, rasterio's) quotes the URL it opened; the run records
    failures in its manifest and logs, where a token must not land.
    """
    if signed == href:
        return exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # rasterio's CPLE_* errors have read-only args (their message is in errmsg, below)
        with contextlib.suppress(AttributeError):
            e.args = tuple(a.replace(signed, href) if isinstance(a, str) else a for a in e.args)
        for k, v in list(vars(e).items()):
            if isinstance(v, str) and signed in v:
                setattr(e, k, v.replace(signed, href))
        e = e.__cause__ or e.__context__
    return exc
