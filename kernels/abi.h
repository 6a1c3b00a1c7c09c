/* The ABI between the Rust host code and the CUDA kernels: plain C structs passed to kernels
 * BY VALUE (no per-launch device copies of metadata) and the op codes. This file is the one
 * definition; build.rs (feature `regen-abi`) runs bindgen on it to produce
 * src/backend/cuda/abi.rs. Only fixed-width integer typedefs are used so that NVRTC (which has
 * no <stdint.h>) and bindgen read the same layout. */
#ifndef TF_ABI_H
#define TF_ABI_H

typedef unsigned int tf_u32;
typedef unsigned long long tf_u64;

#define TF_MAX_DIMS 8

/* Where element i (row-major over dims) sits in its buffer:
 * offset + sum_k idx_k * strides[k]. A stride of 0 broadcasts. `contiguous` != 0 lets a kernel
 * skip the div/mod walk (element i is at offset + i). */
typedef struct TfLayout {
    tf_u32 rank;
    tf_u32 contiguous;
    tf_u64 offset;
    tf_u64 dims[TF_MAX_DIMS];
    tf_u64 strides[TF_MAX_DIMS];
} TfLayout;

/* Parameters of one fused optimizer update (see OptimRule in src/backend/mod.rs). The host
 * folds the bias corrections so every element does the same arithmetic as the CPU. */
typedef struct TfOptim {
    tf_u32 rule;     /* TF_OPTIM_* */
    tf_u32 flag;     /* SGD: nesterov; Adam: decoupled */
    double lr;
    double a;        /* SGD momentum | Adam beta1 | RMSprop alpha */
    double b;        /* SGD dampening | Adam beta2 | RMSprop momentum */
    double eps;
    double weight_decay;
    double bc1;      /* Adam: 1 - beta1^step */
    double bc2;      /* Adam: 1 - beta2^step */
} TfOptim;

/* A 2-D sliding window over [n, c, h, w] with output oh x ow (see Window2d in
 * src/backend/mod.rs), for im2col / col2im. */
typedef struct TfWindow {
    tf_u64 n, c, h, w;
    tf_u64 kh, kw, sh, sw, ph, pw, dh, dw;
    tf_u64 oh, ow;
} TfWindow;

/* The op codes of UnaryOp, BinaryOp, CmpOp and ReduceOp are generated from their Rust
 * tables into ops.h (build.rs); the families that switch on them include it. */

enum TfScalarOp { TF_SCALAR_AFFINE = 0, TF_SCALAR_POWF = 1, TF_SCALAR_CLAMP = 2 };

enum TfOptimRule { TF_OPTIM_SGD = 0, TF_OPTIM_ADAM = 1, TF_OPTIM_RMSPROP = 2, TF_OPTIM_ADAGRAD = 3 };

#endif
