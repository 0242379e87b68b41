#!/usr/bin/env bash
# Round trips through RabbitMQ (Debian rabbitmq-server with its MQTT plugin): one node with one server, then two
# clustered nodes with two servers, the servers reading telemetry by AMQP (--ingest amqp). Everything runs on loopback
# in a temp directory and is killed at the end. Extra arguments go to `nightlight bench` (default: 1,000 devices,
# 1,000 readings/s, 15 s). Prints the load average beside each run: the machine may be shared.
#   bench/cluster.sh [--devices 1000] [--rate 1000] [--duration 15s]
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
((${#args[@]})) || args=(--devices 1000 --rate 1000 --duration 15s --warmup 3s)

server_bin=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$server_bin" ] || { echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }
dotnet build -c Release src/Nightlight -nologo -v q >/dev/null
nightlight=(dotnet "$PWD/src/Nightlight/bin/Release/net10.0/Nightlight.dll")

work=$(mktemp -d /tmp/nightlight-bench-rabbit-XXXXXX)
cookie=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
pids=()
cleanup() {
  for f in "$work"/*/pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { until (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.5; done; }

# start_node NAME [SEED]: a node on free loopback ports; with SEED it joins SEED's cluster as it boots.
start_node() {
  local name=$1 seed=${2:-} d=$work/$1
  mkdir -p "$d"
  local amqp mqtt dist
  amqp=$(free_port) mqtt=$(free_port) dist=$(free_port)
  cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$amqp
mqtt.listeners.tcp.1 = 127.0.0.1:$mqtt
mqtt.allow_anonymous = true
loopback_users = none
log.console = false
CONF
  if [ -n "$seed" ]; then
    cat >>"$d/rabbitmq.conf" <<CONF
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $seed@localhost
cluster_formation.discovery_retry_limit = 240
cluster_formation.discovery_retry_interval = 500
CONF
  fi
  echo '[rabbitmq_mqtt].' >"$d/enabled_plugins"
  env HOME="$d" RABBITMQ_NODENAME="$name@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp" \
    RABBITMQ_DIST_PORT="$dist" RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/pid" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-setcookie $cookie -kernel inet_dist_use_interface {127,0,0,1}" \
    "$server_bin" >"$d/out" 2>&1 &
  pids+=($!)
  echo "$amqp $mqtt" >"$d/ports"
}
mqtt_url() { read -r _ mqtt <"$work/$1/ports"; echo "mqtt://127.0.0.1:$mqtt"; }
amqp_url() { read -r amqp _ <"$work/$1/ports"; echo "amqp://guest:guest@127.0.0.1:$amqp/"; }

# start_server NAME MQTT-URLS AMQP-URLS
start_server() {
  local log=$work/$1.log
  mkdir -p "$work/$1-data"
  "${nightlight[@]}" server --broker "$2" --ingest amqp --amqp "$3" --quiet --data "$work/$1-data" --http-port 0 >"$log" 2>&1 &
  pids+=($!)
  until grep -q "Server consuming telemetry" "$log"; do sleep 0.5; done
}

bench() {
  local label=$1 brokers=$2
  echo "== $label: load average before $(cut -d' ' -f1-3 /proc/loadavg)"
  "${nightlight[@]}" bench --broker "$brokers" --servers external "${args[@]}" --json "$work/$label.json" 2>/dev/null
  echo "== $label: load average after $(cut -d' ' -f1-3 /proc/loadavg)"
}

# One node, one server.
start_node solo
read -r _ solo_mqtt <"$work/solo/ports"; wait_port "$solo_mqtt"
start_server solo-server "$(mqtt_url solo)" "$(amqp_url solo)"
bench one-node-one-server "$(mqtt_url solo)"
kill -9 "$(cat "$work/solo/pid")" "${pids[@]}" 2>/dev/null || true
pids=()

# Two clustered nodes, two servers; devices spread over both nodes.
start_node rabbit-a
start_node rabbit-b rabbit-a
for n in rabbit-a rabbit-b; do read -r _ p <"$work/$n/ports"; wait_port "$p"; done
both_mqtt="$(mqtt_url rabbit-a),$(mqtt_url rabbit-b)"
start_server server-1 "$both_mqtt" "$(amqp_url rabbit-a),$(amqp_url rabbit-b)"
start_server server-2 "$(mqtt_url rabbit-b),$(mqtt_url rabbit-a)" "$(amqp_url rabbit-b),$(amqp_url rabbit-a)"
bench two-nodes-two-servers "$both_mqtt"
