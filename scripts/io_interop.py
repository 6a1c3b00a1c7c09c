#!/usr/bin/env python3
"""The numpy/safetensors side of tests/io_interop.rs.

    io_interop.py write DIR   writes .npy/.npz/.safetensors files of known arrays into DIR
    io_interop.py check DIR   reads the files tensorforge wrote into DIR/rust and compares
                              them, bit for bit, with the same known arrays

The arrays are defined twice, here and in tests/io_interop.rs (`expected()`); keep them in
step. Needs numpy and safetensors only (no torch): bf16 goes through the safetensors
reference (Rust) serializer's raw-bytes API.
"""
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

# bf16 bit patterns: 1, -2, inf, 0, -0, the smallest subnormal, a NaN.
BF16_BITS = np.array([0x3F80, 0xC000, 0x7F80, 0x0000, 0x8000, 0x0001, 0x7FC0], dtype=np.uint16)
METADATA = {"format": "tensorforge-interop", "quote\"key": "é ü"}


def specials(t):
    fi = np.finfo(t)
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fi.smallest_subnormal, fi.max, 1.0 / 3.0], dtype=t)


def expected():
    return {
        "f32": (np.arange(24, dtype=np.float32) * np.float32(0.5) - np.float32(3)).reshape(2, 3, 4),
        "f64_fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0),
        "f32_fortran3": np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
        "f16": (np.arange(-8, 8, dtype=np.float16) / np.float16(4)).reshape(4, 4),
        "special_f32": specials(np.float32),
        "special_f64": specials(np.float64),
        "special_f16": specials(np.float16),
        "i64": np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], dtype=np.int64),
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "bool": np.array([[True, False], [True, True]]),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((2, 0, 3), dtype=np.float32),
    }


def same(name, got, want):
    """Exact: dtype, shape and every bit (NaN payloads and -0.0 included)."""
    if want.dtype == np.bool_:
        want = want.astype(np.uint8)  # tensorforge has no bool dtype: U8 0/1
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    g = np.array(got, order="C").reshape(-1).view(np.uint8)
    w = np.array(want, order="C").reshape(-1).view(np.uint8)
    assert np.array_equal(g, w), f"{name}: values differ\n{got}\n{want}"


def write(d: Path):
    exp = expected()
    (d / "npy").mkdir(parents=True, exist_ok=True)
    for k, v in exp.items():
        np.save(d / "npy" / f"{k}.npy", v)
    # Inputs numpy writes but tensorforge widens or byte-swaps.
    np.save(d / "npy" / "i32.npy", np.array([np.iinfo(np.int32).min, 7], dtype=np.int32))
    np.save(d / "npy" / "be_f8.npy", np.array([1.5, -2.25], dtype=">f8"))
    assert np.load(d / "npy" / "f64_fortran.npy").flags.f_contiguous
    np.savez(d / "all.npz", **exp)
    np.savez_compressed(d / "all_compressed.npz", **exp)
    # np.array, not np.ascontiguousarray: the latter turns the rank-0 array into shape (1,).
    safetensors.numpy.save_file({k: np.array(v, order="C") for k, v in exp.items()}, str(d / "all.safetensors"),
                                metadata=METADATA)
    # bf16 has no numpy dtype: hand raw bytes to the reference serializer.
    f32 = np.array([1, 2], np.float32)
    safetensors.serialize_file({"bf16": raw_spec("bfloat16", BF16_BITS), "f32": raw_spec("float32", f32)},
                               str(d / "bf16.safetensors"), metadata=None)


def raw_spec(dtype, arr):
    """A tensor for the raw serializer: safetensors >= 0.8 takes a TensorSpec over a pointer
    (`arr` must outlive the call), older versions a dict holding the bytes."""
    if hasattr(safetensors, "TensorSpec"):
        return safetensors.TensorSpec(dtype=dtype, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def check(d: Path):
    exp = expected()
    r = d / "rust"
    for k, v in exp.items():
        same(f"{k}.npy", np.load(r / f"{k}.npy", allow_pickle=False), v)
    for npz in ["all.npz", "all_compressed.npz"]:
        with np.load(r / npz, allow_pickle=False) as z:
            assert sorted(z.files) == sorted(exp), z.files
            for k, v in exp.items():
                same(f"{npz}:{k}", z[k], v)
    st = safetensors.numpy.load_file(str(r / "all.safetensors"))
    assert sorted(st) == sorted(exp), list(st)
    for k, v in exp.items():
        same(f"all.safetensors:{k}", st[k], v)
    with safetensors.safe_open(str(r / "all.safetensors"), framework="np") as f:
        assert f.metadata() == METADATA, f.metadata()
    # bf16 through the reference deserializer (raw bytes, no numpy dtype needed).
    raw = dict(safetensors.deserialize((r / "bf16.safetensors").read_bytes()))
    assert raw["bf16"]["dtype"].lower() in ("bf16", "bfloat16"), raw["bf16"]  # the name varies by version
    assert list(raw["bf16"]["shape"]) == [len(BF16_BITS)]
    got = np.frombuffer(bytes(raw["bf16"]["data"]), dtype="<u2")
    assert np.array_equal(got, BF16_BITS), got
    # numpy's own validation of the header layout tensorforge writes.
    with open(r / "f32.npy", "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert (version, shape, fortran, dtype) == ((1, 0), (2, 3, 4), False, np.dtype("<f4")), (version, shape)
        assert f.tell() % 64 == 0, f.tell()
    print(f"io_interop.py: checked {len(exp)} arrays in npy, npz and safetensors, plus bf16")


if __name__ == "__main__":
    mode, d = sys.argv[1], Path(sys.argv[2])
    {"write": write, "check": check}[mode](d)
