#!/usr/bin/env bash
# The listener against the single shared broker and against a three-node RabbitMQ cluster
# started here for the run (own node names, ports 5791-5793, data under a temporary
# directory; stopped and removed afterwards), each beside the raw confirmed-publish rate to a
# quorum queue of the same broker, in one run:
#   bash benches/cluster.sh [seconds per measurement]
# Needs root (the nodes run as the rabbitmq user, as the shared broker does).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
secs="${1:-15}"
reference="${REFERENCE:-../shared/reference}"
cargo build --release --bins --quiet
cargo build --release --quiet --manifest-path "$reference/Cargo.toml" --target-dir target/reference
tag="hwcl$(date +%s)"
dir="$(mktemp -d)"
nodes=(hwb1 hwb2 hwb3)
ports=(5791 5792 5793)
cleanup() {
  for n in "${nodes[@]}"; do rabbitmqctl -n "$n@localhost" stop >/dev/null 2>&1 || true; done
  for q in "$tag.ceiling" "$tag.events" "$tag.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  delete_exchanges "$tag"
  rm -rf "$dir"
}
trap cleanup EXIT

# ceiling URL QUEUE: confirmed publishing, 64 in flight, for $secs; prints msg/s.
ceiling() {
  target/reference/release/amqp publish --amqp "$1" --queue-type quorum --queue "$2" \
    --inflight 64 --secs "$secs" | sed -n 's/.*AMQPJSON //p' \
    | python3 -c 'import json,sys; print("%.0f" % json.loads(sys.stdin.read())["rate"])'
}
# listener URLS: the shipped listener.toml with [amqp] url = URLS (a TOML value) under
# `hookwarden bench`, 64 connections, for $secs; prints req/s and p99.
listener() {
  listener_config "$tag" "$dir" | sed "s|^url = .*|url = $1|" > "$dir/listener.toml"
  rm -f "$dir/spool.db"*
  target/release/hookwarden-listener --config "$dir/listener.toml" > "$dir/listener.log" 2>&1 &
  local pid=$!
  wait_broker_connected
  target/release/hookwarden bench --url http://127.0.0.1:18080/hooks/dregs --config "$dir/listener.toml" \
    --provider dregs --concurrency 64 --duration "${secs}s" --json \
    | python3 -c 'import json,sys; r = json.load(sys.stdin); print("%.0f req/s, p99 %.1f ms" % (r["requests_per_second"], r["latency_ms"]["p99"]))'
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

echo "== single broker (127.0.0.1:5672)"
echo "   ceiling:  $(ceiling "amqp://guest:guest@127.0.0.1:5672/%2f" "$tag.ceiling") msg/s"
rabbitmqctl -q delete_queue "$tag.ceiling" >/dev/null
echo "   listener: $(listener '"amqp://guest:guest@127.0.0.1:5672/%2f"')"
rabbitmqctl -q delete_queue "$tag.events" >/dev/null

echo "== three-node cluster (ports ${ports[*]})"
for i in 0 1 2; do
  home="$dir/${nodes[$i]}"
  mkdir -p "$home"
  printf 'listeners.tcp.local = 127.0.0.1:%s\nloopback_users = none\n' "${ports[$i]}" > "$home/rabbitmq.conf"
  echo "[]." > "$home/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
  RABBITMQ_NODENAME="${nodes[$i]}@localhost" RABBITMQ_NODE_PORT="${ports[$i]}" \
    RABBITMQ_DIST_PORT=$((ports[i] + 20000)) RABBITMQ_CONFIG_FILE="$home/rabbitmq" \
    RABBITMQ_MNESIA_BASE="$home/mnesia" RABBITMQ_LOG_BASE="$home/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$home/enabled_plugins" \
    su rabbitmq -s /bin/sh -c "/usr/lib/rabbitmq/bin/rabbitmq-server -detached"
done
for n in "${nodes[@]}"; do
  until rabbitmqctl -n "$n@localhost" -q ping >/dev/null 2>&1; do sleep 0.5; done
  rabbitmqctl -n "$n@localhost" -q -t 120 await_startup
done
for n in hwb2 hwb3; do
  rabbitmqctl -n "$n@localhost" -q stop_app
  rabbitmqctl -n "$n@localhost" -q join_cluster hwb1@localhost
  rabbitmqctl -n "$n@localhost" -q start_app
done
urls='["amqp://guest:guest@127.0.0.1:5791/%2f", "amqp://guest:guest@127.0.0.1:5792/%2f", "amqp://guest:guest@127.0.0.1:5793/%2f"]'
echo "   ceiling:  $(ceiling "amqp://guest:guest@127.0.0.1:5791/%2f" "$tag.ceiling") msg/s"
echo "   listener: $(listener "$urls")"
