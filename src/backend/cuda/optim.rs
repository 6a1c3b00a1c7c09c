//! Launches for kernels/optim.cu (fused, in place).

use super::CudaStorage;
use super::abi::*;
use super::device::Arg;
use crate::backend::OptimRule;
use crate::{Error, Result};

pub(super) fn optim_step(
    p: &mut CudaStorage,
    g: &CudaStorage,
    state: &mut [&mut CudaStorage],
    rule: &OptimRule,
) -> Result<()> {
    if state.len() != rule.state_count() {
        return Err(Error::msg(format!(
            "optim_step: {rule:?} needs {} state buffers, got {}",
            rule.state_count(),
            state.len()
        )));
    }
    if !p.dtype.is_float() {
        return Err(Error::UnsupportedDType { op: "optim_step", dtype: p.dtype });
    }
    let n = p.len;
    if g.len != n || state.iter().any(|s| s.len != n) {
        return Err(Error::msg("optim_step: parameter, gradient and state lengths differ"));
    }
    p.same_device(g, "optim_step")?;
    for s in state.iter() {
        p.same_device(s, "optim_step")?;
    }
    if let Some(d) = std::iter::once(g.dtype).chain(state.iter().map(|s| s.dtype)).find(|&d| d != p.dtype) {
        return Err(Error::DTypeMismatch { op: "optim_step", lhs: p.dtype, rhs: d });
    }
    let mut o = TfOptim::default();
    match *rule {
        OptimRule::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            o = TfOptim {
                rule: TfOptimRule_TF_OPTIM_SGD,
                flag: u32::from(nesterov),
                lr,
                a: momentum,
                b: dampening,
                weight_decay,
                ..o
            };
        }
        OptimRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, step } => {
            // Folded on the host in f64, as the CPU kernel does per element.
            let bc1 = crate::backend::bias_correction(beta1, step);
            let bc2 = crate::backend::bias_correction(beta2, step);
            o = TfOptim {
                rule: TfOptimRule_TF_OPTIM_ADAM,
                flag: u32::from(decoupled),
                lr,
                a: beta1,
                b: beta2,
                eps,
                weight_decay,
                bc1,
                bc2,
            };
        }
        OptimRule::RmsProp { lr, alpha, eps, weight_decay, momentum } => {
            o = TfOptim { rule: TfOptimRule_TF_OPTIM_RMSPROP, lr, a: alpha, b: momentum, eps, weight_decay, ..o };
        }
        OptimRule::Adagrad { lr, eps, weight_decay } => {
            o = TfOptim { rule: TfOptimRule_TF_OPTIM_ADAGRAD, lr, eps, weight_decay, ..o };
        }
    }
    if n == 0 {
        return Ok(());
    }
    // Absent state slots are null pointers; the kernel skips them.
    let s0 = state.first().map_or(0, |s| s.ptr());
    let s1 = state.get(1).map_or(0, |s| s.ptr());
    let args = [Arg::Ptr(p.ptr()), Arg::Ptr(g.ptr()), Arg::Ptr(s0), Arg::Ptr(s1), Arg::U64(n as u64), Arg::Optim(o)];
    let dev = p.dev().clone();
    dev.launch("optim", &format!("optim_{}", p.dtype.as_str()), dev.grid_1d(n), &args)
}
