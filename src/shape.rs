//! Shapes, layouts (shape + strides + offset) and broadcasting. Views change only the
//! layout; kernels take strides.

use crate::{Error, Result};
use std::fmt;

/// The most dimensions a tensor may have; the CUDA ABI passes layouts by value with this
/// many slots.
pub const MAX_DIMS: usize = 8;

/// The dimensions of a tensor.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// The shape of a scalar (rank 0).
    pub fn scalar() -> Self {
        Shape(vec![])
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// The product of sizes that enter from users (a layer's fan-in, gate count × hidden
    /// size, layers × directions), or an `Err` naming `op` when it overflows. Shapes
    /// themselves go through [`Shape::checked_size`]. A 0 factor makes 0, whatever the others.
    pub fn checked_product(op: &'static str, factors: &[usize]) -> Result<usize> {
        if factors.contains(&0) {
            return Ok(0);
        }
        factors
            .iter()
            .try_fold(1usize, |a, &f| a.checked_mul(f))
            .ok_or_else(|| Error::BadShape { op, msg: format!("the product of sizes {factors:?} overflows") })
    }
    /// Number of elements and bytes of a buffer of this shape and `dtype`, checked: the one
    /// place sizes from users (shapes read from files, configs, other programs) are validated
    /// before anything is allocated. A count or byte size past `isize::MAX` is an `Err` naming
    /// `op`; a 0 anywhere makes 0 elements, whatever the other dimensions.
    pub fn checked_size(&self, op: &'static str, dtype: crate::DType) -> Result<(usize, usize)> {
        if self.0.contains(&0) {
            return Ok((0, 0));
        }
        let too_big = || Error::BadShape {
            op,
            msg: format!("shape {:?} of {dtype:?} has more elements or bytes than memory can address", self.0),
        };
        let n = self.0.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
        let bytes = n.checked_mul(dtype.size_in_bytes()).filter(|&b| b <= isize::MAX as usize).ok_or_else(too_big)?;
        Ok((n, bytes))
    }
    /// Number of elements (1 for a scalar; 0 when any dimension is 0, however large the
    /// others). Every shape an op builds went through [`Shape::checked_size`] or
    /// [`Shape::checked_product`], so the product fits; an unchecked one saturates.
    pub fn elem_count(&self) -> usize {
        if self.0.contains(&0) {
            return 0;
        }
        self.0.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX)
    }
    /// Row-major strides of a contiguous tensor of this shape. The strides of an empty
    /// shape are never followed, so where `(2, usize::MAX, 0)` would overflow they saturate.
    pub fn stride_contiguous(&self) -> Vec<usize> {
        let mut s = vec![0; self.0.len()];
        let mut acc = 1usize;
        for (i, d) in self.0.iter().enumerate().rev() {
            s[i] = acc;
            acc = acc.saturating_mul(*d);
        }
        s
    }
    /// Resolves a possibly negative axis (`-1` = last) against this rank.
    pub fn axis(&self, axis: isize, op: &'static str) -> Result<usize> {
        resolve_axis(axis, self.rank(), op)
    }
    /// The numpy broadcast of two shapes.
    pub fn broadcast(&self, rhs: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (self.dims(), rhs.dims());
        let r = a.len().max(b.len());
        let mut out = vec![0; r];
        for i in 0..r {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            out[i] = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => {
                    return Err(Error::ShapeMismatch { op, lhs: self.clone(), rhs: rhs.clone() });
                }
            };
        }
        // Two addressable shapes can broadcast to one that is not: (2^40, 1) with (1, 2^40).
        Shape::checked_product(op, &out)?;
        Ok(Shape(out))
    }
}

/// The axes of a reduction, as PyTorch's `dim` takes them: one axis (`sum(1)`, `sum(-1)`) or
/// several (`sum([0, 2])`, `sum(&[0, 2])`, a `Vec<isize>`); negative axes count from the end, and an empty
/// list means every axis.
///
/// ```
/// # use tensorforge::{Tensor, Device};
/// let x = Tensor::from_vec(vec![1f64, 2., 3., 4., 5., 6.], (2, 3), Device::Cpu)?;
/// assert_eq!(x.sum(1)?.to_vec1::<f64>()?, vec![6., 15.]);
/// assert_eq!(x.sum(-2)?.to_vec1::<f64>()?, vec![5., 7., 9.]);
/// assert_eq!(x.sum([0, 1])?.to_scalar::<f64>()?, 21.);
/// assert_eq!(x.sum([])?.to_scalar::<f64>()?, 21.);
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub trait Axes {
    /// The axes as a list (possibly negative, unresolved).
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]>;
}

impl Axes for isize {
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
        std::borrow::Cow::Borrowed(std::slice::from_ref(self))
    }
}
macro_rules! int_axes {
    ($($t:ty),*) => {$(
        impl Axes for $t {
            fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
                // An axis past isize::MAX cannot exist; it stays out of range.
                std::borrow::Cow::Owned(vec![isize::try_from(*self).unwrap_or(isize::MAX)])
            }
        }
    )*};
}
int_axes!(i32, i64, usize);
impl Axes for [isize] {
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
        std::borrow::Cow::Borrowed(self)
    }
}
impl<const N: usize> Axes for [isize; N] {
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
        std::borrow::Cow::Borrowed(self)
    }
}
impl Axes for Vec<isize> {
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
        std::borrow::Cow::Borrowed(self)
    }
}
impl<T: Axes + ?Sized> Axes for &T {
    fn as_axes(&self) -> std::borrow::Cow<'_, [isize]> {
        (**self).as_axes()
    }
}

/// Resolves a possibly negative axis against `rank`.
pub fn resolve_axis(axis: isize, rank: usize, op: &'static str) -> Result<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(Error::AxisOutOfRange { op, axis, rank });
    }
    Ok(a as usize)
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<(usize,)> for Shape {
    fn from(d: (usize,)) -> Self {
        Shape(vec![d.0])
    }
}
impl From<(usize, usize)> for Shape {
    fn from(d: (usize, usize)) -> Self {
        Shape(vec![d.0, d.1])
    }
}
impl From<(usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2])
    }
}
impl From<(usize, usize, usize, usize)> for Shape {
    fn from(d: (usize, usize, usize, usize)) -> Self {
        Shape(vec![d.0, d.1, d.2, d.3])
    }
}

/// Where each element of a tensor sits in its storage: element `(i0, i1, …)` is at
/// `offset + Σ ik * strides[k]`. A stride of 0 is a broadcast dimension.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Layout(shape={:?}, strides={:?}, offset={})", self.shape, self.strides, self.offset)
    }
}

impl Layout {
    /// A contiguous row-major layout at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.stride_contiguous();
        Layout { shape, strides, offset: 0 }
    }
    /// A layout from its parts (not checked against any storage).
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len());
        Layout { shape, strides, offset }
    }
    /// The shape of the viewed elements.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The size of each axis.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The step in storage elements along each axis.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// The storage index of the first viewed element.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// The number of axes.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    /// The number of viewed elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    /// True when the elements are row-major and dense (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc = acc.saturating_mul(d);
        }
        true
    }
    /// `Some((start, end))` of the dense storage range when contiguous.
    pub fn contiguous_range(&self) -> Option<(usize, usize)> {
        self.is_contiguous().then(|| (self.offset, self.offset + self.elem_count()))
    }
    /// One past the largest storage index this layout touches (0 for an empty tensor).
    pub fn max_index_plus_one(&self) -> usize {
        if self.elem_count() == 0 {
            return self.offset;
        }
        self.offset + self.dims().iter().zip(&self.strides).map(|(d, s)| (d - 1) * s).sum::<usize>() + 1
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Layout {
        let mut l = self.clone();
        l.shape.0.swap(a, b);
        l.strides.swap(a, b);
        l
    }
    /// Reorders axes: output axis i is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::BadShape { op: "permute", msg: format!("{perm:?} is not a permutation of {r} axes") });
        }
        Ok(Layout {
            shape: Shape(perm.iter().map(|&p| self.dims()[p]).collect()),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }
    /// A view of this layout broadcast to `shape` (numpy rules, stride 0 for new dims).
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Layout> {
        let (src, dst) = (self.dims(), shape.dims());
        if dst.len() < src.len() {
            return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.clone() });
        }
        let lead = dst.len() - src.len();
        let mut strides = vec![0; dst.len()];
        for i in 0..src.len() {
            strides[lead + i] = if src[i] == dst[lead + i] {
                self.strides[i]
            } else if src[i] == 1 {
                0
            } else {
                return Err(Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.clone() });
            };
        }
        Ok(Layout { shape: shape.clone(), strides, offset: self.offset })
    }
    /// Elements `start, start+step, …` (`len` of them) along `axis`.
    pub fn slice(&self, axis: usize, start: usize, len: usize, step: usize) -> Layout {
        let mut l = self.clone();
        if len > 0 {
            l.offset += start * self.strides[axis];
        }
        l.shape.0[axis] = len;
        // With one element the stride is never followed, and a step past the axis (allowed,
        // as in Python) would overflow it.
        if len > 1 {
            l.strides[axis] *= step;
        }
        l
    }
    /// A view with a new shape over the same elements, when the strides allow it without a
    /// copy (`None` otherwise). Merges and splits runs of dims that are dense among themselves.
    pub fn reshape(&self, shape: &Shape) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout { strides: shape.stride_contiguous(), shape: shape.clone(), offset: self.offset });
        }
        // Group the old dims (ignoring size-1 dims) into chunks that are dense among
        // themselves; a new dim may only split or merge within one chunk.
        let old: Vec<(usize, usize)> =
            self.dims().iter().zip(&self.strides).filter(|(d, _)| **d != 1).map(|(&d, &s)| (d, s)).collect();
        let mut new_strides = vec![0; shape.rank()];
        let mut oi = 0;
        let mut ni = 0;
        let new = shape.dims();
        while ni < new.len() {
            if new[ni] == 1 {
                new_strides[ni] = 0;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // Take a chunk of old dims and a run of new dims with the same product.
            let (mut op, mut np) = (old[oi].0, new[ni]);
            let chunk_start = oi;
            let run_start = ni;
            while op != np {
                if op < np {
                    oi += 1;
                    if oi >= old.len() {
                        return None;
                    }
                    op *= old[oi].0;
                } else {
                    ni += 1;
                    while ni < new.len() && new[ni] == 1 {
                        ni += 1;
                    }
                    if ni >= new.len() {
                        return None;
                    }
                    np *= new[ni];
                }
            }
            // The old chunk must be dense among itself.
            for j in chunk_start..oi {
                if old[j].1 != old[j + 1].1 * old[j + 1].0 {
                    return None;
                }
            }
            let mut stride = old[oi].1;
            for k in (run_start..=ni).rev() {
                new_strides[k] = if new[k] == 1 { 0 } else { stride };
                stride *= new[k];
            }
            oi += 1;
            ni += 1;
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout { shape: shape.clone(), strides: new_strides, offset: self.offset })
    }
    /// Removes axis `axis` (which must have size 1).
    pub fn squeeze(&self, axis: usize) -> Layout {
        let mut l = self.clone();
        l.shape.0.remove(axis);
        l.strides.remove(axis);
        l
    }
    /// Inserts a size-1 axis at `axis`.
    pub fn unsqueeze(&self, axis: usize) -> Layout {
        let mut l = self.clone();
        let s = if axis < self.rank() { self.strides[axis] * self.dims()[axis] } else { 1 };
        l.shape.0.insert(axis, 1);
        l.strides.insert(axis, s);
        l
    }

    /// Visits the storage offsets of every element in row-major order, as runs along the
    /// last axis: `f(start, len, stride)`. Kernels' strided paths loop over these runs, so
    /// the per-element cost is a multiply-add, not an index decomposition.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let n = self.elem_count();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            return f(self.offset, n, 1);
        }
        let r = self.rank();
        let (inner, inner_stride) = (self.dims()[r - 1], self.strides[r - 1]);
        let outer = n / inner;
        let dims = &self.dims()[..r - 1];
        let strides = &self.strides[..r - 1];
        let mut idx = vec![0usize; r - 1];
        let mut off = self.offset;
        for _ in 0..outer {
            f(off, inner, inner_stride);
            for k in (0..r - 1).rev() {
                idx[k] += 1;
                off += strides[k];
                if idx[k] < dims[k] {
                    break;
                }
                off -= strides[k] * dims[k];
                idx[k] = 0;
            }
        }
    }

    /// Views of one shape with the fewest axes that walk them in the same order: size-1 axes
    /// dropped, and neighbours merged where every view steps through the pair as through one
    /// axis (outer stride = inner stride × inner size). A bias `[1, C, 1, 1]` broadcast over
    /// `[N, C, H, W]` becomes `[N, C, H·W]` with the image, so its rows are `H·W` long.
    pub fn coalesced<const K: usize>(views: [&Layout; K]) -> [Layout; K] {
        let dims = views[0].dims();
        debug_assert!(views.iter().all(|l| l.dims() == dims));
        let mut merged: Vec<usize> = Vec::with_capacity(dims.len());
        let mut strides: [Vec<usize>; K] = std::array::from_fn(|_| Vec::with_capacity(dims.len()));
        for (ax, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let joins = !merged.is_empty()
                && (0..K).all(|k| strides[k].last() == views[k].strides()[ax].checked_mul(d).as_ref());
            if joins {
                *merged.last_mut().expect("not empty") *= d;
                for k in 0..K {
                    *strides[k].last_mut().expect("not empty") = views[k].strides()[ax];
                }
            } else {
                merged.push(d);
                for k in 0..K {
                    strides[k].push(views[k].strides()[ax]);
                }
            }
        }
        std::array::from_fn(|k| Layout::new(Shape::from(merged.clone()), strides[k].clone(), views[k].offset))
    }

    /// The storage offset of the element at row-major linear position `i`.
    pub fn offset_of(&self, mut i: usize) -> usize {
        let mut off = self.offset;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            off += (i % d) * s;
            i /= d;
        }
        off
    }
}

#[cfg(test)]
mod tests {
    /// Merged axes keep every view's element order; size-1 axes go; nothing merges across a
    /// transposed pair.
    #[test]
    fn coalesced_views_walk_the_same_elements() {
        let image = Layout::contiguous((4, 3, 5, 6));
        let bias = Layout::contiguous((1, 3, 1, 1)).broadcast_as(&Shape::from(vec![4, 3, 5, 6])).expect("broadcast");
        let [a, b] = Layout::coalesced([&image, &bias]);
        assert_eq!(
            (a.dims(), a.strides(), b.strides()),
            (&[4usize, 3, 30][..], &[90usize, 30, 1][..], &[0usize, 1, 0][..])
        );
        let t = Layout::contiguous((2, 1, 3, 4)).permute(&[0, 1, 3, 2]).expect("a permutation");
        let [c] = Layout::coalesced([&t]);
        assert_eq!((c.dims(), c.strides()), (&[2usize, 4, 3][..], &[12usize, 1, 4][..]));
        for (l, m) in [(&image, &a), (&bias, &b), (&t, &c)] {
            let n = l.elem_count();
            assert!((0..n).all(|i| l.offset_of(i) == m.offset_of(i)), "{l:?} vs {m:?}");
        }
        let [s] = Layout::coalesced([&Layout::new(Shape::from(vec![1, 1]), vec![5, 7], 3)]);
        assert_eq!((s.rank(), s.offset_of(0)), (0, 3));
    }

    use super::*;

    fn offsets(l: &Layout) -> Vec<usize> {
        let mut v = vec![];
        l.for_each_run(|s, n, st| v.extend((0..n).map(|i| s + i * st)));
        v
    }

    #[test]
    fn runs_match_offset_of() {
        let l = Layout::contiguous([2, 3, 4]).permute(&[2, 0, 1]).unwrap().slice(1, 1, 1, 1);
        let v = offsets(&l);
        assert_eq!(v, (0..l.elem_count()).map(|i| l.offset_of(i)).collect::<Vec<_>>());
    }

    #[test]
    fn reshape_of_views() {
        let l = Layout::contiguous([4, 6]).transpose(0, 1); // (6,4) strides (1,6)
        assert!(l.reshape(&Shape::from([24])).is_none());
        let r = l.reshape(&Shape::from([2, 3, 4])).unwrap();
        assert_eq!(offsets(&r), offsets(&l));
        let r = l.reshape(&Shape::from([6, 1, 4, 1])).unwrap();
        assert_eq!(offsets(&r), offsets(&l));
        // (4,3) strides (6,2): one uniform run of stride 2, so even a flat view works.
        let s = Layout::contiguous([4, 6]).slice(1, 0, 3, 2);
        let r = s.reshape(&Shape::from([2, 2, 3])).unwrap();
        assert_eq!(offsets(&r), offsets(&s));
        assert_eq!(offsets(&s.reshape(&Shape::from([12])).unwrap()), offsets(&s));
        // (4,2) strides (6,2): rows are not evenly spaced with the columns.
        let s = Layout::contiguous([4, 6]).slice(1, 0, 2, 2);
        assert!(s.reshape(&Shape::from([8])).is_none());
        assert!(s.reshape(&Shape::from([2, 4])).is_none());
        assert_eq!(offsets(&s.reshape(&Shape::from([2, 2, 2])).unwrap()), offsets(&s));
    }

    #[test]
    fn broadcast_rules() {
        let a = Shape::from([3, 1, 5]);
        assert_eq!(a.broadcast(&Shape::from([4, 1]), "t").unwrap(), Shape::from([3, 4, 5]));
        assert_eq!(a.broadcast(&Shape::from([2, 5]), "t").unwrap(), Shape::from([3, 2, 5]));
        assert!(a.broadcast(&Shape::from([2, 4]), "t").is_err());
    }
}
