#!/bin/bash
# The project's local Slurm test cluster: 4 emulated nodes (node1..node4, 4 CPUs + 2 fake GPUs each) on this one
# Debian 12 host, with munge, MariaDB and slurmdbd (sacct is what job states come from). Run as root.
#
#   scripts/slurm-cluster.sh start [--install] [--fresh]   idempotent; waits until all nodes are idle
#       --install  apt-get install the Debian packages first
#       --fresh    stop, then wipe slurmctld state and the accounting DB (job ids restart at 1)
#   scripts/slurm-cluster.sh stop                          by pid file only (never by process name)
#   scripts/slurm-cluster.sh status                        daemons alive? + sinfo; exit 1 unless all is up
#
# Config files live in scripts/slurm/ and are installed to /etc/slurm on every start.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$HERE/slurm"
NODES=(node1 node2 node3 node4)
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
FAKEGPU=/var/lib/slurm-fakegpu

t0=$(date +%s%N)
log() { local ms=$((($(date +%s%N) - t0) / 1000000)); printf '[%3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() { echo "slurm-cluster: $*" >&2; exit 1; }

wait_for() { # wait_for SECONDS CMD...: poll every 0.1 s until CMD succeeds
    local n=$(($1 * 10)); shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "slurm-cluster: timeout waiting for: $*" >&2
    return 1
}

pid_of() { [ -f "$1" ] && cat "$1" 2>/dev/null || true; }
# alive = exists and is not a zombie (PID 1 on these VMs reaps orphans only every ~2 s; kill -0 sees zombies)
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
running() { alive "$(pid_of "$1")"; }

daemon_pidfiles() { # name:pidfile for every daemon, in start order
    echo "munged:/run/munge/munged.pid" "mariadbd:/run/mysqld/mysqld.pid" "slurmdbd:/run/slurmdbd.pid" \
        "slurmctld:/run/slurmctld.pid"
    for n in "${NODES[@]}"; do echo "slurmd-$n:/run/slurmd-$n.pid"; done
}

stop_pids() { # stop_pids name:pidfile ...: TERM all at once, wait up to 10 s, then KILL the rest
    local item p pids=()
    for item in "$@"; do
        p=$(pid_of "${item#*:}")
        if alive "$p"; then kill "$p" 2>/dev/null || true; pids+=("${item%%:*}:$p"); fi
    done
    [ ${#pids[@]} = 0 ] && return 0
    for _ in $(seq 1 100); do
        local left=0
        for item in "${pids[@]}"; do alive "${item#*:}" && left=1; done
        [ $left = 0 ] && break
        sleep 0.1
    done
    for item in "${pids[@]}"; do
        if alive "${item#*:}"; then
            kill -9 "${item#*:}" 2>/dev/null || true
            log "killed -9 ${item%%:*} (${item#*:})"
        else
            log "stopped ${item%%:*} (${item#*:})"
        fi
    done
}

cmd_stop() {
    # client commands retry an absent controller ~10 s each: only talk to slurmctld when it runs
    if running /run/slurmctld.pid; then
        scancel --full --quiet 2>/dev/null || true
        scontrol shutdown >/dev/null 2>&1 || true # asks slurmctld and every slurmd to exit
    fi
    local slurmds=()
    for n in "${NODES[@]}"; do slurmds+=("slurmd-$n:/run/slurmd-$n.pid"); done
    stop_pids "${slurmds[@]}" slurmctld:/run/slurmctld.pid
    stop_pids slurmdbd:/run/slurmdbd.pid mariadbd:/run/mysqld/mysqld.pid
    stop_pids munged:/run/munge/munged.pid
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # package scripts cannot start services here (no systemd, policy-rc.d): start_daemons does it
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
    log "packages installed: $(slurmctld -V)"
}

prepare_host() {
    # node names must resolve: torch.distributed uses node1 as MASTER_ADDR
    grep -qE '^127\.0\.0\.1[[:space:]].*\bnode1\b' /etc/hosts || echo "127.0.0.1 ${NODES[*]}" >>/etc/hosts
    install -d -m 755 /etc/slurm /var/spool/slurmctld /var/log/slurm "$FAKEGPU"
    install -m 644 "$CONF/slurm.conf" "$CONF/gres.conf" /etc/slurm/
    install -m 600 "$CONF/slurmdbd.conf" /etc/slurm/ # slurmdbd refuses a world-readable file
    for n in "${NODES[@]}"; do install -d "/var/spool/slurmd/$n"; done
    # gres/gpu needs character devices (no driver behind major 195; it only has to look like a GPU)
    for i in 0 1; do
        if [ ! -c "$FAKEGPU/nvidia$i" ]; then rm -f "$FAKEGPU/nvidia$i"; mknod "$FAKEGPU/nvidia$i" c 195 $i; fi
    done
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o mysql -g mysql -m 755 /run/mysqld
}

all_idle() { [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = "${#NODES[@]}" ]; }

start_daemons() {
    local fresh=$1
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge -n
    log "munged up"

    if ! running /run/mysqld/mysqld.pid; then
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking --datadir=/var/lib/mysql \
            --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
            --log-error=/var/log/slurm/mariadb.log </dev/null >/dev/null 2>&1 &
    fi
    wait_for 30 mariadb-admin ping
    if [ "$fresh" = 1 ]; then mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;"; fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    log "mariadb up"

    running /run/slurmdbd.pid || slurmdbd
    wait_for 30 sacctmgr -n list cluster
    log "slurmdbd up"

    running /run/slurmctld.pid || slurmctld # registers the cluster in slurmdbd by itself
    wait_for 30 scontrol ping
    for n in "${NODES[@]}"; do running "/run/slurmd-$n.pid" || slurmd -N "$n"; done
    if ! wait_for 60 all_idle; then
        sinfo -N -o '%N %T %E' >&2 || true
        die "nodes did not become idle; see /var/log/slurm/"
    fi
    log "cluster up"
}

cmd_start() {
    local install=0 fresh=0 a
    for a in "$@"; do
        case "$a" in
        --install) install=1 ;;
        --fresh) fresh=1 ;;
        *) die "unknown option '$a' for start; valid: --install, --fresh" ;;
        esac
    done
    [ "$(id -u)" = 0 ] || die "start must run as root"
    [ "$install" = 1 ] && install_packages
    command -v slurmctld >/dev/null || die "Slurm is not installed; run: $0 start --install"
    prepare_host
    if [ "$fresh" = 1 ]; then # never wipe state under running daemons
        cmd_stop >/dev/null
        rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*/*
    fi
    start_daemons "$fresh"
    sinfo -N -o '%N %T %c %G'
}

cmd_status() {
    local ok=0 item
    for item in $(daemon_pidfiles); do
        local p
        p=$(pid_of "${item#*:}")
        if alive "$p"; then echo "${item%%:*}: running (pid $p)"; else echo "${item%%:*}: stopped"; ok=1; fi
    done
    if running /run/slurmctld.pid; then sinfo -N -o '%N %T %c %G' || ok=1; fi
    return $ok
}

case "${1:-}" in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop ;;
status) shift; cmd_status ;;
*) die "usage: $0 start [--install] [--fresh] | stop | status" ;;
esac
