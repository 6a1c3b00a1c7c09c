//! Custom operations defined in one place: a CPU function, optionally a CUDA C++ source
//! compiled at run time by NVRTC, and a backward in tensor ops. The result takes part in
//! autograd like a built-in op and runs on whichever device its inputs are on.
//!
//! A custom op is *elementwise-shaped*: its inputs (one float dtype, one device) are broadcast
//! to a common shape, and the output has that shape. The CPU function receives the inputs as
//! contiguous row-major slices of the output's length; the CUDA kernel receives device
//! pointers to the same layout. Constants shared by both (`scalars`) are passed as `f64`s.
//!
//! ```
//! use tensorforge::custom::{CpuKernel, CustomOp, Float};
//! use tensorforge::{Device, Tensor};
//!
//! /// squareplus(x) = (x + √(x² + b)) / 2, a smooth ReLU.
//! struct Squareplus;
//! impl CpuKernel for Squareplus {
//!     fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], scalars: &[f64]) {
//!         let (b, half) = (T::from_f64(scalars[0]), T::from_f64(0.5));
//!         for (o, &x) in out.iter_mut().zip(x[0]) {
//!             *o = (x + (x * x + b).sqrt()) * half;
//!         }
//!     }
//! }
//!
//! let op = CustomOp::new("squareplus", Squareplus)?
//!     .scalars(&[4.0])
//!     // dy/dx = (1 + x/√(x² + b)) / 2 = y / √(x² + b)
//!     .backward(|x, y, g| Ok(vec![Some(g.mul(y)?.div(&x[0].sqr()?.add_scalar(4.0)?.sqrt()?)?)]));
//! let x = Tensor::from_vec(vec![-1f32, 0., 2.], 3, Device::Cpu)?.requires_grad();
//! let y = op.apply(&[&x])?;
//! let want = [0.618034f32, 1.0, 2.414214];
//! assert!(y.to_vec1::<f32>()?.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
//! y.sum_all()?.backward()?;
//! assert!(x.grad().is_some());
//! # Ok::<(), tensorforge::Error>(())
//! ```
//!
//! See `docs/NEW_OP.md` for the whole path: CPU function → backward → gradcheck → CUDA source
//! → parity → benchmark → promotion to a built-in primitive.

use crate::autograd::{Gradients, Operation};
use crate::backend::cpu::CpuStorage;
use crate::storage::Storage;
use crate::{DType, Device, Error, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};
use std::sync::Arc;

pub use crate::backend::cpu::float::Float;

/// The CPU half of a custom op, generic over the compute type (`f32` or `f64`; f16 and bf16
/// tensors are computed in f32, as every built-in CPU kernel does).
///
/// `inputs[i]` and `out` all hold `out.len()` elements: the inputs broadcast to the output's
/// shape, row-major. `scalars` are the op's [`CustomOp::scalars`].
pub trait CpuKernel: Send + Sync + 'static {
    /// Writes every element of `out`.
    fn forward<T: Float>(&self, inputs: &[&[T]], out: &mut [T], scalars: &[f64]);
}

/// The object-safe form of [`CpuKernel`] (a generic method cannot go in a `dyn`).
trait DynCpuKernel: Send + Sync {
    fn f32(&self, inputs: &[&[f32]], out: &mut [f32], scalars: &[f64]);
    fn f64(&self, inputs: &[&[f64]], out: &mut [f64], scalars: &[f64]);
}

impl<K: CpuKernel> DynCpuKernel for K {
    fn f32(&self, inputs: &[&[f32]], out: &mut [f32], scalars: &[f64]) {
        self.forward(inputs, out, scalars)
    }
    fn f64(&self, inputs: &[&[f64]], out: &mut [f64], scalars: &[f64]) {
        self.forward(inputs, out, scalars)
    }
}

/// A backward: `(inputs, output, output gradient) → one gradient per input` (`None` for an
/// input without one). Each gradient has the output's shape or the input's; broadcast
/// gradients are summed back to the input's shape. Runs with recording off.
type BackwardFn = dyn Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

#[derive(Clone)]
struct CudaSource {
    source: String,
    kernel: String,
}

#[derive(Clone)]
struct Inner {
    name: String,
    cpu: Arc<dyn DynCpuKernel>,
    scalars: Vec<f64>,
    cuda: Option<CudaSource>,
    backward: Option<Arc<BackwardFn>>,
}

/// A user-defined differentiable op (see the [module docs](self)). Cheap to clone; build it
/// once and [`apply`](CustomOp::apply) it as often as needed.
#[derive(Clone)]
pub struct CustomOp {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CustomOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomOp")
            .field("name", &self.inner.name)
            .field("scalars", &self.inner.scalars)
            .field("cuda_kernel", &self.inner.cuda.as_ref().map(|c| c.kernel.as_str()))
            .field("has_backward", &self.inner.backward.is_some())
            .finish()
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl CustomOp {
    /// An op called `name` (a C identifier: it names the CUDA module and appears in errors)
    /// computed on the CPU by `cpu`. It has no CUDA code and no backward until added.
    pub fn new(name: &str, cpu: impl CpuKernel) -> Result<CustomOp> {
        if !is_identifier(name) {
            return Err(Error::msg(format!("custom op name `{name}` is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")));
        }
        let inner =
            Inner { name: name.to_string(), cpu: Arc::new(cpu), scalars: Vec::new(), cuda: None, backward: None };
        Ok(CustomOp { inner: Arc::new(inner) })
    }

    fn edit(self, f: impl FnOnce(&mut Inner)) -> CustomOp {
        // Copy-on-write: clones made earlier keep their configuration.
        let mut inner = Arc::unwrap_or_clone(self.inner);
        f(&mut inner);
        CustomOp { inner: Arc::new(inner) }
    }

    /// Constants passed to both the CPU function and the CUDA kernel (as `double`s after the
    /// element count), e.g. squareplus's `b`.
    pub fn scalars(self, scalars: &[f64]) -> CustomOp {
        let s = scalars.to_vec();
        self.edit(|i| i.scalars = s)
    }

    /// The backward, in tensor ops (any op, including other custom ops):
    /// `|inputs, output, grad| -> Result<Vec<Option<Tensor>>>`, one entry per input.
    pub fn backward<F>(self, f: F) -> CustomOp
    where
        F: Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        self.edit(|i| i.backward = Some(Arc::new(f)))
    }

    /// CUDA C++ `source` for inputs on a CUDA device. `#include "abi.h"` and
    /// `#include "common.cuh"` are available (the engine's element types, `Tr<T>` conversions
    /// and the `TF_FOR` grid-stride loop). For a tensor of dtype `d` the engine launches
    /// `extern "C" __global__ void {kernel}_{d}` (`d` one of `f32 f64 f16 bf16`; define the ones
    /// you support) with one thread per output element and these parameters, in order:
    ///
    /// ```text
    /// (const T* in0, …, const T* inK, T* out, tf_u64 n, double scalar0, …)
    /// ```
    ///
    /// where `T` is `float`, `double`, `tf_f16` or `tf_bf16`. It is compiled on first use for
    /// the device's architecture and cached on disk by a hash of the source.
    ///
    /// # Safety
    /// The kernels' parameter lists must be exactly the above, and they must not access
    /// memory beyond `n` elements of each pointer: the driver cannot check either, and a
    /// mismatch corrupts device memory.
    pub unsafe fn cuda(self, source: &str, kernel: &str) -> Result<CustomOp> {
        if !is_identifier(kernel) {
            return Err(Error::msg(format!(
                "custom op `{}`: kernel name `{kernel}` is not an identifier",
                self.name()
            )));
        }
        let c = CudaSource { source: source.to_string(), kernel: kernel.to_string() };
        Ok(self.edit(|i| i.cuda = Some(c)))
    }

    /// The op's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// True when a CUDA source was given.
    pub fn has_cuda(&self) -> bool {
        self.inner.cuda.is_some()
    }

    /// Runs the op, recording it for autograd when an input tracks a gradient.
    pub fn apply(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        crate::autograd::apply(self.clone(), inputs)
    }

    /// Compiles the CUDA source with NVRTC for `arch` (e.g. `"sm_80"`) through the engine's
    /// compile path and disk cache, and returns the PTX size in bytes. Needs only libnvrtc,
    /// no GPU, so CI can check a custom kernel compiles.
    pub fn compile_cuda(&self, arch: &str) -> Result<usize> {
        let c = self
            .inner
            .cuda
            .as_ref()
            .ok_or_else(|| Error::msg(format!("custom op `{}` has no CUDA source", self.name())))?;
        #[cfg(feature = "cuda")]
        {
            crate::backend::cuda::compile::user_ptx(&self.inner.name, &c.source, arch).map(|p| p.len())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (&c.source, arch);
            Err(Error::CudaUnavailable { reason: "tensorforge was built without the `cuda` feature".into() })
        }
    }

    /// Checks the inputs and broadcasts them: (common shape, dtype, device, contiguous inputs).
    fn prepare(&self, x: &[&Tensor]) -> Result<(Shape, DType, Device, Vec<Tensor>)> {
        let op = "custom op";
        let Some(first) = x.first() else {
            return Err(Error::msg(format!("custom op `{}` needs at least one input", self.name())));
        };
        let (dtype, device) = (first.dtype(), first.device());
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op, dtype });
        }
        let mut shape = first.shape().clone();
        for t in &x[1..] {
            if t.dtype() != dtype {
                return Err(Error::DTypeMismatch { op, lhs: dtype, rhs: t.dtype() });
            }
            if t.device() != device {
                return Err(Error::DeviceMismatch { op, lhs: device, rhs: t.device() });
            }
            shape = shape.broadcast(t.shape(), op)?;
        }
        let xs = x.iter().map(|t| t.broadcast_as(shape.clone())?.contiguous()).collect::<Result<Vec<_>>>()?;
        Ok((shape, dtype, device, xs))
    }

    fn forward_cpu(&self, shape: Shape, dtype: DType, xs: &[Tensor]) -> Result<Tensor> {
        let n = shape.elem_count();
        let guards: Vec<_> = xs.iter().map(|t| t.storage()).collect();
        let host = |i: usize| -> &CpuStorage {
            match &*guards[i] {
                Storage::Cpu(c) => c,
                #[cfg(feature = "cuda")]
                Storage::Cuda(_) => unreachable!("checked: every input is on the CPU"),
            }
        };
        // `contiguous()` may leave an offset (a contiguous slice of a larger buffer).
        let range = |i: usize| xs[i].layout().contiguous_range().expect("made contiguous");
        fn native<T: WithDType>(c: &CpuStorage, (a, b): (usize, usize)) -> &[T] {
            &T::cpu_slice(c).expect("dtype checked")[a..b]
        }
        let k = &self.inner.cpu;
        let s = &self.inner.scalars;
        let out = match dtype {
            DType::F32 => {
                let ins: Vec<&[f32]> = (0..xs.len()).map(|i| native(host(i), range(i))).collect();
                let mut out = vec![0f32; n];
                k.f32(&ins, &mut out, s);
                CpuStorage::F32(out)
            }
            DType::F64 => {
                let ins: Vec<&[f64]> = (0..xs.len()).map(|i| native(host(i), range(i))).collect();
                let mut out = vec![0f64; n];
                k.f64(&ins, &mut out, s);
                CpuStorage::F64(out)
            }
            DType::F16 | DType::BF16 => {
                // Widen to f32, compute, round once on the way back (as the built-in kernels).
                let owned: Vec<Vec<f32>> = (0..xs.len())
                    .map(|i| match host(i) {
                        CpuStorage::F16(v) => v[range(i).0..range(i).1].iter().map(|h| h.to_f32()).collect(),
                        CpuStorage::BF16(v) => v[range(i).0..range(i).1].iter().map(|h| h.to_f32()).collect(),
                        _ => unreachable!("dtype checked"),
                    })
                    .collect();
                let ins: Vec<&[f32]> = owned.iter().map(Vec::as_slice).collect();
                let mut out = vec![0f32; n];
                k.f32(&ins, &mut out, s);
                if dtype == DType::F16 {
                    CpuStorage::F16(out.into_iter().map(f16::from_f32).collect())
                } else {
                    CpuStorage::BF16(out.into_iter().map(bf16::from_f32).collect())
                }
            }
            d => return Err(Error::UnsupportedDType { op: "custom op", dtype: d }),
        };
        Ok(Tensor::from_contiguous(Storage::Cpu(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn forward_cuda(&self, ordinal: usize, shape: Shape, dtype: DType, xs: &[Tensor]) -> Result<Tensor> {
        use crate::backend::cuda::{CudaDevice, CudaStorage, device::Arg};
        let Some(c) = &self.inner.cuda else {
            return Err(Error::msg(format!(
                "custom op `{}` has no CUDA source, but its inputs are on cuda:{ordinal} \
                 (give it one with .cuda(source, kernel), or move the inputs to the CPU)",
                self.name()
            )));
        };
        let dev = CudaDevice::get(ordinal)?;
        let n = shape.elem_count();
        let out = CudaStorage::alloc(&dev, n, dtype)?;
        if n > 0 {
            let guards: Vec<_> = xs.iter().map(|t| t.storage()).collect();
            let mut args = Vec::with_capacity(xs.len() + 2 + self.inner.scalars.len());
            for (g, t) in guards.iter().zip(xs) {
                let Storage::Cuda(s) = &**g else { unreachable!("checked: every input is on this device") };
                let (start, _) = t.layout().contiguous_range().expect("made contiguous");
                args.push(Arg::Ptr(s.ptr() + (start * dtype.size_in_bytes()) as u64));
            }
            args.push(Arg::Ptr(out.ptr()));
            args.push(Arg::U64(n as u64));
            args.extend(self.inner.scalars.iter().map(|&v| Arg::F64(v)));
            // One thread per element (not the capped grid of the built-ins), so a kernel
            // written as `if (i < n)` is as correct as one using TF_FOR.
            let blocks = u32::try_from(n.div_ceil(256))
                .map_err(|_| Error::msg(format!("custom op `{}`: {n} elements exceed one launch", self.name())))?;
            let cfg =
                crate::backend::cuda::driver::LaunchCfg { grid: (blocks, 1, 1), block: (256, 1, 1), shared_bytes: 0 };
            let kernel = format!("{}_{}", c.kernel, dtype.as_str());
            // SAFETY: `CustomOp::cuda` (an unsafe fn) made the user promise the kernel takes
            // exactly these parameters and stays within `n` elements; every pointer is a live
            // block holding `n` elements of `dtype` (inputs broadcast and made contiguous).
            unsafe { dev.launch_user(&self.inner.name, &c.source, &kernel, cfg, &args)? };
        }
        Ok(Tensor::from_contiguous(Storage::Cuda(out), shape))
    }
}

impl Operation for CustomOp {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (shape, dtype, device, xs) = self.prepare(x)?;
        match device {
            Device::Cpu => self.forward_cpu(shape, dtype, &xs),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => self.forward_cuda(ordinal, shape, dtype, &xs),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                Err(Error::CudaUnavailable { reason: "tensorforge was built without the `cuda` feature".into() })
            }
        }
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let Some(bw) = &self.inner.backward else {
            return Err(Error::Autograd(format!(
                "custom op `{}` has no backward (add one with .backward(...))",
                self.inner.name
            )));
        };
        let gs = bw(x, y, g)?;
        if gs.len() != x.len() {
            return Err(Error::Autograd(format!(
                "custom op `{}`: backward returned {} gradients for {} inputs",
                self.inner.name,
                gs.len(),
                x.len()
            )));
        }
        for (xi, gi) in x.iter().zip(gs) {
            if let Some(gi) = gi
                && xi.tracks_grad()
            {
                grads.accumulate(xi, gi.sum_to(xi.shape())?)?;
            }
        }
        Ok(())
    }
}
