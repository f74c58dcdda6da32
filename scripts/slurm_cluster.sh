#!/usr/bin/env bash
# A two-node Slurm cluster on this one host, for the tests (tests/test_slurm.py) and for trying
# the sbatch script by hand. Everything it starts lives under DIR and is stopped by PID.
#
#   bash scripts/slurm_cluster.sh install      # Debian's slurm-wlm + munge (root, ~20 s)
#   bash scripts/slurm_cluster.sh up DIR       # munged, slurmctld, slurmd n1 and n2; waits until idle
#   SLURM_CONF=DIR/slurm.conf sbatch --nodes 2 examples/slurm/pretrain_gpt_rw.sbatch ...
#   bash scripts/slurm_cluster.sh down DIR     # stops them (by the PIDs in DIR), removes nothing else
#
# Two slurmd on one host: Debian builds Slurm with MULTIPLE_SLURMD, so each node gets its own
# port, spool, PID and log files (%n = node name). Both nodes resolve to 127.0.0.1 through
# NodeAddr; node names need not resolve. Ports come from PORT_BASE (default 17000): slurmctld
# PORT_BASE, nodes PORT_BASE+1 and +2. Needs root (slurmd runs jobs as the submitting user).
# cred_expire=30: a requeued job waits this long before it may start again (slurm.conf(5));
# the default 120 s was half of the requeue test's time. Steps here launch within a second.
# sched_interval=5: a job whose begin time has passed waits for the next scheduling pass
# (default every 60 s); nothing else triggers one on an idle cluster.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
PORT_BASE="${PORT_BASE:-17000}"
CPUS="${CPUS_PER_NODE:-$(nproc)}"

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "installing Slurm needs root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq -o Acquire::Languages=en
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local host
    host="$(hostname)"
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=rwtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT_BASE + 1)) CPUs=$CPUS State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT_BASE + 2)) CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    # Its own socket, PID and log under DIR; the machine's key (/etc/munge/munge.key, made by
    # the package). munged refuses to run as root without --force.
    munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit="$1" what="$2"
    shift 2
    for _ in $(seq "$((limit * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not happen within ${limit} s (logs in $dir)"
}

nodes_idle() {
    [[ "$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o '%t' | sort -u | tr -d '\n')" == idle ]]
}

up() {
    [[ -n "$dir" ]] || die "usage: $0 up DIR"
    command -v slurmctld >/dev/null || die "Slurm is not installed (run: $0 install)"
    dir="$(mkdir -p "$dir" && cd "$dir" && pwd)"
    write_conf
    start_munge
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i
    slurmd -f "$SLURM_CONF" -N n1
    slurmd -f "$SLURM_CONF" -N n2
    wait_for 60 "both nodes idle" nodes_idle
    echo "slurm_cluster.sh: up; export SLURM_CONF=$SLURM_CONF"
}

stop_pid_file() {
    local file="$1" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

cluster_pids() {
    # Every process started for this cluster carries its SLURM_CONF: the daemons (exported in
    # `up`), slurmstepd and the jobs' processes (sbatch passes the submitter's environment).
    local conf="SLURM_CONF=$dir/slurm.conf" pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ "$pid" == "$$" ]] && continue
        if { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$conf"; then
            echo "$pid"
        fi
    done
}

down() {
    [[ -n "$dir" && -d "$dir" ]] || die "usage: $0 down DIR"
    dir="$(cd "$dir" && pwd)"
    # Jobs first: slurmstepd and the job's processes outlive a stopped slurmd.
    if [[ -f "$dir/slurmctld.pid" ]]; then
        SLURM_CONF="$dir/slurm.conf" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 20); do
            [[ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
    stop_pid_file "$dir/slurmd.n1.pid"
    stop_pid_file "$dir/slurmd.n2.pid"
    stop_pid_file "$dir/slurmctld.pid"
    stop_pid_file "$dir/munge/munged.pid"
    local left
    left="$(cluster_pids)"
    if [[ -n "$left" ]]; then
        kill -9 $left 2>/dev/null || true
    fi
}

case "$cmd" in
    install) install ;;
    up) up ;;
    down) down ;;
    *) die "usage: $0 install | up DIR | down DIR" ;;
esac
