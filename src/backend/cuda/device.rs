//! The CUDA device: context, its one stream, the caching allocator and the module cache.

pub(crate) use super::driver::Arg;
use super::driver::{Driver, Kernel, LaunchCfg};
use crate::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::CudaUnavailable { reason: reason.into() }
}

/// A block of device memory owned by one storage; goes back to the device's cache on drop.
pub(crate) struct Block {
    live: bool,
    pub(crate) ptr: u64,
    class: usize,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<u64>>,
    cached: usize,
}

/// One CUDA device. Obtain it with [`CudaDevice::get`]; all work runs on its single stream, so
/// stream order alone keeps reuse of freed memory and kernel launches correctly ordered.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: String,
    driver: Box<dyn Driver>,
    functions: Mutex<HashMap<(&'static str, String), Kernel>>,
    /// Kernels of user sources (custom ops), by (source key, kernel name): user modules are
    /// not `'static`, so they get their own table keyed by a hash of name and source.
    user_functions: Mutex<HashMap<(u64, String), Kernel>>,
    pool: Mutex<Pool>,
    in_use: AtomicUsize,
    sm_count: u32,
    /// Itself, so `&self` methods can hand new storages an `Arc` (it only ever lives in one).
    me: Weak<CudaDevice>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {}, {})", self.ordinal, self.name, self.arch)
    }
}

/// Every device block spans whole 32-bit words, so the narrow atomics of `index.cu` (a CAS on
/// the word holding a byte or a half) stay inside it even where the driver allocates exactly.
fn whole_words(bytes: usize) -> usize {
    bytes.max(1).div_ceil(4) * 4
}

impl CudaDevice {
    /// The device `ordinal`, opened once per process. Without the driver library, without
    /// NVRTC, or without that device: `Err(Error::CudaUnavailable { reason })`, never a panic.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let mut devices =
            DEVICES.get_or_init(Default::default).lock().map_err(|_| unavailable("device table poisoned"))?;
        if let Some(d) = devices.get(&ordinal) {
            return Ok(d.clone());
        }
        let opened = Self::open(ordinal)?;
        let d = Arc::new_cyclic(|me| CudaDevice { me: me.clone(), ..opened });
        devices.insert(ordinal, d.clone());
        Ok(d)
    }

    #[cfg(not(feature = "cuda-emu"))]
    fn driver(ordinal: usize) -> Result<Box<dyn Driver>> {
        // cudarc panics on missing driver symbols (e.g. a driver older than the CUDA 13 API);
        // that must still surface as an Err.
        let opened = std::panic::catch_unwind(|| super::real::RealDriver::open(ordinal))
            .unwrap_or_else(|_| Err(unavailable("the CUDA driver library could not be used (cudarc panicked)")))?;
        Ok(Box::new(opened))
    }

    /// Built with `cuda-emu`, every CUDA device is the emulator (docs/EMULATOR.md).
    #[cfg(feature = "cuda-emu")]
    fn driver(ordinal: usize) -> Result<Box<dyn Driver>> {
        Ok(Box::new(super::emu::EmuDriver::open(ordinal)?))
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        let driver = Self::driver(ordinal)?;
        let (major, minor) = driver.compute_capability();
        Ok(CudaDevice {
            ordinal,
            name: driver.name(),
            arch: format!("sm_{major}{minor}"),
            sm_count: driver.sm_count().max(1),
            driver,
            functions: Mutex::default(),
            user_functions: Mutex::default(),
            pool: Mutex::default(),
            in_use: AtomicUsize::new(0),
            me: Weak::new(),
        })
    }

    /// This device as the `Arc` that storages keep.
    pub(crate) fn arc(&self) -> Result<Arc<CudaDevice>> {
        self.me.upgrade().ok_or_else(|| Error::msg("CUDA device used after it was dropped"))
    }
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The device's name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The NVRTC target for this device, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// The compute capability's major version (8 for sm_80/sm_86, 9 for sm_90).
    pub(crate) fn compute_major(&self) -> u32 {
        self.arch.trim_start_matches("sm_").parse::<u32>().map_or(0, |v| v / 10)
    }
    /// Bytes held by live storages (rounded up to their size classes).
    pub fn bytes_in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
    /// Bytes freed by storages and kept for reuse.
    pub fn bytes_cached(&self) -> usize {
        self.pool.lock().map(|p| p.cached).unwrap_or(0)
    }
    /// Returns every cached block to the driver.
    pub fn empty_cache(&self) {
        let blocks: Vec<(usize, Vec<u64>)> = match self.pool.lock() {
            Ok(mut p) => {
                p.cached = 0;
                p.free.drain().collect()
            }
            Err(_) => return,
        };
        for (class, ptrs) in blocks {
            for ptr in ptrs {
                // SAFETY: a cached block is owned by the pool alone.
                unsafe { self.driver.free(ptr, class) };
            }
        }
    }

    /// A block of at least `bytes` bytes (uninitialized).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<Block> {
        let class = self.driver.size_class(whole_words(bytes));
        let cached = self.pool.lock().ok().and_then(|mut p| {
            let s = p.free.get_mut(&class).and_then(Vec::pop);
            if s.is_some() {
                p.cached -= class;
            }
            s
        });
        let ptr = match cached {
            Some(p) => p,
            None => match self.driver.alloc(class) {
                Ok(p) => p,
                Err(_) => {
                    // Out of memory with blocks cached: give them back and retry once.
                    self.empty_cache();
                    self.driver.alloc(class).map_err(|e| match e {
                        Error::OutOfMemory { .. } => {
                            Error::OutOfMemory { op: "alloc", device: Device::Cuda(self.ordinal), bytes }
                        }
                        Error::Cuda { ref msg, .. } if msg.contains("OUT_OF_MEMORY") => {
                            Error::OutOfMemory { op: "alloc", device: Device::Cuda(self.ordinal), bytes }
                        }
                        other => other,
                    })?
                }
            },
        };
        self.in_use.fetch_add(class, Ordering::Relaxed);
        Ok(Block { live: true, ptr, class })
    }

    /// Takes a block back into the cache. Reuse needs no synchronization: the next user's
    /// work is queued on the same stream after every kernel that touched the block.
    pub(crate) fn release(&self, block: &mut Block) {
        if !std::mem::take(&mut block.live) {
            return;
        }
        self.in_use.fetch_sub(block.class, Ordering::Relaxed);
        if let Ok(mut p) = self.pool.lock() {
            p.cached += block.class;
            p.free.entry(block.class).or_default().push(block.ptr);
        }
    }

    /// Copies `src` to device address `dst`.
    pub(crate) fn htod<T>(&self, src: &[T], dst: u64) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: any T is readable as bytes; `dst` is a live block of at least that many.
        unsafe {
            let bytes = std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), std::mem::size_of_val(src));
            self.driver.htod(dst, bytes)
        }
    }

    /// Copies `dst.len()` elements from device address `src` to the host, waiting for them.
    pub(crate) fn dtoh<T>(&self, src: u64, dst: &mut [T]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: callers pass only plain numeric T (every bit pattern valid); `src` is a live
        // block of at least size_of_val(dst) bytes.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(dst));
            self.driver.dtoh(src, bytes)
        }
    }

    /// Queues `bytes` zero bytes at `dst`.
    pub(crate) fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: `dst` is a live block of at least `bytes` bytes.
        unsafe { self.driver.memset_zero(dst, bytes) }
    }

    /// The device's one stream, its context current on this thread (see `Driver::raw_stream`).
    #[cfg(feature = "nccl")]
    pub(crate) fn raw_stream(&self) -> Result<Option<*mut std::ffi::c_void>> {
        self.driver.raw_stream()
    }
    pub(crate) fn synchronize_stream(&self) -> Result<()> {
        self.driver.synchronize()
    }

    fn function(&self, module: &'static str, kernel: &str) -> Result<Kernel> {
        let key = (module, kernel.to_string());
        if let Some(f) = self.functions.lock().map_err(|_| Error::msg("function table poisoned"))?.get(&key) {
            return Ok(f.clone());
        }
        let f = self.driver.builtin(module, kernel)?;
        self.functions.lock().map_err(|_| Error::msg("function table poisoned"))?.insert(key, f.clone());
        Ok(f)
    }

    /// Streaming multiprocessors on the device (for sizing grids).
    pub(crate) fn sm_count(&self) -> usize {
        self.sm_count as usize
    }

    /// A 1-D grid for `n` elements: 256 threads a block, capped (kernels loop grid-stride).
    pub(crate) fn grid_1d(&self, n: usize) -> LaunchCfg {
        LaunchCfg::linear(n.div_ceil(256).clamp(1, self.sm_count as usize * 32) as u32, 256)
    }

    /// Queues `module::kernel` with `args` (by value, in order).
    pub(crate) fn launch(&self, module: &'static str, kernel: &str, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        let f = self.function(module, kernel)?;
        // SAFETY: every kernel's parameter list matches what its caller pushes (checked by the
        // CUDA parity tests, run under the emulator in CI); pointers are live blocks sized for
        // the launch.
        unsafe { self.driver.launch(&f, cfg, args) }
    }

    /// Queues `kernel` of a user source `name` (compiled on first use through the same header
    /// splicing and disk cache as the built-in families, then kept per device).
    ///
    /// # Safety
    /// The kernel's parameter list must match `args`, and it must only touch the memory
    /// those pointers cover: the driver cannot check either.
    pub(crate) unsafe fn launch_user(
        &self,
        name: &str,
        source: &str,
        kernel: &str,
        cfg: LaunchCfg,
        args: &[Arg],
    ) -> Result<()> {
        let key = (super::compile::source_key(name, source), kernel.to_string());
        let cached = self.user_functions.lock().map_err(|_| Error::msg("function table poisoned"))?.get(&key).cloned();
        let f = match cached {
            Some(f) => f,
            None => {
                let f = self.driver.user(name, source, kernel)?;
                self.user_functions.lock().map_err(|_| Error::msg("function table poisoned"))?.insert(key, f.clone());
                f
            }
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.driver.launch(&f, cfg, args) }
    }
}
