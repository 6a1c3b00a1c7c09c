//! Elementwise functions of two tensors with numpy broadcasting, comparisons and `where`.

use super::{same_device, same_dtype};
use crate::autograd::{Gradients, Operation, apply};
use crate::backend::{BinaryOp, CmpOp};
use crate::storage::Storage;
use crate::{DType, Error, Result, Shape, Tensor};

/// Broadcasts two tensors to one shape, returning that shape.
fn broadcast_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<Shape> {
    same_device(op, &[a, b])?;
    same_dtype(op, a, b)?;
    a.shape().broadcast(b.shape(), op)
}

/// `lhs op rhs` with broadcasting (see [`BinaryOp`]).
pub struct Binary(pub BinaryOp);

impl Operation for Binary {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (a, b) = (x[0], x[1]);
        let shape = broadcast_pair(self.0.name(), a, b)?;
        let (la, lb) = (a.layout().broadcast_as(&shape)?, b.layout().broadcast_as(&shape)?);
        let s = a.storage().binary(&la, &b.storage(), &lb, self.0)?;
        Ok(Tensor::from_contiguous(s, shape))
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let (a, b) = (&x[0], &x[1]);
        let (ga, gb) = match self.0 {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), g.neg()?),
            BinaryOp::Mul => (g.mul(b)?, g.mul(a)?),
            BinaryOp::Div => (g.div(b)?, g.mul(y)?.div(b)?.neg()?),
            BinaryOp::Pow => {
                // d/da a^b = b·a^(b-1), and 0 where b = 0 (not 0·a⁻¹, NaN at a = 0);
                // d/db = y·ln a, and 0 where a = 0 and b >= 0 (not 0·(−∞)): PyTorch's rules.
                let zero = g.zeros_like()?;
                let ga = g.mul(&b.mul(&a.pow(&b.add_scalar(-1.0)?)?)?)?;
                let ga = b.eq_scalar(0.0)?.where_cond(&zero, &ga)?;
                let gb = if b.tracks_grad() {
                    let gb = g.mul(&y.mul(&a.log()?)?)?;
                    a.eq_scalar(0.0)?.mul(&b.ge_scalar(0.0)?)?.where_cond(&zero, &gb)?
                } else {
                    zero
                };
                (ga, gb)
            }
            // Linear in the gradient it gates; the mask has no gradient (0 almost everywhere).
            BinaryOp::ReluBackward => (g.binary_op(b, BinaryOp::ReluBackward)?, g.zeros_like()?),
            BinaryOp::Maximum | BinaryOp::Minimum => {
                // The winner takes the gradient; a tie splits it half and half (PyTorch).
                let (a_wins, b_wins) =
                    if self.0 == BinaryOp::Maximum { (a.gt(b)?, a.lt(b)?) } else { (a.lt(b)?, a.gt(b)?) };
                let zero = g.zeros_like()?;
                let tie = a.eq(b)?.where_cond(&g.mul_scalar(0.5)?, &zero)?;
                (a_wins.where_cond(g, &tie)?, b_wins.where_cond(g, &tie)?)
            }
        };
        if a.tracks_grad() {
            grads.accumulate(a, ga.sum_to(a.shape())?)?;
        }
        if b.tracks_grad() {
            grads.accumulate(b, gb.sum_to(b.shape())?)?;
        }
        Ok(())
    }
}

/// `mask ? on_true : on_false` with broadcasting; the mask is u8 and gets no gradient.
pub struct Where;

impl Operation for Where {
    fn name(&self) -> &str {
        "where"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (m, t, f) = (x[0], x[1], x[2]);
        same_device("where", &[m, t, f])?;
        same_dtype("where", t, f)?;
        if m.dtype() != crate::DType::U8 {
            return Err(Error::UnsupportedDType { op: "where (mask must be u8)", dtype: m.dtype() });
        }
        let shape = m.shape().broadcast(t.shape(), "where")?.broadcast(f.shape(), "where")?;
        let (lm, lt, lf) =
            (m.layout().broadcast_as(&shape)?, t.layout().broadcast_as(&shape)?, f.layout().broadcast_as(&shape)?);
        let s = m.storage().where_cond(&lm, &t.storage(), &lt, &f.storage(), &lf)?;
        Ok(Tensor::from_contiguous(s, shape))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let (m, t, f) = (&x[0], &x[1], &x[2]);
        let zero = Tensor::zeros((), g.dtype(), g.device())?;
        if t.tracks_grad() {
            grads.accumulate(t, m.where_cond(g, &zero)?.sum_to(t.shape())?)?;
        }
        if f.tracks_grad() {
            grads.accumulate(f, m.where_cond(&zero, g)?.sum_to(f.shape())?)?;
        }
        Ok(())
    }
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.binary_op(rhs, BinaryOp::$op)
                }
            )*
        }
    };
}

binary_methods!(
    /// `self + rhs`, broadcasting.
    add => Add,
    /// `self - rhs`, broadcasting.
    sub => Sub,
    /// `self * rhs`, broadcasting.
    mul => Mul,
    /// `self / rhs`, broadcasting.
    div => Div,
    /// `self ^ rhs`, broadcasting.
    pow => Pow,
    /// Elementwise maximum (NaN wins), broadcasting.
    maximum => Maximum,
    /// Elementwise minimum (NaN wins), broadcasting.
    minimum => Minimum,
);

macro_rules! cmp_methods {
    ($($name:ident, $scalar:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                #[doc = concat!("Elementwise `", stringify!($name), "` into a u8 mask, broadcasting.")]
                pub fn $name(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.compare(rhs, CmpOp::$op)
                }
                #[doc = concat!("Elementwise `", stringify!($name), "` against a scalar, into a u8 mask.")]
                pub fn $scalar(&self, rhs: f64) -> Result<Tensor> {
                    self.compare_scalar(rhs, CmpOp::$op)
                }
            )*
        }
    };
}

cmp_methods!(
    eq, eq_scalar => Eq,
    ne, ne_scalar => Ne,
    lt, lt_scalar => Lt,
    le, le_scalar => Le,
    gt, gt_scalar => Gt,
    ge, ge_scalar => Ge,
);

impl Tensor {
    /// Any [`BinaryOp`] by value, broadcasting (the named methods call this).
    ///
    /// Integer division by zero is an `Err` on every device, as PyTorch raises
    /// `ZeroDivisionError` (the kernels would otherwise give 0).
    pub fn binary_op(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if op == BinaryOp::Div && !rhs.dtype().is_float() && rhs.elem_count() > 0 {
            let zeros = rhs.eq_scalar(0.0)?.sum_all()?.to_vec_f64()?;
            if zeros.first().is_some_and(|&z| z > 0.0) {
                return Err(Error::msg(format!(
                    "div: integer division by zero ({} zero divisor{} in a {:?} tensor)",
                    zeros[0],
                    if zeros[0] == 1.0 { "" } else { "s" },
                    rhs.dtype()
                )));
            }
        }
        apply(Binary(op), &[self, rhs])
    }
    /// A comparison with a scalar, as PyTorch computes it: a float tensor rounds the scalar
    /// to its dtype (past its range, to ±∞); an integer tensor compares exactly, so a
    /// fraction or a value outside the dtype's range is not first rounded into it (i64 `3 <
    /// 3.5` is true, u8 `255 == 300` false). Those compare in f64: exact for every u8, and for
    /// i64 values up to 2⁵³ in magnitude.
    pub fn compare_scalar(&self, rhs: f64, op: CmpOp) -> Result<Tensor> {
        let dt = self.dtype();
        let (lo, hi) = dt.finite_range();
        // Every integer f64 within an integer dtype's range converts to it exactly.
        let exact = dt.is_float() || (rhs.fract() == 0.0 && (lo..=hi).contains(&rhs));
        let scalar = |dtype: DType| -> Result<Tensor> {
            // Storage::full converts as a cast does (floats round, ±∞ past their range).
            let s = Storage::full(&Shape::scalar(), dtype, rhs, self.device())?;
            Ok(Tensor::from_contiguous(s, Shape::scalar()))
        };
        if exact {
            self.compare(&scalar(dt)?, op)
        } else {
            self.to_dtype(DType::F64)?.compare(&scalar(DType::F64)?, op)
        }
    }
    /// A comparison (not differentiable: the result never tracks gradients).
    pub fn compare(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        let shape = broadcast_pair(op.name(), self, rhs)?;
        let (la, lb) = (self.layout().broadcast_as(&shape)?, rhs.layout().broadcast_as(&shape)?);
        let s = self.storage().cmp(&la, &rhs.storage(), &lb, op)?;
        Ok(Tensor::from_contiguous(s, shape))
    }
    /// `self` is a u8 mask: `on_true` where it is nonzero, else `on_false` (broadcasting).
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        apply(Where, &[self, on_true, on_false])
    }
}
