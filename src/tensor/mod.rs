//! `Tensor`: Arc-shared storage + a layout + (when it tracks gradients) the node that made it.

mod create;
mod display;
mod rng;

pub use rng::{Generator, manual_seed, rng_state, set_rng_state};

use crate::autograd::Node;
use crate::backend::cpu::CpuStorage;
use crate::storage::Storage;
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A unique id per tensor value (views get their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    /// A leaf created to be trained (or otherwise differentiated): its `grad` accumulates.
    variable: bool,
    /// True when made by a recorded op (stays true after backward frees the node).
    recorded: bool,
    node: Mutex<Option<Node>>,
    grad: Mutex<Option<Tensor>>,
}

/// An n-dimensional array on a device, with an optional gradient — pytensor's Variable.
///
/// Cloning is cheap (an `Arc`); views (reshape, transpose, narrow, broadcast…) share the
/// storage and change only the layout.
///
/// ```
/// use tensorforge::{Tensor, Device};
/// let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), Device::Cpu)?;
/// let b = a.matmul(&a.t()?)?;
/// assert_eq!(b.to_vec2::<f32>()?, vec![vec![5., 11.], vec![11., 25.]]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl Drop for Inner {
    fn drop(&mut self) {
        // The last tensor viewing a host buffer hands it to the buffer cache, so the next
        // tensor of that size skips the system allocator's fresh (page-faulting) mapping.
        if let Some(shared) = Arc::get_mut(&mut self.storage) {
            let storage = shared.get_mut().unwrap_or_else(|e| e.into_inner());
            #[allow(irrefutable_let_patterns)] // without the `cuda` feature there is one variant
            if let Storage::Cpu(cpu) = storage {
                crate::backend::cpu::pool::recycle(std::mem::replace(cpu, CpuStorage::U8(Vec::new())));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data intact; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tensor {
    /// Wraps a storage and a layout into a tensor that tracks no gradient.
    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        Tensor::from_shared(Arc::new(RwLock::new(storage)), layout)
    }

    fn from_shared(storage: Arc<RwLock<Storage>>, layout: Layout) -> Tensor {
        let (dtype, device) = {
            let s = storage.read().unwrap_or_else(|e| e.into_inner());
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(Inner {
            id: TensorId::new(),
            storage,
            layout,
            dtype,
            device,
            variable: false,
            recorded: false,
            node: Mutex::new(None),
            grad: Mutex::new(None),
        }))
    }

    /// A contiguous tensor over a fresh storage.
    pub(crate) fn from_contiguous(storage: Storage, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_storage(storage, Layout::contiguous(shape))
    }

    /// An empty f32 tensor on the CPU: the node that joins a multi-output op's outputs.
    pub(crate) fn hub() -> Tensor {
        Tensor::from_contiguous(Storage::Cpu(crate::backend::cpu::CpuStorage::F32(Vec::new())), 0)
    }

    /// A view of the same storage with another layout (no gradient tracking).
    pub(crate) fn view_as(&self, layout: Layout) -> Tensor {
        Tensor::from_shared(self.0.storage.clone(), layout)
    }

    pub(crate) fn with_node(self, node: Node) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            variable: false,
            recorded: true,
            node: Mutex::new(Some(node)),
            grad: Mutex::new(None),
        }))
    }

    pub(crate) fn take_node(&self) -> Option<Node> {
        lock(&self.0.node).take()
    }

    pub(crate) fn with_node_ref<R>(&self, f: impl FnOnce(Option<&Node>) -> R) -> R {
        f(lock(&self.0.node).as_ref())
    }

    /// The tensor's id.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// The layout (shape, strides, offset) of this view.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// The device holding the storage.
    pub fn device(&self) -> Device {
        self.0.device
    }
    /// True when the elements are dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.dims()[self.shape().axis(axis, "dim")?])
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    /// The write guard, taken without ever *waiting* on the lock: std's `RwLock` blocks new
    /// readers while a writer waits, so a thread already reading this buffer (an op whose
    /// two inputs share it, `p.mul(&p)`) would block on its second read behind a writer that
    /// waits for its first: a deadlock between a thread computing with a parameter and one
    /// stepping it. Polling leaves readers unblocked; a writer holds the lock only briefly.
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        loop {
            match self.0.storage.try_write() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
    }
    /// Writes `src`'s values (converted to this tensor's dtype and device; same shape) into
    /// this tensor's elements in place, outside autograd: restoring parameters, updating
    /// running statistics. A source sharing this buffer is copied first, since holding its
    /// read lock while this one's write lock is requested would deadlock.
    pub(crate) fn write_from(&self, src: &Tensor) -> Result<()> {
        let src = crate::no_grad(|| src.to_dtype(self.dtype())?.to_device(self.device()))?;
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "write", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        let src = if src.same_storage(self) {
            if src.layout() == self.layout() {
                return Ok(());
            }
            crate::no_grad(|| src.copy())?
        } else {
            src
        };
        src.storage().copy_strided(src.layout(), &mut self.storage_mut(), self.layout())
    }
    /// True when both tensors view the same storage buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- gradients -------------------------------------------------------------------

    /// This tensor as a trainable leaf: its gradient accumulates in [`Tensor::grad`].
    /// The result shares the storage.
    pub fn requires_grad(self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::new(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            variable: true,
            recorded: false,
            node: Mutex::new(None),
            grad: Mutex::new(None),
        }))
    }
    /// True for a leaf made with [`Tensor::requires_grad`].
    pub fn is_variable(&self) -> bool {
        self.0.variable
    }
    /// True when gradients flow through this tensor (a variable, or computed from one).
    pub fn tracks_grad(&self) -> bool {
        self.0.variable || self.0.recorded
    }
    /// The same values, cut from the graph.
    pub fn detach(&self) -> Tensor {
        self.view_as(self.layout().clone())
    }
    /// The accumulated gradient of a variable (`None` before any backward).
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.0.grad).clone()
    }
    /// Clears the accumulated gradient: PyTorch's `zero_grad(set_to_none=True)`, its default.
    /// For `set_to_none=False`, `t.set_grad(Some(t.zeros_like()?))`.
    pub fn zero_grad(&self) {
        *lock(&self.0.grad) = None;
    }
    /// Replaces a variable's gradient (`None` clears it): to clip, scale or inject gradients
    /// between `backward` and an optimizer step. `g` must have the variable's shape; it is
    /// converted to the variable's dtype and device and copied (later changes to `g` do not
    /// reach the gradient).
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let w = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu)?.requires_grad();
    /// w.sqr()?.sum_all()?.backward()?;
    /// let g = w.grad().unwrap();
    /// w.set_grad(Some((&g * 0.5)?))?; // scale
    /// assert_eq!(w.grad().unwrap().to_vec1::<f32>()?, vec![1., 2.]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        let Some(g) = g else {
            self.zero_grad();
            return Ok(());
        };
        if !self.is_variable() {
            return Err(Error::Autograd("set_grad: only a variable (made with requires_grad) keeps a gradient".into()));
        }
        if g.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "set_grad", lhs: self.shape().clone(), rhs: g.shape().clone() });
        }
        let g = crate::no_grad(|| g.to_dtype(self.dtype())?.to_device(self.device())?.copy())?.detach();
        *lock(&self.0.grad) = Some(g);
        Ok(())
    }
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = lock(&self.0.grad);
        let new = match slot.take() {
            Some(prev) => prev.add(&g)?,
            None => g.contiguous()?,
        };
        *slot = Some(new);
        Ok(())
    }
    /// Back-propagates from this single-element tensor into every variable it depends on.
    pub fn backward(&self) -> Result<()> {
        crate::autograd::backward(self)
    }
    /// [`Tensor::backward`], calling `ready(v)` for each variable `v` the moment its gradient
    /// for this pass is complete (every op that used it has run its backward), while the pass
    /// goes on with the rest of the graph: the hook data-parallel training uses to start
    /// averaging a bucket of gradients before backward ends. An `Err` from `ready` stops the
    /// pass and is returned.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let w = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu)?.requires_grad();
    /// let mut done = Vec::new();
    /// w.sqr()?.sum_all()?.backward_with_hook(&mut |v| {
    ///     done.push((v.id(), v.grad().unwrap().to_vec1::<f32>()?));
    ///     Ok(())
    /// })?;
    /// assert_eq!(done, vec![(w.id(), vec![2., 4.])]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn backward_with_hook(&self, ready: &mut dyn FnMut(&Tensor) -> Result<()>) -> Result<()> {
        crate::autograd::backward_hooked(self, ready)
    }

    // ---- data out --------------------------------------------------------------------

    /// The viewed elements in row-major order, copied to the host, as a CPU storage.
    pub(crate) fn to_cpu_storage(&self) -> Result<CpuStorage> {
        let c = self.contiguous()?;
        let host = c.storage().to_cpu()?;
        let (a, b) = c.layout().contiguous_range().expect("contiguous");
        Ok(if a == 0 && b == crate::backend::BackendStorage::len(&host) { host } else { host.slice(a, b) })
    }

    /// All elements in row-major order. `T` must be the tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype(), rhs: T::DTYPE });
        }
        let s = self.to_cpu_storage()?;
        let src = T::cpu_slice(&s).expect("dtype checked");
        let mut v = crate::backend::cpu::pool::try_with_capacity("to_vec", src.len())?;
        v.extend_from_slice(src);
        Ok(v)
    }
    /// The elements of a rank-1 tensor.
    pub fn to_vec1<T: WithDType>(&self) -> Result<Vec<T>> {
        if self.rank() != 1 {
            return Err(Error::BadShape { op: "to_vec1", msg: format!("needs rank 1, got {:?}", self.shape()) });
        }
        self.to_vec()
    }
    /// The rows of a rank-2 tensor.
    pub fn to_vec2<T: WithDType>(&self) -> Result<Vec<Vec<T>>> {
        if self.rank() != 2 {
            return Err(Error::BadShape { op: "to_vec2", msg: format!("needs rank 2, got {:?}", self.shape()) });
        }
        let v = self.to_vec::<T>()?;
        let c = self.dims()[1];
        Ok((0..self.dims()[0]).map(|r| v[r * c..(r + 1) * c].to_vec()).collect())
    }
    /// The single element of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "to_scalar",
                msg: format!("needs one element, got shape {:?}", self.shape()),
            });
        }
        Ok(self.to_vec::<T>()?[0])
    }
    /// All elements converted to f64, in row-major order (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        self.to_dtype(DType::F64)?.to_vec::<f64>()
    }
    /// The single element converted to f64 (any dtype).
    pub fn item(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "item",
                msg: format!("needs one element, got shape {:?}", self.shape()),
            });
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// The tensor on `device` (a copy unless it is already there). Explicit by design.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        crate::autograd::apply(crate::ops::ToDevice { device }, &[self])
    }
}
