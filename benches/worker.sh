#!/usr/bin/env bash
# Measures, in one run on this machine: the raw consume rate of a quorum queue (the ceiling),
# then the release worker's events/s with state commits and a `log` action (with the event
# archive on, the default, and off), and with an
# `http` action to a local sink; with a `log` action and a lookup (`[enrich.account]`) per
# event, answered from its cache and asked each time; then with its state in PostgreSQL (`log`
# action), one worker and two on the same queue and database. Own uniquely named queues and schema, deleted
# afterwards.
#   bash benches/worker.sh [events]
# POSTGRES=URL is the database (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable);
# POSTGRES=none skips those runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
# The daemons measured; HOOKWARDEN_BIN=DIR measures other builds (e.g. an older release).
bin="${HOOKWARDEN_BIN:-./target/release}"
n="${1:-20000}"
pg="${POSTGRES:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}"
cargo build --release --bins --quiet
cargo bench --bench consume --quiet -- >/dev/null   # builds the helper binary
bench() { cargo bench --bench consume --quiet -- "$@"; }

tag="hwwb$(date +%s)"
dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # cargo runs the sink as a child of its own: stop it by its arguments.
  pkill -f "sink --port 18089" 2>/dev/null || true
  for q in "$tag.events" "$tag.dead" "$tag.review" "$tag.raw.events" "$tag.raw.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  delete_exchanges "$tag"
  [ "$pg" = none ] || psql -q "$pg" -c "DROP SCHEMA IF EXISTS ${tag}_1, ${tag}_2 CASCADE" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

rules() { # name action-table [state-line] [when]
  local state="${3:-path = \"$dir/$1.db\"}"
  local when="${4:-score.humanity < 50.0}"
  cat > "$dir/$1.toml" <<TOML
[amqp]
exchange = "$tag.$1"
queue = "$tag.events"
dead_letter_exchange = "$tag.dlx"
dead_letter_queue = "$tag.dead"
review_queue = "$tag.review"
[server]
admin_listen = "127.0.0.1:19191"
[state]
$state
[log]
level = "info"
[[subjects]]
provider = "dregs"
types = ["identity.scored"]
subject = "/data/identity_id"
version = "/data/scored_at"
scores = { humanity = "/data/scores/humanity" }
[[rules]]
name = "low"
events = ["dregs:*"]
when = "$when"
actions = ["act"]
$2
TOML
}

events_done() { # admin ports...
  local sum=0 port
  for port in "$@"; do
    sum=$((sum + $(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null \
      | awk '/^hookwarden_worker_events_total/ { s += $2 } END { print s + 0 }')))
  done
  echo "$sum"
}

run_worker() { # name [workers]: that many workers on the name's rules and one queue
  local count="${2:-1}" i port ports=() wpids=()
  for i in $(seq 1 "$count"); do
    port=$((19190 + i))
    sed "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$port\"/" "$dir/$1.toml" > "$dir/$1.$i.toml"
    "$bin/hookwarden-worker" --config "$dir/$1.$i.toml" > "$dir/$1.$i.log" 2>&1 &
    wpids+=($!)
    pids+=($!)
    ports+=("$port")
    # Declare the topology, then stop consuming while the queue is filled.
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  kill -STOP "${wpids[@]}"
  bench fill --exchange "$tag.$1" --count "$n" >/dev/null
  local start end before=0 after=0 pid
  for pid in "${wpids[@]}"; do before=$((before + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  start=$(date +%s.%N)
  kill -CONT "${wpids[@]}"
  while [ "$(events_done "${ports[@]}")" -lt "$n" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  for pid in "${wpids[@]}"; do after=$((after + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  kill -TERM "${wpids[@]}"
  for pid in "${wpids[@]}"; do wait "$pid" 2>/dev/null || true; done
  awk -v n="$n" -v s="$start" -v e="$end" -v name="$1" -v w="$count" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s: %d events in %.2f s, %.0f events/s (%d worker%s, CPU %.1f µs per event)\n", name, n, e - s, n / (e - s), w, (w > 1 ? "s" : ""), t / hz * 1e6 / n }'
}

echo "== machine: $(nproc) cores, RabbitMQ $(rabbitmqctl -q version 2>/dev/null), $n events"
echo "== 1. raw consume (the ceiling)"
rules raw '[actions.act]
kind = "log"'
sed -i "s/queue = \"$tag.events\"/queue = \"$tag.raw.events\"/; s/dead_letter_queue = \"$tag.dead\"/dead_letter_queue = \"$tag.raw.dead\"/" "$dir/raw.toml"
"$bin/hookwarden-worker" --config "$dir/raw.toml" > "$dir/raw.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19191/readyz >/dev/null 2>&1 && break; sleep 0.1; done
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true   # it only declared the queue
bench fill --exchange "$tag.raw" --count "$n" >/dev/null
bench raw --queue "$tag.raw.events" --count "$n"

echo "== 2. worker, log action (state committed per batch, every event archived)"
rules log '[actions.act]
kind = "log"'
run_worker log
echo "== 2b. worker, log action, archive off"
rules noarchive '[actions.act]
kind = "log"
[archive]
enabled = false'
run_worker noarchive

echo "== 3. worker, http action to a local sink"
bench sink --port 18089 & pids+=($!)
rules http '[actions.act]
kind = "http"
url = "http://127.0.0.1:18089/hook/{{ subject }}"
body = "{\"humanity\": {{ score.humanity }}}"'
run_worker http

echo "== 3b. worker, log action and one lookup per event, answered from its cache"
# One URL for every event: after the first, every answer is the cache's.
rules lookup '[actions.act]
kind = "log"
[enrich.account]
kind = "http"
url = "http://127.0.0.1:18089/accounts/{{ provider }}"
cache_ttl = "10m"' "" "score.humanity < 50.0 && enrich.account.age_days < 30"
run_worker lookup
echo "== 3c. worker, log action and one lookup per event, asked each time (no cache)"
rules uncached '[actions.act]
kind = "log"
[enrich.account]
kind = "http"
url = "http://127.0.0.1:18089/accounts/{{ subject }}"' "" "score.humanity < 50.0 && enrich.account.age_days < 30"
run_worker uncached

if [ "$pg" != none ]; then
  # A schema per run, so the second starts as empty as the first.
  psql -q "$pg" -c "CREATE SCHEMA ${tag}_1; CREATE SCHEMA ${tag}_2" >/dev/null
  echo "== 4. worker, log action, state in PostgreSQL"
  rules pg1 '[actions.act]
kind = "log"' "url = \"$pg&options=-c%20search_path%3D${tag}_1\""
  run_worker pg1
  echo "== 5. two workers on one queue and one PostgreSQL database, log action"
  rules pg2 '[actions.act]
kind = "log"' "url = \"$pg&options=-c%20search_path%3D${tag}_2\""
  run_worker pg2 2
fi
