//! Elementwise functions of one tensor and their derivatives.

use crate::autograd::{Gradients, Operation, apply};
use crate::backend::{BinaryOp, ScalarOp, UnaryOp};
use crate::{Error, Result, Tensor};

/// An elementwise function (see [`UnaryOp`]).
pub struct Unary(pub UnaryOp);

impl Operation for Unary {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let s = x[0].storage().unary(x[0].layout(), self.0)?;
        Ok(Tensor::from_contiguous(s, x[0].shape()))
    }
    fn backward(&self, x: &[Tensor], y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let x = &x[0];
        let dx = match self.0 {
            UnaryOp::Neg => g.neg()?,
            UnaryOp::Abs => g.mul(&x.sign()?)?,
            UnaryOp::Exp => g.mul(y)?,
            UnaryOp::Log => g.div(x)?,
            UnaryOp::Sqrt => g.div(&y.affine(2.0, 0.0)?)?,
            // d/dx x^-1/2 = -1/2 · y / x
            UnaryOp::Rsqrt => g.mul(&y.div(x)?)?.affine(-0.5, 0.0)?,
            UnaryOp::Recip => g.mul(&y.sqr()?)?.neg()?,
            UnaryOp::Sqr => g.mul(x)?.affine(2.0, 0.0)?,
            UnaryOp::Sin => g.mul(&x.cos()?)?,
            UnaryOp::Cos => g.mul(&x.sin()?)?.neg()?,
            UnaryOp::Tanh => g.mul(&y.sqr()?.affine(-1.0, 1.0)?)?,
            UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?,
            // PyTorch's threshold_backward in one pass: g where x > 0 or NaN, else 0.
            UnaryOp::Relu => g.binary_op(x, BinaryOp::ReluBackward)?,
            UnaryOp::GeluErf => {
                // Φ(x) + x·φ(x)
                let cdf = x.normal_cdf()?;
                let pdf = x.sqr()?.affine(-0.5, 0.0)?.exp()?.affine(1.0 / (2.0 * std::f64::consts::PI).sqrt(), 0.0)?;
                g.mul(&cdf.add(&x.mul(&pdf)?)?)?
            }
            UnaryOp::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let k = 0.044715;
                let x2 = x.sqr()?;
                let u = x.mul(&x2.affine(k, 1.0)?)?.affine(c, 0.0)?;
                let t = u.tanh()?;
                let left = t.affine(0.5, 0.5)?;
                let du = x2.affine(3.0 * k * c, c)?;
                let right = x.mul(&t.sqr()?.affine(-1.0, 1.0)?)?.mul(&du)?.affine(0.5, 0.0)?;
                g.mul(&left.add(&right)?)?
            }
            UnaryOp::Silu => {
                let s = x.sigmoid()?;
                let d = s.mul(&x.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
                g.mul(&d)?
            }
            UnaryOp::Softplus => g.mul(&x.sigmoid()?)?,
            UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => g.zeros_like()?,
        };
        grads.accumulate(x, dx)
    }
}

/// A parameterized scalar map (see [`ScalarOp`]).
pub struct Scalar(pub ScalarOp);

impl Operation for Scalar {
    fn name(&self) -> &str {
        match self.0 {
            ScalarOp::Affine { .. } => "affine",
            ScalarOp::Powf(_) => "powf",
            ScalarOp::Clamp { .. } => "clamp",
        }
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let s = x[0].storage().scalar(x[0].layout(), self.0)?;
        Ok(Tensor::from_contiguous(s, x[0].shape()))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let x = &x[0];
        let dx = match self.0 {
            ScalarOp::Affine { mul, .. } => g.affine(mul, 0.0)?,
            // x⁰ is constant: 0, not 0·x⁻¹ (NaN at x = 0), as PyTorch.
            ScalarOp::Powf(0.0) => g.zeros_like()?,
            ScalarOp::Powf(e) => g.mul(&x.powf(e - 1.0)?.affine(e, 0.0)?)?,
            ScalarOp::Clamp { lo, hi } => {
                let inside = x.ge_scalar(lo)?.mul(&x.le_scalar(hi)?)?;
                inside.where_cond(g, &g.zeros_like()?)?
            }
        };
        grads.accumulate(x, dx)
    }
}

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<Tensor> {
                    apply(Unary(UnaryOp::$op), &[self])
                }
            )*
        }
    };
}

unary_methods!(
    /// `-x`
    neg => Neg,
    /// `|x|`
    abs => Abs,
    /// `eˣ`
    exp => Exp,
    /// Natural log.
    log => Log,
    /// `√x`
    sqrt => Sqrt,
    /// `1/√x`
    rsqrt => Rsqrt,
    /// `1/x`
    recip => Recip,
    /// `x²`
    sqr => Sqr,
    /// `sin x`
    sin => Sin,
    /// `cos x`
    cos => Cos,
    /// `tanh x`
    tanh => Tanh,
    /// `1/(1+e⁻ˣ)`
    sigmoid => Sigmoid,
    /// `max(x, 0)`
    relu => Relu,
    /// GELU, exact form `x·Φ(x)`.
    gelu => GeluErf,
    /// GELU, tanh approximation.
    gelu_tanh => GeluTanh,
    /// `x·σ(x)`
    silu => Silu,
    /// `log(1+eˣ)`
    softplus => Softplus,
    /// −1, 0 or 1.
    sign => Sign,
    /// Round down.
    floor => Floor,
    /// Round up.
    ceil => Ceil,
    /// Round half to even (numpy's rule).
    round => Round,
);

impl Tensor {
    /// Any [`UnaryOp`] by value (the named methods call this).
    pub fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        apply(Unary(op), &[self])
    }
    /// `x·mul + add`, elementwise.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        apply(Scalar(ScalarOp::Affine { mul, add }), &[self])
    }
    /// `xᵉ`, elementwise.
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        apply(Scalar(ScalarOp::Powf(e)), &[self])
    }
    /// Clamps into `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        apply(Scalar(ScalarOp::Clamp { lo, hi }), &[self])
    }
    /// `x + s`
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0, s)
    }
    /// `x · s`
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    /// Φ(x), the standard normal CDF, as gelu(x)/x (and ½ at 0): reuses the exact-GELU
    /// kernel instead of adding an erf primitive.
    pub(crate) fn normal_cdf(&self) -> Result<Tensor> {
        let zero = self.eq_scalar(0.0)?;
        let safe = zero.where_cond(&self.ones_like()?, self)?;
        let phi = safe.gelu()?.div(&safe)?;
        zero.where_cond(&self.full_like(0.5)?, &phi)
    }
    /// PyTorch's `softplus(x, beta, threshold)`: `log(1 + e^{βx}) / β`, and `x` itself where
    /// `βx > threshold` (where the two agree to within rounding).
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![-1.0f64, 0.0, 30.0], 3, Device::Cpu)?;
    /// let y = x.softplus_with(2.0, 20.0)?.to_vec_f64()?;
    /// assert!((y[1] - 2f64.ln() / 2.0).abs() < 1e-15 && y[2] == 30.0);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn softplus_with(&self, beta: f64, threshold: f64) -> Result<Tensor> {
        if !(beta.is_finite() && beta != 0.0) || threshold.is_nan() {
            return Err(Error::msg(format!(
                "softplus: needs a finite non-zero beta, got beta {beta}, threshold {threshold}"
            )));
        }
        let bx = self.mul_scalar(beta)?;
        let soft = bx.softplus()?.mul_scalar(1.0 / beta)?;
        bx.gt_scalar(threshold)?.where_cond(self, &soft)
    }
    /// A tensor of this one's shape, dtype and device filled with `v`.
    pub fn full_like(&self, v: f64) -> Result<Tensor> {
        Tensor::full(v, self.shape(), self.dtype(), self.device())
    }
}
