//! The CUDA backend: kernels in `kernels/*.cu`, compiled by NVRTC at run time for the
//! device's own architecture (once per family, PTX cached on disk), launched on one stream per
//! device, over memory from a per-device caching allocator.
//!
//! Without a driver, NVRTC or the device, [`CudaDevice::get`] returns
//! `Err(Error::CudaUnavailable)`; [`compile_all_kernels`] needs only NVRTC, so CI checks every
//! kernel compiles on machines with no GPU.

#[allow(clippy::all, missing_docs)]
pub mod abi;
pub(crate) mod compile;
mod conv;
mod ctc;
pub(crate) mod device;
pub(crate) mod driver;
mod elementwise;
#[cfg(feature = "cuda-emu")]
pub mod emu;
mod index;
mod matmul;
mod optim;
#[cfg_attr(feature = "cuda-emu", allow(dead_code))]
mod real;
mod reduce;
mod rnn;

pub use compile::{cache_dir, compile_all_kernels, kernel_entry_names, nvrtc_version};
pub use device::CudaDevice;
#[cfg(feature = "cuda-emu")]
pub use emu::kernel_names as emulator_kernel_names;

use crate::backend::cpu::CpuStorage;
use crate::backend::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, OptimRule, ReduceOp, ScalarOp, UnaryOp, Window2d,
};
use crate::shape::MAX_DIMS;
use crate::{DType, Device, Error, Layout, Result, Shape};
use abi::TfLayout;
use device::{Arg, Block};
use half::{bf16, f16};
use std::sync::Arc;

/// A buffer of one dtype in the memory of one CUDA device.
pub struct CudaStorage {
    block: Block,
    len: usize,
    dtype: DType,
    device: Arc<CudaDevice>,
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.device.release(&mut self.block);
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {} elements, cuda:{})", self.dtype, self.len, self.device.ordinal())
    }
}

impl CudaStorage {
    /// An uninitialized buffer (callers write every element before it is read).
    pub(crate) fn alloc(device: &Arc<CudaDevice>, len: usize, dtype: DType) -> Result<CudaStorage> {
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or(Error::OutOfMemory {
            op: "alloc",
            device: Device::Cuda(device.ordinal()),
            bytes: usize::MAX,
        })?;
        let block = device.alloc(bytes)?;
        Ok(CudaStorage { block, len, dtype, device: device.clone() })
    }
    pub(crate) fn ptr(&self) -> u64 {
        self.block.ptr
    }
    pub(crate) fn dev(&self) -> &Arc<CudaDevice> {
        &self.device
    }
    /// The kernel ABI form of `l`, after checking it stays inside this buffer (a kernel would
    /// otherwise read out of bounds instead of returning an error).
    pub(crate) fn abi_layout(&self, l: &Layout, op: &'static str) -> Result<TfLayout> {
        if l.elem_count() > 0 && l.max_index_plus_one() > self.len {
            return Err(Error::BadShape {
                op,
                msg: format!(
                    "layout {:?} reaches element {} of a buffer of {}",
                    l.dims(),
                    l.max_index_plus_one(),
                    self.len
                ),
            });
        }
        layout_abi(l, op)
    }
    /// Errs unless `other` lives on the same device.
    pub(crate) fn same_device(&self, other: &CudaStorage, op: &'static str) -> Result<()> {
        if self.device.ordinal() == other.device.ordinal() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() })
        }
    }
}

/// `l` as the by-value struct kernels take.
pub(crate) fn layout_abi(l: &Layout, op: &'static str) -> Result<TfLayout> {
    if l.rank() > MAX_DIMS {
        return Err(Error::BadShape { op, msg: format!("rank {} exceeds the CUDA limit of {MAX_DIMS}", l.rank()) });
    }
    let mut t = TfLayout {
        rank: l.rank() as u32,
        contiguous: u32::from(l.is_contiguous()),
        offset: l.offset() as u64,
        ..Default::default()
    };
    for (i, (&d, &s)) in l.dims().iter().zip(l.strides()).enumerate() {
        t.dims[i] = d as u64;
        t.strides[i] = s as u64;
    }
    Ok(t)
}

/// Kernel-name suffix for a copy that only moves bytes.
pub(crate) fn byte_suffix(dtype: DType) -> &'static str {
    match dtype.size_in_bytes() {
        1 => "b1",
        2 => "b2",
        4 => "b4",
        _ => "b8",
    }
}

fn typed_to_cpu<T: Default + Clone>(s: &CudaStorage, wrap: fn(Vec<T>) -> CpuStorage) -> Result<CpuStorage> {
    let mut v = vec![T::default(); s.len];
    s.device.dtoh(s.ptr(), &mut v)?;
    Ok(wrap(v))
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn device(&self) -> Device {
        Device::Cuda(self.device.ordinal())
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        match self.dtype {
            DType::F32 => typed_to_cpu::<f32>(self, CpuStorage::F32),
            DType::F64 => typed_to_cpu::<f64>(self, CpuStorage::F64),
            DType::F16 => typed_to_cpu::<f16>(self, CpuStorage::F16),
            DType::BF16 => typed_to_cpu::<bf16>(self, CpuStorage::BF16),
            DType::I64 => typed_to_cpu::<i64>(self, CpuStorage::I64),
            DType::U8 => typed_to_cpu::<u8>(self, CpuStorage::U8),
        }
    }
    fn cast(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        elementwise::cast(self, layout, dtype)
    }
    fn copy_strided(&self, src_layout: &Layout, dst: &mut Self, dst_layout: &Layout) -> Result<()> {
        elementwise::copy_strided(self, src_layout, dst, dst_layout)
    }
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, layout, op)
    }
    fn scalar(&self, layout: &Layout, op: ScalarOp) -> Result<Self> {
        elementwise::scalar(self, layout, op)
    }
    fn binary(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: BinaryOp) -> Result<Self> {
        elementwise::binary(self, layout, rhs, rhs_layout, op)
    }
    fn cmp(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self> {
        elementwise::cmp(self, layout, rhs, rhs_layout, op)
    }
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        true_layout: &Layout,
        on_false: &Self,
        false_layout: &Layout,
    ) -> Result<Self> {
        elementwise::where_cond(self, layout, on_true, true_layout, on_false, false_layout)
    }
    fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Self> {
        reduce::reduce(self, layout, op, axes)
    }
    fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Self> {
        reduce::softmax(self, layout, axis, log)
    }
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        matmul::matmul(self, layout, rhs, rhs_layout)
    }
    fn index_select(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self> {
        index::index_select(self, layout, ids, ids_layout, axis)
    }
    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self> {
        index::gather(self, layout, ids, ids_layout, axis)
    }
    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self> {
        index::scatter_add(self, layout, ids, ids_layout, src, src_layout, axis)
    }
    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self> {
        index::index_add(self, layout, ids, ids_layout, src, src_layout, axis)
    }
    fn im2col(&self, layout: &Layout, window: &Window2d, pad_value: f64) -> Result<Self> {
        conv::im2col(self, layout, window, pad_value)
    }
    fn conv2d(&self, layout: &Layout, weight: &Self, weight_layout: &Layout, window: &Window2d) -> Result<Self> {
        conv::conv2d(self, layout, weight, weight_layout, window)
    }
    fn col2im(&self, layout: &Layout, window: &Window2d, height: usize, width: usize) -> Result<Self> {
        conv::col2im(self, layout, window, height, width)
    }
    fn max_pool2d_indices(&self, layout: &Layout, window: &Window2d, out: (usize, usize)) -> Result<Self> {
        conv::max_pool2d_indices(self, layout, window, out)
    }
    fn ctc_loss(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
    ) -> Result<(Self, Self)> {
        ctc::ctc_loss(self, layout, targets, targets_layout, input_lengths, target_lengths, blank)
    }
    fn lstm_cell(&self, l: &Layout, hg: &Self, hl: &Layout, c: &Self, cl: &Layout) -> Result<[Self; 3]> {
        rnn::lstm_cell(self, l, hg, hl, c, cl)
    }
    fn lstm_cell_backward(&self, l: &Layout, rest: [(&Self, &Layout); 5]) -> Result<[Self; 2]> {
        rnn::lstm_cell_backward(self, l, rest)
    }
    fn optim_step(&mut self, grad: &Self, state: &mut [&mut Self], rule: &OptimRule) -> Result<()> {
        optim::optim_step(self, grad, state, rule)
    }
}

#[allow(clippy::too_many_arguments)]
fn random(
    dev: &Arc<CudaDevice>,
    kind: &'static str,
    shape: &Shape,
    dtype: DType,
    seed: u64,
    offset: u64,
    a: f64,
    b: f64,
) -> Result<CudaStorage> {
    if !dtype.is_float() {
        return Err(Error::UnsupportedDType { op: kind, dtype });
    }
    let n = shape.elem_count();
    let out = CudaStorage::alloc(dev, n, dtype)?;
    if n > 0 {
        // One thread per Philox block (4 uniforms or 2 normals).
        let cfg = dev.grid_1d(n.div_ceil(2));
        let args =
            [Arg::Ptr(out.ptr()), Arg::U64(n as u64), Arg::U64(seed), Arg::U64(offset), Arg::F64(a), Arg::F64(b)];
        dev.launch("fill", &format!("{kind}_{}", dtype.as_str()), cfg, &args)?;
    }
    Ok(out)
}

impl BackendDevice for CudaDevice {
    type Storage = CudaStorage;
    fn location(&self) -> Device {
        Device::Cuda(self.ordinal())
    }
    fn full(&self, shape: &Shape, dtype: DType, value: f64) -> Result<CudaStorage> {
        let dev = self.arc()?;
        let n = shape.elem_count();
        let out = CudaStorage::alloc(&dev, n, dtype)?;
        if n > 0 {
            let args = [Arg::Ptr(out.ptr()), Arg::U64(n as u64), Arg::F64(value)];
            self.launch("fill", &format!("fill_{}", dtype.as_str()), self.grid_1d(n), &args)?;
        }
        Ok(out)
    }
    fn rand_uniform(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        lo: f64,
        hi: f64,
    ) -> Result<CudaStorage> {
        random(&self.arc()?, "rand_uniform", shape, dtype, seed, offset, lo, hi)
    }
    fn rand_normal(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        mean: f64,
        std: f64,
    ) -> Result<CudaStorage> {
        random(&self.arc()?, "rand_normal", shape, dtype, seed, offset, mean, std)
    }
    fn storage_from_cpu(&self, data: &CpuStorage) -> Result<CudaStorage> {
        let out = CudaStorage::alloc(&self.arc()?, BackendStorage::len(data), data.dtype())?;
        crate::backend::cpu::with_vec!(data, v => self.htod(v, out.ptr()))?;
        Ok(out)
    }
    fn synchronize(&self) -> Result<()> {
        self.synchronize_stream()
    }
}
