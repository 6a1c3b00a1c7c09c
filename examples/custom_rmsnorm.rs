//! A custom op that is not elementwise: RMSNorm over the last axis,
//! `y = x / √(mean(x²) + eps) · w`, with a row-wise reduction.
//!
//! The forward is one general custom op with two outputs, `y` and the rows' `1/rms` (saved
//! for the backward, as fused kernels do); the backward is a second custom op with two
//! outputs of different shapes, `∂x` (like `x`) and `∂w` (like `w`). Each has a CPU function
//! (rayon over rows) and CUDA kernels (a block per row, warp shuffles and shared memory for
//! the row sums). The example then checks the op and times it against the same RMSNorm
//! composed from built-in ops:
//!
//! ```text
//! cargo run --release --example custom_rmsnorm                       # CPU; parity skipped without a GPU
//! cargo run --release --features cuda-emu --example custom_rmsnorm   # parity on the emulated device
//! ```
//!
//! Prints `gradcheck passed`, `parity passed` (or why parity was skipped) and the speedup
//! over the composed op. `--quick` times fewer rounds. The walk-through is `docs/NEW_OP.md`.

use rayon::prelude::*;
use std::time::Instant;
use tensorforge::custom::{CustomOp, Float, Input, Kernel, Launch, LaunchSpec, Output, Spec};
use tensorforge::gradcheck::{gradcheck, parity};
use tensorforge::{DType, Device, Error, Result, Shape, Tensor};

const EPS: f64 = 1e-6;

/// Rows of a `[…, d]` tensor, and `d`.
fn rows_and_width(dims: &[usize]) -> (usize, usize) {
    let d = dims.last().copied().unwrap_or(1);
    (dims[..dims.len().saturating_sub(1)].iter().product(), d)
}

/// A float input as one row-major slice (both ops ask for contiguous inputs).
fn rows<'a, T: Float>(x: &Input<'a, T>) -> Result<&'a [T]> {
    x.float()?.as_slice().ok_or_else(|| Error::msg("rmsnorm: inputs were asked contiguous"))
}

/// `Σ f(i)` over `0..n` in 8 independent lanes, so the compiler can keep them in one SIMD
/// register (a single running sum is a dependency chain it may not reorder).
fn lane_sum<T: Float>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::ZERO; 8];
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = *a + f(i + l);
        }
    }
    let tail = (whole..n).fold(T::ZERO, |a, i| a + f(i));
    acc.iter().fold(tail, |a, &b| a + b)
}

/// Forward: inputs `x [.., d]`, `w [d]`; outputs `y` (like `x`) and `rstd [rows]`.
struct RmsNorm;

impl Kernel for RmsNorm {
    fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<Shape>> {
        let [x, w] = x else { return Err(Error::msg("rmsnorm takes (x, w)")) };
        if x.dims.is_empty() || w.dims != &x.dims[x.dims.len() - 1..] {
            return Err(Error::msg(format!("rmsnorm: w {:?} must be x's last dimension (x {:?})", w.dims, x.dims)));
        }
        Ok(vec![Shape::from(x.dims), Shape::from(rows_and_width(x.dims).0)])
    }

    fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], s: &[f64]) -> Result<()> {
        let (xs, w) = (rows(&x[0])?, rows(&x[1])?);
        let d = w.len().max(1);
        let eps = T::from_f64(s[0]);
        let [y, rstd] = out else { return Err(Error::msg("rmsnorm: two outputs")) };
        y.as_mut_slice().par_chunks_mut(d).zip(rstd.as_mut_slice().par_iter_mut()).zip(xs.par_chunks(d)).for_each(
            |((y, r), x)| {
                let ss = lane_sum(x.len(), |j| x[j] * x[j]);
                *r = T::ONE / (ss / T::from_f64(d as f64) + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * *r * w;
                }
            },
        );
        Ok(())
    }

    fn contiguous_inputs(&self) -> bool {
        true
    }
}

/// Backward: inputs `x, w, rstd, ∂y, ∂rstd`; outputs `∂x` (like `x`) and `∂w` (like `w`).
///
/// With `x̂ = x·r`: `∂x = r·(∂y·w − x̂·(mean(∂y·w·x̂) + ∂r·r/d))`, `∂w = Σ_rows ∂y·x̂`.
struct RmsNormBackward;

impl Kernel for RmsNormBackward {
    fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<Shape>> {
        let [x, w, ..] = x else { return Err(Error::msg("rmsnorm_backward takes (x, w, rstd, gy, grstd)")) };
        Ok(vec![Shape::from(x.dims), Shape::from(w.dims)])
    }

    fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], _: &[f64]) -> Result<()> {
        let (xs, w, rstd, gy, gr) = (rows(&x[0])?, rows(&x[1])?, rows(&x[2])?, rows(&x[3])?, rows(&x[4])?);
        let d = w.len().max(1);
        let [gx, gw] = out else { return Err(Error::msg("rmsnorm_backward: two outputs")) };
        let inv_d = T::from_f64(1.0 / d as f64);
        // One pass over fixed blocks of rows: each block writes its rows of ∂x and sums its
        // rows' share of ∂w; the blocks' partial sums are then added in order, so every run
        // gives the same ∂w.
        const BLOCK: usize = 32;
        let partials: Vec<Vec<T>> = gx
            .as_mut_slice()
            .par_chunks_mut(BLOCK * d)
            .enumerate()
            .map(|(b, gx)| {
                let mut acc = vec![T::ZERO; d];
                for (k, gx) in gx.chunks_mut(d).enumerate() {
                    let i = b * BLOCK + k;
                    let (x, gy, r) = (&xs[i * d..(i + 1) * d], &gy[i * d..(i + 1) * d], rstd[i]);
                    let c = (lane_sum(d, |j| gy[j] * w[j] * x[j]) * r + gr[i] * r) * inv_d;
                    for j in 0..d {
                        gx[j] = r * (gy[j] * w[j] - x[j] * r * c);
                        acc[j] = acc[j] + gy[j] * x[j] * r;
                    }
                }
                acc
            })
            .collect();
        let gw = gw.as_mut_slice();
        for p in &partials {
            for (g, &v) in gw.iter_mut().zip(p) {
                *g = *g + v;
            }
        }
        Ok(())
    }

    fn contiguous_inputs(&self) -> bool {
        true
    }
}

/// The CUDA half of both ops. Parameters follow `CustomOp::cuda_launch`: each tensor's
/// pointer and `TfLayout`, outputs after inputs, then the scalars. Inputs are contiguous (the
/// kernels ask for it), so row `i` starts at `i * d`.
const RMSNORM_CU: &str = r#"
#include "abi.h"
#include "common.cuh"

// The sum of `v` over the block: shuffles within each warp, then the warps' partial sums
// through dynamic shared memory (one slot per warp). Every thread gets the total.
template <typename A>
__device__ A block_sum(A v, A* partial) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const unsigned warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    if (threadIdx.x % 32 == 0) partial[warp] = v;
    __syncthreads();
    A total = 0;
    for (unsigned k = 0; k < warps; ++k) total += partial[k];
    __syncthreads();  // the slots are reused by the next call
    return total;
}

// One block per row.
template <typename T>
__device__ void rmsnorm_fwd(const T* x, const T* w, T* y, T* rstd, tf_u64 d, double eps) {
    typedef typename Tr<T>::acc A;
    TF_DYNAMIC_SHARED(A, partial);
    const tf_u64 row = blockIdx.x;
    const T* xr = x + row * d;
    A ss = 0;
    for (tf_u64 j = threadIdx.x; j < d; j += blockDim.x) { A v = Tr<T>::to(xr[j]); ss += v * v; }
    const A r = (A)1 / sqrt(block_sum(ss, partial) / (A)d + (A)eps);
    for (tf_u64 j = threadIdx.x; j < d; j += blockDim.x)
        y[row * d + j] = Tr<T>::from(Tr<T>::to(xr[j]) * r * Tr<T>::to(w[j]));
    if (threadIdx.x == 0) rstd[row] = Tr<T>::from(r);
}

// ∂x, one block per row.
template <typename T>
__device__ void rmsnorm_bwd_x(const T* x, const T* w, const T* rstd, const T* gy, const T* gr, T* gx, tf_u64 d) {
    typedef typename Tr<T>::acc A;
    TF_DYNAMIC_SHARED(A, partial);
    const tf_u64 row = blockIdx.x, base = row * d;
    const A r = Tr<T>::to(rstd[row]);
    A dot = 0;
    for (tf_u64 j = threadIdx.x; j < d; j += blockDim.x)
        dot += Tr<T>::to(gy[base + j]) * Tr<T>::to(w[j]) * Tr<T>::to(x[base + j]) * r;
    const A c = (block_sum(dot, partial) + Tr<T>::to(gr[row]) * r) / (A)d;
    for (tf_u64 j = threadIdx.x; j < d; j += blockDim.x) {
        const A xv = Tr<T>::to(x[base + j]);
        gx[base + j] = Tr<T>::from(r * (Tr<T>::to(gy[base + j]) * Tr<T>::to(w[j]) - xv * r * c));
    }
}

// ∂w, one thread per column, rows in order (neighbouring threads read neighbouring columns).
template <typename T>
__device__ void rmsnorm_bwd_w(const T* x, const T* rstd, const T* gy, T* gw, tf_u64 rows, tf_u64 d) {
    typedef typename Tr<T>::acc A;
    TF_FOR(j, d) {
        A acc = 0;
        for (tf_u64 i = 0; i < rows; ++i) acc += Tr<T>::to(gy[i * d + j]) * Tr<T>::to(x[i * d + j]) * Tr<T>::to(rstd[i]);
        gw[j] = Tr<T>::from(acc);
    }
}

#define D(l) ((l).rank ? (l).dims[(l).rank - 1] : 1)
#define RMSNORM(T, N)                                                                                      \
    extern "C" __global__ void rmsnorm_fwd_##N(const T* x, TfLayout xl, const T* w, TfLayout wl, T* y,    \
                                               TfLayout yl, T* rstd, TfLayout rl, double eps) {            \
        rmsnorm_fwd<T>(x, w, y, rstd, D(xl), eps);                                                         \
    }                                                                                                      \
    extern "C" __global__ void rmsnorm_bwd_x_##N(const T* x, TfLayout xl, const T* w, TfLayout wl,        \
                                                 const T* rstd, TfLayout rl, const T* gy, TfLayout gyl,    \
                                                 const T* gr, TfLayout grl, T* gx, TfLayout gxl, T* gw,    \
                                                 TfLayout gwl) {                                           \
        rmsnorm_bwd_x<T>(x, w, rstd, gy, gr, gx, D(xl));                                                   \
    }                                                                                                      \
    extern "C" __global__ void rmsnorm_bwd_w_##N(const T* x, TfLayout xl, const T* w, TfLayout wl,        \
                                                 const T* rstd, TfLayout rl, const T* gy, TfLayout gyl,    \
                                                 const T* gr, TfLayout grl, T* gx, TfLayout gxl, T* gw,    \
                                                 TfLayout gwl) {                                           \
        rmsnorm_bwd_w<T>(x, rstd, gy, gw, rl.dims[0], D(xl));                                              \
    }
RMSNORM(float, f32)
RMSNORM(double, f64)
RMSNORM(tf_f16, f16)
RMSNORM(tf_bf16, bf16)
"#;

/// Threads per row-block: a warp per 32 elements of the row, at most 256.
fn row_threads(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Bytes of one accumulator (the kernels sum in f64 for f64, f32 otherwise).
fn acc_bytes(dtype: DType) -> u32 {
    if dtype == DType::F64 { 8 } else { 4 }
}

fn rmsnorm_launch(s: &LaunchSpec<'_>) -> Result<Vec<Launch>> {
    let (rows, d) = rows_and_width(s.inputs[0].dims);
    let threads = row_threads(d);
    let rows = u32::try_from(rows).map_err(|_| Error::msg("rmsnorm: too many rows for one launch"))?;
    Ok(vec![Launch::linear("rmsnorm_fwd", rows, threads).shared(threads / 32 * acc_bytes(s.dtype))])
}

fn rmsnorm_backward_launch(s: &LaunchSpec<'_>) -> Result<Vec<Launch>> {
    let (rows, d) = rows_and_width(s.inputs[0].dims);
    let threads = row_threads(d);
    let rows = u32::try_from(rows).map_err(|_| Error::msg("rmsnorm: too many rows for one launch"))?;
    let col_blocks = d.div_ceil(256).clamp(1, 32 * s.sm_count) as u32;
    Ok(vec![
        Launch::linear("rmsnorm_bwd_x", rows, threads).shared(threads / 32 * acc_bytes(s.dtype)),
        Launch::linear("rmsnorm_bwd_w", col_blocks, 256),
    ])
}

/// The two ops, the forward's backward calling the backward op.
fn rmsnorm_op() -> Result<CustomOp> {
    // SAFETY: `rmsnorm_bwd_*_<dtype>` take the five inputs' and two outputs' (pointer,
    // layout) pairs and no scalar, and index rows below rstd's length and columns below d.
    let backward = unsafe {
        CustomOp::from_kernel("rmsnorm_backward", RmsNormBackward)?.cuda_launch(RMSNORM_CU, rmsnorm_backward_launch)?
    };
    let forward = CustomOp::from_kernel("rmsnorm", RmsNorm)?.scalars(&[EPS]).backward_multi(move |x, ys, gs| {
        let g = backward.apply_multi(&[&x[0], &x[1], &ys[1], &gs[0], &gs[1]])?;
        Ok(vec![Some(g[0].clone()), Some(g[1].clone())])
    });
    // SAFETY: `rmsnorm_fwd_<dtype>` takes (x, w, y, rstd) as (pointer, layout) pairs and eps,
    // and touches rows below the grid's size and columns below d.
    unsafe { forward.cuda_launch(RMSNORM_CU, rmsnorm_launch) }
}

/// The same RMSNorm from built-in ops: what the custom op has to beat.
fn composed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.mul(&x.sqr()?.mean_keepdim([-1])?.add_scalar(EPS)?.rsqrt()?)?.mul(w)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let op = rmsnorm_op()?;
    let y_of = |t: &[Tensor]| -> Result<Tensor> { Ok(op.apply_multi(&[&t[0], &t[1]])?.remove(0)) };
    tensorforge::manual_seed(1);
    let x = Tensor::randn(0.0, 1.0, (6, 40), DType::F64, Device::Cpu)?;
    let w = Tensor::randn(1.0, 0.5, 40, DType::F64, Device::Cpu)?;

    // It is RMSNorm: the composed op gives the same numbers.
    let diff = y_of(&[x.clone(), w.clone()])?.sub(&composed(&x, &w)?)?.abs()?.max([])?.item()?;
    if diff > 1e-12 {
        return Err(Error::msg(format!("rmsnorm differs from the composed op by {diff:e}")));
    }
    // The backward (and the backward op, through both outputs) match finite differences.
    gradcheck(y_of, &[x.clone(), w.clone()])?;
    gradcheck(|t| op.apply_multi(&[&t[0], &t[1]])?[1].sin(), &[x.clone(), w.clone()])?;
    println!("gradcheck passed");

    // CPU and CUDA agree, both outputs and both gradients, in every float dtype.
    let both = |t: &[Tensor]| -> Result<Tensor> {
        let ys = op.apply_multi(&[&t[0], &t[1]])?;
        Tensor::cat(&[&ys[0].flatten_all()?, &ys[1].flatten_all()?], 0)
    };
    let px = Tensor::randn(0.0, 1.0, (33, 300), DType::F64, Device::Cpu)?;
    let pw = Tensor::randn(1.0, 0.5, 300, DType::F64, Device::Cpu)?;
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        match parity(both, &[px.to_dtype(dtype)?, pw.to_dtype(dtype)?]) {
            Ok(()) => println!("parity passed ({dtype:?}): CPU and CUDA agree, outputs and gradients"),
            Err(Error::CudaUnavailable { reason }) => {
                println!("parity skipped: {reason}");
                break;
            }
            Err(e) => return Err(e),
        }
    }

    // Forward + backward on the CPU, custom vs composed, interleaved rounds.
    let (rows, d) = (512, 1024);
    let x = Tensor::randn(0.0, 1.0, (rows, d), DType::F32, Device::Cpu)?.requires_grad();
    let w = Tensor::randn(1.0, 0.1, d, DType::F32, Device::Cpu)?.requires_grad();
    let step = |f: &dyn Fn() -> Result<Tensor>| -> Result<f64> {
        let t = Instant::now();
        f()?.sum_all()?.backward()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let (mut custom, mut built_in) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 5 } else { 30 } {
        custom.push(step(&|| y_of(&[x.clone(), w.clone()]))?);
        built_in.push(step(&|| composed(&x, &w))?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, b) = (median(&mut custom), median(&mut built_in));
    println!(
        "rmsnorm [{rows}, {d}] f32 forward+backward on the CPU: custom {:.3} ms, composed {:.3} ms, speedup {:.2} (composed time / custom time)",
        c * 1e3,
        b * 1e3,
        b / c
    );
    Ok(())
}
