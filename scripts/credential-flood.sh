#!/bin/bash
# Usage: scripts/credential-flood.sh src/Nightlight/bin/Debug/net10.0/Nightlight.dll — wrong-password CONNECT flood, 100/s for 10 s; prints the broker's CPU seconds.
DLL=$1; D=$(mktemp -d); PORT=${PORT:-18941}; HTTP=$((PORT+1))
dotnet $DLL devices add kitchen --data $D >/dev/null
dotnet $DLL devices add legit --data $D > $D/legit.txt
LEGIT=$(awk '/shown only this once/{getline; getline; print $1; exit}' $D/legit.txt)
dotnet $DLL broker --mqtt-port $PORT --http-port $HTTP --data $D >$D/out 2>$D/err &
PID=$!
for i in $(seq 60); do grep -q "MQTT broker listening" $D/err && break; sleep 0.5; done
sleep 2
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
C0=$(cpu); T0=$(date +%s.%N)
for i in $(seq 1000); do
  if [ $i = 500 ]; then ( L0=$(date +%s.%N); mosquitto_pub -h 127.0.0.1 -p $PORT -u legit -P "$LEGIT" -i legit-1 -t legit/telemetry -m '{"light":1}'; LRC=$?; L1=$(date +%s.%N); echo "legit publish rc=$LRC in $(echo "$L1-$L0" | bc | cut -c1-5) s" > $D/legit.res ) & fi
  mosquitto_pub -h 127.0.0.1 -p $PORT -u kitchen -P "wrong-$i" -i "kitchen-$i" -t kitchen/telemetry -m '{"light":1}' >/dev/null 2>&1 &
  sleep 0.01
done
T1S=$(date +%s.%N)
wait $(jobs -p | grep -v "^$PID$") 2>/dev/null
C1=$(cpu); T1=$(date +%s.%N)
echo "broker CPU $(echo "($C1-$C0)/$TCK" | bc -l | cut -c1-5) s over $(echo "$T1-$T0" | bc | cut -c1-5) s wall (sending took $(echo "$T1S-$T0" | bc | cut -c1-5) s); $(cat $D/legit.res); log lines $(wc -l < $D/err)"
kill $PID; wait $PID 2>/dev/null; rm -rf $D
