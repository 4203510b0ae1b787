# Shared by the bench scripts (sourced, not run).

# listener_config TAG DIR: the shipped listener.toml on queues named after TAG, ports
# 18080/19090, and a fresh spool in DIR, on stdout.
listener_config() {
  sed -e "s/^exchange = .*/exchange = \"$1\"/" \
      -e "s/^queue = .*/queue = \"$1.events\"/" \
      -e "s/^dead_letter_exchange = .*/dead_letter_exchange = \"$1.dlx\"/" \
      -e "s/^dead_letter_queue = .*/dead_letter_queue = \"$1.dead\"/" \
      -e 's/^listen = .*/listen = "127.0.0.1:18080"/' \
      -e 's/^admin_listen = .*/admin_listen = "127.0.0.1:19090"/' \
      -e "s|^path = .*|path = \"$2/spool.db\"|" \
      listener.toml
}

# wait_broker_connected: until the listener on 19090 is connected to the broker. With a
# spool, /readyz is ready before that, and events taken by the spool would be measured
# instead of the direct path.
wait_broker_connected() {
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:19090/metrics 2>/dev/null | grep -q '^hookwarden_broker_connected 1' && return 0
    sleep 0.1
  done
  echo "the listener did not connect to the broker" >&2
  return 1
}

# delete_exchanges PREFIX: every exchange whose name starts with PREFIX (rabbitmqctl has no
# delete_exchange, and the management plugin is not assumed to be enabled).
delete_exchanges() {
  for x in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep "^$1"); do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"guest\">>)." >/dev/null 2>&1 || true
  done
}
