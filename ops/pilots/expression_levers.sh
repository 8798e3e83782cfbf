#!/usr/bin/env bash
# Issue 12 pilot: which lever makes the un-gated beta-VAE encode expression (mouth, eyes, brow)?
# Protocol (docs/faces.md, written before the results): tuning data only (data.seed=1), 32x32,
# 3,000 steps, run seed 0, evaluation as the study (2,000 + 1,000 held-out codes, GBT).
# One lever per run against the preset; 2 runs at a time, one thread each.
# Usage: bash ops/pilots/expression_levers.sh [OUT]   (default runs/pilot_expression)
#        bash ops/pilots/expression_levers.sh OUT confirm   (the nominated lever against the preset
#             on fresh data, data.seed=4, run seeds 0 and 1)
#        bash ops/pilots/expression_levers.sh OUT optim   (the optimisation levers: lr schedule, batch)
#        bash ops/pilots/expression_levers.sh OUT combined | confirm_combined   (width + 16 dims + cosine)
#        bash ops/pilots/expression_levers.sh OUT capacity_budget   (the preset with annealed capacity
#             C_max 200; the preset for 6,000 steps)
#        bash ops/pilots/expression_levers.sh OUT size64   (the preset at 64x64, run seeds 0 and 1)
#        bash ops/pilots/expression_levers.sh OUT size32   (the preset at 32x32, run seeds 0 and 1)
#        bash ops/pilots/expression_levers.sh OUT size64_budget   (64x64 for 6,000 steps, run seeds 0 and 1)
#        bash ops/pilots/expression_levers.sh OUT small_features   (feature_scale 0.5 at 64 and 32 px)
#        bash ops/pilots/expression_levers.sh OUT latent32   (32 latent dims, rest 24, run seeds 0 and 1)
#        bash ops/pilots/expression_levers.sh OUT latent32_more   (32 dims at feature scale 0.5; at 64 px)
#        bash ops/pilots/expression_levers.sh OUT calibrated   (calibrated Gaussian; at feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_small   (the gated preset, 8-bin labels, feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_small_input   (the same, gate.closed_code=input)
#        bash ops/pilots/expression_levers.sh OUT gated_small_rest2   (the same, v18's rest 2 and 10 dims)
#        bash ops/pilots/expression_levers.sh OUT kl_warmup   (KL annealing over 1,500 steps; at feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT beta001   (beta 0.01 at feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT refine   (model.refine_channels=32 at feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_room   (the gated preset; with 8 expression dims; with 8 label bins)
#        bash ops/pilots/expression_levers.sh OUT gated_match_one   (the gated preset with pairing.match=one)
#        bash ops/pilots/expression_levers.sh OUT gated_identity   (the gated preset with 75% identity pairs)
#        bash ops/pilots/expression_levers.sh OUT budget_fs05   (12,000 steps at feature scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_budget_fs05   (the same, the gated preset)
#        bash ops/pilots/expression_levers.sh OUT gated_bins8_budget_fs05   (the gated preset, 8 label bins, 12,000 steps, scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_kl_budget_fs05   (the gated preset, gate.kl=true, 12,000 steps, scale 0.5)
#        bash ops/pilots/expression_levers.sh OUT gated_kl   (the gated preset with gate.kl=true, full-sized, 3,000 steps)
#        bash ops/pilots/expression_levers.sh OUT budget_fs05_px64   (12,000 steps at feature scale 0.5 and 64 px)
#        bash ops/pilots/expression_levers.sh OUT gated_kl_room_fs05   (the same as gated_kl_budget_fs05 with 8 expression dims)
#        (PRESET=<file in configs/> picks another preset than faces_beta_ungated.yaml for run())
#        then: python ops/pilots/expression_levers.py [OUT]  (the table)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/pilot_expression}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

run() {  # run NAME [--set key=value ...]
    local name="$1"; shift
    # the gated preset as these pilots ran it: gate.kl false until study v21 made it true; the modes
    # that test gate.kl set it again after this (the last --set of a key wins)
    local kl=(); [ "${PRESET:-}" = faces_beta_gated.yaml ] && kl=(--set gate.kl=false)
    if "${GVAE_VENV:-.venv}/bin/python" -m gvae_dist.cli train --config "configs/${PRESET:-faces_beta_ungated.yaml}" \
        --set data.seed=1 --set data.num_eval=3000 --set eval.num_train=2000 --set eval.num_test=1000 \
        --set eval.points=0 --set optim.steps=3000 --set run.checkpoint_every=1000 --set run.log_every=500 \
        --set run.threads=1 --set tracking.enabled=false --set "run.output_dir=$OUT" --set "run.name=$name" \
        "${kl[@]}" "$@" > "$OUT/$name.log" 2>&1; then
        echo "[pilot] $name done"
    else
        echo "[pilot] $name FAILED (see $OUT/$name.log)"
    fi
}

pair() {  # pair NAME [--set key=value ...]: NAME_s0 and NAME_s1 (run seeds 0 and 1) at once
    local name="$1"; shift
    run "${name}_s0" "$@" & run "${name}_s1" "$@" --set run.seed=1 & wait
}

if [ "${2:-}" = confirm ]; then
    WIDE=(--set "model.channels=[32,64,64,128]" --set model.hidden=512)
    run baseline_d4_s0 --set data.seed=4 & run wide_d4_s0 --set data.seed=4 "${WIDE[@]}" & wait
    run baseline_d4_s1 --set data.seed=4 --set run.seed=1 & run wide_d4_s1 --set data.seed=4 --set run.seed=1 "${WIDE[@]}" & wait
    exit 0
fi
COMBINED=(--set "model.channels=[32,64,64,128]" --set model.hidden=512 --set model.latent_dim=16
          --set partitions.2.size=8 --set optim.lr=0.003 --set optim.schedule=cosine
          --set optim.min_lr=0.0001 --set optim.lr_warmup_steps=200)
if [ "${2:-}" = combined ]; then  # the three partial levers together (docs/faces.md, 2026-12-07)
    run combined "${COMBINED[@]}"
    exit 0
fi
if [ "${2:-}" = size32 ]; then  # the 32 px twins of size64 (docs/faces.md, probe size)
    pair px32
    exit 0
fi
if [ "${2:-}" = size64_budget ]; then  # 64 px for 2x the steps (docs/faces.md, budget at 64 px)
    pair px64_6k --set data.image_size=64 --set optim.steps=6000 --set run.checkpoint_every=2000
    exit 0
fi
if [ "${2:-}" = small_features ]; then  # real-sized features (feature_scale 0.5) at 64 and 32 px
    pair fs05_px64 --set data.image_size=64 --set data.feature_scale=0.5
    pair fs05_px32 --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = latent32 ]; then  # a larger code: 32 dims, rest 24 (docs/faces.md)
    pair latent32 --set model.latent_dim=32 --set partitions.2.size=24
    exit 0
fi
if [ "${2:-}" = latent32_more ]; then  # 32 dims for real-sized features at 32 px, then at 64 px
    L32=(--set model.latent_dim=32 --set partitions.2.size=24)
    pair latent32_fs05 "${L32[@]}" --set data.feature_scale=0.5
    pair latent32_px64 "${L32[@]}" --set data.image_size=64
    exit 0
fi
if [ "${2:-}" = calibrated ]; then  # sigma-VAE's calibrated Gaussian, full- and real-sized features
    CAL=(--set objective.gaussian_calibrated=true)
    pair calibrated "${CAL[@]}"
    pair calibrated_fs05 "${CAL[@]}" --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = gated_small ]; then  # the gated preset, 8-bin labels, real-sized features (docs/faces.md)
    PRESET=faces_beta_gated.yaml pair gated_bins8_fs05 --set data.label_bins=8 --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = gated_small_input ]; then  # the same with the paper's closed_code: input
    GS=(--set data.label_bins=8 --set data.feature_scale=0.5 --set gate.closed_code=input)
    PRESET=faces_beta_gated.yaml pair gated_input_fs05 "${GS[@]}"
    exit 0
fi
if [ "${2:-}" = gated_small_rest2 ]; then  # v18's configuration (rest 2, 10 dims, 8 bins) at scale 0.5
    GS=(--set data.label_bins=8 --set data.feature_scale=0.5 --set model.latent_dim=10 --set partitions.2.size=2)
    PRESET=faces_beta_gated.yaml pair gated_rest2_fs05 "${GS[@]}"
    exit 0
fi
if [ "${2:-}" = kl_warmup ]; then  # KL annealing over half the run, full- and real-sized features
    KW=(--set objective.warmup_steps=1500)
    pair klwarm "${KW[@]}"
    pair klwarm_fs05 "${KW[@]}" --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = beta001 ]; then  # almost no KL: does an autoencoder read real-sized expression?
    pair beta001_fs05 --set objective.beta=0.01 --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = gated_room ]; then  # the gated preset's information loss: baseline, 8 expression dims, 8 label bins
    PRESET=faces_beta_gated.yaml pair gated
    PRESET=faces_beta_gated.yaml pair gated_expr8 --set model.latent_dim=20 --set partitions.1.size=8
    PRESET=faces_beta_gated.yaml pair gated_bins8 --set data.label_bins=8
    exit 0
fi
if [ "${2:-}" = gated_match_one ]; then  # partners share one expression factor's bin, not all three
    PRESET=faces_beta_gated.yaml pair gated_one --set pairing.match=one
    exit 0
fi
if [ "${2:-}" = gated_identity ]; then  # three quarters identity pairs instead of half
    PRESET=faces_beta_gated.yaml pair gated_id75 --set pairing.identity=0.75 --set pairing.shared_factor=0.25
    exit 0
fi
# Real-sized features at 4x the main job's budget (docs/faces.md, after the decoder probe's budget).
B12=(--set optim.steps=12000 --set run.checkpoint_every=4000 --set data.feature_scale=0.5)
case "${2:-}" in
    budget_fs05) pair steps12k_fs05 "${B12[@]}"; exit 0 ;;
    budget_fs05_px64) pair steps12k_px64_fs05 "${B12[@]}" --set data.image_size=64; exit 0 ;;
    gated_budget_fs05) PRESET=faces_beta_gated.yaml pair gated_steps12k_fs05 "${B12[@]}"; exit 0 ;;
    gated_bins8_budget_fs05)  # partners within an eighth of each factor's range
        PRESET=faces_beta_gated.yaml pair gated_bins8_steps12k_fs05 "${B12[@]}" --set data.label_bins=8; exit 0 ;;
    gated_kl_budget_fs05)  # the KL gated like the reconstruction: effective beta 1 in every partition
        PRESET=faces_beta_gated.yaml pair gated_kl_steps12k_fs05 "${B12[@]}" --set gate.kl=true; exit 0 ;;
    gated_kl_room_fs05)  # gate.kl, 12,000 steps, scale 0.5, and 8 expression dims instead of 4
        PRESET=faces_beta_gated.yaml pair gated_kl_expr8_steps12k_fs05 "${B12[@]}" --set gate.kl=true \
            --set partitions.1.size=8 --set model.latent_dim=20; exit 0 ;;
    gated_kl)  # the same at the main job's budget, full-sized features
        PRESET=faces_beta_gated.yaml pair gated_kl --set gate.kl=true; exit 0 ;;
esac
if [ "${2:-}" = refine ]; then  # the decoder's full-resolution refinement, real-sized features
    pair refine32_fs05 --set model.refine_channels=32 --set data.feature_scale=0.5
    exit 0
fi
if [ "${2:-}" = size64 ]; then  # image size, the lever left untried (docs/faces.md, 2026-12-07)
    pair px64 --set data.image_size=64
    exit 0
fi
if [ "${2:-}" = confirm_combined ]; then  # on fresh data against the confirmation's preset runs
    run combined_d4_s0 --set data.seed=4 "${COMBINED[@]}" &
    run combined_d4_s1 --set data.seed=4 --set run.seed=1 "${COMBINED[@]}" & wait
    exit 0
fi
if [ "${2:-}" = capacity_budget ]; then  # docs/faces.md, 2026-12-07; the preset has the combined levers
    run capacity200 --set objective.name=annealed --set objective.gamma=1000 --set objective.capacity_max=200 \
        --set objective.capacity_steps=2000 &
    run steps6000 --set optim.steps=6000 --set run.checkpoint_every=2000 & wait
    exit 0
fi
if [ "${2:-}" = optim ]; then  # the optimisation levers (docs/faces.md, 2026-12-07), against the same baseline
    run cosine3e3 --set optim.lr=0.003 --set optim.schedule=cosine --set optim.min_lr=0.0001 --set optim.lr_warmup_steps=200 &
    run batch32 --set optim.batch_size=32 --set optim.steps=6000 & wait
    exit 0
fi
run baseline & run sigma05 --set objective.gaussian_std=0.05 & wait
run latent16 --set model.latent_dim=16 --set partitions.2.size=8 &
run wide --set "model.channels=[32,64,64,128]" --set model.hidden=512 & wait
