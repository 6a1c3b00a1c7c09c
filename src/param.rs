//! Named, shared parameters (pytensor's Parameter store).
//!
//! A parameter is created once under a name and handed out again on every later request
//! for that name, so modules built step by step (an RNN cell per time step) share one
//! variable and its gradient sums over all uses.
//!
//! ```
//! use tensorforge::{Device, param::{Init, ParameterStore}};
//! let mut store = ParameterStore::new(Device::Cpu);
//! let a = store.get_or_init("rnn.w", (4, 4), Init::Normal { mean: 0.0, std: 0.1 })?;
//! let b = store.get_or_init("rnn.w", (4, 4), Init::Zeros)?; // the same variable
//! assert_eq!(a.id(), b.id());
//! assert_eq!(store.num_parameters(), 16);
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::{DType, Device, Error, Result, Shape, Tensor};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

/// How a new parameter is filled (draws use the global seeded stream).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// One value everywhere.
    Constant(f64),
    /// Uniform in `[lo, hi)`.
    Uniform {
        /// Lower bound (inclusive).
        lo: f64,
        /// Upper bound (exclusive).
        hi: f64,
    },
    /// Normal.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Uniform in `±1/√fan_in`: PyTorch's default for Linear (Kaiming-uniform, `a = √5`).
    KaimingUniform {
        /// Inputs per output unit.
        fan_in: usize,
    },
    /// Glorot: uniform in `±√(6/(fan_in + fan_out))`.
    XavierUniform {
        /// Inputs per output unit.
        fan_in: usize,
        /// Outputs per input unit.
        fan_out: usize,
    },
}

impl Init {
    /// A fresh tensor of `shape` (not yet a variable).
    pub fn create(self, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match self {
            Init::Zeros => Tensor::zeros(shape, dtype, device),
            Init::Ones => Tensor::ones(shape, dtype, device),
            Init::Constant(v) => Tensor::full(v, shape, dtype, device),
            Init::Uniform { lo, hi } => Tensor::rand(lo, hi, shape, dtype, device),
            Init::Normal { mean, std } => Tensor::randn(mean, std, shape, dtype, device),
            Init::KaimingUniform { fan_in } => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                Tensor::rand(-b, b, shape, dtype, device)
            }
            Init::XavierUniform { fan_in, fan_out } => {
                let b = (6.0 / ((fan_in + fan_out).max(1) as f64)).sqrt();
                Tensor::rand(-b, b, shape, dtype, device)
            }
        }
    }
}

/// Parameters by name, in creation order, all on one device with one dtype.
#[derive(Clone)]
pub struct ParameterStore {
    device: Device,
    dtype: DType,
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

const MAGIC: &[u8; 8] = b"TFPARAMS";
const VERSION: u32 = 1;

fn io_err(path: &Path, msg: impl ToString) -> Error {
    Error::Io { context: format!("parameter file {}", path.display()), msg: msg.to_string() }
}

impl ParameterStore {
    /// An empty f32 store on `device`.
    pub fn new(device: Device) -> Self {
        Self::with_dtype(device, DType::F32)
    }
    /// An empty store whose new parameters get `dtype` (a float type).
    pub fn with_dtype(device: Device, dtype: DType) -> Self {
        ParameterStore { device, dtype, entries: Vec::new(), index: HashMap::new() }
    }
    /// The device new parameters are created on.
    pub fn device(&self) -> Device {
        self.device
    }
    /// The dtype new parameters are created with.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameter `name`, created with `init` if it does not exist yet. Asking again
    /// for an existing name with another shape is an error (two layers colliding on a name).
    pub fn get_or_init(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        if let Some(&i) = self.index.get(name) {
            let p = &self.entries[i].1;
            if p.shape() != &shape {
                return Err(Error::ShapeMismatch {
                    op: "ParameterStore::get_or_init (existing name)",
                    lhs: p.shape().clone(),
                    rhs: shape,
                });
            }
            return Ok(p.clone());
        }
        let t = init.create(shape, self.dtype, self.device)?;
        self.insert(name, t)
    }

    /// Adds `value` as a new variable called `name` (an error if the name exists).
    pub fn insert(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        if self.index.contains_key(name) {
            return Err(Error::msg(format!("ParameterStore: parameter `{name}` already exists")));
        }
        // A fresh contiguous buffer of its own, so the fused optimizer can update it in place.
        let p = value.detach().to_dtype(self.dtype)?.to_device(self.device)?.copy()?.detach().requires_grad();
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push((name.to_string(), p.clone()));
        Ok(p)
    }

    /// The parameter `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.index.get(name).map(|&i| self.entries[i].1.clone())
    }
    /// `(name, parameter)` in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
    /// The parameters in creation order (what an optimizer takes).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.entries.iter().map(|(_, t)| t.clone()).collect()
    }
    /// Number of named parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.elem_count()).sum()
    }
    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        for (_, t) in &self.entries {
            t.zero_grad();
        }
    }

    /// Writes every parameter to `path` in a simple little-endian format: `TFPARAMS`,
    /// version, count, then per parameter its name, dtype, shape and raw values.
    /// f32 and f64 parameters are supported.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (name, t) in &self.entries {
            buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            let code: u8 = match t.dtype() {
                DType::F32 => 0,
                DType::F64 => 1,
                d => return Err(Error::UnsupportedDType { op: "ParameterStore::save", dtype: d }),
            };
            buf.push(code);
            buf.extend_from_slice(&(t.rank() as u32).to_le_bytes());
            for &d in t.dims() {
                buf.extend_from_slice(&(d as u64).to_le_bytes());
            }
            match code {
                0 => t.to_vec::<f32>()?.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                _ => t.to_vec::<f64>()?.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            }
        }
        let mut f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
        f.write_all(&buf).map_err(|e| io_err(path, e))
    }

    /// Reads a file written by [`ParameterStore::save`]. A parameter that already exists is
    /// overwritten in place (its shape must match), so optimizers and modules holding it see
    /// the loaded values; others are created.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut bytes = Vec::new();
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io_err(path, e))?;
        let mut r = Reader { b: &bytes, at: 0, path };
        if r.take(8)? != MAGIC {
            return Err(io_err(path, "not a tensorforge parameter file (bad magic)"));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(io_err(path, format!("unsupported version {version}")));
        }
        let count = r.u32()?;
        for _ in 0..count {
            let len = r.u32()? as usize;
            let name = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| io_err(path, "a name is not UTF-8"))?;
            let code = r.take(1)?[0];
            let rank = r.u32()? as usize;
            if rank > crate::shape::MAX_DIMS {
                return Err(io_err(path, format!("`{name}` has rank {rank}")));
            }
            let dims = (0..rank).map(|_| r.u64().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
            let n = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| io_err(path, "shape overflows"))?;
            let t = match code {
                0 => {
                    let raw = r.take(n.checked_mul(4).ok_or_else(|| io_err(path, "shape overflows"))?)?;
                    let v = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
                    Tensor::from_vec::<f32>(v, dims, Device::Cpu)?
                }
                1 => {
                    let raw = r.take(n.checked_mul(8).ok_or_else(|| io_err(path, "shape overflows"))?)?;
                    let v = raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                    Tensor::from_vec::<f64>(v, dims, Device::Cpu)?
                }
                c => return Err(io_err(path, format!("`{name}` has unknown dtype code {c}"))),
            };
            match self.get(&name) {
                Some(p) => {
                    if p.shape() != t.shape() {
                        return Err(Error::ShapeMismatch {
                            op: "ParameterStore::load",
                            lhs: p.shape().clone(),
                            rhs: t.shape().clone(),
                        });
                    }
                    let src = t.to_dtype(p.dtype())?.to_device(p.device())?;
                    src.storage().copy_strided(src.layout(), &mut p.storage_mut(), p.layout())?;
                }
                None => {
                    self.insert(&name, t)?;
                }
            }
        }
        if r.at != bytes.len() {
            return Err(io_err(path, "trailing bytes after the last parameter"));
        }
        Ok(())
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| io_err(self.path, "truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}
