//! Launches for kernels/index.cu: index_select, gather, scatter_add, index_add.

use super::device::Arg;
use super::elementwise::contiguous_copy;
use super::{CudaStorage, byte_suffix, layout_abi};
use crate::{DType, Error, Layout, Result, Shape};

/// Checks every id is in `0..size` on the device; the first bad one becomes the Err.
fn check_ids(ids: &CudaStorage, il: &Layout, size: usize, op: &'static str) -> Result<()> {
    if ids.dtype != DType::I64 {
        return Err(Error::UnsupportedDType { op, dtype: ids.dtype });
    }
    let n = il.elem_count();
    let tl = ids.abi_layout(il, op)?;
    if n == 0 {
        return Ok(());
    }
    let dev = ids.dev();
    let flag = CudaStorage::alloc(dev, 2, DType::I64)?;
    dev.memset_zero(flag.ptr(), 16)?;
    let args = [Arg::Ptr(ids.ptr()), Arg::Layout(tl), Arg::U64(n as u64), Arg::U64(size as u64), Arg::Ptr(flag.ptr())];
    dev.launch("index", "check_ids", dev.grid_1d(n), &args)?;
    let mut res = [0i64; 2];
    dev.dtoh(flag.ptr(), &mut res)?;
    if res[0] != 0 {
        return Err(Error::IndexOutOfRange { op, index: res[1], size });
    }
    Ok(())
}

/// `l` with axis `axis` resized as in `shape` and given stride 0: element p's offset is then
/// its base with the indexed coordinate left out.
fn base_layout(l: &Layout, shape: &Shape, axis: usize) -> Layout {
    let mut strides = l.strides().to_vec();
    strides[axis] = 0;
    Layout::new(shape.clone(), strides, l.offset())
}

fn check_axis(l: &Layout, axis: usize, op: &'static str) -> Result<()> {
    if axis >= l.rank() { Err(Error::AxisOutOfRange { op, axis: axis as isize, rank: l.rank() }) } else { Ok(()) }
}

pub(super) fn index_select(
    s: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    axis: usize,
) -> Result<CudaStorage> {
    check_axis(l, axis, "index_select")?;
    s.same_device(ids, "index_select")?;
    s.abi_layout(l, "index_select")?;
    check_ids(ids, il, l.dims()[axis], "index_select")?;
    let mut dims = l.dims().to_vec();
    dims[axis] = il.elem_count();
    let shape = Shape::from(dims);
    let n = shape.elem_count();
    let out = CudaStorage::alloc(s.dev(), n, s.dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let inner: usize = shape.dims()[axis + 1..].iter().product();
    let args = [
        Arg::Ptr(s.ptr()),
        Arg::Layout(layout_abi(&base_layout(l, &shape, axis), "index_select")?),
        Arg::U64(l.strides()[axis] as u64),
        Arg::Ptr(ids.ptr()),
        Arg::Layout(layout_abi(il, "index_select")?),
        Arg::U64(il.elem_count() as u64),
        Arg::U64(inner as u64),
        Arg::Ptr(out.ptr()),
        Arg::U64(n as u64),
    ];
    s.dev().launch("index", &format!("index_select_{}", byte_suffix(s.dtype)), s.dev().grid_1d(n), &args)?;
    Ok(out)
}

fn check_fits(l: &Layout, il: &Layout, axis: usize, op: &'static str) -> Result<()> {
    if il.rank() != l.rank() || (0..l.rank()).any(|d| d != axis && il.dims()[d] > l.dims()[d]) {
        return Err(Error::ShapeMismatch { op, lhs: l.shape().clone(), rhs: il.shape().clone() });
    }
    Ok(())
}

pub(super) fn gather(s: &CudaStorage, l: &Layout, ids: &CudaStorage, il: &Layout, axis: usize) -> Result<CudaStorage> {
    check_axis(l, axis, "gather")?;
    check_fits(l, il, axis, "gather")?;
    s.same_device(ids, "gather")?;
    s.abi_layout(l, "gather")?;
    check_ids(ids, il, l.dims()[axis], "gather")?;
    let n = il.elem_count();
    let out = CudaStorage::alloc(s.dev(), n, s.dtype)?;
    if n == 0 {
        return Ok(out);
    }
    let args = [
        Arg::Ptr(s.ptr()),
        Arg::Layout(layout_abi(&base_layout(l, il.shape(), axis), "gather")?),
        Arg::U64(l.strides()[axis] as u64),
        Arg::Ptr(ids.ptr()),
        Arg::Layout(layout_abi(il, "gather")?),
        Arg::Ptr(out.ptr()),
        Arg::U64(n as u64),
    ];
    s.dev().launch("index", &format!("gather_{}", byte_suffix(s.dtype)), s.dev().grid_1d(n), &args)?;
    Ok(out)
}

fn check_src(s: &CudaStorage, src: &CudaStorage, sl: &Layout, op: &'static str) -> Result<()> {
    s.same_device(src, op)?;
    if s.dtype != src.dtype {
        return Err(Error::DTypeMismatch { op, lhs: s.dtype, rhs: src.dtype });
    }
    src.abi_layout(sl, op).map(|_| ())
}

pub(super) fn scatter_add(
    s: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    src: &CudaStorage,
    sl: &Layout,
    axis: usize,
) -> Result<CudaStorage> {
    check_axis(l, axis, "scatter_add")?;
    if il.dims() != sl.dims() {
        return Err(Error::ShapeMismatch { op: "scatter_add", lhs: il.shape().clone(), rhs: sl.shape().clone() });
    }
    check_fits(l, il, axis, "scatter_add")?;
    s.same_device(ids, "scatter_add")?;
    check_src(s, src, sl, "scatter_add")?;
    check_ids(ids, il, l.dims()[axis], "scatter_add")?;
    let out = contiguous_copy(s, l)?;
    let n = il.elem_count();
    if n == 0 {
        return Ok(out);
    }
    let out_l = Layout::contiguous(l.shape().clone());
    let args = [
        Arg::Ptr(out.ptr()),
        Arg::Layout(layout_abi(&base_layout(&out_l, il.shape(), axis), "scatter_add")?),
        Arg::U64(out_l.strides()[axis] as u64),
        Arg::Ptr(ids.ptr()),
        Arg::Layout(layout_abi(il, "scatter_add")?),
        Arg::Ptr(src.ptr()),
        Arg::Layout(layout_abi(sl, "scatter_add")?),
        Arg::U64(n as u64),
    ];
    s.dev().launch("index", &format!("scatter_add_{}", s.dtype.as_str()), s.dev().grid_1d(n), &args)?;
    Ok(out)
}

pub(super) fn index_add(
    s: &CudaStorage,
    l: &Layout,
    ids: &CudaStorage,
    il: &Layout,
    src: &CudaStorage,
    sl: &Layout,
    axis: usize,
) -> Result<CudaStorage> {
    check_axis(l, axis, "index_add")?;
    s.same_device(ids, "index_add")?;
    check_ids(ids, il, l.dims()[axis], "index_add")?;
    let mut expect = l.dims().to_vec();
    expect[axis] = il.elem_count();
    if sl.dims() != expect.as_slice() {
        return Err(Error::ShapeMismatch { op: "index_add", lhs: Shape::from(expect), rhs: sl.shape().clone() });
    }
    check_src(s, src, sl, "index_add")?;
    let out = contiguous_copy(s, l)?;
    let n = sl.elem_count();
    if n == 0 {
        return Ok(out);
    }
    let out_l = Layout::contiguous(l.shape().clone());
    let inner: usize = sl.dims()[axis + 1..].iter().product();
    let args = [
        Arg::Ptr(out.ptr()),
        Arg::Layout(layout_abi(&base_layout(&out_l, sl.shape(), axis), "index_add")?),
        Arg::U64(out_l.strides()[axis] as u64),
        Arg::Ptr(ids.ptr()),
        Arg::Layout(layout_abi(il, "index_add")?),
        Arg::U64(il.elem_count() as u64),
        Arg::U64(inner as u64),
        Arg::Ptr(src.ptr()),
        Arg::Layout(layout_abi(sl, "index_add")?),
        Arg::U64(n as u64),
    ];
    s.dev().launch("index", &format!("index_add_{}", s.dtype.as_str()), s.dev().grid_1d(n), &args)?;
    Ok(out)
}
