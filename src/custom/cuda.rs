//! The CUDA forward of both forms of custom op: arguments in the documented order, launches
//! checked, through the device's user-module cache (NVRTC, or the emulator's C++ build).

use super::launch::LaunchSpec;
use super::view::Spec;
use super::{LaunchRule, Prepared};
use crate::backend::cuda::driver::LaunchCfg;
use crate::backend::cuda::{CudaDevice, CudaStorage, device::Arg, layout_abi};
use crate::shape::Layout;
use crate::storage::Storage;
use crate::{DType, Error, Result, Shape, Tensor};

/// The device address of each input's first element.
fn pointers(name: &str, x: &[&Tensor]) -> Result<Vec<u64>> {
    x.iter()
        .map(|t| match &*t.storage() {
            Storage::Cuda(s) => Ok(s.ptr() + (t.layout().offset() * t.dtype().size_in_bytes()) as u64),
            _ => Err(Error::msg(format!("custom op `{name}`: a CPU input reached the CUDA forward"))),
        })
        .collect()
}

/// Elementwise: `x` already broadcast to `shape` and contiguous; one thread per element.
#[allow(clippy::too_many_arguments)]
pub(super) fn elementwise(
    name: &str,
    source: &str,
    kernel: &str,
    ordinal: usize,
    x: &[&Tensor],
    shape: Shape,
    dtype: DType,
    scalars: &[f64],
) -> Result<Tensor> {
    let dev = CudaDevice::get(ordinal)?;
    let n = shape.elem_count();
    let out = CudaStorage::alloc(&dev, n, dtype)?;
    if n > 0 {
        let mut args: Vec<Arg> = pointers(name, x)?.into_iter().map(Arg::Ptr).collect();
        args.push(Arg::Ptr(out.ptr()));
        args.push(Arg::U64(n as u64));
        args.extend(scalars.iter().map(|&v| Arg::F64(v)));
        // One thread per element (not the capped grid of the built-ins), so a kernel written
        // as `if (i < n)` is as correct as one using TF_FOR.
        let blocks = u32::try_from(n.div_ceil(256))
            .map_err(|_| Error::msg(format!("custom op `{name}`: {n} elements exceed one launch")))?;
        let entry = format!("{kernel}_{}", dtype.as_str());
        // SAFETY: `CustomOp::cuda` (an unsafe fn) made the user promise the kernel takes
        // exactly these parameters and stays within `n` elements; every pointer is a live
        // block holding `n` elements (inputs broadcast and made contiguous). The storages
        // stay alive until the launch is queued, and stream order covers the rest.
        unsafe { dev.launch_user(name, source, &entry, LaunchCfg::linear(blocks, 256), &args)? };
    }
    Ok(Tensor::from_contiguous(Storage::Cuda(out), shape))
}

/// General: the rule's launches, each with every tensor's (pointer, layout) and the scalars.
pub(super) fn general(
    name: &str,
    source: &str,
    rule: &LaunchRule,
    ordinal: usize,
    p: &Prepared,
    scalars: &[f64],
) -> Result<Vec<Tensor>> {
    let dev = CudaDevice::get(ordinal)?;
    let outs =
        p.shapes.iter().map(|s| CudaStorage::alloc(&dev, s.elem_count(), p.dtype)).collect::<Result<Vec<_>>>()?;
    let in_specs: Vec<Spec<'_>> = p.inputs.iter().map(|t| Spec { dims: t.dims(), dtype: t.dtype() }).collect();
    let out_specs: Vec<Spec<'_>> = p.shapes.iter().map(|s| Spec { dims: s.dims(), dtype: p.dtype }).collect();
    let spec = LaunchSpec { inputs: &in_specs, outputs: &out_specs, dtype: p.dtype, scalars, sm_count: dev.sm_count() };
    let launches = rule(&spec)?;
    for l in &launches {
        l.check(name)?;
    }
    if launches.is_empty() && p.shapes.iter().any(|s| s.elem_count() > 0) {
        // Device outputs start uninitialized: nothing would write them.
        return Err(Error::msg(format!(
            "custom op `{name}`: the launch rule returned no launch for non-empty outputs"
        )));
    }
    let refs: Vec<&Tensor> = p.inputs.iter().collect();
    let mut args = Vec::with_capacity(2 * (p.inputs.len() + outs.len()) + scalars.len());
    for (t, ptr) in p.inputs.iter().zip(pointers(name, &refs)?) {
        // The pointer is at the first element, so the kernel's layout starts at 0.
        let l = Layout::new(t.shape().clone(), t.layout().strides().to_vec(), 0);
        args.extend([Arg::Ptr(ptr), Arg::Layout(layout_abi(&l, "custom op")?)]);
    }
    for (o, s) in outs.iter().zip(&p.shapes) {
        args.extend([Arg::Ptr(o.ptr()), Arg::Layout(layout_abi(&Layout::contiguous(s.clone()), "custom op")?)]);
    }
    args.extend(scalars.iter().map(|&v| Arg::F64(v)));
    if p.shapes.iter().any(|s| s.elem_count() > 0) {
        for l in &launches {
            let cfg = LaunchCfg { grid: l.grid, block: l.block, shared_bytes: l.shared_bytes };
            let entry = format!("{}_{}", l.kernel, p.dtype.as_str());
            // SAFETY: `CustomOp::cuda_launch` (an unsafe fn) made the user promise the entries
            // take exactly these parameters and stay within the layouts; every pointer is a
            // live block covering its layout.
            unsafe { dev.launch_user(name, source, &entry, cfg, &args)? };
        }
    }
    Ok(outs.into_iter().zip(&p.shapes).map(|(o, s)| Tensor::from_contiguous(Storage::Cuda(o), s.clone())).collect())
}
