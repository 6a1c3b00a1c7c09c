#!/usr/bin/env bash
# Kernel coverage under the CUDA emulator: runs `cargo test --release --features cuda-emu`
# (extra arguments are passed to cargo test) with TENSORFORGE_EMU_COVERAGE set, then checks that
# every built-in kernel entry point was launched by some test. Kernels no test can reach are
# listed with the reason in scripts/emu-coverage-exempt.txt ("name  reason"); an exempt kernel
# that was launched after all is reported too, so the list stays true.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
TENSORFORGE_EMU_COVERAGE="$dir" cargo test --release --features cuda-emu "$@"
[ -s "$dir/all.txt" ] || { echo "emu-coverage: no kernel table written (did any CUDA test run?)" >&2; exit 1; }
sort -u "$dir/all.txt" >"$dir/all"
cat "$dir"/launched-*.txt | sort -u >"$dir/launched"
exempt="scripts/emu-coverage-exempt.txt"
grep -v '^\s*\(#\|$\)' "$exempt" | awk '{print $1}' | sort -u >"$dir/exempt" || true
comm -23 "$dir/all" "$dir/launched" >"$dir/missing"
missing="$(comm -23 "$dir/missing" "$dir/exempt")"
stale="$(comm -12 "$dir/exempt" "$dir/launched")"
echo "emu-coverage: $(comm -12 "$dir/all" "$dir/launched" | wc -l) of $(wc -l <"$dir/all") kernel entry points launched; $(wc -l <"$dir/exempt") exempt"
status=0
if [ -n "$missing" ]; then
    echo "emu-coverage: never launched by any test (add a test, or an entry with its reason to $exempt):"
    echo "$missing" | sed 's/^/  /'
    status=1
fi
if [ -n "$stale" ]; then
    echo "emu-coverage: listed as exempt in $exempt but launched (remove them):"
    echo "$stale" | sed 's/^/  /'
    status=1
fi
exit $status
