//! Optimizers and learning-rate schedules.
//!
//! Every update is one call per parameter to the backend's fused `optim_step` primitive
//! (one pass over parameter, gradient and state, on the parameter's device), run under
//! [`no_grad`]. State buffers are tensors created lazily on first use.
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

/// Updates parameters from their accumulated gradients. `Send`, so that a training loop can
/// run its steps on a worker thread ([`crate::train::Trainer`] does on the CPU).
pub trait Optimizer: Send {
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

    /// A copy of the optimizer's state (step counts, moment buffers, learning rate), for
    /// checkpoints ([`crate::checkpoint`]). The default says the optimizer cannot export it.
    fn state(&self) -> Result<OptimizerState> {
        Err(Error::msg("this optimizer does not support exporting its state"))
    }
    /// Restores a state from [`Optimizer::state`] of the same kind of optimizer over
    /// parameters of the same shapes; everything is checked before anything changes.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let _ = state;
        Err(Error::msg("this optimizer does not support loading a state"))
    }
}

/// An optimizer's state, as [`Optimizer::state`] exports it: what a resumed run needs to
/// continue exactly where it stopped.
///
/// ```
/// use tensorforge::{Tensor, Device, optim::{Adam, AdamConfig, Optimizer}};
/// let w = Tensor::from_vec(vec![1.0f32, -2.0], 2, Device::Cpu)?.requires_grad();
/// let mut opt = Adam::new(vec![w.clone()], AdamConfig::default())?;
/// w.sqr()?.sum_all()?.backward()?;
/// opt.step()?;
/// let s = opt.state()?;
/// assert_eq!((s.kind.as_str(), s.steps[0], s.buffers[0].len()), ("Adam", 1, 2)); // m and v
/// let mut again = Adam::new(vec![w.clone()], AdamConfig::default())?;
/// again.load_state(&s)?;
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct OptimizerState {
    /// The optimizer's type name (`Sgd`, `Adam`, `AdamW`, `RmsProp`, `Adagrad`); loading
    /// into another kind is an error.
    pub kind: String,
    /// The learning rate at export (a schedule may have changed it).
    pub lr: f64,
    /// Updates applied so far, per parameter (Adam's bias correction depends on it).
    pub steps: Vec<u64>,
    /// The state buffers of each parameter (e.g. Adam's first and second moments), each of
    /// the parameter's shape; empty before a parameter's first update.
    pub buffers: Vec<Vec<Tensor>>,
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
        if params.is_empty() {
            // As PyTorch: a model whose parameters were never registered would train silently.
            return Err(Error::msg(
                "optimizer got an empty parameter list (were the model's parameters registered in its ParameterStore?)",
            ));
        }
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

    /// Copies of the steps and buffers (the live ones are updated in place by later steps).
    pub(crate) fn export(&self, kind: &str, lr: f64) -> Result<OptimizerState> {
        let buffers = self
            .state
            .iter()
            .map(|bs| bs.iter().map(|b| Ok(b.copy()?.detach())).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        Ok(OptimizerState { kind: kind.to_string(), lr, steps: self.steps.clone(), buffers })
    }

    /// Validates `s` against the parameters, then replaces steps and buffers.
    pub(crate) fn import(&mut self, kind: &str, s: &OptimizerState) -> Result<()> {
        if s.kind != kind {
            return Err(Error::msg(format!("optimizer state is for {}, not {kind}", s.kind)));
        }
        let n = self.params.len();
        if s.steps.len() != n || s.buffers.len() != n {
            return Err(Error::msg(format!(
                "optimizer state covers {} parameters ({} buffer lists), the optimizer has {n}",
                s.steps.len(),
                s.buffers.len()
            )));
        }
        if !(s.lr >= 0.0 && s.lr.is_finite()) {
            return Err(Error::msg(format!("optimizer state has an invalid learning rate {}", s.lr)));
        }
        let mut state = Vec::with_capacity(n);
        for (i, (p, bs)) in self.params.iter().zip(&s.buffers).enumerate() {
            let mut fresh = Vec::with_capacity(bs.len());
            for b in bs {
                if b.shape() != p.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "Optimizer::load_state (state buffer)",
                        lhs: p.shape().clone(),
                        rhs: b.shape().clone(),
                    });
                }
                if !b.dtype().is_float() {
                    return Err(Error::msg(format!("optimizer state of parameter {i} is {:?}", b.dtype())));
                }
                // A fresh buffer of the parameter's dtype and device: the fused step updates it
                // in place.
                fresh.push(no_grad(|| b.to_dtype(p.dtype())?.to_device(p.device())?.copy())?.detach());
            }
            state.push(fresh);
        }
        self.state = state;
        self.steps = s.steps.clone();
        Ok(())
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
                // A count read from a corrupt checkpoint can sit at the top of u64.
                self.steps[i] = self.steps[i].checked_add(1).ok_or_else(|| {
                    Error::msg(format!("optimizer: parameter {i}'s step count overflows (a corrupt checkpoint?)"))
                })?;
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
    // A gradient sharing the parameter's buffer (a backward that returned its input as the
    // gradient) would need the buffer's read and write locks at once: update from a copy.
    let g = if owns_whole_buffer(&g) && !g.same_storage(p) { g } else { g.copy()? };
    if state.len() != rule.state_count() {
        *state = (0..rule.state_count()).map(|_| p.zeros_like()).collect::<Result<_>>()?;
    }
    let gs = g.storage();
    let mut ps = p.storage_mut();
    let mut guards: Vec<_> = state.iter().map(|s| s.storage_mut()).collect();
    let mut refs: Vec<&mut Storage> = guards.iter_mut().map(|s| &mut **s).collect();
    ps.optim_step(&gs, &mut refs, rule)
}
