//! The optimizers: thin configs over [`OptimRule`], the fused kernel's update rules.

use super::{Optimizer, OptimizerState, ParamState};
use crate::backend::OptimRule;
use crate::{Error, Result, Tensor};

fn check(name: &str, what: &str, v: f64, ok: bool) -> Result<()> {
    if ok && v.is_finite() { Ok(()) } else { Err(Error::msg(format!("{name}: invalid {what} {v}"))) }
}

macro_rules! optimizer_impl {
    ($ty:ident, |$s:ident, $step:ident| $rule:expr) => {
        impl Optimizer for $ty {
            fn step(&mut self) -> Result<()> {
                let $s = self.cfg;
                self.ps.update(|$step| $rule)
            }
            fn zero_grad(&self) {
                self.ps.zero_grad()
            }
            fn lr(&self) -> f64 {
                self.cfg.lr
            }
            fn set_lr(&mut self, lr: f64) {
                self.cfg.lr = lr;
            }
            fn parameters(&self) -> &[Tensor] {
                &self.ps.params
            }
            fn state(&self) -> Result<OptimizerState> {
                self.ps.export(stringify!($ty), self.cfg.lr)
            }
            fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
                self.ps.import(stringify!($ty), state)?;
                // The saved rate, so a resumed run continues exactly (a schedule overrides it
                // at its next step anyway).
                self.cfg.lr = state.lr;
                Ok(())
            }
        }
    };
}

/// Settings of [`Sgd`] (PyTorch's meaning and defaults, `lr` 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 = plain SGD).
    pub momentum: f64,
    /// Dampening of the momentum's gradient term.
    pub dampening: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 0.01, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// Stochastic gradient descent with optional (Nesterov) momentum and weight decay:
/// `v ← μv + (1−τ)(g + λp)`, `p ← p − lr·v` (or `− lr·(g + μv)` with Nesterov).
///
/// As in PyTorch, a parameter's first step seeds the velocity with the raw gradient (no
/// dampening); dampening applies from the second step on.
pub struct Sgd {
    cfg: SgdConfig,
    ps: ParamState,
}

impl Sgd {
    /// SGD over `params` (variables).
    pub fn new(params: Vec<Tensor>, cfg: SgdConfig) -> Result<Sgd> {
        check("Sgd", "lr", cfg.lr, cfg.lr >= 0.0)?;
        check("Sgd", "momentum", cfg.momentum, cfg.momentum >= 0.0)?;
        check("Sgd", "weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0)?;
        check("Sgd", "dampening", cfg.dampening, (0.0..=1.0).contains(&cfg.dampening))?;
        if cfg.nesterov && (cfg.momentum == 0.0 || cfg.dampening != 0.0) {
            return Err(Error::msg("Sgd: Nesterov momentum needs momentum > 0 and dampening == 0"));
        }
        Ok(Sgd { cfg, ps: ParamState::new(params)? })
    }
}

optimizer_impl!(Sgd, |c, step| OptimRule::Sgd {
    lr: c.lr,
    momentum: c.momentum,
    // PyTorch seeds the velocity with the first raw gradient: from v = 0, no dampening on
    // a parameter's first step gives exactly that.
    dampening: if step == 1 { 0.0 } else { c.dampening },
    nesterov: c.nesterov,
    weight_decay: c.weight_decay
});

/// Settings of [`Adam`] and [`AdamW`] (PyTorch's defaults; AdamW's weight decay 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient (Adam) or a decoupled decay (AdamW).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

fn check_adam(name: &str, c: &AdamConfig) -> Result<()> {
    check(name, "lr", c.lr, c.lr >= 0.0)?;
    check(name, "beta1", c.beta1, (0.0..1.0).contains(&c.beta1))?;
    check(name, "beta2", c.beta2, (0.0..1.0).contains(&c.beta2))?;
    check(name, "eps", c.eps, c.eps >= 0.0)?;
    check(name, "weight_decay", c.weight_decay, c.weight_decay >= 0.0)
}

/// Adam with bias correction; weight decay, if any, is added to the gradient (L2).
pub struct Adam {
    cfg: AdamConfig,
    ps: ParamState,
}

impl Adam {
    /// Adam over `params`.
    pub fn new(params: Vec<Tensor>, cfg: AdamConfig) -> Result<Adam> {
        check_adam("Adam", &cfg)?;
        Ok(Adam { cfg, ps: ParamState::new(params)? })
    }
}

optimizer_impl!(Adam, |c, step| OptimRule::Adam {
    lr: c.lr,
    beta1: c.beta1,
    beta2: c.beta2,
    eps: c.eps,
    weight_decay: c.weight_decay,
    decoupled: false,
    step
});

/// AdamW: Adam with decoupled weight decay `p ← p·(1 − lr·λ)` before the Adam update.
pub struct AdamW {
    cfg: AdamConfig,
    ps: ParamState,
}

impl AdamW {
    /// AdamW over `params`; [`AdamW::default_config`] has PyTorch's weight decay 0.01.
    pub fn new(params: Vec<Tensor>, cfg: AdamConfig) -> Result<AdamW> {
        check_adam("AdamW", &cfg)?;
        Ok(AdamW { cfg, ps: ParamState::new(params)? })
    }
    /// PyTorch's AdamW defaults (Adam's, with `weight_decay = 0.01`).
    pub fn default_config() -> AdamConfig {
        AdamConfig { weight_decay: 0.01, ..AdamConfig::default() }
    }
}

optimizer_impl!(AdamW, |c, step| OptimRule::Adam {
    lr: c.lr,
    beta1: c.beta1,
    beta2: c.beta2,
    eps: c.eps,
    weight_decay: c.weight_decay,
    decoupled: true,
    step
});

/// Settings of [`RmsProp`] (PyTorch's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the squared-gradient average.
    pub alpha: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum on the scaled update.
    pub momentum: f64,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig { lr: 0.01, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.0 }
    }
}

/// RMSprop: `s ← αs + (1−α)g²`, `p ← p − lr·g/(√s + ε)` (with optional momentum).
pub struct RmsProp {
    cfg: RmsPropConfig,
    ps: ParamState,
}

impl RmsProp {
    /// RMSprop over `params`.
    pub fn new(params: Vec<Tensor>, cfg: RmsPropConfig) -> Result<RmsProp> {
        check("RmsProp", "lr", cfg.lr, cfg.lr >= 0.0)?;
        check("RmsProp", "alpha", cfg.alpha, (0.0..=1.0).contains(&cfg.alpha))?;
        check("RmsProp", "eps", cfg.eps, cfg.eps >= 0.0)?;
        check("RmsProp", "weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0)?;
        check("RmsProp", "momentum", cfg.momentum, cfg.momentum >= 0.0)?;
        Ok(RmsProp { cfg, ps: ParamState::new(params)? })
    }
}

optimizer_impl!(RmsProp, |c, _step| OptimRule::RmsProp {
    lr: c.lr,
    alpha: c.alpha,
    eps: c.eps,
    weight_decay: c.weight_decay,
    momentum: c.momentum
});

/// Settings of [`Adagrad`] (PyTorch's defaults; no lr decay, zero initial accumulator).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate.
    pub lr: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig { lr: 0.01, eps: 1e-10, weight_decay: 0.0 }
    }
}

/// Adagrad: `s ← s + g²`, `p ← p − lr·g/(√s + ε)`.
pub struct Adagrad {
    cfg: AdagradConfig,
    ps: ParamState,
}

impl Adagrad {
    /// Adagrad over `params`.
    pub fn new(params: Vec<Tensor>, cfg: AdagradConfig) -> Result<Adagrad> {
        check("Adagrad", "lr", cfg.lr, cfg.lr >= 0.0)?;
        check("Adagrad", "eps", cfg.eps, cfg.eps >= 0.0)?;
        check("Adagrad", "weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0)?;
        Ok(Adagrad { cfg, ps: ParamState::new(params)? })
    }
}

optimizer_impl!(Adagrad, |c, _step| OptimRule::Adagrad { lr: c.lr, eps: c.eps, weight_decay: c.weight_decay });
