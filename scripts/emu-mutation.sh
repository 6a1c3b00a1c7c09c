#!/usr/bin/env bash
# Mutation check for the CUDA emulator: plants bugs a GPU would expose and checks that the
# emulated CUDA tests (`cargo test --features cuda-emu`) fail on each. A mutation that passes
# means the emulator, or the tests, would hide that class of bug. The kernels are restored
# afterwards whatever happens.
#
#   scripts/emu-mutation.sh            (all mutations; about 3 minutes each on 2 cores)
#   scripts/emu-mutation.sh NAME...    (some: no-syncthreads, exp2f, no-cp-async-wait, mma-swap)
set -uo pipefail
cd "$(dirname "$0")/.."
backup="$(mktemp -d)"
cp -r kernels "$backup/"
restore() { rm -rf kernels && cp -r "$backup/kernels" kernels && rm -rf "$backup"; }
trap restore EXIT

mutate() {
    case $1 in
        # Every block-wide barrier gone: shared-memory tiles and reductions race.
        no-syncthreads) sed -i 's/__syncthreads();/;/g' kernels/*.cu ;;
        # The wrong exponential: exp, softmax, sigmoid, GELU... compute 2^x.
        exp2f) sed -i 's/\bexp(/exp2(/g; s/__expf(/exp2f(/g' kernels/*.cu ;;
        # The tensor-core path reads its shared tiles before the async copies landed.
        no-cp-async-wait) sed -i 's/tf_cp_async_wait<[01]>();/;/g' kernels/matmul.cu ;;
        # mma fed with B's two registers swapped (a fragment-layout bug).
        mma-swap) sed -i 's/tf_mma16816<BF16>(acc\[j\], af, b0, b1)/tf_mma16816<BF16>(acc[j], af, b1, b0)/' kernels/matmul.cu ;;
        *) echo "unknown mutation $1" >&2; return 2 ;;
    esac
}

status=0
for m in "${@:-no-syncthreads exp2f no-cp-async-wait mma-swap}"; do
  for name in $m; do
    rm -rf kernels && cp -r "$backup/kernels" kernels
    mutate "$name" || { status=1; continue; }
    if git diff --quiet -- kernels; then
        echo "MUTATION $name: changed nothing (the pattern no longer matches)"; status=1; continue
    fi
    if cargo test -q --no-fail-fast --features cuda-emu --test cuda_parity --test cuda_tensor --test cuda_ctc >"/tmp/emu-mutation-$name.log" 2>&1; then
        echo "MUTATION $name: SURVIVED (the emulated tests passed with the bug planted)"; status=1
    else
        echo "MUTATION $name: caught ($(grep -c -- " --- FAILED$" "/tmp/emu-mutation-$name.log") tests failed)"
    fi
  done
done
exit $status
