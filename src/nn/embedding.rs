//! Lookup tables of vectors.

use super::Module;
use crate::param::{Init, ParameterStore};
use crate::{DType, Device, Error, Result, Tensor};

/// Maps i64 ids (any shape) to rows of a `[num, dim]` table: the output has shape
/// `ids.dims() + [dim]`. The backward is an `index_add`, so an id used `k` times receives
/// the sum of its `k` upstream gradients.
///
/// ```
/// use tensorforge::{Tensor, Device, nn::{Embedding, Module}};
/// let e = Embedding::new(10, 4, Device::Cpu)?;
/// let ids = Tensor::from_vec(vec![1i64, 1, 2, 7, 0, 3], (2, 3), Device::Cpu)?;
/// assert_eq!(e.forward(&ids)?.dims(), &[2, 3, 4]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// A table of `num` vectors of size `dim`, f32, standard normal (PyTorch's init).
    pub fn new(num: usize, dim: usize, device: Device) -> Result<Embedding> {
        Embedding::from_tensor(Tensor::randn(0.0, 1.0, (num, dim), DType::F32, device)?.requires_grad())
    }
    /// A table stored in `store` as `{prefix}.weight`.
    pub fn from_store(store: &mut ParameterStore, prefix: &str, num: usize, dim: usize) -> Result<Embedding> {
        Embedding::from_tensor(store.get_or_init(
            &format!("{prefix}.weight"),
            (num, dim),
            Init::Normal { mean: 0.0, std: 1.0 },
        )?)
    }
    /// A table over a given `[num, dim]` weight.
    pub fn from_tensor(weight: Tensor) -> Result<Embedding> {
        if weight.rank() != 2 {
            return Err(Error::BadShape {
                op: "Embedding",
                msg: format!("weight must be [num, dim], got {:?}", weight.shape()),
            });
        }
        Ok(Embedding { weight })
    }
    /// The `[num, dim]` table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        let rows = self.weight.index_select(0, &flat)?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.weight.dims()[1]);
        rows.reshape(dims)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
