#!/usr/bin/env bash
# Where a round trip through an external broker spends its time: runs a server (ours, or the naive C# baseline) by
# hand against the broker, a `nightlight bench --servers external` load against both, and captures on loopback, during
# the measured part, the server's connection and 40 devices' connections; bench/broker-latency.py then splits the
# devices' round trips into broker in, server, broker out. Needs tcpdump and root (or CAP_NET_RAW), and python3.
#   bench/broker-latency.sh [ours|naive] [broker port, default 1883] [capture seconds, default 6]
set -euo pipefail
cd "$(dirname "$0")/.."
who=${1:-ours}; port=${2:-1883}; seconds=${3:-6}
command -v tcpdump >/dev/null || { echo "tcpdump is not installed (apt-get install tcpdump)" >&2; exit 1; }
dotnet build -c Release src/Nightlight -nologo -v q >/dev/null
n=src/Nightlight/bin/Release/net10.0/Nightlight
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
broker=mqtt://127.0.0.1:$port
if [ "$who" = naive ]; then
  "$n" bench-naive-server --broker "$broker" --threshold 300 >"$work/server.log" 2>&1 &
else
  NIGHTLIGHT_Rules__Default__Answer=every "$n" server --broker "$broker" --quiet --threshold 300 --data "$work/data" \
    --http-port 0 --no-status >"$work/server.log" 2>&1 &
fi
server=$!
for _ in $(seq 1 80); do grep -q "Server listening\|naive server subscribed" "$work/server.log" && break; sleep 0.25; done
server_port=$(ss -tnpH "( dport = :$port )" | grep "pid=$server," | head -1 | awk '{print $4}' | sed 's/.*://')
"$n" bench --broker "$broker" --devices 1000 --rate 20000 --duration 15s --warmup 10s --servers external >"$work/bench.log" 2>&1 &
bench=$!
sleep 16  # connect and warm-up: the capture falls in the measured 15 s
device_ports=$(ss -tnpH "( dport = :$port )" | grep "pid=$(pgrep -f "bench --broker $broker" | head -1)," | awk '{print $4}' \
  | sed 's/.*://' | head -40)
filter="port $server_port"; for p in $device_ports; do filter="$filter or port $p"; done
timeout "$seconds" tcpdump -i lo -B 16384 -s 0 -w "$work/capture.pcap" "tcp and ($filter)" 2>/dev/null || true
wait $bench
grep -E "^external" "$work/bench.log" | awk '{print "bench: p50", $4, "ms, p99", $6, "ms, max", $7, "ms, lost", $8}'
python3 bench/broker-latency.py "$work/capture.pcap" "$server_port" "$port"
