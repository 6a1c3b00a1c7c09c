//! Custom operations defined in one place: a CPU function, optionally a CUDA C++ source
//! compiled at run time by NVRTC, and a backward in tensor ops. The result takes part in
//! autograd like a built-in op and runs on whichever device its inputs are on.
//!
//! Two forms share one type, [`CustomOp`]:
//!
//! - **Elementwise** ([`CustomOp::new`] with a [`CpuKernel`]), the shortest path: inputs of one
//!   float dtype are broadcast to a common shape, the one output has that shape, and the CPU
//!   function gets contiguous slices; the CUDA kernel runs one thread per element
//!   ([`CustomOp::cuda`]).
//! - **General** ([`CustomOp::from_kernel`] with a [`Kernel`]): any number of inputs (float,
//!   or `i64` indices) and outputs of any shapes, declared by the kernel's shape rule; the CPU
//!   function indexes strided [`View`]s and writes [`Output`]s; the CUDA source has any number
//!   of entries, run by a launch rule ([`CustomOp::cuda_launch`]).
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
//! A general op, row sums of a matrix (one output of another shape than its input):
//!
//! ```
//! use tensorforge::custom::{CustomOp, Float, Input, Kernel, Output, Spec};
//! use tensorforge::{Device, Result, Shape, Tensor};
//!
//! struct RowSum;
//! impl Kernel for RowSum {
//!     fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<Shape>> {
//!         match x {
//!             [m] if m.dims.len() == 2 => Ok(vec![Shape::from(m.dims[0])]),
//!             _ => Err(tensorforge::Error::msg("row_sum takes one matrix")),
//!         }
//!     }
//!     fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], _: &[f64]) -> Result<()> {
//!         let m = x[0].float()?; // a strided view: transposed inputs arrive as they are
//!         let cols = m.dims()[1];
//!         for (i, o) in out[0].as_mut_slice().iter_mut().enumerate() {
//!             *o = (0..cols).fold(T::ZERO, |s, j| s + m.at(&[i, j]));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let op = CustomOp::from_kernel("row_sum", RowSum)?
//!     .backward_multi(|x, _, g| Ok(vec![Some(g[0].unsqueeze(1)?.broadcast_as(x[0].shape())?.contiguous()?)]));
//! let m = Tensor::from_vec(vec![1f64, 2., 3., 4., 5., 6.], (2, 3), Device::Cpu)?;
//! assert_eq!(op.apply(&[&m])?.to_vec1::<f64>()?, vec![6., 15.]);
//! assert_eq!(op.apply(&[&m.t()?])?.to_vec1::<f64>()?, vec![5., 7., 9.]);
//! tensorforge::gradcheck::gradcheck(|t| op.apply(&[&t[0]]), &[m])?;
//! # Ok::<(), tensorforge::Error>(())
//! ```
//!
//! See `docs/NEW_OP.md` for the whole path: CPU function → backward → gradcheck → CUDA source
//! → parity → benchmark → promotion to a built-in primitive, and `examples/custom_rmsnorm.rs`
//! for a general op with a shared-memory CUDA kernel.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod launch;
mod view;

pub use crate::backend::cpu::float::Float;
pub use launch::{Launch, LaunchSpec};
pub use view::{Input, Output, Spec, View};

use crate::autograd::{Gradients, MultiOperation};
use crate::{DType, Device, Error, Result, Shape, Tensor};
use std::sync::Arc;

/// The CPU half of an elementwise custom op, generic over the compute type (`f32` or `f64`;
/// f16 and bf16 tensors are computed in f32, as every built-in CPU kernel does).
///
/// `inputs[i]` and `out` all hold `out.len()` elements: the inputs broadcast to the output's
/// shape, row-major. `scalars` are the op's [`CustomOp::scalars`].
pub trait CpuKernel: Send + Sync + 'static {
    /// Writes every element of `out`.
    fn forward<T: Float>(&self, inputs: &[&[T]], out: &mut [T], scalars: &[f64]);
}

/// A general custom op's shape rule and CPU half.
///
/// Inputs are float tensors of one dtype (the op's) or `i64` tensors; outputs are float
/// tensors of the op's dtype, as many and of whatever shapes [`outputs`](Kernel::outputs)
/// declares. The CPU function computes in `f32` or `f64` (f16/bf16 inputs widened to f32,
/// outputs rounded once on the way back) and may use rayon.
pub trait Kernel: Send + Sync + 'static {
    /// The outputs' shapes, from the inputs' shapes and dtypes and the op's scalars. An `Err`
    /// here is what a caller whose inputs don't fit gets.
    fn outputs(&self, inputs: &[Spec<'_>], scalars: &[f64]) -> Result<Vec<Shape>>;
    /// Writes the outputs (zero-filled, contiguous, of the declared shapes).
    fn cpu<T: Float>(&self, inputs: &[Input<'_, T>], outputs: &mut [Output<'_, T>], scalars: &[f64]) -> Result<()>;
    /// True to receive contiguous inputs, copied where a view is not (on the CPU and CUDA
    /// alike). By default inputs arrive as they are, strided.
    fn contiguous_inputs(&self) -> bool {
        false
    }
}

/// The object-safe forms of [`CpuKernel`] and [`Kernel`] (generic methods cannot go in a `dyn`).
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

trait DynKernel: Send + Sync {
    fn outputs(&self, inputs: &[Spec<'_>], scalars: &[f64]) -> Result<Vec<Shape>>;
    fn f32(&self, inputs: &[Input<'_, f32>], outputs: &mut [Output<'_, f32>], scalars: &[f64]) -> Result<()>;
    fn f64(&self, inputs: &[Input<'_, f64>], outputs: &mut [Output<'_, f64>], scalars: &[f64]) -> Result<()>;
    fn contiguous_inputs(&self) -> bool;
}

impl<K: Kernel> DynKernel for K {
    fn outputs(&self, inputs: &[Spec<'_>], scalars: &[f64]) -> Result<Vec<Shape>> {
        Kernel::outputs(self, inputs, scalars)
    }
    fn f32(&self, inputs: &[Input<'_, f32>], outputs: &mut [Output<'_, f32>], scalars: &[f64]) -> Result<()> {
        self.cpu(inputs, outputs, scalars)
    }
    fn f64(&self, inputs: &[Input<'_, f64>], outputs: &mut [Output<'_, f64>], scalars: &[f64]) -> Result<()> {
        self.cpu(inputs, outputs, scalars)
    }
    fn contiguous_inputs(&self) -> bool {
        Kernel::contiguous_inputs(self)
    }
}

/// A backward: `(inputs, outputs, outputs' gradients) → one gradient per input`.
type BackwardFn = dyn Fn(&[Tensor], &[Tensor], &[Tensor]) -> Result<Vec<Option<Tensor>>> + Send + Sync;
/// A launch rule: the launches of one forward, in order.
type LaunchRule = dyn Fn(&LaunchSpec<'_>) -> Result<Vec<Launch>> + Send + Sync;

#[derive(Clone)]
enum Form {
    Elementwise(Arc<dyn DynCpuKernel>),
    General(Arc<dyn DynKernel>),
}

#[derive(Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // kept so the builder works the same
enum CudaCode {
    /// One entry `{kernel}_{dtype}`, one thread per element.
    Elementwise { source: String, kernel: String },
    /// Any entries, as the rule says.
    General { source: String, rule: Arc<LaunchRule> },
}

impl CudaCode {
    fn source(&self) -> &str {
        match self {
            CudaCode::Elementwise { source, .. } | CudaCode::General { source, .. } => source,
        }
    }
}

#[derive(Clone)]
struct Inner {
    name: String,
    form: Form,
    scalars: Vec<f64>,
    cuda: Option<CudaCode>,
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
            .field("elementwise", &matches!(self.inner.form, Form::Elementwise(_)))
            .field("scalars", &self.inner.scalars)
            .field("has_cuda", &self.inner.cuda.is_some())
            .field("has_backward", &self.inner.backward.is_some())
            .finish()
    }
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A general op's inputs after the checks (contiguous if asked) and its outputs' shapes.
struct Prepared {
    dtype: DType,
    inputs: Vec<Tensor>,
    shapes: Vec<Shape>,
}

impl CustomOp {
    fn with_form(name: &str, form: Form) -> Result<CustomOp> {
        if !is_identifier(name) {
            return Err(Error::msg(format!("custom op name `{name}` is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")));
        }
        let inner = Inner { name: name.to_string(), form, scalars: Vec::new(), cuda: None, backward: None };
        Ok(CustomOp { inner: Arc::new(inner) })
    }

    /// An elementwise op called `name` (a C identifier: it names the CUDA module and appears
    /// in errors) computed on the CPU by `cpu`. It has no CUDA code and no backward until added.
    pub fn new(name: &str, cpu: impl CpuKernel) -> Result<CustomOp> {
        Self::with_form(name, Form::Elementwise(Arc::new(cpu)))
    }

    /// A general op called `name`: outputs of any shapes, declared by `kernel`'s shape rule,
    /// computed on the CPU by its `cpu` function.
    pub fn from_kernel(name: &str, kernel: impl Kernel) -> Result<CustomOp> {
        Self::with_form(name, Form::General(Arc::new(kernel)))
    }

    fn edit(self, f: impl FnOnce(&mut Inner)) -> CustomOp {
        // Copy-on-write: clones made earlier keep their configuration.
        let mut inner = Arc::unwrap_or_clone(self.inner);
        f(&mut inner);
        CustomOp { inner: Arc::new(inner) }
    }

    fn is_elementwise(&self) -> bool {
        matches!(self.inner.form, Form::Elementwise(_))
    }

    /// Constants passed to the CPU function, the shape and launch rules and the CUDA kernels
    /// (as `double`s after the other arguments), e.g. squareplus's `b` or a norm's `eps`.
    pub fn scalars(self, scalars: &[f64]) -> CustomOp {
        let s = scalars.to_vec();
        self.edit(|i| i.scalars = s)
    }

    /// The backward of a one-output op, in tensor ops (any op, including other custom ops):
    /// `|inputs, output, grad| -> Result<Vec<Option<Tensor>>>`, one entry per input. An
    /// elementwise op's gradients may have the output's shape; they are summed back to each
    /// input's shape.
    pub fn backward<F>(self, f: F) -> CustomOp
    where
        F: Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        self.backward_multi(move |x, y, g| f(x, &y[0], &g[0]))
    }

    /// The backward of an op with any number of outputs:
    /// `|inputs, outputs, grads| -> Result<Vec<Option<Tensor>>>`, one entry per input (`None`
    /// for an input without a gradient, such as indices). `grads[k]` is the gradient of
    /// output `k`, zeros when the loss does not depend on it (as PyTorch's
    /// `autograd.Function`). A general op's gradients must have their inputs' shapes.
    pub fn backward_multi<F>(self, f: F) -> CustomOp
    where
        F: Fn(&[Tensor], &[Tensor], &[Tensor]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        self.edit(|i| i.backward = Some(Arc::new(f)))
    }

    /// CUDA C++ `source` for an elementwise op's inputs on a CUDA device. `#include "abi.h"`
    /// and `#include "common.cuh"` are available (the engine's element types, `Tr<T>`
    /// conversions and the `TF_FOR` grid-stride loop). For a tensor of dtype `d` the engine
    /// launches `extern "C" __global__ void {kernel}_{d}` (`d` one of `f32 f64 f16 bf16`;
    /// define the ones you support) with one thread per output element and these parameters,
    /// in order:
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
        if !self.is_elementwise() {
            return Err(Error::msg(format!(
                "custom op `{}` is general: give its CUDA source with .cuda_launch(source, rule)",
                self.name()
            )));
        }
        if !is_identifier(kernel) {
            return Err(Error::msg(format!(
                "custom op `{}`: kernel name `{kernel}` is not an identifier",
                self.name()
            )));
        }
        let c = CudaCode::Elementwise { source: source.to_string(), kernel: kernel.to_string() };
        Ok(self.edit(|i| i.cuda = Some(c)))
    }

    /// CUDA C++ `source` for a general op, with any number of `extern "C" __global__` entries,
    /// and the `rule` that says which run, in order, with what grid, block and dynamic shared
    /// memory. Each [`Launch`] of `kernel` runs entry `{kernel}_{d}` for the op's dtype `d`
    /// with these parameters:
    ///
    /// ```text
    /// (const T* in0, TfLayout in0_layout, …, T* out0, TfLayout out0_layout, …, double scalar0, …)
    /// ```
    ///
    /// `T` is the op's element type (`float`, `double`, `tf_f16`, `tf_bf16`: 16-bit tensors
    /// arrive as themselves, for kernels that compute in them natively), `const tf_i64*` for an
    /// `i64` input. Each pointer points at the tensor's first element and its `TfLayout` (from
    /// `abi.h`) gives rank, dims and strides in elements (offset 0; `contiguous` set when the
    /// strides are row-major; `tf_offset(layout, i)` finds row-major element `i`). Outputs are
    /// contiguous and uninitialized: the kernels must write every element. Dynamic shared
    /// memory is declared with `TF_DYNAMIC_SHARED(T, name);` (one spelling for NVRTC and the
    /// emulator). A rule's `Err`, or a launch outside the limits every device has, is an `Err`
    /// before anything runs.
    ///
    /// # Safety
    /// The entries' parameter lists must be exactly the above, and they must stay within the
    /// tensors' layouts: the driver cannot check either, and a mismatch corrupts device memory.
    pub unsafe fn cuda_launch<F>(self, source: &str, rule: F) -> Result<CustomOp>
    where
        F: Fn(&LaunchSpec<'_>) -> Result<Vec<Launch>> + Send + Sync + 'static,
    {
        if self.is_elementwise() {
            return Err(Error::msg(format!(
                "custom op `{}` is elementwise: give its CUDA source with .cuda(source, kernel)",
                self.name()
            )));
        }
        let c = CudaCode::General { source: source.to_string(), rule: Arc::new(rule) };
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

    /// Runs a one-output op, recording it for autograd when an input tracks a gradient.
    pub fn apply(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        crate::autograd::apply(One(self.clone()), inputs)
    }

    /// Runs the op and returns all its outputs, recording it for autograd when an input
    /// tracks a gradient.
    pub fn apply_multi(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        crate::autograd::apply_multi(self.clone(), inputs)
    }

    /// Compiles the CUDA source with NVRTC for `arch` (e.g. `"sm_80"`) through the engine's
    /// compile path and disk cache, and returns the PTX size in bytes. Needs only libnvrtc,
    /// no GPU, so CI can check a custom kernel compiles; a compile error is an `Err` with
    /// NVRTC's log.
    pub fn compile_cuda(&self, arch: &str) -> Result<usize> {
        let c = self
            .inner
            .cuda
            .as_ref()
            .ok_or_else(|| Error::msg(format!("custom op `{}` has no CUDA source", self.name())))?;
        #[cfg(feature = "cuda")]
        {
            crate::backend::cuda::compile::user_ptx(&self.inner.name, c.source(), arch).map(|p| p.len())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (c.source(), arch);
            Err(Error::CudaUnavailable { reason: "tensorforge was built without the `cuda` feature".into() })
        }
    }

    /// Checks the inputs: one float dtype (plus `i64` inputs for a general op), one device.
    fn check(&self, x: &[&Tensor]) -> Result<(DType, Device)> {
        let op = "custom op";
        let Some(first) = x.first() else {
            return Err(Error::msg(format!("custom op `{}` needs at least one input", self.name())));
        };
        let device = first.device();
        let general = !self.is_elementwise();
        let Some(dtype) = x.iter().map(|t| t.dtype()).find(|d| d.is_float()) else {
            return Err(Error::UnsupportedDType { op, dtype: first.dtype() });
        };
        for t in x {
            let d = t.dtype();
            if d != dtype && !(general && d == DType::I64) {
                return Err(if d.is_float() {
                    Error::DTypeMismatch { op, lhs: dtype, rhs: d }
                } else {
                    Error::UnsupportedDType { op, dtype: d }
                });
            }
            if t.device() != device {
                return Err(Error::DeviceMismatch { op, lhs: device, rhs: t.device() });
            }
        }
        Ok((dtype, device))
    }

    /// An elementwise op's forward: inputs broadcast to one shape and made contiguous (only
    /// those that are not already: the common case allocates nothing but the output).
    fn forward_elementwise(&self, k: &dyn DynCpuKernel, x: &[&Tensor]) -> Result<Tensor> {
        let (dtype, device) = self.check(x)?;
        let mut shape = x[0].shape().clone();
        for t in &x[1..] {
            if t.shape() != &shape {
                shape = shape.broadcast(t.shape(), "custom op")?;
            }
        }
        if !x.iter().all(|t| t.shape() == &shape && t.is_contiguous()) {
            let owned = x.iter().map(|t| t.broadcast_as(shape.clone())?.contiguous()).collect::<Result<Vec<_>>>()?;
            return self.forward_elementwise(k, &owned.iter().collect::<Vec<_>>());
        }
        match device {
            Device::Cpu => cpu::elementwise(k, x, shape, dtype, &self.inner.scalars),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => match &self.inner.cuda {
                Some(CudaCode::Elementwise { source, kernel }) => {
                    cuda::elementwise(&self.inner.name, source, kernel, ordinal, x, shape, dtype, &self.inner.scalars)
                }
                _ => Err(self.no_cuda(ordinal)),
            },
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(no_cuda_feature()),
        }
    }

    /// A general op's forward: the shape rule, then the device's half.
    fn forward_general(&self, k: &dyn DynKernel, x: &[&Tensor]) -> Result<Vec<Tensor>> {
        let (dtype, device) = self.check(x)?;
        let specs: Vec<Spec<'_>> = x.iter().map(|t| Spec { dims: t.dims(), dtype: t.dtype() }).collect();
        let shapes = k.outputs(&specs, &self.inner.scalars)?;
        if shapes.is_empty() {
            return Err(Error::msg(format!("custom op `{}`: its shape rule declared no output", self.name())));
        }
        for s in &shapes {
            s.checked_size("custom op", dtype)?;
        }
        let inputs = if k.contiguous_inputs() {
            x.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?
        } else {
            x.iter().map(|t| (*t).clone()).collect()
        };
        let p = Prepared { dtype, inputs, shapes };
        match device {
            Device::Cpu => cpu::general(k, &p, &self.inner.scalars),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => match &self.inner.cuda {
                Some(CudaCode::General { source, rule }) => {
                    cuda::general(&self.inner.name, source, rule.as_ref(), ordinal, &p, &self.inner.scalars)
                }
                _ => Err(self.no_cuda(ordinal)),
            },
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(no_cuda_feature()),
        }
    }

    #[cfg(feature = "cuda")]
    fn no_cuda(&self, ordinal: usize) -> Error {
        Error::msg(format!(
            "custom op `{}` has no CUDA source, but its inputs are on cuda:{ordinal} \
             (give it one, or move the inputs to the CPU)",
            self.name()
        ))
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda_feature() -> Error {
    Error::CudaUnavailable { reason: "tensorforge was built without the `cuda` feature".into() }
}

/// A one-output op on the tape directly (no output vector, no hub).
struct One(CustomOp);

impl crate::autograd::Operation for One {
    fn name(&self) -> &str {
        &self.0.inner.name
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        match &self.0.inner.form {
            Form::Elementwise(k) => self.0.forward_elementwise(k.as_ref(), x),
            Form::General(_) => {
                let mut ys = MultiOperation::forward(&self.0, x)?;
                match ys.len() {
                    1 => Ok(ys.remove(0)),
                    n => Err(Error::msg(format!(
                        "custom op `{}` has {n} outputs: run it with apply_multi",
                        self.0.name()
                    ))),
                }
            }
        }
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        MultiOperation::backward(&self.0, x, std::slice::from_ref(y), &[Some(g.clone())], grads)
    }
}

impl MultiOperation for CustomOp {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Vec<Tensor>> {
        match &self.inner.form {
            Form::Elementwise(k) => Ok(vec![self.forward_elementwise(k.as_ref(), x)?]),
            Form::General(k) => self.forward_general(k.as_ref(), x),
        }
    }
    fn backward(&self, x: &[Tensor], ys: &[Tensor], gs: &[Option<Tensor>], grads: &mut Gradients) -> Result<()> {
        let name = &self.inner.name;
        let Some(bw) = &self.inner.backward else {
            return Err(Error::Autograd(format!("custom op `{name}` has no backward (add one with .backward(...))")));
        };
        let gs = ys
            .iter()
            .zip(gs)
            .map(|(y, g)| match g {
                Some(g) => Ok(g.clone()),
                None => y.zeros_like(),
            })
            .collect::<Result<Vec<_>>>()?;
        let dx = bw(x, ys, &gs)?;
        if dx.len() != x.len() {
            return Err(Error::Autograd(format!(
                "custom op `{name}`: backward returned {} gradients for {} inputs",
                dx.len(),
                x.len()
            )));
        }
        for (i, (xi, gi)) in x.iter().zip(dx).enumerate() {
            let Some(gi) = gi else { continue };
            if !xi.tracks_grad() {
                continue;
            }
            let gi = if self.is_elementwise() { gi.sum_to(xi.shape())? } else { gi };
            if gi.shape() != xi.shape() {
                return Err(Error::Autograd(format!(
                    "custom op `{name}`: backward gave input {i} (shape {:?}) a gradient of shape {:?}",
                    xi.dims(),
                    gi.dims()
                )));
            }
            grads.accumulate(xi, gi)?;
        }
        Ok(())
    }
}
