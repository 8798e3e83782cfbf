#!/usr/bin/env bash
# Start an MLflow tracking server for gvae-dist runs, bound to loopback by default.
#
# Usage: bash ops/mlflow_server.sh [PORT] [BACKEND_STORE_URI] [ARTIFACT_ROOT]
#   PORT               listen port (default 5000)
#   BACKEND_STORE_URI  run/metric database (default sqlite:///<repo>/runs/mlflow-server.db);
#                      any SQLAlchemy URI works, e.g. postgresql://user@db/mlflow for many nodes
#   ARTIFACT_ROOT      where the server stores artifacts it proxies (default <repo>/runs/mlflow-artifacts)
# Environment:
#   MLFLOW_HOST        bind address (default 127.0.0.1; set it to an interface on purpose to
#                      let other nodes log here, and put authentication in front)
#   MLFLOW_WORKERS     server worker processes (default 1)
#
# Clients (training, `mlflow ui` users) then use:
#   --set tracking.uri=http://127.0.0.1:PORT    or    MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
# Artifacts are proxied through the server (--serve-artifacts), so clients need no access to
# ARTIFACT_ROOT. The server runs in the foreground; stop it with Ctrl-C or by its PID.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${1:-5000}"
DB="${2:-sqlite:///$ROOT/runs/mlflow-server.db}"
ARTIFACTS="${3:-$ROOT/runs/mlflow-artifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"

if [[ "$DB" == sqlite:///* ]]; then
    mkdir -p "$(dirname "${DB#sqlite:///}")"
fi
if [[ "$ARTIFACTS" != *://* ]]; then
    mkdir -p "$ARTIFACTS"
    ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"
fi
# MLflow's server-side job runner (GenAI jobs) is unused here and costs ~15 s of every start
# (measured 24.7 s -> 9.6 s on 2 busy cores); export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true for it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
MLFLOW="$ROOT/.venv/bin/mlflow"
[ -x "$MLFLOW" ] || MLFLOW="$(command -v mlflow)"

echo "[mlflow_server] http://$HOST:$PORT  store $DB  artifacts $ARTIFACTS" >&2
exec "$MLFLOW" server --host "$HOST" --port "$PORT" --backend-store-uri "$DB" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" --workers "${MLFLOW_WORKERS:-1}"
