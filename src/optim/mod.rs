//! Optimizers and learning-rate schedules.
//!
//! Every update is one call per parameter to the backend's fused `optim_step` primitive
//! (one pass over parameter, gradient and state, on the parameter's device), run under
//! [`no_grad`](crate::no_grad). State buffers are tensors created lazily on first use.
//!
//! ```
//! use tensorforge::{Tensor, Device, optim::{Optimizer, Sgd, SgdConfig}};
//! let w = Tensor::from_vec(vec![1.0f32, -2.0], 2, Device::Cpu)?.requires_grad();
//! let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 0.1, ..Default::default() })?;
//! w.sqr()?.sum_all()?.backward()?;   // grad = 2w
//! opt.step()?;
//! assert_eq!(w.to_vec1::<f32>()?, vec![0.8, -1.6]);
//! # Ok::<(), tensorforge::Error>(())
//! ```

mod rules;
mod schedule;

pub use rules::{Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, RmsProp, RmsPropConfig, Sgd, SgdConfig};
pub use schedule::{ConstantLr, CosineLr, LrSchedule, StepLr, WarmUp};

use crate::backend::OptimRule;
use crate::storage::Storage;
use crate::{Error, Result, Tensor, no_grad};

/// Updates parameters from their accumulated gradients.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient (others are skipped).
    fn step(&mut self) -> Result<()>;
    /// Clears the gradients of all parameters.
    fn zero_grad(&self);
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (what a schedule does between steps).
    fn set_lr(&mut self, lr: f64);
    /// The parameters being optimized.
    fn parameters(&self) -> &[Tensor];
}

/// Parameters with their lazily created state buffers and per-parameter step counts: the
/// part every optimizer shares.
pub(crate) struct ParamState {
    pub(crate) params: Vec<Tensor>,
    state: Vec<Vec<Tensor>>,
    steps: Vec<u64>,
}

impl ParamState {
    pub(crate) fn new(params: Vec<Tensor>) -> Result<Self> {
        for (i, p) in params.iter().enumerate() {
            if !p.is_variable() {
                return Err(Error::msg(format!("optimizer: parameter {i} is not a variable (use requires_grad)")));
            }
            if !p.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: "optimizer", dtype: p.dtype() });
            }
        }
        let n = params.len();
        Ok(ParamState { params, state: vec![Vec::new(); n], steps: vec![0; n] })
    }

    pub(crate) fn zero_grad(&self) {
        for p in &self.params {
            p.zero_grad();
        }
    }

    /// Runs `rule(step)` (step counts from 1, per parameter) over every parameter with a
    /// gradient.
    pub(crate) fn update(&mut self, rule: impl Fn(u64) -> OptimRule) -> Result<()> {
        no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let Some(g) = p.grad() else { continue };
                self.steps[i] += 1;
                let rule = rule(self.steps[i]);
                fused_step(p, &g, &mut self.state[i], &rule)?;
            }
            Ok(())
        })
    }
}

/// True when `t` views its whole storage buffer densely from offset 0.
fn owns_whole_buffer(t: &Tensor) -> bool {
    t.layout().contiguous_range() == Some((0, t.storage().len()))
}

fn fused_step(p: &Tensor, g: &Tensor, state: &mut Vec<Tensor>, rule: &OptimRule) -> Result<()> {
    if !owns_whole_buffer(p) {
        // The update runs over the raw buffer, so a view of part of one cannot be updated.
        return Err(Error::msg(format!(
            "optimizer: parameter of shape {:?} is a view into a larger or strided buffer; \
             create parameters as fresh tensors",
            p.shape()
        )));
    }
    if g.shape() != p.shape() {
        return Err(Error::ShapeMismatch {
            op: "optimizer (gradient)",
            lhs: p.shape().clone(),
            rhs: g.shape().clone(),
        });
    }
    let g = if g.dtype() != p.dtype() { g.to_dtype(p.dtype())? } else { g.clone() };
    let g = if owns_whole_buffer(&g) { g } else { g.copy()? };
    if state.len() != rule.state_count() {
        *state = (0..rule.state_count()).map(|_| p.zeros_like()).collect::<Result<_>>()?;
    }
    let gs = g.storage();
    let mut ps = p.storage_mut();
    let mut guards: Vec<_> = state.iter().map(|s| s.storage_mut()).collect();
    let mut refs: Vec<&mut Storage> = guards.iter_mut().map(|s| &mut **s).collect();
    ps.optim_step(&gs, &mut refs, rule)
}
