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
///
/// With a `padding_idx` (PyTorch's option), that row starts at zero and never gets a gradient,
/// so it stays what it is.
#[derive(Clone)]
pub struct Embedding {
    weight: Tensor,
    padding_idx: Option<usize>,
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
        Ok(Embedding { weight, padding_idx: None })
    }
    /// PyTorch's `padding_idx`: zeroes row `idx` of the table now and keeps every gradient
    /// from it. An `Err` when `idx` is not a row.
    ///
    /// ```
    /// use tensorforge::{Tensor, Device, nn::{Embedding, Module}};
    /// let e = Embedding::new(5, 2, Device::Cpu)?.padding_idx(0)?;
    /// let ids = Tensor::from_vec(vec![0i64, 3, 0], 3, Device::Cpu)?;
    /// e.forward(&ids)?.sum_all()?.backward()?;
    /// let g = e.weight().grad().unwrap().to_vec_f64()?;
    /// assert_eq!((&g[0..2], &g[6..8]), (&[0.0, 0.0][..], &[1.0, 1.0][..]));
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn padding_idx(mut self, idx: usize) -> Result<Embedding> {
        let num = self.weight.dims()[0];
        if idx >= num {
            return Err(Error::IndexOutOfRange { op: "Embedding padding_idx", index: idx as i64, size: num });
        }
        let zeros = Tensor::zeros((1, self.weight.dims()[1]), self.weight.dtype(), self.weight.device())?;
        self.weight.narrow(0, idx, 1)?.write_from(&zeros)?;
        self.padding_idx = Some(idx);
        Ok(self)
    }
    /// The `[num, dim]` table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        let mut rows = self.weight.index_select(0, &flat)?;
        if let Some(p) = self.padding_idx {
            // The same values, but positions holding the padding id pass no gradient back.
            let pad = flat.eq_scalar(p as f64)?.unsqueeze(1)?;
            rows = pad.where_cond(&rows.detach(), &rows)?;
        }
        let mut dims = ids.dims().to_vec();
        dims.push(self.weight.dims()[1]);
        rows.reshape(dims)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
