#!/usr/bin/env bash
# Durable write throughput of ringkv's storage engine (group commit, DESIGN.md §5).
#
# Runs crates/storage/examples/durable_writes.rs in release mode and writes its output,
# with the machine, disk, commit and exact command, to bench/results/storage-<date>.md.
#
# Usage: bench/storage.sh [--dir DIR] [--writers 1,16,64] [--seconds 5]
#                         [--value-bytes 100] [--durability fsync|buffered]
#                         [--journal-sync unlocked|locked] [--json]
# DIR must be on the disk you want to measure (not a tmpfs); the default is
# ./target/durable-writes-bench, the disk of the workspace.
set -euo pipefail

cd "$(dirname "$0")/.."

dir="target/durable-writes-bench"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[$i]}" == "--dir" && $((i + 1)) -lt ${#args[@]} ]]; then
        dir="${args[$((i + 1))]}"
    fi
done
mkdir -p "$dir"

command=(cargo run --release -p ringkv-storage --example durable_writes -- "$@")

# Build first, so compiler output and build time stay out of the measurement.
cargo build --release -p ringkv-storage --example durable_writes

mkdir -p bench/results
day="$(date -u +%Y-%m-%d)"
out="bench/results/storage-${day}.md"
if [[ -e "$out" ]]; then
    out="bench/results/storage-${day}-$(date -u +%H%M%S).md"
fi

commit="$(git rev-parse HEAD 2>/dev/null || echo 'none (no commit yet)')"
if [[ -n "$(git status --porcelain 2>/dev/null || true)" ]]; then
    commit="${commit} + uncommitted changes"
fi
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

status=0
result="$(CARGO_TERM_QUIET=true "${command[@]}" 2>&1)" || status=$?

{
    echo "# storage: durable writes ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "- command: \`${command[*]}\`"
    echo "- commit: ${commit}"
    echo "- uname: \`$(uname -a)\`"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ×$(nproc)"
    echo "- load average (1/5/15 min) before: ${load_before}; after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- disk of \`${dir}\`:"
    echo
    echo '```'
    df -hT "$dir"
    echo '```'
    echo
    echo "## output"
    echo
    echo '```'
    echo "$result"
    echo '```'
} >"$out"

echo "$result"
echo "written to $out"
exit "$status"
