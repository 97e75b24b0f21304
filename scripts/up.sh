#!/usr/bin/env bash
# Runs the whole system locally: dependencies, the project's Mosquitto, every service and
# the device simulator. Ctrl-C (or SIGTERM) stops what this script started, and only that.
#
#   scripts/up.sh              build, start, print where everything listens, run until Ctrl-C
#   scripts/up.sh --no-build   use the binaries already built
#   scripts/up.sh --no-sim     don't start the simulator
#   scripts/up.sh --check      start everything, wait until ready and until simulated
#                              readings are in MariaDB, then stop (smoke test; exit status)
#
# State (broker persistence and accounts, logs, the local admin's password, the simulated
# devices' credentials) lives in $IOT_STATE_DIR (default .local/ in the repository).
# Logs: .local/logs/<service>.log. The broker refuses anonymous clients: devices connect with
# credentials from the api (see README.md, "Adding a device").
#
# Environment:
#   UP_MQTT_PORT      broker port (default 1883 when nothing listens there, else 1884 or up)
#   UP_MQTT_TLS=1     also a TLS listener (UP_MQTT_TLS_PORT, default 8883 or up) with
#                     DEVELOPMENT certificates (scripts/dev-ca.sh); services and sim use it
#   IOT_DB_NAME       MariaDB database for storage (default iot)
#   SIM_DEVICES, SIM_RATE and any other SIM_*/STORAGE_*/SESSION_*/INGEST_*/API_* variable
#                     already set is passed through; the script sets only the addresses.
#   UP_KEEP_DEPS=1    keep private MariaDB/Redis started by this run (default: stopped too)
#   IOT_ADMIN_USER    name of the local admin (default admin)
set -euo pipefail
# The whole script is one block, parsed before it runs: editing the file while it runs
# (a long test run, an up.sh session) cannot change what the running instance executes.
{
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

build=1 sim=1 check=0
for arg in "$@"; do
    case "$arg" in
    --no-build) build=0 ;;
    --no-sim) sim=0 ;;
    --check) check=1 ;;
    -h | --help)
        sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "up.sh: unknown argument $arg (see --help)" >&2
        exit 2
        ;;
    esac
done

say() { printf 'up: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------
# Dependencies

DEPS_SKIP_TOOLS=1
# shellcheck source=lib/deps.sh
source scripts/lib/deps.sh
# shellcheck source=lib/mosquitto.sh
source scripts/lib/mosquitto.sh
command -v cargo >/dev/null 2>&1 || PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust with rustup (https://rustup.rs)"
    exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
    deps_apt_install curl
fi

state="$IOT_STATE_DIR"
logs="$state/logs"
mkdir -p "$logs"

db_name="${IOT_DB_NAME:-iot}"
mysql_client="$(deps_find_bin mariadb || deps_find_bin mysql)"
mysql() { "$mysql_client" --no-defaults --skip-ssl -h"$IOT_MYSQL_HOST" -P"$IOT_MYSQL_PORT" -uroot "$@"; }
mysql -e "CREATE DATABASE IF NOT EXISTS \`$db_name\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
database_url="mysql://root@$IOT_MYSQL_HOST:$IOT_MYSQL_PORT/$db_name"

# ---------------------------------------------------------------------------------------
# Processes started by this script, stopped in reverse order on exit.

declare -a names=() pids=()
stopping=0

stop_all() {
    ((stopping)) && return 0
    stopping=1
    local i pid name n
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[i]}" name="${names[i]}"
        kill -0 "$pid" 2>/dev/null || continue
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        # ingest commits and acknowledges what it holds before exiting: give it time.
        for ((n = 0; n < 300; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within 30 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${DEPS_STARTED:-}" && -z "${UP_KEEP_DEPS:-}" ]]; then
        # shellcheck disable=SC2086
        deps_stop $DEPS_STARTED
    fi
}
trap stop_all EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# start NAME COMMAND... : runs COMMAND in a session of its own (so that the terminal's
# Ctrl-C reaches only this script, which then stops everything in order), output to a log.
start() {
    local name="$1"
    shift
    : >"$logs/$name.log"
    setsid "$@" </dev/null >>"$logs/$name.log" 2>&1 &
    names+=("$name")
    pids+=("$!")
}

# port_for VAR DEFAULT : VAR=the default port when nothing listens there, else the next
# free one not already handed out by this script.
declare -a used_ports=()
port_for() {
    local _pf_port="$2" _pf_used _pf_taken
    while true; do
        _pf_port="$(deps_pick_port "$_pf_port")"
        _pf_taken=0
        for _pf_used in "${used_ports[@]}"; do
            [[ "$_pf_used" == "$_pf_port" ]] && _pf_taken=1
        done
        ((_pf_taken)) || break
        _pf_port=$((_pf_port + 1))
    done
    used_ports+=("$_pf_port")
    printf -v "$1" '%s' "$_pf_port"
}

# wait_http NAME URL PID [TIMEOUT_S] : until URL answers 2xx; fails if PID exits first.
wait_http() {
    local name="$1" url="$2" pid="$3" timeout="${4:-60}" i
    for ((i = 0; i < timeout * 5; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited during start-up; last lines of $logs/$name.log:"
            tail -n 25 "$logs/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
    say "$name not ready at $url after ${timeout}s; last lines of $logs/$name.log:"
    tail -n 25 "$logs/$name.log" >&2
    return 1
}

# ---------------------------------------------------------------------------------------
# The project's broker (deploy/mosquitto/mosquitto.conf). A broker already on 1883 is
# somebody else's configuration, so ours takes a port of its own then.

if [[ -n "${UP_MQTT_PORT:-}" ]]; then
    mqtt_port="$UP_MQTT_PORT"
else
    port_for mqtt_port 1883
fi
mq_dir="$state/mosquitto"
# Broker security (issue 6): the deployed configuration with the dynamic-security plugin
# (deploy/mosquitto/security/dynamic-security.conf), bootstrapped by the same script as the
# Helm chart's init container (deploy/mosquitto/dynsec-bootstrap.sh): an administrator and
# the service accounts of ingest and api, whose passwords are generated once and kept in
# $mq_dir/accounts.env (mode 600). No anonymous access. Devices, the simulator's included,
# get their credentials from the api (below). UP_MQTT_TLS=1 adds the TLS listener
# (deploy/mosquitto/security/tls.conf) on UP_MQTT_TLS_PORT (default 8883, or a free port)
# with DEVELOPMENT certificates from scripts/dev-ca.sh (.local/dev-ca/); ingest, api and
# the simulator then connect over TLS.
mkdir -p "$mq_dir"
if [[ ! -s "$mq_dir/accounts.env" ]]; then
    (
        umask 077
        for who in ADMIN INGEST API; do
            printf 'MQ_%s_PASSWORD=%s\n' "$who" "$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)"
        done >"$mq_dir/accounts.env"
    )
fi
# shellcheck disable=SC1091
source "$mq_dir/accounts.env"
mq_ingest_user=iot-ingest mq_api_user=iot-api
if ! ADMIN_USERNAME=admin ADMIN_PASSWORD="$MQ_ADMIN_PASSWORD" INGEST_USERNAME="$mq_ingest_user" \
    INGEST_PASSWORD="$MQ_INGEST_PASSWORD" API_USERNAME="$mq_api_user" API_PASSWORD="$MQ_API_PASSWORD" \
    mosquitto_dynsec_bootstrap "$mq_dir" >"$logs/mosquitto-bootstrap.log" 2>&1; then
    say "the broker's dynamic-security bootstrap failed; $logs/mosquitto-bootstrap.log:"
    tail -n 20 "$logs/mosquitto-bootstrap.log" >&2
    exit 1
fi
mq_extra_conf=("$(mosquitto_security_conf "$mq_dir")")
mq_tls=0 mqtt_client_port="$mqtt_port"
declare -a ingest_tls_env=() api_tls_env=() sim_tls_env=()
if [[ "${UP_MQTT_TLS:-0}" == 1 ]]; then
    mq_tls=1
    if [[ -n "${UP_MQTT_TLS_PORT:-}" ]]; then mqtt_tls_port="$UP_MQTT_TLS_PORT"; else port_for mqtt_tls_port 8883; fi
    dev_ca="$(scripts/dev-ca.sh "$state/dev-ca")"
    mq_extra_conf+=("$(mosquitto_tls_conf "$mq_dir" "$mqtt_tls_port" "$dev_ca")")
    mqtt_client_port="$mqtt_tls_port"
    ingest_tls_env=(INGEST_MQTT_TLS=true INGEST_MQTT_CA_FILE="$dev_ca/ca.crt")
    api_tls_env=(API_MQTT_TLS=true API_MQTT_CA_FILE="$dev_ca/ca.crt")
    sim_tls_env=(SIM_MQTT_TLS=true SIM_MQTT_CA_FILE="$dev_ca/ca.crt")
fi
mosquitto_render_config "$mq_dir" "$mqtt_port" "${mq_extra_conf[@]}"
# Through the restart guard, as the chart starts it (deploy/mosquitto/restart-guard.sh): what
# devices publish after a restart of this broker, before ingest has subscribed again, is
# queued for ingest instead of dropped (Mosquitto 2.0 does not persist shared subscriptions).
# The guard's session is armed on a private anonymous broker; ingest drains it with its own
# account (the dynamic-security broker delivers the queued messages to it).
port_for mq_guard_port 11884
start mosquitto env MOSQUITTO="$MOSQUITTO_BIN" GUARD_PORT="$mq_guard_port" \
    sh "$repo/deploy/mosquitto/restart-guard.sh" exec "$mq_dir/mosquitto.conf"
if ! mosquitto_wait_port "$mqtt_port" 10 || { ((mq_tls)) && ! mosquitto_wait_port "$mqtt_tls_port" 10; }; then
    say "mosquitto did not listen on $mqtt_port${mqtt_tls_port:+/$mqtt_tls_port}; last lines of $logs/mosquitto.log:"
    tail -n 20 "$logs/mosquitto.log" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------
# Build

# Service packages (= binary names) present in this checkout.
declare -a service_pkgs=()
for name in iot-storage iot-session iot-ingest iot-api iot-sim; do
    grep -qs "^name = \"$name\"" services/*/Cargo.toml && service_pkgs+=("$name")
done
declare -A broken=()
if ((build)); then
    say "cargo build --workspace --bins"
    if ! cargo build --workspace --bins; then
        # Part of the tree does not compile: run what does, and say what is missing
        # (never a stale binary of a package that failed to build).
        say "the workspace build failed; building each service on its own"
        for name in "${service_pkgs[@]}"; do
            cargo build -q -p "$name" --bins 2>/dev/null || {
                broken[$name]=1
                say "WARNING: $name does not build; it is not started (see: cargo build -p $name)"
            }
        done
    fi
fi
target_dir="${CARGO_TARGET_DIR:-}"
if [[ -z "$target_dir" ]]; then
    target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
fi
bin_dir="${target_dir:-$repo/target}/debug"
have() { [[ -z "${broken[$1]:-}" && -x "$bin_dir/$1" ]]; }

# ---------------------------------------------------------------------------------------
# Services. Addresses are chosen here (defaults from the README when free) and passed as
# the services' own environment variables (see each services/*/src config).

port_for p 50051 && storage_grpc="127.0.0.1:$p"
port_for p 9102 && storage_ops="127.0.0.1:$p"
port_for p 50052 && session_grpc="127.0.0.1:$p"
port_for p 9103 && session_ops="127.0.0.1:$p"
port_for p 9101 && ingest_ops="127.0.0.1:$p"
port_for p 8080 && api_http="127.0.0.1:$p"
port_for p 9100 && api_ops="127.0.0.1:$p"

declare -a table=()
row() { table+=("$(printf '%-10s %-34s %s' "$1" "$2" "$3")"); }
declare -a ready_checks=() # "name|url|pid"

if have iot-storage; then
    start storage env STORAGE_GRPC_ADDR="$storage_grpc" STORAGE_METRICS_ADDR="$storage_ops" \
        STORAGE_DATABASE_URL="$database_url" "$bin_dir/iot-storage"
    row storage "gRPC $storage_grpc" "http://$storage_ops/{healthz,readyz,metrics}"
    ready_checks+=("storage|http://$storage_ops/readyz|${pids[-1]}")
fi
if have iot-session; then
    start session env SESSION_GRPC_ADDR="$session_grpc" SESSION_METRICS_ADDR="$session_ops" \
        SESSION_REDIS_URL="$TEST_REDIS_URL" "$bin_dir/iot-session"
    row session "gRPC $session_grpc" "http://$session_ops/{healthz,readyz,metrics}"
    ready_checks+=("session|http://$session_ops/readyz|${pids[-1]}")
fi
if have iot-ingest; then
    # A stable client id: the broker keeps this replica's session (and what is queued for
    # it) across restarts of up.sh.
    start ingest env INGEST_METRICS_ADDR="$ingest_ops" INGEST_MQTT_HOST=127.0.0.1 \
        INGEST_MQTT_PORT="$mqtt_client_port" INGEST_CLIENT_ID="${INGEST_CLIENT_ID:-ingest-local-0}" \
        INGEST_MQTT_USERNAME="$mq_ingest_user" INGEST_MQTT_PASSWORD="$MQ_INGEST_PASSWORD" "${ingest_tls_env[@]}" \
        INGEST_STORAGE_URL="http://$storage_grpc" "$bin_dir/iot-ingest"
    row ingest "mqtt subscriber (127.0.0.1:$mqtt_client_port)" "http://$ingest_ops/{healthz,readyz,metrics}"
    ready_checks+=("ingest|http://$ingest_ops/readyz|${pids[-1]}")
fi
if have iot-api; then
    start api env API_LISTEN_ADDR="$api_http" API_METRICS_ADDR="$api_ops" \
        API_STORAGE_URL="http://$storage_grpc" API_SESSION_URL="http://$session_grpc" \
        API_MQTT_HOST=127.0.0.1 API_MQTT_PORT="$mqtt_client_port" \
        API_MQTT_USERNAME="$mq_api_user" API_MQTT_PASSWORD="$MQ_API_PASSWORD" \
        API_MQTT_ADMIN_USERNAME="$mq_api_user" API_MQTT_ADMIN_PASSWORD="$MQ_API_PASSWORD" "${api_tls_env[@]}" \
        API_PUBLIC_MQTT_HOST=127.0.0.1 API_PUBLIC_MQTT_PORT="$mqtt_client_port" "$bin_dir/iot-api"
    row api "HTTP http://$api_http/" "http://$api_ops/{healthz,readyz,metrics}"
    ready_checks+=("api|http://$api_ops/readyz|${pids[-1]}")
fi
row mosquitto "mqtt://127.0.0.1:$mqtt_port" "(deploy/mosquitto + security/, accounts in ${mq_dir#"$repo"/}/accounts.env)"
((mq_tls)) && row mosquitto "mqtts://127.0.0.1:$mqtt_tls_port" "(DEVELOPMENT CA: ${dev_ca#"$repo"/}/ca.crt)"
row mariadb "${database_url}" "($IOT_MYSQL_KIND)"
row redis "$TEST_REDIS_URL" "($IOT_REDIS_KIND)"

for check_spec in "${ready_checks[@]}"; do
    IFS='|' read -r name url pid <<<"$check_spec"
    wait_http "$name" "$url" "$pid" 90 || exit 1
    say "$name ready"
done

# ---------------------------------------------------------------------------------------
# --- HOOK: first-admin bootstrap (issue 5, api) --------------------------------------
# The first user registered through the api becomes admin. The password is generated once
# and kept in $IOT_STATE_DIR/admin.env (mode 600); every start prints the login line.
login_line=""
bootstrap_admin() {
    local file="$state/admin.env" user password code
    if [[ -f "$file" ]]; then
        # shellcheck disable=SC1090
        source "$file"
    fi
    user="${IOT_ADMIN_USER:-admin}"
    password="${IOT_ADMIN_PASSWORD:-$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)}"
    (
        umask 077
        printf 'IOT_ADMIN_USER=%q\nIOT_ADMIN_PASSWORD=%q\n' "$user" "$password" >"$file"
    )
    local body
    body="$(printf '{"username":"%s","password":"%s"}' "$user" "$password")"
    code="$(curl -sS -o "$logs/bootstrap.out" -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/json' -d "$body" "http://$api_http/api/v1/users" || echo 000)"
    case "$code" in
    201) say "created the local admin '$user' (password in ${file#"$repo"/})" ;;
    404 | 405)
        say "the api has no POST /api/v1/users yet; no admin created"
        return 0
        ;;
    *)
        # Users exist already: the admin from an earlier run, if the saved password works.
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
            -H 'Content-Type: application/json' -d "$body" "http://$api_http/api/v1/sessions" || echo 000)"
        if [[ "$code" != 201 && "$code" != 200 ]]; then
            say "WARNING: database '$db_name' already has users and '$user' cannot log in with the password in ${file#"$repo"/}"
            say "         (use another IOT_DB_NAME for a fresh database, or fix the password in that file)"
            return 0
        fi
        ;;
    esac
    login_line="Log in at http://$api_http/ as $user / $password"
}
if have iot-api; then
    bootstrap_admin
fi
# --- end of hook ----------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# Simulator: its devices are created through the api as the local admin (existing ones get
# new credentials), so the broker knows their passwords; iot-sim reads them from a file
# (mode 600). Started after the admin so that the admin is the first user.
readings_count() {
    mysql -N -e "SELECT COUNT(*) FROM \`$db_name\`.readings" 2>/dev/null || echo "?"
}
# provision_sim_devices FILE : writes `device_id username password` lines for the simulator.
provision_sim_devices() {
    local file="$1" jar="$state/.up-session" out="$state/.up-provision.out" n="${SIM_DEVICES:-5}" i id code password
    local prefix="${SIM_DEVICE_PREFIX:-sim-}" api="http://$api_http/api/v1"
    # shellcheck disable=SC1091
    [[ -f "$state/admin.env" ]] && source "$state/admin.env"
    (umask 077 && : >"$jar" && : >"$out" && : >"$file.tmp")
    code="$(curl -sS -c "$jar" -o /dev/null -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
        -d "$(printf '{"username":"%s","password":"%s"}' "${IOT_ADMIN_USER:-admin}" "${IOT_ADMIN_PASSWORD:-}")" "$api/sessions" || echo 000)"
    if [[ "$code" != 201 && "$code" != 200 ]]; then
        say "cannot log in to the api as the local admin (HTTP $code): no simulated devices"
        return 1
    fi
    for ((i = 0; i < n; i++)); do
        printf -v id '%s%04d' "$prefix" "$i"
        code="$(curl -sS -b "$jar" -o "$out" -w '%{http_code}' --max-time 15 -H 'Content-Type: application/json' \
            -d "{\"device_id\":\"$id\",\"name\":\"Simulated $id\",\"attributes\":{\"simulated\":true}}" "$api/devices" || echo 000)"
        if [[ "$code" == 409 ]]; then # from an earlier run: new credentials
            code="$(curl -sS -b "$jar" -o "$out" -w '%{http_code}' --max-time 15 -X POST "$api/devices/$id/credentials" || echo 000)"
        fi
        password="$(sed -n 's/.*"password":"\([^"]*\)".*/\1/p' "$out")"
        if [[ "$code" != 201 && "$code" != 200 || -z "$password" ]]; then
            say "could not provision simulated device $id (HTTP $code): $(head -c 300 "$out")"
            rm -f "$out" "$jar" "$file.tmp"
            return 1
        fi
        printf '%s %s %s\n' "$id" "$id" "$password" >>"$file.tmp"
    done
    rm -f "$out" "$jar"
    mv "$file.tmp" "$file"
}
readings_before="$(readings_count)"
[[ "$readings_before" =~ ^[0-9]+$ ]] || readings_before=0
sim_started=0
if ((sim)) && have iot-sim && have iot-api; then
    if provision_sim_devices "$state/sim-credentials.txt"; then
        start sim env SIM_MQTT_HOST=127.0.0.1 SIM_MQTT_PORT="$mqtt_client_port" "${sim_tls_env[@]}" \
            SIM_CREDENTIALS_FILE="$state/sim-credentials.txt" SIM_RATE="${SIM_RATE:-1}" "$bin_dir/iot-sim"
        row sim "${SIM_DEVICES:-5} devices x ${SIM_RATE:-1} msg/s -> devices/+/telemetry" "(credentials in ${state#"$repo"/}/sim-credentials.txt)"
        sim_started=1
    fi
elif ((sim)) && have iot-sim; then
    say "the simulator needs the api to provision its devices; not started"
fi

# ---------------------------------------------------------------------------------------
{
    echo
    printf '%-10s %-34s %s\n' SERVICE LISTENS OPS
    printf '%s\n' "${table[@]}"
    echo
    echo "logs: tail -f ${logs#"$repo"/}/*.log"
    [[ -n "$login_line" ]] && echo "$login_line"
    ((check)) || echo "Ctrl-C stops everything started here."
    echo
} >&2

if ((check)); then
    # Smoke test: telemetry from the simulator must reach MariaDB through broker and ingest.
    if ((sim)) && have iot-sim && have iot-ingest && have iot-storage; then
        ((sim_started)) || {
            say "check: the simulator could not be started"
            exit 1
        }
        for ((i = 0; i < 60; i++)); do
            n="$(readings_count)"
            if [[ "$n" =~ ^[0-9]+$ ]] && ((n > readings_before)); then
                say "check: $((n - readings_before)) new readings in MariaDB ($db_name.readings, $n in all)"
                exit 0
            fi
            sleep 1
        done
        say "check: no readings in $db_name.readings after 60 s"
        exit 1
    fi
    say "check: all started services are ready"
    exit 0
fi

# Run until interrupted, or until a service dies; show that data is flowing.
last_report=$SECONDS
while true; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            wait "${pids[i]}" 2>/dev/null && rc=0 || rc=$?
            if [[ "${names[i]}" == sim ]]; then
                say "sim exited (status $rc); the rest keeps running"
                unset 'pids[i]' 'names[i]'
                pids=("${pids[@]}") names=("${names[@]}")
                break
            fi
            say "${names[i]} exited (status $rc); last lines of $logs/${names[i]}.log:"
            tail -n 25 "$logs/${names[i]}.log" >&2
            exit 1
        fi
    done
    if ((SECONDS - last_report >= 30)) && have iot-storage; then
        say "readings in MariaDB: $(readings_count)"
        last_report=$SECONDS
    fi
    sleep 1 &
    wait $! || true
done
exit
}
