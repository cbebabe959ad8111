"""Progress never raises: a rich bar on a terminal, the widget in Jupyter only when ipywidgets
imports, plain lines otherwise (a Jupyter kernel without ipywidgets crashed before)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dask.array as da
import distributed
import pytest

import s2mosaic
from s2mosaic import _raster
from s2mosaic.demo import demo_spec

TINY_AOI = [11.995, 47.495, 12.005, 47.502]


@pytest.fixture
def jupyter_without_widgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_raster, "in_jupyter", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # `import ipywidgets` raises


@pytest.mark.usefixtures("jupyter_without_widgets")
def test_run_in_jupyter_without_ipywidgets_prints_lines(
        demo_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not _raster.has_widgets() and not _raster.interactive()
    spec = demo_spec(demo_catalog, tmp_path).replace(
        aoi=TINY_AOI, runtime={"chunks": 256, "scheduler": "synchronous"})
    report = s2mosaic.run(spec, progress=True)
    assert report.status == "complete"
    assert "tiles 1/1 (100 %)" in capsys.readouterr().err


def test_widgets_are_used_in_jupyter_when_ipywidgets_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_raster, "in_jupyter", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", type(sys)("ipywidgets"))
    assert _raster.interactive()


class _FakeClient:
    """Enough of a distributed client for :func:`_raster.compute`: a future that is done."""

    def compute(self, obj: Any) -> Any:
        return self

    def result(self) -> int:
        return 42


@pytest.mark.usefixtures("jupyter_without_widgets")
def test_client_progress_in_jupyter_without_ipywidgets_is_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(distributed, "progress",
                        lambda *futures, notebook=None, **kw: seen.update(notebook=notebook))
    assert _raster.compute(da.ones(3), _FakeClient(), progress=True) == (42,)  # type: ignore[arg-type]
    assert seen == {"notebook": False}
