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


if __name__ == "__main__":
    main()
