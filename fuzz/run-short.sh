#!/usr/bin/env bash
# Runs every fuzz target for a short time. Exit status is non-zero if any target crashes
# (or fails to build). Usage: fuzz/run-short.sh [SECONDS_PER_TARGET]   (default 30)
#
# cargo-fuzz needs nightly compiler flags (sanitizers). These machines have one stable
# toolchain, so by default it runs on it with RUSTC_BOOTSTRAP=1; set FUZZ_TOOLCHAIN=nightly
# (or any rustup toolchain name) to use another one.
set -euo pipefail

secs="${1:-${FUZZ_SECONDS:-30}}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "run-short: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

toolchain=()
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    toolchain=("+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
fi

# Keep fuzz builds out of the workspace target dir unless told otherwise.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$here/target}"

targets=$(cargo "${toolchain[@]}" fuzz list --fuzz-dir "$here")
status=0
for t in $targets; do
    corpus="$here/corpus/$t"
    mkdir -p "$corpus"
    echo "run-short: fuzzing $t for ${secs}s" >&2
    # The corpus dir collects what the fuzzer finds (not committed); seeds/ holds
    # hand-made valid inputs that are committed.
    seeds=()
    [[ -d "$here/seeds/$t" ]] && seeds=("$here/seeds/$t")
    if ! cargo "${toolchain[@]}" fuzz run --fuzz-dir "$here" "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1; then
        echo "run-short: $t FAILED (crash artifacts in $here/artifacts/$t)" >&2
        status=1
    fi
done
exit "$status"
