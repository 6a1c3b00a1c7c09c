//! im2col / col2im: sliding windows as columns, so convolution is one GEMM.

use super::float::{CpuFloat, Float};
use super::gemm::{GemmElem, MatRef, PackB, gemm_packed};
use super::{CpuStorage, map, with_float_vec};
use crate::backend::Window2d;
use crate::{Error, Layout, Result, WithDType};
use rayon::prelude::*;

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
    /// The image, contiguous `[C, H, W]`.
    image: &'a [T],
    h: usize,
    wd: usize,
    ow: usize,
    window: &'a Window2d,
}

impl<T: GemmElem> PackB<T> for ImplicitCols<'_, T> {
    unsafe fn pack(&self, pc: usize, kb: usize, jc: usize, nb: usize, nr: usize, dst: &mut [T]) {
        let (kh, kw) = self.window.kernel;
        let (sh, sw) = self.window.stride;
        let (dh, dw) = self.window.dilation;
        let (ph, pw) = self.window.padding;
        let (h, wd, ow) = (self.h, self.wd, self.ow);
        for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
            let j0 = jc + q * nr;
            let width = nr.min(nb - q * nr);
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                let r = pc + p;
                let (ci, i, j) = (r / (kh * kw), r / kw % kh, r % kw);
                let plane = &self.image[ci * h * wd..(ci + 1) * h * wd];
                // Walk the panel's columns one output row at a time: within a row the source
                // is one input row, read with stride `sw` (contiguous for stride 1).
                let (mut oy, mut ox) = (j0 / ow, j0 % ow);
                let mut t = 0;
                while t < width {
                    let run = (width - t).min(ow - ox);
                    let dst = &mut row[t..t + run];
                    let y = (oy * sh + i * dh) as isize - ph as isize;
                    if y < 0 || y >= h as isize {
                        dst.fill(T::ZERO);
                    } else {
                        let src = &plane[y as usize * wd..(y as usize + 1) * wd];
                        // Output columns ox+u read input column x0 + u·sw; those inside [0, wd)
                        // form one range of u.
                        let x0 = (ox * sw + j * dw) as isize - pw as isize;
                        let first = if x0 >= 0 { 0 } else { ((-x0) as usize).div_ceil(sw) };
                        let end = (if x0 >= wd as isize { 0 } else { (wd as isize - x0) as usize }).div_ceil(sw);
                        let (lo, hi) = (first.min(run), end.min(run).max(first.min(run)));
                        dst[..lo].fill(T::ZERO);
                        dst[hi..].fill(T::ZERO);
                        if sw == 1 && hi > lo {
                            let s0 = (x0 + lo as isize) as usize;
                            dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                        } else {
                            for (u, d) in dst[lo..hi].iter_mut().enumerate() {
                                *d = src[(x0 + ((lo + u) * sw) as isize) as usize];
                            }
                        }
                    }
                    t += run;
                    ox = 0;
                    oy += 1;
                }
                row[width..].fill(T::ZERO);
            }
        }
    }
}

/// `y[n] = W · im2col(x[n])` for every image, with the columns packed straight from `x`.
fn conv2d_gemm<T: GemmElem + Default>(x: &[T], w: &[T], dims: [usize; 7], window: &Window2d) -> Vec<T> {
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    let mut out = super::pool::filled(n * cout * l, T::default());
    if l == 0 || cout == 0 {
        return out;
    }
    let a = MatRef { data: w, offset: 0, row_stride: k, col_stride: 1 };
    let one = |(img, y): (usize, &mut [T]), parallel: bool| {
        let cols = ImplicitCols { image: &x[img * c * h * wd..(img + 1) * c * h * wd], h, wd, ow, window };
        gemm_packed(cout, l, k, a, &cols, y, parallel);
    };
    // Images across threads when there are enough of them (no split of a thin product),
    // otherwise threads inside each product.
    if n >= 2 * rayon::current_num_threads() {
        out.par_chunks_mut(cout * l).enumerate().for_each(|x| one(x, false));
    } else {
        out.chunks_mut(cout * l).enumerate().for_each(|x| one(x, true));
    }
    out
}

/// Convolution of `x` `[N, C, H, W]` with `w` `[Cout, C, kh, kw]` (one group); f16/bf16 are
/// widened to f32 for the product.
pub fn conv2d(x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout, window: &Window2d) -> Result<CpuStorage> {
    let &[n, c, h, wd] = lx.dims() else {
        return Err(Error::BadShape { op: "conv2d", msg: format!("needs [N, C, H, W], got {:?}", lx.shape()) });
    };
    let &[cout, wc, kh, kw] = lw.dims() else {
        return Err(Error::BadShape {
            op: "conv2d",
            msg: format!("weight needs [Cout, C, kh, kw], got {:?}", lw.shape()),
        });
    };
    if wc != c || (kh, kw) != window.kernel {
        return Err(Error::ShapeMismatch { op: "conv2d", lhs: lx.shape().clone(), rhs: lw.shape().clone() });
    }
    let (oh, ow) = out_size("conv2d", lx, window, h, wd)?;
    let dims = [n, c, h, wd, cout, oh, ow];
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
