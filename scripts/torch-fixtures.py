"""Writes tests/fixtures/torch/*.safetensors: state dicts saved by PyTorch itself
(`safetensors.torch.save_file(model.state_dict(), ...)`) for models the engine can build
layer for layer, with an input and PyTorch's output, so `cargo test` checks that a PyTorch
checkpoint loads with `load_state_dict(strict)` and computes the same thing, without Python.

Run:  scripts/torch-fixtures.sh   (makes .venv-torch with torch and safetensors, then this)
Each model trains a few steps first, so batch norm's running statistics and
num_batches_tracked are not their initial values; outputs are in eval mode.
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torch")


def trained(model, x, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        y = model(x)
        y = y[0] if isinstance(y, tuple) else y
        y.square().mean().backward()
        opt.step()
    model.eval()
    return model


def write(name, model, x):
    with torch.no_grad():
        y = model(x)
        y = y[0] if isinstance(y, tuple) else y
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, f"{name}.state.safetensors"))
    save_file({"input": x.contiguous(), "output": y.contiguous()}, os.path.join(OUT, f"{name}.io.safetensors"))
    print(name, sorted(state), tuple(y.shape))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    x = torch.randn(6, 4)
    write("mlp", trained(mlp, x), x)

    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5),
    )
    x = torch.randn(3, 2, 6, 6)
    write("cnn", trained(cnn, x), x)

    lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=False)
    x = torch.randn(7, 2, 3)
    write("lstm", trained(lstm, x), x)

    gru = torch.nn.GRU(3, 4, bidirectional=True)
    x = torch.randn(5, 2, 3)
    write("gru_bidirectional", trained(gru, x), x)


def ops():
    """ops.safetensors: for each case, its inputs `case.inK`, PyTorch's output `case.out`, the
    projection `case.w` and the gradients `case.gradK` of sum(out * w) (float inputs marked
    differentiable), all float64 (indices int64)."""
    F = torch.nn.functional
    torch.manual_seed(1)
    d = {}

    def case(name, fn, inputs, grad=None):
        grad = grad if grad is not None else [x.is_floating_point() for x in inputs]
        xs = [x.clone().requires_grad_(g) for x, g in zip(inputs, grad)]
        y = fn(*xs)
        extra = {}
        if isinstance(y, tuple):
            y, extra = y[0], y[1]
        w = torch.randn(y.shape, dtype=torch.float64)
        (y * w).sum().backward()
        for i, x in enumerate(inputs):
            d[f"{name}.in{i}"] = x.clone().contiguous()
        d[f"{name}.w"] = w
        d[f"{name}.out"] = y.detach().contiguous()
        for i, x in enumerate(xs):
            if x.grad is not None:
                d[f"{name}.grad{i}"] = x.grad.contiguous()
        for k, v in extra.items():
            d[f"{name}.{k}"] = v.detach().contiguous()

    r = lambda *s: torch.randn(*s, dtype=torch.float64)
    case("softplus", lambda x: F.softplus(x, beta=2.0, threshold=3.0), [r(12) * 2])
    case("logsumexp", lambda x: torch.logsumexp(x, dim=(0, 2), keepdim=True), [r(2, 3, 4)])
    t = torch.tensor([2, -100, 0, 3, 1])
    case("cross_entropy_weighted", lambda x, t, w: F.cross_entropy(x, t, weight=w, ignore_index=-100,
         label_smoothing=0.1), [r(5, 4), t, r(4).abs() + 0.5], grad=[True, False, False])
    case("cross_entropy_nchw_sum", lambda x, t: F.cross_entropy(x, t, reduction="sum"),
         [r(2, 3, 2, 2), torch.randint(0, 3, (2, 2, 2))])
    case("bce_pos_weight", lambda x, y, p: F.binary_cross_entropy_with_logits(x, y, pos_weight=p),
         [r(4, 3), torch.rand(4, 3, dtype=torch.float64), r(3).abs() + 0.2], grad=[True, False, False])
    case("smooth_l1", lambda x, y: F.smooth_l1_loss(x, y, beta=0.5), [r(10), r(10)], grad=[True, False])
    case("huber", lambda x, y: F.huber_loss(x, y, delta=2.0), [r(10) * 2, r(10)], grad=[True, False])
    case("layer_norm", lambda x, w, b: F.layer_norm(x, (5,), w, b, eps=1e-3), [r(4, 5), r(5), r(5)])

    def bn(x, w, b, rm, rv):
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-4)
        return y, {"running_mean": rm, "running_var": rv}
    case("batch_norm", bn, [r(3, 4, 2), r(4), r(4), r(4), r(4).abs() + 0.5], grad=[True, True, True, False, False])

    def pool(x):
        y, idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
        return y, {"indices": idx}
    case("max_pool2d_ceil", pool, [r(1, 2, 5, 7)])
    def pool1d(x):
        y, idx = F.max_pool1d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
        return y, {"indices": idx}
    case("max_pool1d_ceil", pool1d, [r(2, 3, 8)])
    case("max_unpool1d", lambda v: F.max_unpool1d(v, F.max_pool1d(d["max_pool1d_ceil.in0"], 3, 2, 1,
         ceil_mode=True, return_indices=True)[1], 3, 2, 1, output_size=[8]), [d["max_pool1d_ceil.out"].clone()])
    ties = torch.tensor([[2.0, 5.0, 5.0, 1.0], [1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    case("amax_ties", lambda x: torch.amax(x, dim=1), [ties])
    case("max_dim_ties", lambda x: torch.max(x, dim=1).values, [ties])
    case("maximum_ties", lambda a, b: torch.maximum(a, b), [ties[0], torch.tensor([2.0, 6.0, 5.0, 0.0],
         dtype=torch.float64)])
    case("pow_at_zero", lambda a, b: torch.pow(a, b), [torch.tensor([-3.0, 0.0, 0.0, 0.0, 2.0], dtype=torch.float64),
         torch.tensor([2.0, 2.0, 3.0, 0.0, 3.0], dtype=torch.float64)], grad=[True, False])
    case("ctc_concatenated", lambda x, t: F.ctc_loss(F.log_softmax(x, 2), t, [5, 4], [3, 1], reduction="mean"),
         [r(5, 2, 4), torch.tensor([1, 3, 2, 2])])
    case("embedding_padding", lambda wt, ids: F.embedding(ids, wt, padding_idx=2),
         [r(4, 3), torch.tensor([[2, 1], [2, 0]])])

    # SGD with momentum and dampening: three steps with fixed gradients.
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.01)
    gs = [torch.tensor(g, dtype=torch.float64) for g in ([0.3, -0.1, 2.0], [1.0, 0.0, -1.0], [-0.5, 0.25, 0.75])]
    d["sgd_dampening.in0"] = p.detach().clone()
    for k, g in enumerate(gs):
        d[f"sgd_dampening.g{k}"] = g
        p.grad = g.clone()
        opt.step()
    d["sgd_dampening.out"] = p.detach().clone()
    save_file(d, os.path.join(OUT, "ops.safetensors"))
    print("ops", len(d), "tensors")


if __name__ == "__main__":
    main()
    ops()
