// Elementwise unary functions and parameterized scalar maps, with the formulas of
// src/backend/cpu/elementwise.rs, computed in the accumulation type (f32 for f16/bf16).
#include "abi.h"
#include "common.cuh"
#include "ops.h"

template <typename A> __device__ __forceinline__ A tf_sigmoid(A x) {
    // Two branches so that exp never overflows.
    if (x >= (A)0) return (A)1 / ((A)1 + exp(-x));
    A e = exp(x);
    return e / ((A)1 + e);
}

// gelu (tanh form) as 0.5·x·(1 + tanh u) = x·σ(2u): one exponential instead of a tanh, and no
// cancellation as u → −∞. Outputs of 16 bits (Short) keep ~8 of f32's 24 bits, so they take
// the approximate exponential and division (errors ~2⁻²¹), which keeps the op memory-bound.
template <typename A, bool Short> __device__ __forceinline__ A gelu_tanh(A x) {
    const A c = (A)0.79788456080286535588, k = (A)0.044715;
    A u = c * (x + k * x * x * x);
    if constexpr (Short) return __fdividef(x, 1.0f + __expf(-2.0f * u));
    return x / ((A)1 + exp((A)-2 * u));
}

template <typename A, bool Short = false> __device__ __forceinline__ A unary_op(A x, tf_u32 op) {
    switch (op) {
        case TF_UNARY_NEG: return -x;
        case TF_UNARY_ABS: return fabs(x);
        case TF_UNARY_EXP: return exp(x);
        case TF_UNARY_LOG: return log(x);
        case TF_UNARY_SQRT: return sqrt(x);
        case TF_UNARY_RSQRT: return (A)1 / sqrt(x);
        case TF_UNARY_RECIP: return (A)1 / x;
        case TF_UNARY_SQR: return x * x;
        case TF_UNARY_SIN: return sin(x);
        case TF_UNARY_COS: return cos(x);
        case TF_UNARY_TANH: return tanh(x);
        case TF_UNARY_SIGMOID: return tf_sigmoid(x);
        case TF_UNARY_RELU: return x > (A)0 ? x : (A)0;
        case TF_UNARY_GELU_ERF: return (A)0.5 * x * ((A)1 + erf(x * (A)0.70710678118654752440));
        case TF_UNARY_GELU_TANH: return gelu_tanh<A, Short>(x);
        case TF_UNARY_SILU: return x * tf_sigmoid(x);
        case TF_UNARY_SOFTPLUS: {
            // max(x, 0) + log1p(exp(-|x|)): exact for large |x|, no overflow.
            A m = x > (A)0 ? x : (A)0;
            return m + log1p(exp(-fabs(x)));
        }
        case TF_UNARY_SIGN: return x > (A)0 ? (A)1 : (x < (A)0 ? (A)-1 : x);
        case TF_UNARY_FLOOR: return floor(x);
        case TF_UNARY_CEIL: return ceil(x);
        case TF_UNARY_ROUND: return rint(x);  // ties to even, as round_ties_even
        default: __trap(); return x;  // an op code the host never sends: fail loudly
    }
}

template <typename T> __device__ void unary_impl(const T* x, TfLayout l, T* y, tf_u64 n, tf_u32 op) {
    typedef typename Tr<T>::acc A;
    constexpr bool Short = sizeof(T) == 2;
    if (l.contiguous) {
        tf_map_contiguous(x + l.offset, y, n, [op](A v) { return unary_op<A, Short>(v, op); });
        return;
    }
    TF_FOR(i, n) y[i] = Tr<T>::from(unary_op<A, Short>(Tr<T>::to(x[tf_offset(l, i)]), op));
}

// i64 supports neg/abs/sign/sqr, all wrapping (done in unsigned arithmetic: no UB).
__device__ __forceinline__ tf_i64 unary_i64_op(tf_i64 x, tf_u32 op) {
    unsigned long long u = (unsigned long long)x;
    switch (op) {
        case TF_UNARY_NEG: return (tf_i64)(0ull - u);
        case TF_UNARY_ABS: return x < 0 ? (tf_i64)(0ull - u) : x;
        case TF_UNARY_SIGN: return (x > 0) - (x < 0);
        case TF_UNARY_SQR: return (tf_i64)(u * u);
        default: __trap(); return x;
    }
}

template <typename T>
__device__ void scalar_impl(const T* x, TfLayout l, T* y, tf_u64 n, tf_u32 op, double p, double q) {
    typedef typename Tr<T>::acc A;
    const A a = (A)p, b = (A)q;
    auto f = [op, a, b](A v) {
        if (op == TF_SCALAR_AFFINE) return v * a + b;
        if (op == TF_SCALAR_POWF) return (A)pow(v, a);
        const A lo = v < a ? a : v;  // min(max(v, a), b) in that order: a > b gives b
        return lo > b ? b : lo;
    };
    if (l.contiguous) {
        tf_map_contiguous(x + l.offset, y, n, f);
        return;
    }
    TF_FOR(i, n) y[i] = Tr<T>::from(f(Tr<T>::to(x[tf_offset(l, i)])));
}

// i64 affine (integral parameters, wrapping) and clamp (bounds already rounded inward).
__device__ void scalar_i64_impl(const tf_i64* x, TfLayout l, tf_i64* y, tf_u64 n, tf_u32 op, tf_i64 a, tf_i64 b) {
    TF_FOR(i, n) {
        tf_i64 v = x[tf_offset(l, i)];
        if (op == TF_SCALAR_AFFINE) {
            y[i] = (tf_i64)((unsigned long long)v * (unsigned long long)a + (unsigned long long)b);
        } else {
            v = v < a ? a : v;
            y[i] = v > b ? b : v;
        }
    }
}

#define UNARY(T, N)                                                                                        \
    extern "C" __global__ void unary_##N(const T* x, TfLayout l, T* y, tf_u64 n, tf_u32 op) {               \
        unary_impl<T>(x, l, y, n, op);                                                                     \
    }                                                                                                      \
    extern "C" __global__ void scalar_##N(const T* x, TfLayout l, T* y, tf_u64 n, tf_u32 op, double a, double b) { \
        scalar_impl<T>(x, l, y, n, op, a, b);                                                              \
    }

UNARY(float, f32)
UNARY(double, f64)
UNARY(tf_f16, f16)
UNARY(tf_bf16, bf16)

extern "C" __global__ void unary_i64(const tf_i64* x, TfLayout l, tf_i64* y, tf_u64 n, tf_u32 op) {
    TF_FOR(i, n) y[i] = unary_i64_op(x[tf_offset(l, i)], op);
}
extern "C" __global__ void scalar_i64(const tf_i64* x, TfLayout l, tf_i64* y, tf_u64 n, tf_u32 op, tf_i64 a, tf_i64 b) {
    scalar_i64_impl(x, l, y, n, op, a, b);
}
