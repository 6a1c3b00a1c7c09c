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

use super::parallel::SendPtr;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul};

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

/// The B operand as the packed GEMM reads it: in `kb × nb` blocks, packed into `nr`-wide
/// micro-panels. A strided matrix is one kind; conv's implicit im2col matrix, packed straight
/// from the image, is another, so the columns are never written out whole.
pub trait PackB<T>: Sync {
    /// Packs `B[pc..pc+kb, jc..jc+nb]` into `nr`-wide micro-panels (row `p` of panel `q` at
    /// `q*kb*nr + p*nr`), zero-padding the last panel's missing columns.
    ///
    /// # Safety
    /// The block lies inside the `k × n` shape the operand was built or checked for, and `dst`
    /// holds `nb.div_ceil(nr) * kb * nr` elements.
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [T]);

    /// Where the kernel can read `B[pc.., jc..]` of the `k × n` operand in place instead: a
    /// pointer to that element and the distance between rows, for a block of whole register
    /// panels. `None`: pack it.
    fn in_place(&self, _k: usize, _n: usize, _pc: usize, _jc: usize) -> Option<(*const T, usize)> {
        None
    }
}

/// The A operand as the packed GEMM reads it: `mr`-row micro-panels of a `kb`-deep block. A
/// strided matrix packs each panel when it is needed; a [`PackedA`] was packed once, for many
/// products (a convolution's weights, shared by every image).
pub trait PackA<T>: Sync {
    /// Whether [`PackA::panel`] packs into its scratch (a strided matrix) rather than
    /// returning panels packed beforehand: only then is a packed panel worth keeping for the
    /// product's other column blocks.
    const PACKS_INTO_SCRATCH: bool = true;

    /// The micro-panel of rows `ir..ir+mb`, depth `pc..pc+kb`, element (i, p) at `p*mr + i`:
    /// packed into `scratch` (which holds `kb*mr` elements) or found ready.
    ///
    /// # Safety
    /// The block lies inside the `m × k` shape the operand was checked or built for; `kb` is
    /// the product's depth block and `mr` its kernel's, and `ir`, `pc` are multiples of them.
    unsafe fn panel<'s>(
        &'s self,
        ir: usize,
        mb: usize,
        pc: usize,
        kb: usize,
        mr: usize,
        scratch: &'s mut [T],
    ) -> &'s [T];

    /// Where the kernel can read rows `ir..`, columns `pc..` of the `m × k` operand in place
    /// instead: a pointer to that element and the distance between rows. `None`: pack it.
    fn in_place(&self, _m: usize, _k: usize, _ir: usize, _pc: usize) -> Option<(*const T, usize)> {
        None
    }

    /// Asks the cache for part `part` of `parts` of what packing the panel `(ir, mb, pc, kb)`
    /// will read, so that the kernel calls before that packing hide its memory latency. A panel
    /// reads `mb` rows a row pitch apart, from a new page each once rows are 4 KiB or more:
    /// more streams than the hardware prefetcher starts in time (sgemm 1024, one thread:
    /// packing A took 5.1 % of the time, 1.7 % with the next panel fetched during this one).
    fn prefetch_panel(&self, _ir: usize, _mb: usize, _pc: usize, _kb: usize, _part: usize, _parts: usize) {}
}

impl<T: GemmElem> PackA<T> for MatRef<'_, T> {
    unsafe fn panel<'s>(
        &'s self,
        ir: usize,
        mb: usize,
        pc: usize,
        kb: usize,
        mr: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        // SAFETY: forwarded from the caller.
        unsafe { pack_a(self, ir, mb, pc, kb, mr, scratch) };
        scratch
    }

    fn prefetch_panel(&self, ir: usize, mb: usize, pc: usize, kb: usize, part: usize, parts: usize) {
        if self.col_stride != 1 {
            return;
        }
        // Rows ir..ir+mb, each kb elements from column pc (one line more for a start inside a
        // line): their lines, in `parts` equal shares.
        let per_row = (kb * size_of::<T>()).div_ceil(64) + 1;
        let lines = mb * per_row;
        let base = self.data.as_ptr().wrapping_add(self.offset + pc).cast::<u8>();
        for l in lines * part / parts..lines * (part + 1) / parts {
            let (i, j) = (l / per_row, l % per_row);
            prefetch_hint(base.wrapping_add((ir + i) * self.row_stride * size_of::<T>() + j * 64));
        }
    }

    fn in_place(&self, m: usize, k: usize, ir: usize, pc: usize) -> Option<(*const T, usize)> {
        // Row-major with rows under 4 KiB apart (a register panel's rows then fall in
        // different L1 sets and pages), in a product small enough that packing A would be a
        // real share of it: the kernel broadcasts A's elements from where they are. A
        // broadcast row (stride 0) is packed, since a stride of 0 tells the kernels "packed".
        let pitch = self.row_stride * size_of::<T>();
        (self.col_stride == 1 && self.row_stride > 0 && pitch < 4096 && m * k * size_of::<T>() <= IN_PLACE_A_BYTES)
            .then(|| (self.data[self.offset + ir * self.row_stride + pc..].as_ptr(), self.row_stride))
    }
}

/// An `m × k` left operand packed once in the layout the GEMM's kernel reads, for products
/// that share it: per depth block, per `mr`-row panel.
pub struct PackedA<T> {
    data: Vec<T>,
    m: usize,
    k: usize,
    kc: usize,
    mr: usize,
}

impl<T: GemmElem> PackedA<T> {
    /// Packs `a` (`m × k`) for [`gemm_packed_a`].
    ///
    /// # Panics
    /// If `a` reaches outside its `data`.
    pub fn new(m: usize, k: usize, a: MatRef<T>) -> PackedA<T> {
        check_operand(&a, m, k, "a");
        let kern = T::kernel(usable_isa(Opts::DEFAULT.isa));
        let (kc, mr) = (depth_block(k, kern.kc), kern.mr);
        let mpad = m.next_multiple_of(mr);
        let mut data = vec![T::ZERO; mpad * k];
        for pc in (0..k).step_by(kc) {
            let kb = kc.min(k - pc);
            for ir in (0..m).step_by(mr) {
                let dst = &mut data[pc * mpad + ir * kb..][..kb * mr];
                // SAFETY: the block lies in the checked m × k shape.
                unsafe { pack_a(&a, ir, mr.min(m - ir), pc, kb, mr, dst) };
            }
        }
        PackedA { data, m, k, kc, mr }
    }
}

impl<T: GemmElem> PackA<T> for PackedA<T> {
    const PACKS_INTO_SCRATCH: bool = false;

    unsafe fn panel<'s>(&'s self, ir: usize, _: usize, pc: usize, kb: usize, mr: usize, _: &'s mut [T]) -> &'s [T] {
        debug_assert!(
            mr == self.mr && pc.is_multiple_of(self.kc) && ir.is_multiple_of(mr),
            "blocking differs from the packing"
        );
        &self.data[pc * self.m.next_multiple_of(mr) + ir * kb..][..kb * mr]
    }
}

/// The depth block for depth `k`: at most `kc`, in equal-sized blocks, since a short tail block
/// would run at lower efficiency.
fn depth_block(k: usize, kc: usize) -> usize {
    k.div_ceil(k.div_ceil(kc))
}

impl<T: GemmElem> PackB<T> for MatRef<'_, T> {
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        unsafe fn avx512<T: GemmElem>(b: &MatRef<T>, a: [usize; 5], dst: &mut [T]) {
            let copy = short_copy_avx512!(T);
            // SAFETY: forwarded from the caller.
            unsafe { pack_b(b, a, dst, &copy) }
        }
        let args = [pc, kb, jc, nb, nr];
        // SAFETY: forwarded from the caller; the AVX-512 version runs only where
        // `usable_isa` detected the features.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if usable_isa(Isa::Avx512) == Isa::Avx512 {
                return avx512(self, args, dst);
            }
            pack_b(self, args, dst, &copy_row)
        }
    }

    fn in_place(&self, k: usize, n: usize, pc: usize, jc: usize) -> Option<(*const T, usize)> {
        // Row-major, rows apart (not overlapping), and small enough to stay in L2 across the
        // product: the kernel reads B's rows where they are, and packing it (half of the copy
        // work at 128³) is skipped. Rows a multiple of 4 KiB apart would all map to the same
        // L1 sets.
        let bytes = k * self.row_stride * size_of::<T>();
        let pitch = self.row_stride * size_of::<T>();
        (self.col_stride == 1 && self.row_stride >= n && bytes <= IN_PLACE_B_BYTES && !pitch.is_multiple_of(4096))
            .then(|| (self.data[self.offset + pc * self.row_stride + jc..].as_ptr(), self.row_stride))
    }
}

/// A copy of at most 128 bytes (one register-tile row) as two masked AVX-512 moves; `$t` is
/// the element type. To be expanded inside a function compiled with `avx512f,avx512bw`: a
/// plain short copy, or a loop of vector moves, compiles to a `memcpy` call, which costs more
/// than the copy when packing.
#[cfg(target_arch = "x86_64")]
macro_rules! short_copy_avx512 {
    ($t:ty) => {
        |d: &mut [$t], s: &[$t]| {
            use std::arch::x86_64::{_mm512_mask_storeu_epi8, _mm512_maskz_loadu_epi8};
            let n = std::mem::size_of_val(s);
            if n > 128 || n != std::mem::size_of_val(d) {
                return d.copy_from_slice(s);
            }
            let (dp, sp) = (d.as_mut_ptr().cast::<u8>(), s.as_ptr().cast::<u8>());
            let lo = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
            let hi = if n <= 64 {
                0
            } else if n == 128 {
                u64::MAX
            } else {
                (1u64 << (n - 64)) - 1
            };
            // SAFETY: the masks select the first `n` bytes of both slices; masked-out bytes are
            // neither read nor written, and cannot fault.
            unsafe {
                _mm512_mask_storeu_epi8(dp.cast(), lo, _mm512_maskz_loadu_epi8(lo, sp.cast()));
                _mm512_mask_storeu_epi8(dp.add(64).cast(), hi, _mm512_maskz_loadu_epi8(hi, sp.add(64).cast()));
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use short_copy_avx512;

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

/// Below this many multiply-adds the packing overhead dominates: use the
/// direct loop.
const SMALL_MNK: usize = 32 * 1024;
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

/// A packed product with at least this many register panels of rows per thread hands its rows
/// out panel by panel ([`gemm_claimed_rows`]) instead of one rectangle per thread.
const CLAIMED_ROWS_MIN_PANELS: usize = 8;

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
unsafe fn gemm_claimed_rows<T: GemmElem, A: PackA<T>, B: PackB<T>>(
    kern: &Kernel<T>,
    m: usize,
    n: usize,
    k: usize,
    a: &A,
    b: &B,
    c: SendPtr<T>,
    threads: usize,
) {
    use super::parallel::spin_until;
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
        super::parallel::for_each_task(threads, |_| worker());
    });
}

/// Splits C into at most `threads` rectangles `(r0, r1, c0, c1)` aligned to
/// the register tile, minimising the largest one (the critical path). Ties
/// prefer fewer tasks (less redundant packing), then splitting columns (each
/// task then packs only its part of B).
fn partition(m: usize, n: usize, mr: usize, nr: usize, threads: usize) -> Vec<(usize, usize, usize, usize)> {
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
unsafe fn gemm_direct<T: GemmElem>(m: usize, n: usize, k: usize, a: &MatRef<T>, b: &MatRef<T>, c: &mut [T]) {
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
unsafe fn dot<T: GemmElem>(a: &MatRef<T>, i: usize, b: &MatRef<T>, j: usize, k: usize) -> T {
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
struct Align64([u8; 64]);

thread_local! {
    /// Per-thread packing buffer, reused across calls so steady-state GEMMs
    /// neither allocate nor page-fault.
    static PACK_BUF: RefCell<Vec<Align64>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's buffer for what the threads of [`gemm_claimed_rows`] pack for one
    /// another: two B blocks and A's panels of one depth block.
    static SHARED_BUF: RefCell<Vec<Align64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a 64-byte aligned scratch slice of `len` elements.
fn with_pack_buf<T: GemmElem, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    with_buf(&PACK_BUF, len, f)
}

/// Runs `f` with a 64-byte aligned slice of `len` elements of the thread-local buffer `key`.
fn with_buf<T: GemmElem, R>(
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
fn keeps_a_panels<T, A: PackA<T>>(a: &A, rows: usize, k: usize, several_column_blocks: bool) -> bool {
    several_column_blocks && A::PACKS_INTO_SCRATCH && a.in_place(rows, k, 0, 0).is_none()
}

/// Computes the rows `r0..r1`, columns `c0..c1` of C sequentially.
///
/// # Safety
/// `a`/`b` passed `check_operand` for a shape containing the rectangle, `c`
/// points to a row-major matrix with leading dimension `ldc` containing the
/// rectangle, and no other thread accesses that rectangle meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rect<T: GemmElem, A: PackA<T>, B: PackB<T>>(
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
struct Step<T> {
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
unsafe fn panel_row<T: GemmElem, A: PackA<T>>(
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

/// Packs B[pc..pc+kb, jc..jc+nb] into `nr`-wide micro-panels (row p of panel
/// q at `q*kb*nr + p*nr`), zero-padding the last panel.
///
/// # Safety
/// `b` passed `check_operand` for a shape containing the block.
#[inline(always)]
unsafe fn pack_b<T: GemmElem>(
    b: &MatRef<T>,
    [pc, kb, jc, nb, nr]: [usize; 5],
    dst: &mut [T],
    copy_row: &impl Fn(&mut [T], &[T]),
) {
    for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
        let j0 = jc + q * nr;
        let w = nr.min(nb - q * nr);
        if b.col_stride == 1 {
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                let s = b.offset + (pc + p) * b.row_stride + j0;
                let pf = b.data.as_ptr().wrapping_add(s + PACK_B_AHEAD_ROWS * b.row_stride);
                prefetch_hint(pf);
                prefetch_hint(pf.wrapping_add(w - 1));
                copy_row(&mut row[..w], &b.data[s..s + w]);
                row[w..].fill(T::ZERO);
            }
        } else if b.row_stride == 1 && w == nr {
            // Transposed B (the usual `x · Wᵀ`): its columns are contiguous,
            // the same transposition as packing row-major A.
            // SAFETY: columns j0..j0+nr and rows pc..pc+kb are in the checked
            // shape; the panel holds kb*nr elements.
            unsafe {
                let src = b.data.as_ptr().add(b.offset + pc + j0 * b.col_stride);
                T::pack_rows(src, b.col_stride, kb, nr, panel.as_mut_ptr());
            }
        } else if b.row_stride < b.col_stride {
            // Column-major-like B: walk each column contiguously.
            if w < nr {
                panel.fill(T::ZERO);
            }
            for j in 0..w {
                for p in 0..kb {
                    // SAFETY: p < kb, j < w lie in the checked block.
                    panel[p * nr + j] = unsafe { b.at(pc + p, j0 + j) };
                }
            }
        } else {
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                for (j, v) in row[..w].iter_mut().enumerate() {
                    // SAFETY: as above.
                    *v = unsafe { b.at(pc + p, j0 + j) };
                }
                row[w..].fill(T::ZERO);
            }
        }
    }
}

/// How many rows ahead [`pack_b`] fetches the B rows of a panel: each panel walks k rows a row
/// pitch apart, a new page per row once rows are 4 KiB or more, which the hardware prefetcher
/// does not follow (sgemm 1024, one thread: packing B 4.5 % of the time without, 3.4 % at 24
/// or 48 rows ahead).
const PACK_B_AHEAD_ROWS: usize = 32;

/// Hints the cache to fetch the line holding `p` into L1. A hint never faults, so `p` may lie
/// anywhere.
#[inline(always)]
pub(crate) fn prefetch_hint<T>(p: *const T) {
    // SAFETY: a prefetch reads nothing architecturally and cannot fault.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `dst.copy_from_slice(src)`, inlined for the usual register-tile widths:
/// a `memcpy` call per 64-128 byte row is a measurable share of packing.
#[inline(always)]
pub(crate) fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    fn fixed<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) -> bool {
        match (<&mut [T; N]>::try_from(dst), <&[T; N]>::try_from(src)) {
            (Ok(d), Ok(s)) => {
                *d = *s;
                true
            }
            _ => false,
        }
    }
    if !(fixed::<T, 32>(dst, src) || fixed::<T, 16>(dst, src) || fixed::<T, 8>(dst, src)) {
        dst.copy_from_slice(src);
    }
}

/// Packs A[ir..ir+mb, pc..pc+kb] as one `mr`-interleaved micro-panel (element
/// (i, p) at `p*mr + i`). Rows mb..mr are left as they are: the kernels only
/// read the valid rows.
///
/// # Safety
/// `a` passed `check_operand` for a shape containing the block.
unsafe fn pack_a<T: GemmElem>(a: &MatRef<T>, ir: usize, mb: usize, pc: usize, kb: usize, mr: usize, dst: &mut [T]) {
    let dst = &mut dst[..kb * mr];
    if a.col_stride == 1 && mb == mr {
        // SAFETY: rows ir..ir+mr and columns pc..pc+kb are in the checked
        // shape, so every `src + i*lda + p` read is in bounds; dst holds
        // kb*mr elements.
        unsafe {
            let src = a.data.as_ptr().add(a.offset + ir * a.row_stride + pc);
            T::pack_rows(src, a.row_stride, kb, mr, dst.as_mut_ptr());
        }
    } else if a.col_stride <= a.row_stride {
        // Row-major-like A: read each row contiguously.
        for i in 0..mb {
            for p in 0..kb {
                // SAFETY: i < mb, p < kb lie in the checked block.
                dst[p * mr + i] = unsafe { a.at(ir + i, pc + p) };
            }
        }
    } else {
        for (p, col) in dst.chunks_exact_mut(mr).enumerate() {
            for (i, v) in col[..mb].iter_mut().enumerate() {
                // SAFETY: as above.
                *v = unsafe { a.at(ir + i, pc + p) };
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Portable micro-kernel.

const SCALAR_MR: usize = 4;
const SCALAR_NR: usize = 8;

/// Portable micro-kernel (`SCALAR_MR × SCALAR_NR` tile).
///
/// # Safety
/// `a` holds `kc*SCALAR_MR` elements (`lda == 0`) or `rows` rows of `kc`, `lda` apart; `b`
/// holds `kc` rows of `SCALAR_NR` elements `ldb` apart, and `c` addresses a valid
/// `rows × cols` tile with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn ukr_scalar<T: GemmElem>(
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

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    trait TestElem: GemmElem {
        const EPS: f64;
        fn from_f64(v: f64) -> Self;
        fn to_f64(self) -> f64;
    }
    impl TestElem for f32 {
        const EPS: f64 = f32::EPSILON as f64;
        fn from_f64(v: f64) -> Self {
            v as f32
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
    }
    impl TestElem for f64 {
        const EPS: f64 = f64::EPSILON;
        fn from_f64(v: f64) -> Self {
            v
        }
        fn to_f64(self) -> f64 {
            self
        }
    }

    /// Layout of a generated operand.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        RowMajor,
        ColMajor,
        /// Row stride 0: every row is the same.
        BroadcastRows,
        /// Row-major with padded leading dimension.
        Padded,
    }

    /// Builds a `rows × cols` operand with the given layout and a non-zero
    /// offset; returns (data, offset, row_stride, col_stride).
    fn make<T: TestElem>(
        rng: &mut XorShift,
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> (Vec<T>, usize, usize, usize) {
        let offset = rng.below(5);
        let (rs, cs, len) = match layout {
            Layout::RowMajor => (cols, 1, rows * cols),
            Layout::ColMajor => (1, rows, rows * cols),
            Layout::BroadcastRows => (0, 1, cols),
            Layout::Padded => (cols + 3, 1, rows * (cols + 3)),
        };
        let data = (0..offset + len + 2).map(|_| T::from_f64(rng.unit())).collect();
        (data, offset, rs, cs)
    }

    fn naive<T: TestElem>(m: usize, n: usize, k: usize, a: &MatRef<T>, b: &MatRef<T>) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = a.data[a.offset + i * a.row_stride + p * a.col_stride];
                    let bv = b.data[b.offset + p * b.row_stride + j * b.col_stride];
                    s += av.to_f64() * bv.to_f64();
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn check<T: TestElem>(
        rng: &mut XorShift,
        opts: Opts,
        m: usize,
        n: usize,
        k: usize,
        la: Layout,
        lb: Layout,
        parallel: bool,
    ) {
        let (ad, ao, ars, acs) = make::<T>(rng, m, k, la);
        let (bd, bo, brs, bcs) = make::<T>(rng, k, n, lb);
        let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
        let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
        // Garbage in C checks that it is overwritten, not accumulated.
        let mut c = vec![T::from_f64(7.0); m * n];
        gemm_with(opts, m, n, k, a, b, &mut c, parallel);
        let want = naive(m, n, k, &a, &b);
        let tol = 4.0 * (k as f64 + 1.0) * T::EPS;
        for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
            let err = (got.to_f64() - w).abs();
            assert!(
                err <= tol,
                "{opts:?} m={m} n={n} k={k} {la:?}x{lb:?} par={parallel}: \
                 c[{},{}] = {} want {w} (err {err}, tol {tol})",
                idx / n,
                idx % n,
                got.to_f64()
            );
        }
    }

    const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
    const LAYOUTS: [Layout; 4] = [Layout::RowMajor, Layout::ColMajor, Layout::BroadcastRows, Layout::Padded];

    /// Packed path whatever the size, threads whenever asked.
    fn packed(isa: Isa, blocking: Option<(usize, usize)>) -> Opts {
        Opts { isa, blocking, small_mnk: 0, par_min_mnk: 0, kept_a_bytes: KEPT_A_BYTES }
    }

    fn sweep<T: TestElem>(seed: u64) {
        let mut rng = XorShift(seed);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let shapes = [
            (1, 1, 1),
            (1, 37, 50),
            (37, 1, 50),
            (5, 7, 0),
            (13, 33, 17),
            (12, 32, 64),
            (25, 65, 40),
            (61, 70, 90),
            (100, 45, 3),
            (3, 150, 70),
        ];
        for &(m, n, k) in &shapes {
            for la in LAYOUTS {
                for lb in LAYOUTS {
                    for parallel in [false, true] {
                        pool.install(|| {
                            check::<T>(&mut rng, Opts::DEFAULT, m, n, k, la, lb, parallel);
                            for isa in ISAS {
                                check::<T>(&mut rng, packed(isa, None), m, n, k, la, lb, parallel);
                            }
                        });
                    }
                }
            }
        }
        for isa in ISAS {
            // Small blocking forces several kc / nc blocks and partial ones.
            for _ in 0..30 {
                let (m, n, k) = (1 + rng.below(90), 1 + rng.below(90), 1 + rng.below(90));
                let la = LAYOUTS[rng.below(4)];
                let lb = LAYOUTS[rng.below(4)];
                let blocking = Some((1 + rng.below(40), 1 + rng.below(70)));
                let parallel = rng.below(2) == 1;
                let opts = packed(isa, blocking);
                pool.install(|| check::<T>(&mut rng, opts, m, n, k, la, lb, parallel));
            }
        }
    }

    #[test]
    fn matches_naive_f32() {
        sweep::<f32>(0x9E37_79B9_7F4A_7C15);
    }

    #[test]
    fn matches_naive_f64() {
        sweep::<f64>(0xD1B5_4A32_D192_ED03);
    }

    #[test]
    fn larger_default_blocking_parallel() {
        let mut rng = XorShift(42);
        let (rm, cm) = (Layout::RowMajor, Layout::ColMajor);
        for isa in ISAS {
            let opts = Opts { isa, ..Opts::DEFAULT };
            for parallel in [false, true] {
                check::<f32>(&mut rng, opts, 150, 300, 420, rm, cm, parallel);
                check::<f64>(&mut rng, opts, 131, 97, 300, cm, rm, parallel);
                // Deeper than one default depth block (1024 for the AVX-512 f32 kernel), over
                // several column blocks with A packed and kept across them.
                check::<f32>(&mut rng, opts, 100, 300, 1100, cm, rm, parallel);
            }
        }
    }

    #[test]
    fn public_entry_point() {
        let mut rng = XorShift(7);
        for parallel in [false, true] {
            let (ad, ao, ars, acs) = make::<f32>(&mut rng, 70, 80, Layout::Padded);
            let (bd, bo, brs, bcs) = make::<f32>(&mut rng, 80, 90, Layout::ColMajor);
            let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
            let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
            let mut c = vec![0.0f32; 70 * 90];
            gemm(70, 90, 80, a, b, &mut c, parallel);
            let want = naive(70, 90, 80, &a, &b);
            for (&g, &w) in c.iter().zip(&want) {
                assert!((g as f64 - w).abs() <= 1e-4, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn prepacked_a_matches_packing_per_call() {
        // Rows off the register tile, depth past one depth block, threads splitting C.
        let mut rng = XorShift(8);
        for (m, n, k, parallel) in [(70, 90, 80, false), (13, 300, 900, true), (64, 1024, 576, true), (1, 40, 3, false)]
        {
            let (ad, ao, ars, acs) = make::<f64>(&mut rng, m, k, Layout::Padded);
            let (bd, bo, brs, bcs) = make::<f64>(&mut rng, k, n, Layout::RowMajor);
            let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
            let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
            let mut c = vec![MaybeUninit::uninit(); m * n];
            gemm_packed_a(n, &PackedA::new(m, k, a), &b, &mut c, parallel);
            let want = naive(m, n, k, &a, &b);
            for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                // SAFETY: the product wrote every element.
                let g = unsafe { g.assume_init() };
                assert!((g - w).abs() <= 1e-12 * k as f64, "{m}x{n}x{k} element {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn small_row_major_b_read_in_place() {
        // B row-major (or row-padded) with whole register panels is read where it is: every
        // kernel, threads or not, several depth blocks, and a B too wide for it (packed).
        let mut rng = XorShift(10);
        for isa in ISAS {
            for parallel in [false, true] {
                let opts = Opts { isa, small_mnk: 0, par_min_mnk: 0, ..Opts::DEFAULT };
                check::<f32>(&mut rng, opts, 37, 128, 900, Layout::Padded, Layout::RowMajor, parallel);
                check::<f32>(&mut rng, opts, 13, 96, 50, Layout::RowMajor, Layout::Padded, parallel);
                check::<f64>(&mut rng, opts, 20, 64, 33, Layout::ColMajor, Layout::RowMajor, parallel);
                check::<f32>(&mut rng, opts, 5, 1024, 200, Layout::RowMajor, Layout::RowMajor, parallel);
            }
            // Tall enough for one task per few register panels, claimed by 3 threads.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            let opts = Opts { isa, small_mnk: 0, par_min_mnk: 0, ..Opts::DEFAULT };
            pool.install(|| check::<f32>(&mut rng, opts, 600, 64, 100, Layout::RowMajor, Layout::RowMajor, true));
        }
    }

    #[test]
    fn rows_claimed_panel_by_panel() {
        // Packed B and enough register panels of rows that threads claim them one at a time:
        // several column and depth blocks (a panel's depth blocks must land in order, and a
        // kept A panel must be packed before a later column block reads it), ragged
        // last row and column panels, 2 and 3 threads, every kernel.
        let mut rng = XorShift(11);
        for isa in ISAS {
            let opts = packed(isa, Some((64, 64)));
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    check::<f32>(&mut rng, opts, 293, 70, 150, Layout::RowMajor, Layout::ColMajor, true);
                    check::<f64>(&mut rng, opts, 301, 97, 130, Layout::Padded, Layout::RowMajor, true);
                    // A packed (not read in place): its panels are kept for the second column
                    // block, packed by one thread and read by whichever claims the next step.
                    check::<f32>(&mut rng, opts, 293, 70, 150, Layout::ColMajor, Layout::RowMajor, true);
                    check::<f64>(&mut rng, opts, 150, 100, 70, Layout::ColMajor, Layout::ColMajor, true);
                });
            }
        }
    }

    #[test]
    fn tall_products_run_as_row_blocks() {
        // A bound of 20 kept A panels of 50-deep blocks: 49 panels of rows run as 3 row blocks
        // of 17, 17 and 15 panels, so at 2 threads the first two claim rows and the last splits
        // into rectangles; B is packed again per block and A is read from the block's first row.
        // (A row-major A small enough to be read in place keeps nothing and runs whole.)
        let mut rng = XorShift(13);
        for isa in ISAS {
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mr = f32::kernel(usable_isa(isa)).mr;
                let opts = Opts { kept_a_bytes: 20 * mr * 50 * size_of::<f32>(), ..packed(isa, Some((50, 64))) };
                let m = 49 * mr - 5;
                pool.install(|| {
                    check::<f32>(&mut rng, opts, m, 70, 150, Layout::ColMajor, Layout::RowMajor, true);
                    check::<f32>(&mut rng, opts, m, 100, 100, Layout::RowMajor, Layout::ColMajor, true);
                });
                let mr = f64::kernel(usable_isa(isa)).mr;
                let opts = Opts { kept_a_bytes: 20 * mr * 50 * size_of::<f64>(), ..packed(isa, Some((50, 64))) };
                pool.install(|| {
                    check::<f64>(&mut rng, opts, 49 * mr - 5, 97, 100, Layout::Padded, Layout::RowMajor, true)
                });
            }
        }
    }

    #[test]
    fn degenerate_shapes() {
        // m or n == 0: nothing to do, even with empty operands.
        let e: [f32; 0] = [];
        let z = MatRef { data: &e, offset: 0, row_stride: 0, col_stride: 0 };
        gemm(0, 5, 3, z, z, &mut [], true);
        gemm(5, 0, 3, z, z, &mut [], false);
        // k == 0 gives zeros without touching the (empty) operands.
        let mut c = [1.0f64; 6];
        let z64 = MatRef { data: &[], offset: 0, row_stride: 0, col_stride: 0 };
        gemm(2, 3, 0, z64, z64, &mut c, true);
        assert_eq!(c, [0.0; 6]);
    }

    #[test]
    fn partition_covers_c_exactly() {
        for &(m, n, t) in &[(128, 128, 2), (1000, 37, 2), (7, 1000, 4), (300, 300, 3), (5, 5, 8)] {
            let tasks = partition(m, n, 12, 32, t);
            assert!(!tasks.is_empty() && tasks.len() <= t);
            let mut seen = vec![0u8; m * n];
            for &(r0, r1, c0, c1) in &tasks {
                for i in r0..r1 {
                    for j in c0..c1 {
                        seen[i * n + j] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "m={m} n={n} t={t}");
        }
    }
}
