//! Convolution and pooling against direct f64 loops, for every option that changes the path.

mod common;

use common::*;
use tensorforge::ops::Conv2dOptions;
use tensorforge::{DType, Device, Result, Tensor};

struct Img {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl Img {
    fn at(&self, n: usize, c: usize, y: isize, x: isize) -> Option<f64> {
        (y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w)
            .then(|| self.v[((n * self.c + c) * self.h + y as usize) * self.w + x as usize])
    }
}

fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape.to_vec(), Device::Cpu).unwrap()
}

fn conv_ref(x: &Img, wt: &[f64], wshape: [usize; 4], bias: Option<&[f64]>, o: Conv2dOptions) -> (Vec<usize>, Vec<f64>) {
    let [cout, cin_g, kh, kw] = wshape;
    let oh = (x.h + 2 * o.padding.0 - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1;
    let ow = (x.w + 2 * o.padding.1 - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1;
    let cout_g = cout / o.groups;
    let mut out = vec![];
    for n in 0..x.n {
        for co in 0..cout {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias.map_or(0.0, |b| b[co]);
                    for ci in 0..cin_g {
                        for i in 0..kh {
                            for j in 0..kw {
                                let y = (oy * o.stride.0 + i * o.dilation.0) as isize - o.padding.0 as isize;
                                let xx = (ox * o.stride.1 + j * o.dilation.1) as isize - o.padding.1 as isize;
                                if let Some(v) = x.at(n, g * cin_g + ci, y, xx) {
                                    s += v * wt[((co * cin_g + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    (vec![x.n, cout, oh, ow], out)
}

#[test]
fn conv2d_matches_direct_loops() -> Result<()> {
    let mut rng = Rng::new(11);
    let configs = [
        ((1, 1), (0, 0), (1, 1), 1, true),
        ((2, 2), (1, 1), (1, 1), 1, false),
        ((1, 2), (2, 0), (2, 1), 1, true),
        ((1, 1), (1, 1), (1, 1), 2, true),
        ((3, 2), (1, 2), (1, 2), 4, false),
        ((1, 1), (1, 2), (2, 3), 1, true),
    ];
    // The small size fits one register panel; the large one spans several panels and more
    // than one depth block of the packed product (K = 48·9 = 432 at one group).
    // The wide one has output rows longer than a register panel (the row-copy fast path).
    // The last has rows of exactly 32 outputs at unit stride in the padded configurations,
    // where the packing reads the padding as zeros instead of copying the image padded.
    let sizes = [(2, 4, 7, 6, 8, 3, 2), (3, 48, 19, 23, 12, 3, 3), (2, 4, 5, 75, 4, 3, 3), (2, 8, 6, 32, 12, 3, 3)];
    for ((stride, padding, dilation, groups, with_bias), (n, cin, h, w, cout, kh, kw)) in
        configs.into_iter().flat_map(|c| sizes.map(|s| (c, s)))
    {
        let x = Img { n, c: cin, h, w, v: values(&mut rng, n * cin * h * w, DType::F64, -1.0, 1.0) };
        let ws = [cout, cin / groups, kh, kw];
        let wv = values(&mut rng, ws.iter().product(), DType::F64, -1.0, 1.0);
        let bv = values(&mut rng, cout, DType::F64, -1.0, 1.0);
        let opt = Conv2dOptions { stride, padding, dilation, groups };
        let (shape, want) = conv_ref(&x, &wv, ws, with_bias.then_some(&bv[..]), opt);
        // A strided view of the same image, to cover the non-contiguous input path too.
        let xt = tensor(&x.v, &[n, cin, h, w]).transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
        let bt = tensor(&bv, &[cout]);
        for dtype in [DType::F64, DType::F32] {
            let got = xt.to_dtype(dtype)?.conv2d(
                &tensor(&wv, &ws).to_dtype(dtype)?,
                with_bias.then_some(&bt.to_dtype(dtype)?),
                opt,
            )?;
            assert_eq!(got.dims(), shape.as_slice());
            assert_close_tol(&got.to_vec_f64()?, &want, (1e-5, 1e-5), &format!("{opt:?} {dtype:?}"));
        }
    }
    Ok(())
}

#[test]
fn conv1d_is_conv2d_over_one_row() -> Result<()> {
    let x = Tensor::randn(0.0, 1.0, (2, 3, 9), DType::F64, Device::Cpu)?;
    let w = Tensor::randn(0.0, 1.0, (4, 3, 3), DType::F64, Device::Cpu)?;
    let y = x.conv1d_with(&w, None, tensorforge::ops::Conv1dOptions { stride: 2, padding: 1, ..Default::default() })?;
    let y2 = x.unsqueeze(2)?.conv2d(
        &w.unsqueeze(2)?,
        None,
        Conv2dOptions { stride: (1, 2), padding: (0, 1), ..Default::default() },
    )?;
    assert_eq!(y.dims(), &[2, 4, 5]);
    assert_eq!(y.to_vec_f64()?, y2.squeeze(2)?.to_vec_f64()?);
    Ok(())
}

#[test]
fn conv_transpose2d_is_the_adjoint_of_conv2d() -> Result<()> {
    // <conv(x), y> == <x, conv_transpose(y)> for the same weight and options.
    for (stride, padding, dilation, groups) in
        [((1, 1), (0, 0), (1, 1), 1), ((2, 2), (1, 1), (1, 1), 1), ((2, 1), (1, 0), (1, 2), 2)]
    {
        let opt = Conv2dOptions { stride, padding, dilation, groups };
        let x = Tensor::randn(0.0, 1.0, (2, 4, 7, 7), DType::F64, Device::Cpu)?;
        let w = Tensor::randn(0.0, 1.0, (6, 4 / groups, 3, 3), DType::F64, Device::Cpu)?;
        let cx = x.conv2d(&w, None, opt)?;
        let y = Tensor::randn(0.0, 1.0, cx.dims().to_vec(), DType::F64, Device::Cpu)?;
        // conv_transpose's weight is [Cin_t = 6, Cout_t/g = 4/g, kh, kw]: the same tensor.
        let out_pad =
            ((7 + 2 * padding.0 - dilation.0 * 2 - 1) % stride.0, (7 + 2 * padding.1 - dilation.1 * 2 - 1) % stride.1);
        let ty = y.conv_transpose2d(&w, None, opt, out_pad)?;
        assert_eq!(ty.dims(), x.dims());
        let lhs = cx.mul(&y)?.sum_all()?.item()?;
        let rhs = x.mul(&ty)?.sum_all()?.item()?;
        assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{opt:?}: {lhs} vs {rhs}");
    }
    Ok(())
}

#[test]
fn pooling_matches_direct_loops() -> Result<()> {
    let mut rng = Rng::new(12);
    let (n, c, h, w) = (2, 3, 7, 8);
    let x = Img { n, c, h, w, v: values(&mut rng, n * c * h * w, DType::F64, -1.0, 1.0) };
    let xt = tensor(&x.v, &[n, c, h, w]);
    for (k, s, p) in
        [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0)), ((2, 3), (3, 2), (0, 1))]
    {
        let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
        let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
        let (mut mx, mut avg, mut avg_nopad) = (vec![], vec![], vec![]);
        for nn in 0..n {
            for cc in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let cells: Vec<f64> = (0..k.0)
                            .flat_map(|i| (0..k.1).map(move |j| (i, j)))
                            .filter_map(|(i, j)| {
                                x.at(
                                    nn,
                                    cc,
                                    (oy * s.0 + i) as isize - p.0 as isize,
                                    (ox * s.1 + j) as isize - p.1 as isize,
                                )
                            })
                            .collect();
                        mx.push(cells.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                        avg.push(cells.iter().sum::<f64>() / (k.0 * k.1) as f64);
                        avg_nopad.push(cells.iter().sum::<f64>() / cells.len() as f64);
                    }
                }
            }
        }
        let what = format!("k {k:?} s {s:?} p {p:?}");
        assert_close_tol(&xt.max_pool2d(k, s, p)?.to_vec_f64()?, &mx, (0.0, 0.0), &what);
        assert_close_tol(&xt.avg_pool2d(k, s, p, true)?.to_vec_f64()?, &avg, (1e-12, 1e-12), &what);
        assert_close_tol(&xt.avg_pool2d(k, s, p, false)?.to_vec_f64()?, &avg_nopad, (1e-12, 1e-12), &what);
    }
    // Adaptive: divisible and non-divisible sizes.
    let a = xt.adaptive_avg_pool2d((7, 4))?;
    assert_close_tol(
        &a.to_vec_f64()?,
        &xt.avg_pool2d((1, 2), (1, 2), (0, 0), true)?.to_vec_f64()?,
        (1e-12, 1e-12),
        "adaptive",
    );
    let a = xt.adaptive_avg_pool2d((3, 3))?;
    assert_eq!(a.dims(), &[n, c, 3, 3]);
    // Row window 0 is rows 0..3 (⌈7/3⌉), column window 2 is columns 5..8.
    let want: f64 =
        (0..3).flat_map(|y| (5..8).map(move |xx| (y, xx))).map(|(y, xx)| x.at(0, 0, y, xx).unwrap()).sum::<f64>() / 9.0;
    assert!((a.to_vec_f64()?[2] - want).abs() < 1e-12);
    // Every cell, for outputs smaller than, larger than and prime to the 7 × 8 input.
    let (h, w) = (xt.dims()[2], xt.dims()[3]);
    for (oh, ow) in [(3, 3), (5, 3), (2, 5), (9, 11), (1, 1), (7, 3)] {
        let got = xt.adaptive_avg_pool2d((oh, ow))?.to_vec_f64()?;
        let mut want = Vec::new();
        for (b, ch) in (0..n).flat_map(|b| (0..c).map(move |ch| (b, ch))) {
            for i in 0..oh {
                for j in 0..ow {
                    let (y0, y1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
                    let (x0, x1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                    let cells: Vec<f64> = (y0..y1)
                        .flat_map(|y| (x0..x1).map(move |xx| (y, xx)))
                        .map(|(y, xx)| x.at(b, ch, y as isize, xx as isize).unwrap())
                        .collect();
                    want.push(cells.iter().sum::<f64>() / cells.len() as f64);
                }
            }
        }
        assert_close_tol(&got, &want, (1e-12, 1e-12), &format!("adaptive ({oh}, {ow})"));
    }
    assert_eq!(xt.global_avg_pool2d()?.dims(), &[n, c]);
    Ok(())
}

#[test]
fn conv_errors() -> Result<()> {
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, Device::Cpu)?;
    let w = Tensor::zeros((2, 3, 3, 3), DType::F32, Device::Cpu)?;
    assert!(x.conv2d(&w, None, Conv2dOptions::default()).is_err());
    let w = Tensor::zeros((2, 4, 7, 7), DType::F32, Device::Cpu)?;
    assert!(x.conv2d(&w, None, Conv2dOptions::default()).is_err());
    let w = Tensor::zeros((3, 2, 3, 3), DType::F32, Device::Cpu)?;
    assert!(x.conv2d(&w, None, Conv2dOptions { groups: 2, ..Default::default() }).is_err());
    assert!(x.max_pool2d((2, 2), (0, 0), (0, 0)).is_err());
    assert!(x.max_pool2d((2, 2), (2, 2), (2, 2)).is_err());
    assert!(Tensor::zeros((4, 5), DType::F32, Device::Cpu)?.max_pool2d((2, 2), (2, 2), (0, 0)).is_err());
    Ok(())
}

/// An empty batch convolves to an empty output on every path (the unpacked f32 tile's among
/// them: 32-wide output rows at unit stride).
#[test]
fn empty_batches_convolve_to_empty_outputs() -> Result<()> {
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let x = Tensor::zeros((0, 2, 3, 32), dtype, Device::Cpu)?;
        let w = Tensor::zeros((4, 2, 3, 3), dtype, Device::Cpu)?;
        let y = x.conv2d(&w, None, Conv2dOptions { padding: (1, 1), ..Default::default() })?;
        assert_eq!(y.dims(), &[0, 4, 3, 32], "{dtype:?}");
    }
    Ok(())
}

#[test]
fn pooling_backward_routes_gradients() -> Result<()> {
    // Overlapping max windows (stride < kernel): a pixel that wins two windows gets both.
    let x = Tensor::from_vec(vec![1.0f64, 5.0, 2.0, 0.0, 3.0, 1.0, 4.0, 2.0, 0.5], (1, 1, 3, 3), Device::Cpu)?
        .requires_grad();
    x.max_pool2d((2, 2), (1, 1), (0, 0))?.sum_all()?.backward()?;
    assert_eq!(x.grad().unwrap().to_vec_f64()?, vec![0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    let y = Tensor::ones((1, 1, 4, 4), DType::F64, Device::Cpu)?.requires_grad();
    y.avg_pool2d((3, 3), (1, 1), (0, 0), true)?.sum_all()?.backward()?;
    let g = y.grad().unwrap().to_vec_f64()?;
    assert_eq!(g[0], 1.0 / 9.0);
    assert!((g[5] - 4.0 / 9.0).abs() < 1e-15);
    Ok(())
}

#[test]
fn batch_norm_tracks_running_statistics_and_eval_uses_them() -> Result<()> {
    use tensorforge::nn::{BatchNorm, LayerNorm, Module};
    let x = Tensor::from_vec((0..16).map(|v| v as f32).collect(), (2, 2, 2, 2), Device::Cpu)?;
    let mut bn = BatchNorm::new_2d(2, Device::Cpu)?;
    let y = bn.forward(&x)?;
    // Train mode: each channel is normalized to mean 0, (biased) variance 1.
    let m = y.mean([0, 2, 3])?.to_vec1::<f32>()?;
    assert!(m.iter().all(|v| v.abs() < 1e-5), "{m:?}");
    // Channel 0 holds 0,1,2,3,8,9,10,11: mean 5.5, unbiased variance 138/7 ≈ 19.71.
    let (rm, rv) = bn.running_stats();
    assert!((rm.to_vec1::<f32>()?[0] - 0.55).abs() < 1e-5);
    assert!((rv.to_vec1::<f32>()?[0] - (0.9 + 0.1 * 138.0 / 7.0)).abs() < 1e-4);
    bn.set_training(false);
    let e = bn.forward(&x)?.to_vec_f64()?;
    let want = (0.0 - 0.55) / (0.9f64 + 0.1 * 138.0 / 7.0 + 1e-5).sqrt();
    assert!((e[0] - want).abs() < 1e-4, "{} vs {want}", e[0]);
    assert!(bn.forward(&Tensor::zeros((2, 3, 2, 2), DType::F32, Device::Cpu)?).is_err());
    let ln = LayerNorm::new(&[4], Device::Cpu)?;
    let z = ln.forward(&Tensor::from_vec(vec![1f32, 2.0, 3.0, 4.0], (1, 4), Device::Cpu)?)?.to_vec2::<f32>()?;
    assert!((z[0][0] + 1.3416).abs() < 1e-3 && (z[0][3] - 1.3416).abs() < 1e-3);
    Ok(())
}

#[test]
fn a_small_cnn_learns_the_digits() -> Result<()> {
    use tensorforge::nn::{Conv2d, CrossEntropyLoss, Flatten, Linear, Loss, MaxPool2d, Module, ReLU, Sequential};
    use tensorforge::optim::{Adam, AdamConfig, Optimizer};
    tensorforge::manual_seed(3);
    let (train, test) = tensorforge::data::digits::load().split(0.2, 3);
    let same = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let model = Sequential::new()
        .add(Conv2d::new(1, 8, (3, 3), same, Device::Cpu)?)
        .add(ReLU)
        .add(MaxPool2d::new((2, 2)))
        .add(Flatten)
        .add(Linear::new(8 * 4 * 4, 10, Device::Cpu)?);
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-2, ..Default::default() })?;
    let image = |d: &tensorforge::data::Dataset, idx: &[usize]| -> Result<(Tensor, Tensor)> {
        let (x, y) = d.gather(idx);
        Ok((Tensor::from_vec(x, (idx.len(), 1, 8, 8), Device::Cpu)?, Tensor::from_vec(y, idx.len(), Device::Cpu)?))
    };
    let mut batches = tensorforge::data::BatchIter::new(train.len(), 64, true, 3);
    for _ in 0..4 {
        for idx in &mut batches {
            let (x, y) = image(&train, &idx)?;
            let loss = CrossEntropyLoss::new().loss(&model.forward(&x)?, &y)?;
            opt.zero_grad();
            loss.backward()?;
            opt.step()?;
        }
        batches.next_epoch();
    }
    let all: Vec<usize> = (0..test.len()).collect();
    let (x, y) = image(&test, &all)?;
    let pred = model.forward(&x)?.argmax(-1)?.to_vec1::<i64>()?;
    let acc = pred.iter().zip(y.to_vec1::<i64>()?).filter(|(p, t)| **p == *t).count() as f64 / test.len() as f64;
    assert!(acc >= 0.9, "test accuracy {acc}");
    Ok(())
}

/// Max pooling follows PyTorch's rules: a tie sends the whole gradient to the window's first
/// maximum (ReLU's zeros make ties common), a NaN is the maximum (the last NaN, as PyTorch's
/// `val > max || isnan(val)` scan), and a window of -inf picks its first position.
#[test]
fn max_pool_ties_nan_and_infinities_as_pytorch() -> Result<()> {
    let x = Tensor::zeros((1, 1, 2, 4), DType::F64, Device::Cpu)?.requires_grad();
    x.max_pool2d((2, 2), (2, 2), (0, 0))?.sum_all()?.backward()?;
    assert_eq!(x.grad().unwrap().to_vec_f64()?, vec![1., 0., 1., 0., 0., 0., 0., 0.]);
    let x = Tensor::from_vec(vec![1f32, f32::NAN, f32::NAN, 0.], (1, 1, 2, 2), Device::Cpu)?;
    let (v, i) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0), false)?;
    assert!(v.to_vec_f64()?[0].is_nan());
    assert_eq!(i.to_vec::<i64>()?, vec![2]);
    let x = Tensor::full(f64::NEG_INFINITY, (1, 1, 2, 2), DType::F32, Device::Cpu)?;
    let (v, i) = x.max_pool2d_with_indices((2, 2), (1, 1), (1, 1), false)?;
    assert_eq!(v.to_vec_f64()?, vec![f64::NEG_INFINITY; 9]);
    assert_eq!(i.to_vec::<i64>()?, vec![0, 0, 1, 0, 0, 1, 2, 2, 3]);
    Ok(())
}

/// The weight gradient is linear in the batch: a batch of 8 gives the sum of its two halves'
/// gradients. (Composed from columns, as on CUDA, the batch of 8 (1.2 M column elements) takes
/// one product per image and each half (0.6 M) one product over its images.)
#[test]
fn conv_weight_gradient_is_the_same_on_both_paths() -> Result<()> {
    let x = Tensor::randn(0.0, 1.0, (8, 16, 32, 32), DType::F32, Device::Cpu)?;
    let w0 = Tensor::randn(0.0, 0.1, (8, 16, 3, 3), DType::F32, Device::Cpu)?;
    let opt = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let grad = |x: &Tensor| -> Result<Vec<f64>> {
        let w = w0.clone().requires_grad();
        x.conv2d(&w, None, opt)?.sqr()?.sum_all()?.backward()?;
        w.grad().expect("a gradient").to_vec_f64()
    };
    let whole = grad(&x)?;
    let (a, b) = (grad(&x.narrow(0, 0, 4)?)?, grad(&x.narrow(0, 4, 4)?)?);
    for ((w, a), b) in whole.iter().zip(&a).zip(&b) {
        assert!((w - (a + b)).abs() <= 1e-3 * (1.0 + w.abs()), "{w} vs {a} + {b}");
    }
    Ok(())
}
