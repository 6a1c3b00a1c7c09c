//! Normalization layers: batch norm (running statistics, train/eval) and layer norm.

use super::Module;
use crate::{DType, Device, Error, Result, Tensor, no_grad};

/// Batch normalization over the channel axis 1 of `[N, C]` (1-d) or `[N, C, H, W]` (2-d),
/// built on [`Tensor::batch_norm`]. Training normalizes with the batch's statistics and
/// updates running averages (the variance unbiased, as PyTorch); evaluation uses the running
/// averages.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    /// PyTorch's buffer of the same name: training batches seen (an i64 scalar on the CPU).
    num_batches_tracked: Tensor,
    momentum: f64,
    eps: f64,
    training: bool,
    rank: usize,
}

impl BatchNorm {
    fn new(channels: usize, rank: usize, device: Device) -> Result<BatchNorm> {
        // A store of its own: the same parameters, buffers and defaults as `from_store`.
        BatchNorm::from_store(&mut crate::param::ParameterStore::new(device), "bn", channels, rank - 2)
    }
    /// A batch norm whose weight and bias are parameters of `store` (`{prefix}.weight`,
    /// `{prefix}.bias`) and whose running statistics are its buffers (`{prefix}.running_mean`,
    /// `.running_var`, `.num_batches_tracked`), so the store's state dict and checkpoints hold
    /// them all. `spatial_dims` is 0 for `[N, C]` inputs (BatchNorm1d), 2 for `[N, C, H, W]`.
    pub fn from_store(
        store: &mut crate::param::ParameterStore,
        prefix: &str,
        channels: usize,
        spatial_dims: usize,
    ) -> Result<BatchNorm> {
        use crate::param::Init;
        let (dtype, device) = (store.dtype(), store.device());
        Ok(BatchNorm {
            weight: store.get_or_init(&format!("{prefix}.weight"), channels, Init::Ones)?,
            bias: store.get_or_init(&format!("{prefix}.bias"), channels, Init::Zeros)?,
            running_mean: store
                .buffer_or_init(&format!("{prefix}.running_mean"), || Tensor::zeros(channels, dtype, device))?,
            running_var: store
                .buffer_or_init(&format!("{prefix}.running_var"), || Tensor::ones(channels, dtype, device))?,
            num_batches_tracked: store.buffer_or_init(&format!("{prefix}.num_batches_tracked"), || {
                Tensor::from_vec(vec![0i64], (), Device::Cpu)
            })?,
            momentum: 0.1,
            eps: 1e-5,
            training: true,
            rank: 2 + spatial_dims,
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
        let copy = |t: &Tensor| no_grad(|| t.copy()).unwrap_or_else(|_| t.clone());
        (copy(&self.running_mean), copy(&self.running_var))
    }
}

/// `[C]` → the shape that broadcasts along axis 1 of a rank-`rank` input.
fn per_channel(t: &Tensor, rank: usize) -> Result<Tensor> {
    let mut d = vec![1; rank];
    d[1] = t.elem_count();
    t.reshape(d)
}

impl Tensor {
    /// PyTorch's `batch_norm` over the channel axis 1 of `[N, C, …]`.
    ///
    /// Training (`training = true`) normalizes with the batch's mean and biased variance and,
    /// when `running_mean`/`running_var` (`[C]`) are given, updates them **in place** as
    /// PyTorch does: `r ← (1 − momentum)·r + momentum·batch`, with the *unbiased* batch
    /// variance. Evaluation normalizes with the running statistics (then required). `weight`
    /// and `bias` (`[C]`) scale and shift when given.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device, DType};
    /// let x = Tensor::from_vec(vec![1.0f64, 3.0], (2, 1), Device::Cpu)?;
    /// let (rm, rv) = (Tensor::zeros(1, DType::F64, Device::Cpu)?, Tensor::ones(1, DType::F64, Device::Cpu)?);
    /// let y = x.batch_norm(Some(&rm), Some(&rv), None, None, true, 0.1, 0.0)?;
    /// assert_eq!(y.to_vec_f64()?, vec![-1.0, 1.0]);
    /// assert_eq!((rm.to_vec_f64()?, rv.to_vec_f64()?), (vec![0.2], vec![0.9 + 0.1 * 2.0]));
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        training: bool,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let r = self.rank();
        let bad = |msg: String| Error::BadShape { op: "batch_norm", msg };
        if r < 2 {
            return Err(bad(format!("needs [N, C, ...], got {:?}", self.shape())));
        }
        let c = self.dims()[1];
        for (name, t) in
            [("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)]
        {
            if let Some(t) = t
                && t.dims() != [c]
            {
                return Err(bad(format!("{name} must be [{c}], got {:?}", t.shape())));
            }
        }
        if !(eps >= 0.0 && eps.is_finite() && momentum.is_finite()) {
            return Err(Error::msg(format!("batch_norm: bad eps {eps} or momentum {momentum}")));
        }
        let axes: Vec<isize> = (0..r as isize).filter(|&a| a != 1).collect();
        let (mean, var) = if training {
            let n: usize = axes.iter().map(|&a| self.dims()[a as usize]).product();
            if n < 2 {
                return Err(bad("training needs more than one value per channel".into()));
            }
            let mean = self.mean_keepdim(&axes)?;
            let var = self.sub(&mean)?.sqr()?.mean_keepdim(&axes)?;
            no_grad(|| -> Result<()> {
                if let Some(rm) = running_mean {
                    let bm = mean.flatten_all()?.to_dtype(rm.dtype())?;
                    rm.write_from(&rm.affine(1.0 - momentum, 0.0)?.add(&bm.affine(momentum, 0.0)?)?)?;
                }
                if let Some(rv) = running_var {
                    let bv = var.flatten_all()?.affine(n as f64 / (n - 1) as f64, 0.0)?.to_dtype(rv.dtype())?;
                    rv.write_from(&rv.affine(1.0 - momentum, 0.0)?.add(&bv.affine(momentum, 0.0)?)?)?;
                }
                Ok(())
            })?;
            (mean, var)
        } else {
            let (Some(m), Some(v)) = (running_mean, running_var) else {
                return Err(Error::msg("batch_norm: evaluation needs running_mean and running_var"));
            };
            (per_channel(&m.to_dtype(self.dtype())?, r)?, per_channel(&v.to_dtype(self.dtype())?, r)?)
        };
        let mut y = self.sub(&mean)?.mul(&var.add_scalar(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            y = y.mul(&per_channel(&w.to_dtype(self.dtype())?, r)?)?;
        }
        if let Some(b) = bias {
            y = y.add(&per_channel(&b.to_dtype(self.dtype())?, r)?)?;
        }
        Ok(y)
    }
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
        let y = x.batch_norm(
            Some(&self.running_mean),
            Some(&self.running_var),
            Some(&self.weight),
            Some(&self.bias),
            self.training,
            self.momentum,
            self.eps,
        )?;
        if self.training {
            let n = self.num_batches_tracked.to_scalar::<i64>()?;
            self.num_batches_tracked.write_from(&Tensor::from_vec(vec![n.saturating_add(1)], (), Device::Cpu)?)?;
        }
        Ok(y)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone()), ("bias".into(), self.bias.clone())]
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            ("running_mean".into(), self.running_mean.clone()),
            ("running_var".into(), self.running_var.clone()),
            ("num_batches_tracked".into(), self.num_batches_tracked.clone()),
        ]
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// Layer normalization over the last `normalized.len()` axes, with a learned scale and shift
/// (PyTorch's `elementwise_affine`, on by default) and `eps` (default 1e-5).
pub struct LayerNorm {
    affine: Option<(Tensor, Tensor)>,
    normalized: Vec<usize>,
    eps: f64,
}

impl LayerNorm {
    /// Normalizes over trailing axes of shape `normalized`.
    pub fn new(normalized: &[usize], device: Device) -> Result<LayerNorm> {
        LayerNorm::with_options(normalized, 1e-5, true, device)
    }
    /// PyTorch's `LayerNorm(normalized_shape, eps, elementwise_affine)`.
    pub fn with_options(normalized: &[usize], eps: f64, elementwise_affine: bool, device: Device) -> Result<LayerNorm> {
        if normalized.is_empty() {
            return Err(Error::msg("LayerNorm: normalized shape is empty (give the trailing axes to normalize over)"));
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::msg(format!("LayerNorm: eps must be finite and >= 0, got {eps}")));
        }
        let affine = if elementwise_affine {
            Some((
                Tensor::ones(normalized.to_vec(), DType::F32, device)?.requires_grad(),
                Tensor::zeros(normalized.to_vec(), DType::F32, device)?.requires_grad(),
            ))
        } else {
            None
        };
        Ok(LayerNorm { affine, normalized: normalized.to_vec(), eps })
    }
}

impl Tensor {
    /// PyTorch's `layer_norm`: normalizes over the trailing axes of shape `normalized` (biased
    /// variance, `eps` inside the square root), then scales by `weight` and shifts by `bias`
    /// when given (each of shape `normalized`).
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![1.0f64, 3.0], (1, 2), Device::Cpu)?;
    /// let y = x.layer_norm(&[2], None, None, 0.0)?.to_vec_f64()?;
    /// assert_eq!(y, vec![-1.0, 1.0]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn layer_norm(
        &self,
        normalized: &[usize],
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let k = normalized.len();
        if k == 0 || self.rank() < k || self.dims()[self.rank() - k..] != normalized[..] {
            return Err(Error::BadShape {
                op: "layer_norm",
                msg: format!("trailing dims of {:?} are not {:?}", self.shape(), normalized),
            });
        }
        let axes: Vec<isize> = (self.rank() - k..self.rank()).map(|a| a as isize).collect();
        let mean = self.mean_keepdim(&axes)?;
        let centered = self.sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(&axes)?;
        let mut y = centered.mul(&var.add_scalar(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            y = y.mul(&w.to_dtype(self.dtype())?)?;
        }
        if let Some(b) = bias {
            y = y.add(&b.to_dtype(self.dtype())?)?;
        }
        Ok(y)
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = match &self.affine {
            Some((w, b)) => (Some(w), Some(b)),
            None => (None, None),
        };
        x.layer_norm(&self.normalized, w, b, self.eps)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match &self.affine {
            Some((w, b)) => vec![("weight".into(), w.clone()), ("bias".into(), b.clone())],
            None => Vec::new(),
        }
    }
}
