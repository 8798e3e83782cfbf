#!/usr/bin/env bash
# A private Ray head on this machine for `ray job submit`: loopback only, token auth on, its own
# token, temp dir and ports, stopped by its own PID (`ray stop` would stop every Ray cluster
# of this user on the host).
#
# Usage: bash ops/ray_head.sh start     start the head in the background, wait for its dashboard,
#                                       print the commands a client needs
#        bash ops/ray_head.sh env       print the client's environment as `export` lines:
#                                       eval "$(bash ops/ray_head.sh env)"
#        bash ops/ray_head.sh token     print the token (the dashboard's login asks for it)
#        bash ops/ray_head.sh status    say whether the head runs, and where
#        bash ops/ray_head.sh stop      stop this head (its process group) and nothing else
# Environment: RAY_HEAD_DIR        token, PID file and log (default runs/ray-head, mode 0700)
#              RAY_HEAD_TMP        Ray's temp dir, short: Unix sockets live there
#                                  (default /tmp/gvae-ray-<uid>, mode 0700)
#              RAY_HEAD_PORT       GCS port (default 6379)
#              RAY_DASHBOARD_PORT  dashboard / Jobs API port (default 8265)
#              RAY_HEAD_CPUS       CPUs the head offers (default: all)
set -euo pipefail
umask 077
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${RAY_HEAD_DIR:-$ROOT/runs/ray-head}"
TMP="${RAY_HEAD_TMP:-/tmp/gvae-ray-$(id -u)}"
PORT="${RAY_HEAD_PORT:-6379}"
DASH="${RAY_DASHBOARD_PORT:-8265}"
RAY="$ROOT/.venv/bin/ray"
[ -x "$RAY" ] || RAY="$(command -v ray || true)"
[ -n "$RAY" ] || { echo "ops/ray_head.sh: no ray executable: run bash ops/setup.sh first" >&2; exit 2; }
PIDFILE="$DIR/head.pid"
TOKEN="$DIR/auth_token"
URL="http://127.0.0.1:$DASH"

running() { [ -f "$PIDFILE" ] && [ -n "$(alive "$(cat "$PIDFILE")")" ]; }
# live (non-zombie) processes of process group $1
alive() { ps -eo pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'; }

client_env() {
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN RAY_ADDRESS=$URL"
}

case "${1:-}" in
start)
    if running; then
        echo "ops/ray_head.sh: a head started from here runs already (PID $(cat "$PIDFILE"), $URL)" >&2
        exit 0
    fi
    mkdir -p "$DIR" "$TMP"
    chmod 700 "$DIR" "$TMP"
    [ -O "$TMP" ] || { echo "ops/ray_head.sh: $TMP belongs to another user; set RAY_HEAD_TMP" >&2; exit 2; }
    if [ ! -s "$TOKEN" ]; then
        "$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN"
    fi
    chmod 600 "$TOKEN"
    args=(start --head --block --node-ip-address 127.0.0.1 --port "$PORT"
          --dashboard-host 127.0.0.1 --dashboard-port "$DASH" --include-dashboard true
          --temp-dir "$TMP" --disable-usage-stats)
    if [ -n "${RAY_HEAD_CPUS:-}" ]; then args+=(--num-cpus "$RAY_HEAD_CPUS"); fi
    # extra `ray start` flags (e.g. the other ports) after `start`
    shift
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" RAY_TMPDIR="$TMP" RAY_API_SERVER_ADDRESS="$URL" \
        setsid "$RAY" "${args[@]}" "$@" > "$DIR/head.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 180); do
        if ! running; then
            echo "ops/ray_head.sh: the head exited while starting; its log, $DIR/head.log, ends:" >&2
            tail -20 "$DIR/head.log" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        if "$ROOT/.venv/bin/python" - "$URL/api/version" "$TOKEN" 2>/dev/null <<'PY'
import sys, urllib.request
token = open(sys.argv[2]).read().strip()
urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {token}"}), timeout=2)
PY
        then
            echo "[ray_head] head PID $(cat "$PIDFILE") on 127.0.0.1:$PORT, dashboard $URL (log $DIR/head.log)"
            echo "[ray_head] submit jobs with:"
            echo "  eval \"\$(bash ops/ray_head.sh env)\""
            echo "  ray job submit --working-dir . -- gvae-dist train --config configs/faces_beta_gated.yaml --workers 2 --set run.output_dir=\$PWD/runs"
            echo "[ray_head] dashboard login token: bash ops/ray_head.sh token;  stop: bash ops/ray_head.sh stop"
            exit 0
        fi
        sleep 1
    done
    echo "ops/ray_head.sh: no dashboard at $URL after 180 s; see $DIR/head.log; stopping" >&2
    kill -TERM -- "-$(cat "$PIDFILE")" 2>/dev/null || true
    exit 1
    ;;
env)
    client_env
    ;;
token)
    [ -s "$TOKEN" ] || { echo "ops/ray_head.sh: no token yet: run bash ops/ray_head.sh start" >&2; exit 1; }
    cat "$TOKEN"
    ;;
status)
    if running; then echo "running: PID $(cat "$PIDFILE"), dashboard $URL, temp dir $TMP"; else echo "not running"; exit 3; fi
    ;;
stop)
    if ! running; then echo "ops/ray_head.sh: no head started from here is running" >&2; rm -f "$PIDFILE"; exit 0; fi
    pid="$(cat "$PIDFILE")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 20); do  # `ray start --block` stops its children on SIGTERM, mostly in < 5 s
        [ -z "$(alive "$pid")" ] && break
        sleep 0.5
    done
    sleep 0.5  # a process forked while the others stopped (a worker the raylet was starting)
    if [ -n "$(alive "$pid")" ]; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do  # SIGKILL is delivered asynchronously: return once they are gone
            [ -z "$(alive "$pid")" ] && break
            sleep 0.25
        done
    fi
    rm -f "$PIDFILE"
    echo "[ray_head] stopped head PID $pid"
    ;;
*)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
