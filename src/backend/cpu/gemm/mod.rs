//! Dense matrix multiplication (GEMM) for the CPU backend.
//!
//! BLIS-style design: panels of B (`kc × nc`) and A (`mr × kc`) are packed into
//! contiguous buffers so that the register-blocked micro-kernel streams memory
//! linearly whatever the operands' strides are (transposed or broadcast views
//! cost nothing extra). The packed B block is sized to stay in L2 and the packed
//! A micro-panel stays in L1 while it sweeps across that B block.
//!
//! Micro-kernels are chosen once at run time: AVX-512F, AVX2+FMA, or a portable
//! scalar fallback (the only one compiled on non-x86_64 targets).
//!
//! Where each decision lives:
//! - this file: the element trait, the operand type, the entry points and the choice
//!   between the direct path, one packed product and row blocks;
//! - `pack.rs`: how A and B are packed into register panels (strided or implicit operands);
//! - `schedule.rs`: blocking and threads: who computes which rectangle, which packed panels
//!   are kept or shared, the small-product paths;
//! - `kernels.rs`: the register-blocked micro-kernels per instruction set and element type;
//! - `bf16.rs`: bf16 products on `vdpbf16ps`; `f16.rs`: f16 operands widened while packed;
//! - `tests.rs`: everything against a plain triple loop.

use super::parallel::SendPtr;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul};

mod bf16;
mod f16;
mod kernels;
mod pack;
mod schedule;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
pub(crate) use pack::short_copy_avx512;
use pack::*;
pub use pack::{PackA, PackB, PackedA};
pub(crate) use pack::{copy_row, prefetch_hint};
use schedule::*;

pub(crate) use bf16::{ProductOut, available as bf16_gemm_available, gemm_bf16, transposed_rounded};
pub(crate) use f16::{gemm_f16, narrow as narrow_f16};

mod sealed {
    /// Restricts [`super::GemmElem`] to types for which the packing buffers'
    /// reinterpretation of raw bytes is sound (plain floats: every bit pattern
    /// is valid and alignment is at most 64).
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Element types the GEMM supports (implemented for `f32` and `f64`).
///
/// The trait is sealed: the packing code relies on the element being a plain
/// float.
pub trait GemmElem: sealed::Sealed + Copy + Send + Sync + 'static + Add<Output = Self> + Mul<Output = Self> {
    /// Additive identity.
    const ZERO: Self;

    /// Micro-kernel and blocking parameters for the given instruction set.
    #[doc(hidden)]
    fn kernel(isa: Isa) -> Kernel<Self>;

    /// Packs `mr` full rows of `kb` contiguous elements (row `i` starts at
    /// `src + i*lda`) into `dst[p*mr + i]`.
    ///
    /// # Safety
    /// All those reads are in bounds and `dst` holds `kb*mr` elements.
    #[doc(hidden)]
    unsafe fn pack_rows(src: *const Self, lda: usize, kb: usize, mr: usize, dst: *mut Self) {
        // SAFETY: the caller guarantees the bounds.
        unsafe { pack_rows_scalar(src, lda, 0, kb, mr, dst) }
    }
}

/// Scalar part of [`GemmElem::pack_rows`] for columns `p0..kb`.
///
/// # Safety
/// As for [`GemmElem::pack_rows`].
unsafe fn pack_rows_scalar<T: Copy>(src: *const T, lda: usize, p0: usize, kb: usize, mr: usize, dst: *mut T) {
    for i in 0..mr {
        for p in p0..kb {
            // SAFETY: guaranteed by the caller.
            unsafe { *dst.add(p * mr + i) = *src.add(i * lda + p) };
        }
    }
}

/// Instruction set a micro-kernel is written for (internal).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

/// `ukr(kc, a, lda, b, ldb, c, ldc, rows, cols, accumulate)`: computes the `rows × cols` tile
/// `C (=|+=) Apanel · Bpanel`, both panels of depth `kc`. `Apanel` is an `mr`-interleaved
/// packed micro-panel when `lda` is 0, else `rows` rows of a row-major A, `lda` apart;
/// `Bpanel` is `kc` rows of `nr` elements, `ldb` apart (`nr` when packed).
type MicroKernel<T> = unsafe fn(usize, *const T, usize, *const T, usize, *mut T, usize, usize, usize, bool);

/// A micro-kernel with its register tile (`mr × nr`) and cache blocking
/// (`kc`, `nc`) parameters (internal).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernel<T> {
    mr: usize,
    nr: usize,
    kc: usize,
    nc: usize,
    ukr: MicroKernel<T>,
}

/// One strided matrix operand: element (i, j) is at
/// `data[offset + i*row_stride + j*col_stride]`.
///
/// A transposed view is the same data with the strides swapped; a stride of 0
/// broadcasts a row or column.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    /// Backing storage.
    pub data: &'a [T],
    /// Index of element (0, 0).
    pub offset: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<T: Copy> MatRef<'_, T> {
    /// Element (i, j) without bounds checks.
    ///
    /// # Safety
    /// `check_operand` must have accepted this operand for a shape that
    /// contains (i, j).
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> T {
        // SAFETY: the caller guarantees the index was bounds-checked up front.
        unsafe { *self.data.get_unchecked(self.offset + i * self.row_stride + j * self.col_stride) }
    }
}

/// Panics unless every element of a `rows × cols` view lies inside `data`;
/// after this, unchecked accesses to the view are sound.
fn check_operand<T>(x: &MatRef<'_, T>, rows: usize, cols: usize, name: &str) {
    let last = (rows - 1)
        .checked_mul(x.row_stride)
        .and_then(|r| (cols - 1).checked_mul(x.col_stride).and_then(|c| r.checked_add(c)))
        .and_then(|v| v.checked_add(x.offset));
    assert!(
        matches!(last, Some(l) if l < x.data.len()),
        "gemm: operand {name} ({rows}x{cols}, offset {}, strides {}x{}) exceeds its {} elements",
        x.offset,
        x.row_stride,
        x.col_stride,
        x.data.len()
    );
}

/// A row-major A of at most this many bytes (with short rows) is read in place rather than
/// packed.
const IN_PLACE_A_BYTES: usize = 512 * 1024;
/// A row-major B of at most this many bytes is read in place rather than packed.
const IN_PLACE_B_BYTES: usize = 512 * 1024;

/// The least work (multiply-adds) of a task of a product split into many row blocks.
const MIN_TASK_MNK: usize = 1 << 18;

/// Up to this many multiply-adds (8×8×8) the direct loop wins; above it the packed kernels do
/// even for thin products, since the direct loop is compiled without the CPU's vector
/// extensions (docs/PERFORMANCE.md, seventeenth session).
const SMALL_MNK: usize = 512;
/// Below this many multiply-adds splitting across threads costs more than it
/// gains, on a thread of the rayon pool (more elsewhere: `super::splitting_bar`).
const PAR_MIN_MNK: usize = 64 * 64 * 64;

/// The requested instruction set, or the best supported one below it: the
/// SIMD kernels may only be selected after this check.
fn usable_isa(want: Isa) -> Isa {
    let best = super::simd::supported();
    match want {
        Isa::Avx512 if best == super::simd::Isa::Avx512 => Isa::Avx512,
        Isa::Avx512 | Isa::Avx2 if best != super::simd::Isa::Scalar => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

/// C (m×n, row-major contiguous, `c.len() == m*n`) = A (m×k) · B (k×n).
///
/// C is overwritten, not accumulated. Any strides work (a transposed view is
/// just swapped strides; stride 0 = broadcast) and nothing is copied by the
/// caller. `k == 0` yields zeros; `m == 0` or `n == 0` does nothing. With
/// `parallel`, large products are split across the current rayon pool.
///
/// # Panics
/// If `c.len() != m*n` or an operand view reaches outside its `data`.
pub fn gemm<T: GemmElem>(m: usize, n: usize, k: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T], parallel: bool) {
    gemm_with(Opts::DEFAULT, m, n, k, a, b, c, parallel);
}

/// Internal knobs of [`gemm`]; tests use them to drive every kernel, blocking
/// and threading path.
#[derive(Clone, Copy, Debug)]
struct Opts {
    /// Requested instruction set, lowered to what the CPU supports (so any
    /// request is sound).
    isa: Isa,
    /// `(kc, nc)` overriding the kernel's cache blocking.
    blocking: Option<(usize, usize)>,
    /// Products with at most this many multiply-adds take the direct loop.
    small_mnk: usize,
    /// Products with fewer multiply-adds than this stay on one thread.
    par_min_mnk: usize,
    /// The most bytes of A panels a product keeps packed across its column blocks.
    kept_a_bytes: usize,
}

impl Opts {
    const DEFAULT: Opts = Opts {
        isa: Isa::Avx512,
        blocking: None,
        small_mnk: SMALL_MNK,
        par_min_mnk: PAR_MIN_MNK,
        kept_a_bytes: KEPT_A_BYTES,
    };
}

/// The bound on kept A panels ([`keeps_a_panels`]): they live in a thread-local buffer that
/// stays allocated, and a taller product would otherwise keep a copy of all of A (a batch of
/// 65536 rows of 1024 inputs: 256 MiB). 16 MiB keeps every row of a 4092-row f32 product
/// with 1024-deep blocks (sgemm 2048 takes 8 MiB); beyond that, row blocks.
const KEPT_A_BYTES: usize = 16 << 20;

#[allow(clippy::too_many_arguments)]
fn gemm_with<T: GemmElem>(
    opts: Opts,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
    parallel: bool,
) {
    assert_eq!(c.len(), m * n, "gemm: c.len() must be m*n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(T::ZERO);
        return;
    }
    check_operand(&a, m, k, "a");
    check_operand(&b, k, n, "b");

    let mnk = m.saturating_mul(n).saturating_mul(k);
    // A single row or column is a matrix-vector product: bound by reading
    // the matrix once, which packing would triple, and a register tile would
    // be mostly padding.
    if mnk <= opts.small_mnk || m == 1 || n == 1 {
        // SAFETY: both operands were bounds-checked for their shapes.
        unsafe { gemm_direct(m, n, k, &a, &b, c) };
        return;
    }

    packed(opts, m, n, k, &a, &b, as_uninit(c), parallel);
}

/// Views initialized memory as writable slots (writing valid values keeps it initialized).
fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, and the GEMM only writes valid values of T.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// [`gemm`] into uninitialized memory, which it fully writes: a new product's output needs no
/// zero-filling pass first.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_uninit<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    assert_eq!(c.len(), m * n, "gemm: c.len() must be m*n");
    let mnk = m.saturating_mul(n).saturating_mul(k);
    if m == 0 || n == 0 || k == 0 || mnk <= SMALL_MNK || m == 1 || n == 1 {
        // The direct loop reads C as it accumulates: start from zeros.
        c.fill(MaybeUninit::new(T::ZERO));
        // SAFETY: every element was just written.
        let c = unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) };
        return gemm(m, n, k, a, b, c, parallel);
    }
    check_operand(&a, m, k, "a");
    check_operand(&b, k, n, "b");
    packed(Opts::DEFAULT, m, n, k, &a, &b, c, parallel);
}

/// `C = A·B` (writing all of `c`, row-major `m × n`, which may start uninitialized) for any
/// packable B: the packed path only, so tiny products pay for packing. The caller guarantees B's `k × n` shape is in bounds.
///
/// # Panics
/// If `c.len() != m*n` or A reaches outside its `data`.
pub fn gemm_packed<T: GemmElem, B: PackB<T>>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: &B,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    assert_eq!(c.len(), m * n, "gemm: c.len() must be m*n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(MaybeUninit::new(T::ZERO));
        return;
    }
    check_operand(&a, m, k, "a");
    packed(Opts::DEFAULT, m, n, k, &a, b, c, parallel);
}

/// `C = A·B` as [`gemm_packed`], with A packed beforehand.
///
/// # Panics
/// If `c.len() != a.m*n`, or A was packed for another kernel than this call's (a different
/// instruction-set setting).
pub fn gemm_packed_a<T: GemmElem, B: PackB<T>>(
    n: usize,
    a: &PackedA<T>,
    b: &B,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    let (m, k) = (a.m, a.k);
    assert_eq!(c.len(), m * n, "gemm: c.len() must be m*n");
    let kern = T::kernel(usable_isa(Opts::DEFAULT.isa));
    assert!(kern.mr == a.mr && depth_block(k, kern.kc) == a.kc, "gemm: A was packed for another kernel");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(MaybeUninit::new(T::ZERO));
        return;
    }
    packed(Opts::DEFAULT, m, n, k, a, b, c, parallel);
}

/// The packed, optionally threaded product behind [`gemm`] and [`gemm_packed`]; operands are
/// checked and `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
fn packed<T: GemmElem, A: PackA<T>, B: PackB<T>>(
    opts: Opts,
    m: usize,
    n: usize,
    k: usize,
    a: &A,
    b: &B,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    let mut kern = T::kernel(usable_isa(opts.isa));
    if let Some((kc, nc)) = opts.blocking {
        kern.kc = kc.max(1);
        kern.nc = nc.max(1);
    }
    // A product that would keep more than `kept_a_bytes` of A panels runs as row blocks of
    // whole register panels, as even as possible, each packing B again: once per few thousand
    // rows, a small price for a bounded buffer.
    let panel_bytes = kern.mr * depth_block(k, kern.kc) * size_of::<T>();
    let panels = m.div_ceil(kern.mr);
    let max_panels = (opts.kept_a_bytes / panel_bytes).max(1);
    if panels > max_panels && keeps_a_panels(a, m, k, n > kern.nc) {
        let rows = panels.div_ceil(panels.div_ceil(max_panels)) * kern.mr;
        for (r0, c) in (0..m).step_by(rows).zip(c.chunks_mut(rows * n)) {
            let block = RowBlock { a, r0 };
            packed_rows(kern, opts, c.len() / n, n, k, &block, b, c, parallel);
        }
        return;
    }
    packed_rows(kern, opts, m, n, k, a, b, c, parallel);
}

/// Rows `r0..` of an A operand, for a product run as row blocks; `r0` is a multiple of the
/// register panel height.
struct RowBlock<'a, A> {
    a: &'a A,
    r0: usize,
}

impl<T: GemmElem, A: PackA<T>> PackA<T> for RowBlock<'_, A> {
    const PACKS_INTO_SCRATCH: bool = A::PACKS_INTO_SCRATCH;

    unsafe fn panel<'s>(
        &'s self,
        ir: usize,
        mb: usize,
        pc: usize,
        kb: usize,
        mr: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        // SAFETY: the block's rows lie in the operand's checked rows.
        unsafe { self.a.panel(self.r0 + ir, mb, pc, kb, mr, scratch) }
    }

    fn in_place(&self, m: usize, k: usize, ir: usize, pc: usize) -> Option<(*const T, usize)> {
        self.a.in_place(m, k, self.r0 + ir, pc)
    }

    fn prefetch_panel(&self, ir: usize, mb: usize, pc: usize, kb: usize, part: usize, parts: usize) {
        self.a.prefetch_panel(self.r0 + ir, mb, pc, kb, part, parts);
    }
}

/// [`packed`] for `m` rows with the kernel and blocking chosen.
#[allow(clippy::too_many_arguments)]
fn packed_rows<T: GemmElem, A: PackA<T>, B: PackB<T>>(
    kern: Kernel<T>,
    opts: Opts,
    m: usize,
    n: usize,
    k: usize,
    a: &A,
    b: &B,
    c: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    let mnk = m.saturating_mul(n).saturating_mul(k);
    let split = parallel && super::splitting_bar(opts.par_min_mnk).is_some_and(|bar| mnk >= bar);
    let threads = if split { rayon::current_num_threads() } else { 1 };
    // The kernels write every element of C before reading it back (`acc` is false on the
    // first depth block), so C may start uninitialized.
    // C is shared by the tasks, each of which writes a disjoint rectangle.
    let cptr = SendPtr(c.as_mut_ptr().cast::<T>());
    // With B read in place no task packs anything, so one task per register panel of rows
    // costs little and lets a thread that runs ahead (a vCPU at full speed beside one running
    // slow) take more of them: the kernel loop over one panel is the same as in the whole
    // product; a task of less than MIN_TASK_MNK takes several panels. Fewer than 4 blocks per
    // thread balance no better than one rectangle per thread (sgemm 128: 6 % slower). Otherwise
    // each thread packs B blocks once for one rectangle.
    let blocks = m.div_ceil(kern.mr).div_ceil(MIN_TASK_MNK.div_ceil(kern.mr * n * k));
    let b_in_place = n.is_multiple_of(kern.nr) && b.in_place(k, n, 0, 0).is_some();
    if threads > 1 && !b_in_place && m.div_ceil(kern.mr) >= CLAIMED_ROWS_MIN_PANELS * threads {
        // SAFETY: as below, for the whole of C.
        return unsafe { gemm_claimed_rows(&kern, m, n, k, a, b, cptr, threads) };
    }
    let tasks = if threads > 1 && blocks >= 4 * threads && b_in_place {
        partition(m, n, kern.mr, n, blocks)
    } else {
        partition(m, n, kern.mr, kern.nr, threads)
    };
    let run = |&(r0, r1, c0, c1): &(usize, usize, usize, usize)| {
        // SAFETY: operands were bounds-checked, `c` holds m*n elements and the
        // tasks cover disjoint rectangles of it, so no two threads write the
        // same element.
        unsafe { gemm_rect(&kern, r0, r1, c0, c1, k, a, b, cptr.get(), n) };
    };
    super::parallel::for_each_task(tasks.len(), |i| run(&tasks[i]));
}
