#!/usr/bin/env bash
# A real single-node SLURM on this machine for the tests: munged + slurmctld + slurmd on localhost,
# with SLURM's Torque/PBS wrappers (qsub, qstat, qdel from slurm-wlm-torque).
#
#   scripts/local-slurm.sh start    install what is missing (as root), start the daemons, wait for
#                                   the node to be idle; prints the client environment on stdout
#                                   (eval "$(scripts/local-slurm.sh start)" works) and writes it
#                                   to <dir>/env.sh
#   scripts/local-slurm.sh stop     cancel this cluster's jobs, stop its daemons (exit 0 if none ran)
#   scripts/local-slurm.sh status   say which daemons run and show sinfo; exit 0 if all up, 3 if not
#
# Everything lives in one state directory: slurm.conf, munge key and socket, pid files, logs,
# slurmctld state, slurmd spool. Nothing under /etc is used, and the daemons listen on their own
# ports, so a system SLURM or munge cannot clash with this one.
#
# Environment:
#   ARIHPC_SLURM_DIR        state directory [/tmp/arihpc-slurm]
#   ARIHPC_SLURM_CTLD_PORT  slurmctld's port [a free port picked at start]
#   ARIHPC_SLURM_D_PORT     slurmd's port [a free port picked at start]
#   ARIHPC_SLURM_NO_APT=1   install no Debian packages (or ARIHPC_TEST_NO_APT=1)
#   ARIHPC_SLURM_START_TIMEOUT  seconds to wait for the node to be idle [30]
#
# A client (sbatch, squeue, scontrol, qsub, qstat, qdel, the Perl module Slurm) needs only
#   export SLURM_CONF=<dir>/slurm.conf
# slurm.conf's AuthInfo=socket=<dir>/munge.socket points SLURM's munge plugins at this munged.
#
# The node is this host under its short hostname (slurmd insists on it). Two clusters of this
# script with different state directories can run at once (own ports, own munged, own spool); each
# believes it owns all CPUs of the host, so their jobs share the real CPUs.
#
# What the tests can count on (see write_conf): one node, CPUs = nproc, memory a consumable resource
# (a job without --mem gets DefMemPerCPU, at most 1024 MB per CPU) but not enforced (no cgroups);
# time limits are enforced: slurmctld checks them every 30 s, so a job is cut between 0 and 30 s
# after its limit with SIGCONT+SIGTERM, then SIGKILL after KillWait=5 s, ending in state TIMEOUT;
# finished jobs stay visible in squeue/qstat for MinJobAge=300 s; no accounting (no sacct), but
# every finished job gets a line in <dir>/jobcomp.log (jobcomp/filetxt: start, end, CPUs, state).
set -euo pipefail

DIR=${ARIHPC_SLURM_DIR:-/tmp/arihpc-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge.socket
START_TIMEOUT=${ARIHPC_SLURM_START_TIMEOUT:-30}
DEBIAN_PACKAGES=(slurm-wlm slurm-wlm-torque munge xvfb xauth)

say() { echo "local-slurm.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

deb_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

CREATED_POLICY_RC=0
remove_policy_rc() {
    if ((CREATED_POLICY_RC)); then
        rm -f /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=0
    fi
}
trap remove_policy_rc EXIT

install_packages() {
    [[ ${ARIHPC_SLURM_NO_APT:-} == 1 || ${ARIHPC_TEST_NO_APT:-} == 1 ]] && return 0
    command -v dpkg >/dev/null && command -v apt-get >/dev/null || return 0
    local missing=() p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        deb_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages ${missing[*]}: run this as root to install them"
    exec 8>/var/lock/arihpc-test-apt.lock # one installer at a time (shared with scripts/test.sh)
    flock 8
    say "installing Debian packages: ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep Debian's own munge/slurmctld/slurmd services from starting.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=1
    fi
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}" >&2 ||
        die "could not install ${missing[*]}"
    remove_policy_rc
    exec 8>&-
}

# pid of daemon $1 (slurmctld, slurmd, munged) of this state directory, or nothing.
daemon_pid() {
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1"* ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/"; then
        echo "$pid"
    fi
}

# pids of any slurmctld/slurmd/munged started with a path in this state directory.
our_daemon_pids() {
    local pid comm
    for pid in $(pgrep -f -- "$DIR/" || true); do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case $comm in slurmctld* | slurmd* | munged) echo "$pid" ;; esac
    done
}

# pids of slurmstepd processes (job steps) with a file open in this state directory (the spool).
our_stepd_pids() {
    local pid fd
    for pid in $(pgrep -x slurmstepd || true); do
        for fd in "/proc/$pid/fd/"*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "$DIR/"* ]]; then
                echo "$pid"
                break
            fi
        done
    done
}

export_env() {
    export SLURM_CONF=$CONF
    unset SLURM_CONFIG_DIR 2>/dev/null || true
}

ping_up() {
    SLURM_CONF=$CONF timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'
}

env_lines() {
    echo "export SLURM_CONF=$CONF"
}

print_env() {
    env_lines >"$DIR/env.sh"
    env_lines
}

show_logs() {
    local f
    for f in munged slurmctld slurmd; do
        if [[ -f $DIR/$f.log ]]; then
            echo "---- tail of $DIR/$f.log" >&2
            tail -n 20 "$DIR/$f.log" >&2
        fi
    done
}

# Two distinct free TCP ports on this host.
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_busy() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

write_conf() {
    local host=$1 ctld_port=$2 d_port=$3 cpus mem_mb real_mem def_mem
    cpus=$(nproc)
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    # A bit under the machine's memory: slurmd drains a node whose RealMemory is above what it sees.
    real_mem=$((mem_mb - (mem_mb / 20 > 256 ? mem_mb / 20 : 256)))
    # Without a default, a job giving no --mem would take the whole node's memory.
    def_mem=$((real_mem / cpus < 1024 ? real_mem / cpus : 1024))
    cat >"$CONF.tmp" <<EOF
# Written by scripts/local-slurm.sh: a throwaway single-node cluster for the tests.
ClusterName=arihpc-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
# Start a submitted job within a second (the default waits up to 3 s between scheduling passes).
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
ReturnToService=2
KillWait=5
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    chmod 644 "$CONF"
}

start_munged() {
    if [[ ! -s $DIR/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$DIR/munge.key"
        else
            dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
        fi
    fi
    chmod 600 "$DIR/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # --force: it runs as root and its directory lives under the world-writable /tmp.
    munged --force --key-file="$DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" 2>>"$DIR/munged.log" ||
        return 1
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S $MUNGE_SOCKET ]] && return 0
        sleep 0.1
    done
    return 1
}

# Prints the node's state as sinfo sees it (idle, down*, drain, ...).
node_state() {
    SLURM_CONF=$CONF timeout 10 sinfo --noheader --nodes="$1" --format='%T' 2>/dev/null | head -n 1
}

# Start failed: show why, stop what did start, exit 1.
start_failed() {
    say "$*"
    show_logs
    do_stop
    exit 1
}

all_up() {
    [[ -n $(daemon_pid munged) && -n $(daemon_pid slurmctld) && -n $(daemon_pid slurmd) ]] && ping_up
}

do_start() {
    if [[ -f $CONF ]] && all_up; then
        say "already running ($DIR)"
        print_env
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "start needs root (slurmd runs jobs as their users)"
    install_packages
    local p
    for p in munged slurmctld slurmd scontrol sinfo sbatch; do
        command -v "$p" >/dev/null || die "$p not found: apt-get install ${DEBIAN_PACKAGES[*]}"
    done
    # Something of this directory is half up: start again from a clean slate.
    if [[ -n $(our_daemon_pids) ]]; then
        say "some daemons of $DIR are running but the cluster is not up: restarting"
        do_stop
    fi

    local t0=$SECONDS host ctld_port d_port
    host=$(hostname -s)
    mkdir -p "$DIR/state" "$DIR/spool"
    chmod 755 "$DIR"
    if [[ -n ${ARIHPC_SLURM_CTLD_PORT:-} && -n ${ARIHPC_SLURM_D_PORT:-} ]]; then
        ctld_port=$ARIHPC_SLURM_CTLD_PORT d_port=$ARIHPC_SLURM_D_PORT
    else
        read -r ctld_port d_port <<<"$(free_ports)"
        ctld_port=${ARIHPC_SLURM_CTLD_PORT:-$ctld_port}
        d_port=${ARIHPC_SLURM_D_PORT:-$d_port}
    fi
    for p in "$ctld_port" "$d_port"; do
        ! port_busy "$p" || die "port $p is in use"
    done
    write_conf "$host" "$ctld_port" "$d_port"
    rm -f "$DIR"/{slurmctld,slurmd,munged}.log

    start_munged || start_failed "munged did not start"
    export_env
    slurmctld -f "$CONF" || start_failed "slurmctld did not start"
    slurmd -f "$CONF" || start_failed "slurmd did not start"

    local state="" resumed=0
    while ((SECONDS - t0 < START_TIMEOUT)); do
        if ping_up; then
            state=$(node_state "$host")
            case $state in
            idle | mixed | allocated) break ;;
            down* | drain* | fail*)
                if ((!resumed)); then
                    say "node $host is $state: resuming it"
                    scontrol update nodename="$host" state=resume >&2 || true
                    resumed=1
                fi
                ;;
            esac
        fi
        sleep 0.5
    done
    if ! ping_up || [[ ! $state =~ ^(idle|mixed|allocated)$ ]]; then
        SLURM_CONF=$CONF timeout 10 scontrol show node "$host" >&2 2>/dev/null || true
        start_failed "SLURM did not come up within ${START_TIMEOUT}s (node state: ${state:-unknown})"
    fi
    say "SLURM $(sinfo -V | awk '{print $2}') up in $((SECONDS - t0))s: node $host $state," \
        "slurmctld port $ctld_port, slurmd port $d_port ($DIR)"
    print_env
}

# Sends SIGTERM to the given pids, waits up to $1 seconds, then SIGKILL.
terminate() {
    local wait=$1 pid i alive
    shift
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do
        alive=0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

do_stop() {
    local pids=() pid d i
    # Cancel this cluster's jobs first: stopping slurmd alone would leave their steps running.
    if [[ -f $CONF && -n $(daemon_pid slurmctld) ]] && ping_up; then
        if [[ -n $(SLURM_CONF=$CONF timeout 10 squeue --noheader --format=%i \
            --states=PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING 2>/dev/null) ]]; then
            SLURM_CONF=$CONF timeout 10 scancel --full --partition=debug 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                [[ -z $(our_stepd_pids) ]] && break
                sleep 0.1
            done
        fi
    fi
    # The three stop independently of each other: stop them together.
    for d in slurmd slurmctld munged; do
        pid=$(daemon_pid "$d")
        [[ -n $pid ]] || continue
        pids+=("$pid")
        # slurmctld's helper ": slurmscriptd" carries no path to recognise it by later.
        [[ $d != slurmctld ]] || mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$pid" || true)
    done
    terminate 10 "${pids[@]}"
    # Make sure: whatever is left of them (a stale pid file, a daemon started by hand).
    mapfile -t pids < <(our_daemon_pids; our_stepd_pids)
    if ((${#pids[@]})); then
        say "stopping leftover processes: ${pids[*]}"
        terminate 5 "${pids[@]}"
    fi
    rm -f "$DIR"/{slurmctld,slurmd,munged}.pid "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    return 0
}

do_status() {
    local d pid up=1
    for d in munged slurmctld slurmd; do
        pid=$(daemon_pid "$d")
        if [[ -n $pid ]]; then
            echo "$d: running (pid $pid)"
        else
            echo "$d: not running"
            up=0
        fi
    done
    if [[ -f $CONF ]] && ping_up; then
        echo "scontrol ping: UP"
        SLURM_CONF=$CONF sinfo
    else
        echo "scontrol ping: no answer"
        up=0
    fi
    ((up)) && return 0
    return 3
}

case ${1:-} in
start) do_start ;;
stop) do_stop ;;
status)
    rc=0
    do_status || rc=$?
    exit "$rc"
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
