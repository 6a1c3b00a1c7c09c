//! Bad input returns a clear `Err` where PyTorch raises, instead of a silent `Ok`: random
//! ranges, values a dtype cannot hold, windows that are no window, empty layer shapes, and an
//! optimizer with nothing to optimize.

use tensorforge::nn::LayerNorm;
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Adam, AdamConfig, Sgd, SgdConfig};
use tensorforge::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

#[test]
fn random_ranges_must_make_sense() {
    for (lo, hi) in [(2.0, 1.0), (f64::NAN, 1.0), (0.0, f64::NAN), (0.0, f64::INFINITY)] {
        let e = Tensor::rand(lo, hi, 4, DType::F32, CPU).unwrap_err().to_string();
        assert!(e.contains("rand"), "rand({lo}, {hi}): {e}");
    }
    for (mean, std) in [(0.0, -1.0), (0.0, f64::NAN), (f64::NAN, 1.0), (f64::INFINITY, 1.0)] {
        assert!(Tensor::randn(mean, std, 4, DType::F32, CPU).is_err(), "randn({mean}, {std})");
    }
    // The edges PyTorch accepts.
    assert!(Tensor::rand(1.0, 1.0, 4, DType::F32, CPU).is_ok());
    assert_eq!(Tensor::randn(3.0, 0.0, 4, DType::F64, CPU).unwrap().to_vec_f64().unwrap(), vec![3.0; 4]);
}

#[test]
fn full_refuses_values_its_dtype_cannot_hold() {
    let bad = [
        (300.0, DType::U8),
        (-1.0, DType::U8),
        (256.0, DType::U8),
        (1e20, DType::I64),
        (9_223_372_036_854_775_808.0, DType::I64),
        (f64::NAN, DType::I64),
        (f64::INFINITY, DType::U8),
        (1e6, DType::F16),
        (65520.0, DType::F16),
        (1e39, DType::BF16),
        (1e39, DType::F32),
    ];
    for (v, dt) in bad {
        let e = Tensor::full(v, 3, dt, CPU).unwrap_err().to_string();
        assert!(e.contains("overflow"), "full({v}, {dt:?}): {e}");
    }
    let good = [
        (255.0, DType::U8, 255.0),
        (2.7, DType::U8, 2.0),
        (-9_223_372_036_854_775_808.0, DType::I64, -9_223_372_036_854_775_808.0),
        (65504.0, DType::F16, 65504.0),
        (f64::INFINITY, DType::F16, f64::INFINITY),
        (-f64::INFINITY, DType::F32, -f64::INFINITY),
        (1e300, DType::F64, 1e300),
    ];
    for (v, dt, want) in good {
        assert_eq!(Tensor::full(v, 1, dt, CPU).unwrap().to_vec_f64().unwrap(), vec![want], "full({v}, {dt:?})");
    }
    assert!(Tensor::full(f64::NAN, 1, DType::F16, CPU).unwrap().to_vec_f64().unwrap()[0].is_nan());
}

#[test]
fn a_window_with_zero_dilation_or_huge_padding_is_an_error() {
    let x = Tensor::ones((1, 1, 5, 5), DType::F32, CPU).unwrap();
    let w = Tensor::ones((1, 1, 3, 3), DType::F32, CPU).unwrap();
    for opt in [
        Conv2dOptions { dilation: (0, 1), ..Default::default() },
        Conv2dOptions { stride: (1, 0), ..Default::default() },
        Conv2dOptions { padding: (usize::MAX / 2 + 1, 0), ..Default::default() },
        Conv2dOptions { dilation: (usize::MAX, 1), ..Default::default() },
    ] {
        assert!(x.conv2d(&w, None, opt).is_err(), "{opt:?}");
    }
    assert_eq!(x.conv2d(&w, None, Conv2dOptions::default()).unwrap().dims(), &[1, 1, 3, 3]);
}

#[test]
fn a_layer_norm_over_no_axes_is_an_error() {
    assert!(LayerNorm::new(&[], CPU).is_err());
    assert!(LayerNorm::new(&[4], CPU).is_ok());
}

#[test]
fn an_optimizer_over_no_parameters_is_an_error() {
    let e = Sgd::new(Vec::new(), SgdConfig::default()).err().expect("an Err").to_string();
    assert!(e.contains("empty parameter list"), "{e}");
    assert!(Adam::new(Vec::new(), AdamConfig::default()).is_err());
    let p = Tensor::zeros(3, DType::F32, CPU).unwrap().requires_grad();
    assert!(Sgd::new(vec![p], SgdConfig::default()).is_ok());
}

#[test]
fn sizes_that_overflow_are_errors_and_zero_sized_shapes_are_fine() {
    let huge = (1usize << 40, 1usize << 40);
    let e = Tensor::zeros(huge, DType::F32, CPU).unwrap_err().to_string();
    assert!(e.contains("address"), "{e}");
    assert!(Tensor::randn(0.0, 1.0, (1usize << 62, 4), DType::F32, CPU).is_err(), "bytes past isize::MAX");
    // A shape whose element count wraps to 0 must not accept an empty buffer.
    assert!(Tensor::from_vec(Vec::<f32>::new(), (1usize << 32, 1usize << 32), CPU).is_err());
    assert!(Tensor::eye(usize::MAX, DType::F32, CPU).is_err());
    assert!(Tensor::arange(0.0, 1e300, 1.0, DType::F32, CPU).is_err());
    let x = Tensor::ones((3, 1), DType::F32, CPU).unwrap();
    assert!(x.narrow(0, usize::MAX, 2).is_err());
    assert!(x.broadcast_as((3, usize::MAX)).is_err());
    assert!(x.reshape((usize::MAX, 3)).is_err());
    // A 0 next to huge dimensions is an empty tensor, as in PyTorch.
    let empty = Tensor::zeros((0, usize::MAX), DType::F32, CPU).unwrap();
    assert_eq!(empty.dims(), &[0, usize::MAX]);
    assert_eq!(empty.to_vec_f64().unwrap(), Vec::<f64>::new());
}

#[test]
fn clamp_with_lo_above_hi_gives_hi_as_pytorch() {
    let x = Tensor::from_vec(vec![-5.0f64, 0.0, 2.0, 9.0], 4, CPU).unwrap();
    assert_eq!(x.clamp(3.0, 1.0).unwrap().to_vec_f64().unwrap(), vec![1.0; 4]);
}

#[test]
fn log_softmax_of_huge_values_is_stable() {
    let ln2 = std::f64::consts::LN_2;
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_vec(vec![1e30f64, 1e30, -1e30], (1, 3), CPU).unwrap().to_dtype(dtype).unwrap();
        // Along a contiguous row, and down a column (the strided path).
        for (t, axis) in [(x.clone(), 1), (x.transpose(0, 1).unwrap(), 0)] {
            let y = t.log_softmax(axis).unwrap().to_vec_f64().unwrap();
            assert!((y[0] + ln2).abs() < 1e-6 && (y[1] + ln2).abs() < 1e-6, "{dtype:?} axis {axis}: {y:?}");
            assert!(y[2] < -1e29, "{y:?}");
        }
    }
}

#[test]
fn comparisons_with_a_scalar_are_exact_for_integer_tensors() {
    let u = Tensor::from_vec(vec![255u8, 44, 0], 3, CPU).unwrap();
    assert_eq!(
        u.eq_scalar(300.0).unwrap().to_vec_f64().unwrap(),
        vec![0.0, 0.0, 0.0],
        "255 == 300, 44 == 300 (wrapped)"
    );
    assert_eq!(u.lt_scalar(300.0).unwrap().to_vec_f64().unwrap(), vec![1.0, 1.0, 1.0]);
    assert_eq!(u.gt_scalar(-1.0).unwrap().to_vec_f64().unwrap(), vec![1.0, 1.0, 1.0]);
    assert_eq!(u.eq_scalar(255.0).unwrap().to_vec_f64().unwrap(), vec![1.0, 0.0, 0.0]);
    let i = Tensor::from_vec(vec![3i64, 2, i64::MAX], 3, CPU).unwrap();
    assert_eq!(i.lt_scalar(3.5).unwrap().to_vec_f64().unwrap(), vec![1.0, 1.0, 0.0], "3 < 3.5");
    assert_eq!(i.eq_scalar(2.5).unwrap().to_vec_f64().unwrap(), vec![0.0, 0.0, 0.0], "2 == 2.5");
    assert_eq!(i.ge_scalar(1e30).unwrap().to_vec_f64().unwrap(), vec![0.0, 0.0, 0.0]);
    // A float tensor rounds the scalar to its dtype, as PyTorch: 0.1 in f16 equals 0.1f16.
    let h = Tensor::from_vec(vec![0.1f64, 7.0], 2, CPU).unwrap().to_dtype(DType::F16).unwrap();
    assert_eq!(h.eq_scalar(0.1).unwrap().to_vec_f64().unwrap(), vec![1.0, 0.0]);
    assert_eq!(h.lt_scalar(1e6).unwrap().to_vec_f64().unwrap(), vec![1.0, 1.0], "1e6 rounds to +inf in f16");
}

/// Every cast and `full` rounds once, to nearest even: f64 → bf16/f16 does not go through f32
/// (1 + 2⁻⁸ + 2⁻⁴⁰ is above the bf16 midpoint 1 + 2⁻⁸, so it rounds up to 1 + 2⁻⁷), and f32 →
/// bf16 is round-to-nearest-even on ties and near-ties.
#[test]
fn casts_round_once_to_nearest_even() {
    let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let want_bf16 = 1.0 + 2f64.powi(-7);
    let t = Tensor::from_vec(vec![v], 1, CPU).unwrap();
    assert_eq!(t.to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap(), vec![want_bf16], "cast f64 -> bf16");
    assert_eq!(Tensor::full(v, 1, DType::BF16, CPU).unwrap().to_vec_f64().unwrap(), vec![want_bf16], "full bf16");
    // f16 has 10 fraction bits: 1 + 2^-11 is the midpoint; a hair above rounds up.
    let v16 = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let want_f16 = 1.0 + 2f64.powi(-10);
    let t = Tensor::from_vec(vec![v16], 1, CPU).unwrap();
    assert_eq!(t.to_dtype(DType::F16).unwrap().to_vec_f64().unwrap(), vec![want_f16], "cast f64 -> f16");
    assert_eq!(Tensor::full(v16, 1, DType::F16, CPU).unwrap().to_vec_f64().unwrap(), vec![want_f16], "full f16");
    // f32 -> bf16: exact ties go to even, and anything past a tie goes up.
    let cases: [(f32, f64); 3] = [
        (1.0 + 2f32.powi(-8), 1.0),                                  // tie, 1.0 is even
        (1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f64.powi(-6)),            // tie, rounds to even above
        (1.0 + 2f32.powi(-8) + 2f32.powi(-20), 1.0 + 2f64.powi(-7)), // past the tie
    ];
    for (x, want) in cases {
        let got = Tensor::from_vec(vec![x], 1, CPU).unwrap().to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()[0];
        assert_eq!(got, want, "f32 {x} -> bf16");
    }
}

#[test]
fn integer_division_by_zero_is_an_error() {
    let a = Tensor::from_vec(vec![7i64, 8, 9], 3, CPU).unwrap();
    let b = Tensor::from_vec(vec![2i64, 0, 3], 3, CPU).unwrap();
    let e = a.div(&b).unwrap_err().to_string();
    assert!(e.contains("division by zero"), "{e}");
    let u = Tensor::from_vec(vec![7u8, 8], 2, CPU).unwrap();
    assert!(u.div(&Tensor::from_vec(vec![0u8], 1, CPU).unwrap()).is_err(), "broadcast zero");
    assert_eq!(
        a.div(&Tensor::from_vec(vec![2i64, -3, 3], 3, CPU).unwrap()).unwrap().to_vec_f64().unwrap(),
        vec![3.0, -2.0, 3.0]
    );
    // Floats divide by zero as IEEE says.
    let f = Tensor::from_vec(vec![1.0f32], 1, CPU).unwrap();
    assert_eq!(f.div(&Tensor::zeros(1, DType::F32, CPU).unwrap()).unwrap().to_vec_f64().unwrap(), vec![f64::INFINITY]);
}
