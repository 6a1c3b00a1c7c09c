#!/usr/bin/env python3
"""Compiles every kernel family with NVRTC (as src/backend/cuda/compile.rs does: abi.h and
common.cuh spliced in, `--gpu-architecture=ARCH --std=c++17`) and writes one PTX file per
family and arch into OUT_DIR, from the working tree or from a git revision.

    scripts/ptx-dump.py OUT_DIR [--rev REV] [--arch sm_80 --arch sm_90]

Needs libnvrtc.so.13 on LD_LIBRARY_PATH (scripts/nvrtc-venv.sh). Used to check that moving
inline PTX behind helpers leaves NVRTC's output byte-identical:
    diff -r <(scripts/ptx-dump.py a --rev HEAD~1) ...  or  diff -r a b
"""
import argparse, ctypes, glob, os, subprocess, sys

FAMILIES = ["fill", "cast", "unary", "binary", "reduce", "softmax", "matmul", "index", "optim", "conv", "ctc", "rnn"]


def read(path, rev):
    if rev is None:
        return open(path).read()
    return subprocess.check_output(["git", "show", f"{rev}:{path}"], text=True)


def expanded(src, headers):
    out = []
    for line in src.split("\n"):
        t = line.strip()
        name = t[len('#include "'):-1] if t.startswith('#include "') else None
        out.append(headers[name] if name in headers else line)
    return "\n".join(out) + "\n"


def ops_h():
    """The newest ops.h a cargo build generated (build.rs writes it from src/backend/mod.rs)."""
    found = glob.glob("target/**/build/tensorforge-*/out/ops.h", recursive=True)
    if not found:
        sys.exit("ptx-dump: no generated ops.h under target/: run cargo build first")
    return open(max(found, key=os.path.getmtime)).read()


def compile_ptx(lib, name, src, arch):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None)
    assert rc == 0, rc
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    if rc != 0:
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, buf)
        sys.exit(f"{name} {arch}: {buf.value.decode()}")
    n = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetPTX(prog, buf)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value.decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rev")
    ap.add_argument("--arch", action="append")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    lib = ctypes.CDLL("libnvrtc.so.13")
    headers = {"abi.h": read("kernels/abi.h", a.rev), "common.cuh": read("kernels/common.cuh", a.rev)}
    if '#include "ops.h"' in read("kernels/unary.cu", a.rev):
        headers["ops.h"] = ops_h()
    os.makedirs(a.out, exist_ok=True)
    for arch in a.arch or ["sm_80", "sm_90"]:
        for fam in FAMILIES:
            ptx = compile_ptx(lib, fam, expanded(read(f"kernels/{fam}.cu", a.rev), headers), arch)
            open(os.path.join(a.out, f"{fam}-{arch}.ptx"), "w").write(ptx)
    print(a.out)


if __name__ == "__main__":
    main()
