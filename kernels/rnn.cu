// The LSTM cell's elementwise part, forward and backward, with the formulas of
// src/backend/cpu/rnn.rs (gate order i, f, g, o as PyTorch's). One thread per (row, unit):
// it reads the unit's four gates of the row and writes the unit's outputs. Every operand is
// contiguous (the host copies a strided one first). Instantiated for f32 and f64.
#include "abi.h"
#include "common.cuh"

template <typename A> TF_DEV A rnn_sigmoid(A x) { return (A)1 / ((A)1 + exp(-x)); }

// xg, hg, acts: [N, 4H]; c, h_out, c_out: [N, H].
template <typename A>
__device__ void lstm_cell_impl(const A* xg, const A* hg, const A* c, A* h_out, A* c_out, A* acts, tf_u64 n,
                               tf_u64 h) {
    TF_FOR(k, n * h) {
        const tf_u64 r = k / h, j = k % h, g = r * 4 * h + j;
        const A i = rnn_sigmoid(xg[g] + hg[g]);
        const A f = rnn_sigmoid(xg[g + h] + hg[g + h]);
        const A gg = tanh(xg[g + 2 * h] + hg[g + 2 * h]);
        const A o = rnn_sigmoid(xg[g + 3 * h] + hg[g + 3 * h]);
        const A cn = f * c[k] + i * gg;
        c_out[k] = cn;
        h_out[k] = o * tanh(cn);
        acts[g] = i;
        acts[g + h] = f;
        acts[g + 2 * h] = gg;
        acts[g + 3 * h] = o;
    }
}

// acts: [N, 4H]; c, cn, dh, dy, dc, dc_out: [N, H]; dg: [N, 4H].
template <typename A>
__device__ void lstm_cell_backward_impl(const A* acts, const A* c, const A* cn, const A* dh, const A* dy,
                                        const A* dc, A* dg, A* dc_out, tf_u64 n, tf_u64 h) {
    TF_FOR(k, n * h) {
        const tf_u64 r = k / h, j = k % h, g = r * 4 * h + j;
        const A i = acts[g], f = acts[g + h], gg = acts[g + 2 * h], o = acts[g + 3 * h];
        const A tc = tanh(cn[k]);
        const A dht = dh[k] + dy[k];
        const A dct = dc[k] + dht * o * ((A)1 - tc * tc);
        dc_out[k] = dct * f;
        dg[g] = dct * gg * i * ((A)1 - i);
        dg[g + h] = dct * c[k] * f * ((A)1 - f);
        dg[g + 2 * h] = dct * i * ((A)1 - gg * gg);
        dg[g + 3 * h] = dht * tc * o * ((A)1 - o);
    }
}

#define RNN(T, N)                                                                                           \
    extern "C" __global__ void lstm_cell_##N(const T* xg, const T* hg, const T* c, T* h_out, T* c_out,      \
                                             T* acts, tf_u64 n, tf_u64 h) {                                 \
        lstm_cell_impl<T>(xg, hg, c, h_out, c_out, acts, n, h);                                             \
    }                                                                                                       \
    extern "C" __global__ void lstm_cell_backward_##N(const T* acts, const T* c, const T* cn, const T* dh,  \
                                                      const T* dy, const T* dc, T* dg, T* dc_out, tf_u64 n, \
                                                      tf_u64 h) {                                           \
        lstm_cell_backward_impl<T>(acts, c, cn, dh, dy, dc, dg, dc_out, n, h);                              \
    }
RNN(float, f32)
RNN(double, f64)
