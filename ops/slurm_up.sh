#!/usr/bin/env bash
# Bring up a private SLURM cluster on this machine (tests, local trials): munged, slurmctld and
# N slurmd "nodes" that all live on this host, every file under one state directory, free ports.
# Needs Debian's slurmctld, slurmd, slurm-client and munge packages (ops/services.sh installs
# them) and root. No systemd: the daemons are started here by hand and stopped by
# ops/slurm_down.sh through their pid files. Facts behind the choices:
# ../shared/notes/slurm-on-this-machine.md.
#
# Usage: ops/slurm_up.sh [STATE_DIR]          (default /tmp/gvae-slurm)
#   GVAE_SLURM_NODES=2       nodes (n1..nN; each gets an equal share of this host's cores)
#   GVAE_SLURM_AUTH=munge    munge (private key and socket) or none (auth/none, trusts the uid)
#   GVAE_SLURM_CRED_EXPIRE=10  credential lifetime (s); SLURM also holds a requeued job back this
#                            long (+1 s) before it may start again (SLURM's default is 120)
# A requeued job whose hold ends is started by the next periodic pass of the main scheduler
# (nothing else changes on the cluster to trigger one): it runs every second here
# (sched_interval=1; with SLURM's default of 60 s a requeued test job waited 20-30 s more).
# Then: export SLURM_CONF=STATE_DIR/slurm.conf   (also written to STATE_DIR/env)
set -euo pipefail

STATE="$(realpath -m "${1:-/tmp/gvae-slurm}")"
NODES="${GVAE_SLURM_NODES:-2}"
AUTH="${GVAE_SLURM_AUTH:-munge}"
CRED_EXPIRE="${GVAE_SLURM_CRED_EXPIRE:-10}"

die() { echo "[slurm_up] error: $*" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
for bin in slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$bin" >/dev/null || die "$bin not found: run ops/services.sh (apt-get install slurmctld slurmd slurm-client munge)"
done
[ "$(id -u)" -eq 0 ] || die "slurmd must run as root here"
[ "$AUTH" = none ] || command -v munged >/dev/null || die "munged not found: apt-get install munge (or GVAE_SLURM_AUTH=none)"
if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    die "a cluster is already running from $STATE: ops/slurm_down.sh $STATE first"
fi

rm -rf "$STATE"
mkdir -p "$STATE"/{ctld,log,spool,munge}
chmod 700 "$STATE"
host="$(hostname -s)"

# Free TCP ports for slurmctld and one slurmd per node (asked of the kernel, then released).
mapfile -t PORTS < <(python3 - "$((NODES + 1))" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
)
ctld_port="${PORTS[0]}"

# The node's topology: this host's cores split over the nodes, memory ~90% split likewise.
cores="$(nproc)"
cpus=$(( cores / NODES )); [ "$cpus" -ge 1 ] || cpus=1
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10240 / NODES ))

if [ "$AUTH" = munge ]; then
    # munged run as root refuses the packaged key (owned by user munge): private 0600 key,
    # private socket directory (mode 755 so clients can reach it).
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$STATE/munge/munge.key"
    chmod 755 "$STATE/munge"
    munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket.2" \
        --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
        --log-file="$STATE/log/munged.log"
    auth_lines="AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket.2,cred_expire=$CRED_EXPIRE
CredType=cred/munge"
else
    auth_lines="AuthType=auth/none
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/none"
fi

node_ports="$(IFS=,; echo "${PORTS[*]:1}")"
cat >"$STATE/slurm.conf" <<EOF
# Written by ops/slurm_up.sh: a private test cluster, $NODES node(s) on host $host.
ClusterName=gvae$$
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
$auth_lines
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=15
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=n[1-$NODES] NodeHostname=$host NodeAddr=127.0.0.1 Port=$node_ports CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$STATE/slurm.conf"
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" >"$STATE/env"

slurmctld -f "$SLURM_CONF"
for i in $(seq 1 "$NODES"); do
    mkdir -p "$STATE/spool/n$i"
    slurmd -f "$SLURM_CONF" -N "n$i"
done

# Ready when every node is idle (about a second after start).
for _ in $(seq 1 60); do
    idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)"
    [ "$idle" -ge "$NODES" ] && break
    sleep 0.5
done
if [ "${idle:-0}" -lt "$NODES" ]; then
    sinfo -N -l >&2 || true
    tail -n 20 "$STATE"/log/*.log >&2 || true
    die "nodes did not become idle; logs in $STATE/log"
fi
echo "[slurm_up] $NODES node(s) x $cpus CPU(s), ${mem_mb} MB each; controller on port $ctld_port"
echo "export SLURM_CONF=$SLURM_CONF"
