#!/usr/bin/env bash
# Creates .venv-interop (numpy + safetensors, no torch) for tests/io_interop.rs and prints
# the python to point TENSORFORGE_INTEROP_PYTHON at:
#   TENSORFORGE_INTEROP_PYTHON=$(scripts/interop-venv.sh) cargo test --test io_interop
# Progress goes to stderr so that stdout is only the path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-interop"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy safetensors >&2
"$venv/bin/python" -c 'import numpy, safetensors' >&2
echo "$venv/bin/python"
