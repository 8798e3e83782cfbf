#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job, the whole data path:
#  1. build the synthetic faces once into WebDataset shards + DALI indexes + manifest.json, with a
#     held-out eval split (`gvae-dist data build`; a rerun verifies the shards against the manifest
#     and skips the build, a changed generator or setting rebuilds them);
#  2. train a gated beta-VAE (configs/faces_beta_gated_shards.yaml) from the train shards on a
#     local Ray cluster with 2 CPU workers, decoded by DALI (WebDataset + PIL where DALI cannot be
#     imported), tracked in the local MLflow store under runs/ (runs/mlflow.db);
#  3. evaluate on the eval shards and print DCI, the data path, backend and split, and where to look.
# Usage: bash ops/main.sh [--set key=value ...]
# Environment: GVAE_MAIN_DATA   shard directory (default data/faces)
#              GVAE_MAIN_NUM    faces to build, train + eval split (default: the preset's data.num_train)
#              GVAE_MAIN_STEPS  training steps (default: the preset's optim.steps)
#              GVAE_MAIN_BUILD_ONLY=1  build (or verify) the shards and stop
#              GVAE_MAIN_SKIP_SETUP=1  use the existing environment without re-checking it
#              GVAE_VENV        the virtual environment (default .venv, as ops/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${GVAE_MAIN_SKIP_SETUP:-0}" != 1 ]; then
    bash ops/setup.sh
fi
CONFIG=configs/faces_beta_gated_shards.yaml
DATA="${GVAE_MAIN_DATA:-data/faces}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, also in the Ray workers
GVAE=("${GVAE_VENV:-.venv}/bin/python" -m gvae_dist.cli)
DATA_SETS=()  # `--set data.*` arguments shape the shards too: pass them to the build
prev=""
for arg in "$@"; do
    if [ "$prev" = --set ] && [[ "$arg" == data.* ]]; then DATA_SETS+=(--set "$arg"); fi
    prev="$arg"
done
NUM=()
if [ -n "${GVAE_MAIN_NUM:-}" ]; then NUM=(--num "$GVAE_MAIN_NUM"); fi
STEPS=()
if [ -n "${GVAE_MAIN_STEPS:-}" ]; then STEPS=(--set "optim.steps=$GVAE_MAIN_STEPS"); fi
"${GVAE[@]}" data build --source faces --out "$DATA" "${NUM[@]}" --config "$CONFIG" --set "data.path=$DATA" \
    "${DATA_SETS[@]}"
if [ "${GVAE_MAIN_BUILD_ONLY:-0}" = 1 ]; then exit 0; fi
exec "${GVAE[@]}" train --config "$CONFIG" --workers 2 --set "data.path=$DATA" "${STEPS[@]}" "$@"
