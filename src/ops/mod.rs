//! Differentiable operations: one file per family, each op's forward and backward side by
//! side, and the `Tensor` methods that run them.

mod binary;
mod conv;
mod index;
mod indexing;
mod matmul;
mod operators;
mod reduce;
pub(crate) mod rnn;
mod unary;
mod view;

pub use binary::{Binary, Where};
pub use conv::{Col2Im, Conv1dOptions, Conv2dOptions, Im2Col, MaxUnpool};
pub use index::{Gather, IndexAdd, IndexSelect, ScatterAdd};
pub use indexing::{Index, Indices, s};
pub use matmul::{LoweredMatMul, MatMul};
pub use reduce::{Reduce, Softmax};
pub use unary::{Scalar, Unary};
pub use view::{BroadcastAs, Cast, Cat, Permute, Reshape, Slice, ToDevice};

use crate::{Device, Error, Result, Shape, Tensor};

/// Checks that all tensors live on one device.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch { op, lhs: d, rhs: t.device() });
        }
    }
    Ok(d)
}

/// Checks that two tensors share a dtype.
pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    Ok(())
}

impl Tensor {
    /// Sums a broadcast gradient back to `shape` (the adjoint of broadcasting).
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let (r, tr) = (self.rank(), shape.rank());
        if tr > r {
            return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
        }
        let lead = r - tr;
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &d) in shape.dims().iter().enumerate() {
            let sd = self.dims()[lead + i];
            if d == 1 && sd != 1 {
                axes.push((lead + i) as isize);
            } else if d != sd {
                return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
            }
        }
        self.sum_keepdim(&axes)?.reshape(shape.clone())
    }
}
