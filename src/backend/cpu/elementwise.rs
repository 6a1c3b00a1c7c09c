//! Elementwise kernels: copy, unary, scalar maps, binary, comparisons, where.

use super::float::{CpuFloat, Float};
use super::simd::ExpFn;
use super::{CpuStorage, PAR_THRESHOLD, by_row_pieces, fill_new, map, parallel, with_float_vec, worth_splitting, zip};
use crate::backend::{BinaryOp, CmpOp, ScalarOp, UnaryOp};
use crate::{Error, Layout, Result, WithDType};

/// Copies the `src` view into the `dst` view, row by row along the last axis.
pub fn copy_strided(src: &CpuStorage, sl: &Layout, dst: &mut CpuStorage, dl: &Layout) -> Result<()> {
    fn copy<T: Copy>(s: &[T], sl: &Layout, d: &mut [T], dl: &Layout) {
        if let (Some((s0, s1)), Some((d0, d1))) = (sl.contiguous_range(), dl.contiguous_range()) {
            d[d0..d1].copy_from_slice(&s[s0..s1]);
            return;
        }
        let [sl, dl] = Layout::coalesced([sl, dl]);
        let r = sl.rank();
        let inner = sl.dims().last().copied().unwrap_or(1).max(1);
        let (ss, ds) = if r == 0 { (0, 0) } else { (sl.strides()[r - 1], dl.strides()[r - 1]) };
        for row in 0..sl.elem_count() / inner {
            let (ps, pd) = (sl.offset_of(row * inner), dl.offset_of(row * inner));
            if ss == 1 && ds == 1 {
                d[pd..pd + inner].copy_from_slice(&s[ps..ps + inner]);
            } else {
                for j in 0..inner {
                    d[pd + j * ds] = s[ps + j * ss];
                }
            }
        }
    }
    match (src, dst) {
        (CpuStorage::F32(s), CpuStorage::F32(d)) => copy(s, sl, d, dl),
        (CpuStorage::F64(s), CpuStorage::F64(d)) => copy(s, sl, d, dl),
        (CpuStorage::F16(s), CpuStorage::F16(d)) => copy(s, sl, d, dl),
        (CpuStorage::BF16(s), CpuStorage::BF16(d)) => copy(s, sl, d, dl),
        (CpuStorage::I64(s), CpuStorage::I64(d)) => copy(s, sl, d, dl),
        (CpuStorage::U8(s), CpuStorage::U8(d)) => copy(s, sl, d, dl),
        (s, d) => return Err(Error::DTypeMismatch { op: "copy_strided", lhs: s.dtype(), rhs: d.dtype() }),
    }
    Ok(())
}

#[inline(always)]
fn sigmoid<F: Float>(x: F) -> F {
    // Two branches so that exp never overflows.
    if x >= F::ZERO {
        F::ONE / (F::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::ONE + e)
    }
}

#[inline(always)]
fn softplus<F: Float>(x: F) -> F {
    // max(x, 0) + log1p(exp(-|x|)): exact for large |x|, no overflow.
    let m = if x > F::ZERO { x } else { F::ZERO };
    m + (-x.abs()).exp().ln_1p()
}

#[inline(always)]
fn sign<F: Float>(x: F) -> F {
    if x > F::ZERO {
        F::ONE
    } else if x < F::ZERO {
        -F::ONE
    } else {
        x // keeps 0, -0 and NaN
    }
}

/// Applies the scalar function of `op` through `$apply`, choosing the closure once per call
/// (no per-element dispatch).
macro_rules! unary_fn {
    ($op:expr, $F:ty, $apply:ident) => {{
        let half = <$F>::from_f64(0.5);
        match $op {
            UnaryOp::Neg => $apply!(|x: $F| -x),
            UnaryOp::Abs => $apply!(|x: $F| x.abs()),
            UnaryOp::Exp => $apply!(|x: $F| x.exp()),
            UnaryOp::Log => $apply!(|x: $F| x.ln()),
            UnaryOp::Sqrt => $apply!(|x: $F| x.sqrt()),
            UnaryOp::Rsqrt => $apply!(|x: $F| <$F>::ONE / x.sqrt()),
            UnaryOp::Recip => $apply!(|x: $F| <$F>::ONE / x),
            UnaryOp::Sqr => $apply!(|x: $F| x * x),
            UnaryOp::Sin => $apply!(|x: $F| x.sin()),
            UnaryOp::Cos => $apply!(|x: $F| x.cos()),
            UnaryOp::Tanh => $apply!(|x: $F| x.tanh()),
            UnaryOp::Sigmoid => $apply!(|x: $F| sigmoid(x)),
            UnaryOp::Relu => $apply!(|x: $F| if x > <$F>::ZERO { x } else { <$F>::ZERO }),
            UnaryOp::GeluErf => {
                let r = <$F>::from_f64(std::f64::consts::FRAC_1_SQRT_2);
                $apply!(move |x: $F| half * x * (<$F>::ONE + (x * r).erf()))
            }
            UnaryOp::GeluTanh => {
                // ½x(1 + tanh u) as x·σ(2u) = x/(1 + e^{-2u}), as the CUDA kernel and the f32
                // AVX-512 one compute it: 1 + tanh u cancels to 0 below x ≈ -5.3 in f32.
                let c = <$F>::from_f64(-2.0 * (2.0 / std::f64::consts::PI).sqrt());
                let k = <$F>::from_f64(0.044715);
                $apply!(move |x: $F| x / (<$F>::ONE + (c * (x + k * x * x * x)).exp()))
            }
            UnaryOp::Silu => $apply!(|x: $F| x * sigmoid(x)),
            UnaryOp::Softplus => $apply!(|x: $F| softplus(x)),
            UnaryOp::Sign => $apply!(|x: $F| sign(x)),
            UnaryOp::Floor => $apply!(|x: $F| x.floor()),
            UnaryOp::Ceil => $apply!(|x: $F| x.ceil()),
            UnaryOp::Round => $apply!(|x: $F| x.round_even()),
        }
    }};
}

fn unary_float<T: CpuFloat>(v: &[T], l: &Layout, op: UnaryOp) -> CpuStorage {
    let exp_fn = match op {
        UnaryOp::Exp => Some(ExpFn::Exp),
        UnaryOp::Sigmoid => Some(ExpFn::Sigmoid),
        UnaryOp::Silu => Some(ExpFn::Silu),
        UnaryOp::GeluTanh => Some(ExpFn::GeluTanh),
        _ => None,
    };
    // A contiguous view of a type with a hand-written kernel for the function (f32 under
    // AVX-512) takes it, in chunks across threads for large tensors.
    if let (Some(f), Some((a, b))) = (exp_fn, l.contiguous_range())
        && T::map_exp_simd(f, &[], &mut [])
    {
        const CHUNK: usize = PAR_THRESHOLD / 4;
        let src = &v[a..b];
        let out = fill_new(src.len(), |out| {
            if worth_splitting(src.len()) {
                parallel::for_each_chunk(out, CHUNK, |i, o| _ = T::map_exp_simd(f, &src[i * CHUNK..][..o.len()], o));
            } else {
                T::map_exp_simd(f, src, out);
            }
        });
        return T::into_cpu_storage(out);
    }
    macro_rules! ap {
        ($f:expr) => {{
            let f = $f;
            T::into_cpu_storage(map(v, l, move |x: T| T::from_acc(f(x.to_acc()))))
        }};
    }
    unary_fn!(op, T::Acc, ap)
}

pub fn unary(s: &CpuStorage, l: &Layout, op: UnaryOp) -> Result<CpuStorage> {
    if let CpuStorage::I64(v) = s {
        let out = match op {
            UnaryOp::Neg => map(v, l, |x: i64| x.wrapping_neg()),
            UnaryOp::Abs => map(v, l, |x: i64| x.wrapping_abs()),
            UnaryOp::Sign => map(v, l, |x: i64| x.signum()),
            UnaryOp::Sqr => map(v, l, |x: i64| x.wrapping_mul(x)),
            _ => return Err(Error::UnsupportedDType { op: op.name(), dtype: s.dtype() }),
        };
        return Ok(CpuStorage::I64(out));
    }
    Ok(with_float_vec!(s, op.name(), v => unary_float(v, l, op)))
}

pub fn scalar(s: &CpuStorage, l: &Layout, op: ScalarOp) -> Result<CpuStorage> {
    fn float<T: CpuFloat>(v: &[T], l: &Layout, op: ScalarOp) -> CpuStorage {
        let c = |x: f64| T::Acc::from_f64(x);
        let out = match op {
            ScalarOp::Affine { mul, add } => {
                let (m, a) = (c(mul), c(add));
                map(v, l, move |x: T| T::from_acc(x.to_acc().mul_add(m, a)))
            }
            ScalarOp::Powf(e) => {
                let e = c(e);
                map(v, l, move |x: T| T::from_acc(x.to_acc().powf(e)))
            }
            ScalarOp::Clamp { lo, hi } => {
                let (lo, hi) = (c(lo), c(hi));
                // min(max(x, lo), hi) in that order, as PyTorch: lo > hi gives hi; NaN stays.
                map(v, l, move |x: T| {
                    let x = x.to_acc();
                    let y = if x < lo { lo } else { x };
                    T::from_acc(if y > hi { hi } else { y })
                })
            }
        };
        T::into_cpu_storage(out)
    }
    match (s, op) {
        (CpuStorage::I64(v), ScalarOp::Affine { mul, add }) if mul.fract() == 0.0 && add.fract() == 0.0 => {
            let (m, a) = (mul as i64, add as i64);
            Ok(CpuStorage::I64(map(v, l, move |x: i64| x.wrapping_mul(m).wrapping_add(a))))
        }
        (CpuStorage::I64(v), ScalarOp::Clamp { lo, hi }) => {
            let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
            Ok(CpuStorage::I64(map(v, l, move |x: i64| x.max(lo).min(hi))))
        }
        _ => Ok(with_float_vec!(s, "scalar", v => float(v, l, op))),
    }
}

pub fn binary(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout, op: BinaryOp) -> Result<CpuStorage> {
    fn float<T: CpuFloat>(a: &[T], la: &Layout, b: &[T], lb: &Layout, op: BinaryOp) -> CpuStorage {
        macro_rules! z {
            ($f:expr) => {{
                let f = $f;
                T::into_cpu_storage(zip(a, la, b, lb, move |x: T, y: T| T::from_acc(f(x.to_acc(), y.to_acc()))))
            }};
        }
        match op {
            BinaryOp::Add => z!(|x, y| x + y),
            BinaryOp::Sub => z!(|x, y| x - y),
            BinaryOp::Mul => z!(|x, y| x * y),
            BinaryOp::Div => z!(|x, y| x / y),
            BinaryOp::Pow => z!(|x: T::Acc, y| x.powf(y)),
            BinaryOp::Maximum => z!(|x: T::Acc, y| x.max_nan(y)),
            BinaryOp::Minimum => z!(|x: T::Acc, y| x.min_nan(y)),
            BinaryOp::ReluBackward => T::into_cpu_storage(zip(a, la, b, lb, |g: T, x: T| {
                if x.to_acc() <= T::Acc::ZERO { T::from_acc(T::Acc::ZERO) } else { g }
            })),
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn int<T: WithDType + Ord>(
        a: &[T],
        la: &Layout,
        b: &[T],
        lb: &Layout,
        op: BinaryOp,
        add: fn(T, T) -> T,
        sub: fn(T, T) -> T,
        mul: fn(T, T) -> T,
        div: fn(T, T) -> T,
    ) -> Result<CpuStorage> {
        let out = match op {
            BinaryOp::Add => zip(a, la, b, lb, add),
            BinaryOp::Sub => zip(a, la, b, lb, sub),
            BinaryOp::Mul => zip(a, la, b, lb, mul),
            BinaryOp::Div => zip(a, la, b, lb, div),
            BinaryOp::Maximum => zip(a, la, b, lb, |x: T, y: T| x.max(y)),
            BinaryOp::Minimum => zip(a, la, b, lb, |x: T, y: T| x.min(y)),
            BinaryOp::Pow | BinaryOp::ReluBackward => {
                return Err(Error::UnsupportedDType { op: op.name(), dtype: T::DTYPE });
            }
        };
        Ok(T::into_cpu_storage(out))
    }
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => float(x, la, y, lb, op),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => float(x, la, y, lb, op),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => float(x, la, y, lb, op),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => float(x, la, y, lb, op),
        // Integer division by zero gives 0 rather than a panic (the CUDA kernel does the same).
        (CpuStorage::I64(x), CpuStorage::I64(y)) => {
            int(x, la, y, lb, op, i64::wrapping_add, i64::wrapping_sub, i64::wrapping_mul, |p, q| {
                if q == 0 { 0 } else { p.wrapping_div(q) }
            })?
        }
        (CpuStorage::U8(x), CpuStorage::U8(y)) => {
            int(x, la, y, lb, op, u8::wrapping_add, u8::wrapping_sub, u8::wrapping_mul, |p, q| {
                p.checked_div(q).unwrap_or(0)
            })?
        }
        _ => return Err(Error::DTypeMismatch { op: op.name(), lhs: a.dtype(), rhs: b.dtype() }),
    })
}

pub fn cmp(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout, op: CmpOp) -> Result<CpuStorage> {
    fn go<T: Copy + PartialOrd + Send + Sync>(a: &[T], la: &Layout, b: &[T], lb: &Layout, op: CmpOp) -> Vec<u8> {
        match op {
            CmpOp::Eq => zip(a, la, b, lb, |x, y| u8::from(x == y)),
            CmpOp::Ne => zip(a, la, b, lb, |x, y| u8::from(x != y)),
            CmpOp::Lt => zip(a, la, b, lb, |x, y| u8::from(x < y)),
            CmpOp::Le => zip(a, la, b, lb, |x, y| u8::from(x <= y)),
            CmpOp::Gt => zip(a, la, b, lb, |x, y| u8::from(x > y)),
            CmpOp::Ge => zip(a, la, b, lb, |x, y| u8::from(x >= y)),
        }
    }
    Ok(CpuStorage::U8(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(x, la, y, lb, op),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(x, la, y, lb, op),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(x, la, y, lb, op),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(x, la, y, lb, op),
        (CpuStorage::I64(x), CpuStorage::I64(y)) => go(x, la, y, lb, op),
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(x, la, y, lb, op),
        _ => return Err(Error::DTypeMismatch { op: op.name(), lhs: a.dtype(), rhs: b.dtype() }),
    }))
}

pub fn where_cond(
    mask: &CpuStorage,
    lm: &Layout,
    t: &CpuStorage,
    lt: &Layout,
    f: &CpuStorage,
    lf: &Layout,
) -> Result<CpuStorage> {
    let CpuStorage::U8(m) = mask else {
        return Err(Error::UnsupportedDType { op: "where (mask must be u8)", dtype: mask.dtype() });
    };
    fn go<T: Copy + Send + Sync + 'static>(
        m: &[u8],
        lm: &Layout,
        t: &[T],
        lt: &Layout,
        f: &[T],
        lf: &Layout,
    ) -> Vec<T> {
        // One pass over the three views with their axes merged: rows along the last merged
        // axis, each operand stepping by 1 or (broadcast) 0 along it, the common cases as
        // loops LLVM vectorizes.
        let n = lm.elem_count();
        let [lm, lt, lf] = Layout::coalesced([lm, lt, lf]);
        let r = lm.rank();
        let inner = lm.dims().last().copied().unwrap_or(1).max(1);
        let last = |l: &Layout| if r == 0 { 0 } else { l.strides()[r - 1] };
        let (sm, st, sf) = (last(&lm), last(&lt), last(&lf));
        fill_new(n, |out| {
            by_row_pieces(out, inner, |row, j, o| {
                let at = |l: &Layout, s: usize| l.offset_of(row * inner) + j * s;
                let (pm, pt, pf, len) = (at(&lm, sm), at(&lt, st), at(&lf, sf), o.len());
                let pick = |c: u8, x: T, y: T| if c != 0 { x } else { y };
                match (sm, st, sf) {
                    (1, 1, 1) => {
                        let (m, t, f) = (&m[pm..pm + len], &t[pt..pt + len], &f[pf..pf + len]);
                        for (((o, &c), &x), &y) in o.iter_mut().zip(m).zip(t).zip(f) {
                            o.write(pick(c, x, y));
                        }
                    }
                    (1, 0, 1) => {
                        let x = t[pt];
                        for ((o, &c), &y) in o.iter_mut().zip(&m[pm..pm + len]).zip(&f[pf..pf + len]) {
                            o.write(pick(c, x, y));
                        }
                    }
                    (1, 1, 0) => {
                        let y = f[pf];
                        for ((o, &c), &x) in o.iter_mut().zip(&m[pm..pm + len]).zip(&t[pt..pt + len]) {
                            o.write(pick(c, x, y));
                        }
                    }
                    _ => {
                        for (k, o) in o.iter_mut().enumerate() {
                            o.write(pick(m[pm + k * sm], t[pt + k * st], f[pf + k * sf]));
                        }
                    }
                }
            })
        })
    }
    Ok(match (t, f) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(go(m, lm, x, lt, y, lf)),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(go(m, lm, x, lt, y, lf)),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => CpuStorage::F16(go(m, lm, x, lt, y, lf)),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => CpuStorage::BF16(go(m, lm, x, lt, y, lf)),
        (CpuStorage::I64(x), CpuStorage::I64(y)) => CpuStorage::I64(go(m, lm, x, lt, y, lf)),
        (CpuStorage::U8(x), CpuStorage::U8(y)) => CpuStorage::U8(go(m, lm, x, lt, y, lf)),
        _ => return Err(Error::DTypeMismatch { op: "where", lhs: t.dtype(), rhs: f.dtype() }),
    })
}
