"""A ``source.sign: "tests.signer:sign"`` signer, and the token service it asks.

The object store (:mod:`tests.objectstore`) runs in the test process; the reads that need its
tokens may run in other processes (``distributed`` workers, a CLI child). So :func:`sign` asks a
loopback token service, whose address it finds in the environment variable :data:`ENV` (worker
processes and CLI children inherit it), for a fresh token at every call: one token per read.
:class:`TokenService` serves ``store.issue_token()`` and advances the store's fake clock by
``tick_s`` per token issued, so a run spans many token lifetimes however fast the machine is.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.request
from typing import Any

from .objectstore import ObjectStore

ENV = "S2MOSAIC_TEST_TOKEN_SERVICE"
#: Not callable: ``source.sign: "tests.signer:NOT_CALLABLE"`` is a spec error.
NOT_CALLABLE = 42


def sign(href: str) -> str:
    """``href?token=<fresh token>`` for loopback hrefs while a token service runs."""
    service = os.environ.get(ENV)
    if not service or not href.startswith("http://127.0.0.1:"):
        return href
    with urllib.request.urlopen(service, timeout=10) as r:
        token = r.read().decode()
    return f"{href}?token={token}"


class FakeClock:
    """A clock that moves only when told (``advance``); thread-safe."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class TokenService:
    """``GET /`` → a new token of ``store``; the clock advances ``tick_s`` per token."""

    def __init__(self, store: ObjectStore, clock: FakeClock, tick_s: float = 1.0) -> None:
        self.store, self.clock, self.tick_s = store, clock, tick_s
        self.issued: list[str] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                token = service.store.issue_token()
                service.issued.append(token)
                service.clock.advance(service.tick_s)
                body = token.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> TokenService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
