#!/usr/bin/env bash
# One-node SLURM on 127.0.0.1 for tests and local pipeline runs (Debian: slurmctld slurmd slurm-client munge).
#
#   scripts/local_slurm.sh start|stop|status
#
# Everything it writes lives in the state folder ${LOCAL_SLURM_DIR:-/tmp/local_slurm}: slurm.conf, spool and
# state dirs, daemon logs, and the pids of the daemons it started (pids/). Callers point slurm commands at it:
#
#   export SLURM_CONF=${LOCAL_SLURM_DIR:-/tmp/local_slurm}/slurm.conf
#
# stop kills only the daemons whose pids it recorded; munged only when start launched it (a munged that was
# already running is shared and left alone). Needs root (apt-get, SlurmUser=root).
set -euo pipefail

STATE_DIR=${LOCAL_SLURM_DIR:-/tmp/local_slurm}
CONF="$STATE_DIR/slurm.conf"
PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
NODE=$(hostname -s)
START_TIMEOUT_S=${LOCAL_SLURM_START_TIMEOUT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)
DAEMONS=(slurmctld slurmd munged)
export SLURM_CONF="$CONF"

log() { echo "local_slurm: $*" >&2; }
STARTED=() # daemons launched by this invocation, stopped again if start fails half way
die() {
    log "ERROR: $*"
    if ((${#STARTED[@]})); then
        log "stopping what this start launched: ${STARTED[*]}"
        rollback
    fi
    exit 1
}

# The recorded pid of a daemon, printed only if that process is still the same program (pids get reused).
live_pid() {
    local name=$1 file="$PID_DIR/$1.pid" pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    echo "$pid"
}

# Record a just-forked daemon's pid once it has exec'd into $name (before that its comm is setsid/setpriv).
record_pid() {
    local name=$1 pid=$2 i
    echo "$pid" >"$PID_DIR/$name.pid"
    STARTED+=("$name")
    for ((i = 0; i < 50; i++)); do
        live_pid "$name" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$LOG_DIR/$name.out" >&2 || true
    die "$name did not start (log: $LOG_DIR/$name.out)"
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

cluster_up() {
    live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null || return 1
    [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    # Package scripts must not start system-wide daemons with /etc/slurm configs; policy-rc.d 101 forbids it.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
    ((made_policy)) && rm -f "$policy"
    ((rc == 0)) || {
        tail -n 20 "$STATE_DIR/apt.log" >&2
        die "apt-get failed (full log: $STATE_DIR/apt.log)"
    }
}

write_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    # slurmd drains a node whose RealMemory exceeds what it measures; leave 10% headroom.
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh; rewritten on every cold start.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=10
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

ensure_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating $key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        chown munge:munge "$key"
        chmod 400 "$key"
    fi
    if live_pid munged >/dev/null || pgrep -x munged >/dev/null; then
        return 0 # ours from an earlier start, or a shared one we must not own
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    # -F keeps it in the foreground so $! is munged itself (setpriv execs, no extra fork).
    setsid setpriv --reuid=munge --regid=munge --init-groups munged -F \
        >>"$LOG_DIR/munged.out" 2>&1 </dev/null &
    record_pid munged $!
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        live_pid munged >/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$LOG_DIR/munged.out" >&2 || true
    die "munged did not come up"
}

# Start one slurm daemon in the foreground under setsid so its pid is known and it outlives this shell.
start_daemon() {
    local name=$1
    shift
    live_pid "$name" >/dev/null && return 0
    setsid "$name" -D -f "$CONF" "$@" >>"$LOG_DIR/$name.out" 2>&1 </dev/null &
    record_pid "$name" $!
}

print_log_tails() {
    local name f
    for name in slurmctld slurmd; do
        # The .out capture repeats the log file; it only matters when the daemon died before opening it.
        f="$LOG_DIR/$name.log"
        [[ -s $f ]] || f="$LOG_DIR/$name.out"
        [[ -s $f ]] || continue
        echo "---- tail $f" >&2
        tail -n 15 "$f" >&2
    done
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT_S)) state resumed=0 name
    while ((SECONDS < deadline)); do
        for name in slurmctld slurmd; do
            live_pid "$name" >/dev/null || {
                print_log_tails
                die "$name exited during start-up (logs above, all in $LOG_DIR)"
            }
        done
        state=$(node_state || true)
        case $state in
        idle* | mix* | alloc*) [[ $state != *'*' ]] && return 0 ;;
        down | drain* | drng | fail*)
            if ((!resumed)); then
                log "node $NODE is $state; resuming it"
                scontrol update nodename="$NODE" state=resume || true
                resumed=1
            fi
            ;;
        esac
        sleep 0.5
    done
    print_log_tails
    sinfo -N -l >&2 || true
    die "node $NODE not idle after ${START_TIMEOUT_S}s (last state '${state:-none}'; logs above, all in $LOG_DIR)"
}

cmd_start() {
    [[ $EUID -eq 0 ]] || die "needs root (apt-get, SlurmUser=root); run it with sudo"
    mkdir -p "$STATE_DIR"
    install_packages
    if cluster_up; then
        log "already up"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$PID_DIR" "$LOG_DIR" "$STATE_DIR/state" "$STATE_DIR/spool" "$STATE_DIR/run"
    # Keep a running controller's config; only a cold start (no live slurmctld) rewrites it.
    live_pid slurmctld >/dev/null || write_conf
    ensure_munge
    # -c: a cold start is a fresh cluster; jobs left from an earlier run (e.g. a killed test session) would
    # otherwise come back and sit in the queue.
    start_daemon slurmctld -c
    start_daemon slurmd -N "$NODE"
    wait_idle
    log "up: node $NODE idle"
    echo "export SLURM_CONF=$CONF"
}

# SIGTERM the recorded daemons together, wait for all of them, SIGKILL any still there after 15 s.
stop_daemons() {
    local name pid i alive
    local -A pids=()
    for name in "$@"; do
        if pid=$(live_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids[$name]=$pid
        else
            rm -f "$PID_DIR/$name.pid"
        fi
    done
    for ((i = 0; i < 150; i++)); do
        alive=0
        for name in "${!pids[@]}"; do
            live_pid "$name" >/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        if live_pid "$name" >/dev/null; then
            log "$name (${pids[$name]}) ignored SIGTERM for 15s; sending SIGKILL"
            kill -KILL "${pids[$name]}" 2>/dev/null || true
            sleep 0.2
        fi
        rm -f "$PID_DIR/$name.pid"
        log "stopped $name (${pids[$name]})"
    done
}

rollback() {
    local name slurm=() munged=0
    for name in "${STARTED[@]}"; do
        if [[ $name == munged ]]; then munged=1; else slurm+=("$name"); fi
    done
    STARTED=()
    ((${#slurm[@]} == 0)) || stop_daemons "${slurm[@]}"
    ((munged == 0)) || stop_daemons munged
}

cmd_stop() {
    [[ -d $PID_DIR ]] || {
        log "nothing recorded in $PID_DIR; nothing to stop"
        return 0
    }
    stop_daemons slurmd slurmctld
    # munged last: the slurm daemons authenticate through it until they are gone.
    stop_daemons munged
}

cmd_status() {
    local name pid rc=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$name"); then
            echo "$name: running (pid $pid, started by local_slurm)"
        elif [[ $name == munged ]] && pgrep -x munged >/dev/null; then
            echo "munged: running (not started by local_slurm)"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    if ((rc == 0)); then
        sinfo || rc=1
    fi
    [[ -f $CONF ]] && echo "export SLURM_CONF=$CONF"
    return "$rc"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status   (state folder: \$LOCAL_SLURM_DIR, default /tmp/local_slurm)" >&2
    exit 2
    ;;
esac
