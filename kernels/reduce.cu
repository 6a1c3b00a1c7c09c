// Reductions over any set of axes with the CPU's outer/inner split: `outer` walks the kept
// axes (one output each), `inner` (offset 0) walks the reduced elements of one output.
// A warp per output when rows are short, a block per output when they are long; partial
// results combine with warp shuffles, then through shared memory across warps.
#include "abi.h"
#include "common.cuh"
#include "ops.h"

#define FULL_MASK 0xffffffffu

template <typename A> TF_DEV A tf_inf();
template <> TF_DEV float tf_inf<float>() { return __int_as_float(0x7f800000); }
template <> TF_DEV double tf_inf<double>() { return __longlong_as_double(0x7ff0000000000000LL); }

template <typename A> TF_DEV A red_init(tf_u32 op) {
    switch (op) {
        case TF_REDUCE_PROD: return (A)1;
        case TF_REDUCE_MAX: return -tf_inf<A>();
        case TF_REDUCE_MIN: return tf_inf<A>();
        default: return (A)0;
    }
}
template <typename A> TF_DEV A red_combine(A a, A b, tf_u32 op) {
    switch (op) {
        case TF_REDUCE_PROD: return a * b;
        case TF_REDUCE_MAX: return tf_max_nan(a, b);
        case TF_REDUCE_MIN: return tf_min_nan(a, b);
        default: return a + b;
    }
}

// Integers reduce in i64 with wrapping sum/product (unsigned arithmetic: no UB).
TF_DEV tf_i64 int_init(tf_u32 op) {
    switch (op) {
        case TF_REDUCE_PROD: return 1;
        case TF_REDUCE_MAX: return (tf_i64)(-0x7fffffffffffffffLL - 1);
        case TF_REDUCE_MIN: return (tf_i64)0x7fffffffffffffffLL;
        default: return 0;
    }
}
TF_DEV tf_i64 int_combine(tf_i64 a, tf_i64 b, tf_u32 op) {
    switch (op) {
        case TF_REDUCE_PROD: return (tf_i64)((unsigned long long)a * (unsigned long long)b);
        case TF_REDUCE_MAX: return a > b ? a : b;
        case TF_REDUCE_MIN: return a < b ? a : b;
        default: return (tf_i64)((unsigned long long)a + (unsigned long long)b);
    }
}

struct FloatRed {
    template <typename A> static TF_DEV A init(tf_u32 op) { return red_init<A>(op); }
    template <typename A> static TF_DEV A combine(A a, A b, tf_u32 op) { return red_combine(a, b, op); }
};
struct IntRed {
    template <typename A> static TF_DEV A init(tf_u32 op) { return int_init(op); }
    template <typename A> static TF_DEV A combine(A a, A b, tf_u32 op) { return int_combine(a, b, op); }
};

// All threads of the group (a warp, or the block in block mode) get the combined value.
template <typename R, typename A> TF_DEV A group_allreduce(A v, tf_u32 op, bool block_mode) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = R::combine(v, (A)__shfl_xor_sync(FULL_MASK, v, d), op);
    if (!block_mode) return v;
    __shared__ A smem[32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    __syncthreads();  // the previous output's readers are done with smem
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = lane < nw ? smem[lane] : R::template init<A>(op);
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = R::combine(v, (A)__shfl_xor_sync(FULL_MASK, v, d), op);
    return v;
}

// Outputs handled by this thread's group: warps (warp mode) or blocks (block mode) stride
// over the outputs, so every thread of a group runs the same iterations.
#define FOR_OUTPUT(o, n_out, block_mode)                                                                 \
    const tf_u64 group_ = block_mode ? blockIdx.x : ((tf_u64)blockIdx.x * blockDim.x + threadIdx.x) / 32; \
    const tf_u64 groups_ = block_mode ? gridDim.x : ((tf_u64)gridDim.x * blockDim.x) / 32;                \
    const tf_u32 lane_ = block_mode ? threadIdx.x : threadIdx.x % 32;                                    \
    const tf_u32 width_ = block_mode ? blockDim.x : 32;                                                  \
    for (tf_u64 o = group_; o < (n_out); o += groups_)

template <typename T, typename O>
__device__ void reduce_float(const T* x, TfLayout outer, TfLayout inner, tf_u64 n_out, tf_u64 count, O* y,
                             tf_u32 op, tf_u32 block_mode) {
    typedef typename Tr<T>::acc A;
    FOR_OUTPUT(o, n_out, block_mode) {
        const T* base = x + tf_offset(outer, o);
        A acc = red_init<A>(op);
        if (op == TF_REDUCE_SUM || op == TF_REDUCE_MEAN) {
            // Compensated: each thread may add count / width values.
            tf_ksum<A> k = {(A)0, (A)0};
            if (inner.contiguous) {
                k = tf_fold_lanes(base + inner.offset, count, lane_, width_, k, [](tf_ksum<A> k, A v) {
                    k.add(v);
                    return k;
                });
            } else {
                for (tf_u64 j = lane_; j < count; j += width_) k.add(Tr<T>::to(base[tf_offset(inner, j)]));
            }
            acc = k.value();
        } else if (inner.contiguous) {
            acc = tf_fold_lanes(base + inner.offset, count, lane_, width_, acc, [op](A a, A v) { return red_combine(a, v, op); });
        } else {
            for (tf_u64 j = lane_; j < count; j += width_) acc = red_combine(acc, Tr<T>::to(base[tf_offset(inner, j)]), op);
        }
        acc = group_allreduce<FloatRed>(acc, op, block_mode != 0);
        if (op == TF_REDUCE_MEAN) acc = acc * (A)(1.0 / (double)count);
        if (lane_ == 0) y[o] = Tr<T>::from(acc);
    }
}

template <typename T, typename O>
__device__ void reduce_int(const T* x, TfLayout outer, TfLayout inner, tf_u64 n_out, tf_u64 count, O* y,
                           tf_u32 op, tf_u32 block_mode) {
    FOR_OUTPUT(o, n_out, block_mode) {
        const T* base = x + tf_offset(outer, o);
        tf_i64 acc = int_init(op);
        for (tf_u64 j = lane_; j < count; j += width_) acc = int_combine(acc, (tf_i64)base[tf_offset(inner, j)], op);
        acc = group_allreduce<IntRed>(acc, op, block_mode != 0);
        if (lane_ == 0) y[o] = (O)acc;
    }
}

// (value, index) pairs; `better` is strict, NaN counting as extreme, ties keep the first index.
template <typename A> TF_DEV bool arg_better(A x, A y, bool is_min) {
    bool b = is_min ? (x < y) : (x > y);
    return b || (x != x && y == y);
}
template <typename A> TF_DEV void arg_merge(A& v, tf_i64& i, A v2, tf_i64 i2, bool is_min) {
    if (i2 < 0) return;
    if (i < 0 || arg_better(v2, v, is_min) || (!arg_better(v, v2, is_min) && i2 < i)) {
        v = v2;
        i = i2;
    }
}

template <typename T, typename A>
__device__ void argreduce(const T* x, TfLayout outer, TfLayout inner, tf_u64 n_out, tf_u64 count, tf_i64* y,
                          tf_u32 is_min, tf_u32 block_mode, A (*load)(T)) {
    FOR_OUTPUT(o, n_out, block_mode) {
        const T* base = x + tf_offset(outer, o);
        A v = (A)0;
        tf_i64 idx = -1;  // -1: nothing seen yet
        for (tf_u64 j = lane_; j < count; j += width_) arg_merge(v, idx, load(base[tf_offset(inner, j)]), (tf_i64)j, is_min);
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) {
            A v2 = (A)__shfl_xor_sync(FULL_MASK, v, d);
            tf_i64 i2 = __shfl_xor_sync(FULL_MASK, idx, d);
            arg_merge(v, idx, v2, i2, is_min);
        }
        if (block_mode) {
            __shared__ A sv[32];
            __shared__ tf_i64 si[32];
            int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
            __syncthreads();
            if (lane == 0) {
                sv[warp] = v;
                si[warp] = idx;
            }
            __syncthreads();
            if (warp == 0) {
                v = lane < nw ? sv[lane] : (A)0;
                idx = lane < nw ? si[lane] : -1;
#pragma unroll
                for (int d = 16; d > 0; d >>= 1) {
                    A v2 = (A)__shfl_xor_sync(FULL_MASK, v, d);
                    tf_i64 i2 = __shfl_xor_sync(FULL_MASK, idx, d);
                    arg_merge(v, idx, v2, i2, is_min);
                }
            }
        }
        if (lane_ == 0) y[o] = idx < 0 ? 0 : idx;
    }
}

template <typename T> TF_DEV typename Tr<T>::acc load_acc(T v) { return Tr<T>::to(v); }
TF_DEV tf_i64 load_i64(tf_i64 v) { return v; }
TF_DEV int load_u8(tf_u8 v) { return v; }

#define REDUCE_FLOAT(T_, N)                                                                                  \
    extern "C" __global__ void __launch_bounds__(1024) reduce_##N(const T_* x, TfLayout outer, TfLayout inner, tf_u64 n_out,          \
                                          tf_u64 count, T_* y, tf_u32 op, tf_u32 block_mode) {                \
        reduce_float<T_, T_>(x, outer, inner, n_out, count, y, op, block_mode);                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(1024) argreduce_##N(const T_* x, TfLayout outer, TfLayout inner, tf_u64 n_out,       \
                                             tf_u64 count, tf_i64* y, tf_u32 is_min, tf_u32 block_mode) {     \
        argreduce<T_, typename Tr<T_>::acc>(x, outer, inner, n_out, count, y, is_min, block_mode, load_acc<T_>); \
    }
REDUCE_FLOAT(float, f32)
REDUCE_FLOAT(double, f64)
REDUCE_FLOAT(tf_f16, f16)
REDUCE_FLOAT(tf_bf16, bf16)

// Sum/Prod of integers give i64 (`reduce_wide_*`); Max/Min keep the dtype.
#define REDUCE_INT(T_, N)                                                                                     \
    extern "C" __global__ void __launch_bounds__(1024) reduce_wide_##N(const T_* x, TfLayout outer, TfLayout inner, tf_u64 n_out,      \
                                               tf_u64 count, tf_i64* y, tf_u32 op, tf_u32 block_mode) {        \
        reduce_int<T_, tf_i64>(x, outer, inner, n_out, count, y, op, block_mode);                             \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) reduce_##N(const T_* x, TfLayout outer, TfLayout inner, tf_u64 n_out,           \
                                          tf_u64 count, T_* y, tf_u32 op, tf_u32 block_mode) {                 \
        reduce_int<T_, T_>(x, outer, inner, n_out, count, y, op, block_mode);                                 \
    }
REDUCE_INT(tf_i64, i64)
REDUCE_INT(tf_u8, u8)

extern "C" __global__ void __launch_bounds__(1024) argreduce_i64(const tf_i64* x, TfLayout outer, TfLayout inner, tf_u64 n_out, tf_u64 count,
                                         tf_i64* y, tf_u32 is_min, tf_u32 block_mode) {
    argreduce<tf_i64, tf_i64>(x, outer, inner, n_out, count, y, is_min, block_mode, load_i64);
}
extern "C" __global__ void __launch_bounds__(1024) argreduce_u8(const tf_u8* x, TfLayout outer, TfLayout inner, tf_u64 n_out, tf_u64 count,
                                        tf_i64* y, tf_u32 is_min, tf_u32 block_mode) {
    argreduce<tf_u8, int>(x, outer, inner, n_out, count, y, is_min, block_mode, load_u8);
}
