//! PyTorch habits: operators, `x.i(...)` indexing, one-or-several-axes reductions,
//! `arange_end`, `to_scalar::<T>`, and settable gradients.

use tensorforge::ops::s;
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::{DType, Device, Error, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape.to_vec(), Device::Cpu).unwrap()
}

#[test]
fn operators_broadcast_record_gradients_and_report_errors() {
    let a = t(&[1., 2., 3., 4.], &[2, 2]).requires_grad();
    let b = t(&[10., 20.], &[2]).requires_grad();
    let y = ((&a * &b).unwrap() + 1.0).unwrap();
    assert_eq!(y.to_vec2::<f64>().unwrap(), vec![vec![11., 41.], vec![31., 81.]]);
    let z = (((2.0 - &y).unwrap() / &b).unwrap() - &a).unwrap();
    (-z).unwrap().sum_all().unwrap().backward().unwrap();
    // −z = −((2 − (a·b + 1))/b − a) = 2a − 1/b, summed over 2 rows: ∂a = 2, ∂b_j = 2/b_j².
    assert_eq!(a.grad().unwrap().to_vec2::<f64>().unwrap(), vec![vec![2., 2.], vec![2., 2.]]);
    let got_b = b.grad().unwrap().to_vec1::<f64>().unwrap();
    for (g, bj) in got_b.iter().zip([10.0f64, 20.0]) {
        assert!((g - 2.0 / (bj * bj)).abs() < 1e-15, "{got_b:?}");
    }
    let f32s = Tensor::ones(2, DType::F32, Device::Cpu).unwrap();
    assert!(matches!(&b + &f32s, Err(Error::DTypeMismatch { .. })));
    assert!((&t(&[1., 2., 3.], &[3]) + &b).is_err(), "shapes that do not broadcast");
}

#[test]
fn division_by_a_scalar_is_a_division() {
    let x = t(&[1., 2., 10., 1e-300], &[4]);
    let by3 = (&x / 3.0).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(by3, vec![1. / 3., 2. / 3., 10. / 3., 1e-300 / 3.]);
    let x32 = x.to_dtype(DType::F32).unwrap();
    let got = (&x32 / 3.0).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, vec![1f32 / 3., 2f32 / 3., 10f32 / 3., 0.0]);
    assert_eq!((1.0 / &t(&[4., 0.5], &[2])).unwrap().to_vec1::<f64>().unwrap(), vec![0.25, 2.]);
    // Integers divide truly (into f32, as PyTorch); f16 divides in f32, so a divisor its range
    // cannot hold still divides.
    let ints = Tensor::from_vec(vec![1i64, 5], 2, Device::Cpu).unwrap();
    let q = (&ints / 2.5).unwrap();
    assert_eq!((q.dtype(), q.to_vec1::<f32>().unwrap()), (DType::F32, vec![0.4, 2.0]));
    let h = x.to_dtype(DType::F16).unwrap();
    let small = (&h / 1e5).unwrap();
    assert_eq!(small.dtype(), DType::F16);
    assert!((small.to_vec_f64().unwrap()[2] - 1e-4).abs() < 1e-7, "{:?}", small.to_vec_f64());
}

#[test]
fn indexing_views_and_gradients() {
    let x = t(&(0..24).map(f64::from).collect::<Vec<_>>(), &[2, 3, 4]);
    assert_eq!(x.i(1).unwrap().dims(), &[3, 4]);
    assert_eq!(x.i((1, 2)).unwrap().to_vec1::<f64>().unwrap(), vec![20., 21., 22., 23.]);
    assert_eq!(x.i((.., 0, 1)).unwrap().to_vec1::<f64>().unwrap(), vec![1., 13.]);
    assert_eq!(x.i((-1, -1, -1)).unwrap().to_scalar::<f64>().unwrap(), 23.);
    assert_eq!(x.i((0, 1..=2, s(1.., 2))).unwrap().to_vec2::<f64>().unwrap(), vec![vec![5., 7.], vec![9., 11.]]);
    assert_eq!(x.i((.., ..2)).unwrap().dims(), &[2, 2, 4]);
    assert_eq!(x.i((.., .., s(.., 3))).unwrap().to_vec_f64().unwrap().len(), 2 * 3 * 2);
    for bad in [x.i(2), x.i((0, 3)), x.i((0, 0, -5)), x.i((.., 1..4)), x.i((0, 0, 0, 0)), x.i((0, s(.., 0)))] {
        assert!(bad.is_err());
    }
    let v = x.requires_grad();
    v.i((1, s(0..3, 2), 3)).unwrap().sum_all().unwrap().backward().unwrap();
    let g = v.grad().unwrap().to_vec_f64().unwrap();
    let ones: Vec<usize> = g.iter().enumerate().filter(|&(_, &v)| v == 1.0).map(|(i, _)| i).collect();
    assert_eq!(ones, vec![12 + 3, 12 + 8 + 3]);
    assert_eq!(g.iter().sum::<f64>(), 2.0);
}

#[test]
fn reductions_take_one_axis_or_several() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[1, 2, 3]);
    assert_eq!(x.sum(2).unwrap().to_vec2::<f64>().unwrap(), vec![vec![6., 15.]]);
    assert_eq!(x.sum(-1).unwrap().dims(), &[1, 2]);
    assert_eq!(x.sum([0, 2]).unwrap().to_vec1::<f64>().unwrap(), vec![6., 15.]);
    assert_eq!(x.sum(vec![-3, -1]).unwrap().to_vec1::<f64>().unwrap(), vec![6., 15.]);
    assert_eq!(x.mean(1usize).unwrap().dims(), &[1, 3]);
    assert_eq!(x.amax(2, true).unwrap().dims(), &[1, 2, 1]);
    assert_eq!(x.logsumexp(0, false).unwrap().dims(), &[2, 3]);
    assert!(matches!(x.sum(3), Err(Error::AxisOutOfRange { .. })));
    assert!(x.sum(usize::MAX).is_err());
}

#[test]
fn arange_end_and_scalars_of_any_dtype() {
    assert_eq!(Tensor::arange_end(5, Device::Cpu).unwrap().to_vec1::<i64>().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(Tensor::arange_end(0, Device::Cpu).unwrap().dims(), &[0]);
    let big = Tensor::from_vec(vec![(1i64 << 53) + 1], (), Device::Cpu).unwrap();
    assert_eq!(big.to_scalar::<i64>().unwrap(), (1i64 << 53) + 1, "exact, unlike a trip through f64");
    assert!(big.to_scalar::<f32>().is_err(), "a dtype other than the tensor's is an Err");
}

#[test]
fn gradients_can_be_set_scaled_and_cleared() {
    let w = t(&[1., -2.], &[2]).requires_grad();
    let mut opt = Sgd::new(vec![w.clone()], SgdConfig { lr: 1.0, ..Default::default() }).unwrap();
    w.set_grad(Some(t(&[0.5, 0.25], &[2]).to_dtype(DType::F32).unwrap())).unwrap();
    assert_eq!(w.grad().unwrap().dtype(), DType::F64, "converted to the variable's dtype");
    opt.step().unwrap();
    assert_eq!(w.to_vec1::<f64>().unwrap(), vec![0.5, -2.25]);
    w.set_grad(None).unwrap();
    assert!(w.grad().is_none());
    assert!(matches!(w.set_grad(Some(t(&[1.], &[1]))), Err(Error::ShapeMismatch { .. })));
    let not_a_variable = (&w * 2.0).unwrap();
    assert!(not_a_variable.set_grad(Some(t(&[1., 1.], &[2]))).is_err());
    // Injected then accumulated: backward adds to what was set.
    w.set_grad(Some(t(&[10., 10.], &[2]))).unwrap();
    w.sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec1::<f64>().unwrap(), vec![11., 11.]);
}
