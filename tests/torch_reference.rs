//! The PyTorch options and gradient conventions against values PyTorch computed:
//! `tests/fixtures/torch/ops.safetensors`, written by `scripts/torch-fixtures.sh` (float64).
//! Each case holds its inputs, PyTorch's output, a projection `w` and the gradients of
//! `sum(out · w)`; the engine must agree to 1e-12 (relative to 1 + |value|).

use std::collections::HashMap;
use tensorforge::nn::{
    BceWithLogitsLoss, CrossEntropyLoss, CtcLoss, Embedding, HuberLoss, Loss, Module, Reduction, SmoothL1Loss,
};
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::{Device, Result, Tensor};

struct Fixture(HashMap<String, Tensor>);

impl Fixture {
    fn load() -> Fixture {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/ops.safetensors");
        Fixture(tensorforge::io::read_safetensors(path).unwrap().into_iter().collect())
    }
    fn get(&self, key: &str) -> Tensor {
        self.0.get(key).unwrap_or_else(|| panic!("fixture lacks {key}")).clone()
    }
    fn inputs(&self, case: &str, grad: &[bool]) -> Vec<Tensor> {
        grad.iter()
            .enumerate()
            .map(|(i, &g)| {
                let t = self.get(&format!("{case}.in{i}"));
                if g { t.requires_grad() } else { t }
            })
            .collect()
    }
}

fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: {a} vs PyTorch {b}");
    }
}

/// Runs `f` on the case's inputs and checks its output and every gradient PyTorch has.
fn check(fx: &Fixture, case: &str, grad: &[bool], tol: f64, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let xs = fx.inputs(case, grad);
    let y = f(&xs).unwrap();
    close(&format!("{case} output"), &y, &fx.get(&format!("{case}.out")), tol);
    y.mul(&fx.get(&format!("{case}.w")).to_dtype(y.dtype()).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, x) in xs.iter().enumerate() {
        if let Some(want) = fx.0.get(&format!("{case}.grad{i}")) {
            close(&format!("{case} gradient {i}"), &x.grad().expect("a gradient"), want, tol);
        }
    }
}

const TOL: f64 = 1e-12;

#[test]
fn activations_and_reductions() {
    let fx = Fixture::load();
    check(&fx, "softplus", &[true], TOL, |x| x[0].softplus_with(2.0, 3.0));
    check(&fx, "logsumexp", &[true], TOL, |x| x[0].logsumexp([0, 2], true));
    check(&fx, "amax_ties", &[true], TOL, |x| x[0].amax(1, false));
    check(&fx, "max_dim_ties", &[true], TOL, |x| Ok(x[0].max_dim(1, false)?.0));
    check(&fx, "maximum_ties", &[true, true], TOL, |x| x[0].maximum(&x[1]));
    check(&fx, "pow_at_zero", &[true, false], TOL, |x| x[0].pow(&x[1]));
}

#[test]
fn losses_with_their_options() {
    let fx = Fixture::load();
    check(&fx, "cross_entropy_weighted", &[true, false, false], TOL, |x| {
        let ce = CrossEntropyLoss {
            weight: Some(x[2].clone()),
            ignore_index: Some(-100),
            label_smoothing: 0.1,
            reduction: Reduction::Mean,
        };
        ce.loss(&x[0], &x[1])
    });
    check(&fx, "cross_entropy_nchw_sum", &[true, false], TOL, |x| {
        CrossEntropyLoss { reduction: Reduction::Sum, ..Default::default() }.loss(&x[0], &x[1])
    });
    check(&fx, "bce_pos_weight", &[true, false, false], TOL, |x| {
        BceWithLogitsLoss::with_pos_weight(x[2].clone()).loss(&x[0], &x[1])
    });
    check(&fx, "smooth_l1", &[true, false], TOL, |x| SmoothL1Loss::new(0.5).loss(&x[0], &x[1]));
    check(&fx, "huber", &[true, false], TOL, |x| HuberLoss::new(2.0).loss(&x[0], &x[1]));
    check(&fx, "ctc_concatenated", &[true, false], TOL, |x| {
        CtcLoss::new().loss(&x[0].log_softmax(2)?, &x[1], &[5, 4], &[3, 1])
    });
}

#[test]
fn normalization_with_running_statistics() {
    let fx = Fixture::load();
    check(&fx, "layer_norm", &[true, true, true], TOL, |x| x[0].layer_norm(&[5], Some(&x[1]), Some(&x[2]), 1e-3));
    let stats = fx.inputs("batch_norm", &[false; 5]);
    let (rm, rv) = (stats[3].copy().unwrap(), stats[4].copy().unwrap());
    check(&fx, "batch_norm", &[true, true, true, false, false], TOL, |x| {
        x[0].batch_norm(Some(&rm), Some(&rv), Some(&x[1]), Some(&x[2]), true, 0.2, 1e-4)
    });
    close("running_mean", &rm, &fx.get("batch_norm.running_mean"), TOL);
    close("running_var", &rv, &fx.get("batch_norm.running_var"), TOL);
}

#[test]
fn pooling_with_indices_and_ceil_mode() {
    let fx = Fixture::load();
    check(&fx, "max_pool2d_ceil", &[true], TOL, |x| Ok(x[0].max_pool2d_with_indices((3, 3), (2, 2), (1, 1), true)?.0));
    let x = fx.get("max_pool2d_ceil.in0");
    let (_, idx) = x.max_pool2d_with_indices((3, 3), (2, 2), (1, 1), true).unwrap();
    assert_eq!(idx.to_vec_f64().unwrap(), fx.get("max_pool2d_ceil.indices").to_vec_f64().unwrap());
    check(&fx, "max_pool1d_ceil", &[true], TOL, |x| Ok(x[0].max_pool1d_with_indices(3, 2, 1, true)?.0));
    let (_, idx) = fx.get("max_pool1d_ceil.in0").max_pool1d_with_indices(3, 2, 1, true).unwrap();
    assert_eq!(idx.to_vec_f64().unwrap(), fx.get("max_pool1d_ceil.indices").to_vec_f64().unwrap());
    check(&fx, "max_unpool1d", &[true], TOL, |x| x[0].max_unpool1d(&idx, 8));
    // A repeated index holding an infinity stays infinite (it is selected once, not masked by
    // multiplying its repeats by 0, which gives NaN).
    let x = Tensor::from_vec(vec![1f64, f64::INFINITY, 2.0, 0.0], (1, 1, 4), Device::Cpu).unwrap();
    let (v, i) = x.max_pool1d_with_indices(3, 1, 1, false).unwrap();
    let back = v.max_unpool1d(&i, 4).unwrap().to_vec_f64().unwrap();
    assert_eq!(back, vec![0.0, f64::INFINITY, 2.0, 0.0]);
}

#[test]
fn embedding_padding_row_gets_no_gradient() {
    let fx = Fixture::load();
    let e = Embedding::new(4, 3, Device::Cpu).unwrap().padding_idx(2).unwrap();
    // PyTorch's functional form reads the table as given (its row 2 is not zero); the layer
    // is f32, so the tolerance is f32's.
    e.load_state_dict(&[("weight".into(), fx.get("embedding_padding.in0"))], true).unwrap();
    let y = e.forward(&fx.get("embedding_padding.in1")).unwrap();
    close("embedding output", &y, &fx.get("embedding_padding.out"), 1e-6);
    let w = fx.get("embedding_padding.w").to_dtype(y.dtype()).unwrap();
    y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    close("embedding gradient", &e.weight().grad().unwrap(), &fx.get("embedding_padding.grad0"), 1e-6);
}

#[test]
fn sgd_with_momentum_dampening_and_weight_decay() {
    let fx = Fixture::load();
    let p = fx.get("sgd_dampening.in0").requires_grad();
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.5, weight_decay: 0.01, nesterov: false };
    let mut opt = Sgd::new(vec![p.clone()], cfg).unwrap();
    for k in 0..3 {
        p.set_grad(Some(fx.get(&format!("sgd_dampening.g{k}")))).unwrap();
        opt.step().unwrap();
    }
    close("parameters after three steps", &p, &fx.get("sgd_dampening.out"), TOL);
}
