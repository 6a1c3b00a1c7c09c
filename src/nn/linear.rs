//! The fully connected layer (pytensor's Affine).

use super::Module;
use crate::param::{Init, ParameterStore};
use crate::{DType, Device, Error, Result, Tensor};

/// `y = x·Wᵀ + b` over the last axis of `x`; `W` is `[out, in]` (PyTorch's layout).
///
/// ```
/// use tensorforge::{Tensor, Device, DType, nn::{Linear, Module}};
/// let l = Linear::new(3, 2, Device::Cpu)?;
/// let y = l.forward(&Tensor::ones((4, 3), DType::F32, Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[4, 2]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer with bias, f32, initialized like PyTorch: weight and bias uniform in
    /// `±1/√in` (Kaiming-uniform with `a = √5`), drawn from the global seeded stream.
    pub fn new(in_features: usize, out_features: usize, device: Device) -> Result<Linear> {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        let w = Tensor::rand(-bound, bound, (out_features, in_features), DType::F32, device)?;
        let b = Tensor::rand(-bound, bound, out_features, DType::F32, device)?;
        Linear::from_tensors(w.requires_grad(), Some(b.requires_grad()))
    }
    /// A layer whose parameters live in `store` as `{prefix}.weight` and `{prefix}.bias`
    /// (created with the PyTorch initialization on first use, shared afterwards).
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        in_features: usize,
        out_features: usize,
    ) -> Result<Linear> {
        let init = Init::KaimingUniform { fan_in: in_features };
        let w = store.get_or_init(&format!("{prefix}.weight"), (out_features, in_features), init)?;
        let b = store.get_or_init(&format!("{prefix}.bias"), out_features, init)?;
        Linear::from_tensors(w, Some(b))
    }
    /// A layer over given parameters: `weight` is `[out, in]`, `bias` `[out]`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        if weight.rank() != 2 {
            return Err(Error::BadShape {
                op: "Linear",
                msg: format!("weight must be [out, in], got {:?}", weight.shape()),
            });
        }
        if let Some(b) = &bias
            && b.dims() != [weight.dims()[0]]
        {
            return Err(Error::ShapeMismatch {
                op: "Linear (bias)",
                lhs: weight.shape().clone(),
                rhs: b.shape().clone(),
            });
        }
        Ok(Linear { weight, bias })
    }
    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// The bias, `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A transposed view: the matmul kernel takes strides, so Wᵀ costs no copy.
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}
