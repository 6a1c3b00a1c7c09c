#!/usr/bin/env bash
# Times the engine against numpy, torch and jax (CPU) on the same cases in the same run,
# interleaved in rounds, and prints one line per case and peer:
#   RESULT case=<name> threads=<n> ours_ms=.. peer=<name> peer_ms=.. speedup=<peer/ours> paired=.. won=../..
# Usage: benches/compare/run.sh [--quick | --check]   (TF_COMPARE_CASES="<case>:<threads> …" picks cases)
#   --quick  a subset (conv2d, the mlp/cnn/lstm steps and bf16_matmul1024 included) with fewer rounds
#   --check  no timing: prints each side's output checksum (mlp_step: its first 5 losses),
#            which must agree across sides, since all of them compute on the same input values
# Installs the peers from PyPI into $TF_BENCH_VENV (default .venv-bench) when missing.
# Timing: benches/compare/interleave.py runs each side as one warm process per case and
# alternates them in short rounds; ours_ms/peer_ms are medians over rounds, `paired` the median
# of the per-round ratios, `won` the rounds where the engine was faster. GEMMs of 512 and up add
#   PEAK case=<name> threads=<n> peak_ms=.. ours=<share> numpy=.. torch=.. jax=..
# where a share is the case's flops timed as register-only FMAs on the same threads, divided by
# that side's time, per round (median): how close each side gets to this machine's FMA ceiling.
# Threads: the engine gets a rayon pool of n, torch set_num_threads(n), numpy
# OPENBLAS/OMP_NUM_THREADS=n, jax its default pool, or for n=1 single-threaded Eigen via
# XLA_FLAGS (see peers.py). Every 1-thread case also runs pinned to CPU 0 (taskset) on all
# sides, since jax and torch start helper threads that the flags above do not cover.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
case $mode in "" | --quick | --check) ;; *) sed -n '5,8s/^# \{0,1\}//p' "$0" >&2; exit 2 ;; esac
venv=${TF_BENCH_VENV:-.venv-bench}
py=$venv/bin/python
[ -x "$py" ] || python3 -m venv "$venv"
# find_spec instead of importing: importing torch alone takes seconds.
if ! "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ["numpy", "threadpoolctl", "torch", "jax"]))'; then
  # Plain PyPI torch brings CUDA libraries (GBs) but runs fine on a CPU-only machine.
  "$venv/bin/pip" install -q numpy threadpoolctl torch jax
fi
# The JSON messages name the binary wherever CARGO_TARGET_DIR puts it; diagnostics still go to stderr.
bin=$(cargo bench -q --no-default-features --bench compare --no-run --message-format=json-render-diagnostics |
  python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')

# The numpy side runs with OpenBLAS's own core detection (interleave.py does the same).
peer() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" benches/compare/peers.py "$@"; }
# numpy has no convolution or autograd.
peers_of() { case $1 in f16_matmul*) echo torch ours_f32 ;; bf16_vs_f32_matmul*) echo ours_f32 ;; bf16_matmul* | cnn_step | lstm_step) echo torch ;; conv2d_* | mlp_step) echo torch jax ;; *) echo numpy torch jax ;; esac; }

all="sgemm128:2 sgemm256:2 sgemm512:2 sgemm1024:2 sgemm2048:2 sgemm1024:1 bf16_matmul1024:2 bf16_matmul2048:2 f16_matmul1024:2 bf16_vs_f32_matmul1024:2 bmm64x128:2 add16M:2 softmax4096x1024:2 conv2d_n32c64k64:2 conv2d_n32c64k64:1 mlp_step:2 cnn_step:2 lstm_step:2"
if [ "$mode" = --check ]; then
  # sgemm2048 checks nothing that sgemm1024 does not, just slower.
  # The half-precision products against our own f32 (peer ours_f32) are timing rows only.
  for name in $(printf '%s\n' $all | cut -d: -f1 | grep -v 'matmul2048$\|gemm2048$\|_vs_f32_' | awk '!seen[$0]++'); do
    echo "$name ours: $("$bin" --check "$name")"
    for p in $(peers_of "$name"); do
      [ "$p" = ours_f32 ] || echo "$name $p: $(peer --check "$p" "$name")"
    done
  done
  exit 0
fi

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"
peer --versions | sed 's/^/peer: /'
# Each side stays one warm process per case (interleave.py), so rounds cost no imports: many
# short rounds, alternating sides, give every side the same moments of this drifting machine.
reps=5; rounds=12; cases=$all
[ "$mode" = --quick ] && { reps=3; rounds=8; cases="sgemm256:2 sgemm1024:2 sgemm1024:1 bmm64x128:2 add16M:2 softmax4096x1024:2 conv2d_n32c64k64:2 mlp_step:2 cnn_step:2 lstm_step:2 bf16_matmul1024:2"; }
# TF_COMPARE_CASES="bf16_matmul1024:2 sgemm1024:2" runs only those cases.
cases=${TF_COMPARE_CASES:-$cases}
for c in $cases; do
  name=${c%%:*}; th=${c##*:}
  r=$reps; case $name in *gemm2048 | *matmul2048) r=2 ;; esac
  # Large GEMM rows also time their flops as register-only FMAs (`peak`): each side's share
  # of it. Below 512 the FMA loop's start on every thread (~10 µs) outweighs the work.
  extra=; case $name in sgemm512 | sgemm1024 | sgemm2048) extra=peak ;; esac
  "$py" benches/compare/interleave.py "$name" "$th" "$rounds" "$r" "$bin" $(peers_of "$name") $extra
done
