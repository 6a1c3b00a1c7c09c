//! Mixed precision: autocast's low-precision products with f32 masters, and loss scaling.

use tensorforge::amp::{self, GradScaler};
use tensorforge::data::BatchIter;
use tensorforge::nn::{Linear, Module};
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
use tensorforge::param::ParameterStore;
use tensorforge::train::{Metrics, Step, Trainer};
use tensorforge::{DType, Device, Tensor, no_grad};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    tensorforge::manual_seed(seed);
    Tensor::randn(0.0, 1.0, shape, DType::F32, Device::Cpu).unwrap()
}

/// Largest |a − b| relative to the largest |b|.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn products_run_in_the_low_dtype_and_gradients_reach_f32_masters() {
    let x = randn(&[16, 40], 1);
    let w = randn(&[40, 24], 2).requires_grad();
    let exact = x.matmul(&w).unwrap();
    for (low, tol) in [(DType::BF16, 2e-2), (DType::F16, 2e-3)] {
        let y = amp::autocast(low, || x.matmul(&w)).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        // The same as rounding both operands to `low` first, then an f32-accumulated product.
        let rounded = x.to_dtype(low).unwrap().to_dtype(DType::F32).unwrap();
        let wr = w.to_dtype(low).unwrap().to_dtype(DType::F32).unwrap();
        let want = rounded.matmul(&wr).unwrap();
        assert!(rel(&y, &want) < 1e-2, "{low:?}: {}", rel(&y, &want));
        assert!(rel(&y, &exact) < tol && rel(&y, &exact) > 0.0, "{low:?} should round: {}", rel(&y, &exact));
        w.zero_grad();
        y.sum_all().unwrap().backward().unwrap();
        let g = w.grad().unwrap();
        assert_eq!(g.dtype(), DType::F32);
        let want_g = x.sum_keepdim(0).unwrap().t().unwrap().broadcast_as((40, 24)).unwrap();
        assert!(rel(&g, &want_g) < tol, "{low:?} gradient: {}", rel(&g, &want_g));
    }
    // Outside autocast, and for f64 inputs inside it, nothing changes.
    assert_eq!(amp::autocast_dtype(), None);
    let y64 = amp::autocast(DType::BF16, || x.to_dtype(DType::F64).unwrap().matmul(&w.to_dtype(DType::F64).unwrap()));
    assert_eq!(y64.unwrap().dtype(), DType::F64);
}

#[test]
fn convolutions_autocast_and_backward_ignores_the_setting() {
    let x = randn(&[2, 3, 8, 8], 3);
    let w = randn(&[4, 3, 3, 3], 4).requires_grad();
    let b = randn(&[4], 5).requires_grad();
    let opt = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let exact = x.conv2d(&w, Some(&b), opt).unwrap();
    let y = amp::autocast(DType::BF16, || x.conv2d(&w, Some(&b), opt)).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert!(rel(&y, &exact) < 2e-2);
    // Backward inside autocast: the f32 graph's gradients are computed in f32.
    let loss = x.conv2d(&w, Some(&b), opt).unwrap().sqr().unwrap().sum_all().unwrap();
    amp::autocast(DType::BF16, || loss.backward()).unwrap();
    let g = w.grad().unwrap();
    w.zero_grad();
    x.conv2d(&w, Some(&b), opt).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.to_vec_f64().unwrap(), w.grad().unwrap().to_vec_f64().unwrap());
}

/// Products whose operands are views: a weight shared by a batch (broadcast, cast once), a
/// weight gradient `xᵀ·g` with few columns (on AVX512_BF16 computed as `(gᵀ·x)ᵀ`), and a
/// linear layer's `x·uᵀ`, whose weight gradient `gᵀ·x` copies `gᵀ` transposed and rounded.
#[test]
fn lowered_products_of_broadcast_and_transposed_views() {
    let x = randn(&[4, 7, 9], 13).requires_grad();
    let w = randn(&[9, 5], 14).requires_grad();
    let tall = randn(&[200, 64], 15);
    let v = randn(&[64, 5], 16).requires_grad();
    let xs = randn(&[32, 24], 17);
    let u = randn(&[40, 24], 18).requires_grad();
    let run = |low: Option<DType>| {
        for t in [&x, &w, &v, &u] {
            t.zero_grad();
        }
        let f = || -> tensorforge::Result<(Tensor, Tensor)> {
            let linear = xs.matmul(&u.t()?)?.sqr()?.sum_all()?;
            Ok((x.matmul(&w)?, tall.matmul(&v)?.sqr()?.sum_all()?.add(&linear)?))
        };
        let (y, z) = match low {
            Some(low) => amp::autocast(low, f),
            None => f(),
        }
        .unwrap();
        y.sqr().unwrap().sum_all().unwrap().add(&z).unwrap().backward().unwrap();
        (y, z, x.grad().unwrap(), w.grad().unwrap(), v.grad().unwrap(), u.grad().unwrap())
    };
    let exact = run(None);
    for (low, tol) in [(DType::BF16, 3e-2), (DType::F16, 4e-3)] {
        let got = run(Some(low));
        let pairs = [
            ("y", &got.0, &exact.0),
            ("z", &got.1, &exact.1),
            ("dx", &got.2, &exact.2),
            ("dw", &got.3, &exact.3),
            ("dv", &got.4, &exact.4),
            ("du", &got.5, &exact.5),
        ];
        for (name, g, e) in pairs {
            assert_eq!(g.dtype(), DType::F32, "{low:?} {name}");
            assert_eq!(g.dims(), e.dims(), "{low:?} {name}");
            assert!(rel(g, e) < tol, "{low:?} {name}: {}", rel(g, e));
        }
    }
}

/// A grouped, strided convolution under autocast: one lowered op per group, f32 results,
/// and every gradient (input, weight, bias) within bf16's rounding of the f32 ones.
#[test]
fn grouped_convolutions_autocast_forward_and_backward() {
    let x = randn(&[3, 4, 9, 9], 6).requires_grad();
    let w = randn(&[6, 2, 3, 3], 7).requires_grad();
    let b = randn(&[6], 8).requires_grad();
    let opt = Conv2dOptions { padding: (1, 1), stride: (2, 2), groups: 2, ..Default::default() };
    let run = |low: Option<DType>| {
        for t in [&x, &w, &b] {
            t.zero_grad();
        }
        let f = || x.conv2d(&w, Some(&b), opt);
        let y = match low {
            Some(low) => amp::autocast(low, f),
            None => f(),
        }
        .unwrap();
        y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (y, x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap())
    };
    let exact = run(None);
    for low in [DType::BF16, DType::F16] {
        let got = run(Some(low));
        assert_eq!(got.0.dtype(), DType::F32);
        let tol = if low == DType::BF16 { 3e-2 } else { 4e-3 };
        for (name, g, e) in
            [("y", &got.0, &exact.0), ("dx", &got.1, &exact.1), ("dw", &got.2, &exact.2), ("db", &got.3, &exact.3)]
        {
            assert_eq!(g.dtype(), DType::F32, "{low:?} {name}");
            assert!(rel(g, e) < tol, "{low:?} {name}: {}", rel(g, e));
        }
        assert!(rel(&got.0, &exact.0) > 0.0, "{low:?}: the products should round");
    }
}

#[test]
fn the_scaler_skips_overflowed_steps_and_adapts() {
    let w = Tensor::ones(3, DType::F32, Device::Cpu).unwrap().requires_grad();
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 1.0, ..Default::default() }).unwrap();
    let mut s = GradScaler::new().with_scale(8.0);
    // An overflowed gradient: no step, the gradient left unscaled, the scale halved.
    w.set_grad(Some(Tensor::from_vec(vec![1f32, f32::INFINITY, 2.], 3, Device::Cpu).unwrap())).unwrap();
    assert!(!s.step(&mut opt).unwrap());
    s.update();
    assert_eq!(w.to_vec1::<f32>().unwrap(), vec![1.; 3]);
    assert_eq!(s.get_scale(), 4.0);
    w.set_grad(Some(Tensor::from_vec(vec![f32::NAN, 0., 0.], 3, Device::Cpu).unwrap())).unwrap();
    assert!(!s.step(&mut opt).unwrap());
    s.update();
    assert_eq!(s.get_scale(), 2.0);
    // A clean step: the gradient divided by the scale, then applied.
    opt.zero_grad();
    s.scale(&w.sum_all().unwrap()).unwrap().backward().unwrap();
    assert!(s.step(&mut opt).unwrap());
    assert_eq!(w.grad().unwrap().to_vec1::<f32>().unwrap(), vec![1.; 3]);
    assert_eq!(w.to_vec1::<f32>().unwrap(), vec![0.; 3]);
    assert!(amp::parse_precision("f8").is_err());
}

/// The training loop in bf16 and in f16 (with loss scaling) learns what f32 learns.
#[test]
fn the_trainer_trains_in_every_precision() {
    let x = randn(&[128, 8], 6);
    let w_true = randn(&[8, 1], 7);
    let y = x.matmul(&w_true).unwrap();
    let mut finals = Vec::new();
    for precision in [DType::F32, DType::BF16, DType::F16] {
        tensorforge::manual_seed(8);
        let mut store = ParameterStore::new(Device::Cpu);
        let fc = Linear::from_store(&mut store, "fc", 8, 1).unwrap();
        let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 0.05, ..Default::default() }).unwrap();
        let mut batches = BatchIter::new(128, 16, true, 0);
        let mse = |xb: &Tensor, yb: &Tensor| fc.forward(xb)?.sub(yb)?.sqr()?.mean_all();
        let report = Trainer::new(30)
            .quiet()
            .precision(precision)
            .fit(
                &mut store,
                &mut opt,
                &mut batches,
                |idx| {
                    let ids = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect(), idx.len(), Device::Cpu)?;
                    Ok(Step { loss: mse(&x.index_select(0, &ids)?, &y.index_select(0, &ids)?)?, correct: None })
                },
                || Ok(Metrics { loss: no_grad(|| mse(&x, &y))?.item()?, accuracy: None }),
            )
            .unwrap();
        assert_eq!(store.parameters()[0].dtype(), DType::F32, "masters stay f32");
        finals.push(report.history.last().unwrap().held_out.loss);
    }
    // f32 fits exactly; the low precisions to their rounding of x and w (bf16: 8 bits).
    assert!(finals[0] < 1e-4, "{finals:?}");
    assert!(finals[1] < 1e-2 && finals[2] < 1e-3, "{finals:?}");
}

/// The same autocast on a CUDA device (its bf16/f16 products run on the tensor cores):
/// results and gradients agree with the CPU's autocast to the low dtype's rounding.
#[cfg(feature = "cuda")]
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn autocast_on_cuda_matches_the_cpu() {
    let dev = Device::Cuda(0);
    let x = randn(&[32, 48], 9);
    let w = randn(&[48, 16], 10).requires_grad();
    let wc = w.to_device(dev).unwrap().detach().requires_grad();
    for low in [DType::BF16, DType::F16] {
        let cpu = amp::autocast(low, || x.matmul(&w)).unwrap();
        let gpu = amp::autocast(low, || x.to_device(dev).unwrap().matmul(&wc)).unwrap();
        assert_eq!(gpu.dtype(), DType::F32);
        assert!(rel(&gpu.to_device(Device::Cpu).unwrap(), &cpu) < 1e-2, "{low:?}");
        w.zero_grad();
        wc.zero_grad();
        cpu.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        gpu.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (g, gc) = (w.grad().unwrap(), wc.grad().unwrap().to_device(Device::Cpu).unwrap());
        assert_eq!(gc.dtype(), DType::F32);
        assert!(rel(&gc, &g) < 2e-2, "{low:?} gradient: {}", rel(&gc, &g));
        // A convolution: the CUDA backend's casts around its product against the CPU's.
        let img = randn(&[2, 3, 7, 7], 11);
        let k = randn(&[4, 3, 3, 3], 12).requires_grad();
        let kc = k.to_device(dev).unwrap().detach().requires_grad();
        let opt = Conv2dOptions { padding: (1, 1), ..Default::default() };
        let cpu = amp::autocast(low, || img.conv2d(&k, None, opt)).unwrap();
        let gpu = amp::autocast(low, || img.to_device(dev).unwrap().conv2d(&kc, None, opt)).unwrap();
        assert_eq!(gpu.dtype(), DType::F32);
        assert!(rel(&gpu.to_device(Device::Cpu).unwrap(), &cpu) < 1e-2, "{low:?} conv");
        cpu.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        gpu.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (g, gc) = (k.grad().unwrap(), kc.grad().unwrap().to_device(Device::Cpu).unwrap());
        assert!(rel(&gc, &g) < 2e-2, "{low:?} conv gradient: {}", rel(&gc, &g));
    }
}
