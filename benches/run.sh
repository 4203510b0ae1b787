#!/usr/bin/env bash
# The whole performance table in one run on this machine, each figure beside its ceiling:
#   1. bare confirmed publishing to a quorum queue, 64 in flight (the listener's ceiling)
#   2. the release listener under `hookwarden bench` at 64 and 256 connections, peak RSS
#   3. raw consume of a quorum queue (the worker's ceiling), then the worker with state
#      commits and a `log` action, and with an `http` action to a local sink
#   4. end to end: listener + worker + `hookwarden bench --end-to-end` at a fixed rate
# then a summary with the ratios. Own uniquely named queues, deleted afterwards.
#   bash benches/run.sh [seconds per listener run] [events per worker run]
# OPEN_LOOP_RATE (default 5000) sets the listener's open-loop rate; HOOKWARDEN_BIN=DIR
# measures the daemons of another build (the bench tools stay this tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
events="${2:-50000}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== daemons measured: ${HOOKWARDEN_BIN:-./target/release}"
bash benches/listener.sh "$secs" | tee "$out/listener.txt"
bash benches/worker.sh "$events" | tee "$out/worker.txt"
bash benches/end-to-end.sh "$secs" | tee "$out/e2e.txt"

# Pulls "<number> <unit>" that follows a label out of the logs above.
num() { grep -m1 "$1" "$2" | grep -oE "[0-9.]+ $3" | head -1 | cut -d' ' -f1; }
ceiling=$(num '^bare confirmed publish' "$out/listener.txt" 'msg/s')
l64=$(grep -A1 -- '-- 64 connections' "$out/listener.txt" | num 'req/s' - 'req/s')
l256=$(grep -A1 -- '-- 256 connections' "$out/listener.txt" | num 'req/s' - 'req/s')
p99_64=$(grep -A2 -- '-- 64 connections' "$out/listener.txt" | grep -oE 'p99 [0-9.]+' | cut -d' ' -f2)
p99_open=$(grep -A2 -- '-- open loop' "$out/listener.txt" | grep -oE 'p99 [0-9.]+' | cut -d' ' -f2)
open_rate=$(grep -oE -- '-- open loop at [0-9]+' "$out/listener.txt" | grep -oE '[0-9]+$')
rss=$(grep -oE 'peak RSS: [0-9.]+' "$out/listener.txt" | cut -d' ' -f3)
raw=$(num '^raw consume' "$out/worker.txt" 'msg/s')
wlog=$(num '^log:' "$out/worker.txt" 'events/s')
whttp=$(num '^http:' "$out/worker.txt" 'events/s')
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }

echo
echo "== summary ($(nproc) cores, RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo '?'))"
printf '%-46s %12s %10s\n' "measure" "figure" "ratio"
printf '%-46s %12s %10s\n' "bare confirmed publish, 64 in flight (msg/s)" "$ceiling" "1.00×"
printf '%-46s %12s %10s\n' "listener, 64 connections (req/s)" "$l64" "$(ratio "$l64" "$ceiling")"
printf '%-46s %12s %10s\n' "listener, 256 connections (req/s)" "$l256" "$(ratio "$l256" "$ceiling")"
printf '%-46s %12s %10s\n' "listener p99 at 64 connections (ms)" "$p99_64" "goal ≤ 20"
printf '%-46s %12s %10s\n' "listener p99, open loop at $open_rate req/s (ms)" "$p99_open" ""
printf '%-46s %12s %10s\n' "listener peak RSS (MiB)" "$rss" "goal ≤ 64"
printf '%-46s %12s %10s\n' "raw consume, prefetch 256 (msg/s)" "$raw" "1.00×"
printf '%-46s %12s %10s\n' "worker, log action (events/s)" "$wlog" "$(ratio "$wlog" "$raw")"
printf '%-46s %12s %10s\n' "worker, http action (events/s)" "$whttp" "$(ratio "$whttp" "$raw")"
grep -E '^(end to end|event-to-action)' "$out/e2e.txt" || true
