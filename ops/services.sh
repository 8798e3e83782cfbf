#!/usr/bin/env bash
# System packages the integration tests need, installed when missing (idempotent; a no-op in
# about a second when everything is there). Run by ops/test.sh before pytest.
#   - SLURM (slurmctld, slurmd, slurm-client) and munge: tests/test_slurm.py starts a private
#     cluster with ops/slurm_up.sh and stops it with ops/slurm_down.sh (no daemons start here).
#   - shellcheck: tests/test_cluster_configs.py lints every shell script.
# Needs root and a Debian/Ubuntu package mirror; without them the tests that need these tools
# are skipped with a reason saying so.
set -euo pipefail

want=(slurmctld slurmd slurm-client munge shellcheck)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "[services] system packages present: ${want[*]}"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "[services] warning: missing ${missing[*]} and cannot install them (need root and apt-get);" \
         "the SLURM and shellcheck tests will be skipped" >&2
    exit 0
fi
echo "[services] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' maintainer scripts try to start daemons through systemd, which may be absent:
# policy-rc.d tells them not to; the tests start their own private daemons.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
status=0
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
[ "$created_policy" = 1 ] && rm -f "$policy"
exit "$status"
