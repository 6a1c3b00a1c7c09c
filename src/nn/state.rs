//! State dicts: a module's parameters and buffers by PyTorch's dotted names, and loading them
//! back in place with missing, unexpected and mis-shaped names reported by name.

use crate::{Error, Result, Tensor, no_grad};
use std::collections::{HashMap, HashSet};

/// What [`load_state`] found besides the names it loaded: the model's names the state lacks
/// and the state's names the model lacks (PyTorch's `_IncompatibleKeys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Names the model has and the state does not (left as they were).
    pub missing: Vec<String>,
    /// Names the state has and the model does not (ignored).
    pub unexpected: Vec<String>,
}

impl LoadReport {
    /// True when every name matched.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Writes `state` into `targets` (live tensors by name) in place, converting dtype and device
/// as PyTorch's `copy_` does. Every name and shape is checked before anything is written, so
/// an `Err` leaves the targets as they were. `strict` makes missing or unexpected names an
/// `Err` (listing them); otherwise they are reported. A name given twice is an `Err`.
pub fn load_state(targets: &[(String, Tensor)], state: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
    let own: HashMap<&str, &Tensor> = targets.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut seen = HashSet::new();
    let mut report = LoadReport::default();
    let mut writes = Vec::new();
    for (name, t) in state {
        if !seen.insert(name.as_str()) {
            return Err(Error::msg(format!("load_state_dict: `{name}` appears twice in the state")));
        }
        match own.get(name.as_str()) {
            Some(p) if p.shape() != t.shape() => {
                return Err(Error::msg(format!(
                    "load_state_dict: `{name}` has shape {:?} in the state but {:?} in the model",
                    t.dims(),
                    p.dims()
                )));
            }
            Some(p) => writes.push((*p, t)),
            None => report.unexpected.push(name.clone()),
        }
    }
    report.missing = targets.iter().filter(|(n, _)| !seen.contains(n.as_str())).map(|(n, _)| n.clone()).collect();
    if strict && !report.is_exact() {
        return Err(Error::msg(format!(
            "load_state_dict (strict): missing {:?}, unexpected {:?}",
            report.missing, report.unexpected
        )));
    }
    no_grad(|| writes.into_iter().try_for_each(|(p, t)| p.write_from(t)))?;
    Ok(report)
}
