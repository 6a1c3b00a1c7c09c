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
    Avx512,
    Avx2Fma,
    Scalar,
}

/// The detected instruction set (cached). `TENSORFORGE_ISA=scalar|avx2` forces a narrower
/// one, so tests can cover every path on one machine.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detect();
        match std::env::var("TENSORFORGE_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if best != Isa::Scalar => Isa::Avx2Fma,
            _ => best,
        }
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Scalar
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn map_avx512<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
        map_plain(src, dst, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_avx2<T: Copy, U, F: Fn(T) -> U>(src: &[T], dst: &mut [MaybeUninit<U>], f: &F) {
        map_plain(src, dst, f)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn update_avx512<T: Copy, F: Fn(T) -> T>(buf: &mut [T], f: &F) {
        update_plain(buf, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn update_avx2<T: Copy, F: Fn(T) -> T>(buf: &mut [T], f: &F) {
        update_plain(buf, f)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn zip_avx512<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(
        a: &[A],
        b: &[B],
        dst: &mut [MaybeUninit<U>],
        f: &F,
    ) {
        zip_plain(a, b, dst, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn zip_avx2<A: Copy, B: Copy, U, F: Fn(A, B) -> U>(a: &[A], b: &[B], dst: &mut [MaybeUninit<U>], f: &F) {
        zip_plain(a, b, dst, f)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn fold_avx512<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(
        src: &[T],
        init: A,
        m: &M,
        f: &F,
    ) -> A {
        fold_plain(src, init, m, f)
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    pub unsafe fn map_fold_avx512<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
        src: &[T],
        dst: &mut [MaybeUninit<U>],
        m: &M,
        init: U,
        f: &F,
    ) -> U {
        map_fold_plain(src, dst, m, init, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_fold_avx2<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
        src: &[T],
        dst: &mut [MaybeUninit<U>],
        m: &M,
        init: U,
        f: &F,
    ) -> U {
        map_fold_plain(src, dst, m, init, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fold_avx2<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(src: &[T], init: A, m: &M, f: &F) -> A {
        fold_plain(src, init, m, f)
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
/// the end), so sums and maxima vectorize. `f` must be associative and commutative up to
/// rounding, and `init` its identity.
#[inline]
pub fn fold_slice<T: Copy, A: Copy, M: Fn(T) -> A, F: Fn(A, A) -> A>(src: &[T], init: A, m: &M, f: &F) -> A {
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
/// interleaved accumulators, as `fold_slice`): one pass where a map and a fold over its
/// output would take two.
#[inline]
pub fn map_fold_slice<T: Copy, U: Copy, F: Fn(U, U) -> U, M: Fn(T) -> U>(
    src: &[T],
    dst: &mut [MaybeUninit<U>],
    m: &M,
    init: U,
    f: &F,
) -> U {
    assert_eq!(src.len(), dst.len(), "map_fold_slice: lengths differ");
    match isa() {
        // SAFETY: as in `map_slice`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::map_fold_avx512(src, dst, m, init, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::map_fold_avx2(src, dst, m, init, f) },
        _ => map_fold_plain(src, dst, m, init, f),
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
}
