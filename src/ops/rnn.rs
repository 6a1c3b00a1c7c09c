//! A whole LSTM layer pass (one direction) as one op: per step one `h·W_hhᵀ` GEMM and one
//! fused cell kernel (`lstm_cell`); the backward walks the steps in reverse with the cell's
//! adjoint kernel and one `d_gates·W_hh` GEMM per step, then forms `dW_hh` as a single GEMM
//! over all steps. Composed from per-step tensor ops, the same layer records about fifteen
//! tape nodes per step, each with its own buffers and dispatch.

use super::same_device;
use crate::autograd::{Gradients, MultiOperation, apply_multi, no_grad};
use crate::{DType, Device, Error, Result, Tensor};
use std::sync::Mutex;

/// What the forward keeps for the backward of one block of batch rows, in step order (`k`,
/// not time).
struct Saved {
    /// The state before step `k` and, last, after the final step: `T + 1` of each.
    h: Vec<Tensor>,
    c: Vec<Tensor>,
    /// σ(i), σ(f), tanh(g), σ(o) of step `k`, `[rows, 4H]`.
    acts: Vec<Tensor>,
}

/// Inputs `xg [T, N, 4H]` (the input projection with both biases), `w_hh [4H, H]`, `h0`,
/// `c0 [N, H]`; outputs `y [T, N, H]` (in time order), `h_T`, `c_T`.
///
/// The batch rows of an LSTM never meet through the recurrence, so the layer runs as blocks of
/// rows (`blocks`, first row and count), one per thread on the CPU, each through every step on
/// its own thread: no fork or join per step, where splitting each step's small kernels
/// would pay one for each.
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
        let (xg, w_hh) = (x[0], x[1]);
        let t_len = xg.dims()[0];
        // W_hhᵀ copied once per sequence: the GEMM then reads it in place at every step instead
        // of packing the transposed view again.
        let wt = w_hh.t()?.contiguous()?;
        // `[T·N, 4H]`: a step's rows of a block are then one narrow, not three view ops.
        let n = xg.dims()[1];
        let xg_rows = xg.reshape((t_len * n, xg.dims()[2]))?;
        let parts = for_blocks(xg.device(), self.blocks.len(), |b| {
            let (r0, rows) = self.blocks[b];
            let (mut h, mut c) = (x[2].narrow(0, r0, rows)?, x[3].narrow(0, r0, rows)?);
            let mut saved = Saved { h: vec![h.clone()], c: vec![c.clone()], acts: Vec::with_capacity(t_len) };
            for k in 0..t_len {
                let xg_t = xg_rows.narrow(0, self.time(k, t_len) * n + r0, rows)?;
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

    fn backward(&self, x: &[Tensor], outs: &[Tensor], g: &[Option<Tensor>], grads: &mut Gradients) -> Result<()> {
        // Kept (not taken), so a graph can be walked backward more than once.
        let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let parts = guard.as_ref().ok_or_else(|| Error::Autograd("lstm: backward before forward".into()))?;
        let (xg, w_hh, h0, c0) = (&x[0], &x[1], &x[2], &x[3]);
        let t_len = xg.dims()[0];
        let hidden = w_hh.dims()[1];
        let n = xg.dims()[1];
        // A contiguous gradient of y as `[T·N, H]` rows, one narrow per step. A strided one
        // (y viewed batch-first) is read through its views instead: each block's cell kernel
        // copies its own few rows, on its thread, where a reshape would copy all of it first.
        let gy_rows = match &g[0] {
            Some(gy) if gy.is_contiguous() => Some(gy.reshape((t_len * n, hidden))?),
            _ => None,
        };
        let blocks = for_blocks(xg.device(), self.blocks.len(), |b| {
            let (r0, rows) = self.blocks[b];
            let saved = &parts[b];
            let zeros = Tensor::zeros((rows, hidden), h0.dtype(), h0.device())?;
            let state = |g: &Option<Tensor>| g.as_ref().map_or(Ok(zeros.clone()), |g| g.narrow(0, r0, rows));
            let (mut dh, mut dc) = (state(&g[1])?, state(&g[2])?);
            // d_gates in time order (the order of xg's rows).
            let mut dgates: Vec<Option<Tensor>> = vec![None; t_len];
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
                dgates[t] = Some(dg);
            }
            let dgates: Vec<Tensor> = dgates.into_iter().map(|d| d.expect("every step ran")).collect();
            Ok((dh, dc, dgates))
        })?;
        let dxg = self.gather(t_len, |t, b| blocks[b].2[t].clone())?;
        if w_hh.tracks_grad() {
            // dW_hh = Σ_t d_gates_tᵀ · h_(t−1). The states before the steps are the output y
            // one step back (h0 before the first step), so two products over views of dxg and
            // y stand in for a third gather: [4H, N]·h0 and [4H, (T−1)·N] × [(T−1)·N, H].
            let ys = outs[0].reshape((t_len * n, hidden))?;
            let rows = |t: usize, len: usize| (t * n, len * n);
            let (first, (g0, len), (y0, _)) = if self.reverse {
                (t_len - 1, rows(0, t_len - 1), rows(1, t_len - 1))
            } else {
                (0, rows(1, t_len - 1), rows(0, t_len - 1))
            };
            let mut dw = dxg.narrow(0, first * n, n)?.t()?.matmul(h0)?;
            if t_len > 1 {
                dw = dw.add(&dxg.narrow(0, g0, len)?.t()?.matmul(&ys.narrow(0, y0, len)?)?)?;
            }
            grads.accumulate(w_hh, dw)?;
        }
        if xg.tracks_grad() {
            grads.accumulate(xg, dxg.reshape(xg.shape().clone())?)?;
        }
        let state = |s: fn(&(Tensor, Tensor, Vec<Tensor>)) -> &Tensor| {
            Tensor::cat(&blocks.iter().map(s).collect::<Vec<_>>(), 0)
        };
        if h0.tracks_grad() {
            grads.accumulate(h0, state(|b| &b.0)?)?;
        }
        if c0.tracks_grad() {
            grads.accumulate(c0, state(|b| &b.1)?)?;
        }
        Ok(())
    }
}

/// Whether [`lstm_layer`] runs on tensors of this dtype (the fused kernels are f32 and f64;
/// the half types take the composed path).
pub(crate) fn lstm_layer_supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

/// One direction of an LSTM layer over a sequence: `xg [T, N, 4H]` is `x·W_ihᵀ + b_ih + b_hh`,
/// `w_hh [4H, H]`, `h0`/`c0` `[N, H]`; returns `(y [T, N, H], h_T, c_T)`, with `reverse`
/// running from the last step to the first (`y` stays in time order).
pub(crate) fn lstm_layer(
    xg: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    reverse: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "lstm";
    same_device(OP, &[xg, w_hh, h0, c0])?;
    let bad = |msg: String| Error::BadShape { op: OP, msg };
    let (xd, wd) = (xg.dims(), w_hh.dims());
    if xd.len() != 3 || wd.len() != 2 || xd[2] != wd[0] || wd[0] != 4 * wd[1] || xd[0] == 0 {
        return Err(bad(format!("needs xg [T > 0, N, 4H] and w_hh [4H, H], got {xd:?} and {wd:?}")));
    }
    let (n, h) = (xd[1], wd[1]);
    for s in [h0, c0] {
        if s.dims() != [n, h] {
            return Err(bad(format!("states must be [{n}, {h}], got {:?}", s.dims())));
        }
    }
    for t in [w_hh, h0, c0] {
        super::same_dtype(OP, xg, t)?;
    }
    let op = LstmLayer { reverse, blocks: row_blocks(xg.device(), n), saved: Mutex::new(None) };
    let [y, h, c]: [Tensor; 3] = apply_multi(op, &[&xg.contiguous()?, w_hh, &h0.contiguous()?, &c0.contiguous()?])?
        .try_into()
        .map_err(|_| Error::Autograd("lstm: expected three outputs".into()))?;
    Ok((y, h, c))
}
