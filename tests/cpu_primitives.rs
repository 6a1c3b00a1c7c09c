//! Every primitive of the CPU backend against a plain f64 reference, over ranks 0–6, dims of
//! size 0 and 1, contiguous / transposed / sliced / broadcast views and every dtype.

mod common;

use common::*;
use tensorforge::backend::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use tensorforge::{DType, Device, Error, Result, Tensor};

fn erf(x: f64) -> f64 {
    tensorforge::backend::cpu::float::erf64(x)
}

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sqr => x * x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::GeluErf => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        UnaryOp::GeluTanh => {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Silu => x * sig(x),
        UnaryOp::Softplus => (1.0 + x.exp()).ln(),
        UnaryOp::Sign => x.signum() * f64::from(x != 0.0),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
    }
}

fn unary_domain(op: UnaryOp) -> (f64, f64) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip => (0.1, 4.0),
        _ => (-4.0, 4.0),
    }
}

#[test]
fn unary_ops_match_reference() -> Result<()> {
    let mut rng = Rng::new(1);
    for &op in UnaryOp::ALL {
        let (lo, hi) = unary_domain(op);
        for dtype in FLOATS {
            for (shape, kind, vals, t) in cases(&mut rng, dtype, lo, hi, true) {
                let got = t.unary_op(op)?;
                assert_eq!(got.dims(), shape.as_slice());
                assert_eq!(got.dtype(), dtype);
                let want: Vec<f64> = vals.iter().map(|&x| round_to(unary_ref(op, x), dtype)).collect();
                // Rounding of the result to the dtype adds one ulp of the output.
                let (a, r) = tol(dtype);
                assert_close_tol(
                    &got.to_vec_f64()?,
                    &want,
                    (a * 4.0, r * 4.0),
                    &format!("{op:?} {dtype:?} {kind:?} {shape:?}"),
                );
            }
        }
    }
    Ok(())
}

#[test]
fn integer_unary_ops_and_errors() -> Result<()> {
    let t = Tensor::from_vec(vec![-3i64, 0, 5], 3, Device::Cpu)?;
    assert_eq!(t.neg()?.to_vec1::<i64>()?, vec![3, 0, -5]);
    assert_eq!(t.abs()?.to_vec1::<i64>()?, vec![3, 0, 5]);
    assert_eq!(t.sign()?.to_vec1::<i64>()?, vec![-1, 0, 1]);
    assert_eq!(t.sqr()?.to_vec1::<i64>()?, vec![9, 0, 25]);
    assert!(matches!(t.exp(), Err(Error::UnsupportedDType { .. })));
    let m = Tensor::from_vec(vec![1u8, 0], 2, Device::Cpu)?;
    assert!(matches!(m.tanh(), Err(Error::UnsupportedDType { .. })));
    Ok(())
}

#[test]
fn special_values() -> Result<()> {
    let t = Tensor::from_vec(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 2.5, -2.5, 0.5], 7, Device::Cpu)?;
    let r = t.round()?.to_vec1::<f32>()?;
    assert!(r[0].is_nan());
    assert_eq!(&r[1..], &[f32::INFINITY, f32::NEG_INFINITY, -0.0, 2.0, -2.0, 0.0]);
    let s = t.sigmoid()?.to_vec1::<f32>()?;
    assert_eq!(&s[1..3], &[1.0, 0.0]);
    let sp = Tensor::from_vec(vec![-100f64, 100.0], 2, Device::Cpu)?.softplus()?.to_vec1::<f64>()?;
    assert!((sp[0] - (-100f64).exp()).abs() < 1e-50 && sp[1] == 100.0);
    Ok(())
}

#[test]
fn scalar_maps_match_reference() -> Result<()> {
    let mut rng = Rng::new(2);
    for dtype in FLOATS {
        for (shape, kind, vals, t) in cases(&mut rng, dtype, 0.1, 3.0, true) {
            let what = format!("{dtype:?} {kind:?} {shape:?}");
            let (a, r) = tol(dtype);
            let t4 = (a * 4.0, r * 4.0);
            let want: Vec<f64> = vals.iter().map(|&x| round_to(x * 1.5 - 0.25, dtype)).collect();
            assert_close_tol(&t.affine(1.5, -0.25)?.to_vec_f64()?, &want, t4, &format!("affine {what}"));
            let want: Vec<f64> = vals.iter().map(|&x| round_to(x.powf(1.7), dtype)).collect();
            assert_close_tol(&t.powf(1.7)?.to_vec_f64()?, &want, t4, &format!("powf {what}"));
            let want: Vec<f64> = vals.iter().map(|&x| x.clamp(0.5, 2.0)).collect();
            assert_close(&t.clamp(0.5, 2.0)?.to_vec_f64()?, &want, dtype, &format!("clamp {what}"));
        }
    }
    let i = Tensor::from_vec(vec![-5i64, 2, 9], 3, Device::Cpu)?;
    assert_eq!(i.affine(2.0, 1.0)?.to_vec1::<i64>()?, vec![-9, 5, 19]);
    assert_eq!(i.clamp(0.0, 4.0)?.to_vec1::<i64>()?, vec![0, 2, 4]);
    Ok(())
}

fn binary_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::ReluBackward => {
            if b <= 0.0 {
                0.0
            } else {
                a
            }
        }
    }
}

/// Two broadcast-compatible shapes: `b` drops leading axes and sets some dims to 1.
fn broadcast_shapes(rng: &mut Rng, rank: usize) -> (Vec<usize>, Vec<usize>) {
    let a = rng.shape(rank, true);
    let drop = rng.below(rank + 1);
    let mut b: Vec<usize> = a[drop..].to_vec();
    for d in b.iter_mut() {
        if rng.below(3) == 0 {
            *d = 1;
        }
    }
    if rng.below(2) == 0 { (a, b) } else { (b, a) }
}

fn broadcast_out(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            if da == 1 { db } else { da }
        })
        .collect()
}

#[test]
fn binary_ops_broadcast_match_reference() -> Result<()> {
    let mut rng = Rng::new(3);
    for &op in BinaryOp::ALL {
        for dtype in DType::ALL {
            if matches!(op, BinaryOp::Pow | BinaryOp::ReluBackward) && !dtype.is_float() {
                continue;
            }
            for rank in 0..=6 {
                for kind in [Kind::Contiguous, Kind::Transposed, Kind::Sliced] {
                    let (sa, sb) = broadcast_shapes(&mut rng, rank);
                    let (lo, hi) = if dtype == DType::U8 { (1.0, 12.0) } else { (0.5, 3.0) };
                    let va = values(&mut rng, sa.iter().product(), dtype, lo, hi);
                    let vb = values(&mut rng, sb.iter().product(), dtype, lo, hi);
                    let ta = make(&va, &sa, dtype, kind)?;
                    let tb = make(&vb, &sb, dtype, Kind::Contiguous)?;
                    let got = ta.binary_op(&tb, op)?;
                    let out = broadcast_out(&sa, &sb);
                    assert_eq!(got.dims(), out.as_slice());
                    let (ra, rb) = (Ref { shape: sa.clone(), data: va }, Ref { shape: sb.clone(), data: vb });
                    let want: Vec<f64> = indices(&out)
                        .iter()
                        .map(|i| {
                            let (x, y) = (ra.at_broadcast(i), rb.at_broadcast(i));
                            let v = binary_ref(op, x, y);
                            match dtype {
                                DType::I64 if op == BinaryOp::Div => (x as i64 / y as i64) as f64,
                                DType::U8 => match op {
                                    BinaryOp::Div => ((x as u8) / (y as u8)) as f64,
                                    _ => (v as i64).rem_euclid(256) as f64,
                                },
                                _ => round_to(v, dtype),
                            }
                        })
                        .collect();
                    let (a, r) = tol(dtype);
                    assert_close_tol(
                        &got.to_vec_f64()?,
                        &want,
                        (a * 4.0, r * 4.0),
                        &format!("{op:?} {dtype:?} {sa:?} {sb:?} {kind:?}"),
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn maximum_propagates_nan_and_int_division_truncates() -> Result<()> {
    let a = Tensor::from_vec(vec![f32::NAN, 1.0], 2, Device::Cpu)?;
    let b = Tensor::from_vec(vec![0f32, f32::NAN], 2, Device::Cpu)?;
    assert!(a.maximum(&b)?.to_vec1::<f32>()?.iter().all(|x| x.is_nan()));
    assert!(a.minimum(&b)?.to_vec1::<f32>()?.iter().all(|x| x.is_nan()));
    let i = Tensor::from_vec(vec![7i64, -7], 2, Device::Cpu)?;
    let z = Tensor::from_vec(vec![-2i64, 2], 2, Device::Cpu)?;
    assert_eq!(i.div(&z)?.to_vec1::<i64>()?, vec![-3, -3], "toward zero");
    // By zero: an Err, as PyTorch raises (tests/bad_input.rs).
    assert!(i.div(&Tensor::from_vec(vec![0i64, 2], 2, Device::Cpu)?).is_err());
    Ok(())
}

#[test]
fn comparisons_and_where() -> Result<()> {
    let mut rng = Rng::new(4);
    for dtype in DType::ALL {
        for rank in 0..=5 {
            let (sa, sb) = broadcast_shapes(&mut rng, rank);
            let va = values(&mut rng, sa.iter().product(), dtype, 0.0, 4.0);
            let vb = values(&mut rng, sb.iter().product(), dtype, 0.0, 4.0);
            let ta = make(&va, &sa, dtype, Kind::Transposed)?;
            let tb = make(&vb, &sb, dtype, Kind::Contiguous)?;
            let out = broadcast_out(&sa, &sb);
            let (ra, rb) = (Ref { shape: sa.clone(), data: va }, Ref { shape: sb.clone(), data: vb });
            for &op in CmpOp::ALL {
                let got = ta.compare(&tb, op)?;
                assert_eq!(got.dtype(), DType::U8);
                let want: Vec<f64> = indices(&out)
                    .iter()
                    .map(|i| {
                        let (x, y) = (ra.at_broadcast(i), rb.at_broadcast(i));
                        f64::from(match op {
                            CmpOp::Eq => x == y,
                            CmpOp::Ne => x != y,
                            CmpOp::Lt => x < y,
                            CmpOp::Le => x <= y,
                            CmpOp::Gt => x > y,
                            CmpOp::Ge => x >= y,
                        })
                    })
                    .collect();
                assert_eq!(got.to_vec_f64()?, want, "{op:?} {dtype:?} {sa:?} {sb:?}");
            }
            // where(a > b, a, b) == maximum for these values.
            let mask = ta.gt(&tb)?;
            let w = mask.where_cond(&ta, &tb)?;
            let want: Vec<f64> = indices(&out).iter().map(|i| ra.at_broadcast(i).max(rb.at_broadcast(i))).collect();
            assert_eq!(w.to_vec_f64()?, want, "where {dtype:?} {sa:?} {sb:?}");
        }
    }
    let f = Tensor::zeros(2, DType::F32, Device::Cpu)?;
    assert!(matches!(f.where_cond(&f, &f), Err(Error::UnsupportedDType { .. })));
    Ok(())
}

fn reduce_ref(op: ReduceOp, xs: &[f64]) -> f64 {
    let first_by = |better: &dyn Fn(f64, f64) -> bool| {
        let mut b = 0;
        for (i, &x) in xs.iter().enumerate() {
            if better(x, xs[b]) {
                b = i;
            }
        }
        b as f64
    };
    match op {
        ReduceOp::Sum => xs.iter().sum(),
        ReduceOp::Mean => xs.iter().sum::<f64>() / xs.len() as f64,
        ReduceOp::Max => xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ReduceOp::Min => xs.iter().cloned().fold(f64::INFINITY, f64::min),
        ReduceOp::Prod => xs.iter().product(),
        ReduceOp::ArgMax => first_by(&|x, b| x > b),
        ReduceOp::ArgMin => first_by(&|x, b| x < b),
    }
}

#[test]
fn reductions_over_axis_sets_match_reference() -> Result<()> {
    let mut rng = Rng::new(5);
    for &op in ReduceOp::ALL {
        for dtype in DType::ALL {
            if op == ReduceOp::Mean && !dtype.is_float() {
                continue;
            }
            let one_axis = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
            for (shape, kind, vals, t) in cases(&mut rng, dtype, 0.5, 1.5, false) {
                let rank = shape.len();
                if rank == 0 && one_axis {
                    continue;
                }
                // A random non-empty axis subset (one axis for arg-reductions).
                let mut axes: Vec<usize> = (0..rank).filter(|_| rng.below(2) == 0).collect();
                if one_axis || axes.is_empty() {
                    axes = if rank == 0 { vec![] } else { vec![rng.below(rank)] };
                }
                let keep = rng.below(2) == 0;
                let ax: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
                let got = t.reduce(op, &ax, keep)?;
                let src = Ref { shape: shape.clone(), data: vals.clone() };
                let out_keep: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if axes.contains(&i) || (ax.is_empty()) { 1 } else { d })
                    .collect();
                let want: Vec<f64> = indices(&out_keep)
                    .iter()
                    .map(|o| {
                        let xs: Vec<f64> = indices(&shape)
                            .into_iter()
                            .filter(|i| (0..rank).all(|k| axes.contains(&k) || ax.is_empty() || i[k] == o[k]))
                            .map(|i| src.at(&i))
                            .collect();
                        reduce_ref(op, &xs)
                    })
                    .collect();
                let want_dims: Vec<usize> = if keep {
                    out_keep.clone()
                } else {
                    (0..rank).filter(|k| !axes.contains(k) && !ax.is_empty()).map(|k| shape[k]).collect()
                };
                assert_eq!(got.dims(), want_dims.as_slice(), "{op:?} {shape:?} axes {axes:?} keep {keep}");
                let out_dtype = match op {
                    ReduceOp::ArgMax | ReduceOp::ArgMin => DType::I64,
                    ReduceOp::Sum | ReduceOp::Prod if !dtype.is_float() => DType::I64,
                    _ => dtype,
                };
                assert_eq!(got.dtype(), out_dtype);
                // Sums of n rounded terms: tolerance grows with the count.
                let n = (shape.iter().product::<usize>().max(1)) as f64;
                let (a, r) = tol(dtype);
                let t = if one_axis { (0.0, 0.0) } else { (a * n, r * n.max(4.0)) };
                assert_close_tol(
                    &got.to_vec_f64()?,
                    &want,
                    t,
                    &format!("{op:?} {dtype:?} {kind:?} {shape:?} axes {axes:?}"),
                );
            }
        }
    }
    Ok(())
}

#[test]
fn reduction_edge_cases() -> Result<()> {
    let e = Tensor::zeros((3, 0), DType::F32, Device::Cpu)?;
    assert_eq!(e.sum([1])?.to_vec1::<f32>()?, vec![0.0; 3]);
    assert_eq!(e.prod([1])?.to_vec1::<f32>()?, vec![1.0; 3]);
    assert!(e.max([1]).is_err());
    assert!(e.argmax(1).is_err());
    let t = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?;
    assert!(matches!(t.sum([2]), Err(Error::AxisOutOfRange { .. })));
    assert!(t.reduce(ReduceOp::ArgMax, [0, 1], false).is_err());
    let nan = Tensor::from_vec(vec![1f32, f32::NAN, 3.0], 3, Device::Cpu)?;
    assert!(nan.max([0])?.to_scalar::<f32>()?.is_nan());
    assert_eq!(nan.argmax(0)?.to_scalar::<i64>()?, 1);
    let big = Tensor::ones(100_003, DType::F32, Device::Cpu)?;
    assert_eq!(big.sum_all()?.to_scalar::<f32>()?, 100_003.0);
    Ok(())
}

#[test]
fn softmax_and_log_softmax_match_reference() -> Result<()> {
    let mut rng = Rng::new(6);
    for dtype in FLOATS {
        for (shape, kind, vals, t) in cases(&mut rng, dtype, -5.0, 5.0, true) {
            let rank = shape.len();
            if rank == 0 {
                continue;
            }
            let axis = rng.below(rank);
            let src = Ref { shape: shape.clone(), data: vals };
            for log in [false, true] {
                let got = if log { t.log_softmax(axis as isize)? } else { t.softmax(axis as isize)? };
                let want: Vec<f64> = indices(&shape)
                    .iter()
                    .map(|i| {
                        let row: Vec<f64> = (0..shape[axis])
                            .map(|j| {
                                let mut k = i.clone();
                                k[axis] = j;
                                src.at(&k)
                            })
                            .collect();
                        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                        if log { src.at(i) - lse } else { (src.at(i) - lse).exp() }
                    })
                    .collect();
                let (a, r) = tol(dtype);
                assert_close_tol(
                    &got.to_vec_f64()?,
                    &want,
                    (a * 8.0, r * 8.0),
                    &format!("softmax log={log} {dtype:?} {kind:?} {shape:?} axis {axis}"),
                );
            }
        }
    }
    // Large logits stay finite.
    let t = Tensor::from_vec(vec![1000f32, 0.0, -1000.0], (1, 3), Device::Cpu)?;
    let s = t.softmax(-1)?.to_vec2::<f32>()?;
    assert_eq!(s[0], vec![1.0, 0.0, 0.0]);
    Ok(())
}

fn matmul_ref(a: &Ref, b: &Ref) -> Ref {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = broadcast_out(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let data = indices(&shape)
        .iter()
        .map(|idx| {
            let r = idx.len();
            (0..k)
                .map(|p| {
                    let mut ia = idx[..r - 2].to_vec();
                    ia.extend([idx[r - 2], p]);
                    let mut ib = idx[..r - 2].to_vec();
                    ib.extend([p, idx[r - 1]]);
                    a.at_broadcast(&ia) * b.at_broadcast(&ib)
                })
                .sum()
        })
        .collect();
    Ref { shape, data }
}

#[test]
fn matmul_batched_broadcast_transposed() -> Result<()> {
    let mut rng = Rng::new(7);
    for dtype in FLOATS {
        for trial in 0..24 {
            let (m, k, n) = (1 + rng.below(9), rng.below(9), 1 + rng.below(9));
            let batch_rank = trial % 4;
            let (ba, bb) = broadcast_shapes(&mut rng, batch_rank);
            let ba: Vec<usize> = ba.into_iter().map(|d| d.max(1)).collect();
            let bb: Vec<usize> = bb.into_iter().map(|d| d.max(1)).collect();
            let mut sa = ba.clone();
            sa.extend([m, k]);
            let mut sb = bb.clone();
            sb.extend([k, n]);
            let va = values(&mut rng, sa.iter().product(), dtype, -1.0, 1.0);
            let vb = values(&mut rng, sb.iter().product(), dtype, -1.0, 1.0);
            let kinds = [Kind::Contiguous, Kind::Transposed, Kind::Sliced];
            let ta = make(&va, &sa, dtype, kinds[trial % 3])?;
            let tb = make(&vb, &sb, dtype, kinds[(trial / 3) % 3])?;
            let got = ta.matmul(&tb)?;
            let want = matmul_ref(&Ref { shape: sa.clone(), data: va }, &Ref { shape: sb.clone(), data: vb });
            assert_eq!(got.dims(), want.shape.as_slice());
            let (a, r) = tol(dtype);
            let kk = (k.max(1)) as f64;
            assert_close_tol(
                &got.to_vec_f64()?,
                &want.data,
                (a * 4.0 * kk, r * 4.0 * kk),
                &format!("matmul {dtype:?} {sa:?} {sb:?}"),
            );
        }
    }
    // Large enough to take the packed, threaded path, with a transposed operand.
    let a = Tensor::randn(0.0, 1.0, (300, 257), DType::F64, Device::Cpu)?;
    let b = Tensor::randn(0.0, 1.0, (190, 257), DType::F64, Device::Cpu)?;
    let got = a.matmul(&b.t()?)?;
    let want = matmul_ref(
        &Ref { shape: vec![300, 257], data: a.to_vec_f64()? },
        &Ref { shape: vec![257, 190], data: b.t()?.contiguous()?.to_vec_f64()? },
    );
    assert_close_tol(&got.to_vec_f64()?, &want.data, (1e-10, 1e-10), "large matmul");
    // Vector forms.
    let v = Tensor::from_vec(vec![1f32, 2.0], 2, Device::Cpu)?;
    let m = Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (2, 2), Device::Cpu)?;
    assert_eq!(v.matmul(&m)?.to_vec1::<f32>()?, vec![7.0, 10.0]);
    assert_eq!(m.matmul(&v)?.to_vec1::<f32>()?, vec![5.0, 11.0]);
    assert_eq!(v.matmul(&v)?.to_scalar::<f32>()?, 5.0);
    Ok(())
}

#[test]
fn matmul_errors() -> Result<()> {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?;
    let b = Tensor::zeros((4, 2), DType::F32, Device::Cpu)?;
    assert!(matches!(a.matmul(&b), Err(Error::ShapeMismatch { .. })));
    let c = Tensor::zeros((3, 2), DType::F64, Device::Cpu)?;
    assert!(matches!(a.matmul(&c), Err(Error::DTypeMismatch { .. })));
    let i = Tensor::zeros((2, 2), DType::I64, Device::Cpu)?;
    assert!(matches!(i.matmul(&i), Err(Error::UnsupportedDType { .. })));
    let s = Tensor::zeros((), DType::F32, Device::Cpu)?;
    assert!(a.matmul(&s).is_err());
    let b1 = Tensor::zeros((2, 2, 3), DType::F32, Device::Cpu)?;
    let b2 = Tensor::zeros((3, 3, 1), DType::F32, Device::Cpu)?;
    assert!(matches!(b1.matmul(&b2), Err(Error::ShapeMismatch { .. })));
    Ok(())
}

#[test]
fn casts_between_all_dtypes() -> Result<()> {
    let mut rng = Rng::new(8);
    for from in DType::ALL {
        for to in DType::ALL {
            for (shape, kind, vals, t) in cases(&mut rng, from, 0.0, 100.0, true) {
                let got = t.to_dtype(to)?;
                assert_eq!(got.dtype(), to);
                let want: Vec<f64> = vals.iter().map(|&v| round_to(v, to)).collect();
                assert_eq!(got.to_vec_f64()?, want, "{from:?}->{to:?} {kind:?} {shape:?}");
            }
        }
    }
    // Large i64 survive a same-dtype copy exactly.
    let big = Tensor::from_vec(vec![i64::MAX, i64::MIN + 1, 3], 3, Device::Cpu)?;
    assert_eq!(big.slice(0, 0, 3, 2)?.contiguous()?.to_vec1::<i64>()?, vec![i64::MAX, 3]);
    Ok(())
}

#[test]
fn index_select_gather_scatter_index_add() -> Result<()> {
    let mut rng = Rng::new(9);
    for dtype in DType::ALL {
        for rank in 1..=5 {
            let shape: Vec<usize> = rng.shape(rank, false).into_iter().map(|d| d + 1).collect();
            let vals = values(&mut rng, shape.iter().product(), dtype, 0.0, 50.0);
            let t = make(&vals, &shape, dtype, Kind::Transposed)?;
            let src = Ref { shape: shape.clone(), data: vals };
            let axis = rng.below(rank);
            // index_select with repeats.
            let nids = 1 + rng.below(5);
            let ids: Vec<i64> = (0..nids).map(|_| rng.below(shape[axis]) as i64).collect();
            let it = Tensor::from_vec(ids.clone(), nids, Device::Cpu)?;
            let got = t.index_select(axis as isize, &it)?;
            let mut out = shape.clone();
            out[axis] = nids;
            let want: Vec<f64> = indices(&out)
                .iter()
                .map(|i| {
                    let mut j = i.clone();
                    j[axis] = ids[i[axis]] as usize;
                    src.at(&j)
                })
                .collect();
            assert_eq!(got.to_vec_f64()?, want, "index_select {dtype:?} {shape:?} axis {axis}");
            // gather: ids of a smaller-or-equal shape.
            let gshape: Vec<usize> = shape
                .iter()
                .enumerate()
                .map(|(k, &d)| if k == axis { 1 + rng.below(4) } else { 1 + rng.below(d) })
                .collect();
            let gids: Vec<i64> = (0..gshape.iter().product()).map(|_| rng.below(shape[axis]) as i64).collect();
            let gt = Tensor::from_vec(gids.clone(), gshape.clone(), Device::Cpu)?;
            let got = t.gather(axis as isize, &gt)?;
            let gref = Ref { shape: gshape.clone(), data: gids.iter().map(|&x| x as f64).collect() };
            let want: Vec<f64> = indices(&gshape)
                .iter()
                .map(|i| {
                    let mut j = i.clone();
                    j[axis] = gref.at(i) as usize;
                    src.at(&j)
                })
                .collect();
            assert_eq!(got.to_vec_f64()?, want, "gather {dtype:?} {shape:?} axis {axis}");
            // scatter_add of ones at the gathered positions: the adjoint.
            let ones = Tensor::ones(gshape.clone(), dtype, Device::Cpu)?;
            let got = t.scatter_add(axis as isize, &gt, &ones)?;
            let mut want = src.clone();
            for i in indices(&gshape) {
                let mut j = i.clone();
                j[axis] = gref.at(&i) as usize;
                let mut off = 0;
                for (k, &x) in j.iter().enumerate() {
                    off = off * shape[k] + x;
                }
                want.data[off] = round_to(want.data[off] + 1.0, dtype);
            }
            let (a, r) = tol(dtype);
            assert_close_tol(
                &got.to_vec_f64()?,
                &want.data,
                (a * 4.0, r * 4.0),
                &format!("scatter_add {dtype:?} {shape:?}"),
            );
            // index_add of the selected slices back: each repeated id adds once per use.
            let sel = t.index_select(axis as isize, &it)?;
            let got = t.index_add(axis as isize, &it, &sel)?;
            let mut want = src.clone();
            for i in indices(&out) {
                let mut j = i.clone();
                j[axis] = ids[i[axis]] as usize;
                let mut off = 0;
                for (k, &x) in j.iter().enumerate() {
                    off = off * shape[k] + x;
                }
                want.data[off] = round_to(want.data[off] + src.at(&j), dtype);
            }
            if dtype == DType::U8 {
                want.data.iter_mut().for_each(|v| *v = (*v as i64).rem_euclid(256) as f64);
            }
            assert_close_tol(
                &got.to_vec_f64()?,
                &want.data,
                (a * 8.0, r * 8.0),
                &format!("index_add {dtype:?} {shape:?}"),
            );
        }
    }
    Ok(())
}

#[test]
fn index_errors() -> Result<()> {
    let t = Tensor::zeros((3, 4), DType::F32, Device::Cpu)?;
    let bad = Tensor::from_vec(vec![0i64, 3], 2, Device::Cpu)?;
    assert!(matches!(t.index_select(0, &bad), Err(Error::IndexOutOfRange { index: 3, size: 3, .. })));
    let neg = Tensor::from_vec(vec![-1i64], 1, Device::Cpu)?;
    assert!(matches!(t.index_select(1, &neg), Err(Error::IndexOutOfRange { .. })));
    let f = Tensor::from_vec(vec![0f32], 1, Device::Cpu)?;
    assert!(matches!(t.index_select(0, &f), Err(Error::UnsupportedDType { .. })));
    let g = Tensor::from_vec(vec![0i64; 5], (5, 1), Device::Cpu)?;
    assert!(matches!(t.gather(1, &g), Err(Error::ShapeMismatch { .. })));
    let src = Tensor::zeros((2, 4), DType::F32, Device::Cpu)?;
    let ids = Tensor::from_vec(vec![0i64, 1, 2], 3, Device::Cpu)?;
    assert!(matches!(t.index_add(0, &ids, &src), Err(Error::ShapeMismatch { .. })));
    Ok(())
}

#[test]
fn random_streams_are_seeded_and_distributed() -> Result<()> {
    let a = Tensor::rand_seeded(42, 0, 0.0, 1.0, 10_000, DType::F64, Device::Cpu)?.to_vec1::<f64>()?;
    let b = Tensor::rand_seeded(42, 0, 0.0, 1.0, 10_000, DType::F64, Device::Cpu)?.to_vec1::<f64>()?;
    assert_eq!(a, b);
    // Offsets address the same stream: element 8 of offset 0 is element 0 of offset 2.
    let c = Tensor::rand_seeded(42, 2, 0.0, 1.0, 4, DType::F64, Device::Cpu)?.to_vec1::<f64>()?;
    assert_eq!(&a[8..12], c.as_slice());
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    assert!((mean - 0.5).abs() < 0.02 && a.iter().all(|&x| (0.0..1.0).contains(&x)));
    tensorforge::manual_seed(7);
    let n = Tensor::randn(1.0, 2.0, 20_000, DType::F32, Device::Cpu)?.to_vec_f64()?;
    let m = n.iter().sum::<f64>() / n.len() as f64;
    let v = n.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n.len() as f64;
    assert!((m - 1.0).abs() < 0.05 && (v.sqrt() - 2.0).abs() < 0.05, "mean {m} std {}", v.sqrt());
    tensorforge::manual_seed(7);
    let n2 = Tensor::randn(1.0, 2.0, 20_000, DType::F32, Device::Cpu)?.to_vec_f64()?;
    assert_eq!(n, n2);
    assert!(Tensor::rand(0.0, 1.0, 3, DType::I64, Device::Cpu).is_err());
    Ok(())
}

/// `where` over views large enough to split into tasks whose element ranges cross rows, with a
/// scalar on either side and a row-times-column broadcast, against a plain loop.
#[test]
fn where_with_scalars_and_broadcasts_over_many_rows() -> Result<()> {
    let (rows, cols) = (3, 70_001);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 - 500.0).collect();
    let t = Tensor::from_vec(x.clone(), (rows, cols), Device::Cpu)?;
    let mask = t.gt_scalar(0.0)?;
    let zero = Tensor::zeros((), DType::F32, Device::Cpu)?;
    let relu: Vec<f64> = x.iter().map(|&v| f64::from(v.max(0.0))).collect();
    assert_eq!(mask.where_cond(&t, &zero)?.to_vec_f64()?, relu);
    let neg: Vec<f64> = x.iter().map(|&v| if v > 0.0 { 0.0 } else { f64::from(v) }).collect();
    assert_eq!(mask.where_cond(&zero, &t)?.to_vec_f64()?, neg);
    // mask [5, 1] against values [1, 30000] and their transposed-broadcast partner [5, 30000].
    let col = Tensor::from_vec(vec![1u8, 0, 1, 1, 0], (5, 1), Device::Cpu)?;
    let row = Tensor::from_vec((0..30_000).map(|i| i as f32).collect::<Vec<_>>(), (1, 30_000), Device::Cpu)?;
    let other = Tensor::full(-1.0, (30_000, 5), DType::F32, Device::Cpu)?.t()?;
    let got = col.where_cond(&row, &other)?.to_vec_f64()?;
    for (i, g) in got.iter().enumerate() {
        let (r, c) = (i / 30_000, i % 30_000);
        assert_eq!(*g, if [1, 0, 1, 1, 0][r] == 1 { c as f64 } else { -1.0 }, "at {r}, {c}");
    }
    Ok(())
}

/// Concatenations large enough to split across the pool by segments: many pieces along the
/// first axis (an LSTM's per-step outputs) and a few along an inner axis, one of them a
/// strided view, against the elements placed by hand.
#[test]
fn large_concatenations_place_every_segment() -> Result<()> {
    let piece = |r: usize, c: usize, k: usize| {
        let v: Vec<f32> = (0..r * c).map(|i| (k * 100_000 + i) as f32).collect();
        Tensor::from_vec(v, (r, c), Device::Cpu)
    };
    let pieces: Vec<Tensor> = (0..96).map(|k| piece(16 + k % 3, 256, k)).collect::<Result<_>>()?;
    let got = Tensor::cat(&pieces.iter().collect::<Vec<_>>(), 0)?.to_vec2::<f32>()?;
    let want: Vec<Vec<f32>> = pieces.iter().map(|p| p.to_vec2::<f32>()).collect::<Result<Vec<_>>>()?.concat();
    assert_eq!(got, want);
    let (a, b) = (piece(2048, 40, 1)?, piece(30, 2048, 2)?.t()?);
    let got = Tensor::cat(&[&a, &b, &a], 1)?.to_vec2::<f32>()?;
    let (ra, rb) = (a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    for (i, row) in got.iter().enumerate() {
        assert_eq!(*row, [&ra[i][..], &rb[i][..], &ra[i][..]].concat(), "row {i}");
    }
    Ok(())
}
