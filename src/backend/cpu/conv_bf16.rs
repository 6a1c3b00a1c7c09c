//! Autocast's convolution on a CPU with AVX512_BF16: im2col's columns of every image written
//! once in bf16, side by side (`[C·kh·kw, N·OH·OW]`), and multiplied on `vdpbf16ps` with f32
//! sums: the forward pass (and a stride-1 input gradient, which is a convolution) as
//! `W · columns`, the weight gradient as `columns · gᵀ` with its depth over all images. One
//! product over all images instead of one per image: the products of a small network's
//! convolutions are too small to run at speed one image at a time.
//!
//! The images are rounded to bf16 once, into a zero-padded copy, so a row of the columns is a
//! run of plain copies. The rounding is `vcvtneps2bf16`'s: to nearest even, as
//! `bf16::from_f32`, except that it flushes denormals, which `vdpbf16ps` reads as zero anyway;
//! so the products are those of operands rounded by `bf16::from_f32` first, but for the f32
//! denormals within half a unit of the smallest normal, which `from_f32` rounds up to it
//! (a difference of at most 2⁻¹²⁶ times the other operand per product).

use super::conv_grad::Blocks;
use super::gemm::{ProductOut, gemm_bf16};
use crate::backend::Window2d;
use half::bf16;
use std::mem::MaybeUninit;

/// Whether this CPU runs these kernels: the bf16 GEMM's features, and AVX-512BW/VL for the
/// masked 16-bit loads and stores.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm::bf16_gemm_available()
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The zero-padded bf16 images and the window over them, from which im2col's rows are read.
struct Padded<'a> {
    /// The images `[N, C, Hp, Wp]`, rounded to bf16, padding included.
    x: Vec<bf16>,
    n: usize,
    c: usize,
    hp: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    window: &'a Window2d,
}

impl<'a> Padded<'a> {
    /// `x` `[n, C, H, W]` (contiguous; `dims` gives the rest of the shape) rounded and padded,
    /// across the pool's threads when `parallel`.
    fn new<T: Operand>(
        n: usize,
        [_, c, h, w, _, oh, ow]: [usize; 7],
        x: &[T],
        window: &'a Window2d,
        parallel: bool,
    ) -> Padded<'a> {
        let (ph, pw) = window.padding;
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let x = super::fill_new(n * c * hp * wp, |out| {
            let plane = |i: usize, out: &mut [MaybeUninit<bf16>]| {
                for (y, row) in out.chunks_mut(wp).enumerate() {
                    let iy = y.wrapping_sub(ph);
                    let (src, inside) = match iy < h {
                        true => (x[(i * h + iy) * w..].as_ptr().wrapping_sub(pw), (pw, pw + w)),
                        false => (x.as_ptr(), (0, 0)),
                    };
                    // SAFETY: `available()` holds (checked by the callers); columns pw..pw + W
                    // of `src` are row iy of image i.
                    unsafe { T::padded_row(src, inside, row) };
                }
            };
            if parallel && super::worth_splitting(n * c * hp * wp) {
                super::parallel::for_each_chunk(out, hp * wp, plane);
            } else {
                out.chunks_mut(hp * wp).enumerate().for_each(|(i, o)| plane(i, o));
            }
        });
        Padded { x, n, c, hp, wp, oh, ow, window }
    }

    /// Rows of im2col's columns, `C·kh·kw`.
    fn k(&self) -> usize {
        self.c * self.window.kernel.0 * self.window.kernel.1
    }

    /// Columns: output positions of all images, `N·OH·OW`.
    fn cols(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// im2col's columns of every image side by side, `[C·kh·kw, N·OH·OW]`: row `(c, i, j)`,
    /// column `(n, oy, ox)` holds `x[n, c, oy·sh + i·dh, ox·sw + j·dw]` of the padded images.
    fn columns(&self, parallel: bool) -> Vec<bf16> {
        let (k, nl) = (self.k(), self.cols());
        super::fill_new(k * nl, |cols| {
            let rows = |t0: usize, rows: &mut [MaybeUninit<bf16>]| {
                for (dt, row) in rows.chunks_mut(nl).enumerate() {
                    // SAFETY: `available()` holds; `row` holds N·OH·OW elements.
                    unsafe { self.column_row(t0 + dt, row) };
                }
            };
            let per_task = k.div_ceil(4 * rayon::current_num_threads()).max(1);
            if parallel && super::worth_splitting(k * nl) {
                super::parallel::for_each_chunk(cols, per_task * nl, |i, r| rows(i * per_task, r));
            } else {
                rows(0, cols);
            }
        })
    }

    /// Row `t = (c, i, j)` of [`Padded::columns`].
    ///
    /// # Safety
    /// AVX-512F/BW/VL are available; `row` holds `N·OH·OW` elements.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn column_row(&self, t: usize, row: &mut [MaybeUninit<bf16>]) {
        use std::arch::x86_64::*;
        let (kh, kw) = self.window.kernel;
        let (ci, i, j) = (t / (kh * kw), t / kw % kh, t % kw);
        let ((sh, sw), (dh, dw)) = (self.window.stride, self.window.dilation);
        let (plane, ow) = (self.hp * self.wp, self.ow);
        let x = self.x.as_ptr().cast::<u16>();
        let mut out = row.as_mut_ptr().cast::<u16>();
        // A copy of `ow` elements: whole vectors, the last one overlapping its neighbour so
        // no store leaves the run (masked stores are slow on some CPUs); masked below 8.
        let tail = ((1u32 << (ow % 16)) - 1) as u16;
        let copy = |src: *const u16, dst: *mut u16| {
            let mut c0 = 0;
            // SAFETY (all): `src` holds `ow` elements of a padded row and `dst` room for them;
            // every access below lies inside those runs or is masked to them.
            unsafe {
                while c0 + 16 <= ow {
                    _mm256_storeu_si256(dst.add(c0).cast(), _mm256_loadu_si256(src.add(c0).cast()));
                    c0 += 16;
                }
                if c0 == ow {
                } else if ow >= 16 {
                    let e = ow - 16;
                    _mm256_storeu_si256(dst.add(e).cast(), _mm256_loadu_si256(src.add(e).cast()));
                } else if ow >= 8 {
                    let e = ow - 8;
                    _mm_storeu_si128(dst.cast(), _mm_loadu_si128(src.cast()));
                    _mm_storeu_si128(dst.add(e).cast(), _mm_loadu_si128(src.add(e).cast()));
                } else {
                    _mm256_mask_storeu_epi16(dst.cast(), tail, _mm256_maskz_loadu_epi16(tail, src.cast()));
                }
            }
        };
        for img in 0..self.n {
            let base = (img * self.c + ci) * plane + i * dh * self.wp + j * dw;
            for oy in 0..self.oh {
                let src = x.wrapping_add(base + oy * sh * self.wp);
                if sw == 1 {
                    copy(src, out);
                } else {
                    for ox in 0..ow {
                        // SAFETY: the window lies inside the padded image; `row` holds it.
                        unsafe { *out.add(ox) = *src.add(ox * sw) };
                    }
                }
                out = out.wrapping_add(ow);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn column_row(&self, _: usize, _: &mut [MaybeUninit<bf16>]) {
        unreachable!("available() is false off x86_64")
    }
}

/// `y = conv2d(x, w)` for contiguous `x` `[N, C, H, W]` and `w` `[Cout, C, kh, kw]` (f32,
/// rounded, or bf16), the products in bf16 and the result `[N, Cout, OH, OW]` in `O` (f32: the
/// sums; bf16: rounded once), in [`Blocks`] of images as the weight gradient's: each block's
/// columns, product and output on one thread.
///
/// # Panics
/// If [`available`] is false.
pub(super) fn conv2d<T: Operand, O: ProductOut>(x: &[T], w: &[T], dims: [usize; 7], window: &Window2d) -> Vec<O> {
    assert!(available(), "conv_bf16 needs AVX512_BF16");
    let [n, c, h, wd, cout, oh, ow] = dims;
    let l = oh * ow;
    if n * l == 0 || cout == 0 {
        return Vec::new();
    }
    let wb = rounded(w);
    let blocks = Blocks::new(n, l);
    let inner = blocks.inner;
    let block = |b: usize, y: &mut [MaybeUninit<O>]| {
        let (first, nb) = blocks.images(n, b);
        let padded = Padded::new(nb, dims, &x[first * c * h * wd..][..nb * c * h * wd], window, inner);
        let (k, nl) = (padded.k(), padded.cols());
        let cols = padded.columns(inner);
        // [Cout, nb·L], then each image's [Cout, L] in place.
        let y_all: Vec<O> = super::fill_new(cout * nl, |c| gemm_bf16(cout, nl, k, &wb, &cols, false, c, inner));
        for (img, y) in y.chunks_mut(cout * l).enumerate() {
            for (co, run) in y.chunks_mut(l).enumerate() {
                for (d, &v) in run.iter_mut().zip(&y_all[co * nl + img * l..][..l]) {
                    d.write(v);
                }
            }
        }
        for v in [cols, padded.x] {
            super::pool::recycle_vec(v);
        }
        super::pool::recycle_vec(y_all);
    };
    let per = blocks.images(n, 0).1;
    let y = super::fill_new(n * cout * l, |y| blocks.run(y, per * cout * l, block));
    super::pool::recycle_vec(wb);
    y
}

/// The weight gradient `Σₙ g[n] · im2col(x[n])ᵀ` `[Cout, C·kh·kw]` for contiguous `x`
/// `[N, C, H, W]` and `g` `[N, Cout, OH, OW]` (f32, rounded, or bf16), the products in bf16
/// and the sums f32: a partial sum per block of images (see [`Blocks`]), added in block
/// order.
///
/// # Panics
/// If [`available`] is false.
pub(super) fn weight_grad<T: Operand>(x: &[T], g: &[T], dims: [usize; 7], window: &Window2d) -> Vec<f32> {
    assert!(available(), "conv_bf16 needs AVX512_BF16");
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (l, k) = (oh * ow, c * window.kernel.0 * window.kernel.1);
    if n * l == 0 || k * cout == 0 {
        // An empty sum (no images) or an empty gradient.
        return super::pool::filled(cout * k, 0.0);
    }
    let blocks = Blocks::new(n, l);
    let inner = blocks.inner;
    // dWᵀ [K, Cout], block b's share of it from its images.
    let dwt = blocks.sum(k * cout, |b, dwt| {
        let (first, nb) = blocks.images(n, b);
        let padded = Padded::new(nb, dims, &x[first * c * h * wd..][..nb * c * h * wd], window, inner);
        let nl = padded.cols();
        let cols = padded.columns(inner);
        // g as [Cout, nb·L]: the product's B, transposed (its pairs run along the positions).
        let gt = super::fill_new(cout * nl, |gt| {
            for (co, row) in gt.chunks_mut(nl).enumerate() {
                for (img, part) in row.chunks_mut(l).enumerate() {
                    // SAFETY: `available()` holds; both runs hold L elements.
                    unsafe { T::round_run(&g[((first + img) * cout + co) * l..][..l], part) };
                }
            }
        });
        gemm_bf16(k, cout, nl, &cols, &gt, true, dwt, inner);
        for v in [cols, gt, padded.x] {
            super::pool::recycle_vec(v);
        }
    });
    let dw = super::fill_new(cout * k, |dw| {
        for (co, row) in dw.chunks_mut(k).enumerate() {
            for (t, v) in row.iter_mut().enumerate() {
                v.write(dwt[t * cout + co]);
            }
        }
    });
    super::pool::recycle_vec(dwt);
    dw
}

/// `v` rounded to bf16 (denormals flushed to zero).
///
/// # Panics
/// If [`available`] is false.
pub(super) fn rounded<T: Operand>(v: &[T]) -> Vec<bf16> {
    assert!(available(), "conv_bf16 needs AVX512_BF16");
    // SAFETY: `available()` holds; both runs hold v.len() elements.
    super::fill_new(v.len(), |out| unsafe { T::round_run(v, out) })
}

/// An operand the kernels read: f32, rounded on the way in, or bf16 as it is.
pub(super) trait Operand: Copy + Send + Sync + 'static {
    /// `dst[u] = bf16(*src.add(u))` for `u` in `lo..hi`, zero elsewhere: a padded row.
    ///
    /// # Safety
    /// [`available`] holds; `src.add(u)` is readable for `u` in `lo..hi` (other lanes are
    /// not read).
    unsafe fn padded_row(src: *const Self, inside: (usize, usize), dst: &mut [MaybeUninit<bf16>]);
    /// `dst[i] = bf16(src[i])`.
    ///
    /// # Safety
    /// [`available`] holds; `dst` holds `src.len()` elements.
    unsafe fn round_run(src: &[Self], dst: &mut [MaybeUninit<bf16>]);
}

impl Operand for f32 {
    unsafe fn padded_row(src: *const f32, inside: (usize, usize), dst: &mut [MaybeUninit<bf16>]) {
        // SAFETY: forwarded.
        unsafe { padded_row(src, inside, dst) }
    }
    unsafe fn round_run(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        // SAFETY: forwarded.
        unsafe { round_run(src, dst) }
    }
}

impl Operand for bf16 {
    unsafe fn padded_row(src: *const bf16, inside: (usize, usize), dst: &mut [MaybeUninit<bf16>]) {
        // SAFETY: forwarded.
        unsafe { padded_row_bf16(src, inside, dst) }
    }
    unsafe fn round_run(src: &[bf16], dst: &mut [MaybeUninit<bf16>]) {
        // SAFETY: the caller vouches that `dst` holds src.len() elements.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) }
    }
}

/// [`Operand::padded_row`] of bf16: thirty-two lanes per masked copy.
///
/// # Safety
/// As [`Operand::padded_row`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn padded_row_bf16(src: *const bf16, (lo, hi): (usize, usize), dst: &mut [MaybeUninit<bf16>]) {
    use std::arch::x86_64::*;
    let d = dst.as_mut_ptr().cast::<u16>();
    for c0 in (0..dst.len()).step_by(32) {
        let lanes = (dst.len() - c0).min(32);
        let (a, b) = (lo.clamp(c0, c0 + lanes) - c0, hi.clamp(c0, c0 + lanes) - c0);
        let ones = |n: usize| if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        // SAFETY: the load mask selects lanes in lo..hi; the store covers `dst`'s lanes.
        unsafe {
            let v = _mm512_maskz_loadu_epi16(ones(b) & !ones(a), src.wrapping_add(c0).cast());
            _mm512_mask_storeu_epi16(d.add(c0).cast(), ones(lanes), v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn padded_row_bf16(_: *const bf16, _: (usize, usize), _: &mut [MaybeUninit<bf16>]) {
    unreachable!("available() is false off x86_64")
}

/// `dst[u] = bf16(*src.add(u))` for `u` in `lo..hi`, zero elsewhere: a padded row.
///
/// # Safety
/// AVX-512F/BW/VL and AVX512_BF16 are available; `src.add(u)` is readable for `u` in
/// `lo..hi` (other lanes are not read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn padded_row(src: *const f32, (lo, hi): (usize, usize), dst: &mut [MaybeUninit<bf16>]) {
    use std::arch::x86_64::*;
    let d = dst.as_mut_ptr().cast::<u16>();
    for c0 in (0..dst.len()).step_by(16) {
        let lanes = (dst.len() - c0).min(16);
        let (a, b) = (lo.clamp(c0, c0 + lanes) - c0, hi.clamp(c0, c0 + lanes) - c0);
        let load = (((1u32 << b) - 1) & !((1u32 << a) - 1)) as u16;
        // SAFETY: the load mask selects lanes in lo..hi; the store covers `dst`'s lanes.
        unsafe {
            let v = _mm512_maskz_loadu_ps(load, src.wrapping_add(c0));
            let r: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(d.add(c0).cast(), ((1u32 << lanes) - 1) as u16, r);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn padded_row(_: *const f32, _: (usize, usize), _: &mut [MaybeUninit<bf16>]) {
    unreachable!("available() is false off x86_64")
}

/// `dst[i] = bf16(src[i])`, sixteen at a time.
///
/// # Safety
/// AVX-512F/BW/VL and AVX512_BF16 are available; `dst` holds `src.len()` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_run(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
    use std::arch::x86_64::*;
    debug_assert!(dst.len() >= src.len());
    let d = dst.as_mut_ptr().cast::<u16>();
    for c0 in (0..src.len()).step_by(16) {
        let lanes = (src.len() - c0).min(16);
        let mask = ((1u32 << lanes) - 1) as u16;
        // SAFETY: the masked lanes lie inside both slices.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(c0));
            let r: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(d.add(c0).cast(), mask, r);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_run(_: &[f32], _: &mut [MaybeUninit<bf16>]) {
    unreachable!("available() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendStorage;
    use crate::backend::cpu::CpuStorage;
    use crate::{DType, Layout};

    /// Deterministic values in [-1, 1), with a few denormals and exact ties for the rounding.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut v = super::super::conv::tests::values(n, seed);
        for (i, x) in v.iter_mut().enumerate() {
            match i % 29 {
                7 => *x = f32::from_bits(0x0000_1234),  // denormal: read as zero by both paths
                11 => *x = f32::from_bits(0x3F80_8000), // a tie: to even
                _ => {}
            }
        }
        v
    }

    fn as_f64(s: &CpuStorage) -> Vec<f64> {
        match s {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::F64(v) => v.clone(),
            _ => unreachable!("float results"),
        }
    }

    /// The f32 kernels on operands rounded to bf16 first (denormals flushed, as
    /// `vdpbf16ps` reads them).
    fn rounded_f32(v: &[f32]) -> CpuStorage {
        let r = |x: f32| {
            let b = bf16::from_f32(x).to_f32();
            if b.is_subnormal() { 0.0 } else { b }
        };
        CpuStorage::F32(v.iter().map(|&x| r(x)).collect())
    }

    /// The forward product and the weight gradient, of f32 (autocast's) and of bf16 tensors,
    /// equal the f32 kernels' on rounded operands (the bf16 results rounded once)
    /// up to the order of the f32 sums (on a CPU without AVX512_BF16, up to the cast path's
    /// rounding of the results): odd depths, padding, strides, dilation, one image and
    /// several, output rows wider than a vector.
    #[test]
    fn bf16_convolution_matches_f32_on_rounded_operands() {
        // Elsewhere the backend casts: the same products, the results rounded to bf16.
        let tol = if available() { 1e-5 } else { 8e-3 };
        type P = (usize, usize);
        type Case = (usize, usize, usize, usize, usize, P, P, P, P);
        let cases: [Case; 8] = [
            // (n, c, h, w, cout, kernel, stride, padding, dilation)
            (5, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1)),
            (4, 16, 8, 8, 32, (3, 3), (1, 1), (1, 1), (1, 1)),
            (1, 3, 9, 21, 5, (3, 2), (2, 1), (2, 3), (1, 2)),
            (3, 2, 7, 11, 6, (2, 3), (2, 3), (1, 1), (2, 1)),
            (2, 4, 5, 40, 7, (1, 5), (1, 1), (0, 4), (1, 1)),
            (6, 2, 4, 4, 3, (3, 3), (1, 1), (3, 3), (1, 1)),
            // Output rows of 3 (masked copies) and of 10 (two overlapping halves).
            (2, 3, 5, 5, 4, (3, 3), (1, 1), (0, 0), (1, 1)),
            (3, 2, 6, 12, 40, (3, 3), (1, 1), (0, 0), (1, 1)),
        ];
        for (case, &(n, c, h, w, cout, kernel, stride, padding, dilation)) in cases.iter().enumerate() {
            let window = Window2d { kernel, stride, padding, dilation };
            let (oh, ow) = window.output_size(h, w).expect("window fits");
            let x = values(n * c * h * w, 3 * case as u64 + 1);
            let wt = values(cout * c * kernel.0 * kernel.1, 3 * case as u64 + 2);
            let g = values(n * cout * oh * ow, 3 * case as u64 + 3);
            let (lx, lw, lg) = (
                Layout::contiguous((n, c, h, w)),
                Layout::contiguous((cout, c, kernel.0, kernel.1)),
                Layout::contiguous((n, cout, oh, ow)),
            );
            let (xs, ws, gs) = (CpuStorage::F32(x.clone()), CpuStorage::F32(wt.clone()), CpuStorage::F32(g.clone()));
            let (xr, wr, gr) = (rounded_f32(&x), rounded_f32(&wt), rounded_f32(&g));
            let pairs = [
                ("y", xs.conv2d_lowered(&lx, &ws, &lw, &window, DType::BF16), xr.conv2d(&lx, &wr, &lw, &window)),
                (
                    "dw",
                    xs.conv2d_weight_grad_lowered(&lx, &gs, &lg, &window, DType::BF16),
                    xr.conv2d_weight_grad(&lx, &gr, &lg, &window),
                ),
            ];
            // bf16 tensors: the same products, the results rounded once to bf16 (a sum on the
            // other side of a rounding tie may land one unit, at most 2⁻⁷ relative, away).
            let bf = |v: &[f32]| CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect());
            let (xb, wb, gb) = (bf(&x), bf(&wt), bf(&g));
            let native = [
                ("y bf16", xb.conv2d(&lx, &wb, &lw, &window), xr.conv2d(&lx, &wr, &lw, &window)),
                (
                    "dw bf16",
                    xb.conv2d_weight_grad(&lx, &gb, &lg, &window),
                    xr.conv2d_weight_grad(&lx, &gr, &lg, &window),
                ),
            ];
            for (rounding, (name, got, want)) in
                pairs.into_iter().map(|p| (0.0, p)).chain(native.into_iter().map(|p| (1.0 / 128.0, p)))
            {
                let (got, want) = (as_f64(&got.unwrap()), as_f64(&want.unwrap()));
                assert_eq!(got.len(), want.len(), "case {case} {name}");
                let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= tol * scale + rounding * b.abs(), "case {case} {name}[{i}]: {a} vs {b}");
                }
            }
        }
    }

    /// No images gives a zero weight gradient and no channels an empty one, in every dtype
    /// and path (several blocks included), instead of a panic.
    #[test]
    fn empty_batches_and_channels() {
        let window = Window2d { kernel: (3, 3), stride: (1, 1), padding: (1, 1), dilation: (1, 1) };
        for (n, c, cout) in [(0, 2, 3), (40, 0, 4), (3, 2, 0)] {
            let (lx, lg) = (Layout::contiguous((n, c, 6, 7)), Layout::contiguous((n, cout, 6, 7)));
            let k = c * 9;
            for dt in [DType::F32, DType::F64, DType::BF16] {
                let zeros = |len: usize| CpuStorage::full(len, dt, 0.5);
                let (x, g) = (zeros(n * c * 42), zeros(n * cout * 42));
                let mut got = vec![x.conv2d_weight_grad(&lx, &g, &lg, &window).unwrap()];
                if dt == DType::F32 {
                    got.push(x.conv2d_weight_grad_lowered(&lx, &g, &lg, &window, DType::BF16).unwrap());
                }
                for dw in got {
                    let v = as_f64(&dw);
                    assert_eq!(v.len(), cout * k, "{dt:?} n {n} c {c} cout {cout}");
                    assert!(v.iter().all(|&x| x == 0.0), "{dt:?} n {n} c {c} cout {cout}: {v:?}");
                }
            }
        }
    }
}
