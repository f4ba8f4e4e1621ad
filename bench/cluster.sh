#!/usr/bin/env bash
# ringkv (3-node `ringkv dev` cluster, HTTP) next to Redis with appendfsync always:
# the comparison the project reports. Both acknowledge a write only once it is on disk.
#
# 1. builds target/release/ringkv;
# 2. starts `ringkv dev --nodes 3` on 127.0.0.1 ports 18080+i (HTTP), 16380+i (RESP),
#    17080+i (peer), data under target/bench-cluster (same disk as the repo), waits for
#    every node's /health, runs `ringkv bench --workload write` then `--workload read`
#    against all three nodes;
# 3. installs redis-server/redis-tools with apt-get if missing, starts redis-server on
#    127.0.0.1:16399 (appendonly, appendfsync always, no RDB), runs redis-benchmark;
#    The same load over RESP (`ringkv bench --protocol resp`) against ringkv and Redis.
#    Also redis-benchmark -c 50 -d 100 -r KEYS -t set,get against node 0's RESP port
#    (before stopping ringkv) and the same command against Redis (issue 9's measure).
# 4. prints a table (ops/s and p99 of each, ratios ringkv/redis) and writes it with the
#    date, machine, commit and exact commands to bench/results/cluster-<date>.md.
#
# Everything it starts it stops by PID on exit (trap), whatever happened.
#
# Usage: bench/cluster.sh [--ops N] [--keys K] [--warmup N]
#   --ops     operations per measurement, ringkv and redis alike (default 50000)
#   --keys    ringkv key set; the read workload writes every key once first (default 100000)
#   --warmup  unmeasured operations before each `ringkv bench` measurement, ringkv and
#             redis alike (default 5000): the first ones pay one-time costs (the
#             clients' and the nodes' connections and handshakes, first-touch
#             allocations) that are not the steady state the p99 goal is about
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ops=50000
keys=100000
warmup=5000
while (($# > 0)); do
    case "$1" in
    --ops) ops="${2:?--ops needs a value}"; shift 2 ;;
    --keys) keys="${2:?--keys needs a value}"; shift 2 ;;
    --warmup) warmup="${2:?--warmup needs a value}"; shift 2 ;;
    *) echo "usage: $0 [--ops N] [--keys K] [--warmup N]" >&2; exit 2 ;;
    esac
done
[[ "$ops" =~ ^[1-9][0-9]*$ ]] || { echo "--ops must be a positive integer" >&2; exit 2; }
[[ "$keys" =~ ^[1-9][0-9]*$ ]] || { echo "--keys must be a positive integer" >&2; exit 2; }
[[ "$warmup" =~ ^[0-9]+$ ]] || { echo "--warmup must be a non-negative integer" >&2; exit 2; }

readonly concurrency=64 value_size=100 resp_clients=50
readonly http_port=18080 resp_port=16380 peer_port=17080 redis_port=16399
readonly health_timeout_s=60 redis_timeout_s=20 stop_grace_s=20 run_timeout_s=900
readonly work="target/bench-cluster"
readonly ringkv="target/release/ringkv"
urls="http://127.0.0.1:${http_port},http://127.0.0.1:$((http_port + 1)),http://127.0.0.1:$((http_port + 2))"


# --- stop what we started, by PID ----------------------------------------------------
dev_pid=""
redis_pid=""


# `ringkv dev` stops its node processes on SIGTERM; their PIDs are read first in case
# it has to be killed and leaves them behind.
stop_dev() {
    [[ -n "$dev_pid" ]] || return 0
    local nodes pid
    nodes="$(ps -o pid= --ppid "$dev_pid" 2>/dev/null | tr -d ' ' || true)"
    stop_pid "$dev_pid" "ringkv dev"
    for pid in $nodes; do stop_pid "$pid" "ringkv node"; done
    dev_pid=""
}

cleanup() {
    local status=$?
    set +e
    stop_dev
    stop_pid "$redis_pid" "redis-server"
    if ((status != 0)); then
        for file in "$work/dev.log" "$work/redis.log"; do
            [[ -s "$file" ]] && { echo "--- last lines of $file" >&2; tail -n 20 "$file" >&2; }
        done
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# --- tools -------------------------------------------------------------------------
command -v curl >/dev/null || die "curl is needed to poll /health"
command -v python3 >/dev/null || die "python3 is needed to read the JSON and CSV results"
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
    || ! command -v redis-cli >/dev/null; then
    log "installing redis-server and redis-tools"
    ((EUID == 0)) || die "redis-server/redis-tools are missing and installing them needs root"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        redis-server redis-tools >&2
fi

log "building ringkv (release)"
cargo build --release -p ringkv-cli >&2
[[ -x "$ringkv" ]] || die "$ringkv was not built"

for port in "$http_port" $((http_port + 1)) $((http_port + 2)) "$resp_port" \
    $((resp_port + 1)) $((resp_port + 2)) "$peer_port" $((peer_port + 1)) \
    $((peer_port + 2)) "$redis_port"; do
    port_open "$port" && die "port $port on 127.0.0.1 is in use; stop what uses it first"
done

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$work"
mkdir -p "$work/ringkv" "$work/redis"

# --- ringkv ------------------------------------------------------------------------
dev_command=("$ringkv" dev --nodes 3 --data-dir "$work/ringkv" --http-port "$http_port"
    --resp-port "$resp_port" --peer-port "$peer_port")
log "starting: $(quoted "${dev_command[@]}")"
"${dev_command[@]}" >"$work/dev.log" 2>&1 &
dev_pid=$!

for node in 0 1 2; do
    url="http://127.0.0.1:$((http_port + node))/health"
    for ((waited = 0; ; waited++)); do
        curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null && break
        kill -0 "$dev_pid" 2>/dev/null || die "ringkv dev exited before $url answered"
        ((waited < health_timeout_s * 5)) || die "$url did not answer within ${health_timeout_s}s"
        sleep 0.2
    done
done
log "all three nodes answer /health"

bench_common=(--url "$urls" --concurrency "$concurrency" --ops "$ops"
    --value-size "$value_size" --keys "$keys" --warmup-ops "$warmup" --json)
write_command=("$ringkv" bench --workload write "${bench_common[@]}")
read_command=("$ringkv" bench --workload read "${bench_common[@]}")

log "running: $(quoted "${write_command[@]}")"
write_json="$(timeout "$run_timeout_s" "${write_command[@]}")"
log "running: $(quoted "${read_command[@]}")"
read_json="$(timeout "$run_timeout_s" "${read_command[@]}")"
# The same load over RESP (ringkv bench --protocol resp), all three nodes; the same
# command loads Redis below.
resp_urls="127.0.0.1:${resp_port},127.0.0.1:$((resp_port + 1)),127.0.0.1:$((resp_port + 2))"
resp_common=(--protocol resp --concurrency "$concurrency" --ops "$ops" --value-size "$value_size"
    --keys "$keys" --warmup-ops "$warmup" --json)
resp_write_command=("$ringkv" bench --workload write --url "$resp_urls" "${resp_common[@]}")
resp_read_command=("$ringkv" bench --workload read --url "$resp_urls" "${resp_common[@]}")
log "running: $(quoted "${resp_write_command[@]}")"
resp_write_json="$(timeout "$run_timeout_s" "${resp_write_command[@]}")"
log "running: $(quoted "${resp_read_command[@]}")"
resp_read_json="$(timeout "$run_timeout_s" "${resp_read_command[@]}")"

# Issue 9's RESP measure: redis-benchmark against node 0's RESP port, and (below)
# the same command against Redis.
resp_bench_args=(-c "$resp_clients" -n "$ops" -d "$value_size" -r "$keys" -t set,get --csv)
resp_bench_command=(redis-benchmark -h 127.0.0.1 -p "$resp_port" "${resp_bench_args[@]}")
log "running: $(quoted "${resp_bench_command[@]}")"
resp_csv="$(timeout "$run_timeout_s" "${resp_bench_command[@]}")"
cluster_status="$(curl -fsS --max-time 5 "http://127.0.0.1:${http_port}/v1/cluster/status" 2>&1 \
    || true)"

stop_dev

# --- redis -------------------------------------------------------------------------
redis_command=(redis-server --port "$redis_port" --bind 127.0.0.1 --appendonly yes
    --appendfsync always --dir "$work/redis" --save '')
log "starting: $(quoted "${redis_command[@]}")"
"${redis_command[@]}" >"$work/redis.log" 2>&1 &
redis_pid=$!
for ((waited = 0; ; waited++)); do
    [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == "PONG" ]] && break
    kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited before answering PING"
    ((waited < redis_timeout_s * 5)) || die "redis-server did not answer within ${redis_timeout_s}s"
    sleep 0.2
done

redis_bench_command=(redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$concurrency" -n "$ops"
    -d "$value_size" -t set,get --csv)
log "running: $(quoted "${redis_bench_command[@]}")"
redis_csv="$(timeout "$run_timeout_s" "${redis_bench_command[@]}")"
redis_write_command=("$ringkv" bench --workload write --url "127.0.0.1:${redis_port}"
    "${resp_common[@]}")
redis_read_command=("$ringkv" bench --workload read --url "127.0.0.1:${redis_port}"
    "${resp_common[@]}")
log "running: $(quoted "${redis_write_command[@]}")"
redis_write_json="$(timeout "$run_timeout_s" "${redis_write_command[@]}")"
log "running: $(quoted "${redis_read_command[@]}")"
redis_read_json="$(timeout "$run_timeout_s" "${redis_read_command[@]}")"
redis_resp_bench_command=(redis-benchmark -h 127.0.0.1 -p "$redis_port" "${resp_bench_args[@]}")
log "running: $(quoted "${redis_resp_bench_command[@]}")"
redis_resp_csv="$(timeout "$run_timeout_s" "${redis_resp_bench_command[@]}")"
redis_version="$(redis-server --version)"
stop_pid "$redis_pid" "redis-server"
redis_pid=""

# --- table -------------------------------------------------------------------------
# redis-benchmark's CSV: a header row, then one row per test. Redis 7 prints
# "test","rps","avg_latency_ms",...,"p99_latency_ms",...; older versions only
# "test","rps" (then p99 is n/a). Columns are found by name, not position.
table="$(WRITE_JSON="$write_json" READ_JSON="$read_json" REDIS_CSV="$redis_csv" \
    RESP_CSV="$resp_csv" REDIS_RESP_CSV="$redis_resp_csv" RESP_WRITE_JSON="$resp_write_json" \
    RESP_READ_JSON="$resp_read_json" REDIS_WRITE_JSON="$redis_write_json" \
    REDIS_READ_JSON="$redis_read_json" python3 - <<'EOF'
import csv, io, json, os

write = json.loads(os.environ["WRITE_JSON"])
read = json.loads(os.environ["READ_JSON"])

def parse(text):
    rows = list(csv.reader(io.StringIO(text)))
    parsed = {}
    if rows and rows[0] and rows[0][0] == "test":
        header = rows[0]
        for row in rows[1:]:
            if row:
                parsed[row[0]] = dict(zip(header, row))
    else:  # very old redis-benchmark: no header, "NAME","rps"
        for row in rows:
            if len(row) >= 2:
                parsed[row[0]] = {"rps": row[1]}
    return parsed

redis = parse(os.environ["REDIS_CSV"])
resp = parse(os.environ["RESP_CSV"])
redis_resp = parse(os.environ["REDIS_RESP_CSV"])

def number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

def cell(value, digits):
    return "n/a" if value is None else f"{value:.{digits}f}"

def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.3f}"

lines = [
    "| measure | ringkv (3 nodes, HTTP) | redis (appendfsync always) | ringkv/redis |",
    "|---|---:|---:|---:|",
]
for name, ours, test in (("write", write, "SET"), ("read", read, "GET")):
    theirs = redis.get(test, {})
    pairs = (
        (f"{name} ops/s ({test})", ours.get("ops_per_sec"), number(theirs.get("rps")), 0),
        (f"{name} p99 ms ({test})", ours.get("p99_ms"), number(theirs.get("p99_latency_ms")), 3),
    )
    for label, a, b, digits in pairs:
        lines.append(f"| {label} | {cell(a, digits)} | {cell(b, digits)} | {ratio(a, b)} |")
lines.append("")
lines.append("| ringkv bench --protocol resp, 64 clients | ringkv (3 nodes, RESP) | redis (appendfsync always) | ringkv/redis |")
lines.append("|---|---:|---:|---:|")
for name in ("write", "read"):
    ours = json.loads(os.environ[f"RESP_{name.upper()}_JSON"])
    theirs = json.loads(os.environ[f"REDIS_{name.upper()}_JSON"])
    for label, field, digits in ((f"{name} ops/s", "ops_per_sec", 0), (f"{name} p99 ms", "p99_ms", 3)):
        a, b = ours.get(field), theirs.get(field)
        lines.append(f"| {label} | {cell(a, digits)} | {cell(b, digits)} | {ratio(a, b)} |")
lines.append("")
lines.append("| redis-benchmark -c 50 -d 100 | ringkv (node 0 RESP) | redis (appendfsync always) | ringkv/redis |")
lines.append("|---|---:|---:|---:|")
for test in ("SET", "GET"):
    ours, theirs = resp.get(test, {}), redis_resp.get(test, {})
    for label, column, digits in ((f"{test} ops/s", "rps", 0), (f"{test} p99 ms", "p99_latency_ms", 3)):
        a, b = number(ours.get(column)), number(theirs.get(column))
        lines.append(f"| {label} | {cell(a, digits)} | {cell(b, digits)} | {ratio(a, b)} |")
load = read.get("load") or {}
lines.append("")
lines.append(
    f"ringkv errors: write {write['errors']} {write['errors_by_kind']}, "
    f"read {read['errors']} {read['errors_by_kind']} ({read['misses']} misses), "
    f"read load {load.get('errors', 'n/a')} "
    f"({load.get('ops', 'n/a')} keys at {cell(load.get('ops_per_sec'), 0)} ops/s, not in the table)"
)
print("\n".join(lines))
EOF
)"

# --- record ------------------------------------------------------------------------
mkdir -p bench/results
day="$(date -u +%Y-%m-%d)"
out="bench/results/cluster-${day}.md"
[[ -e "$out" ]] && out="bench/results/cluster-${day}-$(date -u +%H%M%S).md"

commit="$(git rev-parse HEAD 2>/dev/null || echo 'none (no commit yet)')"
if [[ -n "$(git status --porcelain 2>/dev/null || true)" ]]; then
    commit="${commit} (dirty: uncommitted changes in the tree)"
else
    commit="${commit} (clean)"
fi

{
    echo "# ringkv cluster vs redis ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "- commit: ${commit}"
    echo "- uname: \`$(uname -a)\`"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ×$(nproc)"
    echo "- load average (1/5/15 min) before: ${load_before}; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- ${redis_version}"
    echo "- the load generators run on the same machine as the servers and share its CPUs"
    echo "- data on the repo's disk: \`$(df -hT "$work" | tail -n 1)\`"
    echo
    echo "## commands"
    echo
    echo '```'
    echo "bench/cluster.sh --ops ${ops} --keys ${keys} --warmup ${warmup}"
    echo "$(quoted "${dev_command[@]}")"
    echo "$(quoted "${write_command[@]}")"
    echo "$(quoted "${read_command[@]}")"
    echo "$(quoted "${redis_command[@]}")"
    echo "$(quoted "${redis_bench_command[@]}")"
    echo "$(quoted "${resp_write_command[@]}")"
    echo "$(quoted "${resp_read_command[@]}")"
    echo "$(quoted "${redis_write_command[@]}")"
    echo "$(quoted "${redis_read_command[@]}")"
    echo "$(quoted "${resp_bench_command[@]}")"
    echo "$(quoted "${redis_resp_bench_command[@]}")"
    echo '```'
    echo
    echo "## result"
    echo
    echo "$table"
    echo
    echo "## raw output"
    echo
    echo "ringkv write:"
    echo '```json'
    echo "$write_json"
    echo '```'
    echo "ringkv read:"
    echo '```json'
    echo "$read_json"
    echo '```'
    echo "redis-benchmark:"
    echo '```'
    echo "$redis_csv"
    echo '```'
    echo "ringkv bench --protocol resp: ringkv write, read, then redis write, read:"
    echo '```json'
    echo "$resp_write_json"
    echo "$resp_read_json"
    echo "$redis_write_json"
    echo "$redis_read_json"
    echo '```'
    echo "redis-benchmark against ringkv RESP (node 0), then against redis, -c ${resp_clients} -r ${keys}:"
    echo '```'
    echo "$resp_csv"
    echo "$redis_resp_csv"
    echo '```'
    echo "cluster status (node 0, after the runs):"
    echo '```json'
    echo "$cluster_status"
    echo '```'
} >"$out"

echo "$table"
echo "written to $out"
