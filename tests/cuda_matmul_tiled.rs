//! The tiled CUDA-core f16/bf16 matmul (`matmul_f16`, `matmul_bf16`), which GPUs before sm_80
//! and `TENSORFORGE_NO_TENSOR_CORES` select instead of the tensor-core kernels. In a test binary
//! of its own, because it sets that variable for the whole process.
#![cfg(feature = "cuda")]

use tensorforge::{DType, Device, Tensor};

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn tiled_half_matmul_matches_the_cpu() {
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("TENSORFORGE_NO_TENSOR_CORES", "1") };
    let dev = Device::cuda(0).unwrap();
    tensorforge::manual_seed(3);
    let a = Tensor::randn(0.0, 1.0, (2, 70, 33), DType::F32, Device::Cpu).unwrap();
    let b = Tensor::randn(0.0, 1.0, (2, 33, 65), DType::F32, Device::Cpu).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let (a, b) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
        let want = a.to_dtype(DType::F64).unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap();
        let got = a.to_device(dev).unwrap().matmul(&b.to_device(dev).unwrap()).unwrap();
        let (want, got) = (want.to_vec_f64().unwrap(), got.to_vec_f64().unwrap());
        let tol = if dtype == DType::F16 { 2e-2 } else { 1e-1 };
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!((w - g).abs() <= tol * (1.0 + w.abs()), "{dtype:?} element {i}: {g} vs {w}");
        }
        // Transposed operands take the strided path.
        let bt = b.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        let got_t = a.to_device(dev).unwrap().matmul(&bt.to_device(dev).unwrap()).unwrap().to_vec_f64().unwrap();
        assert_eq!(got_t, got, "{dtype:?}: strided B gives the same bits");
    }
}
