#!/usr/bin/env bash
# The GPU path's checks and numbers in one table, within 8 minutes (benchmarks/gpu_check.py).
#
# On the device machine (Python 3.12, CuPy, torch, xarray, NumPy; no network), from the repo root:
#   here, once:  python benchmarks/gpu_wheels.py          # the missing wheels into .whl/ (~61 MiB)
#   there:       bash benchmarks/gpu_check.sh              # device tool: carry [".whl"]
# On a machine without CuPy or a GPU it is a dry run: GPU rows say "CuPy not available", the
# CPU side runs small, and it exits 0. Extra arguments go to gpu_check.py (--budget, --size ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python  # a development checkout: its own environment
fi
if ls .whl/*.whl >/dev/null 2>&1 && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    SITE=${TMPDIR:-/tmp}/s2mosaic-site
    echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE (no index)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else  # no wheels, or not the Python 3.12 they are for: the environment as it is
    echo "using $("$PY" -c 'import sys; print(sys.executable)') as it is (no .whl/ install)"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# 480 s in all: the steps budget 450 s and stop early rather than overrun.
timeout -k 10 480 "$PY" benchmarks/gpu_check.py --budget 450 "$@"
