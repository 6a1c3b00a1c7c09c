//! Views (reshape, permute, broadcast, slice) and copies between layouts, dtypes and
//! devices. A view shares storage; its backward routes the gradient back to the source
//! layout.

use super::same_device;
use crate::autograd::{Gradients, Operation, apply};
use crate::shape::{MAX_DIMS, resolve_axis};
use crate::storage::Storage;
use crate::{DType, Device, Error, Result, Shape, Tensor};

/// A new shape over the same elements (a copy only when the strides force one).
pub struct Reshape(pub Shape);

impl Operation for Reshape {
    fn name(&self) -> &str {
        "reshape"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let x = x[0];
        match x.layout().reshape(&self.0) {
            Some(l) => Ok(x.view_as(l)),
            None => {
                let c = x.contiguous()?;
                Ok(c.view_as(c.layout().reshape(&self.0).expect("contiguous layouts reshape")))
            }
        }
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.reshape(x[0].shape().clone())?)
    }
}

/// Reordered axes: output axis `i` is input axis `perm[i]`.
pub struct Permute(pub Vec<usize>);

impl Operation for Permute {
    fn name(&self) -> &str {
        "permute"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        Ok(x[0].view_as(x[0].layout().permute(&self.0)?))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let mut inv = vec![0; self.0.len()];
        for (i, &p) in self.0.iter().enumerate() {
            inv[p] = i;
        }
        grads.accumulate(&x[0], g.permute(&inv)?)
    }
}

/// A broadcast view (stride 0 along repeated axes).
pub struct BroadcastAs(pub Shape);

impl Operation for BroadcastAs {
    fn name(&self) -> &str {
        "broadcast_as"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        Ok(x[0].view_as(x[0].layout().broadcast_as(&self.0)?))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.sum_to(x[0].shape())?)
    }
}

/// `len` elements from `start` in steps of `step` along `axis`.
pub struct Slice {
    /// The axis sliced along.
    pub axis: usize,
    /// The index of the first element taken.
    pub start: usize,
    /// The number of elements taken.
    pub len: usize,
    /// The distance between taken elements.
    pub step: usize,
}

impl Operation for Slice {
    fn name(&self) -> &str {
        "slice"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        Ok(x[0].view_as(x[0].layout().slice(self.axis, self.start, self.len, self.step)))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate_slice(&x[0], self.axis, self.start, self.step, g)
    }
}

/// Concatenation along an axis.
pub struct Cat(pub usize);

impl Operation for Cat {
    fn name(&self) -> &str {
        "cat"
    }
    fn forward(&self, xs: &[&Tensor]) -> Result<Tensor> {
        let axis = self.0;
        let first = xs[0];
        same_device("cat", xs)?;
        let mut dims = first.dims().to_vec();
        dims[axis] = 0;
        for x in xs {
            super::same_dtype("cat", first, x)?;
            let ok = x.rank() == first.rank()
                && x.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b);
            if !ok {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().clone(), rhs: x.shape().clone() });
            }
            dims[axis] = dims[axis].checked_add(x.dims()[axis]).ok_or_else(|| Error::BadShape {
                op: "cat",
                msg: format!("the sizes along axis {axis} add up past usize::MAX"),
            })?;
        }
        let shape = Shape::from(dims);
        let guards: Vec<_> = xs.iter().map(|x| x.storage()).collect();
        let parts: Vec<_> = guards.iter().zip(xs).map(|(g, x)| (&**g, x.layout())).collect();
        Ok(Tensor::from_contiguous(Storage::concat(&parts, axis, &shape)?, shape))
    }
    fn backward(&self, xs: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let mut at = 0;
        for x in xs {
            let n = x.dims()[self.0];
            if x.tracks_grad() {
                grads.accumulate(x, g.narrow(self.0 as isize, at, n)?)?;
            }
            at += n;
        }
        Ok(())
    }
}

/// Conversion to another dtype (gradients flow between float dtypes).
pub struct Cast(pub DType);

impl Operation for Cast {
    fn name(&self) -> &str {
        "cast"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let s = x[0].storage().cast(x[0].layout(), self.0)?;
        Ok(Tensor::from_contiguous(s, x[0].shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        if x[0].dtype().is_float() && self.0.is_float() {
            grads.accumulate(&x[0], g.to_dtype(x[0].dtype())?)?;
        }
        Ok(())
    }
}

/// An explicit copy to another device.
pub struct ToDevice {
    /// The destination device.
    pub device: Device,
}

impl Operation for ToDevice {
    fn name(&self) -> &str {
        "to_device"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let host = x[0].to_cpu_storage()?;
        Ok(Tensor::from_contiguous(Storage::from_cpu(host, self.device)?, x[0].shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.to_device(x[0].device())?)
    }
}

impl Tensor {
    /// The same elements with a new shape. A copy happens only when the strides cannot
    /// express the new shape.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_size("reshape", self.dtype())?.0 != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().clone(), rhs: shape });
        }
        if shape.rank() > MAX_DIMS {
            return Err(Error::BadShape { op: "reshape", msg: format!("rank {} exceeds {MAX_DIMS}", shape.rank()) });
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        apply(Reshape(shape), &[self])
    }
    /// Flattens into one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(self.elem_count())
    }
    /// Flattens axes `start..=end` into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape(1);
        }
        let (s, e) = (self.shape().axis(start, "flatten")?, self.shape().axis(end, "flatten")?);
        if s > e {
            return Err(Error::BadShape { op: "flatten", msg: format!("start axis {s} after end axis {e}") });
        }
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }
    /// Removes axis `axis`, which must have size 1.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let a = self.shape().axis(axis, "squeeze")?;
        if self.dims()[a] != 1 {
            return Err(Error::BadShape { op: "squeeze", msg: format!("axis {a} of {:?} is not 1", self.shape()) });
        }
        let mut d = self.dims().to_vec();
        d.remove(a);
        self.reshape(d)
    }
    /// Inserts a size-1 axis at `axis` (`-1` appends).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let a = resolve_axis(axis, self.rank() + 1, "unsqueeze")?;
        let mut d = self.dims().to_vec();
        d.insert(a, 1);
        self.reshape(d)
    }
    /// Swaps two axes (a view).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let (a, b) = (self.shape().axis(a, "transpose")?, self.shape().axis(b, "transpose")?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// Swaps the last two axes (a view).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::BadShape { op: "t", msg: format!("needs rank >= 2, got {:?}", self.shape()) });
        }
        self.transpose(-2, -1)
    }
    /// Reorders axes (a view): output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        self.layout().permute(perm)?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        apply(Permute(perm.to_vec()), &[self])
    }
    /// A view broadcast to `shape` (numpy rules).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        shape.checked_size("broadcast_as", self.dtype())?;
        self.layout().broadcast_as(&shape)?;
        apply(BroadcastAs(shape), &[self])
    }
    /// Same as [`Tensor::broadcast_as`] (PyTorch's name).
    pub fn expand(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.broadcast_as(shape)
    }
    /// Elements `start..start+len` along `axis` (a view).
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let end = start
            .checked_add(len)
            .ok_or_else(|| Error::BadShape { op: "narrow", msg: format!("start {start} + length {len} overflows") })?;
        self.slice(axis, start, end, 1)
    }
    /// Elements `start, start+step, …` below `end` along `axis` (a view).
    pub fn slice(&self, axis: isize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        let a = self.shape().axis(axis, "slice")?;
        let d = self.dims()[a];
        if step == 0 || start > end || end > d {
            return Err(Error::BadShape {
                op: "slice",
                msg: format!("range {start}..{end} step {step} invalid for axis {a} of size {d}"),
            });
        }
        let len = (end - start).div_ceil(step);
        if start == 0 && len == d && step == 1 {
            return Ok(self.clone());
        }
        apply(Slice { axis: a, start, len, step }, &[self])
    }
    /// The elements in a fresh contiguous buffer (or `self` when already contiguous and
    /// covering its whole buffer).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy()
    }
    /// A fresh contiguous copy (gradients pass through).
    pub fn copy(&self) -> Result<Tensor> {
        apply(Cast(self.dtype()), &[self])
    }
    /// Converts to `dtype` (float→int truncates toward zero).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        apply(Cast(dtype), &[self])
    }
    /// Concatenates along `axis`; shapes must agree elsewhere.
    pub fn cat(ts: &[&Tensor], axis: isize) -> Result<Tensor> {
        let Some(first) = ts.first() else {
            return Err(Error::msg("cat: no tensors"));
        };
        let a = first.shape().axis(axis, "cat")?;
        if ts.len() == 1 {
            return Ok((*first).clone());
        }
        apply(Cat(a), ts)
    }
    /// Stacks along a new axis `axis`.
    pub fn stack(ts: &[&Tensor], axis: isize) -> Result<Tensor> {
        let Some(first) = ts.first() else {
            return Err(Error::msg("stack: no tensors"));
        };
        let a = resolve_axis(axis, first.rank() + 1, "stack")? as isize;
        let us = ts.iter().map(|t| t.unsqueeze(a)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&us.iter().collect::<Vec<_>>(), a)
    }
}
