// cast (through f64, as the CPU's `U::from_f64(x.to_f64())`) and copy_strided (by element
// size: a copy never looks at the bits).
#include "abi.h"
#include "common.cuh"

template <typename S, typename D> __device__ void cast_impl(const S* x, TfLayout l, D* y, tf_u64 n) {
    TF_FOR(i, n) y[i] = Tr<D>::from_f64(Tr<S>::to_f64(x[tf_offset(l, i)]));
}

template <typename T> __device__ void copy_impl(const T* x, TfLayout sl, T* y, TfLayout dl, tf_u64 n) {
    if (sl.contiguous && dl.contiguous) {
        const T* s = x + sl.offset;
        T* d = y + dl.offset;
        TF_FOR(i, n) d[i] = s[i];
        return;
    }
    TF_FOR(i, n) y[tf_offset(dl, i)] = x[tf_offset(sl, i)];
}

#define CAST(S, SN, D, DN) \
    extern "C" __global__ void cast_##SN##_##DN(const S* x, TfLayout l, D* y, tf_u64 n) { cast_impl<S, D>(x, l, y, n); }
#define CAST_FROM(S, SN)              \
    CAST(S, SN, float, f32)           \
    CAST(S, SN, double, f64)          \
    CAST(S, SN, tf_f16, f16)          \
    CAST(S, SN, tf_bf16, bf16)        \
    CAST(S, SN, tf_i64, i64)          \
    CAST(S, SN, tf_u8, u8)

CAST_FROM(float, f32)
CAST_FROM(double, f64)
CAST_FROM(tf_f16, f16)
CAST_FROM(tf_bf16, bf16)
CAST_FROM(tf_i64, i64)
CAST_FROM(tf_u8, u8)

#define COPY(T, N)                                                                            \
    extern "C" __global__ void copy_##N(const T* x, TfLayout sl, T* y, TfLayout dl, tf_u64 n) { \
        copy_impl<T>(x, sl, y, dl, n);                                                        \
    }
COPY(tf_u8, b1)
COPY(tf_u16, b2)
COPY(unsigned, b4)
COPY(tf_u64, b8)
