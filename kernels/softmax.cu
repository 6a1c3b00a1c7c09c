// Softmax / log-softmax along one axis: a warp per row for short rows, a block per row for
// long ones (up to 1024 threads, hence the launch bounds: f64 must fit 64 registers).
// `in_rows`/`out_rows` are the layouts with the axis moved last, so element j of row r sits at
// tf_offset(layout, r * len + j) on both sides; contiguous rows are read in 16-byte vectors.
#include "abi.h"
#include "common.cuh"

#define FULL_MASK 0xffffffffu

template <typename A> TF_DEV A sm_combine(A a, A b, bool is_max) { return is_max ? tf_max_nan(a, b) : a + b; }

template <typename A> TF_DEV A sm_allreduce(A v, bool is_max, bool block_mode) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = sm_combine(v, (A)__shfl_xor_sync(FULL_MASK, v, d), is_max);
    if (!block_mode) return v;
    __shared__ A smem[32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    A id = is_max ? -__int_as_float(0x7f800000) : (A)0;
    v = lane < nw ? smem[lane] : id;
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v = sm_combine(v, (A)__shfl_xor_sync(FULL_MASK, v, d), is_max);
    return v;
}

template <typename T>
__device__ void softmax_impl(const T* x, TfLayout in_rows, T* y, TfLayout out_rows, tf_u64 rows, tf_u64 len,
                             tf_u32 log_out, tf_u32 block_mode) {
    typedef typename Tr<T>::acc A;
    const A neg_inf = -__int_as_float(0x7f800000);
    const tf_u64 group = block_mode ? blockIdx.x : ((tf_u64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const tf_u64 groups = block_mode ? gridDim.x : ((tf_u64)gridDim.x * blockDim.x) / 32;
    const tf_u32 lane = block_mode ? threadIdx.x : threadIdx.x % 32;
    const tf_u32 width = block_mode ? blockDim.x : 32;
    const bool fast = in_rows.contiguous && out_rows.contiguous;
    for (tf_u64 r = group; r < rows; r += groups) {
        const tf_u64 first = r * len;
        A m = neg_inf;
        if (fast) {
            m = tf_fold_lanes(x + in_rows.offset + first, len, lane, width, m, [](A a, A v) { return tf_max_nan(a, v); });
        } else {
            for (tf_u64 j = lane; j < len; j += width) m = tf_max_nan(m, Tr<T>::to(x[tf_offset(in_rows, first + j)]));
        }
        m = sm_allreduce(m, true, block_mode != 0);
        // A fully masked row (all -inf) shifts by 0, as the CPU kernel.
        const A shift = m == neg_inf ? (A)0 : m;
        // The denominator, compensated (a long row gives each thread thousands of terms).
        tf_ksum<A> k = {(A)0, (A)0};
        if (fast) {
            k = tf_fold_lanes(x + in_rows.offset + first, len, lane, width, k, [shift](tf_ksum<A> k, A v) {
                k.add(exp(v - shift));
                return k;
            });
        } else {
            for (tf_u64 j = lane; j < len; j += width) k.add(exp(Tr<T>::to(x[tf_offset(in_rows, first + j)]) - shift));
        }
        const A s = sm_allreduce(k.value(), false, block_mode != 0);
        // (v - shift) - log(s): v - (shift + log(s)) would round the log away next to a huge shift.
        const A ln_s = log(s), inv = (A)1 / s;
        auto out = [=](A v) { return log_out ? (v - shift) - ln_s : exp(v - shift) * inv; };
        if (fast) {
            tf_map_lanes(x + in_rows.offset + first, y + out_rows.offset + first, len, lane, width, out);
        } else {
            for (tf_u64 j = lane; j < len; j += width) {
                y[tf_offset(out_rows, first + j)] = Tr<T>::from(out(Tr<T>::to(x[tf_offset(in_rows, first + j)])));
            }
        }
    }
}

#define SOFTMAX(T, N)                                                                                         \
    extern "C" __global__ void __launch_bounds__(1024) softmax_##N(const T* x, TfLayout in_rows, T* y, TfLayout out_rows, tf_u64 rows, \
                                           tf_u64 len, tf_u32 log_out, tf_u32 block_mode) {                   \
        softmax_impl<T>(x, in_rows, y, out_rows, rows, len, log_out, block_mode);                             \
    }
SOFTMAX(float, f32)
SOFTMAX(double, f64)
SOFTMAX(tf_f16, f16)
SOFTMAX(tf_bf16, bf16)
