//! A custom op in one file: squareplus, `(x + √(x² + b)) / 2` (a smooth ReLU), with a CPU
//! function, a CUDA kernel compiled at run time by NVRTC, and a backward. It trains a small
//! classifier on the bundled digits with squareplus as the activation, then checks the op:
//! gradcheck always, CPU/CUDA parity when a GPU is present.
//!
//! ```text
//! cargo run --release --example custom_op
//! ```
//!
//! Ends with the line `gradcheck passed`. The tutorial behind it is `docs/NEW_OP.md`.

use tensorforge::custom::{CpuKernel, CustomOp, Float};
use tensorforge::data::BatchIter;
use tensorforge::gradcheck::{gradcheck, parity};
use tensorforge::nn::{CrossEntropyLoss, Linear, Loss, Module};
use tensorforge::optim::{Adam, AdamConfig};
use tensorforge::param::ParameterStore;
use tensorforge::train::{Metrics, Step, Trainer};
use tensorforge::{DType, Device, Error, Result, Tensor, no_grad};

/// The op's one constant: larger `b` makes the corner at 0 smoother.
const B: f64 = 4.0;

/// Step 1, the CPU function, generic over f32/f64 (f16/bf16 tensors are computed in f32).
struct Squareplus;

impl CpuKernel for Squareplus {
    fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], scalars: &[f64]) {
        let (b, half) = (T::from_f64(scalars[0]), T::from_f64(0.5));
        for (o, &x) in out.iter_mut().zip(x[0]) {
            *o = (x + (x * x + b).sqrt()) * half;
        }
    }
}

/// Step 2, the CUDA kernel: one per dtype, named `squareplus_<dtype>`, taking
/// `(const T* x, T* y, tf_u64 n, double b)` (inputs, output, element count, scalars).
/// `Tr<T>` (from common.cuh) converts to the compute type: f32 for f32/f16/bf16, f64 for f64.
const SQUAREPLUS_CU: &str = r#"
#include "abi.h"
#include "common.cuh"

template <typename T>
__device__ void squareplus(const T* x, T* y, tf_u64 n, double b) {
    typedef typename Tr<T>::acc A;
    TF_FOR(i, n) {
        A v = Tr<T>::to(x[i]);
        y[i] = Tr<T>::from((v + sqrt(v * v + (A)b)) * (A)0.5);
    }
}

#define SQUAREPLUS(T, N)                                                                  \
    extern "C" __global__ void squareplus_##N(const T* x, T* y, tf_u64 n, double b) {   \
        squareplus<T>(x, y, n, b);                                                      \
    }
SQUAREPLUS(float, f32)
SQUAREPLUS(double, f64)
SQUAREPLUS(tf_f16, f16)
SQUAREPLUS(tf_bf16, bf16)
"#;

/// Step 3, the op: CPU function + CUDA source + backward (in tensor ops).
fn squareplus_op() -> Result<CustomOp> {
    let op = CustomOp::new("squareplus", Squareplus)?
        .scalars(&[B])
        // dy/dx = (1 + x/√(x² + b)) / 2 = y / √(x² + b)
        .backward(|x, y, g| Ok(vec![Some(g.mul(y)?.div(&x[0].sqr()?.add_scalar(B)?.sqrt()?)?)]));
    // SAFETY: every `squareplus_<dtype>` kernel above takes (const T*, T*, tf_u64, double) —
    // one input, the output, n and one scalar — and touches only elements below n.
    unsafe { op.cuda(SQUAREPLUS_CU, "squareplus") }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let op = squareplus_op()?;
    train(&op)?;

    // The CUDA source compiles with NVRTC (no GPU needed, only libnvrtc).
    match op.compile_cuda("sm_80") {
        Ok(bytes) => println!("NVRTC: squareplus compiled for sm_80 ({bytes} bytes of PTX)"),
        Err(Error::CudaUnavailable { reason }) => println!("NVRTC unavailable, compile check skipped: {reason}"),
        Err(e) => return Err(e),
    }

    // CPU and CUDA agree, forward and backward, in f32 and f64 (skipped without a GPU).
    let x = Tensor::from_vec((0..64).map(|i| (i as f32 - 32.0) / 8.0).collect::<Vec<_>>(), (8, 8), Device::Cpu)?;
    for dtype in [DType::F32, DType::F64] {
        match parity(|a| op.apply(&[&a[0]]), &[x.to_dtype(dtype)?]) {
            Ok(()) => println!("parity passed ({dtype:?}): CPU and CUDA agree, output and gradient"),
            Err(Error::CudaUnavailable { reason }) => {
                println!("CUDA unavailable, parity skipped: {reason}");
                break;
            }
            Err(e) => return Err(e),
        }
    }

    // The backward matches finite differences (gradcheck works in f64).
    gradcheck(|a| op.apply(&[&a[0]]), std::slice::from_ref(&x))?;
    println!("gradcheck passed");
    Ok(())
}

/// A 64-32-10 classifier with squareplus between the layers, 15 epochs on the digits (well under a second).
fn train(op: &CustomOp) -> Result<()> {
    let (train, test) = tensorforge::data::digits::load().split(0.2, 0);
    tensorforge::manual_seed(0);
    let mut store = ParameterStore::new(Device::Cpu);
    let fc1 = Linear::from_store(&mut store, "fc1", train.dim, 32)?;
    let fc2 = Linear::from_store(&mut store, "fc2", 32, train.num_classes())?;
    let model = |x: &Tensor| fc2.forward(&op.apply(&[&fc1.forward(x)?])?);
    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 1e-2, ..Default::default() })?;
    let mut batches = BatchIter::new(train.len(), 64, true, 0);
    let tensors = |set: &tensorforge::data::Dataset, idx: &[usize]| -> Result<(Tensor, Tensor, Vec<i64>)> {
        let (x, y) = set.gather(idx);
        let x = Tensor::from_vec(x, (idx.len(), set.dim), Device::Cpu)?;
        Ok((x, Tensor::from_vec(y.clone(), idx.len(), Device::Cpu)?, y))
    };
    let all: Vec<usize> = (0..test.len()).collect();
    // The library's loop: progress and a line per epoch on stderr, held-out metrics each epoch.
    let report = Trainer::new(15).fit(
        &mut store,
        &mut opt,
        &mut batches,
        |idx| {
            let (x, y, _) = tensors(&train, idx)?;
            Ok(Step { loss: CrossEntropyLoss::new().loss(&model(&x)?, &y)?, correct: None })
        },
        || {
            let (x, y, labels) = tensors(&test, &all)?;
            let logits = no_grad(|| model(&x))?;
            let pred = logits.argmax(-1)?.to_vec1::<i64>()?;
            let right = pred.iter().zip(&labels).filter(|(p, t)| p == t).count();
            let loss = no_grad(|| CrossEntropyLoss::new().loss(&logits, &y))?.item()?;
            Ok(Metrics { loss, accuracy: Some(right as f64 / test.len() as f64) })
        },
    )?;
    let acc = report.history.last().and_then(|r| r.held_out.accuracy).unwrap_or(0.0);
    println!("test accuracy with squareplus activations: {acc:.4} (trained in {:.2}s)", report.train_seconds);
    Ok(())
}
