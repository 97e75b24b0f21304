#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh                       every target, 10 s each (the CI short form)
#   scripts/fuzz.sh --seconds 300         longer (scripts/reliability.d/fuzz.sh)
#   scripts/fuzz.sh --json FILE TARGET... some targets, figures as JSON into FILE
#
# Works on the stable toolchain: `cargo fuzz build --sanitizer none` needs no nightly flag
# (libfuzzer-sys builds libFuzzer with the local C++ compiler; coverage instrumentation is
# `-Cpasses=sancov-module`, a stable option). The targets are safe Rust, where AddressSanitizer
# adds little; FUZZ_SANITIZER=address uses the ASan runtime the stable toolchain ships, through
# RUSTC_BOOTSTRAP=1 (-Zsanitizer is unstable), for a deeper run.
#
# Corpora: seeds in fuzz/seeds/TARGET (committed), grown inputs in fuzz/corpus/TARGET
# (git-ignored, kept between runs). A crash (a panic, which includes a violated property) is
# saved as fuzz/artifacts/TARGET/crash-* and makes this script exit 1; reproduce it with
# `cargo fuzz run --fuzz-dir fuzz -s none -a TARGET fuzz/artifacts/TARGET/crash-...`.
#
# Environment: FUZZ_SECONDS (per target, default 10), FUZZ_SANITIZER (none|address),
# CARGO_FUZZ_VERSION (installed with `cargo install --locked` when cargo-fuzz is missing).
set -euo pipefail
{
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

seconds="${FUZZ_SECONDS:-10}"
json_out=""
targets=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --json) json_out="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "--seconds must be a positive integer" >&2; exit 2; }
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^iot-fuzz$')
fi

sanitizer="${FUZZ_SANITIZER:-none}"
cargo_fuzz_version="${CARGO_FUZZ_VERSION:-0.13.2}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --version $cargo_fuzz_version --locked" >&2
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

# fuzz/Cargo.lock is committed; `cargo fuzz build` has no --locked, so check it first.
if [[ "${CI:-}" == true ]] && ! cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
    echo "fuzz/Cargo.lock does not match fuzz/Cargo.toml: build locally and commit it" >&2
    exit 1
fi

build_flags=(--fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions)
if [[ "$sanitizer" != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi
t0=$SECONDS
echo "==> cargo fuzz build ${build_flags[*]}" >&2
# Its own target directory even when CARGO_TARGET_DIR names the workspace's: the fuzz build's
# instrumentation flags would only evict the workspace's artifacts, and the targets are run
# from this path below.
CARGO_TARGET_DIR=fuzz/target cargo fuzz build "${build_flags[@]}"
build_seconds=$((SECONDS - t0))

host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$host/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=0
rows=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    seeds="fuzz/seeds/$target"
    [[ -d "$seeds" ]] || seeds=""
    log="$work/$target.log"
    before="$(find "fuzz/artifacts/$target" -type f | wc -l)"
    echo "==> $target: ${seconds}s" >&2
    set +e
    # -timeout: one input taking >10 s is a hang, reported like a crash. -rss_limit_mb: the
    # parsers must not balloon on any input. The first corpus directory receives new inputs.
    "$bin_dir/$target" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="fuzz/artifacts/$target/" "fuzz/corpus/$target" ${seeds:+"$seeds"} >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)"
    corpus="$(find "fuzz/corpus/$target" -type f | wc -l)"
    after="$(find "fuzz/artifacts/$target" -type f | wc -l)"
    crashes=$((after - before))
    status=ok
    if ((rc != 0)); then
        status=CRASH
        failed=1
        ((crashes > 0)) || crashes=1
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
        echo "    reproduce: cargo fuzz run --fuzz-dir fuzz -s $sanitizer -a $target fuzz/artifacts/$target/<crash file>" >&2
    fi
    printf '    %-14s %-5s %10s execs  corpus %5s  cov %5s  crashes %s\n' \
        "$target" "$status" "${execs:-0}" "$corpus" "${cov:-?}" "$crashes" >&2
    rows+=("{\"target\":\"$target\",\"seconds\":$seconds,\"executions\":${execs:-0},\"corpus\":$corpus,\"coverage\":${cov:-0},\"crashes\":$crashes,\"status\":\"$status\"}")
done

if [[ -n "$json_out" ]]; then
    joined="$(IFS=,; echo "${rows[*]}")"
    printf '{"sanitizer":"%s","build_seconds":%s,"targets":[%s]}\n' "$sanitizer" "$build_seconds" "$joined" >"$json_out"
fi
exit "$failed"
}
