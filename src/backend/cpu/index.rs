//! Indexing kernels: index_select, gather, and their adjoints scatter_add and index_add.

use super::{CpuStorage, map, pool};
use crate::{Error, Layout, Result, Shape, WithDType};
use half::{bf16, f16};

/// Addition in each element type (f16/bf16 through f32, integers wrapping).
trait AddElem: WithDType {
    fn add(self, o: Self) -> Self;
}
impl AddElem for f32 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}
impl AddElem for f64 {
    fn add(self, o: Self) -> Self {
        self + o
    }
}
impl AddElem for f16 {
    fn add(self, o: Self) -> Self {
        f16::from_f32(self.to_f32() + o.to_f32())
    }
}
impl AddElem for bf16 {
    fn add(self, o: Self) -> Self {
        bf16::from_f32(self.to_f32() + o.to_f32())
    }
}
impl AddElem for i64 {
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
}
impl AddElem for u8 {
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
}

/// The ids as a contiguous vector, each checked to be in `0..size`.
fn checked_ids(ids: &CpuStorage, l: &Layout, size: usize, op: &'static str) -> Result<Vec<usize>> {
    let CpuStorage::I64(v) = ids else {
        return Err(Error::UnsupportedDType { op, dtype: ids.dtype() });
    };
    let ids = map(v, l, |x| x);
    if let Some(&index) = ids.iter().find(|&&i| i < 0 || i as usize >= size) {
        return Err(Error::IndexOutOfRange { op, index, size });
    }
    // Converted in place (same size and alignment): no second buffer, no regrowth.
    Ok(ids.into_iter().map(|i| i as usize).collect())
}

/// `l` with its axis `axis` resized to `len` and given stride 0: `offset_of` on it yields the
/// base offset of a position with the axis index left out.
fn base_layout(l: &Layout, shape: &Shape, axis: usize) -> Layout {
    let mut strides = l.strides().to_vec();
    strides[axis] = 0;
    Layout::new(shape.clone(), strides, l.offset())
}

fn inner_count(shape: &Shape, axis: usize) -> usize {
    shape.dims()[axis + 1..].iter().product()
}

macro_rules! dispatch_same {
    ($a:expr, $b:expr, $op:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (CpuStorage::F32($x), CpuStorage::F32($y)) => CpuStorage::F32($body),
            (CpuStorage::F64($x), CpuStorage::F64($y)) => CpuStorage::F64($body),
            (CpuStorage::F16($x), CpuStorage::F16($y)) => CpuStorage::F16($body),
            (CpuStorage::BF16($x), CpuStorage::BF16($y)) => CpuStorage::BF16($body),
            (CpuStorage::I64($x), CpuStorage::I64($y)) => CpuStorage::I64($body),
            (CpuStorage::U8($x), CpuStorage::U8($y)) => CpuStorage::U8($body),
            (a, b) => return Err(Error::DTypeMismatch { op: $op, lhs: a.dtype(), rhs: b.dtype() }),
        }
    };
}

pub fn index_select(s: &CpuStorage, l: &Layout, ids: &CpuStorage, il: &Layout, axis: usize) -> Result<CpuStorage> {
    let ids = checked_ids(ids, il, l.dims()[axis], "index_select")?;
    let mut dims = l.dims().to_vec();
    dims[axis] = ids.len();
    let shape = Shape::from(dims);
    fn go<T: WithDType>(v: &[T], l: &Layout, ids: &[usize], shape: &Shape, axis: usize) -> Vec<T> {
        let inner = inner_count(shape, axis);
        if axis == 0 && l.is_contiguous() {
            // Row gather (embedding lookup): one slice copy per id.
            let mut out = pool::alloc(shape.elem_count());
            for &i in ids {
                let s = l.offset() + i * inner;
                out.extend_from_slice(&v[s..s + inner]);
            }
            return out;
        }
        // Outer positions × ids × the inner block, each inner block walked by runs.
        let st = l.strides()[axis];
        let outer = Layout::new(Shape::from(l.dims()[..axis].to_vec()), l.strides()[..axis].to_vec(), l.offset());
        let inner_view = Layout::new(Shape::from(l.dims()[axis + 1..].to_vec()), l.strides()[axis + 1..].to_vec(), 0);
        let mut out = pool::alloc(shape.elem_count());
        for o in 0..outer.elem_count() {
            let ob = outer.offset_of(o);
            for &id in ids {
                let at = ob + id * st;
                inner_view.for_each_run(|start, len, stride| {
                    out.extend((0..len).map(|q| v[at + start + q * stride]));
                });
            }
        }
        out
    }
    Ok(super::with_vec!(s, v => T_into(go(v, l, &ids, &shape, axis))))
}

/// Wraps a typed vector back into storage (type inferred from the vector).
#[allow(non_snake_case)]
fn T_into<T: WithDType>(v: Vec<T>) -> CpuStorage {
    T::into_cpu_storage(v)
}

pub fn gather(s: &CpuStorage, l: &Layout, ids: &CpuStorage, il: &Layout, axis: usize) -> Result<CpuStorage> {
    for d in 0..l.rank() {
        if d != axis && il.dims()[d] > l.dims()[d] {
            return Err(Error::ShapeMismatch { op: "gather", lhs: l.shape().clone(), rhs: il.shape().clone() });
        }
    }
    let ids = checked_ids(ids, il, l.dims()[axis], "gather")?;
    let base = base_layout(l, il.shape(), axis);
    let st = l.strides()[axis];
    fn go<T: WithDType>(v: &[T], base: &Layout, st: usize, ids: &[usize]) -> Vec<T> {
        // Positions in row-major runs, so each costs a multiply-add, not an index decomposition.
        let mut out = super::pool::alloc(ids.len());
        let mut p = 0;
        base.for_each_run(|start, len, stride| {
            let at = &ids[p..p + len];
            out.extend(at.iter().enumerate().map(|(k, &i)| v[start + k * stride + i * st]));
            p += len;
        });
        out
    }
    Ok(super::with_vec!(s, v => T_into(go(v, &base, st, &ids))))
}

pub fn scatter_add(
    s: &CpuStorage,
    l: &Layout,
    ids: &CpuStorage,
    il: &Layout,
    src: &CpuStorage,
    sl: &Layout,
    axis: usize,
) -> Result<CpuStorage> {
    if il.dims() != sl.dims() {
        return Err(Error::ShapeMismatch { op: "scatter_add", lhs: il.shape().clone(), rhs: sl.shape().clone() });
    }
    for d in 0..l.rank() {
        if d != axis && il.dims()[d] > l.dims()[d] {
            return Err(Error::ShapeMismatch { op: "scatter_add", lhs: l.shape().clone(), rhs: il.shape().clone() });
        }
    }
    let ids = checked_ids(ids, il, l.dims()[axis], "scatter_add")?;
    let out_l = Layout::contiguous(l.shape().clone());
    let base = base_layout(&out_l, il.shape(), axis);
    let st = out_l.strides()[axis];
    fn go<T: AddElem>(v: &[T], l: &Layout, src: &[T], sl: &Layout, base: &Layout, st: usize, ids: &[usize]) -> Vec<T> {
        let mut out = map(v, l, |x| x);
        let src = super::contiguous(src, sl);
        let mut p = 0;
        base.for_each_run(|start, len, stride| {
            for (k, (&i, &x)) in ids[p..p + len].iter().zip(&src[p..p + len]).enumerate() {
                let o = start + k * stride + i * st;
                out[o] = out[o].add(x);
            }
            p += len;
        });
        out
    }
    Ok(dispatch_same!(s, src, "scatter_add", |v, w| go(v, l, w, sl, &base, st, &ids)))
}

pub fn index_add(
    s: &CpuStorage,
    l: &Layout,
    ids: &CpuStorage,
    il: &Layout,
    src: &CpuStorage,
    sl: &Layout,
    axis: usize,
) -> Result<CpuStorage> {
    let ids = checked_ids(ids, il, l.dims()[axis], "index_add")?;
    let mut expect = l.dims().to_vec();
    expect[axis] = ids.len();
    if sl.dims() != expect.as_slice() {
        return Err(Error::ShapeMismatch { op: "index_add", lhs: Shape::from(expect), rhs: sl.shape().clone() });
    }
    let (d, inner) = (l.dims()[axis], inner_count(sl.shape(), axis));
    // Both sides contiguous: src row (o, i) of `inner` elements adds onto output row (o, ids[i])
    // as one slice (an embedding's backward adds whole rows), in src order, so repeated ids
    // accumulate in a fixed order.
    fn go<T: AddElem>(v: &[T], l: &Layout, src: &[T], sl: &Layout, d: usize, inner: usize, ids: &[usize]) -> Vec<T> {
        let mut out = map(v, l, |x| x);
        let src = super::contiguous(src, sl);
        let n = ids.len();
        // An empty inner size means an empty src: no chunks.
        for (r, row) in src.chunks_exact(inner.max(1)).enumerate() {
            let (o, i) = (r / n, r % n);
            let dst = (o * d + ids[i]) * inner;
            for (a, &b) in out[dst..dst + inner].iter_mut().zip(row) {
                *a = a.add(b);
            }
        }
        out
    }
    Ok(dispatch_same!(s, src, "index_add", |v, w| go(v, l, w, sl, d, inner, &ids)))
}
