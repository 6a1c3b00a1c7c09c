// Binary arithmetic, comparisons into a u8 mask, and where(mask, a, b); operands share one
// shape (broadcast by stride 0), as in src/backend/cpu/elementwise.rs.
#include "abi.h"
#include "common.cuh"
#include "ops.h"

template <typename A> __device__ __forceinline__ A float_op(A x, A y, tf_u32 op) {
    switch (op) {
        case TF_BINARY_ADD: return x + y;
        case TF_BINARY_SUB: return x - y;
        case TF_BINARY_MUL: return x * y;
        case TF_BINARY_DIV: return x / y;
        case TF_BINARY_POW: return pow(x, y);
        case TF_BINARY_MAXIMUM: return tf_max_nan(x, y);
        case TF_BINARY_MINIMUM: return tf_min_nan(x, y);
        case TF_BINARY_RELU_BACKWARD: return y <= A(0) ? A(0) : x;
        default: __trap(); return x;  // an op code the host never sends: fail loudly
    }
}

// Wrapping integer arithmetic; division by zero gives 0 (as the CPU backend).
__device__ __forceinline__ tf_i64 i64_op(tf_i64 x, tf_i64 y, tf_u32 op) {
    unsigned long long a = (unsigned long long)x, b = (unsigned long long)y;
    switch (op) {
        case TF_BINARY_ADD: return (tf_i64)(a + b);
        case TF_BINARY_SUB: return (tf_i64)(a - b);
        case TF_BINARY_MUL: return (tf_i64)(a * b);
        case TF_BINARY_DIV: return y == 0 ? 0 : (y == -1 ? (tf_i64)(0ull - a) : x / y);
        case TF_BINARY_MAXIMUM: return x > y ? x : y;
        case TF_BINARY_MINIMUM: return x < y ? x : y;
        default: __trap(); return x;
    }
}
__device__ __forceinline__ tf_u8 u8_op(tf_u8 x, tf_u8 y, tf_u32 op) {
    switch (op) {
        case TF_BINARY_ADD: return (tf_u8)(x + y);
        case TF_BINARY_SUB: return (tf_u8)(x - y);
        case TF_BINARY_MUL: return (tf_u8)(x * y);
        case TF_BINARY_DIV: return y == 0 ? 0 : (tf_u8)(x / y);
        case TF_BINARY_MAXIMUM: return x > y ? x : y;
        case TF_BINARY_MINIMUM: return x < y ? x : y;
        default: __trap(); return x;
    }
}

template <typename T>
__device__ void binary_float(const T* a, TfLayout la, const T* b, TfLayout lb, T* y, tf_u64 n, tf_u32 op) {
    typedef typename Tr<T>::acc A;
    if (la.contiguous && lb.contiguous) {
        tf_zip_contiguous(a + la.offset, b + lb.offset, y, n, [op](A x, A z) { return float_op<A>(x, z, op); });
        return;
    }
    TF_FOR(i, n) {
        A x = Tr<T>::to(a[tf_offset(la, i)]), z = Tr<T>::to(b[tf_offset(lb, i)]);
        y[i] = Tr<T>::from(float_op<A>(x, z, op));
    }
}

template <typename A> __device__ __forceinline__ tf_u8 cmp_op(A x, A y, tf_u32 op) {
    switch (op) {
        case TF_CMP_EQ: return x == y;
        case TF_CMP_NE: return x != y;
        case TF_CMP_LT: return x < y;
        case TF_CMP_LE: return x <= y;
        case TF_CMP_GT: return x > y;
        case TF_CMP_GE: return x >= y;
        default: __trap(); return 0;
    }
}

#define BINARY_FLOAT(T, N)                                                                                       \
    extern "C" __global__ void binary_##N(const T* a, TfLayout la, const T* b, TfLayout lb, T* y, tf_u64 n, tf_u32 op) { \
        binary_float<T>(a, la, b, lb, y, n, op);                                                                 \
    }
BINARY_FLOAT(float, f32)
BINARY_FLOAT(double, f64)
BINARY_FLOAT(tf_f16, f16)
BINARY_FLOAT(tf_bf16, bf16)

extern "C" __global__ void binary_i64(const tf_i64* a, TfLayout la, const tf_i64* b, TfLayout lb, tf_i64* y, tf_u64 n, tf_u32 op) {
    TF_FOR(i, n) y[i] = i64_op(a[tf_offset(la, i)], b[tf_offset(lb, i)], op);
}
extern "C" __global__ void binary_u8(const tf_u8* a, TfLayout la, const tf_u8* b, TfLayout lb, tf_u8* y, tf_u64 n, tf_u32 op) {
    TF_FOR(i, n) y[i] = u8_op(a[tf_offset(la, i)], b[tf_offset(lb, i)], op);
}

// Comparisons read 16-bit floats widened to f32 (exact), integers as themselves.
template <typename T> struct CmpVal { typedef T type; static __device__ __forceinline__ T get(T x) { return x; } };
template <> struct CmpVal<tf_f16> { typedef float type; static __device__ __forceinline__ float get(tf_f16 x) { return tf_h2f(x.bits); } };
template <> struct CmpVal<tf_bf16> { typedef float type; static __device__ __forceinline__ float get(tf_bf16 x) { return tf_b2f(x.bits); } };

#define CMP(T, N)                                                                                                  \
    extern "C" __global__ void cmp_##N(const T* a, TfLayout la, const T* b, TfLayout lb, tf_u8* y, tf_u64 n, tf_u32 op) { \
        TF_FOR(i, n) y[i] = cmp_op(CmpVal<T>::get(a[tf_offset(la, i)]), CmpVal<T>::get(b[tf_offset(lb, i)]), op);      \
    }
CMP(float, f32)
CMP(double, f64)
CMP(tf_f16, f16)
CMP(tf_bf16, bf16)
CMP(tf_i64, i64)
CMP(tf_u8, u8)

// where by element size: selection never looks at the bits.
#define WHERE(T, N)                                                                                          \
    extern "C" __global__ void where_##N(const tf_u8* m, TfLayout lm, const T* t, TfLayout lt, const T* f,     \
                                         TfLayout lf, T* y, tf_u64 n) {                                       \
        TF_FOR(i, n) y[i] = m[tf_offset(lm, i)] ? t[tf_offset(lt, i)] : f[tf_offset(lf, i)];                  \
    }
WHERE(tf_u8, b1)
WHERE(tf_u16, b2)
WHERE(unsigned, b4)
WHERE(tf_u64, b8)
