#!/usr/bin/env bash
# The project's test command: installs what the tests need (as root, with apt-get), builds .venv,
# starts a throwaway PostgreSQL on 127.0.0.1 and a throwaway single-node SLURM (scripts/local-slurm.sh,
# with SLURM's qsub/qstat/qdel wrappers) and runs pytest with this script's arguments.
#
#   bash scripts/test.sh [pytest args...]
#
# Environment:
#   ARIHPC_TEST_POSTGRES_URL  already set: use that server instead of starting one
#   ARIHPC_TEST_NO_POSTGRES=1 start no PostgreSQL (postgres tests skip, or fail under CI=true)
#   ARIHPC_TEST_NO_SLURM=1    start no SLURM; a SLURM_CONF already set is left as it is
#   ARIHPC_TEST_NO_APT=1      install no Debian packages
#
# The PostgreSQL it starts is named in ARIHPC_TEST_PG_CTL, ARIHPC_TEST_PG_DATA and ARIHPC_TEST_PG_USER
# (pg_ctl, its data directory, the user it runs as): tests restart it with them.
#
# Each run has its own SLURM: state directory $TMPDIR/arihpc-test-slurm.XXXXXX, its own munged and
# free ports picked at start, stopped and removed on exit. Two runs at once therefore do not clash;
# both clusters' node is this host, so their jobs share its CPUs (each cluster believes it has all).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Debian packages the tests use (installed only when running as root with apt-get).
DEBIAN_PACKAGES=(postgresql slurm-wlm slurm-wlm-torque munge xvfb xauth fitsverify chromium
                 chromium-driver)

PG_BIN=""       # directory holding initdb, pg_ctl, createdb
PG_TMP=""       # this run's temporary directory: data/, log, socket
AS_PG=()        # command prefix to run PostgreSQL's tools as a non-root user
SLURM_TMP=""    # this run's SLURM state directory (scripts/local-slurm.sh)
CREATED_POLICY_RC=0

say() { echo "test.sh: $*" >&2; }

cleanup() {
    if [[ -n $SLURM_TMP ]]; then
        ARIHPC_SLURM_DIR=$SLURM_TMP scripts/local-slurm.sh stop || true
        rm -rf -- "$SLURM_TMP"
    fi
    if [[ -n $PG_TMP ]]; then
        if [[ -f $PG_TMP/data/postmaster.pid ]]; then
            pg "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
        fi
        rm -rf -- "$PG_TMP"
    fi
    if ((CREATED_POLICY_RC)); then
        rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a PostgreSQL tool as the user owning $PG_TMP, from inside $PG_TMP.
pg() { (cd "$PG_TMP" && "${AS_PG[@]}" "$@"); }

deb_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

find_pg_bin() {
    local initdb
    initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
    if [[ -x $initdb ]]; then
        PG_BIN=$(dirname "$initdb")
    elif initdb=$(command -v initdb); then
        PG_BIN=$(dirname "$initdb")
    fi
}

install_debian_packages() {
    local missing=() p
    find_pg_bin
    for p in "${DEBIAN_PACKAGES[@]}"; do
        [[ $p == postgresql && -n $PG_BIN ]] && continue # a server is there already
        deb_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing Debian packages: ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        # Keep the packages' services (e.g. PostgreSQL's default cluster) from starting.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=1
    fi
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}"; }; then
        say "could not install ${missing[*]}: the tests needing them will not run"
    fi
    if ((CREATED_POLICY_RC)); then
        rm -f /usr/sbin/policy-rc.d
        CREATED_POLICY_RC=0
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts PostgreSQL in a new temporary directory and exports ARIHPC_TEST_POSTGRES_URL.
start_postgres() {
    if [[ $(id -u) -eq 0 ]]; then
        if ! id -u postgres >/dev/null 2>&1; then
            say "no 'postgres' user to run PostgreSQL as root: postgres tests will not run"
            return 0
        fi
        AS_PG=(runuser -u postgres --)
    fi
    PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/arihpc-test-pg.XXXXXX")
    ((${#AS_PG[@]} == 0)) || chown postgres: "$PG_TMP"
    pg "$PG_BIN/initdb" -D "$PG_TMP/data" -A trust -U arihpc -E UTF8 --locale=C -N >"$PG_TMP/initdb.log" 2>&1 ||
        { cat "$PG_TMP/initdb.log" >&2; return 1; }
    local port attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        if pg "$PG_BIN/pg_ctl" -w -D "$PG_TMP/data" -l "$PG_TMP/log" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMP -c fsync=off -c full_page_writes=off" \
            start >/dev/null; then
            "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U arihpc arihpc_test
            export ARIHPC_TEST_POSTGRES_URL="postgresql+psycopg://arihpc@127.0.0.1:$port/arihpc_test"
            # What a test needs to restart this server under running orchestrators.
            export ARIHPC_TEST_PG_CTL="$PG_BIN/pg_ctl" ARIHPC_TEST_PG_DATA="$PG_TMP/data"
            export ARIHPC_TEST_PG_USER="$( ((${#AS_PG[@]})) && echo postgres || id -un)"
            say "PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port ($PG_TMP)"
            return 0
        fi
        say "PostgreSQL did not start on port $port (attempt $attempt):"
        tail -n 5 "$PG_TMP/log" >&2 || true
    done
    return 1
}

# Starts this run's SLURM (scripts/local-slurm.sh) and exports its client environment (SLURM_CONF).
start_slurm() {
    if [[ $(id -u) -ne 0 ]]; then
        say "not root: no local SLURM (slurmd must run as root), slurm/pbs tests will not run"
        return 0
    fi
    local t0=$SECONDS attempt
    SLURM_TMP=$(mktemp -d "${TMPDIR:-/tmp}/arihpc-test-slurm.XXXXXX")
    for attempt in 1 2; do
        # The free ports it picks could be taken by someone else before slurmctld binds them.
        if ARIHPC_SLURM_DIR=$SLURM_TMP scripts/local-slurm.sh start >/dev/null; then
            # shellcheck source=/dev/null
            source "$SLURM_TMP/env.sh"
            say "local SLURM up in $((SECONDS - t0))s: SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        ARIHPC_SLURM_DIR=$SLURM_TMP scripts/local-slurm.sh stop || true
        say "local SLURM did not start (attempt $attempt)"
    done
    say "no local SLURM: slurm/pbs tests will not run (or fail under CI=true)"
}

# Creates .venv and installs the project into it when setup.cfg or pyproject.toml changed.
setup_venv() {
    mkdir -p .venv
    exec 9>.venv/.test-sh.lock # serializes concurrent runs of this script
    flock 9
    local stamp=.venv/.arihpc-install-stamp hash
    if ! .venv/bin/python -c '' 2>/dev/null; then
        say "creating .venv"
        rm -f "$stamp"
        python3 -m venv .venv
    fi
    hash=$(cat setup.cfg pyproject.toml | sha256sum | cut -d ' ' -f 1)
    if [[ $(cat "$stamp" 2>/dev/null) != "$hash" ]]; then
        say "installing arihpc[test,casa,docs] into .venv"
        .venv/bin/python -m pip install -q -e '.[test,casa,docs]'
        echo "$hash" >"$stamp"
    fi
    exec 9>&-
}

if [[ $(id -u) -eq 0 && ${ARIHPC_TEST_NO_APT:-} != 1 ]] && command -v apt-get >/dev/null; then
    exec 8>/var/lock/arihpc-test-apt.lock # one installer at a time
    flock 8
    install_debian_packages
    exec 8>&-
fi

setup_venv

if [[ ${ARIHPC_TEST_NO_POSTGRES:-} == 1 ]]; then
    unset ARIHPC_TEST_POSTGRES_URL
    say "ARIHPC_TEST_NO_POSTGRES=1: no PostgreSQL, postgres tests will not run"
elif [[ -n ${ARIHPC_TEST_POSTGRES_URL:-} ]]; then
    say "using the PostgreSQL given in ARIHPC_TEST_POSTGRES_URL"
else
    find_pg_bin
    if [[ -n $PG_BIN ]]; then
        start_postgres
    else
        say "PostgreSQL not found (apt-get install postgresql, or run this as root): postgres tests will not run"
    fi
fi

if [[ ${ARIHPC_TEST_NO_SLURM:-} == 1 ]]; then
    say "ARIHPC_TEST_NO_SLURM=1: no local SLURM started"
else
    start_slurm
fi

say "running pytest $*"
status=0
.venv/bin/python -m pytest "$@" || status=$?
exit "$status"
