#!/usr/bin/env bash
# Regenerates tests/fixtures/torch/ with PyTorch (see scripts/torch-fixtures.py). Needs
# network access to PyPI once; the fixtures are checked in, so `cargo test` needs no Python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TF_TORCH_VENV:-$root/.venv-torch}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import torch, safetensors' 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch safetensors numpy
"$venv/bin/python" "$root/scripts/torch-fixtures.py"
