#!/usr/bin/env bash
# Hostile HTTP input for scripts/reliability: the schemathesis run against the api's
# /openapi.json for RELIABILITY_HTTP_SECS (default 300) seconds, and the hostile-input and
# hostile-session and request-deadline tests (services/api/tests/api/{hostile_*,request_deadline}.rs), all against the real api with
# real storage/session processes on MariaDB/Redis (scripts/lib/deps.sh: the machine's if they
# answer, else private instances). Writes reliability-results/http.json and http.md.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
out="$repo/reliability-results"
mkdir -p "$out"
seconds="${RELIABILITY_HTTP_SECS:-300}"

# shellcheck source=../lib/deps.sh
source scripts/lib/deps.sh || exit 1
# shellcheck source=../lib/schemathesis.sh
source scripts/lib/schemathesis.sh
SCHEMATHESIS_BIN="$(schemathesis_ensure)" || { echo "http: schemathesis could not be installed" >&2; exit 1; }
export SCHEMATHESIS_BIN IOT_REQUIRE_SCHEMATHESIS=1
export SCHEMATHESIS_MAX_TIME="$seconds" SCHEMATHESIS_REPORT_DIR="$out/schemathesis"
rm -rf "$SCHEMATHESIS_REPORT_DIR"

cargo build -p iot-storage -p iot-session --bins >&2 || exit 1
log="$out/http-tests.log"
started=$SECONDS
cargo nextest run -p iot-api --no-fail-fast --no-capture \
    -E 'test(/^(hostile_input|hostile_sessions|request_deadline|schemathesis)::/)' >"$log" 2>&1
rc=$?
elapsed=$((SECONDS - started))

python3 - "$log" "$SCHEMATHESIS_REPORT_DIR/summary.json" "$rc" "$elapsed" "$out/http.json" "$out/http.md" <<'PY'
import json, re, sys
log_path, summary_path, rc, elapsed, json_out, md_out = sys.argv[1:]
log = open(log_path, errors="replace").read()
tests = []
for status, secs, name in re.findall(r"^\s+(PASS|FAIL|TIMEOUT|SIGKILL|SIGSEGV) \[\s*([0-9.]+)s\] \(\s*\d+/\d+\) iot-api::api (\S+)", log, re.M):
    tests.append({"name": name, "status": status, "seconds": float(secs)})
try:
    st = json.load(open(summary_path))
except (OSError, ValueError):
    st = None
passed = sum(t["status"] == "PASS" for t in tests)
result = {"exit_code": int(rc), "seconds": int(elapsed), "tests_run": len(tests), "tests_passed": passed,
          "tests_failed": len(tests) - passed, "tests": tests, "schemathesis": st}
json.dump(result, open(json_out, "w"), indent=1)

what = {
    "oversized_bodies_are_refused_with_413_json_and_the_server_keeps_serving":
        "JSON and form bodies over the limit (declared and chunked) get a JSON 413 and the connection closes; a 200 KiB head gets 431; a normal request is served right after",
    "slow_request_heads_are_cut_off_at_the_client_request_timeout":
        "20 slowloris connections (a header line every 200 ms) and an idle one are closed at the 1 s client request timeout (+ < 3 s); normal requests are served meanwhile",
    "slow_bodies_are_cut_off_at_the_body_timeout_with_408_json":
        "a body trickled at 1 byte / 100 ms gets a JSON 408 at the 1 s body timeout and the connection closes (JSON and form routes); an unread chunked body after a 401 closes the connection instead of being drained",
    "injection_attempts_are_stored_verbatim_and_shown_inertly":
        "15 SQL/HTML/template/formula strings as device names and attributes: stored and returned verbatim, escaped on every page; as ids, usernames, logins and every query parameter: 4xx, never 5xx; nothing dropped",
    "csv_cells_cannot_carry_formulas":
        "storage refuses metric names that could open a formula; no CSV cell starts with = + @ tab CR",
    "a_405_names_the_allowed_methods": "405 carries Allow (found by schemathesis)",
    "a_session_id_chosen_before_login_is_never_kept":
        "a made-up sid and the attacker's own valid sid planted before the victim's login (JSON and form): login issues a new sid; the planted one never becomes the victim's",
    "a_stolen_cookie_is_refused_everywhere_once_revoked":
        "after DELETE /api/v1/sessions/current and POST /logout the old cookie gets 401 (pages: redirect to /login) at once on all 21 routes and both forms; after RevokeUserSessions (outside the api) within the api session cache TTL (bounded at 3 s); nothing changed",
    "another_users_devices_and_readings_cannot_be_read_changed_or_detected":
        "user B on user A's device: every route answers exactly as for a missing device (same status and body); crafted page tokens and cursors reveal nothing",
    "a_slow_head_after_a_first_request_is_cut_off_with_408":
        "slowloris on a kept-alive connection: one complete request, then the next head a byte a second: JSON 408 and closed at the 2 s client request timeout (actix alone times only a connection's first head)",
    "a_partial_pipelined_head_and_then_silence_is_closed_at_keep_alive":
        "a complete request sent with the start of the next one, then silence: closed at keep-alive",
    "kept_alive_connections_serve_request_after_request":
        "idle longer than the head timeout between requests, heads in pieces: every request answered 200",
    "pipelined_requests_are_all_answered": "12 pipelined requests (in one write, cut across writes, after a pause): all 200",
    "a_live_stream_outlives_every_deadline_while_the_client_sends_nothing":
        "a live stream silent for 5 s (head timeout 1 s, keep-alive 2 s) still delivers the next reading",
    "schemathesis_finds_no_server_error_and_no_response_outside_the_schema": "below",
}
lines = ["## Hostile HTTP input", ""]
lines.append("`scripts/reliability.d/http.sh`: the real api on a free port with real storage and session "
             "processes (MariaDB, Redis), as in `services/api/tests`.")
lines.append("")
if st:
    lines.append(f"**schemathesis {st.get('version') or ''} "
                 f"run against `/openapi.json`** ({st['seconds']} s, all response checks, authenticated with a "
                 f"session cookie): {st['operations_tested']} operations, {st['test_cases']:,} test cases, "
                 f"{st['requests_served']:,} requests served by the api, **{st['server_errors']} answered 5xx**, "
                 f"**{st['failures']} failures** (schemathesis exit {st['exit_code']}). CI runs the same for 45 s.")
else:
    lines.append("**schemathesis** produced no summary (see reliability-results/http-tests.log).")
lines.append("")
lines.append("Found by schemathesis and fixed: a 405 without `Allow` (RFC 9110; regression test "
             "`a_405_names_the_allowed_methods`); undocumented statuses and constraints in the OpenAPI document "
             "(400 for unparsable bodies, 422 for `page_size`, HEAD answering as GET, `metric` required by "
             "aggregates). Left out on purpose: `positive_data_acceptance`/`negative_data_rejection` (rules "
             "OpenAPI cannot state: `to` later than `from`, times within 1970..9999), "
             "`ensure_resource_availability` and `use_after_free` (every `{device_id}` is pinned to one real "
             "device; `DELETE .../readings` empties a range, the collection rightly stays).")
lines.append("")
lines.append(f"**Hostile-input and session tests**: {passed} of {len(tests)} passed ({elapsed} s with the schemathesis run).")
lines.append("")
lines.append("| test | what it tries | result |")
lines.append("|---|---|---|")
for t in tests:
    short = t["name"].split("::", 1)[-1]
    if short.startswith("schemathesis"):
        continue
    lines.append(f"| `{short}` | {what.get(short, '')} | {t['status']} ({t['seconds']:.1f} s) |")
lines.append("")
lines.append("Every request's head is timed, not only a connection's first (actix's own head timer): "
             "`services/api/src/request_deadline.rs`, described in services/api/README.md.")
open(md_out, "w").write("\n".join(lines) + "\n")
PY
cat "$out/http.md" >&2
exit "$rc"
