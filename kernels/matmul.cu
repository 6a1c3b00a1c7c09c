// Batched matrix product over strided views: C[z] = A[z] · B[z], C contiguous. A tiled
// shared-memory kernel with register blocking (64×64 tile, 16-deep, 4×4 per thread),
// accumulating in f32 for f32/f16/bf16 and in f64 for f64. Any strides, so a transposed view
// costs no copy. f16/bf16 go through tensor cores (`matmul_tc_*`, mma.sync m16n8k16 with
// f32 accumulation) on sm_80 and newer; the tiled kernel is their fallback.
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

// Tensor-core path for 16-bit floats. The block computes the same 64×64 tile as the tiled
// kernel (so the host launches both alike); its 8 warps sit 4 (rows) × 2 (columns), each
// owning 16×32 of C as four m16n8 accumulators. Per 16-deep k step the block stages A as
// row-major [64][16] and B as column-major [64][16] raw 16-bit words in shared memory (the
// strided global reads convert nothing), then every lane builds its fragments with the
// PTX ISA's m16n8k16 layout: lane = 4·group + t; A regs hold (row g | g+8, k 2t..2t+1 |
// 2t+8..2t+9), B regs (k 2t..2t+1 | 2t+8..2t+9, col g), C (row g | g+8, col 2t..2t+1).
#define TC_PAD 8  // 16 + 8 halfs per row: consecutive rows start 4 banks apart

TF_DEV unsigned int tc_pack(unsigned short lo, unsigned short hi) { return (unsigned int)lo | ((unsigned int)hi << 16); }

template <typename T, bool BF16>
__device__ void matmul_tc(const T* a, TfLayout ba, tf_u64 ars, tf_u64 acs, const T* b, TfLayout bb, tf_u64 brs,
                          tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ unsigned short As[TM][TK + TC_PAD];
    __shared__ unsigned short Bs[TN][TK + TC_PAD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int wr = (warp / 2) * 16, wc = (warp % 2) * 32;
    const tf_u64 row0 = (tf_u64)blockIdx.y * TM, col0 = (tf_u64)blockIdx.x * TN;
    for (tf_u64 z = blockIdx.z; z < batches; z += gridDim.z) {
        const T* pa = a + tf_offset(ba, z);
        const T* pb = b + tf_offset(bb, z);
        float acc[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[j][q] = 0.0f;
        for (tf_u64 k0 = 0; k0 < k; k0 += TK) {
            for (int s = threadIdx.x; s < TM * TK; s += blockDim.x) {
                int r = s / TK, p = s % TK;
                tf_u64 gi = row0 + r, gp = k0 + p;
                As[r][p] = (gi < m && gp < k) ? pa[gi * ars + gp * acs].bits : (unsigned short)0;
            }
            for (int s = threadIdx.x; s < TN * TK; s += blockDim.x) {
                int q = s / TK, p = s % TK;
                tf_u64 gp = k0 + p, gj = col0 + q;
                Bs[q][p] = (gp < k && gj < n) ? pb[gp * brs + gj * bcs].bits : (unsigned short)0;
            }
            __syncthreads();
            unsigned int a0 = tc_pack(As[wr + g][2 * t], As[wr + g][2 * t + 1]);
            unsigned int a1 = tc_pack(As[wr + g + 8][2 * t], As[wr + g + 8][2 * t + 1]);
            unsigned int a2 = tc_pack(As[wr + g][2 * t + 8], As[wr + g][2 * t + 9]);
            unsigned int a3 = tc_pack(As[wr + g + 8][2 * t + 8], As[wr + g + 8][2 * t + 9]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int cn = wc + 8 * j + g;
                unsigned int b0 = tc_pack(Bs[cn][2 * t], Bs[cn][2 * t + 1]);
                unsigned int b1 = tc_pack(Bs[cn][2 * t + 8], Bs[cn][2 * t + 9]);
                if (BF16) {
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                        "{%0,%1,%2,%3};"
                        : "+f"(acc[j][0]), "+f"(acc[j][1]), "+f"(acc[j][2]), "+f"(acc[j][3])
                        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
                } else {
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                        "{%0,%1,%2,%3};"
                        : "+f"(acc[j][0]), "+f"(acc[j][1]), "+f"(acc[j][2]), "+f"(acc[j][3])
                        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
                }
            }
            __syncthreads();
        }
        T* pc = c + z * m * n;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                tf_u64 gi = row0 + wr + g + (q >= 2 ? 8 : 0);
                tf_u64 gj = col0 + wc + 8 * j + 2 * t + (q & 1);
                if (gi < m && gj < n) pc[gi * n + gj] = Tr<T>::from(acc[j][q]);
            }
        }
    }
#else
    matmul_tiled<T>(a, ba, ars, acs, b, bb, brs, bcs, c, batches, m, n, k);
#endif
}

#define MATMUL_TC(T, N, IS_BF16)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) matmul_tc_##N(const T* a, TfLayout ba, tf_u64 ars,       \
        tf_u64 acs, const T* b, TfLayout bb, tf_u64 brs, tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, tf_u64 n, \
        tf_u64 k) {                                                                                           \
        matmul_tc<T, IS_BF16>(a, ba, ars, acs, b, bb, brs, bcs, c, batches, m, n, k);                         \
    }
MATMUL_TC(tf_f16, f16, false)
MATMUL_TC(tf_bf16, bf16, true)
