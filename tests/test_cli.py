"""The command line as a newcomer meets it: a quick ``--help``, flags that look like flags,
progress that reads well in a log."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import s2mosaic
from s2mosaic import _run
from s2mosaic.cli import app

from .conftest import REPO

HEAVY = ("odc.stac", "dask.array", "xarray", "rasterio", "distributed")


def test_importing_the_cli_leaves_the_library_unloaded() -> None:
    """``s2mosaic --help`` imports typer and rich, not Dask, xarray, odc-stac or GDAL."""
    code = f"import sys, s2mosaic.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_every_public_name_resolves_from_its_module() -> None:
    """The lazy table of ``s2mosaic/__init__.py`` says what its TYPE_CHECKING imports say."""
    tree = ast.parse((REPO / "s2mosaic" / "__init__.py").read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                typed |= {a.name: imp.module for a in imp.names}
    lazy = {name: module.lstrip(".") for module, names in s2mosaic._LAZY.items()
            for name in names}
    assert typed == lazy
    for name in s2mosaic.__all__:
        assert getattr(s2mosaic, name) is not None, name
    assert set(s2mosaic.__all__) <= set(dir(s2mosaic))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = s2mosaic.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["run", "series", "gapfill", "export", "search", "plan"])
def test_flags_take_no_value_in_the_help(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    flags = [line for line in res.output.splitlines()
             if any(f in line for f in ("--overwrite", "--resume", "--json", "--remote"))]
    assert flags, res.output
    assert not [line for line in flags if "<bool>" in line], flags


def test_progress_in_a_log_is_a_line_per_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    with _run._progress(True, 40, 5) as advance:  # 5 tiles resumed, 35 to go
        for _ in range(35):
            advance()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("tiles 8/40 (20 %)") and lines[-1].startswith("tiles 40/40 (100 %)")
    assert len(lines) == 9  # 20 %, 30 %, ..., 100 %
