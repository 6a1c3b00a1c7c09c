//! Blocking and scheduling: which thread computes which rows and columns, in which
//! `kc × nc` blocks, with which packed panels kept or shared, and the small-product paths
//! that skip packing altogether.

use super::*;
use crate::backend::cpu::parallel::SendPtr;
use std::cell::RefCell;
/// A packed product with at least this many register panels of rows per thread hands its rows
/// out panel by panel ([`gemm_claimed_rows`]) instead of one rectangle per thread.
pub(super) const CLAIMED_ROWS_MIN_PANELS: usize = 8;

/// The whole product on up to `threads` threads, which share the packing and claim register
/// panels of rows one at a time in each block step, so a thread that starts late or runs on a
/// slower vCPU takes fewer of them: one rectangle per thread waits for the slowest.
///
/// - **B blocks** are packed once for all threads, into two buffers used by alternate steps:
///   the threads that reach a step claim its B register panels one at a time, so one that arrives
///   while the other still computes packs them all, and the block is ready when all are packed.
///   A step packs into its buffer only once every row panel is past the step that last read it.
/// - **A panels** of a depth block (when packed rather than read in place, over several column
///   blocks) are packed by whichever thread claims the panel in the depth block's first column
///   block and kept for the later ones.
/// - A panel's steps accumulate into the same C tile in order, so a thread may start a panel's
///   step only once the previous one is done (`done`); claims run in row order, so that wait
///   is rare and short.
///
/// # Safety
/// `a`/`b` passed `check_operand` (or were built) for `m × k` and `k × n`; `c` points to
/// `m × n` row-major elements that no one else accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_claimed_rows<T: GemmElem, A: PackA<T>, B: PackB<T>>(
    kern: &Kernel<T>,
    m: usize,
    n: usize,
    k: usize,
    a: &A,
    b: &B,
    c: SendPtr<T>,
    threads: usize,
) {
    use crate::backend::cpu::parallel::spin_until;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
    let (mr, nr) = (kern.mr, kern.nr);
    let kc = depth_block(k, kern.kc);
    let nc = n.div_ceil(n.div_ceil(kern.nc)).next_multiple_of(nr);
    // Depth blocks outermost, so that a kept A panel serves every column block of its depth
    // block (packed in the one at jc == 0).
    let steps: Vec<(usize, usize)> =
        (0..k).step_by(kc).flat_map(|pc| (0..n).step_by(nc).map(move |jc| (jc, pc))).collect();
    let panels = m.div_ceil(mr);
    let keep_a = keeps_a_panels(a, m, k, n > nc);
    let atomics = |len: usize| -> Vec<AtomicUsize> { (0..len).map(|_| AtomicUsize::new(0)).collect() };
    // next[s]: the next unclaimed row panel of step s; done[i]: the steps panel i has finished;
    // b_next[s] / b_done[s]: the next unclaimed / the packed register panels of step s's B block.
    let (next, done, b_next, b_done) =
        (atomics(steps.len()), atomics(panels), atomics(steps.len()), atomics(steps.len()));
    // Set when a thread unwinds, so that no other waits for a panel it will never finish.
    let failed = AtomicBool::new(false);
    struct OnUnwind<'f>(&'f AtomicBool);
    impl Drop for OnUnwind<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(true, Relaxed);
            }
        }
    }
    let b_len = kc * nc;
    let a_len = if keep_a { panels * mr * kc } else { 0 };
    // The caller's buffer: B blocks at 0 and b_len (64-byte aligned: nc is a multiple of the
    // register width), then kept A panel i at 2*b_len + i*mr*kc.
    with_buf::<T, _>(&SHARED_BUF, 2 * b_len + a_len, |shared| {
        let shared = SendPtr(shared.as_mut_ptr());
        let worker = || {
            let _guard = OnUnwind(&failed);
            with_pack_buf::<T, _>(mr * kc, |ap| {
                for (s, &(jc, pc)) in steps.iter().enumerate() {
                    // A thread that arrives late skips the steps already handed out whole.
                    if next[s].load(Relaxed) >= panels {
                        continue;
                    }
                    let (kb, nb) = (kc.min(k - pc), nc.min(n - jc));
                    let bp = shared.get().wrapping_add(s % 2 * b_len);
                    let b_panels = nb.div_ceil(nr);
                    if b_next[s].load(Relaxed) < b_panels {
                        // Acquire: the reads of the step that last used this buffer are over.
                        let reused = || s < 2 || done.iter().all(|d| d.load(Acquire) + 1 >= s);
                        spin_until(|| reused() || failed.load(Relaxed));
                        if !reused() {
                            return; // another thread unwound before finishing its panel
                        }
                        // One register panel at a time: a block is only a few panels wide.
                        loop {
                            let q = b_next[s].fetch_add(1, Relaxed);
                            if q >= b_panels {
                                break;
                            }
                            let j0 = q * nr;
                            // SAFETY: panel q lies in buffer s % 2, which no thread reads
                            // meanwhile (`reused`) and no other packs (claimed once); the block
                            // lies in the checked shape.
                            unsafe {
                                let dst = std::slice::from_raw_parts_mut(bp.add(j0 * kb), kb * nr);
                                b.pack(pc, kb, jc + j0, nr.min(nb - j0), nr, dst);
                            }
                            // Release: the packed panel is visible to whoever sees the count.
                            b_done[s].fetch_add(1, Release);
                        }
                    }
                    spin_until(|| b_done[s].load(Acquire) == b_panels || failed.load(Relaxed));
                    if b_done[s].load(Acquire) != b_panels {
                        return;
                    }
                    let step = Step { pc, kb, jc, nb, b: bp.cast_const(), ldb: nr, b_in_place: false };
                    loop {
                        let i = next[s].fetch_add(1, Relaxed);
                        if i >= panels {
                            break;
                        }
                        // Acquire: the previous step's writes to this panel's C tile are visible.
                        spin_until(|| done[i].load(Acquire) == s || failed.load(Relaxed));
                        if done[i].load(Acquire) != s {
                            return; // another thread unwound before finishing this panel
                        }
                        let slot = if keep_a {
                            // SAFETY: the kept slot of panel i lies in `shared`; no other thread
                            // touches it while this one holds the panel's current step.
                            unsafe {
                                std::slice::from_raw_parts_mut(shared.get().add(2 * b_len + i * mr * kc), mr * kc)
                            }
                        } else {
                            &mut *ap
                        };
                        // SAFETY: panel i of step s is this thread's alone (claimed once), and its
                        // earlier steps are finished, among them the one that packed a kept slot;
                        // the B block is packed and the tile lies in C.
                        unsafe {
                            let (ir, mb) = (i * mr, mr.min(m - i * mr));
                            panel_row(kern, a, m, k, ir, mb, &step, c.get(), n, slot, keep_a && jc > 0, None)
                        };
                        done[i].store(s + 1, Release);
                    }
                }
            })
        };
        crate::backend::cpu::parallel::for_each_task(threads, |_| worker());
    });
}

/// Splits C into at most `threads` rectangles `(r0, r1, c0, c1)` aligned to
/// the register tile, minimising the largest one (the critical path). Ties
/// prefer fewer tasks (less redundant packing), then splitting columns (each
/// task then packs only its part of B).
pub(super) fn partition(m: usize, n: usize, mr: usize, nr: usize, threads: usize) -> Vec<(usize, usize, usize, usize)> {
    let pm = m.div_ceil(mr);
    let pn = n.div_ceil(nr);
    let mut best = (usize::MAX, 0, 0, 0);
    for tm in 1..=threads.min(pm) {
        for tn in 1..=(threads / tm).min(pn) {
            let rows = (pm.div_ceil(tm) * mr).min(m);
            let cols = (pn.div_ceil(tn) * nr).min(n);
            let key = (rows * cols, tm * tn, usize::MAX - tn);
            if key < (best.0, best.1, best.2) {
                best = (key.0, key.1, key.2, tm);
            }
        }
    }
    let tm = best.3;
    let tn = best.1 / tm;
    let split = |panels: usize, parts: usize, unit: usize, len: usize| -> Vec<(usize, usize)> {
        (0..parts)
            .map(|p| {
                // Panels p*panels/parts .. (p+1)*panels/parts spreads the
                // remainder evenly.
                let s = (p * panels / parts * unit).min(len);
                let e = ((p + 1) * panels / parts * unit).min(len);
                (s, e)
            })
            .collect()
    };
    let rs = split(pm, tm, mr, m);
    let cs = split(pn, tn, nr, n);
    let mut tasks = Vec::with_capacity(tm * tn);
    for &(r0, r1) in &rs {
        for &(c0, c1) in &cs {
            if r0 < r1 && c0 < c1 {
                tasks.push((r0, r1, c0, c1));
            }
        }
    }
    tasks
}

/// Unpacked product for tiny or degenerate shapes, where packing would cost
/// more than it saves. The loop order follows B's layout so that B (the
/// large operand of a matrix-vector product) is read along its contiguous
/// direction.
///
/// # Safety
/// `a` and `b` must have passed `check_operand` for `m×k` and `k×n`.
pub(super) unsafe fn gemm_direct<T: GemmElem>(m: usize, n: usize, k: usize, a: &MatRef<T>, b: &MatRef<T>, c: &mut [T]) {
    debug_assert_eq!(c.len(), m * n);
    if n == 1 || b.row_stride < b.col_stride {
        // Columns of B are the contiguous direction: one dot product each.
        for (i, crow) in c.chunks_exact_mut(n).enumerate() {
            for (j, cv) in crow.iter_mut().enumerate() {
                // SAFETY: i < m, j < n, bounds-checked by the caller.
                *cv = unsafe { dot(a, i, b, j, k) };
            }
        }
        return;
    }
    // Rows of B are the contiguous direction: accumulate scaled rows of B.
    for (i, crow) in c.chunks_exact_mut(n).enumerate() {
        crow.fill(T::ZERO);
        for p in 0..k {
            // SAFETY: i < m, p < k.
            let aip = unsafe { a.at(i, p) };
            if b.col_stride == 1 {
                let start = b.offset + p * b.row_stride;
                // Slices let the compiler vectorise.
                let brow = &b.data[start..start + n];
                for (cv, &bv) in crow.iter_mut().zip(brow) {
                    *cv = *cv + aip * bv;
                }
            } else {
                for (j, cv) in crow.iter_mut().enumerate() {
                    // SAFETY: p < k, j < n.
                    *cv = *cv + aip * unsafe { b.at(p, j) };
                }
            }
        }
    }
}

/// Row `i` of A times column `j` of B.
///
/// # Safety
/// `a` and `b` passed `check_operand` for shapes containing row `i` (of
/// length `k`) and column `j` (of height `k`).
#[inline]
pub(super) unsafe fn dot<T: GemmElem>(a: &MatRef<T>, i: usize, b: &MatRef<T>, j: usize, k: usize) -> T {
    // Independent partial sums hide the add latency and, with contiguous
    // slices, let the compiler use SIMD lanes.
    let mut acc = [T::ZERO; 8];
    if a.col_stride == 1 && b.row_stride == 1 {
        let sa = a.offset + i * a.row_stride;
        let sb = b.offset + j * b.col_stride;
        let (ra, rb) = (&a.data[sa..sa + k], &b.data[sb..sb + k]);
        let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
        let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::ZERO, |s, (&x, &y)| s + x * y);
        for (xa, xb) in ca.zip(cb) {
            for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
                *s = *s + x * y;
            }
        }
        acc[0] = acc[0] + tail;
    } else {
        for p in 0..k {
            // SAFETY: p < k, within the checked row and column.
            acc[p % 8] = acc[p % 8] + unsafe { a.at(i, p) * b.at(p, j) };
        }
    }
    let h = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// 64-byte aligned storage unit for the packing buffers.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct Align64([u8; 64]);

thread_local! {
    /// Per-thread packing buffer, reused across calls so steady-state GEMMs
    /// neither allocate nor page-fault.
    static PACK_BUF: RefCell<Vec<Align64>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's buffer for what the threads of [`gemm_claimed_rows`] pack for one
    /// another: two B blocks and A's panels of one depth block.
    static SHARED_BUF: RefCell<Vec<Align64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a 64-byte aligned scratch slice of `len` elements.
pub(super) fn with_pack_buf<T: GemmElem, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    with_buf(&PACK_BUF, len, f)
}

/// Runs `f` with a 64-byte aligned slice of `len` elements of the thread-local buffer `key`.
pub(super) fn with_buf<T: GemmElem, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<Align64>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let blocks = (len * size_of::<T>()).div_ceil(64);
    let view = |v: &mut Vec<Align64>| -> &mut [T] {
        if v.len() < blocks {
            v.resize(blocks, Align64([0; 64]));
        }
        // SAFETY: the Vec owns at least len*size_of::<T>() initialised bytes,
        // aligned to 64 >= align_of::<T>(), and T (sealed: f32/f64) accepts
        // any bit pattern. The borrow of `v` outlives the returned slice.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<T>(), len) }
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(view(&mut v)),
        // Re-entered on this thread (e.g. a nested call from a stolen rayon
        // job): fall back to a fresh buffer instead of panicking.
        Err(_) => f(view(&mut Vec::new())),
    })
}

/// Whether a product keeps its packed A panels for all column blocks of a depth block
/// (`several_column_blocks`) instead of packing each panel again per column block. Packing A
/// reads `mr` rows a row pitch apart, often from memory: in sgemm 2048 that was a tenth of the
/// time, repeated for each of the four column blocks. A kept block costs `rows × kc` elements
/// of buffer, read back in order.
pub(super) fn keeps_a_panels<T, A: PackA<T>>(a: &A, rows: usize, k: usize, several_column_blocks: bool) -> bool {
    several_column_blocks && A::PACKS_INTO_SCRATCH && a.in_place(rows, k, 0, 0).is_none()
}

/// Computes the rows `r0..r1`, columns `c0..c1` of C sequentially.
///
/// # Safety
/// `a`/`b` passed `check_operand` for a shape containing the rectangle, `c`
/// points to a row-major matrix with leading dimension `ldc` containing the
/// rectangle, and no other thread accesses that rectangle meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_rect<T: GemmElem, A: PackA<T>, B: PackB<T>>(
    kern: &Kernel<T>,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    k: usize,
    a: &A,
    b: &B,
    c: *mut T,
    ldc: usize,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let kc = depth_block(k, kern.kc);
    let width = c1 - c0;
    let nc = width.div_ceil(width.div_ceil(kern.nc)).next_multiple_of(nr);
    // B block first so that its rows start 64-byte aligned.
    let b_len = kc * nc;
    let keep_a = keeps_a_panels(a, r1 - r0, k, width > nc);
    let a_len = if keep_a { (r1 - r0).div_ceil(mr) * mr * kc } else { mr * kc };
    with_pack_buf::<T, _>(b_len + a_len, |buf| {
        let (bp, ap) = buf.split_at_mut(b_len);
        // Depth blocks outermost: a kept A panel serves every column block of its depth block.
        for pc in (0..k).step_by(kc) {
            let kb = kc.min(k - pc);
            for (jb, jc) in (c0..c1).step_by(nc).enumerate() {
                let nb = nc.min(c1 - jc);
                // A block of whole register panels may be read in place; otherwise it is packed.
                let direct = b.in_place(k, ldc, pc, jc).filter(|_| nb.is_multiple_of(nr));
                let (bsrc, ldb) = direct.unwrap_or_else(|| {
                    // SAFETY: the rectangle lies in the checked shape.
                    unsafe { b.pack(pc, kb, jc, nb, nr, bp) };
                    (bp.as_ptr(), nr)
                });
                let step = Step { pc, kb, jc, nb, b: bsrc, ldb, b_in_place: direct.is_some() };
                for (q, ir) in (r0..r1).step_by(mr).enumerate() {
                    let slot = if keep_a { &mut ap[q * mr * kc..][..mr * kc] } else { &mut *ap };
                    let a_ready = keep_a && jb > 0;
                    // The next panel, packed after this one: fetched during this one's kernel calls.
                    let next = (ir + mr < r1 && !a_ready).then(|| (ir + mr, mr.min(r1 - ir - mr)));
                    // SAFETY: as above; the panel row lies in the caller's rectangle, and a kept
                    // panel was packed for this depth block by the first column block.
                    unsafe { panel_row(kern, a, r1 - r0, k, ir, mr.min(r1 - ir), &step, c, ldc, slot, a_ready, next) };
                }
            }
        }
    });
}

/// One depth block of one column block of a product: `B[pc..pc+kb, jc..jc+nb]`, packed (`nr`
/// wide micro-panels) or read in place at `b` with rows `ldb` apart.
pub(super) struct Step<T> {
    pc: usize,
    kb: usize,
    jc: usize,
    nb: usize,
    b: *const T,
    ldb: usize,
    b_in_place: bool,
}

/// `C[ir..ir+mb, jc..jc+nb] (+)= A[ir..ir+mb, pc..pc+kb] · B block` for one register panel of
/// rows: its A micro-panel packed into `ap` (or read in place), then one kernel call per
/// register panel of columns. The first depth block writes C, later ones accumulate.
///
/// # Safety
/// As [`gemm_rect`], for the tile; `a_rows` is the height of the rectangle `a` is read for (it
/// decides whether A is read in place), `ap` holds `mr * kb` elements, and with `a_ready` it
/// already holds this panel (`a` packs into scratch and is not read in place). `next` is the
/// panel (`ir`, `mb`) to be packed after this one, whose source is fetched meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn panel_row<T: GemmElem, A: PackA<T>>(
    kern: &Kernel<T>,
    a: &A,
    a_rows: usize,
    k: usize,
    ir: usize,
    mb: usize,
    step: &Step<T>,
    c: *mut T,
    ldc: usize,
    ap: &mut [T],
    a_ready: bool,
    next: Option<(usize, usize)>,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let &Step { pc, kb, jc, nb, b, ldb, b_in_place } = step;
    // SAFETY: ir and pc step by mr and kc inside the checked shape.
    let (asrc, lda) = match a.in_place(a_rows, k, ir, pc) {
        Some(direct) => direct,
        None if a_ready => (ap.as_ptr(), 0),
        None => (unsafe { a.panel(ir, mb, pc, kb, mr, ap) }.as_ptr(), 0),
    };
    let fetch_next = next.filter(|_| lda == 0);
    let parts = nb.div_ceil(nr);
    for (jp, j) in (0..nb).step_by(nr).enumerate() {
        if let Some((next_ir, next_mb)) = fetch_next {
            a.prefetch_panel(next_ir, next_mb, pc, kb, jp, parts);
        }
        // Panel jp: packed, kb rows of nr at jp*kb*nr; in place, B's own rows from column j.
        let panel = if b_in_place { j } else { jp * kb * nr };
        // SAFETY: the A panel holds kb*mr elements and the B panel kb rows of nr, ldb apart;
        // the C tile (ir.., jc+j..) of mb × min(nr, nb-j) lies inside the caller's tile.
        unsafe {
            (kern.ukr)(kb, asrc, lda, b.add(panel), ldb, c.add(ir * ldc + jc + j), ldc, mb, nr.min(nb - j), pc > 0)
        };
    }
}
