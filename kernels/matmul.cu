// Batched matrix product over strided views: C[z] = A[z] · B[z], C contiguous. A tiled
// shared-memory kernel with register blocking (64×64 tile, 16-deep, 4×4 per thread),
// accumulating in f32 for f32/f16/bf16 and in f64 for f64. Any strides, so a transposed view
// costs no copy. (A tensor-core mma.sync path for f16/bf16 is future work; this is the
// correct fallback.)
#include "abi.h"
#include "common.cuh"

#define TM 64
#define TN 64
#define TK 16

template <typename T>
__device__ void matmul_tiled(const T* a, TfLayout ba, tf_u64 ars, tf_u64 acs, const T* b, TfLayout bb, tf_u64 brs,
                             tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {
    typedef typename Tr<T>::acc A;
    // +1 column of padding: the transposing stores do not all hit one bank.
    __shared__ A As[TK][TM + 1];
    __shared__ A Bs[TK][TN + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const tf_u64 row0 = (tf_u64)blockIdx.y * TM, col0 = (tf_u64)blockIdx.x * TN;
    for (tf_u64 z = blockIdx.z; z < batches; z += gridDim.z) {
        const T* pa = a + tf_offset(ba, z);
        const T* pb = b + tf_offset(bb, z);
        A acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = (A)0;
        for (tf_u64 k0 = 0; k0 < k; k0 += TK) {
            for (int t = threadIdx.x; t < TM * TK; t += blockDim.x) {
                int r = t / TK, p = t % TK;
                tf_u64 gi = row0 + r, gp = k0 + p;
                As[p][r] = (gi < m && gp < k) ? Tr<T>::to(pa[gi * ars + gp * acs]) : (A)0;
            }
            for (int t = threadIdx.x; t < TK * TN; t += blockDim.x) {
                int p = t / TN, q = t % TN;
                tf_u64 gp = k0 + p, gj = col0 + q;
                Bs[p][q] = (gp < k && gj < n) ? Tr<T>::to(pb[gp * brs + gj * bcs]) : (A)0;
            }
            __syncthreads();
#pragma unroll
            for (int p = 0; p < TK; ++p) {
                A ra[4], rb[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) ra[i] = As[p][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; ++j) rb[j] = Bs[p][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fma(ra[i], rb[j], acc[i][j]);
            }
            __syncthreads();
        }
        T* pc = c + z * m * n;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            tf_u64 gi = row0 + ty + 16 * i;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                tf_u64 gj = col0 + tx + 16 * j;
                if (gi < m && gj < n) pc[gi * n + gj] = Tr<T>::from(acc[i][j]);
            }
        }
    }
}

#define MATMUL(T, N)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) matmul_##N(const T* a, TfLayout ba, tf_u64 ars, tf_u64 acs, \
        const T* b, TfLayout bb, tf_u64 brs, tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {  \
        matmul_tiled<T>(a, ba, ars, acs, b, bb, brs, bcs, c, batches, m, n, k);                               \
    }
MATMUL(float, f32)
MATMUL(double, f64)
MATMUL(tf_f16, f16)
MATMUL(tf_bf16, bf16)
