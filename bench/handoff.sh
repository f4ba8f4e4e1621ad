#!/usr/bin/env bash
# Failure detection and hinted handoff on a 3-node `ringkv dev` cluster: how long the
# detector takes to call a paused node suspicious and down (against its thresholds),
# and how fast the hints written meanwhile are handed back once it resumes.
#
# 1. builds target/release/ringkv and starts `ringkv dev --nodes 3` on 127.0.0.1
#    (HTTP 18180+i, RESP 16480+i, peer 17180+i; data under target/bench-handoff) with
#    gossip every 200 ms, suspicion at 1 s, down at 2 s (RINGKV_* variables);
# 2. SIGSTOPs node 2 and polls node 0's /v1/cluster/status until it says suspicious,
#    then down (times from the SIGSTOP);
# 3. writes --keys keys through nodes 0 and 1 with `ringkv bench` (w=2): every write
#    leaves a hint for node 2;
# 4. SIGCONTs node 2 and times how long until nodes 0 and 1 hold no hint for it;
# 5. prints the numbers and writes them with date, machine and commit to
#    bench/results/handoff-<date>.md.
#
# Everything it starts it stops by PID on exit.
#
# Usage: bench/handoff.sh [--keys K]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."

keys=20000
while (($# > 0)); do
    case "$1" in
    --keys) keys="${2:?--keys needs a value}"; shift 2 ;;
    *) echo "usage: $0 [--keys K]" >&2; exit 2 ;;
    esac
done
[[ "$keys" =~ ^[1-9][0-9]*$ ]] || { echo "--keys must be a positive integer" >&2; exit 2; }

readonly http_port=18180 resp_port=16480 peer_port=17180
readonly gossip_ms=200 suspicion_ms=1000 down_ms=2000
readonly work="target/bench-handoff" ringkv="target/release/ringkv" poll_limit_s=120
source bench/lib.sh
paused_pid=""
bench_prepare

# "<status of node 2> <hints for node 2>" as node $1 sees it.
view() {
    curl -fsS --max-time 2 "$(url "$1")/v1/cluster/status" | python3 -c '
import json, sys
status = json.load(sys.stdin)
ids = sorted(node["id"] for node in status["nodes"])
node = next(n for n in status["nodes"] if n["id"] == ids[2])
print(node["status"], node["hints_queued"])'
}

rm -rf "$work"
mkdir -p "$work"
log "starting a 3-node dev cluster"
RINGKV_GOSSIP_INTERVAL_MS=$gossip_ms RINGKV_SUSPICION_THRESHOLD_MS=$suspicion_ms \
    RINGKV_DOWN_THRESHOLD_MS=$down_ms \
    "$ringkv" dev --nodes 3 --data-dir "$work/data" --http-port "$http_port" \
    --resp-port "$resp_port" --peer-port "$peer_port" >"$work/dev.log" 2>&1 &
dev_pid=$!
for node in 0 1 2; do wait_health "$node"; done
paused_pid="$(node_pid 2)"

# Node ids are 0, 1, 2 in `ringkv dev`; the third id is node 2.
log "SIGSTOP node 2 (pid $paused_pid)"
kill -STOP "$paused_pid"
stopped=$(now_ms)
suspicious_ms="" down_at_ms=""
while [[ -z "$down_at_ms" ]]; do
    read -r state _ < <(view 0)
    [[ "$state" == suspicious && -z "$suspicious_ms" ]] && suspicious_ms=$(($(now_ms) - stopped))
    [[ "$state" == down ]] && down_at_ms=$(($(now_ms) - stopped))
    (($(now_ms) - stopped < poll_limit_s * 1000)) || die "node 2 never seen down"
    sleep 0.02
done
log "suspicious after ${suspicious_ms:-?} ms, down after ${down_at_ms} ms"

log "writing $keys keys through nodes 0 and 1"
bench_json="$("$ringkv" bench --workload write --url "$(url 0),$(url 1)" --ops "$keys" \
    --keys "$keys" --concurrency 32 --value-size 100 --json)"
read -r _ hints0 < <(view 0)
read -r _ hints1 < <(view 1)
hints=$((hints0 + hints1))
log "$hints hints queued for node 2"

kill -CONT "$paused_pid"
paused_pid=""
resumed=$(now_ms)
healthy_ms=""
while :; do
    read -r state h0 < <(view 0)
    read -r _ h1 < <(view 1)
    [[ "$state" == healthy && -z "$healthy_ms" ]] && healthy_ms=$(($(now_ms) - resumed))
    ((h0 + h1 == 0)) && break
    (($(now_ms) - resumed < poll_limit_s * 1000)) || die "hints not drained: $((h0 + h1)) left"
    sleep 0.02
done
drained_ms=$(($(now_ms) - resumed))
rate=$((hints * 1000 / (drained_ms > 0 ? drained_ms : 1)))
write_summary="$(BENCH_JSON="$bench_json" python3 -c '
import json, os
r = json.loads(os.environ["BENCH_JSON"])
print("%.0f ops/s, p99 %.1f ms, %d errors" % (r["ops_per_sec"], r["p99_ms"], r["errors"]))')"
summary="| measure | value |
|---|---:|
| thresholds (gossip / suspicion / down) | ${gossip_ms} / ${suspicion_ms} / ${down_ms} ms |
| SIGSTOP → suspicious (node 0's view) | ${suspicious_ms:-n/a} ms |
| SIGSTOP → down (node 0's view) | ${down_at_ms} ms |
| writes while node 2 is down (w=2, 32 clients) | ${write_summary} |
| hints queued for node 2 | ${hints} |
| SIGCONT → healthy (node 0's view) | ${healthy_ms:-n/a} ms |
| SIGCONT → every hint delivered | ${drained_ms} ms |
| hint delivery rate | ${rate} hints/s |"
echo "$summary"

mkdir -p bench/results
day="$(date -u +%Y-%m-%d)"
out="bench/results/handoff-${day}.md"
[[ -e "$out" ]] && out="bench/results/handoff-${day}-$(date -u +%H%M%S).md"
commit="$(git rev-parse HEAD)"
[[ -n "$(git status --porcelain)" ]] && commit="$commit (dirty)"
{
    echo "# failure detection and hinted handoff ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "- commit: ${commit}"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ×$(nproc); load before the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- command: \`bench/handoff.sh --keys ${keys}\` (3 nodes of \`ringkv dev\`, N=3, W=2, fsync, all on this machine)"
    echo
    echo "$summary"
    echo
    echo "ringkv bench (writes while node 2 was down):"
    echo '```json'
    echo "$bench_json"
    echo '```'
} >"$out"
log "written to $out"
