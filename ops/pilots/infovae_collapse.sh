#!/usr/bin/env bash
# Study v3 follow-up: the gated InfoVAE collapses (KL 0) in 2 of 5 seeds before step 500.
# Pilot on tuning data only (data.seed=1), 32x32, gated InfoVAE preset, 1,500 steps (past any
# warm-up tried), run seeds 0-5, no evaluation: a run counts as collapsed when its training KL
# at the end is below 1 nat. Two runs at a time, one thread each.
# Usage: bash ops/pilots/infovae_collapse.sh OUT WARMUP_STEPS [extra --set ...]
#        python ops/pilots/infovae_collapse.py OUT      (the table)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:?usage: infovae_collapse.sh OUT WARMUP_STEPS}"; WARMUP="${2:?warm-up steps}"; shift 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
EXTRA=()
[ "$WARMUP" != 0 ] && EXTRA=(--set "objective.warmup_steps=$WARMUP")
EXTRA+=("$@")

run() {  # run SEED
    local name="warmup${WARMUP}_s$1"
    if "${GVAE_VENV:-.venv}/bin/python" -m gvae_dist.cli train --config configs/faces_infovae_gated.yaml \
        --set data.seed=1 --set data.image_size=32 --set data.num_eval=1000 --set eval.at_end=false \
        --set eval.points=0 --set optim.steps=1500 --set run.checkpoint_every=1500 --set run.log_every=250 \
        --set run.threads=1 --set tracking.enabled=false --set "run.output_dir=$OUT" --set "run.name=$name" \
        --set "run.seed=$1" "${EXTRA[@]}" > "$OUT/$name.log" 2>&1; then
        echo "[pilot] $name done"
    else
        echo "[pilot] $name FAILED (see $OUT/$name.log)"
    fi
}
for s in 0 2 4; do
    run "$s" & run "$((s + 1))" & wait
done
