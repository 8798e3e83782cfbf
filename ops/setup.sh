#!/usr/bin/env bash
# Create (or reuse) the project virtual environment in .venv and install gvae-dist into it.
# Idempotent: a second run only re-checks the install (seconds). Usage: bash ops/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${GVAE_VENV:-.venv}"
STAMP="$VENV/.gvae-installed"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
# Reinstall only when the dependency list changed since the last successful install.
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "[setup] environment $VENV is up to date"
    exit 0
fi
echo "[setup] installing gvae-dist and its dependencies into $VENV (first run: a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned: on machines with a local CPU wheel (see README) pip takes it from disk
# instead of downloading a multi-GB CUDA build; elsewhere it comes from the index as usual.
"$VENV/bin/python" -m pip install -q "torch==${GVAE_TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$want" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, ray, mlflow; print("torch", torch.__version__, "ray", ray.__version__, "mlflow", mlflow.__version__)')"
