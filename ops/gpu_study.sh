#!/usr/bin/env bash
# The Gated-VAE study on one GPU machine, core stack only (no Ray, DALI, MLflow, WebDataset, no
# network, nothing installed: run it from a copy of the repository), in one command of at most
# 10 minutes. Everything is written under OUT; rerunning the same command resumes.
#
#   ops/gpu_study.sh OUT [STUDY_FILE] [--steps N|auto] [--parallel P] [--set key=value ...]
#
# STUDY_FILE defaults to configs/study_faces.yaml. GVAE_DEADLINE_S (default 540) bounds the
# work; a hard `timeout` 40 s later is the safety net. Steps and outputs: ops/gpu_study.py.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 OUT [STUDY_FILE] [--steps N|auto] [--parallel P] [--set key=value ...]" >&2
  exit 2
fi
out=$1
shift
study=configs/study_faces.yaml
if [[ $# -gt 0 && "$1" != -* ]]; then
  study=$1
  shift
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
deadline=${GVAE_DEADLINE_S:-540}
mkdir -p "$out"
# under a hard limit: the driver stops the cells itself before its deadline
timeout --kill-after=10 "$((${deadline%.*} + 40))" \
  "$py" "$repo/ops/gpu_study.py" --out "$out" --study "$study" --deadline-s "$deadline" "$@" \
  2>&1 | tee -a "$out/gpu_study.log"
exit "${PIPESTATUS[0]}"
