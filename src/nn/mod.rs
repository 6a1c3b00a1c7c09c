//! Neural-network building blocks: the [`Module`] trait, layers, activations and losses.
//!
//! Layers hold their parameters as variables ([`Tensor::requires_grad`]); a forward pass is
//! ordinary tensor ops, so autograd needs nothing layer-specific.
//!
//! ```
//! use tensorforge::{Tensor, Device, DType};
//! use tensorforge::nn::{Linear, Module, ReLU, Sequential, CrossEntropyLoss, Loss};
//! tensorforge::manual_seed(0);
//! let mlp = Sequential::new()
//!     .add(Linear::new(4, 8, Device::Cpu)?)
//!     .add(ReLU)
//!     .add(Linear::new(8, 3, Device::Cpu)?);
//! let x = Tensor::randn(0.0, 1.0, (5, 4), DType::F32, Device::Cpu)?;
//! let y = Tensor::from_vec(vec![0i64, 2, 1, 1, 0], 5, Device::Cpu)?;
//! let loss = CrossEntropyLoss::new().loss(&mlp.forward(&x)?, &y)?;
//! loss.backward()?;
//! assert!(mlp.parameters().iter().all(|p| p.grad().is_some()));
//! # Ok::<(), tensorforge::Error>(())
//! ```

mod activation;
mod conv;
mod ctc;
mod dropout;
mod embedding;
mod linear;
pub mod loss;
mod norm;
mod rnn;
mod state;

pub use activation::{GELU, ReLU, SiLU, Sigmoid, Tanh};
pub use conv::{AdaptiveAvgPool2d, AvgPool2d, Conv1d, Conv2d, ConvTranspose2d, Flatten, MaxPool2d};
pub use ctc::{CtcLoss, ctc_loss};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use loss::{
    BceWithLogitsLoss, CrossEntropyLoss, HuberLoss, Loss, MseLoss, NllLoss, Reduction, SmoothL1Loss, SquareError,
};
pub use norm::{BatchNorm, LayerNorm};
pub use rnn::{GRU, GRUCell, LSTM, LSTMCell, Nonlinearity, RNN, RNNCell, RnnOptions};
pub use state::{LoadReport, load_state};

use crate::{Result, Tensor};

/// A layer or a model: a function of one tensor with (possibly) trainable parameters.
pub trait Module {
    /// Applies the module.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The trainable parameters, named (`"weight"`, `"0.bias"`, …), in a stable order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// The trainable parameters (what an optimizer takes).
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, p)| p).collect()
    }
    /// Non-trainable state that is saved with the parameters (batch norm's running
    /// statistics), named as PyTorch names its buffers.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Parameters and buffers by PyTorch's dotted names (`0.weight`, `weight_ih_l0`,
    /// `running_mean`), detached views of the live values: what PyTorch's `state_dict()` holds
    /// for the equivalent model. Save it with [`crate::io::save_named`].
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.named_parameters().into_iter().chain(self.named_buffers()).map(|(n, t)| (n, t.detach())).collect()
    }
    /// Loads `state` (e.g. [`crate::io::load_named`] of a file PyTorch's
    /// `safetensors.torch.save_file(model.state_dict(), …)` wrote) into the parameters and
    /// buffers in place, so optimizers holding them see the new values. Shape mismatches are
    /// an `Err` naming the tensor, checked before anything is written; with `strict`, so are
    /// missing and unexpected names, which are otherwise returned in the report.
    fn load_state_dict(&self, state: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        load_state(&self.state_dict(), state, strict)
    }
    /// Switches training-only behaviour (dropout) on or off. Modules without any ignore it.
    fn set_training(&mut self, _training: bool) {}
    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }
}

/// The parameters of a hand-written model's child modules under their field names
/// (`encoder.0.weight`), for its [`Module::named_parameters`]; pair it with
/// [`children_buffers`] so buffers (batch norm's statistics) are not forgotten.
///
/// ```
/// use tensorforge::nn::{BatchNorm, Linear, Module, children_buffers, children_parameters};
/// use tensorforge::{Device, Result, Tensor};
/// struct Net { body: Linear, norm: BatchNorm }
/// impl Module for Net {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> { self.norm.forward(&self.body.forward(x)?) }
///     fn named_parameters(&self) -> Vec<(String, Tensor)> {
///         children_parameters(&[("body", &self.body), ("norm", &self.norm)])
///     }
///     fn named_buffers(&self) -> Vec<(String, Tensor)> {
///         children_buffers(&[("body", &self.body), ("norm", &self.norm)])
///     }
/// }
/// let net = Net { body: Linear::new(3, 2, Device::Cpu)?, norm: BatchNorm::new_1d(2, Device::Cpu)? };
/// let names: Vec<String> = net.state_dict().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["body.weight", "body.bias", "norm.weight", "norm.bias",
///                    "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn children_parameters(children: &[(&str, &dyn Module)]) -> Vec<(String, Tensor)> {
    children
        .iter()
        .flat_map(|(c, m)| m.named_parameters().into_iter().map(move |(n, t)| (format!("{c}.{n}"), t)))
        .collect()
}

/// The buffers of a hand-written model's child modules under their field names; see
/// [`children_parameters`].
pub fn children_buffers(children: &[(&str, &dyn Module)]) -> Vec<(String, Tensor)> {
    children
        .iter()
        .flat_map(|(c, m)| m.named_buffers().into_iter().map(move |(n, t)| (format!("{c}.{n}"), t)))
        .collect()
}

/// Modules applied one after another.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module + Send + Sync>>,
}

impl Sequential {
    /// An empty sequence (the identity).
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a module (builder style).
    // PyTorch's and candle's builder name; it is not arithmetic, so no `Add` impl.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, m: impl Module + Send + Sync + 'static) -> Self {
        self.layers.push(Box::new(m));
        self
    }
    /// Appends a module.
    pub fn push(&mut self, m: impl Module + Send + Sync + 'static) {
        self.layers.push(Box::new(m));
    }
    /// Number of modules.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// True when there are no modules.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        Ok(h)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.named_parameters().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.named_buffers().into_iter().map(|(n, p)| (format!("{i}.{n}"), p)));
        }
        out
    }
    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }
}
