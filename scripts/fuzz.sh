#!/usr/bin/env bash
# Coverage-guided fuzzing of every file reader (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60; CI runs it with a bound)
#
# Installs what it needs when missing: the nightly toolchain (cargo-fuzz's sanitizer flags
# need it) and cargo-fuzz. Each target starts from the files in tests/fixtures/ that its
# reader parses or rejects. A crash fails the run and leaves the input under
# fuzz/artifacts/<target>/: copy it to tests/fixtures/io/ as `crash-<reader>-<name>.bin`, and
# `cargo test --test io` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi

# A reader that asks for more memory than the file could justify is a finding; one that
# handles a failed allocation as an `Err` is not: let malloc return null under ASan.
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=0"
corpus=target/fuzz-corpus
for t in npy npz safetensors mnist; do
    rm -rf "${corpus:?}/$t" "fuzz/artifacts/$t"
    mkdir -p "$corpus/$t"
    case $t in
        npy) cp tests/fixtures/io/*npy* "$corpus/$t/" ;;
        npz) cp tests/fixtures/io/*npz* "$corpus/$t/" ;;
        safetensors) cp tests/fixtures/io/*safetensors* tests/fixtures/torch/*.safetensors "$corpus/$t/" ;;
        # One 2 × 2 image and its label; the first byte (176) splits it where the labels start.
        mnist) printf '\xb0\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03\x04\x00\x00\x08\x01\x00\x00\x00\x01\x07' >"$corpus/$t/one" ;;
    esac
    echo "== fuzz $t for ${secs}s"
    log="$corpus/$t.log"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -malloc_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t failed to build or crashed; inputs (if any) in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units' "$log"
done
echo "fuzz: every reader ran ${secs}s per target without a crash"
