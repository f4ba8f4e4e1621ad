#!/usr/bin/env bash
# Join and decommission on a `ringkv dev` cluster (issue 7):
# 1. starts 3 nodes (defaults: N=3, fsync, request_timeout 2 s, 50 MB/s streaming)
#    and loads --keys keys (100-byte values, w=2);
# 2. starts a 4th node with --seeds while `ringkv bench --workload write` keeps
#    writing, follows it with `ringkv node join` and times it from start to
#    serving; reports what it streamed and the writes' ops/s and p99 meanwhile;
# 3. decommissions it with `ringkv node decommission` and times that.
# Prints a table and writes it with date, machine and commit to
# bench/results/topology-<date>.md. Stops what it started, by PID.
#
# Usage: bench/topology.sh [--keys K]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."

keys=10000
while (($# > 0)); do
    case "$1" in
    --keys) keys="${2:?}"; shift 2 ;;
    *) echo "usage: $0 [--keys K]" >&2; exit 2 ;;
    esac
done
[[ "$keys" =~ ^[1-9][0-9]*$ ]] || { echo "--keys must be a positive integer" >&2; exit 2; }

readonly http_port=18380 resp_port=16680 peer_port=17380
readonly work="target/bench-topology" ringkv="target/release/ringkv"
source bench/lib.sh
bench_prepare

extra_pid=""
load_pid=""
cleanup() {
    local status=$?
    set +e
    [[ -n "$load_pid" ]] && kill "$load_pid" 2>/dev/null
    if [[ -n "$extra_pid" ]]; then
        kill -TERM "$extra_pid" 2>/dev/null
        wait "$extra_pid" 2>/dev/null
    fi
    stop_dev
    exit "$status"
}
trap cleanup EXIT

rm -rf "$work"
mkdir -p "$work"
"$ringkv" dev --nodes 3 --data-dir "$work/data" --http-port "$http_port" \
    --resp-port "$resp_port" --peer-port "$peer_port" >>"$work/dev.log" 2>&1 &
dev_pid=$!
for node in 0 1 2; do wait_health "$node"; done
urls="$(url 0),$(url 1),$(url 2)"
log "loading $keys keys"
"$ringkv" bench --workload read --ops 1 --keys "$keys" --concurrency 32 --value-size 100 \
    --url "$urls" >/dev/null

log "a 4th node joins while writes go on"
"$ringkv" bench --workload write --ops "$((keys * 2))" --keys "$keys" --concurrency 16 \
    --value-size 100 --url "$urls" --json >"$work/load.json" 2>/dev/null &
load_pid=$!
sleep 1
joined_at=$(now_ms)
"$ringkv" server --node-id 3 --data-dir "$work/data/node-3" \
    --http-addr "127.0.0.1:$((http_port + 3))" --resp-addr "127.0.0.1:$((resp_port + 3))" \
    --peer-addr "127.0.0.1:$((peer_port + 3))" --seeds "127.0.0.1:$peer_port" \
    >>"$work/node-3.log" 2>&1 &
extra_pid=$!
wait_health 3
join_ms=$(($(now_ms) - joined_at))
"$ringkv" node join --url "$(url 3)" | tee "$work/join.txt"
wait "$load_pid" || die "the writes during the join failed"
load_pid=""
read -r load_ops load_p99 load_errors < <(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print(round(s["ops_per_sec"]), s["p99_ms"], s["errors"])' "$work/load.json")
read -r streamed_keys streamed_bytes stream_ms < <(curl -fsS "$(url 3)/v1/cluster/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)["streaming"]
print(s["keys"], s["bytes"], s["took_ms"])')

log "decommissioning it"
left_at=$(now_ms)
"$ringkv" node decommission 3 --url "$(url 0)" | tee "$work/decommission.txt"
leave_ms=$(($(now_ms) - left_at))
read -r pushed_keys pushed_bytes < <(curl -fsS "$(url 3)/v1/cluster/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)["streaming"]
print(s["keys"], s["bytes"])')

commit="$(git rev-parse --short HEAD)"
machine="$(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
out="bench/results/topology-$(date -u +%Y-%m-%d-%H%M%S).md"
{
    echo "# Join and decommission, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $machine (3 nodes, the 4th node and the load generator on the same cores)"
    echo "- commit: $commit; command: \`bench/topology.sh --keys $keys\`"
    echo "- defaults: N=3, R=2, W=2, fsync, request_timeout_ms 2000, streaming 50 MB/s, 256 vnodes"
    echo
    echo "| step | time | moved |"
    echo "|---|---|---|"
    echo "| join of a 4th node (start → serving), writes going on | ${join_ms} ms | ${streamed_keys} keys, ${streamed_bytes} B streamed in ${stream_ms} ms |"
    echo "| decommission of that node | ${leave_ms} ms | ${pushed_keys} keys, ${pushed_bytes} B pushed |"
    echo
    echo "Writes (16 clients, w=2) running across the join: ${load_ops} ops/s, p99 ${load_p99} ms, ${load_errors} errors."
    echo
    echo "The join time includes gossip, announcing to every member and one request"
    echo "timeout of waiting (writes placed before the announcement land first)."
} | tee "$out"
log "written to $out"
