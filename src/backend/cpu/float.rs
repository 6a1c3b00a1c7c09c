//! The arithmetic the CPU kernels compute in: f32 and f64 ([`Float`]); f16 and bf16 are
//! stored as themselves and computed in f32 ([`CpuFloat`]).

use crate::WithDType;
use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A float type the kernels compute in.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Negative infinity.
    const NEG_INF: Self;
    /// Positive infinity.
    const INF: Self;
    /// Converts from f64, rounding to the nearest representable value.
    fn from_f64(v: f64) -> Self;
    /// Converts to f64.
    fn to_f64(self) -> f64;
    /// `eˣ`.
    fn exp(self) -> Self;
    /// The natural logarithm.
    fn ln(self) -> Self;
    /// `ln(1 + x)`, accurate for small `x`.
    fn ln_1p(self) -> Self;
    /// The square root.
    fn sqrt(self) -> Self;
    /// The sine (radians).
    fn sin(self) -> Self;
    /// The cosine (radians).
    fn cos(self) -> Self;
    /// The hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The absolute value.
    fn abs(self) -> Self;
    /// The largest integer not above `self`.
    fn floor(self) -> Self;
    /// The smallest integer not below `self`.
    fn ceil(self) -> Self;
    /// Rounds to the nearest integer, ties to even.
    fn round_even(self) -> Self;
    /// `self` raised to the power `e`.
    fn powf(self, e: Self) -> Self;
    /// The error function.
    fn erf(self) -> Self;
    /// True for NaN.
    fn is_nan(self) -> bool;
    /// `self * a + b`; not necessarily fused.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The larger of two values; NaN wins (as numpy's `maximum`).
    #[inline(always)]
    fn max_nan(self, o: Self) -> Self {
        if self > o || self.is_nan() { self } else { o }
    }
    /// The smaller of two values; NaN wins (as numpy's `minimum`).
    #[inline(always)]
    fn min_nan(self, o: Self) -> Self {
        if self < o || self.is_nan() { self } else { o }
    }
}

macro_rules! float_impl {
    ($t:ty, $exp:expr, $tanh:expr) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const INF: Self = <$t>::INFINITY;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn round_even(self) -> Self {
                <$t>::round_ties_even(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                erf64(self as f64) as $t
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                self * a + b
            }
        }
    };
}
// f32 uses branch-free polynomial exp/tanh that the SIMD multiversioning can vectorize
// (libm's expf/tanhf are opaque calls); f64 keeps libm for gradient-check accuracy.
float_impl!(f32, exp_f32, tanh_f32);
float_impl!(f64, f64::exp, f64::tanh);

/// `eˣ` in f32 within 2 ulp, without branches or calls so loops over it vectorize
/// (Cody–Waite range reduction x = n·ln2 + r, a degree-6 minimax polynomial for eʳ, and 2ⁿ
/// built from exponent bits in two halves so every n in [-126, 128] stays representable).
#[inline(always)]
#[allow(clippy::excessive_precision)] // published Cephes coefficients, kept as printed
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -87.336_55;
    let xc = x.clamp(LO, HI);
    // Adding 1.5·2²³ rounds to the nearest integer (ties to even) and leaves that integer in
    // the low mantissa bits, so n comes out as a float and as an i32 without a float→int
    // conversion (Rust's `as i32` saturates and checks NaN, which the vectorizer turns into
    // per-lane scalar code).
    const ROUND: f32 = 12_582_912.0;
    // Fused multiply-adds throughout: one instruction each under the AVX2/AVX-512 builds
    // (softmax was bound by this function's vector ops), and one rounding instead of two.
    let t = xc.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(0.693_359_4, xc);
    let r = (-n).mul_add(-2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let er = (p * r).mul_add(r, r) + 1.0;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) << 23) as u32);
    let s2 = f32::from_bits(((ni - h + 127) << 23) as u32);
    let y = er * s1 * s2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh x` in f32 within a few ulp, branch-free: an odd polynomial near 0 (where the exp
/// form would cancel), `1 − 2/(e^{2|x|}+1)` elsewhere.
#[inline(always)]
#[allow(clippy::excessive_precision)] // published Cephes coefficients, kept as printed
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p.mul_add(z, 2.063_908_9e-2);
    p = p.mul_add(z, -5.373_971_6e-2);
    p = p.mul_add(z, 1.333_144_2e-1);
    p = p.mul_add(z, -3.333_328_2e-1);
    let small = (x * z).mul_add(p, x);
    let e = exp_f32(2.0 * a);
    let big = 1.0 - 2.0 / (e + 1.0);
    let big = if x < 0.0 { -big } else { big };
    if a < 0.625 { small } else { big }
}

/// The error function to double precision. For |x| < 3 the series
/// `erf x = 2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1))` has only positive terms (no
/// cancellation); beyond, erfc's continued fraction converges fast.
pub fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 3.0 {
        let x2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum
    } else if a > 6.0 {
        1.0
    } else {
        // erfc(a) = e^{-a²}/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + 2/(a + …)))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    if x < 0.0 { -r } else { r }
}

/// A stored float type and the type the kernels compute it in.
pub trait CpuFloat: WithDType {
    /// f32 for f32/f16/bf16, f64 for f64.
    type Acc: Float;
    /// Widens a stored value to the compute type.
    fn to_acc(self) -> Self::Acc;
    /// Rounds a computed value back to the stored type.
    fn from_acc(v: Self::Acc) -> Self;
    /// Softmax (with `log`, log-softmax) of one row by a hand-written SIMD kernel, where this
    /// type and CPU have one: `false` (nothing written) leaves the row to the generic loops.
    fn softmax_row_simd(_x: &[Self], _out: &mut [MaybeUninit<Self>], _log: bool) -> bool {
        false
    }
    /// `out[i] = f(x[i])` by a hand-written SIMD kernel, where this type and CPU have one:
    /// `false` (nothing written) otherwise, so a call on empty slices asks whether one exists.
    fn map_exp_simd(_f: super::simd::ExpFn, _x: &[Self], _out: &mut [MaybeUninit<Self>]) -> bool {
        false
    }
}

impl CpuFloat for f32 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        v
    }
    fn softmax_row_simd(x: &[f32], out: &mut [MaybeUninit<f32>], log: bool) -> bool {
        super::simd::softmax_row_f32(x, out, log)
    }
    fn map_exp_simd(f: super::simd::ExpFn, x: &[f32], out: &mut [MaybeUninit<f32>]) -> bool {
        super::simd::map_f32_avx512(f, x, out)
    }
}
impl CpuFloat for f64 {
    type Acc = f64;
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(v: f64) -> Self {
        v
    }
}
impl CpuFloat for f16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl CpuFloat for bf16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

#[cfg(test)]
mod tests {
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn fast_f32_functions_are_accurate() {
        let mut worst = (0, 0);
        let mut x = -90.0f32;
        while x < 90.0 {
            let e = (x as f64).exp() as f32;
            if e.is_finite() && e > f32::MIN_POSITIVE {
                worst.0 = worst.0.max(ulps(super::exp_f32(x), e));
            }
            let t = (x as f64).tanh() as f32;
            worst.1 = worst.1.max(ulps(super::tanh_f32(x), t));
            x += 0.000_731;
        }
        assert!(worst.0 <= 2 && worst.1 <= 4, "exp {} ulp, tanh {} ulp", worst.0, worst.1);
        assert_eq!(super::exp_f32(100.0), f32::INFINITY);
        assert_eq!(super::exp_f32(-100.0), 0.0);
        assert!(super::exp_f32(f32::NAN).is_nan());
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::tanh_f32(20.0), 1.0);
        assert_eq!(super::tanh_f32(-20.0), -1.0);
        assert_eq!(super::tanh_f32(1e-30), 1e-30);
    }

    #[test]
    fn erf_known_values() {
        // Values from tables of the error function.
        for (x, e) in
            [(0.5, 0.5204998778130465), (1.0, 0.8427007929497149), (2.0, 0.9953222650189527), (3.5, 0.9999992569016276)]
        {
            assert!((super::erf64(x) - e).abs() < 1e-14, "erf({x})");
            assert!((super::erf64(-x) + e).abs() < 1e-14);
        }
    }
}
