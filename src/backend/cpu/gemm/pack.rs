//! Packing: the A and B operands as the micro-kernels read them (interleaved register
//! panels in 64-byte aligned buffers), from strided matrices or any other [`PackA`]/[`PackB`]
//! source such as conv's implicit im2col matrix.

use super::*;
use crate::backend::cpu::copy_segments;
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
        self.prefetch_rows(ir, mb, pc, kb, part, parts)
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

impl<T> MatRef<'_, T> {
    /// [`PackA::prefetch_panel`] for a row-major matrix of any element type (an f16 one is
    /// widened while packed): rows `ir..ir+mb`, each `kb` elements from column `pc` (one line
    /// more for a start inside a line), their lines in `parts` equal shares.
    pub(super) fn prefetch_rows(&self, ir: usize, mb: usize, pc: usize, kb: usize, part: usize, parts: usize) {
        if self.col_stride != 1 {
            return;
        }
        let per_row = (kb * size_of::<T>()).div_ceil(64) + 1;
        let lines = mb * per_row;
        let base = self.data.as_ptr().wrapping_add(self.offset + pc).cast::<u8>();
        for l in lines * part / parts..lines * (part + 1) / parts {
            let (i, j) = (l / per_row, l % per_row);
            prefetch_hint(base.wrapping_add((ir + i) * self.row_stride * size_of::<T>() + j * 64));
        }
    }
}

/// An `m × k` left operand packed once in the layout the GEMM's kernel reads, for products
/// that share it: per depth block, per `mr`-row panel.
pub struct PackedA<T> {
    pub(super) data: Vec<T>,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) kc: usize,
    pub(super) mr: usize,
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

impl<T> PackedA<T> {
    /// The depth of its blocks and the height of its register panels (`kc`, `mr`).
    pub(crate) fn blocking(&self) -> (usize, usize) {
        (self.kc, self.mr)
    }

    /// The register panel of rows `ir..` in the depth block from `pc` (both multiples of the
    /// blocking): element (i, p) at `p·mr + i`.
    pub(crate) fn panel_at(&self, ir: usize, pc: usize) -> &[T] {
        let kb = self.kc.min(self.k - pc);
        &self.data[pc * self.m.next_multiple_of(self.mr) + ir * kb..][..kb * self.mr]
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
pub(super) fn depth_block(k: usize, kc: usize) -> usize {
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

/// Packs B[pc..pc+kb, jc..jc+nb] into `nr`-wide micro-panels (row p of panel
/// q at `q*kb*nr + p*nr`), zero-padding the last panel.
///
/// # Safety
/// `b` passed `check_operand` for a shape containing the block.
#[inline(always)]
pub(super) unsafe fn pack_b<T: GemmElem>(
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
pub(super) const PACK_B_AHEAD_ROWS: usize = 32;

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
pub(super) unsafe fn pack_a<T: GemmElem>(
    a: &MatRef<T>,
    ir: usize,
    mb: usize,
    pc: usize,
    kb: usize,
    mr: usize,
    dst: &mut [T],
) {
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
    } else if a.row_stride == 1 {
        // Column-major A (a transposed view, as in a weight gradient xᵀ·g): each depth step's
        // mb rows are contiguous.
        let src = &a.data[a.offset + ir + pc * a.col_stride..];
        let step = a.col_stride;
        // A full panel's runs have the kernel's constant size: one vector move each, where a
        // `copy_from_slice` of a run-time length is a call to memmove per depth step.
        match size_of::<T>() * mr {
            24 if mb == mr => copy_segments::<T, 24>(dst, src, mr, step),
            48 if mb == mr => copy_segments::<T, 48>(dst, src, mr, step),
            96 if mb == mr => copy_segments::<T, 96>(dst, src, mr, step),
            _ => {
                for (p, col) in dst.chunks_exact_mut(mr).enumerate() {
                    col[..mb].copy_from_slice(&src[p * step..p * step + mb]);
                }
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
