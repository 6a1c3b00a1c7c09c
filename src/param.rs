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
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
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
    /// A fresh tensor of `shape` (not yet a variable), drawn from the global stream.
    pub fn create(self, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        self.create_with(&crate::Generator::global(), shape, dtype, device)
    }
    /// A fresh tensor of `shape` drawn from `generator`.
    pub fn create_with(
        self,
        generator: &crate::Generator,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        match self {
            Init::Zeros => Tensor::zeros(shape, dtype, device),
            Init::Ones => Tensor::ones(shape, dtype, device),
            Init::Constant(v) => Tensor::full(v, shape, dtype, device),
            Init::Uniform { lo, hi } => Tensor::rand_with(generator, lo, hi, shape, dtype, device),
            Init::Normal { mean, std } => Tensor::randn_with(generator, mean, std, shape, dtype, device),
            Init::KaimingUniform { fan_in } => {
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                Tensor::rand_with(generator, -b, b, shape, dtype, device)
            }
            Init::XavierUniform { fan_in, fan_out } => {
                let b = (6.0 / ((fan_in + fan_out).max(1) as f64)).sqrt();
                Tensor::rand_with(generator, -b, b, shape, dtype, device)
            }
        }
    }
}

/// Parameters by name, in creation order, all on one device with one dtype.
#[derive(Clone)]
pub struct ParameterStore {
    device: Device,
    dtype: DType,
    /// Where new parameters' initial values come from (the global stream unless set).
    generator: Option<crate::Generator>,
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    /// Names of the entries that are buffers (saved and loaded, not trained).
    buffers: std::collections::HashSet<String>,
}

/// The legacy format (read only): see `read_legacy`.
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
        ParameterStore {
            device,
            dtype,
            generator: None,
            entries: Vec::new(),
            index: HashMap::new(),
            buffers: Default::default(),
        }
    }
    /// The same store initializing new parameters from `generator` instead of the global
    /// stream: a model built from it gets the same initial values whatever other threads draw.
    pub fn with_generator(self, generator: crate::Generator) -> Self {
        ParameterStore { generator: Some(generator), ..self }
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
        let t = match &self.generator {
            Some(g) => init.create_with(g, shape, self.dtype, self.device)?,
            None => init.create(shape, self.dtype, self.device)?,
        };
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

    /// The buffer `name` (non-trainable state saved with the parameters: batch norm's running
    /// statistics), created by `make` if it does not exist yet. Buffers are in
    /// [`ParameterStore::state_dict`], saves and loads, not in [`ParameterStore::parameters`];
    /// they keep the dtype and device `make` gives them. A parameter of that name is an `Err`.
    pub fn buffer_or_init(&mut self, name: &str, make: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        if let Some(&i) = self.index.get(name) {
            if !self.buffers.contains(name) {
                return Err(Error::msg(format!("ParameterStore: `{name}` is a parameter, not a buffer")));
            }
            return Ok(self.entries[i].1.clone());
        }
        let t = make()?.detach();
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push((name.to_string(), t.clone()));
        self.buffers.insert(name.to_string());
        Ok(t)
    }

    /// True when `name` is a buffer rather than a parameter.
    pub fn is_buffer(&self, name: &str) -> bool {
        self.buffers.contains(name)
    }

    /// The parameter `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.index.get(name).map(|&i| self.entries[i].1.clone())
    }
    /// `(name, tensor)` in creation order, buffers included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }
    /// The parameters in creation order (what an optimizer takes).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.entries.iter().filter(|(n, _)| !self.buffers.contains(n)).map(|(_, t)| t.clone()).collect()
    }
    /// Number of named tensors (parameters and buffers).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when the store is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.entries.iter().filter(|(n, _)| !self.buffers.contains(n)).map(|(_, t)| t.elem_count()).sum()
    }
    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        for (_, t) in &self.entries {
            t.zero_grad();
        }
    }

    /// `(name, parameter)` pairs in creation order (detached: the values, not the variables).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, t)| (n.clone(), t.detach())).collect()
    }

    /// The parameters by name, detached (the values, not the variables): the same as
    /// [`ParameterStore::named_tensors`], under the name modules use.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
    }

    /// Loads `state` into the existing parameters in place, as [`crate::nn::Module::load_state_dict`]
    /// does: shape mismatches are an `Err` by name before anything is written; with `strict`,
    /// so are missing and unexpected names, which are otherwise reported. Unlike
    /// [`ParameterStore::load_tensors`] it never creates parameters.
    pub fn load_state_dict(&self, state: &[(String, Tensor)], strict: bool) -> Result<crate::nn::LoadReport> {
        crate::nn::load_state(&self.named_tensors(), state, strict)
    }

    /// Writes every parameter to `path` as safetensors (any dtype, any device), so the file
    /// opens in Python's `safetensors`/PyTorch too. The creation order is kept in the
    /// metadata (safetensors itself sorts by name), so [`ParameterStore::load`] into an empty
    /// store recreates the parameters in their original order.
    ///
    /// ```
    /// use tensorforge::{Device, param::{Init, ParameterStore}};
    /// let path = std::env::temp_dir().join(format!("tf-params-doc-{}.safetensors", std::process::id()));
    /// let mut a = ParameterStore::new(Device::Cpu);
    /// a.get_or_init("w", (2, 3), Init::Normal { mean: 0.0, std: 1.0 })?;
    /// a.save(&path)?;
    /// let mut b = ParameterStore::new(Device::Cpu);
    /// b.load(&path)?;
    /// assert_eq!(b.get("w").unwrap().to_vec2::<f32>()?, a.get("w").unwrap().to_vec2::<f32>()?);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let named = self.named_tensors();
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::io::write_safetensors(path, &refs, Some(&self.order_metadata()))
    }

    /// The creation order, and which names are buffers, as safetensors metadata.
    pub(crate) fn order_metadata(&self) -> BTreeMap<String, String> {
        let mut m = order_metadata(self.entries.iter().map(|(n, _)| n.as_str()));
        let buffers: Vec<&str> =
            self.entries.iter().map(|(n, _)| n.as_str()).filter(|n| self.buffers.contains(*n)).collect();
        if !buffers.is_empty() && !buffers.iter().any(|n| n.contains('\n')) {
            m.insert(BUFFERS_KEY.to_string(), buffers.join("\n"));
        }
        m
    }

    /// Reads a file written by [`ParameterStore::save`] (safetensors; also any other
    /// safetensors file, and the version-1 `TFPARAMS` files of earlier releases). A parameter
    /// that already exists is overwritten in place (its shape must match), so optimizers and
    /// modules holding it see the loaded values; others are created. Every shape is checked
    /// before anything is written, so a bad file leaves the store as it was.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut bytes = Vec::new();
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io_err(path, e))?;
        let (named, buffers) = if bytes.starts_with(MAGIC) {
            (read_legacy(&bytes, path)?, Vec::new())
        } else {
            let (named, meta) = crate::io::safetensors::from_safetensors_bytes_with_metadata(&bytes)
                .map_err(|e| crate::io::with_path(path, e))?;
            // Names the file marks as buffers come back as buffers, not parameters.
            let buffers =
                meta.get(BUFFERS_KEY).map(|b| b.split('\n').map(str::to_string).collect()).unwrap_or_default();
            (in_saved_order(named, &meta), buffers)
        };
        self.load_into(named, &buffers)
    }

    /// Checks that every `(name, value)` can be loaded: existing names need the same shape.
    pub(crate) fn check_tensors(&self, named: &[(String, Tensor)]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (name, t) in named {
            if !seen.insert(name.as_str()) {
                return Err(Error::msg(format!("ParameterStore::load: parameter `{name}` appears twice")));
            }
            if let Some(p) = self.get(name)
                && p.shape() != t.shape()
            {
                return Err(Error::ShapeMismatch {
                    op: "ParameterStore::load",
                    lhs: p.shape().clone(),
                    rhs: t.shape().clone(),
                });
            }
        }
        Ok(())
    }

    /// Loads named values: existing parameters are overwritten in place, others created.
    /// All shapes are checked first, so an `Err` leaves the store untouched.
    pub fn load_tensors(&mut self, named: Vec<(String, Tensor)>) -> Result<()> {
        self.load_into(named, &[])
    }

    /// [`ParameterStore::load_tensors`], creating the new names listed in `buffers` as
    /// buffers (floats in the store's dtype, integers as they are, on the store's device).
    fn load_into(&mut self, named: Vec<(String, Tensor)>, buffers: &[String]) -> Result<()> {
        self.check_tensors(&named)?;
        for (name, t) in named {
            match self.get(&name) {
                // Restoring a snapshot of itself is fine: write_from copies an aliasing source.
                Some(p) => p.write_from(&t)?,
                None if buffers.contains(&name) => {
                    let (dtype, device) = (self.dtype, self.device);
                    self.buffer_or_init(&name, || {
                        let t = t.to_device(device)?;
                        if t.dtype().is_float() { t.to_dtype(dtype)?.copy() } else { t.copy() }
                    })?;
                }
                None => {
                    self.insert(&name, t)?;
                }
            }
        }
        Ok(())
    }
}

/// Metadata key of the creation order in files written by [`ParameterStore::save`].
const ORDER_KEY: &str = "tensorforge.parameter_order";
/// Metadata key of the names that are buffers (newline-separated).
const BUFFERS_KEY: &str = "tensorforge.buffers";

/// `names` in order as safetensors metadata (joined by newlines; omitted when a name contains
/// one, and then loading falls back to sorted order).
pub(crate) fn order_metadata<'a>(names: impl Iterator<Item = &'a str> + Clone) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if !names.clone().any(|n| n.contains('\n')) {
        m.insert(ORDER_KEY.to_string(), names.collect::<Vec<_>>().join("\n"));
    }
    m
}

/// `named` (sorted by name, as safetensors returns it) in the saved creation order when the
/// metadata holds a permutation of the names; else unchanged.
pub(crate) fn in_saved_order(
    mut named: Vec<(String, Tensor)>,
    meta: &BTreeMap<String, String>,
) -> Vec<(String, Tensor)> {
    let Some(order) = meta.get(ORDER_KEY) else { return named };
    let order: Vec<&str> = order.split('\n').collect();
    let pos: HashMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    if pos.len() != named.len() || named.iter().any(|(n, _)| !pos.contains_key(n.as_str())) {
        return named;
    }
    named.sort_by_key(|(n, _)| pos[n.as_str()]);
    named
}

/// The version-1 `TFPARAMS` format of earlier releases: magic, version, count, then per
/// parameter its name, dtype code (0 f32, 1 f64), rank, dims and raw little-endian values.
fn read_legacy(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut r = Reader { b: bytes, at: 0, path };
    if r.take(8)? != MAGIC {
        return Err(io_err(path, "not a tensorforge parameter file (bad magic)"));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(io_err(path, format!("unsupported version {version}")));
    }
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = r.u32()? as usize;
        let name = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| io_err(path, "a name is not UTF-8"))?;
        let code = r.take(1)?[0];
        let rank = r.u32()? as usize;
        if rank > crate::shape::MAX_DIMS {
            return Err(io_err(path, format!("`{name}` has rank {rank}")));
        }
        let dims = (0..rank).map(|_| r.u64().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
        let n =
            dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| io_err(path, "shape overflows"))?;
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
        out.push((name, t));
    }
    if r.at != bytes.len() {
        return Err(io_err(path, "trailing bytes after the last parameter"));
    }
    Ok(out)
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
