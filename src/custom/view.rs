//! What a custom op's CPU function sees: its inputs as indexable views (shape, strides, data)
//! and its outputs as contiguous buffers, plus the shapes a shape rule or launch rule sees.

use crate::{DType, Error, Result};

/// An input's or output's shape and dtype, as a custom op's shape and launch rules see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec<'a> {
    /// The dimensions.
    pub dims: &'a [usize],
    /// The element type.
    pub dtype: DType,
}

impl Spec<'_> {
    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A read-only strided view of one input: element `[i, j, …]` is
/// `data()[i * strides()[0] + j * strides()[1] + …]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a, T> {
    data: &'a [T],
    dims: &'a [usize],
    strides: &'a [usize],
}

impl<'a, T: Copy> View<'a, T> {
    pub(crate) fn new(data: &'a [T], dims: &'a [usize], strides: &'a [usize]) -> View<'a, T> {
        View { data, dims, strides }
    }
    /// The dimensions.
    pub fn dims(&self) -> &'a [usize] {
        self.dims
    }
    /// The strides, in elements.
    pub fn strides(&self) -> &'a [usize] {
        self.strides
    }
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    /// True when the view holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The storage from the view's first element on (index it with the strides).
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// The elements in row-major order as one slice, when the view is contiguous (always,
    /// for an op whose kernel asks for [`contiguous_inputs`](super::Kernel::contiguous_inputs)).
    pub fn as_slice(&self) -> Option<&'a [T]> {
        let mut expect = 1;
        for (&d, &s) in self.dims.iter().zip(self.strides).rev() {
            if d != 1 && s != expect {
                return None;
            }
            expect *= d;
        }
        Some(&self.data[..self.len()])
    }
    /// The element at `index` (one coordinate per dimension).
    ///
    /// # Panics
    /// When `index` has the wrong length or a coordinate is out of range, as slice indexing does.
    pub fn at(&self, index: &[usize]) -> T {
        assert_eq!(
            index.len(),
            self.dims.len(),
            "index of rank {} into a view of rank {}",
            index.len(),
            self.dims.len()
        );
        let mut off = 0;
        for ((&i, &d), &s) in index.iter().zip(self.dims).zip(self.strides) {
            assert!(i < d, "index {index:?} out of range for dims {:?}", self.dims);
            off += i * s;
        }
        self.data[off]
    }
}

/// One input of a custom op on the CPU: a float tensor (in the op's compute type) or an
/// `i64` tensor of indices.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, T> {
    /// A float input, in the compute type (f16/bf16 inputs arrive widened to f32).
    Float(View<'a, T>),
    /// An `i64` input (indices, lengths).
    Index(View<'a, i64>),
}

impl<'a, T: Copy> Input<'a, T> {
    /// The float view, or an `Err` for an index input.
    pub fn float(&self) -> Result<View<'a, T>> {
        match self {
            Input::Float(v) => Ok(*v),
            Input::Index(_) => Err(Error::msg("custom op: expected a float input, got an i64 one")),
        }
    }
    /// The index view, or an `Err` for a float input.
    pub fn index(&self) -> Result<View<'a, i64>> {
        match self {
            Input::Index(v) => Ok(*v),
            Input::Float(_) => Err(Error::msg("custom op: expected an i64 input, got a float one")),
        }
    }
    /// The dimensions.
    pub fn dims(&self) -> &'a [usize] {
        match self {
            Input::Float(v) => v.dims(),
            Input::Index(v) => v.dims(),
        }
    }
}

/// One output of a custom op on the CPU: a contiguous row-major buffer of its declared shape,
/// zero-filled. The function must write every element it means to return.
#[derive(Debug)]
pub struct Output<'a, T> {
    data: &'a mut [T],
    dims: &'a [usize],
}

impl<'a, T> Output<'a, T> {
    pub(crate) fn new(data: &'a mut [T], dims: &'a [usize]) -> Output<'a, T> {
        Output { data, dims }
    }
    /// The declared dimensions.
    pub fn dims(&self) -> &'a [usize] {
        self.dims
    }
    /// The elements, row-major.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.data
    }
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when the output holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
