#!/usr/bin/env bash
# Tear down a cluster started by ops/slurm_up.sh: cancel its jobs (stopping slurmd does not kill
# running steps), then stop slurmd, slurmctld and munged by the pids in their pid files.
# Usage: ops/slurm_down.sh [STATE_DIR] [--purge]     (--purge also deletes STATE_DIR)
set -euo pipefail

STATE="$(realpath -m "${1:-/tmp/gvae-slurm}")"
[ -f "$STATE/slurm.conf" ] || { echo "[slurm_down] no cluster in $STATE"; exit 0; }
export SLURM_CONF="$STATE/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"

stop_pidfile() {  # stop_pidfile FILE: SIGTERM the pid, wait up to 10 s, then SIGKILL
    local file="$1" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

ctld_pid=""
[ -f "$STATE/slurmctld.pid" ] && ctld_pid="$(cat "$STATE/slurmctld.pid")"
if [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
    # Jobs of every user on this private cluster; give their steps KillWait to end.
    mapfile -t jobs < <(squeue -h -o '%i' 2>/dev/null || true)
    if [ "${#jobs[@]}" -gt 0 ]; then
        scancel "${jobs[@]}" 2>/dev/null || true
        for _ in $(seq 1 60); do
            [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

for pidfile in "$STATE"/slurmd-*.pid; do
    [ -e "$pidfile" ] && stop_pidfile "$pidfile"
done
stop_pidfile "$STATE/slurmctld.pid"
stop_pidfile "$STATE/munge/munged.pid"
echo "[slurm_down] stopped the cluster in $STATE"
if [ "${2:-}" = "--purge" ]; then
    rm -rf "$STATE"
fi
