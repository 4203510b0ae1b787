#!/usr/bin/env bash
# Measures, in one run on this machine: bare confirmed publishing to a quorum queue (the
# ceiling), then the release listener under `hookwarden bench` at 64 and 256 connections,
# with its peak RSS. Uses its own uniquely named queues and deletes them afterwards.
#   bash benches/listener.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
# The daemons measured; HOOKWARDEN_BIN=DIR measures other builds (e.g. an older release).
bin="${HOOKWARDEN_BIN:-./target/release}"
secs="${1:-15}"
cargo build --release --bins --quiet
cargo bench --bench publish --quiet --no-run 2>/dev/null || true

tag="hwbench$(date +%s)"
dir="$(mktemp -d)"
cfg="$dir/listener.toml"
listener_config "$tag" "$dir" > "$cfg"
# Experiments: HOOKWARDEN__AMQP__CHANNELS=4 bash benches/listener.sh

cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  for q in "$tag.events" "$tag.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  delete_exchanges "$tag"
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), RabbitMQ $(rabbitmqctl -q version 2>/dev/null)"
# CPU time of a process so far, in clock ticks (utime + stime); RabbitMQ's too, to see
# what each message costs the broker when it comes through the listener and when bare.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
beam=$(pgrep -f beam.smp | head -1 || true)
cpu() { # who ticks n
  awk -v who="$1" -v t="$2" -v hz="$hz" -v n="$3" -v s="$secs" \
    'BEGIN { if (n > 0) printf "%s CPU: %.1f µs per message, %.2f cores\n", who, t / hz * 1e6 / n, t / hz / s }'
}
echo "== 1. ceiling"
broker_before=$(ticks "$beam")
cargo bench --bench publish --quiet -- --seconds "$secs" --in-flight 64 | tee "$dir/ceiling.txt"
broker_after=$(ticks "$beam")
cpu "broker" $((broker_after - broker_before)) "$(grep -oE '[0-9]+ messages' "$dir/ceiling.txt" | cut -d' ' -f1)"

echo "== 2. listener (release), logs to a file"
"$bin/hookwarden-listener" --config "$cfg" > "$dir/listener.log" 2>&1 &
pid=$!
wait_broker_connected
# Closed loop at 64 and 256 connections (throughput), then open loop at a fixed rate
# (latency as a provider sees it, counted from when each request was due).
rate="${OPEN_LOOP_RATE:-5000}"
for load in "64" "256" "256 --rate $rate"; do
  c=${load%% *}
  case "$load" in *rate*) echo "-- open loop at $rate req/s, $c connections" ;; *) echo "-- $c connections" ;; esac
  before=$(ticks "$pid"); broker_before=$(ticks "$beam")
  # shellcheck disable=SC2086
  ./target/release/hookwarden bench --config "$cfg" --provider dregs --concurrency $load --duration "${secs}s" | tee "$dir/bench.txt"
  after=$(ticks "$pid"); broker_after=$(ticks "$beam")
  n=$(awk '/requests in/ { print $1 }' "$dir/bench.txt")
  cpu "listener" $((after - before)) "$n"
  cpu "broker" $((broker_after - broker_before)) "$n"
done
echo "-- listener peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' /proc/$pid/status)"
