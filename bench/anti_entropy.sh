#!/usr/bin/env bash
# Anti-entropy on a 3-node `ringkv dev` cluster, hinted handoff disabled so only
# anti-entropy repairs:
# 1. loads --keys keys (100-byte values, w=2);
# 2. 1 % difference: restarts the cluster without node 2, writes keys/100 keys
#    through node 0 (w=2), restarts all three, and measures the Merkle exchange
#    (hashes and digests) and the records moved until the difference is repaired,
#    next to the data size;
# 3. throughput and throttle: stops the cluster, wipes node 2's data directory and
#    restarts all three: nobody remembers node 2's tokens, so it joins again and
#    streams its ranges; times that and its bytes/s against streaming_bytes_per_sec
#    (--limit). (A wiped node restarted alone takes its tokens back and anti-entropy
#    refills it: crates/cli/tests/anti_entropy.rs.)
# Prints a table and writes it with date, machine and commit to
# bench/results/anti-entropy-<date>.md. Stops what it started, by PID.
#
# Usage: bench/anti_entropy.sh [--keys K] [--limit BYTES_PER_SEC]  (10000, 500000)
set -euo pipefail
cd "$(dirname "$0")/.."

keys=10000
limit=500000
while (($# > 0)); do
    case "$1" in
    --keys) keys="${2:?}"; shift 2 ;;
    --limit) limit="${2:?}"; shift 2 ;;
    *) echo "usage: $0 [--keys K] [--limit BYTES_PER_SEC]" >&2; exit 2 ;;
    esac
done
[[ "$keys" =~ ^[1-9][0-9]*$ && "$limit" =~ ^[1-9][0-9]*$ ]] || { echo "bad arguments" >&2; exit 2; }

readonly http_port=18280 resp_port=16580 peer_port=17280 interval_ms=300
readonly work="target/bench-anti-entropy" ringkv="target/release/ringkv" limit_s=600
source bench/lib.sh
bench_prepare

export RINGKV_MAX_HINTS_BYTES=0 RINGKV_ANTI_ENTROPY_INTERVAL_MS=$interval_ms \
    RINGKV_STREAMING_BYTES_PER_SEC=$limit RINGKV_GOSSIP_INTERVAL_MS=200 \
    RINGKV_SUSPICION_THRESHOLD_MS=5000 RINGKV_DOWN_THRESHOLD_MS=10000
rm -rf "$work"
mkdir -p "$work"
start_dev() {
    "$ringkv" dev --nodes "${1:-3}" --data-dir "$work/data" --http-port "$http_port" \
        --resp-port "$resp_port" --peer-port "$peer_port" >>"$work/dev.log" 2>&1 &
    dev_pid=$!
}
# "<keys_repaired> <record_bytes> <exchange_bytes> <rounds>" of node $1.
ae() {
    curl -fsS --max-time 5 "$(url "$1")/v1/cluster/status" | python3 -c '
import json, sys
a = json.load(sys.stdin)["anti_entropy"]
print(a["keys_repaired"], a["record_bytes"], a["exchange_bytes"], a["rounds"])'
}
sum_ae() { local k=0 r=0 e=0 n=0 a b c d; for node in 0 1 2; do read -r a b c d < <(ae "$node"); k=$((k+a)); r=$((r+b)); e=$((e+c)); n=$((n+d)); done; echo "$k $r $e $n"; }

start_dev
for node in 0 1 2; do wait_health "$node"; done
log "loading $keys keys"
"$ringkv" bench --workload read --ops 1 --keys "$keys" --concurrency 32 --value-size 100 \
    --url "$(url 0),$(url 1),$(url 2)" >/dev/null
sleep 2

# --- 1 % difference ------------------------------------------------------------------
# Node 2 must miss writes for real (a paused node still gets what was sent to it once
# it resumes): the cluster restarts as nodes 0 and 1 only, takes the writes, then
# restarts with all three. Membership is not persisted, so nodes 0 and 1 alone form
# a 2-node ring and hold every key.
few=$((keys / 100))
stop_dev
start_dev 2
for node in 0 1; do wait_health "$node"; done
log "node 2 away; writing $few keys through node 0"
for ((i = 0; i < few; i++)); do
    curl -fsS --max-time 30 -o /dev/null -X PUT -H 'content-type: application/json' \
        -d "{\"value\":\"changed-$i\"}" "$(url 0)/v1/kv/bench-$((i * 97 % keys))?w=2"
done
stop_dev
start_dev 3
for node in 0 1 2; do wait_health "$node"; done
t0=$(now_ms)
while :; do
    read -r k1 r1 e1 n1 < <(sum_ae)
    ((k1 >= few)) && break
    (($(now_ms) - t0 < limit_s * 1000)) || die "1 % difference not repaired"
    sleep 0.2
done
diff_ms=$(($(now_ms) - t0))
diff_exchange=$e1; diff_records=$r1; diff_rounds=$n1; diff_keys=$k1
logical_bytes=$((keys * diff_records / (diff_keys > 0 ? diff_keys : 1)))
sleep 2
read -r _ _ ea na < <(sum_ae)
sleep 3
read -r _ _ eb nb < <(sum_ae)
idle_exchange=$(((eb - ea) / ((nb - na) > 0 ? (nb - na) : 1)))

# --- wiped node: throughput and throttle ---------------------------------------------
# The whole dev cluster restarts, so nobody remembers node 2's ring tokens: it comes
# back as a new member, joins, and streams its ranges (at most --limit bytes/s)
# before it serves; /health is 503 until then.
log "wiping node 2"
stop_dev
rm -rf "$work/data/node-2"
start_dev 3
for node in 0 1; do wait_health "$node"; done
t0=$(now_ms)
until curl -fsS --max-time 1 -o /dev/null "$(url 2)/health" 2>/dev/null; do
    (($(now_ms) - t0 < limit_s * 1000)) || die "wiped node not restored"
    sleep 0.2
done
restore_ms=$(($(now_ms) - t0))
read -r streamed streamed_bytes stream_ms < <(curl -fsS "$(url 2)/v1/cluster/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)["streaming"]
print(s["keys"], s["bytes"], s["took_ms"] or 1)')
((streamed >= keys)) || die "node 2 streamed $streamed of $keys keys"
max_rate=$((streamed_bytes * 1000 / stream_ms))
rates="node 2 pulled ${streamed_bytes} B in ${stream_ms} ms = ${max_rate} B/s"

summary="| measure | value |
|---|---:|
| keys loaded (100-byte values) | ${keys} |
| data: keys × mean record size (records moved ÷ key repairs in the 1 % step) | ${logical_bytes} B |
| 1 % difference: keys written while node 2 was away | ${few} |
| 1 % difference: repaired in | ${diff_ms} ms over ${diff_rounds} rounds (all nodes) |
| 1 % difference: Merkle exchange (hashes, digests), all rounds until repaired | ${diff_exchange} B ($(python3 -c "print(f'{100*${diff_exchange}/${logical_bytes}:.1f}')") % of the data) |
| one round between converged replicas (roots of every arc) | $((idle_exchange)) B |
| 1 % difference: records moved | ${diff_records} B for ${diff_keys} key repairs |
| wiped node (whole cluster restarted) re-joined, ${streamed} keys streamed | ${restore_ms} ms from the others serving to it serving = $((streamed * 1000 / restore_ms)) keys/s |
| streaming rate during the join (limit ${limit}) | ${rates} |
| against the limit | $(python3 -c "print(f'{100*${max_rate}/${limit}:.1f}')") % |"
echo "$summary"
mkdir -p bench/results
day="$(date -u +%Y-%m-%d)"
out="bench/results/anti-entropy-${day}.md"
[[ -e "$out" ]] && out="bench/results/anti-entropy-${day}-$(date -u +%H%M%S).md"
commit="$(git rev-parse HEAD)"
[[ -n "$(git status --porcelain)" ]] && commit="$commit (dirty)"
{
    echo "# anti-entropy ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "- commit: ${commit}"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ×$(nproc); load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- command: \`bench/anti_entropy.sh --keys ${keys} --limit ${limit}\` (3 nodes of \`ringkv dev\`, N=3, hinted handoff off, anti_entropy_interval_ms ${interval_ms})"
    echo
    echo "$summary"
} >"$out"
log "written to $out"
