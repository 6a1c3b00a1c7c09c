//! im2col / col2im: sliding windows as columns, so convolution is one GEMM.

use super::float::{CpuFloat, Float};
use super::gemm::{GemmElem, MatRef, PackB, PackedA, copy_row, gemm_packed_a, prefetch_hint};
use super::{CpuStorage, contiguous, copy_segments, map, with_float_vec};
use crate::backend::Window2d;
use crate::{Error, Layout, Result, Shape, WithDType};
use std::mem::MaybeUninit;

/// The window's output size over an image `[N, C, H, W]`, or a shape error when it does
/// not fit or the image or its columns have more elements than memory can address.
fn out_size(op: &'static str, w: &Window2d, image: [usize; 4]) -> Result<(usize, usize)> {
    Shape::checked_product(op, &image)?;
    w.columns(op, &Shape::from(image.to_vec()))
}

/// The outputs `ox` in `[lo, hi)` whose input column `ox·sx + j·dx − px` (kernel column `j`)
/// lies inside an image `wd` wide: one run, so copies along a row need no bounds test.
fn inside_run(w: &Window2d, j: usize, wd: usize, ow: usize) -> (usize, usize) {
    let (sx, dx, px) = (w.stride.1, w.dilation.1, w.padding.1);
    let lo = px.saturating_sub(j * dx).div_ceil(sx).min(ow);
    (lo, (wd + px).saturating_sub(j * dx).div_ceil(sx).clamp(lo, ow))
}

pub fn im2col(s: &CpuStorage, l: &Layout, w: &Window2d, pad: f64) -> Result<CpuStorage> {
    let &[n, c, h, wd] = l.dims() else {
        return Err(Error::BadShape { op: "im2col", msg: format!("needs [N, C, H, W], got {:?}", l.shape()) });
    };
    let (oh, ow) = out_size("im2col", w, [n, c, h, wd])?;
    fn go<T: WithDType>(v: &[T], l: &Layout, w: &Window2d, dims: [usize; 6], pad: T) -> Vec<T> {
        let [n, c, h, wd, oh, ow] = dims;
        let (kh, kw) = w.kernel;
        let x = contiguous(v, l); // [N, C, H, W]
        let plane_out = kh * kw * oh * ow;
        let mut out = super::pool::filled(n * c * plane_out, pad);
        let (sx, dx, px) = (w.stride.1, w.dilation.1, w.padding.1);
        let runs: Vec<(usize, usize)> = (0..kw).map(|j| inside_run(w, j, wd, ow)).collect();
        // One task per (n, c) plane: it writes its own kh·kw rows of the columns.
        super::parallel::for_each_chunk(&mut out, plane_out.max(1), |nc, o| {
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
                        // The outputs whose input column lies inside the image: one run
                        // [lo, hi), copied without a bounds test per element.
                        let (lo, hi) = runs[j];
                        let first = (lo * sx + j * dx).wrapping_sub(px);
                        if sx == 1 {
                            dst[lo..hi].copy_from_slice(&src_row[first..first + (hi - lo)]);
                        } else {
                            for (k, d) in dst[lo..hi].iter_mut().enumerate() {
                                *d = src_row[first + k * sx];
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
    let &[n, ckk, cols] = l.dims() else {
        return Err(Error::BadShape { op: "col2im", msg: format!("needs [N, C·kh·kw, L], got {:?}", l.shape()) });
    };
    let kk = kh.checked_mul(kw).unwrap_or(0);
    if kk == 0 || ckk % kk != 0 {
        return Err(Error::BadShape {
            op: "col2im",
            msg: format!("columns {:?} do not match window {w:?} over {h}×{wd}", l.shape()),
        });
    }
    let (oh, ow) = out_size("col2im", w, [n, ckk / kk, h, wd])?;
    if Some(cols) != oh.checked_mul(ow) {
        return Err(Error::BadShape {
            op: "col2im",
            msg: format!("columns {:?} do not match window {w:?} over {h}×{wd}", l.shape()),
        });
    }
    let c = ckk / kk;
    fn go<T: CpuFloat>(v: &[T], l: &Layout, w: &Window2d, dims: [usize; 6]) -> Vec<T> {
        let [n, c, h, wd, oh, ow] = dims;
        let (kh, kw) = w.kernel;
        let cols = contiguous(v, l);
        let mut out = super::pool::filled(n * c * h * wd, T::default());
        let (sx, dx, px) = (w.stride.1, w.dilation.1, w.padding.1);
        super::parallel::for_each_chunk(&mut out, (h * wd).max(1), |nc, o| {
            let src = &cols[nc * kh * kw * oh * ow..(nc + 1) * kh * kw * oh * ow];
            let mut acc = vec![T::Acc::ZERO; h * wd];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &src[(i * kw + j) * oh * ow..(i * kw + j + 1) * oh * ow];
                    // A run of outputs inside the image: the inner loop has no bounds test.
                    let (lo, hi) = inside_run(w, j, wd, ow);
                    for oy in 0..oh {
                        let y = (oy * w.stride.0 + i * w.dilation.0) as isize - w.padding.0 as isize;
                        if y < 0 || y >= h as isize || lo == hi {
                            continue;
                        }
                        let first = y as usize * wd + lo * sx + j * dx - px;
                        let src_run = &row[oy * ow + lo..oy * ow + hi];
                        if sx == 1 {
                            for (a, &v) in acc[first..first + (hi - lo)].iter_mut().zip(src_run) {
                                *a = *a + v.to_acc();
                            }
                        } else {
                            for (k, &v) in src_run.iter().enumerate() {
                                let a = &mut acc[first + k * sx];
                                *a = *a + v.to_acc();
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

/// Max pooling's argument (see `BackendStorage::max_pool2d_indices`): one task per plane,
/// each output pixel scanning the part of its window inside the image.
pub fn max_pool2d_indices(s: &CpuStorage, l: &Layout, w: &Window2d, (oh, ow): (usize, usize)) -> Result<CpuStorage> {
    let &[n, c, h, wd] = l.dims() else {
        return Err(Error::BadShape { op: "max_pool2d", msg: format!("needs [N, C, H, W], got {:?}", l.shape()) });
    };
    Shape::checked_product("max_pool2d", &[n, c, oh, ow])?;
    fn go<T: CpuFloat>(v: &[T], l: &Layout, w: &Window2d, [n, c, h, wd, oh, ow]: [usize; 6]) -> Vec<i64> {
        let x = contiguous(v, l);
        let mut out = super::pool::filled(n * c * oh * ow, 0i64);
        // Each output's taps inside the image, once per axis: the first input index and the
        // tap count (taps t with 0 ≤ o·s − p + t·d < size form one run).
        let taps = |o: usize, s: usize, p: usize, k: usize, d: usize, size: usize| {
            let start = (o * s) as isize - p as isize;
            let d = d as isize;
            let lo = if start < 0 { (-start + d - 1) / d } else { 0 };
            let hi = (k as isize).min((size as isize - start + d - 1).div_euclid(d)).max(lo);
            ((start + lo * d).max(0) as usize, (hi - lo) as usize)
        };
        let rows: Vec<_> = (0..oh).map(|oy| taps(oy, w.stride.0, w.padding.0, w.kernel.0, w.dilation.0, h)).collect();
        let cols: Vec<_> = (0..ow).map(|ox| taps(ox, w.stride.1, w.padding.1, w.kernel.1, w.dilation.1, wd)).collect();
        let (dy, dx) = w.dilation;
        // The usual 2×2 window at stride 2 inside the image: four fixed taps per output.
        let pairs = w.kernel == (2, 2) && w.stride == (2, 2) && w.padding == (0, 0) && w.dilation == (1, 1);
        let pairs = pairs && 2 * oh <= h && 2 * ow <= wd;
        super::parallel::for_each_chunk(&mut out, (oh * ow).max(1), |nc, o| {
            let plane = &x[nc * h * wd..(nc + 1) * h * wd];
            if pairs {
                for (oy, o) in o.chunks_mut(ow).enumerate() {
                    let (r0, r1) = (2 * oy * wd, (2 * oy + 1) * wd);
                    let (top, bottom) = (&plane[r0..r0 + 2 * ow], &plane[r1..r1 + 2 * ow]);
                    for (ox, o) in o.iter_mut().enumerate() {
                        let taps = [
                            (top[2 * ox], r0),
                            (top[2 * ox + 1], r0 + 1),
                            (bottom[2 * ox], r1),
                            (bottom[2 * ox + 1], r1 + 1),
                        ];
                        let (mut best, mut at) = (taps[0].0.to_acc(), taps[0].1);
                        for &(v, i) in &taps[1..] {
                            let v = v.to_acc();
                            // As below: a greater value or a NaN takes the place.
                            #[allow(clippy::eq_op)]
                            let take = (v > best) | (v != v);
                            best = std::hint::select_unpredictable(take, v, best);
                            at = std::hint::select_unpredictable(take, i, at);
                        }
                        *o = (at + 2 * ox) as i64;
                    }
                }
                return;
            }
            for (&(y0, ny), o) in rows.iter().zip(o.chunks_mut(ow)) {
                for (&(x0, nx), o) in cols.iter().zip(o) {
                    if ny == 0 || nx == 0 {
                        *o = 0;
                        continue;
                    }
                    let first = y0 * wd + x0;
                    let (mut best, mut at) = (plane[first].to_acc(), first);
                    for ty in 0..ny {
                        let row = (y0 + ty * dy) * wd;
                        for tx in 0..nx {
                            let i = row + x0 + tx * dx;
                            let v = plane[i].to_acc();
                            // PyTorch's test: a greater value or a NaN takes the place. Selected
                            // without a branch: which tap wins is data, not a pattern.
                            #[allow(clippy::eq_op)]
                            let take = (v > best) | (v != v);
                            best = std::hint::select_unpredictable(take, v, best);
                            at = std::hint::select_unpredictable(take, i, at);
                        }
                    }
                    *o = at as i64;
                }
            }
        });
        out
    }
    let dims = [n, c, h, wd, oh, ow];
    Ok(CpuStorage::I64(with_float_vec!(s, "max_pool2d", v => go(v, l, w, dims))))
}

/// One image's im2col matrix `[C·kh·kw, OH·OW]`, never written out: the GEMM packs its blocks
/// straight from the image, so a convolution reads the input instead of 9× its size in columns.
struct ImplicitCols<'a, T> {
    /// The image `[C, h, w]`, contiguous.
    image: &'a [T],
    h: usize,
    w: usize,
    /// The zero padding still to apply when reading `image`: the window's, or none when the
    /// caller wrote it out (then every window position is in bounds).
    pad: (usize, usize),
    ow: usize,
    window: &'a Window2d,
}

/// Whether every register panel of the columns lies in one output row with unit stride along
/// it, for any register width `nr` dividing 32 (the widest): then the GEMM packs every panel
/// row as one masked copy, and no zero-padded copy of the image is needed.
fn panels_in_rows(ow: usize, window: &Window2d) -> bool {
    window.stride.1 == 1 && ow.is_multiple_of(32)
}

impl<T: GemmElem> ImplicitCols<'_, T> {
    /// The `dst.len()` columns of im2col row `(ci, i, j)` from output position `at = (oy, ox)`
    /// on, one output row at a time: within an output row the source is one input row read
    /// with stride `sw`. Positions in the padding read as zero.
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
        let (ph, pw) = self.pad;
        let plane = &self.image[ci * self.h * self.w..(ci + 1) * self.h * self.w];
        let (mut oy, mut ox) = at;
        let mut t = 0;
        while t < dst.len() {
            let run = (dst.len() - t).min(self.ow - ox);
            let seg = &mut dst[t..t + run];
            let iy = (oy * sh + i * dh).wrapping_sub(ph);
            if self.pad == (0, 0) && sw == 1 {
                let start = iy * self.w + ox + j * dw;
                copy(seg, &plane[start..start + run]);
            } else if iy >= self.h {
                seg.fill(T::ZERO);
            } else {
                let row = &plane[iy * self.w..(iy + 1) * self.w];
                for (u, d) in seg.iter_mut().enumerate() {
                    let ix = ((ox + u) * sw + j * dw).wrapping_sub(pw);
                    *d = if ix < self.w { row[ix] } else { T::ZERO };
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
            // SAFETY: forwarded from the caller.
            unsafe { c.pack_rows(a, dst, &copy, &|d, s, span| lanes_avx512(d, s, span)) }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: GemmElem>(c: &ImplicitCols<'_, T>, a: [usize; 5], dst: &mut [T]) {
            // SAFETY: forwarded from the caller.
            unsafe { c.pack_rows(a, dst, &copy_row, &|d, s, span| lanes(d, s, span)) }
        }
        let args = [pc, kb, jc, nb, nr];
        // SAFETY (all three): forwarded from the caller; the SIMD versions run only where
        // `isa()` detected their features.
        match super::simd::isa() {
            #[cfg(target_arch = "x86_64")]
            super::simd::Isa::Avx512 => unsafe { avx512(self, args, dst) },
            #[cfg(target_arch = "x86_64")]
            super::simd::Isa::Avx2Fma => unsafe { avx2(self, args, dst) },
            _ => unsafe { self.pack_rows(args, dst, &copy_row, &|d, s, span| lanes(d, s, span)) },
        }
    }
}

/// The lanes `lo..hi` of a packed row that lie inside the image (the others are padding),
/// with the byte masks of those lanes over a 128-byte row for the AVX-512 copy.
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: usize,
    hi: usize,
    bytes: [u64; 2],
}

impl Span {
    fn new(lo: usize, hi: usize, size: usize) -> Span {
        // Bytes a..b of the 64-byte half starting at `at`, clipped to it.
        let half = |at: usize| {
            let (a, b) = ((lo * size).saturating_sub(at).min(64), (hi * size).saturating_sub(at).min(64));
            if a >= b { 0 } else { (u64::MAX >> (64 - (b - a))) << a }
        };
        Span { lo, hi, bytes: [half(0), half(64)] }
    }
}

/// `dst[u] = *src.add(u)` for the lanes `u` of `span`, zero for the others: one packed row
/// whose ends may fall in the padding.
///
/// # Safety
/// `src.add(u)` is readable for every `u` in `span.lo..span.hi` (other lanes may lie outside
/// any allocation; they are not read).
#[inline(always)]
unsafe fn lanes<T: GemmElem>(dst: &mut [T], src: *const T, span: Span) {
    if span.lo == 0 && span.hi == dst.len() {
        // SAFETY: every lane is readable.
        return copy_row(dst, unsafe { std::slice::from_raw_parts(src, dst.len()) });
    }
    for (u, d) in dst.iter_mut().enumerate() {
        // SAFETY: only lanes in lo..hi are read.
        *d = if (span.lo..span.hi).contains(&u) { unsafe { *src.wrapping_add(u) } } else { T::ZERO };
    }
}

/// [`lanes`] for a 128-byte row (f32 or f64 at the AVX-512 kernels' width) as two byte-masked
/// loads, which neither read nor fault outside the mask, and two stores.
///
/// # Safety
/// As [`lanes`]; the CPU has AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
#[inline]
unsafe fn lanes_avx512<T: GemmElem>(dst: &mut [T], src: *const T, span: Span) {
    use std::arch::x86_64::{_mm512_maskz_loadu_epi8, _mm512_storeu_si512};
    if size_of_val(dst) != 128 {
        // SAFETY: forwarded contract.
        return unsafe { lanes(dst, src, span) };
    }
    let (d, s) = (dst.as_mut_ptr().cast::<i8>(), src.cast::<i8>());
    // SAFETY: the load masks select the bytes of the span's lanes, which the caller vouches
    // for; `dst` holds the 128 bytes stored.
    unsafe {
        let v0 = _mm512_maskz_loadu_epi8(span.bytes[0], s);
        let v1 = _mm512_maskz_loadu_epi8(span.bytes[1], s.wrapping_add(64));
        _mm512_storeu_si512(d.cast(), v0);
        _mm512_storeu_si512(d.add(64).cast(), v1);
    }
}

impl<T: GemmElem> ImplicitCols<'_, T> {
    /// # Safety
    /// `lanes` is [`lanes`] or, on a CPU with AVX-512BW, [`lanes_avx512`], and so reads only
    /// the lanes it is asked for.
    #[inline(always)]
    unsafe fn pack_rows(
        &self,
        [pc, kb, jc, nb, nr]: [usize; 5],
        dst: &mut [T],
        copy: &impl Fn(&mut [T], &[T]),
        lanes: &impl Fn(&mut [T], *const T, Span),
    ) {
        let (kh, kw) = self.window.kernel;
        let (dh, dw) = self.window.dilation;
        let (ph, pw) = self.pad;
        let plane = self.h * self.w;
        // Filled only where the padding is read, then reused by every panel of the block.
        let mut spans = Vec::new();
        for (q, panel) in dst[..nb.div_ceil(nr) * kb * nr].chunks_exact_mut(kb * nr).enumerate() {
            let j0 = jc + q * nr;
            let width = nr.min(nb - q * nr);
            let start = (j0 / self.ow, j0 % self.ow);
            // Row pc + p of the columns is (channel, kernel row, kernel column), stepped
            // like an odometer instead of divided out per row.
            let mut at = (pc / (kh * kw), pc / kw % kh, pc % kw);
            let in_one_row = self.window.stride.1 == 1 && width == nr && start.1 + nr <= self.ow;
            if in_one_row && self.pad == (0, 0) {
                // Every row of the panel is `nr` contiguous input elements, whose start moves
                // by a fixed step per kernel column, kernel row and channel.
                let mut src =
                    at.0 * plane + (start.0 * self.window.stride.0 + at.1 * dh) * self.w + start.1 + at.2 * dw;
                for row in panel.chunks_exact_mut(nr) {
                    if at.2 == 0 {
                        let iy = start.0 * self.window.stride.0 + at.1 * dh;
                        self.prefetch_next_panel(at.0, iy, start.1, nr);
                    }
                    copy(row, &self.image[src..src + nr]);
                    at.2 += 1;
                    src += dw;
                    if at.2 == kw {
                        at.2 = 0;
                        at.1 += 1;
                        src = src + dh * self.w - kw * dw;
                        if at.1 == kh {
                            at.1 = 0;
                            at.0 += 1;
                            src = src + plane - kh * dh * self.w;
                        }
                    }
                }
                continue;
            }
            if in_one_row {
                // As above, but the padding is read as zeros: a row above or below the image
                // is all zeros, and a row's ends that fall left or right of it are masked.
                // Kernel column j reads input columns ix0 + u for its lanes u in its span.
                spans.clear();
                spans.extend((0..kw).map(|j| {
                    let ix0 = (start.1 + j * dw) as isize - pw as isize;
                    let lo = (-ix0).clamp(0, nr as isize);
                    let hi = (self.w as isize - ix0).clamp(lo, nr as isize);
                    (ix0, Span::new(lo as usize, hi as usize, size_of::<T>()))
                }));
                let oy = start.0 * self.window.stride.0;
                for row in panel.chunks_exact_mut(nr) {
                    let (ci, i, j) = at;
                    let iy = (oy + i * dh).wrapping_sub(ph);
                    if j == 0 {
                        self.prefetch_next_panel(ci, iy, start.1.saturating_sub(pw), nr);
                    }
                    if iy < self.h {
                        let (ix0, span) = spans[j];
                        let src = self.image.as_ptr().wrapping_add(ci * plane + iy * self.w).wrapping_offset(ix0);
                        // The span's lanes read input columns inside row iy of channel ci.
                        lanes(row, src, span);
                    } else {
                        row.fill(T::ZERO);
                    }
                    next_row(&mut at, self.window.kernel);
                }
                continue;
            }
            if self.pad == (0, 0) && self.window.stride.1 == 1 && width == nr && start.1 == 0 && nr % self.ow == 0 {
                // Short output rows (small images): a panel row is `nr / ow` whole output rows,
                // each one copy of `ow` input elements.
                let (sh, dh, dw) = (self.window.stride.0, self.window.dilation.0, self.window.dilation.1);
                let step = sh * self.w;
                let last = (nr / self.ow - 1) * step + self.ow;
                for row in panel.chunks_exact_mut(nr) {
                    let (ci, i, j) = at;
                    let src = &self.image[ci * plane + (start.0 * sh + i * dh) * self.w + j * dw..][..last];
                    match size_of_val(&row[..self.ow]) {
                        // Segments of a constant size copy as one vector move each.
                        16 => copy_segments::<T, 16>(row, src, self.ow, step),
                        32 => copy_segments::<T, 32>(row, src, self.ow, step),
                        64 => copy_segments::<T, 64>(row, src, self.ow, step),
                        _ => {
                            for (seg, at) in row.chunks_exact_mut(self.ow).zip((0..).step_by(step)) {
                                copy(seg, &src[at..at + self.ow]);
                            }
                        }
                    }
                    next_row(&mut at, self.window.kernel);
                }
                continue;
            }
            for row in panel.chunks_exact_mut(nr) {
                self.row_segment(at, start, &mut row[..width], copy);
                row[width..].fill(T::ZERO);
                next_row(&mut at, self.window.kernel);
            }
        }
    }
}

impl<T> ImplicitCols<'_, T> {
    /// Asks the cache for the input row that the next output row's panel reads where this
    /// panel reads row `iy` of channel `ci`, from column `x0` on for the `nr` lanes and the
    /// kernel's width. A panel reads one input row per channel and kernel row, a page apart
    /// for 32×32 planes, more streams than the hardware prefetcher follows: without this,
    /// packing waited on those loads (a quarter of a 3×3 convolution's time on one core).
    #[inline(always)]
    fn prefetch_next_panel(&self, ci: usize, iy: usize, x0: usize, nr: usize) {
        let next = iy.wrapping_add(self.window.stride.0);
        if next >= self.h || x0 >= self.w {
            return;
        }
        let (kw, dw) = (self.window.kernel.1, self.window.dilation.1);
        let len = (nr + (kw - 1) * dw).min(self.w - x0);
        let row = self.image[(ci * self.h + next) * self.w + x0..][..len].as_ptr().cast::<u8>();
        for at in (0..len * size_of::<T>()).step_by(64).chain([len * size_of::<T>() - 1]) {
            prefetch_hint(row.wrapping_add(at));
        }
    }
}

/// Steps im2col row `(channel, kernel row, kernel column)` to the next one, like an odometer.
#[inline(always)]
fn next_row(at: &mut (usize, usize, usize), (kh, kw): (usize, usize)) {
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

/// `[C, H, W]` (any number of planes) with `ph` zero rows above and below and `pw` zero
/// columns on each side.
pub(super) fn zero_padded<T: GemmElem>(img: &[T], c: usize, h: usize, wd: usize, (ph, pw): (usize, usize)) -> Vec<T> {
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let mut out = super::pool::filled(c * hp * wp, T::ZERO);
    for (src, dst) in img.chunks_exact(h * wd).zip(out.chunks_exact_mut(hp * wp)) {
        for (s, d) in src.chunks_exact(wd).zip(dst[ph * wp..].chunks_exact_mut(wp)) {
            d[pw..pw + wd].copy_from_slice(s);
        }
    }
    out
}

/// `y[n] = W · im2col(x[n])` for every image, with the columns packed straight from `x`.
pub(super) fn conv2d_gemm<T: GemmElem + Default>(x: &[T], w: &[T], dims: [usize; 7], window: &Window2d) -> Vec<T> {
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    if l == 0 || cout == 0 {
        return Vec::new();
    }
    if k == 0 {
        // No input channels (or an empty kernel): every output is an empty sum, as in PyTorch.
        return super::pool::filled(n * cout * l, T::default());
    }
    let (hp, wp) = (h + 2 * window.padding.0, wd + 2 * window.padding.1);
    // Packed once: every image's product reads the same weights.
    let a = PackedA::new(cout, k, MatRef { data: w, offset: 0, row_stride: k, col_stride: 1 });
    let one = |(img, y): (usize, &mut [MaybeUninit<T>]), parallel: bool| {
        let image = &x[img * c * h * wd..(img + 1) * c * h * wd];
        let padded;
        // Padding is read as zeros while packing where every panel lies in one output row;
        // elsewhere a zero-padded copy keeps the packing a plain copy.
        let cols = if window.padding == (0, 0) || panels_in_rows(ow, window) {
            ImplicitCols { image, h, w: wd, pad: window.padding, ow, window }
        } else {
            padded = zero_padded(image, c, h, wd, window.padding);
            ImplicitCols { image: &padded, h: hp, w: wp, pad: (0, 0), ow, window }
        };
        gemm_packed_a(l, &a, &cols, y, parallel);
    };
    // Images across threads when there are enough of them (no split of a thin product),
    // otherwise threads inside each product. Each product writes its whole output.
    super::fill_new(n * cout * l, |out| {
        if n >= 2 * rayon::current_num_threads() {
            super::parallel::for_each_chunk(out, cout * l, |i, y| one((i, y), false));
        } else {
            out.chunks_mut(cout * l).enumerate().for_each(|x| one(x, true));
        }
    })
}

/// [`conv2d_gemm`] in f32, where the tile reads the image in place when it can
/// ([`super::conv_direct`]).
fn conv2d_f32(x: &[f32], w: &[f32], dims: [usize; 7], window: &Window2d) -> Vec<f32> {
    if super::conv_direct::applies(dims, window) {
        return super::conv_direct::conv2d(x, w, dims, window);
    }
    conv2d_gemm(x, w, dims, window)
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
        let y = conv2d_f32(&x, &w, d, win);
        // Narrowed by the parallel, vectorized map (a plain collect ran on one thread).
        map(&y, &Layout::contiguous(y.len()), T::from_acc)
    }
    Ok(match (x, w) {
        (CpuStorage::F32(x), CpuStorage::F32(w)) => {
            CpuStorage::F32(conv2d_f32(&contiguous(x, lx), &contiguous(w, lw), dims, window))
        }
        (CpuStorage::F64(x), CpuStorage::F64(w)) => {
            CpuStorage::F64(conv2d_gemm(&contiguous(x, lx), &contiguous(w, lw), dims, window))
        }
        (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(widened(x, lx, w, lw, dims, window)),
        // Products on `vdpbf16ps` where the CPU has it (f32 sums, rounded once).
        (CpuStorage::BF16(x), CpuStorage::BF16(w)) if super::conv_bf16::available() => CpuStorage::BF16(
            super::conv_bf16::conv2d::<half::bf16, half::bf16>(&contiguous(x, lx), &contiguous(w, lw), dims, window),
        ),
        (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(widened(x, lx, w, lw, dims, window)),
        (x, w) if x.dtype() != w.dtype() => {
            return Err(Error::DTypeMismatch { op: "conv2d", lhs: x.dtype(), rhs: w.dtype() });
        }
        (x, _) => return Err(Error::UnsupportedDType { op: "conv2d", dtype: x.dtype() }),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    pub(in crate::backend::cpu) fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let x = (i ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                ((x ^ (x >> 31)) >> 40) as f32 / (1 << 23) as f32 - 1.0
            })
            .collect()
    }

    pub(in crate::backend::cpu) type Pair = (usize, usize);
    /// (c, h, w, kernel, stride, padding, dilation) with output rows a multiple of 32 wide and
    /// unit stride along them: padding wider than the kernel, dilation, vertical stride, and a
    /// depth that spans several channels per block.
    pub(in crate::backend::cpu) const SHAPES: [(usize, usize, usize, Pair, Pair, Pair, Pair); 5] = [
        (3, 5, 32, (3, 3), (1, 1), (1, 1), (1, 1)),
        (2, 4, 30, (3, 3), (2, 1), (3, 2), (2, 1)),
        (4, 6, 64, (2, 5), (1, 1), (1, 4), (3, 2)),
        (1, 3, 64, (1, 1), (3, 1), (2, 0), (1, 1)),
        (5, 2, 96, (4, 1), (1, 1), (4, 0), (1, 1)),
    ];

    /// Packing with the padding read as zeros gives exactly the blocks that packing a
    /// zero-padded copy gives, through both lane helpers.
    #[test]
    fn padding_in_packing_matches_a_padded_copy() {
        for (i, &(c, h, w, kernel, stride, padding, dilation)) in SHAPES.iter().enumerate() {
            let window = Window2d { kernel, stride, padding, dilation };
            let (oh, ow) = window.output_size(h, w).expect("window fits");
            assert!(panels_in_rows(ow, &window), "shape {i}: ow {ow}");
            let image = values(c * h * w, i as u64);
            let padded = zero_padded(&image, c, h, w, padding);
            let (hp, wp) = (h + 2 * padding.0, w + 2 * padding.1);
            let direct = ImplicitCols { image: &image, h, w, pad: padding, ow, window: &window };
            let copied = ImplicitCols { image: &padded, h: hp, w: wp, pad: (0, 0), ow, window: &window };
            let (k, l) = (c * kernel.0 * kernel.1, oh * ow);
            for nr in [8, 16, 32] {
                // Column blocks from 0 (every panel in one output row) and from 5 (panels
                // across rows: the element-wise path, which reads the padding as zeros too).
                for (pc, kb, jc) in [(0, k, 0), (k / 3, k - k / 3, 0), (0, k, 5)] {
                    let len = (l - jc).div_ceil(nr) * kb * nr;
                    let (mut want, mut got) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    let args = [pc, kb, jc, l - jc, nr];
                    // SAFETY: `lanes` reads only the lanes it is asked for.
                    unsafe {
                        copied.pack_rows(args, &mut want, &copy_row, &|d, s, span| lanes(d, s, span));
                        direct.pack_rows(args, &mut got, &copy_row, &|d, s, span| lanes(d, s, span));
                    }
                    assert_eq!(got, want, "shape {i}, nr {nr}, rows {pc}+{kb}, columns {jc}.., scalar lanes");
                    #[cfg(target_arch = "x86_64")]
                    if super::super::simd::isa() == super::super::simd::Isa::Avx512 {
                        got.fill(f32::NAN);
                        // SAFETY: the CPU has AVX-512F and BW (`isa()` checked both).
                        unsafe { direct.pack_rows(args, &mut got, &copy_row, &|d, s, span| lanes_avx512(d, s, span)) };
                        assert_eq!(got, want, "shape {i}, nr {nr}, rows {pc}+{kb}, columns {jc}.., AVX-512 lanes");
                    }
                }
            }
        }
    }
}
