//! Fused optimizer updates: one pass over parameters, gradients and state.

use super::CpuStorage;
use super::float::{CpuFloat, Float};
use crate::backend::OptimRule;
use crate::{Error, Result};
use rayon::prelude::*;

/// The update of one element: `p` the parameter, `g` its gradient, `s0`/`s1` state.
#[inline(always)]
fn step<F: Float>(rule: &OptimRule, p: &mut F, g: F, s0: &mut F, s1: &mut F) {
    let c = F::from_f64;
    match *rule {
        OptimRule::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            let mut d = g + c(weight_decay) * *p;
            if momentum != 0.0 {
                *s0 = c(momentum) * *s0 + c(1.0 - dampening) * d;
                d = if nesterov { d + c(momentum) * *s0 } else { *s0 };
            }
            *p = *p - c(lr) * d;
        }
        OptimRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, step } => {
            let mut g = g;
            if decoupled {
                *p = *p * c(1.0 - lr * weight_decay);
            } else {
                g = g + c(weight_decay) * *p;
            }
            *s0 = c(beta1) * *s0 + c(1.0 - beta1) * g;
            *s1 = c(beta2) * *s1 + c(1.0 - beta2) * g * g;
            let bc1 = 1.0 - beta1.powi(step as i32);
            let bc2 = 1.0 - beta2.powi(step as i32);
            let m_hat = *s0 / c(bc1);
            let v_hat = *s1 / c(bc2);
            *p = *p - c(lr) * m_hat / (v_hat.sqrt() + c(eps));
        }
        OptimRule::RmsProp { lr, alpha, eps, weight_decay, momentum } => {
            let g = g + c(weight_decay) * *p;
            *s0 = c(alpha) * *s0 + c(1.0 - alpha) * g * g;
            let d = g / (s0.sqrt() + c(eps));
            if momentum != 0.0 {
                *s1 = c(momentum) * *s1 + d;
                *p = *p - c(lr) * *s1;
            } else {
                *p = *p - c(lr) * d;
            }
        }
        OptimRule::Adagrad { lr, eps, weight_decay } => {
            let g = g + c(weight_decay) * *p;
            *s0 = *s0 + g * g;
            *p = *p - c(lr) * g / (s0.sqrt() + c(eps));
        }
    }
}

fn run<T: CpuFloat>(p: &mut [T], g: &[T], s0: Option<&mut [T]>, s1: Option<&mut [T]>, rule: &OptimRule) {
    let n = p.len();
    let mut d0 = Vec::new();
    let mut d1 = Vec::new();
    // Unused state slots point at a scratch buffer so the loop has one shape.
    let s0 = s0.unwrap_or_else(|| {
        d0 = vec![T::default(); n];
        &mut d0
    });
    let s1 = s1.unwrap_or_else(|| {
        d1 = vec![T::default(); n];
        &mut d1
    });
    let body = |(((p, g), a), b): (((&mut T, &T), &mut T), &mut T)| {
        let (mut pp, mut aa, mut bb) = (p.to_acc(), a.to_acc(), b.to_acc());
        step(rule, &mut pp, g.to_acc(), &mut aa, &mut bb);
        *p = T::from_acc(pp);
        *a = T::from_acc(aa);
        *b = T::from_acc(bb);
    };
    if n >= super::PAR_THRESHOLD {
        p.par_iter_mut().zip(g.par_iter()).zip(s0.par_iter_mut()).zip(s1.par_iter_mut()).for_each(body);
    } else {
        p.iter_mut().zip(g.iter()).zip(s0.iter_mut()).zip(s1.iter_mut()).for_each(body);
    }
}

pub fn optim_step(p: &mut CpuStorage, g: &CpuStorage, state: &mut [&mut CpuStorage], rule: &OptimRule) -> Result<()> {
    if state.len() != rule.state_count() {
        return Err(Error::msg(format!(
            "optim_step: {rule:?} needs {} state buffers, got {}",
            rule.state_count(),
            state.len()
        )));
    }
    let n = super::BackendStorage::len(p);
    if super::BackendStorage::len(g) != n || state.iter().any(|s| super::BackendStorage::len(&**s) != n) {
        return Err(Error::msg("optim_step: parameter, gradient and state lengths differ"));
    }
    let pd = p.dtype();
    macro_rules! go {
        ($variant:ident, $pv:ident) => {{
            let CpuStorage::$variant(g) = g else {
                return Err(Error::DTypeMismatch { op: "optim_step", lhs: pd, rhs: g.dtype() });
            };
            let mut slots = state.iter_mut().map(|s| match &mut **s {
                CpuStorage::$variant(v) => Ok(v.as_mut_slice()),
                other => Err(Error::DTypeMismatch { op: "optim_step", lhs: pd, rhs: other.dtype() }),
            });
            let s0 = slots.next().transpose()?;
            let s1 = slots.next().transpose()?;
            run($pv, g, s0, s1, rule);
        }};
    }
    match p {
        CpuStorage::F32(pv) => go!(F32, pv),
        CpuStorage::F64(pv) => go!(F64, pv),
        CpuStorage::F16(pv) => go!(F16, pv),
        CpuStorage::BF16(pv) => go!(BF16, pv),
        other => return Err(Error::UnsupportedDType { op: "optim_step", dtype: other.dtype() }),
    }
    Ok(())
}
