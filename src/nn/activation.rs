//! Activation functions as modules, so they slot into a [`Sequential`](super::Sequential).

use super::Module;
use crate::{Result, Tensor};

macro_rules! activation {
    ($($(#[$doc:meta])* $name:ident => $method:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name;
            impl Module for $name {
                fn forward(&self, x: &Tensor) -> Result<Tensor> {
                    x.$method()
                }
            }
        )*
    };
}

activation!(
    /// `max(x, 0)`
    ReLU => relu,
    /// `tanh x`
    Tanh => tanh,
    /// `1/(1+e⁻ˣ)`
    Sigmoid => sigmoid,
    /// GELU, exact form `x·Φ(x)` (PyTorch's default).
    GELU => gelu,
    /// `x·σ(x)` (a.k.a. swish).
    SiLU => silu,
);
