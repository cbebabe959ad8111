"""`s2mosaic._preview`: the folium map opens in headless Chromium without console errors and draws
the footprints; the PNG is real; quicklooks come from a thumbnail asset or the COG overviews."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
from PIL import Image
from typer.testing import CliRunner

from s2mosaic import search
from s2mosaic._preview import cloud_colour, preview, quicklook
from s2mosaic._select import select
from s2mosaic._spec import MosaicSpec
from s2mosaic.cli import app
from s2mosaic.demo import demo_spec
from s2mosaic.errors import SpecError


@pytest.fixture(scope="module")
def spec(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> MosaicSpec:
    s = demo_spec(demo_catalog, tmp_path_factory.mktemp("preview-out"))
    return s.replace(select={"method": "min-cover", "max_observations": 2})


@pytest.fixture(scope="module")
def written(spec: MosaicSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("preview")
    r = preview(spec, d / "preview.html", png=d / "preview.png")
    return {"result": r, "html": d / "preview.html", "png": d / "preview.png"}


def _first_chosen_colour(spec: MosaicSpec) -> str:
    """The outline colour of the scene chosen first: drawn on top in the map and the PNG."""
    first = next(s for s in select(spec, search(spec)).scenes if s.rank == 1)
    return cloud_colour(first.cloud_cover)


def test_preview_html_is_self_contained(written: dict[str, Any]) -> None:
    r = written["result"]
    assert (r.scenes, r.selected, r.quicklooks) == (24, 4, 24)
    text = written["html"].read_text()
    # Nothing is fetched: no external script, stylesheet or image; Leaflet is inlined.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", text)
    assert "L.map(" in text and "leaflet-control-layers" in text
    assert text.count("data:image/png;base64,") >= 24
    assert "S2B_32TQT_20240502_0_L2A" in text and "yes (#1)" in text


def test_preview_png_shows_quicklooks_and_footprints(written: dict[str, Any], spec: MosaicSpec
                                                     ) -> None:
    img = np.asarray(Image.open(written["png"]).convert("RGB"))
    assert img.shape[1] == 1024 and img.shape[0] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000  # a real picture, not a blank
    rgb = np.array(Image.new("RGB", (1, 1), _first_chosen_colour(spec)))[0, 0]
    assert (np.abs(img.astype(int) - rgb).sum(axis=2) == 0).sum() > 1000  # selected outlines
    assert (img.sum(axis=2) == 0).sum() > 1000  # the AOI outline (black)


def test_quicklook_from_thumbnail_asset(spec: MosaicSpec, tmp_path: Path) -> None:
    item = search(spec)[0].clone()
    thumb = tmp_path / "thumb.png"
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[:, :, 0] = 200
    Image.fromarray(arr).save(thumb)
    item.add_asset("thumbnail", pystac.Asset(str(thumb), media_type="image/png",
                                             roles=["thumbnail"]))
    q = quicklook(item, spec)
    assert q.source == "thumbnail"
    inside = q.rgba[..., 3] == 255
    assert inside.mean() > 0.9 and (q.rgba[inside, 0] == 200).all()
    # A remote thumbnail is not fetched offline: the COG overviews are used instead.
    item.assets["thumbnail"].href = "https://example.invalid/thumb.png"
    assert quicklook(item, spec).source == "cog-overviews"


def test_preview_of_shared_data_offline(s2_data: Path, tmp_path: Path) -> None:
    spec = MosaicSpec(aoi=[10.04, 46.064, 10.045, 46.068],
                      period={"start": "2017-07-01", "end": "2019-07-31"},
                      source={"stac": str(s2_data / "catalog.json")},
                      bands=["red", "green", "blue", "nir"])
    r = preview(spec, tmp_path / "p.html", png=tmp_path / "p.png")
    assert r.scenes == 2 and r.quicklooks == 2
    assert (tmp_path / "p.png").stat().st_size > 2000


def test_preview_cli_and_bad_arguments(spec: MosaicSpec, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    res = CliRunner().invoke(app, ["preview", str(path), "-o", str(tmp_path / "m.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.html").exists() and (tmp_path / "m.png").exists()
    with pytest.raises(SpecError, match="nothing to write"):
        preview(spec, None, png=None)


# -- headless Chromium over the DevTools protocol (pipe transport: stdlib only) -------------------
def _chromium() -> str:
    # Debian's /usr/bin/chromium is a shell wrapper; the binary behind it takes the pipe fds.
    if os.access("/usr/lib/chromium/chromium", os.X_OK):
        return "/usr/lib/chromium/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run does)")


class _CDP:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, exe: str, user_dir: Path) -> None:
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. A tiny Python trampoline
        # moves the pipe ends there (from fds >= 10, so they cannot collide) and execs it.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w)]
        for fd in (to_r, from_w):
            os.close(fd)
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                      "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); "
                      "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(high[0]), str(high[1]), exe,
             "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", f"--user-data-dir={user_dir}", "--window-size=1200,800"],
            pass_fds=high, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_r], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(msg))

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(max(0.01, deadline - time.monotonic())))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may already be gone
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_w)
        os.close(self._from_r)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[_CDP]:
    cdp = _CDP(_chromium(), tmp_path / "chromium-profile")
    try:
        yield cdp
    finally:
        cdp.close()


def test_preview_opens_in_chromium_without_errors(written: dict[str, Any], browser: _CDP,
                                                  spec: MosaicSpec) -> None:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Page.navigate", {"url": written["html"].resolve().as_uri()}, session=session)
    browser.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # let Leaflet finish drawing after the load event

    def evaluate(expr: str) -> Any:
        r = browser.send("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                         session=session)
        return r["result"].get("value")

    # 24 footprints + the AOI as SVG paths; the 4 selected quicklooks shown, 20 others hidden.
    assert evaluate("document.querySelectorAll('path.leaflet-interactive').length") == 25
    assert evaluate("document.querySelectorAll('img.leaflet-image-layer').length") == 4
    assert evaluate("document.querySelectorAll('.leaflet-control-layers-selector').length") == 5
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))
    colour = _first_chosen_colour(spec)
    rgb = np.array(Image.new("RGB", (1, 1), colour))[0, 0]
    drawn = (np.abs(img.astype(int) - rgb).sum(axis=2) <= 6).sum()
    assert drawn > 2000, f"footprint outlines not drawn ({drawn} px of {colour})"
    assert (img.sum(axis=2) == 0).sum() > 500  # the AOI outline
    Image.fromarray(img).save(written["html"].with_name("screenshot.png"))


def test_preview_basemap_is_opt_in(written: dict[str, Any], spec: MosaicSpec,
                                   tmp_path: Path) -> None:
    """The default page loads no tiles (it works offline); a given URL template is used."""
    assert "L.tileLayer(" not in written["html"].read_text()
    out = tmp_path / "tiles.html"
    preview(spec, out, tiles="https://tiles.example.invalid/{z}/{x}/{y}.png",
            attribution="example tiles", quicklooks=False)
    text = out.read_text()
    assert "L.tileLayer(" in text and "tiles.example.invalid" in text and "example tiles" in text
