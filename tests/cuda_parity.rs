//! CPU-vs-CUDA parity for every primitive, dtype, and contiguous / strided / broadcast view,
//! with per-dtype tolerances. Needs a CUDA device and NVRTC: run with
//! `cargo test --release --test cuda_parity -- --include-ignored` (scripts/gpu-check.sh does).
#![cfg(feature = "cuda")]

use std::sync::Arc;
use tensorforge::backend::cpu::{CpuDevice, CpuStorage};
use tensorforge::backend::cuda::{CudaDevice, CudaStorage};
use tensorforge::backend::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, OptimRule, ReduceOp, ScalarOp, UnaryOp, Window2d,
};
use tensorforge::{DType, Error, Layout, Shape};

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

fn dev() -> Arc<CudaDevice> {
    CudaDevice::get(0).expect("these tests need a CUDA device and NVRTC")
}

/// Absolute and relative tolerance per dtype (16-bit floats: a couple of ulps).
fn tol(d: DType) -> (f64, f64) {
    match d {
        DType::F32 => (1e-5, 1e-5),
        DType::F64 => (1e-12, 1e-12),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        DType::I64 | DType::U8 => (0.0, 0.0),
    }
}

fn values(s: &CpuStorage) -> Vec<f64> {
    match s {
        CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
        CpuStorage::F64(v) => v.clone(),
        CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
        CpuStorage::I64(v) => v.iter().map(|&x| x as f64).collect(),
        CpuStorage::U8(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

#[track_caller]
fn assert_close(cpu: &CpuStorage, gpu: &CudaStorage, scale: f64, what: &str) {
    let g = gpu.to_cpu().expect("copy back");
    assert_eq!(cpu.dtype(), g.dtype(), "{what}: dtype");
    let (a, b) = (values(cpu), values(&g));
    assert_eq!(a.len(), b.len(), "{what}: length");
    let (atol, rtol) = tol(cpu.dtype());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= scale * (atol + rtol * x.abs().max(y.abs()));
        assert!(ok, "{what}: element {i}: cpu {x} vs cuda {y}");
    }
}

/// `n` values of `dtype` from a fixed stream: floats in [lo, hi), integers in a small range.
fn data(n: usize, dtype: DType, seed: u64, lo: f64, hi: f64) -> CpuStorage {
    let f = CpuDevice.rand_uniform(&Shape::from(n), DType::F64, seed, 0, lo, hi).unwrap();
    let CpuStorage::F64(v) = f else { unreachable!() };
    match dtype {
        DType::I64 => CpuStorage::I64(v.iter().map(|x| (x * 10.0).round() as i64).collect()),
        DType::U8 => CpuStorage::U8(v.iter().map(|x| ((x - lo) * 40.0) as u8).collect()),
        d => CpuStorage::F64(v).cast(&Layout::contiguous(n), d).unwrap(),
    }
}

fn up(s: &CpuStorage) -> CudaStorage {
    dev().storage_from_cpu(s).unwrap()
}

/// Views of a 24-element buffer with shape [4, 6] (or [6, 4] transposed): contiguous,
/// transposed, offset slice with step, and a broadcast row.
fn views() -> Vec<(&'static str, Layout)> {
    let base = Layout::contiguous((4, 6));
    vec![
        ("contiguous", base.clone()),
        ("transposed", base.transpose(0, 1)),
        ("sliced", Layout::contiguous((4, 6)).slice(1, 1, 3, 2)),
        ("broadcast", Layout::new(Shape::from((1, 6)), vec![6, 1], 6).broadcast_as(&Shape::from((5, 6))).unwrap()),
    ]
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn philox_uniform_bits_match_element_for_element() {
    let d = dev();
    for (seed, offset, n) in [(0u64, 0u64, 1usize), (42, 7, 1001), (u64::MAX, 1 << 40, 4099)] {
        let shape = Shape::from(n);
        let c = CpuDevice.rand_uniform(&shape, DType::F64, seed, offset, 0.0, 1.0).unwrap();
        let g = d.rand_uniform(&shape, DType::F64, seed, offset, 0.0, 1.0).unwrap().to_cpu().unwrap();
        // u32 / 2^32 is exact in f64: the bits themselves must agree.
        assert_eq!(c, g, "uniform stream ({seed}, {offset})");
    }
    for dt in FLOATS {
        let shape = Shape::from(777);
        let c = CpuDevice.rand_uniform(&shape, dt, 3, 9, -1.0, 2.0).unwrap();
        assert_close(&c, &d.rand_uniform(&shape, dt, 3, 9, -1.0, 2.0).unwrap(), 1.0, "uniform");
        let c = CpuDevice.rand_normal(&shape, dt, 3, 9, 0.5, 2.0).unwrap();
        assert_close(&c, &d.rand_normal(&shape, dt, 3, 9, 0.5, 2.0).unwrap(), 4.0, "normal");
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn fill_every_dtype() {
    for dt in DType::ALL {
        for v in [0.0, 1.5, -3.25, 300.0] {
            let s = Shape::from((3, 5));
            assert_close(&CpuDevice.full(&s, dt, v).unwrap(), &dev().full(&s, dt, v).unwrap(), 1.0, "full");
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn cast_every_pair_every_view() {
    for from in DType::ALL {
        let c = data(30, from, 1, -300.0, 300.0);
        let g = up(&c);
        for to in DType::ALL {
            for (name, l) in views() {
                let what = format!("cast {from:?}->{to:?} {name}");
                assert_close(&c.cast(&l, to).unwrap(), &g.cast(&l, to).unwrap(), 1.0, &what);
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn copy_strided_every_dtype() {
    for dt in DType::ALL {
        let c = data(30, dt, 2, -2.0, 2.0);
        let g = up(&c);
        let src = Layout::contiguous((4, 6)).transpose(0, 1);
        let dst = Layout::contiguous((6, 8)).slice(1, 2, 4, 1);
        let (mut cd, mut gd) =
            (CpuDevice.full(&Shape::from(48), dt, 7.0).unwrap(), dev().full(&Shape::from(48), dt, 7.0).unwrap());
        c.copy_strided(&src, &mut cd, &dst).unwrap();
        g.copy_strided(&src, &mut gd, &dst).unwrap();
        assert_close(&cd, &gd, 1.0, &format!("copy_strided {dt:?}"));
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn unary_every_op_dtype_view() {
    for dt in FLOATS {
        for &op in UnaryOp::ALL {
            // log/sqrt/rsqrt/recip on positive inputs; the rest on both signs.
            let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip);
            let c = if positive { data(30, dt, 3, 0.1, 4.0) } else { data(30, dt, 3, -4.0, 4.0) };
            let g = up(&c);
            for (name, l) in views() {
                let what = format!("{} {dt:?} {name}", op.name());
                assert_close(&c.unary(&l, op).unwrap(), &g.unary(&l, op).unwrap(), 2.0, &what);
            }
        }
    }
    let c = data(30, DType::I64, 4, -5.0, 5.0);
    let g = up(&c);
    for op in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Sign, UnaryOp::Sqr] {
        for (name, l) in views() {
            assert_close(
                &c.unary(&l, op).unwrap(),
                &g.unary(&l, op).unwrap(),
                1.0,
                &format!("{} i64 {name}", op.name()),
            );
        }
    }
    assert!(matches!(g.unary(&Layout::contiguous(30), UnaryOp::Exp), Err(Error::UnsupportedDType { .. })));
    assert!(up(&data(30, DType::U8, 1, 0., 1.)).unary(&Layout::contiguous(30), UnaryOp::Neg).is_err());
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn scalar_ops() {
    let ops = [
        ScalarOp::Affine { mul: 2.5, add: -1.0 },
        ScalarOp::Affine { mul: -3.0, add: 4.0 },
        ScalarOp::Powf(2.0),
        ScalarOp::Powf(0.5),
        ScalarOp::Clamp { lo: -0.5, hi: 1.25 },
    ];
    for dt in FLOATS.into_iter().chain([DType::I64]) {
        let c = data(30, dt, 5, 0.0, 3.0);
        let g = up(&c);
        for op in ops {
            let (cr, gr) = (c.scalar(&Layout::contiguous((5, 6)), op), g.scalar(&Layout::contiguous((5, 6)), op));
            match (cr, gr) {
                (Ok(a), Ok(b)) => assert_close(&a, &b, 2.0, &format!("{op:?} {dt:?}")),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{op:?} {dt:?}: cpu {:?} vs cuda {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn binary_cmp_where_with_broadcast() {
    let la = Layout::contiguous((5, 6));
    let row = Layout::new(Shape::from((1, 6)), vec![6, 1], 0).broadcast_as(&Shape::from((5, 6))).unwrap();
    let col_t = Layout::contiguous((6, 5)).transpose(0, 1);
    for dt in DType::ALL {
        let (a, b) = (data(30, dt, 6, -3.0, 3.0), data(30, dt, 7, 0.5, 3.0));
        let (ga, gb) = (up(&a), up(&b));
        for lb in [&la, &row, &col_t] {
            for &op in BinaryOp::ALL {
                let (c, g) = (a.binary(&la, &b, lb, op), ga.binary(&la, &gb, lb, op));
                match (c, g) {
                    (Ok(c), Ok(g)) => assert_close(&c, &g, 2.0, &format!("{} {dt:?}", op.name())),
                    (Err(_), Err(_)) => {}
                    (c, g) => panic!("{} {dt:?}: cpu {:?} vs cuda {:?}", op.name(), c.map(|_| ()), g.map(|_| ())),
                }
            }
            for &op in CmpOp::ALL {
                assert_close(&a.cmp(&la, &b, lb, op).unwrap(), &ga.cmp(&la, &gb, lb, op).unwrap(), 1.0, op.name());
            }
            let m = a.cmp(&la, &b, lb, CmpOp::Lt).unwrap();
            let gm = up(&m);
            let ml = Layout::contiguous((5, 6));
            assert_close(
                &m.where_cond(&ml, &a, &la, &b, lb).unwrap(),
                &gm.where_cond(&ml, &ga, &la, &gb, lb).unwrap(),
                1.0,
                &format!("where {dt:?}"),
            );
        }
    }
    // Integer division by zero is 0 on both.
    let (z, x) = (CpuStorage::I64(vec![0, 0, 2]), CpuStorage::I64(vec![5, -5, i64::MIN]));
    let l = Layout::contiguous(3);
    let c = x.binary(&l, &z, &l, BinaryOp::Div).unwrap();
    assert_close(&c, &up(&x).binary(&l, &up(&z), &l, BinaryOp::Div).unwrap(), 1.0, "i64 div by 0");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn reduce_every_op_axes_dtype() {
    let base = Layout::contiguous((3, 5, 7));
    let views = [base.clone(), base.permute(&[2, 0, 1]).unwrap(), Layout::contiguous((3, 5, 14)).slice(2, 1, 7, 2)];
    let axes_sets: [&[usize]; 6] = [&[0], &[1], &[2], &[0, 1], &[0, 2], &[0, 1, 2]];
    for dt in DType::ALL {
        let c = data(3 * 5 * 14, dt, 8, -2.0, 2.0);
        let g = up(&c);
        for l in &views {
            for axes in axes_sets {
                for &op in ReduceOp::ALL {
                    if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && axes.len() != 1 {
                        continue;
                    }
                    let what = format!("{} {dt:?} {axes:?} {:?}", op.name(), l.dims());
                    match (c.reduce(l, op, axes), g.reduce(l, op, axes)) {
                        (Ok(a), Ok(b)) => assert_close(&a, &b, 8.0, &what),
                        (Err(_), Err(_)) => {}
                        (a, b) => panic!("{what}: cpu {:?} vs cuda {:?}", a.map(|_| ()), b.map(|_| ())),
                    }
                }
            }
        }
    }
    // Long rows take the block-per-output path.
    for dt in FLOATS {
        let c = data(3 * 5000, dt, 9, -1.0, 1.0);
        let g = up(&c);
        let l = Layout::contiguous((3, 5000));
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::ArgMin, ReduceOp::Mean] {
            let (a, b) = (c.reduce(&l, op, &[1]).unwrap(), g.reduce(&l, op, &[1]).unwrap());
            assert_close(&a, &b, 50.0, &format!("long {} {dt:?}", op.name()));
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn softmax_and_log_softmax() {
    for dt in FLOATS {
        for (shape, len) in [((4usize, 9usize, 33usize), 0), ((2, 3, 3000), 2)] {
            let n = shape.0 * shape.1 * shape.2;
            let c = data(n, dt, 10, -5.0, 5.0);
            let g = up(&c);
            let l = Layout::contiguous(shape);
            for axis in [0, 1, 2] {
                for log in [false, true] {
                    let what = format!("softmax log={log} {dt:?} axis {axis} {shape:?} ({len})");
                    assert_close(&c.softmax(&l, axis, log).unwrap(), &g.softmax(&l, axis, log).unwrap(), 4.0, &what);
                    let t = l.transpose(0, 2);
                    assert_close(&c.softmax(&t, axis, log).unwrap(), &g.softmax(&t, axis, log).unwrap(), 4.0, &what);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn matmul_strided_and_batched() {
    // Sizes that take the 16-byte-staged tensor-core kernels for f16/bf16 (k and the
    // mn-major extents multiples of 8, with ragged 128-tiles and a partial 32-deep k tile), and
    // sizes that fall back to the tiled kernels.
    let sizes = [
        (1usize, 1usize, 1usize, 1usize),
        (1, 65, 17, 70),
        (3, 33, 129, 64),
        (2, 128, 64, 200),
        (2, 200, 136, 264),
        (1, 256, 520, 136),
    ];
    for dt in FLOATS {
        for (b, m, k, n) in sizes {
            let (a, w) = (data(b * m * k, dt, 11, -1.0, 1.0), data(b * k * n, dt, 12, -1.0, 1.0));
            let (ga, gw) = (up(&a), up(&w));
            let scale = (k as f64).sqrt() * 4.0;
            // Each operand as stored or as a transposed view of the same data ([b, k, m] read as
            // [b, m, k]): transposes cost no copy, and each pairing picks its own kernel.
            let las = [Layout::contiguous((b, m, k)), Layout::contiguous((b, k, m)).transpose(1, 2)];
            let lws = [Layout::contiguous((b, k, n)), Layout::contiguous((b, n, k)).transpose(1, 2)];
            for (i, la) in las.iter().enumerate() {
                for (j, lw) in lws.iter().enumerate() {
                    let what = format!("matmul {dt:?} {b}x{m}x{k}x{n} a{i} w{j}");
                    assert_close(&a.matmul(la, &w, lw).unwrap(), &ga.matmul(la, &gw, lw).unwrap(), scale, &what);
                }
            }
            // A broadcast batch (stride 0).
            let la = &las[0];
            let lb = Layout::new(Shape::from((1, k, n)), vec![k * n, n, 1], 0)
                .broadcast_as(&Shape::from((b, k, n)))
                .unwrap();
            let what = format!("matmul {dt:?} {b}x{m}x{k}x{n} broadcast");
            assert_close(&a.matmul(la, &w, &lb).unwrap(), &ga.matmul(la, &gw, &lb).unwrap(), scale, &what);
        }
    }
    // An operand starting off a 16-byte boundary takes the fallback and still agrees.
    let dt = DType::BF16;
    let (a, w) = (data(1 + 64 * 64, dt, 13, -1.0, 1.0), data(64 * 64, dt, 14, -1.0, 1.0));
    let la = Layout::new(Shape::from((64, 64)), vec![64, 1], 1);
    let lw = Layout::contiguous((64, 64));
    assert_close(&a.matmul(&la, &w, &lw).unwrap(), &up(&a).matmul(&la, &up(&w), &lw).unwrap(), 32.0, "offset 1");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn index_select_gather_scatter_index_add() {
    let l = Layout::contiguous((4, 6));
    let il = Layout::contiguous(5);
    let gids = CpuStorage::I64((0..24).map(|i| (i * 7 % 4) as i64).collect());
    let gl = Layout::contiguous((4, 6));
    let gids_t = CpuStorage::I64((0..24).map(|i| (i * 5 % 6) as i64).collect());
    for dt in DType::ALL {
        let c = data(24, dt, 13, -3.0, 3.0);
        let g = up(&c);
        for (axis, lt) in [(0, l.clone()), (1, l.clone()), (0, l.transpose(0, 1))] {
            let size = lt.dims()[axis];
            let ids_ok = CpuStorage::I64(vec![0, (size - 1) as i64, 1, 0, 2]);
            let what = format!("index_select {dt:?} axis {axis}");
            let (a, b) = (
                c.index_select(&lt, &ids_ok, &il, axis).unwrap(),
                g.index_select(&lt, &up(&ids_ok), &il, axis).unwrap(),
            );
            assert_close(&a, &b, 1.0, &what);
            // index_add: src has the shape of the selection.
            let src = data(a.len(), dt, 14, -1.0, 1.0);
            let mut sdims = lt.dims().to_vec();
            sdims[axis] = 5;
            let sl = Layout::contiguous(sdims);
            let what = format!("index_add {dt:?} axis {axis}");
            assert_close(
                &c.index_add(&lt, &ids_ok, &il, &src, &sl, axis).unwrap(),
                &g.index_add(&lt, &up(&ids_ok), &il, &up(&src), &sl, axis).unwrap(),
                4.0,
                &what,
            );
        }
        let (gi, gli) = (&gids, &gl);
        let what = format!("gather {dt:?}");
        assert_close(&c.gather(&l, gi, gli, 0).unwrap(), &g.gather(&l, &up(gi), gli, 0).unwrap(), 1.0, &what);
        assert_close(&c.gather(&l, &gids_t, gli, 1).unwrap(), &g.gather(&l, &up(&gids_t), gli, 1).unwrap(), 1.0, &what);
        let src = data(24, dt, 15, -1.0, 1.0);
        let what = format!("scatter_add {dt:?}");
        assert_close(
            &c.scatter_add(&l, gi, gli, &src, &gl, 0).unwrap(),
            &g.scatter_add(&l, &up(gi), gli, &up(&src), &gl, 0).unwrap(),
            4.0,
            &what,
        );
        // An id out of range is an Err on both backends.
        let bad = CpuStorage::I64(vec![0, 9]);
        let bl = Layout::contiguous(2);
        assert!(matches!(g.index_select(&l, &up(&bad), &bl, 0), Err(Error::IndexOutOfRange { index: 9, .. })));
        assert!(c.index_select(&l, &bad, &bl, 0).is_err());
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn optimizer_rules() {
    let rules = [
        OptimRule::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.01 },
        OptimRule::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true, weight_decay: 0.0 },
        OptimRule::Adam {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: false,
            step: 3,
        },
        OptimRule::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, decoupled: true, step: 1 },
        OptimRule::RmsProp { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.0, momentum: 0.9 },
        OptimRule::RmsProp { lr: 1e-2, alpha: 0.99, eps: 1e-8, weight_decay: 0.1, momentum: 0.0 },
        OptimRule::Adagrad { lr: 0.1, eps: 1e-10, weight_decay: 0.0 },
    ];
    for dt in FLOATS {
        for rule in rules {
            let n = 1000;
            let mut p = data(n, dt, 16, -1.0, 1.0);
            let grad = data(n, dt, 17, -1.0, 1.0);
            let mut st: Vec<CpuStorage> =
                (0..rule.state_count()).map(|i| data(n, dt, 18 + i as u64, 0.0, 1.0)).collect();
            let mut gp = up(&p);
            let gg = up(&grad);
            let mut gst: Vec<CudaStorage> = st.iter().map(up).collect();
            for _ in 0..3 {
                p.optim_step(&grad, &mut st.iter_mut().collect::<Vec<_>>(), &rule).unwrap();
                gp.optim_step(&gg, &mut gst.iter_mut().collect::<Vec<_>>(), &rule).unwrap();
            }
            assert_close(&p, &gp, 8.0, &format!("{rule:?} {dt:?} params"));
            for (a, b) in st.iter().zip(&gst) {
                assert_close(a, b, 8.0, &format!("{rule:?} {dt:?} state"));
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn im2col_col2im_every_window() {
    let windows = [
        Window2d { kernel: (3, 3), stride: (1, 1), padding: (1, 1), dilation: (1, 1) },
        Window2d { kernel: (2, 3), stride: (2, 1), padding: (0, 1), dilation: (1, 2) },
        Window2d { kernel: (3, 2), stride: (3, 2), padding: (1, 0), dilation: (2, 1) },
    ];
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::U8] {
        let x = data(2 * 3 * 7 * 6, dtype, 21, -1.0, 1.0);
        // Contiguous and a transposed (H <-> W) view of the same buffer.
        let base = Layout::contiguous((2, 3, 7, 6));
        let views = [("contiguous", base.clone()), ("transposed", Layout::contiguous((2, 3, 6, 7)).transpose(2, 3))];
        for w in &windows {
            for (name, l) in &views {
                let what = format!("im2col {dtype:?} {name} {w:?}");
                let pad = if dtype.is_float() { f64::NEG_INFINITY } else { 0.0 };
                let cpu = x.im2col(l, w, pad).unwrap();
                let gpu = up(&x).im2col(l, w, pad).unwrap();
                assert_close(&cpu, &gpu, 1.0, &what);
                if dtype.is_float() {
                    let (oh, ow) = w.output_size(l.dims()[2], l.dims()[3]).unwrap();
                    let cl = Layout::contiguous((2, 3 * w.kernel.0 * w.kernel.1, oh * ow));
                    let cols = data(cl.elem_count(), dtype, 22, -1.0, 1.0);
                    let cpu = cols.col2im(&cl, w, l.dims()[2], l.dims()[3]).unwrap();
                    let gpu = up(&cols).col2im(&cl, w, l.dims()[2], l.dims()[3]).unwrap();
                    assert_close(&cpu, &gpu, 8.0, &format!("col2im {dtype:?} {name} {w:?}"));
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn conv2d_every_window() {
    let windows = [
        Window2d { kernel: (3, 3), stride: (1, 1), padding: (1, 1), dilation: (1, 1) },
        Window2d { kernel: (2, 3), stride: (2, 1), padding: (0, 1), dilation: (1, 2) },
        Window2d { kernel: (3, 2), stride: (3, 2), padding: (1, 0), dilation: (2, 1) },
    ];
    for dtype in FLOATS {
        // A wide image too, so output rows span more than one CPU register panel.
        for (h, wd) in [(7, 6), (5, 40)] {
            let x = data(2 * 3 * h * wd, dtype, 23, -1.0, 1.0);
            let base = Layout::contiguous((2, 3, h, wd));
            let views = [("contiguous", base), ("transposed", Layout::contiguous((2, 3, wd, h)).transpose(2, 3))];
            for win in &windows {
                let wl = Layout::contiguous((4, 3, win.kernel.0, win.kernel.1));
                let w = data(wl.elem_count(), dtype, 24, -1.0, 1.0);
                for (name, l) in &views {
                    let cpu = x.conv2d(l, &w, &wl, win).unwrap();
                    let gpu = up(&x).conv2d(l, &up(&w), &wl, win).unwrap();
                    // A sum of C·kh·kw = up to 18 products.
                    assert_close(&cpu, &gpu, 18.0, &format!("conv2d {dtype:?} {name} {h}x{wd} {win:?}"));
                }
            }
        }
    }
}
