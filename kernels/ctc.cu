// CTC loss (src/backend/cpu/ctc.rs): log-space forward-backward over the extended label
// sequence blank, l1, blank, ..., lS, blank. One block per sample: the threads split the
// extended positions s of one time step, and a barrier separates consecutive steps (step t
// reads step t-1 only). alpha and beta live in a global workspace [N, T, 2*S+1] (sequences
// can be long, so shared memory would cap them). Then the threads split the classes c of
// each step to form the gradient
//   d(-log P)/d lp(t, c) = -exp(lse_{s: l'_s = c}(alpha_t(s) + beta_t(s)) + nll - lp(t, c)).
// Instantiated for f32 and f64 (arithmetic in the storage type).
#include "abi.h"
#include "common.cuh"

template <typename A> TF_DEV A ctc_neg_inf() { return (A)(-__int_as_float(0x7f800000)); }

template <typename A> TF_DEV A ctc_lse(A x, A y) {
    A m = x > y ? x : y;
    if (m == ctc_neg_inf<A>()) return m;
    return m + log(exp(x - m) + exp(y - m));
}

template <typename A>
__device__ void ctc_impl(const A* lp, const tf_i64* tg, TfLayout tl, const tf_i64* in_len, const tf_i64* tg_len,
                         A* alpha, A* beta, A* loss, A* grad, tf_u64 T, tf_u64 N, tf_u64 C, tf_u64 S,
                         tf_u64 blank) {
    const A NINF = ctc_neg_inf<A>();
    const tf_u64 n = blockIdx.x;
    const tf_u64 lmax = 2 * S + 1;
    const tf_u64 tn = (tf_u64)in_len[n];
    const tf_u64 sn = (tf_u64)tg_len[n];
    const tf_u64 L = 2 * sn + 1;
    A* al = alpha + n * T * lmax;
    A* be = beta + n * T * lmax;
#define LP(t, c) lp[((t) * N + n) * C + (c)]
#define LAB(s) (((s) % 2 == 0) ? blank : (tf_u64)tg[tf_offset(tl, n * S + (s) / 2)])
#define SKIP(s) ((s) >= 2 && (s) % 2 == 1 && LAB(s) != LAB((s) - 2))
    // Forward variables.
    if (tn > 0) {
        for (tf_u64 s = threadIdx.x; s < L; s += blockDim.x) {
            al[s] = s == 0 ? LP(0, blank) : (s == 1 ? LP(0, LAB(1)) : NINF);
        }
    }
    __syncthreads();
    for (tf_u64 t = 1; t < tn; ++t) {
        const A* prev = al + (t - 1) * lmax;
        for (tf_u64 s = threadIdx.x; s < L; s += blockDim.x) {
            A a = prev[s];
            if (s >= 1) a = ctc_lse(a, prev[s - 1]);
            if (SKIP(s)) a = ctc_lse(a, prev[s - 2]);
            al[t * lmax + s] = a == NINF ? NINF : a + LP(t, LAB(s));
        }
        __syncthreads();
    }
    A ll = NINF;
    if (tn > 0) {
        const A* last = al + (tn - 1) * lmax;
        ll = L > 1 ? ctc_lse(last[L - 1], last[L - 2]) : last[0];
    } else if (sn == 0) {
        ll = (A)0;  // no frames and an empty target: the empty alignment
    }
    // Backward variables (only where the loss is finite).
    const bool finite = tn > 0 && ll != NINF;
    if (finite) {
        for (tf_u64 s = threadIdx.x; s < L; s += blockDim.x) {
            be[(tn - 1) * lmax + s] = s == L - 1 ? LP(tn - 1, blank) : (s == L - 2 ? LP(tn - 1, LAB(s)) : NINF);
        }
    }
    __syncthreads();
    if (finite) {
        for (tf_u64 k = 1; k < tn; ++k) {
            const tf_u64 t = tn - 1 - k;
            const A* next = be + (t + 1) * lmax;
            for (tf_u64 s = threadIdx.x; s < L; s += blockDim.x) {
                A b = next[s];
                if (s + 1 < L) b = ctc_lse(b, next[s + 1]);
                if (s + 2 < L && SKIP(s + 2)) b = ctc_lse(b, next[s + 2]);
                be[t * lmax + s] = b == NINF ? NINF : b + LP(t, LAB(s));
            }
            __syncthreads();
        }
    }
    // Gradient: every (t, c) of this sample, zero past the input length or with no alignment.
    for (tf_u64 i = threadIdx.x; i < T * C; i += blockDim.x) {
        const tf_u64 t = i / C, c = i % C;
        A g = (A)0;
        if (finite && t < tn) {
            A acc = NINF;
            if (c == blank) {
                for (tf_u64 s = 0; s < L; s += 2) acc = ctc_lse(acc, al[t * lmax + s] + be[t * lmax + s]);
            } else {
                for (tf_u64 j = 0; j < sn; ++j) {
                    if ((tf_u64)tg[tf_offset(tl, n * S + j)] == c) {
                        const tf_u64 s = 2 * j + 1;
                        acc = ctc_lse(acc, al[t * lmax + s] + be[t * lmax + s]);
                    }
                }
            }
            if (acc != NINF) g = -exp(acc - ll - LP(t, c));
        }
        grad[(t * N + n) * C + c] = g;
    }
    if (threadIdx.x == 0) loss[n] = -ll;
#undef LP
#undef LAB
#undef SKIP
}

#define CTC(T, N)                                                                                               \
    extern "C" __global__ void ctc_loss_##N(const T* lp, const tf_i64* tg, TfLayout tl, const tf_i64* in_len,   \
                                            const tf_i64* tg_len, T* alpha, T* beta, T* loss, T* grad,          \
                                            tf_u64 t, tf_u64 n, tf_u64 c, tf_u64 s, tf_u64 blank) {             \
        ctc_impl<T>(lp, tg, tl, in_len, tg_len, alpha, beta, loss, grad, t, n, c, s, blank);                    \
    }
CTC(float, f32)
CTC(double, f64)
