//! Creation, zero-copy views, concatenation, data access, printing, errors, and the tape.

use tensorforge::{DType, Device, Error, Result, Tensor, no_grad};

fn t32(v: Vec<f32>, shape: impl Into<tensorforge::Shape>) -> Tensor {
    Tensor::from_vec(v, shape, Device::Cpu).unwrap()
}

#[test]
fn creation() -> Result<()> {
    assert_eq!(Tensor::zeros((2, 3), DType::F16, Device::Cpu)?.to_vec_f64()?, vec![0.0; 6]);
    assert_eq!(Tensor::ones(4, DType::U8, Device::Cpu)?.to_vec1::<u8>()?, vec![1; 4]);
    assert_eq!(Tensor::full(2.5, (), DType::BF16, Device::Cpu)?.item()?, 2.5);
    assert_eq!(Tensor::arange(0.0, 5.0, 2.0, DType::I64, Device::Cpu)?.to_vec1::<i64>()?, vec![0, 2, 4]);
    assert_eq!(Tensor::arange(1.0, 0.0, -0.25, DType::F32, Device::Cpu)?.to_vec1::<f32>()?, vec![1.0, 0.75, 0.5, 0.25]);
    assert!(Tensor::arange(0.0, 1.0, 0.0, DType::F32, Device::Cpu).is_err());
    assert_eq!(Tensor::eye(3, DType::F64, Device::Cpu)?.sum_all()?.to_scalar::<f64>()?, 3.0);
    assert_eq!(Tensor::scalar(7i64, Device::Cpu)?.rank(), 0);
    assert!(matches!(Tensor::from_vec(vec![1f32, 2.0], (3,), Device::Cpu), Err(Error::BadShape { .. })));
    Ok(())
}

#[test]
fn views_share_storage() -> Result<()> {
    let a = t32((0..24).map(|x| x as f32).collect(), (2, 3, 4));
    for v in [
        a.transpose(0, 2)?,
        a.permute(&[1, 2, 0])?,
        a.narrow(1, 1, 2)?,
        a.slice(2, 0, 4, 2)?,
        a.reshape((6, 4))?,
        a.unsqueeze(1)?,
        a.narrow(0, 0, 1)?.squeeze(0)?,
        a.narrow(0, 0, 1)?.broadcast_as((5, 3, 4))?,
        a.flatten(0, 1)?,
    ] {
        assert!(v.same_storage(&a), "{:?}", v.layout());
    }
    // A transposed view cannot be flattened without a copy.
    let t = a.transpose(1, 2)?;
    let f = t.flatten_all()?;
    assert!(!f.same_storage(&a));
    let want: Vec<f32> =
        (0..2).flat_map(|i| (0..4).flat_map(move |k| (0..3).map(move |j| (i * 12 + j * 4 + k) as f32))).collect();
    assert_eq!(f.to_vec1::<f32>()?, want);
    Ok(())
}

#[test]
fn view_values() -> Result<()> {
    let a = t32((0..12).map(|x| x as f32).collect(), (3, 4));
    assert_eq!(a.t()?.to_vec2::<f32>()?[1], vec![1.0, 5.0, 9.0]);
    assert_eq!(a.slice(1, 1, 4, 2)?.to_vec2::<f32>()?, vec![vec![1.0, 3.0], vec![5.0, 7.0], vec![9.0, 11.0]]);
    assert_eq!(a.narrow(0, 2, 1)?.to_vec2::<f32>()?, vec![vec![8.0, 9.0, 10.0, 11.0]]);
    let b = t32(vec![1.0, 2.0], (2, 1)).broadcast_as((2, 3))?;
    assert_eq!(b.to_vec2::<f32>()?, vec![vec![1.0; 3], vec![2.0; 3]]);
    assert_eq!(a.narrow(1, 0, 0)?.dims(), &[3, 0]);
    Ok(())
}

#[test]
fn view_errors() -> Result<()> {
    let a = Tensor::zeros((2, 3), DType::F32, Device::Cpu)?;
    assert!(matches!(a.reshape(7), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(a.transpose(0, 2), Err(Error::AxisOutOfRange { .. })));
    assert!(matches!(a.permute(&[0, 0]), Err(Error::BadShape { .. })));
    assert!(matches!(a.squeeze(0), Err(Error::BadShape { .. })));
    assert!(matches!(a.broadcast_as((3, 3)), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(a.narrow(1, 2, 2), Err(Error::BadShape { .. })));
    assert!(matches!(a.slice(0, 0, 2, 0), Err(Error::BadShape { .. })));
    assert!(a.reshape(vec![1usize; 9]).is_err());
    let b = Tensor::zeros((2, 4), DType::F32, Device::Cpu)?;
    assert!(matches!(Tensor::cat(&[&a, &b], 0), Err(Error::ShapeMismatch { .. })));
    let c = Tensor::zeros((2, 3), DType::F64, Device::Cpu)?;
    assert!(matches!(Tensor::cat(&[&a, &c], 0), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(a.add(&c), Err(Error::DTypeMismatch { .. })));
    assert!(matches!(a.add(&b), Err(Error::ShapeMismatch { .. })));
    assert!(a.to_vec::<f64>().is_err());
    assert!(a.to_scalar::<f32>().is_err());
    let e = a.add(&b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[2, 4]"), "{e}");
    Ok(())
}

#[test]
fn cat_and_stack() -> Result<()> {
    let a = t32(vec![1.0, 2.0, 3.0, 4.0], (2, 2));
    let b = t32(vec![5.0, 6.0], (2, 1));
    let c = Tensor::cat(&[&a, &b.t()?.t()?, &a.t()?], 1)?;
    assert_eq!(c.to_vec2::<f32>()?, vec![vec![1.0, 2.0, 5.0, 1.0, 3.0], vec![3.0, 4.0, 6.0, 2.0, 4.0]]);
    let s = Tensor::stack(&[&a, &a], 0)?;
    assert_eq!(s.dims(), &[2, 2, 2]);
    let s = Tensor::stack(&[&a, &a.affine(10.0, 0.0)?], -1)?;
    assert_eq!(s.dims(), &[2, 2, 2]);
    assert_eq!(s.to_vec_f64()?, vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
    Ok(())
}

#[test]
fn printing_like_numpy() -> Result<()> {
    let a = t32(vec![1.0, 2.5, -3.0, 4.0], (2, 2));
    assert_eq!(format!("{a}"), "[[ 1.   2.5]\n [-3.   4. ]]");
    let i = Tensor::from_vec(vec![1i64, 20, 300], 3, Device::Cpu)?;
    assert_eq!(format!("{i}"), "[  1  20 300]");
    assert!(format!("{i:?}").contains("dtype=i64"));
    let big = Tensor::arange(0.0, 2000.0, 1.0, DType::F32, Device::Cpu)?;
    let s = format!("{big}");
    assert!(s.contains("...") && s.starts_with("[   0.    1.    2. ...") && s.len() < 80, "{s}");
    assert_eq!(format!("{}", Tensor::scalar(0.5f64, Device::Cpu)?), "0.5");
    Ok(())
}

#[test]
fn autograd_basics() -> Result<()> {
    let x = t32(vec![1.0, 2.0, 3.0], 3).requires_grad();
    let w = t32(vec![0.5, -1.0, 2.0], 3).requires_grad();
    // A shared subgraph: y = (x*w) used twice.
    let y = x.mul(&w)?;
    let loss = y.add(&y.sqr()?)?.sum_all()?;
    loss.backward()?;
    // d/dx = w (1 + 2xw)
    let gx = x.grad().unwrap().to_vec1::<f32>()?;
    assert_eq!(gx, vec![0.5 * (1.0 + 1.0), -(1.0 - 4.0), 2.0 * (1.0 + 12.0)]);
    // Gradients accumulate across backward calls until zeroed.
    let loss2 = x.sum_all()?;
    loss2.backward()?;
    assert_eq!(x.grad().unwrap().to_vec1::<f32>()?, vec![2.0, 4.0, 27.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
    // The graph is freed after backward.
    assert!(matches!(loss.backward(), Err(Error::Autograd(_))));
    // no_grad and detach record nothing.
    let z = no_grad(|| x.exp())?;
    assert!(!z.tracks_grad());
    assert!(!x.detach().tracks_grad());
    assert!(matches!(t32(vec![1.0], 1).backward(), Err(Error::Autograd(_))));
    assert!(matches!(x.exp()?.backward(), Err(Error::Autograd(_))));
    Ok(())
}

#[test]
fn broadcast_gradients_reduce_to_input_shape() -> Result<()> {
    let a = Tensor::ones((2, 3), DType::F64, Device::Cpu)?.requires_grad();
    let b = Tensor::from_vec(vec![1.0, 2.0, 3.0], 3, Device::Cpu)?.requires_grad();
    a.mul(&b)?.sum_all()?.backward()?;
    assert_eq!(b.grad().unwrap().to_vec1::<f64>()?, vec![2.0, 2.0, 2.0]);
    assert_eq!(a.grad().unwrap().to_vec2::<f64>()?, vec![vec![1.0, 2.0, 3.0]; 2]);
    Ok(())
}
