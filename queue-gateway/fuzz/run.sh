#!/usr/bin/env bash
# Short fuzzing run for CI: `run.sh SECONDS` builds every target of this crate and runs each
# for SECONDS seconds, starting from a copy of its committed corpus (and of its regressions)
# in a temporary directory, so the run never grows the committed corpus. Prints each
# target's executions; exits non-zero if any target crashed (the input is kept under
# artifacts/<target>/, which git ignores). Runs in the foreground, one target after another.
set -euo pipefail

secs=${1:?usage: run.sh SECONDS}
cd "$(dirname "$0")"
targets=(request_head chunked response_head cookies path)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it"
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs nightly's -Z flags: nightly when installed, else stable told to accept
# them (RUSTC_BOOTSTRAP=1 builds these targets the same way). FUZZ_STABLE=1 takes stable
# even where nightly is installed.
if [ -z "${FUZZ_STABLE:-}" ] && cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    echo "toolchain: nightly ($(cargo +nightly --version))"
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    echo "toolchain: stable with RUSTC_BOOTSTRAP=1 ($(cargo --version))"
fi

"${fuzz[@]}" build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    cp corpus/"$target"/* "$work/$target"/
    if [ -d regressions/"$target" ]; then
        cp regressions/"$target"/* "$work/$target"/ 2>/dev/null || true
    fi
    # -timeout: an input that takes 10 s is a hang, and a finding like a crash. The
    # dictionary holds the header names and tokens the parsers compare against: without it,
    # 60 s did not find a response whose Connection header names its Content-Length.
    if "${fuzz[@]}" run "$target" "$work/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 -dict="$PWD/http.dict" \
        >"$work/$target.log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        # The panic (or sanitizer report) and how to reproduce it.
        grep -A 12 -m 1 -E "panicked at|^==[0-9]+==ERROR" "$work/$target.log" || true
        grep -A 1 "Reproduce with" "$work/$target.log" || true
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
    echo "$target: ${runs:-?} executions in ${secs}s, $status"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs under $(pwd)/artifacts/)" >&2
    exit 1
fi
