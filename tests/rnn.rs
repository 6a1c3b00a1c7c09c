//! Recurrent layers: equations against a scalar reference, layer vs unrolled cell, options
//! (batch-first, bidirectional, initial states), weight sharing by name, and gradchecks of
//! every cell and of pytensor's language-model configurations.

use tensorforge::gradcheck::{GradCheck, gradcheck_with};
use tensorforge::nn::{
    CrossEntropyLoss, Embedding, GRU, GRUCell, LSTM, LSTMCell, Linear, Loss, Module, Nonlinearity, RNN, RNNCell,
    RnnOptions,
};
use tensorforge::param::ParameterStore;
use tensorforge::{DType, Device, Result, Tensor};

/// Deterministic values in ±[0.1, 0.8).
fn vals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            let m = 0.1 + 0.7 * (2.0 * u).fract();
            if u < 0.5 { -m } else { m }
        })
        .collect()
}

fn r(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(vals(shape.iter().product(), seed), shape, Device::Cpu).unwrap()
}

fn close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
    }
}

/// Parameters for one cell (weight_ih, weight_hh, bias_ih, bias_hh) with `g` gate blocks.
fn cell_params(g: usize, i: usize, h: usize, seed: u64) -> Vec<Tensor> {
    vec![r(&[g * h, i], seed), r(&[g * h, h], seed + 1), r(&[g * h], seed + 2), r(&[g * h], seed + 3)]
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `W·x + b` with `W` row-major `[rows, cols]`.
fn affine(w: &[f64], b: &[f64], x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    b.iter().enumerate().map(|(r, bb)| bb + (0..cols).map(|c| w[r * cols + c] * x[c]).sum::<f64>()).collect()
}

#[test]
fn lstm_cell_matches_pytorch_equations() -> Result<()> {
    let (i, h) = (3, 2);
    let p = cell_params(4, i, h, 1);
    let (x, h0, c0) = (r(&[i], 10), r(&[h], 11), r(&[h], 12));
    let cell = LSTMCell::from_tensors(p[0].clone(), p[1].clone(), Some(p[2].clone()), Some(p[3].clone()))?;
    let (h1, c1) = cell.forward_with_state(&x, Some((&h0, &c0)))?;
    // Scalar reference: gates i, f, g, o stacked in that order.
    let v = |t: &Tensor| t.to_vec_f64().unwrap();
    let a = affine(&v(&p[0]), &v(&p[2]), &v(&x));
    let b = affine(&v(&p[1]), &v(&p[3]), &v(&h0));
    let pre: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let (c0v, mut hw, mut cw) = (v(&c0), vec![], vec![]);
    for k in 0..h {
        let (ig, fg, gg, og) = (sig(pre[k]), sig(pre[h + k]), pre[2 * h + k].tanh(), sig(pre[3 * h + k]));
        let c = fg * c0v[k] + ig * gg;
        cw.push(c);
        hw.push(og * c.tanh());
    }
    close(&h1, &Tensor::from_vec(hw, h, Device::Cpu)?, 1e-12);
    close(&c1, &Tensor::from_vec(cw, h, Device::Cpu)?, 1e-12);
    Ok(())
}

#[test]
fn gru_cell_matches_pytorch_equations() -> Result<()> {
    let (i, h) = (3, 2);
    let p = cell_params(3, i, h, 2);
    let (x, h0) = (r(&[i], 20), r(&[h], 21));
    let cell = GRUCell::from_tensors(p[0].clone(), p[1].clone(), Some(p[2].clone()), Some(p[3].clone()))?;
    let h1 = cell.forward_with_state(&x, Some(&h0))?;
    let v = |t: &Tensor| t.to_vec_f64().unwrap();
    let a = affine(&v(&p[0]), &v(&p[2]), &v(&x));
    let b = affine(&v(&p[1]), &v(&p[3]), &v(&h0));
    let hv = v(&h0);
    let want: Vec<f64> = (0..h)
        .map(|k| {
            let rg = sig(a[k] + b[k]);
            let zg = sig(a[h + k] + b[h + k]);
            let n = (a[2 * h + k] + rg * b[2 * h + k]).tanh();
            (1.0 - zg) * n + zg * hv[k]
        })
        .collect();
    close(&h1, &Tensor::from_vec(want, h, Device::Cpu)?, 1e-12);
    Ok(())
}

#[test]
fn rnn_cell_relu_and_tanh() -> Result<()> {
    let p = cell_params(1, 3, 4, 3);
    let (x, h0) = (r(&[2, 3], 30), r(&[2, 4], 31));
    let pre = x.matmul(&p[0].t()?)?.add(&p[2])?.add(&h0.matmul(&p[1].t()?)?.add(&p[3])?)?;
    for (nl, want) in [(Nonlinearity::Tanh, pre.tanh()?), (Nonlinearity::Relu, pre.relu()?)] {
        let cell = RNNCell::from_tensors(nl, p[0].clone(), p[1].clone(), Some(p[2].clone()), Some(p[3].clone()))?;
        close(&cell.forward_with_state(&x, Some(&h0))?, &want, 1e-12);
    }
    Ok(())
}

#[test]
fn lstm_layer_equals_unrolled_cell() -> Result<()> {
    let p = cell_params(4, 3, 4, 4);
    let x = r(&[5, 2, 3], 40);
    let (h0, c0) = (r(&[1, 2, 4], 41), r(&[1, 2, 4], 42));
    let lstm = LSTM::from_tensors(RnnOptions::default(), &p)?;
    let (y, (hn, cn)) = lstm.forward_with_state(&x, Some((&h0, &c0)))?;
    let cell = LSTMCell::from_tensors(p[0].clone(), p[1].clone(), Some(p[2].clone()), Some(p[3].clone()))?;
    let (mut h, mut c) = (h0.squeeze(0)?, c0.squeeze(0)?);
    for t in 0..5 {
        (h, c) = cell.forward_with_state(&x.narrow(0, t, 1)?.squeeze(0)?, Some((&h, &c)))?;
        close(&y.narrow(0, t, 1)?.squeeze(0)?, &h, 1e-12);
    }
    close(&hn.squeeze(0)?, &h, 1e-12);
    close(&cn.squeeze(0)?, &c, 1e-12);
    Ok(())
}

/// The LSTM layer runs as one fused op (f32/f64); `LSTMCell` is composed from tensor ops.
/// Both directions, a loss on every output and on the final states: the fused backward must
/// give the unrolled cell's gradients for the input, both weights, both biases and h0/c0.
fn fused_lstm_gradients_equal_unrolled_cell(dtype: DType, (n, h): (usize, usize), tol: f64) -> Result<()> {
    let (t_len, i) = (6, 4);
    let (fw, bw) = (cell_params(4, i, h, 70), cell_params(4, i, h, 80));
    let leaf = |t: &Tensor| t.to_dtype(dtype).unwrap().requires_grad();
    let run = |fused: bool| -> Result<Vec<Vec<f64>>> {
        let ps: Vec<Tensor> = fw.iter().chain(&bw).map(leaf).collect();
        let x = leaf(&r(&[t_len, n, i], 90));
        let (h0, c0) = (leaf(&r(&[2, n, h], 91)), leaf(&r(&[2, n, h], 92)));
        let proj = r(&[t_len, n, 2 * h], 93).to_dtype(dtype)?;
        let (y, hn, cn) = if fused {
            let lstm = LSTM::from_tensors(RnnOptions { bidirectional: true, ..Default::default() }, &ps)?;
            let (y, (hn, cn)) = lstm.forward_with_state(&x, Some((&h0, &c0)))?;
            (y, hn, cn)
        } else {
            let mut ys = Vec::new();
            let (mut hs, mut cs) = (Vec::new(), Vec::new());
            for (d, p) in ps.chunks(4).enumerate() {
                let cell = LSTMCell::from_tensors(p[0].clone(), p[1].clone(), Some(p[2].clone()), Some(p[3].clone()))?;
                let (mut hh, mut cc) = (h0.narrow(0, d, 1)?.squeeze(0)?, c0.narrow(0, d, 1)?.squeeze(0)?);
                let mut out = vec![None; t_len];
                for k in 0..t_len {
                    let t = if d == 1 { t_len - 1 - k } else { k };
                    (hh, cc) = cell.forward_with_state(&x.narrow(0, t, 1)?.squeeze(0)?, Some((&hh, &cc)))?;
                    out[t] = Some(hh.clone());
                }
                let out: Vec<Tensor> = out.into_iter().map(|o| o.unwrap()).collect();
                ys.push(Tensor::stack(&out.iter().collect::<Vec<_>>(), 0)?);
                hs.push(hh);
                cs.push(cc);
            }
            let y = Tensor::cat(&[&ys[0], &ys[1]], 2)?;
            (y, Tensor::stack(&[&hs[0], &hs[1]], 0)?, Tensor::stack(&[&cs[0], &cs[1]], 0)?)
        };
        let loss = y.mul(&proj)?.sum_all()?.add(&hn.sqr()?.sum_all()?)?.add(&cn.mul_scalar(0.5)?.sum_all()?)?;
        loss.backward()?;
        let mut out = vec![y.to_vec_f64()?, hn.to_vec_f64()?, cn.to_vec_f64()?];
        for t in [&x, &h0, &c0].into_iter().chain(&ps) {
            out.push(t.grad().expect("a gradient").to_vec_f64()?);
        }
        Ok(out)
    };
    let (fused, unrolled) = (run(true)?, run(false)?);
    for (k, (a, b)) in fused.iter().zip(&unrolled).enumerate() {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{dtype:?} tensor {k} element {j}: fused {x} vs unrolled {y}"
            );
        }
    }
    Ok(())
}

#[test]
fn fused_lstm_gradients_equal_unrolled_cell_f64() -> Result<()> {
    fused_lstm_gradients_equal_unrolled_cell(DType::F64, (3, 5), 1e-12)
}

#[test]
fn fused_lstm_gradients_equal_unrolled_cell_f32() -> Result<()> {
    fused_lstm_gradients_equal_unrolled_cell(DType::F32, (3, 5), 2e-5)
}

/// 21 units: on an AVX-512 machine the f32 rows run 16 lanes at a time (sigmoid and tanh
/// vectorized) and the last 5 through the generic row, over a batch of 20.
#[test]
fn fused_lstm_gradients_equal_unrolled_cell_f32_wide() -> Result<()> {
    fused_lstm_gradients_equal_unrolled_cell(DType::F32, (20, 21), 2e-5)
}

/// A larger batch in f64 (37 rows), every gradient to 1e-12.
#[test]
fn fused_lstm_gradients_equal_unrolled_cell_f64_wide() -> Result<()> {
    fused_lstm_gradients_equal_unrolled_cell(DType::F64, (37, 6), 1e-12)
}

/// On a pool of three threads the fused layer runs its batch in three blocks of rows (12, 12
/// and 13), each through every step on a thread of its own: the same gradients, to 1e-12.
#[test]
fn fused_lstm_gradients_equal_unrolled_cell_in_row_blocks() -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a pool");
    pool.install(|| fused_lstm_gradients_equal_unrolled_cell(DType::F64, (37, 6), 1e-12))?;
    pool.install(|| fused_lstm_gradients_equal_unrolled_cell(DType::F32, (24, 17), 2e-5))
}

/// The half types take the composed path: same outputs as f32 within bf16's rounding.
#[test]
fn lstm_in_bf16_runs_composed() -> Result<()> {
    let p = cell_params(4, 3, 4, 4);
    let x = r(&[5, 2, 3], 40);
    let lstm = LSTM::from_tensors(RnnOptions::default(), &p)?;
    let y = lstm.forward(&x)?;
    let pb: Vec<Tensor> = p.iter().map(|t| t.to_dtype(DType::BF16).unwrap()).collect();
    let yb = LSTM::from_tensors(RnnOptions::default(), &pb)?.forward(&x.to_dtype(DType::BF16)?)?;
    close(&yb.to_dtype(DType::F64)?, &y, 0.05);
    Ok(())
}

#[test]
fn bidirectional_reverse_half_is_the_reversed_sequence() -> Result<()> {
    let (fw, bw) = (cell_params(3, 3, 2, 5), cell_params(3, 3, 2, 9));
    let params: Vec<Tensor> = fw.iter().chain(&bw).cloned().collect();
    let opts = RnnOptions { bidirectional: true, ..Default::default() };
    let gru = GRU::from_tensors(opts, &params)?;
    let x = r(&[4, 2, 3], 50);
    let (y, hn) = gru.forward_with_state(&x, None)?;
    assert_eq!(y.dims(), &[4, 2, 4]);
    assert_eq!(hn.dims(), &[2, 2, 2]);
    let rev = Tensor::cat(
        &(0..4).rev().map(|t| x.narrow(0, t, 1).unwrap()).collect::<Vec<_>>().iter().collect::<Vec<_>>(),
        0,
    )?;
    let (yr, hr) = GRU::from_tensors(RnnOptions::default(), &bw)?.forward_with_state(&rev, None)?;
    for t in 0..4 {
        close(&y.narrow(0, t, 1)?.narrow(2, 2, 2)?, &yr.narrow(0, 3 - t, 1)?, 1e-12);
    }
    close(&hn.narrow(0, 1, 1)?, &hr, 1e-12);
    let (yf, _) = GRU::from_tensors(RnnOptions::default(), &fw)?.forward_with_state(&x, None)?;
    close(&y.narrow(2, 0, 2)?, &yf, 1e-12);
    Ok(())
}

#[test]
fn batch_first_is_a_transpose() -> Result<()> {
    let p: Vec<Tensor> = cell_params(1, 3, 4, 6).into_iter().chain(cell_params(1, 4, 4, 16)).collect();
    let opts = RnnOptions { num_layers: 2, ..Default::default() };
    let x = r(&[5, 2, 3], 60);
    let (y, h) = RNN::from_tensors(Nonlinearity::Tanh, opts, &p)?.forward_with_state(&x, None)?;
    let bf = RNN::from_tensors(Nonlinearity::Tanh, RnnOptions { batch_first: true, ..opts }, &p)?;
    let (yb, hb) = bf.forward_with_state(&x.transpose(0, 1)?, None)?;
    close(&yb.transpose(0, 1)?, &y, 1e-12);
    close(&hb, &h, 1e-12);
    assert_eq!(h.dims(), &[2, 2, 4]);
    Ok(())
}

#[test]
fn names_layout_init_and_sharing_through_the_store() -> Result<()> {
    tensorforge::manual_seed(3);
    let mut store = ParameterStore::new(Device::Cpu);
    let opts = RnnOptions { num_layers: 2, bidirectional: true, ..Default::default() };
    let a = LSTM::from_store(&mut store, "enc", 3, 5, opts)?;
    let b = LSTM::from_store(&mut store, "enc", 3, 5, opts)?;
    let names: Vec<String> = a.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(&names[..4], &["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]);
    assert_eq!(&names[4..6], &["weight_ih_l0_reverse", "weight_hh_l0_reverse"]);
    assert_eq!(names.len(), 16);
    assert!(store.get("enc.weight_ih_l1_reverse").is_some());
    for ((_, p), (_, q)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert_eq!(p.id(), q.id(), "same names share one variable");
    }
    let shapes: Vec<Vec<usize>> = a.parameters().iter().map(|p| p.dims().to_vec()).collect();
    assert_eq!(shapes[0], vec![20, 3]);
    assert_eq!(shapes[8], vec![20, 10], "layer 1 reads both directions");
    let bound = 1.0 / 5f64.sqrt();
    for p in a.parameters() {
        assert!(p.to_vec_f64()?.iter().all(|v| v.abs() <= bound), "init within ±1/√H");
    }
    // A shared cell unrolled by hand accumulates its gradient over every use.
    let cell = RNNCell::from_store(&mut store, "cell", 2, 3, Nonlinearity::Tanh)?;
    let again = RNNCell::from_store(&mut store, "cell", 2, 3, Nonlinearity::Tanh)?;
    let x = Tensor::ones((1, 2), DType::F32, Device::Cpu)?;
    let h = cell.forward(&x)?;
    let h = again.forward_with_state(&x, Some(&h))?;
    h.sum_all()?.backward()?;
    assert!(cell.parameters()[1].grad().is_some(), "weight_hh used in step 2 has a gradient");
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let lstm = LSTM::new(3, 4, RnnOptions::default(), Device::Cpu)?;
    assert!(lstm.forward(&Tensor::zeros((5, 2, 4), DType::F32, Device::Cpu)?).is_err());
    assert!(lstm.forward(&Tensor::zeros((5, 3), DType::F32, Device::Cpu)?).is_err());
    let h0 = Tensor::zeros((2, 2, 4), DType::F32, Device::Cpu)?;
    let x = Tensor::zeros((5, 2, 3), DType::F32, Device::Cpu)?;
    assert!(lstm.forward_with_state(&x, Some((&h0, &h0))).is_err());
    assert!(GRU::from_tensors(RnnOptions::default(), &cell_params(4, 3, 2, 1)).is_err());
    assert!(RNN::from_tensors(Nonlinearity::Tanh, RnnOptions::default(), &cell_params(1, 3, 2, 1)[..2]).is_err());
    Ok(())
}

fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    gradcheck_with(f, inputs, &GradCheck::default()).unwrap();
}

#[test]
fn gradcheck_cells() {
    for nl in [Nonlinearity::Tanh, Nonlinearity::Relu] {
        let mut inp = vec![r(&[2, 3], 70), r(&[2, 4], 71)];
        inp.extend(cell_params(1, 3, 4, 72));
        check(
            move |a| {
                RNNCell::from_tensors(nl, a[2].clone(), a[3].clone(), Some(a[4].clone()), Some(a[5].clone()))?
                    .forward_with_state(&a[0], Some(&a[1]))
            },
            &inp,
        );
    }
    let mut inp = vec![r(&[2, 3], 73), r(&[2, 4], 74), r(&[2, 4], 75)];
    inp.extend(cell_params(4, 3, 4, 76));
    check(
        |a| {
            let c = LSTMCell::from_tensors(a[3].clone(), a[4].clone(), Some(a[5].clone()), Some(a[6].clone()))?;
            let (h, c) = c.forward_with_state(&a[0], Some((&a[1], &a[2])))?;
            Tensor::cat(&[&h, &c], 1)
        },
        &inp,
    );
    let mut inp = vec![r(&[2, 3], 77), r(&[2, 4], 78)];
    inp.extend(cell_params(3, 3, 4, 79));
    check(
        |a| {
            GRUCell::from_tensors(a[2].clone(), a[3].clone(), Some(a[4].clone()), Some(a[5].clone()))?
                .forward_with_state(&a[0], Some(&a[1]))
        },
        &inp,
    );
}

#[test]
fn gradcheck_multilayer_bidirectional_layers() {
    let opts = RnnOptions { num_layers: 2, bidirectional: true, ..Default::default() };
    for (g, kind) in [(1, "rnn"), (4, "lstm"), (3, "gru")] {
        let (i, h) = (2, 3);
        let mut inp = vec![r(&[3, 2, i], 80), r(&[4, 2, h], 81), r(&[4, 2, h], 82)];
        for (k, seed) in [(i, 83), (i, 87), (2 * h, 91), (2 * h, 95)] {
            inp.extend(cell_params(g, k, h, seed));
        }
        check(
            move |a| {
                let p = &a[3..];
                match kind {
                    "rnn" => {
                        let (y, hn) =
                            RNN::from_tensors(Nonlinearity::Tanh, opts, p)?.forward_with_state(&a[0], Some(&a[1]))?;
                        Tensor::cat(&[&y.flatten_all()?, &hn.flatten_all()?], 0)
                    }
                    "lstm" => {
                        let (y, (hn, cn)) =
                            LSTM::from_tensors(opts, p)?.forward_with_state(&a[0], Some((&a[1], &a[2])))?;
                        Tensor::cat(&[&y.flatten_all()?, &hn.flatten_all()?, &cn.flatten_all()?], 0)
                    }
                    _ => {
                        let o = RnnOptions { batch_first: true, ..opts };
                        let (y, hn) =
                            GRU::from_tensors(o, p)?.forward_with_state(&a[0].transpose(0, 1)?, Some(&a[1]))?;
                        Tensor::cat(&[&y.flatten_all()?, &hn.flatten_all()?], 0)
                    }
                }
            },
            &inp,
        );
    }
}

/// pytensor's configuration: vocabulary 5, embedding 5, hidden 10, a 10-token sequence;
/// Embedding → RNN/LSTM → Linear → cross-entropy on the next token.
fn language_model_gradcheck(lstm: bool) {
    let (v, e, h) = (5, 5, 10);
    let tokens: Vec<i64> = vec![0, 3, 1, 4, 2, 2, 0, 1, 3, 4, 0];
    let input = Tensor::from_vec(tokens[..10].to_vec(), (10, 1), Device::Cpu).unwrap();
    let target = Tensor::from_vec(tokens[1..].to_vec(), 10, Device::Cpu).unwrap();
    let g = if lstm { 4 } else { 1 };
    let mut inp = vec![r(&[v, e], 100)];
    inp.extend(cell_params(g, e, h, 101));
    inp.extend([r(&[v, h], 105), r(&[v], 106)]);
    check(
        move |a| {
            let x = Embedding::from_tensor(a[0].clone())?.forward(&input)?; // [10, 1, 5]
            let y = if lstm {
                LSTM::from_tensors(RnnOptions::default(), &a[1..5])?.forward(&x)?
            } else {
                RNN::from_tensors(Nonlinearity::Tanh, RnnOptions::default(), &a[1..5])?.forward(&x)?
            };
            let logits = Linear::from_tensors(a[5].clone(), Some(a[6].clone()))?.forward(&y.reshape((10, h))?)?;
            CrossEntropyLoss::new().loss(&logits, &target)
        },
        &inp,
    );
}

#[test]
fn gradcheck_pytensor_rnn_language_model() {
    language_model_gradcheck(false);
}

#[test]
fn gradcheck_pytensor_lstm_language_model() {
    language_model_gradcheck(true);
}
