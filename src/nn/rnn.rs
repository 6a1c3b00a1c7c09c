//! Recurrent layers: Elman RNN (tanh / relu), LSTM and GRU, as single-step cells and as
//! multi-layer, optionally bidirectional sequence layers.
//!
//! The equations and the parameter layout are PyTorch's (`weight_ih_l{k}` `[G·H, I]`,
//! `weight_hh_l{k}` `[G·H, H]`, `bias_ih_l{k}`, `bias_hh_l{k}` `[G·H]`, a `_reverse` suffix
//! for the backward direction; gates stacked i, f, g, o for the LSTM and r, z, n for the GRU;
//! initialization uniform in `±1/√H`), so weights exported from PyTorch load by name.
//!
//! One matmul projects the whole input sequence (`x·W_ihᵀ + b_ih`), then each step does one
//! `h·W_hhᵀ` matmul and the elementwise gates. For the LSTM in f32/f64 the steps run as one
//! op with a fused cell kernel (`ops::rnn`); the other cells and dtypes are composed from tensor
//! ops, so autograd needs nothing recurrent-specific for them. A layer built from a [`ParameterStore`] shares
//! its weights by name with every other layer built from the same names.
//!
//! ```
//! use tensorforge::{Tensor, Device, DType, nn::{LSTM, Module, RnnOptions}};
//! let lstm = LSTM::new(3, 4, RnnOptions { num_layers: 2, ..Default::default() }, Device::Cpu)?;
//! let x = Tensor::randn(0.0, 1.0, (5, 2, 3), DType::F32, Device::Cpu)?; // [T, N, I]
//! let (y, (h, c)) = lstm.forward_with_state(&x, None)?;
//! assert_eq!(y.dims(), &[5, 2, 4]);
//! assert_eq!(h.dims(), &[2, 2, 4]);
//! assert_eq!(c.dims(), &[2, 2, 4]);
//! # Ok::<(), tensorforge::Error>(())
//! ```

use super::Module;
use crate::param::{Init, ParameterStore};
use crate::{Device, Error, Result, Shape, Tensor};

/// The activation of an Elman RNN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nonlinearity {
    /// `tanh` (PyTorch's default).
    #[default]
    Tanh,
    /// `relu`.
    Relu,
}

/// Which recurrence a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CellKind {
    Rnn(Nonlinearity),
    Lstm,
    Gru,
}

impl CellKind {
    /// Gate blocks stacked in the weight matrices.
    fn gates(self) -> usize {
        match self {
            CellKind::Rnn(_) => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }
    fn name(self) -> &'static str {
        match self {
            CellKind::Rnn(_) => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

/// Options of the sequence layers ([`RNN`], [`LSTM`], [`GRU`]); the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RnnOptions {
    /// Stacked layers; layer `k > 0` reads the outputs of layer `k − 1`.
    pub num_layers: usize,
    /// Whether the layers have `bias_ih` / `bias_hh`.
    pub bias: bool,
    /// Inputs and outputs are `[N, T, ·]` instead of `[T, N, ·]` (states stay `[L·D, N, H]`).
    pub batch_first: bool,
    /// A second pass over the reversed sequence; outputs concatenate both (`2·H` features).
    pub bidirectional: bool,
}

impl Default for RnnOptions {
    fn default() -> Self {
        RnnOptions { num_layers: 1, bias: true, batch_first: false, bidirectional: false }
    }
}

impl RnnOptions {
    fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }
}

/// The four tensors of one cell (one layer, one direction).
#[derive(Clone)]
struct CellWeights {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Option<Tensor>,
    b_hh: Option<Tensor>,
}

fn bad(op: &'static str, msg: String) -> Error {
    Error::BadShape { op, msg }
}

fn overflow(op: &'static str) -> Error {
    bad(op, "parameter sizes overflow".into())
}

impl CellWeights {
    /// Checks the shapes against `kind` and returns `(input_size, hidden_size)`.
    fn check(&self, kind: CellKind) -> Result<(usize, usize)> {
        let op = kind.name();
        let g = kind.gates();
        let (wi, wh) = (self.w_ih.dims(), self.w_hh.dims());
        let gh = (wh.len() == 2).then(|| wh[1].checked_mul(g)).flatten();
        if wh.len() != 2 || wh[1] == 0 || Some(wh[0]) != gh {
            return Err(bad(op, format!("weight_hh must be [{g}·H, H], got {wh:?}")));
        }
        let (h, gh) = (wh[1], wh[0]);
        if wi.len() != 2 || wi[0] != gh {
            return Err(bad(op, format!("weight_ih must be [{gh}, I], got {wi:?}")));
        }
        for b in [&self.b_ih, &self.b_hh].into_iter().flatten() {
            if b.dims() != [gh] {
                return Err(bad(op, format!("biases must be [{gh}], got {:?}", b.dims())));
            }
        }
        Ok((wi[1], h))
    }

    fn from_store(
        store: &mut ParameterStore,
        names: [String; 4],
        kind: CellKind,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<CellWeights> {
        let g = Shape::checked_product(kind.name(), &[kind.gates(), hidden])?;
        let k = 1.0 / (hidden.max(1) as f64).sqrt();
        let init = Init::Uniform { lo: -k, hi: k };
        let [wi, wh, bi, bh] = names;
        let w_ih = store.get_or_init(&wi, (g, input), init)?;
        let w_hh = store.get_or_init(&wh, (g, hidden), init)?;
        let (b_ih, b_hh) = if bias {
            (Some(store.get_or_init(&bi, g, init)?), Some(store.get_or_init(&bh, g, init)?))
        } else {
            (None, None)
        };
        Ok(CellWeights { w_ih, w_hh, b_ih, b_hh })
    }

    fn params(&self, suffix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("weight_ih{suffix}"), self.w_ih.clone()));
        out.push((format!("weight_hh{suffix}"), self.w_hh.clone()));
        if let Some(b) = &self.b_ih {
            out.push((format!("bias_ih{suffix}"), b.clone()));
        }
        if let Some(b) = &self.b_hh {
            out.push((format!("bias_hh{suffix}"), b.clone()));
        }
    }

    /// `x·W_ihᵀ + b_ih` for `x` of shape `[…, I]`.
    fn input_projection(&self, x: &Tensor, kind: CellKind) -> Result<Tensor> {
        let y = x.matmul(&self.w_ih.t()?)?;
        match self.projection_bias(kind)? {
            Some(b) => y.add(&b),
            None => Ok(y),
        }
    }

    /// The bias added with the input projection: RNN and LSTM add both biases to one sum, so
    /// b_hh joins here, once per sequence instead of once per step. GRU's b_hn sits inside
    /// r ⊙ (W_hn·h + b_hn): it stays out.
    fn projection_bias(&self, kind: CellKind) -> Result<Option<Tensor>> {
        Ok(match (&self.b_ih, &self.b_hh) {
            (Some(bi), Some(bh)) if !matches!(kind, CellKind::Gru) => Some(bi.add(bh)?),
            (bi, _) => bi.clone(),
        })
    }

    /// One step from the projected input `xp` `[N, G·H]` and the state `h` (and `c`).
    fn step(&self, kind: CellKind, xp: &Tensor, h: &Tensor, c: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let mut hh = h.matmul(&self.w_hh.t()?)?;
        // For RNN and LSTM, `xp` holds b_hh already (see `input_projection`).
        if let Some(b) = &self.b_hh
            && matches!(kind, CellKind::Gru)
        {
            hh = hh.add(b)?;
        }
        let hs = h.dims()[1];
        match kind {
            CellKind::Rnn(act) => {
                let pre = xp.add(&hh)?;
                let h = match act {
                    Nonlinearity::Tanh => pre.tanh()?,
                    Nonlinearity::Relu => pre.relu()?,
                };
                Ok((h, None))
            }
            CellKind::Lstm => {
                let c = c.ok_or_else(|| Error::msg("LSTM step without a cell state"))?;
                let gates = xp.add(&hh)?;
                // One sigmoid over all four gates (g's share is unused) costs less than three
                // on slices: a small step is dominated by the number of ops, not their size.
                let sig = gates.sigmoid()?;
                let i = sig.narrow(1, 0, hs)?;
                let f = sig.narrow(1, hs, hs)?;
                let g = gates.narrow(1, 2 * hs, hs)?.tanh()?;
                let o = sig.narrow(1, 3 * hs, hs)?;
                let c = f.mul(c)?.add(&i.mul(&g)?)?;
                let h = o.mul(&c.tanh()?)?;
                Ok((h, Some(c)))
            }
            CellKind::Gru => {
                // r and z see the sum of both projections; n sees r ⊙ (W_hn·h + b_hn), which is
                // why the hidden projection is kept apart from the input one.
                let rz = xp.narrow(1, 0, 2 * hs)?.add(&hh.narrow(1, 0, 2 * hs)?)?.sigmoid()?;
                let r = rz.narrow(1, 0, hs)?;
                let z = rz.narrow(1, hs, hs)?;
                let n = xp.narrow(1, 2 * hs, hs)?.add(&r.mul(&hh.narrow(1, 2 * hs, hs)?)?)?.tanh()?;
                // (1 − z)·n + z·h = n + z·(h − n)
                let h = n.add(&z.mul(&h.sub(&n)?)?)?;
                Ok((h, None))
            }
        }
    }
}

fn zeros_state(like: &Tensor, n: usize, h: usize) -> Result<Tensor> {
    Tensor::zeros((n, h), like.dtype(), like.device())
}

/// The stack of layers behind [`RNN`], [`LSTM`] and [`GRU`].
#[derive(Clone)]
struct Stack {
    kind: CellKind,
    opts: RnnOptions,
    input_size: usize,
    hidden_size: usize,
    /// Index `layer · directions + direction`.
    cells: Vec<CellWeights>,
}

impl Stack {
    fn names(prefix: &str, layer: usize, dir: usize) -> [String; 4] {
        let sfx = format!("_l{layer}{}", if dir == 1 { "_reverse" } else { "" });
        let p = if prefix.is_empty() { String::new() } else { format!("{prefix}.") };
        ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|n| format!("{p}{n}{sfx}"))
    }

    fn from_store(
        kind: CellKind,
        store: &mut ParameterStore,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
        opts: RnnOptions,
    ) -> Result<Stack> {
        if opts.num_layers == 0 || hidden_size == 0 {
            return Err(bad(kind.name(), "needs at least one layer and a hidden size > 0".into()));
        }
        let d = opts.directions();
        // Every parameter is counted before the first is made: a layer count or size from a
        // config that cannot fit is an `Err` now, not a loop that fills memory first.
        let (op, gh) = (kind.name(), Shape::checked_product(kind.name(), &[kind.gates(), hidden_size])?);
        let deep_in = Shape::checked_product(op, &[d, hidden_size])?;
        let per_layer = |input: usize| -> Result<usize> {
            let w = Shape::checked_product(op, &[gh, input.checked_add(hidden_size).ok_or_else(|| overflow(op))?])?;
            w.checked_add(if opts.bias { 2 * gh } else { 0 }).ok_or_else(|| overflow(op))
        };
        let first = Shape::checked_product(op, &[d, per_layer(input_size)?])?;
        let rest = Shape::checked_product(op, &[opts.num_layers - 1, d, per_layer(deep_in)?])?;
        let total = first.checked_add(rest).ok_or_else(|| overflow(op))?;
        crate::backend::cpu::pool::ensure_fits(op, Shape::checked_product(op, &[total, 4])?)?;
        let mut cells = Vec::new();
        for l in 0..opts.num_layers {
            let in_l = if l == 0 { input_size } else { deep_in };
            for dir in 0..d {
                let names = Stack::names(prefix, l, dir);
                cells.push(CellWeights::from_store(store, names, kind, in_l, hidden_size, opts.bias)?);
            }
        }
        Ok(Stack { kind, opts, input_size, hidden_size, cells })
    }

    fn from_tensors(kind: CellKind, opts: RnnOptions, params: &[Tensor]) -> Result<Stack> {
        let per = if opts.bias { 4 } else { 2 };
        let d = opts.directions();
        let want = Shape::checked_product(kind.name(), &[opts.num_layers, d, per])?;
        if opts.num_layers == 0 || params.len() != want {
            return Err(bad(
                kind.name(),
                format!("expected {want} parameter tensors for {opts:?}, got {}", params.len()),
            ));
        }
        let mut cells = Vec::new();
        let (mut input_size, mut hidden_size) = (0, 0);
        for (i, p) in params.chunks(per).enumerate() {
            let c = CellWeights {
                w_ih: p[0].clone(),
                w_hh: p[1].clone(),
                b_ih: opts.bias.then(|| p[2].clone()),
                b_hh: opts.bias.then(|| p[3].clone()),
            };
            let (inp, h) = c.check(kind)?;
            if i == 0 {
                (input_size, hidden_size) = (inp, h);
            }
            let want_in = if i < d { input_size } else { Shape::checked_product(kind.name(), &[d, hidden_size])? };
            if h != hidden_size || inp != want_in {
                return Err(bad(kind.name(), format!("cell {i} is {inp}→{h}, expected {want_in}→{hidden_size}")));
            }
            cells.push(c);
        }
        Ok(Stack { kind, opts, input_size, hidden_size, cells })
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let d = self.opts.directions();
        for (i, c) in self.cells.iter().enumerate() {
            let sfx = format!("_l{}{}", i / d, if i % d == 1 { "_reverse" } else { "" });
            c.params(&sfx, &mut out);
        }
        out
    }

    /// Checks an initial state against `[L·D, N, H]`.
    fn check_state(&self, s: &Tensor, n: usize, what: &str) -> Result<()> {
        let want = [self.cells.len(), n, self.hidden_size];
        if s.dims() != want {
            return Err(bad(self.kind.name(), format!("{what} must be {want:?}, got {:?}", s.dims())));
        }
        Ok(())
    }

    /// Runs the stack over `x`; returns the outputs of the last layer and the final `h` (and
    /// `c`), each `[L·D, N, H]`.
    fn run(&self, x: &Tensor, h0: Option<&Tensor>, c0: Option<&Tensor>) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let op = self.kind.name();
        if x.rank() != 3 || x.dims()[2] != self.input_size {
            let order = if self.opts.batch_first { "[N, T, I]" } else { "[T, N, I]" };
            return Err(bad(op, format!("input must be {order} with I = {}, got {:?}", self.input_size, x.dims())));
        }
        let x = if self.opts.batch_first { x.transpose(0, 1)? } else { x.clone() };
        let (t_len, n) = (x.dims()[0], x.dims()[1]);
        if t_len == 0 {
            return Err(bad(op, "empty sequence".into()));
        }
        let hs = self.hidden_size;
        let is_lstm = self.kind == CellKind::Lstm;
        for (s, what) in [(h0, "h0"), (c0, "c0")] {
            if let Some(s) = s {
                self.check_state(s, n, what)?;
            }
        }
        let d = self.opts.directions();
        let mut layer_in = x;
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        for l in 0..self.opts.num_layers {
            let mut outs = Vec::with_capacity(d);
            for dir in 0..d {
                let idx = l * d + dir;
                let cell = &self.cells[idx];
                let mut h = match h0 {
                    Some(s) => s.narrow(0, idx, 1)?.squeeze(0)?,
                    None => zeros_state(&layer_in, n, hs)?,
                };
                let mut c = match (is_lstm, c0) {
                    (false, _) => None,
                    (true, Some(s)) => Some(s.narrow(0, idx, 1)?.squeeze(0)?),
                    (true, None) => Some(zeros_state(&layer_in, n, hs)?),
                };
                if let Some(c0) = &c
                    && crate::ops::rnn::lstm_layer_supports(layer_in.dtype())
                {
                    // The fused layer: the input projection, then one GEMM and one cell kernel
                    // per step, forward and back (under autocast its products are lowered).
                    let bias = cell.projection_bias(self.kind)?;
                    let (y, h_t, c_t) = crate::ops::rnn::lstm_layer(
                        &layer_in,
                        &cell.w_ih,
                        bias.as_ref(),
                        &cell.w_hh,
                        &h,
                        c0,
                        dir == 1,
                    )?;
                    outs.push(y);
                    h_n.push(h_t);
                    c_n.push(c_t);
                    continue;
                }
                // One GEMM projects every step of the sequence at once.
                let flat = layer_in.reshape((t_len * n, layer_in.dims()[2]))?;
                let xp = cell.input_projection(&flat, self.kind)?.reshape((t_len, n, self.kind.gates() * hs))?;
                let mut hs_t: Vec<Option<Tensor>> = vec![None; t_len];
                for k in 0..t_len {
                    let t = if dir == 1 { t_len - 1 - k } else { k };
                    let xp_t = xp.narrow(0, t, 1)?.squeeze(0)?;
                    let (hn, cn) = cell.step(self.kind, &xp_t, &h, c.as_ref())?;
                    hs_t[t] = Some(hn.clone());
                    h = hn;
                    c = cn;
                }
                let steps: Vec<Tensor> = hs_t.into_iter().map(|h| h.expect("every step ran")).collect();
                outs.push(Tensor::stack(&steps.iter().collect::<Vec<_>>(), 0)?);
                h_n.push(h);
                if let Some(c) = c {
                    c_n.push(c);
                }
            }
            layer_in = if d == 1 { outs.pop().expect("one direction") } else { Tensor::cat(&[&outs[0], &outs[1]], 2)? };
        }
        let out = if self.opts.batch_first { layer_in.transpose(0, 1)? } else { layer_in };
        let h_n = Tensor::stack(&h_n.iter().collect::<Vec<_>>(), 0)?;
        let c_n = if is_lstm { Some(Tensor::stack(&c_n.iter().collect::<Vec<_>>(), 0)?) } else { None };
        Ok((out, h_n, c_n))
    }
}

macro_rules! seq_layer_common {
    ($ty:ident) => {
        impl $ty {
            /// Features per input step.
            pub fn input_size(&self) -> usize {
                self.0.input_size
            }
            /// Features of the hidden state (per direction).
            pub fn hidden_size(&self) -> usize {
                self.0.hidden_size
            }
            /// The options the layer was built with.
            pub fn options(&self) -> RnnOptions {
                self.0.opts
            }
        }
    };
}

/// `new` / `from_store` / `from_tensors` for the layers whose cell kind has no options.
macro_rules! gated_layer_constructors {
    ($ty:ident, $kind:ident) => {
        impl $ty {
            /// A fresh f32 layer, initialized like PyTorch from the global seeded stream.
            pub fn new(input_size: usize, hidden_size: usize, opts: RnnOptions, device: Device) -> Result<$ty> {
                let mut store = ParameterStore::new(device);
                $ty::from_store(&mut store, "", input_size, hidden_size, opts)
            }
            /// A layer whose weights live in `store` under `prefix` (see [`RNN::from_store`]).
            pub fn from_store(
                store: &mut ParameterStore,
                prefix: &str,
                input_size: usize,
                hidden_size: usize,
                opts: RnnOptions,
            ) -> Result<$ty> {
                Ok($ty(Stack::from_store(CellKind::$kind, store, prefix, input_size, hidden_size, opts)?))
            }
            /// A layer over given tensors (see [`RNN::from_tensors`]).
            pub fn from_tensors(opts: RnnOptions, params: &[Tensor]) -> Result<$ty> {
                Ok($ty(Stack::from_tensors(CellKind::$kind, opts, params)?))
            }
        }
    };
}

/// A multi-layer Elman RNN: `h_t = act(W_ih·x_t + b_ih + W_hh·h_{t−1} + b_hh)`.
///
/// Input `[T, N, I]` (or `[N, T, I]` with `batch_first`); output `[T, N, D·H]` (the last
/// layer's `h_t` for every step) and the final state `[L·D, N, H]`.
#[derive(Clone)]
pub struct RNN(Stack);
seq_layer_common!(RNN);

impl RNN {
    /// A fresh f32 layer, initialized like PyTorch from the global seeded stream.
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
        opts: RnnOptions,
        device: Device,
    ) -> Result<RNN> {
        let mut store = ParameterStore::new(device);
        RNN::from_store(&mut store, "", input_size, hidden_size, nonlinearity, opts)
    }
    /// A layer whose weights live in `store` as `{prefix}.weight_ih_l0`, … (created on first
    /// use, shared by every layer built from the same names).
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
        opts: RnnOptions,
    ) -> Result<RNN> {
        Ok(RNN(Stack::from_store(CellKind::Rnn(nonlinearity), store, prefix, input_size, hidden_size, opts)?))
    }
    /// A layer over given tensors in [`Module::named_parameters`] order (per layer, per
    /// direction: `weight_ih`, `weight_hh`, then `bias_ih`, `bias_hh` when `opts.bias`).
    pub fn from_tensors(nonlinearity: Nonlinearity, opts: RnnOptions, params: &[Tensor]) -> Result<RNN> {
        Ok(RNN(Stack::from_tensors(CellKind::Rnn(nonlinearity), opts, params)?))
    }
    /// Runs the sequence from `h0` (`[L·D, N, H]`, zeros when `None`); returns the outputs
    /// and the final state `h_n`.
    pub fn forward_with_state(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (y, h, _) = self.0.run(x, h0, None)?;
        Ok((y, h))
    }
}

/// A multi-layer LSTM (PyTorch's equations, gates i, f, g, o):
/// `c_t = f ⊙ c_{t−1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`.
#[derive(Clone)]
pub struct LSTM(Stack);
seq_layer_common!(LSTM);
gated_layer_constructors!(LSTM, Lstm);

impl LSTM {
    /// Runs the sequence from `(h0, c0)` (each `[L·D, N, H]`, zeros when `None`); returns the
    /// outputs and the final `(h_n, c_n)`.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (y, h, c) = self.0.run(x, state.map(|s| s.0), state.map(|s| s.1))?;
        Ok((y, (h, c.expect("an LSTM has a cell state"))))
    }
}

/// A multi-layer GRU (PyTorch's equations, gates r, z, n):
/// `n = tanh(W_in·x + b_in + r ⊙ (W_hn·h + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`.
#[derive(Clone)]
pub struct GRU(Stack);
seq_layer_common!(GRU);
gated_layer_constructors!(GRU, Gru);

impl GRU {
    /// Runs the sequence from `h0` (zeros when `None`); returns the outputs and `h_n`.
    pub fn forward_with_state(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (y, h, _) = self.0.run(x, h0, None)?;
        Ok((y, h))
    }
}

macro_rules! seq_module {
    ($ty:ident) => {
        impl Module for $ty {
            /// The outputs for every step, from zero initial states.
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                Ok(self.0.run(x, None, None)?.0)
            }
            fn named_parameters(&self) -> Vec<(String, Tensor)> {
                self.0.named_parameters()
            }
        }
    };
}
seq_module!(RNN);
seq_module!(LSTM);
seq_module!(GRU);

/// One cell: weights plus the step, for the single-step types.
#[derive(Clone)]
struct Cell {
    kind: CellKind,
    w: CellWeights,
    input_size: usize,
    hidden_size: usize,
}

impl Cell {
    fn from_store(
        kind: CellKind,
        store: &mut ParameterStore,
        prefix: &str,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Cell> {
        let p = if prefix.is_empty() { String::new() } else { format!("{prefix}.") };
        let names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|n| format!("{p}{n}"));
        let w = CellWeights::from_store(store, names, kind, input, hidden, bias)?;
        Ok(Cell { kind, w, input_size: input, hidden_size: hidden })
    }
    fn from_tensors(
        kind: CellKind,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Option<Tensor>,
        b_hh: Option<Tensor>,
    ) -> Result<Cell> {
        let w = CellWeights { w_ih, w_hh, b_ih, b_hh };
        let (input_size, hidden_size) = w.check(kind)?;
        Ok(Cell { kind, w, input_size, hidden_size })
    }
    /// Accepts `[N, I]` or an unbatched `[I]` (states then `[H]`, as PyTorch).
    fn step(&self, x: &Tensor, h: Option<&Tensor>, c: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let op = self.kind.name();
        let unbatched = x.rank() == 1;
        let x = if unbatched { x.unsqueeze(0)? } else { x.clone() };
        if x.rank() != 2 || x.dims()[1] != self.input_size {
            return Err(bad(
                op,
                format!("cell input must be [N, {}] or [{}], got {:?}", self.input_size, self.input_size, x.dims()),
            ));
        }
        let n = x.dims()[0];
        let state = |s: Option<&Tensor>| -> Result<Tensor> {
            match s {
                None => zeros_state(&x, n, self.hidden_size),
                Some(s) => {
                    let s = if unbatched { s.unsqueeze(0)? } else { s.clone() };
                    if s.dims() != [n, self.hidden_size] {
                        return Err(bad(
                            op,
                            format!("cell state must be [{n}, {}], got {:?}", self.hidden_size, s.dims()),
                        ));
                    }
                    Ok(s)
                }
            }
        };
        let h = state(h)?;
        let c = if self.kind == CellKind::Lstm { Some(state(c)?) } else { None };
        let xp = self.w.input_projection(&x, self.kind)?;
        let (h, c) = self.w.step(self.kind, &xp, &h, c.as_ref())?;
        let squeeze = |t: Tensor| if unbatched { t.squeeze(0) } else { Ok(t) };
        Ok((squeeze(h)?, c.map(squeeze).transpose()?))
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.w.params("", &mut out);
        out
    }
}

macro_rules! cell_common {
    ($ty:ident) => {
        impl $ty {
            /// Features of the input.
            pub fn input_size(&self) -> usize {
                self.0.input_size
            }
            /// Features of the hidden state.
            pub fn hidden_size(&self) -> usize {
                self.0.hidden_size
            }
        }
        impl Module for $ty {
            /// One step from a zero state; returns the new `h`.
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                Ok(self.0.step(x, None, None)?.0)
            }
            fn named_parameters(&self) -> Vec<(String, Tensor)> {
                self.0.named_parameters()
            }
        }
    };
}

/// One Elman RNN step: `h' = act(W_ih·x + b_ih + W_hh·h + b_hh)`. Parameters `weight_ih`
/// `[H, I]`, `weight_hh` `[H, H]`, `bias_ih`, `bias_hh` `[H]`.
#[derive(Clone)]
pub struct RNNCell(Cell);
cell_common!(RNNCell);

impl RNNCell {
    /// A fresh f32 cell with biases, initialized like PyTorch.
    pub fn new(input_size: usize, hidden_size: usize, nonlinearity: Nonlinearity, device: Device) -> Result<RNNCell> {
        RNNCell::from_store(&mut ParameterStore::new(device), "", input_size, hidden_size, nonlinearity)
    }
    /// A cell whose weights live in `store` as `{prefix}.weight_ih`, … — the way to share one
    /// cell's weights across hand-unrolled time steps.
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
    ) -> Result<RNNCell> {
        Ok(RNNCell(Cell::from_store(CellKind::Rnn(nonlinearity), store, prefix, input_size, hidden_size, true)?))
    }
    /// A cell over given tensors (`weight_ih` `[H, I]`, `weight_hh` `[H, H]`, biases `[H]`).
    pub fn from_tensors(
        nonlinearity: Nonlinearity,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Option<Tensor>,
        bias_hh: Option<Tensor>,
    ) -> Result<RNNCell> {
        Ok(RNNCell(Cell::from_tensors(CellKind::Rnn(nonlinearity), weight_ih, weight_hh, bias_ih, bias_hh)?))
    }
    /// One step from `h` (`[N, H]`, zeros when `None`); returns `h'`.
    pub fn forward_with_state(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.0.step(x, h, None)?.0)
    }
}

/// One LSTM step; parameters as [`RNNCell`] with `4·H` rows (gates i, f, g, o).
#[derive(Clone)]
pub struct LSTMCell(Cell);
cell_common!(LSTMCell);

impl LSTMCell {
    /// A fresh f32 cell with biases, initialized like PyTorch.
    pub fn new(input_size: usize, hidden_size: usize, device: Device) -> Result<LSTMCell> {
        LSTMCell::from_store(&mut ParameterStore::new(device), "", input_size, hidden_size)
    }
    /// A cell whose weights live in `store` under `prefix` (see [`RNNCell::from_store`]).
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<LSTMCell> {
        Ok(LSTMCell(Cell::from_store(CellKind::Lstm, store, prefix, input_size, hidden_size, true)?))
    }
    /// A cell over given tensors (`weight_ih` `[4H, I]`, `weight_hh` `[4H, H]`, biases `[4H]`).
    pub fn from_tensors(
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Option<Tensor>,
        bias_hh: Option<Tensor>,
    ) -> Result<LSTMCell> {
        Ok(LSTMCell(Cell::from_tensors(CellKind::Lstm, weight_ih, weight_hh, bias_ih, bias_hh)?))
    }
    /// One step from `(h, c)` (zeros when `None`); returns `(h', c')`.
    pub fn forward_with_state(&self, x: &Tensor, state: Option<(&Tensor, &Tensor)>) -> Result<(Tensor, Tensor)> {
        let (h, c) = self.0.step(x, state.map(|s| s.0), state.map(|s| s.1))?;
        Ok((h, c.expect("an LSTM cell has a cell state")))
    }
}

/// One GRU step; parameters as [`RNNCell`] with `3·H` rows (gates r, z, n).
#[derive(Clone)]
pub struct GRUCell(Cell);
cell_common!(GRUCell);

impl GRUCell {
    /// A fresh f32 cell with biases, initialized like PyTorch.
    pub fn new(input_size: usize, hidden_size: usize, device: Device) -> Result<GRUCell> {
        GRUCell::from_store(&mut ParameterStore::new(device), "", input_size, hidden_size)
    }
    /// A cell whose weights live in `store` under `prefix` (see [`RNNCell::from_store`]).
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<GRUCell> {
        Ok(GRUCell(Cell::from_store(CellKind::Gru, store, prefix, input_size, hidden_size, true)?))
    }
    /// A cell over given tensors (`weight_ih` `[3H, I]`, `weight_hh` `[3H, H]`, biases `[3H]`).
    pub fn from_tensors(
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Option<Tensor>,
        bias_hh: Option<Tensor>,
    ) -> Result<GRUCell> {
        Ok(GRUCell(Cell::from_tensors(CellKind::Gru, weight_ih, weight_hh, bias_ih, bias_hh)?))
    }
    /// One step from `h` (zeros when `None`); returns `h'`.
    pub fn forward_with_state(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.0.step(x, h, None)?.0)
    }
}
