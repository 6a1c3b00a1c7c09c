//! im2col / col2im: sliding windows as columns, so convolution is one GEMM.

use super::float::{CpuFloat, Float};
use super::gemm::{GemmElem, MatRef, PackB, copy_row, gemm_packed};
use super::{CpuStorage, map, with_float_vec};
use crate::backend::Window2d;
use crate::{Error, Layout, Result, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The window's output size over `layout = [N, C, H, W]`, or a shape error.
fn out_size(op: &'static str, layout: &Layout, w: &Window2d, h: usize, wd: usize) -> Result<(usize, usize)> {
    w.output_size(h, wd).ok_or_else(|| Error::BadShape {
        op,
        msg: format!("window {w:?} does not fit an input of {:?}", layout.shape()),
    })
}

pub fn im2col(s: &CpuStorage, l: &Layout, w: &Window2d, pad: f64) -> Result<CpuStorage> {
    let &[n, c, h, wd] = l.dims() else {
        return Err(Error::BadShape { op: "im2col", msg: format!("needs [N, C, H, W], got {:?}", l.shape()) });
    };
    let (oh, ow) = out_size("im2col", l, w, h, wd)?;
    fn go<T: WithDType>(v: &[T], l: &Layout, w: &Window2d, dims: [usize; 6], pad: T) -> Vec<T> {
        let [n, c, h, wd, oh, ow] = dims;
        let (kh, kw) = w.kernel;
        let x = contiguous(v, l); // [N, C, H, W]
        let plane_out = kh * kw * oh * ow;
        let mut out = super::pool::filled(n * c * plane_out, pad);
        // One task per (n, c) plane: it writes its own kh·kw rows of the columns.
        out.par_chunks_mut(plane_out.max(1)).enumerate().for_each(|(nc, o)| {
            let src = &x[nc * h * wd..(nc + 1) * h * wd];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut o[(i * kw + j) * oh * ow..(i * kw + j + 1) * oh * ow];
                    for oy in 0..oh {
                        let y = (oy * w.stride.0 + i * w.dilation.0) as isize - w.padding.0 as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        let src_row = &src[y as usize * wd..(y as usize + 1) * wd];
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let xx = (ox * w.stride.1 + j * w.dilation.1) as isize - w.padding.1 as isize;
                            if xx >= 0 && xx < wd as isize {
                                *d = src_row[xx as usize];
                            }
                        }
                    }
                }
            }
        });
        let _ = (n, c);
        out
    }
    let dims = [n, c, h, wd, oh, ow];
    Ok(super::with_vec!(s, v => WithDType::into_cpu_storage(go(v, l, w, dims, WithDType::from_f64(pad)))))
}

pub fn col2im(s: &CpuStorage, l: &Layout, w: &Window2d, h: usize, wd: usize) -> Result<CpuStorage> {
    let (kh, kw) = w.kernel;
    let (oh, ow) = out_size("col2im", l, w, h, wd)?;
    let &[n, ckk, cols] = l.dims() else {
        return Err(Error::BadShape { op: "col2im", msg: format!("needs [N, C·kh·kw, L], got {:?}", l.shape()) });
    };
    if kh * kw == 0 || ckk % (kh * kw) != 0 || cols != oh * ow {
        return Err(Error::BadShape {
            op: "col2im",
            msg: format!("columns {:?} do not match window {w:?} over {h}×{wd}", l.shape()),
        });
    }
    let c = ckk / (kh * kw);
    fn go<T: CpuFloat>(v: &[T], l: &Layout, w: &Window2d, dims: [usize; 6]) -> Vec<T> {
        let [n, c, h, wd, oh, ow] = dims;
        let (kh, kw) = w.kernel;
        let cols = map(v, l, |x| x);
        let mut out = super::pool::filled(n * c * h * wd, T::default());
        out.par_chunks_mut((h * wd).max(1)).enumerate().for_each(|(nc, o)| {
            let src = &cols[nc * kh * kw * oh * ow..(nc + 1) * kh * kw * oh * ow];
            let mut acc = vec![T::Acc::ZERO; h * wd];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &src[(i * kw + j) * oh * ow..(i * kw + j + 1) * oh * ow];
                    for oy in 0..oh {
                        let y = (oy * w.stride.0 + i * w.dilation.0) as isize - w.padding.0 as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for ox in 0..ow {
                            let xx = (ox * w.stride.1 + j * w.dilation.1) as isize - w.padding.1 as isize;
                            if xx >= 0 && xx < wd as isize {
                                let a = &mut acc[y as usize * wd + xx as usize];
                                *a = *a + row[oy * ow + ox].to_acc();
                            }
                        }
                    }
                }
            }
            for (d, a) in o.iter_mut().zip(acc) {
                *d = T::from_acc(a);
            }
        });
        out
    }
    Ok(with_float_vec!(s, "col2im", v => WithDType::into_cpu_storage(go(v, l, w, [n, c, h, wd, oh, ow]))))
}

/// One image's im2col matrix `[C·kh·kw, OH·OW]`, never written out: the GEMM packs its blocks
/// straight from the image, so a convolution reads the input instead of 9× its size in columns.
struct ImplicitCols<'a, T> {
    /// The image with its zero padding written out, contiguous `[C, H + 2·ph, W + 2·pw]`: every
    /// window position is then in bounds, and a row segment is one plain copy.
    image: &'a [T],
    hp: usize,
    wp: usize,
    ow: usize,
    window: &'a Window2d,
}

impl<T: GemmElem> ImplicitCols<'_, T> {
    /// The `dst.len()` columns of im2col row `(ci, i, j)` from output position `at = (oy, ox)`
    /// on, one output row at a time: within an output row the source is one input row read
    /// with stride `sw`.
    #[inline(always)]
    fn row_segment(
        &self,
        (ci, i, j): (usize, usize, usize),
        at: (usize, usize),
        dst: &mut [T],
        copy: &impl Fn(&mut [T], &[T]),
    ) {
        let (sh, sw) = self.window.stride;
        let (dh, dw) = self.window.dilation;
        let plane = &self.image[ci * self.hp * self.wp..(ci + 1) * self.hp * self.wp];
        let (mut oy, mut ox) = at;
        let mut t = 0;
        while t < dst.len() {
            let run = (dst.len() - t).min(self.ow - ox);
            let seg = &mut dst[t..t + run];
            let start = (oy * sh + i * dh) * self.wp + ox * sw + j * dw;
            if sw == 1 {
                copy(seg, &plane[start..start + run]);
            } else {
                for (u, d) in seg.iter_mut().enumerate() {
                    *d = plane[start + u * sw];
                }
            }
            t += run;
            ox = 0;
            oy += 1;
        }
    }
}

impl<T: GemmElem> PackB<T> for ImplicitCols<'_, T> {
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [T]) {
        // Compiled for the widest instruction set so a register-tile row (128 bytes for f32)
        // copies in two vector moves instead of a `memcpy` call.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        unsafe fn avx512<T: GemmElem>(c: &ImplicitCols<'_, T>, a: [usize; 5], dst: &mut [T]) {
            let copy = super::gemm::short_copy_avx512!(T);
            c.pack_rows(a, dst, &copy)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: GemmElem>(c: &ImplicitCols<'_, T>, a: [usize; 5], dst: &mut [T]) {
            c.pack_rows(a, dst, &copy_row)
        }
        let args = [pc, kb, jc, nb, nr];
        match super::simd::isa() {
            // SAFETY: `isa()` reports these only after run-time detection of the features.
            #[cfg(target_arch = "x86_64")]
            super::simd::Isa::Avx512 => unsafe { avx512(self, args, dst) },
            #[cfg(target_arch = "x86_64")]
            super::simd::Isa::Avx2Fma => unsafe { avx2(self, args, dst) },
            _ => self.pack_rows(args, dst, &copy_row),
        }
    }
}

impl<T: GemmElem> ImplicitCols<'_, T> {
    #[inline(always)]
    fn pack_rows(&self, [pc, kb, jc, nb, nr]: [usize; 5], dst: &mut [T], copy: &impl Fn(&mut [T], &[T])) {
        let (kh, kw) = self.window.kernel;
        for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
            let j0 = jc + q * nr;
            let width = nr.min(nb - q * nr);
            let start = (j0 / self.ow, j0 % self.ow);
            // Row pc + p of the columns is (channel, kernel row, kernel column), stepped
            // like an odometer instead of divided out per row.
            let mut at = (pc / (kh * kw), pc / kw % kh, pc % kw);
            if self.window.stride.1 == 1 && width == nr && start.1 + nr <= self.ow {
                // The panel lies in one output row: every row of it is `nr` contiguous input
                // elements, whose start moves by a fixed step per kernel column, kernel row and
                // channel.
                let (dh, dw) = self.window.dilation;
                let plane = self.hp * self.wp;
                let mut src =
                    at.0 * plane + (start.0 * self.window.stride.0 + at.1 * dh) * self.wp + start.1 + at.2 * dw;
                for row in panel.chunks_exact_mut(nr) {
                    copy(row, &self.image[src..src + nr]);
                    at.2 += 1;
                    src += dw;
                    if at.2 == kw {
                        at.2 = 0;
                        at.1 += 1;
                        src = src + dh * self.wp - kw * dw;
                        if at.1 == kh {
                            at.1 = 0;
                            at.0 += 1;
                            src = src + plane - kh * dh * self.wp;
                        }
                    }
                }
                continue;
            }
            for row in panel.chunks_exact_mut(nr) {
                self.row_segment(at, start, &mut row[..width], copy);
                row[width..].fill(T::ZERO);
                at.2 += 1;
                if at.2 == kw {
                    at.2 = 0;
                    at.1 += 1;
                    if at.1 == kh {
                        at.1 = 0;
                        at.0 += 1;
                    }
                }
            }
        }
    }
}

/// `[C, H, W]` with `ph` zero rows above and below and `pw` zero columns on each side.
fn zero_padded<T: GemmElem>(img: &[T], c: usize, h: usize, wd: usize, (ph, pw): (usize, usize)) -> Vec<T> {
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let mut out = vec![T::ZERO; c * hp * wp];
    for (src, dst) in img.chunks_exact(h * wd).zip(out.chunks_exact_mut(hp * wp)) {
        for (s, d) in src.chunks_exact(wd).zip(dst[ph * wp..].chunks_exact_mut(wp)) {
            d[pw..pw + wd].copy_from_slice(s);
        }
    }
    out
}

/// `y[n] = W · im2col(x[n])` for every image, with the columns packed straight from `x`.
fn conv2d_gemm<T: GemmElem + Default>(x: &[T], w: &[T], dims: [usize; 7], window: &Window2d) -> Vec<T> {
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    if l == 0 || cout == 0 {
        return Vec::new();
    }
    let (hp, wp) = (h + 2 * window.padding.0, wd + 2 * window.padding.1);
    let a = MatRef { data: w, offset: 0, row_stride: k, col_stride: 1 };
    let one = |(img, y): (usize, &mut [MaybeUninit<T>]), parallel: bool| {
        let image = &x[img * c * h * wd..(img + 1) * c * h * wd];
        let padded;
        let image = if window.padding == (0, 0) {
            image
        } else {
            padded = zero_padded(image, c, h, wd, window.padding);
            &padded
        };
        let cols = ImplicitCols { image, hp, wp, ow, window };
        gemm_packed(cout, l, k, a, &cols, y, parallel);
    };
    // Images across threads when there are enough of them (no split of a thin product),
    // otherwise threads inside each product. Each product writes its whole output.
    super::fill_new(n * cout * l, |out| {
        if n >= 2 * rayon::current_num_threads() {
            out.par_chunks_mut(cout * l).enumerate().for_each(|x| one(x, false));
        } else {
            out.chunks_mut(cout * l).enumerate().for_each(|x| one(x, true));
        }
    })
}

/// Convolution of `x` `[N, C, H, W]` with `w` `[Cout, C, kh, kw]` (one group); f16/bf16 are
/// widened to f32 for the product.
pub fn conv2d(x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout, window: &Window2d) -> Result<CpuStorage> {
    let dims = window.conv2d_dims(lx, lw)?;
    fn widened<T: CpuFloat<Acc = f32>>(
        x: &[T],
        lx: &Layout,
        w: &[T],
        lw: &Layout,
        d: [usize; 7],
        win: &Window2d,
    ) -> Vec<T> {
        let (x, w) = (map(x, lx, |v: T| v.to_acc()), map(w, lw, |v: T| v.to_acc()));
        conv2d_gemm(&x, &w, d, win).into_iter().map(T::from_acc).collect()
    }
    Ok(match (x, w) {
        (CpuStorage::F32(x), CpuStorage::F32(w)) => {
            CpuStorage::F32(conv2d_gemm(&contiguous(x, lx), &contiguous(w, lw), dims, window))
        }
        (CpuStorage::F64(x), CpuStorage::F64(w)) => {
            CpuStorage::F64(conv2d_gemm(&contiguous(x, lx), &contiguous(w, lw), dims, window))
        }
        (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(widened(x, lx, w, lw, dims, window)),
        (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(widened(x, lx, w, lw, dims, window)),
        (x, w) if x.dtype() != w.dtype() => {
            return Err(Error::DTypeMismatch { op: "conv2d", lhs: x.dtype(), rhs: w.dtype() });
        }
        (x, _) => return Err(Error::UnsupportedDType { op: "conv2d", dtype: x.dtype() }),
    })
}

/// The elements of a view in row-major order: borrowed when the view already is, copied
/// otherwise.
fn contiguous<'a, T: Copy + Send + Sync + 'static>(v: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_range() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&v[a..b]),
        None => std::borrow::Cow::Owned(map(v, l, |x| x)),
    }
}
