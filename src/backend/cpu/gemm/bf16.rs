//! bf16 × bf16 → f32 products on AVX512_BF16's `vdpbf16ps`, which multiplies pairs of bf16
//! and adds both products into one f32 lane: twice the multiply-adds of an f32 FMA per
//! instruction, and half the bytes to stream.
//!
//! The pairs run along k: a word holds `(x[2p], x[2p+1])`, the even element in the low half.
//! B is packed once into `NR`-column panels of pair words; each task packs its rows of A per
//! depth block into `MR`-row panels, and a tile broadcasts one A word per row and pair. Each task owns a
//! block of rows; for each depth block it sweeps every B panel with its row tiles, adding
//! into C after the first block. Products are exact in f32 (8-bit significands);
//! the sums round as the hardware does, with denormal inputs read as zero.

use half::bf16;

/// Rows per micro-tile: 12 rows × 2 vectors of 16 lanes = 24 accumulators of 32 registers.
const MR: usize = 12;
/// Columns per micro-tile: two 16-lane vectors.
const NR: usize = 32;
/// Pairs of depth per block: a `KCP × NR` block of B (32 KiB) stays in L1 while the task's
/// row tiles sweep it.
const KCP: usize = 512;

/// Whether this CPU runs the bf16 kernel (AVX-512F with AVX512_BF16).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c = a · b` for a row-major `m × k` `a`, a row-major `k × n` `b` and a row-major `m × n`
/// `c`, every element of which is written.
///
/// # Panics
/// If [`available`] is false, or a slice is shorter than its shape.
pub(crate) fn gemm_bf16(m: usize, n: usize, k: usize, a: &[bf16], b: &[bf16], c: &mut [f32], parallel: bool) {
    assert!(available(), "gemm_bf16 needs AVX512_BF16");
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm_bf16: operands shorter than their shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum, as in PyTorch.
        c[..m * n].fill(0.0);
        return;
    }
    let kp = k.div_ceil(2);
    // An odd depth gets a zero column, so every row is whole pairs.
    let padded: Vec<bf16>;
    let a = if k % 2 == 1 {
        let mut p = crate::backend::cpu::pool::filled(m * (k + 1), bf16::ZERO);
        for (dst, src) in p.chunks_mut(k + 1).zip(a.chunks(k)) {
            dst[..k].copy_from_slice(src);
        }
        padded = p;
        &padded[..]
    } else {
        a
    };
    let panels = n.div_ceil(NR);
    // B as pair words: panel q, pair p, column j at `(q * kp + p) * NR + j`.
    let mut bp = crate::backend::cpu::pool::filled(panels * kp * NR, 0u32);
    let pack = |q: usize, panel: &mut [u32]| {
        for (p, row) in panel.chunks_mut(NR).enumerate() {
            let j0 = q * NR;
            let (lo, hi) = (&b[2 * p * n..], if 2 * p + 1 < k { Some(&b[(2 * p + 1) * n..]) } else { None });
            if j0 + NR <= n
                && let Some(hi) = hi
            {
                // SAFETY: `available()` holds, and both rows hold NR columns from j0.
                unsafe { pack_pairs(&lo[j0..j0 + NR], &hi[j0..j0 + NR], row) };
                continue;
            }
            for (jj, w) in row.iter_mut().enumerate().take(n.saturating_sub(j0)) {
                let l = lo[j0 + jj].to_bits() as u32;
                let h = hi.map_or(0, |h| h[j0 + jj].to_bits() as u32);
                *w = l | (h << 16);
            }
        }
    };
    if parallel && super::super::worth_splitting(k * n) {
        super::super::parallel::for_each_chunk(&mut bp, kp * NR, pack);
    } else {
        bp.chunks_mut(kp * NR).enumerate().for_each(|(q, panel)| pack(q, panel));
    }
    // Row blocks: a few per thread (whole register tiles), so a slow thread holds up little.
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let mc = m.div_ceil(4 * threads).next_multiple_of(MR).max(MR);
    let rows_task = |t: usize, c: &mut [f32]| {
        let r0 = t * mc;
        let rows = mc.min(m - r0);
        // The task's rows of one depth block, packed as MR-row panels of pair words (row i of
        // pair p at `p * MR + i`): one stream per tile instead of MR rows a row pitch apart,
        // which alias in L1 when the pitch is a multiple of 4 KiB.
        let mut ap = vec![0u32; rows.div_ceil(MR) * MR * KCP.min(kp)];
        for p0 in (0..kp).step_by(KCP) {
            let kb = KCP.min(kp - p0);
            for (tile_i, panel) in ap.chunks_mut(MR * kb).enumerate().take(rows.div_ceil(MR)) {
                for i in 0..MR {
                    let row = tile_i * MR + i;
                    if row >= rows {
                        (0..kb).for_each(|p| panel[p * MR + i] = 0);
                        continue;
                    }
                    // Row `row`'s pairs p0.. as words, read in order and spread MR apart.
                    let src = &a[(r0 + row) * 2 * kp + 2 * p0..][..2 * kb];
                    for (p, pair) in src.chunks_exact(2).enumerate() {
                        panel[p * MR + i] = pair[0].to_bits() as u32 | ((pair[1].to_bits() as u32) << 16);
                    }
                }
            }
            for q in 0..panels {
                let cols = NR.min(n - q * NR);
                let panel = &bp[(q * kp + p0) * NR..(q * kp + p0 + kb) * NR];
                for i0 in (0..rows).step_by(MR) {
                    let mr = MR.min(rows - i0);
                    let at = &ap[(i0 / MR) * MR * kb..(i0 / MR + 1) * MR * kb];
                    let c0 = i0 * n + q * NR;
                    // SAFETY: `available()` holds; `at` holds `kb * MR` pair words, `panel`
                    // `kb * NR`, and `c` (this task's rows) `mr` rows `n` apart with `cols`
                    // floats each from c0.
                    unsafe { tile(at, panel, kb, &mut c[c0..], n, [mr, cols], p0 > 0) };
                }
            }
        }
    };
    let tasks = m.div_ceil(mc);
    if parallel && tasks > 1 && super::super::worth_splitting(m * n * k) {
        super::super::parallel::for_each_chunk(&mut c[..m * n], mc * n, rows_task);
    } else {
        c[..m * n].chunks_mut(mc * n).enumerate().for_each(|(t, c)| rows_task(t, c));
    }
}

/// `out[j] = lo[j] | hi[j] << 16` for NR columns: the bf16 pairs of two rows of B, widened
/// and merged sixteen at a time.
///
/// # Safety
/// AVX-512F is available; `lo`, `hi` and `out` hold NR elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_pairs(lo: &[bf16], hi: &[bf16], out: &mut [u32]) {
    use std::arch::x86_64::*;
    for h in 0..NR / 16 {
        // SAFETY: 16 elements from 16·h lie inside each slice.
        unsafe {
            let l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo.as_ptr().add(16 * h).cast()));
            let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(hi.as_ptr().add(16 * h).cast()));
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * h).cast(), _mm512_or_si512(l, _mm512_slli_epi32(u, 16)));
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_pairs(_: &[bf16], _: &[bf16], _: &mut [u32]) {
    unreachable!("available() is false off x86_64")
}

/// One `mr × cols` tile of C (`mr ≤ MR`, `cols ≤ NR`) over `kb` pairs of depth, added to what
/// C holds when `accumulate`.
///
/// # Safety
/// AVX512_BF16 is available; `a` holds `kb * MR` pair words (row i of pair p at `p * MR + i`),
/// `b` holds `kb * NR`, and `c` holds `mr` rows `ldc` apart, each of `cols`.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::incompatible_msrv)]
unsafe fn tile(a: &[u32], b: &[u32], kb: usize, c: &mut [f32], ldc: usize, [mr, cols]: [usize; 2], accumulate: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kb {
        // SAFETY: pair p of both panels lies inside the slices (see above).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(mr) {
        let dst = &mut c[i * ldc..i * ldc + cols];
        let mut lanes = [0f32; NR];
        // SAFETY: `lanes` holds NR = 32 floats.
        unsafe {
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), acc[1]);
        }
        if accumulate {
            dst.iter_mut().zip(&lanes).for_each(|(d, v)| *d += v);
        } else {
            dst.copy_from_slice(&lanes[..cols]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: &[u32], _: &[u32], _: usize, _: &mut [f32], _: usize, _: [usize; 2], _: bool) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 triple loop over the same bf16 values: products are exact, so the only
    /// difference is f32 summation (relative 1e-5 of the sum of magnitudes).
    #[test]
    fn matches_a_triple_loop_on_every_edge() {
        if !available() {
            eprintln!("no AVX512_BF16 on this CPU: the widening f32 path serves bf16 here");
            return;
        }
        let mut s = 0x9E37_79B9u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            bf16::from_f32((s % 2001) as f32 / 1000.0 - 1.0)
        };
        for &(m, n, k) in &[(3, 5, 0), (1, 1, 1), (12, 32, 2), (13, 33, 3), (97, 65, 129), (200, 31, 64), (5, 100, 1)] {
            let a: Vec<bf16> = (0..m * k).map(|_| next()).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| next()).collect();
            let mut c = vec![f32::NAN; m * n];
            gemm_bf16(m, n, k, &a, &b, &mut c, true);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for p in 0..k {
                        let t = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                        want += t;
                        mag += t.abs();
                    }
                    let got = c[i * n + j] as f64;
                    assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "({m},{n},{k}) [{i},{j}]: {got} vs {want}");
                }
            }
        }
    }
}
