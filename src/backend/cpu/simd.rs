//! Run-time SIMD dispatch for the CPU kernels.
//!
//! The elementwise loops are written once, generic over the element function, and
//! instantiated three times: under `avx512f`, under `avx2,fma`, and plain. Calling through
//! a `#[target_feature]` function lets the compiler inline the closure and vectorize the
//! loop with the wider registers, so one source gives AVX-512, AVX2 and scalar code; the
//! instruction set is detected once per process.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The widest instruction set this CPU offers that the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (F and BW) together with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2Fma,
    /// No vector extension: plain scalar code.
    Scalar,
}

/// The detected instruction set (cached). `TENSORFORGE_ISA=scalar|avx2` forces a narrower
/// one, so tests can cover every path on one machine.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = supported();
        match std::env::var("TENSORFORGE_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if best != Isa::Scalar => Isa::Avx2Fma,
            _ => best,
        }
    })
}

/// The widest instruction set this CPU has, whatever `TENSORFORGE_ISA` asks (cached): the
/// bound for code that picks its level itself, like the GEMM's tests.
pub(crate) fn supported() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            // The packing copies use byte-masked moves (AVX-512BW) and AVX2 next to the F
            // kernels.
            if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2Fma;
            }
        }
        Isa::Scalar
    })
}

#[inline(always)]
fn map_plain<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(f(s));
    }
}

#[inline(always)]
fn update_plain<T: Copy, F: Fn(T) -> T>(buf: &mut [T], f: &F) {
    for x in buf.iter_mut() {
        *x = f(*x);
    }
}

#[inline(always)]
fn zip_plain<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(a: &[A], b: &[B], dst: &mut [MaybeUninit<U>], f: &F) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        d.write(f(x, y));
    }
}

#[inline(always)]
fn fold_plain<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(src: &[T], init: A, m: &M, f: &F) -> A {
    // Sixteen independent accumulators break the dependency chain so the loop vectorizes
    // (for sums this reorders additions, as every SIMD reduction does).
    let mut acc = [init; 16];
    let chunks = src.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            acc[k] = f(acc[k], m(c[k]));
        }
    }
    for (k, &x) in rest.iter().enumerate() {
        acc[k] = f(acc[k], m(x));
    }
    let mut r = acc[0];
    for a in &acc[1..] {
        r = f(r, *a);
    }
    r
}

#[inline(always)]
fn map_fold_plain<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
    src: &[T],
    dst: &mut [MaybeUninit<U>],
    m: &M,
    init: U,
    f: &F,
) -> U {
    // As `fold_plain`: sixteen accumulators, so the fold does not serialize the map.
    let mut acc = [init; 16];
    let (chunks, rest) = (src.chunks_exact(16), src.len() / 16 * 16);
    for (c, d) in chunks.zip(dst.chunks_exact_mut(16)) {
        for k in 0..16 {
            let y = m(c[k]);
            d[k].write(y);
            acc[k] = f(acc[k], y);
        }
    }
    for (k, (&x, d)) in src[rest..].iter().zip(&mut dst[rest..]).enumerate() {
        let y = m(x);
        d.write(y);
        acc[k] = f(acc[k], y);
    }
    let mut r = acc[0];
    for a in &acc[1..] {
        r = f(r, *a);
    }
    r
}

/// Instantiates each listed function twice, as `<first name>` under AVX-512 and `<second
/// name>` under AVX2+FMA, from one body that calls an `#[inline(always)]` plain loop: the loop
/// is compiled (and vectorized) once per instruction set.
#[cfg(target_arch = "x86_64")]
macro_rules! multiversion {
    ($(
        fn $avx512:ident / $avx2:ident <$($g:ident $(: $bound:path)?),* $(,)?>
            ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    )*) => {$(
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        pub unsafe fn $avx512<$($g $(: $bound)?),*>($($arg: $ty),*) $(-> $ret)? $body
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $avx2<$($g $(: $bound)?),*>($($arg: $ty),*) $(-> $ret)? $body
    )*};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    multiversion! {
        fn map_avx512 / map_avx2<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
            map_plain(src, dst, f)
        }
        fn update_avx512 / update_avx2<T: Copy, F: Fn(T) -> T>(buf: &mut [T], f: &F) {
            update_plain(buf, f)
        }
        fn zip_avx512 / zip_avx2<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(
            a: &[A],
            b: &[B],
            dst: &mut [MaybeUninit<U>],
            f: &F,
        ) {
            zip_plain(a, b, dst, f)
        }
        fn fold_avx512 / fold_avx2<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(
            src: &[T],
            init: A,
            m: &M,
            f: &F,
        ) -> A {
            fold_plain(src, init, m, f)
        }
        fn map_fold_avx512 / map_fold_avx2<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
            src: &[T],
            dst: &mut [MaybeUninit<U>],
            m: &M,
            init: U,
            f: &F,
        ) -> U {
            map_fold_plain(src, dst, m, init, f)
        }
        fn map_stream_avx512 / map_stream_avx2<T: Copy, U, F: Fn(T) -> U>(
            src: &[T],
            dst: &mut [MaybeUninit<U>],
            f: &F,
        ) {
            // SAFETY: both instruction sets imply AVX; the caller checked the element size.
            unsafe { stream_blocks(dst, |i, t| map_plain(&src[i..i + t.len()], t, f)) }
        }
        fn zip_stream_avx512 / zip_stream_avx2<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(
            a: &[A],
            b: &[B],
            dst: &mut [MaybeUninit<U>],
            f: &F,
        ) {
            // SAFETY: as in `map_stream_avx512`.
            unsafe { stream_blocks(dst, |i, t| zip_plain(&a[i..i + t.len()], &b[i..i + t.len()], t, f)) }
        }
    }

    /// Copies `len` bytes from `src` to `dst` (which must not overlap), with 32-byte
    /// non-temporal stores for the aligned middle of `dst`.
    #[target_feature(enable = "avx")]
    #[inline]
    pub unsafe fn stream_bytes(src: *const u8, dst: *mut u8, len: usize) {
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
        // SAFETY (whole body): the caller guarantees `len` valid bytes at both pointers.
        unsafe {
            let head = dst.align_offset(32).min(len);
            std::ptr::copy_nonoverlapping(src, dst, head);
            let mut i = head;
            while i + 32 <= len {
                let v = _mm256_loadu_si256(src.add(i).cast::<__m256i>());
                _mm256_stream_si256(dst.add(i).cast::<__m256i>(), v);
                i += 32;
            }
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
        }
    }
}

/// Softmax (with `log`, log-softmax) of one f32 row into `out`, by the AVX-512 kernel where the
/// detected instruction set has it: `false` (nothing written) elsewhere. The generic loops
/// above compile the max into one serial compare-and-blend chain and `exp_f32`'s 2ⁿ into
/// integer shifts; this kernel keeps four independent maxima and scales by 2ⁿ with one
/// `vscalefps`.
pub fn softmax_row_f32(x: &[f32], out: &mut [MaybeUninit<f32>], log: bool) -> bool {
    assert_eq!(x.len(), out.len(), "softmax_row_f32: lengths differ");
    match isa() {
        // SAFETY: `isa()` returned this level only after detecting AVX-512F/BW, AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { exp512::row(x, out, log) },
        _ => return false,
    }
    true
}

/// The f32 functions with a hand-written AVX-512 kernel ([`map_f32_avx512`]). tanh is not
/// among them: the same kernel built on `exp16` was no faster than the generic loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpFn {
    /// eˣ.
    Exp,
    /// 1 / (1 + e⁻ˣ).
    Sigmoid,
    /// x · sigmoid(x).
    Silu,
    /// ½x(1 + tanh(√(2/π)(x + 0.044715x³))), computed as x · sigmoid(2√(2/π)(x + 0.044715x³)),
    /// the same value.
    GeluTanh,
}

/// `out[i] = f(x[i])` for an exp-based f32 function by its AVX-512 kernel, where the detected
/// instruction set has it: `false` (nothing written) elsewhere. The kernels share the
/// softmax's `exp16`, whose 2ⁿ is one `vscalefps` instead of the integer shifts and selects
/// the generic loops compile `exp_f32` into.
pub fn map_f32_avx512(f: ExpFn, x: &[f32], out: &mut [MaybeUninit<f32>]) -> bool {
    assert_eq!(x.len(), out.len(), "map_f32_avx512: lengths differ");
    match isa() {
        // SAFETY: `isa()` returned this level only after detecting AVX-512F/BW, AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { exp512::map(f, x, out) },
        _ => return false,
    }
    true
}

/// The AVX-512 kernels built on one 16-lane exponential: softmax rows, exp, sigmoid, silu and
/// gelu (tanh form).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)] // AVX-512 intrinsics: stable since Rust 1.89
pub(crate) mod exp512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `eˣ` of 16 lanes, with `exp_f32`'s range reduction and polynomial (so within 2 ulp), 2ⁿ
    /// applied by `vscalefps`. Lanes below `exp_f32`'s LO give 0 as there, +∞ gives +∞ and NaN
    /// stays NaN.
    #[inline(always)]
    #[allow(clippy::excessive_precision)] // the coefficients of `exp_f32`, kept as printed there
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        const LO: f32 = -87.336_55;
        const ROUND: f32 = 12_582_912.0;
        // SAFETY: the caller runs with AVX-512F and FMA.
        unsafe {
            let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(LO));
            // max/min return their second operand for a NaN lane: x, so NaN survives.
            let xc = _mm512_min_ps(_mm512_set1_ps(100.0), _mm512_max_ps(_mm512_set1_ps(LO), x));
            let t = _mm512_fmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(ROUND));
            let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm512_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let er = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
            _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(er, n))
        }
    }

    /// # Safety
    /// The CPU has AVX-512F/BW, AVX2 and FMA; `out.len() == x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn map(f: super::ExpFn, x: &[f32], out: &mut [MaybeUninit<f32>]) {
        let one = _mm512_set1_ps(1.0);
        // SAFETY: the caller runs with AVX-512F and FMA.
        let g = |v: __m512| unsafe {
            match f {
                super::ExpFn::Exp => exp16(v),
                // 1/(1 + e^{-x}): e^{-x} = +inf gives 0 and 0 gives 1, so no branch is needed.
                super::ExpFn::Sigmoid => {
                    _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))))
                }
                // x/(1 + e^{-x}): one division instead of the sigmoid's and a product.
                super::ExpFn::Silu => {
                    _mm512_div_ps(v, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))))
                }
                // x/(1 + e^{-2u}), u = √(2/π)(x + 0.044715x³): -2u = x(a + b·x²). Where 1 + tanh u
                // rounds to 0 in f32 this keeps the tiny negative value; ±∞ and NaN as there.
                super::ExpFn::GeluTanh => {
                    const A: f32 = -2.0 * 0.797_884_6; // -2√(2/π)
                    const B: f32 = A * 0.044_715;
                    let arg =
                        _mm512_mul_ps(v, _mm512_fmadd_ps(_mm512_set1_ps(B), _mm512_mul_ps(v, v), _mm512_set1_ps(A)));
                    _mm512_div_ps(v, _mm512_add_ps(one, exp16(arg)))
                }
            }
        };
        let n = x.len();
        let (src, dst) = (x.as_ptr(), out.as_mut_ptr().cast::<f32>());
        let full = n - n % 16;
        // SAFETY: full loads and stores stay below `full`; the masked ones touch lanes below n.
        unsafe {
            let mut i = 0;
            while i < full {
                _mm512_storeu_ps(dst.add(i), g(_mm512_loadu_ps(src.add(i))));
                i += 16;
            }
            if full < n {
                let tail: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
                _mm512_mask_storeu_ps(dst.add(full), tail, g(_mm512_maskz_loadu_ps(tail, src.add(full))));
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F/BW, AVX2 and FMA; `out.len() == x.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn row(x: &[f32], out: &mut [MaybeUninit<f32>], log: bool) {
        let n = x.len();
        let (src, dst) = (x.as_ptr(), out.as_mut_ptr().cast::<f32>());
        let full = n - n % 16;
        let tail: __mmask16 = ((1u32 << (n % 16)) - 1) as u16;
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY (whole body): every full load and store is below `full`, and the masked ones
        // touch only lanes below `n`.
        unsafe {
            let load = |i: usize| _mm512_loadu_ps(src.add(i));
            let load_tail = || _mm512_mask_loadu_ps(neg_inf, tail, src.add(full));
            // Pass 1: the maximum, four independent chains; any NaN makes the row NaN.
            let mut m = [neg_inf; 4];
            let mut nan: __mmask16 = 0;
            let mut i = 0;
            while i + 64 <= n {
                for (j, mj) in m.iter_mut().enumerate() {
                    let v = load(i + 16 * j);
                    nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    *mj = _mm512_max_ps(*mj, v);
                }
                i += 64;
            }
            while i < full {
                let v = load(i);
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                m[0] = _mm512_max_ps(m[0], v);
                i += 16;
            }
            if full < n {
                let v = load_tail();
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                m[0] = _mm512_max_ps(m[0], v);
            }
            if nan != 0 {
                out.fill(MaybeUninit::new(f32::NAN));
                return;
            }
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])));
            // A row of -inf (fully masked) has no finite max; shifting by 0 keeps exp(-inf) = 0.
            let shift = if max == f32::NEG_INFINITY { 0.0 } else { max };
            // Pass 2: the exponentials (kept in `out` unless `log`) and their sum, four chains;
            // a row longer than one cascade block sums its blocks pairwise (as `fold_slice`).
            let add = |a: f32, b: f32| a + b;
            let block = super::super::cascade::BLOCK;
            let mut blocks = (n > block).then(super::super::cascade::Cascade::<f32>::new);
            let mut s = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i < full {
                let e = exp16(_mm512_sub_ps(load(i), _mm512_set1_ps(shift)));
                if !log {
                    _mm512_storeu_ps(dst.add(i), e);
                }
                let j = (i / 16) % 4;
                s[j] = _mm512_add_ps(s[j], e);
                i += 16;
                if let Some(c) = blocks.as_mut()
                    && i % block == 0
                {
                    c.push(
                        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]))),
                        &add,
                    );
                    s = [_mm512_setzero_ps(); 4];
                }
            }
            if full < n {
                let e = exp16(_mm512_sub_ps(load_tail(), _mm512_set1_ps(shift)));
                if !log {
                    _mm512_mask_storeu_ps(dst.add(full), tail, e);
                }
                s[0] = _mm512_add_ps(s[0], e);
            }
            let last = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
            let sum = match blocks {
                Some(mut c) => {
                    c.push(last, &add);
                    c.finish(0.0, &add)
                }
                None => last,
            };
            // Pass 3: scale the exponentials, or subtract the shift and then ln(sum) from the
            // inputs (x - (shift + ln sum) would round the ln away next to a huge shift).
            let (a, b, c) = if log {
                (_mm512_set1_ps(1.0), _mm512_set1_ps(-shift), _mm512_set1_ps(-sum.ln()))
            } else {
                (_mm512_set1_ps(1.0 / sum), _mm512_setzero_ps(), _mm512_setzero_ps())
            };
            let from = if log { src } else { dst.cast_const() };
            let mut i = 0;
            while i < full {
                let v = _mm512_add_ps(_mm512_fmadd_ps(_mm512_loadu_ps(from.add(i)), a, b), c);
                _mm512_storeu_ps(dst.add(i), v);
                i += 16;
            }
            if full < n {
                let v = _mm512_maskz_loadu_ps(tail, from.add(full));
                _mm512_mask_storeu_ps(dst.add(full), tail, _mm512_add_ps(_mm512_fmadd_ps(v, a, b), c));
            }
        }
    }
}

/// `dst[i] = f(src[i])`, vectorized for the detected instruction set.
#[inline]
pub fn map_slice<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
    debug_assert_eq!(src.len(), dst.len());
    match isa() {
        // SAFETY: `isa()` returned this level only after run-time detection of the features
        // the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::map_avx512(src, dst, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::map_avx2(src, dst, f) },
        _ => map_plain(src, dst, f),
    }
}

/// `buf[i] = f(buf[i])` in place, vectorized for the detected instruction set.
#[inline]
pub fn update_slice<T: Copy, F: Fn(T) -> T>(buf: &mut [T], f: &F) {
    match isa() {
        // SAFETY: as in `map_slice`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::update_avx512(buf, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::update_avx2(buf, f) },
        _ => update_plain(buf, f),
    }
}

/// `dst[i] = f(a[i], b[i])`, vectorized for the detected instruction set.
#[inline]
pub fn zip_slice<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(a: &[A], b: &[B], dst: &mut [MaybeUninit<U>], f: &F) {
    debug_assert!(a.len() == dst.len() && b.len() == dst.len());
    match isa() {
        // SAFETY: as in `map_slice`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::zip_avx512(a, b, dst, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::zip_avx2(a, b, dst, f) },
        _ => zip_plain(a, b, dst, f),
    }
}

/// Folds `m(x)` over a slice with sixteen interleaved accumulators (combined with `f` at
/// the end), so sums and maxima vectorize; a slice longer than one cascade block is folded
/// block by block and the blocks combined pairwise (`cascade`), so long sums stay accurate.
/// `f` must be associative and commutative up to rounding, and `init` its identity.
#[inline]
pub fn fold_slice<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(src: &[T], init: A, m: &M, f: &F) -> A {
    if src.len() <= super::cascade::BLOCK {
        return fold_block(src, init, m, f);
    }
    let mut c = super::cascade::Cascade::new();
    for block in src.chunks(super::cascade::BLOCK) {
        c.push(fold_block(block, init, m, f), f);
    }
    c.finish(init, f)
}

/// One block of [`fold_slice`]: the SIMD fold itself.
#[inline]
fn fold_block<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(src: &[T], init: A, m: &M, f: &F) -> A {
    match isa() {
        // SAFETY: as in `map_slice`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::fold_avx512(src, init, m, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::fold_avx2(src, init, m, f) },
        _ => fold_plain(src, init, m, f),
    }
}

/// `dst[i] = m(src[i])`, returning the fold of the written values with `f` (sixteen
/// interleaved accumulators and the block cascade, as `fold_slice`): one pass where a map
/// and a fold over its output would take two.
#[inline]
pub fn map_fold_slice<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
    src: &[T],
    dst: &mut [MaybeUninit<U>],
    m: &M,
    init: U,
    f: &F,
) -> U {
    assert_eq!(src.len(), dst.len(), "map_fold_slice: lengths differ");
    if src.len() > super::cascade::BLOCK {
        let mut c = super::cascade::Cascade::new();
        for (s, d) in src.chunks(super::cascade::BLOCK).zip(dst.chunks_mut(super::cascade::BLOCK)) {
            c.push(map_fold_slice(s, d, m, init, f), f);
        }
        return c.finish(init, f);
    }
    match isa() {
        // SAFETY: as in `map_slice`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::map_fold_avx512(src, dst, m, init, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::map_fold_avx2(src, dst, m, init, f) },
        _ => map_fold_plain(src, dst, m, init, f),
    }
}

/// Outputs of at least this many bytes are written by [`map_streamed`] / [`zip_streamed`]:
/// past the caches a new output only passes through them on its way to memory, and a plain
/// store first reads each line it fills. Measured on this project's 2-core Xeon: a
/// 16M-element add went from ~7 ms to 3.6–5.5 ms; 1 MiB outputs were slower streamed, 4 MiB
/// ones faster. On AMD's Zen, whose L3 holds what leaves L2, a 4 MiB output streamed made
/// the op and its reader 2–3x slower, so there the threshold is half the L3
/// (docs/PERFORMANCE.md).
pub fn stream_min_bytes() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        const XEON: usize = 4 << 20;
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: CPUID leaf 0 exists on every x86_64 CPU (the intrinsic is safe in newer
            // Rust, unsafe in older).
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            let vendor = [id.ebx, id.edx, id.ecx];
            // "AuthenticAMD", and "HygonGenuine" (the same Zen cores).
            let zen =
                vendor == [0x6874_7541, 0x6974_6e65, 0x444d_4163] || vendor == [0x6f67_7948, 0x6e65_476e, 0x656e_6975];
            if zen && let Some(l3) = l3_bytes() {
                return (l3 / 2).max(XEON);
            }
        }
        XEON
    })
}

/// The size of the L3 cache from Linux's sysfs, if it says.
fn l3_bytes() -> Option<usize> {
    let dir = (0..8)
        .map(|i| format!("/sys/devices/system/cpu/cpu0/cache/index{i}"))
        .find(|d| std::fs::read_to_string(format!("{d}/level")).is_ok_and(|l| l.trim() == "3"))?;
    let text = std::fs::read_to_string(format!("{dir}/size")).ok()?;
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: usize = digits.parse().ok()?;
    Some(match unit {
        "K" => n << 10,
        "M" => n << 20,
        "" => n,
        _ => return None,
    })
}

/// Bytes per streamed block. Small blocks keep the reads of the inputs and the streamed
/// writes close together: 1 KiB blocks matched a loop with the stores fused in, 4 KiB blocks
/// were ~50 % slower.
#[cfg(target_arch = "x86_64")]
const STREAM_BLOCK_BYTES: usize = 1024;

/// Fills `dst` block by block: `fill(start, scratch)` writes every slot of `scratch`, the
/// values of `dst[start..start + scratch.len()]`, and the block is then copied to `dst` with
/// non-temporal stores, which skip the read of each destination line and leave the caches to
/// the inputs. Inlined into the `#[target_feature]` callers below, so `fill` and the copy
/// compile into one loop.
///
/// # Safety
/// The CPU has AVX; `size_of::<U>()` is 1 to 8 bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_blocks<U>(dst: &mut [MaybeUninit<U>], mut fill: impl FnMut(usize, &mut [MaybeUninit<U>])) {
    let size = std::mem::size_of::<U>();
    // Cache-line aligned, so the vector stores into it never straddle two lines.
    #[repr(align(64))]
    struct Scratch<U>([MaybeUninit<U>; STREAM_BLOCK_BYTES]);
    let mut scratch = Scratch([const { MaybeUninit::<U>::uninit() }; STREAM_BLOCK_BYTES]);
    let scratch = &mut scratch.0;
    let block_len = STREAM_BLOCK_BYTES / size;
    // The first block ends where `dst` reaches a cache-line boundary, so every later block
    // starts on one and only the ends of `dst` take plain stores.
    let head = match dst.as_ptr().align_offset(64) {
        h if h < block_len => h,
        _ => 0,
    };
    let mut start = 0;
    while start < dst.len() {
        let len = if start == 0 && head > 0 { head } else { block_len }.min(dst.len() - start);
        let block = &mut scratch[..len];
        fill(start, block);
        // SAFETY: both ranges hold `len` elements of U and do not overlap (one is on this
        // stack frame); copying MaybeUninit<U> bytes moves the values `fill` wrote. AVX is
        // the caller's guarantee.
        unsafe { x86::stream_bytes(block.as_ptr().cast(), dst[start..].as_mut_ptr().cast(), len * size) };
        start += len;
    }
    // Non-temporal stores are weakly ordered: fence before the caller (another thread, for a
    // rayon task) reports the output as written.
    // SAFETY: SSE is part of the x86_64 baseline.
    unsafe { std::arch::x86_64::_mm_sfence() };
}

/// Whether [`map_streamed`] / [`zip_streamed`] stream this element type (asked on the AVX
/// paths only, so the instruction set is already known).
#[cfg(target_arch = "x86_64")]
fn streams<U>() -> bool {
    (1..=8).contains(&std::mem::size_of::<U>())
}

/// [`map_slice`] writing `dst` with non-temporal stores (for outputs of at least
/// [`stream_min_bytes`]); plain stores without AVX.
#[inline]
pub fn map_streamed<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
    assert_eq!(src.len(), dst.len(), "map_streamed: lengths differ");
    match isa() {
        // SAFETY: as in `map_slice`; `streams` checked the element size.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if streams::<U>() => unsafe { x86::map_stream_avx512(src, dst, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma if streams::<U>() => unsafe { x86::map_stream_avx2(src, dst, f) },
        _ => map_slice(src, dst, f),
    }
}

/// [`zip_slice`] writing `dst` with non-temporal stores (for outputs of at least
/// [`stream_min_bytes`]); plain stores without AVX.
#[inline]
pub fn zip_streamed<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(a: &[A], b: &[B], dst: &mut [MaybeUninit<U>], f: &F) {
    assert!(a.len() == dst.len() && b.len() == dst.len(), "zip_streamed: lengths differ");
    match isa() {
        // SAFETY: as in `map_streamed`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if streams::<U>() => unsafe { x86::zip_stream_avx512(a, b, dst, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma if streams::<U>() => unsafe { x86::zip_stream_avx2(a, b, dst, f) },
        _ => zip_slice(a, b, dst, f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_fold_writes_every_slot_and_folds_what_it_wrote() {
        for n in [0usize, 1, 15, 16, 17, 100, 1027] {
            let src: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut dst = vec![MaybeUninit::new(f32::NAN); n];
            let max = map_fold_slice(&src, &mut dst, &|x: f32| 2.0 * x + 1.0, f32::NEG_INFINITY, &|a: f32, b| a.max(b));
            let out: Vec<f32> = dst.iter().map(|d| unsafe { d.assume_init() }).collect();
            let want: Vec<f32> = src.iter().map(|x| 2.0 * x + 1.0).collect();
            assert_eq!(out, want, "n = {n}");
            assert_eq!(max, want.iter().copied().fold(f32::NEG_INFINITY, f32::max), "n = {n}");
        }
    }

    #[test]
    fn streamed_writes_every_slot_at_any_alignment() {
        // Offsets 0..16 move `dst`'s start across cache-line positions; lengths cover an
        // empty, a partial, an exact and a ragged final block.
        let backing: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        for offset in 0..16 {
            for n in [0usize, 1, 31, 256, 256 + 17, 3 * 1024 + 5] {
                let (x, y) = (&backing[..n], &backing[7..7 + n]);
                let mut mapped = vec![MaybeUninit::new(f32::NAN); n + offset];
                let mut zipped = vec![MaybeUninit::new(f32::NAN); n + offset];
                map_streamed(x, &mut mapped[offset..], &|v: f32| 2.0 * v + 1.0);
                zip_streamed(x, y, &mut zipped[offset..], &|u: f32, v: f32| u - 3.0 * v);
                let read = |d: &[MaybeUninit<f32>]| d.iter().map(|d| unsafe { d.assume_init() }).collect::<Vec<_>>();
                let want_map: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
                let want_zip: Vec<f32> = x.iter().zip(y).map(|(u, v)| u - 3.0 * v).collect();
                assert_eq!(read(&mapped[offset..]), want_map, "map: offset {offset}, n {n}");
                assert_eq!(read(&zipped[offset..]), want_zip, "zip: offset {offset}, n {n}");
            }
        }
    }

    /// The 16-lane exp keeps `exp_f32`'s accuracy (2 ulp against f64) and its edge values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp16_matches_exp_f32() {
        use std::arch::x86_64::*;
        if supported() != Isa::Avx512 {
            return assert_ne!(isa(), Isa::Avx512);
        }
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        unsafe fn exp_lanes(x: [f32; 16]) -> [f32; 16] {
            let mut y = [0.0f32; 16];
            // SAFETY: both arrays hold 16 lanes; the features are enabled.
            unsafe { _mm512_storeu_ps(y.as_mut_ptr(), super::exp512::exp16(_mm512_loadu_ps(x.as_ptr()))) };
            y
        }
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        let mut worst = 0;
        let mut x = -90.0f32;
        while x < 90.0 {
            let lanes: [f32; 16] = std::array::from_fn(|j| x + j as f32 * 0.000_731);
            // SAFETY: `supported()` found AVX-512F/BW, AVX2 and FMA.
            let got = unsafe { exp_lanes(lanes) };
            for (&xi, &yi) in lanes.iter().zip(&got) {
                let want = (xi as f64).exp() as f32;
                if want.is_finite() && want > f32::MIN_POSITIVE {
                    worst = worst.max(ulps(yi, want));
                } else if xi < -87.336_55 {
                    assert_eq!(yi, 0.0, "exp({xi})");
                } else if xi > 88.73 {
                    assert_eq!(yi, f32::INFINITY, "exp({xi})");
                }
            }
            x += 16.0 * 0.000_731;
        }
        assert!(worst <= 2, "exp16: {worst} ulp");
        let edges = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            100.0,
            -100.0,
            0.0,
            -0.0,
            1.0,
            -1.0,
            88.0,
            -87.0,
            2.0,
            3.0,
            4.0,
            5.0,
            6.0,
        ];
        // SAFETY: as above.
        let got = unsafe { exp_lanes(edges) };
        assert_eq!(&got[..2], &[0.0, f32::INFINITY]);
        assert!(got[2].is_nan());
        assert_eq!(&got[3..7], &[f32::INFINITY, 0.0, 1.0, 1.0]);
    }

    /// The AVX-512 softmax row agrees with an f64 softmax (and log-softmax) for lengths around
    /// the vector and unroll widths, masked (-inf) entries, fully masked rows and NaN rows.
    #[test]
    fn softmax_row_f32_matches_f64() {
        for n in [0usize, 1, 5, 15, 16, 17, 63, 64, 65, 100, 1000] {
            for case in 0..4 {
                let x: Vec<f32> = (0..n)
                    .map(|i| match case {
                        1 if i % 3 == 0 => f32::NEG_INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 if i == n / 2 => f32::NAN,
                        _ => ((i as f32) * 0.731).sin() * 20.0,
                    })
                    .collect();
                for log in [false, true] {
                    let mut out = vec![MaybeUninit::new(-7.0f32); n];
                    let done = softmax_row_f32(&x, &mut out, log);
                    assert_eq!(done, isa() == Isa::Avx512, "the kernel runs exactly where AVX-512 is used");
                    if !done {
                        continue;
                    }
                    let got: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| {
                        if v.is_nan() || m.is_nan() { f64::NAN } else { m.max(v as f64) }
                    });
                    let shift = if max == f64::NEG_INFINITY { 0.0 } else { max };
                    let sum: f64 = x.iter().map(|&v| (v as f64 - shift).exp()).sum();
                    for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
                        let want = if log { v as f64 - shift - sum.ln() } else { (v as f64 - shift).exp() / sum };
                        // f32 rounds x - max (to half an ulp of it), which scales exp by up
                        // to that much, and log-softmax rounds max + ln(sum) and x - that.
                        let spread = 1.0
                            + (v as f64 - shift).abs()
                            + if log { (v as f64).abs() + shift.abs() + sum.ln().abs() } else { 0.0 };
                        let bound = (2.0f64).powi(-22) * spread * if log { 1.0 } else { want.abs() };
                        let ok = if want.is_nan() {
                            g.is_nan()
                        } else if want == 0.0 || want.is_infinite() {
                            g as f64 == want
                        } else {
                            (g as f64 - want).abs() <= bound
                        };
                        assert!(ok, "n {n} case {case} log {log} i {i}: {g} vs {want}");
                    }
                }
            }
        }
    }

    /// The AVX-512 exp and sigmoid agree with f64 within a few ulp over lengths around the
    /// vector width (masked tails), and keep the special values.
    #[test]
    fn exp_kernels_match_f64() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let silu = |x: f64| x / (1.0 + (-x).exp());
        // ½x(1 + tanh u) as x/(1 + e^{-2u}): the same value, without 1 + tanh u cancelling
        // (in f64 too) for x below about -5.
        let gelu_tanh =
            |x: f64| x / (1.0 + (-2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).exp());
        for n in [0usize, 1, 15, 16, 17, 100, 5000] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.917).sin() * 30.0).collect();
            for (f, reference) in [
                (ExpFn::Exp, f64::exp as fn(f64) -> f64),
                (ExpFn::Sigmoid, sigmoid),
                (ExpFn::Silu, silu),
                (ExpFn::GeluTanh, gelu_tanh),
            ] {
                let mut out = vec![MaybeUninit::new(-7.0f32); n];
                let done = map_f32_avx512(f, &x, &mut out);
                assert_eq!(done, isa() == Isa::Avx512, "the kernel runs exactly where AVX-512 is used");
                if !done {
                    continue;
                }
                for (&xi, o) in x.iter().zip(&out) {
                    // SAFETY: the kernel wrote every slot.
                    let got = unsafe { o.assume_init() };
                    let want = reference(xi as f64) as f32;
                    // Results under 1e-36 in magnitude (gelu near x = -10, where e^{-2u} passes
                    // f32's largest value) may flush to zero; the generic loop's ½x(1 + tanh u)
                    // already gives 0 below about x = -5.3.
                    let tiny = want.abs() < 1e-36 && got.abs() < 1e-36;
                    // gelu's exponent -2u is itself rounded to f32 (a few ulp of |2u|), which
                    // e^{-2u} turns into ~|2u| ulp of relative error: allowed on top of the 4.
                    let x = xi as f64;
                    let slack = match f {
                        ExpFn::GeluTanh => (2.0 * 1.6 * (x + 0.044715 * x * x * x)).abs() as u64,
                        _ => 0,
                    };
                    assert!(ulps(got, want) <= 4 + slack || tiny, "{f:?}({xi}) = {got}, want {want}");
                }
            }
        }
        if isa() != Isa::Avx512 {
            return;
        }
        let edges = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -100.0, 100.0, 0.0];
        let run = |f| {
            let mut out = vec![MaybeUninit::new(0.0f32); edges.len()];
            assert!(map_f32_avx512(f, &edges, &mut out));
            // SAFETY: written by the kernel.
            out.iter().map(|o| unsafe { o.assume_init() }).collect::<Vec<f32>>()
        };
        let e = run(ExpFn::Exp);
        assert_eq!([e[0], e[1], e[3], e[4], e[5]], [0.0, f32::INFINITY, 0.0, f32::INFINITY, 1.0]);
        assert!(e[2].is_nan());
        let s = run(ExpFn::Sigmoid);
        assert_eq!([s[0], s[1], s[3], s[4], s[5]], [0.0, 1.0, 0.0, 1.0, 0.5]);
        assert!(s[2].is_nan());
        // silu(-inf) = -inf / inf is NaN in this form, as the generic x · sigmoid(x) = -inf · 0 is.
        let s = run(ExpFn::Silu);
        assert_eq!([s[1], s[3], s[4], s[5]], [f32::INFINITY, -0.0, 100.0, 0.0]);
        assert!(s[0].is_nan() && s[2].is_nan());
        let g = run(ExpFn::GeluTanh);
        assert_eq!([g[1], g[3], g[4], g[5]], [f32::INFINITY, -0.0, 100.0, 0.0]);
        assert!(g[0].is_nan() && g[2].is_nan());
    }
}
