"""The peers' side of benches/compare/run.sh: times one case with numpy, torch or jax.

    peers.py <peer> <case> <threads> <reps>   prints peer_ms=<median>
    peers.py --serve <peer> <case> <threads>  warms up, prints "ready", then answers each
                                              line <reps> on stdin with ms=<median>
    peers.py --check <peer> <case>            prints the output's checksum (mlp_step: 5 losses)
    peers.py --versions                       prints the peers' versions and numpy's BLAS kernel

Cases mirror benches/compare/main.rs: same shapes, f32, fresh outputs, same input values (det).
"""
import os
import sys
import time

WARMUP = 5  # calls before timing; benches/compare/main.rs makes the same number
ROUND_WARMUP_S = 0.05  # --serve: untimed calls before each round, as main.rs


def set_threads(n):
    # Read once when numpy/OpenBLAS and XLA load, so they must be set before the imports below.
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def det(shape, seed):
    """Uniform in [-1, 1) from an integer hash of (index, seed), exactly main.rs's values: the
    same inputs on every side without sharing an RNG."""
    import numpy as np

    x = np.arange(int(np.prod(shape)), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((seed * 0xBF58476D1CE4E5B9) % 2**64)
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return ((x >> np.uint64(40)).astype(np.float64) / 2**23 - 1).astype(np.float32).reshape(shape)


MLP = [784, 512, 512, 10]


def mlp_init():
    """(weight [out, in], bias) per layer, as main.rs builds them; x [128, 784]; labels i % 10."""
    import numpy as np

    params = []
    for l, (i, o) in enumerate(zip(MLP, MLP[1:])):
        s = np.float32(1 / np.sqrt(i))
        params.append((det((o, i), 10 + l) * s, det((o,), 20 + l) * s))
    return params, det((128, 784), 30), np.arange(128, dtype=np.int64) % 10


def numpy_case(name):
    import numpy as np

    if name.startswith("sgemm"):
        n = int(name[5:])
        a, b = det((n, n), 0), det((n, n), 1)
        return lambda: a @ b
    if name == "bmm64x128":
        a, b = det((64, 128, 128), 0), det((64, 128, 128), 1)
        return lambda: np.matmul(a, b)
    if name == "add16M":
        a, b = det((1 << 24,), 0), det((1 << 24,), 1)
        return lambda: a + b
    if name == "softmax4096x1024":
        a = det((4096, 1024), 0)

        def softmax():
            e = np.exp(a - a.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        return softmax
    raise SystemExit(f"numpy: no case {name}")


def torch_case(name, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    t = lambda *a: torch.from_numpy(det(*a))
    if name.startswith("sgemm"):
        n = int(name[5:])
        a, b = t((n, n), 0), t((n, n), 1)
        return lambda: a @ b
    for prefix, dt in (("bf16_matmul", torch.bfloat16), ("f16_matmul", torch.float16)):
        if name.startswith(prefix):
            n = int(name[len(prefix):])
            a, b = t((n, n), 0).to(dt), t((n, n), 1).to(dt)
            return lambda: a @ b
    if name == "bmm64x128":
        a, b = t((64, 128, 128), 0), t((64, 128, 128), 1)
        return lambda: torch.matmul(a, b)
    if name == "add16M":
        a, b = t((1 << 24,), 0), t((1 << 24,), 1)
        return lambda: a + b
    if name == "softmax4096x1024":
        a = t((4096, 1024), 0)
        return lambda: torch.softmax(a, dim=-1)
    if name == "conv2d_n32c64k64":
        x, w = t((32, 64, 32, 32), 0), t((64, 64, 3, 3), 1)
        return lambda: F.conv2d(x, w, padding=1)
    if name in ("cnn_step", "lstm_step"):
        return torch_step(name)
    if name == "mlp_step":
        params, x, y = mlp_init()
        layers = []
        for w, b in params:
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        return step
    raise SystemExit(f"torch: no case {name}")


def torch_step(name):
    """cnn_step / lstm_step exactly as main.rs builds them: the same values (det, scaled by
    1/sqrt(fan_in)), shapes, batch and SGD step."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    def put(param, shape, seed, fan_in):
        with torch.no_grad():
            param.copy_(torch.from_numpy(det(shape, seed) * np.float32(1 / np.sqrt(fan_in))))

    if name == "cnn_step":
        c1, c2 = torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 3, padding=1)
        fc = torch.nn.Linear(512, 10)
        for p, shape, seed, fan in ((c1.weight, (16, 1, 3, 3), 40, 9), (c1.bias, (16,), 41, 9),
                                    (c2.weight, (32, 16, 3, 3), 42, 144), (c2.bias, (32,), 43, 144),
                                    (fc.weight, (10, 512), 44, 512), (fc.bias, (10,), 45, 512)):
            put(p, shape, seed, fan)
        model = torch.nn.Sequential(c1, torch.nn.ReLU(), c2, torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                    torch.nn.Flatten(), fc)
        x = torch.from_numpy(det((32, 1, 8, 8), 46))
        y = torch.arange(32) % 10
        forward = lambda: model(x)
    else:
        vocab, emb, hidden, n, t = 64, 32, 64, 32, 48
        e, lstm, fc = torch.nn.Embedding(vocab, emb), torch.nn.LSTM(emb, hidden, batch_first=True), torch.nn.Linear(hidden, vocab)
        with torch.no_grad():
            e.weight.copy_(torch.from_numpy(det((vocab, emb), 50)))
        for p, shape, seed in ((lstm.weight_ih_l0, (4 * hidden, emb), 51), (lstm.weight_hh_l0, (4 * hidden, hidden), 52),
                               (lstm.bias_ih_l0, (4 * hidden,), 53), (lstm.bias_hh_l0, (4 * hidden,), 54),
                               (fc.weight, (vocab, hidden), 55), (fc.bias, (vocab,), 56)):
            put(p, shape, seed, hidden)
        model = torch.nn.ModuleList([e, lstm, fc])
        token = lambda i, s: (i * 7 + s * 3 + (i * s) % 5) % vocab
        x = torch.tensor([[token(i, s) for s in range(t)] for i in range(n)])
        y = torch.tensor([token(i, s + 1) for i in range(n) for s in range(t)])
        forward = lambda: fc(lstm(e(x))[0].reshape(n * t, hidden))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(forward(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def jax_case(name):
    import jax
    import jax.numpy as jnp

    t = lambda *a: jnp.asarray(det(*a))
    # Every call returns a fresh array; block_until_ready makes the timing cover the work.
    run = lambda f, *args: (lambda: f(*args).block_until_ready())
    if name.startswith("sgemm"):
        n = int(name[5:])
        return run(jax.jit(jnp.matmul), t((n, n), 0), t((n, n), 1))
    if name == "bmm64x128":
        return run(jax.jit(jnp.matmul), t((64, 128, 128), 0), t((64, 128, 128), 1))
    if name == "add16M":
        return run(jax.jit(jnp.add), t((1 << 24,), 0), t((1 << 24,), 1))
    if name == "softmax4096x1024":
        return run(jax.jit(lambda a: jax.nn.softmax(a, axis=-1)), t((4096, 1024), 0))
    if name == "conv2d_n32c64k64":
        conv = lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return run(jax.jit(conv), t((32, 64, 32, 32), 0), t((64, 64, 3, 3), 1))
    if name == "mlp_step":
        params, x, y = mlp_init()
        params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in params]
        x, y = jnp.asarray(x), jnp.asarray(y)

        def loss_fn(params, x, y):
            for w, b in params[:-1]:
                x = jax.nn.relu(x @ w.T + b)
            w, b = params[-1]
            logp = jax.nn.log_softmax(x @ w.T + b)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        # Donating the old parameters lets XLA update them in place, as torch and the engine do.
        def step(params, x, y):
            loss, g = jax.value_and_grad(loss_fn)(params, x, y)
            return loss, jax.tree.map(lambda p, d: p - 0.01 * d, params, g)

        step = jax.jit(step, donate_argnums=0)
        state = [params]

        def call():
            loss, state[0] = step(state[0], x, y)
            jax.block_until_ready(state[0])
            return loss

        return call
    raise SystemExit(f"jax: no case {name}")


def make(peer, name, threads):
    if peer == "numpy":
        return numpy_case(name)
    if peer == "torch":
        return torch_case(name, threads)
    if peer == "jax":
        return jax_case(name)
    raise SystemExit(f"unknown peer {peer}")


def versions():
    import jax
    import numpy as np
    import torch

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    try:
        from threadpoolctl import threadpool_info

        core = ",".join(f"{i.get('internal_api')}:{i.get('architecture')}" for i in threadpool_info())
    except ImportError:
        core = "?"
    print(f"numpy {np.__version__} blas={blas.get('name')} {blas.get('version')} kernel={core}")
    print(f"torch {torch.__version__} mkldnn={torch.backends.mkldnn.is_available()}")
    print(f"jax {jax.__version__} devices={jax.devices()}")


def main():
    if sys.argv[1] == "--versions":
        set_threads(1)
        return versions()
    if sys.argv[1] == "--check":
        peer, name = sys.argv[2:4]
        set_threads(1)
        run = make(peer, name, 1)
        if name.endswith("_step"):
            print("losses=" + ",".join(f"{float(run()):.6f}" for _ in range(5)))
        else:
            import numpy as np

            out = run()
            # torch's half-precision tensors convert to numpy through f32.
            v = np.asarray(out.float() if hasattr(out, "float") else out, dtype=np.float64)
            print(f"sum={v.sum():.6e} abs={np.abs(v).sum():.6e} sq={(v * v).sum():.6e}")
        return
    serve = sys.argv[1] == "--serve"
    peer, name, threads = sys.argv[1 + serve : 4 + serve]
    threads = int(threads)
    set_threads(threads)
    run = make(peer, name, threads)
    # Warm-up: page-in, thread-pool start, jax compilation; torch's first calls in a fresh
    # process stay slow for a few calls, so one is not enough (every side does the same).
    for _ in range(WARMUP):
        run()
    if not serve:
        return print(f"peer_ms={median_ms(run, int(sys.argv[4])):.4f}")
    # interleave.py keeps this process, warm, for a whole case and asks for a round at a time;
    # each round starts with untimed calls for ROUND_WARMUP_S: after the other sides' turns,
    # every side here (jax most) takes several calls to get back to its speed.
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        run()
        while time.perf_counter() - start < ROUND_WARMUP_S:
            run()
        print(f"ms={median_ms(run, int(line)):.4f}", flush=True)


def median_ms(run, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


if __name__ == "__main__":
    main()
