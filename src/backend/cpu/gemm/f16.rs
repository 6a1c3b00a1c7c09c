//! f16 operands for the f32 GEMM, widened while they are packed: the f32 micro-kernels run
//! unchanged on panels converted once (F16C, eight or sixteen lanes per instruction), and no
//! widened copy of either matrix is ever written. x86 has no f16 multiply-add outside
//! AVX512-FP16, and f16 products summed in f32 are what PyTorch computes too.

use super::*;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::cell::RefCell;

/// The depth of the rows widened at a time before a register transpose.
const WIDE_DEPTH: usize = 64;

thread_local! {
    /// Rows widened before a register transpose (`WIDE_DEPTH × mr` or `× nr` of them).
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// An f16 matrix read by the f32 GEMM (see the module's note).
pub(crate) struct WidenF16<'a>(pub(crate) MatRef<'a, f16>);

/// `dst[i] = src[i]` widened: with `AVX` (only inside a function compiled for AVX-512 and
/// F16C) by [`widen_avx512`], else by half's slice conversion.
#[inline(always)]
fn widen<const AVX: bool>(dst: &mut [f32], src: &[f16]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: `AVX` is set only where the features were detected.
        return unsafe { widen_avx512(dst, src) };
    }
    src.convert_to_f32_slice(dst);
}

/// Sixteen lanes per `vcvtph2ps` and a masked tail, since a general slice conversion per
/// register-panel row costs about as much in setup as the conversion itself. Compiled with
/// the features itself, so its intrinsics inline (called as functions, they were 1.3 % of an
/// f16 product).
///
/// # Safety
/// The CPU has AVX-512F, AVX-512BW, AVX-512VL and F16C; `dst` and `src` have one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn widen_avx512(dst: &mut [f32], src: &[f16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    // SAFETY: every load and store stays inside the first `n` elements (the tail's are masked).
    unsafe {
        while i + 16 <= n {
            _mm512_storeu_ps(d.add(i), _mm512_cvtph_ps(_mm256_loadu_si256(s.add(i).cast())));
            i += 16;
        }
        if i < n {
            let mask = ((1u32 << (n - i)) - 1) as u16;
            let h = _mm256_maskz_loadu_epi16(mask, s.add(i).cast());
            _mm512_mask_storeu_ps(d.add(i), mask, _mm512_cvtph_ps(h));
        }
    }
}

/// `dst[i] = f16::from_f32(src[i])`, rounding to nearest even as half does (NaNs stay quiet
/// NaNs with their sign and top payload bits): sixteen lanes per `vcvtps2ph` where AVX-512 and
/// F16C were detected, half's slice conversion elsewhere (a software rounding per element
/// unless the build targets F16C).
pub(crate) fn narrow(dst: &mut [f16], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn avx512(dst: &mut [f16], src: &[f32]) {
        use std::arch::x86_64::*;
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let n = src.len();
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut i = 0;
        // SAFETY: every load and store stays inside the first `n` elements (the tail's are
        // masked).
        unsafe {
            while i + 16 <= n {
                _mm256_storeu_si256(d.add(i).cast(), _mm512_cvtps_ph::<NEAREST>(_mm512_loadu_ps(s.add(i))));
                i += 16;
            }
            if i < n {
                let mask = ((1u32 << (n - i)) - 1) as u16;
                let h = _mm512_cvtps_ph::<NEAREST>(_mm512_maskz_loadu_ps(mask, s.add(i)));
                _mm256_mask_storeu_epi16(d.add(i).cast(), mask, h);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if avx512_f16c() {
        // SAFETY: the features were detected.
        return unsafe { avx512(dst, src) };
    }
    dst.convert_from_f32_slice(src);
}

/// AVX-512 (F, BW, VL) and F16C, detected once.
#[cfg(target_arch = "x86_64")]
fn avx512_f16c() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        usable_isa(Isa::Avx512) == Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// Widens `rows` rows of `kb` elements (row `i` at `src[i*lda..]`) into `dst[i*kb + p]`.
#[inline(always)]
fn widen_rows<const AVX: bool>(src: &[f16], lda: usize, rows: usize, kb: usize, dst: &mut [f32]) {
    for i in 0..rows {
        widen::<AVX>(&mut dst[i * kb..(i + 1) * kb], &src[i * lda..i * lda + kb]);
    }
}

/// Element (i, p) of `rows` widened contiguous rows into `dst[p*width + i]`, the register
/// panel layout: the f32 transpose when the panel is full, a plain loop otherwise.
#[inline(always)]
fn transpose_into(wide: &[f32], rows: usize, kb: usize, width: usize, dst: &mut [f32]) {
    if rows == width {
        // SAFETY: `wide` holds `rows` rows of `kb`, `dst` holds `kb*width` elements.
        unsafe { f32::pack_rows(wide.as_ptr(), kb, kb, width, dst.as_mut_ptr()) };
        return;
    }
    if rows < width {
        dst[..kb * width].fill(0.0);
    }
    for i in 0..rows {
        for p in 0..kb {
            dst[p * width + i] = wide[i * kb + p];
        }
    }
}

impl WidenF16<'_> {
    /// [`WidenF16::panel_with`], compiled for AVX-512 and F16C where the CPU has them.
    fn panel(&self, first: usize, strides: (usize, usize), count: usize, kb: usize, width: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        unsafe fn avx512(
            w: &WidenF16,
            first: usize,
            strides: (usize, usize),
            count: usize,
            kb: usize,
            width: usize,
            dst: &mut [f32],
        ) {
            w.panel_with::<true>(first, strides, count, kb, width, dst)
        }
        #[cfg(target_arch = "x86_64")]
        if avx512_f16c() {
            // SAFETY: the features were detected.
            return unsafe { avx512(self, first, strides, count, kb, width, dst) };
        }
        self.panel_with::<false>(first, strides, count, kb, width, dst)
    }

    /// `width` × `kb` elements (i, p) at `first + i*along + p*across` (strides in elements) into
    /// `dst[p*width + i]` (zeros past `count`): a register panel of A (i = row) or B (i = column).
    #[inline(always)]
    fn panel_with<const AVX: bool>(
        &self,
        first: usize,
        (along, across): (usize, usize),
        count: usize,
        kb: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let data = self.0.data;
        if across == 1 {
            // The depth runs along memory: widen each of the `count` runs, then transpose, a
            // depth chunk at a time so that the widened rows stay in L1 until transposed (whole
            // rows of a 1024-deep block are 48 KiB, and went out to L2 and back).
            WIDE.with(|w| {
                let mut w = w.borrow_mut();
                if w.len() < count * WIDE_DEPTH {
                    w.resize(count * WIDE_DEPTH, 0.0);
                }
                for p0 in (0..kb).step_by(WIDE_DEPTH) {
                    let d = WIDE_DEPTH.min(kb - p0);
                    widen_rows::<AVX>(&data[first + p0..], along, count, d, &mut w);
                    transpose_into(&w, count, d, width, &mut dst[p0 * width..]);
                }
            });
        } else if along == 1 {
            // The panel's width runs along memory: each depth step is one contiguous run, from a
            // row of its own. As in the f32 packing, the rows PACK_B_AHEAD_ROWS ahead are
            // fetched meanwhile: each run is one line, too short for the hardware prefetcher.
            for p in 0..kb {
                let pf = data.as_ptr().wrapping_add(first + (p + PACK_B_AHEAD_ROWS) * across);
                prefetch_hint(pf);
                prefetch_hint(pf.wrapping_add(count - 1));
                let row = &mut dst[p * width..(p + 1) * width];
                if AVX && count == 32 && width == 32 {
                    // The AVX-512 kernel's whole panel width: two conversions, no loop.
                    let (d, s): (&mut [f32; 32], &[f16; 32]) =
                        (row.try_into().unwrap(), data[first + p * across..][..32].try_into().unwrap());
                    widen::<AVX>(&mut d[..], &s[..]);
                    continue;
                }
                widen::<AVX>(&mut row[..count], &data[first + p * across..][..count]);
                row[count..].fill(0.0);
            }
        } else {
            for p in 0..kb {
                for i in 0..width {
                    dst[p * width + i] = if i < count { data[first + i * along + p * across].to_f32() } else { 0.0 };
                }
            }
        }
    }
}

impl PackA<f32> for WidenF16<'_> {
    unsafe fn panel<'s>(
        &'s self,
        ir: usize,
        mb: usize,
        pc: usize,
        kb: usize,
        mr: usize,
        scratch: &'s mut [f32],
    ) -> &'s [f32] {
        let a = &self.0;
        let first = a.offset + ir * a.row_stride + pc * a.col_stride;
        self.panel(first, (a.row_stride, a.col_stride), mb, kb, mr, &mut scratch[..kb * mr]);
        scratch
    }

    fn prefetch_panel(&self, ir: usize, mb: usize, pc: usize, kb: usize, part: usize, parts: usize) {
        // As the f32 operand's: the next panel's rows fetched during this one's kernel calls.
        self.0.prefetch_rows(ir, mb, pc, kb, part, parts)
    }
}

impl PackB<f32> for WidenF16<'_> {
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [f32]) {
        let b = &self.0;
        for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
            let j0 = jc + q * nr;
            let first = b.offset + pc * b.row_stride + j0 * b.col_stride;
            self.panel(first, (b.col_stride, b.row_stride), nr.min(nb - q * nr), kb, nr, panel);
        }
    }
}

/// `C = A·B` in f32 (all of `c`, row-major `m × n`) from f16 operands of any strides,
/// widened while packed.
///
/// # Panics
/// If `c.len() != m*n` or an operand reaches outside its `data`.
pub(crate) fn gemm_f16(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<f16>,
    b: MatRef<f16>,
    c: &mut [MaybeUninit<f32>],
    parallel: bool,
) {
    assert_eq!(c.len(), m * n, "gemm: c.len() must be m*n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(MaybeUninit::new(0.0));
        return;
    }
    check_operand(&a, m, k, "a");
    check_operand(&b, k, n, "b");
    packed(Opts::DEFAULT, m, n, k, &WidenF16(a), &WidenF16(b), c, parallel);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector narrowing rounds exactly as `f16::from_f32`: every f32 exponent with
    /// mantissas at, around and between the f16 rounding ties, subnormals, overflow, signed
    /// zeros, infinities and NaNs (quiet and signalling), at every tail length.
    #[test]
    fn narrow_matches_half_bit_for_bit() {
        let mut src = vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, 65504.0, 65520.0];
        src.push(f32::from_bits(0x7F80_0001)); // signalling NaN, payload in the low bits only
        src.push(f32::from_bits(0xFFA0_0000)); // signalling NaN, payload in the high bits
        for exp in 90u32..=160 {
            for man in [0u32, 1, 0xFFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7F_E000, 0x7F_F000, 0x7F_FFFF, 0x55_5555] {
                for sign in [0u32, 1 << 31] {
                    src.push(f32::from_bits(sign | exp << 23 | man));
                }
            }
        }
        for len in [src.len(), 1, 15, 16, 17, 33] {
            let src = &src[..len.min(src.len())];
            let mut got = vec![f16::ZERO; src.len()];
            narrow(&mut got, src);
            for (g, &x) in got.iter().zip(src) {
                assert_eq!(g.to_bits(), f16::from_f32(x).to_bits(), "{x:e} ({:#x})", x.to_bits());
            }
        }
    }
}
