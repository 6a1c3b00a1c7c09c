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

// f32 on the CUDA cores for larger products: 128×128 tiles 8 deep, 8×8 outputs per thread
// (two 4×4 blocks 64 apart in each direction, so a warp's shared-memory reads are 16-byte
// vectors without conflicts), the next tile's elements fetched into registers while the
// current one is multiplied. Global reads follow whichever operand stride is 1.
#define SG_BM 128
#define SG_BK 8
#define SG_PAD 4  // rows of 132 floats: a column of 8 k lands on 8 distinct banks

TF_DEV float4 tf_ld4(const float* p) { return *(const float4*)p; }

__device__ void matmul_simt_f32_impl(const float* a, TfLayout ba, tf_u64 ars, tf_u64 acs, const float* b, TfLayout bb,
                                     tf_u64 brs, tf_u64 bcs, float* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {
    alignas(16) __shared__ float As[2][SG_BK][SG_BM + SG_PAD];
    alignas(16) __shared__ float Bs[2][SG_BK][SG_BM + SG_PAD];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const tf_u64 row0 = (tf_u64)blockIdx.y * SG_BM, col0 = (tf_u64)blockIdx.x * SG_BM;
    // Element q (0..3) of this thread's share of a tile: (row, k) for A, (k, col) for B.
    const bool a_mn = ars == 1 && acs != 1, b_n = bcs == 1;
    int ar[4], ak[4], bk[4], bc[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const int e = tid + 256 * q;
        ar[q] = a_mn ? e % SG_BM : e / SG_BK;
        ak[q] = a_mn ? e / SG_BM : e % SG_BK;
        bk[q] = b_n ? e / SG_BM : e % SG_BK;
        bc[q] = b_n ? e % SG_BM : e / SG_BK;
    }
    for (tf_u64 z = blockIdx.z; z < batches; z += gridDim.z) {
        const float* pa = a + tf_offset(ba, z);
        const float* pb = b + tf_offset(bb, z);
        float ra[4], rb[4];
        auto fetch = [&](tf_u64 k0) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const tf_u64 gi = row0 + ar[q], ga = k0 + ak[q], gb = k0 + bk[q], gj = col0 + bc[q];
                ra[q] = (gi < m && ga < k) ? pa[gi * ars + ga * acs] : 0.0f;
                rb[q] = (gb < k && gj < n) ? pb[gb * brs + gj * bcs] : 0.0f;
            }
        };
        auto stash = [&](int s) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                As[s][ak[q]][ar[q]] = ra[q];
                Bs[s][bk[q]][bc[q]] = rb[q];
            }
        };
        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
        fetch(0);
        stash(0);
        __syncthreads();
        const tf_u64 ktiles = (k + SG_BK - 1) / SG_BK;
        for (tf_u64 kt = 0; kt < ktiles; ++kt) {
            const int s = (int)(kt & 1);
            if (kt + 1 < ktiles) fetch((kt + 1) * SG_BK);
#pragma unroll
            for (int p = 0; p < SG_BK; ++p) {
                const float4 a0 = tf_ld4(&As[s][p][ty * 4]), a1 = tf_ld4(&As[s][p][64 + ty * 4]);
                const float4 b0 = tf_ld4(&Bs[s][p][tx * 4]), b1 = tf_ld4(&Bs[s][p][64 + tx * 4]);
                const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
            }
            if (kt + 1 < ktiles) stash(s ^ 1);
            __syncthreads();
        }
        float* pc = c + z * m * n;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const tf_u64 gi = row0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
            if (gi >= m) continue;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const tf_u64 gj = col0 + h * 64 + tx * 4;
                if (gj + 3 < n && n % 4 == 0) {
                    *(float4*)&pc[gi * n + gj] = make_float4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (gj + j < n) pc[gi * n + gj + j] = acc[i][4 * h + j];
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) matmul_simt_f32(const float* a, TfLayout ba, tf_u64 ars, tf_u64 acs,
    const float* b, TfLayout bb, tf_u64 brs, tf_u64 bcs, float* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {
    matmul_simt_f32_impl(a, ba, ars, acs, b, bb, brs, bcs, c, batches, m, n, k);
}

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
#if TF_SM80
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
                const unsigned af[4] = {a0, a1, a2, a3};
                tf_mma16816<BF16>(acc[j], af, b0, b1);
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

// ---- Tensor-core fast path: 128×128 block tiles, 32 deep, two shared-memory stages ----
// For f16/bf16 operands whose rows start on 16 bytes: each operand is read either along k
// ("k-major": A row-major, B column-major, i.e. a transposed weight) or along its rows/columns
// ("mn-major": A transposed, B row-major), 16 bytes per cp.async; the host picks one of the
// four kernels (`matmul_mma_<dtype>_<a><b>`, each `k` or `m`/`n`) and falls back to `matmul_tc_*` for
// anything else. 8 warps sit 2 (rows) × 4 (columns), each owning 64×32 of C as 4×4 m16n8
// accumulators fed by ldmatrix (with .trans for mn-major tiles). A tile element out of range
// is zero-filled by cp.async's source size, so edges need no separate path.
#define MMA_BM 128
#define MMA_BN 128
#define MMA_BK 32
#define MMA_KROW (MMA_BK + 8)   // k-major tile row (halfs): rows 80 bytes apart, conflict-free ldmatrix
#define MMA_MNROW (MMA_BM + 8)  // mn-major tile row (halfs): rows 272 bytes apart
#define MMA_TILE 5120           // halfs per operand tile: max(128 × 40, 32 × 136)

// Stages rows [r0, r0+128) × k [k0, k0+32) of one operand into `tile` (512 chunks of 8
// halfs, two per thread). `rs`/`ks`: strides along rows and k; `rows`: rows in range.
template <bool KMAJOR>
TF_DEV void mma_stage(unsigned short* tile, const unsigned short* p, tf_u64 rs, tf_u64 ks, tf_u64 r0, tf_u64 rows,
                      tf_u64 k0, tf_u64 k) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = threadIdx.x + 256 * i;
        if (KMAJOR) {
            const int r = c >> 2, kc = (c & 3) * 8;
            const bool in = r0 + r < rows && k0 + kc < k;
            const unsigned short* src = in ? p + (r0 + r) * rs + (k0 + kc) : p;
            tf_cp_async16(tile + r * MMA_KROW + kc, src, in);
        } else {
            const int kr = c >> 4, rc = (c & 15) * 8;
            const bool in = k0 + kr < k && r0 + rc < rows;
            const unsigned short* src = in ? p + (k0 + kr) * ks + (r0 + rc) : p;
            tf_cp_async16(tile + kr * MMA_MNROW + rc, src, in);
        }
    }
}

// A fragment (16 rows × 16 k at `m`, `kk`): registers (rows 0-7 | 8-15) × (k 0-7 | 8-15).
template <bool KMAJOR>
TF_DEV void mma_frag_a(unsigned (&r)[4], const unsigned short* tile, int m, int kk, int lane) {
    const int i = lane >> 3, j = lane & 7;
    if (KMAJOR) tf_ldmatrix_x4(r, tile + (m + j + (i & 1) * 8) * MMA_KROW + kk + (i >> 1) * 8);
    else tf_ldmatrix_x4_trans(r, tile + (kk + j + (i >> 1) * 8) * MMA_MNROW + m + (i & 1) * 8);
}
// B fragments of two n8 tiles at `n` (16 columns × 16 k): {b0, b1} of tile n, then of n + 8.
template <bool KMAJOR>
TF_DEV void mma_frag_b(unsigned (&r)[4], const unsigned short* tile, int n, int kk, int lane) {
    const int i = lane >> 3, j = lane & 7;
    if (KMAJOR) tf_ldmatrix_x4(r, tile + (n + j + (i >> 1) * 8) * MMA_KROW + kk + (i & 1) * 8);
    else tf_ldmatrix_x4_trans(r, tile + (kk + j + (i & 1) * 8) * MMA_MNROW + n + (i >> 1) * 8);
}

template <typename T, bool BF16, bool AK, bool BK>
__device__ void matmul_mma(const T* a, TfLayout ba, tf_u64 ars, tf_u64 acs, const T* b, TfLayout bb, tf_u64 brs,
                           tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, tf_u64 n, tf_u64 k) {
#if TF_SM80
    alignas(16) __shared__ unsigned short smem[2][2][MMA_TILE];  // [stage][A | B]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const tf_u64 row0 = (tf_u64)blockIdx.y * MMA_BM, col0 = (tf_u64)blockIdx.x * MMA_BN;
    const tf_u64 ktiles = (k + MMA_BK - 1) / MMA_BK;
    for (tf_u64 z = blockIdx.z; z < batches; z += gridDim.z) {
        const unsigned short* pa = (const unsigned short*)(a + tf_offset(ba, z));
        const unsigned short* pb = (const unsigned short*)(b + tf_offset(bb, z));
        float acc[4][4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;
        // B's rows are C's columns: its row stride is bcs and its k stride brs.
        mma_stage<AK>(smem[0][0], pa, ars, acs, row0, m, 0, k);
        mma_stage<BK>(smem[0][1], pb, bcs, brs, col0, n, 0, k);
        tf_cp_async_commit();
        for (tf_u64 kt = 0; kt < ktiles; ++kt) {
            const int s = (int)(kt & 1);
            if (kt + 1 < ktiles) {
                mma_stage<AK>(smem[s ^ 1][0], pa, ars, acs, row0, m, (kt + 1) * MMA_BK, k);
                mma_stage<BK>(smem[s ^ 1][1], pb, bcs, brs, col0, n, (kt + 1) * MMA_BK, k);
                tf_cp_async_commit();
                tf_cp_async_wait<1>();
            } else {
                tf_cp_async_wait<0>();
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < MMA_BK; kk += 16) {
                unsigned fa[4][4], fb[2][4];
#pragma unroll
                for (int i = 0; i < 4; ++i) mma_frag_a<AK>(fa[i], smem[s][0], wm + 16 * i, kk, lane);
#pragma unroll
                for (int j = 0; j < 2; ++j) mma_frag_b<BK>(fb[j], smem[s][1], wn + 16 * j, kk, lane);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        tf_mma16816<BF16>(acc[i][j], fa[i], fb[j >> 1][(j & 1) * 2], fb[j >> 1][(j & 1) * 2 + 1]);
            }
            __syncthreads();
        }
        T* pc = c + z * m * n;
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const tf_u64 gi = row0 + wm + 16 * i + g + 8 * h, gj = col0 + wn + 8 * j + 2 * t;
                    if (gi >= m) continue;
                    if (gj < n) pc[gi * n + gj] = Tr<T>::from(acc[i][j][2 * h]);
                    if (gj + 1 < n) pc[gi * n + gj + 1] = Tr<T>::from(acc[i][j][2 * h + 1]);
                }
    }
#else
    __trap();  // the host selects these kernels on sm_80 and newer only
#endif
}

#define MATMUL_MMA(T, N, IS_BF16, AK, BK, SUFFIX)                                                              \
    extern "C" __global__ void __launch_bounds__(256, 2) matmul_mma_##N##_##SUFFIX(const T* a, TfLayout ba,         \
        tf_u64 ars, tf_u64 acs, const T* b, TfLayout bb, tf_u64 brs, tf_u64 bcs, T* c, tf_u64 batches, tf_u64 m, \
        tf_u64 n, tf_u64 k) {                                                                                   \
        matmul_mma<T, IS_BF16, AK, BK>(a, ba, ars, acs, b, bb, brs, bcs, c, batches, m, n, k);                  \
    }
MATMUL_MMA(tf_f16, f16, false, true, true, kk)
MATMUL_MMA(tf_f16, f16, false, true, false, kn)
MATMUL_MMA(tf_f16, f16, false, false, true, mk)
MATMUL_MMA(tf_f16, f16, false, false, false, mn)
MATMUL_MMA(tf_bf16, bf16, true, true, true, kk)
MATMUL_MMA(tf_bf16, bf16, true, true, false, kn)
MATMUL_MMA(tf_bf16, bf16, true, false, true, mk)
MATMUL_MMA(tf_bf16, bf16, true, false, false, mn)
