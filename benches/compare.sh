#!/usr/bin/env bash
# hookwarden beside the same job done with nothing extra, in one run on this machine:
# interleaved rounds of
#   C  the broker ceiling: confirmed publishing to a quorum queue, 64 in flight
#   R  the reference receiver (../shared/reference: hyper, HMAC, dedupe, one confirm
#      channel, default exchange → quorum queue)
#   L  hookwarden-listener as shipped (listener.toml: spool on, logs at info)
# all three driven by the same load generator (`hookwarden bench`, 64 connections, unique
# signed 500-byte events), each figure the median of the rounds and each rate beside the
# ceiling of the same rounds. Then the worker and the whole path (benches/worker.sh,
# benches/end-to-end.sh) beside that ceiling.
#   bash benches/compare.sh [rounds] [seconds per run] [events per worker run]
# HOOKWARDEN_BIN=DIR measures the listener of another build (the load generator stays this
# tree's); REFERENCE=DIR points at the reference receiver's sources (default ../shared/reference);
# SKIP_WORKER=1 measures the listener side only; E2E_SECONDS (default 60) is how long the
# whole path is driven, open loop at 0.6× the ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
rounds="${1:-3}"
secs="${2:-15}"
events="${3:-50000}"
reference="${REFERENCE:-../shared/reference}"
if [ ! -f "$reference/Cargo.toml" ]; then
  echo "no reference receiver at $reference (set REFERENCE=DIR)" >&2
  exit 64
fi
cargo build --release --bins --quiet
# Built apart from the project's own build, so it never slows CI.
cargo build --release --quiet --manifest-path "$reference/Cargo.toml" --target-dir target/reference
ref_bin=target/reference/release

tag="hwcmp$(date +%s)"
dir="$(mktemp -d)"
listener_config "$tag" "$dir" > "$dir/listener.toml"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  for q in "$tag.ceiling" "$tag.ref" "$tag.events" "$tag.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  delete_exchanges "$tag"
  rm -rf "$dir"
}
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
beam=$(pgrep -f beam.smp | head -1 || true)
rss() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
empty() { rabbitmqctl -q purge_queue "$1" > /dev/null; }

# One load run against $1 (a URL) with signing flags $2..; prints the bench's JSON line.
load() {
  local url="$1"
  shift
  ./target/release/hookwarden bench --url "$url" "$@" --concurrency 64 --duration "${secs}s" --json
}
# Appends "<round> <what> <req/s> <p99 ms> <server µs/req> <broker µs/msg> <rss MiB>".
record() { echo "$*" >> "$dir/figures"; }
# From a bench JSON report, CPU ticks of the server and the broker: the record's numbers.
figures() { # report server_ticks broker_ticks
  python3 - "$1" "$2" "$3" "$hz" <<'EOF'
import json, sys
report = json.loads(open(sys.argv[1]).read())
server, broker, hz = (float(x) for x in sys.argv[2:5])
ok = report["statuses"].get("200", 0)
per = lambda ticks: ticks / hz * 1e6 / ok if ok else 0
print(f'{report["requests_per_second"]:.0f} {report["latency_ms"]["p99"]:.2f} {per(server):.1f} {per(broker):.1f}')
EOF
}

# measure ROUND WHAT PID QUEUE URL SIGNING...: one load run against the server PID (its CPU and
# the broker's counted, its peak RSS read), recorded as WHAT; then the server is stopped and
# QUEUE emptied for the next run.
measure() {
  local round="$1" what="$2" pid="$3" queue="$4"
  shift 4
  local s0 b0 s1 b1 peak rate p99 server broker
  s0=$(ticks "$pid"); b0=$(ticks "$beam")
  load "$@" > "$dir/$what.json"
  s1=$(ticks "$pid"); b1=$(ticks "$beam")
  peak=$(rss "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  read -r rate p99 server broker <<< "$(figures "$dir/$what.json" $((s1 - s0)) $((b1 - b0)))"
  record "$round $what $rate $p99 $server $broker $peak"
  empty "$queue"
}

echo "== machine: $(nproc) cores, RabbitMQ $(rabbitmqctl -q version 2>/dev/null); $rounds rounds of ${secs}s"
for round in $(seq 1 "$rounds"); do
  echo "-- round $round"
  # C: the ceiling.
  b0=$(ticks "$beam")
  "$ref_bin/amqp" publish --queue-type quorum --queue "$tag.ceiling" --inflight 64 --secs "$secs" > "$dir/c.json"
  b1=$(ticks "$beam")
  c=$(python3 -c 'import json,sys; r = json.loads(sys.stdin.read().split("AMQPJSON ")[1]); print("%.0f %d" % (r["rate"], r["acked"]))' < "$dir/c.json")
  read -r c_rate c_n <<< "$c"
  record "$round C $c_rate - - $(awk -v t=$((b1 - b0)) -v hz="$hz" -v n="$c_n" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }') -"
  empty "$tag.ceiling"
  echo "   ceiling $c_rate msg/s"

  # R: the reference receiver.
  WEBHOOK_SECRET=bench-secret-0123456789 "$ref_bin/srv" --mode d --port 18180 \
    --queue-type quorum --queue "$tag.ref" 2> "$dir/srv.log" &
  srv=$!
  pids+=("$srv")
  for _ in $(seq 1 100); do grep -q "srv listening" "$dir/srv.log" && break; sleep 0.1; done
  measure "$round" R "$srv" "$tag.ref" http://127.0.0.1:18180/x --scheme hmac-sha256 \
    --secret bench-secret-0123456789 --header X-Signature-256 --prefix sha256=
  echo "   reference $(tail -1 "$dir/figures" | cut -d' ' -f3) req/s"

  # L: hookwarden-listener as shipped.
  rm -f "$dir/spool.db"*
  "${HOOKWARDEN_BIN:-./target/release}/hookwarden-listener" --config "$dir/listener.toml" > "$dir/listener.log" 2>&1 &
  lis=$!
  pids+=("$lis")
  wait_broker_connected
  measure "$round" L "$lis" "$tag.events" http://127.0.0.1:18080/hooks/dregs \
    --config "$dir/listener.toml" --provider dregs
  echo "   listener $(tail -1 "$dir/figures" | cut -d' ' -f3) req/s"
done

python3 - "$dir/figures" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def median(what, col):
    vals = [float(r[col]) for r in rows if r[1] == what and r[col] != "-"]
    return statistics.median(vals) if vals else None
ceiling = median("C", 2)
names = {"C": "C  broker ceiling (confirmed publish, quorum, 64 in flight)",
         "R": "R  reference receiver",
         "L": "L  hookwarden-listener as shipped (spool on)"}
fmt = lambda v, f: "—" if v is None else format(v, f)
print()
print("| configuration | req/s | × ceiling | p99 ms | server CPU µs/req | broker CPU µs/msg | peak RSS MiB |")
print("|---|---|---|---|---|---|---|")
for what in "CRL":
    rate = median(what, 2)
    print(f"| {names[what]} | {fmt(rate, '.0f')} | {fmt(rate / ceiling if rate and ceiling else None, '.2f')} "
          f"| {fmt(median(what, 3), '.1f')} | {fmt(median(what, 4), '.1f')} | {fmt(median(what, 5), '.1f')} "
          f"| {fmt(median(what, 6), '.1f')} |")
print()
print(f"ceiling {ceiling:.0f}")
EOF
ceiling=$(python3 -c "import statistics,sys; print(round(statistics.median(float(l.split()[2]) for l in open(sys.argv[1]) if l.split()[1] == 'C')))" "$dir/figures")

if [ "${SKIP_WORKER:-}" != 1 ]; then
  echo
  echo "== the worker and the whole path, beside the ceiling of $ceiling msg/s"
  bash benches/worker.sh "$events" | tee "$dir/worker.txt"
  # The whole path sustained at 0.6× the ceiling (issue 14's goal), open loop.
  bash benches/end-to-end.sh "${E2E_SECONDS:-60}" $((ceiling * 6 / 10)) | tee "$dir/e2e.txt"
  wlog=$(grep -m1 '^log:' "$dir/worker.txt" | grep -oE '[0-9.]+ events/s' | cut -d' ' -f1)
  echo
  awk -v w="$wlog" -v c="$ceiling" 'BEGIN { printf "worker, log action: %s events/s = %.2f× the ceiling\n", w, w / c }'
  grep -E '^(end to end|event-to-action)' "$dir/e2e.txt" || true
fi
