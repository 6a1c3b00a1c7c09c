//! Indexing: index_select and gather, whose adjoints are index_add and scatter_add.

use super::{same_device, same_dtype};
use crate::autograd::{Gradients, Operation, apply};
use crate::{DType, Error, Result, Tensor};

fn check_ids(op: &'static str, ids: &Tensor) -> Result<()> {
    if ids.dtype() != DType::I64 {
        return Err(Error::UnsupportedDType { op, dtype: ids.dtype() });
    }
    Ok(())
}

/// `x.index_select(axis, ids)`: slices of `x` along `axis` picked by rank-1 `ids`.
pub struct IndexSelect(pub usize);

impl Operation for IndexSelect {
    fn name(&self) -> &str {
        "index_select"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (src, ids) = (x[0], x[1]);
        let s = src.storage().index(src.layout(), &ids.storage(), ids.layout(), self.0, false)?;
        let mut dims = src.dims().to_vec();
        dims[self.0] = ids.elem_count();
        Ok(Tensor::from_contiguous(s, dims))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let dx = x[0].zeros_like()?.index_add(self.0 as isize, &x[1], g)?;
        grads.accumulate(&x[0], dx)
    }
}

/// `x.gather(axis, ids)`: `out[i][j] = x[i][ids[i][j]]` for axis 1.
pub struct Gather(pub usize);

impl Operation for Gather {
    fn name(&self) -> &str {
        "gather"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (src, ids) = (x[0], x[1]);
        let s = src.storage().index(src.layout(), &ids.storage(), ids.layout(), self.0, true)?;
        Ok(Tensor::from_contiguous(s, ids.shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let dx = x[0].zeros_like()?.scatter_add(self.0 as isize, &x[1], g)?;
        grads.accumulate(&x[0], dx)
    }
}

/// `x` with `src` added at `ids` along an axis (the adjoint of gather).
pub struct ScatterAdd(pub usize);

impl Operation for ScatterAdd {
    fn name(&self) -> &str {
        "scatter_add"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (dst, ids, src) = (x[0], x[1], x[2]);
        let s = dst.storage().index_accumulate(
            dst.layout(),
            &ids.storage(),
            ids.layout(),
            &src.storage(),
            src.layout(),
            self.0,
            true,
        )?;
        Ok(Tensor::from_contiguous(s, dst.shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.clone())?;
        if x[2].tracks_grad() {
            grads.accumulate(&x[2], g.gather(self.0 as isize, &x[1])?)?;
        }
        Ok(())
    }
}

/// `x` with slice `i` of `src` added to slice `ids[i]` along an axis (index_select's adjoint).
pub struct IndexAdd(pub usize);

impl Operation for IndexAdd {
    fn name(&self) -> &str {
        "index_add"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (dst, ids, src) = (x[0], x[1], x[2]);
        let s = dst.storage().index_accumulate(
            dst.layout(),
            &ids.storage(),
            ids.layout(),
            &src.storage(),
            src.layout(),
            self.0,
            false,
        )?;
        Ok(Tensor::from_contiguous(s, dst.shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.clone())?;
        if x[2].tracks_grad() {
            grads.accumulate(&x[2], g.index_select(self.0 as isize, &x[1])?)?;
        }
        Ok(())
    }
}

impl Tensor {
    /// Slices along `axis` picked by the rank-1 i64 `ids` (an embedding lookup for axis 0).
    pub fn index_select(&self, axis: isize, ids: &Tensor) -> Result<Tensor> {
        let a = self.shape().axis(axis, "index_select")?;
        same_device("index_select", &[self, ids])?;
        check_ids("index_select", ids)?;
        if ids.rank() != 1 {
            return Err(Error::BadShape {
                op: "index_select",
                msg: format!("ids must have rank 1, got {:?}", ids.shape()),
            });
        }
        apply(IndexSelect(a), &[self, ids])
    }
    /// `out[..i..] = self[..ids[..i..]..]` along `axis` (torch.gather); `ids` has the
    /// output's shape and `self`'s rank.
    pub fn gather(&self, axis: isize, ids: &Tensor) -> Result<Tensor> {
        let a = self.shape().axis(axis, "gather")?;
        same_device("gather", &[self, ids])?;
        check_ids("gather", ids)?;
        if ids.rank() != self.rank() {
            return Err(Error::ShapeMismatch { op: "gather", lhs: self.shape().clone(), rhs: ids.shape().clone() });
        }
        apply(Gather(a), &[self, ids])
    }
    /// A copy of `self` with `src` added at `ids` along `axis` (`ids` and `src` same shape).
    pub fn scatter_add(&self, axis: isize, ids: &Tensor, src: &Tensor) -> Result<Tensor> {
        let a = self.shape().axis(axis, "scatter_add")?;
        same_device("scatter_add", &[self, ids, src])?;
        same_dtype("scatter_add", self, src)?;
        check_ids("scatter_add", ids)?;
        if ids.rank() != self.rank() || ids.shape() != src.shape() {
            return Err(Error::ShapeMismatch { op: "scatter_add", lhs: ids.shape().clone(), rhs: src.shape().clone() });
        }
        apply(ScatterAdd(a), &[self, ids, src])
    }
    /// A copy of `self` with slice `i` of `src` added to slice `ids[i]` along `axis`.
    pub fn index_add(&self, axis: isize, ids: &Tensor, src: &Tensor) -> Result<Tensor> {
        let a = self.shape().axis(axis, "index_add")?;
        same_device("index_add", &[self, ids, src])?;
        same_dtype("index_add", self, src)?;
        check_ids("index_add", ids)?;
        if ids.rank() != 1 {
            return Err(Error::BadShape {
                op: "index_add",
                msg: format!("ids must have rank 1, got {:?}", ids.shape()),
            });
        }
        apply(IndexAdd(a), &[self, ids, src])
    }
}
