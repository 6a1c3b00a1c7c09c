//! Tensor-level behaviour across devices (run by scripts/gpu-check.sh on a GPU machine).
#![cfg(feature = "cuda")]

use tensorforge::{DType, Device, Error, Result, Tensor};

fn gpu() -> Device {
    Device::cuda(0).expect("these tests need a CUDA device and NVRTC")
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn ops_across_devices_are_errors_and_copies_are_explicit() -> Result<()> {
    let a = Tensor::arange(0.0, 6.0, 1.0, DType::F32, Device::Cpu)?.reshape((2, 3))?;
    let b = a.to_device(gpu())?;
    assert_eq!(b.device(), gpu());
    assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(a.matmul(&b.t()?), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(Tensor::cat(&[&a, &b], 0), Err(Error::DeviceMismatch { .. })));
    // A strided view copies over correctly, and back.
    let t = b.t()?.to_device(Device::Cpu)?;
    assert_eq!(t.to_vec2::<f32>()?, a.t()?.to_vec2::<f32>()?);
    Ok(())
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn autograd_runs_on_the_device_and_matches_the_cpu() -> Result<()> {
    let x = Tensor::randn(0.0, 1.0, (8, 5), DType::F32, Device::Cpu)?;
    let w = Tensor::randn(0.0, 1.0, (5, 3), DType::F32, Device::Cpu)?;
    let run = |dev: Device| -> Result<(Vec<f32>, Vec<f32>)> {
        let w = w.to_device(dev)?.requires_grad();
        let y = x.to_device(dev)?.matmul(&w)?.tanh()?.softmax(-1)?;
        let loss = y.sqr()?.sum_all()?;
        loss.backward()?;
        let g = w.grad().expect("a gradient");
        assert_eq!(g.device(), dev);
        Ok((y.to_vec::<f32>()?, g.to_vec::<f32>()?))
    };
    let (yc, gc) = run(Device::Cpu)?;
    let (yg, gg) = run(gpu())?;
    for (a, b) in yc.iter().zip(&yg).chain(gc.iter().zip(&gg)) {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * a.abs(), "cpu {a} vs cuda {b}");
    }
    Ok(())
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn conv_and_pooling_match_the_cpu() -> Result<()> {
    let x = Tensor::randn(0.0, 1.0, (2, 4, 9, 9), DType::F32, Device::Cpu)?;
    let w = Tensor::randn(0.0, 0.3, (6, 2, 3, 3), DType::F32, Device::Cpu)?;
    let opt = tensorforge::ops::Conv2dOptions { stride: (2, 1), padding: (1, 1), dilation: (1, 1), groups: 2 };
    let run = |dev: Device| -> Result<Vec<f32>> {
        let y = x.to_device(dev)?.conv2d(&w.to_device(dev)?, None, opt)?;
        let p = y.max_pool2d((3, 3), (2, 2), (1, 1))?;
        let a = y.avg_pool2d((2, 2), (1, 1), (0, 0), true)?;
        let mut v = p.flatten_all()?.to_vec::<f32>()?;
        v.extend(a.flatten_all()?.to_vec::<f32>()?);
        Ok(v)
    };
    let (c, g) = (run(Device::Cpu)?, run(gpu())?);
    for (a, b) in c.iter().zip(&g) {
        assert!((a - b).abs() <= 1e-4 + 1e-4 * a.abs(), "cpu {a} vs cuda {b}");
    }
    Ok(())
}

/// PyTorch's conventions on the device too: clamp with lo > hi gives hi, and log_softmax of
/// [1e30, 1e30, -1e30] gives -ln 2 for the first two (the shift is subtracted before ln(sum)).
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn clamp_and_log_softmax_edge_cases_on_the_device() {
    let dev = Device::cuda(0).unwrap();
    let x = Tensor::from_vec(vec![-5.0f32, 0.0, 2.0, 9.0], 4, Device::Cpu).unwrap().to_device(dev).unwrap();
    assert_eq!(x.clamp(3.0, 1.0).unwrap().to_vec_f64().unwrap(), vec![1.0; 4]);
    let ln2 = std::f64::consts::LN_2;
    for dtype in [DType::F32, DType::F64] {
        let t = Tensor::from_vec(vec![1e30f64, 1e30, -1e30], (1, 3), Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let y = t.to_device(dev).unwrap().log_softmax(1).unwrap().to_vec_f64().unwrap();
        assert!((y[0] + ln2).abs() < 1e-6 && (y[1] + ln2).abs() < 1e-6, "{dtype:?}: {y:?}");
    }
}

/// The PyTorch options composed from engine ops (tests/pytorch_options.rs) give the CPU's
/// values on the device too, gradients included.
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn pytorch_options_match_the_cpu_on_the_device() -> Result<()> {
    use tensorforge::nn::{CrossEntropyLoss, CtcLoss, HuberLoss, Loss, SmoothL1Loss};
    let dev = gpu();
    let v: Vec<f64> = (0..24).map(|i| ((i * 5) % 9) as f64 * 0.5 - 1.0).collect();
    let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
        let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "{what}: {a:?} vs {b:?}");
        }
        Ok(())
    };
    let run = |device: Device| -> Result<Vec<Tensor>> {
        let x = Tensor::from_vec(v.clone(), (2, 3, 4), Device::Cpu)?.to_device(device)?.requires_grad();
        let w = Tensor::from_vec(vec![0.5f64, 2.0, 1.5], 3, Device::Cpu)?.to_device(device)?;
        let tgt = Tensor::from_vec(vec![0i64, 2, -1, 1, 1, 0, 2, -1], (2, 4), Device::Cpu)?.to_device(device)?;
        let ce = CrossEntropyLoss { weight: Some(w.clone()), ignore_index: Some(-1), ..Default::default() };
        let rm = Tensor::zeros(3, DType::F64, device)?;
        let rv = Tensor::ones(3, DType::F64, device)?;
        let bn = x.batch_norm(Some(&rm), Some(&rv), Some(&w), None, true, 0.2, 1e-5)?;
        let flat = x.flatten_all()?;
        let half = flat.affine(0.3, 0.0)?;
        let lp = x.permute(&[2, 0, 1])?.log_softmax(2)?;
        let ctc_t = Tensor::from_vec(vec![1i64, 2, 2], 3, Device::Cpu)?.to_device(device)?;
        let loss = ce
            .loss(&x, &tgt)?
            .add(&x.logsumexp([2], false)?.sum_all()?)?
            .add(&bn.sqr()?.mean_all()?)?
            .add(&x.softplus_with(2.0, 1.0)?.sum_all()?)?
            .add(&SmoothL1Loss::new(0.5).loss(&flat, &half)?)?
            .add(&HuberLoss::new(0.7).loss(&flat, &half)?)?
            .add(&CtcLoss::new().loss(&lp, &ctc_t, &[4, 4], &[2, 1])?)?
            .add(&x.max_dim(1, false)?.0.sum_all()?)?
            .add(&x.reshape((1, 2, 3, 4))?.max_pool2d_with_indices((2, 2), (2, 2), (0, 0), true)?.0.sum_all()?)?;
        loss.backward()?;
        Ok(vec![loss, x.grad().expect("a gradient"), rm, rv])
    };
    let (cpu, gpu) = (run(Device::Cpu)?, run(dev)?);
    for (i, what) in ["loss", "gradient", "running mean", "running var"].iter().enumerate() {
        close(&gpu[i], &cpu[i], what)?;
    }
    Ok(())
}

/// The fused LSTM layer (kernels/rnn.cu: cell forward and backward) against the CPU's, outputs
/// and every gradient, two layers in both directions, f32 and f64.
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn fused_lstm_matches_the_cpu() -> Result<()> {
    use tensorforge::nn::{LSTM, RnnOptions};
    let opts = RnnOptions { num_layers: 2, bidirectional: true, ..Default::default() };
    let (t_len, n, i, h) = (5, 3, 4, 6);
    let sizes = [(i, h), (2 * h, h)];
    let mut params = Vec::new();
    for (inp, _) in sizes {
        for _ in 0..2 {
            params.push(Tensor::randn(0.0, 0.4, (4 * h, inp), DType::F64, Device::Cpu)?);
            params.push(Tensor::randn(0.0, 0.4, (4 * h, h), DType::F64, Device::Cpu)?);
            params.push(Tensor::randn(0.0, 0.4, 4 * h, DType::F64, Device::Cpu)?);
            params.push(Tensor::randn(0.0, 0.4, 4 * h, DType::F64, Device::Cpu)?);
        }
    }
    let x = Tensor::randn(0.0, 1.0, (t_len, n, i), DType::F64, Device::Cpu)?;
    let h0 = Tensor::randn(0.0, 0.5, (4, n, h), DType::F64, Device::Cpu)?;
    let proj = Tensor::randn(0.0, 1.0, (t_len, n, 2 * h), DType::F64, Device::Cpu)?;
    for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
        let run = |dev: Device| -> Result<Vec<Vec<f64>>> {
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap().requires_grad();
            let ps: Vec<Tensor> = params.iter().map(on).collect();
            let (x, h0, c0) = (on(&x), on(&h0), on(&h0.mul_scalar(-0.5)?));
            let (y, (hn, cn)) = LSTM::from_tensors(opts, &ps)?.forward_with_state(&x, Some((&h0, &c0)))?;
            let loss =
                y.mul(&proj.to_dtype(dtype)?.to_device(dev)?)?.sum_all()?.add(&hn.sub(&cn)?.sqr()?.sum_all()?)?;
            loss.backward()?;
            let mut out = vec![y.to_vec_f64()?, hn.to_vec_f64()?, cn.to_vec_f64()?];
            for t in [&x, &h0, &c0].into_iter().chain(&ps) {
                let g = t.grad().expect("a gradient");
                assert_eq!(g.device(), dev);
                out.push(g.to_vec_f64()?);
            }
            Ok(out)
        };
        let (cpu, gpu) = (run(Device::Cpu)?, run(gpu())?);
        for (k, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
            for (a, b) in a.iter().zip(b) {
                assert!((a - b).abs() <= tol * (1.0 + a.abs()), "{dtype:?} tensor {k}: cpu {a} vs cuda {b}");
            }
        }
    }
    Ok(())
}

/// Max pooling's argument kernel in every float dtype: ties (first maximum), NaN (takes the
/// place, the last one, as PyTorch), a window of -inf, padding, ceil_mode and a transposed
/// (strided) input; indices equal the CPU's exactly, values and gradients too.
#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn max_pool_indices_match_the_cpu_in_every_float_dtype() -> Result<()> {
    let dev = gpu();
    let mut v: Vec<f64> = (0..2 * 3 * 5 * 6).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
    v[3] = f64::NAN;
    v[40] = f64::NAN;
    v[41] = f64::NAN;
    for x in &mut v[60..66] {
        *x = f64::NEG_INFINITY;
    }
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let run = |d: Device| -> Result<(Vec<i64>, Vec<f64>, Vec<f64>)> {
            let x = Tensor::from_vec(v.clone(), (2, 3, 6, 5), Device::Cpu)?.to_dtype(dtype)?.to_device(d)?;
            let x = x.transpose(2, 3)?.requires_grad(); // [2, 3, 5, 6], strided
            let (p, i) = x.max_pool2d_with_indices((3, 2), (2, 2), (1, 1), true)?;
            let (q, _) = x.max_pool2d_with_indices((2, 2), (1, 2), (0, 0), false)?;
            p.sum_all()?.add(&q.sum_all()?)?.backward()?;
            let g = x.grad().expect("a gradient").to_vec_f64()?;
            Ok((i.to_vec::<i64>()?, p.to_vec_f64()?, g))
        };
        let ((ic, pc, gc), (ig, pg, gg)) = (run(Device::Cpu)?, run(dev)?);
        assert_eq!(ic, ig, "{dtype:?} indices");
        for (a, b) in pc.iter().zip(&pg).chain(gc.iter().zip(&gg)) {
            assert!(a == b || (a.is_nan() && b.is_nan()), "{dtype:?}: cpu {a} vs cuda {b}");
        }
    }
    Ok(())
}
