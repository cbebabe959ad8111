"""Run notifications: a JSON POST to a webhook on start, completion and failure.

The webhook URL comes from the environment variable ``S2MOSAIC_WEBHOOK`` and nowhere else: such
URLs carry a secret token (Slack's do), and the spec is copied into every product's metadata
sidecar, so the URL must not live in it. Unset, nothing is posted.

The payload is Slack-compatible (incoming webhooks read ``text``; so do Mattermost, Rocket.Chat
and Discord's ``/slack`` endpoint) and carries the same facts as structured JSON under
``s2mosaic`` for other receivers::

    {"text": "s2mosaic: 'demo' finished in 12.3 s ...",
     "s2mosaic": {"event": "completed", "run_id": "…", "product": "demo", "host": "…",
                  "time": "2024-…Z", "report": {…}}}

Events: ``started`` (with ``cluster``), ``completed`` (with ``report``, the run report) and
``failed`` (with ``error: {type, message}``). A notification that cannot be delivered (no
connection, timeout, HTTP error) logs a warning and never fails the run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["WEBHOOK_ENV", "Notifier"]

#: The environment variable holding the webhook URL.
WEBHOOK_ENV = "S2MOSAIC_WEBHOOK"
#: Seconds to wait for the webhook before giving up (a slow receiver must not stall a run).
TIMEOUT_S = 5.0
_MAX_MESSAGE = 2000

log = logging.getLogger(__name__)


class Notifier:
    """Posts the notifications of one run to ``url`` (nothing when ``url`` is None).

    Examples
    --------
    >>> n = Notifier.from_env()        # S2MOSAIC_WEBHOOK, or a no-op
    >>> n = Notifier("https://hooks.slack.com/services/T000/B000/XXXX")
    >>> n                               # the token is never printed
    Notifier('https://hooks.slack.com/…')
    """

    def __init__(self, url: str | None, *, timeout: float = TIMEOUT_S) -> None:
        self.url = url or None
        self.timeout = timeout
        self.run_id = uuid.uuid4().hex[:12]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$S2MOSAIC_WEBHOOK`` (a no-op when it is unset or empty)."""
        env = os.environ if environ is None else environ
        return cls(env.get(WEBHOOK_ENV, "").strip() or None)

    def __repr__(self) -> str:
        return f"Notifier({_redact(self.url)!r})" if self.url else "Notifier(None)"

    # -- events ---------------------------------------------------------------------------------
    def started(self, product: str, *, cluster: str | None = None, outputs: Mapping[str, Any]
                | None = None) -> bool:
        """A run of ``product`` starts (``cluster`` says where it runs)."""
        where = f" on {cluster}" if cluster else ""
        return self._send("started", f"s2mosaic: '{product}' started on {_host()}{where}",
                          product, {"cluster": cluster, "outputs": _plain(outputs or {})})

    def completed(self, product: str, report: Mapping[str, Any]) -> bool:
        """A run finished; ``report`` is the run report as a mapping (``asdict(RunReport)``)."""
        outs = ", ".join(str(v) for v in (report.get("outputs") or {}).values() if v)
        shape = report.get("shape") or ("?", "?")
        text = (f"s2mosaic: '{product}' finished in {report.get('wall_time_s', 0):.1f} s on "
                f"{_host()}: {report.get('items', '?')} scene(s), {shape[0]}×{shape[1]} px"
                + (f" → {outs}" if outs else ""))
        return self._send("completed", text, product, {"report": _plain(report)})

    def failed(self, product: str, error: BaseException) -> bool:
        """A run failed with ``error``."""
        message = str(error)[:_MAX_MESSAGE]
        text = f"s2mosaic: '{product}' FAILED on {_host()}: {type(error).__name__}: {message}"
        return self._send("failed", text, product,
                          {"error": {"type": type(error).__name__, "message": message}})

    # -- transport ------------------------------------------------------------------------------
    def post(self, payload: Mapping[str, Any]) -> bool:
        """POST ``payload`` as JSON; True when the webhook answered 2xx. Never raises."""
        if not self.url:
            return False
        event = (payload.get("s2mosaic") or {}).get("event", "?")
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            log.warning("s2mosaic: not posting the %r notification: $%s=%r is not an http(s) "
                        "URL", event, WEBHOOK_ENV, _redact(self.url))
            return False
        data = json.dumps(payload, default=str).encode()
        req = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "s2mosaic"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # http(s) only, checked above
                status = resp.status
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = str(getattr(e, "reason", e)) or type(e).__name__
        else:
            if 200 <= status < 300:
                return True
            reason = f"HTTP {status}"
        log.warning("s2mosaic: could not post the %r notification to %s (%s); the run goes on",
                    event, _redact(self.url), reason)
        return False

    def _send(self, event: str, text: str, product: str, extra: Mapping[str, Any]) -> bool:
        if not self.url:
            return False
        body = {"event": event, "run_id": self.run_id, "product": product, "host": _host(),
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **extra}
        return self.post({"text": text, "s2mosaic": body})


def _host() -> str:
    return socket.gethostname()


def _redact(url: str | None) -> str:
    """``scheme://host/…``: webhook paths and queries hold tokens."""
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # never user:password@
    return f"{parts.scheme}://{host}/…" if parts.scheme and host else "<not a URL>"


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))
