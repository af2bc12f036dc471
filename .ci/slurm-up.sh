#!/usr/bin/env bash
# A private one-node Slurm cluster for tests (Debian's slurm-wlm 22.05 + munge), run as root.
#
#   .ci/slurm-up.sh install     apt-get install slurmctld slurmd slurm-client munge (idempotent)
#   .ci/slurm-up.sh start DIR   write DIR/slurm.conf, start munged, slurmctld, slurmd; wait for the node;
#                               print SLURM_CONF=DIR/slurm.conf (clients need it in their environment)
#   .ci/slurm-up.sh stop DIR    stop exactly the daemons that `start DIR` started (PIDs from DIR/*.pid)
#
# Everything is private to DIR (config, state, spool, logs) and to /run/featdump-munge-* (munge socket,
# key, pid), on free TCP ports, so it neither touches nor collides with a system Slurm or another test run.
# No cgroups: proctrack/linuxproc, task/none, jobacct_gather/none. The node advertises 8 "gpu" GRES
# without device files, so job scripts that ask for --gres=gpu:1 run unchanged on this CPU machine.
set -euo pipefail

die() { echo "slurm-up: $*" >&2; exit 1; }

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "installing Slurm needs root (apt-get)"
    command -v apt-get >/dev/null || die "installing Slurm needs apt-get (Debian/Ubuntu)"
    # Keep the packages' init scripts from starting system daemons: we start private ones.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

start_cluster() {
    local dir=$1
    [ "$(id -u)" = 0 ] || die "this test cluster runs its daemons as root"
    for cmd in munged slurmctld slurmd sinfo; do
        command -v "$cmd" >/dev/null || die "$cmd not found; run: $0 install"
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ ! -e "$dir/slurmctld.pid" ] || die "$dir already holds a cluster; stop it first: $0 stop $dir"
    mkdir -p "$dir/state" "$dir/spool/$(hostname -s)" "$dir/log"

    # munge: its own key, socket and pid under /run (munged insists on a munge-owned, non-public folder).
    local mdir
    mdir=$(mktemp -d /run/featdump-munge-XXXXXX)
    echo "$mdir" >"$dir/munge-dir"
    chown munge:munge "$mdir"
    chmod 0755 "$mdir"  # munged wants others to reach the socket; the key stays 0600
    mungekey --create --keyfile="$mdir/munge.key" >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$mdir/munge.key" bs=1 count=1024 status=none
    chown munge:munge "$mdir/munge.key"
    chmod 0600 "$mdir/munge.key"
    setpriv --reuid=munge --regid=munge --init-groups \
        munged --socket="$mdir/munge.socket" --key-file="$mdir/munge.key" --pid-file="$mdir/munged.pid" \
        --log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed" </dev/null >/dev/null 2>&1 \
        || die "munged did not start (see $mdir/munged.log)"
    wait_for 10 munged test -s "$mdir/munged.pid" || die "munged wrote no pid file"
    cp "$mdir/munged.pid" "$dir/munged.pid"

    local host cpus ctld_port slurmd_port
    host=$(hostname -s)
    # More CPUs than the machine has (config_overrides), so a small test array runs all at once.
    cpus=${SLURM_UP_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
    cat >"$dir/slurm.conf" <<EOF
# written by .ci/slurm-up.sh: a private one-node test cluster
ClusterName=featdump-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$mdir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:8 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm drops GPUs that have no device file: stand-ins with /dev/null's numbers (no cgroups here).
    mkdir -p "$dir/dev"
    for i in 0 1 2 3 4 5 6 7; do
        mknod "$dir/dev/fakegpu$i" c 1 3 2>/dev/null || touch "$dir/dev/fakegpu$i"
    done
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=$dir/dev/fakegpu[0-7]
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -i </dev/null >/dev/null 2>&1 || die "slurmctld did not start (see $dir/log/slurmctld.log)"
    wait_for 15 slurmctld scontrol ping || die "slurmctld does not answer (see $dir/log/slurmctld.log)"
    slurmd -N "$host" </dev/null >/dev/null 2>&1 || die "slurmd did not start (see $dir/log/slurmd.log)"
    wait_for 30 "node $host idle" bash -c "sinfo -h -N -o %t | grep -qx idle" \
        || die "node $host did not come up idle (see $dir/log/slurmd.log and slurmctld.log)"
    echo "SLURM_CONF=$SLURM_CONF"
}

stop_cluster() {
    local dir=$1 pid name
    for name in slurmd slurmctld munged; do
        [ -s "$dir/$name.pid" ] || continue
        pid=$(cat "$dir/$name.pid")
        # only a process that is still the daemon we started (pids get reused)
        if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
            if [ -e "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$dir/$name.pid"
    done
    if [ -s "$dir/munge-dir" ]; then
        case "$(cat "$dir/munge-dir")" in
            /run/featdump-munge-*) rm -rf "$(cat "$dir/munge-dir")" ;;
        esac
        rm -f "$dir/munge-dir"
    fi
}

case "${1:-}" in
    install) install_slurm ;;
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start_cluster "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop_cluster "$2" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
