#!/usr/bin/env bash
# Times the engine and numpy on the same cases in the same run, interleaved, and prints
#   RESULT case=<name> threads=<n> ours_ms=<median> peer=numpy peer_ms=<median> speedup=<peer/ours>
# Usage: benches/compare/run.sh [--quick]. Installs numpy into .venv-bench when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
quick=0; [ "${1:-}" = "--quick" ] && quick=1
venv=.venv-bench
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy threadpoolctl
fi
cargo bench --no-default-features --bench compare --no-run 2>/dev/null
bin=$(ls -t target/release/deps/compare-* | grep -v '\.d$' | head -1)
# The numpy side runs with OpenBLAS's own core detection.
peer() { env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS="$1" OMP_NUM_THREADS="$1" "$venv/bin/python" benches/compare/peers.py "${@:2}"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"
echo "peer: $(peer 1 --blas)"
reps=20; rounds=3
[ $quick = 1 ] && { reps=7; rounds=2; }
cases="sgemm128:2 sgemm256:2 sgemm512:2 sgemm1024:2 sgemm2048:2 sgemm1024:1 bmm64x128:2 add16M:2 softmax4096x1024:2"
[ $quick = 1 ] && cases="sgemm256:2 sgemm1024:2 sgemm1024:1 bmm64x128:2 add16M:2 softmax4096x1024:2"
for c in $cases; do
  name=${c%%:*}; th=${c##*:}
  r=$reps; [ "$name" = sgemm2048 ] && r=5
  ours=(); peers=()
  # Interleave rounds so drift on the machine hits both sides alike; keep each side's best round.
  for _ in $(seq $rounds); do
    ours+=("$(RAYON_NUM_THREADS=$th "$bin" "$name" "$th" "$r" | sed -n 's/ours_ms=//p')")
    peers+=("$(peer "$th" "$name" "$r" | sed -n 's/peer_ms=//p')")
  done
  o=$(printf '%s\n' "${ours[@]}" | sort -g | head -1)
  p=$(printf '%s\n' "${peers[@]}" | sort -g | head -1)
  echo "RESULT case=$name threads=$th ours_ms=$o peer=numpy peer_ms=$p speedup=$(python3 -c "print(f'{$p/$o:.2f}')")"
done
