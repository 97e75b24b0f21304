#!/usr/bin/env bash
# Dependencies for tests and local runs: MariaDB, Redis, Mosquitto and the build tools.
#
#   source scripts/lib/deps.sh      ensure everything and export where it is (see below)
#   scripts/lib/deps.sh env         the same, printed as `export` lines: eval "$(scripts/lib/deps.sh env)"
#   scripts/lib/deps.sh status      what is in use (standard or private instances)
#   scripts/lib/deps.sh stop        stop the private instances (never the machine's own services)
#
# For MariaDB and Redis the machine's standard instances are used when they answer
# (MariaDB at 127.0.0.1:3306 as root without a password, Redis at 127.0.0.1:6379).
# Otherwise the Debian packages are installed if their binaries are missing and PRIVATE
# instances are started on free ports with their data under $IOT_STATE_DIR (default .local/
# in the repository, git-ignored). A private instance started by an earlier run is reused
# while it is alive; it keeps running after the script ends (`deps.sh stop` ends it).
# System services are never started, stopped or reconfigured by this script.
#
# Mosquitto is only made available as a binary (MOSQUITTO_BIN): tests start brokers of
# their own with their own configuration, and scripts/up.sh starts the project's broker with
# deploy/mosquitto/mosquitto.conf. A broker answering on 1883 is somebody else's
# configuration and is never used.
#
# Exported after `source`:
#   TEST_MYSQL_URL   mysql://root@127.0.0.1:PORT      (server URL, no database)
#   TEST_REDIS_URL   redis://127.0.0.1:PORT
#   MOSQUITTO_BIN    path of the mosquitto binary (>= DEPS_MOSQUITTO_MIN when it can be had,
#                    see deps_ensure_mosquitto)
#   IOT_MYSQL_HOST/IOT_MYSQL_PORT, IOT_REDIS_PORT     the same, split up (for up.sh)
#   IOT_TEST_RUNNER  "nextest" or "cargo-test"
#   IOT_STATE_DIR    scratch state directory
#   DEPS_STARTED     space-separated private instances started by THIS run (mariadb redis)
#
# Knobs (environment):
#   TEST_MYSQL_URL / TEST_REDIS_URL   use these servers (must answer) instead of probing
#   DEPS_MYSQL_PROBE_PORT (3306), DEPS_REDIS_PROBE_PORT (6379)   where the "standard" ones are
#   DEPS_FORCE_PRIVATE=1              skip the standard instances, always use private ones
#   DEPS_SKIP_TOOLS=1                 don't check cargo/nextest/cc (services only)
#   DEPS_NEXTEST_FROM_SOURCE=1        if cargo-nextest is missing and the prebuilt binary
#                                     cannot be fetched, build it (slow: minutes on 2 cores)
#   IOT_STATE_DIR                     scratch directory (default <repo>/.local)
#   MOSQUITTO_BIN                     use this broker; DEPS_MOSQUITTO_SYSTEM=1: the machine's, whatever its version
#
# Written for bash with `set -euo pipefail` in the caller; every function returns non-zero
# (or exits, when executed directly) with a message on stderr when something is missing.

_deps_self="${BASH_SOURCE[0]}"
_deps_repo="$(cd "$(dirname "$_deps_self")/../.." && pwd)"

deps_log() { printf 'deps: %s\n' "$*" >&2; }
deps_die() {
    printf 'deps: ERROR: %s\n' "$*" >&2
    return 1
}

# `command -v` misses /usr/sbin for non-root users on Debian, where mariadbd and
# mosquitto live.
deps_find_bin() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [[ -x "$dir/$name" ]]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 1
}

# Something accepts TCP connections on 127.0.0.1:$1.
deps_port_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# First port from $1 upwards on which nothing listens.
deps_pick_port() {
    local port="$1" tries=0
    while deps_port_listening "$port"; do
        port=$((port + 1))
        tries=$((tries + 1))
        if ((tries > 200)); then
            deps_die "no free port found from $1 upwards"
            return 1
        fi
    done
    echo "$port"
}

# The process with pid $1 is alive and its command line contains $2.
deps_pid_is() {
    local pid="$1" want="$2"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$want"
}

# ---------------------------------------------------------------------------------------
# Packages

_DEPS_APT_UPDATED="${_DEPS_APT_UPDATED:-}"

# deps_apt_install PKG... : install Debian packages (sudo only when not root, never prompting).
deps_apt_install() {
    (($# > 0)) || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        deps_die "missing packages ($*) and no apt-get here: install them by hand"
        return 1
    fi
    local -a sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            deps_die "missing packages ($*); not root and no password-less sudo: run 'sudo apt-get install -y $*'"
            return 1
        fi
    fi
    if [[ -z "$_DEPS_APT_UPDATED" ]]; then
        deps_log "apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || {
            deps_die "apt-get update failed"
            return 1
        }
        _DEPS_APT_UPDATED=1
    fi
    deps_log "apt-get install -y $*"
    # Debian's postinst may start a packaged service (e.g. mariadb on 3306 with unix_socket
    # auth for root). We neither rely on that nor stop it: the probes below decide.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || {
        deps_die "apt-get install $* failed"
        return 1
    }
}

# deps_ensure_binary BIN PACKAGE : install PACKAGE when BIN is not found; prints BIN's path.
deps_ensure_binary() {
    deps_find_bin "$1" && return 0
    deps_apt_install "$2" >&2 || return 1
    deps_find_bin "$1" || {
        deps_die "$1 still missing after installing $2"
        return 1
    }
}

# ---------------------------------------------------------------------------------------
# MariaDB

# deps_mysql_answers HOST PORT [USER [PASSWORD]]
deps_mysql_answers() {
    local host="$1" port="$2" user="${3:-root}" password="${4:-}" client
    client="$(deps_find_bin mariadb || deps_find_bin mysql)" || return 1
    # --skip-ssl: newer clients (11.4+) otherwise insist on verifying a certificate that a
    # local test server does not have.
    MYSQL_PWD="$password" timeout 10 "$client" --no-defaults --skip-ssl --connect-timeout=3 \
        -h"$host" -P"$port" -u"$user" -e 'select 1' >/dev/null 2>&1
}

# Sets _u_user _u_pass _u_host _u_port from mysql://user[:pass]@host[:port][/db]
_deps_parse_mysql_url() {
    local rest="${1#mysql://}" auth hostport
    rest="${rest%%/*}"
    if [[ "$rest" == *@* ]]; then
        auth="${rest%@*}"
        hostport="${rest##*@}"
    else
        auth="root"
        hostport="$rest"
    fi
    _u_user="${auth%%:*}"
    _u_pass=""
    [[ "$auth" == *:* ]] && _u_pass="${auth#*:}"
    _u_host="${hostport%%:*}"
    _u_port=3306
    [[ "$hostport" == *:* ]] && _u_port="${hostport##*:}"
    return 0
}

deps_mariadb_private_dir() { echo "$IOT_STATE_DIR/mariadb"; }

deps_mariadb_private_alive() {
    local dir port
    dir="$(deps_mariadb_private_dir)"
    [[ -f "$dir/port" && -f "$dir/mariadbd.pid" ]] || return 1
    port="$(cat "$dir/port")"
    deps_pid_is "$(cat "$dir/mariadbd.pid" 2>/dev/null)" mariadbd || deps_pid_is "$(cat "$dir/mariadbd.pid" 2>/dev/null)" mysqld || return 1
    deps_mysql_answers 127.0.0.1 "$port"
}

deps_mariadb_start_private() {
    local dir mariadbd installdb port sock user pid i
    dir="$(deps_mariadb_private_dir)"
    mkdir -p "$dir"
    mariadbd="$(deps_find_bin mariadbd || deps_find_bin mysqld)" || {
        deps_die "mariadbd not found"
        return 1
    }
    installdb="$(deps_find_bin mariadb-install-db || deps_find_bin mysql_install_db)" || {
        deps_die "mariadb-install-db not found"
        return 1
    }
    user="$(id -un)"
    if [[ ! -d "$dir/data/mysql" ]]; then
        deps_log "initialising a private MariaDB data directory in $dir/data"
        rm -rf "$dir/data"
        # normal auth: root@localhost/127.0.0.1 without a password, as the tests expect.
        "$installdb" --no-defaults --datadir="$dir/data" --user="$user" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 || {
            tail -n 30 "$dir/install.log" >&2
            deps_die "mariadb-install-db failed (log: $dir/install.log)"
            return 1
        }
    fi
    port="$(deps_pick_port "${DEPS_PRIVATE_MYSQL_PORT:-13306}")" || return 1
    sock="$dir/mariadbd.sock"
    # A unix socket path must fit in 108 bytes; deep CI checkouts may not.
    if ((${#sock} > 100)); then
        sock="${TMPDIR:-/tmp}/iot-mariadb-$(printf '%s' "$dir" | md5sum | cut -c1-12).sock"
    fi
    deps_log "starting a private MariaDB on 127.0.0.1:$port (data: $dir/data)"
    # Durability relaxed for tests (flush the log once a second rather than per commit);
    # enough connections for tests that each open a pool, in parallel.
    setsid "$mariadbd" --no-defaults --user="$user" --datadir="$dir/data" \
        --bind-address=127.0.0.1 --port="$port" --socket="$sock" \
        --pid-file="$dir/mariadbd.pid" --log-error="$dir/mariadbd.err" \
        --skip-name-resolve --max-connections=1000 \
        --innodb-flush-log-at-trx-commit=2 --innodb-buffer-pool-size=256M \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        </dev/null >>"$dir/mariadbd.out" 2>&1 {_DEPS_LOCK_FD}>&- &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        if deps_mysql_answers 127.0.0.1 "$port"; then
            echo "$port" >"$dir/port"
            # mariadbd writes its pid file itself; fall back to the launched pid.
            [[ -s "$dir/mariadbd.pid" ]] || echo "$pid" >"$dir/mariadbd.pid"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$dir/mariadbd.err" >&2 2>/dev/null || true
            deps_die "private MariaDB exited during start-up (log: $dir/mariadbd.err)"
            return 1
        fi
        sleep 0.1
    done
    deps_die "private MariaDB did not answer on port $port within 60 s (log: $dir/mariadbd.err)"
    return 1
}

deps_ensure_mariadb() {
    if [[ -n "${TEST_MYSQL_URL:-}" && -z "${_DEPS_MYSQL_FROM_US:-}" ]]; then
        _deps_parse_mysql_url "$TEST_MYSQL_URL"
        if deps_mysql_answers "$_u_host" "$_u_port" "$_u_user" "$_u_pass"; then
            deps_log "MariaDB: using TEST_MYSQL_URL=$TEST_MYSQL_URL"
            IOT_MYSQL_HOST="$_u_host" IOT_MYSQL_PORT="$_u_port" IOT_MYSQL_KIND=given
            return 0
        fi
        deps_die "TEST_MYSQL_URL=$TEST_MYSQL_URL does not answer (unset it to let this script find or start one)"
        return 1
    fi
    local probe="${DEPS_MYSQL_PROBE_PORT:-3306}" dir
    if [[ -z "${DEPS_FORCE_PRIVATE:-}" ]] && deps_mysql_answers 127.0.0.1 "$probe"; then
        deps_log "MariaDB: using the standard one on 127.0.0.1:$probe"
        IOT_MYSQL_HOST=127.0.0.1 IOT_MYSQL_PORT="$probe" IOT_MYSQL_KIND=standard
    else
        dir="$(deps_mariadb_private_dir)"
        if deps_mariadb_private_alive; then
            deps_log "MariaDB: reusing the private one on 127.0.0.1:$(cat "$dir/port")"
        else
            deps_mariadb_start_private || return 1
            DEPS_STARTED="${DEPS_STARTED:+$DEPS_STARTED }mariadb"
        fi
        IOT_MYSQL_HOST=127.0.0.1 IOT_MYSQL_PORT="$(cat "$dir/port")" IOT_MYSQL_KIND=private
    fi
    TEST_MYSQL_URL="mysql://root@$IOT_MYSQL_HOST:$IOT_MYSQL_PORT"
    _DEPS_MYSQL_FROM_US=1
}

# ---------------------------------------------------------------------------------------
# Redis

deps_redis_answers() {
    local host="$1" port="$2" cli
    cli="$(deps_find_bin redis-cli)" || return 1
    [[ "$(timeout 5 "$cli" -h "$host" -p "$port" ping 2>/dev/null)" == PONG ]]
}

deps_redis_private_dir() { echo "$IOT_STATE_DIR/redis"; }

deps_redis_private_alive() {
    local dir
    dir="$(deps_redis_private_dir)"
    [[ -f "$dir/port" && -f "$dir/redis.pid" ]] || return 1
    deps_pid_is "$(cat "$dir/redis.pid" 2>/dev/null)" redis-server || return 1
    deps_redis_answers 127.0.0.1 "$(cat "$dir/port")"
}

deps_redis_start_private() {
    local dir server port i
    dir="$(deps_redis_private_dir)"
    mkdir -p "$dir"
    server="$(deps_find_bin redis-server)" || {
        deps_die "redis-server not found"
        return 1
    }
    port="$(deps_pick_port "${DEPS_PRIVATE_REDIS_PORT:-16379}")" || return 1
    deps_log "starting a private Redis on 127.0.0.1:$port"
    rm -f "$dir/redis.pid"
    # No persistence: test and development data only.
    "$server" --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
        </dev/null >/dev/null 2>&1 {_DEPS_LOCK_FD}>&- || {
        tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
        deps_die "redis-server failed to start (log: $dir/redis.log)"
        return 1
    }
    for ((i = 0; i < 200; i++)); do
        if deps_redis_answers 127.0.0.1 "$port"; then
            echo "$port" >"$dir/port"
            return 0
        fi
        sleep 0.05
    done
    deps_die "private Redis did not answer on port $port (log: $dir/redis.log)"
    return 1
}

deps_ensure_redis() {
    if [[ -n "${TEST_REDIS_URL:-}" && -z "${_DEPS_REDIS_FROM_US:-}" ]]; then
        local hp="${TEST_REDIS_URL#redis://}"
        hp="${hp##*@}"
        hp="${hp%%/*}"
        if deps_redis_answers "${hp%%:*}" "${hp##*:}"; then
            deps_log "Redis: using TEST_REDIS_URL=$TEST_REDIS_URL"
            IOT_REDIS_HOST="${hp%%:*}" IOT_REDIS_PORT="${hp##*:}" IOT_REDIS_KIND=given
            return 0
        fi
        deps_die "TEST_REDIS_URL=$TEST_REDIS_URL does not answer (unset it to let this script find or start one)"
        return 1
    fi
    local probe="${DEPS_REDIS_PROBE_PORT:-6379}" dir
    if [[ -z "${DEPS_FORCE_PRIVATE:-}" ]] && deps_redis_answers 127.0.0.1 "$probe"; then
        deps_log "Redis: using the standard one on 127.0.0.1:$probe"
        IOT_REDIS_HOST=127.0.0.1 IOT_REDIS_PORT="$probe" IOT_REDIS_KIND=standard
    else
        dir="$(deps_redis_private_dir)"
        if deps_redis_private_alive; then
            deps_log "Redis: reusing the private one on 127.0.0.1:$(cat "$dir/port")"
        else
            deps_redis_start_private || return 1
            DEPS_STARTED="${DEPS_STARTED:+$DEPS_STARTED }redis"
        fi
        IOT_REDIS_HOST=127.0.0.1 IOT_REDIS_PORT="$(cat "$dir/port")" IOT_REDIS_KIND=private
    fi
    TEST_REDIS_URL="redis://$IOT_REDIS_HOST:$IOT_REDIS_PORT"
    _DEPS_REDIS_FROM_US=1
}

# ---------------------------------------------------------------------------------------
# Packages for the three servers, installed only when a needed binary is missing.

deps_install_missing_servers() {
    local -a pkgs=()
    # The client is needed to probe; the server only when no standard instance answers.
    if ! deps_find_bin mariadb >/dev/null && ! deps_find_bin mysql >/dev/null; then
        pkgs+=(mariadb-server mariadb-client)
    elif ! deps_find_bin mariadbd >/dev/null && ! deps_find_bin mysqld >/dev/null; then
        if [[ -n "${DEPS_FORCE_PRIVATE:-}" ]] || { [[ -z "${TEST_MYSQL_URL:-}" ]] && ! deps_mysql_answers 127.0.0.1 "${DEPS_MYSQL_PROBE_PORT:-3306}"; }; then
            pkgs+=(mariadb-server)
        fi
    fi
    if ! deps_find_bin redis-cli >/dev/null; then
        pkgs+=(redis-server redis-tools)
    elif ! deps_find_bin redis-server >/dev/null; then
        if [[ -n "${DEPS_FORCE_PRIVATE:-}" ]] || { [[ -z "${TEST_REDIS_URL:-}" ]] && ! deps_redis_answers 127.0.0.1 "${DEPS_REDIS_PROBE_PORT:-6379}"; }; then
            pkgs+=(redis-server)
        fi
    fi
    deps_find_bin mosquitto >/dev/null || pkgs+=(mosquitto)
    deps_find_bin mosquitto_pub >/dev/null || pkgs+=(mosquitto-clients)
    deps_apt_install "${pkgs[@]}"
}

# Mosquitto before 2.0.13 mismanages its per-client outgoing quota: once a subscriber's queue
# overflowed under overload, the messages still queued for it are never sent (measured with
# Debian 12's 2.0.11: after the first "Outgoing messages are being dropped" the subscriber
# received 50 more messages in 3.5 s and then nothing, where 2.0.21 delivered the 30,000
# queued ones; see docs/benchmarks.md). Upstream's 2.0.13 changelog: "Various fixes around
# inflight quota management". The chart runs 2.0.22; tests, up.sh and the benchmarks
# should run what production runs.
DEPS_MOSQUITTO_MIN="${DEPS_MOSQUITTO_MIN:-2.0.13}"

# deps_mosquitto_version BIN : prints e.g. 2.0.21
deps_mosquitto_version() {
    "$1" -h 2>&1 | head -n 1 | sed -n 's/^mosquitto version \([0-9][0-9.]*\).*/\1/p'
}

# _deps_version_at_least HAVE WANT
_deps_version_at_least() {
    [[ -n "$1" && "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

# deps_mosquitto_backport : on Debian 12, unpacks Mosquitto from bookworm-backports (with the
# bookworm library it needs beyond those of Debian's own mosquitto package) into
# $IOT_STATE_DIR/mosquitto-backport without installing anything: the machine's mosquitto
# package and service stay as they are. Prints the path of the broker wrapper
# (bin/mosquitto; bin/ also holds mosquitto_ctrl, _pub, _sub, _passwd and lib/ the
# dynamic-security plugin). Reuses an earlier download.
deps_mosquitto_backport() {
    local dir="$IOT_STATE_DIR/mosquitto-backport" codename work libdir tool f
    if _deps_version_at_least "$(deps_mosquitto_version "$dir/bin/mosquitto" 2>/dev/null)" "$DEPS_MOSQUITTO_MIN"; then
        echo "$dir/bin/mosquitto"
        return 0
    fi
    codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
    [[ "$codename" == bookworm ]] && command -v apt-get >/dev/null && command -v dpkg >/dev/null || return 1
    work="$dir.tmp.$$"
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/debs/partial" "$work/root" "$work/bin"
    printf 'deb http://deb.debian.org/debian %s main\n' bookworm bookworm-backports >"$work/sources.list"
    local -a apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/debs" -o Debug::NoLocking=1)
    deps_log "fetching Mosquitto from Debian bookworm-backports into $dir (not installed system-wide)"
    if ! { apt-get "${apt[@]}" -qq update >"$work/apt.log" 2>&1 &&
        (cd "$work/debs" && apt-get "${apt[@]}" -qq download mosquitto/bookworm-backports \
            libmosquitto1/bookworm-backports mosquitto-clients/bookworm-backports libwebsockets17) >>"$work/apt.log" 2>&1; }; then
        deps_log "could not fetch it: $(tail -n 2 "$work/apt.log" | tr '\n' ' ')"
        rm -rf "$work"
        return 1
    fi
    for f in "$work"/debs/*.deb; do dpkg -x "$f" "$work/root"; done
    libdir="$(find "$work/root/usr/lib" -name 'libmosquitto.so.1' -printf '%h\n' | head -n 1)"
    [[ -n "$libdir" && -f "$libdir/mosquitto_dynamic_security.so" ]] || {
        deps_log "unexpected package contents in $work/root"
        rm -rf "$work"
        return 1
    }
    ln -s "${libdir#"$work/"}" "$work/lib"
    # Wrappers, so that the unpacked binaries find the unpacked libraries wherever $dir ends up.
    for tool in sbin/mosquitto bin/mosquitto_ctrl bin/mosquitto_pub bin/mosquitto_sub bin/mosquitto_passwd; do
        cat >"$work/bin/${tool#*/}" <<WRAPPER
#!/bin/sh
# Written by scripts/lib/deps.sh: Mosquitto from Debian bookworm-backports, unpacked (not installed).
here="\$(cd "\$(dirname "\$0")/.." && pwd)"
LD_LIBRARY_PATH="\$here/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/root/usr/$tool" "\$@"
WRAPPER
        chmod 755 "$work/bin/${tool#*/}"
    done
    chmod -R go+rX "$work"
    _deps_version_at_least "$(deps_mosquitto_version "$work/bin/mosquitto")" "$DEPS_MOSQUITTO_MIN" || {
        deps_log "the unpacked broker does not run: $("$work/bin/mosquitto" -h 2>&1 | head -n 2 | tr '\n' ' ')"
        rm -rf "$work"
        return 1
    }
    rm -rf "$work/lists" "$dir"
    mv "$work" "$dir"
    echo "$dir/bin/mosquitto"
}

# deps_ensure_mosquitto : MOSQUITTO_BIN as given, else the machine's mosquitto when it is at
# least DEPS_MOSQUITTO_MIN, else the bookworm-backports one (deps_mosquitto_backport), else
# the machine's old one with a warning. DEPS_MOSQUITTO_SYSTEM=1 takes the machine's as it is.
deps_ensure_mosquitto() {
    if [[ -z "${MOSQUITTO_BIN:-}" ]]; then
        local system version backport
        system="$(deps_find_bin mosquitto || true)"
        version="$([[ -n "$system" ]] && deps_mosquitto_version "$system" || true)"
        if [[ -n "${DEPS_MOSQUITTO_SYSTEM:-}" ]] || _deps_version_at_least "$version" "$DEPS_MOSQUITTO_MIN"; then
            MOSQUITTO_BIN="$system"
        elif backport="$(deps_mosquitto_backport)"; then
            MOSQUITTO_BIN="$backport"
        else
            deps_log "WARNING: Mosquitto ${version:-(none)} is older than $DEPS_MOSQUITTO_MIN, whose queue can stall under overload; using it anyway"
            MOSQUITTO_BIN="$system"
        fi
    fi
    if [[ -z "$MOSQUITTO_BIN" || ! -x "$MOSQUITTO_BIN" ]]; then
        deps_die "mosquitto not found (MOSQUITTO_BIN=${MOSQUITTO_BIN:-unset})"
        return 1
    fi
    deps_log "Mosquitto: $MOSQUITTO_BIN ($("$MOSQUITTO_BIN" -h 2>&1 | head -n 1 | sed 's/^mosquitto //'))"
}

# ---------------------------------------------------------------------------------------
# Build tools

deps_ensure_tools() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        deps_die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"
        return 1
    fi
    # rustc links through the system C compiler; nothing in the workspace needs pkg-config
    # (no C libraries: pure-Rust MySQL driver, vendored protoc).
    if ! command -v cc >/dev/null 2>&1; then
        deps_apt_install gcc libc6-dev || return 1
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        IOT_TEST_RUNNER=nextest
        return 0
    fi
    local bindir="${CARGO_HOME:-$HOME/.cargo}/bin"
    if command -v curl >/dev/null 2>&1; then
        deps_log "cargo-nextest missing: fetching the prebuilt binary into $bindir"
        mkdir -p "$bindir"
        if curl -LsSf --retry 2 https://get.nexte.st/latest/linux | tar zxf - -C "$bindir" 2>/dev/null &&
            cargo nextest --version >/dev/null 2>&1; then
            IOT_TEST_RUNNER=nextest
            return 0
        fi
    fi
    if [[ -n "${DEPS_NEXTEST_FROM_SOURCE:-}" ]]; then
        deps_log "building cargo-nextest from source (cargo install --locked)"
        if cargo install cargo-nextest --locked >&2; then
            IOT_TEST_RUNNER=nextest
            return 0
        fi
    fi
    deps_log "cargo-nextest unavailable: falling back to cargo test"
    IOT_TEST_RUNNER=cargo-test
}

# ---------------------------------------------------------------------------------------

deps_ensure() {
    IOT_STATE_DIR="${IOT_STATE_DIR:-$_deps_repo/.local}"
    mkdir -p "$IOT_STATE_DIR"
    # Two scripts starting at once (test.sh and up.sh) must not both start a private
    # instance; the lock is held for the duration of the checks only.
    # Daemons started below close this descriptor so that they do not keep the lock.
    exec {_DEPS_LOCK_FD}>"$IOT_STATE_DIR/deps.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 300 "$_DEPS_LOCK_FD" || deps_log "could not lock $IOT_STATE_DIR/deps.lock; continuing"
    fi
    local rc=0
    {
        deps_install_missing_servers &&
            deps_ensure_mariadb &&
            deps_ensure_redis &&
            deps_ensure_mosquitto &&
            if [[ -z "${DEPS_SKIP_TOOLS:-}" ]]; then deps_ensure_tools; else true; fi
    } || rc=$?
    exec {_DEPS_LOCK_FD}>&-
    ((rc == 0)) || return "$rc"
    export TEST_MYSQL_URL TEST_REDIS_URL MOSQUITTO_BIN IOT_STATE_DIR
    export IOT_MYSQL_HOST IOT_MYSQL_PORT IOT_MYSQL_KIND IOT_REDIS_HOST IOT_REDIS_PORT IOT_REDIS_KIND
    export IOT_TEST_RUNNER="${IOT_TEST_RUNNER:-}" DEPS_STARTED="${DEPS_STARTED:-}"
    export _DEPS_MYSQL_FROM_US _DEPS_REDIS_FROM_US
}

# deps_stop [mariadb] [redis] : stop private instances (all by default). The machine's own
# services are not ours and are never stopped.
deps_stop() {
    IOT_STATE_DIR="${IOT_STATE_DIR:-$_deps_repo/.local}"
    local -a which=("$@")
    ((${#which[@]} > 0)) || which=(mariadb redis)
    local what dir pidfile pattern pid i
    for what in "${which[@]}"; do
        case "$what" in
        mariadb) dir="$IOT_STATE_DIR/mariadb" pidfile=mariadbd.pid pattern=mariadbd ;;
        redis) dir="$IOT_STATE_DIR/redis" pidfile=redis.pid pattern=redis-server ;;
        *) continue ;;
        esac
        pid="$(cat "$dir/$pidfile" 2>/dev/null || true)"
        if deps_pid_is "$pid" "$pattern" || { [[ "$what" == mariadb ]] && deps_pid_is "$pid" mysqld; }; then
            deps_log "stopping private $what (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 300; i++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                deps_log "private $what did not stop in 30 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$dir/port" "$dir/$pidfile"
    done
}

deps_status() {
    IOT_STATE_DIR="${IOT_STATE_DIR:-$_deps_repo/.local}"
    if deps_mariadb_private_alive; then
        echo "mariadb: private on 127.0.0.1:$(cat "$IOT_STATE_DIR/mariadb/port") (pid $(cat "$IOT_STATE_DIR/mariadb/mariadbd.pid"))"
    else
        echo "mariadb: no private instance running"
    fi
    if deps_redis_private_alive; then
        echo "redis: private on 127.0.0.1:$(cat "$IOT_STATE_DIR/redis/port") (pid $(cat "$IOT_STATE_DIR/redis/redis.pid"))"
    else
        echo "redis: no private instance running"
    fi
    deps_mysql_answers 127.0.0.1 "${DEPS_MYSQL_PROBE_PORT:-3306}" && echo "mariadb: standard one answers on 127.0.0.1:${DEPS_MYSQL_PROBE_PORT:-3306}"
    deps_redis_answers 127.0.0.1 "${DEPS_REDIS_PROBE_PORT:-6379}" && echo "redis: standard one answers on 127.0.0.1:${DEPS_REDIS_PROBE_PORT:-6379}"
    return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    # Executed directly.
    set -euo pipefail
    case "${1:-env}" in
    env)
        deps_ensure
        for v in TEST_MYSQL_URL TEST_REDIS_URL MOSQUITTO_BIN IOT_STATE_DIR IOT_MYSQL_HOST IOT_MYSQL_PORT \
            IOT_REDIS_HOST IOT_REDIS_PORT IOT_TEST_RUNNER; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        ;;
    stop)
        shift
        deps_stop "$@"
        ;;
    status) deps_status ;;
    *)
        echo "usage: $0 [env|status|stop [mariadb] [redis]]" >&2
        exit 2
        ;;
    esac
elif [[ -z "${DEPS_SOURCE_ONLY:-}" ]]; then
    # Sourced: do the work now, so that `source scripts/lib/deps.sh` is all a caller needs.
    deps_ensure || return 1
fi
