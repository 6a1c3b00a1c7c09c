// Shared helpers for every kernel family: element types, conversions with the CPU backend's
// exact semantics, layout walking and launch loops. Self-contained on purpose (no cuda_fp16.h,
// no <stdint.h>): at run time a user needs only the driver and libnvrtc, no toolkit headers.
#ifndef TF_COMMON_CUH
#define TF_COMMON_CUH

typedef long long tf_i64;
typedef unsigned char tf_u8;
typedef unsigned short tf_u16;

// 16-bit floats as raw bits; arithmetic always happens in f32 (as on the CPU).
struct tf_f16 { tf_u16 bits; };
struct tf_bf16 { tf_u16 bits; };

#define TF_DEV __device__ __forceinline__

// The tensor-core and async-copy paths exist from sm_80 on; the emulator reports sm_90.
#if defined(TF_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define TF_SM80 1
#else
#define TF_SM80 0
#endif

// Grid-stride loop: the host caps the grid, so one launch covers any element count.
#define TF_FOR(i, n) \
    for (tf_u64 i = (tf_u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (tf_u64)blockDim.x * gridDim.x)

// The launch's dynamic shared memory as `T* name` (a launch's `shared_bytes`, 16-byte
// aligned). One spelling for NVRTC and the emulator, which cannot express `extern __shared__`.
#ifdef TF_EMU
#define TF_DYNAMIC_SHARED(T, name) T* name = (T*)tf_emu_dynamic_shared()
#else
#define TF_DYNAMIC_SHARED(T, name)                  \
    extern __shared__ __align__(16) char name##_[]; \
    T* name = (T*)name##_
#endif

// Storage offset of row-major element i of the view `l`.
TF_DEV tf_u64 tf_offset(const TfLayout& l, tf_u64 i) {
    if (l.contiguous) return l.offset + i;
    tf_u64 off = l.offset;
#pragma unroll
    for (int d = TF_MAX_DIMS - 1; d >= 0; --d) {
        if (d < (int)l.rank) {
            tf_u64 n = l.dims[d];
            tf_u64 q = i / n;
            off += (i - q * n) * l.strides[d];
            i = q;
        }
    }
    return off;
}

// ---- conversions (cvt through inline PTX; bf16 by bit manipulation, as the `half` crate) ----
// Under the emulator (TF_EMU, kernels/emu/shim.h) every inline-PTX helper has a host branch
// written from the PTX ISA's definition of the instruction; NVRTC never sees those branches.
#ifdef TF_EMU
TF_DEV float tf_h2f(tf_u16 h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
TF_DEV tf_u16 tf_f2h(float f) { _Float16 x = (_Float16)f; tf_u16 h; memcpy(&h, &x, 2); return h; }
TF_DEV tf_u16 tf_d2h(double d) { _Float16 x = (_Float16)d; tf_u16 h; memcpy(&h, &x, 2); return h; }
// cvt.rz.f32.f64: round toward zero (the nearest float is one step too far when larger).
TF_DEV float tf_d2f_rz(double d) {
    float f = (float)d;
    if (fabs((double)f) > fabs(d)) f = nextafterf(f, 0.0f);
    return f;
}
#else
TF_DEV float tf_h2f(tf_u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
TF_DEV tf_u16 tf_f2h(float f) { tf_u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
TF_DEV tf_u16 tf_d2h(double d) { tf_u16 h; asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(d)); return h; }
TF_DEV float tf_d2f_rz(double d) { float f; asm("cvt.rz.f32.f64 %0, %1;" : "=f"(f) : "d"(d)); return f; }
#endif
TF_DEV float tf_b2f(tf_u16 b) { return __uint_as_float(((unsigned)b) << 16); }
TF_DEV tf_u16 tf_f2b(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (tf_u16)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (tf_u16)(u >> 16);
}
// f64 -> bf16 rounded once (as bf16::from_f64): round to odd into f32 (cvt.rz + sticky bit),
// then to nearest-even into bf16; f32 keeps more than two extra bits, so no double rounding.
TF_DEV tf_u16 tf_d2b(double d) {
    if (d != d) return 0x7fc0;
    float f = tf_d2f_rz(d);
    if ((double)f != d && fabsf(f) != __int_as_float(0x7f800000)) f = __uint_as_float(__float_as_uint(f) | 1u);
    return tf_f2b(f);
}
// Saturating float -> int as Rust's `as` (NaN -> 0).
TF_DEV tf_i64 tf_d2i64(double d) {
    if (d != d) return 0;
    if (d >= 9223372036854775807.0) return (tf_i64)0x7fffffffffffffffLL;
    if (d <= -9223372036854775808.0) return (tf_i64)(-0x7fffffffffffffffLL - 1);
    return (tf_i64)d;
}
TF_DEV tf_u8 tf_d2u8(double d) {
    if (d != d || d <= 0.0) return 0;
    if (d >= 255.0) return 255;
    return (tf_u8)d;
}

// Per-type traits: `acc` is the compute type (f32 for f32/f16/bf16, f64 for f64).
template <typename T> struct Tr;
template <> struct Tr<float> {
    typedef float acc;
    static TF_DEV float to(float x) { return x; }
    static TF_DEV float from(float x) { return x; }
    static TF_DEV double to_f64(float x) { return x; }
    static TF_DEV float from_f64(double x) { return (float)x; }
};
template <> struct Tr<double> {
    typedef double acc;
    static TF_DEV double to(double x) { return x; }
    static TF_DEV double from(double x) { return x; }
    static TF_DEV double to_f64(double x) { return x; }
    static TF_DEV double from_f64(double x) { return x; }
};
template <> struct Tr<tf_f16> {
    typedef float acc;
    static TF_DEV float to(tf_f16 x) { return tf_h2f(x.bits); }
    static TF_DEV tf_f16 from(float x) { tf_f16 r; r.bits = tf_f2h(x); return r; }
    static TF_DEV double to_f64(tf_f16 x) { return tf_h2f(x.bits); }
    static TF_DEV tf_f16 from_f64(double x) { tf_f16 r; r.bits = tf_d2h(x); return r; }
};
template <> struct Tr<tf_bf16> {
    typedef float acc;
    static TF_DEV float to(tf_bf16 x) { return tf_b2f(x.bits); }
    static TF_DEV tf_bf16 from(float x) { tf_bf16 r; r.bits = tf_f2b(x); return r; }
    static TF_DEV double to_f64(tf_bf16 x) { return tf_b2f(x.bits); }
    static TF_DEV tf_bf16 from_f64(double x) { tf_bf16 r; r.bits = tf_d2b(x); return r; }
};
template <> struct Tr<tf_i64> {
    typedef tf_i64 acc;
    static TF_DEV double to_f64(tf_i64 x) { return (double)x; }
    static TF_DEV tf_i64 from_f64(double x) { return tf_d2i64(x); }
};
template <> struct Tr<tf_u8> {
    typedef tf_u8 acc;
    static TF_DEV double to_f64(tf_u8 x) { return (double)x; }
    static TF_DEV tf_u8 from_f64(double x) { return tf_d2u8(x); }
};

// ---- contiguous fast paths: 16 bytes per load and store ----
// A thread moves one 16-byte vector of elements per step (8 halfs or 4 floats), so a warp's
// access is 512 contiguous bytes; a misaligned buffer or the tail takes the element loop.
struct alignas(16) tf_vec16 { unsigned w[4]; };

// Element q of a vector, and setting it, by shifts of its 32-bit words: no object is read
// through a pointer of another type (q is a constant after unrolling, so these are moves).
template <typename T> struct tf_lane;
template <> struct tf_lane<float> {
    static TF_DEV float get(const tf_vec16& v, int q) { return __uint_as_float(v.w[q]); }
    static TF_DEV void set(tf_vec16& v, int q, float x) { v.w[q] = __float_as_uint(x); }
};
template <> struct tf_lane<double> {
    static TF_DEV double get(const tf_vec16& v, int q) {
        return __longlong_as_double((long long)(((tf_u64)v.w[2 * q + 1] << 32) | v.w[2 * q]));
    }
    static TF_DEV void set(tf_vec16& v, int q, double x) {
        const tf_u64 b = (tf_u64)__double_as_longlong(x);
        v.w[2 * q] = (unsigned)b;
        v.w[2 * q + 1] = (unsigned)(b >> 32);
    }
};
template <typename H> struct tf_lane16 {
    static TF_DEV H get(const tf_vec16& v, int q) {
        H h;
        h.bits = (tf_u16)(v.w[q >> 1] >> (16 * (q & 1)));
        return h;
    }
    static TF_DEV void set(tf_vec16& v, int q, H x) {
        const unsigned sh = 16 * (q & 1);
        v.w[q >> 1] = (v.w[q >> 1] & ~(0xffffu << sh)) | ((unsigned)x.bits << sh);
    }
};
template <> struct tf_lane<tf_f16> : tf_lane16<tf_f16> {};
template <> struct tf_lane<tf_bf16> : tf_lane16<tf_bf16> {};

TF_DEV bool tf_aligned16(const void* p) { return ((tf_u64)p & 15) == 0; }

// y[i] = f(x[i]) for i = first, first + step, … over contiguous x and y (in vectors when
// both are aligned): a grid (grid-stride ids) or one row's group (lane, group width).
template <typename T, typename F>
TF_DEV void tf_map_lanes(const T* x, T* y, tf_u64 n, tf_u64 first, tf_u64 step, F f) {
    constexpr int V = 16 / sizeof(T);
    tf_u64 done = 0;
    if (tf_aligned16(x) && tf_aligned16(y)) {
        const tf_u64 nv = n / V;
        for (tf_u64 j = first; j < nv; j += step) {
            const tf_vec16 v = ((const tf_vec16*)x)[j];
            tf_vec16 r = {{0u, 0u, 0u, 0u}};
#pragma unroll
            for (int q = 0; q < V; ++q) tf_lane<T>::set(r, q, Tr<T>::from(f(Tr<T>::to(tf_lane<T>::get(v, q)))));
            ((tf_vec16*)y)[j] = r;
        }
        done = nv * V;
    }
    for (tf_u64 i = done + first; i < n; i += step) y[i] = Tr<T>::from(f(Tr<T>::to(x[i])));
}
template <typename T, typename F> TF_DEV void tf_map_contiguous(const T* x, T* y, tf_u64 n, F f) {
    tf_map_lanes(x, y, n, (tf_u64)blockIdx.x * blockDim.x + threadIdx.x, (tf_u64)blockDim.x * gridDim.x, f);
}

// A running sum with Neumaier's compensation: a thread that adds thousands of values (a long
// row split over a block) keeps the error of a few, as the CPU's cascade does. Infinite and
// NaN partial sums skip the compensation, so they come out as a plain sum would.
template <typename A> struct tf_ksum {
    A s, c;
    TF_DEV void add(A v) {
        const A t = s + v;
        if (t - t == (A)0) {  // t finite
            const A as = s < (A)0 ? -s : s, av = v < (A)0 ? -v : v;
            c += as >= av ? (s - t) + v : (v - t) + s;
        }
        s = t;
    }
    TF_DEV A value() const { return s + c; }
};

// acc = f(acc, x[i]) for i = first, first + step, … over contiguous x (in vectors when aligned).
template <typename T, typename A, typename F>
TF_DEV A tf_fold_lanes(const T* x, tf_u64 n, tf_u64 first, tf_u64 step, A acc, F f) {
    constexpr int V = 16 / sizeof(T);
    tf_u64 done = 0;
    if (tf_aligned16(x)) {
        const tf_u64 nv = n / V;
        for (tf_u64 j = first; j < nv; j += step) {
            const tf_vec16 v = ((const tf_vec16*)x)[j];
#pragma unroll
            for (int q = 0; q < V; ++q) acc = f(acc, Tr<T>::to(tf_lane<T>::get(v, q)));
        }
        done = nv * V;
    }
    for (tf_u64 i = done + first; i < n; i += step) acc = f(acc, Tr<T>::to(x[i]));
    return acc;
}

// y[i] = f(a[i], b[i]) for contiguous a, b and y.
template <typename T, typename F> TF_DEV void tf_zip_contiguous(const T* a, const T* b, T* y, tf_u64 n, F f) {
    constexpr int V = 16 / sizeof(T);
    tf_u64 done = 0;
    if (tf_aligned16(a) && tf_aligned16(b) && tf_aligned16(y)) {
        const tf_u64 nv = n / V;
        TF_FOR(j, nv) {
            const tf_vec16 va = ((const tf_vec16*)a)[j], vb = ((const tf_vec16*)b)[j];
            tf_vec16 r = {{0u, 0u, 0u, 0u}};
#pragma unroll
            for (int q = 0; q < V; ++q)
                tf_lane<T>::set(r, q, Tr<T>::from(f(Tr<T>::to(tf_lane<T>::get(va, q)), Tr<T>::to(tf_lane<T>::get(vb, q)))));
            ((tf_vec16*)y)[j] = r;
        }
        done = nv * V;
    }
    TF_FOR(i, n - done) y[done + i] = Tr<T>::from(f(Tr<T>::to(a[done + i]), Tr<T>::to(b[done + i])));
}

template <typename A> TF_DEV bool tf_isnan(A x) { return x != x; }
// NaN-propagating maximum / minimum (numpy's maximum / minimum), as Float::max_nan.
template <typename A> TF_DEV A tf_max_nan(A a, A b) { return (a > b || a != a) ? a : b; }
template <typename A> TF_DEV A tf_min_nan(A a, A b) { return (a < b || a != a) ? a : b; }

// Warp-wide shuffles of 64-bit values through two 32-bit halves (works for any 8-byte type).
template <typename A> TF_DEV A tf_shfl_down(A v, int delta) {
    return __shfl_down_sync(0xffffffffu, v, delta);
}

// ---- tensor-core and async-copy instructions (sm_80+), one named helper each ----
#if TF_SM80
#ifndef TF_EMU
TF_DEV unsigned tf_smem_addr(const void* p) {
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
#endif

// One 16-byte copy global -> shared, zero-filled when `full` is false (nothing is read then).
TF_DEV void tf_cp_async16(void* dst, const void* src, bool full) {
#ifdef TF_EMU
    tf_emu_cp_async16(dst, src, full);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(tf_smem_addr(dst)), "l"(src), "r"(full ? 16 : 0));
#endif
}
TF_DEV void tf_cp_async_commit() {
#ifdef TF_EMU
    tf_emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;");
#endif
}
// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N> TF_DEV void tf_cp_async_wait() {
#ifdef TF_EMU
    tf_emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// ldmatrix.m8n8.x4(.trans).b16: lanes 8i..8i+7 give the rows of matrix i (16 bytes each).
TF_DEV void tf_ldmatrix_x4(unsigned (&r)[4], const unsigned short* p) {
#ifdef TF_EMU
    tf_emu_ldmatrix_x4(r, p, 0);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tf_smem_addr(p)));
#endif
}
TF_DEV void tf_ldmatrix_x4_trans(unsigned (&r)[4], const unsigned short* p) {
#ifdef TF_EMU
    tf_emu_ldmatrix_x4(r, p, 1);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(tf_smem_addr(p)));
#endif
}

// d += A (16×16, row) · B (16×8, col) in f32 from f16 or bf16 pairs (mma.sync m16n8k16).
template <bool BF16>
TF_DEV void tf_mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#ifdef TF_EMU
    tf_emu_mma16816(d, a, b0, b1, BF16);
#else
    if (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
}
#endif

#endif
