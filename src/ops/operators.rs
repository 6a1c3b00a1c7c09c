//! Arithmetic operators on tensors and scalars, as PyTorch users write them: `&a + &b`,
//! `&a * 2.0`, `1.0 - &a`, `-&a`. Each returns `Result<Tensor>` like the named method it
//! calls (broadcasting, dtype and device checks included), so chains read `(&a + &b)? * 2.0`.
//!
//! ```
//! # use tensorforge::{Tensor, Device};
//! let a = Tensor::from_vec(vec![1f64, 2., 3.], 3, Device::Cpu)?;
//! let b = Tensor::from_vec(vec![4f64, 5., 6.], 3, Device::Cpu)?;
//! let y = ((&a + &b)? * 2.0)?;
//! assert_eq!(y.to_vec1::<f64>()?, vec![10., 14., 18.]);
//! assert_eq!((1.0 - &a)?.to_vec1::<f64>()?, vec![0., -1., -2.]);
//! assert_eq!((&b / 2.0)?.to_vec1::<f64>()?, vec![2., 2.5, 3.]);
//! assert_eq!((-&a)?.to_vec1::<f64>()?, vec![-1., -2., -3.]);
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::{DType, Result, Tensor};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The dtype a division by a scalar computes in, and the dtype of its result: f32/f64
/// divide in themselves (an exact division, not a multiplication by `1/s`, which rounds
/// differently); f16/bf16 divide in f32 and round once, so a scalar their range cannot hold
/// (`x / 1e5` in f16) still divides; integer tensors give f32, as PyTorch's true division.
fn division_dtypes(x: &Tensor) -> (DType, DType) {
    match x.dtype() {
        d @ (DType::F32 | DType::F64) => (d, d),
        d @ (DType::F16 | DType::BF16) => (DType::F32, d),
        _ => (DType::F32, DType::F32),
    }
}

/// `x / s`.
fn div_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
    let (compute, out) = division_dtypes(x);
    let q = x.to_dtype(compute)?.div(&Tensor::full(s, (), compute, x.device())?)?;
    q.to_dtype(out)
}

/// `s / x`.
fn scalar_div(s: f64, x: &Tensor) -> Result<Tensor> {
    let (compute, out) = division_dtypes(x);
    Tensor::full(s, (), compute, x.device())?.div(&x.to_dtype(compute)?)?.to_dtype(out)
}

macro_rules! tensor_op {
    ($trait:ident, $method:ident, $named:ident, $with_scalar:expr, $scalar_with:expr) => {
        impl $trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$named(&self, rhs)
            }
        }
        impl $trait<Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                Tensor::$named(&self, &rhs)
            }
        }
        impl $trait<&Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$named(&self, rhs)
            }
        }
        impl $trait<Tensor> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                Tensor::$named(&self, &rhs)
            }
        }
        impl $trait<f64> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                let f: fn(&Tensor, f64) -> Result<Tensor> = $with_scalar;
                f(self, rhs)
            }
        }
        impl $trait<f64> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: f64) -> Result<Tensor> {
                <&Tensor as $trait<f64>>::$method(&self, rhs)
            }
        }
        impl $trait<&Tensor> for f64 {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                let f: fn(f64, &Tensor) -> Result<Tensor> = $scalar_with;
                f(self, rhs)
            }
        }
        impl $trait<Tensor> for f64 {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                <f64 as $trait<&Tensor>>::$method(self, &rhs)
            }
        }
    };
}

tensor_op!(Add, add, add, |x, s| x.add_scalar(s), |s, x| x.add_scalar(s));
tensor_op!(Sub, sub, sub, |x, s| x.add_scalar(-s), |s, x| x.affine(-1.0, s));
tensor_op!(Mul, mul, mul, |x, s| x.mul_scalar(s), |s, x| x.mul_scalar(s));
tensor_op!(Div, div, div, div_scalar, scalar_div);

impl Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

impl Neg for Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(&self)
    }
}
