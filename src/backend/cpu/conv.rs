//! im2col / col2im: sliding windows as columns, so convolution is one GEMM.

use super::float::{CpuFloat, Float};
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
        let x = map(v, l, |x| x); // contiguous [N, C, H, W]
        let plane_out = kh * kw * oh * ow;
        let mut out = vec![pad; n * c * plane_out];
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
        let mut out = vec![T::default(); n * c * h * wd];
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
