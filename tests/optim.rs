//! Optimizers against hand-computed updates (f64), and the schedules.

use tensorforge::optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, ConstantLr, CosineLr, LrSchedule, Optimizer, RmsProp,
    RmsPropConfig, Sgd, SgdConfig, StepLr, WarmUp,
};
use tensorforge::{Device, Tensor};

const P0: [f64; 3] = [1.0, -2.0, 0.5];
/// The loss is `Σ c·p`, so the gradient is the constant `c` at every step.
const C: [f64; 3] = [0.5, -1.5, 2.0];

fn param() -> Tensor {
    Tensor::from_vec(P0.to_vec(), 3, Device::Cpu).unwrap().requires_grad()
}

/// Runs `steps` updates on the linear loss and returns the parameter after each.
fn run(p: &Tensor, opt: &mut dyn Optimizer, steps: usize) -> Vec<Vec<f64>> {
    let c = Tensor::from_vec(C.to_vec(), 3, Device::Cpu).unwrap();
    (0..steps)
        .map(|_| {
            opt.zero_grad();
            p.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            opt.step().unwrap();
            p.to_vec1::<f64>().unwrap()
        })
        .collect()
}

fn close(a: &[f64], b: &[f64]) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
    }
}

#[test]
fn sgd_plain_first_steps() {
    let p = param();
    let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 2);
    close(&got[0], &[0.95, -1.85, 0.3]);
    close(&got[1], &[0.9, -1.7, 0.1]);
}

#[test]
fn sgd_momentum_and_weight_decay() {
    let p = param();
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.1, ..Default::default() };
    let mut opt = Sgd::new(vec![p.clone()], cfg).unwrap();
    let got = run(&p, &mut opt, 2);
    // Element 0 by hand: d1 = 0.5 + 0.1·1 = 0.6, v1 = 0.6, p1 = 1 − 0.06 = 0.94;
    // d2 = 0.5 + 0.094 = 0.594, v2 = 0.54 + 0.594 = 1.134, p2 = 0.94 − 0.1134 = 0.8266.
    assert!((got[0][0] - 0.94).abs() < 1e-12);
    assert!((got[1][0] - 0.8266).abs() < 1e-12);
    // All elements against the same recurrence.
    for i in 0..3 {
        let (mut x, mut v) = (P0[i], 0.0);
        for got in &got {
            let d = C[i] + 0.1 * x;
            v = 0.9 * v + d;
            x -= 0.1 * v;
            assert!((got[i] - x).abs() < 1e-12);
        }
    }
}

#[test]
fn sgd_nesterov() {
    let p = param();
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() };
    let mut opt = Sgd::new(vec![p.clone()], cfg).unwrap();
    let got = run(&p, &mut opt, 2);
    // Element 0: v1 = 0.5, p1 = 1 − 0.1·(0.5 + 0.45) = 0.905;
    // v2 = 0.45 + 0.5 = 0.95, p2 = 0.905 − 0.1·(0.5 + 0.855) = 0.7695.
    assert!((got[0][0] - 0.905).abs() < 1e-12);
    assert!((got[1][0] - 0.7695).abs() < 1e-12);
    // Nesterov without momentum is rejected.
    assert!(Sgd::new(vec![param()], SgdConfig { nesterov: true, ..Default::default() }).is_err());
}

#[test]
fn adam_first_steps() {
    let p = param();
    let mut opt = Adam::new(vec![p.clone()], AdamConfig { lr: 0.1, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 3);
    // With a constant gradient the bias-corrected moments are exactly g and g², so every
    // step moves each element by lr·g/(|g| + ε) ≈ lr·sign(g).
    for (k, got) in got.iter().enumerate() {
        let want: Vec<f64> = P0.iter().zip(C).map(|(p, g)| p - (k + 1) as f64 * 0.1 * g / (g.abs() + 1e-8)).collect();
        close(got, &want);
    }
}

#[test]
fn adam_l2_weight_decay_vs_adamw_decoupled() {
    let wd = 0.5;
    let p = param();
    let mut opt = Adam::new(vec![p.clone()], AdamConfig { lr: 0.1, weight_decay: wd, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 1);
    // Adam folds the decay into the gradient: after one step it is still ≈ lr·sign(g + λp).
    let want: Vec<f64> = P0
        .iter()
        .zip(C)
        .map(|(p, g)| {
            let g = g + wd * p;
            p - 0.1 * g / (g.abs() + 1e-8)
        })
        .collect();
    close(&got[0], &want);

    let p = param();
    let mut opt = AdamW::new(vec![p.clone()], AdamConfig { lr: 0.1, weight_decay: wd, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 2);
    let mut want = P0.to_vec();
    for got in &got {
        for i in 0..3 {
            want[i] = want[i] * (1.0 - 0.1 * wd) - 0.1 * C[i] / (C[i].abs() + 1e-8);
        }
        close(got, &want);
    }
    assert_eq!(AdamW::default_config().weight_decay, 0.01);
}

#[test]
fn rmsprop_first_steps() {
    let p = param();
    let mut opt = RmsProp::new(vec![p.clone()], RmsPropConfig { lr: 0.01, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 2);
    // s1 = 0.01·g², so the first step is lr·g/(0.1·|g| + ε) ≈ 0.1·sign(g).
    let mut want = P0.to_vec();
    let mut s = [0.0; 3];
    for got in &got {
        for i in 0..3 {
            s[i] = 0.99 * s[i] + 0.01 * C[i] * C[i];
            want[i] -= 0.01 * C[i] / (s[i].sqrt() + 1e-8);
        }
        close(got, &want);
    }
    assert!((got[0][0] - (1.0 - 0.01 * 0.5 / (0.05 + 1e-8))).abs() < 1e-12);

    let p = param();
    let cfg = RmsPropConfig { lr: 0.01, momentum: 0.9, ..Default::default() };
    let mut opt = RmsProp::new(vec![p.clone()], cfg).unwrap();
    let got = run(&p, &mut opt, 2);
    let (mut want, mut s, mut b) = (P0.to_vec(), [0.0; 3], [0.0; 3]);
    for got in &got {
        for i in 0..3 {
            s[i] = 0.99 * s[i] + 0.01 * C[i] * C[i];
            b[i] = 0.9 * b[i] + C[i] / (s[i].sqrt() + 1e-8);
            want[i] -= 0.01 * b[i];
        }
        close(got, &want);
    }
}

#[test]
fn adagrad_first_steps() {
    let p = param();
    let mut opt = Adagrad::new(vec![p.clone()], AdagradConfig { lr: 0.1, ..Default::default() }).unwrap();
    let got = run(&p, &mut opt, 2);
    // s1 = g², s2 = 2g²: steps of 0.1·sign(g), then 0.1·sign(g)/√2.
    let want1: Vec<f64> = P0.iter().zip(C).map(|(p, g)| p - 0.1 * g / (g.abs() + 1e-10)).collect();
    close(&got[0], &want1);
    let want2: Vec<f64> = want1.iter().zip(C).map(|(p, g)| p - 0.1 * g / (2f64.sqrt() * g.abs() + 1e-10)).collect();
    close(&got[1], &want2);
}

#[test]
fn f32_parameters_and_skipped_parameters() {
    // f32 params; the second parameter never gets a gradient, so it must stay untouched.
    let a = Tensor::from_vec(vec![1.0f32, 2.0], 2, Device::Cpu).unwrap().requires_grad();
    let b = Tensor::from_vec(vec![5.0f32], 1, Device::Cpu).unwrap().requires_grad();
    let mut opt =
        Sgd::new(vec![a.clone(), b.clone()], SgdConfig { lr: 0.5, momentum: 0.9, ..Default::default() }).unwrap();
    a.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    opt.step().unwrap();
    assert_eq!(a.to_vec1::<f32>().unwrap(), vec![0.0, 0.0]);
    assert_eq!(b.to_vec1::<f32>().unwrap(), vec![5.0]);
    // zero_grad clears, lr round-trips.
    opt.zero_grad();
    assert!(a.grad().is_none());
    opt.set_lr(0.25);
    assert_eq!(opt.lr(), 0.25);
    assert_eq!(opt.parameters().len(), 2);
}

#[test]
fn bad_parameters_are_errors() {
    let not_var = Tensor::ones(3, tensorforge::DType::F32, Device::Cpu).unwrap();
    assert!(Adam::new(vec![not_var], AdamConfig::default()).is_err());
    let ints = Tensor::from_vec(vec![1i64, 2], 2, Device::Cpu).unwrap().requires_grad();
    assert!(Adam::new(vec![ints], AdamConfig::default()).is_err());
    assert!(Adam::new(vec![param()], AdamConfig { beta1: 1.0, ..Default::default() }).is_err());
    assert!(Sgd::new(vec![param()], SgdConfig { lr: f64::NAN, ..Default::default() }).is_err());
    // A variable viewing part of a buffer cannot be updated in place: an error, not a panic.
    let base = Tensor::zeros(6, tensorforge::DType::F64, Device::Cpu).unwrap();
    let view = base.narrow(0, 2, 3).unwrap().requires_grad();
    let mut opt = Sgd::new(vec![view.clone()], SgdConfig::default()).unwrap();
    view.sum_all().unwrap().backward().unwrap();
    let err = opt.step().unwrap_err();
    assert!(err.to_string().contains("view"), "{err}");
}

#[test]
fn schedules() {
    assert_eq!(ConstantLr(0.3).lr(100), 0.3);
    let s = StepLr::new(1.0, 10, 0.5);
    assert_eq!((s.lr(0), s.lr(9), s.lr(10), s.lr(25)), (1.0, 1.0, 0.5, 0.25));
    let c = CosineLr::new(1.0, 0.1, 100);
    assert_eq!(c.lr(0), 1.0);
    assert!((c.lr(50) - 0.55).abs() < 1e-12);
    assert_eq!(c.lr(100), 0.1);
    assert_eq!(c.lr(1000), 0.1);
    let w = WarmUp::new(4, StepLr::new(0.8, 2, 0.5));
    let got: Vec<f64> = (0..8).map(|i| w.lr(i)).collect();
    close(&got, &[0.2, 0.4, 0.6, 0.8, 0.8, 0.8, 0.4, 0.4]);
}

/// SGD with dampening seeds the velocity with the first raw gradient, as PyTorch does:
/// p = 1, g = 1 every step, lr 0.1, momentum 0.9, dampening 0.5 gives 0.9 then 0.76
/// (`torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)`).
#[test]
fn sgd_dampening_uses_the_raw_first_gradient() {
    use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
    use tensorforge::{DType, Device, Tensor};
    let p = Tensor::ones(1, DType::F64, Device::Cpu).unwrap().requires_grad();
    let mut opt =
        Sgd::new(vec![p.clone()], SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.5, ..Default::default() }).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        opt.zero_grad();
        p.sum_all().unwrap().backward().unwrap();
        opt.step().unwrap();
        seen.push(p.to_vec_f64().unwrap()[0]);
    }
    // Third step: v = 0.9·1.4 + 0.5 = 1.76, p = 0.76 − 0.176.
    let want = [0.9, 0.76, 0.584];
    for (g, w) in seen.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{seen:?} vs {want:?}");
    }
}
