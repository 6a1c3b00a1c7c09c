//! Launches for kernels/rnn.cu: the LSTM cell's elementwise part, one thread per unit.

use super::CudaStorage;
use super::device::Arg;
use super::elementwise::contiguous_copy;
use crate::backend::lstm_cell_dims;
use crate::{DType, Error, Layout, Result};

/// A pointer to the view's first element when it is contiguous, else to a contiguous copy
/// (kept alive in `keep`).
fn operand(s: &CudaStorage, l: &Layout, keep: &mut Vec<CudaStorage>) -> Result<Arg> {
    if l.is_contiguous() {
        s.abi_layout(l, "lstm_cell")?; // bounds check
        return Ok(Arg::Ptr(s.ptr() + (l.offset() * s.dtype.size_in_bytes()) as u64));
    }
    let c = contiguous_copy(s, l)?;
    let p = Arg::Ptr(c.ptr());
    keep.push(c);
    Ok(p)
}

fn check(
    op: &'static str,
    s: &CudaStorage,
    gates: &Layout,
    cells: &[(&CudaStorage, &Layout)],
) -> Result<(usize, usize)> {
    if !matches!(s.dtype, DType::F32 | DType::F64) {
        return Err(Error::UnsupportedDType { op, dtype: s.dtype });
    }
    for (t, _) in cells {
        s.same_device(t, op)?;
        if t.dtype != s.dtype {
            return Err(Error::DTypeMismatch { op, lhs: s.dtype, rhs: t.dtype });
        }
    }
    lstm_cell_dims(op, gates, &cells.iter().map(|(_, l)| *l).collect::<Vec<_>>())
}

pub(super) fn lstm_cell(
    s: &CudaStorage,
    l: &Layout,
    hg: &CudaStorage,
    hl: &Layout,
    c: &CudaStorage,
    cl: &Layout,
) -> Result<[CudaStorage; 3]> {
    const OP: &str = "lstm_cell";
    let (n, h) = check(OP, s, l, &[(c, cl)])?;
    s.same_device(hg, OP)?;
    if hg.dtype != s.dtype {
        return Err(Error::DTypeMismatch { op: OP, lhs: s.dtype, rhs: hg.dtype });
    }
    if hl.dims() != l.dims() {
        return Err(Error::ShapeMismatch { op: OP, lhs: l.shape().clone(), rhs: hl.shape().clone() });
    }
    let dev = s.dev().clone();
    let mut keep = Vec::new();
    let ins = [operand(s, l, &mut keep)?, operand(hg, hl, &mut keep)?, operand(c, cl, &mut keep)?];
    let outs = [n * h, n * h, 4 * n * h].map(|len| CudaStorage::alloc(&dev, len, s.dtype));
    let [h_out, c_out, acts] = outs;
    let (h_out, c_out, acts) = (h_out?, c_out?, acts?);
    if n * h > 0 {
        let [a, b, cc] = ins;
        let args = [
            a,
            b,
            cc,
            Arg::Ptr(h_out.ptr()),
            Arg::Ptr(c_out.ptr()),
            Arg::Ptr(acts.ptr()),
            Arg::U64(n as u64),
            Arg::U64(h as u64),
        ];
        dev.launch("rnn", &format!("lstm_cell_{}", s.dtype.as_str()), dev.grid_1d(n * h), &args)?;
    }
    drop(keep);
    Ok([h_out, c_out, acts])
}

pub(super) fn lstm_cell_backward(
    s: &CudaStorage,
    l: &Layout,
    rest: [(&CudaStorage, &Layout); 5],
) -> Result<[CudaStorage; 2]> {
    const OP: &str = "lstm_cell_backward";
    let (n, h) = check(OP, s, l, &rest)?;
    let dev = s.dev().clone();
    let mut keep = Vec::new();
    let mut args = vec![operand(s, l, &mut keep)?];
    for (t, tl) in rest {
        args.push(operand(t, tl, &mut keep)?);
    }
    let dg = CudaStorage::alloc(&dev, 4 * n * h, s.dtype)?;
    let dc = CudaStorage::alloc(&dev, n * h, s.dtype)?;
    if n * h > 0 {
        args.extend([Arg::Ptr(dg.ptr()), Arg::Ptr(dc.ptr()), Arg::U64(n as u64), Arg::U64(h as u64)]);
        dev.launch("rnn", &format!("lstm_cell_backward_{}", s.dtype.as_str()), dev.grid_1d(n * h), &args)?;
    }
    drop(keep);
    Ok([dg, dc])
}
