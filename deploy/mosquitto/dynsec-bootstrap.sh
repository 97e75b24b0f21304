#!/bin/sh
# Prepares the broker's dynamic-security state before Mosquitto starts: the Helm chart's init
# container, scripts/up.sh and the tests (iot-testkit) all run this file. The chart ships a
# byte-identical copy (helm/iot-telemetry/files/mosquitto-bootstrap.sh; a chart test compares).
#  - first start: creates dynamic-security.json with the administrator;
#  - every start: ensures the service roles and accounts of ingest and api exist and sets
#    their passwords from the Secret, so a rotated Secret takes effect on the next rollout.
# Device accounts are not touched: the api provisions them over $CONTROL/dynamic-security
# and they live in the same file on the persistent volume.
# The accounts are applied through a private broker on loopback, the supported way of
# changing dynamic security (the file format holds hashed passwords).
# Inputs (environment): DATA_DIR, PLUGIN, ADMIN_USERNAME, ADMIN_PASSWORD, INGEST_USERNAME,
# INGEST_PASSWORD, API_USERNAME, API_PASSWORD; BOOTSTRAP_PORT (default 11883);
# BOOTSTRAP_USER (optional: the user a root-started bootstrap broker keeps, so that it can
# write DATA_DIR; the pod runs as the mosquitto user and needs none).
set -eu

: "${DATA_DIR:?}" "${PLUGIN:?}" "${ADMIN_USERNAME:?}" "${ADMIN_PASSWORD:?}"
: "${INGEST_USERNAME:?}" "${INGEST_PASSWORD:?}" "${API_USERNAME:?}" "${API_PASSWORD:?}"
PORT="${BOOTSTRAP_PORT:-11883}"
DYNSEC="$DATA_DIR/dynamic-security.json"
WORK="$(mktemp -d)"

if [ ! -s "$DYNSEC" ]; then
  echo "bootstrap: creating $DYNSEC"
  mosquitto_ctrl dynsec init "$DYNSEC" "$ADMIN_USERNAME" "$ADMIN_PASSWORD" >/dev/null
fi

cat >"$WORK/bootstrap.conf" <<CONF
${BOOTSTRAP_USER:+user $BOOTSTRAP_USER}
per_listener_settings false
allow_anonymous false
persistence false
listener $PORT 127.0.0.1
plugin $PLUGIN
plugin_opt_config_file $DYNSEC
log_dest stderr
log_type error
CONF
mosquitto -c "$WORK/bootstrap.conf" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$WORK"' EXIT

ctl() { mosquitto_ctrl -h 127.0.0.1 -p "$PORT" -u "$ADMIN_USERNAME" -P "$ADMIN_PASSWORD" dynsec "$@"; }
# ctl that tolerates "already exists" (the state persists across restarts).
ensure() { out="$(ctl "$@" 2>&1)" || case "$out" in *"already exists"*|*"already"*) ;; *) echo "$out" >&2; return 1 ;; esac; }

i=0
until ctl listRoles >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -ge 100 ]; then
    echo "bootstrap: cannot log in to the bootstrap broker as $ADMIN_USERNAME" >&2
    exit 1
  fi
  sleep 0.1
done

# ingest: the shared subscription only. Mosquitto checks a shared subscription against the
# whole $share/... filter, so that is the pattern the role must allow.
ensure createRole iot-ingest
ensure addRoleACL iot-ingest subscribePattern '$share/ingest/devices/+/telemetry' allow
ensure addRoleACL iot-ingest publishClientReceive 'devices/+/telemetry' allow
# The restart guard (deploy/mosquitto/restart-guard.sh, services/ingest): a replica leaving on
# SIGTERM gives the guard session a plain subscription, so that telemetry is queued, not
# dropped, while no shared subscription exists.
ensure addRoleACL iot-ingest subscribePattern 'devices/+/telemetry' allow

# api: live streams of telemetry, downlink commands, and device provisioning through the
# dynamic-security control topic.
ensure createRole iot-api
ensure addRoleACL iot-api subscribePattern 'devices/+/telemetry' allow
ensure addRoleACL iot-api publishClientReceive 'devices/+/telemetry' allow
ensure addRoleACL iot-api publishClientSend 'devices/+/commands' allow
ensure addRoleACL iot-api publishClientSend '$CONTROL/dynamic-security/v1' allow
ensure addRoleACL iot-api subscribePattern '$CONTROL/dynamic-security/v1/response' allow
ensure addRoleACL iot-api publishClientReceive '$CONTROL/dynamic-security/v1/response' allow

for who in ingest api; do
  if [ "$who" = ingest ]; then user="$INGEST_USERNAME"; pass="$INGEST_PASSWORD"; else user="$API_USERNAME"; pass="$API_PASSWORD"; fi
  ensure createClient "$user" -p "$pass"
  ctl setClientPassword "$user" "$pass" >/dev/null 2>&1
  ensure addClientRole "$user" "iot-$who"
  ctl getClient "$user" 2>/dev/null | grep -q "iot-$who" || { echo "bootstrap: $user lacks role iot-$who" >&2; exit 1; }
done

# The plugin writes the file on every change; make sure it could (a volume the broker's
# user cannot write would otherwise lose every provisioned device at the next restart).
kill "$broker"
wait "$broker" 2>/dev/null || true
for user in "$INGEST_USERNAME" "$API_USERNAME"; do
  grep -q "\"$user\"" "$DYNSEC" || { echo "bootstrap: $user was not saved to $DYNSEC (is it writable?)" >&2; exit 1; }
done
echo "bootstrap: service accounts $INGEST_USERNAME and $API_USERNAME ready"
