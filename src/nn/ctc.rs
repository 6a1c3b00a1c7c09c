//! Connectionist temporal classification loss (Graves et al., 2006), as in PyTorch's
//! `nn.CTCLoss`: the negative log-likelihood of a target label sequence summed over every
//! alignment of it to the input frames (labels repeated, blanks between and around them).
//!
//! The forward–backward recursion is a backend primitive ([`crate::backend::BackendStorage::ctc_loss`])
//! that returns the per-sample loss and its gradient together; the autograd op keeps that
//! gradient and scales it by the upstream gradient in `backward`.
//!
//! ```
//! use tensorforge::{Tensor, Device, nn::CtcLoss};
//! // 4 frames, batch 1, classes {blank, a, b}: uniform predictions.
//! let lp = Tensor::full((1.0f64 / 3.0).ln(), (4, 1, 3), tensorforge::DType::F64, Device::Cpu)?.requires_grad();
//! let targets = Tensor::from_vec(vec![1i64, 2], (1, 2), Device::Cpu)?;
//! let loss = CtcLoss::new().loss(&lp, &targets, &[4], &[2])?;
//! loss.backward()?;
//! assert!(loss.item()? > 0.0 && lp.grad().is_some());
//! # Ok::<(), tensorforge::Error>(())
//! ```

use super::Reduction;
use crate::autograd::{Gradients, Operation, apply};
use crate::{DType, Device, Error, Result, Tensor};
use std::sync::Mutex;

/// The per-sample CTC loss as an autograd op: input `log_probs` `[T, N, C]`, output `[N]`.
/// The targets and lengths are data, not differentiated.
struct CtcOp {
    targets: Tensor,
    input_lengths: Vec<usize>,
    target_lengths: Vec<usize>,
    blank: usize,
    zero_infinity: bool,
    /// `∂loss_n/∂log_probs`, computed by the forward kernel alongside the loss.
    grad: Mutex<Option<Tensor>>,
}

impl Operation for CtcOp {
    fn name(&self) -> &str {
        "ctc_loss"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let lp = x[0];
        let (loss, grad) = lp.storage().ctc_loss(
            lp.layout(),
            &self.targets.storage(),
            self.targets.layout(),
            &self.input_lengths,
            &self.target_lengths,
            self.blank,
        )?;
        let n = self.input_lengths.len();
        let mut loss = Tensor::from_contiguous(loss, n);
        if self.zero_infinity {
            // The kernel already gives impossible samples a zero gradient; zero their loss too.
            let inf = loss.eq_scalar(f64::INFINITY)?;
            loss = inf.where_cond(&loss.zeros_like()?, &loss)?;
        }
        *self.grad.lock().map_err(|_| Error::msg("ctc_loss: gradient lock poisoned"))? =
            Some(Tensor::from_contiguous(grad, lp.shape().clone()));
        Ok(loss)
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let local = self
            .grad
            .lock()
            .map_err(|_| Error::msg("ctc_loss: gradient lock poisoned"))?
            .take()
            .ok_or_else(|| Error::Autograd("ctc_loss: backward ran twice".into()))?;
        let n = self.input_lengths.len();
        grads.accumulate(&x[0], local.mul(&g.reshape((1, n, 1))?)?)
    }
}

/// CTC loss options; the defaults are PyTorch's (blank 0, mean reduction, no zero-infinity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtcLoss {
    /// The class index of the blank.
    pub blank: usize,
    /// `Mean` divides each sample's loss by its target length (at least 1), then averages
    /// over the batch (PyTorch's convention); `Sum` adds the per-sample losses; `None` returns
    /// them, `[N]`.
    pub reduction: Reduction,
    /// Replace infinite losses (targets too long for their input) and their gradients by 0.
    pub zero_infinity: bool,
}

impl CtcLoss {
    /// Blank 0, mean reduction.
    pub fn new() -> Self {
        Self::default()
    }

    /// The loss of `log_probs` `[T, N, C]` (log-softmax outputs, f32 or f64) against
    /// `targets` `[N, S]` (i64, padded; row `n` holds `target_lengths[n]` labels, none of them
    /// the blank), where sample `n` uses its first `input_lengths[n]` frames.
    ///
    /// `targets` may also be PyTorch's concatenated form: one `[Σ target_lengths]` vector of
    /// every sample's labels in turn.
    ///
    /// ```
    /// use tensorforge::{Tensor, Device, nn::CtcLoss};
    /// let lp = Tensor::full((1.0f64 / 3.0).ln(), (4, 2, 3), tensorforge::DType::F64, Device::Cpu)?;
    /// let padded = Tensor::from_vec(vec![1i64, 2, 2, 0], (2, 2), Device::Cpu)?;
    /// let concatenated = Tensor::from_vec(vec![1i64, 2, 2], 3, Device::Cpu)?;
    /// let ctc = CtcLoss::new();
    /// let a = ctc.loss(&lp, &padded, &[4, 4], &[2, 1])?.item()?;
    /// assert_eq!(a, ctc.loss(&lp, &concatenated, &[4, 4], &[2, 1])?.item()?);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn loss(
        &self,
        log_probs: &Tensor,
        targets: &Tensor,
        input_lengths: &[usize],
        target_lengths: &[usize],
    ) -> Result<Tensor> {
        let bad = |msg: String| Error::BadShape { op: "ctc_loss", msg };
        if log_probs.rank() != 3 {
            return Err(bad(format!("log_probs must be [T, N, C], got {:?}", log_probs.dims())));
        }
        if targets.dtype() != DType::I64 {
            return Err(Error::UnsupportedDType { op: "ctc_loss (targets)", dtype: targets.dtype() });
        }
        let padded;
        let targets = if targets.rank() == 1 {
            // Concatenated: lay the samples out as padded rows (the padding is never read).
            let total: usize = target_lengths.iter().sum();
            if total != targets.elem_count() {
                return Err(bad(format!(
                    "concatenated targets hold {} labels but target_lengths sum to {total}",
                    targets.elem_count()
                )));
            }
            let flat = targets.to_vec::<i64>()?;
            let s = target_lengths.iter().copied().max().unwrap_or(0).max(1);
            let mut rows = vec![self.blank as i64; target_lengths.len() * s];
            let mut at = 0;
            for (i, &len) in target_lengths.iter().enumerate() {
                rows[i * s..i * s + len].copy_from_slice(&flat[at..at + len]);
                at += len;
            }
            padded = Tensor::from_vec(rows, (target_lengths.len(), s), Device::Cpu)?.to_device(targets.device())?;
            &padded
        } else {
            targets
        };
        if targets.rank() != 2 {
            return Err(bad(format!(
                "targets must be [N, S] (padded) or concatenated [Σ lengths], got {:?}",
                targets.dims()
            )));
        }
        if targets.device() != log_probs.device() {
            return Err(Error::DeviceMismatch { op: "ctc_loss", lhs: log_probs.device(), rhs: targets.device() });
        }
        // Validated here, on the host, so that no backend kernel indexes with a bad label.
        let (c, s) = (log_probs.dims()[2], targets.dims()[1]);
        let tv = targets.to_vec::<i64>()?;
        for (i, &len) in target_lengths.iter().enumerate() {
            let row = tv.get(i * s..i * s + len.min(s)).unwrap_or(&[]);
            if let Some(&v) = row.iter().find(|&&v| v < 0 || v as usize >= c || v as usize == self.blank) {
                return Err(bad(format!("target {v} of sample {i} is not a non-blank class of {c}")));
            }
        }
        let op = CtcOp {
            targets: targets.detach(),
            input_lengths: input_lengths.to_vec(),
            target_lengths: target_lengths.to_vec(),
            blank: self.blank,
            zero_infinity: self.zero_infinity,
            grad: Mutex::new(None),
        };
        let per = apply(op, &[log_probs])?;
        match self.reduction {
            Reduction::Mean => {
                let lens: Vec<f64> = target_lengths.iter().map(|&l| l.max(1) as f64).collect();
                let lens = Tensor::from_vec(lens, per.dims()[0], per.device())?.to_dtype(per.dtype())?;
                per.div(&lens)?.mean_all()
            }
            Reduction::Sum => per.sum_all(),
            Reduction::None => Ok(per),
        }
    }
}

/// [`CtcLoss::loss`] with blank 0, mean reduction and `zero_infinity` off.
pub fn ctc_loss(
    log_probs: &Tensor,
    targets: &Tensor,
    input_lengths: &[usize],
    target_lengths: &[usize],
) -> Result<Tensor> {
    CtcLoss::new().loss(log_probs, targets, input_lengths, target_lengths)
}
