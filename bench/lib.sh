# Shared by the bench scripts (sourced, not run): logging, quoting, ports, stopping
# what a script started, and the `ringkv dev` cluster helpers.
# Expects: http_port set; sets and uses dev_pid. Everything stopped is stopped by
# PID: the dev process and its own children only.

log() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
url() { echo "http://127.0.0.1:$((http_port + $1))"; }
# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A command as a shell would need it typed: `--save ''` stays visible.
quoted() {
    local arg words=()
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            words+=("$arg")
        else
            words+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    echo "${words[*]}"
}

# stop_pid PID [NAME]: SIGTERM, wait up to ${stop_grace_s:-20} s, then SIGKILL; only
# for a PID this script started.
stop_pid() {
    local pid="$1" name="${2:-process}" grace="${stop_grace_s:-20}" i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "warning: $name (pid $pid) ignored SIGTERM for ${grace}s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

dev_pid=""

# Stops the dev cluster: resumes paused nodes, SIGTERM, waits up to 20 s, then
# SIGKILLs whatever of it is left.
stop_dev() {
    local nodes pid i
    [[ -n "$dev_pid" ]] || return 0
    nodes="$(ps -o pid= --ppid "$dev_pid" 2>/dev/null | tr -d ' ')"
    # Each step may find its process already gone: that is not an error here.
    for pid in $nodes; do kill -CONT "$pid" 2>/dev/null || true; done
    kill -TERM "$dev_pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.1; done
    for pid in $nodes; do kill -KILL "$pid" 2>/dev/null || true; done
    kill -KILL "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=""
    return 0
}

bench_cleanup() {
    local status=$?
    set +e
    stop_dev
    exit "$status"
}

# Installs the exit traps, checks the tools and builds the release binary.
bench_prepare() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    command -v curl >/dev/null || die "curl is needed"
    command -v python3 >/dev/null || die "python3 is needed"
    log "building ringkv (release)"
    cargo build --release -p ringkv-cli >&2
}

# Waits (at most a minute) until node $1 answers /health.
wait_health() {
    local i
    for ((i = 0; ; i++)); do
        curl -fsS --max-time 1 -o /dev/null "$(url "$1")/health" 2>/dev/null && return 0
        [[ -n "$dev_pid" ]] && ! kill -0 "$dev_pid" 2>/dev/null && die "ringkv dev exited"
        ((i < 300)) || die "node $1 did not answer /health"
        sleep 0.2
    done
}

# The PID of node $1's process (a child of the dev process).
node_pid() {
    local pid
    for pid in $(ps -o pid= --ppid "$dev_pid" | tr -d ' '); do
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "127.0.0.1:$((http_port + $1))" && {
            echo "$pid"
            return
        }
    done
    die "no process for node $1"
}
