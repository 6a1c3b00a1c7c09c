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

enum TfUnaryOp {
    TF_UNARY_NEG = 0, TF_UNARY_ABS = 1, TF_UNARY_EXP = 2, TF_UNARY_LOG = 3, TF_UNARY_SQRT = 4,
    TF_UNARY_RSQRT = 5, TF_UNARY_RECIP = 6, TF_UNARY_SQR = 7, TF_UNARY_SIN = 8, TF_UNARY_COS = 9,
    TF_UNARY_TANH = 10, TF_UNARY_SIGMOID = 11, TF_UNARY_RELU = 12, TF_UNARY_GELU_ERF = 13,
    TF_UNARY_GELU_TANH = 14, TF_UNARY_SILU = 15, TF_UNARY_SOFTPLUS = 16, TF_UNARY_SIGN = 17,
    TF_UNARY_FLOOR = 18, TF_UNARY_CEIL = 19, TF_UNARY_ROUND = 20
};

enum TfScalarOp { TF_SCALAR_AFFINE = 0, TF_SCALAR_POWF = 1, TF_SCALAR_CLAMP = 2 };

enum TfBinaryOp {
    TF_BINARY_ADD = 0, TF_BINARY_SUB = 1, TF_BINARY_MUL = 2, TF_BINARY_DIV = 3, TF_BINARY_POW = 4,
    TF_BINARY_MAXIMUM = 5, TF_BINARY_MINIMUM = 6
};

enum TfCmpOp { TF_CMP_EQ = 0, TF_CMP_NE = 1, TF_CMP_LT = 2, TF_CMP_LE = 3, TF_CMP_GT = 4, TF_CMP_GE = 5 };

enum TfReduceOp {
    TF_REDUCE_SUM = 0, TF_REDUCE_MEAN = 1, TF_REDUCE_MAX = 2, TF_REDUCE_MIN = 3, TF_REDUCE_PROD = 4,
    TF_REDUCE_ARGMAX = 5, TF_REDUCE_ARGMIN = 6
};

enum TfOptimRule { TF_OPTIM_SGD = 0, TF_OPTIM_ADAM = 1, TF_OPTIM_RMSPROP = 2, TF_OPTIM_ADAGRAD = 3 };

#endif
