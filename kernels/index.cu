// index_select, gather, and their adjoints scatter_add / index_add (atomics: f16, bf16 and u8
// through a CAS loop on the enclosing 32-bit word; buffers are 256-byte aligned and padded,
// so that word is always inside the allocation). `base` is the layout with the indexed axis
// given stride 0, as in src/backend/cpu/index.rs.
#include "abi.h"
#include "common.cuh"

// Flags the first out-of-range id: err[0] = 1, err[1] = the id (the host turns it into an Err).
extern "C" __global__ void check_ids(const tf_i64* ids, TfLayout il, tf_u64 n, tf_u64 size, tf_u64* err) {
    TF_FOR(i, n) {
        tf_i64 id = ids[tf_offset(il, i)];
        if (id < 0 || (tf_u64)id >= size) {
            if (atomicCAS(err, 0ull, 1ull) == 0ull) err[1] = (tf_u64)id;
        }
    }
}

template <typename T>
__device__ void index_select_impl(const T* x, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il, tf_u64 n_ids,
                                  tf_u64 inner, T* y, tf_u64 n) {
    TF_FOR(p, n) y[p] = x[tf_offset(base, p) + (tf_u64)ids[tf_offset(il, (p / inner) % n_ids)] * st];
}
template <typename T>
__device__ void gather_impl(const T* x, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il, T* y, tf_u64 n) {
    TF_FOR(p, n) y[p] = x[tf_offset(base, p) + (tf_u64)ids[tf_offset(il, p)] * st];
}

TF_DEV void atomic_add(float* p, float v) { atomicAdd(p, v); }
TF_DEV void atomic_add(double* p, double v) { atomicAdd(p, v); }
TF_DEV void atomic_add(tf_i64* p, tf_i64 v) { atomicAdd((unsigned long long*)p, (unsigned long long)v); }

// Adds within the 32-bit word holding the `bytes`-wide value at `p`; `add` maps old bits to new.
template <typename F> TF_DEV void atomic_update_narrow(void* p, unsigned bytes, F add) {
    unsigned long long a = (unsigned long long)p;
    unsigned* word = (unsigned*)(a & ~3ull);
    unsigned shift = (unsigned)(a & 3ull) * 8u;
    unsigned mask = (bytes == 2 ? 0xffffu : 0xffu) << shift;
    unsigned old = *word, assumed;
    do {
        assumed = old;
        unsigned cur = (assumed & mask) >> shift;
        unsigned next = (add(cur) << shift) & mask;
        old = atomicCAS(word, assumed, (assumed & ~mask) | next);
    } while (assumed != old);
}
struct AddF16 { float v; TF_DEV unsigned operator()(unsigned b) const { return tf_f2h(tf_h2f((tf_u16)b) + v); } };
struct AddBF16 { float v; TF_DEV unsigned operator()(unsigned b) const { return tf_f2b(tf_b2f((tf_u16)b) + v); } };
struct AddU8 { unsigned v; TF_DEV unsigned operator()(unsigned b) const { return (b + v) & 0xffu; } };
TF_DEV void atomic_add(tf_f16* p, tf_f16 v) { AddF16 f = {tf_h2f(v.bits)}; atomic_update_narrow(p, 2, f); }
TF_DEV void atomic_add(tf_bf16* p, tf_bf16 v) { AddBF16 f = {tf_b2f(v.bits)}; atomic_update_narrow(p, 2, f); }
TF_DEV void atomic_add(tf_u8* p, tf_u8 v) { AddU8 f = {v}; atomic_update_narrow(p, 1, f); }

template <typename T>
__device__ void scatter_add_impl(T* out, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il, const T* src,
                                 TfLayout sl, tf_u64 n) {
    TF_FOR(p, n) atomic_add(out + tf_offset(base, p) + (tf_u64)ids[tf_offset(il, p)] * st, src[tf_offset(sl, p)]);
}
template <typename T>
__device__ void index_add_impl(T* out, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il, tf_u64 n_ids,
                               tf_u64 inner, const T* src, TfLayout sl, tf_u64 n) {
    TF_FOR(p, n) {
        tf_u64 id = (tf_u64)ids[tf_offset(il, (p / inner) % n_ids)];
        atomic_add(out + tf_offset(base, p) + id * st, src[tf_offset(sl, p)]);
    }
}

#define SELECT(T, N)                                                                                           \
    extern "C" __global__ void index_select_##N(const T* x, TfLayout base, tf_u64 st, const tf_i64* ids,         \
                                                TfLayout il, tf_u64 n_ids, tf_u64 inner, T* y, tf_u64 n) {       \
        index_select_impl<T>(x, base, st, ids, il, n_ids, inner, y, n);                                        \
    }                                                                                                          \
    extern "C" __global__ void gather_##N(const T* x, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il,  \
                                          T* y, tf_u64 n) {                                                     \
        gather_impl<T>(x, base, st, ids, il, y, n);                                                            \
    }
SELECT(tf_u8, b1)
SELECT(tf_u16, b2)
SELECT(unsigned, b4)
SELECT(tf_u64, b8)

#define ACCUMULATE(T, N)                                                                                        \
    extern "C" __global__ void scatter_add_##N(T* out, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il,  \
                                               const T* src, TfLayout sl, tf_u64 n) {                            \
        scatter_add_impl<T>(out, base, st, ids, il, src, sl, n);                                                \
    }                                                                                                           \
    extern "C" __global__ void index_add_##N(T* out, TfLayout base, tf_u64 st, const tf_i64* ids, TfLayout il,    \
                                             tf_u64 n_ids, tf_u64 inner, const T* src, TfLayout sl, tf_u64 n) {  \
        index_add_impl<T>(out, base, st, ids, il, n_ids, inner, src, sl, n);                                    \
    }
ACCUMULATE(float, f32)
ACCUMULATE(double, f64)
ACCUMULATE(tf_f16, f16)
ACCUMULATE(tf_bf16, bf16)
ACCUMULATE(tf_i64, i64)
ACCUMULATE(tf_u8, u8)
