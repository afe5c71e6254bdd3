#!/usr/bin/env bash
# The test command (README and .ci/run). Run as root on Debian 12: the sandbox tests need
# namespaces, idmapped mounts and cgroups; the D-Bus tests start private dbus-daemons themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "Debian packages"
scripts/install-deps.sh

# The debian-12 template is built once by mmdebstrap and cached by recipe content here;
# every test that needs a real domain root uses it.
export BULKHEAD_TEST_TEMPLATE_CACHE=${BULKHEAD_TEST_TEMPLATE_CACHE:-/var/cache/bulkhead-test/templates}
mkdir -p "$BULKHEAD_TEST_TEMPLATE_CACHE"

step "Format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "Build"
cargo build --workspace --bins
# Tests use the binaries just built, never stale ones found elsewhere.
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
export BULKHEAD_TEST_GUEST_TOOLS="$bin_dir" BULKHEAD_TEST_LIBEXEC="$bin_dir"

step "Template debian-12 (cached by recipe content)"
"$bin_dir"/bulkhead-template build --store "$BULKHEAD_TEST_TEMPLATE_CACHE" templates/recipes/debian-12.toml

step "Tests"
results=$(mktemp)
# A test that cannot run here calls bulkhead_test_skip::skip, which appends
# "<test>: <reason>" to this file; libtest counts it as passed, the closing line as skipped.
skip_log=$(mktemp)
trap 'rm -f "$results" "$skip_log" "${fuzz_log:-}"' EXIT
export BULKHEAD_TEST_SKIP_LOG=$skip_log
set +e
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$results"
test_status=${PIPESTATUS[0]}
# The KVM monitor's guest tests once more with every VMM confined (namespaces, empty root,
# no capabilities, seccomp per thread kind): a syscall missing from a filter kills the VMM.
BULKHEAD_TEST_VMM_CONFINE=1 cargo test -p bulkhead-vmm --test guests --test virtio_guests \
    --test virtio_wiring -- --test-threads=2 2>&1 | tee -a "$results"
confined_status=${PIPESTATUS[0]}
((test_status != 0)) || test_status=$confined_status
set -e

step "Fuzz targets, short runs"
# libFuzzer prints thousands of lines; they go to a log, and only each target's outcome here,
# so that the end of this script's output (all a CI report may keep) is the test summary.
fuzz_log=$(mktemp)
fuzz_status=0
fuzz/run-short.sh "${FUZZ_SECONDS:-20}" >"$fuzz_log" 2>&1 || fuzz_status=$?
grep -E '^(run-short:|Done [0-9]+ runs)' "$fuzz_log" || true
if ((fuzz_status != 0)); then
    echo "fuzzing failed; the last lines of its log:"
    tail -n 60 "$fuzz_log"
fi

# One closing line for all the test binaries cargo ran above. Skipped = the skip log's lines
# plus libtest's "ignored". A skip whose test name has "::<thread>" came from a libtest test,
# which libtest counted as passed; one without it came from a `harness = false` binary
# (dom0-manager's xvfb and look), which no "test result:" line counts.
awk -v skip_log="$skip_log" '
    FILENAME == skip_log { n++; id = $0; sub(/: .*/, "", id); if (id ~ /::/) counted++; next }
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
    END { printf "%d passed, %d failed, %d skipped\n", p - counted, f, s + n }' "$skip_log" "$results"
# A nested VM test that ran again in a new L1 because the emulator failed under it (L1
# itself reset, or an L2 guest triple-faulted or stalled a vCPU; testkit/src/vm.rs): said
# here, so that an emulator that keeps failing is seen even when the tests pass.
reruns=$(grep -cE '^(L1 RESET|L2 GLITCH) ' "$results" || true)
((reruns == 0)) || grep -E '^(L1 RESET|L2 GLITCH) ' "$results" | sed 's/^/    /'
# Figures the nested tests printed (USB, input and network paths; not asserted).
grep -E '^(USB|NET|INPUT) BENCH ' "$results" | sed 's/^/    /' || true
skips=$( (cat "$skip_log"; sed -nE 's/^test (.*) \.\.\. ignored.*/\1: #[ignore]/p' "$results") | sed 's/^/    /')
[[ -z $skips ]] || printf '%s\n' "$skips"
if ((test_status != 0)); then
    # The failures once more at the very end, with the start of what each printed: the end of
    # the output is often all that a CI report keeps.
    echo "failed:"
    grep -E '^test .* \.\.\. FAILED$|^error: test failed' "$results" | sed 's/^/    /'
    awk 'function flush(  i) { if (n > 0) { print "    " b[1]; for (i = (n > 30 ? n - 29 : 2); i <= n; i++) print "    " b[i] } n = 0 }
         /^---- .* (stdout|stderr) ----$/ { flush(); show = 1 }
         /^failures:$/ { flush(); show = 0 }
         show { b[++n] = $0 }
         END { flush() }' "$results"
    echo "tests failed (cargo test exit $test_status)" >&2
    exit "$test_status"
fi
# CI (.ci/run) sets this: it runs everything, so a skip there is a test that did not run.
if [[ ${BULKHEAD_TEST_NO_SKIPS:-} == 1 && -n $skips ]]; then
    printf 'BULKHEAD_TEST_NO_SKIPS=1 and these tests skipped:\n%s\n' "$skips" >&2
    exit 1
fi
if ((fuzz_status != 0)); then
    echo "a fuzz target crashed or did not build (exit $fuzz_status)" >&2
    exit "$fuzz_status"
fi
