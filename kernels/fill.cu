// fill and the Philox4x32-10 random streams (same counters and words as
// src/backend/cpu/random.rs, so every backend yields the same bits).
#include "abi.h"
#include "common.cuh"

template <typename T> __device__ void fill_impl(T* out, tf_u64 n, double v) {
    T x = Tr<T>::from_f64(v);
    TF_FOR(i, n) out[i] = x;
}

struct tf_philox { unsigned w[4]; };

__device__ __forceinline__ tf_philox philox4x32_10(tf_u64 seed, tf_u64 counter) {
    unsigned c0 = (unsigned)counter, c1 = (unsigned)(counter >> 32), c2 = 0, c3 = 0;
    unsigned k0 = (unsigned)seed, k1 = (unsigned)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned lo0 = 0xD2511F53u * c0, hi0 = __umulhi(0xD2511F53u, c0);
        unsigned lo1 = 0xCD9E8D57u * c2, hi1 = __umulhi(0xCD9E8D57u, c2);
        unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    tf_philox r;
    r.w[0] = c0; r.w[1] = c1; r.w[2] = c2; r.w[3] = c3;
    return r;
}

// One thread per Philox block of four uniforms: element i uses counter offset + i/4, word i%4.
template <typename T>
__device__ void uniform_impl(T* out, tf_u64 n, tf_u64 seed, tf_u64 offset, double lo, double hi) {
    tf_u64 groups = (n + 3) / 4;
    TF_FOR(g, groups) {
        tf_philox r = philox4x32_10(seed, offset + g);
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            tf_u64 i = g * 4 + w;
            // __dmul_rn: NVRTC would otherwise fuse the multiply into the add (one rounding
            // instead of the CPU's two) and the bits would differ.
            if (i < n) out[i] = Tr<T>::from_f64(lo + __dmul_rn(hi - lo, (double)r.w[w] * (1.0 / 4294967296.0)));
        }
    }
}

// Box-Muller: element i uses counter offset + i/2 and the word pair 2*(i%2), 2*(i%2)+1.
template <typename T>
__device__ void normal_impl(T* out, tf_u64 n, tf_u64 seed, tf_u64 offset, double mean, double std) {
    tf_u64 groups = (n + 1) / 2;
    TF_FOR(g, groups) {
        tf_philox r = philox4x32_10(seed, offset + g);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tf_u64 i = g * 2 + h;
            if (i < n) {
                double u1 = ((double)r.w[2 * h] + 1.0) * (1.0 / 4294967296.0);
                double u2 = (double)r.w[2 * h + 1] * (1.0 / 4294967296.0);
                double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
                out[i] = Tr<T>::from_f64(mean + std * z);
            }
        }
    }
}

#define FILL(T, N) \
    extern "C" __global__ void fill_##N(T* out, tf_u64 n, double v) { fill_impl<T>(out, n, v); }
#define RANDOM(T, N)                                                                                        \
    extern "C" __global__ void rand_uniform_##N(T* out, tf_u64 n, tf_u64 seed, tf_u64 off, double a, double b) { \
        uniform_impl<T>(out, n, seed, off, a, b);                                                           \
    }                                                                                                       \
    extern "C" __global__ void rand_normal_##N(T* out, tf_u64 n, tf_u64 seed, tf_u64 off, double a, double b) {  \
        normal_impl<T>(out, n, seed, off, a, b);                                                            \
    }

FILL(float, f32)
FILL(double, f64)
FILL(tf_f16, f16)
FILL(tf_bf16, bf16)
FILL(tf_i64, i64)
FILL(tf_u8, u8)
RANDOM(float, f32)
RANDOM(double, f64)
RANDOM(tf_f16, f16)
RANDOM(tf_bf16, bf16)
