//! The launch rule of a general custom op's CUDA half: which entries run, with what grid,
//! block and dynamic shared memory, checked before anything reaches the driver.

use super::view::Spec;
use crate::{DType, Error, Result};

/// What a launch rule sees: the inputs' and outputs' shapes, the dtype the kernels are
/// instantiated for, the op's scalars and the device's size.
#[derive(Clone, Copy, Debug)]
pub struct LaunchSpec<'a> {
    /// The inputs, in order.
    pub inputs: &'a [Spec<'a>],
    /// The outputs, as the shape rule declared them.
    pub outputs: &'a [Spec<'a>],
    /// The op's float dtype (every float input's and output's).
    pub dtype: DType,
    /// The op's scalars.
    pub scalars: &'a [f64],
    /// Streaming multiprocessors on the device (to size grid-stride launches).
    pub sm_count: usize,
}

/// One kernel launch: entry `{kernel}_{dtype}` of the op's source with this grid, block and
/// dynamic shared memory (`TF_DYNAMIC_SHARED` in the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The entry's name without the dtype suffix.
    pub kernel: String,
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z (at most 1024 in all).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes (at most [`Launch::MAX_SHARED_BYTES`]).
    pub shared_bytes: u32,
}

impl Launch {
    /// Dynamic shared memory every CUDA device gives a block without an opt-in.
    pub const MAX_SHARED_BYTES: u32 = 48 * 1024;

    /// `blocks` × `threads` in one dimension, no dynamic shared memory.
    pub fn linear(kernel: &str, blocks: u32, threads: u32) -> Launch {
        Launch { kernel: kernel.to_string(), grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: 0 }
    }
    /// The same launch with `bytes` of dynamic shared memory per block.
    pub fn shared(self, bytes: u32) -> Launch {
        Launch { shared_bytes: bytes, ..self }
    }

    /// The limits every CUDA device enforces, as an `Err` naming the op instead of a failed
    /// launch.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn check(&self, op: &str) -> Result<()> {
        let bad = |why: String| Err(Error::msg(format!("custom op `{op}`: launch of `{}`: {why}", self.kernel)));
        let (g, b) = (self.grid, self.block);
        let threads = u64::from(b.0) * u64::from(b.1) * u64::from(b.2);
        if !super::is_identifier(&self.kernel) {
            return bad("the kernel name is not an identifier".into());
        }
        if threads == 0 || threads > 1024 || b.2 > 64 {
            return bad(format!("block {b:?} must hold 1 to 1024 threads (z at most 64)"));
        }
        if g.0 == 0 || g.1 == 0 || g.2 == 0 || g.0 > i32::MAX as u32 || g.1 > 65535 || g.2 > 65535 {
            return bad(format!("grid {g:?} must be nonzero (x < 2^31, y and z at most 65535)"));
        }
        if self.shared_bytes > Self::MAX_SHARED_BYTES {
            return bad(format!(
                "{} bytes of dynamic shared memory exceed {}",
                self.shared_bytes,
                Self::MAX_SHARED_BYTES
            ));
        }
        Ok(())
    }
}
