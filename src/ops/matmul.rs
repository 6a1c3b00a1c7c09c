//! Matrix products: batched, batch dims broadcast, transposed operands without copies.

use super::{same_device, same_dtype};
use crate::autograd::{Gradients, Operation, apply};
use crate::{Error, Result, Shape, Tensor};

/// `a @ b` for operands of rank ≥ 2 with broadcast batch dims.
pub struct MatMul;

/// `a @ b` of f32 operands with the products in a low precision (bf16 or f16): autocast's
/// matrix product, one op with f32 in and out ([`crate::backend::BackendStorage::matmul_lowered`]).
/// Its backward products are lowered the same way.
pub struct LoweredMatMul(pub crate::DType);

/// The broadcast batch shape and the output shape of `a @ b`.
fn shapes(a: &Tensor, b: &Tensor) -> Result<(Shape, Shape)> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, k2, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 2], b.dims()[rb - 1]);
    if k != k2 {
        return Err(Error::ShapeMismatch { op: "matmul", lhs: a.shape().clone(), rhs: b.shape().clone() });
    }
    let batch = Shape::from(&a.dims()[..ra - 2]).broadcast(&Shape::from(&b.dims()[..rb - 2]), "matmul")?;
    let mut out = batch.dims().to_vec();
    out.extend([m, n]);
    Shape::checked_product("matmul", &out)?;
    Ok((batch, Shape::from(out)))
}

/// The operands' layouts with the broadcast batch dims, and the output shape.
fn layouts(a: &Tensor, b: &Tensor) -> Result<(crate::Layout, crate::Layout, Shape)> {
    let (batch, out) = shapes(a, b)?;
    let with_batch = |t: &Tensor| -> Result<crate::Layout> {
        let r = t.rank();
        let mut d = batch.dims().to_vec();
        d.extend_from_slice(&t.dims()[r - 2..]);
        t.layout().broadcast_as(&Shape::from(d))
    };
    Ok((with_batch(a)?, with_batch(b)?, out))
}

impl Operation for MatMul {
    fn name(&self) -> &str {
        "matmul"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (la, lb, out) = layouts(x[0], x[1])?;
        let s = x[0].storage().matmul(&la, &x[1].storage(), &lb)?;
        Ok(Tensor::from_contiguous(s, out))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        backward(x, g, grads, |p, q| p.matmul(q))
    }
}

impl Operation for LoweredMatMul {
    fn name(&self) -> &str {
        "matmul"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (la, lb, out) = layouts(x[0], x[1])?;
        let s = x[0].storage().matmul_lowered(&la, &x[1].storage(), &lb, self.0)?;
        Ok(Tensor::from_contiguous(s, out))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        backward(x, g, grads, |p, q| apply(LoweredMatMul(self.0), &[p, q]))
    }
}

/// Both products' gradients through `product` (a plain or a lowered matrix product).
fn backward(
    x: &[Tensor],
    g: &Tensor,
    grads: &mut Gradients,
    product: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<()> {
    let (a, b) = (&x[0], &x[1]);
    if a.tracks_grad() {
        grads.accumulate(a, product(g, &b.t()?)?.sum_to(a.shape())?)?;
    }
    if b.tracks_grad() {
        // `x · Wᵀ` (a linear layer): b is a transposed view, and its gradient goes back
        // through that transpose. Computing it as (gᵀ·a)ᵀ makes the weight's own gradient
        // a contiguous product instead of a transposed copy of one.
        let gb = if a.rank() == 2 && b.rank() == 2 && is_transposed(b) {
            product(&g.t()?, a)?.t()?
        } else {
            product(&a.t()?, g)?.sum_to(b.shape())?
        };
        grads.accumulate(b, gb)?;
    }
    Ok(())
}

/// True for the transpose of a row-major matrix (unit stride down the columns).
fn is_transposed(t: &Tensor) -> bool {
    let (d, s) = (t.dims(), t.layout().strides());
    d[0] > 1 && d[1] > 1 && s[0] == 1 && s[1] == d[0]
}

impl Tensor {
    /// Matrix product with numpy's rules: rank-1 operands are promoted (and the added axis
    /// removed), batch dims broadcast. Transposed views cost no copy.
    ///
    /// ```
    /// use tensorforge::{Tensor, Device, DType};
    /// let a = Tensor::ones((4, 2, 3), DType::F32, Device::Cpu)?;
    /// let b = Tensor::ones((3, 5), DType::F32, Device::Cpu)?;
    /// assert_eq!(a.matmul(&b)?.dims(), &[4, 2, 5]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let low = crate::amp::lowered(&[self, rhs]);
        same_device("matmul", &[self, rhs])?;
        same_dtype("matmul", self, rhs)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::BadShape { op: "matmul", msg: "operands must have rank >= 1".into() });
        }
        let a = if self.rank() == 1 { self.unsqueeze(0)? } else { self.clone() };
        let b = if rhs.rank() == 1 { rhs.unsqueeze(1)? } else { rhs.clone() };
        let mut y = match low {
            Some(low) => apply(LoweredMatMul(low), &[&a, &b])?,
            None => apply(MatMul, &[&a, &b])?,
        };
        if rhs.rank() == 1 {
            y = y.squeeze(-1)?;
        }
        if self.rank() == 1 {
            y = y.squeeze(if rhs.rank() == 1 { -1 } else { -2 })?;
        }
        Ok(y)
    }
}
