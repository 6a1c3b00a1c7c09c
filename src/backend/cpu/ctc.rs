//! CTC loss: log-space forward–backward over the extended label sequence
//! `blank, l₁, blank, l₂, …, l_S, blank`, one task per sample (`cpu::parallel`).
//!
//! Everything is computed in f64 whatever the storage dtype: the recursions add many
//! log-probabilities and the cost is tiny next to the network that produced them.

use super::{CpuStorage, map, with_float_vec};
use crate::{Error, Layout, Result, WithDType};

/// Checks the shapes and lengths every backend needs; returns `(T, N, C, S)`.
pub(crate) fn check_args(
    layout: &Layout,
    targets_layout: &Layout,
    input_lengths: &[usize],
    target_lengths: &[usize],
    blank: usize,
) -> Result<(usize, usize, usize, usize)> {
    let bad = |msg: String| Error::BadShape { op: "ctc_loss", msg };
    let &[t, n, c] = layout.dims() else {
        return Err(bad(format!("log_probs must be [T, N, C], got {:?}", layout.dims())));
    };
    let &[tn, s] = targets_layout.dims() else {
        return Err(bad(format!("targets must be [N, S], got {:?}", targets_layout.dims())));
    };
    if tn != n || input_lengths.len() != n || target_lengths.len() != n {
        return Err(bad(format!(
            "batch sizes differ: log_probs {n}, targets {tn}, input_lengths {}, target_lengths {}",
            input_lengths.len(),
            target_lengths.len()
        )));
    }
    if blank >= c {
        return Err(bad(format!("blank {blank} is not a class of {c}")));
    }
    if let Some(i) = input_lengths.iter().position(|&l| l > t) {
        return Err(bad(format!("input_lengths[{i}] = {} exceeds T = {t}", input_lengths[i])));
    }
    if let Some(i) = target_lengths.iter().position(|&l| l > s) {
        return Err(bad(format!("target_lengths[{i}] = {} exceeds S = {s}", target_lengths[i])));
    }
    Ok((t, n, c, s))
}

/// `log(eˣ + eʸ)`, exact at −∞.
#[inline]
fn lse(x: f64, y: f64) -> f64 {
    let m = x.max(y);
    if m == f64::NEG_INFINITY { m } else { m + ((x - m).exp() + (y - m).exp()).ln() }
}

/// One sample: `lp(t, c)` reads its log-probabilities, `labels` its target. Returns the
/// negative log-likelihood and writes `∂nll/∂lp` into `grad` (`[T_n, C]`, row-major).
fn sample(
    lp: impl Fn(usize, usize) -> f64,
    labels: &[usize],
    tn: usize,
    c: usize,
    blank: usize,
    grad: &mut [f64],
) -> f64 {
    let ls = 2 * labels.len() + 1;
    if tn == 0 {
        // No frames: only the empty target has an alignment (the empty one).
        return if labels.is_empty() { 0.0 } else { f64::INFINITY };
    }
    let lab = |s: usize| if s.is_multiple_of(2) { blank } else { labels[s / 2] };
    // The skip transition s−2 → s is allowed onto a label that differs from the previous label.
    let can_skip = |s: usize| s >= 2 && s % 2 == 1 && lab(s) != lab(s - 2);
    let ninf = f64::NEG_INFINITY;
    let mut alpha = super::pool::filled(tn * ls, ninf);
    let mut beta = super::pool::filled(tn * ls, ninf);
    alpha[0] = lp(0, blank);
    if ls > 1 {
        alpha[1] = lp(0, lab(1));
    }
    for t in 1..tn {
        let (prev, cur) = alpha.split_at_mut(t * ls);
        let prev = &prev[(t - 1) * ls..];
        for s in 0..ls {
            let mut a = prev[s];
            if s >= 1 {
                a = lse(a, prev[s - 1]);
            }
            if can_skip(s) {
                a = lse(a, prev[s - 2]);
            }
            cur[s] = if a == ninf { ninf } else { a + lp(t, lab(s)) };
        }
    }
    let last = (tn - 1) * ls;
    let ll = if ls > 1 { lse(alpha[last + ls - 1], alpha[last + ls - 2]) } else { alpha[last] };
    if ll == ninf {
        grad.fill(0.0);
        return f64::INFINITY;
    }
    beta[last + ls - 1] = lp(tn - 1, blank);
    if ls > 1 {
        beta[last + ls - 2] = lp(tn - 1, lab(ls - 2));
    }
    for t in (0..tn - 1).rev() {
        let (cur, next) = beta.split_at_mut((t + 1) * ls);
        let cur = &mut cur[t * ls..];
        for s in 0..ls {
            let mut b = next[s];
            if s + 1 < ls {
                b = lse(b, next[s + 1]);
            }
            if s + 2 < ls && can_skip(s + 2) {
                b = lse(b, next[s + 2]);
            }
            cur[s] = if b == ninf { ninf } else { b + lp(t, lab(s)) };
        }
    }
    // ∂(−log P)/∂lp(t, c) = −Σ_{s: l'_s = c} α_t(s)·β_t(s) / (P·y_t(c)) (both α and β
    // include the emission at t, hence the division by y once).
    let mut lcab = vec![ninf; c];
    for t in 0..tn {
        lcab.fill(ninf);
        for s in 0..ls {
            let k = lab(s);
            lcab[k] = lse(lcab[k], alpha[t * ls + s] + beta[t * ls + s]);
        }
        for (k, g) in grad[t * c..(t + 1) * c].iter_mut().enumerate() {
            *g = if lcab[k] == ninf { 0.0 } else { -(lcab[k] - ll - lp(t, k)).exp() };
        }
    }
    -ll
}

pub fn ctc_loss(
    s: &CpuStorage,
    layout: &Layout,
    targets: &CpuStorage,
    targets_layout: &Layout,
    input_lengths: &[usize],
    target_lengths: &[usize],
    blank: usize,
) -> Result<(CpuStorage, CpuStorage)> {
    let (t, n, c, sl) = check_args(layout, targets_layout, input_lengths, target_lengths, blank)?;
    let CpuStorage::I64(tv) = targets else {
        return Err(Error::UnsupportedDType { op: "ctc_loss (targets)", dtype: targets.dtype() });
    };
    let tgt = map(tv, targets_layout, |x| x); // contiguous [N, S]
    let mut labels = Vec::with_capacity(n);
    for (i, &len) in target_lengths.iter().enumerate() {
        let row: Vec<usize> = tgt[i * sl..i * sl + len].iter().map(|&v| v as usize).collect();
        if let Some(&bad) = tgt[i * sl..i * sl + len].iter().find(|&&v| v < 0 || v as usize >= c || v as usize == blank)
        {
            return Err(Error::BadShape {
                op: "ctc_loss",
                msg: format!("target {bad} of sample {i} is not a non-blank class of {c}"),
            });
        }
        labels.push(row);
    }
    fn go<F: WithDType>(
        v: &[F],
        l: &Layout,
        dims: [usize; 4],
        labels: &[Vec<usize>],
        lens: &[usize],
    ) -> (CpuStorage, CpuStorage) {
        let [t, n, c, blank] = dims;
        let x = map(v, l, |x| x.to_f64()); // contiguous [T, N, C]
        let mut per: Vec<(f64, Vec<f64>)> = vec![(0.0, Vec::new()); n];
        super::parallel::for_each_chunk(&mut per, 1, |i, slot| {
            let tn = lens[i];
            let mut g = super::pool::filled(tn * c, 0.0);
            let lp = |tt: usize, k: usize| x[(tt * n + i) * c + k];
            let loss = sample(lp, &labels[i], tn, c, blank, &mut g);
            slot[0] = (loss, g);
        });
        let mut grad = super::pool::filled(t * n * c, F::from_f64(0.0));
        let mut loss = Vec::with_capacity(n);
        for (i, (l, g)) in per.into_iter().enumerate() {
            loss.push(F::from_f64(l));
            for (tt, row) in g.chunks(c.max(1)).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    grad[(tt * n + i) * c + k] = F::from_f64(v);
                }
            }
        }
        (F::into_cpu_storage(loss), F::into_cpu_storage(grad))
    }
    let dims = [t, n, c, blank];
    Ok(with_float_vec!(s, "ctc_loss", v => go(v, layout, dims, &labels, input_lengths)))
}
