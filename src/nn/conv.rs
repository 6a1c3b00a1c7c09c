//! Convolution and pooling layers over the `Tensor` conv ops (im2col + GEMM underneath).

use super::Module;
use crate::ops::{Conv1dOptions, Conv2dOptions};
use crate::param::{Init, ParameterStore};
use crate::{DType, Device, Error, Result, Shape, Tensor};

fn kaiming(fan_in: usize, shape: Vec<usize>, device: Device) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Ok(Tensor::rand(-bound, bound, shape, DType::F32, device)?.requires_grad())
}

/// 2-D convolution layer: `[N, Cin, H, W]` → `[N, Cout, OH, OW]` (PyTorch's initialization).
///
/// ```
/// use tensorforge::{Tensor, Device, DType, nn::{Conv2d, Module}, ops::Conv2dOptions};
/// let conv = Conv2d::new(3, 8, (3, 3), Conv2dOptions { padding: (1, 1), ..Default::default() }, Device::Cpu)?;
/// let y = conv.forward(&Tensor::ones((2, 3, 10, 10), DType::F32, Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[2, 8, 10, 10]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    options: Conv2dOptions,
}

impl Conv2d {
    /// A layer with bias; weight `[out, in/groups, kh, kw]`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        device: Device,
    ) -> Result<Conv2d> {
        let g = options.groups.max(1);
        if !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            return Err(Error::BadShape {
                op: "Conv2d",
                msg: format!("channels {in_channels}→{out_channels} not divisible by groups {g}"),
            });
        }
        let fan_in = Shape::checked_product("Conv2d", &[in_channels / g, kernel.0, kernel.1])?;
        let weight = kaiming(fan_in, vec![out_channels, in_channels / g, kernel.0, kernel.1], device)?;
        let bias = Some(kaiming(fan_in, vec![out_channels], device)?);
        Ok(Conv2d { weight, bias, options })
    }
    /// A layer whose parameters live in `store` as `{prefix}.weight` / `{prefix}.bias`
    /// (created with PyTorch's initialization on first use, shared afterwards).
    pub fn from_store(
        store: &mut ParameterStore,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
    ) -> Result<Conv2d> {
        let g = options.groups.max(1);
        if !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            return Err(Error::BadShape {
                op: "Conv2d",
                msg: format!("channels {in_channels}→{out_channels} not divisible by groups {g}"),
            });
        }
        let init =
            Init::KaimingUniform { fan_in: Shape::checked_product("Conv2d", &[in_channels / g, kernel.0, kernel.1])? };
        let weight = store.get_or_init(
            &format!("{prefix}.weight"),
            (out_channels, in_channels / g, kernel.0, kernel.1),
            init,
        )?;
        let bias = store.get_or_init(&format!("{prefix}.bias"), out_channels, init)?;
        Ok(Conv2d { weight, bias: Some(bias), options })
    }
    /// A layer over given parameters.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, options: Conv2dOptions) -> Conv2d {
        Conv2d { weight, bias, options }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

/// 1-D convolution layer: `[N, Cin, L]` → `[N, Cout, OL]`.
pub struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
}

impl Conv1d {
    /// A layer with bias; weight `[out, in/groups, k]`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        device: Device,
    ) -> Result<Conv1d> {
        let fan_in = Shape::checked_product("Conv1d", &[in_channels, kernel])?;
        let weight = kaiming(fan_in, vec![out_channels, in_channels, kernel], device)?;
        let bias = Some(kaiming(fan_in, vec![out_channels], device)?);
        Ok(Conv1d { weight, bias, stride, padding, dilation: 1, groups: 1 })
    }
    /// A layer with bias and any options, the argument style of [`Conv2d::new`]; weight
    /// `[out, in/groups, k]`.
    pub fn with_options(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        opt: Conv1dOptions,
        device: Device,
    ) -> Result<Conv1d> {
        if opt.groups == 0 || !in_channels.is_multiple_of(opt.groups) || !out_channels.is_multiple_of(opt.groups) {
            return Err(crate::Error::msg(format!(
                "Conv1d: groups {} must divide in_channels {in_channels} and out_channels {out_channels}",
                opt.groups
            )));
        }
        let fan_in = Shape::checked_product("Conv1d", &[in_channels / opt.groups, kernel])?;
        let weight = kaiming(fan_in, vec![out_channels, in_channels / opt.groups, kernel], device)?;
        let bias = Some(kaiming(fan_in, vec![out_channels], device)?);
        Ok(Conv1d {
            weight,
            bias,
            stride: opt.stride,
            padding: opt.padding,
            dilation: opt.dilation,
            groups: opt.groups,
        })
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let opt =
            Conv1dOptions { stride: self.stride, padding: self.padding, dilation: self.dilation, groups: self.groups };
        x.conv1d_with(&self.weight, self.bias.as_ref(), opt)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

/// Transposed 2-D convolution layer (learned upsampling); weight `[in, out/groups, kh, kw]`.
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    options: Conv2dOptions,
    output_padding: (usize, usize),
}

impl ConvTranspose2d {
    /// A layer with bias.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        output_padding: (usize, usize),
        device: Device,
    ) -> Result<ConvTranspose2d> {
        let g = options.groups.max(1);
        let fan_in = Shape::checked_product("ConvTranspose2d", &[out_channels / g, kernel.0, kernel.1])?;
        let weight = kaiming(fan_in, vec![in_channels, out_channels / g, kernel.0, kernel.1], device)?;
        let bias = Some(kaiming(fan_in, vec![out_channels], device)?);
        Ok(ConvTranspose2d { weight, bias, options, output_padding })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, self.bias.as_ref(), self.options, self.output_padding)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

/// Max pooling over `[N, C, H, W]`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    /// The window's size, `(height, width)`.
    pub kernel: (usize, usize),
    /// Step between windows, `(height, width)`.
    pub stride: (usize, usize),
    /// Padding added on each side, `(height, width)`.
    pub padding: (usize, usize),
}

impl MaxPool2d {
    /// Non-overlapping windows (stride = kernel), no padding.
    pub fn new(kernel: (usize, usize)) -> Self {
        MaxPool2d { kernel, stride: kernel, padding: (0, 0) }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.kernel, self.stride, self.padding)
    }
}

/// Average pooling over `[N, C, H, W]` (padding counted, as PyTorch's default).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    /// The window's size, `(height, width)`.
    pub kernel: (usize, usize),
    /// Step between windows, `(height, width)`.
    pub stride: (usize, usize),
    /// Zeros added on each side, `(height, width)`.
    pub padding: (usize, usize),
}

impl AvgPool2d {
    /// Non-overlapping windows (stride = kernel), no padding.
    pub fn new(kernel: (usize, usize)) -> Self {
        AvgPool2d { kernel, stride: kernel, padding: (0, 0) }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.kernel, self.stride, self.padding, true)
    }
}

/// Adaptive average pooling to a fixed output size.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d(pub (usize, usize));

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.0)
    }
}

/// Flattens every axis after the first: `[N, …]` → `[N, ∏…]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 {
            return Ok(x.clone());
        }
        x.flatten(1, -1)
    }
}
