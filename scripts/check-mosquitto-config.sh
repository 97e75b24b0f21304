#!/usr/bin/env bash
# Checks deploy/mosquitto/mosquitto.conf against the real mosquitto (run by scripts/test.sh):
#   1. the file alone refuses anonymous clients;
#   2. with the development include, publish/subscribe works;
#   3. 5,000 QoS 1 messages published while an ingest-like persistent session on the shared
#      subscription is offline are all delivered after a broker restart (Mosquitto's default
#      queue of 1,000 would drop 4,000 of them);
#   4. a packet above max_packet_size is refused, a 100 KB payload passes (ingest's own
#      limit, lower, must be the one that rejects and counts it).
# Each broker is private (free port, state in a temporary directory) and stopped at the end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/mosquitto.sh
source "$repo/scripts/lib/mosquitto.sh"

if [[ -z "${MOSQUITTO_BIN:-}" ]]; then
    DEPS_SKIP_TOOLS=1 source "$repo/scripts/lib/deps.sh"
fi
command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null || {
    echo "check-mosquitto-config: mosquitto_pub/mosquitto_sub missing (Debian package mosquitto-clients)" >&2
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/iot-mosquitto-check.XXXXXX")"
broker_pid=""
cleanup() {
    if [[ -n "$broker_pid" ]]; then
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "check-mosquitto-config: FAIL: $*" >&2
    echo "--- broker log" >&2
    tail -n 30 "$work/broker.log" >&2 || true
    exit 1
}

free_port() {
    local p=$((20000 + RANDOM % 20000))
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}

start_broker() {
    "$MOSQUITTO_BIN" -c "$work/mosquitto.conf" >>"$work/broker.log" 2>&1 &
    broker_pid=$!
    mosquitto_wait_port "$port" 10 || fail "broker did not listen on $port"
}

stop_broker() {
    kill -TERM "$broker_pid"
    wait "$broker_pid" || true
    broker_pid=""
}

port="$(free_port)"
topic_filter='$share/ingest/devices/+/telemetry'

# 1. Production file alone: no anonymous access.
mosquitto_render_config "$work" "$port"
start_broker
if mosquitto_pub -p "$port" -q 1 -t devices/d1/telemetry -m '{}' 2>/dev/null; then
    fail "anonymous publish accepted without the development include"
fi
stop_broker
echo "ok: anonymous clients refused by deploy/mosquitto/mosquitto.conf alone"

# 2. Development include: publish/subscribe.
rm -rf "$work/data"
mosquitto_render_config "$work" "$port" "$repo/deploy/mosquitto/dev/allow-anonymous.conf"
start_broker
mosquitto_sub -p "$port" -q 1 -t 'devices/+/telemetry' -C 1 -W 10 >"$work/one.txt" &
sub_pid=$!
sleep 0.3
mosquitto_pub -p "$port" -q 1 -t devices/d1/telemetry -m '{"metrics":{"temperature":21.5}}' || fail "publish refused"
wait "$sub_pid" || fail "subscriber got nothing"
grep -q temperature "$work/one.txt" || fail "subscriber got something else: $(cat "$work/one.txt")"
echo "ok: publish/subscribe with dev/allow-anonymous.conf"

# 3. Queue of an offline persistent shared-subscription session survives a restart.
n=5000
mosquitto_sub -p "$port" -q 1 -c -i check-ingest-0 -t "$topic_filter" -E || fail "could not create the persistent session"
seq 1 "$n" | sed 's/.*/{"metrics":{"seq":&}}/' |
    mosquitto_pub -p "$port" -q 1 -t devices/d1/telemetry -l || fail "publishing $n messages failed"
stop_broker
[[ -s "$work/data/mosquitto.db" ]] || fail "no persistence file written on SIGTERM"
start_broker
mosquitto_sub -p "$port" -q 1 -c -i check-ingest-0 -t "$topic_filter" -C "$n" -W 30 >"$work/queued.txt" || true
got="$(sort -u "$work/queued.txt" | wc -l)"
((got == n)) || fail "persistent session got $got of $n queued messages after a restart"
echo "ok: $n messages queued for an offline persistent session survived a broker restart"

# 4. max_packet_size: 100 KB passes, 300 KB is refused.
mosquitto_sub -p "$port" -q 1 -t 'devices/+/telemetry' -C 1 -W 10 >"$work/big.txt" &
sub_pid=$!
sleep 0.3
if head -c 300000 /dev/zero | tr '\0' a | mosquitto_pub -p "$port" -q 1 -t devices/d1/telemetry -s 2>/dev/null; then
    fail "a 300 KB publish was accepted (max_packet_size not applied)"
fi
head -c 100000 /dev/zero | tr '\0' b | mosquitto_pub -p "$port" -q 1 -t devices/d1/telemetry -s || fail "a 100 KB publish was refused"
wait "$sub_pid" || fail "the 100 KB message was not delivered"
[[ "$(head -c 1 "$work/big.txt")" == b ]] || fail "the subscriber received the oversized message"
echo "ok: max_packet_size refuses 300 KB, passes 100 KB"
echo "check-mosquitto-config: all checks passed"
