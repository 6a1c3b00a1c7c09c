//! Every differentiable op, checked against finite differences — and a guard that fails when
//! an op is added without an entry here.

use std::collections::BTreeSet;
use tensorforge::backend::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use tensorforge::gradcheck::{GradCheck, gradcheck_with};
use tensorforge::nn::{
    BatchNorm, BceWithLogitsLoss, Conv2d, CrossEntropyLoss, CtcLoss, Dropout, Embedding, GRU, GRUCell, LSTM, LSTMCell,
    LayerNorm, Linear, Loss, Module, MseLoss, NllLoss, Nonlinearity, RNN, RNNCell, ReLU, Reduction, RnnOptions,
    Sequential, SquareError, Tanh,
};
use tensorforge::ops::Conv2dOptions;
use tensorforge::{Device, Result, Tensor};

type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// One gradcheck: `name` is `op` or `op/variant`, where `op` is the name the
/// `Operation` reports (or a composite: a view helper, a loss, a layer).
struct Case {
    name: &'static str,
    inputs: Vec<Tensor>,
    f: OpFn,
    cfg: GradCheck,
}

/// Deterministic values in ±[0.2, 1.5): away from the kinks of relu/abs/sign at 0.
fn vals(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            let m = 0.2 + 1.3 * (2.0 * u).fract();
            if u < 0.5 { -m } else { m }
        })
        .collect()
}

fn r(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(vals(n, seed), shape, Device::Cpu).unwrap()
}

/// Positive values in [0.2, 1.5) (log, sqrt, pow bases, divisors).
fn pos(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(vals(n, seed).into_iter().map(f64::abs).collect::<Vec<_>>(), shape, Device::Cpu).unwrap()
}

fn f64s(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, Device::Cpu).unwrap()
}

fn ids(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, Device::Cpu).unwrap()
}

fn table() -> Vec<Case> {
    let d = GradCheck::default();
    let mut t: Vec<Case> = Vec::new();
    macro_rules! case {
        ($name:expr, [$($inp:expr),* $(,)?], $f:expr) => {
            t.push(Case { name: $name, inputs: vec![$($inp),*], f: Box::new($f), cfg: d })
        };
        ($name:expr, [$($inp:expr),* $(,)?], $f:expr, $cfg:expr) => {
            t.push(Case { name: $name, inputs: vec![$($inp),*], f: Box::new($f), cfg: $cfg })
        };
    }

    // ---- unary: every UnaryOp ----
    let x = || r(&[3, 4], 1);
    let non_integer = || f64s(&[0.3, -1.2, 2.7, -0.6, 1.1, 0.15, -2.35, 0.8], &[2, 4]);
    case!("neg", [x()], |a| a[0].neg());
    case!("abs", [x()], |a| a[0].abs());
    case!("exp", [x()], |a| a[0].exp());
    case!("log", [pos(&[3, 4], 2)], |a| a[0].log());
    case!("sqrt", [pos(&[3, 4], 3)], |a| a[0].sqrt());
    case!("rsqrt", [pos(&[3, 4], 4)], |a| a[0].rsqrt());
    case!("recip", [x()], |a| a[0].recip());
    case!("sqr", [x()], |a| a[0].sqr());
    case!("sin", [x()], |a| a[0].sin());
    case!("cos", [x()], |a| a[0].cos());
    case!("tanh", [x()], |a| a[0].tanh());
    case!("sigmoid", [x()], |a| a[0].sigmoid());
    case!("relu", [x()], |a| a[0].relu());
    case!("gelu_erf", [x()], |a| a[0].gelu());
    case!("gelu_erf/at_zero", [f64s(&[0.0, 0.5], &[2])], |a| a[0].gelu());
    case!("gelu_tanh", [x()], |a| a[0].gelu_tanh());
    case!("silu", [x()], |a| a[0].silu());
    case!("softplus", [x()], |a| a[0].softplus());
    case!("softplus/large", [f64s(&[-40.0, 40.0, 3.0], &[3])], |a| a[0].softplus());
    case!("sign", [x()], |a| a[0].sign()?.mul(&a[0]));
    case!("floor", [non_integer()], |a| a[0].floor()?.add(&a[0]));
    case!("ceil", [non_integer()], |a| a[0].ceil()?.add(&a[0]));
    case!("round", [non_integer()], |a| a[0].round()?.add(&a[0]));

    // ---- scalar maps ----
    case!("affine", [x()], |a| a[0].affine(-1.5, 0.25));
    case!("powf", [pos(&[3, 4], 5)], |a| a[0].powf(2.5));
    case!("powf/negative_exponent", [pos(&[3, 4], 6)], |a| a[0].powf(-1.5));
    case!("clamp", [x()], |a| a[0].clamp(-0.75, 0.9));

    // ---- binary: every BinaryOp, same shape and broadcasting ----
    let (a34, b34, b4, b31, b14) = (r(&[3, 4], 10), r(&[3, 4], 11), r(&[4], 12), r(&[3, 1], 13), r(&[1, 4], 14));
    case!("add", [a34.clone(), b34.clone()], |a| a[0].add(&a[1]));
    case!("add/broadcast_row", [a34.clone(), b4.clone()], |a| a[0].add(&a[1]));
    case!("add/broadcast_both", [b31.clone(), b14.clone()], |a| a[0].add(&a[1]));
    case!("sub", [a34.clone(), b34.clone()], |a| a[0].sub(&a[1]));
    case!("sub/broadcast", [b4.clone(), a34.clone()], |a| a[0].sub(&a[1]));
    case!("mul", [a34.clone(), b34.clone()], |a| a[0].mul(&a[1]));
    case!("mul/broadcast_both", [b31.clone(), b14.clone()], |a| a[0].mul(&a[1]));
    case!("mul/scalar_operand", [a34.clone(), f64s(&[0.7], &[])], |a| a[0].mul(&a[1]));
    case!("div", [a34.clone(), b34.clone()], |a| a[0].div(&a[1]));
    case!("div/broadcast", [a34.clone(), b31.clone()], |a| a[0].div(&a[1]));
    case!("pow", [pos(&[3, 4], 15), b34.clone()], |a| a[0].pow(&a[1]));
    case!("pow/broadcast", [pos(&[3, 4], 16), b4.clone()], |a| a[0].pow(&a[1]));
    case!("maximum", [a34.clone(), b34.clone()], |a| a[0].maximum(&a[1]));
    case!("maximum/broadcast", [a34.clone(), b4.clone()], |a| a[0].maximum(&a[1]));
    case!("minimum", [a34.clone(), b34.clone()], |a| a[0].minimum(&a[1]));
    case!("minimum/broadcast", [b31.clone(), b14.clone()], |a| a[0].minimum(&a[1]));
    // The gradient gate's own gradient (double backward through ReLU): linear in the gate.
    case!("relu_backward", [a34.clone(), b34.clone()], |a| a[0].binary_op(&a[1], BinaryOp::ReluBackward));

    // ---- where ----
    let mask = Tensor::from_vec(vec![1u8, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1], (3, 4), Device::Cpu).unwrap();
    let m2 = mask.clone();
    case!("where", [a34.clone(), b34.clone()], move |a| mask.where_cond(&a[0], &a[1]));
    case!("where/broadcast", [b4.clone(), b31.clone()], move |a| m2.where_cond(&a[0], &a[1]));

    // ---- reductions: every ReduceOp with a gradient, multi-axis and keepdim ----
    let x3 = || r(&[2, 3, 4], 20);
    case!("sum", [x3()], |a| a[0].sum_all());
    case!("sum/axis", [x3()], |a| a[0].sum([1]));
    case!("sum/multi_axis", [x3()], |a| a[0].sum([0, 2]));
    case!("sum/keepdim", [x3()], |a| a[0].sum_keepdim([-1]));
    case!("mean", [x3()], |a| a[0].mean_all());
    case!("mean/multi_axis_keepdim", [x3()], |a| a[0].mean_keepdim([0, 2]));
    case!("mean/axis", [x3()], |a| a[0].mean([1]));
    case!("max", [x3()], |a| a[0].max([2]));
    case!("max/multi_axis_keepdim", [x3()], |a| a[0].max_keepdim([0, 1]));
    case!("min", [x3()], |a| a[0].min([1]));
    case!("min/keepdim", [x3()], |a| a[0].min_keepdim([0]));
    case!("prod", [x3()], |a| a[0].prod([2]));
    case!("prod/multi_axis", [x3()], |a| a[0].prod([0, 1]));

    // ---- softmax ----
    case!("softmax", [x3()], |a| a[0].softmax(-1));
    case!("softmax/axis0", [x3()], |a| a[0].softmax(0));
    case!("log_softmax", [x3()], |a| a[0].log_softmax(-1));
    case!("log_softmax/middle_axis", [x3()], |a| a[0].log_softmax(1));

    // ---- matmul ----
    case!("matmul", [r(&[3, 4], 30), r(&[4, 5], 31)], |a| a[0].matmul(&a[1]));
    case!("matmul/batched", [r(&[2, 3, 4], 32), r(&[2, 4, 5], 33)], |a| a[0].matmul(&a[1]));
    case!("matmul/broadcast_rhs", [r(&[2, 3, 4], 34), r(&[4, 5], 35)], |a| a[0].matmul(&a[1]));
    case!("matmul/broadcast_batch", [r(&[2, 1, 3, 4], 36), r(&[3, 4, 2], 37)], |a| a[0].matmul(&a[1]));
    case!("matmul/transposed_operands", [r(&[4, 3], 38), r(&[5, 4], 39)], |a| a[0].t()?.matmul(&a[1].t()?));
    case!("matmul/vector_matrix", [r(&[4], 40), r(&[4, 5], 41)], |a| a[0].matmul(&a[1]));
    case!("matmul/matrix_vector", [r(&[3, 4], 42), r(&[4], 43)], |a| a[0].matmul(&a[1]));

    // ---- views and copies ----
    case!("reshape", [x3()], |a| a[0].reshape((4, 6)));
    case!("reshape/of_transposed", [x3()], |a| a[0].transpose(0, 2)?.reshape((4, 6)));
    case!("permute", [x3()], |a| a[0].permute(&[2, 0, 1]));
    case!("transpose", [x3()], |a| a[0].transpose(0, 1));
    case!("t", [r(&[3, 4], 50)], |a| a[0].t());
    case!("broadcast_as", [r(&[3, 1], 51)], |a| a[0].broadcast_as((2, 3, 4)));
    case!("expand", [r(&[4], 52)], |a| a[0].expand((3, 4)));
    case!("slice", [x3()], |a| a[0].slice(2, 1, 4, 2));
    case!("narrow", [x3()], |a| a[0].narrow(1, 1, 2));
    case!("squeeze", [r(&[3, 1, 2], 53)], |a| a[0].squeeze(1));
    case!("unsqueeze", [r(&[3, 2], 54)], |a| a[0].unsqueeze(1));
    case!("flatten", [x3()], |a| a[0].flatten(1, 2));
    case!("cat", [r(&[2, 3], 55), r(&[1, 3], 56), r(&[3, 3], 57)], |a| Tensor::cat(&[&a[0], &a[1], &a[2]], 0));
    case!("cat/axis1", [r(&[2, 3], 58), r(&[2, 1], 59)], |a| Tensor::cat(&[&a[0], &a[1]], 1));
    case!("stack", [r(&[2, 3], 60), r(&[2, 3], 61)], |a| Tensor::stack(&[&a[0], &a[1]], 1));
    case!("cast/copy_of_strided", [x3()], |a| a[0].permute(&[1, 2, 0])?.contiguous());
    case!(
        "cast/f32_roundtrip",
        [x3()],
        |a| a[0].to_dtype(tensorforge::DType::F32)?.sqr()?.to_dtype(tensorforge::DType::F64),
        GradCheck { eps: 1e-2, atol: 1e-3, rtol: 1e-3, ..d }
    );

    // ---- indexing ----
    let sel = ids(&[2, 0, 2, 1], &[4]);
    case!("index_select", [r(&[3, 4], 70), sel.clone()], |a| a[0].index_select(0, &a[1]));
    case!("index_select/axis1", [r(&[3, 4], 71), ids(&[3, 3, 0], &[3])], |a| a[0].index_select(1, &a[1]));
    let g_ids = ids(&[0, 2, 2, 1, 0, 1], &[2, 3]);
    case!("gather", [r(&[2, 3], 72), g_ids.clone()], |a| a[0].gather(1, &a[1]));
    case!("gather/axis0", [r(&[3, 3], 73), g_ids.clone()], |a| a[0].gather(0, &a[1]));
    case!("scatter_add", [r(&[2, 4], 74), g_ids.clone(), r(&[2, 3], 75)], |a| a[0].scatter_add(1, &a[1], &a[2]));
    case!("index_add", [r(&[3, 4], 76), sel.clone(), r(&[4, 4], 77)], |a| a[0].index_add(0, &a[1], &a[2]));

    // ---- convolution and pooling (im2col / col2im and what is built on them) ----
    let win = |k, s, p, d| Window2d { kernel: (k, k), stride: (s, s), padding: (p, p), dilation: (d, d) };
    case!("im2col", [r(&[2, 2, 4, 5], 100)], move |a| a[0].im2col(win(2, 1, 0, 1), 0.0));
    case!("im2col/stride_pad_dilation", [r(&[1, 2, 5, 5], 101)], move |a| a[0].im2col(win(2, 2, 1, 2), 0.0));
    case!("col2im", [r(&[2, 8, 12], 102)], move |a| a[0].col2im(win(2, 1, 0, 1), 4, 5));
    case!("col2im/overlapping_stride", [r(&[1, 9, 4], 103)], move |a| a[0].col2im(win(3, 2, 1, 1), 4, 4));
    case!("conv2d", [r(&[2, 3, 5, 5], 104), r(&[4, 3, 3, 3], 105), r(&[4], 106)], |a| {
        a[0].conv2d(&a[1], Some(&a[2]), Conv2dOptions::default())
    });
    case!("conv2d/stride_padding_dilation", [r(&[1, 2, 6, 6], 107), r(&[3, 2, 2, 2], 108)], |a| {
        a[0].conv2d(&a[1], None, Conv2dOptions { stride: (2, 1), padding: (1, 1), dilation: (2, 2), groups: 1 })
    });
    // Stride 1 takes the input gradient as a convolution with the flipped kernel (its padding
    // d·(k−1) − p); a padding wider than that takes the product and col2im.
    case!("conv2d/stride1_dilated_padded", [r(&[2, 2, 6, 5], 150), r(&[3, 2, 3, 2], 151)], |a| {
        a[0].conv2d(&a[1], None, Conv2dOptions { padding: (2, 1), dilation: (2, 1), ..Default::default() })
    });
    case!("conv2d/stride1_wide_padding", [r(&[1, 2, 3, 3], 152), r(&[2, 2, 2, 2], 153)], |a| {
        a[0].conv2d(&a[1], None, Conv2dOptions { padding: (2, 2), ..Default::default() })
    });
    case!("conv2d/groups", [r(&[1, 4, 4, 4], 109), r(&[6, 2, 2, 2], 110), r(&[6], 111)], |a| {
        a[0].conv2d(&a[1], Some(&a[2]), Conv2dOptions { groups: 2, ..Default::default() })
    });
    case!("conv1d", [r(&[2, 2, 7], 112), r(&[3, 2, 3], 113), r(&[3], 114)], |a| {
        a[0].conv1d_with(
            &a[1],
            Some(&a[2]),
            tensorforge::ops::Conv1dOptions { stride: 2, padding: 1, ..Default::default() },
        )
    });
    case!("conv_transpose2d", [r(&[1, 2, 3, 3], 115), r(&[2, 3, 2, 2], 116), r(&[3], 117)], |a| {
        a[0].conv_transpose2d(&a[1], Some(&a[2]), Conv2dOptions { stride: (2, 2), ..Default::default() }, (1, 1))
    });
    // Distinct values, so no window has a tie for its maximum.
    let distinct = || {
        let v: Vec<f64> = (0..50).map(|i| ((i * 37 % 50) as f64) * 0.05 - 1.2).collect();
        f64s(&v, &[1, 2, 5, 5])
    };
    case!("max_pool2d", [distinct()], |a| a[0].max_pool2d((2, 2), (2, 2), (0, 0)));
    case!("max_pool2d/overlapping_padded", [distinct()], |a| a[0].max_pool2d((3, 3), (2, 2), (1, 1)));
    // Non-overlapping windows: with a repeated index (overlapping windows), PyTorch's backward
    // gives every occurrence the gradient while the forward writes the value once, which no
    // finite difference reproduces; tests/torch_reference.rs checks that case against PyTorch.
    let unpool_ids = distinct().max_pool2d_with_indices((2, 2), (2, 2), (0, 0), true).unwrap().1;
    let unpool_vals = r(unpool_ids.dims(), 140);
    case!("max_unpool2d", [unpool_vals, unpool_ids], |a| a[0].max_unpool2d(&a[1], (5, 5)));
    case!("avg_pool2d", [r(&[2, 2, 4, 4], 118)], |a| a[0].avg_pool2d((2, 2), (2, 2), (0, 0), true));
    case!("avg_pool2d/padded_exclude_pad", [r(&[1, 2, 5, 5], 119)], |a| a[0].avg_pool2d((3, 3), (2, 2), (1, 1), false));
    case!("adaptive_avg_pool2d", [r(&[1, 2, 5, 7], 120)], |a| a[0].adaptive_avg_pool2d((2, 3)));
    case!("global_avg_pool2d", [r(&[2, 3, 3, 4], 121)], |a| a[0].global_avg_pool2d());

    // ---- losses ----
    let logits = || r(&[4, 5], 80);
    let cls = || ids(&[1, 4, 0, 1], &[4]);
    case!("mse_loss", [r(&[3, 4], 81), r(&[3, 4], 82)], |a| MseLoss::new().loss(&a[0], &a[1]));
    case!("mse_loss/sum", [r(&[3, 4], 83), r(&[3, 4], 84)], |a| MseLoss { reduction: Reduction::Sum }
        .loss(&a[0], &a[1]));
    case!("square_error", [r(&[3, 4], 85), r(&[3, 4], 86)], |a| SquareError.loss(&a[0], &a[1]));
    case!("cross_entropy", [logits(), cls()], |a| CrossEntropyLoss::new().loss(&a[0], &a[1]));
    case!("cross_entropy/sum", [logits(), cls()], |a| {
        CrossEntropyLoss { reduction: Reduction::Sum, ..Default::default() }.loss(&a[0], &a[1])
    });
    case!("cross_entropy/label_smoothing", [logits(), cls()], |a| {
        CrossEntropyLoss::with_label_smoothing(0.1).loss(&a[0], &a[1])
    });
    case!("cross_entropy/3d_none", [r(&[2, 2, 5], 87), ids(&[1, 4, 0, 1], &[2, 2])], |a| {
        CrossEntropyLoss { reduction: Reduction::None, ..Default::default() }.loss(&a[0], &a[1])
    });
    case!("nll_loss", [logits(), cls()], |a| NllLoss::new().loss(&a[0].log_softmax(-1)?, &a[1]));
    case!("bce_with_logits", [r(&[3, 4], 88), pos(&[3, 4], 89).affine(0.6, 0.0).unwrap()], |a| {
        BceWithLogitsLoss::new().loss(&a[0], &a[1])
    });
    case!(
        "bce_with_logits/at_zero_and_saturated",
        [f64s(&[0.0, 30.0, -30.0], &[3]), f64s(&[0.3, 1.0, 0.0], &[3])],
        |a| { BceWithLogitsLoss::new().loss(&a[0], &a[1]) }
    );

    // ---- CTC (log-probabilities need not be normalized: the gradient is with respect to them) ----
    let ctc_targets = || ids(&[1, 2, 2, 1, 1, 0], &[2, 3]);
    case!("ctc_loss", [r(&[6, 2, 3], 130), ctc_targets()], |a| CtcLoss::new().loss(&a[0], &a[1], &[6, 5], &[3, 2]));
    case!("ctc_loss/sum_blank_last", [r(&[5, 2, 3], 131), ids(&[0, 1, 1, 0], &[2, 2])], |a| {
        CtcLoss { blank: 2, reduction: Reduction::Sum, ..Default::default() }.loss(&a[0], &a[1], &[5, 4], &[2, 2])
    });
    case!("ctc_loss/none_zero_infinity", [r(&[3, 2, 3], 132), ids(&[1, 2, 1, 1], &[2, 2])], |a| {
        CtcLoss { reduction: Reduction::None, zero_infinity: true, ..Default::default() }.loss(
            &a[0],
            &a[1],
            &[3, 2],
            &[2, 2],
        )
    });

    // ---- layers ----
    case!("linear", [r(&[5, 4], 90), r(&[3, 4], 91), r(&[3], 92)], |a| {
        Linear::from_tensors(a[1].clone(), Some(a[2].clone()))?.forward(&a[0])
    });
    case!("sequential/mlp", [r(&[5, 4], 93), r(&[6, 4], 94), r(&[6], 95), r(&[2, 6], 96), r(&[2], 97)], |a| {
        Sequential::new()
            .add(Linear::from_tensors(a[1].clone(), Some(a[2].clone()))?)
            .add(Tanh)
            .add(Linear::from_tensors(a[3].clone(), Some(a[4].clone()))?)
            .add(ReLU)
            .forward(&a[0])
    });
    case!("embedding", [r(&[4, 3], 98), ids(&[1, 1, 2, 0, 3, 1], &[2, 3])], |a| {
        Embedding::from_tensor(a[0].clone())?.forward(&a[1])
    });
    case!("conv2d_layer", [r(&[1, 2, 4, 4], 130), r(&[3, 2, 3, 3], 131), r(&[3], 132)], |a| {
        Conv2d::from_tensors(a[1].clone(), Some(a[2].clone()), Conv2dOptions { padding: (1, 1), ..Default::default() })
            .forward(&a[0])
    });
    case!("batch_norm_2d/train", [r(&[3, 2, 2, 2], 133)], |a| {
        BatchNorm::new_2d(2, tensorforge::Device::Cpu)?.forward(&a[0])
    });
    case!("batch_norm_1d/train", [r(&[4, 3], 134)], |a| BatchNorm::new_1d(3, tensorforge::Device::Cpu)?.forward(&a[0]));
    case!("batch_norm_2d/eval", [r(&[2, 2, 2, 2], 135)], |a| {
        let mut bn = BatchNorm::new_2d(2, tensorforge::Device::Cpu)?;
        bn.set_training(false);
        bn.forward(&a[0])
    });
    case!("layer_norm", [r(&[3, 2, 4], 136)], |a| LayerNorm::new(&[2, 4], tensorforge::Device::Cpu)?.forward(&a[0]));
    // ---- recurrent layers (composites of matmul and gates; weights [G·H, I], [G·H, H], [G·H]) ----
    let cell = |g: usize, i: usize, h: usize, seed: u64| {
        vec![r(&[g * h, i], seed), r(&[g * h, h], seed + 1), r(&[g * h], seed + 2), r(&[g * h], seed + 3)]
    };
    let with = |mut first: Vec<Tensor>, rest: Vec<Vec<Tensor>>| {
        for v in rest {
            first.extend(v);
        }
        first
    };
    t.push(Case {
        name: "rnn_cell/tanh",
        inputs: with(vec![r(&[2, 3], 140), r(&[2, 4], 141)], vec![cell(1, 3, 4, 142)]),
        f: Box::new(|a| {
            RNNCell::from_tensors(
                Nonlinearity::Tanh,
                a[2].clone(),
                a[3].clone(),
                Some(a[4].clone()),
                Some(a[5].clone()),
            )?
            .forward_with_state(&a[0], Some(&a[1]))
        }),
        cfg: d,
    });
    t.push(Case {
        name: "rnn_cell/relu",
        inputs: with(vec![r(&[2, 3], 143), r(&[2, 4], 144)], vec![cell(1, 3, 4, 145)]),
        f: Box::new(|a| {
            RNNCell::from_tensors(
                Nonlinearity::Relu,
                a[2].clone(),
                a[3].clone(),
                Some(a[4].clone()),
                Some(a[5].clone()),
            )?
            .forward_with_state(&a[0], Some(&a[1]))
        }),
        cfg: d,
    });
    t.push(Case {
        name: "lstm_cell",
        inputs: with(vec![r(&[2, 3], 146), r(&[2, 2], 147), r(&[2, 2], 148)], vec![cell(4, 3, 2, 149)]),
        f: Box::new(|a| {
            let c = LSTMCell::from_tensors(a[3].clone(), a[4].clone(), Some(a[5].clone()), Some(a[6].clone()))?;
            let (h, c) = c.forward_with_state(&a[0], Some((&a[1], &a[2])))?;
            Tensor::cat(&[&h, &c], 1)
        }),
        cfg: d,
    });
    t.push(Case {
        name: "gru_cell",
        inputs: with(vec![r(&[2, 3], 150), r(&[2, 2], 151)], vec![cell(3, 3, 2, 152)]),
        f: Box::new(|a| {
            GRUCell::from_tensors(a[2].clone(), a[3].clone(), Some(a[4].clone()), Some(a[5].clone()))?
                .forward_with_state(&a[0], Some(&a[1]))
        }),
        cfg: d,
    });
    let two_layer_bidir = RnnOptions { num_layers: 2, bidirectional: true, ..Default::default() };
    let stack = |g: usize, seed: u64| {
        with(
            vec![r(&[3, 2, 2], seed)],
            vec![cell(g, 2, 2, seed + 1), cell(g, 2, 2, seed + 5), cell(g, 4, 2, seed + 9), cell(g, 4, 2, seed + 13)],
        )
    };
    t.push(Case {
        name: "rnn/two_layer_bidirectional",
        inputs: stack(1, 160),
        f: Box::new(move |a| RNN::from_tensors(Nonlinearity::Tanh, two_layer_bidir, &a[1..])?.forward(&a[0])),
        cfg: d,
    });
    t.push(Case {
        name: "lstm/two_layer_bidirectional",
        inputs: stack(4, 180),
        f: Box::new(move |a| LSTM::from_tensors(two_layer_bidir, &a[1..])?.forward(&a[0])),
        cfg: d,
    });
    t.push(Case {
        name: "gru/two_layer_bidirectional_batch_first",
        inputs: stack(3, 200),
        f: Box::new(move |a| {
            GRU::from_tensors(RnnOptions { batch_first: true, ..two_layer_bidir }, &a[1..])?.forward(&a[0])
        }),
        cfg: d,
    });
    case!("dropout", [r(&[4, 5], 99)], |a| {
        // Same mask on every call: gradcheck evaluates the function many times.
        tensorforge::manual_seed(1234);
        Dropout::new(0.4)?.forward(&a[0])
    });

    // ---- custom ops (tensorforge::custom): the wrapper's forward/backward plumbing ----
    let squareplus = custom_ops::squareplus();
    case!("custom/squareplus", [x()], move |a| squareplus.apply(&[&a[0]]));
    let hypot = custom_ops::hypot();
    case!("custom/two_inputs_broadcast", [r(&[3, 4], 130), r(&[4], 131)], move |a| hypot.apply(&[&a[0], &a[1]]));
    // ---- several outputs (autograd::apply_multi), through a general custom op ----
    let split = custom_ops::split_scaled();
    let s2 = split.clone();
    case!("multi_output/both_used", [r(&[3, 5], 132)], move |a| {
        let ys = split.apply_multi(&[&a[0]])?;
        Tensor::cat(&[&ys[0].flatten_all()?, &ys[1].flatten_all()?.sin()?], 0)
    });
    case!("multi_output/second_only", [r(&[3, 5], 133)], move |a| s2.apply_multi(&[&a[0]])?[1].exp());
    t
}

/// Sample custom ops for the table above.
mod custom_ops {
    use tensorforge::custom::{CpuKernel, CustomOp, Float, Input, Kernel, Output, Spec};
    use tensorforge::{Result, Shape, Tensor};

    /// Two outputs of different shapes: `2·x[:, :k]` and `x[:, k:]²` with `k = 2`.
    struct SplitScaled;
    impl Kernel for SplitScaled {
        fn outputs(&self, x: &[Spec<'_>], _: &[f64]) -> Result<Vec<Shape>> {
            let (n, d) = (x[0].dims[0], x[0].dims[1]);
            Ok(vec![Shape::from((n, 2)), Shape::from((n, d - 2))])
        }
        fn cpu<T: Float>(&self, x: &[Input<'_, T>], out: &mut [Output<'_, T>], _: &[f64]) -> Result<()> {
            let m = x[0].float()?;
            let (n, d) = (m.dims()[0], m.dims()[1]);
            let [a, b] = out else { unreachable!("two outputs declared") };
            for i in 0..n {
                for j in 0..d {
                    let v = m.at(&[i, j]);
                    if j < 2 {
                        a.as_mut_slice()[i * 2 + j] = v + v;
                    } else {
                        b.as_mut_slice()[i * (d - 2) + j - 2] = v * v;
                    }
                }
            }
            Ok(())
        }
    }

    pub fn split_scaled() -> CustomOp {
        CustomOp::from_kernel("split_scaled", SplitScaled).unwrap().backward_multi(|x, _, g| {
            let d = x[0].dims()[1];
            let right = x[0].narrow(1, 2, d - 2)?;
            Ok(vec![Some(Tensor::cat(&[&g[0].mul_scalar(2.0)?, &g[1].mul(&right)?.mul_scalar(2.0)?], 1)?)])
        })
    }

    struct Squareplus;
    impl CpuKernel for Squareplus {
        fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], s: &[f64]) {
            let b = T::from_f64(s[0]);
            for (o, &x) in out.iter_mut().zip(x[0]) {
                *o = (x + (x * x + b).sqrt()) * T::from_f64(0.5);
            }
        }
    }
    pub fn squareplus() -> CustomOp {
        CustomOp::new("squareplus", Squareplus)
            .unwrap()
            .scalars(&[0.5])
            .backward(|x, y, g| Ok(vec![Some(g.mul(y)?.div(&x[0].sqr()?.add_scalar(0.5)?.sqrt()?)?)]))
    }

    struct Hypot;
    impl CpuKernel for Hypot {
        fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], _: &[f64]) {
            for ((o, &a), &b) in out.iter_mut().zip(x[0]).zip(x[1]) {
                *o = (a * a + b * b).sqrt();
            }
        }
    }
    /// Two inputs, broadcast: the wrapper must sum the gradient back to each input's shape.
    pub fn hypot() -> CustomOp {
        CustomOp::new("hypot", Hypot)
            .unwrap()
            .backward(|x, y, g| Ok(vec![Some(g.mul(&x[0])?.div(y)?), Some(g.mul(&x[1])?.div(y)?)]))
    }
}

#[test]
fn every_table_entry_matches_finite_differences() {
    let mut failures = Vec::new();
    let cases = table();
    for c in &cases {
        if let Err(e) = gradcheck_with(&c.f, &c.inputs, &c.cfg) {
            failures.push(format!("{}: {e}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} gradchecks failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Ops with no gradcheck entry, each with the reason.
const EXEMPT: &[(&str, &str)] = &[
    ("argmax", "integer output, never recorded on the tape"),
    ("argmin", "integer output, never recorded on the tape"),
    ("to_device", "needs a second device; a CPU→CPU copy is short-circuited (CPU/CUDA parity tests cover it)"),
];

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The names every `impl Operation for T` in `src/` reports: string literals in its
/// `fn name` body, or — for the ops that delegate to their kind enum — that enum's names.
fn operation_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.extend(UnaryOp::ALL.iter().map(|o| o.name().to_string()));
    names.extend(BinaryOp::ALL.iter().map(|o| o.name().to_string()));
    names.extend(ReduceOp::ALL.iter().map(|o| o.name().to_string()));
    let mut files = Vec::new();
    rust_files(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    let mut impls = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Drop comment lines, so doc examples of `impl Operation for` don't count.
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("Operation for ") {
            let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
            let is_impl = rest[line_start..at].contains("impl");
            let after = &rest[at + "Operation for ".len()..];
            rest = after;
            if !is_impl {
                continue;
            }
            impls += 1;
            let ty: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let start = after.find("fn name(").unwrap_or_else(|| panic!("{}: `{ty}` has no fn name", f.display()));
            let body_from = &after[start + "fn name(".len()..];
            let end = body_from.find("fn ").unwrap_or(body_from.len());
            let body = &body_from[..end];
            let literals: Vec<&str> = body.split('"').skip(1).step_by(2).collect();
            if !literals.is_empty() {
                names.extend(literals.iter().map(|s| s.to_string()));
            } else if ty == "CustomOp" || ty == "One" {
                // User-defined ops report the user's name; the wrapper itself must be covered
                // by `custom/...` entries that gradcheck sample custom ops through it.
                names.insert("custom".to_string());
            } else if body.contains(".name()") {
                // Single and Joint: autograd's multi-output plumbing, named after the op they
                // wrap; the `multi_output/...` entries gradcheck it (with its `Pick` outputs).
                assert!(
                    ["Unary", "Binary", "Reduce", "Single", "Joint"].contains(&ty.as_str()),
                    "{}: `{ty}` takes its name from somewhere this test does not know; teach the test",
                    f.display()
                );
            } else {
                panic!("{}: cannot tell which name `{ty}` reports; teach the test", f.display());
            }
        }
    }
    assert!(impls >= 15, "found only {impls} Operation impls; the scan is broken");
    names
}

#[test]
fn every_operation_has_a_gradcheck_entry() {
    let names = operation_names();
    let covered: BTreeSet<&str> = table().iter().map(|c| c.name.split('/').next().unwrap()).collect();
    for (e, why) in EXEMPT {
        assert!(names.contains(*e), "exemption `{e}` ({why}) names no existing op; remove it");
        assert!(!covered.contains(e), "`{e}` is both exempt and tested; remove the exemption");
    }
    let missing: Vec<&String> =
        names.iter().filter(|n| !covered.contains(n.as_str()) && !EXEMPT.iter().any(|(e, _)| e == n)).collect();
    assert!(missing.is_empty(), "ops without a gradcheck entry in tests/gradcheck.rs: {missing:?}");
}

#[test]
fn gradcheck_catches_a_wrong_backward() {
    use tensorforge::{Gradients, Operation, apply};
    struct BadSquare;
    impl Operation for BadSquare {
        fn name(&self) -> &str {
            "bad_square"
        }
        fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
            x[0].sqr()
        }
        fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
            // Wrong on purpose: d(x²)/dx is 2x, not x.
            grads.accumulate(&x[0], g.mul(&x[0])?)
        }
    }
    let err = gradcheck_with(|a| apply(BadSquare, &[&a[0]]), &[r(&[3], 5)], &GradCheck::default()).unwrap_err();
    assert!(err.to_string().contains("worst mismatch"), "{err}");
    // And a missing gradient (the output ignores autograd entirely) is caught too.
    let err =
        gradcheck_with(|a| a[0].detach().sqr()?.add(&a[0].mul_scalar(0.0)?), &[r(&[3], 6)], &GradCheck::default());
    assert!(err.is_err());
}
