//! Creating tensors.

use super::{Tensor, rng};
use crate::storage::{Distribution, Storage};
use crate::{DType, Device, Error, Result, Shape, WithDType};

impl Tensor {
    /// A tensor from a vector of values and a shape (row-major).
    ///
    /// ```
    /// use tensorforge::{Tensor, Device};
    /// let t = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], (2, 3), Device::Cpu)?;
    /// assert_eq!(t.dims(), &[2, 3]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_size("from_vec", T::DTYPE)?.0 != data.len() {
            return Err(Error::BadShape {
                op: "from_vec",
                msg: format!("{} values for shape {:?} ({} elements)", data.len(), shape, shape.elem_count()),
            });
        }
        let s = Storage::from_cpu(T::into_cpu_storage(data), device)?;
        Ok(Tensor::from_contiguous(s, shape))
    }
    /// A tensor from a slice (copied) and a shape.
    pub fn from_slice<T: WithDType>(data: &[T], shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }
    /// A rank-0 tensor holding `v`.
    pub fn scalar<T: WithDType>(v: T, device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![v], (), device)
    }
    /// A tensor of `shape` filled with `value` (converted to `dtype`).
    ///
    /// A value the dtype cannot hold is an `Err`, as in PyTorch: out of range for an integer
    /// dtype (or NaN/infinite), or finite but past the largest finite value of a float dtype
    /// (infinities and NaN are kept). Fractions toward an integer dtype truncate.
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let range = dtype.finite_range();
        let fits = if dtype.is_float() {
            !value.is_finite() || (range.0..=range.1).contains(&value)
        } else {
            value.is_finite() && (range.0..=range.1).contains(&value.trunc())
        };
        if !fits {
            return Err(Error::msg(format!("full: {value} cannot be converted to {dtype:?} without overflow")));
        }
        let shape = shape.into();
        Ok(Tensor::from_contiguous(Storage::full(&shape, dtype, value, device)?, shape))
    }
    /// Zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }
    /// Ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }
    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }
    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }
    /// `0, 1, …, end − 1` as i64: PyTorch's `arange(end)`.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// assert_eq!(Tensor::arange_end(4, Device::Cpu)?.to_vec1::<i64>()?, vec![0, 1, 2, 3]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn arange_end(end: usize, device: Device) -> Result<Tensor> {
        let (_, bytes) = Shape::from(end).checked_size("arange", DType::I64)?;
        crate::backend::cpu::pool::ensure_fits("arange", bytes)?;
        Tensor::from_vec((0..end as i64).collect::<Vec<i64>>(), end, device)
    }
    /// `start, start+step, …` below `end` (numpy's arange).
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::msg(format!("arange: bad range {start}..{end} step {step}")));
        }
        let count = ((end - start) / step).ceil().max(0.0);
        if count > (isize::MAX as usize / 8) as f64 {
            return Err(Error::BadShape {
                op: "arange",
                msg: format!("{count} elements ({start}..{end} step {step})"),
            });
        }
        let n = count as usize;
        crate::backend::cpu::pool::ensure_fits("arange", n * 8)?;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_vec(v, n, Device::Cpu)?.to_dtype(dtype)?.to_device(device)
    }
    /// The `n×n` identity.
    pub fn eye(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        Shape::from((n, n)).checked_size("eye", dtype)?;
        // Built on the device by comparing row and column indices: no n² host buffer, and
        // every allocation on the way is fallible.
        let i = Tensor::arange_end(n, device)?;
        i.unsqueeze(1)?.compare(&i.unsqueeze(0)?, crate::backend::CmpOp::Eq)?.to_dtype(dtype)
    }
    /// Uniform values in `[lo, hi)` from the global seeded stream ([`crate::manual_seed`]).
    pub fn rand(lo: f64, hi: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::rand_with(&rng::Generator::global(), lo, hi, shape, dtype, device)
    }
    /// Normal values from the global seeded stream.
    pub fn randn(mean: f64, std: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::randn_with(&rng::Generator::global(), mean, std, shape, dtype, device)
    }
    /// Uniform values in `[lo, hi)` drawn from `generator` (see [`crate::Generator`]).
    pub fn rand_with(
        generator: &rng::Generator,
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let (n, _) = shape.checked_size("rand", dtype)?;
        let (seed, offset) = generator.reserve(n.div_ceil(4) as u64);
        Tensor::rand_seeded(seed, offset, lo, hi, shape, dtype, device)
    }
    /// Normal values drawn from `generator` (see [`crate::Generator`]).
    pub fn randn_with(
        generator: &rng::Generator,
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let (n, _) = shape.checked_size("randn", dtype)?;
        let (seed, offset) = generator.reserve(n.div_ceil(2) as u64);
        let s = Storage::random(&shape, dtype, device, seed, offset, Distribution::Normal { mean, std })?;
        Ok(Tensor::from_contiguous(s, shape))
    }
    /// Uniform values from an explicit Philox stream `(seed, offset)`: the same bits on
    /// every backend.
    pub fn rand_seeded(
        seed: u64,
        offset: u64,
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let s = Storage::random(&shape, dtype, device, seed, offset, Distribution::Uniform { lo, hi })?;
        Ok(Tensor::from_contiguous(s, shape))
    }
}
