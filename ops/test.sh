#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite.
# Usage: bash ops/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
# Services the integration tests need (SLURM controller, if the suite has SLURM tests).
if [ -x ops/services.sh ]; then bash ops/services.sh; fi
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q --durations=15 "$@"
