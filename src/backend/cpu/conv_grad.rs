//! A convolution's weight gradient, `dW = Σₙ g[n] · im2col(x[n])ᵀ`, as one GEMM over every
//! image's output positions whose B operand (the transposed columns) is packed straight from
//! the zero-padded images: the columns are never written out, nor transposed.

use super::gemm::{GemmElem, MatRef, PackB, gemm_packed};
use super::{CpuStorage, contiguous};
use crate::backend::Window2d;
use crate::{Layout, Result, Shape};
use std::mem::MaybeUninit;

/// The transposed im2col matrix of all images, `[N·OH·OW, C·kh·kw]`: row `(n, oy, ox)`,
/// column `(c, i, j)` holds `x[n, c, oy·sh + i·dh, ox·sw + j·dw]` of the padded images. Both
/// indices split into a row part and a column part of the offset, so a packed row is a gather
/// of fixed column offsets from the row's base.
struct TransposedCols<'a, T> {
    /// The images `[N, C, Hp, Wp]`, padding included.
    padded: &'a [T],
    /// Image size `C·Hp·Wp` and plane width `Wp`.
    image: usize,
    width: usize,
    plane: usize,
    /// Output positions per image and per output row.
    l: usize,
    ow: usize,
    window: Window2d,
}

impl<T> TransposedCols<'_, T> {
    /// The offset of column `k = (c, i, j)` from a row's base.
    fn column_offset(&self, k: usize) -> usize {
        let (kh, kw) = self.window.kernel;
        let (c, i, j) = (k / (kh * kw), k / kw % kh, k % kw);
        c * self.plane + i * self.window.dilation.0 * self.width + j * self.window.dilation.1
    }

    /// The base offset of row `p = (n, oy, ox)`.
    fn row_base(&self, p: usize) -> usize {
        let (n, l) = (p / self.l, p % self.l);
        let (oy, ox) = (l / self.ow, l % self.ow);
        n * self.image + oy * self.window.stride.0 * self.width + ox * self.window.stride.1
    }
}

impl<T: GemmElem> PackB<T> for TransposedCols<'_, T> {
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [T]) {
        // The rows' bases, stepped like an odometer over (n, oy, ox) instead of divided out;
        // every panel of the block reuses them.
        let mut bases = Vec::with_capacity(kb);
        let (mut base, mut l) = (self.row_base(pc), pc % self.l);
        let (sh, sw) = self.window.stride;
        let next_image = self.image - self.row_base(self.l - 1);
        for _ in 0..kb {
            bases.push(base);
            l += 1;
            base = if l == self.l {
                l = 0;
                base + next_image
            } else if l.is_multiple_of(self.ow) {
                base - (self.ow - 1) * sw + sh * self.width
            } else {
                base + sw
            };
        }
        let mut offsets = Vec::with_capacity(nr);
        for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
            let k0 = jc + q * nr;
            offsets.clear();
            offsets.extend((k0..k0 + nr.min(nb - q * nr)).map(|k| self.column_offset(k)));
            #[cfg(target_arch = "x86_64")]
            if super::simd::isa() == super::simd::Isa::Avx512 && nr <= 64 && self.padded.len() <= i32::MAX as usize {
                // SAFETY: AVX-512F was detected; every base + offset indexes `padded` (the
                // product's rows and columns are in bounds), and offsets fit in i32.
                unsafe { gather_avx512(self.padded, &bases, &offsets, panel, nr) };
                continue;
            }
            for (row, &base) in panel.chunks_exact_mut(nr).zip(&bases) {
                let src = &self.padded[base..];
                for (d, &o) in row.iter_mut().zip(&offsets) {
                    *d = src[o];
                }
                row[offsets.len()..].fill(T::ZERO);
            }
        }
    }
}

/// `panel` row `p` = `src[bases[p] + offsets[t]]` for its lanes `t < offsets.len()`, zero for
/// the others up to `nr`: AVX-512 gathers of 4- or 8-byte elements, 16 or 8 lanes each.
///
/// # Safety
/// The CPU has AVX-512F; every `bases[p] + offsets[t]` indexes `src`, whose length fits in
/// i32; `nr` is at most 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_avx512<T: GemmElem>(src: &[T], bases: &[usize], offsets: &[usize], panel: &mut [T], nr: usize) {
    use std::arch::x86_64::*;
    let lanes = 64 / size_of::<T>();
    let width = offsets.len();
    let mut idx = [0i32; 64 + 16];
    for (i, &o) in idx.iter_mut().zip(offsets) {
        *i = o as i32;
    }
    for (row, &base) in panel.chunks_exact_mut(nr).zip(bases) {
        let from = src.as_ptr().wrapping_add(base);
        for h in (0..nr).step_by(lanes) {
            let store = if nr - h >= lanes { u16::MAX >> (16 - lanes) } else { (1u16 << (nr - h)) - 1 };
            let load = if width <= h {
                0
            } else if width - h >= lanes {
                store
            } else {
                ((1u16 << (width - h)) - 1) & store
            };
            let out = row.as_mut_ptr().wrapping_add(h);
            // SAFETY: gathered lanes are masked to t < width, whose addresses the caller
            // vouches for; stores are masked to the row's nr lanes; `idx` holds h + 16 lanes.
            unsafe {
                if size_of::<T>() == 4 {
                    let vi = _mm512_loadu_si512(idx.as_ptr().add(h).cast());
                    let v = _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), load, vi, from.cast());
                    _mm512_mask_storeu_epi32(out.cast(), store, v);
                } else {
                    let vi = _mm256_loadu_si256(idx.as_ptr().add(h).cast());
                    let v = _mm512_mask_i32gather_epi64::<8>(_mm512_setzero_si512(), load as u8, vi, from.cast());
                    _mm512_mask_storeu_epi64(out.cast(), store as u8, v);
                }
            }
        }
    }
}

/// A convolution's images in blocks of about `BLOCK_COLUMNS` output positions, each block's
/// copies and product on one thread (moving them between threads cost more than a small
/// network's products). The block size follows the shape only, so sums of the blocks'
/// partial results, added in block order, do not depend on the threads.
pub(super) struct Blocks {
    /// Images per block (the last block may hold fewer).
    per: usize,
    /// Blocks: at least one, empty when there are no images.
    count: usize,
    /// Fewer blocks than threads: they run one after the other, each product across the
    /// threads.
    pub(super) inner: bool,
}

impl Blocks {
    /// The blocks of `n` images of `l` output positions each.
    pub(super) fn new(n: usize, l: usize) -> Blocks {
        const BLOCK_COLUMNS: usize = 1024;
        let per = (BLOCK_COLUMNS / l.max(1)).clamp(1, n.max(1));
        let count = n.div_ceil(per).max(1);
        Blocks { per, count, inner: count < rayon::current_num_threads() }
    }

    /// Block `b`'s first image and number of images, of `n`.
    pub(super) fn images(&self, n: usize, b: usize) -> (usize, usize) {
        (b * self.per, self.per.min(n - b * self.per))
    }

    /// `block(b, part)` for each block, `part` the `b`-th `chunk` elements of `out`.
    pub(super) fn run<U: Send>(
        &self,
        out: &mut [MaybeUninit<U>],
        chunk: usize,
        block: impl Fn(usize, &mut [MaybeUninit<U>]) + Sync,
    ) {
        if self.inner {
            out.chunks_mut(chunk).enumerate().for_each(|(b, part)| block(b, part));
        } else {
            super::parallel::for_each_chunk(out, chunk, block);
        }
    }

    /// The sum, in block order, of every block's `len` elements that `block(b, part)` writes.
    pub(super) fn sum<T: Copy + std::ops::Add<Output = T> + Send + 'static>(
        &self,
        len: usize,
        block: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
    ) -> Vec<T> {
        if self.count == 1 {
            return super::fill_new(len, |out| block(0, out));
        }
        let parts: Vec<T> = super::fill_new(self.count * len, |parts| self.run(parts, len, block));
        let total = super::fill_new(len, |total| {
            for (i, v) in total.iter_mut().enumerate() {
                v.write(parts.chunks_exact(len).skip(1).fold(parts[i], |s, p| s + p[i]));
            }
        });
        super::pool::recycle_vec(parts);
        total
    }
}

fn weight_grad<T: GemmElem>(x: &[T], g: &[T], dims: [usize; 7], window: &Window2d) -> Vec<T> {
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    if cout * k == 0 {
        return Vec::new();
    }
    let blocks = Blocks::new(n, l);
    let (hp, wp) = (h + 2 * window.padding.0, wd + 2 * window.padding.1);
    // Block b's share, `Σ g[n] · im2col(x[n])ᵀ` over its images.
    blocks.sum(cout * k, |b, part| {
        let (first, nb) = blocks.images(n, b);
        // g as [Cout, nb·L]: image-major along the product's depth.
        let mut g2 = super::pool::alloc::<T>(cout * nb * l);
        for (img, part) in g[first * cout * l..(first + nb) * cout * l].chunks_exact(cout * l).enumerate() {
            for (co, row) in part.chunks_exact(l).enumerate() {
                // SAFETY: `g2` has room for Cout·nb·L elements; every one is written once.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), g2.as_mut_ptr().add(co * nb * l + img * l), l) };
            }
        }
        // SAFETY: every element was written above.
        unsafe { g2.set_len(cout * nb * l) };
        let images = &x[first * c * h * wd..(first + nb) * c * h * wd];
        let padded = if window.padding == (0, 0) {
            None
        } else {
            Some(super::conv::zero_padded(images, nb * c, h, wd, window.padding))
        };
        let cols = TransposedCols {
            padded: padded.as_deref().unwrap_or(images),
            image: c * hp * wp,
            width: wp,
            plane: hp * wp,
            l,
            ow,
            window: *window,
        };
        let a = MatRef { data: &g2, offset: 0, row_stride: nb * l, col_stride: 1 };
        gemm_packed(cout, k, nb * l, a, &cols, part, blocks.inner);
        super::pool::recycle_vec(g2);
        if let Some(p) = padded {
            super::pool::recycle_vec(p);
        }
    })
}

/// `Σₙ g[n] · im2col(x[n])ᵀ` for `x` `[N, C, H, W]` and `g` `[N, Cout, OH, OW]`, as
/// `[Cout, C·kh·kw]`; `None` for the dtypes it does not handle (the caller composes those).
pub fn conv2d_weight_grad(
    x: &CpuStorage,
    lx: &Layout,
    g: &CpuStorage,
    lg: &Layout,
    window: &Window2d,
) -> Result<Option<CpuStorage>> {
    let dims = window.conv2d_weight_grad_dims(lx, lg)?;
    let [n, c, h, wd, ..] = dims;
    // The padded copy of every image.
    Shape::checked_product("conv2d backward", &[n, c, h + 2 * window.padding.0, wd + 2 * window.padding.1])?;
    Ok(Some(match (x, g) {
        (CpuStorage::F32(x), CpuStorage::F32(g)) => {
            CpuStorage::F32(weight_grad(&contiguous(x, lx), &contiguous(g, lg), dims, window))
        }
        (CpuStorage::F64(x), CpuStorage::F64(g)) => {
            CpuStorage::F64(weight_grad(&contiguous(x, lx), &contiguous(g, lg), dims, window))
        }
        // Products on `vdpbf16ps` where the CPU has it: f32 sums, rounded once at the end.
        (CpuStorage::BF16(x), CpuStorage::BF16(g)) if super::conv_bf16::available() => {
            let dw = super::conv_bf16::weight_grad(&contiguous(x, lx), &contiguous(g, lg), dims, window);
            let out = super::map(&dw, &Layout::contiguous(dw.len()), half::bf16::from_f32);
            super::pool::recycle_vec(dw);
            CpuStorage::BF16(out)
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(s: &CpuStorage) -> Vec<f64> {
        match s {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::F64(v) => v.clone(),
            _ => panic!("f32 or f64 expected"),
        }
    }

    /// The implicit weight gradient equals the composed one (columns written out, then the
    /// products; both of its branches) over windows with every option, in f32 and f64, with
    /// a transposed view for g.
    #[test]
    fn implicit_weight_gradient_matches_the_columns() {
        let windows = [
            Window2d { kernel: (3, 3), stride: (1, 1), padding: (1, 1), dilation: (1, 1) },
            Window2d { kernel: (2, 3), stride: (2, 1), padding: (1, 0), dilation: (1, 2) },
            Window2d { kernel: (3, 2), stride: (1, 3), padding: (2, 1), dilation: (2, 1) },
        ];
        let value = |i: usize| ((i * 7919 % 1009) as f64) / 1009.0 - 0.5;
        for (wi, window) in windows.iter().enumerate() {
            // The last shape has more than 2²⁰ column elements (the reference's per-image
            // branch) and one image per block; the one before it two blocks of several images
            // (the second partial).
            for &[n, c, h, w, cout] in &[[3, 2, 7, 9, 5], [1, 4, 5, 5, 37], [40, 2, 6, 7, 4], [9, 8, 40, 41, 3]] {
                if wi > 0 && n == 9 {
                    continue;
                }
                let (oh, ow) = window.output_size(h, w).expect("fits");
                let x: Vec<f64> = (0..n * c * h * w).map(value).collect();
                let lx = Layout::contiguous((n, c, h, w));
                // g stored as [N, OH, OW, Cout] and viewed as [N, Cout, OH, OW].
                let g: Vec<f64> = (0..n * cout * oh * ow).map(|i| value(i + 11)).collect();
                let lg = Layout::contiguous((n, oh, ow, cout)).permute(&[0, 3, 1, 2]).expect("a permutation");
                for f32_run in [false, true] {
                    let (xs, gs) = if f32_run {
                        let f = |v: &[f64]| CpuStorage::F32(v.iter().map(|&x| x as f32).collect());
                        (f(&x), f(&g))
                    } else {
                        (CpuStorage::F64(x.clone()), CpuStorage::F64(g.clone()))
                    };
                    let ours = conv2d_weight_grad(&xs, &lx, &gs, &lg, window).expect("ok").expect("f32/f64");
                    let want = crate::backend::conv2d_weight_grad_by_columns(&xs, &lx, &gs, &lg, window).expect("ok");
                    let (a, b) = (values(&ours), values(&want));
                    assert_eq!(a.len(), cout * c * window.kernel.0 * window.kernel.1);
                    let tol = if f32_run { 1e-3 } else { 1e-10 };
                    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                        assert!(
                            (p - q).abs() <= tol * (1.0 + q.abs()),
                            "{window:?} {n}×{c}×{h}×{w}→{cout} [{i}]: {p} vs {q}"
                        );
                    }
                }
            }
        }
    }
}
