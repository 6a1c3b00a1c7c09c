//! Launches for kernels/matmul.cu (batched, strided operands, contiguous result).

use super::device::Arg;
use super::{CudaStorage, layout_abi};
use crate::{Error, Layout, Result, Shape};
use cudarc::driver::LaunchConfig;

/// The batch part of a `[batch…, rows, cols]` layout, and the matrix strides.
fn batch_view(l: &Layout) -> (Layout, usize, usize) {
    let r = l.rank();
    let batch = Layout::new(Shape::from(&l.dims()[..r - 2]), l.strides()[..r - 2].to_vec(), l.offset());
    (batch, l.strides()[r - 2], l.strides()[r - 1])
}

pub(super) fn matmul(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    a.same_device(b, "matmul")?;
    if a.dtype != b.dtype {
        return Err(Error::DTypeMismatch { op: "matmul", lhs: a.dtype, rhs: b.dtype });
    }
    if !a.dtype.is_float() {
        return Err(Error::UnsupportedDType { op: "matmul", dtype: a.dtype });
    }
    let r = la.rank();
    if r < 2 || lb.rank() != r || la.dims()[..r - 2] != lb.dims()[..r - 2] || la.dims()[r - 1] != lb.dims()[r - 2] {
        return Err(Error::ShapeMismatch { op: "matmul", lhs: la.shape().clone(), rhs: lb.shape().clone() });
    }
    a.abi_layout(la, "matmul")?;
    b.abi_layout(lb, "matmul")?;
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let (ba, ars, acs) = batch_view(la);
    let (bb, brs, bcs) = batch_view(lb);
    let batches = ba.elem_count();
    let out = CudaStorage::alloc(a.dev(), batches * m * n, a.dtype)?;
    if batches * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        return super::BackendDevice::full(&**a.dev(), &Shape::from(batches * m * n), a.dtype, 0.0);
    }
    let grid_y = m.div_ceil(64);
    if grid_y > 65535 {
        return Err(Error::BadShape {
            op: "matmul",
            msg: format!("{m} rows exceed the CUDA kernel's limit of 4194240"),
        });
    }
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(64).min(u32::MAX as usize) as u32, grid_y as u32, batches.min(65535) as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        Arg::Ptr(a.ptr()),
        Arg::Layout(layout_abi(&ba, "matmul")?),
        Arg::U64(ars as u64),
        Arg::U64(acs as u64),
        Arg::Ptr(b.ptr()),
        Arg::Layout(layout_abi(&bb, "matmul")?),
        Arg::U64(brs as u64),
        Arg::U64(bcs as u64),
        Arg::Ptr(out.ptr()),
        Arg::U64(batches as u64),
        Arg::U64(m as u64),
        Arg::U64(n as u64),
        Arg::U64(k as u64),
    ];
    a.dev().launch("matmul", &format!("matmul_{}", a.dtype.as_str()), cfg, &args)?;
    Ok(out)
}
