#!/usr/bin/env bash
# Rough sustained ingest throughput on this machine: a private Mosquitto (flow-control settings
# from deploy/mosquitto/mosquitto.conf), iot-storage on a fresh MariaDB database, REPLICAS
# iot-ingest processes, and iot-sim offering more than ingest can take. The broker queues the
# surplus, so rows committed per second measure ingest (+ storage + MariaDB), not the sim.
#
#   cargo build --release -p iot-storage -p iot-ingest -p iot-sim
#   REPLICAS=2 services/sim/scripts/bench-ingest.sh
#
# Env: BIN (target/release), REPLICAS (1), DEVICES (200), RATE per device (100), DURATION s (20),
# CONNECTIONS for the sim (20), MYSQL (mysql://root@127.0.0.1:3306), METRICS per message (4).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BIN="${BIN:-$ROOT/target/release}"
REPLICAS="${REPLICAS:-1}" DEVICES="${DEVICES:-200}" RATE="${RATE:-100}" DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-20}" MYSQL="${MYSQL:-mysql://root@127.0.0.1:3306}" METRICS=4
DB="iot_bench_$$"
WORK="$(mktemp -d)"; chmod 777 "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sql() { mysql -h127.0.0.1 -uroot -N -e "$1"; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sql "DROP DATABASE IF EXISTS $DB" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

MQTT_PORT="$(free_port)"; GRPC_PORT="$(free_port)"
{
  echo "listener $MQTT_PORT 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence false"
  grep -E '^(max_inflight_messages|max_inflight_bytes|max_queued_messages|max_queued_bytes|max_packet_size)\b' \
    "$ROOT/deploy/mosquitto/mosquitto.conf"
} > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 & PIDS+=($!)
sql "CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
STORAGE_DATABASE_URL="$MYSQL/$DB" STORAGE_GRPC_ADDR="127.0.0.1:$GRPC_PORT" STORAGE_METRICS_ADDR="127.0.0.1:$(free_port)" \
  "$BIN/iot-storage" > "$WORK/storage.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_PORT") 2>/dev/null && break; sleep 0.2; done
OPS=()
for r in $(seq "$REPLICAS"); do
  port="$(free_port)"; OPS+=("$port")
  INGEST_MQTT_PORT="$MQTT_PORT" INGEST_CLIENT_ID="bench-ingest-$r" INGEST_STORAGE_URL="http://127.0.0.1:$GRPC_PORT" \
    INGEST_METRICS_ADDR="127.0.0.1:$port" "$BIN/iot-ingest" > "$WORK/ingest-$r.log" 2>&1 & PIDS+=($!)
done
sleep 1
# Register first (a zero-length run), so that registration time is not part of the window.
"$BIN/iot-sim" --mqtt-port "$MQTT_PORT" --devices "$DEVICES" --count 0 --register \
  --storage-url "http://127.0.0.1:$GRPC_PORT" > /dev/null
"$BIN/iot-sim" --mqtt-port "$MQTT_PORT" --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" \
  --connections "$CONNECTIONS" > "$WORK/sim.out" 2>"$WORK/sim.log" & SIM=$!
start=$(date +%s.%N); samples=()
while kill -0 "$SIM" 2>/dev/null; do
  sleep 2
  samples+=("$(date +%s.%N) $(sql "SELECT COUNT(*) FROM $DB.readings")")
done
cat "$WORK/sim.out"
published=$(sed -n 's/.*published=\([0-9]*\).*/\1/p' "$WORK/sim.out")
want=$((published * METRICS)); rows=0
for _ in $(seq 300); do
  rows=$(sql "SELECT COUNT(*) FROM $DB.readings"); samples+=("$(date +%s.%N) $rows")
  [[ "$rows" -ge "$want" ]] && break; sleep 1
done
end=$(date +%s.%N)
# Steady state: rows committed between the first sample and the moment the last row landed.
python3 - "$want" "$rows" "$start" "$end" "${samples[@]}" <<'PY'
import sys
want, rows, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
samples = [tuple(map(float, s.split())) for s in sys.argv[5:]]
first = samples[0]
last = next((s for s in samples if s[1] >= want), samples[-1])
rate = (last[1] - first[1]) / 4 / max(last[0] - first[0], 1e-9)
print(f"rows={rows}/{want} all_stored={'yes' if rows >= want else 'NO'} "
      f"total_time={end-start:.1f}s sustained_ingest={rate:.0f} msg/s ({rate*4:.0f} readings/s)")
PY
for r in $(seq "$REPLICAS"); do
  curl -s "127.0.0.1:${OPS[$((r-1))]}/metrics" | grep -E '^(ingest_(messages_received_total|batches_total|batch_readings_(sum|count)|end_to_end_lag_seconds_(sum|count))|process_cpu_seconds_total) ' \
    | tr '\n' ' ' | sed "s/^/replica $r: /"; echo
done
