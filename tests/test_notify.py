"""Run notifications against a real local HTTP server that records what is POSTed."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import s2mosaic
from s2mosaic._notify import WEBHOOK_ENV, Notifier
from s2mosaic._spec import MosaicSpec
from s2mosaic.demo import demo_spec
from s2mosaic.errors import WriteError

SMALL_AOI = [11.995, 47.495, 12.005, 47.502]  # across the zone line, a few chunks


class Webhook:
    """A webhook receiver on 127.0.0.1: records JSON bodies, answers ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.delay = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.headers.append(dict(self.headers))
                hook.received.append(json.loads(body))
                time.sleep(hook.delay)
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/SECRET-TOKEN"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [r["s2mosaic"]["event"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook()
    monkeypatch.setenv(WEBHOOK_ENV, hook.url)
    yield hook
    hook.close()


def _spec(catalog: Path, out: Path) -> MosaicSpec:
    return demo_spec(catalog, out).replace(
        aoi=SMALL_AOI, runtime={"chunks": 256, "scheduler": "synchronous"})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_and_completion_with_the_report(demo_catalog: Path, tmp_path: Path,
                                              webhook: Webhook) -> None:
    spec = _spec(demo_catalog, tmp_path / "out")
    report = s2mosaic.run(spec)
    assert webhook.events() == ["started", "completed"]
    start, done = webhook.received
    assert all(set(r) == {"text", "s2mosaic"} for r in webhook.received)  # Slack: text, no blocks
    assert all(h["Content-Type"] == "application/json" for h in webhook.headers)
    assert start["s2mosaic"]["run_id"] == done["s2mosaic"]["run_id"]
    assert start["s2mosaic"]["product"] == "s2mosaic-demo" == done["s2mosaic"]["product"]
    assert start["s2mosaic"]["cluster"] == "synchronous"
    assert start["s2mosaic"]["outputs"]["cog"] == str(spec.output.cog)
    assert start["text"].startswith("s2mosaic: 's2mosaic-demo' started on ")
    # The completion carries the run report, field for field.
    assert done["s2mosaic"]["report"] == json.loads(json.dumps(asdict(report)))
    assert done["s2mosaic"]["report"]["outputs"]["cog"] == str(spec.output.cog)
    assert done["s2mosaic"]["report"]["items"] == report.items > 0
    assert "finished in" in done["text"] and str(spec.output.cog) in done["text"]
    assert f"{report.shape[0]}×{report.shape[1]} px" in done["text"]


def test_failure_posts_the_error_and_still_raises(demo_catalog: Path, tmp_path: Path,
                                                  webhook: Webhook) -> None:
    spec = _spec(demo_catalog, tmp_path / "out")
    spec = spec.replace(output={"cog": tmp_path / "out" / "m.tif", "overwrite": False})
    (tmp_path / "out").mkdir()
    spec.output.cog.write_bytes(b"already here")  # type: ignore[union-attr]
    with pytest.raises(WriteError) as e:
        s2mosaic.run(spec)
    assert webhook.events() == ["started", "failed"]
    failed = webhook.received[1]
    assert failed["s2mosaic"]["error"] == {"type": "WriteError", "message": str(e.value)}
    assert failed["text"].startswith("s2mosaic: 's2mosaic-demo' FAILED on ")
    assert "WriteError" in failed["text"]


@pytest.mark.parametrize("problem", ["closed port", "HTTP 500"])
def test_an_undeliverable_notification_never_fails_the_run(
        demo_catalog: Path, tmp_path: Path, webhook: Webhook, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, problem: str) -> None:
    if problem == "closed port":
        monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{_closed_port()}/hook/SECRET-TOKEN")
    else:
        webhook.status = 500
    caplog.set_level(logging.WARNING, logger="s2mosaic._notify")
    report = s2mosaic.run(_spec(demo_catalog, tmp_path / "out"))
    assert Path(str(report.outputs["cog"])).exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == "s2mosaic._notify"]
    assert len(warnings) == 2, warnings  # started, completed
    assert all("could not post" in w and "the run goes on" in w for w in warnings)
    if problem == "HTTP 500":
        assert all("HTTP 500" in w for w in warnings)
        assert webhook.events() == ["started", "completed"]  # it did receive them
    else:
        assert all("refused" in w.lower() for w in warnings), warnings
    assert not any("SECRET-TOKEN" in w for w in warnings)  # the token is never logged


def test_slow_webhook_times_out_quickly(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    webhook.delay = 3.0
    n = Notifier(webhook.url, timeout=0.5)
    # The webhook would answer after 3 s: False means the 0.5 s timeout cut it off (no timing
    # assertion: the machine may be loaded).
    assert n.failed("p", RuntimeError("boom")) is False
    assert any("timed out" in r.getMessage() for r in caplog.records)


def test_notifier_without_url_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    n = Notifier.from_env()
    assert n.url is None and repr(n) == "Notifier(None)"
    assert n.started("p") is False and n.post({"text": "x"}) is False


def test_notifier_redacts_and_rejects_non_http(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier("https://user:pw@hooks.example.invalid/services/T0/B0/SECRET")
    assert repr(n) == "Notifier('https://hooks.example.invalid/…')"
    f = Notifier("file:///etc/passwd")
    caplog.set_level(logging.WARNING, logger="s2mosaic._notify")
    assert f.completed("p", {"wall_time_s": 1.0}) is False
    assert "not an http(s) URL" in caplog.text


def test_direct_events(webhook: Webhook) -> None:
    n = Notifier(webhook.url)
    assert n.started("p", cluster="cluster profile cluster/slurm-cpu.yaml") is True
    assert n.failed("p", ValueError("x" * 5000)) is True
    start, failed = webhook.received
    assert start["s2mosaic"]["cluster"] == "cluster profile cluster/slurm-cpu.yaml"
    assert "cluster/slurm-cpu.yaml" in start["text"]
    assert len(failed["s2mosaic"]["error"]["message"]) == 2000  # long messages are cut
