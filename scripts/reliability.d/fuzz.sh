#!/usr/bin/env bash
# Long fuzz run for scripts/reliability: every cargo-fuzz target in fuzz/ for
# RELIABILITY_FUZZ_SECS (default 120) seconds each (10 minutes for the five), on top of the corpus earlier runs grew.
# Writes reliability-results/fuzz.json and the fragment reliability-results/fuzz.md.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
out="$repo/reliability-results"
mkdir -p "$out"
seconds="${RELIABILITY_FUZZ_SECS:-120}"

scripts/fuzz.sh --seconds "$seconds" --json "$out/fuzz.json"
rc=$?
if [[ ! -s "$out/fuzz.json" ]]; then
    echo "fuzz: no figures (scripts/fuzz.sh exit $rc)" >&2
    printf '## Fuzzing\n\nThe fuzz run did not produce figures (scripts/fuzz.sh exit %s).\n' "$rc" >"$out/fuzz.md"
    exit 1
fi

python3 - "$out/fuzz.json" "$rc" >"$out/fuzz.md" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
rc = int(sys.argv[2])
targets = run["targets"]
total = sum(t["executions"] for t in targets)
print("## Fuzzing (cargo fuzz)")
print()
print(f"`scripts/reliability.d/fuzz.sh`: each target for {targets[0]['seconds']} s (libFuzzer, sanitizer "
      f"`{run['sanitizer']}`, debug assertions on, build {run['build_seconds']} s), starting from the seeds in "
      "`fuzz/seeds/` plus the corpus earlier runs on this machine grew. CI runs the same targets for 10 s each.")
print("A target fails on a panic, including a violated property: accepted readings within the documented "
      "bounds (metric names, finite values, 2000-01-01 .. receive time + 24 h, at most the reading limit); "
      "parse, serialize, parse gives the same readings (JSON form and SenML); query parameters within their "
      "bounds and unchanged through `to_query_string`; times and buckets unchanged through their formatters; "
      "`to` never becomes storage's \"no upper bound\".")
print()
print("| target | what it drives | executions | corpus | coverage (edges) | crashes |")
print("|---|---|---:|---:|---:|---:|")
what = {
    "payload_json": "`iot_payload::parse`, JSON form seeds",
    "payload_senml": "`iot_payload::parse`, SenML seeds",
    "message": "topic + payload entry point, default and tight limits",
    "query_params": "`iot_query` readings/aggregate/delete/device-list query strings",
    "query_values": "times, buckets, `Accept` negotiation",
}
for t in targets:
    print(f"| {t['target']} | {what.get(t['target'], '')} | {t['executions']:,} | {t['corpus']:,} | {t['coverage']:,} | {t['crashes']} |")
print(f"| **total** | | **{total:,}** | | | **{sum(t['crashes'] for t in targets)}** |")
print()
if rc != 0:
    print("**A target crashed in this run**: the input is under `fuzz/artifacts/TARGET/`; reproduce with "
          "`cargo fuzz run --fuzz-dir fuzz -s none -a TARGET fuzz/artifacts/TARGET/crash-...`.")
    print()
print("Found by the fuzz targets while they were written, each fixed with a regression test:")
print("- `payload_json`: serde_json's default float parser returned 1.9999999999999998e-30 for `2e-030` "
      "(one ulp off); iot-payload now enables `float_roundtrip` "
      "(`crates/iot-payload/src/tests.rs::numbers_parse_to_the_nearest_double`).")
print("- `query_values`: epoch milliseconds up to year 292 277 were accepted and written back as "
      "`+223791-03-23T...`, which nothing parses; times are now bounded to 1970-01-01 .. 9999-12-31 "
      "(`crates/iot-query/src/tests.rs::times_stay_within_what_rfc3339_can_write`).")
print("- `query_params`: `to=0` (or `to=00`) passed the `to` > `from` check, because 0 meant \"not given\", "
      "and reached storage as \"no upper bound\": the range returned everything (same test).")
PY
cat "$out/fuzz.md" >&2
exit "$rc"
