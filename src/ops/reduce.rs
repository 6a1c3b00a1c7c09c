//! Reductions over sets of axes, and softmax / log-softmax.

use crate::autograd::{Gradients, Operation, apply};
use crate::backend::ReduceOp;
use crate::shape::{Axes, resolve_axis};
use crate::{Error, Result, Shape, Tensor};

/// Resolves, sorts and dedups axes; an empty list means every axis.
fn resolve_axes(axes: &[isize], rank: usize, op: &'static str) -> Result<Vec<usize>> {
    if axes.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut v = axes.iter().map(|&a| resolve_axis(a, rank, op)).collect::<Result<Vec<_>>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// A reduction over `axes` (kept at size 1); see [`ReduceOp`].
pub struct Reduce {
    /// The reduction.
    pub op: ReduceOp,
    /// The axes reduced over, sorted and unique.
    pub axes: Vec<usize>,
}

impl Operation for Reduce {
    fn name(&self) -> &str {
        self.op.name()
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let x = x[0];
        let mut dims = x.dims().to_vec();
        for &a in &self.axes {
            if dims[a] == 0 && !matches!(self.op, ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Mean) {
                return Err(Error::BadShape {
                    op: self.op.name(),
                    msg: format!("reduction over an empty axis of {:?}", x.shape()),
                });
            }
            dims[a] = 1;
        }
        let s = x.storage().reduce(x.layout(), self.op, &self.axes)?;
        Ok(Tensor::from_contiguous(s, dims))
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let x = &x[0];
        let shape = x.shape();
        let dx = match self.op {
            ReduceOp::Sum => g.broadcast_as(shape)?,
            ReduceOp::Mean => {
                let n: usize = self.axes.iter().map(|&a| shape.dims()[a]).product();
                g.affine(1.0 / n as f64, 0.0)?.broadcast_as(shape)?
            }
            ReduceOp::Max | ReduceOp::Min => {
                // Split evenly between tied extremes.
                let hit = x.eq(&y.broadcast_as(shape)?)?.to_dtype(g.dtype())?;
                let ties = hit.sum_keepdim(self.axes.iter().map(|&a| a as isize).collect::<Vec<_>>())?;
                hit.mul(&g.div(&ties)?)?
            }
            ReduceOp::Prod => g.mul(y)?.broadcast_as(shape)?.div(x)?,
            ReduceOp::ArgMax | ReduceOp::ArgMin => return Ok(()),
        };
        grads.accumulate(x, dx)
    }
}

/// Softmax (`log = false`) or log-softmax along one axis.
pub struct Softmax {
    /// The axis normalized over.
    pub axis: usize,
    /// Compute log-softmax instead of softmax.
    pub log: bool,
}

impl Operation for Softmax {
    fn name(&self) -> &str {
        if self.log { "log_softmax" } else { "softmax" }
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let s = x[0].storage().softmax(x[0].layout(), self.axis, self.log)?;
        Ok(Tensor::from_contiguous(s, x[0].shape()))
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let ax = [self.axis as isize];
        let dx = if self.log {
            // g − softmax · Σg
            g.sub(&y.exp()?.mul(&g.sum_keepdim(ax)?)?)?
        } else {
            // y · (g − Σ g·y)
            y.mul(&g.sub(&g.mul(y)?.sum_keepdim(ax)?)?)?
        };
        grads.accumulate(&x[0], dx)
    }
}

impl Tensor {
    fn reduce_impl(&self, op: ReduceOp, axes: &[isize], keepdim: bool) -> Result<Tensor> {
        let axes = resolve_axes(axes, self.rank(), op.name())?;
        let kept = if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
            if axes.len() != 1 {
                return Err(Error::BadShape { op: op.name(), msg: format!("needs exactly one axis, got {axes:?}") });
            }
            // Not differentiable: run the kernel directly, never record.
            Reduce { op, axes: axes.clone() }.forward(&[self])?
        } else {
            apply(Reduce { op, axes: axes.clone() }, &[self])?
        };
        if keepdim { Ok(kept) } else { self.drop_axes(&kept, &axes) }
    }

    /// `kept` (a reduction of `self` over the resolved `axes`, kept at size 1) without them.
    fn drop_axes(&self, kept: &Tensor, axes: &[usize]) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).filter(|a| !axes.contains(a)).map(|a| self.dims()[a]).collect();
        kept.reshape(Shape::from(dims))
    }
    /// Sum over `axes` (one axis or several, see [`Axes`]; all when empty), dropping them.
    pub fn sum(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Sum, &axes.as_axes(), false)
    }
    /// Sum over `axes`, keeping them at size 1.
    pub fn sum_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Sum, &axes.as_axes(), true)
    }
    /// `log Σ exp(x)` over `axes` (all when empty), stable as PyTorch's `logsumexp`: the
    /// maximum is subtracted first (and added back), a row of −∞ gives −∞ and a +∞ gives +∞.
    /// The gradient is the softmax over `axes`.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![1000.0f64, 1000.0, 0.0, f64::NEG_INFINITY], (2, 2), Device::Cpu)?;
    /// let y = x.logsumexp(&[1], false)?.to_vec_f64()?;
    /// assert!((y[0] - (1000.0 + 2f64.ln())).abs() < 1e-12 && y[1] == 0.0);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn logsumexp(&self, axes: impl Axes, keepdim: bool) -> Result<Tensor> {
        let axes: &[isize] = &axes.as_axes();
        // The shift is a constant for autograd (it cancels); an infinite maximum shifts by 0.
        let m = self.max_keepdim(axes)?.detach();
        let m = m.abs()?.lt_scalar(f64::INFINITY)?.where_cond(&m, &m.zeros_like()?)?;
        let lse = self.sub(&m)?.exp()?.sum_keepdim(axes)?.log()?.add(&m)?;
        if keepdim { Ok(lse) } else { self.drop_axes(&lse, &resolve_axes(axes, self.rank(), "logsumexp")?) }
    }
    /// Sum of all elements (rank 0).
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum([])
    }
    /// Mean over `axes` (all when empty).
    pub fn mean(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Mean, &axes.as_axes(), false)
    }
    /// Mean over `axes`, keeping them.
    pub fn mean_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Mean, &axes.as_axes(), true)
    }
    /// Mean of all elements (rank 0).
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean([])
    }
    /// Maximum over `axes`.
    pub fn max(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Max, &axes.as_axes(), false)
    }
    /// Maximum over `axes`, keeping them.
    pub fn max_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Max, &axes.as_axes(), true)
    }
    /// Minimum over `axes`.
    pub fn min(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Min, &axes.as_axes(), false)
    }
    /// Minimum over `axes`, keeping them.
    pub fn min_keepdim(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Min, &axes.as_axes(), true)
    }
    /// Product over `axes`.
    pub fn prod(&self, axes: impl Axes) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Prod, &axes.as_axes(), false)
    }
    /// Index (i64) of the first maximum along `axis`.
    pub fn argmax(&self, axis: isize) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::ArgMax, &[axis], false)
    }
    /// Index (i64) of the first minimum along `axis`.
    pub fn argmin(&self, axis: isize) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::ArgMin, &[axis], false)
    }
    /// PyTorch's `max(dim)`: the maxima along `axis` and their indices (the first maximum);
    /// the gradient goes to the returned index only. ([`Tensor::max`], like PyTorch's
    /// `amax`, splits it evenly among ties.)
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![1.0f64, 3.0, 3.0, 0.0], (2, 2), Device::Cpu)?.requires_grad();
    /// let (v, i) = x.max_dim(1, false)?;
    /// assert_eq!((v.to_vec_f64()?, i.to_vec_f64()?), (vec![3.0, 3.0], vec![1.0, 0.0]));
    /// v.sum_all()?.backward()?;
    /// assert_eq!(x.grad().unwrap().to_vec_f64()?, vec![0.0, 1.0, 1.0, 0.0]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn max_dim(&self, axis: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.extreme_dim(axis, keepdim, ReduceOp::ArgMax)
    }
    /// PyTorch's `min(dim)`: the minima along `axis` and their indices (see [`Tensor::max_dim`]).
    pub fn min_dim(&self, axis: isize, keepdim: bool) -> Result<(Tensor, Tensor)> {
        self.extreme_dim(axis, keepdim, ReduceOp::ArgMin)
    }
    fn extreme_dim(&self, axis: isize, keepdim: bool, op: ReduceOp) -> Result<(Tensor, Tensor)> {
        let a = self.shape().axis(axis, op.name())? as isize;
        let idx = self.reduce_impl(op, &[a], true)?;
        let values = self.gather(a, &idx)?;
        if keepdim { Ok((values, idx)) } else { Ok((values.squeeze(a)?, idx.squeeze(a)?)) }
    }
    /// PyTorch's `amax`: [`Tensor::max`] over `axes` (ties share the gradient evenly).
    pub fn amax(&self, axes: impl Axes, keepdim: bool) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Max, &axes.as_axes(), keepdim)
    }
    /// PyTorch's `amin`: [`Tensor::min`] over `axes` (ties share the gradient evenly).
    pub fn amin(&self, axes: impl Axes, keepdim: bool) -> Result<Tensor> {
        self.reduce_impl(ReduceOp::Min, &axes.as_axes(), keepdim)
    }
    /// Generic reduction with `keepdim`.
    pub fn reduce(&self, op: ReduceOp, axes: impl Axes, keepdim: bool) -> Result<Tensor> {
        self.reduce_impl(op, &axes.as_axes(), keepdim)
    }
    /// Softmax along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let axis = self.shape().axis(axis, "softmax")?;
        apply(Softmax { axis, log: false }, &[self])
    }
    /// Log-softmax along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        let axis = self.shape().axis(axis, "log_softmax")?;
        apply(Softmax { axis, log: true }, &[self])
    }
}
