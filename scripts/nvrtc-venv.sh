#!/usr/bin/env bash
# Installs NVRTC (and the CUDA headers, unused by the engine but handy for debugging) into a
# git-ignored venv, so `cargo test --test nvrtc_compile` can compile every kernel to PTX on a
# machine with no GPU and no CUDA toolkit.
#
# Usage:  scripts/nvrtc-venv.sh [VENV_DIR]        (default: .venv-nvrtc at the repo root)
# Prints, last, the line to eval:  export LD_LIBRARY_PATH=...
#
# cudarc 0.19.10 (dynamic loading, cuda-13000) searches `libnvrtc.so.13` among its candidate
# names, which is exactly what the wheel ships, so no symlink is needed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv-nvrtc}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
lib="$site/nvidia/cu13/lib"
if [ ! -e "$lib/libnvrtc.so.13" ]; then
    echo "nvrtc-venv: $lib/libnvrtc.so.13 not found after install" >&2
    exit 1
fi
echo "nvrtc-venv: NVRTC is in $lib (headers: $site/nvidia/cu13/include)" >&2
echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
