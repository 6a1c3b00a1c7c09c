#!/usr/bin/env bash
# Data-parallel training on this machine over MPI: the equivalence check (2 ranks x batch B
# against 1 process x batch 2B, MLP, CNN and LSTM) and the scaling of the CNN training step
# (train_digits --model cnn, one thread per rank: 2 ranks against 1), then the wrapper's cost
# on one rank. Prints, last:
#   distributed: ranks=2 max_rel_diff=<x> scaling=<2 ranks / 1 rank> one_rank_overhead=<x>
# Needs OpenMPI (apt-get install openmpi-bin libopenmpi-dev) and libclang (libclang-dev).
# Usage: scripts/distributed-check.sh [rounds]   (default 3; the median of each is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Containers forbid the ptrace-based single copy of the shared-memory transport.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export RAYON_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --bind-to core)

cargo build -q --release --features mpi --example train_digits
test_bin=$(cargo test -q --release --features mpi --test distributed --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*distributed[^"]*\)".*/\1/p' | tail -1)
[ -x "$test_bin" ] || { echo "could not build the distributed test" >&2; exit 1; }

echo "== equivalence: 2 ranks x batch B vs 1 process x batch 2B"
log=$(mktemp)
"${MPIRUN[@]}" -np 2 "$test_bin" two_ranks_over_mpi --exact --nocapture --test-threads=1 | tee "$log" | grep "rank 0:"
max_rel=$(grep "rank 0:.* f32 max relative difference" "$log" | awk '{print $NF}' | sort -g | tail -1)
grep -q "distributed checks passed on rank 1" "$log" || { echo "rank 1 did not pass" >&2; exit 1; }

# Samples per second in training steps (evaluation and file writing excluded).
rate() { # ranks, extra flags...
  local np=$1; shift
  local out
  out=$("${MPIRUN[@]}" -np "$np" target/release/examples/train_digits --model cnn --epochs 4 \
    --out "$(mktemp -d)" "$@" 2>&1)
  echo "$out" | sed -n 's/.*(\([0-9.]*\) samples\/s in training steps).*/\1/p'
}
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "== scaling: train_digits --model cnn, 1 thread per rank, $rounds interleaved rounds"
: >"$log.scale"; : >"$log.over"
for r in $(seq "$rounds"); do
  plain=$(rate 1)
  one=$(rate 1 --distributed)
  two=$(rate 2 --distributed)
  echo "round $r: samples/s  no wrapper $plain  1 rank $one  2 ranks $two"
  awk -v a="$two" -v b="$one" 'BEGIN{printf "%.3f\n", a/b}' >>"$log.scale"
  awk -v a="$plain" -v b="$one" 'BEGIN{printf "%.4f\n", a/b - 1}' >>"$log.over"
done
scaling=$(median <"$log.scale")
overhead=$(median <"$log.over")
rm -f "$log" "$log.scale" "$log.over"
echo "distributed: ranks=2 max_rel_diff=$max_rel scaling=$scaling one_rank_overhead=$overhead"
