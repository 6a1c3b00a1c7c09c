//! A whole LSTM layer pass (one direction) as one op: the input projection of every step as
//! one GEMM, then per step one `h·W_hhᵀ` GEMM and one fused cell kernel (`lstm_cell`); the
//! backward walks the steps in reverse with the cell's adjoint kernel and one `d_gates·W_hh`
//! GEMM per step, then forms the weights' gradients and the input's as one GEMM each over
//! all steps. Composed from per-step tensor ops, the same layer records about fifteen tape
//! nodes per step, each with its own buffers and dispatch.

use super::same_device;
use crate::autograd::{Gradients, MultiOperation, apply_multi, no_grad};
use crate::{DType, Device, Error, Result, Tensor};
use std::sync::Mutex;

/// What the forward keeps for the backward of one block of batch rows, in step order (`k`,
/// not time).
struct Saved {
    /// The block's inputs, `[T·rows, I]` in time order.
    x: Tensor,
    /// The state before step `k` and, last, after the final step: `T + 1` of each.
    h: Vec<Tensor>,
    c: Vec<Tensor>,
    /// σ(i), σ(f), tanh(g), σ(o) of step `k`, `[rows, 4H]`.
    acts: Vec<Tensor>,
}

/// One block's share of the gradients: its rows' `dh0`, `dc0` and `dx` (`[T, rows, I]`), and
/// its partial sums of the weights' and the bias's (absent where not tracked).
struct BlockGrads {
    dh0: Tensor,
    dc0: Tensor,
    dx: Option<Tensor>,
    dw_ih: Option<Tensor>,
    dw_hh: Option<Tensor>,
    db: Option<Tensor>,
}

/// Inputs `x [T, N, I]`, `w_ih [4H, I]`, `w_hh [4H, H]`, `h0`, `c0 [N, H]` and optionally the
/// bias `b [4H]` (`b_ih + b_hh`); outputs `y [T, N, H]` (in time order), `h_T`, `c_T`.
///
/// The batch rows of an LSTM never meet through the recurrence, so the layer runs as blocks of
/// rows (`blocks`, first row and count), one per thread on the CPU, each through every step on
/// its own thread: no fork or join per step, where splitting each step's small kernels
/// would pay one for each. Each block projects its own inputs and, backward, forms its share
/// of the weights' gradients from the gate gradients it made, so those never cross threads.
struct LstmLayer {
    reverse: bool,
    blocks: Vec<(usize, usize)>,
    saved: Mutex<Option<Vec<Saved>>>,
}

/// Rows of a block below which the rows are not split across threads: each step's product
/// then is large enough to split by itself.
const MIN_BLOCK_ROWS: usize = 8;

/// The blocks of batch rows for `n` rows on `device`: one per thread of the CPU pool with at
/// least [`MIN_BLOCK_ROWS`] each, else one.
fn row_blocks(device: Device, n: usize) -> Vec<(usize, usize)> {
    let threads = if device == Device::Cpu { rayon::current_num_threads() } else { 1 };
    let count = threads.min(n / MIN_BLOCK_ROWS).max(1);
    (0..count).map(|b| (b * n / count, (b + 1) * n / count - b * n / count)).collect()
}

impl LstmLayer {
    /// The time index of step `k` of `t_len`.
    fn time(&self, k: usize, t_len: usize) -> usize {
        if self.reverse { t_len - 1 - k } else { k }
    }

    /// `[T·N, X]`: `piece(t, b)`, each `[rows of block b, X]`, in time order and, within a
    /// time, block order, which is row order. One copy, with no per-step reshapes.
    fn gather(&self, t_len: usize, piece: impl Fn(usize, usize) -> Tensor) -> Result<Tensor> {
        let pieces: Vec<Tensor> =
            (0..t_len).flat_map(|t| (0..self.blocks.len()).map(move |b| (t, b))).map(|(t, b)| piece(t, b)).collect();
        Tensor::cat(&pieces.iter().collect::<Vec<_>>(), 0)
    }
}

fn cell(xg: &Tensor, hg: &Tensor, c: &Tensor) -> Result<[Tensor; 3]> {
    let (n, h) = (c.dims()[0], c.dims()[1]);
    let outs = xg.storage().lstm_cell(xg.layout(), &hg.storage(), hg.layout(), &c.storage(), c.layout())?;
    let [a, b, acts] = outs;
    Ok([
        Tensor::from_contiguous(a, (n, h)),
        Tensor::from_contiguous(b, (n, h)),
        Tensor::from_contiguous(acts, (n, 4 * h)),
    ])
}

fn cell_backward(acts: &Tensor, rest: [&Tensor; 5]) -> Result<[Tensor; 2]> {
    let (n, h4) = (acts.dims()[0], acts.dims()[1]);
    let guards = rest.map(|t| t.storage());
    let [dg, dc] =
        acts.storage().lstm_cell_backward(acts.layout(), std::array::from_fn(|i| (&*guards[i], rest[i].layout())))?;
    Ok([Tensor::from_contiguous(dg, (n, h4)), Tensor::from_contiguous(dc, (n, h4 / 4))])
}

/// Runs `f(b)` for each of `blocks` blocks of rows with recording off and the caller's
/// autocast setting. On the CPU they run on the pool (see `backend::cpu::on_pool`): several
/// blocks each on a thread of their own, alone; a single block's small kernels split across
/// the cores instead.
fn for_blocks<R: Send>(device: Device, blocks: usize, f: impl Fn(usize) -> Result<R> + Sync) -> Result<Vec<R>> {
    let cast = crate::amp::autocast_dtype();
    let run = |b: usize| {
        no_grad(|| match cast {
            Some(d) => crate::amp::autocast(d, || f(b)),
            None => f(b),
        })
    };
    if device != Device::Cpu {
        return (0..blocks).map(run).collect();
    }
    crate::backend::cpu::on_pool(|| match blocks {
        1 => run(0).map(|r| vec![r]),
        _ => crate::backend::cpu::parallel::run_alone(blocks, run).into_iter().collect(),
    })
}

impl MultiOperation for LstmLayer {
    fn name(&self) -> &str {
        "lstm"
    }

    fn forward(&self, x: &[&Tensor]) -> Result<Vec<Tensor>> {
        let (xs, w_ih, w_hh, bias) = (x[0], x[1], x[2], x.get(5).copied());
        let (t_len, n, inputs) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
        // W_hhᵀ copied once per sequence: the GEMM then reads it in place at every step instead
        // of packing the transposed view again.
        let wt = w_hh.t()?.contiguous()?;
        let parts = for_blocks(xs.device(), self.blocks.len(), |b| {
            let (r0, rows) = self.blocks[b];
            // The block's inputs time-major, `[T·rows, I]`, and their projection `[T·rows, 4H]`
            // (one GEMM on this thread): a step's rows are then one narrow.
            let xb = xs.narrow(1, r0, rows)?.contiguous()?.reshape((t_len * rows, inputs))?;
            let mut xg = xb.matmul(&w_ih.t()?)?;
            if let Some(bias) = bias {
                xg = xg.add(bias)?;
            }
            let (mut h, mut c) = (x[3].narrow(0, r0, rows)?, x[4].narrow(0, r0, rows)?);
            let mut saved = Saved { x: xb, h: vec![h.clone()], c: vec![c.clone()], acts: Vec::with_capacity(t_len) };
            for k in 0..t_len {
                let xg_t = xg.narrow(0, self.time(k, t_len) * rows, rows)?;
                let [h2, c2, acts] = cell(&xg_t, &h.matmul(&wt)?, &c)?;
                (h, c) = (h2, c2);
                saved.h.push(h.clone());
                saved.c.push(c.clone());
                saved.acts.push(acts);
            }
            Ok(saved)
        })?;
        let last =
            |s: fn(&Saved) -> &Vec<Tensor>| Tensor::cat(&parts.iter().map(|p| &s(p)[t_len]).collect::<Vec<_>>(), 0);
        let (h, c) = (last(|p| &p.h)?, last(|p| &p.c)?);
        let hidden = w_hh.dims()[1];
        let y = self.gather(t_len, |t, b| parts[b].h[self.time(t, t_len) + 1].clone())?;
        let y = y.reshape((t_len, n, hidden))?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(parts);
        Ok(vec![y, h, c])
    }

    fn backward(&self, x: &[Tensor], _: &[Tensor], g: &[Option<Tensor>], grads: &mut Gradients) -> Result<()> {
        // Kept (not taken), so a graph can be walked backward more than once.
        let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let parts = guard.as_ref().ok_or_else(|| Error::Autograd("lstm: backward before forward".into()))?;
        let (xs, w_ih, w_hh, h0, c0, bias) = (&x[0], &x[1], &x[2], &x[3], &x[4], x.get(5));
        let (t_len, n, inputs) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
        let hidden = w_hh.dims()[1];
        // A contiguous gradient of y as `[T·N, H]` rows, one narrow per step. A strided one
        // (y viewed batch-first) is read through its views instead: each block's cell kernel
        // copies its own few rows, on its thread, where a reshape would copy all of it first.
        let gy_rows = match &g[0] {
            Some(gy) if gy.is_contiguous() => Some(gy.reshape((t_len * n, hidden))?),
            _ => None,
        };
        let blocks = for_blocks(xs.device(), self.blocks.len(), |b| {
            let (r0, rows) = self.blocks[b];
            let saved = &parts[b];
            let zeros = Tensor::zeros((rows, hidden), h0.dtype(), h0.device())?;
            let state = |g: &Option<Tensor>| g.as_ref().map_or(Ok(zeros.clone()), |g| g.narrow(0, r0, rows));
            let (mut dh, mut dc) = (state(&g[1])?, state(&g[2])?);
            // d_gates in step order from the last step back, turned into time order (the order
            // of the block's projected rows) below.
            let mut dgates = Vec::with_capacity(t_len);
            for k in (0..t_len).rev() {
                let t = self.time(k, t_len);
                let dy = match (&gy_rows, &g[0]) {
                    (Some(rows_of), _) => rows_of.narrow(0, t * n + r0, rows)?,
                    (None, Some(gy)) => gy.narrow(0, t, 1)?.squeeze(0)?.narrow(0, r0, rows)?,
                    (None, None) => zeros.clone(),
                };
                let [dg, dcp] = cell_backward(&saved.acts[k], [&saved.c[k], &saved.c[k + 1], &dh, &dy, &dc])?;
                dh = dg.matmul(w_hh)?;
                dc = dcp;
                dgates.push(dg);
            }
            // Steps k = T−1 … 0 ran at times T−1 … 0 forward, at 0 … T−1 in reverse.
            if !self.reverse {
                dgates.reverse();
            }
            let dxg = Tensor::cat(&dgates.iter().collect::<Vec<_>>(), 0)?;
            // dW_hh = Σ_t d_gates_tᵀ · h_(t−1): the states before each time's step, in time order.
            let dw_hh = if w_hh.tracks_grad() {
                let hp: Vec<&Tensor> = (0..t_len).map(|t| &saved.h[self.time(t, t_len)]).collect();
                Some(dxg.t()?.matmul(&Tensor::cat(&hp, 0)?)?)
            } else {
                None
            };
            Ok(BlockGrads {
                dh0: dh,
                dc0: dc,
                dx: xs.tracks_grad().then(|| dxg.matmul(w_ih)?.reshape((t_len, rows, inputs))).transpose()?,
                dw_ih: w_ih.tracks_grad().then(|| dxg.t()?.matmul(&saved.x)).transpose()?,
                dw_hh,
                db: bias.filter(|b| b.tracks_grad()).map(|_| dxg.sum(0)).transpose()?,
            })
        })?;
        // The blocks' partial sums, added in block order.
        let total = |part: fn(&BlockGrads) -> &Option<Tensor>| -> Result<Option<Tensor>> {
            let mut parts = blocks.iter().filter_map(|b| part(b).as_ref());
            let Some(first) = parts.next() else { return Ok(None) };
            parts.try_fold(first.clone(), |acc, p| acc.add(p)).map(Some)
        };
        let pieces = |part: fn(&BlockGrads) -> Option<&Tensor>, axis| {
            Tensor::cat(&blocks.iter().filter_map(part).collect::<Vec<_>>(), axis)
        };
        if let Some(dw) = total(|b| &b.dw_ih)? {
            grads.accumulate(w_ih, dw)?;
        }
        if let Some(dw) = total(|b| &b.dw_hh)? {
            grads.accumulate(w_hh, dw)?;
        }
        if let (Some(bias), Some(db)) = (bias, total(|b| &b.db)?) {
            grads.accumulate(bias, db)?;
        }
        if xs.tracks_grad() {
            grads.accumulate(xs, pieces(|b| b.dx.as_ref(), 1)?)?;
        }
        if h0.tracks_grad() {
            grads.accumulate(h0, pieces(|b| Some(&b.dh0), 0)?)?;
        }
        if c0.tracks_grad() {
            grads.accumulate(c0, pieces(|b| Some(&b.dc0), 0)?)?;
        }
        Ok(())
    }
}

/// Whether [`lstm_layer`] runs on tensors of this dtype (the fused kernels are f32 and f64;
/// the half types take the composed path).
pub(crate) fn lstm_layer_supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

/// One direction of an LSTM layer over a sequence: `x [T, N, I]`, `w_ih [4H, I]`, `w_hh [4H, H]`,
/// `bias [4H]` (`b_ih + b_hh`, if any), `h0`/`c0` `[N, H]`; returns `(y [T, N, H], h_T, c_T)`,
/// with `reverse` running from the last step to the first (`y` stays in time order).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lstm_layer(
    x: &Tensor,
    w_ih: &Tensor,
    bias: Option<&Tensor>,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    reverse: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "lstm";
    let mut all = vec![x, w_ih, w_hh, h0, c0];
    all.extend(bias);
    same_device(OP, &all)?;
    let bad = |msg: String| Error::BadShape { op: OP, msg };
    let (xd, wi, wd) = (x.dims(), w_ih.dims(), w_hh.dims());
    if xd.len() != 3 || wi.len() != 2 || wd.len() != 2 || xd[0] == 0 || wi != [wd[0], xd[2]] || wd[0] != 4 * wd[1] {
        return Err(bad(format!(
            "needs x [T > 0, N, I], w_ih [4H, I] and w_hh [4H, H], got {xd:?}, {wi:?} and {wd:?}"
        )));
    }
    let (n, h) = (xd[1], wd[1]);
    for s in [h0, c0] {
        if s.dims() != [n, h] {
            return Err(bad(format!("states must be [{n}, {h}], got {:?}", s.dims())));
        }
    }
    if let Some(b) = bias
        && b.dims() != [4 * h]
    {
        return Err(bad(format!("the bias must be [{}], got {:?}", 4 * h, b.dims())));
    }
    for t in &all[1..] {
        super::same_dtype(OP, x, t)?;
    }
    let op = LstmLayer { reverse, blocks: row_blocks(x.device(), n), saved: Mutex::new(None) };
    let (h0, c0) = (h0.contiguous()?, c0.contiguous()?);
    let mut inputs = vec![x, w_ih, w_hh, &h0, &c0];
    inputs.extend(bias);
    let [y, h, c]: [Tensor; 3] =
        apply_multi(op, &inputs)?.try_into().map_err(|_| Error::Autograd("lstm: expected three outputs".into()))?;
    Ok((y, h, c))
}
