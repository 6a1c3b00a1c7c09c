//! PyTorch options composed from the engine's ops: `softplus(beta, threshold)`,
//! `logsumexp(axes, keepdim)`, `smooth_l1_loss(beta)` and `huber_loss(delta)`. Values against
//! PyTorch's formulas in f64 (computed here element by element), gradients by finite
//! differences; being compositions, they run on every device.

use tensorforge::gradcheck::gradcheck;
use tensorforge::nn::{HuberLoss, Loss, Reduction, SmoothL1Loss};
use tensorforge::{Device, Tensor};

const CPU: Device = Device::Cpu;

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape.to_vec(), CPU).unwrap()
}

#[test]
fn softplus_with_beta_and_threshold() {
    let xs = [-3.0, -0.5, 0.0, 0.7, 4.0, 9.0, 11.0];
    for (beta, threshold) in [(1.0, 20.0), (2.0, 20.0), (0.5, 3.0), (3.0, 10.0)] {
        let got = t(&xs, &[7]).softplus_with(beta, threshold).unwrap().to_vec_f64().unwrap();
        for (x, g) in xs.iter().zip(&got) {
            let want = if beta * x > threshold { *x } else { (1.0 + (beta * x).exp()).ln() / beta };
            assert!((g - want).abs() <= 1e-14 * (1.0 + want.abs()), "beta {beta} thr {threshold} x {x}: {g} vs {want}");
        }
        // Away from the switch point (where the two branches differ by rounding only).
        let xs_g = [-2.0, -0.3, 0.4, 1.1];
        gradcheck(|v| v[0].softplus_with(beta, threshold), &[t(&xs_g, &[4]).requires_grad()]).unwrap();
    }
    assert!(t(&xs, &[7]).softplus_with(0.0, 20.0).is_err());
}

#[test]
fn logsumexp_over_axes() {
    let v: Vec<f64> = (0..24).map(|i| ((i * 7) % 11) as f64 * 0.37 - 2.0).collect();
    let x = t(&v, &[2, 3, 4]);
    let want = |idx: &dyn Fn(usize, usize, usize) -> bool| {
        let s: f64 = (0..24).filter(|&i| idx(i / 12, i / 4 % 3, i % 4)).map(|i| v[i].exp()).sum();
        s.ln()
    };
    let got = x.logsumexp([1], false).unwrap();
    assert_eq!(got.dims(), &[2, 4]);
    for (k, g) in got.to_vec_f64().unwrap().iter().enumerate() {
        let w = want(&|a, _b, c| a == k / 4 && c == k % 4);
        assert!((g - w).abs() < 1e-13, "{g} vs {w}");
    }
    assert_eq!(x.logsumexp([0, 2], true).unwrap().dims(), &[1, 3, 1]);
    assert_eq!(x.logsumexp([], false).unwrap().dims(), &[] as &[usize]);
    assert!((x.logsumexp([], false).unwrap().item().unwrap() - want(&|_, _, _| true)).abs() < 1e-12);
    // Huge, -inf and +inf rows.
    let e = t(&[1e300, 1e300, f64::NEG_INFINITY, f64::NEG_INFINITY, f64::INFINITY, 0.0], &[3, 2]);
    let y = e.logsumexp([1], false).unwrap().to_vec_f64().unwrap();
    assert_eq!(y[0], 1e300 + 2f64.ln());
    assert_eq!(y[1], f64::NEG_INFINITY);
    assert_eq!(y[2], f64::INFINITY);
    gradcheck(|a| a[0].logsumexp([-1], false), &[x.requires_grad()]).unwrap();
    gradcheck(|a| a[0].logsumexp([0, 2], true), &[t(&v, &[2, 3, 4]).requires_grad()]).unwrap();
}

#[test]
fn smooth_l1_and_huber_losses() {
    let p: [f64; 6] = [0.0, 0.3, -2.0, 5.0, 1.2, -0.7];
    let q: [f64; 6] = [0.5, 0.0, 1.0, 1.0, 1.0, -0.6];
    let d: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).collect();
    for beta in [1.0, 0.5, 2.0, 0.0] {
        let per: Vec<f64> = d.iter().map(|&d| if d < beta { 0.5 * d * d / beta } else { d - 0.5 * beta }).collect();
        for (reduction, want) in
            [(Reduction::Mean, per.iter().sum::<f64>() / 6.0), (Reduction::Sum, per.iter().sum::<f64>())]
        {
            let got = SmoothL1Loss { beta, reduction }.loss(&t(&p, &[2, 3]), &t(&q, &[2, 3])).unwrap().item().unwrap();
            assert!((got - want).abs() < 1e-14, "smooth_l1 beta {beta}: {got} vs {want}");
        }
        let none = SmoothL1Loss { beta, reduction: Reduction::None }.loss(&t(&p, &[6]), &t(&q, &[6])).unwrap();
        for (g, w) in none.to_vec_f64().unwrap().iter().zip(&per) {
            assert!((g - w).abs() < 1e-15);
        }
    }
    for delta in [1.0, 0.5, 3.0] {
        let per: Vec<f64> =
            d.iter().map(|&d| if d < delta { 0.5 * d * d } else { delta * (d - 0.5 * delta) }).collect();
        let got = HuberLoss::new(delta).loss(&t(&p, &[6]), &t(&q, &[6])).unwrap().item().unwrap();
        let want = per.iter().sum::<f64>() / 6.0;
        assert!((got - want).abs() < 1e-14, "huber delta {delta}: {got} vs {want}");
        let target = t(&q, &[6]);
        gradcheck(move |a| HuberLoss::new(delta).loss(&a[0], &target), &[t(&p, &[6]).requires_grad()]).unwrap();
    }
    let target = t(&q, &[6]);
    gradcheck(move |a| SmoothL1Loss::new(1.0).loss(&a[0], &target), &[t(&p, &[6]).requires_grad()]).unwrap();
    assert!(HuberLoss::new(0.0).loss(&t(&p, &[6]), &t(&q, &[6])).is_err());
    assert!(SmoothL1Loss::new(-1.0).loss(&t(&p, &[6]), &t(&q, &[6])).is_err());
}

/// Elementwise maximum/minimum send the gradient to the larger/smaller operand and split a
/// tie half and half, as PyTorch.
#[test]
fn maximum_and_minimum_split_ties() {
    let a = t(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let b = t(&[1.0, 5.0, 0.0], &[3]).requires_grad();
    a.maximum(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(a.grad().unwrap().to_vec_f64().unwrap(), vec![0.5, 0.0, 1.0]);
    assert_eq!(b.grad().unwrap().to_vec_f64().unwrap(), vec![0.5, 1.0, 0.0]);
    let (a, b) = (t(&[1.0, 2.0, 3.0], &[3]).requires_grad(), t(&[1.0, 5.0, 0.0], &[3]).requires_grad());
    a.minimum(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(a.grad().unwrap().to_vec_f64().unwrap(), vec![0.5, 1.0, 0.0]);
    assert_eq!(b.grad().unwrap().to_vec_f64().unwrap(), vec![0.5, 0.0, 1.0]);
    // x.maximum(x): both halves land on x, a gradient of 1.
    let x = t(&[2.0, -1.0], &[2]).requires_grad();
    x.maximum(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![1.0, 1.0]);
}

/// ReLU's gradient as PyTorch's `threshold_backward`: 0 at and below 0, the incoming
/// gradient above 0 and at NaN inputs (`NaN <= 0` is false).
#[test]
fn relu_gradient_at_zero_and_nan() {
    let x = t(&[-1.0, 0.0, 2.0, f64::NAN], &[4]).requires_grad();
    x.relu().unwrap().mul_scalar(3.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![0.0, 0.0, 3.0, 3.0]);
}

/// BCE with logits and `pos_weight`, against PyTorch's definition
/// `−[p·t·log σ(x) + (1−t)·log(1−σ(x))]` with one weight per class (last axis).
#[test]
fn bce_with_logits_pos_weight() {
    use tensorforge::nn::BceWithLogitsLoss;
    let x = [-2.0, 0.3, 4.0, 1.5, -0.7, 0.0];
    let y = [1.0, 0.0, 1.0, 0.25, 1.0, 0.0];
    let pw = [3.0, 0.5, 1.0];
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let want: f64 = (0..6)
        .map(|i| {
            let p = pw[i % 3];
            -(p * y[i] * sig(x[i]).ln() + (1.0 - y[i]) * (1.0 - sig(x[i])).ln())
        })
        .sum::<f64>()
        / 6.0;
    let loss = BceWithLogitsLoss::with_pos_weight(t(&pw, &[3]));
    let got = loss.loss(&t(&x, &[2, 3]), &t(&y, &[2, 3])).unwrap().item().unwrap();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    // Without pos_weight it is the plain loss; with all-ones weights, the same.
    let plain = BceWithLogitsLoss::new().loss(&t(&x, &[2, 3]), &t(&y, &[2, 3])).unwrap().item().unwrap();
    let ones = BceWithLogitsLoss::with_pos_weight(t(&[1.0; 3], &[3]));
    assert!((ones.loss(&t(&x, &[2, 3]), &t(&y, &[2, 3])).unwrap().item().unwrap() - plain).abs() < 1e-15);
    let target = t(&y, &[2, 3]);
    gradcheck(move |a| loss.loss(&a[0], &target), &[t(&x, &[2, 3]).requires_grad()]).unwrap();
}

/// `pow`/`powf` gradients at base 0 or below with integer exponents, and with exponent 0, as
/// PyTorch computes them (no NaN from 0·∞ or exp(b·ln a)).
#[test]
fn pow_gradients_at_zero_and_negative_bases() {
    let grad_powf = |x: f64, e: f64| {
        let t = t(&[x], &[1]).requires_grad();
        t.powf(e).unwrap().sum_all().unwrap().backward().unwrap();
        t.grad().unwrap().to_vec_f64().unwrap()[0]
    };
    assert_eq!(grad_powf(-3.0, 2.0), -6.0);
    assert_eq!(grad_powf(0.0, 2.0), 0.0);
    assert_eq!(grad_powf(0.0, 3.0), 0.0);
    assert_eq!(grad_powf(-2.0, 3.0), 12.0);
    assert_eq!(grad_powf(0.0, 0.0), 0.0);
    assert_eq!(grad_powf(5.0, 0.0), 0.0);
    let grad_pow = |x: f64, e: f64| {
        let (a, b) = (t(&[x], &[1]).requires_grad(), t(&[e], &[1]).requires_grad());
        a.pow(&b).unwrap().sum_all().unwrap().backward().unwrap();
        (a.grad().unwrap().to_vec_f64().unwrap()[0], b.grad().unwrap().to_vec_f64().unwrap()[0])
    };
    assert_eq!(grad_pow(-3.0, 2.0).0, -6.0);
    assert_eq!(grad_pow(0.0, 2.0), (0.0, 0.0));
    assert_eq!(grad_pow(0.0, 3.0), (0.0, 0.0));
    assert_eq!(grad_pow(0.0, 0.0), (0.0, 0.0));
    let (ga, gb) = grad_pow(2.0, 3.0);
    assert_eq!(ga, 12.0);
    assert!((gb - 8.0 * 2f64.ln()).abs() < 1e-14);
}

/// `max_dim`/`min_dim` send the gradient to the returned index only; `amax`/`amin` split it
/// evenly among ties (PyTorch's `max(dim)` and `amax`).
#[test]
fn max_dim_and_amax_gradients() {
    let v = [2.0, 5.0, 5.0, 1.0, 1.0, 0.0];
    let x = t(&v, &[2, 3]).requires_grad();
    let (vals, idx) = x.max_dim(-1, false).unwrap();
    assert_eq!(vals.to_vec_f64().unwrap(), vec![5.0, 1.0]);
    assert_eq!(idx.to_vec_f64().unwrap(), vec![1.0, 0.0]);
    vals.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    let x = t(&v, &[2, 3]).requires_grad();
    x.amax([1], false).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![0.0, 0.5, 0.5, 0.5, 0.5, 0.0]);
    let x = t(&v, &[2, 3]).requires_grad();
    let (mins, at) = x.min_dim(0, true).unwrap();
    assert_eq!(mins.dims(), &[1, 3]);
    assert_eq!(at.to_vec_f64().unwrap(), vec![1.0, 1.0, 1.0]);
    x.amin([0], true).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    gradcheck(|a| Ok(a[0].max_dim(1, false)?.0), &[t(&[0.3, 2.0, -1.0, 4.0, 0.5, 0.6], &[2, 3]).requires_grad()])
        .unwrap();
}

/// `Embedding` with `padding_idx`: the row starts at zero, gets no gradient, and the others
/// get theirs as usual; an out-of-range index is an `Err`.
#[test]
fn embedding_padding_idx() {
    use tensorforge::nn::{Embedding, Module};
    use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
    let e = Embedding::new(4, 3, CPU).unwrap().padding_idx(2).unwrap();
    assert_eq!(e.weight().narrow(0, 2, 1).unwrap().to_vec_f64().unwrap(), vec![0.0; 3]);
    let before = e.weight().to_vec_f64().unwrap();
    let ids = Tensor::from_vec(vec![2i64, 1, 2, 0], (2, 2), CPU).unwrap();
    let mut opt = Sgd::new(vec![e.weight().clone()], SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    e.forward(&ids).unwrap().sqr().unwrap().sum_all().unwrap().add_scalar(1.0).unwrap().backward().unwrap();
    let g = e.weight().grad().unwrap().to_vec_f64().unwrap();
    assert_eq!(&g[6..9], &[0.0; 3], "padding row");
    assert_eq!(&g[3..6], &before[3..6].iter().map(|w| 2.0 * w).collect::<Vec<_>>()[..], "row 1: d(w²)");
    opt.step().unwrap();
    assert_eq!(e.weight().narrow(0, 2, 1).unwrap().to_vec_f64().unwrap(), vec![0.0; 3], "stays zero");
    assert!(Embedding::new(4, 3, CPU).unwrap().padding_idx(4).is_err());
}

/// Cross-entropy with class weights, ignore_index, label smoothing and PyTorch's `[N, C, d]`
/// layout, against PyTorch's definition computed here sample by sample.
#[test]
fn cross_entropy_weight_ignore_index_and_layout() {
    use tensorforge::nn::CrossEntropyLoss;
    let logits: Vec<f64> = (0..12).map(|i| ((i * 5) % 7) as f64 * 0.4 - 1.0).collect();
    let target = [2i64, -100, 0, 1];
    let w = [0.5, 2.0, 1.5];
    let (n, c) = (4, 3);
    let logp = |i: usize, k: usize| {
        let row = &logits[i * c..(i + 1) * c];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        row[k] - m - row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    };
    for eps in [0.0, 0.2] {
        let mut per = vec![0.0; n];
        let mut count = 0.0;
        for i in 0..n {
            if target[i] == -100 {
                continue;
            }
            let y = target[i] as usize;
            let smooth: f64 = (0..c).map(|k| -w[k] * logp(i, k)).sum::<f64>() * eps / c as f64;
            per[i] = (1.0 - eps) * (-w[y] * logp(i, y)) + smooth;
            count += w[y];
        }
        let loss = |reduction| CrossEntropyLoss {
            reduction,
            label_smoothing: eps,
            weight: Some(t(&w, &[3])),
            ignore_index: Some(-100),
        };
        let x = t(&logits, &[4, 3]);
        let y = Tensor::from_vec(target.to_vec(), 4, CPU).unwrap();
        let mean = loss(Reduction::Mean).loss(&x, &y).unwrap().item().unwrap();
        assert!((mean - per.iter().sum::<f64>() / count).abs() < 1e-14, "eps {eps}: {mean}");
        let sum = loss(Reduction::Sum).loss(&x, &y).unwrap().item().unwrap();
        assert!((sum - per.iter().sum::<f64>()).abs() < 1e-14);
        let none = loss(Reduction::None).loss(&x, &y).unwrap().to_vec_f64().unwrap();
        for (g, p) in none.iter().zip(&per) {
            assert!((g - p).abs() < 1e-14, "{none:?} vs {per:?}");
        }
        let y2 = y.clone();
        gradcheck(move |a| loss(Reduction::Mean).loss(&a[0], &y2), &[x.requires_grad()]).unwrap();
    }
    // PyTorch's [N, C, d] layout gives what classes-last gives for the same samples.
    let x3 = t(&logits, &[2, 3, 2]); // N = 2, C = 3, d = 2
    let y3 = Tensor::from_vec(vec![0i64, 2, 1, 1], (2, 2), CPU).unwrap();
    let ce = CrossEntropyLoss { reduction: Reduction::None, ..Default::default() };
    let a = ce.loss(&x3, &y3).unwrap();
    let b = ce.loss(&x3.permute(&[0, 2, 1]).unwrap(), &y3).unwrap();
    assert_eq!(a.dims(), &[2, 2]);
    assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let bad = CrossEntropyLoss { weight: Some(t(&[1.0, 2.0], &[2])), ..Default::default() };
    assert!(bad.loss(&t(&logits, &[4, 3]), &Tensor::from_vec(vec![0i64, 1, 2, 0], 4, CPU).unwrap()).is_err());
}

/// `layer_norm` with optional affine parameters and `eps`, in f32 and f64, against the
/// definition (biased variance, eps inside the root); `LayerNorm::with_options`.
#[test]
fn layer_norm_options() {
    use tensorforge::DType;
    use tensorforge::nn::{LayerNorm, Module};
    let v: Vec<f64> = (0..12).map(|i| ((i * 7) % 5) as f64 - 1.5).collect();
    let (w, b) = ([0.5, 2.0, -1.0], [0.1, 0.0, 0.3]);
    for eps in [1e-5, 0.5] {
        let mut want = Vec::new();
        for row in v.chunks(3) {
            let m = row.iter().sum::<f64>() / 3.0;
            let var = row.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 3.0;
            want.extend(row.iter().enumerate().map(|(j, x)| (x - m) / (var + eps).sqrt() * w[j] + b[j]));
        }
        for dtype in [DType::F64, DType::F32] {
            let x = t(&v, &[4, 3]).to_dtype(dtype).unwrap();
            let got = x
                .layer_norm(
                    &[3],
                    Some(&t(&w, &[3]).to_dtype(dtype).unwrap()),
                    Some(&t(&b, &[3]).to_dtype(dtype).unwrap()),
                    eps,
                )
                .unwrap()
                .to_vec_f64()
                .unwrap();
            let tol = if dtype == DType::F64 { 1e-14 } else { 1e-5 };
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < tol, "{dtype:?} eps {eps}: {g} vs {w}");
            }
        }
    }
    let plain = LayerNorm::with_options(&[3], 0.5, false, CPU).unwrap();
    assert!(plain.named_parameters().is_empty());
    let y = plain.forward(&t(&v, &[4, 3])).unwrap();
    assert_eq!(
        y.to_vec_f64().unwrap(),
        t(&v, &[4, 3]).layer_norm(&[3], None, None, 0.5).unwrap().to_vec_f64().unwrap()
    );
    assert!(LayerNorm::with_options(&[3], -1.0, true, CPU).is_err());
    let (wt, bt) = (t(&w, &[3]).requires_grad(), t(&b, &[3]).requires_grad());
    gradcheck(|a| a[0].layer_norm(&[3], Some(&a[1]), Some(&a[2]), 1e-5), &[t(&v, &[4, 3]).requires_grad(), wt, bt])
        .unwrap();
}

/// `batch_norm` as PyTorch: batch statistics in training (biased variance for the output),
/// running statistics updated in place with the unbiased variance and `momentum`, running
/// statistics in evaluation; f32 and f64; the gradient by finite differences.
#[test]
fn batch_norm_functional() {
    use tensorforge::DType;
    let v: Vec<f64> = (0..24).map(|i| ((i * 5) % 9) as f64 * 0.5 - 1.0).collect(); // [N=2, C=3, L=4]
    let (n, c, l) = (2, 3, 4);
    let at = |i: usize, ch: usize, k: usize| v[(i * c + ch) * l + k];
    let (momentum, eps) = (0.3, 1e-5);
    let (w, b) = ([1.5, -0.5, 2.0], [0.0, 1.0, -1.0]);
    for dtype in [DType::F64, DType::F32] {
        let x = t(&v, &[n, c, l]).to_dtype(dtype).unwrap();
        let rm = t(&[0.1, 0.2, 0.3], &[3]).to_dtype(dtype).unwrap();
        let rv = t(&[1.0, 2.0, 0.5], &[3]).to_dtype(dtype).unwrap();
        let (wt, bt) = (t(&w, &[3]).to_dtype(dtype).unwrap(), t(&b, &[3]).to_dtype(dtype).unwrap());
        let y = x.batch_norm(Some(&rm), Some(&rv), Some(&wt), Some(&bt), true, momentum, eps).unwrap();
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        let y = y.to_vec_f64().unwrap();
        let (rm_new, rv_new) = (rm.to_vec_f64().unwrap(), rv.to_vec_f64().unwrap());
        for ch in 0..c {
            let vals: Vec<f64> = (0..n).flat_map(|i| (0..l).map(move |k| (i, k))).map(|(i, k)| at(i, ch, k)).collect();
            let m = vals.iter().sum::<f64>() / 8.0;
            let var = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 8.0;
            for i in 0..n {
                for k in 0..l {
                    let want = (at(i, ch, k) - m) / (var + eps).sqrt() * w[ch] + b[ch];
                    assert!((y[(i * c + ch) * l + k] - want).abs() < tol, "{dtype:?}");
                }
            }
            let (old_m, old_v) = ([0.1, 0.2, 0.3][ch], [1.0, 2.0, 0.5][ch]);
            assert!((rm_new[ch] - ((1.0 - momentum) * old_m + momentum * m)).abs() < tol, "running mean");
            assert!((rv_new[ch] - ((1.0 - momentum) * old_v + momentum * var * 8.0 / 7.0)).abs() < tol, "running var");
        }
        // Evaluation: the running statistics, unchanged by the call.
        let e = x.batch_norm(Some(&rm), Some(&rv), None, None, false, momentum, eps).unwrap().to_vec_f64().unwrap();
        assert_eq!(rm.to_vec_f64().unwrap(), rm_new);
        for ch in 0..c {
            let want = (at(1, ch, 2) - rm_new[ch]) / (rv_new[ch] + eps).sqrt();
            assert!((e[(c + ch) * l + 2] - want).abs() < tol);
        }
    }
    assert!(t(&v, &[n, c, l]).batch_norm(None, None, None, None, false, 0.1, 1e-5).is_err(), "eval needs stats");
    assert!(t(&v, &[n, c, l]).batch_norm(Some(&t(&[0.0; 2], &[2])), None, None, None, true, 0.1, 1e-5).is_err());
    gradcheck(
        |a| a[0].batch_norm(None, None, Some(&a[1]), Some(&a[2]), true, 0.1, 1e-5),
        &[t(&v, &[n, c, l]).requires_grad(), t(&w, &[3]).requires_grad(), t(&b, &[3]).requires_grad()],
    )
    .unwrap();
}

/// CTC with PyTorch's concatenated 1-D targets gives the padded form's loss and gradient;
/// a length sum that does not match is an `Err`.
#[test]
fn ctc_concatenated_targets() {
    use tensorforge::nn::CtcLoss;
    let raw: Vec<f64> = (0..5 * 2 * 4).map(|i| ((i * 7) % 13) as f64 * 0.2).collect();
    let lp = t(&raw, &[5, 2, 4]).log_softmax(2).unwrap();
    let padded = Tensor::from_vec(vec![1i64, 3, 2, 2, 0, 0], (2, 3), CPU).unwrap();
    let concat = Tensor::from_vec(vec![1i64, 3, 2, 2], 4, CPU).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let ctc = CtcLoss { reduction, ..CtcLoss::new() };
        let a = ctc.loss(&lp, &padded, &[5, 4], &[3, 1]).unwrap().to_vec_f64().unwrap();
        let b = ctc.loss(&lp, &concat, &[5, 4], &[3, 1]).unwrap().to_vec_f64().unwrap();
        assert_eq!(a, b, "{reduction:?}");
    }
    assert!(CtcLoss::new().loss(&lp, &concat, &[5, 4], &[3, 2]).is_err());
    let x = t(&raw, &[5, 2, 4]).requires_grad();
    gradcheck(|a| CtcLoss::new().loss(&a[0].log_softmax(2)?, &concat, &[5, 4], &[3, 1]), &[x]).unwrap();
}

/// `max_pool2d_with_indices` (with and without `ceil_mode`) against a direct loop over
/// PyTorch's windows, and `max_unpool2d` putting each maximum back at its index.
#[test]
fn max_pool2d_indices_ceil_mode_and_unpool() {
    let (h, w) = (5, 7);
    let v: Vec<f64> = (0..2 * h * w).map(|i| ((i * 37) % 23) as f64 - 11.0 + (i as f64) * 1e-3).collect();
    let x = t(&v, &[1, 2, h, w]);
    for (k, s, p) in
        [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 2), (2, 3), (1, 0)), ((2, 3), (1, 2), (0, 1))]
    {
        for ceil in [false, true] {
            let size = |n: usize, k: usize, s: usize, p: usize| {
                let num = n + 2 * p - k;
                let mut o = if ceil { num.div_ceil(s) } else { num / s } + 1;
                if ceil && (o - 1) * s >= n + p {
                    o -= 1;
                }
                o
            };
            let (oh, ow) = (size(h, k.0, s.0, p.0), size(w, k.1, s.1, p.1));
            let (vals, idx) = x.max_pool2d_with_indices(k, s, p, ceil).unwrap();
            assert_eq!(vals.dims(), &[1, 2, oh, ow], "k {k:?} s {s:?} p {p:?} ceil {ceil}");
            let (vals, idx) = (vals.to_vec_f64().unwrap(), idx.to_vec_f64().unwrap());
            for ch in 0..2 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = (f64::NEG_INFINITY, 0usize);
                        for i in 0..k.0 {
                            for j in 0..k.1 {
                                let (y, xx) =
                                    ((oy * s.0 + i) as isize - p.0 as isize, (ox * s.1 + j) as isize - p.1 as isize);
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    let at = y as usize * w + xx as usize;
                                    if v[ch * h * w + at] > best.0 {
                                        best = (v[ch * h * w + at], at);
                                    }
                                }
                            }
                        }
                        let o = (ch * oh + oy) * ow + ox;
                        assert_eq!((vals[o], idx[o] as usize), best, "k {k:?} s {s:?} p {p:?} ceil {ceil} at {o}");
                    }
                }
            }
            if !ceil {
                assert_eq!(vals, x.max_pool2d(k, s, p).unwrap().to_vec_f64().unwrap());
            }
        }
    }
    let (vals, idx) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0), true).unwrap();
    let back = vals.max_unpool2d(&idx, (h, w)).unwrap().to_vec_f64().unwrap();
    for (i, b) in back.iter().enumerate() {
        assert!(*b == 0.0 || *b == v[i], "unpool puts values back where they were");
    }
    assert_eq!(back.iter().filter(|&&b| b != 0.0).count(), vals.elem_count());
    gradcheck(|a| Ok(a[0].max_pool2d_with_indices((3, 2), (2, 2), (1, 1), true)?.0), &[x.requires_grad()]).unwrap();
}
