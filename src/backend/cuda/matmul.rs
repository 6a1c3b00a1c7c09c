//! Launches for kernels/matmul.cu (batched, strided operands, contiguous result).

use super::device::Arg;
use super::driver::LaunchCfg;
use super::{CudaStorage, layout_abi};
use crate::{DType, Error, Layout, Result, Shape};

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
    // f32 products of at least one 64-tile each way take the 128-tile CUDA-core kernel.
    let simt = a.dtype == DType::F32 && m >= 64 && n >= 64;
    let mma = mma_kernel(a, la, b, lb, (m, k, n));
    let tile = if mma.is_some() || simt { 128 } else { 64 };
    let grid_y = m.div_ceil(tile);
    if grid_y > 65535 {
        return Err(Error::BadShape {
            op: "matmul",
            msg: format!("{m} rows exceed the CUDA kernel's limit of {}", 65535 * tile),
        });
    }
    let cfg = LaunchCfg {
        grid: (n.div_ceil(tile).min(u32::MAX as usize) as u32, grid_y as u32, batches.min(65535) as u32),
        block: (256, 1, 1),
        shared_bytes: 0,
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
    // Every kernel takes the same arguments; only the grid's tile differs.
    let kernel = match mma {
        Some(name) => name,
        None if simt => "matmul_simt_f32".to_string(),
        None if tensor_cores(a.dtype) => format!("matmul_tc_{}", a.dtype.as_str()),
        None => format!("matmul_{}", a.dtype.as_str()),
    };
    a.dev().launch("matmul", &kernel, cfg, &args)?;
    Ok(out)
}

/// 16-bit floats use tensor cores unless TENSORFORGE_NO_TENSOR_CORES is set (to compare
/// against the tiled kernel).
fn tensor_cores(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && std::env::var_os("TENSORFORGE_NO_TENSOR_CORES").is_none()
}

/// The tensor-core kernel with 16-byte staging (`matmul_mma_<dtype>_<a><b>`) for these
/// operands, when it applies: sm_80 or newer, and each operand read along k (`k`: A
/// row-major, B a transposed row-major matrix) or along its other axis (`m` / `n`), with
/// every row of 8-element chunks starting on 16 bytes and never straddling the edge.
fn mma_kernel(
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    (m, k, n): (usize, usize, usize),
) -> Option<String> {
    if !tensor_cores(a.dtype) || a.dev().compute_major() < 8 {
        return None;
    }
    let r = la.rank();
    let aligned = |s: &CudaStorage, l: &Layout| {
        let bytes = s.ptr() as usize + l.offset() * 2;
        bytes.is_multiple_of(16) && l.strides()[..r - 2].iter().all(|st| st.is_multiple_of(8))
    };
    if !aligned(a, la) || !aligned(b, lb) {
        return None;
    }
    // `rows`: the operand's extent across C (m for A, n for B); `rs`/`ks`: strides along it and k.
    let major = |rs: usize, ks: usize, rows: usize, kch: char, rch: char| {
        if ks == 1 && rs.is_multiple_of(8) && k.is_multiple_of(8) {
            Some(kch)
        } else if rs == 1 && ks.is_multiple_of(8) && rows.is_multiple_of(8) {
            Some(rch)
        } else {
            None
        }
    };
    let (ars, acs) = (la.strides()[r - 2], la.strides()[r - 1]);
    let (brs, bcs) = (lb.strides()[r - 2], lb.strides()[r - 1]);
    let am = major(ars, acs, m, 'k', 'm')?;
    let bm = major(bcs, brs, n, 'k', 'n')?;
    Some(format!("matmul_mma_{}_{am}{bm}", a.dtype.as_str()))
}
