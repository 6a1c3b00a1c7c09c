//! Normalization layers: batch norm (running statistics, train/eval) and layer norm.

use super::Module;
use crate::{DType, Device, Error, Result, Tensor, no_grad};
use std::sync::Mutex;

/// Batch normalization over the channel axis 1 of `[N, C]` (1-d) or `[N, C, H, W]` (2-d).
/// Training normalizes with the batch's statistics and updates running averages (the
/// variance unbiased, as PyTorch); evaluation uses the running averages.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Mutex<Tensor>,
    running_var: Mutex<Tensor>,
    momentum: f64,
    eps: f64,
    training: bool,
    rank: usize,
}

impl BatchNorm {
    fn new(channels: usize, rank: usize, device: Device) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: Tensor::ones(channels, DType::F32, device)?.requires_grad(),
            bias: Tensor::zeros(channels, DType::F32, device)?.requires_grad(),
            running_mean: Mutex::new(Tensor::zeros(channels, DType::F32, device)?),
            running_var: Mutex::new(Tensor::ones(channels, DType::F32, device)?),
            momentum: 0.1,
            eps: 1e-5,
            training: true,
            rank,
        })
    }
    /// Over `[N, C]` inputs.
    pub fn new_1d(channels: usize, device: Device) -> Result<BatchNorm> {
        BatchNorm::new(channels, 2, device)
    }
    /// Over `[N, C, H, W]` inputs.
    pub fn new_2d(channels: usize, device: Device) -> Result<BatchNorm> {
        BatchNorm::new(channels, 4, device)
    }
    /// The running mean and variance (copies).
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        let m = self.running_mean.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let v = self.running_var.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (m, v)
    }
}

/// `[C]` → the shape that broadcasts along axis 1 of a rank-`rank` input.
fn per_channel(t: &Tensor, rank: usize) -> Result<Tensor> {
    let mut d = vec![1; rank];
    d[1] = t.elem_count();
    t.reshape(d)
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.elem_count();
        if x.rank() != self.rank || x.dims()[1] != c {
            return Err(Error::BadShape {
                op: "BatchNorm",
                msg: format!("expected rank {} with {c} channels, got {:?}", self.rank, x.shape()),
            });
        }
        let axes: Vec<isize> = (0..self.rank as isize).filter(|&a| a != 1).collect();
        let (mean, var) = if self.training {
            let n: usize = axes.iter().map(|&a| x.dims()[a as usize]).product();
            if n < 2 {
                return Err(Error::BadShape {
                    op: "BatchNorm",
                    msg: "training needs more than one value per channel".into(),
                });
            }
            let mean = x.mean_keepdim(&axes)?;
            let var = x.sub(&mean)?.sqr()?.mean_keepdim(&axes)?;
            no_grad(|| -> Result<()> {
                let m = self.momentum;
                let mut rm = self.running_mean.lock().unwrap_or_else(|e| e.into_inner());
                let mut rv = self.running_var.lock().unwrap_or_else(|e| e.into_inner());
                let bm = mean.flatten_all()?.to_dtype(rm.dtype())?;
                let bv = var.flatten_all()?.affine(n as f64 / (n - 1) as f64, 0.0)?.to_dtype(rv.dtype())?;
                *rm = rm.affine(1.0 - m, 0.0)?.add(&bm.affine(m, 0.0)?)?;
                *rv = rv.affine(1.0 - m, 0.0)?.add(&bv.affine(m, 0.0)?)?;
                Ok(())
            })?;
            (mean, var)
        } else {
            let (m, v) = self.running_stats();
            (per_channel(&m.to_dtype(x.dtype())?, self.rank)?, per_channel(&v.to_dtype(x.dtype())?, self.rank)?)
        };
        let xhat = x.sub(&mean)?.mul(&var.add_scalar(self.eps)?.rsqrt()?)?;
        let w = per_channel(&self.weight.to_dtype(x.dtype())?, self.rank)?;
        let b = per_channel(&self.bias.to_dtype(x.dtype())?, self.rank)?;
        xhat.mul(&w)?.add(&b)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// Layer normalization over the last `normalized.len()` axes, with a learned scale and shift.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    normalized: Vec<usize>,
    eps: f64,
}

impl LayerNorm {
    /// Normalizes over trailing axes of shape `normalized`.
    pub fn new(normalized: &[usize], device: Device) -> Result<LayerNorm> {
        if normalized.is_empty() {
            return Err(Error::msg("LayerNorm: normalized shape is empty (give the trailing axes to normalize over)"));
        }
        Ok(LayerNorm {
            weight: Tensor::ones(normalized.to_vec(), DType::F32, device)?.requires_grad(),
            bias: Tensor::zeros(normalized.to_vec(), DType::F32, device)?.requires_grad(),
            normalized: normalized.to_vec(),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.normalized.len();
        if x.rank() < k || x.dims()[x.rank() - k..] != self.normalized[..] {
            return Err(Error::BadShape {
                op: "LayerNorm",
                msg: format!("trailing dims of {:?} are not {:?}", x.shape(), self.normalized),
            });
        }
        let axes: Vec<isize> = (x.rank() - k..x.rank()).map(|a| a as isize).collect();
        let mean = x.mean_keepdim(&axes)?;
        let centered = x.sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(&axes)?;
        let xhat = centered.mul(&var.add_scalar(self.eps)?.rsqrt()?)?;
        xhat.mul(&self.weight.to_dtype(x.dtype())?)?.add(&self.bias.to_dtype(x.dtype())?)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }
}
