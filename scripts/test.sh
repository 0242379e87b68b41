#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the real peers the tests talk to (Debian packages),
# then builds and tests. Extra arguments go to `dotnet test` (for example --filter Name~Lesson).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: real brokers, real clients, the lesson's Python library, a real browser, a real
# database, a real terminal.
packages=(mosquitto mosquitto-clients python3-paho-mqtt python3-requests chromium postgresql tmux rabbitmq-server)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing test dependencies: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests start their own RabbitMQ nodes on free ports; a service the package just started would only hold ports.
  if [[ " ${missing[*]} " == *" rabbitmq-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
  fi
fi
# The broker and database packages may start system services; the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  echo "note: a system mosquitto service is running; the tests do not use it"
fi

log=$(mktemp)
# Everything the tests and the programs they start put in the temporary directory (data directories, databases,
# brokers' files) goes in one directory of this run, removed at the end.
work=$(mktemp -d -t nightlight-tests-XXXXXX)
chmod 1777 "$work"  # like /tmp itself: the database cluster runs as the postgres user
trap 'rm -rf "$work" "$log"' EXIT
set +e
TMPDIR="$work" dotnet test Nightlight.slnx --nologo "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One plain closing line that any reader can count: N passed, N failed, N skipped, summed over the test projects
# (dotnet test prints one "Passed!" or "Failed!" line for each).
awk '/(Passed|Failed)! +- +Failed: /{
  gsub(",", ""); for (i = 1; i <= NF; i++) { if ($i == "Failed:") f += $(i+1); if ($i == "Passed:") p += $(i+1); if ($i == "Skipped:") s += $(i+1) }
} END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
