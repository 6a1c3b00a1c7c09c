// The CUDA device environment for kernels compiled as host C++ (feature `cuda-emu`).
//
// Included before `abi.h`/`common.cuh` and a family's `.cu`: the same sources NVRTC compiles
// then build with g++/clang++. Each CUDA thread of a block is a fiber of the emulator's
// runtime (runtime.cpp); `threadIdx` reads the running fiber, `__syncthreads` and the warp
// functions are real barriers between fibers, and every warp-wide instruction the kernels use
// (shuffles, mma.sync, ldmatrix) exchanges its operands at a warp barrier, as the PTX ISA
// defines it. Anything not defined here fails to compile: the emulator never guesses.
#ifndef TF_EMU_SHIM_H
#define TF_EMU_SHIM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define TF_EMU 1

// ---- qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// Shared memory lives per block: a block runs all its fibers on one OS thread and blocks of
// one thread never interleave, so a thread-local static is exactly one block's copy.
#define __shared__ static thread_local

struct tf_emu_uint3 {
    unsigned x, y, z;
};
typedef tf_emu_uint3 dim3;
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

extern "C" {
// The running fiber's thread index and the running block's geometry (set by the runtime).
const tf_emu_uint3* tf_emu_thread_idx(void);
const tf_emu_uint3* tf_emu_block_idx(void);
const tf_emu_uint3* tf_emu_block_dim(void);
const tf_emu_uint3* tf_emu_grid_dim(void);
void tf_emu_syncthreads(void);
// Writes `bytes` (<= 16) of `value` for this lane, waits for the lanes of `mask`, copies the
// value written by lane `src` into `out`, and waits again before the slot is reused.
void tf_emu_warp_exchange(unsigned mask, const void* value, unsigned bytes, int src, void* out);
void tf_emu_syncwarp(unsigned mask);
unsigned tf_emu_lane(void);
// The running block's dynamic shared memory (the launch's `shared_bytes`, 16-byte aligned).
void* tf_emu_dynamic_shared(void);
[[noreturn]] void tf_emu_trap(const char* why);
void tf_emu_mma16816(float* d, const unsigned* a, unsigned b0, unsigned b1, int bf16);
void tf_emu_ldmatrix_x4(unsigned* r, const void* row, int trans);
void tf_emu_cp_async16(void* dst, const void* src, int full);
void tf_emu_cp_async_commit(void);
void tf_emu_cp_async_wait(int pending);
}

#define threadIdx (*tf_emu_thread_idx())
#define blockIdx (*tf_emu_block_idx())
#define blockDim (*tf_emu_block_dim())
#define gridDim (*tf_emu_grid_dim())
#define warpSize 32

inline void __syncthreads() { tf_emu_syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { tf_emu_syncwarp(mask); }
[[noreturn]] inline void __trap() { tf_emu_trap("__trap()"); }

// ---- warp shuffles, as PTX shfl.sync defines them for CUDA's `width` (segments of `width`
// lanes): idx reads lane `src % width` of the caller's segment; down and up read lane ± delta
// and keep their own value past the segment's end (down) or start (up); xor (bfly) reads
// lane ^ mask and keeps its own value only past the segment's *end*: PTX checks j <= maxLane,
// so a lane below the segment is read ----
template <typename T> inline T tf_emu_shfl(unsigned mask, T v, int src, bool own) {
    static_assert(sizeof(T) <= 16, "shuffle of a value wider than 16 bytes");
    T out;
    tf_emu_warp_exchange(mask, &v, sizeof(T), own ? -1 : src, &out);
    return own ? v : out;
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = (int)tf_emu_lane(), base = lane & ~(width - 1);
    return tf_emu_shfl(mask, v, base + (src & (width - 1)), false);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)tf_emu_lane(), base = lane & ~(width - 1), s = (lane - base) + (int)delta;
    return tf_emu_shfl(mask, v, base + s, s >= width);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)tf_emu_lane(), base = lane & ~(width - 1), s = (lane - base) - (int)delta;
    return tf_emu_shfl(mask, v, base + s, s < 0);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = (int)tf_emu_lane(), base = lane & ~(width - 1), s = lane ^ lane_mask;
    return tf_emu_shfl(mask, v, s, s > base + width - 1);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l) {
        int p = 0;
        tf_emu_warp_exchange(mask, &pred, sizeof pred, l, &p);
        if (((mask >> l) & 1u) && p) bits |= 1u << l;
    }
    return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == (mask & __ballot_sync(mask, 1)); }

// ---- reinterpretation and intrinsics (bits through memcpy: defined behaviour in C++) ----
template <typename D, typename S> inline D tf_emu_bits(S s) {
    static_assert(sizeof(D) == sizeof(S), "size mismatch");
    D d;
    memcpy(&d, &s, sizeof d);
    return d;
}
inline float __uint_as_float(unsigned u) { return tf_emu_bits<float>(u); }
inline float __int_as_float(int u) { return tf_emu_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return tf_emu_bits<unsigned>(f); }
inline int __float_as_int(float f) { return tf_emu_bits<int>(f); }
inline double __longlong_as_double(long long v) { return tf_emu_bits<double>(v); }
inline long long __double_as_longlong(double v) { return tf_emu_bits<long long>(v); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
// The fast-math forms are within a few ulps of the exact function on the GPU; the emulator
// computes the exact one (comparisons use tolerances, see docs/EMULATOR.md).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Rounded products the compiler may not fuse (the host build never contracts: -std=c++17).
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
template <typename T> inline T __ldg(const T* p) { return *p; }

// ---- atomics: blocks run on several OS threads, so these are real atomic operations ----
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename F, typename B> inline F tf_emu_atomic_float_add(F* p, F v) {
    B old = __atomic_load_n((B*)p, __ATOMIC_SEQ_CST), next;
    do {
        next = tf_emu_bits<B>(tf_emu_bits<F>(old) + v);
    } while (!__atomic_compare_exchange_n((B*)p, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return tf_emu_bits<F>(old);
}
inline float atomicAdd(float* p, float v) { return tf_emu_atomic_float_add<float, unsigned>(p, v); }
inline double atomicAdd(double* p, double v) { return tf_emu_atomic_float_add<double, unsigned long long>(p, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// The table a kernel family exports (generated by build.rs, or by the custom-op compiler):
// each entry calls its kernel with the parameters cuLaunchKernel would pass.
typedef void (*tf_emu_entry)(void** params);
struct TfEmuKernel {
    const char* name;
    tf_emu_entry entry;
};

#ifdef __cplusplus
#include <type_traits>
#include <utility>
template <typename... A, size_t... I>
inline void tf_emu_call(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(p[I])...);
}
template <auto F> struct TfEmuTramp;
template <typename... A, void (*F)(A...)> struct TfEmuTramp<F> {
    static void run(void** p) { tf_emu_call(F, p, std::index_sequence_for<A...>{}); }
};
#define TF_EMU_KERNEL(name) {#name, &TfEmuTramp<&name>::run}
#endif

#endif
