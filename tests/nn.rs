//! Layers, losses and the parameter store; pytensor's own checks on the digits set.

use tensorforge::gradcheck::{GradCheck, gradcheck, gradcheck_with};
use tensorforge::nn::{
    BceWithLogitsLoss, CrossEntropyLoss, Dropout, Embedding, GELU, Linear, Loss, Module, MseLoss, NllLoss, ReLU,
    Reduction, Sequential, SiLU, Sigmoid, SquareError, Tanh,
};
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::param::{Init, ParameterStore};
use tensorforge::{DType, Device, Tensor};

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, Device::Cpu).unwrap()
}

/// The first `n` digits as f64 `[n, 64]` features and i64 labels.
fn digits_sample(n: usize) -> (Tensor, Tensor) {
    let d = tensorforge::data::digits::load();
    let idx: Vec<usize> = (0..n).collect();
    let (x, y) = d.gather(&idx);
    let x: Vec<f64> = x.into_iter().map(f64::from).collect();
    (t64(&x, &[n, 64]), Tensor::from_vec(y, n, Device::Cpu).unwrap())
}

/// pytensor's check: a Linear 64→10 on digits with a softmax cross-entropy, autograd
/// against finite differences on the weight and the bias.
#[test]
fn pytensor_linear_64_10_on_digits() {
    let (x, y) = digits_sample(12);
    let l = Linear::new(64, 10, Device::Cpu).unwrap();
    let (w, b) = (l.weight().clone(), l.bias().unwrap().clone());
    gradcheck(
        |p| CrossEntropyLoss::new().loss(&Linear::from_tensors(p[0].clone(), Some(p[1].clone()))?.forward(&x)?, &y),
        &[w, b],
    )
    .unwrap();
}

/// pytensor's check: an MLP 64→30→10 (ReLU) on digits, gradcheck on all four parameters.
#[test]
fn pytensor_mlp_64_30_10_on_digits() {
    let (x, y) = digits_sample(12);
    let l1 = Linear::new(64, 30, Device::Cpu).unwrap();
    let l2 = Linear::new(30, 10, Device::Cpu).unwrap();
    let params: Vec<Tensor> = l1.parameters().into_iter().chain(l2.parameters()).collect();
    gradcheck(
        |p| {
            let mlp = Sequential::new()
                .add(Linear::from_tensors(p[0].clone(), Some(p[1].clone()))?)
                .add(ReLU)
                .add(Linear::from_tensors(p[2].clone(), Some(p[3].clone()))?);
            CrossEntropyLoss::new().loss(&mlp.forward(&x)?, &y)
        },
        &params,
    )
    .unwrap();
}

#[test]
fn linear_shapes_init_and_names() {
    tensorforge::manual_seed(3);
    let l = Linear::new(16, 4, Device::Cpu).unwrap();
    assert_eq!(l.weight().dims(), &[4, 16]);
    let bound = 1.0 / 4.0;
    let w = l.weight().to_vec_f64().unwrap();
    assert!(w.iter().all(|v| v.abs() <= bound), "Kaiming-uniform bound 1/sqrt(16)");
    assert!(w.iter().any(|v| v.abs() > bound / 2.0));
    // Works on any leading dims.
    let y = l.forward(&Tensor::ones((2, 3, 16), DType::F32, Device::Cpu).unwrap()).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4]);
    let names: Vec<String> = Sequential::new()
        .add(l)
        .add(Tanh)
        .add(Linear::new(4, 2, Device::Cpu).unwrap())
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert!(Linear::from_tensors(t64(&[1.0; 4], &[4]), None).is_err());
    assert!(Linear::from_tensors(t64(&[1.0; 4], &[2, 2]), Some(t64(&[1.0; 3], &[3]))).is_err());
}

#[test]
fn activation_modules_match_tensor_ops() {
    let x = t64(&[-1.5, -0.2, 0.3, 2.0], &[4]);
    let pairs: Vec<(Box<dyn Module>, Tensor)> = vec![
        (Box::new(ReLU), x.relu().unwrap()),
        (Box::new(Tanh), x.tanh().unwrap()),
        (Box::new(Sigmoid), x.sigmoid().unwrap()),
        (Box::new(GELU), x.gelu().unwrap()),
        (Box::new(SiLU), x.silu().unwrap()),
    ];
    for (m, want) in pairs {
        assert_eq!(m.forward(&x).unwrap().to_vec1::<f64>().unwrap(), want.to_vec1::<f64>().unwrap());
        assert!(m.parameters().is_empty());
    }
}

#[test]
fn embedding_repeated_id_accumulates_once_per_use() {
    let w = t64(&(0..12).map(f64::from).collect::<Vec<_>>(), &[4, 3]).requires_grad();
    let e = Embedding::from_tensor(w.clone()).unwrap();
    let ids = Tensor::from_vec(vec![1i64, 1, 2], 3, Device::Cpu).unwrap();
    let y = e.forward(&ids).unwrap();
    assert_eq!(y.to_vec2::<f64>().unwrap(), vec![vec![3., 4., 5.], vec![3., 4., 5.], vec![6., 7., 8.]]);
    // Upstream gradient: the same row u for every lookup.
    let u = t64(&[1.0, -2.0, 0.5], &[3]);
    y.mul(&u).unwrap().sum_all().unwrap().backward().unwrap();
    let g = w.grad().unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(g[0], vec![0.0, 0.0, 0.0]);
    assert_eq!(g[1], vec![2.0, -4.0, 1.0], "id 1 used twice: 2 × upstream");
    assert_eq!(g[2], vec![1.0, -2.0, 0.5]);
    assert_eq!(g[3], vec![0.0, 0.0, 0.0]);
    // Out-of-range ids are an error, not a panic.
    assert!(e.forward(&Tensor::from_vec(vec![4i64], 1, Device::Cpu).unwrap()).is_err());
}

#[test]
fn dropout_modes() {
    let x = Tensor::ones((100, 100), DType::F32, Device::Cpu).unwrap().requires_grad();
    let mut d = Dropout::new(0.25).unwrap();
    let y = d.forward(&x).unwrap();
    let v = y.to_vec::<f32>().unwrap();
    let kept = v.iter().filter(|&&a| a != 0.0).count();
    assert!((7000..8000).contains(&kept), "kept {kept} of 10000 at p = 0.25");
    assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.75).abs() < 1e-6), "survivors scaled by 1/(1-p)");
    // The gradient uses the same mask and scale.
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), v);
    d.set_training(false);
    assert!(!d.is_training());
    assert_eq!(d.forward(&x).unwrap().id(), x.id(), "eval mode is the identity");
    assert!(Dropout::new(1.5).is_err());
    let all = Dropout::new(1.0).unwrap().forward(&x).unwrap();
    assert!(all.to_vec::<f32>().unwrap().iter().all(|&a| a == 0.0));
    // Sequential forwards the mode.
    let mut s = Sequential::new().add(Dropout::new(0.5).unwrap());
    s.set_training(false);
    assert_eq!(s.forward(&x).unwrap().to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
}

#[test]
fn loss_values_by_hand() {
    let p = t64(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let t = t64(&[0.0, 2.0, 5.0], &[3]);
    assert!((MseLoss::new().loss(&p, &t).unwrap().item().unwrap() - 5.0 / 3.0).abs() < 1e-12);
    assert_eq!(MseLoss { reduction: Reduction::Sum }.loss(&p, &t).unwrap().item().unwrap(), 5.0);
    let se = SquareError.loss(&p, &t).unwrap();
    assert_eq!(se.item().unwrap(), 2.5);
    se.backward().unwrap();
    assert_eq!(p.grad().unwrap().to_vec1::<f64>().unwrap(), vec![1.0, 0.0, -2.0], "½Σ(y−t)² has gradient y − t");

    // Cross-entropy: −log softmax([0, ln 3])[1] = −log(3/4).
    let logits = t64(&[0.0, 3f64.ln(), 0.0, 0.0], &[2, 2]);
    let y = Tensor::from_vec(vec![1i64, 0], 2, Device::Cpu).unwrap();
    let ce = CrossEntropyLoss { reduction: Reduction::None, ..Default::default() }.loss(&logits, &y).unwrap();
    let v = ce.to_vec1::<f64>().unwrap();
    assert!((v[0] + (0.75f64).ln()).abs() < 1e-12 && (v[1] - 2f64.ln()).abs() < 1e-12);
    // Label smoothing ε: (1−ε)·nll + ε·mean_c(−log p_c).
    let sm = CrossEntropyLoss { reduction: Reduction::None, label_smoothing: 0.2, ..Default::default() }
        .loss(&logits, &y)
        .unwrap();
    let want0 = 0.8 * -(0.75f64).ln() + 0.2 * (-(0.25f64).ln() - (0.75f64).ln()) / 2.0;
    assert!((sm.to_vec1::<f64>().unwrap()[0] - want0).abs() < 1e-12);
    // NLL on log-probs agrees with cross-entropy on logits.
    let nll = NllLoss::new().loss(&logits.log_softmax(-1).unwrap(), &y).unwrap().item().unwrap();
    let ce = CrossEntropyLoss::new().loss(&logits, &y).unwrap().item().unwrap();
    assert!((nll - ce).abs() < 1e-12);

    // BCE with logits: stable at ±100, and log 2 at 0.
    let x = t64(&[0.0, 100.0, -100.0], &[3]);
    let t = t64(&[1.0, 1.0, 0.0], &[3]);
    let b = BceWithLogitsLoss { reduction: Reduction::None, pos_weight: None }
        .loss(&x, &t)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!((b[0] - 2f64.ln()).abs() < 1e-12 && b[1].abs() < 1e-12 && b[2].abs() < 1e-12, "{b:?}");
    let x32 = Tensor::from_vec(vec![200f32, -200.0], 2, Device::Cpu).unwrap();
    let t32 = Tensor::from_vec(vec![0f32, 1.0], 2, Device::Cpu).unwrap();
    assert!((BceWithLogitsLoss::new().loss(&x32, &t32).unwrap().item().unwrap() - 200.0).abs() < 1e-3);
}

#[test]
fn loss_input_errors() {
    let p = t64(&[1.0, 2.0], &[2, 1]);
    assert!(MseLoss::new().loss(&p, &t64(&[1.0, 2.0], &[2])).is_err(), "no silent broadcasting");
    let logits = t64(&[0.0; 6], &[2, 3]);
    assert!(CrossEntropyLoss::new().loss(&logits, &t64(&[0.0, 1.0], &[2])).is_err(), "float targets");
    let bad = Tensor::from_vec(vec![0i64, 3], 2, Device::Cpu).unwrap();
    assert!(CrossEntropyLoss::new().loss(&logits, &bad).is_err(), "class out of range");
    let short = Tensor::from_vec(vec![0i64], 1, Device::Cpu).unwrap();
    assert!(CrossEntropyLoss::new().loss(&logits, &short).is_err(), "wrong batch size");
    let good = Tensor::from_vec(vec![0i64, 2], 2, Device::Cpu).unwrap();
    assert!(CrossEntropyLoss::with_label_smoothing(1.5).loss(&logits, &good).is_err());
}

#[test]
fn store_shares_parameters_by_name() {
    let mut s = ParameterStore::with_dtype(Device::Cpu, DType::F64);
    let w1 = s.get_or_init("cell.w", (3, 3), Init::Normal { mean: 0.0, std: 0.5 }).unwrap();
    let b = s.get_or_init("cell.b", 3, Init::Zeros).unwrap();
    let w2 = s.get_or_init("cell.w", (3, 3), Init::Zeros).unwrap();
    assert_eq!(w1.id(), w2.id());
    assert!(s.get_or_init("cell.w", (3, 4), Init::Zeros).is_err(), "same name, other shape");
    assert_eq!(s.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["cell.w", "cell.b"]);
    assert_eq!((s.len(), s.num_parameters()), (2, 12));

    // An RNN unrolled over 3 steps with one weight fetched by name per step: the gradient is
    // the sum over steps, checked against finite differences.
    let xs = [t64(&[0.5, -0.3, 0.8], &[3]), t64(&[-0.1, 0.4, 0.2], &[3]), t64(&[0.9, 0.1, -0.7], &[3])];
    let unroll = |w: &Tensor, b: &Tensor| {
        let mut h = t64(&[0.0; 3], &[3]);
        for x in &xs {
            h = w.matmul(&h)?.add(x)?.add(b)?.tanh()?;
        }
        Ok(h)
    };
    gradcheck(|p| unroll(&p[0], &p[1]), &[w1.clone(), b.clone()]).unwrap();
    let h = {
        let mut h = t64(&[0.0; 3], &[3]);
        for x in &xs {
            let w = s.get_or_init("cell.w", (3, 3), Init::Zeros).unwrap();
            h = w.matmul(&h).unwrap().add(x).unwrap().add(&b).unwrap().tanh().unwrap();
        }
        h
    };
    h.sum_all().unwrap().backward().unwrap();
    assert!(w1.grad().is_some());
    s.zero_grad();
    assert!(w1.grad().is_none() && b.grad().is_none());
}

#[test]
fn store_save_load_roundtrip() {
    let dir = std::env::temp_dir().join(format!("tensorforge-param-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.safetensors");
    let mut s = ParameterStore::new(Device::Cpu);
    let l = Linear::from_store(&mut s, "fc", 5, 3).unwrap();
    let mut s64 = ParameterStore::with_dtype(Device::Cpu, DType::F64);
    s64.get_or_init("x", (2, 2), Init::Uniform { lo: -1.0, hi: 1.0 }).unwrap();
    s.save(&path).unwrap();

    // Into a fresh store: everything is created, in order, with the values.
    let mut fresh = ParameterStore::new(Device::Cpu);
    fresh.load(&path).unwrap();
    assert_eq!(fresh.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
    assert_eq!(fresh.get("fc.weight").unwrap().to_vec2::<f32>().unwrap(), l.weight().to_vec2::<f32>().unwrap());

    // Into an existing store: in place, so a module holding the parameter sees the values.
    let mut other = ParameterStore::new(Device::Cpu);
    tensorforge::manual_seed(999);
    let l2 = Linear::from_store(&mut other, "fc", 5, 3).unwrap();
    assert_ne!(l2.weight().to_vec2::<f32>().unwrap(), l.weight().to_vec2::<f32>().unwrap());
    other.load(&path).unwrap();
    assert_eq!(l2.weight().to_vec2::<f32>().unwrap(), l.weight().to_vec2::<f32>().unwrap());
    assert!(l2.weight().is_variable());

    // f64 too; a shape clash and a corrupt file are errors.
    let p64 = dir.join("p64.safetensors");
    s64.save(&p64).unwrap();
    let mut back = ParameterStore::with_dtype(Device::Cpu, DType::F64);
    back.load(&p64).unwrap();
    assert_eq!(back.get("x").unwrap().to_vec_f64().unwrap(), s64.get("x").unwrap().to_vec_f64().unwrap());
    let mut clash = ParameterStore::new(Device::Cpu);
    clash.get_or_init("fc.bias", 4, Init::Zeros).unwrap();
    assert!(clash.load(&path).is_err());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(ParameterStore::new(Device::Cpu).load(&path).is_err(), "truncated");
    std::fs::write(&path, b"garbage").unwrap();
    assert!(ParameterStore::new(Device::Cpu).load(&path).is_err(), "bad magic");
    assert!(ParameterStore::new(Device::Cpu).load(dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// After backward the graph is gone: gradients carry no history, parameters stay leaves,
/// and a second backward through the same loss is an error rather than a silent re-use.
#[test]
fn tape_is_freed_after_backward() {
    let l = Linear::new(4, 2, Device::Cpu).unwrap();
    let mut opt = Sgd::new(l.parameters(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
    let x = Tensor::ones((3, 4), DType::F32, Device::Cpu).unwrap();
    let y = Tensor::from_vec(vec![0i64, 1, 1], 3, Device::Cpu).unwrap();
    for _ in 0..3 {
        let loss = CrossEntropyLoss::new().loss(&l.forward(&x).unwrap(), &y).unwrap();
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
        assert!(loss.backward().is_err(), "graph freed");
        for p in l.parameters() {
            assert!(p.is_variable());
            assert!(!p.grad().unwrap().tracks_grad(), "gradients carry no graph");
        }
    }
}

#[test]
fn gradcheck_reports_settings_and_errors() {
    // A function of integer inputs only has nothing to check.
    let ids = Tensor::from_vec(vec![1i64], 1, Device::Cpu).unwrap();
    assert!(gradcheck(|a| a[0].to_dtype(DType::F64), &[ids]).is_err());
    // f32 inputs are promoted to f64 for the check.
    let x = Tensor::from_vec(vec![0.3f32, 0.7], 2, Device::Cpu).unwrap();
    gradcheck_with(|a| a[0].exp()?.mul(&a[0]), &[x], &GradCheck { eps: 1e-5, ..Default::default() }).unwrap();
}
