#!/usr/bin/env bash
# Runs the whole test suite against real MariaDB, Redis and Mosquitto.
#
#   scripts/test.sh                  everything (what CI runs, through .ci/run)
#   scripts/test.sh -- FILTER...     extra arguments go to the test runner
#                                    (e.g. scripts/test.sh -- -p iot-storage)
#
# Steps: dependencies (scripts/lib/deps.sh: the machine's MariaDB/Redis if they answer,
# otherwise private instances under .local/), the Mosquitto configuration check, one
# `cargo build --workspace --all-targets`, the tests (cargo nextest, or cargo test when
# nextest is unavailable), doc tests, the short fuzz run (scripts/fuzz.sh), with
# IOT_CLIPPY=1 `cargo clippy` (deny-level lints only, so that `unwrap_used = "deny"` is enforced; ordinary warnings are printed, not
# fatal), and the Helm chart check when scripts/helm-check.sh exists. Every step runs even when an earlier
# test step failed; the exit status is non-zero if any step failed.
#
# Environment: CI=true (Cargo.lock must be up to date: --locked; private instances this
# run started are stopped at the end), IOT_CLIPPY=1, IOT_SKIP_HELM=1, IOT_SKIP_FUZZ=1, FUZZ_SECONDS,
# SCHEMATHESIS_BIN, SCHEMATHESIS_MAX_TIME (seconds, default 45),
# IOT_TEST_TIMEOUT (seconds for the test step, default 1200), NEXTEST_TEST_THREADS,
# CARGO_TARGET_DIR, and the knobs of scripts/lib/deps.sh.
set -euo pipefail
# The whole script is one block, parsed before it runs: editing the file while it runs
# (a long test run, an up.sh session) cannot change what the running instance executes.
{
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

runner_args=()
if [[ "${1:-}" == "--" ]]; then
    shift
    runner_args=("$@")
fi

started_at=$SECONDS
step() { printf '\n==> %s\n' "$*" >&2; }
declare -a results=()
failed=0
record() { # record NAME STATUS SECONDS
    results+=("$(printf '%-28s %-6s %4ss' "$1" "$2" "$3")")
    [[ "$2" == ok || "$2" == skip ]] || failed=1
}
summary() {
    printf '\n==> summary (%ss)\n' "$((SECONDS - started_at))" >&2
    local r
    for r in "${results[@]}"; do printf '    %s\n' "$r" >&2; done
}

step "dependencies"
# shellcheck source=lib/deps.sh
source scripts/lib/deps.sh
if [[ "${CI:-}" == true && -n "${DEPS_STARTED:-}" ]]; then
    # A CI job should not leave daemons behind; locally they are kept for the next run.
    trap 'deps_stop $DEPS_STARTED' EXIT
fi
cat >&2 <<EOF
    TEST_MYSQL_URL=$TEST_MYSQL_URL ($IOT_MYSQL_KIND)
    TEST_REDIS_URL=$TEST_REDIS_URL ($IOT_REDIS_KIND)
    MOSQUITTO_BIN=$MOSQUITTO_BIN
    runner: $IOT_TEST_RUNNER, $(cargo --version)
EOF

step "mosquitto configuration (deploy/mosquitto) against the real broker"
t=$SECONDS
if scripts/check-mosquitto-config.sh; then record mosquitto-config ok $((SECONDS - t)); else record mosquitto-config FAILED $((SECONDS - t)); fi

if [[ -z "${IOT_SKIP_HELM:-}" && -x scripts/k8s-tools.sh ]]; then
    step "k8s tools for the chart tests (scripts/k8s-tools.sh)"
    scripts/k8s-tools.sh || echo "k8s-tools failed: the iot-chart-tests will print SKIPPED" >&2
fi

# The api's browser test drives a headless Chromium (Debian's chromium package).
if grep -rqsi --include='*.rs' chromium services/*/tests crates/*/src; then
    CHROMIUM_BIN="${CHROMIUM_BIN:-$(deps_ensure_binary chromium chromium || true)}"
    CHROMEDRIVER_BIN="${CHROMEDRIVER_BIN:-$(deps_ensure_binary chromedriver chromium-driver || true)}"
    export CHROMIUM_BIN CHROMEDRIVER_BIN
    echo "    CHROMIUM_BIN=${CHROMIUM_BIN:-(missing)} CHROMEDRIVER_BIN=${CHROMEDRIVER_BIN:-(missing)}" >&2
    # In CI a missing browser is a failure, not a quietly skipped test.
    [[ "${CI:-}" == true ]] && export IOT_REQUIRE_BROWSER=1
fi

cargo_flags=()
[[ "${CI:-}" == true ]] && cargo_flags+=(--locked)

if [[ "${CI:-}" == true ]] && cargo metadata --locked --format-version 1 2>&1 >/dev/null | grep -q 'lock file'; then
    echo "Cargo.lock does not match Cargo.toml: run a cargo build locally and commit Cargo.lock" >&2
    record lockfile FAILED 0
    summary
    exit 1
fi

step "cargo build --workspace --all-targets"
t=$SECONDS
if ! cargo build "${cargo_flags[@]}" --workspace --all-targets; then
    record build FAILED $((SECONDS - t))
    summary
    exit 1
fi
record build ok $((SECONDS - t))

# schemathesis for the api's property-based test (services/api/tests/api/schemathesis.rs):
# installed into .tools/ on first use (~30 s), then about 50 s of one test slot.
if [[ -z "${SCHEMATHESIS_BIN:-}" ]]; then
    # shellcheck source=lib/schemathesis.sh
    source scripts/lib/schemathesis.sh
    SCHEMATHESIS_BIN="$(schemathesis_ensure || true)"
    export SCHEMATHESIS_BIN
fi
echo "    SCHEMATHESIS_BIN=${SCHEMATHESIS_BIN:-(missing)}" >&2
# In CI a missing schemathesis is a failure, not a quietly skipped test.
[[ "${CI:-}" == true ]] && export IOT_REQUIRE_SCHEMATHESIS=1

step "tests ($IOT_TEST_RUNNER)"
t=$SECONDS
test_timeout="${IOT_TEST_TIMEOUT:-1200}"
if [[ "$IOT_TEST_RUNNER" == nextest ]]; then
    nextest_flags=(--workspace --no-fail-fast)
    # A CI profile (slow-test timeouts, no retries) when the repository defines one.
    if [[ "${CI:-}" == true ]] && grep -qs '^\[profile\.ci\]' .config/nextest.toml; then
        nextest_flags+=(--profile ci)
    fi
    test_cmd=(cargo nextest run "${cargo_flags[@]}" "${nextest_flags[@]}" "${runner_args[@]}")
else
    test_cmd=(cargo test "${cargo_flags[@]}" --workspace --no-fail-fast "${runner_args[@]}")
fi
echo "    ${test_cmd[*]}" >&2
# The runner prints its own summary (nextest: "Summary [...] N tests run: N passed ...");
# a copy of its output lets the last lines of this script repeat the counts.
runner_log="$(mktemp)"
set +e
timeout --foreground -k 30 "$test_timeout" "${test_cmd[@]}" 2>&1 | tee "$runner_log"
rc=${PIPESTATUS[0]}
set -e
if ((rc == 0)); then
    record tests ok $((SECONDS - t))
else
    ((rc == 124)) && echo "tests: timed out after ${test_timeout}s" >&2
    record tests FAILED $((SECONDS - t))
fi

if [[ "$IOT_TEST_RUNNER" == nextest && ${#runner_args[@]} -eq 0 ]]; then
    # nextest does not run doc tests.
    step "doc tests"
    t=$SECONDS
    # Quiet unless it fails: its per-crate "0 passed" lines would bury the runner's summary.
    doc_log="$(mktemp)"
    if cargo test "${cargo_flags[@]}" --workspace --doc >"$doc_log" 2>&1; then
        record doctests ok $((SECONDS - t))
    else
        cat "$doc_log"
        record doctests FAILED $((SECONDS - t))
    fi
fi

# Fuzzing, short form: build the cargo-fuzz targets in fuzz/ and run each for a few seconds
# (scripts/fuzz.sh; a crash or a violated property fails the step). About 70 s on a warm
# machine, about 2 minutes from a fresh clone (cargo-fuzz install and the fuzz build).
if [[ -z "${IOT_SKIP_FUZZ:-}" && -x scripts/fuzz.sh && ${#runner_args[@]} -eq 0 ]]; then
    step "scripts/fuzz.sh (${FUZZ_SECONDS:-10} s per target)"
    t=$SECONDS
    if scripts/fuzz.sh; then record fuzz ok $((SECONDS - t)); else record fuzz FAILED $((SECONDS - t)); fi
fi

# clippy checks every dependency again (metadata builds are not shared with `cargo build`):
# about 5 minutes on 2 cores, which would push a cold CI run near 20 minutes. Opt in.
if [[ -n "${IOT_CLIPPY:-}" && ${#runner_args[@]} -eq 0 ]]; then
    step "cargo clippy --workspace --all-targets (deny-level lints fail the run)"
    t=$SECONDS
    if cargo clippy --version >/dev/null 2>&1; then
        if cargo clippy "${cargo_flags[@]}" --workspace --all-targets; then record clippy ok $((SECONDS - t)); else record clippy FAILED $((SECONDS - t)); fi
    else
        echo "clippy is not installed (rustup component add clippy); skipped" >&2
        record clippy skip 0
    fi
fi

if [[ -z "${IOT_SKIP_HELM:-}" && -x scripts/helm-check.sh && ${#runner_args[@]} -eq 0 ]]; then
    step "scripts/helm-check.sh"
    t=$SECONDS
    if scripts/helm-check.sh; then record helm-check ok $((SECONDS - t)); else record helm-check FAILED $((SECONDS - t)); fi
fi

summary
# The test runner's counts close the output, so a reader (or CI) sees them last.
if [[ -s "${runner_log:-}" ]]; then
    if [[ "$IOT_TEST_RUNNER" == nextest ]]; then
        runner_summary="$(grep -E '^ *Summary \[' "$runner_log" | tail -n 1 || true)"
        tests_passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$runner_summary")"
        tests_failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$runner_summary")"
        [[ -n "$runner_summary" ]] && echo "$runner_summary"
    else
        tests_passed="$(awk '/^test result:/ {p += $4} END {print p + 0}' "$runner_log")"
        tests_failed="$(awk '/^test result:/ {f += $6} END {print f + 0}' "$runner_log")"
    fi
    echo "tests: ${tests_passed:-0} passed, ${tests_failed:-0} failed"
fi
exit "$failed"
exit
}
