#!/usr/bin/env bash
# Creates .venv with the pinned CPU torch first (an unpinned torch pulls several GB of CUDA
# packages), then the project with its dev extra. Idempotent: a second run only re-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# pip's notes about local package mirrors that lack a package are noise here.
quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location '.*' is ignored" -e "^\s*$" || true; }; }
if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (torch==2.13.0 first, then the project) ..."
    "$PY" -m venv .venv
fi
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q "torch==2.13.0"
quiet .venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python -c "import torch, ray, optuna, dash, waitress, optuna_dashboard, proxprop" || { echo "set-up failed: see the pip output above" >&2; exit 1; }
