//! CTC on the CUDA backend against the CPU kernel: the primitive (loss and gradient, f32 and
//! f64, padded targets, varying lengths, an impossible sample, a strided input) and the
//! autograd op through log_softmax. Needs a CUDA device and NVRTC:
//! `cargo test --release --test cuda_ctc -- --include-ignored` (scripts/gpu-check.sh does).
#![cfg(feature = "cuda")]

use tensorforge::backend::BackendDevice;
use tensorforge::backend::BackendStorage;
use tensorforge::backend::cpu::CpuStorage;
use tensorforge::backend::cuda::CudaDevice;
use tensorforge::nn::{CtcLoss, Reduction};
use tensorforge::{DType, Device, Layout, Tensor};

fn values(s: &CpuStorage) -> Vec<f64> {
    match s {
        CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
        CpuStorage::F64(v) => v.clone(),
        _ => panic!("float storage expected"),
    }
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let ok =
            (x - y).abs() <= tol * (1.0 + y.abs()) || (x.is_infinite() && y.is_infinite() && x.signum() == y.signum());
        assert!(ok, "{what}[{i}]: cuda {x} vs cpu {y}");
    }
}

fn log_probs(t: usize, n: usize, c: usize) -> Vec<f64> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let raw: Vec<f64> = (0..t * n * c)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect();
    let mut out = raw.clone();
    for row in 0..t * n {
        let r = &raw[row * c..(row + 1) * c];
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        for k in 0..c {
            out[row * c + k] = r[k] - lse;
        }
    }
    out
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn primitive_matches_cpu() {
    let dev = CudaDevice::get(0).expect("these tests need a CUDA device and NVRTC");
    // Long enough that one block's threads loop over several extended positions.
    let (t, n, c, s) = (150, 5, 40, 140);
    let lp = log_probs(t, n, c);
    let mut tg = vec![1i64; n * s];
    for (i, v) in tg.iter_mut().enumerate() {
        *v = 1 + ((i * 7 + i / 3) % (c - 1)) as i64;
    }
    let in_len = [150, 120, 7, 150, 60];
    let tg_len = [140, 50, 9, 0, 20]; // sample 2 is impossible (9 labels in 7 frames)
    let tl = Layout::contiguous((n, s));
    let tg_cpu = CpuStorage::I64(tg.clone());
    let tg_gpu = dev.storage_from_cpu(&tg_cpu).unwrap();
    for dtype in [DType::F32, DType::F64] {
        let x = CpuStorage::F64(lp.clone()).cast(&Layout::contiguous((t, n, c)), dtype).unwrap();
        let xg = dev.storage_from_cpu(&x).unwrap();
        // Contiguous, and a transposed view of a [N, T, C] buffer.
        let l = Layout::contiguous((t, n, c));
        let (lc, gc) = x.ctc_loss(&l, &tg_cpu, &tl, &in_len, &tg_len, 0).unwrap();
        let (lg, gg) = xg.ctc_loss(&l, &tg_gpu, &tl, &in_len, &tg_len, 0).unwrap();
        let tol = if dtype == DType::F32 { 2e-4 } else { 1e-10 };
        close(&values(&lg.to_cpu().unwrap()), &values(&lc), tol, "loss");
        close(&values(&gg.to_cpu().unwrap()), &values(&gc), tol, "grad");
        let ntc = x.to_cpu().unwrap();
        let xt = Tensor::from_vec(values(&ntc), (t, n, c), Device::Cpu).unwrap();
        let strided = xt.transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap();
        let st = strided.to_dtype(dtype).unwrap().to_device(Device::Cuda(0)).unwrap();
        let ctc = CtcLoss { reduction: Reduction::None, zero_infinity: true, ..Default::default() };
        let targets = Tensor::from_vec(tg.clone(), (n, s), Device::Cpu).unwrap();
        let on_gpu = ctc.loss(&st, &targets.to_device(Device::Cuda(0)).unwrap(), &in_len, &tg_len).unwrap();
        let on_cpu = ctc.loss(&xt.to_dtype(dtype).unwrap(), &targets, &in_len, &tg_len).unwrap();
        close(&on_gpu.to_vec_f64().unwrap(), &on_cpu.to_vec_f64().unwrap(), tol, "strided op loss");
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn autograd_through_log_softmax_matches_cpu() {
    let _ = CudaDevice::get(0).expect("these tests need a CUDA device and NVRTC");
    let (t, n, c) = (12, 3, 6);
    let x = Tensor::from_vec(log_probs(t, n, c), (t, n, c), Device::Cpu).unwrap();
    let targets = Tensor::from_vec(vec![1i64, 2, 2, 3, 5, 4, 4, 1, 1, 3, 0, 0], (n, 4), Device::Cpu).unwrap();
    let (il, tl) = ([12, 10, 8], [4, 4, 2]);
    let run = |dev: Device| {
        let v = x.to_device(dev).unwrap().detach().requires_grad();
        let loss =
            CtcLoss::new().loss(&v.log_softmax(-1).unwrap(), &targets.to_device(dev).unwrap(), &il, &tl).unwrap();
        loss.backward().unwrap();
        (loss.to_vec_f64().unwrap(), v.grad().unwrap().to_vec_f64().unwrap())
    };
    let (lc, gc) = run(Device::Cpu);
    let (lg, gg) = run(Device::Cuda(0));
    close(&lg, &lc, 1e-10, "loss");
    close(&gg, &gc, 1e-10, "grad");
}
