// im2col / col2im (src/backend/cpu/conv.rs): sliding windows of [N, C, H, W] as columns
// [N, C*kh*kw, OH*OW] and back. im2col is a pure copy, so it is instantiated per element
// width; col2im sums, so per float type. col2im gathers (one thread per image pixel, over
// the windows that cover it) instead of scattering, so it needs no atomics.
#include "abi.h"
#include "common.cuh"

template <typename T>
__device__ void im2col_impl(const T* x, TfLayout xl, T* out, TfWindow g, T pad) {
    tf_u64 total = g.n * g.c * g.kh * g.kw * g.oh * g.ow;
    TF_FOR(i, total) {
        tf_u64 r = i;
        tf_u64 ox = r % g.ow; r /= g.ow;
        tf_u64 oy = r % g.oh; r /= g.oh;
        tf_u64 j = r % g.kw; r /= g.kw;
        tf_u64 k = r % g.kh; r /= g.kh;  // r = n*C + c
        long long y = (long long)(oy * g.sh + k * g.dh) - (long long)g.ph;
        long long xx = (long long)(ox * g.sw + j * g.dw) - (long long)g.pw;
        T v = pad;
        if (y >= 0 && xx >= 0 && y < (long long)g.h && xx < (long long)g.w) {
            v = x[tf_offset(xl, (r * g.h + (tf_u64)y) * g.w + (tf_u64)xx)];
        }
        out[i] = v;
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
