//! Inverted dropout.

use super::Module;
use crate::{Error, Generator, Result, Tensor};

/// In training mode, zeroes each element with probability `p` and scales the survivors by
/// `1/(1−p)`, so evaluation (the identity) needs no rescaling. The mask comes from the
/// global seeded stream ([`crate::manual_seed`]), or from the layer's own [`Generator`]
/// ([`Dropout::with_generator`]) when several models train at once. Starts in training mode.
///
/// ```
/// use tensorforge::{Tensor, Device, DType, nn::{Dropout, Module}};
/// let mut d = Dropout::new(0.5)?;
/// let x = Tensor::ones(1000, DType::F32, Device::Cpu)?;
/// let kept = d.forward(&x)?.to_vec1::<f32>()?.iter().filter(|&&v| v == 2.0).count();
/// assert!((400..600).contains(&kept));
/// d.set_training(false);
/// assert_eq!(d.forward(&x)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    training: bool,
    generator: Option<Generator>,
}

impl Dropout {
    /// Dropout with drop probability `p` in `[0, 1]`.
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::msg(format!("Dropout: p must be in [0, 1], got {p}")));
        }
        Ok(Dropout { p, training: true, generator: None })
    }
    /// The same layer drawing its masks from `generator` instead of the global stream, so
    /// its draws neither depend on nor disturb other threads' (seed it per model).
    pub fn with_generator(self, generator: Generator) -> Dropout {
        Dropout { generator: Some(generator), ..self }
    }
    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }
    /// True in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        if self.p == 1.0 {
            return x.mul_scalar(0.0);
        }
        let global;
        let g = match &self.generator {
            Some(g) => g,
            None => {
                global = Generator::global();
                &global
            }
        };
        let keep = Tensor::rand_with(g, 0.0, 1.0, x.shape(), x.dtype(), x.device())?.ge_scalar(self.p)?;
        keep.where_cond(&x.mul_scalar(1.0 / (1.0 - self.p))?, &Tensor::zeros((), x.dtype(), x.device())?)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}
