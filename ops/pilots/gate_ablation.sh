#!/usr/bin/env bash
# Issue 13's ablation table on tuning data (docs/study.md): the gated beta-VAE preset at flip 0,
# then one gate choice changed per arm, each against the same un-gated cells (copied; --set-gated
# keeps their fingerprint). configs/study_pilot_gate_ablation.yaml has the shared settings.
# Usage: bash ops/pilots/gate_ablation.sh [OUT]     (default runs/pilot_gate_ablation)
#        python ops/pilots/gate_ablation.py [OUT]   (the table)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/pilot_gate_ablation}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STUDY=("${GVAE_VENV:-.venv}/bin/gvae-dist" study -c configs/study_pilot_gate_ablation.yaml --parallel 2 --executor local)
"${STUDY[@]}" --out "$OUT/preset"
arm() {  # arm NAME --set-gated key=value ...
    local name="$1"; shift
    mkdir -p "$OUT/$name/runs"
    cp -rn "$OUT"/preset/runs/faces_beta_ungated_* "$OUT/$name/runs/"
    "${STUDY[@]}" --out "$OUT/$name" "$@"
}
arm partner_batch --set-gated pairing.partner=batch
arm partner_rendered --set-gated pairing.partner=rendered
arm gate_kl --set-gated gate.kl=true
arm decoder_off --set-gated gate.decoder=false
arm identity75 --set-gated pairing.identity=0.75 --set-gated pairing.shared_factor=0.25
