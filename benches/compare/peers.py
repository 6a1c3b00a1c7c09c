"""The peers' side of benches/compare/run.sh: times one case with numpy, prints its median."""
import sys
import time

import numpy as np


def case(name):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)
    if name.startswith("sgemm"):
        n = int(name[5:])
        a, b = f(n, n), f(n, n)
        return lambda: a @ b
    if name == "bmm64x128":
        a, b = f(64, 128, 128), f(64, 128, 128)
        return lambda: np.matmul(a, b)
    if name == "add16M":
        a, b = f(1 << 24), f(1 << 24)
        return lambda: a + b
    if name == "softmax4096x1024":
        a = f(4096, 1024)

        def softmax():
            e = np.exp(a - a.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        return softmax
    raise SystemExit(f"unknown case {name}")


def main():
    if sys.argv[1] == "--blas":
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        try:
            from threadpoolctl import threadpool_info

            core = ",".join(f"{i.get('internal_api')}:{i.get('architecture')}" for i in threadpool_info())
        except ImportError:
            core = "?"
        print(f"numpy {np.__version__} blas={blas.get('name')} {blas.get('version')} kernel={core}")
        return
    name, reps = sys.argv[1], int(sys.argv[2])
    run = case(name)
    run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    print(f"peer_ms={times[len(times) // 2]:.4f}")


if __name__ == "__main__":
    main()
