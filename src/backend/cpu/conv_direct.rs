//! f32 convolutions with unit horizontal stride and output rows a multiple of 32 wide, on
//! AVX-512: the GEMM's register tile (12 output channels × 32 positions of one output row)
//! reads the zero-padded image in place. Row `(channel, kernel row, kernel column)` of the
//! implicit im2col matrix is, for those 32 positions, 32 consecutive elements of one padded
//! input row, so a table of offsets replaces packing B: the packed path wrote every column
//! panel out once per image (`C·kh·kw × 32` elements per panel, a tenth of the time of a
//! 3×3 convolution in its profile) and the tile read it back, where this one reads the padded
//! input rows where they lie.
//!
//! The sums run in the packed path's order (depth blocks in turn, one FMA per depth step),
//! so both give the same bits.

use super::gemm::{MatRef, PackedA};
use super::parallel::SendPtr;
use crate::backend::Window2d;

/// Whether [`conv2d`] computes this convolution (`dims` as `conv2d_dims` gives them).
pub(super) fn applies(dims: [usize; 7], window: &Window2d) -> bool {
    let [n, c, _, _, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    super::simd::supported() == super::simd::Isa::Avx512
        && window.stride.1 == 1
        // Every padded input row between two windows is read (the task copies them all).
        && window.stride.0 <= (kh.max(1) - 1) * window.dilation.0 + 1
        && ow.is_multiple_of(32)
        && n > 0
        && ow > 0
        && oh > 0
        && cout > 0
        && c * kh * kw > 0
}

/// `y[n] = W · im2col(x[n])`, contiguous `x` `[N, C, H, W]` and `w` `[Cout, C, kh, kw]`.
///
/// # Panics
/// If [`applies`] is false, or a slice is shorter than its shape.
pub(super) fn conv2d(x: &[f32], w: &[f32], dims: [usize; 7], window: &Window2d) -> Vec<f32> {
    assert!(applies(dims, window), "conv_direct::conv2d: the convolution does not qualify");
    let [n, c, h, wd, cout, oh, ow] = dims;
    let (kh, kw) = window.kernel;
    let (k, l) = (c * kh * kw, oh * ow);
    assert!(x.len() >= n * c * h * wd && w.len() >= cout * k, "conv_direct::conv2d: slices shorter than the shapes");
    // The tile's unchecked reads rely on the output size being the window's.
    let ((sh, _), (ph, pw), (dh, dw)) = (window.stride, window.padding, window.dilation);
    let reach = |len: usize, pad: usize, d: usize, k: usize| (len + 2 * pad).checked_sub(d * (k - 1) + 1);
    assert_eq!(
        (reach(h, ph, dh, kh).map(|r| r / sh + 1), reach(wd, pw, dw, kw).map(|r| r + 1)),
        (Some(oh), Some(ow)),
        "conv_direct::conv2d: output size differs from the window's"
    );
    let a = PackedA::new(cout, k, MatRef { data: w, offset: 0, row_stride: k, col_stride: 1 });
    // Tasks are output rows of one image: whole images when there are enough of them, else
    // a few blocks of rows per thread (each pads the input rows its block reads).
    let threads = rayon::current_num_threads();
    let per_image = if n >= 2 * threads { 1 } else { (4 * threads).div_ceil(n).min(oh) };
    let rows = oh.div_ceil(per_image);
    let per_image = oh.div_ceil(rows);
    let macs = n.saturating_mul(cout).saturating_mul(l).saturating_mul(k);
    let split = super::splitting_bar(1 << 18).is_some_and(|bar| macs >= bar);
    super::fill_new(n * cout * l, |out| {
        let y = SendPtr(out.as_mut_ptr().cast::<f32>());
        let task = |t: usize| {
            let (img, oy0) = (t / per_image, t % per_image * rows);
            let image = &x[img * c * h * wd..][..c * h * wd];
            // SAFETY: task t writes output rows oy0.. of image img in every channel, which
            // no other task writes; the image's output lies inside `out`.
            unsafe {
                rows_of_image(
                    image,
                    [c, h, wd, cout, ow],
                    l,
                    window,
                    &a,
                    (oy0, (oy0 + rows).min(oh)),
                    y.get().add(img * cout * l),
                )
            };
        };
        if split {
            super::parallel::for_each_task(n * per_image, task);
        } else {
            (0..n * per_image).for_each(task);
        }
    })
}

/// Output rows `oy0..oy1` of one image into `y` (`[Cout, OH·OW]`, `plane` = OH·OW).
///
/// # Safety
/// [`applies`] held for the convolution; `y` addresses the image's whole output, and no other
/// thread touches these rows meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_of_image(
    image: &[f32],
    [c, h, wd, cout, ow]: [usize; 5],
    plane: usize,
    window: &Window2d,
    a: &PackedA<f32>,
    (oy0, oy1): (usize, usize),
    y: *mut f32,
) {
    let ((kh, kw), (dh, dw), (sh, _), (ph, pw)) = (window.kernel, window.dilation, window.stride, window.padding);
    let (k, wp) = (c * kh * kw, wd + 2 * pw);
    // The padded input rows the block reads, for every channel.
    let slab_h = (oy1 - oy0 - 1) * sh + (kh - 1) * dh + 1;
    let mut slab = super::pool::filled(c * slab_h * wp, 0f32);
    for ci in 0..c {
        for r in 0..slab_h {
            let iy = (oy0 * sh + r).wrapping_sub(ph);
            if iy < h {
                super::gemm::copy_row(
                    &mut slab[(ci * slab_h + r) * wp + pw..][..wd],
                    &image[(ci * h + iy) * wd..][..wd],
                );
            }
        }
    }
    // Where row p = (channel, kernel row, kernel column) of the columns starts, from the
    // first position of a panel.
    let offsets: Vec<usize> = (0..k).map(|p| (p / (kh * kw) * slab_h + p / kw % kh * dh) * wp + p % kw * dw).collect();
    let (kc, mr) = a.blocking();
    // One register tile of weights (in L1) against every panel of the block's rows (their
    // input rows in L2): faster than all row tiles per panel, whose weights then came from L2
    // (docs/PERFORMANCE.md, nineteenth session).
    for pc in (0..k).step_by(kc) {
        let kb = kc.min(k - pc);
        for ir in (0..cout).step_by(mr) {
            for oy in oy0..oy1 {
                let row = slab[(oy - oy0) * sh * wp..].as_ptr();
                for x0 in (0..ow).step_by(32) {
                    // SAFETY: every offset plus 31 stays inside the slab (a panel's last
                    // position plus the kernel's reach is at most the padded row's last
                    // column, the block's last row plus the kernel's reach its last row); the
                    // tile (channels ir.., positions oy·ow + x0 ..+32) lies in this task's rows.
                    unsafe {
                        let (b, c) = (row.add(x0), y.add(ir * plane + oy * ow + x0));
                        tile(mr.min(cout - ir), a.panel_at(ir, pc), mr, &offsets[pc..pc + kb], b, c, plane, pc > 0)
                    };
                }
            }
        }
    }
    super::pool::recycle_vec(slab);
}

/// One tile: `rows` output channels × 32 positions, `C (=|+=) A panel · B`, B's depth step p
/// being the 32 elements at `b + offsets[p]`.
///
/// # Safety
/// AVX-512F is available; `rows ≤ mr ≤ 12`, `a` holds `offsets.len()` steps of `mr`, every
/// `b + offsets[p]` 32 readable elements, `c` `rows` rows of 32, `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    rows: usize,
    a: &[f32],
    mr: usize,
    offsets: &[usize],
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: forwarded.
                $($r => unsafe { tile_rows::<$r>(a, mr, offsets, b, c, ldc, acc) },)*
                _ => unreachable!("register tile of {rows} rows"),
            }
        };
    }
    debug_assert!(rows <= mr && a.len() >= offsets.len() * mr);
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// [`tile`] for `R` rows.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::incompatible_msrv)]
unsafe fn tile_rows<const R: usize>(
    a: &[f32],
    mr: usize,
    offsets: &[usize],
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // As the GEMM's kernel: the packed A panel is fetched this many depth steps ahead.
    const PF_A: usize = 48;
    let mut c0 = [_mm512_setzero_ps(); R];
    let mut c1 = [_mm512_setzero_ps(); R];
    let mut ap = a.as_ptr();
    // SAFETY: the caller vouches for every address read and written; a prefetch past the
    // panel is only a hint.
    unsafe {
        for &off in offsets {
            _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(PF_A * mr).cast());
            let bp = b.add(off);
            let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
            for i in 0..R {
                let av = _mm512_set1_ps(*ap.add(i));
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
            ap = ap.add(mr);
        }
        for i in 0..R {
            let cp = c.add(i * ldc);
            let (mut v0, mut v1) = (c0[i], c1[i]);
            if acc {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(cp));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(cp.add(16)));
            }
            _mm512_storeu_ps(cp, v0);
            _mm512_storeu_ps(cp.add(16), v1);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_rows<const R: usize>(_: &[f32], _: usize, _: &[usize], _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("applies() is false off x86_64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::{
        conv2d_gemm,
        tests::{SHAPES, values},
    };

    /// The same bits as the packed path: unit and vertical stride, padding wider than the
    /// kernel, dilation, several output row widths, depths of one and two blocks, output
    /// channels short of, equal to and past a register tile, one image split into row blocks
    /// and several images.
    #[test]
    fn matches_the_packed_path_bit_for_bit() {
        // The packing tests' shapes (32-wide output rows at unit stride along them), and a
        // depth of two blocks.
        let mut shapes = SHAPES.to_vec();
        shapes.push((130, 3, 32, (3, 3), (1, 1), (1, 1), (1, 1)));
        if super::super::simd::supported() != super::super::simd::Isa::Avx512 {
            eprintln!("no AVX-512 here: the packed path serves every convolution");
            return;
        }
        let mut tested = 0;
        for (s, &(c, h, wd, kernel, stride, padding, dilation)) in shapes.iter().enumerate() {
            let window = Window2d { kernel, stride, padding, dilation };
            let oh = (h + 2 * padding.0 - dilation.0 * (kernel.0 - 1) - 1) / stride.0 + 1;
            let ow = wd + 2 * padding.1 - dilation.1 * (kernel.1 - 1);
            for (n, cout) in [(1, 1), (1, 13), (3, 12), (5, 5), (2, 64)] {
                let dims = [n, c, h, wd, cout, oh, ow];
                if !applies(dims, &window) {
                    // A vertical stride past the kernel's reach (rows no window reads).
                    assert!(stride.0 > (kernel.0 - 1) * dilation.0 + 1, "shape {s} should qualify");
                    continue;
                }
                tested += 1;
                let x = values(n * c * h * wd, 2 * s as u64);
                let w = values(cout * c * kernel.0 * kernel.1, 2 * s as u64 + 1);
                let (got, want) = (conv2d(&x, &w, dims, &window), conv2d_gemm(&x, &w, dims, &window));
                assert_eq!(got.len(), want.len());
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), e.to_bits(), "shape {s}, n {n}, cout {cout}: [{i}] {g} vs {e}");
                }
            }
        }
        assert_eq!(tested, 5 * 5, "five of the six shapes qualify");
    }
}
