//! CTC loss against brute-force enumeration of every alignment on tiny inputs, reductions,
//! zero_infinity, errors, and gradchecks.

use tensorforge::gradcheck::{GradCheck, gradcheck_with};
use tensorforge::nn::{CtcLoss, Reduction};
use tensorforge::{DType, Device, Result, Tensor};

/// Deterministic log-softmax values `[T, N, C]`.
fn log_probs(t: usize, n: usize, c: usize, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f64> = (0..t * n * c)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 3.0 - 1.5
        })
        .collect();
    Tensor::from_vec(v, (t, n, c), Device::Cpu).unwrap().log_softmax(-1).unwrap()
}

/// Collapses a path: merge repeats, then drop blanks.
fn collapse(path: &[usize], blank: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = None;
    for &p in path {
        if Some(p) != prev && p != blank {
            out.push(p);
        }
        prev = Some(p);
    }
    out
}

/// −log Σ over all Cᵀ paths that collapse to `target` of Π exp(lp).
fn brute_force(lp: &[f64], t: usize, c: usize, target: &[usize], blank: usize) -> f64 {
    let mut total = 0.0;
    let mut path = vec![0usize; t];
    for code in 0..c.pow(t as u32) {
        let mut k = code;
        for p in path.iter_mut() {
            *p = k % c;
            k /= c;
        }
        if collapse(&path, blank) == target {
            total += path.iter().enumerate().map(|(i, &p)| lp[i * c + p]).sum::<f64>().exp();
        }
    }
    -total.ln()
}

/// One sample's `[T, C]` slice of `[T, N, C]`.
fn sample(all: &[f64], t: usize, n: usize, c: usize, i: usize) -> Vec<f64> {
    (0..t).flat_map(|tt| all[(tt * n + i) * c..(tt * n + i + 1) * c].to_vec()).collect()
}

#[test]
fn matches_brute_force_enumeration() -> Result<()> {
    // (T, C, blank, targets per sample, input lengths)
    type Case = (usize, usize, usize, Vec<Vec<usize>>, Vec<usize>);
    let cases: Vec<Case> = vec![
        (5, 3, 0, vec![vec![1, 2], vec![1, 1], vec![2], vec![]], vec![5, 5, 3, 4]),
        (4, 3, 2, vec![vec![0, 1, 0], vec![1], vec![0, 0]], vec![4, 2, 3]),
        (5, 2, 0, vec![vec![1, 1], vec![1]], vec![5, 1]),
        (3, 3, 1, vec![vec![0, 2], vec![2, 2]], vec![3, 3]),
    ];
    for (seed, (t, c, blank, targets, in_lens)) in cases.into_iter().enumerate() {
        let n = targets.len();
        let s = targets.iter().map(Vec::len).max().unwrap().max(1);
        let mut padded = vec![if blank == 0 { 1i64 } else { 0 }; n * s];
        for (i, tg) in targets.iter().enumerate() {
            for (j, &v) in tg.iter().enumerate() {
                padded[i * s + j] = v as i64;
            }
        }
        let tg = Tensor::from_vec(padded, (n, s), Device::Cpu)?;
        let tl: Vec<usize> = targets.iter().map(Vec::len).collect();
        let lp = log_probs(t, n, c, seed as u64 + 1);
        let all = lp.to_vec_f64()?;
        let ctc = CtcLoss { blank, reduction: Reduction::None, ..Default::default() };
        let got = ctc.loss(&lp, &tg, &in_lens, &tl)?.to_vec_f64()?;
        for i in 0..n {
            let want = brute_force(&sample(&all, t, n, c, i)[..in_lens[i] * c], in_lens[i], c, &targets[i], blank);
            assert!(
                (got[i] - want).abs() < 1e-10 || (got[i].is_infinite() && want.is_infinite()),
                "case {seed} sample {i}: {} vs brute force {want}",
                got[i]
            );
        }
        // f32 agrees with f64 to f32 precision.
        let got32 = ctc.loss(&lp.to_dtype(DType::F32)?, &tg, &in_lens, &tl)?.to_vec_f64()?;
        for (a, b) in got32.iter().zip(&got) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0) || (a.is_infinite() && b.is_infinite()), "{a} vs {b}");
        }
    }
    Ok(())
}

#[test]
fn reductions_and_zero_infinity() -> Result<()> {
    // Sample 1 needs 3 frames for target [1, 1] (a blank between the repeats) but gets 2.
    let lp = log_probs(4, 2, 3, 9);
    let tg = Tensor::from_vec(vec![1i64, 2, 1, 1], (2, 2), Device::Cpu)?;
    let (il, tl) = ([4, 2], [2, 2]);
    let none = CtcLoss { reduction: Reduction::None, ..Default::default() }.loss(&lp, &tg, &il, &tl)?.to_vec_f64()?;
    assert!(none[0].is_finite() && none[1].is_infinite());
    let zi = CtcLoss { reduction: Reduction::None, zero_infinity: true, ..Default::default() };
    assert_eq!(zi.loss(&lp, &tg, &il, &tl)?.to_vec_f64()?, vec![none[0], 0.0]);
    let mean = CtcLoss { zero_infinity: true, ..Default::default() }.loss(&lp, &tg, &il, &tl)?.item()?;
    assert!((mean - (none[0] / 2.0 + 0.0) / 2.0).abs() < 1e-12, "mean divides by target length, then batch");
    let sum = CtcLoss { reduction: Reduction::Sum, zero_infinity: true, ..Default::default() };
    assert!((sum.loss(&lp, &tg, &il, &tl)?.item()? - none[0]).abs() < 1e-12);
    // The impossible sample contributes no gradient.
    let v = lp.detach().requires_grad();
    zi.loss(&v, &tg, &il, &tl)?.sum_all()?.backward()?;
    let g = v.grad().unwrap().to_vec_f64()?;
    assert!(g.iter().all(|x| x.is_finite()));
    assert!((0..4).all(|t| (0..3).all(|c| g[(t * 2 + 1) * 3 + c] == 0.0)));
    Ok(())
}

#[test]
fn gradient_through_log_softmax_matches_pytorch_form() -> Result<()> {
    // Through log_softmax, ∂loss/∂logits = softmax − posterior occupancy, which sums to 0 over
    // the classes of every frame within the input length (and is 0 beyond it).
    let logits = log_probs(5, 1, 3, 4).detach().requires_grad();
    let tg = Tensor::from_vec(vec![1i64, 2], (1, 2), Device::Cpu)?;
    let ctc = CtcLoss { reduction: Reduction::Sum, ..Default::default() };
    ctc.loss(&logits.log_softmax(-1)?, &tg, &[4], &[2])?.backward()?;
    let g = logits.grad().unwrap().to_vec_f64()?;
    for t in 0..5 {
        let s: f64 = g[t * 3..t * 3 + 3].iter().sum();
        assert!(s.abs() < 1e-12, "frame {t}: {s}");
    }
    assert!(g[12..15].iter().all(|&x| x == 0.0));
    Ok(())
}

#[test]
fn bad_arguments_are_errors() -> Result<()> {
    let lp = log_probs(4, 2, 3, 1);
    let tg = Tensor::from_vec(vec![1i64, 2, 1, 0], (2, 2), Device::Cpu)?;
    let ctc = CtcLoss::new();
    assert!(ctc.loss(&lp, &tg, &[4, 4], &[2, 2]).is_err(), "blank inside a target");
    assert!(ctc.loss(&lp, &tg, &[4, 4], &[2, 1]).is_ok(), "padding past the length is ignored");
    assert!(ctc.loss(&lp, &tg, &[5, 4], &[2, 1]).is_err(), "input length > T");
    assert!(ctc.loss(&lp, &tg, &[4], &[2]).is_err(), "lengths for one sample of two");
    assert!(ctc.loss(&lp, &tg, &[4, 4], &[3, 1]).is_err(), "target length > S");
    assert!(ctc.loss(&lp, &tg.to_dtype(DType::F64)?, &[4, 4], &[2, 1]).is_err(), "float targets");
    let big = Tensor::from_vec(vec![1i64, 3], (1, 2), Device::Cpu)?;
    assert!(ctc.loss(&log_probs(4, 1, 3, 2), &big, &[4], &[2]).is_err(), "class out of range");
    let blank9 = CtcLoss { blank: 9, ..Default::default() };
    assert!(blank9.loss(&lp, &tg, &[4, 4], &[1, 1]).is_err());
    Ok(())
}

#[test]
fn gradcheck_every_reduction() {
    let tg = Tensor::from_vec(vec![1i64, 2, 2, 1, 1, 0], (2, 3), Device::Cpu).unwrap();
    // Unnormalized inputs on purpose: the kernel's gradient is with respect to log_probs
    // themselves, not through an implied log_softmax.
    let lp = log_probs(6, 2, 3, 7).affine(1.3, 0.2).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let tg = tg.clone();
        let ctc = CtcLoss { reduction, ..Default::default() };
        gradcheck_with(
            move |a| ctc.loss(&a[0], &tg, &[6, 5], &[3, 2]),
            std::slice::from_ref(&lp),
            &GradCheck::default(),
        )
        .unwrap_or_else(|e| panic!("{reduction:?}: {e}"));
    }
}
