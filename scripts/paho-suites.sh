#!/usr/bin/env bash
# Runs Eclipse Paho's MQTT interoperability suites (client_test.py for 3.1.1, client_test5.py for 5) against
# Mosquitto and against `nightlight broker`, each on a fresh broker on a free loopback port, and prints pass/fail per
# test for both side by side.
#
#   scripts/paho-suites.sh PATH            PATH: a copy of eclipse/paho.mqtt.testing (or its interoperability folder)
#
# The suites are third-party code: this script fetches nothing and copies them only to a temporary directory, where
# unittest.main is made to ignore the script's own flags and test_flow_control2 (it hangs against both brokers) is
# left out. For the MQTT 5 suite both brokers get the suite's own broker setting, a maximum keep-alive of 60 s
# (test_server_keep_alive). test_subscribe_failure needs a topic forbidden to anonymous clients, which neither is
# given, so it fails against both.
#
# Environment: NIGHTLIGHT_DLL (a built Nightlight.dll; default: built here in Release), MOSQUITTO (default: mosquitto
# on PATH or /usr/sbin), SUITE_TIMEOUT (seconds per suite, default 900), KEEP_LOGS=1 keeps the logs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

source_dir="${1:?usage: scripts/paho-suites.sh PATH-TO-paho.mqtt.testing}"
[ -d "$source_dir/interoperability" ] && source_dir="$source_dir/interoperability"
[ -f "$source_dir/client_test.py" ] && [ -f "$source_dir/client_test5.py" ] || {
  echo "error: no client_test.py and client_test5.py in $source_dir" >&2; exit 2; }

mosquitto="${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
[ -x "$mosquitto" ] || { echo "error: mosquitto not found (Debian package mosquitto)" >&2; exit 2; }
timeout_s="${SUITE_TIMEOUT:-900}"

work="$(mktemp -d -t paho-suites-XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "${KEEP_LOGS:-}" = 1 ]; then echo "logs: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The suites, patched in the copy only.
cp -r "$source_dir" "$work/interop"
sed -i -E 's/unittest\.main\(\)/unittest.main(argv=[sys.argv[0], "-v"])/' "$work/interop/client_test.py" "$work/interop/client_test5.py"
sed -i -E 's/def test_flow_control2\(/def left_out_flow_control2(/' "$work/interop/client_test5.py"

dll="${NIGHTLIGHT_DLL:-}"
if [ -z "$dll" ]; then
  echo "building nightlight (Release)..." >&2
  dotnet build "$root/src/Nightlight" -c Release -o "$work/nightlight" --nologo -v q >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2; exit 1; }
  dll="$work/nightlight/Nightlight.dll"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

wait_open() {
  for _ in $(seq 1 300); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing listens on port $1" >&2; return 1
}

# start_broker NAME PORT [MAX_KEEPALIVE]: starts it in the background and records its pid in $broker_pid. With
# MAX_KEEPALIVE, an MQTT 5 client asking for a longer keep-alive is told that one in CONNACK (server keep-alive).
start_broker() {
  local name="$1" port="$2" max_keepalive="${3:-0}" dir="$work/$1-$2"
  mkdir -p "$dir"
  if [ "$name" = mosquitto ]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser %s\n' "$port" "$(id -un)" >"$dir/mosquitto.conf"
    [ "$max_keepalive" -gt 0 ] && printf 'max_keepalive %s\n' "$max_keepalive" >>"$dir/mosquitto.conf"
    "$mosquitto" -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
  else
    NO_COLOR=1 NIGHTLIGHT_Broker__MaxKeepAlive="$max_keepalive" \
      dotnet "$dll" broker --mqtt-port "$port" --http-port "$(free_port)" --data "$dir/data" >"$dir/broker.log" 2>&1 &
  fi
  broker_pid=$!
  pids+=("$broker_pid")
  wait_open "$port"
  # One MQTT connection first: the suites' client gives up on a CONNACK after a short timeout, which a broker's
  # first connection (JIT) can exceed on a busy machine.
  python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(60)
s.sendall(bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 2]) + b"w0")
assert s.recv(4)[:1] == b"\x20", "no CONNACK"
s.sendall(bytes([0xE0, 0]))
s.close()
PY
}

# run_suite BROKER SUITE: one fresh broker, one suite; writes "test result" lines to $work/BROKER-SUITE.results.
run_suite() {
  local broker="$1" suite="$2" port
  port="$(free_port)"
  # test_server_keep_alive (5) expects the server keep-alive of the suite's own test broker: 60 s. Not for 3.1.1,
  # where Mosquitto refuses a longer keep-alive instead of announcing one.
  start_broker "$broker" "$port" "$([ "$suite" = client_test5.py ] && echo 60 || echo 0)"
  echo "running $suite against $broker on port $port..." >&2
  (cd "$work/interop" && timeout "$timeout_s" python3 "$suite" -p "$port" >"$work/$broker-$suite.out" 2>"$work/$broker-$suite.err") || true
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  # unittest -v names each test at the start of a line on standard error ("test_x (module.Class.test_x) ... ");
  # the suites' own tracebacks may come between a name and its "ok", so failures are read from the "FAIL: test_x" and
  # "ERROR: test_x" headers of the summary. Without a summary the suite timed out: its last test hung.
  python3 - "$work/$broker-$suite.err" >"$work/$broker-$suite.results" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
names = list(dict.fromkeys(re.findall(r"^(test\w+) \(", text, re.M)))
failed = set(re.findall(r"^(?:FAIL|ERROR): (test\w+)", text, re.M))
finished = re.search(r"^Ran \d+ tests?", text, re.M) is not None
for i, name in enumerate(names):
    if name in failed:
        result = "fail"
    elif finished or i < len(names) - 1:
        result = "pass"
    else:
        result = "hung"
    print(name, result)
PY
}

for suite in client_test.py client_test5.py; do
  run_suite mosquitto "$suite"
  run_suite nightlight "$suite"
done

for suite in client_test.py client_test5.py; do
  echo
  printf '%-34s %-10s %-10s\n' "$suite" "mosquitto" "nightlight"
  cut -d' ' -f1 "$work/mosquitto-$suite.results" "$work/nightlight-$suite.results" | sort -u | while read -r t; do
    m="$(awk -v t="$t" '$1 == t { print $2; exit }' "$work/mosquitto-$suite.results")"
    n="$(awk -v t="$t" '$1 == t { print $2; exit }' "$work/nightlight-$suite.results")"
    printf '%-34s %-10s %-10s\n' "$t" "${m:--}" "${n:--}"
  done
  for b in mosquitto nightlight; do
    if grep -q '^ERROR: setUpClass' "$work/$b-$suite.err"; then
      echo "$b: the suite's set-up failed (see $b-$suite.err with KEEP_LOGS=1)"
    fi
    printf '%s: %s passed, %s failed\n' "$b" "$(grep -c ' pass$' "$work/$b-$suite.results" || true)" "$(grep -c -E ' (fail|hung)$' "$work/$b-$suite.results" || true)"
  done
done
