//! Launches for kernels/reduce.cu and softmax.cu.

use super::device::Arg;
use super::driver::LaunchCfg;
use super::{CudaStorage, layout_abi};
use crate::backend::ReduceOp;
use crate::{DType, Error, Layout, Result, Shape};

/// The CPU backend's split: `outer` over the kept axes, `inner` (offset 0) over the reduced ones.
fn split_axes(l: &Layout, axes: &[usize]) -> (Layout, Layout) {
    let kept: Vec<usize> = (0..l.rank()).filter(|a| !axes.contains(a)).collect();
    let dims = |ax: &[usize]| Shape::from(ax.iter().map(|&a| l.dims()[a]).collect::<Vec<_>>());
    let strides = |ax: &[usize]| ax.iter().map(|&a| l.strides()[a]).collect::<Vec<_>>();
    (Layout::new(dims(&kept), strides(&kept), l.offset()), Layout::new(dims(axes), strides(axes), 0))
}

/// A warp per output for short rows; a block per output (1024 threads when there are too few
/// outputs to fill the chip) for long ones. Returns the config and the block-mode flag.
fn row_config(dev: &super::CudaDevice, rows: usize, len: usize) -> (LaunchCfg, u32) {
    let sms = dev.sm_count();
    if len >= 1024 || (rows <= 2 * sms && len >= 256) {
        let threads = if rows < sms { 1024 } else { 256 };
        let blocks = rows.clamp(1, sms * 32) as u32;
        (LaunchCfg { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: 0 }, 1)
    } else {
        let blocks = rows.div_ceil(8).clamp(1, sms * 32) as u32;
        (LaunchCfg { grid: (blocks, 1, 1), block: (256, 1, 1), shared_bytes: 0 }, 0)
    }
}

pub(super) fn reduce(s: &CudaStorage, l: &Layout, op: ReduceOp, axes: &[usize]) -> Result<CudaStorage> {
    if axes.iter().any(|&a| a >= l.rank()) || axes.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::msg(format!(
            "{}: axes {axes:?} must be sorted, unique and below rank {}",
            op.name(),
            l.rank()
        )));
    }
    let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    if arg && axes.len() != 1 {
        return Err(Error::msg(format!("{}: needs exactly one axis, got {axes:?}", op.name())));
    }
    let float = s.dtype.is_float();
    if !float && op == ReduceOp::Mean {
        return Err(Error::UnsupportedDType { op: "mean", dtype: s.dtype });
    }
    let (outer, inner) = split_axes(l, axes);
    let (n_out, count) = (outer.elem_count(), inner.elem_count());
    s.abi_layout(l, op.name())?;
    let (to, ti) = (layout_abi(&outer, op.name())?, layout_abi(&inner, op.name())?);
    let dt = s.dtype.as_str();
    let (name, out_dtype, code) = match op {
        ReduceOp::ArgMax => (format!("argreduce_{dt}"), DType::I64, 0),
        ReduceOp::ArgMin => (format!("argreduce_{dt}"), DType::I64, 1),
        ReduceOp::Sum | ReduceOp::Prod if !float => (format!("reduce_wide_{dt}"), DType::I64, op.code()),
        _ => (format!("reduce_{dt}"), s.dtype, op.code()),
    };
    let out = CudaStorage::alloc(s.dev(), n_out, out_dtype)?;
    if n_out > 0 {
        let (cfg, block_mode) = row_config(s.dev(), n_out, count);
        let args = [
            Arg::Ptr(s.ptr()),
            Arg::Layout(to),
            Arg::Layout(ti),
            Arg::U64(n_out as u64),
            Arg::U64(count as u64),
            Arg::Ptr(out.ptr()),
            Arg::U32(code),
            Arg::U32(block_mode),
        ];
        s.dev().launch("reduce", &name, cfg, &args)?;
    }
    Ok(out)
}

pub(super) fn softmax(s: &CudaStorage, l: &Layout, axis: usize, log: bool) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    if !s.dtype.is_float() {
        return Err(Error::UnsupportedDType { op, dtype: s.dtype });
    }
    if axis >= l.rank() {
        return Err(Error::AxisOutOfRange { op, axis: axis as isize, rank: l.rank() });
    }
    s.abi_layout(l, op)?;
    let n = l.elem_count();
    let len = l.dims()[axis];
    if n == 0 || len == 0 {
        return super::BackendDevice::full(&**s.dev(), l.shape(), s.dtype, 0.0);
    }
    let mut perm: Vec<usize> = (0..l.rank()).filter(|&a| a != axis).collect();
    perm.push(axis);
    // Moving the axis last lets element j of row r sit at flat index r·len + j on both sides.
    let in_rows = layout_abi(&l.permute(&perm)?, op)?;
    let out_rows = layout_abi(&Layout::contiguous(l.shape().clone()).permute(&perm)?, op)?;
    let rows = n / len;
    let out = CudaStorage::alloc(s.dev(), n, s.dtype)?;
    let (cfg, block_mode) = row_config(s.dev(), rows, len);
    let args = [
        Arg::Ptr(s.ptr()),
        Arg::Layout(in_rows),
        Arg::Ptr(out.ptr()),
        Arg::Layout(out_rows),
        Arg::U64(rows as u64),
        Arg::U64(len as u64),
        Arg::U32(u32::from(log)),
        Arg::U32(block_mode),
    ];
    s.dev().launch("softmax", &format!("softmax_{}", s.dtype.as_str()), cfg, &args)?;
    Ok(out)
}
