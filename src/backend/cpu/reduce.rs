//! Reductions over any set of axes, and softmax / log-softmax along one axis.

use super::cascade::{BLOCK, Cascade, RowCascade};
use super::float::{CpuFloat, Float};
use super::{CpuStorage, fill_new, simd, with_float_vec, worth_splitting};
use crate::backend::ReduceOp;
use crate::{Error, Layout, Result, Shape, WithDType};
use std::mem::MaybeUninit;

/// Splits a reduction into `(outer, inner)` views: `outer` walks the kept axes, and for each
/// kept position `inner` (a layout at offset 0 over the reduced axes) walks what it reduces.
fn split_axes(l: &Layout, axes: &[usize]) -> (Layout, Layout) {
    let kept: Vec<usize> = (0..l.rank()).filter(|a| !axes.contains(a)).collect();
    let dims = |ax: &[usize]| Shape::from(ax.iter().map(|&a| l.dims()[a]).collect::<Vec<_>>());
    let strides = |ax: &[usize]| ax.iter().map(|&a| l.strides()[a]).collect::<Vec<_>>();
    let (outer, inner) =
        (Layout::new(dims(&kept), strides(&kept), l.offset()), Layout::new(dims(axes), strides(axes), 0));
    // Merged axes, same order: summing a conv bias's gradient over (N, H, W) reads runs of
    // H·W, not of W.
    let ([outer], [inner]) = (Layout::coalesced([&outer]), Layout::coalesced([&inner]));
    (outer, inner)
}

/// Calls `f(base)` for each output position and collects the results; `base` is the storage
/// offset of the first reduced element.
fn per_output<U: Send + Sync + 'static>(
    outer: &Layout,
    work_per_out: usize,
    f: impl Fn(usize) -> U + Sync + Send,
) -> Vec<U> {
    let n = outer.elem_count();
    fill_new(n, |out| {
        let run = |(i, o): (usize, &mut std::mem::MaybeUninit<U>)| {
            o.write(f(outer.offset_of(i)));
        };
        if worth_splitting(n * work_per_out) && n > 1 {
            super::parallel::for_each_chunk(out, 1, |i, o| run((i, &mut o[0])));
        } else {
            out.iter_mut().enumerate().for_each(run);
        }
    })
}

/// Elements a strided run folds one by one (a single accumulator, no SIMD lanes) before the
/// partial result joins the cascade: fewer than a SIMD block, as its error grows faster.
const STRIDED_BLOCK: usize = 128;

/// Folds `m(x)` over the elements of `inner` shifted by `base`: contiguous runs through the
/// SIMD fold, strided runs element by element in blocks, every block's result into one
/// pairwise cascade (so a long reduction is accurate whatever its layout).
#[inline]
fn fold_view<T: Copy, A: Copy>(
    v: &[T],
    inner: &Layout,
    base: usize,
    init: A,
    m: &impl Fn(T) -> A,
    f: &impl Fn(A, A) -> A,
) -> A {
    if inner.elem_count() <= BLOCK {
        // One block: a plain fold (most reductions; the cascade would only cost here).
        let mut acc = init;
        inner.for_each_run(|s, n, st| {
            let s = s + base;
            if st == 1 {
                acc = f(acc, simd::fold_slice(&v[s..s + n], init, m, f));
            } else {
                for j in 0..n {
                    acc = f(acc, m(v[s + j * st]));
                }
            }
        });
        return acc;
    }
    let mut c = Cascade::new();
    // A strided block in progress: its partial fold and how many elements it holds.
    let (mut part, mut held) = (init, 0usize);
    inner.for_each_run(|s, n, st| {
        let s = s + base;
        if st == 1 {
            c.push(simd::fold_slice(&v[s..s + n], init, m, f), f);
        } else {
            for j in 0..n {
                part = f(part, m(v[s + j * st]));
                held += 1;
                if held == STRIDED_BLOCK {
                    c.push(part, f);
                    (part, held) = (init, 0);
                }
            }
        }
    });
    if held > 0 {
        c.push(part, f);
    }
    c.finish(init, f)
}

/// True for NaN in any float type (`x != x`), without a float trait bound.
#[inline(always)]
#[allow(clippy::eq_op)]
fn is_nan<T: PartialEq>(x: T) -> bool {
    x != x
}

/// Index of the first extreme element (`better(x, best)`), NaN counting as extreme.
fn arg_view<T: Copy>(v: &[T], inner: &Layout, base: usize, better: impl Fn(T, T) -> bool) -> i64 {
    let mut best: Option<T> = None;
    let mut best_i = 0i64;
    let mut i = 0i64;
    inner.for_each_run(|s, n, st| {
        for j in 0..n {
            let x = v[base + s + j * st];
            match best {
                Some(b) if !better(x, b) => {}
                _ => {
                    best = Some(x);
                    best_i = i;
                }
            }
            i += 1;
        }
    });
    best_i
}

/// Reduces a contiguous tensor over its leading axes (`rows`) to one value per trailing
/// position (`cols`), e.g. a bias gradient summed over the batch. Rows are combined
/// elementwise into an accumulator row, so the loop runs along memory instead of down each
/// column; blocks of rows then join a pairwise cascade per column, so 10⁷ rows sum as
/// accurately as a short column.
fn reduce_leading<T: CpuFloat>(
    v: &[T],
    rows: usize,
    cols: usize,
    init: T::Acc,
    f: impl Fn(T::Acc, T::Acc) -> T::Acc + Sync,
) -> Vec<T::Acc> {
    /// Rows folded in order into one partial row before it joins the cascade.
    const ROWS_PER_BLOCK: usize = 64;
    // Columns c0..c0+len of rows r0..r0+ROWS_PER_BLOCK, folded in order.
    let block = |r0: usize, c0: usize, len: usize| {
        let mut part = super::pool::filled(len, init);
        for r in r0..(r0 + ROWS_PER_BLOCK).min(rows) {
            let row = &v[r * cols + c0..r * cols + c0 + len];
            for (a, &x) in part.iter_mut().zip(row) {
                *a = f(*a, x.to_acc());
            }
        }
        part
    };
    // The blocks' partial rows join the cascade in row order, whichever thread made them:
    // the same bits on any number of threads.
    let join = |parts: &mut dyn Iterator<Item = Vec<T::Acc>>, acc: &mut [T::Acc]| {
        let mut c = RowCascade::new();
        parts.for_each(|part| c.push(part, &f));
        if let Some(total) = c.finish(&f) {
            acc.copy_from_slice(&total);
        }
    };
    let mut acc = super::pool::filled(cols, init);
    const COLS_PER_TASK: usize = 256;
    // A row block worth a task of its own (narrower rows: the tasks cost more than they save).
    const MIN_BLOCK_WORK: usize = 8192;
    let blocks = rows.div_ceil(ROWS_PER_BLOCK);
    if worth_splitting(rows * cols) && cols >= 2 * COLS_PER_TASK {
        super::parallel::for_each_chunk(&mut acc, COLS_PER_TASK, |i, a| {
            let (c0, len) = (i * COLS_PER_TASK, a.len());
            join(&mut (0..blocks).map(|b| block(b * ROWS_PER_BLOCK, c0, len)), a)
        });
    } else if worth_splitting(rows * cols) && blocks >= 2 && ROWS_PER_BLOCK * cols >= MIN_BLOCK_WORK {
        // Narrow rows (a bias gradient, `[N·T, 4H]` summed over its rows): the row blocks
        // split across threads instead of the columns.
        let mut parts: Vec<Vec<T::Acc>> = (0..blocks).map(|_| Vec::new()).collect();
        super::parallel::for_each_chunk(&mut parts, 1, |b, p| p[0] = block(b * ROWS_PER_BLOCK, 0, cols));
        join(&mut parts.into_iter(), &mut acc);
    } else {
        join(&mut (0..blocks).map(|b| block(b * ROWS_PER_BLOCK, 0, cols)), &mut acc);
    }
    acc
}

/// A reduction of a whole contiguous slice to one value, split across threads in fixed
/// chunks (each a run of cascade blocks) whose results join one cascade in order: the same
/// bits on any number of threads.
fn fold_all<T: Copy + Sync, A: Copy + Send + Sync + 'static>(
    v: &[T],
    init: A,
    m: &(impl Fn(T) -> A + Sync),
    f: &(impl Fn(A, A) -> A + Sync),
) -> A {
    const CHUNK: usize = 64 * BLOCK;
    if !worth_splitting(v.len()) || v.len() <= 2 * CHUNK {
        return simd::fold_slice(v, init, m, f);
    }
    let parts = fill_new(v.len().div_ceil(CHUNK), |out| {
        super::parallel::for_each_chunk(out, 1, |i, o| {
            o[0].write(simd::fold_slice(&v[i * CHUNK..((i + 1) * CHUNK).min(v.len())], init, m, f));
        });
    });
    let mut c = Cascade::new();
    for p in parts {
        c.push(p, f);
    }
    c.finish(init, f)
}

fn reduce_float<T: CpuFloat>(v: &[T], l: &Layout, op: ReduceOp, axes: &[usize]) -> CpuStorage {
    let leading = axes.iter().enumerate().all(|(i, &a)| i == a) && axes.len() < l.rank();
    if let (Some((start, end)), true) = (l.contiguous_range(), leading) {
        let rows: usize = l.dims()[..axes.len()].iter().product();
        let (v, cols) = (&v[start..end], l.dims()[axes.len()..].iter().product::<usize>());
        let done = |acc: Vec<T::Acc>, scale: T::Acc| {
            T::into_cpu_storage(acc.into_iter().map(|a| T::from_acc(a * scale)).collect())
        };
        match op {
            ReduceOp::Sum if rows > 0 => {
                return done(reduce_leading(v, rows, cols, T::Acc::ZERO, |a, b| a + b), T::Acc::ONE);
            }
            ReduceOp::Mean if rows > 0 => {
                let scale = T::Acc::from_f64(1.0 / rows as f64);
                return done(reduce_leading(v, rows, cols, T::Acc::ZERO, |a, b| a + b), scale);
            }
            ReduceOp::Max if rows > 0 => {
                return done(reduce_leading(v, rows, cols, T::Acc::NEG_INF, |a, b| a.max_nan(b)), T::Acc::ONE);
            }
            ReduceOp::Min if rows > 0 => {
                return done(reduce_leading(v, rows, cols, T::Acc::INF, |a, b| a.min_nan(b)), T::Acc::ONE);
            }
            _ => {}
        }
    }
    let (outer, inner) = split_axes(l, axes);
    let count = inner.elem_count();
    let whole = if outer.elem_count() == 1 { l.contiguous_range() } else { None };
    // Generic in `f` (not a `fn` pointer), so the fold inlines it and vectorizes.
    fn red<T: CpuFloat>(
        v: &[T],
        outer: &Layout,
        inner: &Layout,
        whole: Option<(usize, usize)>,
        init: T::Acc,
        scale: T::Acc,
        f: impl Fn(T::Acc, T::Acc) -> T::Acc + Sync,
    ) -> Vec<T> {
        let m = |x: T| x.to_acc();
        if let Some((a, b)) = whole {
            return vec![T::from_acc(fold_all(&v[a..b], init, &m, &f) * scale)];
        }
        per_output(outer, inner.elem_count(), |b| T::from_acc(fold_view(v, inner, b, init, &m, &f) * scale))
    }
    let one = T::Acc::ONE;
    let out = match op {
        ReduceOp::Sum => red(v, &outer, &inner, whole, T::Acc::ZERO, one, |a, b| a + b),
        ReduceOp::Prod => red(v, &outer, &inner, whole, one, one, |a, b| a * b),
        ReduceOp::Max => red(v, &outer, &inner, whole, T::Acc::NEG_INF, one, |a, b| a.max_nan(b)),
        ReduceOp::Min => red(v, &outer, &inner, whole, T::Acc::INF, one, |a, b| a.min_nan(b)),
        ReduceOp::Mean => {
            let scale = T::Acc::from_f64(1.0 / count as f64);
            red(v, &outer, &inner, whole, T::Acc::ZERO, scale, |a, b| a + b)
        }
        ReduceOp::ArgMax => {
            let am =
                per_output(&outer, count, |b| arg_view(v, &inner, b, |x: T, y: T| x > y || (is_nan(x) && !is_nan(y))));
            return CpuStorage::I64(am);
        }
        ReduceOp::ArgMin => {
            let am =
                per_output(&outer, count, |b| arg_view(v, &inner, b, |x: T, y: T| x < y || (is_nan(x) && !is_nan(y))));
            return CpuStorage::I64(am);
        }
    };
    T::into_cpu_storage(out)
}

fn reduce_int<T: WithDType + Ord + Into<i64>>(v: &[T], l: &Layout, op: ReduceOp, axes: &[usize]) -> Result<CpuStorage> {
    let (outer, inner) = split_axes(l, axes);
    let count = inner.elem_count();
    let widen = |x: T| -> i64 { x.into() };
    let keep = |x: T| x;
    Ok(match op {
        ReduceOp::Sum => {
            CpuStorage::I64(per_output(&outer, count, |b| fold_view(v, &inner, b, 0, &widen, &i64::wrapping_add)))
        }
        ReduceOp::Prod => {
            CpuStorage::I64(per_output(&outer, count, |b| fold_view(v, &inner, b, 1, &widen, &i64::wrapping_mul)))
        }
        ReduceOp::Max => {
            let lo = v.iter().copied().min().unwrap_or_default();
            T::into_cpu_storage(per_output(&outer, count, |b| {
                fold_view(v, &inner, b, lo, &keep, &|a: T, b: T| a.max(b))
            }))
        }
        ReduceOp::Min => {
            let hi = v.iter().copied().max().unwrap_or_default();
            T::into_cpu_storage(per_output(&outer, count, |b| {
                fold_view(v, &inner, b, hi, &keep, &|a: T, b: T| a.min(b))
            }))
        }
        ReduceOp::ArgMax => CpuStorage::I64(per_output(&outer, count, |b| arg_view(v, &inner, b, |x: T, y: T| x > y))),
        ReduceOp::ArgMin => CpuStorage::I64(per_output(&outer, count, |b| arg_view(v, &inner, b, |x: T, y: T| x < y))),
        ReduceOp::Mean => return Err(Error::UnsupportedDType { op: "mean", dtype: T::DTYPE }),
    })
}

pub fn reduce(s: &CpuStorage, l: &Layout, op: ReduceOp, axes: &[usize]) -> Result<CpuStorage> {
    match s {
        CpuStorage::I64(v) => reduce_int(v, l, op, axes),
        CpuStorage::U8(v) => reduce_int(v, l, op, axes),
        _ => Ok(with_float_vec!(s, op.name(), v => reduce_float(v, l, op, axes))),
    }
}

/// One row of softmax: `x` → `out`. Max, then the exponentials with their sum in one pass,
/// then the scale. Where the element type is its own compute type (f32, f64) the exponentials
/// go straight into `out` and are scaled there while the row is in L1, so the stores to
/// memory overlap the exp arithmetic; f16/bf16 keep them unrounded in `scratch` and round once.
#[inline]
fn softmax_row<T: CpuFloat>(x: &[T], scratch: &mut Vec<T::Acc>, out: &mut [MaybeUninit<T>], log: bool) {
    if T::softmax_row_simd(x, out, log) {
        return;
    }
    let max = simd::fold_slice(x, T::Acc::NEG_INF, &|a: T| a.to_acc(), &|a: T::Acc, b| a.max_nan(b));
    // A row of -inf (fully masked) has no finite max; shifting by 0 keeps exp(-inf) = 0.
    let shift = if max == T::Acc::NEG_INF { T::Acc::ZERO } else { max };
    let add = |a: T::Acc, b: T::Acc| a + b;
    if log {
        let sum = simd::fold_slice(x, T::Acc::ZERO, &|a: T| (a.to_acc() - shift).exp(), &add);
        // (x - shift) - ln(sum): shift + ln(sum) would round the ln away next to a huge shift.
        let ln_sum = sum.ln();
        simd::map_slice(x, out, &|a: T| T::from_acc((a.to_acc() - shift) - ln_sum));
    } else if std::mem::size_of::<T>() == std::mem::size_of::<T::Acc>() {
        // T::Acc is T itself: `from_acc` and `to_acc` are exact.
        let sum = simd::map_fold_slice(
            x,
            out,
            &|a: T| T::from_acc((a.to_acc() - shift).exp()),
            T::from_acc(T::Acc::ZERO),
            &|a, b| T::from_acc(a.to_acc() + b.to_acc()),
        );
        let inv = T::Acc::ONE / sum.to_acc();
        // SAFETY: `map_fold_slice` wrote every slot of `out`.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<T>] as *mut [T]) };
        simd::update_slice(out, &|a: T| T::from_acc(a.to_acc() * inv));
    } else {
        scratch.clear();
        scratch.reserve(x.len());
        let exps = &mut scratch.spare_capacity_mut()[..x.len()];
        let sum = simd::map_fold_slice(x, exps, &|a: T| (a.to_acc() - shift).exp(), T::Acc::ZERO, &add);
        // SAFETY: `map_fold_slice` wrote all `x.len()` slots.
        unsafe { scratch.set_len(x.len()) };
        let inv = T::Acc::ONE / sum;
        simd::map_slice(scratch, out, &|a: T::Acc| T::from_acc(a * inv));
    }
}

fn softmax_float<T: CpuFloat>(v: &[T], l: &Layout, axis: usize, log: bool) -> CpuStorage {
    let n = l.elem_count();
    let len = l.dims()[axis];
    if n == 0 || len == 0 {
        return T::into_cpu_storage(super::pool::filled(n, T::default()));
    }
    let rows = n / len;
    let stride = l.strides()[axis];
    let mut perm: Vec<usize> = (0..l.rank()).filter(|&a| a != axis).collect();
    perm.push(axis);
    // Row r's input starts where the layout with `axis` moved last puts element r·len; the
    // output (contiguous in the original order) likewise.
    let in_rows = l.permute(&perm).expect("a valid permutation");
    let out_rows = Layout::contiguous(l.shape().clone()).permute(&perm).expect("a valid permutation");
    let out_stride = out_rows.strides()[l.rank() - 1];
    let mut scratch = (Vec::with_capacity(len), Vec::with_capacity(len));
    let one_row = |(row, exps): &mut (Vec<T>, Vec<T::Acc>), r: usize, o: &mut [MaybeUninit<T>]| {
        let x = strided_row(v, in_rows.offset_of(r * len), len, stride, row);
        softmax_row::<T>(x, exps, o, log);
    };
    if out_stride == 1 {
        let out = fill_new(n, |out: &mut [MaybeUninit<T>]| {
            if worth_splitting(n) {
                let init = || (Vec::with_capacity(len), Vec::with_capacity(len));
                super::parallel::for_each_chunk_init(out, len, init, one_row);
            } else {
                out.chunks_mut(len).enumerate().for_each(|(r, o)| one_row(&mut scratch, r, o));
            }
        });
        return T::into_cpu_storage(out);
    }
    let mut out = super::pool::filled(n, T::default());
    let mut y = super::pool::filled(len, T::default());
    for r in 0..rows {
        one_row(&mut scratch, r, as_uninit(&mut y));
        let o = out_rows.offset_of(r * len);
        for (j, &yj) in y.iter().enumerate() {
            out[o + j * out_stride] = yj;
        }
    }
    T::into_cpu_storage(out)
}

/// `len` elements from `start` at `stride`: borrowed when contiguous, else gathered into `buf`.
fn strided_row<'a, T: Copy>(v: &'a [T], start: usize, len: usize, stride: usize, buf: &'a mut Vec<T>) -> &'a [T] {
    if stride == 1 {
        return &v[start..start + len];
    }
    buf.clear();
    buf.extend((0..len).map(|j| v[start + j * stride]));
    buf
}

/// Views initialized memory as writable slots (writing through them keeps it initialized).
fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout, and the slots are only ever written with valid
    // values of T, so the slice stays initialized for its owner.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

pub fn softmax(s: &CpuStorage, l: &Layout, axis: usize, log: bool) -> Result<CpuStorage> {
    Ok(with_float_vec!(s, if log { "log_softmax" } else { "softmax" }, v => softmax_float(v, l, axis, log)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leading-axis reductions large enough to split columns across threads give, bit for
    /// bit, what adding each column's rows in order gives.
    #[test]
    fn leading_axis_reductions_add_rows_in_order() {
        let (rows, cols) = (37, 1300);
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        let l = Layout::contiguous(Shape::from(vec![rows, cols]));
        // On a pool thread, so the columns split (see `worth_splitting`).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a rayon pool");
        let (sum, max) =
            pool.install(|| (reduce_float(&v, &l, ReduceOp::Sum, &[0]), reduce_float(&v, &l, ReduceOp::Max, &[0])));
        let (CpuStorage::F32(sum), CpuStorage::F32(max)) = (sum, max) else { panic!("f32 in, f32 out") };
        for j in 0..cols {
            let col = (0..rows).map(|r| v[r * cols + j]);
            assert_eq!(sum[j].to_bits(), col.clone().fold(0.0f32, |a, b| a + b).to_bits(), "column {j}");
            assert_eq!(max[j], col.fold(f32::NEG_INFINITY, f32::max), "column {j}");
        }
    }
}
