//! Launches for kernels/cast.cu, unary.cu and binary.cu: cast, copy, unary, scalar, binary,
//! comparisons and where.

use super::abi::*;
use super::device::Arg;
use super::{CudaStorage, byte_suffix, layout_abi};
use crate::backend::{BinaryOp, CmpOp, ScalarOp, UnaryOp};
use crate::{DType, Error, Layout, Result};

/// `f(out, n)` after allocating a contiguous output of `l`'s shape; skips empty launches.
fn with_output(
    s: &CudaStorage,
    l: &Layout,
    dtype: DType,
    f: impl FnOnce(&CudaStorage, usize) -> Result<()>,
) -> Result<CudaStorage> {
    let n = l.elem_count();
    let out = CudaStorage::alloc(s.dev(), n, dtype)?;
    if n > 0 {
        f(&out, n)?;
    }
    Ok(out)
}

/// A contiguous copy of the view (the same-dtype cast, and the first step of the adjoints).
pub(super) fn contiguous_copy(s: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let src = s.abi_layout(l, "copy")?;
    let dst = layout_abi(&Layout::contiguous(l.shape().clone()), "copy")?;
    with_output(s, l, s.dtype, |out, n| {
        let args = [Arg::Ptr(s.ptr()), Arg::Layout(src), Arg::Ptr(out.ptr()), Arg::Layout(dst), Arg::U64(n as u64)];
        s.dev().launch("cast", &format!("copy_{}", byte_suffix(s.dtype)), s.dev().grid_1d(n), &args)
    })
}

pub(super) fn cast(s: &CudaStorage, l: &Layout, dtype: DType) -> Result<CudaStorage> {
    if dtype == s.dtype {
        // A plain copy: exact for every value (i64 beyond 2^53 included).
        return contiguous_copy(s, l);
    }
    let tl = s.abi_layout(l, "cast")?;
    with_output(s, l, dtype, |out, n| {
        let args = [Arg::Ptr(s.ptr()), Arg::Layout(tl), Arg::Ptr(out.ptr()), Arg::U64(n as u64)];
        let name = format!("cast_{}_{}", s.dtype.as_str(), dtype.as_str());
        s.dev().launch("cast", &name, s.dev().grid_1d(n), &args)
    })
}

pub(super) fn copy_strided(s: &CudaStorage, sl: &Layout, dst: &mut CudaStorage, dl: &Layout) -> Result<()> {
    s.same_device(dst, "copy_strided")?;
    if s.dtype != dst.dtype {
        return Err(Error::DTypeMismatch { op: "copy_strided", lhs: s.dtype, rhs: dst.dtype });
    }
    if sl.dims() != dl.dims() {
        return Err(Error::ShapeMismatch { op: "copy_strided", lhs: sl.shape().clone(), rhs: dl.shape().clone() });
    }
    let n = sl.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (a, b) = (s.abi_layout(sl, "copy_strided")?, dst.abi_layout(dl, "copy_strided")?);
    let args = [Arg::Ptr(s.ptr()), Arg::Layout(a), Arg::Ptr(dst.ptr()), Arg::Layout(b), Arg::U64(n as u64)];
    s.dev().launch("cast", &format!("copy_{}", byte_suffix(s.dtype)), s.dev().grid_1d(n), &args)
}

pub(super) fn unary(s: &CudaStorage, l: &Layout, op: UnaryOp) -> Result<CudaStorage> {
    let ok = s.dtype.is_float()
        || (s.dtype == DType::I64 && matches!(op, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Sqr));
    if !ok {
        return Err(Error::UnsupportedDType { op: op.name(), dtype: s.dtype });
    }
    let tl = s.abi_layout(l, op.name())?;
    with_output(s, l, s.dtype, |out, n| {
        let args = [Arg::Ptr(s.ptr()), Arg::Layout(tl), Arg::Ptr(out.ptr()), Arg::U64(n as u64), Arg::U32(op.code())];
        s.dev().launch("unary", &format!("unary_{}", s.dtype.as_str()), s.dev().grid_1d(n), &args)
    })
}

pub(super) fn scalar(s: &CudaStorage, l: &Layout, op: ScalarOp) -> Result<CudaStorage> {
    let tl = s.abi_layout(l, "scalar")?;
    let (code, a, b) = match op {
        ScalarOp::Affine { mul, add } => (TfScalarOp_TF_SCALAR_AFFINE, mul, add),
        ScalarOp::Powf(e) => (TfScalarOp_TF_SCALAR_POWF, e, 0.0),
        ScalarOp::Clamp { lo, hi } => (TfScalarOp_TF_SCALAR_CLAMP, lo, hi),
    };
    let (name, pa, pb) = match (s.dtype, op) {
        (DType::I64, ScalarOp::Affine { mul, add }) if mul.fract() == 0.0 && add.fract() == 0.0 => {
            ("scalar_i64".to_string(), Arg::I64(mul as i64), Arg::I64(add as i64))
        }
        // Bounds rounded inward, as the CPU kernel.
        (DType::I64, ScalarOp::Clamp { lo, hi }) => {
            ("scalar_i64".to_string(), Arg::I64(lo.ceil() as i64), Arg::I64(hi.floor() as i64))
        }
        (d, _) if d.is_float() => (format!("scalar_{}", d.as_str()), Arg::F64(a), Arg::F64(b)),
        (d, _) => return Err(Error::UnsupportedDType { op: "scalar", dtype: d }),
    };
    with_output(s, l, s.dtype, |out, n| {
        let args =
            [Arg::Ptr(s.ptr()), Arg::Layout(tl), Arg::Ptr(out.ptr()), Arg::U64(n as u64), Arg::U32(code), pa, pb];
        s.dev().launch("unary", &name, s.dev().grid_1d(n), &args)
    })
}

fn check_pair(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: &'static str) -> Result<()> {
    a.same_device(b, op)?;
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype, rhs: b.dtype });
    }
    if la.dims() != lb.dims() {
        return Err(Error::ShapeMismatch { op, lhs: la.shape().clone(), rhs: lb.shape().clone() });
    }
    Ok(())
}

/// Launches `binary.cu::{kernel}_{dtype}` over two views of one shape with an op code.
fn launch_pair(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    out_dtype: DType,
    (kernel, code): (&str, u32),
    op: &'static str,
) -> Result<CudaStorage> {
    check_pair(a, la, b, lb, op)?;
    let (ta, tb) = (a.abi_layout(la, op)?, b.abi_layout(lb, op)?);
    with_output(a, la, out_dtype, |out, n| {
        let args = [
            Arg::Ptr(a.ptr()),
            Arg::Layout(ta),
            Arg::Ptr(b.ptr()),
            Arg::Layout(tb),
            Arg::Ptr(out.ptr()),
            Arg::U64(n as u64),
            Arg::U32(code),
        ];
        a.dev().launch("binary", &format!("{kernel}_{}", a.dtype.as_str()), a.dev().grid_1d(n), &args)
    })
}

pub(super) fn binary(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: BinaryOp) -> Result<CudaStorage> {
    if matches!(op, BinaryOp::Pow | BinaryOp::ReluBackward) && !a.dtype.is_float() {
        return Err(Error::UnsupportedDType { op: op.name(), dtype: a.dtype });
    }
    launch_pair(a, la, b, lb, a.dtype, ("binary", op.code()), op.name())
}

pub(super) fn cmp(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: CmpOp) -> Result<CudaStorage> {
    launch_pair(a, la, b, lb, DType::U8, ("cmp", op.code()), op.name())
}

pub(super) fn where_cond(
    m: &CudaStorage,
    lm: &Layout,
    t: &CudaStorage,
    lt: &Layout,
    f: &CudaStorage,
    lf: &Layout,
) -> Result<CudaStorage> {
    if m.dtype != DType::U8 {
        return Err(Error::UnsupportedDType { op: "where (mask must be u8)", dtype: m.dtype });
    }
    m.same_device(t, "where")?;
    check_pair(t, lt, f, lf, "where")?;
    if lm.dims() != lt.dims() {
        return Err(Error::ShapeMismatch { op: "where", lhs: lm.shape().clone(), rhs: lt.shape().clone() });
    }
    let (tm, tt, tf) = (m.abi_layout(lm, "where")?, t.abi_layout(lt, "where")?, f.abi_layout(lf, "where")?);
    with_output(t, lt, t.dtype, |out, n| {
        let args = [
            Arg::Ptr(m.ptr()),
            Arg::Layout(tm),
            Arg::Ptr(t.ptr()),
            Arg::Layout(tt),
            Arg::Ptr(f.ptr()),
            Arg::Layout(tf),
            Arg::Ptr(out.ptr()),
            Arg::U64(n as u64),
        ];
        t.dev().launch("binary", &format!("where_{}", byte_suffix(t.dtype)), t.dev().grid_1d(n), &args)
    })
}
