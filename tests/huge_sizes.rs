//! Sizes from configs and files that overflow or cannot fit: every layer constructor and
//! every window op returns `Err`, never a panic, an abort or an endless loop.

use std::panic::{AssertUnwindSafe, catch_unwind};
use tensorforge::nn::{
    BatchNorm, Conv1d, Conv2d, ConvTranspose2d, Embedding, GRU, LSTM, LSTMCell, LayerNorm, Linear, RnnOptions,
};
use tensorforge::ops::Conv2dOptions;
use tensorforge::{DType, Device, Result, Tensor};

const CPU: Device = Device::Cpu;
const BIG: usize = usize::MAX / 2 + 1;

/// A named call that must return `Err`.
type Case<'a> = (&'a str, Box<dyn FnOnce() -> Result<()>>);

/// Runs every case, then reports all that panicked or returned `Ok`.
fn all_err(cases: Vec<Case>) {
    let mut bad = Vec::new();
    for (name, f) in cases {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Err(_)) => {}
            Ok(Ok(())) => bad.push(format!("{name}: Ok")),
            Err(p) => {
                let m = p.downcast_ref::<String>().cloned().or(p.downcast_ref::<&str>().map(|s| s.to_string()));
                bad.push(format!("{name}: panicked: {}", m.unwrap_or_default()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

fn x4() -> Tensor {
    Tensor::ones((1, 2, 4, 4), DType::F32, CPU).unwrap()
}

#[test]
fn layer_constructors_with_huge_sizes_are_errors() {
    let opt = Conv2dOptions::default();
    all_err(vec![
        ("Linear", Box::new(|| Linear::new(BIG, 4, CPU).map(drop))),
        ("Linear 2^40 × 2^40", Box::new(|| Linear::new(1 << 40, 1 << 40, CPU).map(drop))),
        ("Embedding", Box::new(|| Embedding::new(BIG, 3, CPU).map(drop))),
        ("Conv2d channels", Box::new(move || Conv2d::new(BIG, 2, (3, 3), opt, CPU).map(drop))),
        ("Conv2d kernel", Box::new(move || Conv2d::new(2, 2, (BIG, 3), opt, CPU).map(drop))),
        ("Conv1d", Box::new(|| Conv1d::new(BIG, 2, 3, 1, 0, CPU).map(drop))),
        ("ConvTranspose2d", Box::new(move || ConvTranspose2d::new(2, BIG, (3, 3), opt, (0, 0), CPU).map(drop))),
        ("LSTM hidden", Box::new(|| LSTM::new(4, BIG, RnnOptions::default(), CPU).map(drop))),
        ("LSTM input", Box::new(|| LSTM::new(BIG, 4, RnnOptions::default(), CPU).map(drop))),
        (
            "GRU layers",
            Box::new(|| {
                let o = RnnOptions { num_layers: BIG, bidirectional: true, ..Default::default() };
                GRU::new(4, 4, o, CPU).map(drop)
            }),
        ),
        ("LSTMCell", Box::new(|| LSTMCell::new(4, BIG, CPU).map(drop))),
        ("BatchNorm", Box::new(|| BatchNorm::new_2d(usize::MAX, CPU).map(drop))),
        ("LayerNorm", Box::new(|| LayerNorm::new(&[BIG, 4], CPU).map(drop))),
    ]);
}

#[test]
fn window_ops_with_huge_sizes_are_errors() {
    all_err(vec![
        ("max_pool2d kernel", Box::new(|| x4().max_pool2d((usize::MAX, 1), (1, 1), (0, 0)).map(drop))),
        ("max_pool2d padding", Box::new(|| x4().max_pool2d((2, 2), (1, 1), (BIG, 0)).map(drop))),
        ("max_pool2d indices", Box::new(|| x4().max_pool2d_with_indices((2, 2), (1, 1), (BIG, 0), true).map(drop))),
        ("avg_pool2d padding", Box::new(|| x4().avg_pool2d((2, 2), (1, 1), (usize::MAX, 1), false).map(drop))),
        ("adaptive 2^40", Box::new(|| x4().adaptive_avg_pool2d((1 << 40, 1 << 40)).map(drop))),
        ("adaptive 2^24", Box::new(|| x4().adaptive_avg_pool2d((1 << 24, 1 << 24)).map(drop))),
        ("adaptive MAX", Box::new(|| x4().adaptive_avg_pool2d((usize::MAX, 3)).map(drop))),
        (
            "max_unpool2d",
            Box::new(|| {
                let (v, i) = x4().max_pool2d_with_indices((2, 2), (2, 2), (0, 0), false)?;
                v.max_unpool2d(&i, (BIG, 4)).map(drop)
            }),
        ),
        (
            "conv_transpose2d stride",
            Box::new(|| {
                let w = Tensor::ones((2, 1, 3, 3), DType::F32, CPU)?;
                let opt = Conv2dOptions { stride: (BIG, 1), ..Default::default() };
                x4().conv_transpose2d(&w, None, opt, (0, 0)).map(drop)
            }),
        ),
        (
            "conv_transpose2d output_padding",
            Box::new(|| {
                let w = Tensor::ones((2, 1, 3, 3), DType::F32, CPU)?;
                let opt = Conv2dOptions { stride: (2, 2), ..Default::default() };
                x4().conv_transpose2d(&w, None, opt, (usize::MAX, 0)).map(drop)
            }),
        ),
        (
            "conv_transpose2d padding",
            Box::new(|| {
                let w = Tensor::ones((2, 1, 3, 3), DType::F32, CPU)?;
                let opt = Conv2dOptions { padding: (BIG, 0), ..Default::default() };
                x4().conv_transpose2d(&w, None, opt, (0, 0)).map(drop)
            }),
        ),
        (
            "conv_transpose2d dilation",
            Box::new(|| {
                let w = Tensor::ones((2, 1, 3, 3), DType::F32, CPU)?;
                let opt = Conv2dOptions { dilation: (BIG, 1), ..Default::default() };
                x4().conv_transpose2d(&w, None, opt, (0, 0)).map(drop)
            }),
        ),
        (
            "im2col",
            Box::new(|| {
                x4().im2col(
                    tensorforge::backend::Window2d {
                        kernel: (3, 3),
                        stride: (1, 1),
                        padding: (BIG, 0),
                        dilation: (1, 1),
                    },
                    0.0,
                )
                .map(drop)
            }),
        ),
        ("narrow", Box::new(|| x4().narrow(3, 2, usize::MAX).map(drop))),
        (
            "conv1d padding",
            Box::new(|| {
                let x = Tensor::ones((1, 2, 4), DType::F32, CPU)?;
                let w = Tensor::ones((1, 2, 3), DType::F32, CPU)?;
                x.conv1d_with(&w, None, tensorforge::ops::Conv1dOptions { padding: BIG, ..Default::default() })
                    .map(drop)
            }),
        ),
    ]);
}

/// Degenerate shapes: no panic; zeros where PyTorch gives zeros, `Err` where it raises.
#[test]
fn degenerate_windows_are_zeros_or_errors() {
    let x = Tensor::ones((1, 0, 5, 5), DType::F32, CPU).unwrap();
    let w = Tensor::ones((2, 0, 3, 3), DType::F32, CPU).unwrap();
    let b = Tensor::from_vec(vec![1.5f32, -2.0], 2, CPU).unwrap();
    let y = x.conv2d(&w, Some(&b), Conv2dOptions::default()).unwrap();
    assert_eq!(y.dims(), &[1, 2, 3, 3]);
    assert_eq!(y.to_vec_f64().unwrap(), [[1.5; 9], [-2.0; 9]].concat());
    all_err(vec![
        (
            "conv_transpose2d H = 0",
            Box::new(|| {
                let w = Tensor::ones((2, 1, 3, 3), DType::F32, CPU)?;
                let x = Tensor::ones((1, 2, 0, 4), DType::F32, CPU)?;
                x.conv_transpose2d(&w, None, Conv2dOptions::default(), (0, 0)).map(drop)
            }),
        ),
        (
            "conv_transpose2d 0 × 3 kernel",
            Box::new(|| {
                let w0 = Tensor::ones((2, 1, 0, 3), DType::F32, CPU)?;
                x4().conv_transpose2d(&w0, None, Conv2dOptions::default(), (0, 0)).map(drop)
            }),
        ),
        (
            "conv2d 0 × 3 kernel",
            Box::new(|| {
                let w0 = Tensor::ones((2, 2, 0, 3), DType::F32, CPU)?;
                x4().conv2d(&w0, None, Conv2dOptions::default()).map(drop)
            }),
        ),
        ("max_pool2d 0 kernel", Box::new(|| x4().max_pool2d((0, 2), (1, 1), (0, 0)).map(drop))),
    ]);
}

/// Step counts from a corrupt checkpoint: one past `i32::MAX` keeps Adam's bias correction
/// right (it wrapped to a negative exponent before), and one at the top of u64 is an `Err` on
/// the next step instead of an overflow.
#[test]
fn huge_optimizer_step_counts_are_right_or_errors() {
    use tensorforge::optim::{Adam, AdamConfig, Optimizer};
    let run = |steps: u64| -> Result<Vec<f64>> {
        let p = Tensor::from_vec(vec![1.0f64, -2.0], 2, CPU)?.requires_grad();
        let mut opt = Adam::new(vec![p.clone()], AdamConfig { lr: 0.1, ..Default::default() })?;
        p.sqr()?.sum_all()?.backward()?;
        opt.step()?;
        let mut st = opt.state()?;
        st.steps = vec![steps];
        opt.load_state(&st)?;
        p.sqr()?.sum_all()?.backward()?;
        opt.step()?;
        p.to_vec_f64()
    };
    // With corrections of 1 (t → ∞) the second step is m/(√v + eps) with the stored moments.
    let far = run(1 << 40).unwrap();
    let past_i32 = run(i32::MAX as u64 + 5).unwrap();
    assert!(far.iter().chain(&past_i32).all(|v| v.is_finite()), "{far:?} {past_i32:?}");
    for (a, b) in far.iter().zip(&past_i32) {
        assert!((a - b).abs() < 1e-12, "{far:?} vs {past_i32:?}");
    }
    let e = run(u64::MAX).unwrap_err().to_string();
    assert!(e.contains("step count overflows"), "{e}");
}

/// Sizes an op computes from its inputs (a broadcast, a matmul's output, a concatenation, a
/// convolution's columns) are checked like sizes from users: the inputs are cheap broadcast
/// views, the output would not be addressable.
#[test]
fn computed_sizes_that_overflow_are_errors() {
    let big = |shape: (usize, usize)| Tensor::ones((1, 1), DType::F32, CPU)?.broadcast_as(shape);
    all_err(vec![
        ("add (2^40, 1) + (1, 2^40)", Box::new(move || big((1 << 40, 1))?.add(&big((1, 1 << 40))?).map(drop))),
        ("mul (2^32, 1) * (1, 2^32)", Box::new(move || big((1 << 32, 1))?.mul(&big((1, 1 << 32))?).map(drop))),
        ("matmul (2^40, 1) @ (1, 2^40)", Box::new(move || big((1 << 40, 1))?.matmul(&big((1, 1 << 40))?).map(drop))),
        (
            "cat past usize::MAX",
            Box::new(move || {
                let x = big((BIG, 1))?;
                Tensor::cat(&[&x, &x], 0).map(drop)
            }),
        ),
        (
            "conv2d columns past usize::MAX",
            Box::new(|| {
                let x = Tensor::ones((1, 1, 1, 1), DType::F32, CPU)?.broadcast_as((1, 1, 1 << 30, 1 << 30))?;
                let w = Tensor::ones((1 << 20, 1, 1, 1), DType::F32, CPU)?.broadcast_as((1 << 20, 1, 1, 1))?;
                x.conv2d(&w, None, Conv2dOptions::default()).map(drop)
            }),
        ),
        ("eye 2^24 (256 TiB)", Box::new(|| Tensor::eye(1 << 24, DType::F32, CPU).map(drop))),
        ("eye 2^33", Box::new(|| Tensor::eye(1 << 33, DType::F32, CPU).map(drop))),
        ("arange 2^40", Box::new(|| Tensor::arange_end(1 << 40, CPU).map(drop))),
        ("arange f64 2^58", Box::new(|| Tensor::arange(0.0, 2f64.powi(58), 1.0, DType::F32, CPU).map(drop))),
    ]);
}

/// A 0 next to huge dimensions is an empty tensor, as in PyTorch: no overflow in its element
/// count or strides, and ops on it give empty results.
#[test]
fn empty_shapes_with_huge_dimensions_work() {
    let z = Tensor::zeros((2, usize::MAX, 0), DType::F32, CPU).unwrap();
    assert_eq!(z.elem_count(), 0);
    assert!(z.is_contiguous());
    assert_eq!(z.sum(1).unwrap().dims(), &[2, 0]);
    assert_eq!(z.t().unwrap().contiguous().unwrap().dims(), &[2, 0, usize::MAX]);
    assert_eq!(z.exp().unwrap().elem_count(), 0);
    let e = Tensor::zeros((0, BIG), DType::F32, CPU).unwrap();
    assert_eq!(e.matmul(&Tensor::zeros((BIG, 0), DType::F32, CPU).unwrap()).unwrap().dims(), &[0, 0]);
    // A step past the axis (Python allows it) takes one element and no stride overflow.
    let x = Tensor::from_vec(vec![1f32, 2., 3.], 3, CPU).unwrap();
    assert_eq!(x.slice(0, 1, 3, usize::MAX).unwrap().to_vec1::<f32>().unwrap(), vec![2.]);
    assert_eq!(Tensor::eye(3, DType::F64, CPU).unwrap().to_vec_f64().unwrap(), [1., 0., 0., 0., 1., 0., 0., 0., 1.]);
}

/// A random stream restored near the top of its counter wraps around (as the CUDA kernel's
/// u64 does) instead of overflowing, and a step schedule decayed past `i32::MAX` times is 0.
#[test]
fn counters_at_their_limits_wrap_or_saturate() {
    use tensorforge::Generator;
    use tensorforge::optim::{LrSchedule, StepLr};
    let g = Generator::new(9);
    g.set_state((9, u64::MAX - 1));
    let top = Tensor::rand_with(&g, 0.0, 1.0, 16, DType::F64, CPU).unwrap().to_vec1::<f64>().unwrap();
    let bottom = Tensor::rand_with(&Generator::new(9), 0.0, 1.0, 8, DType::F64, CPU).unwrap();
    // Counters u64::MAX − 1, u64::MAX, 0, 1: the last eight draws are the fresh stream's first.
    assert_eq!(&top[8..], &bottom.to_vec1::<f64>().unwrap()[..]);
    assert_eq!(g.state(), (9, 2));
    let decay = StepLr::new(1.0, 1, 0.5);
    assert_eq!(decay.lr(1 << 33), 0.0);
    assert_eq!(decay.lr(3), 0.125);
}
