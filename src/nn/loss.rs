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

use crate::autograd::{Gradients, Operation};
use crate::{DType, Error, Result, Tensor};
use std::sync::Mutex;

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
        if !(self.delta > 0.0 && self.delta.is_finite()) {
            return Err(Error::msg(format!("huber_loss: delta must be finite and > 0, got {}", self.delta)));
        }
        // Huber with δ is δ · smooth L1 with β = δ (any reduction commutes with the scale).
        SmoothL1Loss { beta: self.delta, reduction: self.reduction }.loss(p, t)?.mul_scalar(self.delta)
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

/// PyTorch's layout `[N, C, d1, …]` with targets `[N, d1, …]` moved to classes-last
/// `[N, d1, …, C]`; other inputs unchanged (classes-last is tried first).
fn classes_last(scores: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (r, d) = (scores.rank(), scores.dims());
    if r >= 3
        && target.dims() != &d[..r - 1]
        && target.rank() == r - 1
        && target.dims()[0] == d[0]
        && target.dims()[1..] == d[2..]
    {
        let mut order: Vec<usize> = (0..r).filter(|&a| a != 1).collect();
        order.push(1);
        return scores.permute(&order);
    }
    Ok(scores.clone())
}

/// Per-sample losses and the mean's denominator of a weighted NLL with an ignored class
/// index, as PyTorch defines them: sample i counts `w[t_i]` (1 without weights) unless
/// `t_i` is the ignored index (then 0, and its loss is 0); label smoothing ε mixes in
/// `ε/C · Σ_c w_c·(−log p_c)`; the mean divides by the summed counts.
fn weighted_nll(
    logp: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: Option<i64>,
    smoothing: f64,
) -> Result<(Tensor, Tensor)> {
    let (n, c) = (logp.dims()[0], logp.dims()[1]);
    let (valid, safe) = match ignore_index {
        Some(ig) => {
            let valid = target.ne_scalar(ig as f64)?;
            (Some(valid.clone()), valid.where_cond(target, &target.zeros_like()?)?)
        }
        None => (None, target.clone()),
    };
    if let Some(w) = weight
        && (w.rank() != 1 || w.dims()[0] != c || w.dtype() != logp.dtype())
    {
        return Err(Error::BadShape {
            op: "cross_entropy",
            msg: format!("class weights must be [{c}] of {:?}, got {:?} of {:?}", logp.dtype(), w.shape(), w.dtype()),
        });
    }
    let mut count = match weight {
        Some(w) => w.index_select(0, &safe)?,
        None => Tensor::ones(n, logp.dtype(), logp.device())?,
    };
    if let Some(v) = &valid {
        count = count.mul(&v.to_dtype(logp.dtype())?)?;
    }
    let picked = logp.gather(1, &safe.unsqueeze(1)?)?.squeeze(1)?.neg()?;
    let mut per = picked.mul(&count)?;
    if smoothing != 0.0 {
        let all = match weight {
            Some(w) => logp.neg()?.mul(&w.unsqueeze(0)?)?.sum([1])?,
            None => logp.neg()?.sum([1])?,
        };
        let all = match &valid {
            Some(v) => all.mul(&v.to_dtype(logp.dtype())?)?,
            None => all,
        };
        per = per.mul_scalar(1.0 - smoothing)?.add(&all.mul_scalar(smoothing / c as f64)?)?;
    }
    Ok((per, count.sum_all()?))
}

/// Per-sample `−log p[target]` (optionally label-smoothed) from `[N, C]` log-probabilities.
fn nll_per_sample(logp: &Tensor, target: &Tensor, smoothing: f64) -> Result<Tensor> {
    let picked = logp.gather(1, &target.unsqueeze(1)?)?.squeeze(1)?;
    if smoothing == 0.0 {
        return picked.neg();
    }
    // (1−ε)·(−log p[t]) + ε·mean_c(−log p[c]): cross-entropy against the smoothed target.
    let uniform = logp.mean([1])?;
    picked.mul_scalar(-(1.0 - smoothing))?.sub(&uniform.mul_scalar(smoothing)?)
}

/// Cross-entropy per sample from logits `[N, C]` (no class weights, nothing ignored) as one
/// tape node. Its gradient is `(softmax − (1−ε)·onehot(t) − ε/C) · g` per row: three passes
/// (exp, scale, scatter), where the composed log-softmax, gather and smoothing backward made
/// seven and as many buffers.
struct CrossEntropyPerSample {
    target: Tensor,
    smoothing: f64,
    /// The forward's log-probabilities, for the backward's softmax.
    logp: Mutex<Option<Tensor>>,
}

impl Operation for CrossEntropyPerSample {
    fn name(&self) -> &str {
        "cross_entropy"
    }

    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let logp = x[0].log_softmax(1)?;
        let per = nll_per_sample(&logp, &self.target, self.smoothing)?;
        *self.logp.lock().unwrap_or_else(|e| e.into_inner()) = Some(logp);
        Ok(per)
    }

    fn backward(&self, x: &[Tensor], _: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let logp = self.logp.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let logp = logp.ok_or_else(|| Error::Autograd("cross_entropy: backward before forward".into()))?;
        let per_row = g.unsqueeze(1)?;
        let mut dx = logp.exp()?.mul(&per_row)?;
        if self.smoothing != 0.0 {
            let classes = x[0].dims()[1] as f64;
            dx = dx.sub(&per_row.mul_scalar(self.smoothing / classes)?)?;
        }
        let at_target = per_row.mul_scalar(-(1.0 - self.smoothing))?;
        grads.accumulate(&x[0], dx.scatter_add(1, &self.target.unsqueeze(1)?, &at_target)?)
    }
}

/// Cross-entropy from unnormalized logits and i64 class indices: `log_softmax` then NLL, with
/// PyTorch's options: label smoothing, class `weight`s and an `ignore_index`. Logits are
/// `[.., C]` with targets `[..]`, or PyTorch's `[N, C, d1, …]` with targets `[N, d1, …]`.
/// The weighted mean divides by the summed weights of the non-ignored targets.
#[derive(Clone, Debug, Default)]
pub struct CrossEntropyLoss {
    /// How to reduce over samples.
    pub reduction: Reduction,
    /// ε in `[0, 1]`: the target puts `1−ε` on the class and spreads `ε` uniformly.
    pub label_smoothing: f64,
    /// One weight per class (`[C]`, the logits' dtype); none: all 1.
    pub weight: Option<Tensor>,
    /// Targets equal to this index contribute nothing, to the loss or to the mean's count.
    pub ignore_index: Option<i64>,
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
        let logits = classes_last(logits, target)?;
        let (x, t) = flatten_class_input("cross_entropy", &logits, target)?;
        if self.weight.is_none() && self.ignore_index.is_none() {
            let op = CrossEntropyPerSample { target: t, smoothing: self.label_smoothing, logp: Mutex::new(None) };
            let per = crate::autograd::apply(op, &[&x])?;
            return self.reduction.apply(&per.reshape(target.shape())?);
        }
        let (per, count) =
            weighted_nll(&x.log_softmax(1)?, &t, self.weight.as_ref(), self.ignore_index, self.label_smoothing)?;
        match self.reduction {
            Reduction::Mean => per.sum_all()?.div(&count),
            Reduction::Sum => per.sum_all(),
            Reduction::None => per.reshape(target.shape()),
        }
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
