//! Criterion benches of the CUDA kernels (names prefixed `cuda/`). Without a device they print
//! why and return, so `cargo bench --no-run` builds them everywhere. Each iteration queues the
//! kernel and synchronizes; the first call (NVRTC compile, module load) is a warm-up.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use tensorforge::backend::cuda::{CudaDevice, CudaStorage};
use tensorforge::backend::{BackendDevice, BackendStorage, BinaryOp, ReduceOp, UnaryOp, Window2d};
use tensorforge::{DType, Layout, Shape};

fn rand(d: &Arc<CudaDevice>, n: usize, dt: DType) -> CudaStorage {
    d.rand_uniform(&Shape::from(n), dt, 1, 0, -1.0, 1.0).expect("rand")
}

fn benches(c: &mut Criterion) {
    let d = match CudaDevice::get(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda benches skipped: {e}");
            return;
        }
    };
    let n = 1 << 24;
    let l = Layout::contiguous(n);
    for dt in [DType::F32, DType::BF16] {
        let (a, b) = (rand(&d, n, dt), rand(&d, n, dt));
        let bytes = (n * dt.size_in_bytes()) as u64;
        let mut g = c.benchmark_group(format!("cuda/elementwise/{}", dt.as_str()));
        g.throughput(Throughput::Bytes(3 * bytes));
        g.bench_function(format!("add/{n}"), |bench| {
            bench.iter(|| {
                let _o = a.binary(&l, &b, &l, BinaryOp::Add).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_function(format!("gelu_tanh/{n}"), |bench| {
            bench.iter(|| {
                let _o = a.unary(&l, UnaryOp::GeluTanh).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.throughput(Throughput::Bytes(bytes));
        let rows = Layout::contiguous((n / 4096, 4096));
        g.bench_function(format!("sum_rows/{n}"), |bench| {
            bench.iter(|| {
                let _o = a.reduce(&rows, ReduceOp::Sum, &[1]).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.throughput(Throughput::Bytes(2 * bytes));
        g.bench_function(format!("softmax_rows/{n}"), |bench| {
            bench.iter(|| {
                let _o = a.softmax(&rows, 1, false).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.finish();
    }
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let s = 4096;
        let (a, b) = (rand(&d, s * s, dt), rand(&d, s * s, dt));
        let l2 = Layout::contiguous((s, s));
        let mut g = c.benchmark_group(format!("cuda/matmul/{}", dt.as_str()));
        g.sample_size(10);
        g.throughput(Throughput::Elements((2 * s * s * s) as u64));
        g.bench_function(format!("{s}x{s}x{s}"), |bench| {
            bench.iter(|| {
                let _o = a.matmul(&l2, &b, &l2).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.finish();
    }
    // The CPU comparison's conv2d case (N32 C64 32×32, K64 3×3, padding 1), scaled up 8× in
    // batch so the launch does not hide the kernel.
    for dt in [DType::F32, DType::BF16] {
        let (n, ch, hw, k) = (256, 64, 32, 64);
        let x = rand(&d, n * ch * hw * hw, dt);
        let w = rand(&d, k * ch * 9, dt);
        let (xl, wl) = (Layout::contiguous((n, ch, hw, hw)), Layout::contiguous((k, ch, 3, 3)));
        let window = Window2d { kernel: (3, 3), stride: (1, 1), padding: (1, 1), dilation: (1, 1) };
        let mut g = c.benchmark_group(format!("cuda/conv2d/{}", dt.as_str()));
        g.sample_size(20);
        g.throughput(Throughput::Elements((2 * n * k * ch * 9 * hw * hw) as u64));
        g.bench_function(format!("n{n}c{ch}h{hw}k{k}"), |bench| {
            bench.iter(|| {
                let _o = x.conv2d(&xl, &w, &wl, &window).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.finish();
        // Its first half alone (torch: `unfold`), to split the conv's time between the column
        // copy and the product.
        let mut g = c.benchmark_group(format!("cuda/im2col/{}", dt.as_str()));
        g.sample_size(20);
        g.throughput(Throughput::Bytes((n * ch * 9 * hw * hw * dt.size_in_bytes()) as u64));
        g.bench_function(format!("n{n}c{ch}h{hw}k3"), |bench| {
            bench.iter(|| {
                let _o = x.im2col(&xl, &window, 0.0).unwrap();
                d.synchronize().unwrap();
            })
        });
        g.finish();
    }
}

criterion_group!(cuda, benches);
criterion_main!(cuda);
