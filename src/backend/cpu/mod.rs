//! The CPU backend: SIMD (run-time detected) kernels, one file per family, split across the
//! rayon pool's threads by `parallel`.

mod cascade;
mod conv;
mod conv_bf16;
mod conv_direct;
mod conv_grad;
pub(crate) mod ctc;
mod elementwise;
pub mod float;
pub mod gemm;
mod index;
mod matmul;
mod optim;
pub(crate) mod parallel;
pub mod pool;
pub mod random;
mod reduce;
mod rnn;
pub mod simd;

use crate::backend::{
    BackendDevice, BackendStorage, BinaryOp, CmpOp, OptimRule, ReduceOp, ScalarOp, UnaryOp, Window2d,
};
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};
use half::{bf16, f16};
use std::mem::MaybeUninit;

/// Host memory of one dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// IEEE half-precision floats.
    F16(Vec<f16>),
    /// bfloat16 floats.
    BF16(Vec<bf16>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// Bytes (also the dtype of boolean masks).
    U8(Vec<u8>),
}

/// Runs `$body` with `$v` bound to the typed vector of any variant.
macro_rules! with_vec {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::backend::cpu::CpuStorage::F32($v) => $body,
            $crate::backend::cpu::CpuStorage::F64($v) => $body,
            $crate::backend::cpu::CpuStorage::F16($v) => $body,
            $crate::backend::cpu::CpuStorage::BF16($v) => $body,
            $crate::backend::cpu::CpuStorage::I64($v) => $body,
            $crate::backend::cpu::CpuStorage::U8($v) => $body,
        }
    };
}
pub(crate) use with_vec;

/// Runs `$body` with `$v` bound to the typed vector of a float variant, or returns
/// `UnsupportedDType` for `$op`.
macro_rules! with_float_vec {
    ($s:expr, $op:expr, $v:ident => $body:expr) => {
        match $s {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            other => {
                return Err(crate::Error::UnsupportedDType { op: $op, dtype: other.dtype() });
            }
        }
    };
}
pub(crate) use with_float_vec;

impl CpuStorage {
    /// A copy through the buffer cache; an allocation failure unwinds to [`guard`] instead of
    /// aborting as `clone` would.
    pub(crate) fn try_clone(&self) -> CpuStorage {
        fn copy<T: Copy + Send + 'static>(v: &[T]) -> Vec<T> {
            let mut out = pool::alloc(v.len());
            out.extend_from_slice(v);
            out
        }
        match self {
            CpuStorage::F32(v) => CpuStorage::F32(copy(v)),
            CpuStorage::F64(v) => CpuStorage::F64(copy(v)),
            CpuStorage::F16(v) => CpuStorage::F16(copy(v)),
            CpuStorage::BF16(v) => CpuStorage::BF16(copy(v)),
            CpuStorage::I64(v) => CpuStorage::I64(copy(v)),
            CpuStorage::U8(v) => CpuStorage::U8(copy(v)),
        }
    }

    /// The dtype of the buffer.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }
    /// Borrows the buffer as `&[T]`, or a dtype error.
    pub fn as_slice<T: WithDType>(&self) -> Result<&[T]> {
        T::cpu_slice(self).ok_or(Error::DTypeMismatch { op: "as_slice", lhs: self.dtype(), rhs: T::DTYPE })
    }
    /// Elements `a..b` in a new buffer.
    pub fn slice(&self, a: usize, b: usize) -> CpuStorage {
        with_vec!(self, v => WithDType::into_cpu_storage(v[a..b].to_vec()))
    }
    /// A buffer of `n` copies of `v` converted to `dtype`.
    pub fn full(n: usize, dtype: DType, v: f64) -> CpuStorage {
        fn fill<T: WithDType>(n: usize, v: f64) -> CpuStorage {
            T::into_cpu_storage(pool::filled(n, T::from_f64(v)))
        }
        match dtype {
            DType::F32 => fill::<f32>(n, v),
            DType::F64 => fill::<f64>(n, v),
            DType::F16 => fill::<f16>(n, v),
            DType::BF16 => fill::<bf16>(n, v),
            DType::I64 => fill::<i64>(n, v),
            DType::U8 => fill::<u8>(n, v),
        }
    }
}

/// Below this many elements a kernel called on a thread of the rayon pool runs on that
/// thread: fork/join costs more than the work.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;
/// From a thread outside the pool (a program's main thread) a split may also have to wake a
/// sleeping worker, so the bar is this many times higher there (measured: a factor of 1 made
/// no row faster and the MLP step 1 % slower).
pub(crate) const OUTSIDE_POOL_FACTOR: usize = 4;

/// The amount of work from which splitting across the rayon pool pays, given `on_pool`, the
/// bar for a caller on one of the pool's threads: [`OUTSIDE_POOL_FACTOR`] times that for a
/// caller outside the pool, and `None` (never) with a pool of one thread, where handing the
/// work over costs a wake-up and gains nothing, and inside a task of
/// [`parallel::run_alone`], whose siblings hold the other threads.
pub(crate) fn splitting_bar(on_pool: usize) -> Option<usize> {
    if rayon::current_num_threads() < 2 || parallel::alone() {
        None
    } else if rayon::current_thread_index().is_some() {
        Some(on_pool)
    } else {
        Some(on_pool.saturating_mul(OUTSIDE_POOL_FACTOR))
    }
}

/// Whether a kernel over `work` elements splits across the rayon pool (see [`splitting_bar`]).
pub(crate) fn worth_splitting(work: usize) -> bool {
    splitting_bar(PAR_THRESHOLD).is_some_and(|bar| work >= bar)
}

/// `dst` as segments of `len` elements (`BYTES` bytes each), segment `s` copied from
/// `src[s·step..]`.
#[inline(always)]
pub(crate) fn copy_segments<T: Copy, const BYTES: usize>(dst: &mut [T], src: &[T], len: usize, step: usize) {
    debug_assert_eq!(len * size_of::<T>(), BYTES);
    for (s, seg) in dst.chunks_exact_mut(len).enumerate() {
        let from = &src[s * step..s * step + len];
        // SAFETY: both ranges hold `len` elements, `BYTES` bytes; unaligned reads and writes of
        // plain data.
        unsafe {
            let v = from.as_ptr().cast::<[u8; BYTES]>().read_unaligned();
            seg.as_mut_ptr().cast::<[u8; BYTES]>().write_unaligned(v);
        }
    }
}

/// Runs `f` on a thread of the rayon pool (the caller waits), unless it already is on one or
/// the pool has one thread. A loop of many small kernels called from there splits them at
/// the lower bar for callers inside the pool (a quarter of the outside one): the other
/// threads are awake and near, not asleep.
/// Thread-local settings (`no_grad`, autocast) do not travel: `f` sets what it needs.
///
/// A training loop of its own can run each whole step (forward, backward, optimizer) through
/// it, as [`crate::train::Trainer`] does on the CPU: every parallel kernel of the step then
/// forks from inside the pool instead of handing work over from the program's thread.
///
/// ```
/// use tensorforge::{DType, Device, Tensor};
/// let x = Tensor::ones((64, 64), DType::F32, Device::Cpu)?;
/// let s = tensorforge::backend::cpu::on_pool(|| x.matmul(&x)?.sum_all())?;
/// assert_eq!(s.item()?, 64.0 * 64.0 * 64.0);
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return f();
    }
    // The other workers stay awake until `f` returns, running the helpers of its parallel
    // kernels as they come: a worker that fell asleep between two kernels would be woken by
    // a futex call (tens of microseconds here), and the kernel would run on one thread
    // meanwhile. They poll from the top of their stacks, so no join waits behind them.
    let keep_awake = !parallel::spin_budget().is_zero();
    let done = std::sync::atomic::AtomicBool::new(false);
    rayon::scope(|s| {
        if keep_awake {
            // A keeper that `f`'s own thread picks up (while it waits inside `f`) returns at
            // once: it would otherwise poll above the frame that is to set `done`.
            let (owner, done) = (rayon::current_thread_index(), &done);
            for _ in 1..rayon::current_num_threads() {
                s.spawn(move |_| {
                    if rayon::current_thread_index() != owner {
                        parallel::poll_until(done);
                    }
                });
            }
        }
        // Set also when `f` unwinds: the keepers would otherwise poll forever, and the scope,
        // which waits for them before it passes the panic on, would never return.
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let _done = Done(&done);
        f()
    })
}

/// Runs CPU work that allocates, turning an allocation failure inside it (which unwinds
/// with [`pool::AllocFailed`], from any rayon task) into [`Error::OutOfMemory`] for `op`.
/// Other panics pass through unchanged. The happy path costs nothing: unwinding is
/// zero-cost until something unwinds.
pub(crate) fn guard<R>(op: &'static str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<pool::AllocFailed>() {
            Ok(failed) => Err(Error::OutOfMemory { op, device: Device::Cpu, bytes: failed.bytes }),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// The elements of a view in row-major order: borrowed when the view already is, copied
/// otherwise.
pub(crate) fn contiguous<'a, T: Copy + Send + Sync + 'static>(v: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_range() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&v[a..b]),
        None => std::borrow::Cow::Owned(map(v, l, |x| x)),
    }
}

/// Allocates an output buffer and fills it through `fill`, which must write every slot.
/// Skips zero-initialization: one pass over memory instead of two.
pub(crate) fn fill_new<U: Send + 'static>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<U>])) -> Vec<U> {
    let mut out: Vec<U> = pool::alloc(n);
    fill(&mut out.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes all `n` slots (the map/zip loops cover the whole
    // output range), so the first `n` elements are initialized.
    unsafe { out.set_len(n) };
    out
}

/// The concatenation along `axis` of views of the same dtype whose other dims agree (checked
/// by the caller): for each index of the leading axes, each part's block in turn, so every
/// output element is written once (no fill first).
pub(crate) fn concat(parts: &[(&CpuStorage, &Layout)], axis: usize) -> Result<CpuStorage> {
    let Some(&(first, fl)) = parts.first() else {
        return Err(Error::BadShape { op: "cat", msg: "no tensors to concatenate".into() });
    };
    let outer: usize = fl.dims()[..axis].iter().product();
    fn go<T: WithDType>(parts: &[(&[T], &Layout)], axis: usize, outer: usize) -> Vec<T> {
        let dense: Vec<std::borrow::Cow<'_, [T]>> = parts.iter().map(|&(v, l)| contiguous(v, l)).collect();
        let blocks: Vec<usize> = parts.iter().map(|(_, l)| l.dims()[axis..].iter().product()).collect();
        let row = blocks.iter().sum::<usize>();
        // Where each part's block starts in a row of the output.
        let starts: Vec<usize> = blocks.iter().scan(0, |at, &b| Some(std::mem::replace(at, *at + b))).collect();
        let total = row * outer;
        fill_new(total, |out| {
            let base = parallel::SendPtr(out.as_mut_ptr());
            // Segment t: part t % parts of row t / parts. A large concatenation splits across
            // the pool by segments (the pieces of an LSTM's per-step outputs, rows of a cat
            // along an inner axis), each copied by whichever thread takes it.
            let segment = |t: usize| {
                let (o, j) = (t / dense.len(), t % dense.len());
                let b = blocks[j];
                // SAFETY: segment (o, j) covers output elements o·row + starts[j] .. + b, inside
                // the `total` of `out` and disjoint from every other segment's.
                unsafe {
                    let dst = base.get().add(o * row + starts[j]).cast::<T>();
                    std::ptr::copy_nonoverlapping(dense[j][o * b..(o + 1) * b].as_ptr(), dst, b);
                }
            };
            let segments = outer * dense.len();
            if worth_splitting(total) {
                parallel::for_each_task(segments, segment);
            } else {
                (0..segments).for_each(segment);
            }
        })
    }
    macro_rules! typed {
        ($($v:ident),*) => {
            match first {
                $(CpuStorage::$v(_) => {
                    let typed = parts
                        .iter()
                        .map(|&(s, l)| match s {
                            CpuStorage::$v(v) => Ok((v.as_slice(), l)),
                            other => Err(Error::DTypeMismatch { op: "cat", lhs: first.dtype(), rhs: other.dtype() }),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    CpuStorage::$v(go(&typed, axis, outer))
                })*
            }
        };
    }
    Ok(typed!(F32, F64, F16, BF16, I64, U8))
}

/// `f` applied to every element viewed by `l`, in row-major order.
pub(crate) fn map<T, U, F>(src: &[T], l: &Layout, f: F) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Send + Sync + 'static,
    F: Fn(T) -> U + Sync + Send,
{
    let n = l.elem_count();
    fill_new(n, |out| {
        if let Some((a, b)) = l.contiguous_range() {
            let src = &src[a..b];
            let stream = n * size_of::<U>() >= simd::stream_min_bytes();
            let part = |s: &[T], o: &mut [MaybeUninit<U>]| {
                if stream {
                    simd::map_streamed(s, o, &f);
                } else {
                    simd::map_slice(s, o, &f);
                }
            };
            if worth_splitting(n) {
                let c = PAR_THRESHOLD / 4;
                parallel::for_each_chunk(out, c, |i, o| part(&src[i * c..][..o.len()], o));
            } else {
                part(src, out);
            }
            return;
        }
        let [l] = Layout::coalesced([l]);
        let inner = l.dims().last().copied().unwrap_or(1).max(1);
        let inner_stride = l.strides().last().copied().unwrap_or(0);
        if l.rank() >= 2 && inner_stride > 1 && l.dims()[l.rank() - 2] > 1 {
            return transposed_map(src, &l, out, &f);
        }
        by_row_pieces(out, inner, |row, j, o| {
            let p = l.offset_of(row * inner) + j * inner_stride;
            if inner_stride == 1 {
                simd::map_slice(&src[p..p + o.len()], o, &f);
            } else {
                for (j, d) in o.iter_mut().enumerate() {
                    d.write(f(src[p + j * inner_stride]));
                }
            }
        });
    })
}

/// [`map`] for a view whose last axis is strided (a transpose, typically): the last two axes
/// are walked in 32 × 32 tiles, so reads and writes both stay within a few cache lines
/// instead of every read landing on a new one.
fn transposed_map<T, U, F>(src: &[T], l: &Layout, out: &mut [MaybeUninit<U>], f: &F)
where
    T: Copy + Send + Sync,
    U: Send + Sync,
    F: Fn(T) -> U + Sync + Send,
{
    const TILE: usize = 32;
    let r = l.rank();
    let (rows, cols) = (l.dims()[r - 2], l.dims()[r - 1]);
    let (row_stride, col_stride) = (l.strides()[r - 2], l.strides()[r - 1]);
    if rows * cols == 0 {
        return;
    }
    for (m, plane) in out.chunks_mut(rows * cols).enumerate() {
        let base = l.offset_of(m * rows * cols);
        let band = |(b, o): (usize, &mut [MaybeUninit<U>])| {
            let i0 = b * TILE;
            let h = o.len() / cols;
            for j0 in (0..cols).step_by(TILE) {
                let w = TILE.min(cols - j0);
                for i in 0..h {
                    let s = base + (i0 + i) * row_stride + j0 * col_stride;
                    for (j, d) in o[i * cols + j0..i * cols + j0 + w].iter_mut().enumerate() {
                        d.write(f(src[s + j * col_stride]));
                    }
                }
            }
        };
        if worth_splitting(rows * cols) {
            parallel::for_each_chunk(plane, TILE * cols, |i, o| band((i, o)));
        } else {
            plane.chunks_mut(TILE * cols).enumerate().for_each(band);
        }
    }
}

/// `f(a, b)` over two views of one shape, in row-major order.
pub(crate) fn zip<A, B, U, F>(a: &[A], la: &Layout, b: &[B], lb: &Layout, f: F) -> Vec<U>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    U: Send + Sync + 'static,
    F: Fn(A, B) -> U + Sync + Send,
{
    let n = la.elem_count();
    debug_assert_eq!(la.dims(), lb.dims());
    fill_new(n, |out| {
        if let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_range(), lb.contiguous_range()) {
            let (a, b) = (&a[a0..a1], &b[b0..b1]);
            let stream = n * size_of::<U>() >= simd::stream_min_bytes();
            let part = |x: &[A], y: &[B], o: &mut [MaybeUninit<U>]| {
                if stream {
                    simd::zip_streamed(x, y, o, &f);
                } else {
                    simd::zip_slice(x, y, o, &f);
                }
            };
            if worth_splitting(n) {
                let c = PAR_THRESHOLD / 4;
                parallel::for_each_chunk(out, c, |i, o| part(&a[i * c..][..o.len()], &b[i * c..][..o.len()], o));
            } else {
                part(a, b, out);
            }
            return;
        }
        let [la, lb] = Layout::coalesced([la, lb]);
        let r = la.rank();
        let inner = la.dims().last().copied().unwrap_or(1).max(1);
        let (sa, sb) = if r == 0 { (0, 0) } else { (la.strides()[r - 1], lb.strides()[r - 1]) };
        by_row_pieces(out, inner, |row, j, o| {
            let (pa, pb) = (la.offset_of(row * inner) + j * sa, lb.offset_of(row * inner) + j * sb);
            let len = o.len();
            match (sa, sb) {
                (1, 1) => simd::zip_slice(&a[pa..pa + len], &b[pb..pb + len], o, &f),
                (1, 0) => {
                    let y = b[pb];
                    simd::map_slice(&a[pa..pa + len], o, &|x| f(x, y));
                }
                (0, 1) => {
                    let x = a[pa];
                    simd::map_slice(&b[pb..pb + len], o, &|y| f(x, y));
                }
                _ => {
                    for (j, d) in o.iter_mut().enumerate() {
                        d.write(f(a[pa + j * sa], b[pb + j * sb]));
                    }
                }
            }
        });
    })
}

/// Fills `out`, a view's elements in row-major order whose merged last axis holds `inner`
/// of them, piece by piece: `piece(row, col, o)` writes the elements `col..col + o.len()` of
/// row `row`. A task takes a fixed number of elements, which may span several short rows or
/// part of a long one (a broadcast scalar merges into a single row).
pub(crate) fn by_row_pieces<U: Send>(
    out: &mut [MaybeUninit<U>],
    inner: usize,
    piece: impl Fn(usize, usize, &mut [MaybeUninit<U>]) + Sync,
) {
    let run = |start: usize, o: &mut [MaybeUninit<U>]| {
        let mut done = 0;
        while done < o.len() {
            let (row, col) = ((start + done) / inner, (start + done) % inner);
            let len = (inner - col).min(o.len() - done);
            piece(row, col, &mut o[done..done + len]);
            done += len;
        }
    };
    let chunk = PAR_THRESHOLD / 4;
    if worth_splitting(out.len()) {
        parallel::for_each_chunk(out, chunk, |i, o| run(i * chunk, o));
    } else {
        run(0, out);
    }
}

/// Converts between any two dtypes through f64 (exact for every value of the narrower
/// types; i64 beyond 2^53 rounds).
fn convert<T: WithDType, U: WithDType>(src: &[T], l: &Layout) -> Vec<U> {
    map(src, l, |x| U::from_f64(x.to_f64()))
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn len(&self) -> usize {
        with_vec!(self, v => v.len())
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn to_cpu(&self) -> Result<CpuStorage> {
        Ok(self.clone())
    }

    fn cast(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            // A plain strided copy: exact for every value (i64 included).
            return Ok(with_vec!(self, v => WithDType::into_cpu_storage(map(v, layout, |x| x))));
        }
        // The half-precision casts of mixed precision, direct instead of through f64 (which
        // took ~8x as long for bf16 -> f32); the same values either way, since every bf16
        // and f16 is an f32 and the f32 -> half roundings are half's own.
        match (self, dtype) {
            (CpuStorage::BF16(v), DType::F32) => {
                // bf16::to_f32 on the bits, as 32-bit lanes: this form vectorizes.
                let widen = |x: bf16| {
                    let b = x.to_bits() as u32;
                    f32::from_bits(if b & 0x7FFF > 0x7F80 { b | 0x40 } else { b } << 16)
                };
                return Ok(CpuStorage::F32(map(v, layout, widen)));
            }
            (CpuStorage::F16(v), DType::F32) => return Ok(CpuStorage::F32(map(v, layout, |x: f16| x.to_f32()))),
            (CpuStorage::F32(v), DType::BF16) => return Ok(CpuStorage::BF16(map(v, layout, bf16::from_f32))),
            (CpuStorage::F32(v), DType::F16) => {
                return Ok(CpuStorage::F16(match layout.contiguous_range() {
                    Some((a, b)) => matmul::narrow_to_f16(&v[a..b]),
                    None => map(v, layout, f16::from_f32),
                }));
            }
            _ => {}
        }
        Ok(with_vec!(self, v => match dtype {
            DType::F32 => CpuStorage::F32(convert(v, layout)),
            DType::F64 => CpuStorage::F64(convert(v, layout)),
            DType::F16 => CpuStorage::F16(convert(v, layout)),
            DType::BF16 => CpuStorage::BF16(convert(v, layout)),
            DType::I64 => CpuStorage::I64(convert(v, layout)),
            DType::U8 => CpuStorage::U8(convert(v, layout)),
        }))
    }

    fn copy_strided(&self, src_layout: &Layout, dst: &mut Self, dst_layout: &Layout) -> Result<()> {
        elementwise::copy_strided(self, src_layout, dst, dst_layout)
    }
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, layout, op)
    }
    fn scalar(&self, layout: &Layout, op: ScalarOp) -> Result<Self> {
        elementwise::scalar(self, layout, op)
    }
    fn binary(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: BinaryOp) -> Result<Self> {
        elementwise::binary(self, layout, rhs, rhs_layout, op)
    }
    fn cmp(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self> {
        elementwise::cmp(self, layout, rhs, rhs_layout, op)
    }
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        true_layout: &Layout,
        on_false: &Self,
        false_layout: &Layout,
    ) -> Result<Self> {
        elementwise::where_cond(self, layout, on_true, true_layout, on_false, false_layout)
    }
    fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Self> {
        reduce::reduce(self, layout, op, axes)
    }
    fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Self> {
        reduce::softmax(self, layout, axis, log)
    }
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        matmul::matmul(self, layout, rhs, rhs_layout)
    }
    fn matmul_lowered(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, low: DType) -> Result<Self> {
        match (self, rhs) {
            // f32 read and rounded to bf16 pairs for `vdpbf16ps`, f32 sums written: no casts.
            (CpuStorage::F32(a), CpuStorage::F32(b)) if low == DType::BF16 && gemm::bf16_gemm_available() => {
                Ok(CpuStorage::F32(matmul::bf16_products(a, layout, b, rhs_layout)))
            }
            _ => crate::backend::matmul_by_casts(self, layout, rhs, rhs_layout, low),
        }
    }
    fn index_select(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self> {
        index::index_select(self, layout, ids, ids_layout, axis)
    }
    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self> {
        index::gather(self, layout, ids, ids_layout, axis)
    }
    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self> {
        index::scatter_add(self, layout, ids, ids_layout, src, src_layout, axis)
    }
    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self> {
        index::index_add(self, layout, ids, ids_layout, src, src_layout, axis)
    }
    fn im2col(&self, layout: &Layout, window: &Window2d, pad_value: f64) -> Result<Self> {
        conv::im2col(self, layout, window, pad_value)
    }
    fn conv2d(&self, layout: &Layout, weight: &Self, weight_layout: &Layout, window: &Window2d) -> Result<Self> {
        conv::conv2d(self, layout, weight, weight_layout, window)
    }
    fn conv2d_lowered(
        &self,
        layout: &Layout,
        weight: &Self,
        weight_layout: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Self> {
        match (self, weight) {
            // The columns rounded to bf16 as they are gathered, f32 sums: no casts.
            (CpuStorage::F32(x), CpuStorage::F32(w)) if low == DType::BF16 && conv_bf16::available() => {
                let dims = window.conv2d_dims(layout, weight_layout)?;
                Ok(CpuStorage::F32(conv_bf16::conv2d::<f32, f32>(
                    &contiguous(x, layout),
                    &contiguous(w, weight_layout),
                    dims,
                    window,
                )))
            }
            _ => crate::backend::conv2d_by_casts(self, layout, weight, weight_layout, window, low),
        }
    }
    fn conv2d_weight_grad_lowered(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Self> {
        match (self, grad) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) if low == DType::BF16 && conv_bf16::available() => {
                let dims = window.conv2d_weight_grad_dims(layout, grad_layout)?;
                Ok(CpuStorage::F32(conv_bf16::weight_grad(
                    &contiguous(x, layout),
                    &contiguous(g, grad_layout),
                    dims,
                    window,
                )))
            }
            _ => crate::backend::conv2d_weight_grad_by_casts(self, layout, grad, grad_layout, window, low),
        }
    }
    fn conv2d_weight_grad(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        window: &Window2d,
    ) -> Result<Self> {
        match conv_grad::conv2d_weight_grad(self, layout, grad, grad_layout, window)? {
            Some(dw) => Ok(dw),
            // The half types: columns and a product (which widens them once).
            None => super::conv2d_weight_grad_by_columns(self, layout, grad, grad_layout, window),
        }
    }
    fn col2im(&self, layout: &Layout, window: &Window2d, height: usize, width: usize) -> Result<Self> {
        conv::col2im(self, layout, window, height, width)
    }
    fn max_pool2d_indices(&self, layout: &Layout, window: &Window2d, out: (usize, usize)) -> Result<Self> {
        conv::max_pool2d_indices(self, layout, window, out)
    }
    fn ctc_loss(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
    ) -> Result<(Self, Self)> {
        ctc::ctc_loss(self, layout, targets, targets_layout, input_lengths, target_lengths, blank)
    }
    fn lstm_cell(&self, l: &Layout, hg: &Self, hl: &Layout, c: &Self, cl: &Layout) -> Result<[Self; 3]> {
        rnn::lstm_cell(self, l, hg, hl, c, cl)
    }
    fn lstm_cell_backward(&self, l: &Layout, rest: [(&Self, &Layout); 5]) -> Result<[Self; 2]> {
        rnn::lstm_cell_backward(self, l, rest)
    }
    fn optim_step(&mut self, grad: &Self, state: &mut [&mut Self], rule: &OptimRule) -> Result<()> {
        optim::optim_step(self, grad, state, rule)
    }
}

/// The host as a [`BackendDevice`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuDevice;

impl BackendDevice for CpuDevice {
    type Storage = CpuStorage;
    fn location(&self) -> Device {
        Device::Cpu
    }
    fn full(&self, shape: &Shape, dtype: DType, value: f64) -> Result<CpuStorage> {
        Ok(CpuStorage::full(shape.elem_count(), dtype, value))
    }
    fn rand_uniform(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        lo: f64,
        hi: f64,
    ) -> Result<CpuStorage> {
        random::uniform(shape.elem_count(), dtype, seed, offset, lo, hi)
    }
    fn rand_normal(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        mean: f64,
        std: f64,
    ) -> Result<CpuStorage> {
        random::normal(shape.elem_count(), dtype, seed, offset, mean, std)
    }
    fn storage_from_cpu(&self, data: &CpuStorage) -> Result<CpuStorage> {
        Ok(data.clone())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    /// The tiled walk of transposed views visits every element once, in row-major order of
    /// the view, for sizes around the tile and the parallel threshold.
    #[test]
    fn transposed_views_map_in_row_major_order() {
        for dims in [[2usize, 33, 31], [1, 300, 257], [3, 1, 40], [4, 64, 0]] {
            let n: usize = dims.iter().product();
            let src: Vec<u32> = (0..n as u32).collect();
            let base = Layout::contiguous(Shape::from(dims.to_vec()));
            for perm in [[0, 2, 1], [2, 1, 0], [1, 2, 0]] {
                let l = base.permute(&perm).expect("a permutation");
                let got = map(&src, &l, |x| x);
                let want: Vec<u32> = (0..n).map(|i| src[l.offset_of(i)]).collect();
                assert_eq!(got, want, "{dims:?} {perm:?}");
            }
        }
    }

    #[test]
    fn splitting_depends_on_the_calling_thread() {
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a rayon pool");
        assert!(two.install(|| worth_splitting(PAR_THRESHOLD)));
        assert!(!two.install(|| worth_splitting(PAR_THRESHOLD - 1)));
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a rayon pool");
        assert!(!one.install(|| worth_splitting(usize::MAX)));
        // This test's own thread is outside every pool: the bar is higher, and the global
        // pool's size decides whether even that splits.
        assert!(!worth_splitting(PAR_THRESHOLD));
        let global_splits = rayon::current_num_threads() >= 2;
        assert_eq!(worth_splitting(PAR_THRESHOLD * OUTSIDE_POOL_FACTOR), global_splits);
    }
}
