#!/usr/bin/env bash
# A SLURM cluster on 127.0.0.1 for tests and local pipeline runs (Debian: slurmctld slurmd slurm-client munge).
#
#   scripts/local_slurm.sh start [--nodes N]|stop|status
#
# One node (the default) is this host. --nodes N (2..8) gives nodes n1..nN: one slurmd per node name on this host
# (NodeHostname=<this host>, NodeAddr=127.0.0.1, a port each), so multi-node jobs (srun -N2, DDP across nodes,
# a node failing and returning) run for real on one machine. The node names must resolve (the rendezvous address
# is the first node of the job): start adds one marked line for them to /etc/hosts and stop removes it again.
# A start on a running cluster restarts the daemons of it that died (e.g. a killed node) and keeps the rest.
#
# Everything else it writes lives in the state folder ${LOCAL_SLURM_DIR:-/tmp/local_slurm}: slurm.conf, the node
# list, spool and state dirs, daemon logs, and the pids of the daemons it started (pids/; one slurmd-<node>.pid
# per node). Callers point slurm commands at it:
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
NODES_FILE="$STATE_DIR/nodes"
HOST=$(hostname -s)
HOSTS_FILE=${LOCAL_SLURM_HOSTS_FILE:-/etc/hosts}
HOSTS_MARK="# local_slurm $STATE_DIR"
START_TIMEOUT_S=${LOCAL_SLURM_START_TIMEOUT:-60}
FIRST_SLURMD_PORT=6818
PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF="$CONF"
NODES=() # the cluster's node names: from the node list of a running cluster, else from --nodes

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

# A daemon is named by its pid file: slurmctld, munged, slurmd-<node> (one slurmd per node name).
program() { echo "${1%%-*}"; }

# The recorded pid of a daemon, printed only if that process is still the same program (pids get reused).
live_pid() {
    local name=$1 file="$PID_DIR/$1.pid" pid
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$(program "$name")" ]] || return 1
    echo "$pid"
}

# Record a just-forked daemon's pid once it has exec'd into its program (before that its comm is setsid/setpriv).
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

node_state() { sinfo -h -n "$1" -o %t 2>/dev/null | head -n 1; }

daemons() {
    local node
    echo slurmctld
    for node in "${NODES[@]}"; do echo "slurmd-$node"; done
}

cluster_up() {
    local name node
    for name in $(daemons); do live_pid "$name" >/dev/null || return 1; done
    for node in "${NODES[@]}"; do [[ "$(node_state "$node")" =~ ^(idle|mix|alloc) ]] || return 1; done
}

# --nodes N -> NODES. One node is this host (as it always was); more are n1..nN on this host.
choose_nodes() {
    local count=$1 i
    [[ $count =~ ^[1-8]$ ]] || die "--nodes takes 1 to 8; got '$count'"
    NODES=("$HOST")
    ((count == 1)) || for ((i = 1; i <= count; i++)); do NODES[i - 1]="n$i"; done
}

# /etc/hosts: one line of ours (marked with the state folder) naming the nodes, so that they resolve; removed by
# stop. Written in place (cat >) since /etc/hosts may be a bind mount that a rename cannot replace.
hosts_remove() {
    [[ -f $HOSTS_FILE ]] && grep -qF "$HOSTS_MARK" "$HOSTS_FILE" || return 0
    local kept
    kept=$(grep -vF "$HOSTS_MARK" "$HOSTS_FILE" || true)
    printf '%s\n' "$kept" >"$HOSTS_FILE"
    log "removed the node names from $HOSTS_FILE"
}

hosts_add() {
    ((${#NODES[@]} > 1)) || return 0
    local line="127.0.0.1 ${NODES[*]} $HOSTS_MARK" node addr
    grep -qxF "$line" "$HOSTS_FILE" 2>/dev/null && return 0
    hosts_remove
    echo "$line" >>"$HOSTS_FILE" || die "cannot add the node names to $HOSTS_FILE"
    STARTED+=(hosts)
    for node in "${NODES[@]}"; do
        addr=$(getent hosts "$node" | awk '{print $1; exit}')
        [[ $addr == 127.0.0.1 ]] || die "node name $node resolves to '${addr:-nothing}', not 127.0.0.1 (see $HOSTS_FILE)"
    done
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
    local cpus mem_mb i
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) # nproc honours them: make test sets OMP_NUM_THREADS=1
    # slurmd drains a node whose RealMemory exceeds what it measures; leave 10% headroom.
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    printf '%s\n' "${NODES[@]}" >"$NODES_FILE"
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh; rewritten on every cold start.
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool-%n
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
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
# A node that failed (slurmd killed, say) is back in service once its slurmd registers again; jobs submitted with
# --requeue that lose a node go back to the queue and resume from their checkpoints.
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=10
KillWait=5
MinJobAge=300
InactiveLimit=0
EOF
    for ((i = 0; i < ${#NODES[@]}; i++)); do
        # Every node reports this host's CPUs and memory: the nodes share them (fine for tests).
        echo "NodeName=${NODES[i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((FIRST_SLURMD_PORT + i))" \
            "CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN" >>"$CONF"
    done
    local IFS=,
    echo "PartitionName=debug Nodes=${NODES[*]} Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
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
    setsid "$(program "$name")" -D -f "$CONF" "$@" >>"$LOG_DIR/$name.out" 2>&1 </dev/null &
    record_pid "$name" $!
}

print_log_tails() {
    local name f
    for name in $(daemons); do
        # The .out capture repeats the log file; it only matters when the daemon died before opening it.
        f="$LOG_DIR/$name.log"
        [[ -s $f ]] || f="$LOG_DIR/$name.out"
        [[ -s $f ]] || continue
        echo "---- tail $f" >&2
        tail -n 15 "$f" >&2
    done
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT_S)) state name node waiting
    local -A resumed=()
    while ((SECONDS < deadline)); do
        for name in $(daemons); do
            live_pid "$name" >/dev/null || {
                print_log_tails
                die "$name exited during start-up (logs above, all in $LOG_DIR)"
            }
        done
        waiting=""
        for node in "${NODES[@]}"; do
            state=$(node_state "$node" || true)
            case $state in
            idle* | mix* | alloc*) [[ $state != *'*' ]] && continue ;;
            down* | drain* | drng* | fail*)
                if [[ -z ${resumed[$node]:-} ]]; then
                    log "node $node is $state; resuming it"
                    scontrol update nodename="$node" state=resume || true
                    resumed[$node]=1
                fi
                ;;
            esac
            waiting="$node ('${state:-none}')"
        done
        [[ -z $waiting ]] && return 0
        sleep 0.5
    done
    print_log_tails
    sinfo -N -l >&2 || true
    die "node $waiting not idle after ${START_TIMEOUT_S}s (logs above, all in $LOG_DIR)"
}

cmd_start() {
    local count=1
    while (($#)); do
        case $1 in
        --nodes) (($# >= 2)) && count=$2 && shift 2 || die "--nodes needs a value" ;;
        --nodes=*) count=${1#*=} && shift ;;
        *) die "unknown option '$1' (start takes --nodes N)" ;;
        esac
    done
    [[ $EUID -eq 0 ]] || die "needs root (apt-get, SlurmUser=root, $HOSTS_FILE); run it with sudo"
    choose_nodes "$count"
    mkdir -p "$STATE_DIR"
    install_packages
    local warm=0 node running=()
    if live_pid slurmctld >/dev/null; then
        warm=1
        mapfile -t running <"$NODES_FILE" 2>/dev/null || true
        [[ "${running[*]}" == "${NODES[*]}" ]] ||
            die "the running cluster has node(s) '${running[*]}', not '${NODES[*]}': stop it first ($0 stop)"
    fi
    if cluster_up; then
        log "already up"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$PID_DIR" "$LOG_DIR" "$STATE_DIR/state" "$STATE_DIR/run"
    for node in "${NODES[@]}"; do mkdir -p "$STATE_DIR/spool-$node"; done
    # Keep a running controller's config; only a cold start (no live slurmctld) rewrites it.
    ((warm)) || write_conf
    hosts_add
    ensure_munge
    # -c: a cold start is a fresh cluster; jobs left from an earlier run (e.g. a killed test session) would
    # otherwise come back and sit in the queue.
    start_daemon slurmctld -c
    for node in "${NODES[@]}"; do start_daemon "slurmd-$node" -N "$node"; done
    wait_idle
    log "up: node(s) ${NODES[*]} idle"
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
    local name slurm=() munged=0 hosts=0
    for name in "${STARTED[@]}"; do
        [[ $name == munged ]] && munged=1
        [[ $name == hosts ]] && hosts=1
        [[ $name == munged || $name == hosts ]] || slurm+=("$name")
    done
    STARTED=()
    ((${#slurm[@]} == 0)) || stop_daemons "${slurm[@]}"
    ((munged == 0)) || stop_daemons munged
    ((hosts == 0)) || hosts_remove
}

cmd_stop() {
    hosts_remove
    [[ -d $PID_DIR ]] || {
        log "nothing recorded in $PID_DIR; nothing to stop"
        return 0
    }
    local slurmds=() file
    for file in "$PID_DIR"/slurmd-*.pid; do
        [[ -e $file ]] && slurmds+=("$(basename "$file" .pid)")
    done
    stop_daemons "${slurmds[@]}" slurmctld
    # munged last: the slurm daemons authenticate through it until they are gone.
    stop_daemons munged
}

cmd_status() {
    local name pid rc=0
    mapfile -t NODES <"$NODES_FILE" 2>/dev/null || NODES=("$HOST")
    for name in $(daemons) munged; do
        if pid=$(live_pid "$name"); then
            echo "$name: running (pid $pid, started by local_slurm)"
        elif [[ $name == munged ]] && pgrep -x munged >/dev/null; then
            echo "munged: running (not started by local_slurm)"
        else
            echo "$name: not running"
            rc=1
        fi
    done
    ((rc)) || sinfo || rc=1
    [[ -f $CONF ]] && echo "export SLURM_CONF=$CONF"
    return "$rc"
}

case "${1:-}" in
start) cmd_start "${@:2}" ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start [--nodes N]|stop|status   (state folder: \$LOCAL_SLURM_DIR, default /tmp/local_slurm)" >&2
    exit 2
    ;;
esac
