#!/usr/bin/env bash
# Scripted checks of the RESP listener with the real Redis tools: redis-cli and
# redis-benchmark against a 3-node `ringkv dev` cluster (N=3, R=W=2).
#
# 1. starts `ringkv dev --nodes 3` on 127.0.0.1 ports 19080+i (HTTP), 19380+i (RESP),
#    19180+i (peer), data in a fresh temporary directory; waits for every /health;
# 2. redis-cli: PING, SET on one node / GET on the others, SET EX + TTL, MSET/MGET,
#    DEL/EXISTS, Redis's wrong-arity text, HELLO 3, INFO, CONFIG GET, a binary value
#    written over RESP read back over HTTP byte for byte (and the other way round);
# 3. redis-py (bench/resp_check.py): RESP2 and RESP3, pipelines, TTLs, ...;
# 4. redis-benchmark -t set,get (both must report a rate, no errors);
# 5. prints one line per check and "N passed, 0 failed"; exits non-zero on any
#    failure, and when redis-cli, redis-benchmark or redis-py is missing (it never
#    passes without them: .ci/run installs redis-tools and redis-py first).
#
# Everything it starts it stops by PID on exit (trap).
#
# Usage: bench/resp_check.sh [--ringkv PATH] [--python PATH] [--requests N]
#   --ringkv    the ringkv binary (default target/debug/ringkv, as `cargo test` builds it)
#   --python    a Python with redis-py (`import redis`) (default python3)
#   --requests  redis-benchmark requests per test (default 2000)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ringkv="target/debug/ringkv"
python="python3"
requests=2000
while (($# > 0)); do
    case "$1" in
    --ringkv) ringkv="${2:?--ringkv needs a value}"; shift 2 ;;
    --python) python="${2:?--python needs a value}"; shift 2 ;;
    --requests) requests="${2:?--requests needs a value}"; shift 2 ;;
    *) echo "usage: $0 [--ringkv PATH] [--python PATH] [--requests N]" >&2; exit 2 ;;
    esac
done
[[ "$requests" =~ ^[1-9][0-9]*$ ]] || { echo "--requests must be a positive integer" >&2; exit 2; }

readonly http_port=19080 resp_port=19380 peer_port=19180
readonly health_timeout_s=60 stop_grace_s=20 bench_timeout_s=300

command -v redis-cli >/dev/null || die "redis-cli is missing (apt-get install redis-tools)"
command -v redis-benchmark >/dev/null || die "redis-benchmark is missing (apt-get install redis-tools)"
command -v curl >/dev/null || die "curl is missing"
"$python" -c 'import redis' 2>/dev/null \
    || die "$python cannot import redis (redis-py): pip install redis, or pass --python"
[[ -x "$ringkv" ]] || die "$ringkv is not built (cargo build -p ringkv-cli)"

work="$(mktemp -d)"
dev_pid=""

cleanup() {
    local status=$?
    set +e
    if [[ -n "$dev_pid" ]]; then
        local nodes pid
        nodes="$(ps -o pid= --ppid "$dev_pid" 2>/dev/null | tr -d ' ' || true)"
        stop_pid "$dev_pid" "ringkv dev"
        for pid in $nodes; do stop_pid "$pid" "ringkv node"; done
    fi
    if ((status != 0)) && [[ -s "$work/dev.log" ]]; then
        echo "--- last lines of the cluster log" >&2
        tail -n 20 "$work/dev.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for node in 0 1 2; do
    for port in $((http_port + node)) $((resp_port + node)) $((peer_port + node)); do
        port_open "$port" && die "port $port on 127.0.0.1 is in use; stop what uses it first"
    done
done

"$ringkv" dev --nodes 3 --data-dir "$work/data" --http-port "$http_port" \
    --resp-port "$resp_port" --peer-port "$peer_port" >"$work/dev.log" 2>&1 &
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

passed=0
failed=0
# check NAME EXPECTED ACTUAL
check() {
    if [[ "$2" == "$3" ]]; then
        passed=$((passed + 1))
        echo "ok   $1"
    else
        failed=$((failed + 1))
        echo "FAIL $1: expected $(printf '%q' "$2"), got $(printf '%q' "$3")"
    fi
}
# check_match NAME REGEX ACTUAL
check_match() {
    if [[ "$3" =~ $2 ]]; then
        passed=$((passed + 1))
        echo "ok   $1"
    else
        failed=$((failed + 1))
        echo "FAIL $1: $(printf '%q' "$3") does not match /$2/"
    fi
}
cli() { local node="$1"; shift; redis-cli -p $((resp_port + node)) "$@" 2>&1; }

check "PING" "PONG" "$(cli 0 PING)"
check "SET on node 0" "OK" "$(cli 0 SET greeting hello)"
check "GET on node 1" "hello" "$(cli 1 GET greeting)"
check "GET on node 2" "hello" "$(cli 2 GET greeting)"
check "GET of a missing key" "" "$(cli 1 GET missing)"
check "wrong arity" "ERR wrong number of arguments for 'get' command" "$(cli 0 GET)"
check "SET syntax" "ERR syntax error" "$(cli 0 SET k v NX XX)"
check "SET EX" "OK" "$(cli 0 SET session s EX 100)"
check_match "TTL after EX 100" '^(99|100)$' "$(cli 2 TTL session)"
check "TTL without expiry" "-1" "$(cli 2 TTL greeting)"
check "TTL of a missing key" "-2" "$(cli 2 TTL missing)"
check "MSET" "OK" "$(cli 1 MSET a 1 b 2)"
check "MGET" $'1\n\n2\n' "$(cli 2 MGET a missing b)"$'\n'
check "EXISTS" "2" "$(cli 0 EXISTS a b missing)"
check "DEL" "1" "$(cli 0 DEL a missing)"
check "GET after DEL" "" "$(cli 1 GET a)"
check "INCR" "1" "$(cli 0 INCR hits)"
check "INCRBY on another node" "11" "$(cli 1 INCRBY hits 10)"
check "SADD" "2" "$(cli 0 SADD tags red blue)"
check "SMEMBERS on another node" $'blue\nred' "$(cli 2 SMEMBERS tags | sort)"
check "INCR on a string" "WRONGTYPE Operation against a key holding the wrong kind of value" "$(cli 0 INCR greeting)"
check_match "HELLO 3" 'proto 3' "$(cli 0 -3 HELLO 3)"
check_match "INFO server" 'redis_version:.*ringkv_version:' "$(cli 0 INFO server | tr -d '\r' | tr '\n' ' ')"
check "CONFIG GET save" $'save\n' "$(cli 0 CONFIG GET save)"$'\n'

printf 'bin\x00ary\r\n\xff' >"$work/value.bin"
check "binary SET over RESP" "OK" "$(cli 0 -x SET binary <"$work/value.bin")"
curl -fsS --max-time 5 -H 'accept: application/octet-stream' \
    "http://127.0.0.1:$((http_port + 1))/v1/kv/binary" -o "$work/read.bin"
check "the same bytes over HTTP" "$(od -An -c "$work/value.bin")" "$(od -An -c "$work/read.bin")"
curl -fsS --max-time 5 -X PUT -H 'content-type: application/octet-stream' \
    --data-binary @"$work/value.bin" "http://127.0.0.1:$((http_port + 2))/v1/kv/from-http" -o /dev/null
cli 0 --no-raw GET from-http >"$work/from-http.txt"
check "an HTTP value over RESP" '"bin\x00ary\r\n\xff"' "$(cat "$work/from-http.txt")"

if timeout "$bench_timeout_s" "$python" bench/resp_check.py \
    "$resp_port" $((resp_port + 1)) $((resp_port + 2)); then
    check "redis-py" "ok" "ok"
else
    check "redis-py" "ok" "failed"
fi

csv="$(timeout "$bench_timeout_s" redis-benchmark -p "$resp_port" -t set,get -n "$requests" \
    -c 50 -d 100 -q --csv 2>&1)"
echo "$csv" | sed 's/^/     /'
check_match "redis-benchmark SET" '"SET","[1-9][0-9]*\.' "$csv"
check_match "redis-benchmark GET" '"GET","[1-9][0-9]*\.' "$csv"
check "the benchmark's value reads back" "100" \
    "$(cli 2 GET key:__rand_int__ | tr -d '\n' | wc -c | tr -d ' ')"
# Its 50 clients wrote one key at once: the last writer's value is one value.
check "a SET over it leaves one value for HTTP" "200" "$(cli 1 SET key:__rand_int__ final >/dev/null;
    curl -sS --max-time 5 -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$((http_port + 2))/v1/kv/key:__rand_int__")"

echo "$passed passed, $failed failed"
((failed == 0))
