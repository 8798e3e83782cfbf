#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job: a gated beta-VAE on the built-in
# synthetic faces on a local Ray cluster with 2 CPU workers, tracked in the local MLflow store
# under runs/ (runs/mlflow.db), then print its DCI scores and where to look.
# Usage: bash ops/main.sh [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
exec .venv/bin/gvae-dist train --config configs/faces_beta_gated.yaml --workers 2 "$@"
