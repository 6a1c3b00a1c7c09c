// Fused optimizer updates, one pass over parameters, gradients and state, with the
// arithmetic of src/backend/cpu/optim.rs (constants rounded to the accumulation type first).
#include "abi.h"
#include "common.cuh"

template <typename T>
__device__ void optim_impl(T* param, const T* grad, T* s0, T* s1, tf_u64 n, TfOptim o) {
    typedef typename Tr<T>::acc A;
    TF_FOR(i, n) {
        A p = Tr<T>::to(param[i]), g = Tr<T>::to(grad[i]);
        A a = s0 ? Tr<T>::to(s0[i]) : (A)0, b = s1 ? Tr<T>::to(s1[i]) : (A)0;
        if (o.rule == TF_OPTIM_SGD) {
            A d = g + (A)o.weight_decay * p;
            if (o.a != 0.0) {
                a = (A)o.a * a + (A)(1.0 - o.b) * d;
                d = o.flag ? d + (A)o.a * a : a;
            }
            p = p - (A)o.lr * d;
        } else if (o.rule == TF_OPTIM_ADAM) {
            if (o.flag) p = p * (A)(1.0 - o.lr * o.weight_decay);
            else g = g + (A)o.weight_decay * p;
            a = (A)o.a * a + (A)(1.0 - o.a) * g;
            b = (A)o.b * b + (A)(1.0 - o.b) * g * g;
            A m_hat = a / (A)o.bc1, v_hat = b / (A)o.bc2;
            p = p - (A)o.lr * m_hat / (sqrt(v_hat) + (A)o.eps);
        } else if (o.rule == TF_OPTIM_RMSPROP) {
            g = g + (A)o.weight_decay * p;
            a = (A)o.a * a + (A)(1.0 - o.a) * g * g;
            A d = g / (sqrt(a) + (A)o.eps);
            if (o.b != 0.0) {
                b = (A)o.b * b + d;
                p = p - (A)o.lr * b;
            } else {
                p = p - (A)o.lr * d;
            }
        } else if (o.rule == TF_OPTIM_ADAGRAD) {
            g = g + (A)o.weight_decay * p;
            a = a + g * g;
            p = p - (A)o.lr * g / (sqrt(a) + (A)o.eps);
        } else {
            __trap();  // a rule the host never sends: fail loudly
        }
        param[i] = Tr<T>::from(p);
        if (s0) s0[i] = Tr<T>::from(a);
        if (s1) s1[i] = Tr<T>::from(b);
    }
}

#define OPTIM(T, N)                                                                                   \
    extern "C" __global__ void optim_##N(T* p, const T* g, T* s0, T* s1, tf_u64 n, TfOptim o) {        \
        optim_impl<T>(p, g, s0, s1, n, o);                                                            \
    }
OPTIM(float, f32)
OPTIM(double, f64)
OPTIM(tf_f16, f16)
OPTIM(tf_bf16, bf16)
