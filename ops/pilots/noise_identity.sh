#!/usr/bin/env bash
# Study v7 selection pilot (docs/study.md): beta-VAE gated at label flip 0.2 with small-loss
# selection 0.25 and a larger identity share (0.75) against the un-gated cells of the v5 pilot,
# tuning data only (data.seed=1), run seeds 0 and 1.
# Usage: bash ops/pilots/noise_identity.sh [OUT]   (default runs/pilot_noise; needs OUT/drop25 from
#        the v5 pilot, see configs/study_pilot_noise_beta.yaml)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/pilot_noise}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/drop25_id75/runs"
cp -rn "$OUT"/drop25/runs/faces_beta_ungated_* "$OUT/drop25_id75/runs/"
"${GVAE_VENV:-.venv}/bin/gvae-dist" study -c configs/study_pilot_noise_beta.yaml --parallel 2 --executor local \
    --out "$OUT/drop25_id75" --set gate.drop_high_loss=0.25 --set-gated pairing.identity=0.75 \
    --set-gated pairing.shared_factor=0.25 --cells 'faces_beta_gated_*'
