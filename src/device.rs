//! Where a tensor's storage lives.

use std::fmt;

/// A compute device. Ops over tensors on two different devices are an error; moving data is
/// always explicit (`Tensor::to_device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, SIMD + rayon kernels.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// The CUDA device `ordinal`, after checking that the driver, NVRTC and the device are
    /// there. Without them this is `Err(Error::CudaUnavailable { reason })`, never a panic.
    ///
    /// ```
    /// // Works everywhere: on a machine without a GPU this is an Err with the reason.
    /// let d = tensorforge::Device::cuda(0);
    /// if let Err(e) = &d { assert!(e.to_string().contains("CUDA unavailable")); }
    /// ```
    pub fn cuda(ordinal: usize) -> crate::Result<Device> {
        #[cfg(feature = "cuda")]
        {
            crate::backend::cuda::CudaDevice::get(ordinal)?;
            Ok(Device::Cuda(ordinal))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(crate::Error::CudaUnavailable { reason: "tensorforge was built without the `cuda` feature".into() })
        }
    }

    /// True for [`Device::Cuda`].
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Parses `cpu`, `cuda` or `cuda:N` (as given on a command line) and checks the device.
    pub fn parse(s: &str) -> crate::Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(crate::Error::msg(format!("unknown device `{s}` (expected cpu, cuda or cuda:N)"))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
