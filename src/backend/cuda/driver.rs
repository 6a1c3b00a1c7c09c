//! The seam between the CUDA backend and what executes it: the few driver operations the
//! backend uses, behind one trait with two implementations, the real driver on cudarc
//! ([`super::real`]) and the CPU emulator ([`super::emu`], feature `cuda-emu`). Everything
//! above (storages, the caching allocator, launch configurations, kernel selection, custom ops)
//! is the same code in both modes, so the emulator tests what ships. No cudarc type crosses it.

use super::abi::{TfLayout, TfOptim, TfWindow};
use crate::Result;
use std::any::Any;
use std::sync::Arc;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// A 1-D launch of `blocks` × `threads` without dynamic shared memory.
    pub(crate) fn linear(blocks: u32, threads: u32) -> LaunchCfg {
        LaunchCfg { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_bytes: 0 }
    }
}

/// Kernel arguments, by value in parameter order (what cuLaunchKernel's array points at).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(u64),
    U64(u64),
    U32(u32),
    U16(u16),
    U8(u8),
    I64(i64),
    F64(f64),
    Layout(TfLayout),
    Optim(TfOptim),
    Window(TfWindow),
}

impl Arg {
    /// The address of the argument's value, as a kernel-parameter array holds it.
    #[cfg(feature = "cuda-emu")]
    pub(crate) fn as_param(&self) -> *mut std::ffi::c_void {
        let p: *const std::ffi::c_void = match self {
            Arg::Ptr(x) | Arg::U64(x) => (x as *const u64).cast(),
            Arg::U32(x) => (x as *const u32).cast(),
            Arg::U16(x) => (x as *const u16).cast(),
            Arg::U8(x) => (x as *const u8).cast(),
            Arg::I64(x) => (x as *const i64).cast(),
            Arg::F64(x) => (x as *const f64).cast(),
            Arg::Layout(x) => (x as *const TfLayout).cast(),
            Arg::Optim(x) => (x as *const TfOptim).cast(),
            Arg::Window(x) => (x as *const TfWindow).cast(),
        };
        p.cast_mut()
    }
}

/// A kernel ready to launch: the driver's own handle and the name errors quote.
#[derive(Clone)]
pub(crate) struct Kernel {
    pub name: String,
    pub handle: Arc<dyn Any + Send + Sync>,
}

/// What the backend asks of a CUDA device. Addresses are device addresses (`u64`); copies
/// and launches are ordered on the device's one stream.
pub(crate) trait Driver: Send + Sync {
    /// The device's name.
    fn name(&self) -> String;
    /// Compute capability (major, minor).
    fn compute_capability(&self) -> (u32, u32);
    /// Streaming multiprocessors.
    fn sm_count(&self) -> u32;
    /// Bytes the allocator asks for a request of `bytes`: the real driver rounds up to a
    /// cache class, the emulator allocates exactly so a read past the end is caught.
    fn size_class(&self, bytes: usize) -> usize;
    /// `bytes` of uninitialized device memory.
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Frees what [`Driver::alloc`] returned for `bytes`.
    ///
    /// # Safety
    /// `ptr` came from `alloc(bytes)` of this driver and is not used afterwards.
    unsafe fn free(&self, ptr: u64, bytes: usize);
    /// Copies `src` to device address `dst`.
    ///
    /// # Safety
    /// `dst` is live device memory of at least `src.len()` bytes.
    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Copies from device address `src` into `dst`, waiting for the stream first.
    ///
    /// # Safety
    /// `src` is live device memory of at least `dst.len()` bytes.
    unsafe fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    /// Sets `bytes` bytes at `dst` to zero.
    ///
    /// # Safety
    /// `dst` is live device memory of at least `bytes` bytes.
    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// Kernel `kernel` of the built-in family `family` (`kernels/<family>.cu`).
    fn builtin(&self, family: &'static str, kernel: &str) -> Result<Kernel>;
    /// Kernel `kernel` of a user's CUDA source (a custom op), compiled on first use.
    fn user(&self, name: &str, source: &str, kernel: &str) -> Result<Kernel>;
    /// Queues `k` with `args`.
    ///
    /// # Safety
    /// `args` match the kernel's parameter list, and its pointers cover what it touches.
    unsafe fn launch(&self, k: &Kernel, cfg: LaunchCfg, args: &[Arg]) -> Result<()>;
    /// Waits for everything queued.
    fn synchronize(&self) -> Result<()>;
    /// The `CUstream` everything is queued on, with this device's context made current on
    /// the calling thread: where NCCL queues its collectives, in order with the kernels.
    /// `None` where no real stream exists (the emulator).
    #[cfg(feature = "nccl")]
    fn raw_stream(&self) -> Result<Option<*mut std::ffi::c_void>> {
        Ok(None)
    }
}
