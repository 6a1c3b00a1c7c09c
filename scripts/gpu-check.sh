#!/usr/bin/env bash
# Build here, run on the GPU machine.
#
#   scripts/gpu-check.sh build          (build machine: needs Rust; no GPU)
#       Builds release test binaries (cuda_parity, cuda_allocator, cuda_matmul_tiled, cuda_tensor,
#       cuda_ctc, custom_op, custom_general, accurate_sums, amp, out_of_memory, nvrtc_compile,
#       cuda_unavailable; nccl, built with --features nccl), the cuda_kernels bench and the examples train_digits, ctc_toy,
#       char_lstm and custom_rmsnorm with --features cuda, strips them and copies them with the
#       comparison script into gpu-bundle/ and packs gpu-bundle.tar.gz (both git-ignored), checking the archive is
#       under the device tool's 64 MiB.
#
#   scripts/gpu-check.sh run OUT_DIR    (GPU machine: no Rust; python3 + PyTorch)
#       From the repository root (or with GPU_BUNDLE=path): runs every test including the
#       ignored GPU ones, the examples on `--device cuda`, the CUDA benches, and
#       benches/compare/torch_ops.py; writes seven files to OUT_DIR (env.txt, tests.log,
#       examples.log, bench_ours.log, bench_torch.log, bench_torch.json and summary.txt: op,
#       dtype, size, ours, torch, ratio, GB/s or TFLOP/s). Expect about 4 minutes; each step
#       has its own timeout (14 minutes at worst).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${GPU_BUNDLE:-$root/gpu-bundle}"

build() {
    cd "$root"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
    local json
    json="$(mktemp)"
    cargo test --release --features cuda,nccl --no-run --message-format=json \
        --test nccl --test cuda_parity --test cuda_allocator --test cuda_matmul_tiled --test cuda_tensor --test cuda_ctc --test custom_op --test custom_general --test accurate_sums --test amp --test out_of_memory --test nvrtc_compile --test cuda_unavailable >"$json"
    cargo bench --features cuda --no-run --message-format=json --bench cuda_kernels >>"$json"
    cargo build --release --features cuda --message-format=json \
        --example train_digits --example ctc_toy --example char_lstm --example custom_rmsnorm >>"$json"
    rm -rf "$bundle"
    mkdir -p "$bundle/bin" "$bundle/compare"
    # Each compiler-artifact line with an executable names one test or bench binary.
    python3 - "$json" "$bundle/bin" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
wanted = {"nccl", "cuda_parity", "cuda_allocator", "cuda_matmul_tiled", "cuda_tensor", "cuda_ctc", "custom_op", "custom_general", "accurate_sums", "amp", "out_of_memory", "nvrtc_compile", "cuda_unavailable", "cuda_kernels",
          "train_digits", "ctc_toy", "char_lstm", "custom_rmsnorm"}
found = set()
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in wanted:
        name = m["target"]["name"]
        shutil.copy(m["executable"], os.path.join(dst, name))
        found.add(name)
missing = wanted - found
if missing:
    sys.exit(f"gpu-check: binaries not found for {sorted(missing)}")
PY
    rm -f "$json"
    strip "$bundle"/bin/*
    cp benches/compare/torch_ops.py "$bundle/compare/"
    cp scripts/gpu-check.sh "$bundle/"
    # The device tool carries at most 64 MiB; the stripped binaries alone are more, so they
    # travel as one gzip archive (every machine can unpack it).
    tar czf "$bundle.tar.gz" -C "$(dirname "$bundle")" "$(basename "$bundle")"
    local size
    size=$(stat -c %s "$bundle.tar.gz")
    if [ "$size" -ge $((64 * 1024 * 1024)) ]; then
        echo "gpu-check: $bundle.tar.gz is $size bytes, over 64 MiB" >&2
        exit 1
    fi
    echo "gpu-check: $bundle.tar.gz ready ($size bytes); on the GPU machine:"
    echo "  tar xzf $(basename "$bundle").tar.gz -C /tmp && bash /tmp/$(basename "$bundle")/gpu-check.sh run \$OUT"
}

run() {
    local out="${1:?usage: gpu-check.sh run OUT_DIR}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    # The bundle carries this script; when run from inside it, the binaries sit next to it.
    if [ ! -d "$bundle/bin" ] && [ -d "$(dirname "${BASH_SOURCE[0]}")/bin" ]; then
        bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    fi
    local bin="$bundle/bin" status=0
    export TENSORFORGE_REQUIRE_NVRTC=1
    # The PTX cache stays out of OUT_DIR: the device tool brings back at most eight files.
    export TENSORFORGE_CACHE_DIR="${TMPDIR:-/tmp}/tensorforge-ptx-cache"
    # cudarc opens libnvrtc by name, so its folder must be on the loader's path: the CUDA
    # toolkit's, or the one PyTorch's nvidia-cuda-nvrtc wheel brings.
    local d
    for d in /usr/local/cuda/lib64 \
        "$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null)"; do
        if [ -n "$d" ] && ls "$d"/libnvrtc.so* >/dev/null 2>&1; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    done
    # What the binaries need there: glibc 2.34 or newer (they were built here) and NVRTC 13.
    local glibc
    # sed reads all of ldd's output: `head -1` would close the pipe early, and under pipefail
    # ldd's SIGPIPE failed the check on one run.
    glibc="$(ldd --version 2>/dev/null | sed -n '1s/.* \([0-9][0-9]*\.[0-9][0-9]*\)$/\1/p')"
    glibc="${glibc:-0.0}"
    if [ "$(printf '%s\n2.34\n' "$glibc" | sort -V | head -1)" != "2.34" ]; then
        echo "gpu-check: glibc $glibc on this machine; the bundle needs 2.34 or newer" >&2
        return 1
    fi
    local found="" p
    ldconfig -p 2>/dev/null | grep -q 'libnvrtc.so.13' && found=1
    IFS=: read -ra paths <<<"${LD_LIBRARY_PATH:-}"
    for p in "${paths[@]}"; do [ -e "$p/libnvrtc.so.13" ] && found=1; done
    if [ -z "$found" ]; then
        echo "gpu-check: libnvrtc.so.13 (NVRTC 13) not found on the loader's path or in LD_LIBRARY_PATH" >&2
        return 1
    fi
    {
        nvidia-smi -L || true
        python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' || true
        echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    } >"$out/env.txt" 2>&1
    # cudarc loads NCCL as libnccl.so, a name pip's nvidia-nccl package does not ship: link it.
    local nccl_so
    nccl_so="$(python3 - 2>/dev/null <<'PY' || true
import glob, site
hits = [f for p in site.getsitepackages() for f in sorted(glob.glob(p + "/nvidia/nccl/lib/libnccl.so*"))]
print(hits[0] if hits else "")
PY
)"
    if [ -n "$nccl_so" ]; then
        mkdir -p "${TMPDIR:-/tmp}/tf-nccl"
        ln -sf "$nccl_so" "${TMPDIR:-/tmp}/tf-nccl/libnccl.so"
        export LD_LIBRARY_PATH="${TMPDIR:-/tmp}/tf-nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    echo "NCCL: ${nccl_so:-not found}" >>"$out/env.txt"
    for t in cuda_unavailable nvrtc_compile cuda_parity cuda_allocator cuda_matmul_tiled cuda_tensor cuda_ctc custom_op custom_general accurate_sums amp out_of_memory nccl; do
        echo "== $t" | tee -a "$out/tests.log"
        # cuda_parity runs on the GPU; nvrtc_compile compiles every kernel for two targets on
        # the CPU (over 60 s on one thread of the H200 machine).
        case $t in cuda_parity | nvrtc_compile) limit=150 ;; *) limit=60 ;; esac
        if ! timeout "$limit" "$bin/$t" --include-ignored --test-threads=1 >>"$out/tests.log" 2>&1; then
            echo "FAILED: $t" | tee -a "$out/tests.log"
            status=1
        fi
    done
    # End to end: each example trains on the GPU and prints its result line.
    : >"$out/examples.log"
    local ex
    local tmp="${TMPDIR:-/tmp}/tf-examples"
    for ex in "train_digits --device cuda --epochs 5 --out $tmp" \
        "train_digits --device cuda --model cnn --epochs 2 --out $tmp" \
        "ctc_toy --device cuda" "char_lstm --device cuda" "custom_rmsnorm"; do
        echo "== $ex" | tee -a "$out/examples.log"
        # shellcheck disable=SC2086 # the words are the example and its flags
        if ! timeout 60 "$bin"/$ex >>"$out/examples.log" 2>&1; then
            echo "FAILED: $ex" | tee -a "$out/examples.log"
            status=1
        fi
    done
    timeout 150 "$bin/cuda_kernels" --bench --warm-up-time 1 --measurement-time 2 >"$out/bench_ours.log" 2>&1 || status=1
    timeout 90 python3 "$bundle/compare/torch_ops.py" --json "$out/bench_torch.json" >"$out/bench_torch.log" 2>&1 || status=1
    python3 - "$out/bench_ours.log" "$out/bench_torch.json" >"$out/summary.txt" <<'PY' || status=1
import json, re, sys
units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
ours, name = {}, None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    s = line.strip()
    if s.startswith("cuda/"):
        name = s.split()[0]
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", s)
    if m and name:
        ours[name] = float(m.group(1)) * units[m.group(2)]
        name = None
try:
    torch = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    torch = {}
print(f"{'op':<14}{'dtype':<7}{'size':<20}{'ours':>12}{'torch':>12}{'ratio':>8}  rate")
for key, t in sorted(ours.items()):
    # key: cuda/<family>/<dtype>/<op>/<size>, or cuda/matmul|conv2d|im2col/<dtype>/<size>
    parts = key.split("/")
    if parts[1] in ("matmul", "conv2d", "im2col"):
        op, dt, size = parts[1], parts[2], parts[3]
    else:
        op, dt, size = parts[3], parts[2], parts[4]
    ref = torch.get(f"{op}/{dt}/{size}", {})
    tt = ref.get("seconds")
    work = ref.get("work", 0)
    unit = ref.get("unit", "")
    rate = f"{work / t / 1e12:.1f} TFLOP/s" if unit == "flop" else f"{work / t / 1e9:.0f} GB/s" if work else ""
    print(f"{op:<14}{dt:<7}{size:<20}{t*1e6:>10.1f}us{(tt or 0)*1e6:>10.1f}us{(tt / t if tt else 0):>8.2f}  {rate}")
PY
    cat "$out/summary.txt"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run OUT_DIR" >&2; exit 2 ;;
esac
