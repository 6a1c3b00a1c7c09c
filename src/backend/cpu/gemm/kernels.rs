//! Micro-kernels: the register-blocked inner loops per instruction set (portable scalar,
//! AVX2+FMA, AVX-512F) and each element type's choice of kernel and blocking.

use super::*;

// ---------------------------------------------------------------------------
// Portable micro-kernel.

pub(super) const SCALAR_MR: usize = 4;
pub(super) const SCALAR_NR: usize = 8;

/// Portable micro-kernel (`SCALAR_MR × SCALAR_NR` tile).
///
/// # Safety
/// `a` holds `kc*SCALAR_MR` elements (`lda == 0`) or `rows` rows of `kc`, `lda` apart; `b`
/// holds `kc` rows of `SCALAR_NR` elements `ldb` apart, and `c` addresses a valid
/// `rows × cols` tile with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn ukr_scalar<T: GemmElem>(
    kc: usize,
    a: *const T,
    lda: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    let mut t = [[T::ZERO; SCALAR_NR]; SCALAR_MR];
    for p in 0..kc {
        // SAFETY: row p of B holds SCALAR_NR elements.
        let bp = unsafe { std::slice::from_raw_parts(b.add(p * ldb), SCALAR_NR) };
        // Column p of the A panel: packed (rows beyond `rows` are never stored, so only
        // `rows` are read) or strided.
        let ap: [T; SCALAR_MR] = std::array::from_fn(|i| match (i < rows, lda) {
            (false, _) => T::ZERO,
            // SAFETY: element (i, p) of the caller's panel.
            (true, 0) => unsafe { *a.add(p * SCALAR_MR + i) },
            (true, _) => unsafe { *a.add(i * lda + p) },
        });
        for (row, &av) in t.iter_mut().zip(&ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x = *x + av * bv;
            }
        }
    }
    for (i, row) in t.iter().enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate().take(cols) {
            // SAFETY: (i, j) is inside the caller's tile.
            unsafe {
                let p = c.add(i * ldc + j);
                *p = if acc { *p + v } else { v };
            }
        }
    }
}

// ---------------------------------------------------------------------------
// x86_64 SIMD micro-kernels: each tile row is two vectors wide (vectors run
// along n, which is contiguous in C) and A elements are broadcast.

/// Defines a SIMD micro-kernel `$name` (with the `MicroKernel` signature)
/// for an `$mr × 2*$lanes` tile, monomorphised per valid row count so edge
/// rows cost no wasted FMAs.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    (
        $name:ident, $inner:ident, $t:ty, $feat:literal, $lanes:expr, $mr:expr,
        $zero:ident, $loadu:ident, $storeu:ident, $set1:ident, $fmadd:ident, $add:ident,
        [$($r:literal),*]
    ) => {
        /// # Safety
        /// CPU supports `$feat`; `a` holds `kc*$mr` elements (`PACKED`) or `R`
        /// rows of `kc`, `lda` apart; `b` holds `kc` rows of `2*$lanes` elements
        /// `ldb` apart, `c` addresses a valid `R × cols` tile (row stride
        /// `ldc`), `cols <= 2*$lanes`.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $inner<const R: usize, const PACKED: bool>(
            kc: usize,
            a: *const $t,
            lda: usize,
            b: *const $t,
            ldb: usize,
            c: *mut $t,
            ldc: usize,
            cols: usize,
            acc: bool,
        ) {
            use std::arch::x86_64::*;
            const NR: usize = 2 * $lanes;
            // Prefetch distance in k iterations for the B stream.
            const PF_DIST: usize = 8;
            // The same for the packed A stream, which is `mr` elements per iteration. A kept
            // panel comes back from L3 or memory for each column block; 48 iterations ahead
            // (~600 cycles) measured 1.04-1.09 faster than 16 on sgemm2048 at 2 threads, and
            // 96 slower on sgemm1024 at 1 thread.
            const PF_DIST_A: usize = 48;
            let mut c0 = [$zero(); R];
            let mut c1 = [$zero(); R];
            // SAFETY (whole block): every pointer offset stays inside the
            // panels / tile the caller vouches for.
            unsafe {
                // Prefetch addresses may lie past the buffers (a hint never
                // faults), hence `wrapping_add`: `add` would be UB there.
                for i in 0..R {
                    // Warm the C tile while the k loop runs.
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc).cast());
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + NR - 1).cast());
                }
                let (mut ap, mut bp) = (a, b);
                for _ in 0..kc {
                    // The B micro-panel streams from L2; fetch it a few
                    // iterations ahead so the FMAs never wait on it.
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_DIST * ldb).cast());
                    _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_DIST * ldb + NR - 1).cast());
                    if PACKED {
                        // A packed panel kept for several column blocks comes from L3 after the
                        // first: one line covers 64/(mr·size) k steps, so fetch ahead every step.
                        _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(PF_DIST_A * $mr).cast());
                    }
                    let b0 = $loadu(bp);
                    let b1 = $loadu(bp.add($lanes));
                    for i in 0..R {
                        let av = $set1(*ap.add(if PACKED { i } else { i * lda }));
                        c0[i] = $fmadd(av, b0, c0[i]);
                        c1[i] = $fmadd(av, b1, c1[i]);
                    }
                    ap = ap.add(if PACKED { $mr } else { 1 });
                    bp = bp.wrapping_add(ldb);
                }
                if cols == NR {
                    for i in 0..R {
                        let cp = c.add(i * ldc);
                        let (mut v0, mut v1) = (c0[i], c1[i]);
                        if acc {
                            v0 = $add(v0, $loadu(cp));
                            v1 = $add(v1, $loadu(cp.add($lanes)));
                        }
                        $storeu(cp, v0);
                        $storeu(cp.add($lanes), v1);
                    }
                } else {
                    let mut buf = [0.0 as $t; NR];
                    for i in 0..R {
                        $storeu(buf.as_mut_ptr(), c0[i]);
                        $storeu(buf.as_mut_ptr().add($lanes), c1[i]);
                        let cp = c.add(i * ldc);
                        for (j, &v) in buf.iter().enumerate().take(cols) {
                            let p = cp.add(j);
                            *p = if acc { *p + v } else { v };
                        }
                    }
                }
            }
        }

        /// Dispatches on the number of valid rows (`1..=$mr`).
        ///
        /// # Safety
        /// As for the inner kernel, with `rows` valid rows.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            kc: usize,
            a: *const $t,
            lda: usize,
            b: *const $t,
            ldb: usize,
            c: *mut $t,
            ldc: usize,
            rows: usize,
            cols: usize,
            acc: bool,
        ) {
            // SAFETY: forwarded contract; the kernel is only selected when
            // the CPU supports its features.
            unsafe {
                match rows {
                    $($r if lda == 0 => $inner::<$r, true>(kc, a, 0, b, ldb, c, ldc, cols, acc),)*
                    $($r => $inner::<$r, false>(kc, a, lda, b, ldb, c, ldc, cols, acc),)*
                    _ => unreachable!("micro-kernel row count out of range"),
                }
            }
        }
    };
}

// The AVX-512 intrinsics are stable since Rust 1.89, newer than the declared
// rust-version of the crate this file was written for; the toolchain in use
// (1.95) has them.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::GemmElem::pack_rows`] for f32 with `mr & 3 == 0`: 4×4
    /// in-register transposes replace 16 scalar strided stores, which made
    /// packing A a sizeable share of the run time.
    ///
    /// # Safety
    /// As for `pack_rows`.
    pub(super) unsafe fn pack_rows_f32(src: *const f32, lda: usize, kb: usize, mr: usize, dst: *mut f32) {
        let kb4 = kb & !3;
        // SAFETY: every read is at row < mr, column < kb and every write at
        // p*mr + i with p < kb, i < mr, which the caller guarantees.
        unsafe {
            // One group of 4 rows at a time keeps 4 read streams; dst stays
            // in L1 across the passes.
            for g in (0..mr).step_by(4) {
                let r = src.add(g * lda);
                let mut p = 0;
                while p < kb4 {
                    let a0 = _mm_loadu_ps(r.add(p));
                    let a1 = _mm_loadu_ps(r.add(lda + p));
                    let a2 = _mm_loadu_ps(r.add(2 * lda + p));
                    let a3 = _mm_loadu_ps(r.add(3 * lda + p));
                    let t0 = _mm_unpacklo_ps(a0, a1);
                    let t1 = _mm_unpacklo_ps(a2, a3);
                    let t2 = _mm_unpackhi_ps(a0, a1);
                    let t3 = _mm_unpackhi_ps(a2, a3);
                    let d = dst.add(p * mr + g);
                    _mm_storeu_ps(d, _mm_movelh_ps(t0, t1));
                    _mm_storeu_ps(d.add(mr), _mm_movehl_ps(t1, t0));
                    _mm_storeu_ps(d.add(2 * mr), _mm_movelh_ps(t2, t3));
                    _mm_storeu_ps(d.add(3 * mr), _mm_movehl_ps(t3, t2));
                    p += 4;
                }
            }
            super::pack_rows_scalar(src, lda, kb4, kb, mr, dst);
        }
    }

    /// [`super::GemmElem::pack_rows`] for f64 with `mr & 1 == 0`, via 2×2
    /// in-register transposes.
    ///
    /// # Safety
    /// As for `pack_rows`.
    pub(super) unsafe fn pack_rows_f64(src: *const f64, lda: usize, kb: usize, mr: usize, dst: *mut f64) {
        let kb2 = kb & !1;
        // SAFETY: as in `pack_rows_f32`.
        unsafe {
            for g in (0..mr).step_by(2) {
                let r = src.add(g * lda);
                let mut p = 0;
                while p < kb2 {
                    let a0 = _mm_loadu_pd(r.add(p));
                    let a1 = _mm_loadu_pd(r.add(lda + p));
                    let d = dst.add(p * mr + g);
                    _mm_storeu_pd(d, _mm_unpacklo_pd(a0, a1));
                    _mm_storeu_pd(d.add(mr), _mm_unpackhi_pd(a0, a1));
                    p += 2;
                }
            }
            super::pack_rows_scalar(src, lda, kb2, kb, mr, dst);
        }
    }
    pub const AVX512_MR: usize = 12;
    pub const AVX2_MR: usize = 6;

    simd_kernel!(
        avx512_f32,
        avx512_f32_r,
        f32,
        "avx512f",
        16,
        AVX512_MR,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    );
    simd_kernel!(
        avx512_f64,
        avx512_f64_r,
        f64,
        "avx512f",
        8,
        AVX512_MR,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    );
    simd_kernel!(
        avx2_f32,
        avx2_f32_r,
        f32,
        "avx2,fma",
        8,
        AVX2_MR,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        [1, 2, 3, 4, 5, 6]
    );
    simd_kernel!(
        avx2_f64,
        avx2_f64_r,
        f64,
        "avx2,fma",
        4,
        AVX2_MR,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        [1, 2, 3, 4, 5, 6]
    );
}

impl GemmElem for f32 {
    const ZERO: Self = 0.0;

    unsafe fn pack_rows(src: *const Self, lda: usize, kb: usize, mr: usize, dst: *mut Self) {
        #[cfg(target_arch = "x86_64")]
        if mr & 3 == 0 {
            // SAFETY: forwarded contract; SSE is part of the x86_64 baseline.
            unsafe { x86::pack_rows_f32(src, lda, kb, mr, dst) };
            return;
        }
        // SAFETY: forwarded contract.
        unsafe { pack_rows_scalar(src, lda, 0, kb, mr, dst) }
    }

    fn kernel(isa: Isa) -> Kernel<Self> {
        // kc × nc × 4 bytes of packed B stays in L2 while each mr × kc A micro-panel sits in
        // L1. AVX-512: a depth of up to 1024 in one block (0.5 MiB of B), so a product of
        // k ≤ 1024 writes each C tile once instead of reading it back per depth block: the
        // C, A and B streams together cost the kernel ~12 % of its speed in sgemm1024 with
        // (384, 512), and (1024, 128) measured 3–5 % faster there and in conv2d.
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Kernel { mr: x86::AVX512_MR, nr: 32, kc: 1024, nc: 128, ukr: x86::avx512_f32 },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel { mr: x86::AVX2_MR, nr: 16, kc: 256, nc: 512, ukr: x86::avx2_f32 },
            _ => Kernel { mr: SCALAR_MR, nr: SCALAR_NR, kc: 256, nc: 512, ukr: ukr_scalar::<f32> },
        }
    }
}

impl GemmElem for f64 {
    const ZERO: Self = 0.0;

    unsafe fn pack_rows(src: *const Self, lda: usize, kb: usize, mr: usize, dst: *mut Self) {
        #[cfg(target_arch = "x86_64")]
        if mr & 1 == 0 {
            // SAFETY: forwarded contract; SSE2 is part of the x86_64 baseline.
            unsafe { x86::pack_rows_f64(src, lda, kb, mr, dst) };
            return;
        }
        // SAFETY: forwarded contract.
        unsafe { pack_rows_scalar(src, lda, 0, kb, mr, dst) }
    }

    fn kernel(isa: Isa) -> Kernel<Self> {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Kernel { mr: x86::AVX512_MR, nr: 16, kc: 256, nc: 384, ukr: x86::avx512_f64 },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel { mr: x86::AVX2_MR, nr: 8, kc: 256, nc: 256, ukr: x86::avx2_f64 },
            _ => Kernel { mr: SCALAR_MR, nr: SCALAR_NR, kc: 256, nc: 256, ukr: ukr_scalar::<f64> },
        }
    }
}
