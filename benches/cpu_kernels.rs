//! Criterion microbenchmarks of the CPU kernels, one group per family (names `cpu/…`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tensorforge::{DType, Device, Tensor};

fn randn(shape: impl Into<tensorforge::Shape>) -> Tensor {
    Tensor::randn(0.0, 1.0, shape, DType::F32, Device::Cpu).expect("randn")
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/elementwise");
    for n in [1 << 16, 1 << 22] {
        let (a, b) = (randn(n), randn(n));
        g.throughput(Throughput::Bytes((3 * 4 * n) as u64));
        g.bench_with_input(BenchmarkId::new("add_f32", n), &n, |bch, _| bch.iter(|| black_box(a.add(&b).unwrap())));
        g.throughput(Throughput::Bytes((2 * 4 * n) as u64));
        g.bench_with_input(BenchmarkId::new("exp_f32", n), &n, |bch, _| bch.iter(|| black_box(a.exp().unwrap())));
        g.bench_with_input(BenchmarkId::new("relu_f32", n), &n, |bch, _| bch.iter(|| black_box(a.relu().unwrap())));
    }
    let m = randn((1024, 1024));
    let row = randn(1024);
    g.bench_function("add_bias_broadcast_1024x1024", |bch| bch.iter(|| black_box(m.add(&row).unwrap())));
    let t = m.t().unwrap();
    g.bench_function("copy_transposed_1024x1024", |bch| bch.iter(|| black_box(t.contiguous().unwrap())));
    g.finish();
}

fn reduce(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/reduce");
    let x = randn((4096, 1024));
    g.throughput(Throughput::Bytes((4 * 4096 * 1024) as u64));
    g.bench_function("sum_all_4096x1024", |b| b.iter(|| black_box(x.sum_all().unwrap())));
    g.bench_function("sum_rows_4096x1024", |b| b.iter(|| black_box(x.sum([1]).unwrap())));
    g.bench_function("sum_cols_4096x1024", |b| b.iter(|| black_box(x.sum([0]).unwrap())));
    g.bench_function("max_rows_4096x1024", |b| b.iter(|| black_box(x.max([1]).unwrap())));
    g.finish();
}

fn softmax(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/softmax");
    let x = randn((4096, 1024));
    g.throughput(Throughput::Bytes((2 * 4 * 4096 * 1024) as u64));
    g.bench_function("softmax_last_4096x1024", |b| b.iter(|| black_box(x.softmax(-1).unwrap())));
    g.bench_function("log_softmax_last_4096x1024", |b| b.iter(|| black_box(x.log_softmax(-1).unwrap())));
    g.finish();
}

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/matmul");
    g.sample_size(10);
    for n in [128, 512, 1024] {
        let (a, b) = (randn((n, n)), randn((n, n)));
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        g.bench_with_input(BenchmarkId::new("sgemm", n), &n, |bch, _| bch.iter(|| black_box(a.matmul(&b).unwrap())));
        let bt = b.t().unwrap();
        g.bench_with_input(BenchmarkId::new("sgemm_bt", n), &n, |bch, _| {
            bch.iter(|| black_box(a.matmul(&bt).unwrap()))
        });
    }
    let (a, b) = (randn((64, 128, 128)), randn((64, 128, 128)));
    g.throughput(Throughput::Elements((2 * 64 * 128 * 128 * 128) as u64));
    g.bench_function("batched_64x128x128x128", |bch| bch.iter(|| black_box(a.matmul(&b).unwrap())));
    // Half-precision tensors: bf16 on `vdpbf16ps` where the CPU has AVX512_BF16 (widened to
    // f32 elsewhere), f16 widened while packed.
    let (a, b) = (randn((1024, 1024)), randn((1024, 1024)));
    g.throughput(Throughput::Elements(2 * 1024 * 1024 * 1024));
    for dt in [DType::BF16, DType::F16] {
        let (ah, bh) = (a.to_dtype(dt).unwrap(), b.to_dtype(dt).unwrap());
        g.bench_function(format!("{dt:?}_gemm_1024").to_lowercase(), |bch| {
            bch.iter(|| black_box(ah.matmul(&bh).unwrap()))
        });
    }
    // Autocast's products of a small MLP layer (batch 32, 64 → 256): forward `x·wᵀ` and the
    // weight gradient `gᵀ·x`, whose transposed view is copied rounded.
    let (x, w, gr) = (randn((32, 64)), randn((256, 64)), randn((32, 256)));
    let (wt, gt) = (w.t().unwrap(), gr.t().unwrap());
    g.throughput(Throughput::Elements(2 * 32 * 64 * 256));
    for (name, low) in [("f32", None), ("autocast_bf16", Some(DType::BF16))] {
        let run = |f: &dyn Fn() -> Tensor| match low {
            Some(low) => tensorforge::amp::autocast(low, f),
            None => f(),
        };
        g.bench_function(format!("mlp_forward_32x64x256_{name}"), |bch| {
            bch.iter(|| black_box(run(&|| x.matmul(&wt).unwrap())))
        });
        g.bench_function(format!("mlp_weight_grad_256x32x64_{name}"), |bch| {
            bch.iter(|| black_box(run(&|| gt.matmul(&x).unwrap())))
        });
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu/conv");
    g.sample_size(10);
    let x = randn((32, 64, 32, 32));
    let w = randn((64, 64, 3, 3));
    let opt = tensorforge::ops::Conv2dOptions { padding: (1, 1), ..Default::default() };
    g.throughput(Throughput::Elements(2 * 32 * 64 * 64 * 9 * 32 * 32_u64));
    g.bench_function("conv2d_n32_c64_32x32_k64_3x3_p1", |b| b.iter(|| black_box(x.conv2d(&w, None, opt).unwrap())));
    // The same convolution under autocast: bf16 operands and f32 sums on AVX512_BF16.
    g.bench_function("conv2d_n32_c64_32x32_k64_3x3_p1_autocast_bf16", |b| {
        b.iter(|| black_box(tensorforge::amp::autocast(DType::BF16, || x.conv2d(&w, None, opt).unwrap())))
    });
    g.throughput(Throughput::Bytes((4 * 32 * 64 * 32 * 32) as u64));
    g.bench_function("max_pool2d_2x2_n32_c64_32x32", |b| {
        b.iter(|| black_box(x.max_pool2d((2, 2), (2, 2), (0, 0)).unwrap()))
    });
    g.bench_function("avg_pool2d_3x3_s1_p1_n32_c64_32x32", |b| {
        b.iter(|| black_box(x.avg_pool2d((3, 3), (1, 1), (1, 1), true).unwrap()))
    });
    g.finish();
}

fn optim(c: &mut Criterion) {
    use tensorforge::optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig};
    let mut g = c.benchmark_group("cpu/optim");
    let n = 1 << 20;
    let p = randn(n).requires_grad();
    // One backward gives the parameter a gradient; the steps below reuse it.
    p.mul_scalar(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    let mut sgd = Sgd::new(vec![p.clone()], SgdConfig { lr: 1e-3, ..Default::default() }).unwrap();
    let mut adam = Adam::new(vec![p.clone()], AdamConfig::default()).unwrap();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("sgd_step_1M", |b| b.iter(|| sgd.step().unwrap()));
    g.bench_function("adam_step_1M", |b| b.iter(|| adam.step().unwrap()));
    g.finish();
}

/// The cost of running an op at all, on 16 elements: a built-in primitive against the same
/// arithmetic as an elementwise custom op and as a general one (issue: a custom op must cost
/// no more than a built-in op's dispatch). `…_grad` records the op for autograd too.
fn dispatch(c: &mut Criterion) {
    use tensorforge::Result;
    use tensorforge::custom::{CpuKernel, CustomOp, Float, Input, Kernel, Output, Spec};
    struct Neg;
    impl CpuKernel for Neg {
        fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], _: &[f64]) {
            for (o, &x) in out.iter_mut().zip(x[0]) {
                *o = -x;
            }
        }
    }
    struct NegGeneral;
    impl Kernel for NegGeneral {
        fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<tensorforge::Shape>> {
            Ok(vec![x[0].dims.into()])
        }
        fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], _: &[f64]) -> Result<()> {
            let x = x[0].float()?;
            for (i, o) in out[0].as_mut_slice().iter_mut().enumerate() {
                *o = -x.data()[i * x.strides()[0]];
            }
            Ok(())
        }
    }
    /// A reduction to another shape: the sum of a `[4, 4]` matrix's rows.
    struct RowSum;
    impl Kernel for RowSum {
        fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<tensorforge::Shape>> {
            Ok(vec![x[0].dims[0].into()])
        }
        fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], _: &[f64]) -> Result<()> {
            let m = x[0].float()?;
            for (i, o) in out[0].as_mut_slice().iter_mut().enumerate() {
                *o = (0..m.dims()[1]).fold(T::ZERO, |s, j| s + m.at(&[i, j]));
            }
            Ok(())
        }
    }
    let row_sum = CustomOp::from_kernel("row_sum", RowSum)
        .unwrap()
        .backward(|x, _, g| Ok(vec![Some(g.unsqueeze(1)?.broadcast_as(x[0].shape())?)]));
    let elementwise = CustomOp::new("neg_elementwise", Neg).unwrap().backward(|_, _, g| Ok(vec![Some(g.neg()?)]));
    let general =
        CustomOp::from_kernel("neg_general", NegGeneral).unwrap().backward(|_, _, g| Ok(vec![Some(g.neg()?)]));
    let mut g = c.benchmark_group("cpu/dispatch");
    let x = randn(16);
    let v = x.clone().requires_grad();
    for (name, t) in [("", &x), ("_grad", &v)] {
        g.bench_function(format!("builtin_neg{name}"), |b| b.iter(|| black_box(t.neg().unwrap())));
        g.bench_function(format!("custom_elementwise_neg{name}"), |b| {
            b.iter(|| black_box(elementwise.apply(&[t]).unwrap()))
        });
        g.bench_function(format!("custom_general_neg{name}"), |b| b.iter(|| black_box(general.apply(&[t]).unwrap())));
    }
    let m = randn((4, 4));
    let mv = m.clone().requires_grad();
    for (name, t) in [("", &m), ("_grad", &mv)] {
        g.bench_function(format!("builtin_sum_rows{name}"), |b| b.iter(|| black_box(t.sum([1]).unwrap())));
        g.bench_function(format!("custom_general_sum_rows{name}"), |b| {
            b.iter(|| black_box(row_sum.apply(&[t]).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, elementwise, reduce, softmax, matmul, conv, optim, dispatch);
criterion_main!(benches);
