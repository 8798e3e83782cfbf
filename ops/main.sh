#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job: a gated beta-VAE on the built-in
# synthetic faces, tracked in the local MLflow store under runs/, then print its DCI scores.
# Usage: bash ops/main.sh [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
exec .venv/bin/gvae-dist train --config configs/faces_beta_gated.yaml "$@"
