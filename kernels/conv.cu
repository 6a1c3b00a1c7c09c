// im2col / col2im (src/backend/cpu/conv.rs): sliding windows of [N, C, H, W] as columns
// [N, C*kh*kw, OH*OW] and back. im2col is a pure copy, so it is instantiated per element
// width; col2im sums, so per float type. col2im gathers (one thread per image pixel, over
// the windows that cover it) instead of scattering, so it needs no atomics.
#include "abi.h"
#include "common.cuh"

// One block per (image, channel) plane at a time, its threads across the output pixels: a
// thread finds its pixel's (oy, ox) once (one 32-bit div/mod when I is 32-bit) and writes that
// pixel's column in all kh·kw rows of the plane, so no per-element index decode remains.
// Consecutive threads read consecutive x and write consecutive columns. I is the pixel index
// type: 32-bit unless a plane has 2^32 output pixels or more.
template <typename T, typename I>
__device__ void im2col_planes(const T* x, const TfLayout& xl, T* out, const TfWindow& g, T pad) {
    const tf_u64 planes = g.n * g.c;
    const I ow = (I)g.ow, L = (I)(g.oh * g.ow);
    const long long h = (long long)g.h, w = (long long)g.w;
    for (tf_u64 r = blockIdx.x; r < planes; r += gridDim.x) {
        const tf_u64 plane = r * g.h * g.w;
        T* o = out + r * g.kh * g.kw * (tf_u64)L;
        for (I p = threadIdx.x; p < L; p += blockDim.x) {
            const I oy = p / ow, ox = p - oy * ow;
            const long long y0 = (long long)oy * (long long)g.sh - (long long)g.ph;
            const long long x0 = (long long)ox * (long long)g.sw - (long long)g.pw;
            T* col = o + p;
            for (tf_u64 i = 0; i < g.kh; ++i) {
                const long long y = y0 + (long long)(i * g.dh);
                const bool row_in = y >= 0 && y < h;
                for (tf_u64 j = 0; j < g.kw; ++j, col += L) {
                    const long long xx = x0 + (long long)(j * g.dw);
                    T v = pad;
                    if (row_in && xx >= 0 && xx < w) {
                        const tf_u64 e = plane + (tf_u64)(y * w + xx);
                        v = x[xl.contiguous ? xl.offset + e : tf_offset(xl, e)];
                    }
                    *col = v;
                }
            }
        }
    }
}

template <typename T>
__device__ void im2col_impl(const T* x, TfLayout xl, T* out, TfWindow g, T pad) {
    if (g.oh * g.ow < (1ull << 32)) {
        im2col_planes<T, tf_u32>(x, xl, out, g, pad);
    } else {
        im2col_planes<T, tf_u64>(x, xl, out, g, pad);
    }
}

#define IM2COL(T, N)                                                                              \
    extern "C" __global__ void im2col_##N(const T* x, TfLayout xl, T* out, TfWindow g, T pad) {      \
        im2col_impl<T>(x, xl, out, g, pad);                                                       \
    }
IM2COL(tf_u8, b1)
IM2COL(unsigned short, b2)
IM2COL(unsigned int, b4)
IM2COL(unsigned long long, b8)

template <typename T>
__device__ void col2im_impl(const T* cols, T* out, TfWindow g) {
    typedef typename Tr<T>::acc A;
    tf_u64 total = g.n * g.c * g.h * g.w;
    tf_u64 L = g.oh * g.ow;
    TF_FOR(i, total) {
        tf_u64 x = i % g.w;
        tf_u64 y = (i / g.w) % g.h;
        tf_u64 nc = i / (g.w * g.h);
        A acc = (A)0;
        for (tf_u64 k = 0; k < g.kh; ++k) {
            long long ty = (long long)(y + g.ph) - (long long)(k * g.dh);
            if (ty < 0 || ty % (long long)g.sh != 0) continue;
            tf_u64 oy = (tf_u64)ty / g.sh;
            if (oy >= g.oh) continue;
            for (tf_u64 j = 0; j < g.kw; ++j) {
                long long tx = (long long)(x + g.pw) - (long long)(j * g.dw);
                if (tx < 0 || tx % (long long)g.sw != 0) continue;
                tf_u64 ox = (tf_u64)tx / g.sw;
                if (ox >= g.ow) continue;
                acc += Tr<T>::to(cols[((nc * g.kh + k) * g.kw + j) * L + oy * g.ow + ox]);
            }
        }
        out[i] = Tr<T>::from(acc);
    }
}

#define COL2IM(T, N)                                                                              \
    extern "C" __global__ void col2im_##N(const T* cols, T* out, TfWindow g) { col2im_impl<T>(cols, out, g); }
COL2IM(float, f32)
COL2IM(double, f64)
COL2IM(tf_f16, f16)
COL2IM(tf_bf16, bf16)

// Max pooling's argument (BackendStorage::max_pool2d_indices): one thread per output pixel,
// scanning the taps of its window that lie inside the image; the flat index y*W + x of the
// first maximum, a NaN taking the place as in PyTorch (`val > max || isnan(val)`).
template <typename T>
__device__ void max_pool2d_indices_impl(const T* x, const TfLayout& xl, tf_i64* out, const TfWindow& g) {
    typedef typename Tr<T>::acc A;
    const tf_u64 total = g.n * g.c * g.oh * g.ow;
    const long long h = (long long)g.h, w = (long long)g.w;
    TF_FOR(i, total) {
        const tf_u64 ox = i % g.ow, oy = (i / g.ow) % g.oh, nc = i / (g.ow * g.oh);
        const long long y0 = (long long)(oy * g.sh) - (long long)g.ph;
        const long long x0 = (long long)(ox * g.sw) - (long long)g.pw;
        long long best_i = -1;
        A best = (A)0;
        for (tf_u64 k = 0; k < g.kh; ++k) {
            const long long y = y0 + (long long)(k * g.dh);
            if (y < 0 || y >= h) continue;
            for (tf_u64 j = 0; j < g.kw; ++j) {
                const long long xx = x0 + (long long)(j * g.dw);
                if (xx < 0 || xx >= w) continue;
                const tf_u64 e = nc * g.h * g.w + (tf_u64)(y * w + xx);
                const A v = Tr<T>::to(x[xl.contiguous ? xl.offset + e : tf_offset(xl, e)]);
                if (best_i < 0 || v > best || v != v) {
                    best = v;
                    best_i = y * w + xx;
                }
            }
        }
        out[i] = best_i < 0 ? 0 : (tf_i64)best_i;
    }
}

#define MAX_POOL_INDICES(T, N)                                                                      \
    extern "C" __global__ void max_pool2d_indices_##N(const T* x, TfLayout xl, tf_i64* out, TfWindow g) { \
        max_pool2d_indices_impl<T>(x, xl, out, g);                                                  \
    }
MAX_POOL_INDICES(float, f32)
MAX_POOL_INDICES(double, f64)
MAX_POOL_INDICES(tf_f16, f16)
MAX_POOL_INDICES(tf_bf16, bf16)
