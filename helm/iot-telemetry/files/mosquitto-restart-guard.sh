#!/bin/sh
# Mosquitto restart guard: closes the window in which a restarted broker drops telemetry.
#
# Mosquitto 2.0.x persists sessions, their plain subscriptions and their queued messages, but
# not *shared* subscriptions (persist__subs_save writes node->subs, never node->shared). After
# a restart no subscription matches devices/+/telemetry until an ingest replica has
# re-subscribed to $share/ingest/...; whatever devices publish in between is acknowledged to
# them and dropped.
#
# Before the real broker starts, this script starts Mosquitto on the same persistence file but
# on a private loopback port only, connects as GUARD_CLIENT_ID with a persistent session
# (clean start off, session expiry GUARD_SESSION_EXPIRY) and makes a PLAIN QoS 1 subscription
# to GUARD_TOPIC, then stops that broker (SIGTERM: the state, guard included, is written).
# The real broker restores the guard's plain subscription with everything else, so from its
# first accepted connection every telemetry message is queued for the guard session as well.
# Ingest drains that session after its own shared subscription is back (services/ingest,
# "restart guard"), unsubscribes it, and from then on the guard costs nothing.
#
# Because it runs at every broker start (the container command in the chart), it covers a
# crash (SIGKILL, OOM, node loss) as well as a planned restart; what a crash loses is only
# what Mosquitto had not written yet (persistence is a snapshot: autosave_interval).
#
#   restart-guard.sh arm  CONFIG   arm the guard in CONFIG's persistence file and return
#   restart-guard.sh exec CONFIG   arm, then exec mosquitto -c CONFIG (container command)
#
# Environment: GUARD_CLIENT_ID (ingest-restart-guard; keep equal to ingest's
# INGEST_RESTART_GUARD_CLIENT_ID), GUARD_TOPIC (devices/+/telemetry), GUARD_SESSION_EXPIRY
# (seconds, 604800), GUARD_PORT (loopback port of the private broker, 11884), MOSQUITTO
# (mosquitto), MOSQUITTO_SUB (mosquitto_sub), TMPDIR.
set -eu

mode="${1:-}"
config="${2:-}"
case "$mode" in arm | exec) ;; *)
    echo "usage: $0 arm|exec MOSQUITTO_CONF" >&2
    exit 2
    ;;
esac
[ -r "$config" ] || {
    echo "restart-guard: cannot read $config" >&2
    exit 2
}

MOSQUITTO="${MOSQUITTO:-mosquitto}"
MOSQUITTO_SUB="${MOSQUITTO_SUB:-mosquitto_sub}"
GUARD_CLIENT_ID="${GUARD_CLIENT_ID:-ingest-restart-guard}"
GUARD_TOPIC="${GUARD_TOPIC:-devices/+/telemetry}"
GUARD_SESSION_EXPIRY="${GUARD_SESSION_EXPIRY:-604800}"
GUARD_PORT="${GUARD_PORT:-11884}"

# Last value of a top-level `key value` line of the configuration (what Mosquitto uses).
setting() { sed -n "s/^[[:space:]]*$1[[:space:]]\{1,\}\(.*[^[:space:]]\)[[:space:]]*\$/\1/p" "$config" | tail -n 1; }

arm() {
    if [ "$(setting persistence)" != true ]; then
        echo "restart-guard: persistence is off in $config; nothing survives a restart, nothing to guard" >&2
        return 0
    fi
    location="$(setting persistence_location)"
    if [ -z "$location" ]; then
        echo "restart-guard: $config sets no persistence_location" >&2
        return 1
    fi
    work="$(mktemp -d)"
    # The private broker must not shrink what it restores and writes back: same queue limits,
    # same session expiry policy, same user (as root Mosquitto would switch users).
    {
        echo "# restart guard: private loopback broker on the real persistence file"
        echo "per_listener_settings false"
        echo "listener $GUARD_PORT 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence true"
        echo "persistence_location $location"
        echo "autosave_interval 0"
        for key in user persistence_file max_queued_messages max_queued_bytes max_inflight_messages \
            max_inflight_bytes queue_qos0_messages persistent_client_expiration; do
            value="$(setting "$key")"
            [ -n "$value" ] && echo "$key $value"
        done
        echo "log_dest stderr"
        echo "log_type error"
        echo "log_type warning"
    } >"$work/guard.conf"
    "$MOSQUITTO" -c "$work/guard.conf" &
    broker=$!
    armed=false
    i=0
    # Retried until the private broker listens (it may take a while to load a large state).
    while [ "$i" -lt 600 ]; do
        if "$MOSQUITTO_SUB" -h 127.0.0.1 -p "$GUARD_PORT" -V mqttv5 -i "$GUARD_CLIENT_ID" -c \
            -x "$GUARD_SESSION_EXPIRY" -q 1 -t "$GUARD_TOPIC" -E -W 5 >/dev/null 2>"$work/sub.err"; then
            # Our own broker must still be running: a subscription on someone else's broker
            # (the port was taken) arms nothing here.
            kill -0 "$broker" 2>/dev/null && armed=true
            break
        fi
        kill -0 "$broker" 2>/dev/null || break
        i=$((i + 1))
        sleep 0.1
    done
    kill -TERM "$broker" 2>/dev/null || true
    wait "$broker" || true
    rm -rf "$work"
    if [ "$armed" != true ]; then
        echo "restart-guard: could not subscribe $GUARD_CLIENT_ID on the private broker (port $GUARD_PORT); starting unguarded" >&2
        return 1
    fi
    echo "restart-guard: $GUARD_CLIENT_ID holds a persistent QoS 1 subscription to $GUARD_TOPIC" >&2
}

if [ "$mode" = arm ]; then
    arm
    exit
fi
# A broker that cannot be guarded must still start: a missing guard is the old behaviour.
arm || true
exec "$MOSQUITTO" -c "$config"
