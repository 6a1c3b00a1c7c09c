//! The engine's one error type. Every fallible public function returns [`Result`].

use crate::{DType, Device, Shape};
use std::fmt;

/// Everything that can go wrong in the engine, with enough context to find the cause:
/// the op, and the shapes, dtypes and devices involved.
#[derive(Debug, Clone)]
pub enum Error {
    /// Two shapes that had to agree (or broadcast) did not.
    ShapeMismatch {
        /// The op that failed.
        op: &'static str,
        /// The left operand's shape.
        lhs: Shape,
        /// The right operand's shape.
        rhs: Shape,
    },
    /// A shape argument is invalid for the op (wrong rank, wrong element count, …).
    BadShape {
        /// The op that failed.
        op: &'static str,
        /// What is wrong with the shape.
        msg: String,
    },
    /// An axis index out of range for the tensor's rank.
    AxisOutOfRange {
        /// The op that failed.
        op: &'static str,
        /// The axis as given (negative counts from the end).
        axis: isize,
        /// The tensor's rank.
        rank: usize,
    },
    /// An element index (gather, index_select, narrow, …) out of range.
    IndexOutOfRange {
        /// The op that failed.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The size of the dimension being indexed.
        size: usize,
    },
    /// Two operands had different dtypes.
    DTypeMismatch {
        /// The op that failed.
        op: &'static str,
        /// The left operand's dtype.
        lhs: DType,
        /// The right operand's dtype.
        rhs: DType,
    },
    /// The op does not support this dtype.
    UnsupportedDType {
        /// The op that failed.
        op: &'static str,
        /// The dtype the op was given.
        dtype: DType,
    },
    /// Two operands live on different devices; the engine never copies implicitly.
    DeviceMismatch {
        /// The op that failed.
        op: &'static str,
        /// The left operand's device.
        lhs: Device,
        /// The right operand's device.
        rhs: Device,
    },
    /// No usable CUDA driver, NVRTC or device.
    CudaUnavailable {
        /// Why CUDA could not be used.
        reason: String,
    },
    /// A CUDA kernel failed to compile; `log` is NVRTC's log.
    KernelCompile {
        /// The name of the kernel module that failed to compile.
        module: String,
        /// The compiler's log.
        log: String,
    },
    /// A CUDA driver call failed.
    Cuda {
        /// The op that failed.
        op: &'static str,
        /// The driver's error message.
        msg: String,
    },
    /// An allocation of `bytes` bytes on `device` failed: the memory is not there (or the
    /// size cannot be represented). Nothing was written; the engine stays usable.
    OutOfMemory {
        /// The op that failed.
        op: &'static str,
        /// The device the allocation was on.
        device: Device,
        /// The number of bytes requested.
        bytes: usize,
    },
    /// A collective across ranks failed: a peer left or erred (timed out waiting for it),
    /// ranks disagree (shapes, dtypes, parameters), or the transport (MPI, NCCL) reported an
    /// error or is missing.
    Distributed {
        /// The collective or setup step (`all_reduce`, `broadcast`, `init`…).
        op: &'static str,
        /// What went wrong, and what to check.
        msg: String,
    },
    /// An autograd misuse (backward on a non-scalar, no gradient, …).
    Autograd(String),
    /// Reading or writing a file failed, or its contents are malformed.
    Io {
        /// What was being read or written (for example, the file).
        context: String,
        /// What went wrong.
        msg: String,
    },
    /// Anything else, with a message.
    Msg(String),
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A plain message error.
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, lhs, rhs } => {
                write!(f, "{op}: shape mismatch, {lhs:?} vs {rhs:?}")
            }
            Error::BadShape { op, msg } => write!(f, "{op}: {msg}"),
            Error::AxisOutOfRange { op, axis, rank } => {
                write!(f, "{op}: axis {axis} out of range for a tensor of rank {rank}")
            }
            Error::IndexOutOfRange { op, index, size } => {
                write!(f, "{op}: index {index} out of range for a dimension of size {size}")
            }
            Error::DTypeMismatch { op, lhs, rhs } => {
                write!(f, "{op}: dtype mismatch, {lhs:?} vs {rhs:?}")
            }
            Error::UnsupportedDType { op, dtype } => {
                write!(f, "{op}: unsupported dtype {dtype:?}")
            }
            Error::DeviceMismatch { op, lhs, rhs } => {
                write!(f, "{op}: operands on different devices, {lhs:?} vs {rhs:?} (use to_device explicitly)")
            }
            Error::CudaUnavailable { reason } => write!(f, "CUDA unavailable: {reason}"),
            Error::KernelCompile { module, log } => {
                write!(f, "NVRTC failed to compile kernel module {module}:\n{log}")
            }
            Error::Cuda { op, msg } => write!(f, "CUDA error in {op}: {msg}"),
            Error::Distributed { op, msg } => write!(f, "distributed {op}: {msg}"),
            Error::OutOfMemory { op, device, bytes } => {
                write!(f, "{op}: out of memory on {device:?}: could not allocate {bytes} bytes")
            }
            Error::Autograd(m) => write!(f, "autograd: {m}"),
            Error::Io { context, msg } => write!(f, "{context}: {msg}"),
            Error::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io { context: "io".into(), msg: e.to_string() }
    }
}

/// Returns early with a [`Error::Msg`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
