//! Losses: a prediction and a target in, a scalar out (pytensor's `Loss`), differentiated by
//! autograd like any other tensor expression.
//!
//! ```
//! use tensorforge::{Tensor, Device, nn::{CrossEntropyLoss, Loss}};
//! let logits = Tensor::from_vec(vec![2.0f64, 0.0, 0.0, 0.0, 3.0, 0.0], (2, 3), Device::Cpu)?.requires_grad();
//! let target = Tensor::from_vec(vec![0i64, 1], 2, Device::Cpu)?;
//! let loss = CrossEntropyLoss::new().loss(&logits, &target)?;
//! loss.backward()?;
//! assert!(loss.item()? < 0.25);
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor};

/// How per-element losses become the result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The mean (the default, as in PyTorch).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: the per-element (per-sample) losses.
    None,
}

impl Reduction {
    /// Applies the reduction to per-element losses.
    pub fn apply(self, per: &Tensor) -> Result<Tensor> {
        match self {
            Reduction::Mean => per.mean_all(),
            Reduction::Sum => per.sum_all(),
            Reduction::None => Ok(per.clone()),
        }
    }
}

/// A loss: `loss(prediction, target)` gives a scalar (unless [`Reduction::None`]) whose
/// `backward()` fills the gradients of everything the prediction was computed from.
pub trait Loss {
    /// The loss of `prediction` against `target`.
    fn loss(&self, prediction: &Tensor, target: &Tensor) -> Result<Tensor>;
}

fn same_shape(op: &'static str, p: &Tensor, t: &Tensor) -> Result<()> {
    if p.shape() != t.shape() {
        // Broadcasting here would silently compute the wrong loss (e.g. [N,1] vs [N]).
        return Err(Error::ShapeMismatch { op, lhs: p.shape().clone(), rhs: t.shape().clone() });
    }
    Ok(())
}

/// Mean (or summed) squared error `(y − t)²`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MseLoss {
    /// How to reduce.
    pub reduction: Reduction,
}

impl MseLoss {
    /// The mean form.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Loss for MseLoss {
    fn loss(&self, p: &Tensor, t: &Tensor) -> Result<Tensor> {
        same_shape("mse_loss", p, t)?;
        self.reduction.apply(&p.sub(t)?.sqr()?)
    }
}

/// PyTorch's `smooth_l1_loss`: per element `0.5·d²/β` where `d = |y − t| < β`, else
/// `d − 0.5·β`; `β = 0` is the L1 loss.
///
/// ```
/// use tensorforge::{Tensor, Device, nn::{Loss, SmoothL1Loss}};
/// let y = Tensor::from_vec(vec![0.0f64, 3.0], 2, Device::Cpu)?;
/// let t = Tensor::from_vec(vec![0.5f64, 0.0], 2, Device::Cpu)?;
/// // (0.5·0.25/1 + (3 − 0.5)) / 2
/// assert_eq!(SmoothL1Loss::new(1.0).loss(&y, &t)?.item()?, (0.125 + 2.5) / 2.0);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothL1Loss {
    /// Where the quadratic part ends (≥ 0).
    pub beta: f64,
    /// How to reduce.
    pub reduction: Reduction,
}

impl SmoothL1Loss {
    /// The mean form with this `beta` (PyTorch's default is 1).
    pub fn new(beta: f64) -> Self {
        SmoothL1Loss { beta, reduction: Reduction::Mean }
    }
}

impl Loss for SmoothL1Loss {
    fn loss(&self, p: &Tensor, t: &Tensor) -> Result<Tensor> {
        same_shape("smooth_l1_loss", p, t)?;
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::msg(format!("smooth_l1_loss: beta must be finite and >= 0, got {}", self.beta)));
        }
        let d = p.sub(t)?.abs()?;
        if self.beta == 0.0 {
            return self.reduction.apply(&d);
        }
        let quad = d.sqr()?.mul_scalar(0.5 / self.beta)?;
        let lin = d.add_scalar(-0.5 * self.beta)?;
        self.reduction.apply(&d.lt_scalar(self.beta)?.where_cond(&quad, &lin)?)
    }
}

/// PyTorch's `huber_loss`: per element `0.5·d²` where `d = |y − t| < δ`, else
/// `δ·(d − 0.5·δ)` (smooth L1 scaled by δ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HuberLoss {
    /// Where the quadratic part ends (> 0).
    pub delta: f64,
    /// How to reduce.
    pub reduction: Reduction,
}

impl HuberLoss {
    /// The mean form with this `delta` (PyTorch's default is 1).
    pub fn new(delta: f64) -> Self {
        HuberLoss { delta, reduction: Reduction::Mean }
    }
}

impl Loss for HuberLoss {
    fn loss(&self, p: &Tensor, t: &Tensor) -> Result<Tensor> {
        same_shape("huber_loss", p, t)?;
        if !(self.delta > 0.0 && self.delta.is_finite()) {
            return Err(Error::msg(format!("huber_loss: delta must be finite and > 0, got {}", self.delta)));
        }
        let d = p.sub(t)?.abs()?;
        let quad = d.sqr()?.mul_scalar(0.5)?;
        let lin = d.add_scalar(-0.5 * self.delta)?.mul_scalar(self.delta)?;
        self.reduction.apply(&d.lt_scalar(self.delta)?.where_cond(&quad, &lin)?)
    }
}

/// pytensor's square error `½·Σ(y − t)²`: its gradient is exactly `y − t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SquareError;

impl Loss for SquareError {
    fn loss(&self, p: &Tensor, t: &Tensor) -> Result<Tensor> {
        same_shape("square_error", p, t)?;
        p.sub(t)?.sqr()?.sum_all()?.mul_scalar(0.5)
    }
}

/// Checks class-index targets against `[.., C]` scores and flattens both to `[N, C]`, `[N]`.
fn flatten_class_input(op: &'static str, scores: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
    if target.dtype() != DType::I64 {
        return Err(Error::UnsupportedDType { op, dtype: target.dtype() });
    }
    let r = scores.rank();
    if r == 0 || target.dims() != &scores.dims()[..r - 1] {
        return Err(Error::BadShape {
            op,
            msg: format!(
                "scores {:?} need class-index targets of shape {:?}, got {:?}",
                scores.shape(),
                &scores.dims()[..r.saturating_sub(1)],
                target.shape()
            ),
        });
    }
    let c = scores.dims()[r - 1];
    Ok((scores.reshape((target.elem_count(), c))?, target.flatten_all()?))
}

/// Per-sample `−log p[target]` (optionally label-smoothed) from `[N, C]` log-probabilities.
fn nll_per_sample(logp: &Tensor, target: &Tensor, smoothing: f64) -> Result<Tensor> {
    let picked = logp.gather(1, &target.unsqueeze(1)?)?.squeeze(1)?;
    if smoothing == 0.0 {
        return picked.neg();
    }
    // (1−ε)·(−log p[t]) + ε·mean_c(−log p[c]): cross-entropy against the smoothed target.
    let uniform = logp.mean(&[1])?;
    picked.mul_scalar(-(1.0 - smoothing))?.sub(&uniform.mul_scalar(smoothing)?)
}

/// Cross-entropy from unnormalized logits `[.., C]` and i64 class indices `[..]`:
/// `log_softmax` then NLL, with optional label smoothing (PyTorch's definition).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    /// How to reduce over samples.
    pub reduction: Reduction,
    /// ε in `[0, 1]`: the target puts `1−ε` on the class and spreads `ε` uniformly.
    pub label_smoothing: f64,
}

impl CrossEntropyLoss {
    /// Mean over samples, no smoothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// With label smoothing `eps`.
    pub fn with_label_smoothing(eps: f64) -> Self {
        CrossEntropyLoss { label_smoothing: eps, ..Self::default() }
    }
}

impl Loss for CrossEntropyLoss {
    fn loss(&self, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::msg(format!(
                "cross_entropy: label_smoothing must be in [0, 1], got {}",
                self.label_smoothing
            )));
        }
        let (x, t) = flatten_class_input("cross_entropy", logits, target)?;
        let per = nll_per_sample(&x.log_softmax(1)?, &t, self.label_smoothing)?;
        self.reduction.apply(&per.reshape(target.shape())?)
    }
}

/// Negative log-likelihood from log-probabilities `[.., C]` and i64 class indices `[..]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NllLoss {
    /// How to reduce over samples.
    pub reduction: Reduction,
}

impl NllLoss {
    /// Mean over samples.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Loss for NllLoss {
    fn loss(&self, logp: &Tensor, target: &Tensor) -> Result<Tensor> {
        let (x, t) = flatten_class_input("nll_loss", logp, target)?;
        self.reduction.apply(&nll_per_sample(&x, &t, 0.0)?.reshape(target.shape())?)
    }
}

/// Binary cross-entropy from logits against float targets in `[0, 1]` (same shape):
/// `softplus(x) − x·t`, which equals `−t·log σ(x) − (1−t)·log(1−σ(x))` but never takes the
/// log of a saturated sigmoid (the softplus kernel is the stable `max(x,0) + log1p(e^−|x|)`).
///
/// With PyTorch's `pos_weight` `p` (broadcast against the target, typically one weight per
/// class): `−p·t·log σ(x) − (1−t)·log(1−σ(x))`, computed as `(1−t)·x + (1 + (p−1)·t)·softplus(−x)`.
#[derive(Clone, Debug, Default)]
pub struct BceWithLogitsLoss {
    /// How to reduce.
    pub reduction: Reduction,
    /// The weight of the positive term, broadcast against the target (none: 1).
    pub pos_weight: Option<Tensor>,
}

impl BceWithLogitsLoss {
    /// The mean form.
    pub fn new() -> Self {
        Self::default()
    }
    /// With PyTorch's `pos_weight`.
    pub fn with_pos_weight(pos_weight: Tensor) -> Self {
        BceWithLogitsLoss { pos_weight: Some(pos_weight), ..Self::default() }
    }
}

impl Loss for BceWithLogitsLoss {
    fn loss(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        same_shape("bce_with_logits", x, t)?;
        let per = match &self.pos_weight {
            None => x.softplus()?.sub(&x.mul(t)?)?,
            Some(p) => {
                let weight = p.add_scalar(-1.0)?.mul(t)?.add_scalar(1.0)?;
                t.neg()?.add_scalar(1.0)?.mul(x)?.add(&weight.mul(&x.neg()?.softplus()?)?)?
            }
        };
        self.reduction.apply(&per)
    }
}
