//! bf16 × bf16 products on AVX512_BF16's `vdpbf16ps`, which multiplies pairs of bf16 and
//! adds both products into one f32 lane: twice the multiply-adds of an f32 FMA per
//! instruction, and half the bytes to stream.
//!
//! The pairs run along k: a word holds `(x[2p], x[2p+1])`, the even element in the low half.
//! B is packed once into `NR`-column panels of pair words; each task copies its rows of A per
//! depth block at a padded pitch, and a tile broadcasts one A word per row and pair. Each
//! task owns a block of rows; for each depth block it sweeps every B panel with its row
//! tiles, keeping f32 sums between blocks, and the last block rounds them to bf16 (once, as
//! `bf16::from_f32` does). Products are exact in f32 (8-bit significands); the sums round as
//! the hardware does, with denormal inputs read as zero.

use half::bf16;
use std::cell::RefCell;
use std::mem::MaybeUninit;

thread_local! {
    /// A task's rows of A for one depth block, `AP_PITCH` words apart (at most `MC_MAX` rows:
    /// 2.2 MB per thread, kept).
    static A_ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Rows per micro-tile: 12 rows × 2 vectors of 16 lanes = 24 accumulators of 32 registers.
const MR: usize = 12;
/// Columns per micro-tile: two 16-lane vectors.
const NR: usize = 32;
/// Pairs of depth per block: a `KCP × NR` block of B (128 KiB, in L2 and fetched ahead by
/// the tile) serves every row tile of the task; products of depth up to 2048 take one block,
/// so their sums never leave the registers before they are rounded.
const KCP: usize = 1024;
/// Words between two rows of a task's copy of A: a depth block and one cache line, so the
/// rows of a tile do not alias in L1.
const AP_PITCH: usize = KCP + 16;
/// The most rows one task takes, which bounds the per-thread copy of A.
const MC_MAX: usize = 44 * MR;
/// Below this many multiply-adds a product runs on its caller's thread: four times the f32
/// GEMM's bar, twice for `vdpbf16ps`'s doubled multiply-adds per instruction and twice for the
/// cross-core traffic of a split (docs/PERFORMANCE.md, nineteenth session).
const PAR_MIN_MNK: usize = 1 << 20;

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

/// What [`gemm_bf16`] writes: the sums rounded to bf16, or as they are in f32.
pub(crate) trait ProductOut: Copy + Send + Sync + 'static {
    /// Whether the sums are stored as f32 (else rounded to bf16).
    const F32: bool;
}
impl ProductOut for bf16 {
    const F32: bool = false;
}
impl ProductOut for f32 {
    const F32: bool = true;
}

/// `c = a · b` in `O` (bf16: rounded once; f32: the f32 sums), for a row-major `m × k` `a`, a
/// `k × n` `b` (row-major, or when `b_transposed` its transpose row-major: `n × k`) and a
/// row-major `m × n` `c`, every element of which is written.
///
/// # Panics
/// If [`available`] is false, or a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16<O: ProductOut>(
    m: usize,
    n: usize,
    k: usize,
    a: &[bf16],
    b: &[bf16],
    b_transposed: bool,
    c: &mut [MaybeUninit<O>],
    parallel: bool,
) {
    assert!(available(), "gemm_bf16 needs AVX512_BF16");
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "gemm_bf16: operands shorter than their shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum, as in PyTorch.
        // All-zero bits are 0.0 in both bf16 and f32.
        c[..m * n].iter_mut().for_each(|c| *c = MaybeUninit::zeroed());
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
    // B as pair words: panel q, pair p, column j at `(q * kp + p) * NR + j`; every word is
    // written (columns past n as zeros), so the buffer starts uninitialized. It starts on a
    // cache line (16 words of slack), since whole lines may be streamed to it.
    let mut bp = crate::backend::cpu::pool::alloc::<u32>(panels * kp * NR + 16);
    let line = bp.spare_capacity_mut().as_ptr().align_offset(64);
    assert!(line < 16, "a buffer of u32 reaches a cache line within 16 words");
    // Packed a group of panels at a time, pair by pair: each pass reads `GROUP · NR` columns
    // of two rows (whole cache lines, in order) instead of one panel's 64 bytes per row.
    const GROUP: usize = 4;
    let pack = |q0: usize, panels: &mut [MaybeUninit<u32>], stream: bool| {
        let count = panels.len() / (kp * NR);
        for p in 0..kp {
            let (lo, hi) = (&b[2 * p * n..], if 2 * p + 1 < k { Some(&b[(2 * p + 1) * n..]) } else { None });
            for dq in 0..count {
                let j0 = (q0 + dq) * NR;
                let row = &mut panels[(dq * kp + p) * NR..][..NR];
                if j0 + NR <= n
                    && let Some(hi) = hi
                {
                    // SAFETY: `available()` holds, both rows hold NR columns from j0, and
                    // `row` holds NR words, from a line boundary (the buffer's start and
                    // the panel rows' 128 bytes).
                    unsafe { pack_pairs(&lo[j0..j0 + NR], &hi[j0..j0 + NR], row.as_mut_ptr().cast(), stream) };
                    continue;
                }
                for (jj, w) in row.iter_mut().enumerate() {
                    let j = j0 + jj;
                    let l = if j < n { lo[j].to_bits() as u32 } else { 0 };
                    let h = if j < n { hi.map_or(0, |h| h[j].to_bits() as u32) } else { 0 };
                    w.write(l | (h << 16));
                }
            }
        }
    };
    // Bᵀ row-major: a pair is two neighbours in a row of Bᵀ, so each column of a panel is
    // one row read in order.
    let pack_transposed = |q0: usize, panels: &mut [MaybeUninit<u32>], stream: bool| {
        for (dq, panel) in panels.chunks_mut(kp * NR).enumerate() {
            let j0 = (q0 + dq) * NR;
            if k.is_multiple_of(2) {
                // Whole pairs: word p of row j is `b`'s bytes as they lie, transposed NR rows
                // at a time. SAFETY: `available()` holds; rows j0.. below n hold k elements;
                // the panel starts on a line boundary.
                let out = panel.as_mut_ptr().cast();
                unsafe { transpose_pairs(&b[j0 * k..n * k], kp, (n - j0).min(NR), out, stream) };
                continue;
            }
            for jj in 0..NR {
                let j = j0 + jj;
                if j >= n {
                    (0..kp).for_each(|p| _ = panel[p * NR + jj].write(0));
                    continue;
                }
                for (p, pair) in b[j * k..(j + 1) * k].chunks(2).enumerate() {
                    let h = pair.get(1).map_or(0, |h| h.to_bits() as u32);
                    panel[p * NR + jj].write(pair[0].to_bits() as u32 | (h << 16));
                }
            }
        }
    };
    let pack = |q0: usize, panels: &mut [MaybeUninit<u32>], stream: bool| {
        if b_transposed {
            pack_transposed(q0, panels, stream)
        } else {
            pack(q0, panels, stream)
        }
        if stream {
            // Streamed lines are weakly ordered: they must be out before the join that lets
            // other threads read them.
            fence();
        }
    };
    // Row blocks: a few per thread, of whole register tiles, so a slow thread holds up
    // little (see `row_blocks`).
    let split = parallel && super::super::splitting_bar(PAR_MIN_MNK).is_some_and(|bar| m * n * k >= bar);
    let threads = if split { rayon::current_num_threads() } else { 1 };
    let tiles = m.div_ceil(MR);
    let mut tasks = (4 * threads).min(tiles).max(tiles.div_ceil(MC_MAX / MR));
    // Too few row blocks for the threads (a product with few rows: a small layer's or a
    // convolution's): each block's panels are split into groups as well. With one block of
    // rows at most MC_MAX high and one depth block, the tasks cover all rows and a group of
    // panels each, which packs its own panels, so that no panel packed on one core is read
    // on another.
    let groups = if threads > 1 && tasks < 2 * threads { (2 * threads).div_ceil(tasks).min(panels) } else { 1 };
    let own_panels = groups > 1 && m <= MC_MAX && kp <= KCP;
    let groups = if own_panels { (2 * threads).min(panels) } else { groups };
    if own_panels {
        tasks = 1;
    }
    let blocks = row_blocks(m, tasks, groups, if split { threads.min(tasks * groups) } else { 1 });
    // Group g's panels: counts that differ by at most one (9 panels in 4 groups: 2 2 2 3, where
    // groups of 3 left the last one empty and one thread's share twice the other's).
    let group = |g: usize| (g * panels / groups, (g + 1) * panels / groups);
    let words = super::super::parallel::SendPtr(bp.spare_capacity_mut()[line..].as_mut_ptr());
    if !own_panels {
        // SAFETY: the buffer has room for every panel; nothing else addresses it meanwhile.
        let words = unsafe { std::slice::from_raw_parts_mut(words.get(), panels * kp * NR) };
        // B shared by several cores is streamed to memory: the cores that read the buffer
        // in the previous product still hold its lines, and a plain store waits until each
        // is taken from them (docs/PERFORMANCE.md, twentieth session).
        let stream = split && tasks * groups > 1;
        if split && super::super::worth_splitting(k * n) {
            super::super::parallel::for_each_chunk(words, GROUP * kp * NR, |g, chunk| pack(g * GROUP, chunk, stream));
        } else {
            words.chunks_mut(GROUP * kp * NR).enumerate().for_each(|(g, chunk)| pack(g * GROUP, chunk, stream));
        }
    }
    let base = super::super::parallel::SendPtr(c.as_mut_ptr());
    let task = |i: usize| {
        let (t, g) = (i / groups, i % groups);
        let ((r0, rows), (q0, q1)) = (blocks[t], group(g));
        if q0 >= q1 {
            return;
        }
        if own_panels {
            // SAFETY: panels q0..q1 are this task's alone (one row task), inside the buffer.
            let mine = unsafe { std::slice::from_raw_parts_mut(words.get().add(q0 * kp * NR), (q1 - q0) * kp * NR) };
            pack(q0, mine, false);
        }
        // SAFETY: panels q0..q1 were packed, above or before the tasks started.
        let packed: &[u32] =
            unsafe { std::slice::from_raw_parts(words.get().add(q0 * kp * NR).cast(), (q1 - q0) * kp * NR) };
        // Kept per worker thread: fresh zeroed buffers per task cost a few percent.
        // With more than one depth block, the sums so far (f32) between blocks: written by
        // the first block's tiles before any reads them, so the buffer starts uninitialized
        // and is only addressed through raw pointers.
        let mut part: Vec<f32> = if kp > KCP { crate::backend::cpu::pool::alloc(rows * n) } else { Vec::new() };
        A_ROWS.with_borrow_mut(|ap| {
            // The task's rows of one depth block, copied `AP_PITCH` words apart: rows a pitch
            // apart that is a multiple of 4 KiB (A's own, for many shapes) alias in L1.
            let need = rows.div_ceil(MR) * MR * AP_PITCH;
            if ap.len() < need {
                ap.resize(need, 0);
            }
            for p0 in (0..kp).step_by(KCP) {
                let kb = KCP.min(kp - p0);
                pack_a(&a[r0 * 2 * kp..], kp, rows, p0, kb, ap);
                let stage = Stage { first: p0 == 0, last: p0 + kb == kp };
                for q in q0..q1 {
                    let cols = NR.min(n - q * NR);
                    let panel = &packed[((q - q0) * kp + p0) * NR..((q - q0) * kp + p0 + kb) * NR];
                    for i0 in (0..rows).step_by(MR) {
                        let mr = MR.min(rows - i0);
                        let at = &ap[i0 * AP_PITCH..(i0 + MR) * AP_PITCH];
                        let c0 = i0 * n + q * NR;
                        // SAFETY: `available()` holds; `at` holds `kb * MR` pair words,
                        // `panel` `kb * NR`; C from row r0 (this task's rows and panels,
                        // which no other task writes) and `part` (when there is more than
                        // one block) hold `mr` rows `n` apart with `cols` elements each from
                        // c0.
                        unsafe {
                            let part = if kp > KCP { part.as_mut_ptr().add(c0) } else { std::ptr::null_mut() };
                            let at_c = base.get().add(r0 * n + c0);
                            tile(at, panel, kb, part, Out { at: at_c.cast(), f32: O::F32 }, n, [mr, cols], stage)
                        };
                    }
                }
            }
        });
        crate::backend::cpu::pool::recycle_vec(part);
    };
    if split && tasks * groups > 1 {
        super::super::parallel::for_each_task(tasks * groups, task);
    } else {
        (0..tasks * groups).for_each(task);
    }
    // Back to the pool: a fresh buffer per product cost its page faults every call.
    crate::backend::cpu::pool::recycle_vec(bp);
}

/// The row blocks of a product of `m` rows as `(first row, rows)`: `tasks` blocks of whole
/// register tiles whose counts differ by at most one, for tasks `t · groups + g` run by
/// `parallel::for_each_task` on `threads` threads. That hands each thread a contiguous share
/// of the tasks first, so the larger blocks are spread over the shares (the j-th block of
/// every share before the (j+1)-th of any): the threads' rows then differ by at most a tile,
/// where larger blocks first had put them all in the first share (1024 rows: 528 and 496).
fn row_blocks(m: usize, tasks: usize, groups: usize, threads: usize) -> Vec<(usize, usize)> {
    let tiles = m.div_ceil(MR);
    let (base, extra) = (tiles / tasks, tiles % tasks);
    let all = tasks * groups;
    // Block t's share (as for_each_task cuts them: `s·all/threads..`) and place in it.
    let rank = |t: usize| {
        let s = (0..threads).rev().find(|&s| s * all / threads <= t * groups).unwrap_or(0);
        let first_block = (s * all / threads).div_ceil(groups);
        (t - first_block.min(t)) * threads + s
    };
    let mut by_rank: Vec<usize> = (0..tasks).collect();
    by_rank.sort_by_key(|&t| rank(t));
    let mut large = vec![false; tasks];
    by_rank.iter().take(extra).for_each(|&t| large[t] = true);
    let mut r0 = 0;
    large
        .iter()
        .map(|&l| {
            let rows = ((base + usize::from(l)) * MR).min(m - r0);
            r0 += rows;
            (r0 - rows, rows)
        })
        .collect()
}

/// Rows `0..rows` of `a` (`2 * kp` elements each), pairs `p0..p0 + kb`, as pair words
/// `AP_PITCH` apart (a pair's two bf16 are one little-endian word as they lie), rows up to
/// the next multiple of `MR` as zeros.
fn pack_a(a: &[bf16], kp: usize, rows: usize, p0: usize, kb: usize, ap: &mut [u32]) {
    for (row, dst) in ap.chunks_mut(AP_PITCH).take(rows.next_multiple_of(MR)).enumerate() {
        if row >= rows {
            dst[..kb].fill(0);
            continue;
        }
        let src = &a[row * 2 * kp + 2 * p0..][..2 * kb];
        // SAFETY: `src` holds 2·kb bf16 and `dst` kb words: the same 4·kb bytes, which on a
        // little-endian CPU are the words with the even element in the low half.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), dst.as_mut_ptr().cast::<u8>(), 4 * kb) };
    }
}

/// Where a tile's results go: bf16 (rounded) or f32 elements from `at`.
#[derive(Clone, Copy)]
struct Out {
    at: *mut u8,
    f32: bool,
}

impl Out {
    /// The element `i` places on.
    fn offset(self, i: usize) -> Out {
        Out { at: self.at.wrapping_add(i * if self.f32 { 4 } else { 2 }), ..self }
    }
}

/// Where a depth block stands: the first starts the sums, the last rounds them to bf16.
#[derive(Clone, Copy)]
struct Stage {
    first: bool,
    last: bool,
}

/// Stores a packed line: streamed past the caches (`stream`), or plainly.
///
/// # Safety
/// AVX-512F is available; `out` has room for 16 words and, when `stream`, is 64-byte aligned,
/// and [`fence`] runs before any other thread reads the line.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_line(out: *mut u32, v: std::arch::x86_64::__m512i, stream: bool) {
    use std::arch::x86_64::*;
    // SAFETY: as the caller promises.
    unsafe {
        if stream {
            _mm512_stream_si512(out.cast(), v);
        } else {
            _mm512_storeu_si512(out.cast(), v);
        }
    }
}

/// Orders streamed stores before the stores that follow (the join that publishes them).
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// `out[j] = lo[j] | hi[j] << 16` for NR columns: the bf16 pairs of two rows of B, widened
/// and merged sixteen at a time, streamed past the caches when `stream`.
///
/// # Safety
/// AVX-512F is available; `lo` and `hi` hold NR elements, `out` has room for NR words and,
/// when `stream`, is 64-byte aligned.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_pairs(lo: &[bf16], hi: &[bf16], out: *mut u32, stream: bool) {
    use std::arch::x86_64::*;
    for h in 0..NR / 16 {
        // SAFETY: 16 elements from 16·h lie inside each slice; line h of `out` is inside it.
        unsafe {
            let l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo.as_ptr().add(16 * h).cast()));
            let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(hi.as_ptr().add(16 * h).cast()));
            store_line(out.add(16 * h), _mm512_or_si512(l, _mm512_slli_epi32(u, 16)), stream);
        }
    }
}

/// `out[p·NR + j] = word p of row j` for `rows ≤ NR` rows of `kp` words each (a transposed
/// B's pairs), columns from `rows` on as zeros: 16 × 16 blocks of words loaded row by row and
/// transposed in registers, four times cheaper than gathering each panel row's words.
///
/// Streamed past the caches when `stream`.
///
/// # Safety
/// AVX-512F is available; `b` holds `rows · 2kp` elements and `out` room for `kp · NR` words,
/// from a 64-byte boundary when `stream`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_pairs(b: &[bf16], kp: usize, rows: usize, out: *mut u32, stream: bool) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= rows * 2 * kp);
    let words = b.as_ptr().cast::<u32>();
    for h in 0..NR / 16 {
        let live = rows.saturating_sub(16 * h).min(16);
        for p0 in (0..kp).step_by(16) {
            let w = (kp - p0).min(16);
            let mask = ((1u32 << w) - 1) as u16;
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, r) in r.iter_mut().enumerate().take(live) {
                // SAFETY: row 16h + i is below `rows`; the mask keeps to its words p0..p0 + w.
                *r = unsafe { _mm512_maskz_loadu_epi32(mask, words.add((16 * h + i) * kp + p0).cast()) };
            }
            let cols = transpose16(r);
            for (c, col) in cols.iter().enumerate().take(w) {
                // SAFETY: pair p0 + c < kp, so the 16 words lie inside `out`'s kp · NR, on a
                // line of their own.
                unsafe { store_line(out.add((p0 + c) * NR + 16 * h), *col, stream) };
            }
        }
    }
}

/// `dst[(j - j0)·rows + i] = bf16(src[i·cols + j])` for columns `j` in `j0..j1`: that part of
/// the transpose of a row-major `rows × cols` f32 matrix, rounded as `vcvtneps2bf16` does, in
/// 16 × 16 blocks transposed in registers (a strided copy element by element cost more than
/// the product it fed).
///
/// # Panics
/// If [`available`] is false or the CPU lacks AVX-512BW/VL, `j0..j1` is not inside `0..cols`,
/// or a slice is shorter than its part.
pub(crate) fn transposed_rounded(
    src: &[f32],
    rows: usize,
    cols: usize,
    (j0, j1): (usize, usize),
    dst: &mut [MaybeUninit<bf16>],
) {
    assert!(super::super::conv_bf16::available(), "transposed_rounded needs AVX512_BF16, BW and VL");
    assert!(j0 <= j1 && j1 <= cols, "transposed_rounded: columns {j0}..{j1} of {cols}");
    assert!(
        src.len() >= rows * cols && dst.len() >= rows * (j1 - j0),
        "transposed_rounded: slices shorter than the matrix"
    );
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    #[allow(clippy::incompatible_msrv)]
    unsafe fn run(src: &[f32], rows: usize, cols: usize, (j0, j1): (usize, usize), dst: &mut [MaybeUninit<bf16>]) {
        use std::arch::x86_64::*;
        let d = dst.as_mut_ptr().cast::<u16>();
        for i0 in (0..rows).step_by(16) {
            let h = (rows - i0).min(16);
            let store = ((1u32 << h) - 1) as u16;
            for jb in (j0..j1).step_by(16) {
                let w = (j1 - jb).min(16);
                let load = ((1u32 << w) - 1) as u16;
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, r) in r.iter_mut().enumerate().take(h) {
                    // SAFETY: row i0 + i < rows; the mask keeps to its columns jb..jb + w.
                    *r = unsafe { _mm512_maskz_loadu_epi32(load, src.as_ptr().add((i0 + i) * cols + jb).cast()) };
                }
                for (j, col) in transpose16(r).iter().enumerate().take(w) {
                    // SAFETY: column jb + j < j1; the mask keeps to its rows i0..i0 + h.
                    unsafe {
                        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_castsi512_ps(*col)));
                        _mm256_mask_storeu_epi16(d.add((jb + j - j0) * rows + i0).cast(), store, b);
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run(_: &[f32], _: usize, _: usize, _: (usize, usize), _: &mut [MaybeUninit<bf16>]) {
        unreachable!("available() is false off x86_64")
    }
    // SAFETY: the features were detected and both slices hold the part.
    unsafe { run(src, rows, cols, (j0, j1), dst) }
}

/// The 16 × 16 transpose of 32-bit words: `out[j]` lane `i` is `r[i]` lane `j`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // t: rows 2i and 2i+1 interleaved, columns 4L, 4L+1 (even t) or 4L+2, 4L+3 (odd t) of
    // each 128-bit lane L.
    let t: [__m512i; 16] = std::array::from_fn(|j| {
        let (a, b) = (r[j & !1], r[j | 1]);
        if j % 2 == 0 { _mm512_unpacklo_epi32(a, b) } else { _mm512_unpackhi_epi32(a, b) }
    });
    // u[4g + c]: rows 4g..4g+4 of column 4L + c in lane L.
    let u: [__m512i; 16] = std::array::from_fn(|j| {
        let (g, c) = (j / 4, j % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 { _mm512_unpacklo_epi64(a, b) } else { _mm512_unpackhi_epi64(a, b) }
    });
    // Lanes 0 and 2 (`EVEN`) or 1 and 3 (`ODD`) of two vectors, gathered twice, put the four
    // row groups of one column side by side.
    const EVEN: i32 = 0b10_00_10_00;
    const ODD: i32 = 0b11_01_11_01;
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let v = _mm512_shuffle_i32x4::<EVEN>(u[c], u[4 + c]);
        let w = _mm512_shuffle_i32x4::<ODD>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_i32x4::<EVEN>(u[8 + c], u[12 + c]);
        let w2 = _mm512_shuffle_i32x4::<ODD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<EVEN>(v, v2);
        out[8 + c] = _mm512_shuffle_i32x4::<ODD>(v, v2);
        out[4 + c] = _mm512_shuffle_i32x4::<EVEN>(w, w2);
        out[12 + c] = _mm512_shuffle_i32x4::<ODD>(w, w2);
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_pairs(_: &[bf16], _: usize, _: usize, _: *mut u32, _: bool) {
    unreachable!("available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_pairs(_: &[bf16], _: &[bf16], _: *mut u32, _: bool) {
    unreachable!("available() is false off x86_64")
}

/// One `mr × cols` tile (`mr ≤ MR`, `cols ≤ NR`) over `kb` pairs of depth: its sums plus
/// those in `part` unless `stage.first`, rounded into `out` when `stage.last`, else stored in
/// `part`.
///
/// # Safety
/// AVX512_BF16 is available; `a` holds `MR` rows of `kb` pair words, `AP_PITCH` apart,
/// `b` holds `kb * NR`; `out` addresses `mr` rows `ld` apart, each of `cols` bf16, and so
/// does `part` in f32 unless both `stage.first` and `stage.last`.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::incompatible_msrv)]
unsafe fn tile(
    a: &[u32],
    b: &[u32],
    kb: usize,
    part: *mut f32,
    out: Out,
    ld: usize,
    [mr, cols]: [usize; 2],
    stage: Stage,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // Prefetch distances in pairs: the B panel (128 KiB) streams from L2 and the A panel
    // from L2 or L3, and without the hints the products wait on them.
    const PF_B: usize = 8;
    const PF_A: usize = 64;
    for p in 0..kb {
        // SAFETY: pair p of both panels lies inside the slices (see above); a prefetch
        // past them is only a hint.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((p + PF_B) * NR).cast());
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((p + PF_B) * NR + 16).cast());
            // Each row needs a new line every 16 pairs; one row per pair in turn covers them.
            _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add((p % MR) * AP_PITCH + p + PF_A).cast());
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i * AP_PITCH + p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    let mut lanes = [0f32; NR];
    // Row i's sums, finished: `acc` indexed by constants only (rows past `mr` skipped), since
    // a loop over rows made the compiler keep the sums in a stack array zeroed per tile.
    macro_rules! finish_row {
        ($($i:literal)*) => {$(
            if $i < mr {
                // SAFETY: row i of `part` and `out` holds `cols` elements (see above); full
                // rows are read and written as vectors, partial ones through `lanes`.
                unsafe { finish(acc[$i][0], acc[$i][1], part.wrapping_add($i * ld), out.offset($i * ld), cols, stage, &mut lanes) };
            }
        )*};
    }
    finish_row!(0 1 2 3 4 5 6 7 8 9 10 11);
}

/// One row of a tile's sums (`v0`, `v1`): plus `part` unless `stage.first`, then rounded into
/// `out` when `stage.last`, else stored in `part`.
///
/// # Safety
/// AVX-512F is available; `out` (bf16) and unless both first and last `part` (f32) hold
/// `cols ≤ NR` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish(
    mut v0: std::arch::x86_64::__m512,
    mut v1: std::arch::x86_64::__m512,
    pr: *mut f32,
    o: Out,
    cols: usize,
    stage: Stage,
    lanes: &mut [f32; NR],
) {
    use std::arch::x86_64::*;
    // SAFETY: as the caller vouches.
    unsafe {
        if !stage.first {
            if cols == NR {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(pr));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(pr.add(16)));
            } else {
                lanes[..cols].copy_from_slice(std::slice::from_raw_parts(pr, cols));
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(lanes.as_ptr()));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(lanes.as_ptr().add(16)));
            }
        }
        // The f32 results are stored as the partial sums are.
        let pr = if stage.last && o.f32 { o.at.cast::<f32>() } else { pr };
        if stage.last && !o.f32 {
            let o = o.at.cast::<half::bf16>();
            let (h0, h1) = (round_bf16(v0), round_bf16(v1));
            if cols == NR {
                _mm256_storeu_si256(o.cast(), h0);
                _mm256_storeu_si256(o.add(16).cast(), h1);
            } else {
                let mut halves = [half::bf16::ZERO; NR];
                _mm256_storeu_si256(halves.as_mut_ptr().cast(), h0);
                _mm256_storeu_si256(halves.as_mut_ptr().add(16).cast(), h1);
                std::ptr::copy_nonoverlapping(halves.as_ptr(), o, cols);
            }
        } else if cols == NR {
            _mm512_storeu_ps(pr, v0);
            _mm512_storeu_ps(pr.add(16), v1);
        } else {
            _mm512_storeu_ps(lanes.as_mut_ptr(), v0);
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16), v1);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), pr, cols);
        }
    }
}

/// Sixteen f32 rounded to bf16 as `bf16::from_f32` does: to nearest, ties to even, NaN kept
/// (made quiet).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn round_bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let x = _mm512_castps_si512(v);
    let high = _mm512_srli_epi32::<16>(x);
    let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(_: &[u32], _: &[u32], _: usize, _: *mut f32, _: Out, _: usize, _: [usize; 2], _: Stage) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 triple loop over the same bf16 values: products are exact, so the only
    /// differences are the f32 summation (relative 1e-5 of the sum of magnitudes) and the
    /// final rounding to bf16 (half a unit in the last place, at most 2^-8 relative). B read
    /// transposed gives the same bits, and the f32 output rounds to them. Depths past 2048
    /// take more than one depth block.
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
        let shapes = [
            (3, 5, 0),
            (1, 1, 1),
            (12, 32, 2),
            (13, 33, 3),
            (97, 65, 129),
            (200, 31, 64),
            (5, 100, 1),
            (30, 40, 2101),
            (13, 64, 1026),
            // Bᵀ transposed in several groups of panels, the last one partial.
            (7, 300, 6),
            // Whole and partial 16 × 16 word blocks of Bᵀ, live rows on both halves of a panel.
            (5, 17, 32),
            (4, 50, 40),
            // Split across threads (when the pool has several): B streamed to memory, row
            // blocks of unequal tile counts, an odd depth; the last two large enough for B to
            // be packed by several threads (k · n past the elementwise splitting bar).
            (300, 260, 262),
            (290, 250, 129),
            (64, 520, 514),
            (40, 530, 301),
            // Few rows, split: tasks over groups of panels that pack their own (10 in 4).
            (20, 290, 800),
        ];
        for &(m, n, k) in &shapes {
            let a: Vec<bf16> = (0..m * k).map(|_| next()).collect();
            let b: Vec<bf16> = (0..k * n).map(|_| next()).collect();
            let mut c = vec![MaybeUninit::new(bf16::NAN); m * n];
            gemm_bf16(m, n, k, &a, &b, false, &mut c, true);
            // The same product from Bᵀ stored row-major.
            let bt: Vec<bf16> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let mut ct = vec![MaybeUninit::new(bf16::NAN); m * n];
            gemm_bf16(m, n, k, &a, &bt, true, &mut ct, true);
            // And as f32 sums, which round to exactly the bf16 results.
            let mut c32 = vec![MaybeUninit::new(f32::NAN); m * n];
            gemm_bf16(m, n, k, &a, &b, false, &mut c32, true);
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: both products wrote every element (they started as NaN anyway).
                    let (x, y) = unsafe { (c[i * n + j].assume_init(), ct[i * n + j].assume_init()) };
                    assert_eq!(x.to_bits(), y.to_bits(), "({m},{n},{k}) [{i},{j}]: B and Bᵀ disagree");
                    // SAFETY: as above.
                    let s = unsafe { c32[i * n + j].assume_init() };
                    assert_eq!(bf16::from_f32(s).to_bits(), x.to_bits(), "({m},{n},{k}) [{i},{j}]: f32 sums {s}");
                    let (mut want, mut mag) = (0f64, 0f64);
                    for p in 0..k {
                        let t = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                        want += t;
                        mag += t.abs();
                    }
                    let got = x.to_f64();
                    let tol = 1e-5 * mag + want.abs() / 256.0 + 1e-30;
                    assert!((got - want).abs() <= tol, "({m},{n},{k}) [{i},{j}]: {got} vs {want}");
                }
            }
        }
    }

    /// Row blocks cover every row once, each at most `MC_MAX` rows of whole tiles (the last
    /// may end early), and the threads' shares of them differ by at most one tile.
    #[test]
    fn row_blocks_cover_the_rows_in_even_shares() {
        for m in (1..3000usize).step_by(7) {
            let tiles = m.div_ceil(MR);
            for threads in 1..6 {
                for groups in [1, 3] {
                    let tasks = (4 * threads).min(tiles).max(tiles.div_ceil(MC_MAX / MR));
                    let p = threads.min(tasks * groups);
                    let blocks = row_blocks(m, tasks, groups, p);
                    let mut next = 0;
                    for &(r0, rows) in &blocks {
                        assert_eq!(r0, next, "m {m}: blocks must follow one another");
                        assert!(rows > 0 && rows <= MC_MAX, "m {m}: block of {rows} rows");
                        assert!(r0 + rows == m || rows % MR == 0, "m {m}: a block inside C is whole tiles");
                        next = r0 + rows;
                    }
                    assert_eq!(next, m);
                    if groups == 1 && tasks % p == 0 {
                        let share = |s: usize| -> usize {
                            blocks[s * tasks / p..(s + 1) * tasks / p].iter().map(|b| b.1.div_ceil(MR)).sum()
                        };
                        let sums: Vec<usize> = (0..p).map(share).collect();
                        let (lo, hi) = (sums.iter().min().unwrap(), sums.iter().max().unwrap());
                        assert!(hi - lo <= 1, "m {m}, {p} threads: tiles per share {sums:?}");
                    }
                }
            }
        }
    }

    /// The tile's rounding agrees bit for bit with `bf16::from_f32`: ties both ways, the
    /// largest finite values (one rounds to infinity), denormals, infinities and NaNs.
    #[test]
    fn rounds_as_half_does() {
        if !available() {
            return;
        }
        let mut bits: Vec<u32> = vec![
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x3F80_7FFF,
            0x7F7F_7FFF,
            0x7F7F_8000,
            0x7F7F_FFFF,
            0x0000_8000,
            0x0001_8000,
            0x0000_0001,
            0x8000_8001,
            0x7F80_0000,
            0xFF80_0000,
            0x7F80_0001,
            0xFFC0_0000,
            0x7FBF_FFFF,
            0x0000_0000,
            0x8000_0000,
        ];
        bits.extend((0..4096u32).map(|i| i.wrapping_mul(0x9E37_79B9)));
        for chunk in bits.chunks(16) {
            let mut v = [0f32; 16];
            v.iter_mut().zip(chunk).for_each(|(v, &b)| *v = f32::from_bits(b));
            let mut got = [0u16; 16];
            // SAFETY: AVX-512F is available; `v` and `got` hold 16 lanes.
            unsafe {
                use std::arch::x86_64::*;
                let r = round_bf16(_mm512_loadu_ps(v.as_ptr()));
                _mm256_storeu_si256(got.as_mut_ptr().cast(), r);
            }
            for (x, g) in v.iter().zip(got).take(chunk.len()) {
                assert_eq!(g, bf16::from_f32(*x).to_bits(), "{:#010x}", x.to_bits());
            }
        }
    }

    /// The register transpose puts every element where a plain transpose does, rounded as
    /// `bf16::from_f32` rounds normal numbers: whole and partial 16 × 16 blocks both ways.
    #[test]
    fn transposed_rounded_is_the_rounded_transpose() {
        if !available() {
            return;
        }
        for (rows, cols) in [(1, 1), (1, 17), (17, 1), (16, 16), (15, 33), (40, 23), (64, 32)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.001).collect();
            let mut dst = vec![MaybeUninit::new(bf16::NAN); rows * cols];
            transposed_rounded(&src, rows, cols, (0, cols), &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    // SAFETY: every element was written (they started as NaN anyway).
                    let got = unsafe { dst[j * rows + i].assume_init() };
                    assert_eq!(got.to_bits(), bf16::from_f32(src[i * cols + j]).to_bits(), "{rows}x{cols} [{i},{j}]");
                }
            }
        }
    }
}
