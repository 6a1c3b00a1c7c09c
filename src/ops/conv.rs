//! Convolution and pooling through im2col: windows become columns, a convolution becomes one
//! (batched) GEMM, and pooling a reduction over the window axis. The two primitives are
//! each other's adjoint, so every backward (stride ≠ kernel included) comes for free.

use crate::autograd::{Gradients, Operation, apply};
use crate::backend::Window2d;
use crate::{DType, Device, Error, Result, Shape, Tensor};

/// `[N, C, H, W]` → columns `[N, C·kh·kw, OH·OW]`.
pub struct Im2Col {
    /// The sliding window.
    pub window: Window2d,
    /// The value read at positions in the padding.
    pub pad_value: f64,
}

impl Operation for Im2Col {
    fn name(&self) -> &str {
        "im2col"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let x = x[0];
        let s = x.storage().im2col(x.layout(), &self.window, self.pad_value)?;
        let d = x.dims();
        let (oh, ow) = self.window.output_size(d[2], d[3]).expect("checked by the kernel");
        Ok(Tensor::from_contiguous(s, (d[0], d[1] * self.window.kernel.0 * self.window.kernel.1, oh * ow)))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        let d = x[0].dims();
        grads.accumulate(&x[0], g.col2im(self.window, d[2], d[3])?)
    }
}

/// PyTorch's `max_unpool`, on planes: values `[P, l]` at their `indices` `[P, l]` in zero
/// rows `[P, plane]`. Repeated indices of one row (overlapping windows chose the same input)
/// carry the same value and write it once; the backward gathers, so each gets the gradient.
pub struct MaxUnpool {
    /// The length of each output row: the unpooled plane's element count.
    pub plane: usize,
}

impl Operation for MaxUnpool {
    fn name(&self) -> &str {
        "max_unpool2d"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let (v, idx) = (x[0], x[1]);
        let (rows, l) = (v.dims()[0], v.dims()[1]);
        // The first occurrence of each index in its row keeps its value; later ones add 0.
        // The indices come to the host for this (they are as small as the pooled output).
        let ids = idx.to_vec::<i64>()?;
        let mut keep = vec![1u8; ids.len()];
        let mut seen = std::collections::HashSet::new();
        for r in 0..rows {
            seen.clear();
            for j in 0..l {
                let i = ids[r * l + j];
                if i < 0 || i as usize >= self.plane {
                    return Err(Error::IndexOutOfRange { op: "max_unpool2d", index: i, size: self.plane });
                }
                if !seen.insert(i) {
                    keep[r * l + j] = 0;
                }
            }
        }
        // Selected, not multiplied: an infinite repeat times 0 would be NaN.
        let keep = Tensor::from_vec(keep, (rows, l), Device::Cpu)?.to_device(v.device())?;
        let once = keep.where_cond(v, &Tensor::zeros((), v.dtype(), v.device())?)?;
        Tensor::zeros((rows, self.plane), v.dtype(), v.device())?.scatter_add(1, idx, &once)
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.gather(1, &x[1])?)
    }
}

/// Columns `[N, C·kh·kw, OH·OW]` → `[N, C, H, W]`, summing overlaps.
pub struct Col2Im {
    /// The sliding window the columns came from.
    pub window: Window2d,
    /// The output image's height.
    pub height: usize,
    /// The output image's width.
    pub width: usize,
}

impl Operation for Col2Im {
    fn name(&self) -> &str {
        "col2im"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        let x = x[0];
        let s = x.storage().col2im(x.layout(), &self.window, self.height, self.width)?;
        let c = x.dims()[1] / (self.window.kernel.0 * self.window.kernel.1);
        Ok(Tensor::from_contiguous(s, (x.dims()[0], c, self.height, self.width)))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        grads.accumulate(&x[0], g.im2col(self.window, 0.0)?)
    }
}

/// One group's convolution `[N, C, H, W]` ⊛ `[Cout, C, kh, kw]` → `[N, Cout, OH, OW]`: the
/// weight times im2col's columns, which the backend may pack without writing them out. The
/// backward is the same product's two adjoints, through im2col and col2im.
pub struct Conv2d {
    /// The convolution's window: kernel size, stride, padding and dilation.
    pub window: Window2d,
}

/// [`Conv2d`] of f32 operands with its products in a low precision (bf16 or f16):
/// autocast's convolution, one op with f32 in and out
/// ([`crate::backend::BackendStorage::conv2d_lowered`]); its backward products are lowered too.
pub struct LoweredConv2d {
    /// The convolution's window: kernel size, stride, padding and dilation.
    pub window: Window2d,
    /// The dtype of the products.
    pub low: DType,
}

/// A convolution's forward: the operands checked, `run` the backend's kernel on the image
/// and the weight, the output shaped `[N, Cout, OH, OW]`.
fn conv_forward(
    x: &[&Tensor],
    window: &Window2d,
    run: impl FnOnce(&Tensor, &Tensor) -> Result<crate::storage::Storage>,
) -> Result<Tensor> {
    let (x, w) = (x[0], x[1]);
    super::same_device("conv2d", &[x, w])?;
    super::same_dtype("conv2d", x, w)?;
    let s = run(x, w)?;
    let d = x.dims();
    let (oh, ow) = window.output_size(d[2], d[3]).expect("checked by the kernel");
    Ok(Tensor::from_contiguous(s, (d[0], w.dims()[0], oh, ow)))
}

impl Operation for Conv2d {
    fn name(&self) -> &str {
        "conv2d"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        conv_forward(x, &self.window, |x, w| x.storage().conv2d(x.layout(), &w.storage(), w.layout(), &self.window))
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        conv_backward(&self.window, x, g, grads, Products::Native)
    }
}

impl Operation for LoweredConv2d {
    fn name(&self) -> &str {
        "conv2d"
    }
    fn forward(&self, x: &[&Tensor]) -> Result<Tensor> {
        conv_forward(x, &self.window, |x, w| {
            x.storage().conv2d_lowered(x.layout(), &w.storage(), w.layout(), &self.window, self.low)
        })
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor, grads: &mut Gradients) -> Result<()> {
        conv_backward(&self.window, x, g, grads, Products::Lowered(self.low))
    }
}

/// The window of the convolution that maps a stride-1 convolution's output gradient back to
/// its input gradient (with the kernel flipped and its channel axes swapped): the same
/// dilation, padding `dilation·(k − 1) − padding`. `None` for other strides, or a padding
/// wider than the kernel's reach (the input gradient would need cropping).
fn transposed_window(w: &Window2d) -> Option<Window2d> {
    let pad = |k: usize, d: usize, p: usize| (d * (k - 1)).checked_sub(p);
    if w.stride != (1, 1) || w.kernel.0 == 0 || w.kernel.1 == 0 {
        return None;
    }
    let padding = (pad(w.kernel.0, w.dilation.0, w.padding.0)?, pad(w.kernel.1, w.dilation.1, w.padding.1)?);
    Some(Window2d { padding, ..*w })
}

/// The precision of a convolution's backward products.
#[derive(Clone, Copy)]
enum Products {
    /// The operands' own dtype, through the backend's convolution kernels.
    Native,
    /// Autocast's: f32 operands, products in this low precision.
    Lowered(DType),
}

/// A convolution's two adjoints, with its products in the precision `product` says.
fn conv_backward(window: &Window2d, x: &[Tensor], g: &Tensor, grads: &mut Gradients, product: Products) -> Result<()> {
    let conv = |x: &Tensor, w: &Tensor, window: Window2d| match product {
        Products::Native => apply(Conv2d { window }, &[x, w]),
        Products::Lowered(low) => apply(LoweredConv2d { window, low }, &[x, w]),
    };
    let matmul = |p: &Tensor, q: &Tensor| match product {
        Products::Native => p.matmul(q),
        Products::Lowered(low) => apply(super::LoweredMatMul(low), &[p, q]),
    };
    let (x, w) = (&x[0], &x[1]);
    let (d, cout) = (x.dims(), w.dims()[0]);
    let g4 = g; // [N, Cout, OH, OW]
    let g = g.reshape((d[0], cout, g.dims()[2] * g.dims()[3]))?; // [N, Cout, L]
    let w2 = w.reshape((cout, w.elem_count() / cout))?; // [Cout, K]
    if x.tracks_grad() {
        let dx = match transposed_window(window) {
            // Stride 1: dX is the correlation of g with the flipped, transposed kernel, run by
            // the forward convolution's kernel (columns packed straight from g), instead of a
            // product writing K·L columns per image and col2im summing them back.
            Some(win) => {
                let (c, taps) = (d[1], window.kernel.0 * window.kernel.1);
                let rev = Tensor::from_vec((0..taps as i64).rev().collect::<Vec<_>>(), taps, Device::Cpu)?
                    .to_device(w.device())?;
                let flipped = w.reshape((cout, c, taps))?.index_select(2, &rev)?.transpose(0, 1)?;
                let flipped = flipped.contiguous()?.reshape((c, cout, window.kernel.0, window.kernel.1))?;
                conv(g4, &flipped, win)?
            }
            None => matmul(&w2.t()?, &g)?.col2im(*window, d[2], d[3])?,
        };
        grads.accumulate(x, dx)?;
    }
    if w.tracks_grad() {
        let (xs, gs) = (x.storage(), g4.storage());
        let s = match product {
            Products::Native => xs.conv2d_weight_grad(x.layout(), &gs, g4.layout(), window)?,
            Products::Lowered(low) => xs.conv2d_weight_grad_lowered(x.layout(), &gs, g4.layout(), window, low)?,
        };
        grads.accumulate(w, Tensor::from_contiguous(s, w.shape().clone()))?;
    }
    Ok(())
}

/// Stride, padding, dilation and groups of a convolution (PyTorch's defaults: 1, 0, 1, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between windows, `(height, width)`.
    pub stride: (usize, usize),
    /// Zeros added on each side, `(height, width)`.
    pub padding: (usize, usize),
    /// Spacing of the kernel's taps, `(height, width)`.
    pub dilation: (usize, usize),
    /// Channel groups (inputs and outputs must divide by it).
    pub groups: usize,
}

/// Stride, padding, dilation and groups of a 1-D convolution (PyTorch's defaults: 1, 0, 1, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dOptions {
    /// Step between windows.
    pub stride: usize,
    /// Zeros added at both ends.
    pub padding: usize,
    /// Spacing of the kernel's taps.
    pub dilation: usize,
    /// Channel groups (inputs and outputs must divide by it).
    pub groups: usize,
}

impl Default for Conv1dOptions {
    fn default() -> Self {
        Conv1dOptions { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

fn need_rank(op: &'static str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::BadShape { op, msg: format!("needs rank {rank}, got {:?}", t.shape()) });
    }
    Ok(())
}

impl Tensor {
    /// Sliding windows of `[N, C, H, W]` as columns `[N, C·kh·kw, OH·OW]`; the padding reads
    /// `pad_value` (0 for convolution, −∞ for max pooling).
    pub fn im2col(&self, window: Window2d, pad_value: f64) -> Result<Tensor> {
        need_rank("im2col", self, 4)?;
        window.columns("im2col", self.shape())?;
        apply(Im2Col { window, pad_value }, &[self])
    }

    /// The adjoint of [`Tensor::im2col`]: columns back to an `height × width` image, summing
    /// overlapping windows.
    pub fn col2im(&self, window: Window2d, height: usize, width: usize) -> Result<Tensor> {
        need_rank("col2im", self, 3)?;
        apply(Col2Im { window, height, width }, &[self])
    }

    /// 2-D convolution (cross-correlation, as in PyTorch): `self` is `[N, Cin, H, W]`,
    /// `weight` `[Cout, Cin/groups, kh, kw]`, `bias` `[Cout]`.
    ///
    /// ```
    /// use tensorforge::{Tensor, Device, DType, ops::Conv2dOptions};
    /// let x = Tensor::ones((1, 2, 5, 5), DType::F32, Device::Cpu)?;
    /// let w = Tensor::ones((3, 2, 3, 3), DType::F32, Device::Cpu)?;
    /// let y = x.conv2d(&w, None, Conv2dOptions { padding: (1, 1), ..Default::default() })?;
    /// assert_eq!(y.dims(), &[1, 3, 5, 5]);
    /// assert_eq!(y.to_vec_f64()?[6], 18.0); // an interior pixel sees 2·3·3 ones
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        // Autocast off (the usual case) costs one thread-local read, no allocation. On, the
        // products are lowered and the bias is added in f32.
        let low = crate::amp::lowered(&[self, weight]);
        need_rank("conv2d", self, 4)?;
        need_rank("conv2d weight", weight, 4)?;
        let (n, cin) = (self.dims()[0], self.dims()[1]);
        let (cout, cin_g, kh, kw) = (weight.dims()[0], weight.dims()[1], weight.dims()[2], weight.dims()[3]);
        let g = opt.groups;
        if g == 0 || cin % g != 0 || cout % g != 0 || cin / g != cin_g {
            return Err(Error::ShapeMismatch { op: "conv2d", lhs: self.shape().clone(), rhs: weight.shape().clone() });
        }
        let window = Window2d { kernel: (kh, kw), stride: opt.stride, padding: opt.padding, dilation: opt.dilation };
        let (oh, ow) = window.columns("conv2d", self.shape())?;
        crate::Shape::checked_product("conv2d", &[n, cout, oh, ow])?;
        let conv = |x: &Tensor, w: &Tensor| match low {
            Some(low) => apply(LoweredConv2d { window, low }, &[x, w]),
            None => apply(Conv2d { window }, &[x, w]),
        };
        let y = if g == 1 {
            conv(self, weight)?
        } else {
            let cout_g = cout / g;
            let outs = (0..g)
                .map(|gi| {
                    let xg = self.narrow(1, gi * cin_g, cin_g)?;
                    conv(&xg, &weight.narrow(0, gi * cout_g, cout_g)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs.iter().collect::<Vec<_>>(), 1)?
        };
        debug_assert_eq!(y.dims(), &[n, cout, oh, ow]);
        match bias {
            Some(b) => y.add(&b.reshape((1, cout, 1, 1))?),
            None => Ok(y),
        }
    }

    /// 1-D convolution with positional options: the same as [`Tensor::conv1d_with`].
    #[deprecated(
        note = "use conv1d_with(weight, bias, Conv1dOptions { stride, padding, dilation, groups }), the argument style of conv2d"
    )]
    pub fn conv1d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        self.conv1d_with(weight, bias, Conv1dOptions { stride, padding, dilation, groups })
    }

    /// 1-D convolution: `self` `[N, Cin, L]`, `weight` `[Cout, Cin/groups, k]`, options as
    /// [`Tensor::conv2d`] takes them (one number per option instead of a pair).
    ///
    /// ```
    /// use tensorforge::ops::Conv1dOptions;
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 4), Device::Cpu)?;
    /// let w = Tensor::from_vec(vec![1f32, 1.], (1, 1, 2), Device::Cpu)?;
    /// let y = x.conv1d_with(&w, None, Conv1dOptions { stride: 2, ..Default::default() })?;
    /// assert_eq!(y.to_vec_f64()?, vec![3., 7.]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn conv1d_with(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv1dOptions) -> Result<Tensor> {
        need_rank("conv1d", self, 3)?;
        need_rank("conv1d weight", weight, 3)?;
        let opt2 = Conv2dOptions {
            stride: (1, opt.stride),
            padding: (0, opt.padding),
            dilation: (1, opt.dilation),
            groups: opt.groups,
        };
        self.unsqueeze(2)?.conv2d(&weight.unsqueeze(2)?, bias, opt2)?.squeeze(2)
    }

    /// Transposed 2-D convolution (the adjoint of `conv2d`): `self` `[N, Cin, H, W]`,
    /// `weight` `[Cin, Cout/groups, kh, kw]`; `output_padding` adds rows/columns at the end.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opt: Conv2dOptions,
        output_padding: (usize, usize),
    ) -> Result<Tensor> {
        need_rank("conv_transpose2d", self, 4)?;
        need_rank("conv_transpose2d weight", weight, 4)?;
        let (n, cin, h, w) = (self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]);
        let (wcin, cout_g, kh, kw) = (weight.dims()[0], weight.dims()[1], weight.dims()[2], weight.dims()[3]);
        let g = opt.groups;
        if g == 0
            || cin != wcin
            || cin % g != 0
            || output_padding.0 >= opt.stride.0.max(opt.dilation.0)
            || output_padding.1 >= opt.stride.1.max(opt.dilation.1)
        {
            return Err(Error::ShapeMismatch {
                op: "conv_transpose2d",
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
            });
        }
        // Checked: stride, padding and dilation come from users' configs.
        let size = |n: usize, s: usize, p: usize, d: usize, k: usize, op: usize| -> Option<usize> {
            let span = d.checked_mul(k.checked_sub(1)?)?;
            let full = n.checked_sub(1)?.checked_mul(s)?.checked_add(span)?.checked_add(op)?.checked_add(1)?;
            full.checked_sub(p.checked_mul(2)?)
        };
        let window = Window2d { kernel: (kh, kw), stride: opt.stride, padding: opt.padding, dilation: opt.dilation };
        let (Some(oh), Some(ow)) = (
            size(h, opt.stride.0, opt.padding.0, opt.dilation.0, kh, output_padding.0),
            size(w, opt.stride.1, opt.padding.1, opt.dilation.1, kw, output_padding.1),
        ) else {
            return Err(Error::BadShape {
                op: "conv_transpose2d",
                msg: "the output size overflows, or the padding is larger than the output".into(),
            });
        };
        if h == 0 || w == 0 || window.output_size(oh, ow) != Some((h, w)) {
            return Err(Error::BadShape {
                op: "conv_transpose2d",
                msg: format!("window {window:?} does not invert to {:?}", self.shape()),
            });
        }
        let cin_g = cin / g;
        let mut outs = Vec::with_capacity(g);
        for gi in 0..g {
            let xg = if g == 1 { self.clone() } else { self.narrow(1, gi * cin_g, cin_g)? };
            let wg = if g == 1 { weight.clone() } else { weight.narrow(0, gi * cin_g, cin_g)? };
            let cols = wg.reshape((cin_g, cout_g * kh * kw))?.t()?.matmul(&xg.reshape((n, cin_g, h * w))?)?;
            outs.push(cols.col2im(window, oh, ow)?);
        }
        let y = Tensor::cat(&outs.iter().collect::<Vec<_>>(), 1)?;
        match bias {
            Some(b) => y.add(&b.reshape((1, cout_g * g, 1, 1))?),
            None => Ok(y),
        }
    }

    /// A pooling window's output size over `[N, C, H, W]`, checked; with `ceil_mode` it rounds
    /// up, keeping a last window that starts inside the input or its left padding (PyTorch).
    fn pool_size(&self, op: &'static str, window: Window2d, ceil_mode: bool) -> Result<(usize, usize)> {
        need_rank(op, self, 4)?;
        let (h, w) = (self.dims()[2], self.dims()[3]);
        let (ph, pw) = window.padding;
        if ph > window.kernel.0 / 2 || pw > window.kernel.1 / 2 {
            return Err(Error::BadShape { op, msg: "padding must be at most half the kernel".into() });
        }
        let (oh, ow) = window.columns(op, self.shape())?;
        if !ceil_mode {
            return Ok((oh, ow));
        }
        let extra = |o: usize, n: usize, k: usize, s: usize, p: usize| {
            let more = !(n + 2 * p - k).is_multiple_of(s);
            if more && o * s < n + p { o + 1 } else { o }
        };
        let (k, s) = (window.kernel, window.stride);
        Ok((extra(oh, h, k.0, s.0, ph), extra(ow, w, k.1, s.1, pw)))
    }

    /// The columns of a pooling window over every plane (`[N·C, kh·kw, OH·OW]`) and the
    /// output shape; with `ceil_mode` the input is extended with `pad_value` to cover the
    /// extra windows.
    fn pool_columns(
        &self,
        op: &'static str,
        window: Window2d,
        pad_value: f64,
        ceil_mode: bool,
    ) -> Result<(Tensor, [usize; 4])> {
        let (oh, ow) = self.pool_size(op, window, ceil_mode)?;
        let (n, c, h, w) = (self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]);
        let (ph, pw) = window.padding;
        let mut x = self.reshape((n * c, 1, h, w))?;
        if ceil_mode {
            let (k, s) = (window.kernel, window.stride);
            let (eh, ew) =
                (((oh - 1) * s.0 + k.0).saturating_sub(h + 2 * ph), ((ow - 1) * s.1 + k.1).saturating_sub(w + 2 * pw));
            if eh > 0 {
                let fill = Tensor::full(pad_value, (n * c, 1, eh, w), self.dtype(), self.device())?;
                x = Tensor::cat(&[&x, &fill], 2)?;
            }
            if ew > 0 {
                let fill = Tensor::full(pad_value, (n * c, 1, h + eh, ew), self.dtype(), self.device())?;
                x = Tensor::cat(&[&x, &fill], 3)?;
            }
        }
        Ok((x.im2col(window, pad_value)?, [n, c, oh, ow]))
    }

    /// 2-D max pooling over `[N, C, H, W]` with any kernel, stride and padding.
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        Ok(self.max_pool2d_with_indices(kernel, stride, padding, false)?.0)
    }

    /// PyTorch's `max_pool2d(kernel, stride, padding, ceil_mode=…, return_indices=True)`: the
    /// maxima and, for each, its flat index `y·W + x` in its input plane (what
    /// [`Tensor::max_unpool2d`] takes). With `ceil_mode` the output size rounds up, keeping a
    /// last window that starts inside the input or its left padding. The gradient goes to the
    /// first maximum of each window.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec((0..9).map(|v| v as f64).collect::<Vec<_>>(), (1, 1, 3, 3), Device::Cpu)?;
    /// let (y, i) = x.max_pool2d_with_indices((2, 2), (2, 2), (0, 0), true)?;
    /// assert_eq!(y.to_vec_f64()?, vec![4.0, 5.0, 7.0, 8.0]);
    /// assert_eq!(i.to_vec_f64()?, vec![4.0, 5.0, 7.0, 8.0]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn max_pool2d_with_indices(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        ceil_mode: bool,
    ) -> Result<(Tensor, Tensor)> {
        let window = Window2d { kernel, stride, padding, dilation: (1, 1) };
        let (oh, ow) = self.pool_size("max_pool2d", window, ceil_mode)?;
        let (n, c, h, w) = (self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]);
        // The window maxima's positions from one kernel, the values gathered at them: the
        // gradient goes back through the gather (a scatter-add onto the first maxima).
        let idx = Tensor::from_contiguous(
            self.storage().max_pool2d_indices(self.layout(), &window, (oh, ow))?,
            (n, c, oh, ow),
        );
        let values = self.reshape((n * c, h * w))?.gather(1, &idx.reshape((n * c, oh * ow))?)?;
        Ok((values.reshape((n, c, oh, ow))?, idx))
    }

    /// PyTorch's `max_pool1d(kernel, stride, padding, ceil_mode=…, return_indices=True)` over
    /// `[N, C, L]`: the maxima and, for each, its index in its input row. The 2-D pooling on
    /// `[N, C, 1, L]`, so both share one implementation and one set of tests.
    ///
    /// ```
    /// # use tensorforge::{Tensor, Device};
    /// let x = Tensor::from_vec(vec![1f64, 5., 2., 4., 3.], (1, 1, 5), Device::Cpu)?;
    /// let (v, i) = x.max_pool1d_with_indices(2, 2, 0, true)?;
    /// assert_eq!((v.to_vec_f64()?, i.to_vec_f64()?), (vec![5., 4., 3.], vec![1., 3., 4.]));
    /// assert_eq!(v.max_unpool1d(&i, 5)?.to_vec_f64()?, vec![0., 5., 0., 4., 3.]);
    /// # Ok::<(), tensorforge::Error>(())
    /// ```
    pub fn max_pool1d_with_indices(
        &self,
        kernel: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
    ) -> Result<(Tensor, Tensor)> {
        need_rank("max_pool1d", self, 3)?;
        let (v, i) = self.unsqueeze(2)?.max_pool2d_with_indices((1, kernel), (1, stride), (0, padding), ceil_mode)?;
        Ok((v.squeeze(2)?, i.squeeze(2)?))
    }

    /// PyTorch's `max_unpool1d`: each value of `self` `[N, C, ol]` placed at its index (from
    /// [`Tensor::max_pool1d_with_indices`]) in a zero `[N, C, len]` row.
    pub fn max_unpool1d(&self, indices: &Tensor, len: usize) -> Result<Tensor> {
        need_rank("max_unpool1d", self, 3)?;
        self.unsqueeze(2)?.max_unpool2d(&indices.unsqueeze(2)?, (1, len))?.squeeze(2)
    }

    /// PyTorch's `max_unpool2d`: each value of `self` `[N, C, oh, ow]` placed at its flat
    /// index (from [`Tensor::max_pool2d_with_indices`]) in a zero `[N, C, h, w]` plane. An
    /// index that several overlapping windows chose holds its value once (not a sum), and
    /// each of them receives that position's gradient, as in PyTorch.
    pub fn max_unpool2d(&self, indices: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        need_rank("max_unpool2d", self, 4)?;
        if indices.dims() != self.dims() {
            return Err(Error::ShapeMismatch {
                op: "max_unpool2d",
                lhs: self.shape().clone(),
                rhs: indices.shape().clone(),
            });
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let l = self.dims()[2] * self.dims()[3];
        let plane = h
            .checked_mul(w)
            .ok_or_else(|| Error::BadShape { op: "max_unpool2d", msg: format!("output plane {h}×{w} overflows") })?;
        let flat = [self.reshape((n * c, l))?, indices.reshape((n * c, l))?];
        apply(MaxUnpool { plane }, &[&flat[0], &flat[1]])?.reshape((n, c, h, w))
    }

    /// 2-D average pooling; `count_include_pad` as in PyTorch (true: divide by the kernel area).
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        count_include_pad: bool,
    ) -> Result<Tensor> {
        let window = Window2d { kernel, stride, padding, dilation: (1, 1) };
        let (cols, out) = self.pool_columns("avg_pool2d", window, 0.0, false)?;
        if count_include_pad || padding == (0, 0) {
            return cols.mean([1])?.reshape(out.to_vec());
        }
        let (h, w) = (self.dims()[2], self.dims()[3]);
        let ones = Tensor::ones((1, 1, h, w), self.dtype(), self.device())?;
        let counts = ones.im2col(window, 0.0)?.sum_keepdim([1])?; // [1, 1, L]
        cols.sum_keepdim([1])?.div(&counts)?.reshape(out.to_vec())
    }

    /// Adaptive average pooling to `(oh, ow)` (PyTorch's window rule: rows
    /// `⌊i·H/oh⌋ .. ⌈(i+1)·H/oh⌉`).
    pub fn adaptive_avg_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        need_rank("adaptive_avg_pool2d", self, 4)?;
        let (h, w) = (self.dims()[2], self.dims()[3]);
        if out.0 == 0 || out.1 == 0 || h == 0 || w == 0 {
            return Err(Error::BadShape {
                op: "adaptive_avg_pool2d",
                msg: format!("output {out:?} from {:?}", self.shape()),
            });
        }
        if h % out.0 == 0 && w % out.1 == 0 {
            let k = (h / out.0, w / out.1);
            return self.avg_pool2d(k, k, (0, 0), true);
        }
        let (n, c, dt, dev) = (self.dims()[0], self.dims()[1], self.dtype(), self.device());
        let (_, bytes) = Shape::from(vec![n, c, out.0, out.1]).checked_size("adaptive_avg_pool2d", dt)?;
        Shape::from(vec![n, c, h, out.1]).checked_size("adaptive_avg_pool2d", dt)?;
        if dev == Device::Cpu {
            // Refused before the averaging matrices are built, which can be large themselves.
            crate::backend::cpu::pool::ensure_fits("adaptive_avg_pool2d", bytes)?;
        }
        // A window is a range of rows times a range of columns, so its mean is a weighted sum
        // along each axis in turn: two products with [out, in] averaging matrices.
        let aw = averaging_matrix(w, out.1, dt, dev)?; // [ow, W]
        let ah = averaging_matrix(h, out.0, dt, dev)?; // [oh, H]
        let y = self.reshape((n * c * h, w))?.matmul(&aw.t()?)?; // [N·C·H, ow]
        let y = y.reshape((n * c, h, out.1))?.transpose(1, 2)?.reshape((n * c * out.1, h))?;
        let y = y.matmul(&ah.t()?)?; // [N·C·ow, oh]
        y.reshape((n, c, out.1, out.0))?.transpose(2, 3)?.contiguous()
    }

    /// Global average pooling: `[N, C, H, W]` → `[N, C]`.
    pub fn global_avg_pool2d(&self) -> Result<Tensor> {
        need_rank("global_avg_pool2d", self, 4)?;
        self.mean([2, 3])
    }
}

/// The `[out, len]` matrix whose row `i` averages PyTorch's adaptive window
/// `⌊i·len/out⌋ .. ⌈(i+1)·len/out⌉`.
fn averaging_matrix(len: usize, out: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let (_, bytes) = Shape::from(vec![out, len]).checked_size("adaptive_avg_pool2d", DType::F64)?;
    let mut m: Vec<f64> = Vec::new();
    m.try_reserve_exact(out * len).map_err(|_| Error::OutOfMemory {
        op: "adaptive_avg_pool2d",
        device: Device::Cpu,
        bytes,
    })?;
    m.resize(out * len, 0.0);
    let (l, o) = (len as u128, out as u128);
    for (i, row) in m.chunks_mut(len).enumerate() {
        let i = i as u128;
        let (a, b) = ((i * l / o) as usize, ((i + 1) * l).div_ceil(o) as usize);
        row[a..b].fill(1.0 / (b - a) as f64);
    }
    Tensor::from_vec(m, (out, len), Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}
