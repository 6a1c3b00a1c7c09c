//! Reading and writing tensors in the files other frameworks use: NumPy's `.npy` and
//! `.npz`, and Hugging Face's safetensors.
//!
//! Every reader treats its input as hostile: a truncated file, a garbage header, a shape
//! whose element count overflows, offsets that point outside the data — each is an
//! [`Error::Io`] naming the file (and the entry), never a panic, and no reader allocates
//! a declared size before checking it against the bytes actually present.
//!
//! | format | dtypes in | dtypes out |
//! |---|---|---|
//! | npy / npz | `f4 f8 f2 i8 u1 b1` (bool → U8), `i1 i2 i4 u2 u4` widened to I64, either byte order, C or Fortran order | F32 F64 F16 I64 U8, C order, little-endian (BF16 is an error: use safetensors) |
//! | safetensors | `F32 F64 F16 BF16 I64 U8 BOOL` (bool → U8), `I8 I16 I32 U16 U32` widened to I64 | all six dtypes |
//!
//! Tensors come back on the CPU, contiguous; tensors on another device are copied to the
//! host to be written.
//!
//! ```
//! use tensorforge::{Tensor, Device, io};
//! let dir = std::env::temp_dir().join(format!("tf-io-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let w = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), Device::Cpu)?;
//! io::save_named(dir.join("model.safetensors"), &[("w".to_string(), w.clone())])?;
//! let back = io::load_named(dir.join("model.safetensors"))?;
//! assert_eq!(back[0].0, "w");
//! assert_eq!(back[0].1.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), tensorforge::Error>(())
//! ```

mod atomic;
mod json;
pub mod npy;
pub mod npz;
pub mod safetensors;

pub use npy::{from_npy_bytes, read_npy, to_npy_bytes, write_npy};
pub use npz::{from_npz_bytes, read_npz, to_npz_bytes, to_npz_bytes_compressed, write_npz, write_npz_compressed};
pub use safetensors::{
    from_safetensors_bytes, load_named, read_safetensors, save_named, to_safetensors_bytes, write_safetensors,
};

use crate::backend::cpu::CpuStorage;
use crate::shape::MAX_DIMS;
use crate::storage::Storage;
use crate::{DType, Error, Result, Tensor};
use half::{bf16, f16};
use std::path::Path;

/// An [`Error::Io`] for `context` (a path, or `path: entry`).
pub(crate) fn err(context: &str, msg: impl Into<String>) -> Error {
    Error::Io { context: context.to_string(), msg: msg.into() }
}

/// The whole file, with the path as the error context.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| err(&path.display().to_string(), e.to_string()))
}

/// Writes a file a user will load later: crash-safe (see [`atomic`]).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic::write_atomic(path, bytes)
}

/// Re-labels an error from a bytes-level reader/writer with the file's path, so that the
/// message says which file (and, already in `context`, which entry) was bad.
pub(crate) fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Io { context, msg } => Error::Io { context: format!("{}: {context}", path.display()), msg },
        other => other,
    }
}

/// How the elements of a file are encoded: the engine dtype they become, plus how each
/// element is stored (its width, signedness and byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Elem {
    pub dtype: DType,
    pub kind: ElemKind,
    pub big_endian: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ElemKind {
    /// Stored exactly as the engine dtype.
    Native,
    /// A bool byte: any non-zero is true (1).
    Bool,
    /// A narrower integer, widened losslessly to I64: (bytes, signed).
    Int(usize, bool),
}

impl Elem {
    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self.kind {
            ElemKind::Native => self.dtype.size_in_bytes(),
            ElemKind::Bool => 1,
            ElemKind::Int(n, _) => n,
        }
    }
}

/// The element count of `dims` and its byte size, or an error when either overflows or
/// the rank is beyond what the engine holds. Called before any allocation.
pub(crate) fn checked_size(ctx: &str, dims: &[usize], elem: Elem) -> Result<(usize, usize)> {
    if dims.len() > MAX_DIMS {
        return Err(err(ctx, format!("rank {} exceeds the engine's maximum of {MAX_DIMS} dims", dims.len())));
    }
    // As for `Shape::checked_size`: a 0 anywhere is an empty tensor, whatever the others.
    if dims.contains(&0) {
        return Ok((0, 0));
    }
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(ctx, format!("shape {dims:?} has more elements than fit in memory")))?;
    let bytes = n
        .checked_mul(elem.size())
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| err(ctx, format!("shape {dims:?} needs more bytes than fit in memory")))?;
    Ok((n, bytes))
}

fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

/// Decodes stored elements into a contiguous CPU tensor of shape `dims`.
/// `bytes` must hold exactly the elements of `dims` (the caller has checked it against
/// [`checked_size`]; this re-checks so that no caller can slip).
pub(crate) fn tensor_from_bytes(ctx: &str, bytes: &[u8], elem: Elem, dims: &[usize]) -> Result<Tensor> {
    let (_, nbytes) = checked_size(ctx, dims, elem)?;
    if bytes.len() != nbytes {
        return Err(err(ctx, format!("shape {dims:?} needs {nbytes} bytes of data, found {}", bytes.len())));
    }
    macro_rules! decode {
        ($n:literal, $conv:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let mut a = arr::<$n>(c);
                    if elem.big_endian {
                        a.reverse();
                    }
                    $conv(a)
                })
                .collect()
        };
    }
    let storage = match (elem.kind, elem.dtype) {
        (ElemKind::Bool, _) => CpuStorage::U8(bytes.iter().map(|&b| (b != 0) as u8).collect()),
        (ElemKind::Int(n, signed), _) => CpuStorage::I64(
            bytes
                .chunks_exact(n)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a[..n].copy_from_slice(c);
                    if elem.big_endian {
                        a[..n].reverse();
                    }
                    // Sign-extend from the stored width.
                    let shift = 64 - 8 * n as u32;
                    let v = u64::from_le_bytes(a) << shift;
                    if signed { (v as i64) >> shift } else { (v >> shift) as i64 }
                })
                .collect(),
        ),
        (ElemKind::Native, DType::F32) => CpuStorage::F32(decode!(4, f32::from_le_bytes)),
        (ElemKind::Native, DType::F64) => CpuStorage::F64(decode!(8, f64::from_le_bytes)),
        (ElemKind::Native, DType::F16) => CpuStorage::F16(decode!(2, |a| f16::from_bits(u16::from_le_bytes(a)))),
        (ElemKind::Native, DType::BF16) => CpuStorage::BF16(decode!(2, |a| bf16::from_bits(u16::from_le_bytes(a)))),
        (ElemKind::Native, DType::I64) => CpuStorage::I64(decode!(8, i64::from_le_bytes)),
        (ElemKind::Native, DType::U8) => CpuStorage::U8(bytes.to_vec()),
    };
    Ok(Tensor::from_contiguous(Storage::Cpu(storage), dims.to_vec()))
}

/// The tensor's elements in row-major order as little-endian bytes (copied to the host
/// when on another device).
pub(crate) fn tensor_to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Result<Vec<u8>> {
        let mut out = crate::backend::cpu::pool::try_with_capacity("tensor bytes", v.len() * N)?;
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        Ok(out)
    }
    Ok(match t.to_cpu_storage()? {
        CpuStorage::F32(v) => le(&v, f32::to_le_bytes)?,
        CpuStorage::F64(v) => le(&v, f64::to_le_bytes)?,
        CpuStorage::F16(v) => le(&v, |x: f16| x.to_bits().to_le_bytes())?,
        CpuStorage::BF16(v) => le(&v, |x: bf16| x.to_bits().to_le_bytes())?,
        CpuStorage::I64(v) => le(&v, i64::to_le_bytes)?,
        CpuStorage::U8(v) => v,
    })
}
