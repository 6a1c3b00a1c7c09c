//! The dispatch trait: the list of primitive kernels that every backend implements.
//!
//! There are no default methods, so adding a primitive makes the compiler ask for both the
//! CPU and the CUDA implementation. Everything else in the engine is composed from these.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::{DType, Device, Error, Layout, Result, Shape};

macro_rules! op_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $kname:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name { $($(#[$vdoc])* $variant),* }
        impl $name {
            /// The code kernels switch on: the op's position in its table. build.rs writes
            /// the same table into the kernels' `ops.h`, so the two cannot disagree.
            pub fn code(self) -> u32 {
                self as u32
            }
            /// Every variant, for tests and tables.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The name shared by the CPU kernel, the CUDA kernel and error messages.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $kname),* }
            }
        }
    };
}

op_enum!(
    /// Elementwise functions of one float tensor.
    UnaryOp {
        /// `-x`.
        Neg => "neg",
        /// `|x|`.
        Abs => "abs",
        /// `eˣ`.
        Exp => "exp",
        /// The natural logarithm.
        Log => "log",
        /// `√x`.
        Sqrt => "sqrt",
        /// `1 / √x`.
        Rsqrt => "rsqrt",
        /// `1 / x`.
        Recip => "recip",
        /// `x²`.
        Sqr => "sqr",
        /// The sine.
        Sin => "sin",
        /// The cosine.
        Cos => "cos",
        /// The hyperbolic tangent.
        Tanh => "tanh",
        /// The logistic function `1 / (1 + e⁻ˣ)`.
        Sigmoid => "sigmoid",
        /// `max(x, 0)`.
        Relu => "relu",
        /// GELU, exact: `½x(1 + erf(x / √2))`.
        GeluErf => "gelu_erf",
        /// GELU, tanh approximation: `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
        GeluTanh => "gelu_tanh",
        /// `x · sigmoid(x)`.
        Silu => "silu",
        /// `ln(1 + eˣ)`.
        Softplus => "softplus",
        /// −1, 0 or 1 by the sign of `x` (zeros and NaN pass through).
        Sign => "sign",
        /// Rounds down to an integer.
        Floor => "floor",
        /// Rounds up to an integer.
        Ceil => "ceil",
        /// Rounds to the nearest integer, ties to even.
        Round => "round",
    }
);

op_enum!(
    /// Elementwise functions of two tensors of one dtype, broadcast to one shape.
    BinaryOp {
        /// `lhs + rhs`.
        Add => "add",
        /// `lhs - rhs`.
        Sub => "sub",
        /// `lhs * rhs`.
        Mul => "mul",
        /// `lhs / rhs`.
        Div => "div",
        /// `lhs` raised to the power `rhs` (float dtypes).
        Pow => "pow",
        /// The larger of the two; for floats NaN wins.
        Maximum => "maximum",
        /// The smaller of the two; for floats NaN wins.
        Minimum => "minimum",
        /// ReLU's gradient: `lhs` (the incoming gradient) where `rhs` (ReLU's input) is
        /// above 0 or NaN, else 0 — PyTorch's `threshold_backward` (float dtypes).
        ReluBackward => "relu_backward",
    }
);

op_enum!(
    /// Comparisons; the result is a u8 mask (1 = true).
    CmpOp {
        /// `lhs == rhs`.
        Eq => "eq",
        /// `lhs != rhs`.
        Ne => "ne",
        /// `lhs < rhs`.
        Lt => "lt",
        /// `lhs <= rhs`.
        Le => "le",
        /// `lhs > rhs`.
        Gt => "gt",
        /// `lhs >= rhs`.
        Ge => "ge",
    }
);

op_enum!(
    /// Reductions over a set of axes. ArgMax/ArgMin take one axis and give i64.
    ReduceOp {
        /// The sum.
        Sum => "sum",
        /// The arithmetic mean.
        Mean => "mean",
        /// The largest element.
        Max => "max",
        /// The smallest element.
        Min => "min",
        /// The product.
        Prod => "prod",
        /// The index of the largest element (i64).
        ArgMax => "argmax",
        /// The index of the smallest element (i64).
        ArgMin => "argmin",
    }
);

/// A scalar map `x -> f(x)` with parameters, applied elementwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarOp {
    /// `x * mul + add`
    Affine {
        /// The factor.
        mul: f64,
        /// The offset added after scaling.
        add: f64,
    },
    /// `x ^ e`
    Powf(f64),
    /// `min(max(x, lo), hi)`
    Clamp {
        /// The lower bound.
        lo: f64,
        /// The upper bound.
        hi: f64,
    },
}

/// [`BackendStorage::matmul_lowered`] from casts and a product in `low`.
pub(crate) fn matmul_by_casts<S: BackendStorage>(a: &S, la: &Layout, b: &S, lb: &Layout, low: DType) -> Result<S> {
    // Each operand cast once: batch dims broadcast by stride 0 are cast at size 1 and
    // broadcast again (a weight shared by a batch is not copied per batch element).
    let cast = |x: &S, l: &Layout| -> Result<(S, Layout)> {
        let r = l.rank();
        let dims: Vec<usize> = l
            .dims()
            .iter()
            .zip(l.strides())
            .enumerate()
            .map(|(i, (&d, &s))| if i + 2 < r && s == 0 { 1 } else { d })
            .collect();
        let own = Layout::new(Shape::from(dims.clone()), l.strides().to_vec(), l.offset());
        Ok((x.cast(&own, low)?, Layout::contiguous(Shape::from(dims)).broadcast_as(l.shape())?))
    };
    let ((xa, ca), (xb, cb)) = (cast(a, la)?, cast(b, lb)?);
    let c = xa.matmul(&ca, &xb, &cb)?;
    let mut out = la.dims().to_vec();
    *out.last_mut().expect("matmul operands have rank >= 2") = lb.dims()[lb.rank() - 1];
    c.cast(&Layout::contiguous(Shape::from(out)), DType::F32)
}

/// Up to this many column elements, [`conv2d_weight_grad_by_columns`] is one product over all
/// images (a second, image-major copy of the columns, 4 MiB in f32 at most); above, one
/// product per image and a sum.
pub(crate) const ONE_PRODUCT_DW_MAX: usize = 1 << 20;

/// [`BackendStorage::conv2d_weight_grad`] from im2col's columns and matrix products.
pub(crate) fn conv2d_weight_grad_by_columns<S: BackendStorage>(
    x: &S,
    lx: &Layout,
    g: &S,
    lg: &Layout,
    window: &Window2d,
) -> Result<S> {
    let [n, c, _, _, cout, oh, ow] = window.conv2d_weight_grad_dims(lx, lg)?;
    let (k, l) = (c * window.kernel.0 * window.kernel.1, oh * ow);
    let dt = x.dtype();
    let cols = x.im2col(lx, window, 0.0)?; // [N, K, L], contiguous
    // g as [N, Cout, L]: a view when contiguous, else a copy.
    let copied;
    let (g, lg) = match lg.reshape(&Shape::from(vec![n, cout, l])) {
        Some(view) => (g, view),
        None => {
            copied = g.cast(lg, dt)?;
            (&copied, Layout::contiguous((n, cout, l)))
        }
    };
    if n * k * l <= ONE_PRODUCT_DW_MAX {
        // [Cout, N·L] × [N·L, K]: g and the columns laid out image-major once, instead of N
        // small products and a sum over their [N, Cout, K] outputs.
        let g2 = g.cast(&lg.permute(&[1, 0, 2])?, dt)?;
        let c2 = cols.cast(&Layout::contiguous((n, k, l)).permute(&[1, 0, 2])?, dt)?;
        let c2t = Layout::new(Shape::from(vec![n * l, k]), vec![1, n * l], 0);
        return g2.matmul(&Layout::contiguous((cout, n * l)), &c2, &c2t);
    }
    // Large images: the per-image products are large enough, and a second copy of the
    // columns would cost memory.
    let per_image = g.matmul(&lg, &cols, &Layout::contiguous((n, k, l)).transpose(1, 2))?;
    per_image.reduce(&Layout::contiguous((n, cout, k)), ReduceOp::Sum, &[0])
}

/// [`BackendStorage::conv2d_lowered`] from casts and a convolution in `low`.
pub(crate) fn conv2d_by_casts<S: BackendStorage>(
    x: &S,
    lx: &Layout,
    w: &S,
    lw: &Layout,
    window: &Window2d,
    low: DType,
) -> Result<S> {
    let [n, _, _, _, cout, oh, ow] = window.conv2d_dims(lx, lw)?;
    let (cx, cw) = (Layout::contiguous(lx.shape().clone()), Layout::contiguous(lw.shape().clone()));
    let y = x.cast(lx, low)?.conv2d(&cx, &w.cast(lw, low)?, &cw, window)?;
    y.cast(&Layout::contiguous((n, cout, oh, ow)), DType::F32)
}

/// [`BackendStorage::conv2d_weight_grad_lowered`] from casts and a weight gradient in `low`.
pub(crate) fn conv2d_weight_grad_by_casts<S: BackendStorage>(
    x: &S,
    lx: &Layout,
    g: &S,
    lg: &Layout,
    window: &Window2d,
    low: DType,
) -> Result<S> {
    let [_, c, _, _, cout, _, _] = window.conv2d_weight_grad_dims(lx, lg)?;
    let (cx, cg) = (Layout::contiguous(lx.shape().clone()), Layout::contiguous(lg.shape().clone()));
    let dw = x.cast(lx, low)?.conv2d_weight_grad(&cx, &g.cast(lg, low)?, &cg, window)?;
    dw.cast(&Layout::contiguous((cout, c * window.kernel.0 * window.kernel.1)), DType::F32)
}

/// The primitive kernels over one backend's storage. Layouts describe which elements of the
/// storage an operand is (views are free); outputs are fresh contiguous storages unless the
/// method says otherwise. The `Tensor` layer has already checked shapes, dtypes and devices
/// and broadcast operands to one shape; backends still return `Err` for unsupported dtypes.
pub trait BackendStorage: Sized + Send + Sync {
    /// Element type of the whole buffer.
    fn dtype(&self) -> DType;
    /// The device the buffer lives on.
    fn device(&self) -> Device;
    /// Number of elements in the buffer.
    fn len(&self) -> usize;
    /// True for an empty buffer.
    fn is_empty(&self) -> bool;
    /// Copies the whole buffer to host memory.
    fn to_cpu(&self) -> Result<cpu::CpuStorage>;

    /// The viewed elements converted to `dtype` (float→int truncates toward zero).
    fn cast(&self, layout: &Layout, dtype: DType) -> Result<Self>;
    /// Copies the elements viewed by `src_layout` into the elements of `dst` viewed by
    /// `dst_layout` (same shape). Used by `contiguous`, concatenation and slice assignment.
    fn copy_strided(&self, src_layout: &Layout, dst: &mut Self, dst_layout: &Layout) -> Result<()>;
    /// An elementwise function (float dtypes; neg/abs/sign/sqr also for i64).
    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self>;
    /// A parameterized scalar map (affine, powf, clamp).
    fn scalar(&self, layout: &Layout, op: ScalarOp) -> Result<Self>;
    /// `lhs op rhs` elementwise; both layouts have the same shape (broadcast by stride 0).
    fn binary(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: BinaryOp) -> Result<Self>;
    /// Comparison into a u8 mask; same shape rules as `binary`.
    fn cmp(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self>;
    /// `self` is a u8 mask: picks `on_true` where nonzero, else `on_false`; same shape.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        true_layout: &Layout,
        on_false: &Self,
        false_layout: &Layout,
    ) -> Result<Self>;
    /// Reduces over `axes` (sorted, unique); the result is contiguous with those axes kept
    /// at size 1. ArgMax/ArgMin need exactly one axis and give i64.
    fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Self>;
    /// Softmax (or log-softmax) along `axis`; contiguous result of the same shape.
    fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Self>;
    /// Batched matrix product: `layout` is `[batch…, m, k]`, `rhs_layout` `[batch…, k, n]`
    /// with equal batch dims (broadcast by stride 0); any strides, so a transposed view costs
    /// no copy. The result is contiguous `[batch…, m, n]`.
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self>;
    /// [`matmul`](Self::matmul) of f32 operands with the products in `low` (bf16 or f16),
    /// autocast's matrix product: the operands rounded to `low`, the result f32. By default
    /// the operands are cast, multiplied in `low` and the product cast back; a backend with a
    /// kernel that reads f32 and multiplies in `low` overrides it (then the sums are not
    /// rounded to `low` on the way out).
    fn matmul_lowered(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, low: DType) -> Result<Self> {
        matmul_by_casts(self, layout, rhs, rhs_layout, low)
    }
    /// Picks slices along `axis` by the i64 `ids` (rank 1): output dim `axis` = `ids.len()`.
    fn index_select(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self>;
    /// `out[i][j][k] = self[i][ids[i][j][k]][k]` for axis 1 (torch.gather); `ids` has the
    /// output's shape.
    fn gather(&self, layout: &Layout, ids: &Self, ids_layout: &Layout, axis: usize) -> Result<Self>;
    /// A copy of `self` with `src` added at the positions `ids` names along `axis`
    /// (the adjoint of gather; `ids` and `src` have the same shape).
    fn scatter_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self>;
    /// A copy of `self` with slice `i` of `src` along `axis` added to slice `ids[i]`
    /// (the adjoint of index_select; `ids` has rank 1).
    fn index_add(
        &self,
        layout: &Layout,
        ids: &Self,
        ids_layout: &Layout,
        src: &Self,
        src_layout: &Layout,
        axis: usize,
    ) -> Result<Self>;
    /// Unfolds sliding windows of `[N, C, H, W]` into columns `[N, C·kh·kw, OH·OW]` (row
    /// `(c·kh + i)·kw + j`, column `oy·OW + ox`); positions in the padding read `pad_value`.
    fn im2col(&self, layout: &Layout, window: &Window2d, pad_value: f64) -> Result<Self>;
    /// Convolution (cross-correlation, one group) of `[N, C, H, W]` with `weight`
    /// `[Cout, C, kh, kw]` over `window`, giving `[N, Cout, OH, OW]`: the product of the weight
    /// with `im2col`'s columns, which a backend need not write out.
    fn conv2d(&self, layout: &Layout, weight: &Self, weight_layout: &Layout, window: &Window2d) -> Result<Self>;
    /// [`conv2d`](Self::conv2d) of f32 operands with the products in `low` (bf16 or f16),
    /// autocast's convolution, as [`matmul_lowered`](Self::matmul_lowered) is its product.
    fn conv2d_lowered(
        &self,
        layout: &Layout,
        weight: &Self,
        weight_layout: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Self> {
        conv2d_by_casts(self, layout, weight, weight_layout, window, low)
    }
    /// The weight gradient of [`conv2d`](Self::conv2d): for `self` = x `[N, C, H, W]` and its
    /// output's gradient `grad` `[N, Cout, OH, OW]`, `Σₙ grad[n] · im2col(x[n])ᵀ` as
    /// `[Cout, C·kh·kw]`. By default the columns are written out and multiplied.
    fn conv2d_weight_grad(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        window: &Window2d,
    ) -> Result<Self> {
        conv2d_weight_grad_by_columns(self, layout, grad, grad_layout, window)
    }
    /// [`conv2d_weight_grad`](Self::conv2d_weight_grad) of f32 operands with the products in
    /// `low` (bf16 or f16): the weight gradient of [`conv2d_lowered`](Self::conv2d_lowered),
    /// f32 `[Cout, C·kh·kw]`. By default the operands are cast and the gradient cast back.
    fn conv2d_weight_grad_lowered(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        window: &Window2d,
        low: DType,
    ) -> Result<Self> {
        conv2d_weight_grad_by_casts(self, layout, grad, grad_layout, window, low)
    }
    /// Max pooling's argument: for each output pixel `(oy, ox)` of `[N, C, H, W]` (output size
    /// `out`, which may come from `ceil_mode`), the flat index `y·W + x` within its plane of
    /// its window's first maximum, as i64 `[N, C, OH, OW]`. Positions outside the image (the
    /// padding) are skipped; a NaN counts as the maximum; a window of `-inf` picks its first
    /// position inside the image (PyTorch's rules).
    fn max_pool2d_indices(&self, layout: &Layout, window: &Window2d, out: (usize, usize)) -> Result<Self>;
    /// The adjoint of `im2col`: folds columns `[N, C·kh·kw, OH·OW]` back into `[N, C, H, W]`,
    /// summing where windows overlap and dropping the padding.
    fn col2im(&self, layout: &Layout, window: &Window2d, height: usize, width: usize) -> Result<Self>;
    /// Connectionist temporal classification: `self` holds log-probabilities `[T, N, C]`,
    /// `targets` i64 labels `[N, S]` (row `n` padded past `target_lengths[n]`); sample `n` uses
    /// its first `input_lengths[n]` steps. Returns the per-sample negative log-likelihood `[N]`
    /// and its gradient with respect to `self`, `[T, N, C]` (zero past each input length, and
    /// zero for a sample whose loss is infinite because no alignment exists).
    fn ctc_loss(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
    ) -> Result<(Self, Self)>;
    /// One LSTM step's elementwise part, in PyTorch's gate order (i, f, g, o): `self` and `hg`
    /// are the input and hidden projections `[N, 4H]` (biases included), `c` the cell `[N, H]`.
    /// Returns `[h', c', acts]`: `c' = σ(f)·c + σ(i)·tanh(g)`, `h' = σ(o)·tanh(c')`, and `acts`
    /// `[N, 4H]` holding σ(i), σ(f), tanh(g), σ(o) for the backward. Any layouts (contiguous
    /// ones are read in place); f32 and f64.
    fn lstm_cell(
        &self,
        layout: &Layout,
        hg: &Self,
        hg_layout: &Layout,
        c: &Self,
        c_layout: &Layout,
    ) -> Result<[Self; 3]>;
    /// The adjoint of [`BackendStorage::lstm_cell`]: `self` is its `acts`, `rest` holds `c`, `c'`,
    /// and the gradients reaching `h'` (two parts, summed: the recurrent one and the output's)
    /// and `c'`, each `[N, H]`. Returns `[d_gates, d_c]`: the gradient of the
    /// pre-activation gates `[N, 4H]` and of `c`.
    fn lstm_cell_backward(&self, layout: &Layout, rest: [(&Self, &Layout); 5]) -> Result<[Self; 2]>;
    /// One fused optimizer update, in place over contiguous buffers of one length:
    /// `self` (the parameters), `grad`, and the state buffers the rule needs
    /// (see [`OptimRule::state_count`]).
    fn optim_step(&mut self, grad: &Self, state: &mut [&mut Self], rule: &OptimRule) -> Result<()>;
}

/// A 2-D sliding window (convolution or pooling): kernel, stride, padding, dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// The window's size, `(height, width)`.
    pub kernel: (usize, usize),
    /// The step between windows, `(height, width)`.
    pub stride: (usize, usize),
    /// Padding added on each side of the input, `(height, width)`.
    pub padding: (usize, usize),
    /// The spacing of the kernel's taps, `(height, width)`; 1 is a dense window.
    pub dilation: (usize, usize),
}

impl Window2d {
    /// Output height and width over an `h × w` input, or `None` when the window does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        // Checked: sizes come from users' configs, and a stride or dilation of 0 is no window.
        let one = |n: usize, k: usize, s: usize, p: usize, d: usize| {
            if s == 0 || d == 0 {
                return None;
            }
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let padded = p.checked_mul(2)?.checked_add(n)?;
            if padded < span { None } else { Some((padded - span) / s + 1) }
        };
        Some((
            one(h, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0)?,
            one(w, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }

    /// The output size of this window over `x` `[N, C, H, W]`, checked so that its columns
    /// `[N, C·kh·kw, OH·OW]` have an addressable element count: the one check every window op
    /// (convolution, pooling, im2col) makes before it computes a size.
    pub fn columns(&self, op: &'static str, x: &Shape) -> Result<(usize, usize)> {
        let &[n, c, h, w] = x.dims() else {
            return Err(Error::BadShape { op, msg: format!("needs [N, C, H, W], got {x:?}") });
        };
        let Some((oh, ow)) = self.output_size(h, w) else {
            return Err(Error::BadShape { op, msg: format!("window {self:?} does not fit {x:?}") });
        };
        Shape::checked_product(op, &[n, c, self.kernel.0, self.kernel.1, oh, ow])?;
        Ok((oh, ow))
    }

    /// The sizes of a convolution's weight gradient from `x` `[N, C, H, W]` and its output's
    /// gradient `g` `[N, Cout, OH, OW]` over this window, `[N, C, H, W, Cout, OH, OW]`, or the
    /// shape error both backends report.
    pub fn conv2d_weight_grad_dims(&self, x: &Layout, g: &Layout) -> Result<[usize; 7]> {
        const OP: &str = "conv2d backward";
        let (&[n, c, h, wd], &[gn, cout, oh, ow]) = (x.dims(), g.dims()) else {
            return Err(Error::BadShape {
                op: OP,
                msg: format!("needs x [N, C, H, W] and g [N, Cout, OH, OW], got {:?} and {:?}", x.shape(), g.shape()),
            });
        };
        if gn != n || self.columns(OP, x.shape())? != (oh, ow) {
            return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().clone(), rhs: g.shape().clone() });
        }
        Shape::checked_product(OP, &[cout, c, self.kernel.0, self.kernel.1])?;
        Ok([n, c, h, wd, cout, oh, ow])
    }

    /// The sizes of a `conv2d` of `x` `[N, C, H, W]` by `weight` `[Cout, C, kh, kw]` over this
    /// window, `[N, C, H, W, Cout, OH, OW]`, or the shape error both backends report.
    pub fn conv2d_dims(&self, x: &Layout, weight: &Layout) -> Result<[usize; 7]> {
        let &[n, c, h, wd] = x.dims() else {
            return Err(Error::BadShape { op: "conv2d", msg: format!("needs [N, C, H, W], got {:?}", x.shape()) });
        };
        let &[cout, wc, kh, kw] = weight.dims() else {
            let msg = format!("weight needs [Cout, C, kh, kw], got {:?}", weight.shape());
            return Err(Error::BadShape { op: "conv2d", msg });
        };
        if wc != c || (kh, kw) != self.kernel {
            return Err(Error::ShapeMismatch { op: "conv2d", lhs: x.shape().clone(), rhs: weight.shape().clone() });
        }
        let (oh, ow) = self.columns("conv2d", x.shape())?;
        Shape::checked_product("conv2d", &[n, cout, oh, ow])?;
        Ok([n, c, h, wd, cout, oh, ow])
    }
}

/// The `(N, H)` of an LSTM cell's gates `[N, 4H]`, with every cell-shaped operand (the cell,
/// its gradients) checked to be `[N, H]`: the shape error both backends report.
pub fn lstm_cell_dims(op: &'static str, gates: &Layout, cells: &[&Layout]) -> Result<(usize, usize)> {
    let bad = |msg: String| Error::BadShape { op, msg };
    let g = gates.dims();
    if g.len() != 2 || !g[1].is_multiple_of(4) {
        return Err(bad(format!("gates must be [N, 4H], got {g:?}")));
    }
    let (n, h) = (g[0], g[1] / 4);
    for c in cells {
        if c.dims() != [n, h] {
            return Err(bad(format!("cells and their gradients must be [{n}, {h}], got {:?}", c.dims())));
        }
    }
    Ok((n, h))
}

/// Adam's bias correction `1 − βᵗ`, as PyTorch computes it (`1 - beta ** step` in double
/// precision): `powf`, so a step count past `i32::MAX` (a long run, or a corrupt checkpoint)
/// stays right instead of wrapping to a negative exponent. Both backends fold it on the host.
pub fn bias_correction(beta: f64, step: u64) -> f64 {
    1.0 - beta.powf(step as f64)
}

/// A fused optimizer update rule, applied elementwise by `optim_step`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimRule {
    /// SGD; state: the velocity (when `momentum != 0`).
    Sgd {
        /// The learning rate.
        lr: f64,
        /// The momentum factor (0 for plain SGD).
        momentum: f64,
        /// Dampening of the gradient's contribution to the velocity.
        dampening: f64,
        /// Use Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// Adam / AdamW (`decoupled`); state: first and second moments. `step` counts from 1.
    Adam {
        /// The learning rate.
        lr: f64,
        /// Decay rate of the first moment.
        beta1: f64,
        /// Decay rate of the second moment.
        beta2: f64,
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay: an L2 penalty, or decoupled decay when `decoupled`.
        weight_decay: f64,
        /// Decay the weights directly (AdamW) instead of through the gradient.
        decoupled: bool,
        /// The number of this step, counting from 1, for bias correction.
        step: u64,
    },
    /// RMSprop; state: the squared average (and the momentum buffer when `momentum != 0`).
    RmsProp {
        /// The learning rate.
        lr: f64,
        /// Decay rate of the squared average.
        alpha: f64,
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
        /// The momentum factor (0 for none).
        momentum: f64,
    },
    /// Adagrad; state: the sum of squares.
    Adagrad {
        /// The learning rate.
        lr: f64,
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
}

impl OptimRule {
    /// How many state buffers the rule keeps per parameter.
    pub fn state_count(&self) -> usize {
        match self {
            OptimRule::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            OptimRule::Adam { .. } => 2,
            OptimRule::RmsProp { momentum, .. } => 1 + usize::from(*momentum != 0.0),
            OptimRule::Adagrad { .. } => 1,
        }
    }
}

/// Creating storage on one backend.
pub trait BackendDevice: Send + Sync {
    /// The storage type this device creates.
    type Storage: BackendStorage;
    /// The [`Device`] this is.
    fn location(&self) -> Device;
    /// A contiguous buffer of `shape` filled with `value`.
    fn full(&self, shape: &Shape, dtype: DType, value: f64) -> Result<Self::Storage>;
    /// Uniform values in `[lo, hi)` from the Philox4x32-10 stream `(seed, offset)`:
    /// element `i` uses counter `offset + i / 4`, word `i % 4`, so every backend produces the
    /// same bits.
    fn rand_uniform(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        lo: f64,
        hi: f64,
    ) -> Result<Self::Storage>;
    /// Normal values (Box–Muller over the same Philox stream: element `i` uses counter
    /// `offset + i / 2`, the pair of words `2·(i % 2)`, `2·(i % 2) + 1`).
    fn rand_normal(
        &self,
        shape: &Shape,
        dtype: DType,
        seed: u64,
        offset: u64,
        mean: f64,
        std: f64,
    ) -> Result<Self::Storage>;
    /// Copies host data to this device.
    fn storage_from_cpu(&self, data: &cpu::CpuStorage) -> Result<Self::Storage>;
    /// Waits for queued work to finish.
    fn synchronize(&self) -> Result<()>;
}
