//! Mixed precision, in the spirit of PyTorch's `autocast` and `GradScaler`: inside
//! [`autocast`], matrix products and convolutions of f32 tensors run in bf16 or f16 (the
//! CPU's `vdpbf16ps`, the GPU's tensor cores) while everything else — reductions, softmax,
//! normalizations, losses, the optimizer's update of the f32 master weights — stays in f32.
//!
//! The low-precision op's result comes back as f32, so a model needs no dtype changes: its
//! parameters stay f32 (the masters). A matrix product is one op, `ops::LoweredMatMul`, with
//! f32 in and out (its backward products are lowered too): on a CPU with AVX512_BF16 its
//! kernel rounds the f32 operands to bf16 while packing them and writes the f32 sums, so
//! no casts run at all; elsewhere it casts, multiplies in the low dtype and casts back. A
//! convolution is likewise one op, `LoweredConv2d` in `ops/conv.rs` (its bias added in f32):
//! on AVX512_BF16 its kernels write im2col's columns in bf16 straight from the f32 images
//! and multiply them with f32 sums, forward and for the weight gradient.
//! (PyTorch's autocast returns the low-precision result and lets the next op decide; here
//! every op outside the list runs in f32, as it would in PyTorch's f32 list.)
//!
//! f16's range is small (max 65504, smallest normal 6·10⁻⁵), so small gradients underflow:
//! a [`GradScaler`] multiplies the loss before backward, divides the gradients after, skips
//! the steps whose gradients overflowed and adapts the scale (PyTorch's dynamic loss scaling).
//! bf16 has f32's range and needs no scaler.
//!
//! ```
//! use tensorforge::{amp, DType, Device, Tensor};
//! let x = Tensor::ones((2, 3), DType::F32, Device::Cpu)?;
//! let w = Tensor::ones((3, 4), DType::F32, Device::Cpu)?.requires_grad();
//! let y = amp::autocast(DType::BF16, || x.matmul(&w))?; // computed in bf16
//! assert_eq!(y.dtype(), DType::F32);
//! y.sum_all()?.backward()?;
//! assert_eq!(w.grad().unwrap().dtype(), DType::F32); // the f32 master's gradient
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::optim::Optimizer;
use crate::{DType, Error, Result, Tensor};
use std::cell::Cell;

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with matrix products and convolutions of f32 tensors computed in `dtype`
/// (`DType::BF16` or `DType::F16`; any other dtype runs `f` unchanged). Nests; the setting
/// is per thread, and backward passes ignore it (their ops run in the dtypes the forward
/// pass chose).
pub fn autocast<R>(dtype: DType, f: impl FnOnce() -> R) -> R {
    let low = matches!(dtype, DType::BF16 | DType::F16).then_some(dtype);
    with(low, f)
}

/// The dtype [`autocast`] computes in on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(|a| a.get())
}

/// Runs `f` with autocast set to `low` (None: off), restoring the previous setting after.
pub(crate) fn with<R>(low: Option<DType>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(low)));
    f()
}

/// The low-precision dtype for an op whose float inputs are `inputs`, when autocast applies:
/// on, and every input f32.
pub(crate) fn lowered(inputs: &[&Tensor]) -> Option<DType> {
    autocast_dtype().filter(|_| inputs.iter().all(|t| t.dtype() == DType::F32))
}

/// Dynamic loss scaling for f16 training (PyTorch's `GradScaler`, same defaults): the loss
/// is multiplied by the scale before backward; [`GradScaler::step`] divides the gradients by
/// it and runs the optimizer only when all of them are finite; [`GradScaler::update`] halves
/// the scale after an overflow and doubles it after 2000 clean steps.
///
/// ```
/// use tensorforge::amp::GradScaler;
/// use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
/// use tensorforge::{DType, Device, Tensor};
/// let w = Tensor::ones(2, DType::F32, Device::Cpu)?.requires_grad();
/// let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 0.5, ..Default::default() })?;
/// let mut scaler = GradScaler::new();
/// scaler.scale(&w.sum_all()?)?.backward()?;
/// assert_eq!(w.grad().unwrap().to_vec1::<f32>()?, vec![65536.0; 2]); // scaled
/// assert!(scaler.step(&mut opt)?); // unscaled to 1, then stepped
/// scaler.update();
/// assert_eq!(w.to_vec1::<f32>()?, vec![0.5; 2]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: usize,
    clean_steps: usize,
    found_inf: bool,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new()
    }
}

impl GradScaler {
    /// PyTorch's defaults: scale 2¹⁶, ×2 after 2000 clean steps, ×½ after an overflow.
    pub fn new() -> GradScaler {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            clean_steps: 0,
            found_inf: false,
        }
    }
    /// The same scaler starting from `scale`.
    pub fn with_scale(mut self, scale: f64) -> GradScaler {
        self.scale = scale;
        self
    }
    /// The current scale.
    pub fn get_scale(&self) -> f64 {
        self.scale
    }
    /// `loss × scale`, to call `backward` on.
    pub fn scale(&self, loss: &Tensor) -> Result<Tensor> {
        loss.affine(self.scale, 0.0)
    }
    /// Divides every gradient of `opt`'s parameters by the scale; when all are finite, runs
    /// `opt.step()` and returns `true`, else leaves the parameters alone (the step is
    /// skipped, as in PyTorch) and returns `false`.
    pub fn step(&mut self, opt: &mut dyn Optimizer) -> Result<bool> {
        let inv = 1.0 / self.scale;
        let mut finite = true;
        for p in opt.parameters() {
            let Some(g) = p.grad() else { continue };
            let g = crate::no_grad(|| g.affine(inv, 0.0))?;
            // The sum of a tensor is finite exactly when every element is (an inf or NaN
            // anywhere makes it inf or NaN), and overflow of the sum itself needs values
            // near f32's max, far beyond any unscaled gradient.
            let s = crate::no_grad(|| g.to_dtype(DType::F64)?.sum_all())?.item()?;
            finite &= s.is_finite();
            p.set_grad(Some(g))?;
        }
        self.found_inf = !finite;
        if finite {
            opt.step()?;
        }
        Ok(finite)
    }
    /// Adapts the scale after a [`GradScaler::step`].
    pub fn update(&mut self) {
        if self.found_inf {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.clean_steps = 0;
            }
        }
    }
}

/// The dtype a `--precision` flag names: `f32`, `bf16` or `f16`.
pub fn parse_precision(s: &str) -> Result<DType> {
    match s {
        "f32" | "fp32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" | "fp16" => Ok(DType::F16),
        _ => Err(Error::Msg(format!("unknown precision `{s}` (expected f32, bf16 or f16)"))),
    }
}
