//! Fused optimizer updates: one pass over parameters, gradients and state.

use super::float::{CpuFloat, Float};
use super::{CpuStorage, simd};
use crate::backend::OptimRule;
use crate::{Error, Result};
use std::sync::Mutex;

/// The update rule of one element, `(p, g, state) → (p, state)`, over `S` state buffers.
trait ElemRule<F, const S: usize>: Fn(F, F, [F; S]) -> (F, [F; S]) + Sync {}
impl<F, const S: usize, R: Fn(F, F, [F; S]) -> (F, [F; S]) + Sync> ElemRule<F, S> for R {}

/// One sequential pass of `rule` over a chunk; slicing everything to `p.len()` first lets the
/// compiler drop the bounds checks and vectorize.
#[inline(always)]
fn sweep<T: CpuFloat, const S: usize>(p: &mut [T], g: &[T], s: [&mut [T]; S], rule: &impl ElemRule<T::Acc, S>) {
    let n = p.len();
    let g = &g[..n];
    let s = s.map(|x| &mut x[..n]);
    for i in 0..n {
        let (np, ns) = rule(p[i].to_acc(), g[i].to_acc(), std::array::from_fn(|k| s[k][i].to_acc()));
        p[i] = T::from_acc(np);
        for k in 0..S {
            s[k][i] = T::from_acc(ns[k]);
        }
    }
}

/// [`sweep`] compiled for the widest instruction set the CPU has.
fn sweep_simd<T: CpuFloat, const S: usize>(p: &mut [T], g: &[T], s: [&mut [T]; S], rule: &impl ElemRule<T::Acc, S>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<T: CpuFloat, const S: usize>(
            p: &mut [T],
            g: &[T],
            s: [&mut [T]; S],
            r: &impl ElemRule<T::Acc, S>,
        ) {
            sweep(p, g, s, r)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: CpuFloat, const S: usize>(
            p: &mut [T],
            g: &[T],
            s: [&mut [T]; S],
            r: &impl ElemRule<T::Acc, S>,
        ) {
            sweep(p, g, s, r)
        }
        match simd::isa() {
            // SAFETY: `isa()` reports these only after run-time detection of the features.
            simd::Isa::Avx512 => return unsafe { avx512(p, g, s, rule) },
            simd::Isa::Avx2Fma => return unsafe { avx2(p, g, s, rule) },
            simd::Isa::Scalar => {}
        }
    }
    sweep(p, g, s, rule)
}

/// Matching pieces of the parameter, its gradient and its state buffers.
type Chunk<'a, T, const S: usize> = (&'a mut [T], &'a [T], [&'a mut [T]; S]);

/// Applies `rule` to every element, in parallel chunks for large parameters.
fn run<T: CpuFloat, const S: usize>(p: &mut [T], g: &[T], s: [&mut [T]; S], rule: impl ElemRule<T::Acc, S>) {
    const CHUNK: usize = 1 << 14;
    if !super::worth_splitting(p.len()) {
        return sweep_simd(p, g, s, &rule);
    }
    // Every buffer cut at the same points, so chunk i of each lines up.
    let mut parts: Vec<Chunk<'_, T, S>> = Vec::with_capacity(p.len().div_ceil(CHUNK));
    let (mut p, mut g, mut s) = (p, g, s);
    while !p.is_empty() {
        let k = CHUNK.min(p.len());
        let (p0, p1) = p.split_at_mut(k);
        let (g0, g1) = g.split_at(k);
        let (s0, s1) = split_all(s, k);
        parts.push((p0, g0, s0));
        (p, g, s) = (p1, g1, s1);
    }
    // Each task takes its part out of its slot (uncontended locks: one per task).
    let parts: Vec<Mutex<Option<Chunk<'_, T, S>>>> = parts.into_iter().map(|x| Mutex::new(Some(x))).collect();
    super::parallel::for_each_task(parts.len(), |i| {
        let taken = parts[i].lock().map(|mut slot| slot.take());
        if let Ok(Some((p, g, s))) = taken {
            sweep_simd(p, g, s, &rule);
        }
    });
}

/// Each slice split at `k`: the heads and the tails.
fn split_all<T, const S: usize>(s: [&mut [T]; S], k: usize) -> ([&mut [T]; S], [&mut [T]; S]) {
    fn array<T, const S: usize>(v: Vec<&mut [T]>) -> [&mut [T]; S] {
        v.try_into().unwrap_or_else(|_| unreachable!("S slices in, S out"))
    }
    let (heads, tails): (Vec<_>, Vec<_>) = s.into_iter().map(|x| x.split_at_mut(k)).unzip();
    (array(heads), array(tails))
}

/// Picks the element rule once, with its constants in compute precision, and runs it.
fn dispatch<T: CpuFloat>(p: &mut [T], g: &[T], s0: Option<&mut [T]>, s1: Option<&mut [T]>, rule: &OptimRule) {
    let c = <T::Acc as Float>::from_f64;
    // `optim_step` checked that the rule's state buffers are there (an empty one is never used).
    let (s0, s1) = (s0.unwrap_or_default(), s1.unwrap_or_default());
    match *rule {
        OptimRule::Sgd { lr, momentum: 0.0, weight_decay, .. } => {
            let (lr, wd) = (c(lr), c(weight_decay));
            run(p, g, [], move |p, g, []| (p - lr * (g + wd * p), []))
        }
        OptimRule::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            let (lr, m, damp, wd) = (c(lr), c(momentum), c(1.0 - dampening), c(weight_decay));
            run(p, g, [s0], move |p, g, [v]| {
                let d = g + wd * p;
                let v = m * v + damp * d;
                let d = if nesterov { d + m * v } else { v };
                (p - lr * d, [v])
            })
        }
        OptimRule::Adam { lr, beta1, beta2, eps, weight_decay, decoupled, step } => {
            let (b1, b2, eps) = (c(beta1), c(beta2), c(eps));
            let (ib1, ib2) = (c(1.0 - beta1), c(1.0 - beta2));
            let bc1 = c(1.0 / crate::backend::bias_correction(beta1, step));
            let bc2 = c(1.0 / crate::backend::bias_correction(beta2, step));
            let (lr, decay, wd) = (c(lr), c(1.0 - lr * weight_decay), c(weight_decay));
            run(p, g, [s0, s1], move |p, g, [m, v]| {
                let (p, g) = if decoupled { (p * decay, g) } else { (p, g + wd * p) };
                let m = b1 * m + ib1 * g;
                let v = b2 * v + ib2 * g * g;
                (p - lr * (m * bc1) / ((v * bc2).sqrt() + eps), [m, v])
            })
        }
        OptimRule::RmsProp { lr, alpha, eps, weight_decay, momentum } => {
            let (lr, a, ia, eps, wd, mom) = (c(lr), c(alpha), c(1.0 - alpha), c(eps), c(weight_decay), c(momentum));
            if momentum == 0.0 {
                run(p, g, [s0], move |p, g, [sq]| {
                    let g = g + wd * p;
                    let sq = a * sq + ia * g * g;
                    (p - lr * g / (sq.sqrt() + eps), [sq])
                })
            } else {
                run(p, g, [s0, s1], move |p, g, [sq, buf]| {
                    let g = g + wd * p;
                    let sq = a * sq + ia * g * g;
                    let buf = mom * buf + g / (sq.sqrt() + eps);
                    (p - lr * buf, [sq, buf])
                })
            }
        }
        OptimRule::Adagrad { lr, eps, weight_decay } => {
            let (lr, eps, wd) = (c(lr), c(eps), c(weight_decay));
            run(p, g, [s0], move |p, g, [sum]| {
                let g = g + wd * p;
                let sum = sum + g * g;
                (p - lr * g / (sum.sqrt() + eps), [sum])
            })
        }
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
            dispatch($pv, g, s0, s1, rule);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked, parallel, vectorized pass gives what one plain sequential pass gives, for
    /// every rule and a size that leaves a partial last chunk.
    #[test]
    fn chunked_pass_matches_a_sequential_pass() {
        let n = 3 * (1 << 14) + 1234;
        let val = |seed: u64| -> Vec<f32> {
            (0..n as u64).map(|i| ((i * 7919 + seed) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        let rules = [
            OptimRule::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.01 },
            OptimRule::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true, weight_decay: 0.0 },
            OptimRule::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                decoupled: true,
                step: 3,
            },
            OptimRule::RmsProp { lr: 0.01, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.5 },
            OptimRule::Adagrad { lr: 0.1, eps: 1e-10, weight_decay: 0.0 },
        ];
        for rule in rules {
            let g = val(1);
            // Squared averages are never negative: keep the state in their domain.
            let abs = |v: Vec<f32>| v.into_iter().map(f32::abs).collect::<Vec<_>>();
            let (mut p, mut s0, mut s1) = (val(2), abs(val(3)), abs(val(4)));
            let (mut q, mut t0, mut t1) = (p.clone(), s0.clone(), s1.clone());
            // On a pool thread, so the pass splits (see `worth_splitting`).
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a rayon pool");
            pool.install(|| dispatch(&mut p, &g, Some(&mut s0), Some(&mut s1), &rule));
            // The reference: the same rule, one element at a time through sub-threshold calls.
            for i in 0..n {
                let r = i..i + 1;
                dispatch(&mut q[r.clone()], &g[r.clone()], Some(&mut t0[r.clone()]), Some(&mut t1[r]), &rule);
            }
            for (got, want) in [(&p, &q), (&s0, &t0), (&s1, &t1)] {
                let bad = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(bad, None, "{rule:?}: first difference at {bad:?}");
                assert!(got.iter().all(|x| x.is_finite()), "{rule:?}");
            }
        }
    }
}
