//! `Tensor::i`: PyTorch's `x[1, 2:5, ::2, -1]` as `x.i((1, 2..5, s(.., 2), -1))` — single
//! indices drop their axis, ranges (with an optional step) keep it, axes not named are kept
//! whole. Every result is a view (no copy) and differentiable.

use crate::{Error, Result, Tensor};
use std::ops::{Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

/// One position of an index: a single index (negative counts from the end) or a range with a
/// step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// One element of the axis, which is dropped.
    At(isize),
    /// `start..end` (end `None`: to the axis' end) every `step` elements; the axis is kept.
    Range {
        /// First element.
        start: usize,
        /// One past the last element; `None` for the axis' end.
        end: Option<usize>,
        /// Distance between elements (at least 1).
        step: usize,
    },
}

/// A range with a step, PyTorch's `start:end:step`: `s(2..8, 3)`, `s(.., 2)`.
pub fn s(range: impl Into<Index>, step: usize) -> Index {
    match range.into() {
        Index::Range { start, end, .. } => Index::Range { start, end, step },
        at => at,
    }
}

macro_rules! at {
    ($($t:ty),*) => {$(
        impl From<$t> for Index {
            fn from(i: $t) -> Index {
                Index::At(isize::try_from(i).unwrap_or(isize::MAX))
            }
        }
    )*};
}
at!(i32, i64, isize, usize);

impl From<Range<usize>> for Index {
    fn from(r: Range<usize>) -> Index {
        Index::Range { start: r.start, end: Some(r.end), step: 1 }
    }
}
impl From<RangeFrom<usize>> for Index {
    fn from(r: RangeFrom<usize>) -> Index {
        Index::Range { start: r.start, end: None, step: 1 }
    }
}
impl From<RangeTo<usize>> for Index {
    fn from(r: RangeTo<usize>) -> Index {
        Index::Range { start: 0, end: Some(r.end), step: 1 }
    }
}
impl From<RangeInclusive<usize>> for Index {
    fn from(r: RangeInclusive<usize>) -> Index {
        Index::Range { start: *r.start(), end: Some(r.end().saturating_add(1)), step: 1 }
    }
}
impl From<RangeToInclusive<usize>> for Index {
    fn from(r: RangeToInclusive<usize>) -> Index {
        Index::Range { start: 0, end: Some(r.end.saturating_add(1)), step: 1 }
    }
}
impl From<RangeFull> for Index {
    fn from(_: RangeFull) -> Index {
        Index::Range { start: 0, end: None, step: 1 }
    }
}

/// What [`Tensor::i`] takes: one [`Index`]-like value or a tuple of up to six.
pub trait Indices {
    /// The positions, first axis first.
    fn indices(self) -> Vec<Index>;
}

impl<T: Into<Index>> Indices for T {
    fn indices(self) -> Vec<Index> {
        vec![self.into()]
    }
}

macro_rules! tuple_indices {
    ($($n:ident),+) => {
        impl<$($n: Into<Index>),+> Indices for ($($n,)+) {
            #[allow(non_snake_case)]
            fn indices(self) -> Vec<Index> {
                let ($($n,)+) = self;
                vec![$($n.into()),+]
            }
        }
    };
}
tuple_indices!(A);
tuple_indices!(A, B);
tuple_indices!(A, B, C);
tuple_indices!(A, B, C, D);
tuple_indices!(A, B, C, D, E);
tuple_indices!(A, B, C, D, E, F);

impl Tensor {
    /// Indexes as PyTorch's `x[...]` does with integers and slices (see [`Indices`]): single
    /// indices drop their axis, ranges keep it, trailing axes stay whole. Out-of-range
    /// indices and ranges are an `Err`, as in PyTorch (whose slices would clamp instead, a
    /// silent difference we do not copy).
    ///
    /// ```
    /// use tensorforge::ops::s;
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec((0..24).map(|v| v as f64).collect(), (2, 3, 4), Device::Cpu)?;
    /// assert_eq!(x.i(1)?.dims(), &[3, 4]);                       // x[1]
    /// assert_eq!(x.i((.., 1..3))?.dims(), &[2, 2, 4]);          // x[:, 1:3]
    /// assert_eq!(x.i((0, -1, s(.., 2)))?.to_vec1::<f64>()?, vec![8., 10.]); // x[0, -1, ::2]
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn i(&self, idx: impl Indices) -> Result<Tensor> {
        let idx = idx.indices();
        if idx.len() > self.rank() {
            return Err(Error::BadShape {
                op: "index",
                msg: format!("{} indices for a tensor of shape {:?}", idx.len(), self.shape()),
            });
        }
        let mut out = self.clone();
        let mut axis = 0isize;
        for ix in idx {
            let d = out.dims()[axis as usize];
            match ix {
                Index::At(i) => {
                    let j = if i < 0 { i + d as isize } else { i };
                    if j < 0 || j as usize >= d {
                        return Err(Error::BadShape {
                            op: "index",
                            msg: format!("index {i} is out of range for axis {axis} of size {d}"),
                        });
                    }
                    out = out.narrow(axis, j as usize, 1)?.squeeze(axis)?;
                }
                Index::Range { start, end, step } => {
                    let end = end.unwrap_or(d);
                    if step == 0 || start > end || end > d {
                        return Err(Error::BadShape {
                            op: "index",
                            msg: format!("range {start}..{end} step {step} does not fit axis {axis} of size {d}"),
                        });
                    }
                    if (start, end, step) != (0, d, 1) {
                        out = out.slice(axis, start, end, step)?;
                    }
                    axis += 1;
                }
            }
        }
        Ok(out)
    }
}
