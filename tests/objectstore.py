"""A loopback "object store" for tests: files over real HTTP with Range, HEAD and ETag, tokens
that expire on a clock, and faults injected on request - what a cloud bucket does to a long job.

Anyone can run it (``python tests/objectstore.py DIR`` serves DIR until Ctrl-C); tests use the
:class:`ObjectStore` context manager::

    with ObjectStore(root) as store:
        href = store.url("sentinel-2-l2a/item/B04.tif")        # http://127.0.0.1:PORT/...
        store.faults.append(Fault("B04", "status", status=503, times=2))
        ...
        store.log                                               # every request, with outcome

It binds 127.0.0.1 only (port 0: the OS picks a free one) and serves only below ``root``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import os
import re
import secrets
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclasses.dataclass
class Fault:
    """One kind of failure, for requests whose path contains ``match``.

    ``kind``: ``status`` (answer ``status``, with ``Retry-After: retry_after`` when set),
    ``stall`` (accept the request and never answer, until the server stops or ``stall_s``
    passes), ``reset`` (send half of the body, then reset the connection), ``truncate`` (send
    the headers and half of the body, then close cleanly: a short read), ``corrupt`` (flip the
    bytes of the body). ``times``: how many requests it hits (None: all). ``every``: hit only
    every n-th matching request (1: each).
    """

    match: str
    kind: str
    status: int = 503
    retry_after: float | None = None
    times: int | None = None
    every: int = 1
    stall_s: float = 3600.0
    hits: int = 0
    seen: int = 0

    def applies(self, path: str) -> bool:
        if self.match not in path or (self.times is not None and self.hits >= self.times):
            return False
        self.seen += 1
        if (self.seen - 1) % self.every:
            return False
        self.hits += 1
        return True


@dataclasses.dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    bytes: int
    fault: str | None = None
    token: str | None = None


class ObjectStore:
    """Serve ``root`` on 127.0.0.1 in a background thread (see the module docstring).

    ``tokens``: when True, every request needs ``?token=...`` from :meth:`issue_token`, valid
    for ``token_lifetime_s`` seconds from issue; a missing, unknown or expired one gets 403.
    """

    def __init__(self, root: str | Path, *, tokens: bool = False, token_lifetime_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root).resolve()
        self.tokens = tokens
        self.token_lifetime_s = token_lifetime_s
        self.clock = clock
        self.faults: list[Fault] = []
        self.log: list[Request] = []
        self._issued: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self.port = 0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> ObjectStore:
        handler = _handler(self)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"objectstore:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are then refused) and end stalled requests."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:  # kept-alive connections too: a server that is down answers nothing
            conns, self._conns = list(self._conns), set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def down(self, seconds: float) -> threading.Thread:
        """Refuse connections for ``seconds`` (the server is stopped, then started again on the
        same port), in the background; returns the thread doing it."""
        self.stop()

        def restart() -> None:
            time.sleep(seconds)
            if not self._closed:  # never outlive the `with` block that made the store
                self.start()

        t = threading.Thread(target=restart, daemon=True)
        t.start()
        return t

    def __enter__(self) -> ObjectStore:
        self._closed = False
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.stop()

    # -- what tests use -------------------------------------------------------------------------
    def url(self, relpath: str | Path, token: str | None = None) -> str:
        """``http://127.0.0.1:PORT/relpath`` (with ``?token=`` when given)."""
        rel = Path(relpath)
        if rel.is_absolute():
            rel = rel.resolve().relative_to(self.root)
        u = f"http://127.0.0.1:{self.port}/{urllib.parse.quote(rel.as_posix())}"
        return f"{u}?token={token}" if token else u

    def issue_token(self) -> str:
        """A new token, valid for ``token_lifetime_s`` from now (on :attr:`clock`)."""
        token = secrets.token_hex(8)
        with self._lock:
            self._issued[token] = self.clock() + self.token_lifetime_s
        return token

    def expire_all_tokens(self) -> None:
        with self._lock:
            self._issued = {t: float("-inf") for t in self._issued}

    def requests(self, *, status: int | None = None, path: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log
                    if path in r.path and (status is None or r.status == status)]

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return sum(r.bytes for r in self.log)

    # -- inside the handler ---------------------------------------------------------------------
    def _token_ok(self, token: str | None) -> bool:
        if not self.tokens:
            return True
        with self._lock:
            expires = self._issued.get(token or "")
        return expires is not None and self.clock() < expires

    def _fault(self, path: str) -> Fault | None:
        with self._lock:
            return next((f for f in self.faults if f.applies(path)), None)

    def _record(self, r: Request) -> None:
        with self._lock:
            self.log.append(r)


def _handler(store: ObjectStore) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object stores do

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with store._lock:
                store._conns.add(self.connection)

        def finish(self) -> None:
            with store._lock:
                store._conns.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            rel = urllib.parse.unquote(parsed.path).lstrip("/")
            token = urllib.parse.parse_qs(parsed.query).get("token", [None])[0]
            rng = self.headers.get("Range")
            req = Request(self.command, rel, rng, 0, 0, token=token)
            store._record(req)  # logged now, completed below: a client never outruns the log
            self._answer(req, rel, token, rng, body)

        def _answer(self, req: Request, rel: str, token: str | None, rng: str | None,
                    body: bool) -> None:
            path = (store.root / rel).resolve()
            if not store._token_ok(token):
                return self._status(req, 403, "token missing or expired")
            if store.root not in path.parents or not path.is_file():
                return self._status(req, 404, "no such key")
            fault = store._fault(rel)
            req.fault = fault.kind if fault else None
            if fault is not None and fault.kind == "status":
                extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after else {}
                return self._status(req, fault.status, "injected", extra)
            if fault is not None and fault.kind == "stall":
                req.status = -1  # recorded before the wait: tests read the log meanwhile
                store._stop.wait(fault.stall_s)
                self.close_connection = True
                return None
            data = path.read_bytes()
            size = len(data)
            start, end, status = 0, size - 1, 200
            if rng:
                m = _RANGE.match(rng.strip())
                if not m or (not m.group(1) and not m.group(2)):
                    return self._status(req, 416, "bad range")
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
                if start >= size or start > end:
                    return self._status(req, 416, "range not satisfiable",
                                        {"Content-Range": f"bytes */{size}"})
                status = 206
            chunk = data[start:end + 1]
            etag = hashlib.sha256(f"{rel}:{path.stat().st_mtime_ns}:{size}".encode()).hexdigest()
            # The log entry is complete before a byte leaves: a client that has its answer
            # never reads an entry still being filled in.
            req.status = status
            req.bytes = 0 if not body else len(chunk) if fault is None or fault.kind not in (
                "reset", "truncate") else len(chunk) // 2
            self.send_response(status)
            self.send_header("Content-Type", "image/tiff" if rel.endswith(".tif")
                             else "application/octet-stream")
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{etag[:32]}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return None
            if fault is not None and fault.kind in ("reset", "truncate"):
                half = chunk[: len(chunk) // 2]
                self.wfile.write(half)
                self.wfile.flush()
                if fault.kind == "reset":  # RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                self.close_connection = True
                return None
            if fault is not None and fault.kind == "corrupt":
                chunk = bytes(b ^ 0xFF for b in chunk)
            self.wfile.write(chunk)
            return None

        def _status(self, req: Request, code: int, message: str,
                    headers: dict[str, str] | None = None) -> None:
            payload = f"{code} {message}\n".encode()
            req.status, req.bytes = code, 0
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler


if __name__ == "__main__":  # pragma: no cover - a manual tool
    import sys

    with ObjectStore(sys.argv[1] if len(sys.argv) > 1 else os.getcwd()) as s:
        print(f"serving {s.root} on http://127.0.0.1:{s.port}/ (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
