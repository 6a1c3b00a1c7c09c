//! Long f32 reductions are accurate on every path (issue: a sequential f32 sum of 10⁷
//! values was off by 6·10⁻³, an axis-0 sum by 9·10⁻², a batch-norm mean by 10⁻²): sums are
//! cascaded (pairwise over fixed blocks), so each stays within 10⁻⁵ of the exact value here,
//! contiguous or strided, full or per axis, and the softmax denominators and batch-norm
//! statistics built on them too.

use tensorforge::{DType, Device, Tensor};

const N: usize = 10_000_000;
const TOL: f64 = 2e-6; // the issue asks 1e-5; every path here measures below 1e-6

fn point_one(shape: &[usize]) -> Tensor {
    Tensor::full(0.1, shape.to_vec(), DType::F32, Device::Cpu).unwrap()
}

/// `0.1f32` exactly, times `count`: what every element of a sum of `count` of them adds.
fn exact(count: usize) -> f64 {
    f64::from(0.1f32) * count as f64
}

fn assert_close(what: &str, got: &[f64], want: f64) {
    for g in got {
        let rel = (g - want).abs() / want.abs();
        assert!(rel <= TOL, "{what}: {g} vs {want} (relative error {rel:e})");
    }
}

#[test]
fn full_sums_and_means() {
    let x = point_one(&[N]);
    assert_close("sum_all", &x.sum_all().unwrap().to_vec_f64().unwrap(), exact(N));
    assert_close("mean_all", &x.mean_all().unwrap().to_vec_f64().unwrap(), f64::from(0.1f32));
    // A strided full reduction: every other element of 2·10⁷.
    let y = point_one(&[N, 2]).t().unwrap();
    assert_close("strided sum", &y.sum(1).unwrap().to_vec_f64().unwrap(), exact(N));
}

#[test]
fn sums_along_long_axes() {
    assert_close("axis 0 of [N, 1]", &point_one(&[N, 1]).sum(0).unwrap().to_vec_f64().unwrap(), exact(N));
    assert_close("axis 0 of [N/4, 4]", &point_one(&[N / 4, 4]).sum(0).unwrap().to_vec_f64().unwrap(), exact(N / 4));
    assert_close("axis 1 of [2, N/2]", &point_one(&[2, N / 2]).sum(1).unwrap().to_vec_f64().unwrap(), exact(N / 2));
    let t = point_one(&[4, N / 4]).t().unwrap(); // [N/4, 4], columns strided
    assert_close("axis 0 of a transposed view", &t.sum(0).unwrap().to_vec_f64().unwrap(), exact(N / 4));
    let mid = point_one(&[2, N / 4, 2]);
    assert_close("axis 1 of [2, N/4, 2]", &mid.sum(1).unwrap().to_vec_f64().unwrap(), exact(N / 4));
    assert_close("axes (0, 1)", &mid.sum([0, 1]).unwrap().to_vec_f64().unwrap(), exact(N / 2));
}

#[test]
fn statistics_built_on_sums() {
    // Batch norm's batch mean and the running mean it updates, over 4·10⁶ samples.
    let x = point_one(&[N / 5, 2]);
    let (rm, rv) =
        (Tensor::zeros(2, DType::F32, Device::Cpu).unwrap(), Tensor::ones(2, DType::F32, Device::Cpu).unwrap());
    x.batch_norm(Some(&rm), Some(&rv), None, None, true, 1.0, 1e-5).unwrap();
    assert_close("batch-norm running mean", &rm.to_vec_f64().unwrap(), f64::from(0.1f32));
    // A softmax over 10⁶ equal logits: every probability is 10⁻⁶.
    let p = point_one(&[1, N / 10]).softmax(1).unwrap();
    let got = p.flatten_all().unwrap().narrow(0, 0, 3).unwrap().to_vec_f64().unwrap();
    assert_close("softmax of equal logits", &got, 1.0 / (N / 10) as f64);
    // A long row of unequal terms (one 1, then 10⁶ values near 0.1): the probabilities sum
    // to 1, which a plain running sum of the denominator misses by ~10⁻⁴.
    let mut v = vec![(0.1f32).ln(); N / 10];
    v[0] = 0.0;
    let p = Tensor::from_vec(v, (1, N / 10), Device::Cpu).unwrap().softmax(1).unwrap();
    assert_close("softmax probabilities' sum", &[p.to_vec_f64().unwrap().iter().sum::<f64>()], 1.0);
    // 16-bit inputs accumulate in f32 through the same cascade.
    let h = point_one(&[N]).to_dtype(DType::BF16).unwrap();
    let want = f64::from(half::bf16::from_f32(0.1).to_f32()) * N as f64;
    let got = h.to_dtype(DType::F32).unwrap().sum_all().unwrap().to_vec_f64().unwrap();
    assert_close("bf16 values summed", &got, want);
}

/// The CUDA kernels compensate their per-thread sums (each thread of a long row adds
/// thousands of values): the same accuracy on the device, on the emulator in CI.
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn device_sums_and_softmax_denominators() {
    let dev = Device::cuda(0).unwrap();
    let n = 2_000_000;
    let on = |shape: &[usize]| point_one(shape).to_device(dev).unwrap();
    assert_close("device sum_all", &on(&[n]).sum_all().unwrap().to_vec_f64().unwrap(), exact(n));
    assert_close("device axis 0 of [n, 1]", &on(&[n, 1]).sum(0).unwrap().to_vec_f64().unwrap(), exact(n));
    assert_close(
        "device mean of a transposed view",
        &on(&[2, n / 2]).t().unwrap().mean(0).unwrap().to_vec_f64().unwrap(),
        f64::from(0.1f32),
    );
    let p = on(&[1, n]).softmax(1).unwrap().flatten_all().unwrap().narrow(0, 0, 3).unwrap();
    assert_close("device softmax of equal logits", &p.to_vec_f64().unwrap(), 1.0 / n as f64);
    // Infinities still sum to infinity (the compensation steps aside).
    let inf = Tensor::from_vec(vec![1f32, f32::INFINITY, 2.0], 3, Device::Cpu).unwrap().to_device(dev).unwrap();
    assert_eq!(inf.sum_all().unwrap().to_vec_f64().unwrap(), vec![f64::INFINITY]);
}
