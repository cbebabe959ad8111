"""Download the wheels that the GPU device machine lacks into ``.whl/`` (git-ignored).

Run here, where PyPI is reachable:  python benchmarks/gpu_wheels.py [--dest .whl]

The device machine has Python 3.12, CuPy (CUDA 13), torch, NumPy, SciPy, pandas, xarray, Numba
and pytest but no network; ``benchmarks/gpu_check.sh`` installs what is in ``.whl/`` there with
``pip install --no-index``. This resolves s2mosaic's core dependencies for CPython 3.12 on
manylinux x86-64 (``pip download --only-binary=:all:``), pinned to the versions installed in
this environment where it has them (so the device runs what CI tests), then deletes the wheels
of packages the device image already holds (``PRESENT``, from the device tool's package list)
or that the checks do not import (``SKIP``), and prints the total size: a device call carries at
most 64 MiB with the working tree (measured 2026-12: 61 MiB of wheels, rasterio 34 MiB of it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")
#: Already on the device machine's image (its package list, 2026-11-17): not carried.
PRESENT = frozenset({
    "attrs", "certifi", "charset-normalizer", "click", "cloudpickle", "contourpy", "cupy-cuda13x",
    "cycler", "filelock", "fonttools", "fsspec", "hypothesis", "idna", "jinja2", "kiwisolver",
    "llvmlite", "markupsafe", "matplotlib", "msgpack", "networkx", "numba", "numpy", "packaging",
    "pandas", "pillow", "pluggy", "psutil", "pygments", "pyparsing", "pytest", "pytest-timeout",
    "python-dateutil", "pyyaml", "requests", "rich", "scipy", "setuptools", "six",
    "sortedcontainers", "tifffile", "toolz", "torch", "typer", "typing-extensions", "urllib3",
    "wheel", "xarray", "iniconfig", "markdown-it-py", "mdurl", "shellingham", "tzdata", "imageio",
    "lazy-loader", "scikit-image", "opencv-python-headless",
})
#: Not imported by the GPU checks, and too big to carry: the preview map (folium), and pyogrio
#: (33 MiB; reads AOI files, imported only for them - the checks use bounding boxes).
SKIP = frozenset({"folium", "branca", "xstatic-leaflet", "xstatic", "xyzservices", "pyogrio"})


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [r for r in project["dependencies"]
            if norm(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]) not in SKIP]
    return [*reqs, "pytest-timeout"]


def local_pins() -> str:
    """``name==version`` of every distribution installed here (a constraints file)."""
    pins = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}
    return "\n".join(f"{n}=={v}" for n, v in sorted(pins.items())
                     if n not in PRESENT and n != "s2mosaic-stream" and "+" not in v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=REPO / ".whl")
    args = ap.parse_args()
    args.dest.mkdir(exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(local_pins())
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
           *(x for p in PLATFORMS for x in ("--platform", p)), "-d", str(args.dest),
           "-c", f.name, *core_requirements()]
    print("$", " ".join(cmd[:12]), "...")
    subprocess.run(cmd, check=True)
    kept, dropped = [], []
    for wheel in sorted(args.dest.glob("*.whl")):
        name = norm(wheel.name.split("-", 1)[0])
        if name in PRESENT or name in SKIP:
            wheel.unlink()
            dropped.append(name)
        else:
            kept.append(wheel)
    size = sum(w.stat().st_size for w in kept)
    print(f"{len(kept)} wheels kept in {args.dest} ({size / 2**20:.1f} MiB); not carried "
          f"(on the device already): {', '.join(sorted(set(dropped))) or 'none'}")
    for w in kept:
        print(f"  {w.name}  {w.stat().st_size / 2**20:.1f} MiB")
    if size > 62 * 2**20:
        print("warning: over 62 MiB; with the working tree (~1.5 MiB) this passes the 64 MiB a "
              "device call carries", file=sys.stderr)


if __name__ == "__main__":
    main()
