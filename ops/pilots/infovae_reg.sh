#!/usr/bin/env bash
# Study v6 selection pilot (docs/study.md): does gating the InfoVAE regulariser's own term (the
# MMD samples, gate.regularizer) per partition, alone or with the KL (gate.kl), stop gating from
# costing informativeness? Tuning data only (data.seed=1), see configs/study_pilot_infovae_reg.yaml.
# Usage: bash ops/pilots/infovae_reg.sh OUT     then   python ops/pilots/study_factor_table.py OUT/<arm>
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/pilot_infovae_reg}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STUDY=("${GVAE_VENV:-.venv}/bin/gvae-dist" study -c configs/study_pilot_infovae_reg.yaml --parallel 2 --executor local)
"${STUDY[@]}" --out "$OUT/plain"
for arm in reg klreg; do
    mkdir -p "$OUT/$arm/runs"
    cp -rn "$OUT"/plain/runs/faces_infovae_ungated_* "$OUT/$arm/runs/"
done
"${STUDY[@]}" --out "$OUT/reg" --set gate.regularizer=true
"${STUDY[@]}" --out "$OUT/klreg" --set gate.regularizer=true --set gate.kl=true
