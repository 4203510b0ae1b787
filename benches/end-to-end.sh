#!/usr/bin/env bash
# Event to action through the whole product: the release listener and worker on their own
# queues, a rule whose http action posts to the sink `hookwarden bench --end-to-end` runs,
# and signed load at a fixed rate. Prints the bench report: HTTP latency at the door, and
# the time from each request's send to its action at the sink.
#   bash benches/end-to-end.sh [seconds] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
# The daemons measured; HOOKWARDEN_BIN=DIR measures other builds (e.g. an older release).
bin="${HOOKWARDEN_BIN:-./target/release}"
secs="${1:-15}"
rate="${2:-2000}"
cargo build --release --bins --quiet

tag="hwe2e$(date +%s)"
dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for q in "$tag.events" "$tag.dead" "$tag.review"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  delete_exchanges "$tag"
  rm -rf "$dir"
}
trap cleanup EXIT

listener_config "$tag" "$dir" > "$dir/listener.toml"

cat > "$dir/rules.toml" <<TOML
[amqp]
exchange = "$tag"
queue = "$tag.events"
dead_letter_exchange = "$tag.dlx"
dead_letter_queue = "$tag.dead"
review_queue = "$tag.review"
[server]
admin_listen = "127.0.0.1:19191"
[state]
path = "$dir/state.db"
[log]
level = "warn"
[[subjects]]
provider = "dregs"
types = ["identity.scored"]
subject = "/data/identity_id"
version = "/data/scored_at"
scores = { humanity = "/data/scores/humanity" }
[[rules]]
name = "every"
events = ["dregs:*"]
when = "score.humanity >= 0.0"
actions = ["sink"]
[actions.sink]
kind = "http"
url = "http://127.0.0.1:18089/e2e/{{ event.id }}"
TOML

wait_metric() { # url line
  for _ in $(seq 1 100); do
    curl -sf "$1" 2>/dev/null | grep -q "$2" && return 0
    sleep 0.1
  done
  echo "not ready: $1" >&2
  return 1
}

"$bin/hookwarden-listener" --config "$dir/listener.toml" > "$dir/listener.log" 2>&1 &
pids+=($!)
"$bin/hookwarden-worker" --config "$dir/rules.toml" > "$dir/worker.log" 2>&1 &
pids+=($!)
wait_broker_connected
wait_metric http://127.0.0.1:19191/readyz 'ready'

echo "== 4. end to end at $rate req/s for ${secs}s (listener → RabbitMQ → worker → http action)"
# One subject per event, so no event is stale behind another and the rule fires for each.
cat > "$dir/body.json" <<'JSON'
{"id":"{id}","type":"identity.scored","created_at":"2026-11-21T14:03:27.512Z","data":{"identity_id":"usr_{id}","scored_at":"2026-11-21T14:03:27.401Z","scores":{"humanity":22,"uniqueness":61,"authenticity":48},"previous_scores":{"humanity":74,"uniqueness":63,"authenticity":51},"badges":["Suspicious"],"reason":"burst of sign-ups sharing one device fingerprint","device":{"fingerprint":"fp_9a8b7c6d5e4f","ip":"198.51.100.23","country":"NL"}}}
JSON
./target/release/hookwarden bench --config "$dir/listener.toml" --provider dregs \
  --concurrency 64 --rate "$rate" --duration "${secs}s" --body "$dir/body.json" \
  --end-to-end 127.0.0.1:18089
