//! Batched matrix products over strided views, on top of the packed GEMM in `gemm/`.

use super::float::CpuFloat;
use super::gemm::{
    GemmElem, MatRef, ProductOut, bf16_gemm_available, gemm_bf16, gemm_f16, gemm_uninit, transposed_rounded,
};
use super::{CpuStorage, worth_splitting};
use crate::{Error, Layout, Result, Shape};
use half::{bf16, f16};
use std::mem::MaybeUninit;

/// The batch part of a `[batch…, rows, cols]` layout, and the matrix strides.
fn batch_view(l: &Layout) -> (Layout, usize, usize) {
    let r = l.rank();
    let batch = Layout::new(Shape::from(&l.dims()[..r - 2]), l.strides()[..r - 2].to_vec(), l.offset());
    (batch, l.strides()[r - 2], l.strides()[r - 1])
}

fn batched<T: GemmElem + Default + Send + Sync>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    batched_with(a, la, b, lb, gemm_uninit::<T>)
}

/// One product per batch element through `gemm` (which writes all of its `m × n` output).
fn batched_with<T: Copy + Sync, U: Send + Sync + 'static>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    gemm: impl Fn(usize, usize, usize, MatRef<T>, MatRef<T>, &mut [MaybeUninit<U>], bool) + Sync,
) -> Vec<U> {
    let r = la.rank();
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let (ba, ars, acs) = batch_view(la);
    let (bb, brs, bcs) = batch_view(lb);
    let batches = ba.elem_count();
    if m * n * batches == 0 {
        return Vec::new();
    }
    let one = |(i, c): (usize, &mut [MaybeUninit<U>]), parallel: bool| {
        let ma = MatRef { data: a, offset: ba.offset_of(i), row_stride: ars, col_stride: acs };
        let mb = MatRef { data: b, offset: bb.offset_of(i), row_stride: brs, col_stride: bcs };
        gemm(m, n, k, ma, mb, c, parallel);
    };
    // Enough products to keep every thread busy (or small ones): one thread per product,
    // which avoids splitting thin matrices across threads. Few large products: threads inside
    // the GEMM. Every product writes its whole output.
    let many = batches >= 2 * rayon::current_num_threads();
    super::fill_new(batches * m * n, |out| {
        if batches > 1 && (many || m * n * k < (1 << 21)) && worth_splitting(batches * m * n * k) {
            super::parallel::for_each_chunk(out, m * n, |i, c| one((i, c), false));
        } else {
            out.chunks_mut(m * n).enumerate().for_each(|x| one(x, true));
        }
    })
}

/// f16: the f32 GEMM on operands widened while packed (`gemm/f16.rs`), then one rounding of
/// the f32 products to f16.
fn f16_packed(a: &[f16], la: &Layout, b: &[f16], lb: &Layout) -> Vec<f16> {
    narrow_to_f16(&batched_with(a, la, b, lb, gemm_f16))
}

/// `wide` rounded to f16 (as `f16::from_f32`), in parallel chunks of F16C conversions.
pub(super) fn narrow_to_f16(wide: &[f32]) -> Vec<f16> {
    super::fill_new(wide.len(), |out| {
        // SAFETY: f16 has no invalid bit patterns; every element is written below.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f16>] as *mut [f16]) };
        super::parallel::for_each_chunk(out, 1 << 16, |i, o| {
            super::gemm::narrow_f16(o, &wide[i << 16..(i << 16) + o.len()]);
        });
    })
}

/// bf16 without AVX512_BF16: widen both operands to f32 (contiguous), multiply, narrow.
fn widened<T: CpuFloat<Acc = f32>>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let wa: Vec<f32> = super::map(a, la, |x: T| x.to_acc());
    let wb: Vec<f32> = super::map(b, lb, |x: T| x.to_acc());
    let out = batched(&wa, &Layout::contiguous(la.shape().clone()), &wb, &Layout::contiguous(lb.shape().clone()));
    out.into_iter().map(T::from_acc).collect()
}

/// An element [`bf16_products`] reads: bf16 as it is, f32 rounded to bf16.
pub(crate) trait ToBf16: Copy + Send + Sync + 'static {
    /// The slice itself when it already holds bf16.
    fn as_bf16(v: &[Self]) -> Option<&[bf16]>;
    /// Rounds to bf16 as `bf16::from_f32` does.
    fn to_bf16(self) -> bf16;
    /// A contiguous run rounded to bf16 for the products: denormals may come out as zero,
    /// which `vdpbf16ps` reads them as anyway (see `conv_bf16`'s note on the few that
    /// `from_f32` rounds up to the smallest normal).
    fn rounded(v: &[Self]) -> Vec<bf16> {
        super::map(v, &Layout::contiguous(v.len()), Self::to_bf16)
    }
    /// `v` as `rows × cols` row-major matrices one after another, each transposed and
    /// rounded as [`ToBf16::rounded`] rounds: a weight gradient's `gᵀ`, copied for the kernel.
    fn transposed(v: &[Self], rows: usize, cols: usize) -> Vec<bf16> {
        transposed_by_elements(v, rows, cols)
    }
}

/// [`ToBf16::transposed`] one element at a time, columns of 16 rows at a time so that each
/// line read is used 16 times while it is in L1.
fn transposed_by_elements<T: ToBf16>(v: &[T], rows: usize, cols: usize) -> Vec<bf16> {
    if rows * cols == 0 {
        return Vec::new();
    }
    super::fill_new(v.len(), |out| {
        for (src, dst) in v.chunks(rows * cols).zip(out.chunks_mut(rows * cols)) {
            for i0 in (0..rows).step_by(16) {
                for j in 0..cols {
                    for i in i0..(i0 + 16).min(rows) {
                        dst[j * rows + i].write(src[i * cols + j].to_bf16());
                    }
                }
            }
        }
    })
}
impl ToBf16 for bf16 {
    fn as_bf16(v: &[bf16]) -> Option<&[bf16]> {
        Some(v)
    }
    fn to_bf16(self) -> bf16 {
        self
    }
}
impl ToBf16 for f32 {
    fn as_bf16(_: &[f32]) -> Option<&[bf16]> {
        None
    }
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self)
    }
    fn rounded(v: &[f32]) -> Vec<bf16> {
        // `vcvtneps2bf16`, sixteen at a time: `from_f32` element by element cost more than
        // the product itself for a small network's layers.
        if super::conv_bf16::available() {
            return super::conv_bf16::rounded(v);
        }
        super::map(v, &Layout::contiguous(v.len()), f32::to_bf16)
    }
    fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<bf16> {
        if !super::conv_bf16::available() || rows * cols == 0 {
            return transposed_by_elements(v, rows, cols);
        }
        // Chunks of 16 whole output rows (or whole matrices, where 16 does not divide them),
        // across threads for a large view, as the element map it replaced.
        let span = if cols.is_multiple_of(16) { 16 } else { cols };
        let chunk = rows * span;
        super::fill_new(v.len(), |out| {
            let part = |i: usize, dst: &mut [MaybeUninit<bf16>]| {
                let (b, j0) = (i * chunk / (rows * cols), i * chunk % (rows * cols) / rows);
                transposed_rounded(&v[b * rows * cols..(b + 1) * rows * cols], rows, cols, (j0, j0 + span), dst);
            };
            if worth_splitting(v.len()) {
                super::parallel::for_each_chunk(out, chunk, part);
            } else {
                out.chunks_mut(chunk).enumerate().for_each(|(i, dst)| part(i, dst));
            }
        })
    }
}

/// `v[s..e]` as bf16, borrowed when it already is.
fn bf16_range<T: ToBf16>(v: &[T], (s, e): (usize, usize)) -> std::borrow::Cow<'_, [bf16]> {
    match T::as_bf16(&v[s..e]) {
        Some(x) => std::borrow::Cow::Borrowed(x),
        None => std::borrow::Cow::Owned(T::rounded(&v[s..e])),
    }
}

/// The view `l` of `v` as contiguous bf16, borrowed when it already is.
fn bf16_view<'a, T: ToBf16>(v: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [bf16]> {
    if let Some(range) = l.contiguous_range() {
        return bf16_range(v, range);
    }
    let r = l.rank();
    if r >= 2
        && let Some((s, e)) = transposed_range(l)
    {
        // The storage holds each matrix transposed (`k × m` for an `m × k` view), row-major.
        return std::borrow::Cow::Owned(T::transposed(&v[s..e], l.dims()[r - 1], l.dims()[r - 2]));
    }
    std::borrow::Cow::Owned(super::map(v, l, T::to_bf16))
}

/// bf16 products on a CPU with AVX512_BF16 (`vdpbf16ps`: pairs of bf16 products summed in
/// f32) of bf16 operands, or of f32 ones rounded to bf16 on the way in (autocast's
/// product, [`crate::backend::BackendStorage::matmul_lowered`]); the result in `O` (bf16:
/// rounded once at the end; f32: the sums). Elsewhere bf16 goes through [`widened`].
///
/// The kernel reads A row-major and B row-major or transposed; a single product whose A is
/// a transposed view (a weight gradient `xᵀ·g`) runs as `cᵀ = bᵀ·aᵀ` instead when copying
/// `bᵀ` and transposing the output moves fewer elements than copying A. Other views are
/// copied once.
pub(crate) fn bf16_products<T: ToBf16, O: ProductOut>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<O> {
    let r = la.rank();
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let batches: usize = la.dims()[..r - 2].iter().product();
    if m * n * batches == 0 {
        return Vec::new();
    }
    if batches == 1 {
        let (a_t, b_t) = (transposed_range(la), transposed_range(lb));
        if let Some(ar) = a_t
            && la.contiguous_range().is_none()
            && n * k * usize::from(b_t.is_none()) + m * n < m * k
        {
            // cᵀ (n × m) = bᵀ · aᵀ, where aᵀ is A's storage read row-major.
            let bt = match b_t {
                Some(br) => bf16_range(b, br),
                None => bf16_view(b, &lb.transpose(r - 2, r - 1)),
            };
            let at = bf16_range(a, ar);
            let ct: Vec<O> = super::fill_new(n * m, |c| gemm_bf16(n, m, k, &bt, &at, false, c, true));
            let c = super::map(&ct, &Layout::new(Shape::from((m, n)), vec![1, m], 0), |x| x);
            recycle([bt, at], Some(ct));
            return c;
        }
        let ca = bf16_view(a, la);
        let (cb, b_transposed) = match (lb.contiguous_range(), b_t) {
            (None, Some(br)) => (bf16_range(b, br), true),
            _ => (bf16_view(b, lb), false),
        };
        let c = super::fill_new(m * n, |c| gemm_bf16(m, n, k, &ca, &cb, b_transposed, c, true));
        recycle([ca, cb], None::<Vec<O>>);
        return c;
    }
    // Contiguous bf16 operands are read in place; other views are copied once.
    let (ca, cb) = (bf16_view(a, la), bf16_view(b, lb));
    let one = |i: usize, c: &mut [MaybeUninit<O>], parallel: bool| {
        gemm_bf16(m, n, k, &ca[i * m * k..(i + 1) * m * k], &cb[i * k * n..(i + 1) * k * n], false, c, parallel);
    };
    let c = super::fill_new(batches * m * n, |c| {
        if batches > 1 && batches >= 2 * rayon::current_num_threads() && worth_splitting(batches * m * n * k) {
            super::parallel::for_each_chunk(c, m * n, |i, c| one(i, c, false));
        } else {
            c.chunks_mut(m * n).enumerate().for_each(|(i, c)| one(i, c, true));
        }
    });
    recycle([ca, cb], None::<Vec<O>>);
    c
}

/// Returns [`bf16_products`]' copies of its operands (and a scratch product) to the pool.
fn recycle<O: Send + 'static>(copies: [std::borrow::Cow<'_, [bf16]>; 2], scratch: Option<Vec<O>>) {
    for c in copies {
        if let std::borrow::Cow::Owned(v) = c {
            super::pool::recycle_vec(v);
        }
    }
    if let Some(v) = scratch {
        super::pool::recycle_vec(v);
    }
}

/// Where a matrix view's storage lies when the view is the transpose of a row-major matrix
/// (its last two axes swapped are contiguous).
fn transposed_range(l: &Layout) -> Option<(usize, usize)> {
    let r = l.rank();
    l.transpose(r - 2, r - 1).contiguous_range()
}

pub fn matmul(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(batched(x, la, y, lb)),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(batched(x, la, y, lb)),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => CpuStorage::F16(f16_packed(x, la, y, lb)),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) if bf16_gemm_available() => {
            CpuStorage::BF16(bf16_products(x, la, y, lb))
        }
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => CpuStorage::BF16(widened(x, la, y, lb)),
        (x, y) if x.dtype() != y.dtype() => {
            return Err(Error::DTypeMismatch { op: "matmul", lhs: x.dtype(), rhs: y.dtype() });
        }
        (x, _) => return Err(Error::UnsupportedDType { op: "matmul", dtype: x.dtype() }),
    })
}
