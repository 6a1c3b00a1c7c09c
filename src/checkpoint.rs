//! Training checkpoints: parameters, optimizer state (moments, step counts, learning rate),
//! the step and epoch counters and the global RNG state, in one safetensors file, so that a
//! resumed run continues bit for bit where the interrupted one stopped.
//!
//! Tensors are named `param/<name>` and `optim/<i>/<k>` (buffer `k` of the optimizer's
//! parameter `i`); the scalars live in the safetensors `__metadata__` as decimal strings
//! (`tensorforge.checkpoint`, `step`, `epoch`, `rng.seed`, `rng.offset`, `optim.kind`,
//! `optim.lr`, `optim.steps`, `optim.buffers`, plus `user.<key>` for [`TrainingState::extra`]).
//! The file opens in any safetensors reader.
//!
//! ```
//! use tensorforge::{Device, Tensor, checkpoint::{self, TrainingState}};
//! use tensorforge::optim::{Adam, AdamConfig, Optimizer};
//! use tensorforge::param::{Init, ParameterStore};
//!
//! let dir = std::env::temp_dir().join(format!("tf-ckpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut store = ParameterStore::new(Device::Cpu);
//! let w = store.get_or_init("w", 3, Init::Normal { mean: 0.0, std: 1.0 })?;
//! let mut opt = Adam::new(store.parameters(), AdamConfig::default())?;
//! w.sqr()?.sum_all()?.backward()?;
//! opt.step()?;
//! checkpoint::save(&dir, &store, &opt, &TrainingState::new(1, 0))?; // dir/checkpoint.safetensors
//!
//! // Later, in a fresh process: build the same model and optimizer, then load.
//! let mut store2 = ParameterStore::new(Device::Cpu);
//! store2.get_or_init("w", 3, Init::Zeros)?;
//! let mut opt2 = Adam::new(store2.parameters(), AdamConfig::default())?;
//! let state = checkpoint::load(&dir, &mut store2, &mut opt2)?;
//! assert_eq!(state.step, 1);
//! assert_eq!(store2.get("w").unwrap().to_vec1::<f32>()?, w.to_vec1::<f32>()?);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::io::safetensors::{from_safetensors_bytes_with_metadata, to_safetensors_bytes};
use crate::optim::{Optimizer, OptimizerState};
use crate::param::ParameterStore;
use crate::{Error, Result, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file written inside a directory given to [`save`] / [`load`].
pub const FILE_NAME: &str = "checkpoint.safetensors";
const FORMAT_KEY: &str = "tensorforge.checkpoint";
const FORMAT_VERSION: &str = "1";

/// The counters saved next to the tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingState {
    /// Optimizer steps taken so far (what an LR schedule is a function of).
    pub step: u64,
    /// Epochs completed so far (the next epoch to run; see `BatchIter::set_epoch`).
    pub epoch: u64,
    /// The global random stream, [`crate::rng_state`], at save time.
    pub rng: (u64, u64),
    /// Anything else worth keeping (e.g. the run's settings), as strings.
    pub extra: BTreeMap<String, String>,
}

impl TrainingState {
    /// `step` and `epoch`, with the current global RNG state and no extras.
    pub fn new(step: u64, epoch: u64) -> Self {
        TrainingState { step, epoch, rng: crate::rng_state(), extra: BTreeMap::new() }
    }
}

/// `path` itself, or `path/checkpoint.safetensors` when `path` is a directory.
pub fn resolve(path: impl AsRef<Path>) -> PathBuf {
    let p = path.as_ref();
    if p.is_dir() { p.join(FILE_NAME) } else { p.to_path_buf() }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Io { context: format!("checkpoint {}", path.display()), msg: msg.into() }
}

/// Writes a checkpoint of `store`, `opt` and `state` to `path` (a file, or a directory to
/// hold [`FILE_NAME`]). The file is written next to the target and renamed over it, so an
/// interruption mid-write leaves the previous checkpoint intact.
pub fn save(path: impl AsRef<Path>, store: &ParameterStore, opt: &dyn Optimizer, state: &TrainingState) -> Result<()> {
    let path = resolve(path);
    let o = opt.state()?;
    let mut named: Vec<(String, Tensor)> =
        store.named_tensors().into_iter().map(|(n, t)| (format!("param/{n}"), t)).collect();
    for (i, bs) in o.buffers.iter().enumerate() {
        for (k, b) in bs.iter().enumerate() {
            named.push((format!("optim/{i}/{k}"), b.clone()));
        }
    }
    let join = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
    let mut meta = BTreeMap::new();
    for (k, v) in &state.extra {
        meta.insert(format!("user.{k}"), v.clone());
    }
    for (k, v) in store.order_metadata() {
        meta.insert(k, v);
    }
    meta.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    meta.insert("step".into(), state.step.to_string());
    meta.insert("epoch".into(), state.epoch.to_string());
    meta.insert("rng.seed".into(), state.rng.0.to_string());
    meta.insert("rng.offset".into(), state.rng.1.to_string());
    meta.insert("optim.kind".into(), o.kind.clone());
    // Rust's float formatting is shortest-round-trip, so the rate comes back bit for bit.
    meta.insert("optim.lr".into(), o.lr.to_string());
    meta.insert("optim.steps".into(), join(&mut o.steps.iter().map(u64::to_string)));
    meta.insert("optim.buffers".into(), join(&mut o.buffers.iter().map(|b| b.len().to_string())));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = to_safetensors_bytes(&refs, Some(&meta))?;
    crate::io::write_file(&path, &bytes)
}

/// Loads a checkpoint written by [`save`] into `store` and `opt` (built the same way as when
/// it was saved), **restores the global RNG state** and returns the counters.
///
/// The checkpoint must hold exactly the parameters of `store` (same names and shapes).
/// The file is treated as hostile: a truncated or corrupt file, missing or malformed
/// metadata, a tensor of the wrong shape, an optimizer of another kind — each is an `Err`
/// (never a panic), and everything is validated before `store`, `opt` or the RNG change.
pub fn load(path: impl AsRef<Path>, store: &mut ParameterStore, opt: &mut dyn Optimizer) -> Result<TrainingState> {
    let path = resolve(path);
    let bytes = std::fs::read(&path).map_err(|e| bad(&path, e.to_string()))?;
    let (named, meta) = from_safetensors_bytes_with_metadata(&bytes).map_err(|e| crate::io::with_path(&path, e))?;
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(&path, format!("metadata has no `{k}`")));
    let num = |k: &str| -> Result<u64> {
        let v = get(k)?;
        v.parse().map_err(|_| bad(&path, format!("metadata `{k}` = {v:?} is not a non-negative integer")))
    };
    let list = |k: &str| -> Result<Vec<u64>> {
        let v = get(k)?;
        if v.is_empty() {
            return Ok(Vec::new());
        }
        v.split(',')
            .map(|x| x.parse().map_err(|_| bad(&path, format!("metadata `{k}` = {v:?} is malformed"))))
            .collect()
    };
    if get(FORMAT_KEY)? != FORMAT_VERSION {
        return Err(bad(&path, format!("unsupported checkpoint version {:?}", get(FORMAT_KEY)?)));
    }
    let state = TrainingState {
        step: num("step")?,
        epoch: num("epoch")?,
        rng: (num("rng.seed")?, num("rng.offset")?),
        extra: meta.iter().filter_map(|(k, v)| Some((k.strip_prefix("user.")?.to_string(), v.clone()))).collect(),
    };
    let lr_text = get("optim.lr")?;
    let lr: f64 =
        lr_text.parse().map_err(|_| bad(&path, format!("metadata `optim.lr` = {lr_text:?} is not a number")))?;
    let steps = list("optim.steps")?;
    let counts = list("optim.buffers")?;
    if counts.len() != steps.len() {
        return Err(bad(&path, "`optim.steps` and `optim.buffers` disagree on the parameter count"));
    }

    // Sort the tensors into parameters and optimizer buffers; anything else is an error.
    let mut params = Vec::new();
    let mut buffers: BTreeMap<(usize, usize), Tensor> = BTreeMap::new();
    for (name, t) in named {
        if let Some(p) = name.strip_prefix("param/") {
            params.push((p.to_string(), t));
        } else if let Some((i, k)) = name.strip_prefix("optim/").and_then(|r| r.split_once('/'))
            && let (Ok(i), Ok(k)) = (i.parse::<usize>(), k.parse::<usize>())
            && i < counts.len()
            && (k as u64) < counts[i]
        {
            buffers.insert((i, k), t);
        } else {
            return Err(bad(&path, format!("unexpected tensor {name:?}")));
        }
    }
    let mut per_param = Vec::with_capacity(counts.len());
    for (i, &c) in counts.iter().enumerate() {
        let bs = (0..c as usize)
            .map(|k| buffers.remove(&(i, k)).ok_or_else(|| bad(&path, format!("missing tensor optim/{i}/{k}"))))
            .collect::<Result<Vec<_>>>()?;
        per_param.push(bs);
    }
    let params = crate::param::in_saved_order(params, &meta);
    let kind = get("optim.kind")?.clone();
    let o = OptimizerState { kind, lr, steps, buffers: per_param };

    // The checkpoint must hold exactly the model's parameters: a renamed or missing one would
    // otherwise leave a freshly initialized weight behind without a word.
    let mut want: Vec<&str> = store.iter().map(|(n, _)| n).collect();
    let mut have: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    want.sort_unstable();
    have.sort_unstable();
    if want != have {
        let missing: Vec<&&str> = want.iter().filter(|n| !have.contains(n)).collect();
        let unknown: Vec<&&str> = have.iter().filter(|n| !want.contains(n)).collect();
        return Err(bad(
            &path,
            format!("parameters differ from the model's: missing {missing:?}, not in the model {unknown:?}"),
        ));
    }

    // Validate the parameters, then load the optimizer (which validates itself before
    // changing anything), then the parameters: an Err leaves everything as it was.
    store.check_tensors(&params).map_err(|e| bad(&path, e.to_string()))?;
    opt.load_state(&o).map_err(|e| bad(&path, e.to_string()))?;
    store.load_tensors(params)?;
    crate::set_rng_state(state.rng);
    Ok(state)
}
