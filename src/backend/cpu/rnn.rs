//! The LSTM cell's elementwise part, forward and backward (kernels/rnn.cu is the device
//! side): one pass over the four gates of a row instead of the dozen ops a composed cell
//! runs, each with its own output buffer and tape entry.

use super::float::Float;
use super::parallel::{SendPtr, for_each_task};
use super::{CpuStorage, contiguous, pool, simd, worth_splitting};
use crate::backend::lstm_cell_dims;
use crate::{DType, Error, Layout, Result};

/// Rows per task when a step is large enough to split.
const ROWS_PER_TASK: usize = 16;
/// The work of one unit, in the elementwise kernels' measure (elements moved), per
/// transcendental function: the forward has five per unit, the backward one.
const TRANSCENDENTAL: usize = 8;

#[inline(always)]
fn sigmoid<F: Float>(x: F) -> F {
    // Branch-free (so the row loops vectorize): e^(−x) overflows to +∞ for x < −88 in f32,
    // and 1/(1 + ∞) is the right limit, 0.
    F::ONE / (F::ONE + (-x).exp())
}

/// A kernel over rows `r0..r1` of a step. Its `rows` is `#[inline(always)]`, so it is
/// compiled into each instruction-set wrapper below and its loops vectorize there (a closure
/// handed to a `#[target_feature]` function may stay an outlined call compiled without the
/// features: `mul_add` then becomes a libm call).
trait Rows: Sync {
    fn rows(&self, r0: usize, r1: usize);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn rows_avx512<K: Rows>(k: &K, r0: usize, r1: usize) {
    k.rows(r0, r1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<K: Rows>(k: &K, r0: usize, r1: usize) {
    k.rows(r0, r1)
}

/// Runs `k` over `n` rows, vectorized for the detected instruction set, split across threads
/// when the step is large.
fn run<K: Rows>(k: &K, n: usize, work: usize) {
    let block = |r0: usize, r1: usize| match simd::isa() {
        // SAFETY: `isa()` returned this level only after detecting the wrapper's features.
        #[cfg(target_arch = "x86_64")]
        simd::Isa::Avx512 => unsafe { rows_avx512(k, r0, r1) },
        #[cfg(target_arch = "x86_64")]
        simd::Isa::Avx2Fma => unsafe { rows_avx2(k, r0, r1) },
        _ => k.rows(r0, r1),
    };
    if worth_splitting(work) && n > ROWS_PER_TASK {
        for_each_task(n.div_ceil(ROWS_PER_TASK), |t| block(t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n)));
    } else {
        block(0, n);
    }
}

/// `K` uninitialized output buffers of `n` rows of the given widths, and their bases for the
/// tasks.
fn outputs<F: Float, const K: usize>(n: usize, widths: [usize; K]) -> ([Vec<F>; K], [SendPtr<F>; K]) {
    let mut outs: [Vec<F>; K] = widths.map(|w| pool::alloc(n * w));
    let ptrs = outs.each_mut().map(|o| SendPtr(o.as_mut_ptr()));
    (outs, ptrs)
}

/// Row `r` of an output of width `w`.
///
/// # Safety
/// `p` has room for row `r`, and no other task touches that row.
#[inline(always)]
unsafe fn row_of<'a, F>(p: SendPtr<F>, r: usize, w: usize) -> &'a mut [F] {
    // SAFETY: forwarded from the caller.
    unsafe { std::slice::from_raw_parts_mut(p.get().add(r * w), w) }
}

struct Forward<'a, F> {
    xg: &'a [F],
    hg: &'a [F],
    c: &'a [F],
    h: usize,
    /// h', c' (`[N, H]`) and acts (`[N, 4H]`).
    out: [SendPtr<F>; 3],
}

impl<F: Float> Rows for Forward<'_, F> {
    #[inline(always)]
    fn rows(&self, r0: usize, r1: usize) {
        let (h, g4) = (self.h, 4 * self.h);
        for r in r0..r1 {
            let (xg, hg, c) = (gates(&self.xg[r * g4..], h), gates(&self.hg[r * g4..], h), &self.c[r * h..][..h]);
            // SAFETY: the buffers hold `n` rows; tasks get disjoint rows.
            let (ho, co, acts) =
                unsafe { (row_of(self.out[0], r, h), row_of(self.out[1], r, h), row_of(self.out[2], r, g4)) };
            let [ai, af, ag, ao] = gates_mut(acts, h);
            #[cfg(target_arch = "x86_64")]
            if f32_avx512::<F>() {
                // SAFETY: `f32_avx512` checked that F is f32 and that the CPU has AVX-512.
                unsafe {
                    avx512::forward_row(xg.map(f32s), hg.map(f32s), f32s(c), [ho, co, ai, af, ag, ao].map(f32s_mut))
                };
                continue;
            }
            forward_row(xg, hg, c, [ho, co, ai, af, ag, ao]);
        }
    }
}

/// One row of the forward. Every slice arrives as its own argument: `&mut` arguments are known
/// not to alias anything, so the loop vectorizes without run-time overlap checks (LLVM gives up
/// past a few pairs of them, and a row has 54).
#[inline(always)]
fn forward_row<F: Float>(xg: [&[F]; 4], hg: [&[F]; 4], c: &[F], out: [&mut [F]; 6]) {
    // Every slice cut to one length `h`: the indexing below then needs no bounds checks,
    // which would keep the loop scalar.
    let h = c.len();
    let (xg, hg) = (xg.map(|s| &s[..h]), hg.map(|s| &s[..h]));
    let [ho, co, ai, af, ag, ao] = out.map(|s| &mut s[..h]);
    for j in 0..h {
        let i = sigmoid(xg[0][j] + hg[0][j]);
        let f = sigmoid(xg[1][j] + hg[1][j]);
        let g = (xg[2][j] + hg[2][j]).tanh();
        let o = sigmoid(xg[3][j] + hg[3][j]);
        let cn = f * c[j] + i * g;
        co[j] = cn;
        ho[j] = o * cn.tanh();
        (ai[j], af[j], ag[j], ao[j]) = (i, f, g, o);
    }
}

/// [`gates`] for an output row.
#[inline(always)]
fn gates_mut<F>(row: &mut [F], h: usize) -> [&mut [F]; 4] {
    let (a, rest) = row[..4 * h].split_at_mut(h);
    let (b, rest) = rest.split_at_mut(h);
    let (c, d) = rest.split_at_mut(h);
    [a, b, c, d]
}

/// The four `h`-wide gate blocks at the start of `row`, as slices of exactly `h` elements
/// (so the loops over `j < h` carry no bounds checks and vectorize).
#[inline(always)]
fn gates<F>(row: &[F], h: usize) -> [&[F]; 4] {
    let row = &row[..4 * h];
    [&row[..h], &row[h..2 * h], &row[2 * h..3 * h], &row[3 * h..4 * h]]
}

fn forward<F: Float>(xg: &[F], hg: &[F], c: &[F], n: usize, h: usize) -> [Vec<F>; 3] {
    let (mut outs, out) = outputs(n, [h, h, 4 * h]);
    run(&Forward { xg, hg, c, h, out }, n, TRANSCENDENTAL * 6 * n * h);
    for (o, w) in outs.iter_mut().zip([h, h, 4 * h]) {
        // SAFETY: `run` wrote every row of every output.
        unsafe { o.set_len(n * w) };
    }
    outs
}

struct Backward<'a, F> {
    /// acts, c, c', dh, dy, dc.
    ins: [&'a [F]; 6],
    h: usize,
    /// d_gates (`[N, 4H]`) and d_c (`[N, H]`).
    out: [SendPtr<F>; 2],
}

impl<F: Float> Rows for Backward<'_, F> {
    #[inline(always)]
    fn rows(&self, r0: usize, r1: usize) {
        let (h, g4) = (self.h, 4 * self.h);
        for r in r0..r1 {
            let a = gates(&self.ins[0][r * g4..], h);
            let [c, cn, dh, dy, dc] = std::array::from_fn(|k| &self.ins[k + 1][r * h..][..h]);
            // SAFETY: as in `Forward`.
            let (dg, dcp) = unsafe { (row_of(self.out[0], r, g4), row_of(self.out[1], r, h)) };
            let [di, df, dgg, d_o] = gates_mut(dg, h);
            #[cfg(target_arch = "x86_64")]
            if f32_avx512::<F>() {
                // SAFETY: as in `Forward`.
                unsafe {
                    avx512::backward_row(
                        a.map(f32s),
                        [c, cn, dh, dy, dc].map(f32s),
                        [dcp, di, df, dgg, d_o].map(f32s_mut),
                    )
                };
                continue;
            }
            backward_row(a, [c, cn, dh, dy, dc], [dcp, di, df, dgg, d_o]);
        }
    }
}

/// One row of the backward (separate arguments for the reason given at [`forward_row`]).
#[inline(always)]
fn backward_row<F: Float>(a: [&[F]; 4], ins: [&[F]; 5], out: [&mut [F]; 5]) {
    let h = ins[0].len();
    let a = a.map(|s| &s[..h]);
    let [c, cn, dh, dy, dc] = ins.map(|s| &s[..h]);
    let [dcp, di, df, dgg, d_o] = out.map(|s| &mut s[..h]);
    for j in 0..h {
        let (i, f, g, o) = (a[0][j], a[1][j], a[2][j], a[3][j]);
        let tc = cn[j].tanh();
        let dht = dh[j] + dy[j];
        let dct = dc[j] + dht * o * (F::ONE - tc * tc);
        dcp[j] = dct * f;
        di[j] = dct * g * i * (F::ONE - i);
        df[j] = dct * c[j] * f * (F::ONE - f);
        dgg[j] = dct * i * (F::ONE - g * g);
        d_o[j] = dht * tc * o * (F::ONE - o);
    }
}

/// Whether the rows take the f32 AVX-512 path (`F` is f32 and the CPU runs the AVX-512
/// build). The generic rows stay scalar for f32: the polynomial exp and tanh select their
/// edge cases with branches that LLVM's vectorizer does not if-convert inside a loop this
/// large, so the cell's rows ran one lane at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn f32_avx512<F: 'static>() -> bool {
    std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() && simd::isa() == simd::Isa::Avx512
}

/// `s` as f32, for `F` known to be f32.
#[inline(always)]
fn f32s<F>(s: &[F]) -> &[f32] {
    debug_assert_eq!(std::mem::size_of::<F>(), 4);
    // SAFETY: only called after `f32_avx512::<F>()` found F to be f32.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// [`f32s`] for a mutable slice.
#[inline(always)]
fn f32s_mut<F>(s: &mut [F]) -> &mut [f32] {
    debug_assert_eq!(std::mem::size_of::<F>(), 4);
    // SAFETY: as in `f32s`.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)] // AVX-512 intrinsics: stable since Rust 1.89
mod avx512 {
    use super::super::simd::exp512::exp16;
    use std::arch::x86_64::*;

    /// `1 / (1 + e^(−x))`, 16 lanes (0 below −88, as the scalar form).
    #[inline(always)]
    unsafe fn sigmoid16(x: __m512) -> __m512 {
        // SAFETY: the caller runs with AVX-512F and FMA.
        unsafe {
            let one = _mm512_set1_ps(1.0);
            _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))))
        }
    }

    /// `tanh_f32` on 16 lanes: the odd polynomial below |x| = 0.625, `1 − 2/(e^{2|x|}+1)` with
    /// x's sign above.
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the coefficients of `tanh_f32`, kept as printed there
    unsafe fn tanh16(x: __m512) -> __m512 {
        // SAFETY: the caller runs with AVX-512F and FMA.
        unsafe {
            // |x| and x's sign bit by integer masks: the float forms of these are AVX-512DQ,
            // which the callers' features leave out (they would stay outlined calls).
            let bits = _mm512_castps_si512(x);
            let sign = _mm512_set1_epi32(i32::MIN);
            let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, bits));
            let z = _mm512_mul_ps(x, x);
            let mut p = _mm512_set1_ps(-5.704_988_7e-3);
            for k in [2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1] {
                p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(k));
            }
            let small = _mm512_fmadd_ps(_mm512_mul_ps(x, z), p, x);
            let e = exp16(_mm512_add_ps(a, a));
            let one = _mm512_set1_ps(1.0);
            let big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)));
            let big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), _mm512_and_si512(sign, bits)));
            let near = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.625));
            _mm512_mask_blend_ps(near, big, small)
        }
    }

    /// `super::forward_row` for f32, 16 units at a time; the tail goes to the generic row.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW, AVX2 and FMA; every slice holds at least `c.len()` elements.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn forward_row(xg: [&[f32]; 4], hg: [&[f32]; 4], c: &[f32], out: [&mut [f32]; 6]) {
        let h = c.len();
        let v = h / 16 * 16;
        let [ho, co, ai, af, ag, ao] = out;
        for j in (0..v).step_by(16) {
            // SAFETY: j + 16 ≤ h ≤ every slice's length (see the contract above).
            unsafe {
                let ld = |s: &[f32]| _mm512_loadu_ps(s.as_ptr().add(j));
                let z = |k: usize| _mm512_add_ps(ld(xg[k]), ld(hg[k]));
                let (i, f, g, o) = (sigmoid16(z(0)), sigmoid16(z(1)), tanh16(z(2)), sigmoid16(z(3)));
                let cn = _mm512_fmadd_ps(f, ld(c), _mm512_mul_ps(i, g));
                _mm512_storeu_ps(co.as_mut_ptr().add(j), cn);
                _mm512_storeu_ps(ho.as_mut_ptr().add(j), _mm512_mul_ps(o, tanh16(cn)));
                for (dst, val) in [(&mut *ai, i), (&mut *af, f), (&mut *ag, g), (&mut *ao, o)] {
                    _mm512_storeu_ps(dst.as_mut_ptr().add(j), val);
                }
            }
        }
        super::forward_row(
            xg.map(|s| &s[v..h]),
            hg.map(|s| &s[v..h]),
            &c[v..],
            [&mut ho[v..], &mut co[v..], &mut ai[v..], &mut af[v..], &mut ag[v..], &mut ao[v..]],
        );
    }

    /// `super::backward_row` for f32, 16 units at a time; the tail goes to the generic row.
    ///
    /// # Safety
    /// As for [`forward_row`], with `ins[0].len()` units.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn backward_row(a: [&[f32]; 4], ins: [&[f32]; 5], out: [&mut [f32]; 5]) {
        let h = ins[0].len();
        let v = h / 16 * 16;
        let [c, cn, dh, dy, dc] = ins;
        let [dcp, di, df, dgg, d_o] = out;
        for j in (0..v).step_by(16) {
            // SAFETY: as in `forward_row`.
            unsafe {
                let ld = |s: &[f32]| _mm512_loadu_ps(s.as_ptr().add(j));
                let one = _mm512_set1_ps(1.0);
                let (i, f, g, o) = (ld(a[0]), ld(a[1]), ld(a[2]), ld(a[3]));
                let tc = tanh16(ld(cn));
                let dht = _mm512_add_ps(ld(dh), ld(dy));
                let dct = _mm512_fmadd_ps(_mm512_mul_ps(dht, o), _mm512_fnmadd_ps(tc, tc, one), ld(dc));
                let st = |dst: &mut [f32], v: __m512| _mm512_storeu_ps(dst.as_mut_ptr().add(j), v);
                st(dcp, _mm512_mul_ps(dct, f));
                st(di, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, g), i), _mm512_sub_ps(one, i)));
                st(df, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dct, ld(c)), f), _mm512_sub_ps(one, f)));
                st(dgg, _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(g, g, one)));
                st(d_o, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dht, tc), o), _mm512_sub_ps(one, o)));
            }
        }
        super::backward_row(
            a.map(|s| &s[v..h]),
            [&c[v..], &cn[v..], &dh[v..], &dy[v..], &dc[v..]],
            [&mut dcp[v..], &mut di[v..], &mut df[v..], &mut dgg[v..], &mut d_o[v..]],
        );
    }
}

fn backward<F: Float>(ins: [&[F]; 6], n: usize, h: usize) -> [Vec<F>; 2] {
    let (mut outs, out) = outputs(n, [4 * h, h]);
    run(&Backward { ins, h, out }, n, TRANSCENDENTAL * 2 * n * h);
    for (o, w) in outs.iter_mut().zip([4 * h, h]) {
        // SAFETY: `run` wrote every row of both outputs.
        unsafe { o.set_len(n * w) };
    }
    outs
}

fn unsupported(op: &'static str, dtype: DType) -> Error {
    Error::UnsupportedDType { op, dtype }
}

pub(super) fn lstm_cell(
    s: &CpuStorage,
    l: &Layout,
    hg: &CpuStorage,
    hl: &Layout,
    c: &CpuStorage,
    cl: &Layout,
) -> Result<[CpuStorage; 3]> {
    const OP: &str = "lstm_cell";
    let (n, h) = lstm_cell_dims(OP, l, &[cl])?;
    if hl.dims() != l.dims() {
        return Err(Error::ShapeMismatch { op: OP, lhs: l.shape().clone(), rhs: hl.shape().clone() });
    }
    macro_rules! go {
        ($var:ident) => {{
            let (CpuStorage::$var(hg), CpuStorage::$var(c)) = (hg, c) else {
                return Err(Error::DTypeMismatch { op: OP, lhs: s.dtype(), rhs: hg.dtype() });
            };
            let CpuStorage::$var(x) = s else { unreachable!() };
            let [h2, c2, a] = forward(&contiguous(x, l), &contiguous(hg, hl), &contiguous(c, cl), n, h);
            Ok([CpuStorage::$var(h2), CpuStorage::$var(c2), CpuStorage::$var(a)])
        }};
    }
    match s {
        CpuStorage::F32(_) => go!(F32),
        CpuStorage::F64(_) => go!(F64),
        other => Err(unsupported(OP, other.dtype())),
    }
}

pub(super) fn lstm_cell_backward(
    s: &CpuStorage,
    l: &Layout,
    rest: [(&CpuStorage, &Layout); 5],
) -> Result<[CpuStorage; 2]> {
    const OP: &str = "lstm_cell_backward";
    let (n, h) = lstm_cell_dims(OP, l, &rest.map(|(_, l)| l))?;
    macro_rules! go {
        ($var:ident) => {{
            let CpuStorage::$var(a) = s else { unreachable!() };
            let mut views = Vec::with_capacity(5);
            for (t, tl) in rest {
                let CpuStorage::$var(v) = t else {
                    return Err(Error::DTypeMismatch { op: OP, lhs: s.dtype(), rhs: t.dtype() });
                };
                views.push(contiguous(v, tl));
            }
            let a = contiguous(a, l);
            let ins = [&a[..], &views[0], &views[1], &views[2], &views[3], &views[4]];
            let [dg, dc] = backward(ins, n, h);
            Ok([CpuStorage::$var(dg), CpuStorage::$var(dc)])
        }};
    }
    match s {
        CpuStorage::F32(_) => go!(F32),
        CpuStorage::F64(_) => go!(F64),
        other => Err(unsupported(OP, other.dtype())),
    }
}
