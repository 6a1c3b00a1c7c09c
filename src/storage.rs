//! `Storage`: one buffer on some device. Matches on the device once and forwards each
//! primitive to that backend; operands on two devices are an error, never a copy.

use crate::backend::cpu::{CpuDevice, CpuStorage, guard as cpu_guard};
#[cfg(feature = "cuda")]
use crate::backend::cuda::{CudaDevice, CudaStorage};
use crate::backend::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, OptimRule, ReduceOp, ScalarOp, UnaryOp, Window2d,
};
use crate::{DType, Device, Error, Layout, Result, Shape};

/// A distribution for [`Storage::random`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform in `[lo, hi)`.
    Uniform {
        /// The inclusive lower bound.
        lo: f64,
        /// The exclusive upper bound.
        hi: f64,
    },
    /// Normal with this mean and standard deviation.
    Normal {
        /// The mean.
        mean: f64,
        /// The standard deviation.
        std: f64,
    },
}

/// A buffer on one device.
pub enum Storage {
    /// A buffer in host memory.
    Cpu(CpuStorage),
    /// A buffer on a CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
}

/// Applies `$f` to the backend storage of a unary call; on the CPU an allocation failure
/// inside it becomes [`Error::OutOfMemory`] (see [`cpu_guard`]).
macro_rules! on_one {
    ($s:expr, $op:expr, |$x:ident| $body:expr) => {
        match $s {
            Storage::Cpu($x) => Storage::Cpu(cpu_guard($op, || $body)?),
            #[cfg(feature = "cuda")]
            Storage::Cuda($x) => Storage::Cuda($body?),
        }
    };
}

fn mismatch(op: &'static str, a: Device, b: Device) -> Error {
    Error::DeviceMismatch { op, lhs: a, rhs: b }
}

impl Storage {
    /// The device holding the buffer.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.device(),
        }
    }
    /// The buffer's dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.dtype(),
        }
    }
    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => BackendStorage::len(s),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.len(),
        }
    }
    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The buffer copied to host memory (a clone on the CPU).
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(s) => cpu_guard("to_cpu", || Ok(s.try_clone())),
            #[cfg(feature = "cuda")]
            Storage::Cuda(s) => s.to_cpu(),
        }
    }
    /// Host data placed on `device`.
    pub fn from_cpu(data: CpuStorage, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => Ok(Storage::Cuda(CudaDevice::get(n)?.storage_from_cpu(&data)?)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::CudaUnavailable { reason: "built without the `cuda` feature".into() }),
        }
    }
    /// A buffer of `shape` filled with `v`.
    pub fn full(shape: &Shape, dtype: DType, v: f64, device: Device) -> Result<Storage> {
        shape.checked_size("full", dtype)?;
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu_guard("full", || CpuDevice.full(shape, dtype, v))?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => Ok(Storage::Cuda(CudaDevice::get(n)?.full(shape, dtype, v)?)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::CudaUnavailable { reason: "built without the `cuda` feature".into() }),
        }
    }
    /// Random values from the Philox stream `(seed, offset)`.
    pub fn random(
        shape: &Shape,
        dtype: DType,
        device: Device,
        seed: u64,
        offset: u64,
        dist: Distribution,
    ) -> Result<Storage> {
        shape.checked_size("random", dtype)?;
        match dist {
            Distribution::Uniform { lo, hi } if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
                return Err(Error::msg(format!("rand: expects a finite range lo <= hi, got [{lo}, {hi})")));
            }
            Distribution::Normal { mean, std } if !(mean.is_finite() && std.is_finite() && std >= 0.0) => {
                return Err(Error::msg(format!(
                    "randn: expects a finite mean and std >= 0, got mean {mean}, std {std}"
                )));
            }
            _ => {}
        }
        fn go<D: BackendDevice>(
            d: &D,
            shape: &Shape,
            dtype: DType,
            seed: u64,
            offset: u64,
            dist: Distribution,
        ) -> Result<D::Storage> {
            match dist {
                Distribution::Uniform { lo, hi } => d.rand_uniform(shape, dtype, seed, offset, lo, hi),
                Distribution::Normal { mean, std } => d.rand_normal(shape, dtype, seed, offset, mean, std),
            }
        }
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu_guard("random", || go(&CpuDevice, shape, dtype, seed, offset, dist))?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => Ok(Storage::Cuda(go(&*CudaDevice::get(n)?, shape, dtype, seed, offset, dist)?)),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::CudaUnavailable { reason: "built without the `cuda` feature".into() }),
        }
    }

    /// The viewed elements converted to `dtype` (see [`BackendStorage::cast`]).
    pub fn cast(&self, l: &Layout, dtype: DType) -> Result<Storage> {
        Ok(on_one!(self, "cast", |s| s.cast(l, dtype)))
    }
    /// An elementwise function of the viewed elements (see [`BackendStorage::unary`]).
    pub fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        Ok(on_one!(self, "unary", |s| s.unary(l, op)))
    }
    /// A parameterized scalar map of the viewed elements (see [`BackendStorage::scalar`]).
    pub fn scalar(&self, l: &Layout, op: ScalarOp) -> Result<Storage> {
        Ok(on_one!(self, "scalar", |s| s.scalar(l, op)))
    }
    /// Reduces over `axes`, keeping them at size 1 (see [`BackendStorage::reduce`]).
    pub fn reduce(&self, l: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Storage> {
        Ok(on_one!(self, "reduce", |s| s.reduce(l, op, axes)))
    }
    /// Softmax, or log-softmax with `log`, along `axis` (see [`BackendStorage::softmax`]).
    pub fn softmax(&self, l: &Layout, axis: usize, log: bool) -> Result<Storage> {
        Ok(on_one!(self, "softmax", |s| s.softmax(l, axis, log)))
    }
    /// Unfolds the sliding windows of `w` into columns (see [`BackendStorage::im2col`]).
    pub fn im2col(&self, l: &Layout, w: &Window2d, pad: f64) -> Result<Storage> {
        Ok(on_one!(self, "im2col", |s| s.im2col(l, w, pad)))
    }
    /// Max pooling's window maxima as flat plane indices (see
    /// [`BackendStorage::max_pool2d_indices`]).
    pub fn max_pool2d_indices(&self, l: &Layout, w: &Window2d, out: (usize, usize)) -> Result<Storage> {
        Ok(on_one!(self, "max_pool2d", |s| s.max_pool2d_indices(l, w, out)))
    }
    /// Folds columns back into an `h × wd` image, the adjoint of [`Storage::im2col`] (see
    /// [`BackendStorage::col2im`]).
    pub fn col2im(&self, l: &Layout, w: &Window2d, h: usize, wd: usize) -> Result<Storage> {
        Ok(on_one!(self, "col2im", |s| s.col2im(l, w, h, wd)))
    }

    /// CTC loss and its gradient (see [`BackendStorage::ctc_loss`]).
    pub fn ctc_loss(
        &self,
        l: &Layout,
        targets: &Storage,
        tl: &Layout,
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
    ) -> Result<(Storage, Storage)> {
        match (self, targets) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                let (loss, grad) =
                    cpu_guard("ctc_loss", || a.ctc_loss(l, b, tl, input_lengths, target_lengths, blank))?;
                Ok((Storage::Cpu(loss), Storage::Cpu(grad)))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => {
                let (loss, grad) = a.ctc_loss(l, b, tl, input_lengths, target_lengths, blank)?;
                Ok((Storage::Cuda(loss), Storage::Cuda(grad)))
            }
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("ctc_loss", a.device(), b.device())),
        }
    }

    /// One LSTM step's elementwise part (see [`BackendStorage::lstm_cell`]).
    pub fn lstm_cell(&self, l: &Layout, hg: &Storage, hl: &Layout, c: &Storage, cl: &Layout) -> Result<[Storage; 3]> {
        match (self, hg, c) {
            (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)) => {
                Ok(cpu_guard("lstm_cell", || a.lstm_cell(l, b, hl, c, cl))?.map(Storage::Cpu))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c)) => {
                Ok(a.lstm_cell(l, b, hl, c, cl)?.map(Storage::Cuda))
            }
            #[allow(unreachable_patterns)]
            (a, b, c) => {
                let other = if b.device() != a.device() { b } else { c };
                Err(mismatch("lstm_cell", a.device(), other.device()))
            }
        }
    }
    /// The adjoint of [`Storage::lstm_cell`] (see [`BackendStorage::lstm_cell_backward`]).
    pub fn lstm_cell_backward(&self, l: &Layout, rest: [(&Storage, &Layout); 5]) -> Result<[Storage; 2]> {
        const OP: &str = "lstm_cell_backward";
        if let Some((other, _)) = rest.iter().find(|(t, _)| t.device() != self.device()) {
            return Err(mismatch(OP, self.device(), other.device()));
        }
        match self {
            Storage::Cpu(a) => {
                let rest = rest.map(|(t, tl)| match t {
                    Storage::Cpu(t) => (t, tl),
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("devices checked above"),
                });
                Ok(cpu_guard(OP, || a.lstm_cell_backward(l, rest))?.map(Storage::Cpu))
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(a) => {
                let rest = rest.map(|(t, tl)| match t {
                    Storage::Cuda(t) => (t, tl),
                    _ => unreachable!("devices checked above"),
                });
                Ok(a.lstm_cell_backward(l, rest)?.map(Storage::Cuda))
            }
        }
    }

    /// The views `parts` (same dtype and device, other dims agreeing) concatenated along
    /// `axis` into a new contiguous buffer of `shape`. The CPU writes each element once; a
    /// device fills a buffer and copies each part into its slice.
    pub fn concat(parts: &[(&Storage, &Layout)], axis: usize, shape: &Shape) -> Result<Storage> {
        let Some(&(first, _)) = parts.first() else {
            return Err(Error::BadShape { op: "cat", msg: "no tensors to concatenate".into() });
        };
        if first.device() == Device::Cpu {
            let cpu = parts
                .iter()
                .map(|&(s, l)| match s {
                    Storage::Cpu(c) => Ok((c, l)),
                    #[allow(unreachable_patterns)]
                    other => Err(mismatch("cat", Device::Cpu, other.device())),
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Storage::Cpu(cpu_guard("cat", || crate::backend::cpu::concat(&cpu, axis))?));
        }
        let mut out = Storage::full(shape, first.dtype(), 0.0, first.device())?;
        let dense = Layout::contiguous(shape.clone());
        let mut at = 0;
        for &(s, l) in parts {
            let n = l.dims()[axis];
            s.copy_strided(l, &mut out, &dense.slice(axis, at, n, 1))?;
            at += n;
        }
        Ok(out)
    }

    /// Copies the elements viewed by `l` into the elements of `dst` viewed by `dl` (see
    /// [`BackendStorage::copy_strided`]).
    pub fn copy_strided(&self, l: &Layout, dst: &mut Storage, dl: &Layout) -> Result<()> {
        match (self, dst) {
            (Storage::Cpu(a), Storage::Cpu(b)) => cpu_guard("copy_strided", || a.copy_strided(l, b, dl)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => a.copy_strided(l, b, dl),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("copy_strided", a.device(), b.device())),
        }
    }
    /// `self op rhs` elementwise (see [`BackendStorage::binary`]).
    pub fn binary(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu_guard(op.name(), || a.binary(l, b, rl, op))?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.binary(l, b, rl, op)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch(op.name(), a.device(), b.device())),
        }
    }
    /// An elementwise comparison into a u8 mask (see [`BackendStorage::cmp`]).
    pub fn cmp(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: CmpOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu_guard(op.name(), || a.cmp(l, b, rl, op))?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.cmp(l, b, rl, op)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch(op.name(), a.device(), b.device())),
        }
    }
    /// Batched matrix product of `self` and `rhs` (see [`BackendStorage::matmul`]).
    pub fn matmul(&self, l: &Layout, rhs: &Storage, rl: &Layout) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu_guard("matmul", || a.matmul(l, b, rl))?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.matmul(l, b, rl)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("matmul", a.device(), b.device())),
        }
    }
    /// Autocast's matrix product of f32 operands (see [`BackendStorage::matmul_lowered`]).
    pub fn matmul_lowered(&self, l: &Layout, rhs: &Storage, rl: &Layout, low: DType) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cpu_guard("matmul", || a.matmul_lowered(l, b, rl, low))?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.matmul_lowered(l, b, rl, low)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("matmul", a.device(), b.device())),
        }
    }
    /// 2-D convolution of `self` by the weight `w` (see [`BackendStorage::conv2d`]).
    pub fn conv2d(&self, l: &Layout, w: &Storage, wl: &Layout, window: &Window2d) -> Result<Storage> {
        match (self, w) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(cpu_guard("conv2d", || a.conv2d(l, b, wl, window))?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.conv2d(l, b, wl, window)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("conv2d", a.device(), b.device())),
        }
    }
    /// The weight gradient of a convolution of `self` whose output has the gradient `g` (see
    /// [`BackendStorage::conv2d_weight_grad`]).
    pub fn conv2d_weight_grad(&self, l: &Layout, g: &Storage, gl: &Layout, window: &Window2d) -> Result<Storage> {
        match (self, g) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cpu_guard("conv2d", || a.conv2d_weight_grad(l, b, gl, window))?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.conv2d_weight_grad(l, b, gl, window)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("conv2d", a.device(), b.device())),
        }
    }
    /// Autocast's convolution weight gradient (see
    /// [`BackendStorage::conv2d_weight_grad_lowered`]).
    pub fn conv2d_weight_grad_lowered(
        &self,
        l: &Layout,
        g: &Storage,
        gl: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Storage> {
        match (self, g) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cpu_guard("conv2d", || a.conv2d_weight_grad_lowered(l, b, gl, window, low))?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => {
                Ok(Storage::Cuda(a.conv2d_weight_grad_lowered(l, b, gl, window, low)?))
            }
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("conv2d", a.device(), b.device())),
        }
    }
    /// Autocast's convolution of f32 operands (see [`BackendStorage::conv2d_lowered`]).
    pub fn conv2d_lowered(
        &self,
        l: &Layout,
        w: &Storage,
        wl: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Storage> {
        match (self, w) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cpu_guard("conv2d", || a.conv2d_lowered(l, b, wl, window, low))?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.conv2d_lowered(l, b, wl, window, low)?)),
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch("conv2d", a.device(), b.device())),
        }
    }
    /// `self` is a u8 mask: picks `t` where nonzero, else `f` (see [`BackendStorage::where_cond`]).
    pub fn where_cond(&self, l: &Layout, t: &Storage, tl: &Layout, f: &Storage, fl: &Layout) -> Result<Storage> {
        match (self, t, f) {
            (Storage::Cpu(m), Storage::Cpu(t), Storage::Cpu(f)) => {
                Ok(Storage::Cpu(cpu_guard("where", || m.where_cond(l, t, tl, f, fl))?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(m), Storage::Cuda(t), Storage::Cuda(f)) => Ok(Storage::Cuda(m.where_cond(l, t, tl, f, fl)?)),
            #[allow(unreachable_patterns)]
            (m, t, f) => {
                Err(mismatch("where", m.device(), if t.device() != m.device() { t.device() } else { f.device() }))
            }
        }
    }
    /// `index_select` (`gather = false`) or `gather` (`true`).
    pub fn index(&self, l: &Layout, ids: &Storage, il: &Layout, axis: usize, gather: bool) -> Result<Storage> {
        match (self, ids) {
            (Storage::Cpu(a), Storage::Cpu(i)) => {
                let op = if gather { "gather" } else { "index_select" };
                Ok(Storage::Cpu(cpu_guard(op, || {
                    if gather { a.gather(l, i, il, axis) } else { a.index_select(l, i, il, axis) }
                })?))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(i)) => {
                Ok(Storage::Cuda(if gather { a.gather(l, i, il, axis)? } else { a.index_select(l, i, il, axis)? }))
            }
            #[allow(unreachable_patterns)]
            (a, b) => Err(mismatch(if gather { "gather" } else { "index_select" }, a.device(), b.device())),
        }
    }
    /// `scatter_add` (`scatter = true`) or `index_add` (`false`).
    #[allow(clippy::too_many_arguments)]
    pub fn index_accumulate(
        &self,
        l: &Layout,
        ids: &Storage,
        il: &Layout,
        src: &Storage,
        sl: &Layout,
        axis: usize,
        scatter: bool,
    ) -> Result<Storage> {
        let op = if scatter { "scatter_add" } else { "index_add" };
        match (self, ids, src) {
            (Storage::Cpu(a), Storage::Cpu(i), Storage::Cpu(s)) => Ok(Storage::Cpu(cpu_guard(op, || {
                if scatter { a.scatter_add(l, i, il, s, sl, axis) } else { a.index_add(l, i, il, s, sl, axis) }
            })?)),
            #[cfg(feature = "cuda")]
            (Storage::Cuda(a), Storage::Cuda(i), Storage::Cuda(s)) => Ok(Storage::Cuda(if scatter {
                a.scatter_add(l, i, il, s, sl, axis)?
            } else {
                a.index_add(l, i, il, s, sl, axis)?
            })),
            #[allow(unreachable_patterns)]
            (a, i, s) => Err(mismatch(op, a.device(), if i.device() != a.device() { i.device() } else { s.device() })),
        }
    }
    /// One fused optimizer update in place.
    #[allow(irrefutable_let_patterns)]
    pub fn optim_step(&mut self, grad: &Storage, state: &mut [&mut Storage], rule: &OptimRule) -> Result<()> {
        let dev = self.device();
        if let Some(bad) = std::iter::once(grad.device()).chain(state.iter().map(|s| s.device())).find(|d| *d != dev) {
            return Err(mismatch("optim_step", dev, bad));
        }
        match self {
            Storage::Cpu(p) => {
                let Storage::Cpu(g) = grad else { unreachable!("device checked above") };
                let mut st: Vec<&mut CpuStorage> = state
                    .iter_mut()
                    .map(|s| match &mut **s {
                        Storage::Cpu(s) => s,
                        #[cfg(feature = "cuda")]
                        Storage::Cuda(_) => unreachable!("device checked above"),
                    })
                    .collect();
                cpu_guard("optim_step", || p.optim_step(g, &mut st, rule))
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(p) => {
                let Storage::Cuda(g) = grad else { unreachable!("device checked above") };
                let mut st: Vec<&mut CudaStorage> = state
                    .iter_mut()
                    .map(|s| match &mut **s {
                        Storage::Cuda(s) => s,
                        Storage::Cpu(_) => unreachable!("device checked above"),
                    })
                    .collect();
                p.optim_step(g, &mut st, rule)
            }
        }
    }
}
