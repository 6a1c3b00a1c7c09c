//! Launch for kernels/ctc.cu: one block per sample.

use super::CudaStorage;
use super::device::Arg;
use super::driver::LaunchCfg;
use super::elementwise::contiguous_copy;
use crate::backend::cpu::ctc::check_args;
use crate::{DType, Error, Layout, Result};

pub(super) fn ctc_loss(
    s: &CudaStorage,
    layout: &Layout,
    targets: &CudaStorage,
    targets_layout: &Layout,
    input_lengths: &[usize],
    target_lengths: &[usize],
    blank: usize,
) -> Result<(CudaStorage, CudaStorage)> {
    s.same_device(targets, "ctc_loss")?;
    let (t, n, c, sl) = check_args(layout, targets_layout, input_lengths, target_lengths, blank)?;
    if !matches!(s.dtype, DType::F32 | DType::F64) {
        return Err(Error::UnsupportedDType { op: "ctc_loss", dtype: s.dtype });
    }
    if targets.dtype != DType::I64 {
        return Err(Error::UnsupportedDType { op: "ctc_loss (targets)", dtype: targets.dtype });
    }
    let tl = targets.abi_layout(targets_layout, "ctc_loss")?;
    let src = if layout.is_contiguous() && layout.offset() == 0 { None } else { Some(contiguous_copy(s, layout)?) };
    let lp = src.as_ref().map_or(s.ptr(), |x| x.ptr());
    let dev = s.dev().clone();
    let loss = CudaStorage::alloc(&dev, n, s.dtype)?;
    let grad = CudaStorage::alloc(&dev, t * n * c, s.dtype)?;
    if n == 0 {
        return Ok((loss, grad));
    }
    // The lengths travel as i64 buffers; alpha and beta need a workspace of [N, T, 2S+1] each.
    let upload = |v: &[usize]| -> Result<CudaStorage> {
        let b = CudaStorage::alloc(&dev, n, DType::I64)?;
        let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        dev.htod(&v, b.ptr())?;
        Ok(b)
    };
    let (in_len, tg_len) = (upload(input_lengths)?, upload(target_lengths)?);
    let work = n * t.max(1) * (2 * sl + 1);
    let (alpha, beta) = (CudaStorage::alloc(&dev, work, s.dtype)?, CudaStorage::alloc(&dev, work, s.dtype)?);
    // Enough threads for the longest extended sequence (and the classes of the gradient),
    // a multiple of the warp size.
    let threads = (2 * sl + 1).max(c).next_multiple_of(32).clamp(32, 256) as u32;
    let cfg = LaunchCfg { grid: (n as u32, 1, 1), block: (threads, 1, 1), shared_bytes: 0 };
    let u = |x: usize| Arg::U64(x as u64);
    let args = [
        Arg::Ptr(lp),
        Arg::Ptr(targets.ptr()),
        Arg::Layout(tl),
        Arg::Ptr(in_len.ptr()),
        Arg::Ptr(tg_len.ptr()),
        Arg::Ptr(alpha.ptr()),
        Arg::Ptr(beta.ptr()),
        Arg::Ptr(loss.ptr()),
        Arg::Ptr(grad.ptr()),
        u(t),
        u(n),
        u(c),
        u(sl),
        u(blank),
    ];
    dev.launch("ctc", &format!("ctc_loss_{}", s.dtype.as_str()), cfg, &args)?;
    Ok((loss, grad))
}
