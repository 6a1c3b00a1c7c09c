//! Launches for kernels/conv.cu: im2col, col2im and max pooling's argument.

use super::abi::TfWindow;
use super::device::Arg;
use super::driver::LaunchCfg;
use super::elementwise::contiguous_copy;
use super::{CudaStorage, byte_suffix};
use crate::backend::Window2d;
use crate::backend::cpu::CpuStorage;
use crate::{DType, Error, Layout, Result, Shape, WithDType};

fn window_abi(w: &Window2d, [n, c, h, wd]: [usize; 4], (oh, ow): (usize, usize)) -> TfWindow {
    let u = |x: usize| x as u64;
    TfWindow {
        n: u(n),
        c: u(c),
        h: u(h),
        w: u(wd),
        kh: u(w.kernel.0),
        kw: u(w.kernel.1),
        sh: u(w.stride.0),
        sw: u(w.stride.1),
        ph: u(w.padding.0),
        pw: u(w.padding.1),
        dh: u(w.dilation.0),
        dw: u(w.dilation.1),
        oh: u(oh),
        ow: u(ow),
    }
}

/// The bits of `v` converted to `dtype`, widened to a u64 (the kernel reads the low bytes).
fn pad_bits(v: f64, dtype: DType) -> u64 {
    match CpuStorage::full(1, dtype, v) {
        CpuStorage::F32(x) => x[0].to_bits() as u64,
        CpuStorage::F64(x) => x[0].to_bits(),
        CpuStorage::F16(x) => x[0].to_bits() as u64,
        CpuStorage::BF16(x) => x[0].to_bits() as u64,
        CpuStorage::I64(x) => x[0] as u64,
        CpuStorage::U8(x) => x[0].to_f64() as u64,
    }
}

pub(super) fn im2col(s: &CudaStorage, l: &Layout, w: &Window2d, pad: f64) -> Result<CudaStorage> {
    let &[n, c, h, wd] = l.dims() else {
        return Err(Error::BadShape { op: "im2col", msg: format!("needs [N, C, H, W], got {:?}", l.shape()) });
    };
    let Some(o) = w.output_size(h, wd) else {
        return Err(Error::BadShape { op: "im2col", msg: format!("window {w:?} does not fit {:?}", l.shape()) });
    };
    let xl = s.abi_layout(l, "im2col")?;
    let total = n * c * w.kernel.0 * w.kernel.1 * o.0 * o.1;
    let out = CudaStorage::alloc(s.dev(), total, s.dtype)?;
    if total > 0 {
        let g = window_abi(w, [n, c, h, wd], o);
        // The pad value travels in the kernel's element type: push it with the matching width.
        let bits = pad_bits(pad, s.dtype);
        let pad_arg = match s.dtype.size_in_bytes() {
            8 => Arg::U64(bits),
            4 => Arg::U32(bits as u32),
            2 => Arg::U16(bits as u16),
            _ => Arg::U8(bits as u8),
        };
        let args = [Arg::Ptr(s.ptr()), Arg::Layout(xl), Arg::Ptr(out.ptr()), Arg::Window(g), pad_arg];
        let dev = s.dev().clone();
        // A block walks whole (image, channel) planes (see the kernel): as many threads as a
        // plane has output pixels, in warps, up to 256.
        let threads = (o.0 * o.1).next_multiple_of(32).min(256) as u32;
        let blocks = (n * c).clamp(1, dev.sm_count() * 32) as u32;
        let cfg = LaunchCfg { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: 0 };
        dev.launch("conv", &format!("im2col_{}", byte_suffix(s.dtype)), cfg, &args)?;
    }
    Ok(out)
}

pub(super) fn col2im(s: &CudaStorage, l: &Layout, w: &Window2d, h: usize, wd: usize) -> Result<CudaStorage> {
    if !s.dtype.is_float() {
        return Err(Error::UnsupportedDType { op: "col2im", dtype: s.dtype });
    }
    let (kh, kw) = w.kernel;
    let Some(o) = w.output_size(h, wd) else {
        return Err(Error::BadShape { op: "col2im", msg: format!("window {w:?} does not fit {h}×{wd}") });
    };
    let &[n, ckk, cols] = l.dims() else {
        return Err(Error::BadShape { op: "col2im", msg: format!("needs [N, C·kh·kw, L], got {:?}", l.shape()) });
    };
    if kh * kw == 0 || ckk % (kh * kw) != 0 || cols != o.0 * o.1 {
        return Err(Error::BadShape {
            op: "col2im",
            msg: format!("columns {:?} do not match window {w:?}", l.shape()),
        });
    }
    let c = ckk / (kh * kw);
    let src = if l.is_contiguous() && l.offset() == 0 { None } else { Some(contiguous_copy(s, l)?) };
    let cols_ptr = src.as_ref().map_or(s.ptr(), |x| x.ptr());
    let total = n * c * h * wd;
    let out = CudaStorage::alloc(s.dev(), total, s.dtype)?;
    if total > 0 {
        let g = window_abi(w, [n, c, h, wd], o);
        let args = [Arg::Ptr(cols_ptr), Arg::Ptr(out.ptr()), Arg::Window(g)];
        let dev = s.dev().clone();
        dev.launch("conv", &format!("col2im_{}", s.dtype.as_str()), dev.grid_1d(total), &args)?;
    }
    Ok(out)
}

/// Max pooling's argument: one thread per output pixel (see the kernel).
pub(super) fn max_pool2d_indices(
    s: &CudaStorage,
    l: &Layout,
    w: &Window2d,
    (oh, ow): (usize, usize),
) -> Result<CudaStorage> {
    if !s.dtype.is_float() {
        return Err(Error::UnsupportedDType { op: "max_pool2d", dtype: s.dtype });
    }
    let &[n, c, h, wd] = l.dims() else {
        return Err(Error::BadShape { op: "max_pool2d", msg: format!("needs [N, C, H, W], got {:?}", l.shape()) });
    };
    let total = Shape::checked_product("max_pool2d", &[n, c, oh, ow])?;
    let xl = s.abi_layout(l, "max_pool2d")?;
    let out = CudaStorage::alloc(s.dev(), total, DType::I64)?;
    if total > 0 {
        let g = window_abi(w, [n, c, h, wd], (oh, ow));
        let args = [Arg::Ptr(s.ptr()), Arg::Layout(xl), Arg::Ptr(out.ptr()), Arg::Window(g)];
        let dev = s.dev().clone();
        dev.launch("conv", &format!("max_pool2d_indices_{}", s.dtype.as_str()), dev.grid_1d(total), &args)?;
    }
    Ok(out)
}

/// Convolution as `im2col` then one batched product, the weight broadcast over the batch
/// (a zero batch stride), so the columns' layout is what the tiled GEMM reads.
pub(super) fn conv2d(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    window: &Window2d,
) -> Result<CudaStorage> {
    x.same_device(w, "conv2d")?;
    let [n, c, _, _, cout, oh, ow] = window.conv2d_dims(lx, lw)?;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    let cols = im2col(x, lx, window, 0.0)?;
    let dense;
    let (w, offset) = if lw.is_contiguous() {
        (w, lw.offset())
    } else {
        dense = contiguous_copy(w, lw)?;
        (&dense, 0)
    };
    let lw3 = Layout::new(Shape::from(vec![n, cout, k]), vec![0, k, 1], offset);
    super::matmul::matmul(w, &lw3, &cols, &Layout::contiguous(Shape::from(vec![n, k, l])))
}
