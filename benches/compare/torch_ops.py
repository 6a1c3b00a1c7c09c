#!/usr/bin/env python3
"""Times the ops of benches/cuda_kernels.rs with PyTorch on the same GPU (CUDA events, after a
warm-up, median of many runs) and writes {"<op>/<dtype>/<size>": {seconds, work, unit}} as JSON
for scripts/gpu-check.sh to compare against. `work` is the fewest bytes moved (unit "byte")
or the FLOPs (unit "flop") of one call."""
import argparse, json
import torch

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def timeit(fn, reps=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    args = p.parse_args()
    out = {}
    n = 1 << 24
    for name in ["f32", "bf16"]:
        dt = DT[name]
        a = torch.rand(n, device="cuda", dtype=dt) * 2 - 1
        b = torch.rand(n, device="cuda", dtype=dt) * 2 - 1
        es = a.element_size()
        rows = a.view(n // 4096, 4096)
        cases = {
            "add": (lambda: a + b, 3 * n * es),
            "gelu_tanh": (lambda: torch.nn.functional.gelu(a, approximate="tanh"), 2 * n * es),
            "sum_rows": (lambda: rows.sum(dim=1, keepdim=True), n * es),
            "softmax_rows": (lambda: torch.softmax(rows, dim=1), 2 * n * es),
        }
        for op, (fn, work) in cases.items():
            out[f"{op}/{name}/{n}"] = {"seconds": timeit(fn), "work": work, "unit": "byte"}
    s = 4096
    for name in ["f32", "f16", "bf16"]:
        a = torch.rand(s, s, device="cuda", dtype=DT[name])
        b = torch.rand(s, s, device="cuda", dtype=DT[name])
        out[f"matmul/{name}/{s}x{s}x{s}"] = {"seconds": timeit(lambda: a @ b, 20), "work": 2 * s**3, "unit": "flop"}
    n, c, hw, k = 256, 64, 32, 64
    for name in ["f32", "bf16"]:
        x = torch.rand(n, c, hw, hw, device="cuda", dtype=DT[name]) * 2 - 1
        w = torch.rand(k, c, 3, 3, device="cuda", dtype=DT[name]) * 2 - 1
        key = f"conv2d/{name}/n{n}c{c}h{hw}k{k}"
        fn = lambda: torch.nn.functional.conv2d(x, w, padding=1)
        out[key] = {"seconds": timeit(fn, 20), "work": 2 * n * k * c * 9 * hw * hw, "unit": "flop"}
        # im2col: the columns written (bytes).
        fn = lambda: torch.nn.functional.unfold(x, 3, padding=1)
        out[f"im2col/{name}/n{n}c{c}h{hw}k3"] = {"seconds": timeit(fn, 20), "work": n * c * 9 * hw * hw * x.element_size(), "unit": "byte"}
    json.dump(out, open(args.json, "w"), indent=1)
    for k, v in out.items():
        print(f"{k}: {v['seconds'] * 1e6:.1f} us")


if __name__ == "__main__":
    main()
