#!/usr/bin/env bash
# What exporting traces costs the listener, in one run on this machine: the release listener
# under `hookwarden bench` (64 connections) with [telemetry] unset, then exporting every
# request's span over OTLP/HTTP to a local receiver, then exporting to a collector that is
# down; rounds interleaved. Each line: requests/s, and the listener's CPU per request.
# HOOKWARDEN_BASELINE=DIR adds a round of DIR/hookwarden-listener (an older build, e.g. one
# from before trace context) on the config without [telemetry].
#   bash benches/traces.sh [seconds per round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
secs="${1:-10}"
rounds="${2:-2}"
cargo build --release --bins --quiet

tag="hwtrace$(date +%s)"
dir="$(mktemp -d)"
listener_config "$tag" "$dir" > "$dir/off.toml"
collector_port=14318
cp "$dir/off.toml" "$dir/on.toml"
printf '\n[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\n' "$collector_port" >> "$dir/on.toml"
cp "$dir/off.toml" "$dir/down.toml"
# Nothing listens there: every export fails, and requests must not notice.
printf '\n[telemetry]\notlp_endpoint = "http://127.0.0.1:1"\n' >> "$dir/down.toml"

# The receiver: takes every POST /v1/traces, counts the bytes, answers 200 (an empty
# ExportTraceServiceResponse is an empty body).
python3 - "$collector_port" "$dir/received" <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
total = [0, 0]
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        total[0] += 1; total[1] += n
        with open(out, "w") as f: f.write(f"{total[0]} exports, {total[1]} bytes\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
collector=$!

cleanup() {
  [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  kill "$collector" 2>/dev/null || true
  for q in "$tag.events" "$tag.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  delete_exchanges "$tag"
  rm -rf "$dir"
}
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
echo "== machine: $(nproc) cores; $secs s per round, $rounds rounds"
modes="off on down"
if [ -n "${HOOKWARDEN_BASELINE:-}" ]; then
  modes="base $modes"
  cp "$dir/off.toml" "$dir/base.toml"
fi
for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    bin=./target/release
    [ "$mode" = base ] && bin="$HOOKWARDEN_BASELINE"
    "$bin/hookwarden-listener" --config "$dir/$mode.toml" > "$dir/$mode.log" 2>&1 &
    pid=$!
    wait_broker_connected
    before=$(ticks "$pid")
    ./target/release/hookwarden bench --config "$dir/$mode.toml" --provider dregs --concurrency 64 --duration "${secs}s" > "$dir/bench.txt"
    after=$(ticks "$pid")
    n=$(awk '/requests in/ { print $1 }' "$dir/bench.txt")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
    awk -v m="$mode" -v r="$round" -v n="$n" -v s="$secs" -v t=$((after - before)) -v hz="$hz" \
      'BEGIN { printf "round %d, export %-4s: %8.0f req/s, listener CPU %.1f µs/request\n", r, m, n / s, t / hz * 1e6 / n }'
  done
done
echo "-- receiver: $(cat "$dir/received" 2>/dev/null || echo nothing)"
echo "-- export failures logged while the collector was down: $(grep -c 'ExportError' "$dir/down.log" || true)"
