//! The CUDA device: context, its one stream, the caching allocator and the module cache.

use super::abi::{TfLayout, TfOptim, TfWindow};
use super::compile;
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

// SAFETY: both are #[repr(C)] plain-old-data structs mirrored from kernels/abi.h, passed to
// kernels by value.
unsafe impl DeviceRepr for TfLayout {}
unsafe impl DeviceRepr for TfOptim {}
// SAFETY: as above, a plain #[repr(C)] struct of integers mirrored from abi.h.
unsafe impl DeviceRepr for TfWindow {}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::CudaUnavailable { reason: reason.into() }
}

pub(crate) fn driver_err(op: &'static str, e: cudarc::driver::DriverError) -> Error {
    Error::Cuda { op, msg: format!("{e:?}") }
}

/// A block of device memory owned by one storage; goes back to the device's cache on drop.
pub(crate) struct Block {
    slice: Option<CudaSlice<u8>>,
    pub(crate) ptr: u64,
    class: usize,
}

/// Kernel arguments, kept alive in one slice until the launch is queued.
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

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<CudaSlice<u8>>>,
    cached: usize,
}

/// One CUDA device. Obtain it with [`CudaDevice::get`]; all work runs on its single stream, so
/// stream order alone keeps reuse of freed memory and kernel launches correctly ordered.
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    arch: String,
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    /// Kernels of user sources (custom ops), by (source key, kernel name): user modules are
    /// not `'static`, so they get their own table keyed by a hash of name and source.
    user_functions: Mutex<HashMap<(u64, String), CudaFunction>>,
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

/// Rounds a request up to its cache class: powers of two up to 1 MiB (at least 512 bytes, so
/// the narrow atomics' 32-bit word is always inside the block), multiples of 2 MiB above.
fn size_class(bytes: usize) -> usize {
    if bytes <= 1 << 20 { bytes.max(512).next_power_of_two() } else { bytes.div_ceil(2 << 20) * (2 << 20) }
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
        // cudarc panics on missing driver symbols (e.g. a driver older than the CUDA 13 API);
        // that must still surface as an Err.
        let opened = std::panic::catch_unwind(|| Self::open(ordinal))
            .unwrap_or_else(|_| Err(unavailable("the CUDA driver library could not be used (cudarc panicked)")))?;
        let d = Arc::new_cyclic(|me| CudaDevice { me: me.clone(), ..opened });
        devices.insert(ordinal, d.clone());
        Ok(d)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        // SAFETY: only tries to dlopen libcuda under cudarc's candidate names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable("the NVIDIA driver library (libcuda.so) was not found: no driver installed"));
        }
        compile::probe_nvrtc()?;
        let count = CudaContext::device_count().map_err(|e| unavailable(format!("cuInit failed: {e:?}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!("no CUDA device {ordinal} ({count} found)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("cannot open device {ordinal}: {e:?}")))?;
        // SAFETY: every buffer is used only on this device's one stream, so cudarc's per-buffer
        // events (cross-stream synchronization) are unnecessary overhead.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_err("new_stream", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver_err("compute_capability", e))?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_err("attribute", e))?;
        Ok(CudaDevice {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            arch: format!("sm_{major}{minor}"),
            ctx,
            stream,
            modules: Mutex::default(),
            functions: Mutex::default(),
            user_functions: Mutex::default(),
            pool: Mutex::default(),
            in_use: AtomicUsize::new(0),
            sm_count: sm_count.max(1) as u32,
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
        if let Ok(mut p) = self.pool.lock() {
            p.free.clear();
            p.cached = 0;
        }
    }

    /// A block of at least `bytes` bytes (uninitialized).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<Block> {
        let class = size_class(bytes);
        let cached = self.pool.lock().ok().and_then(|mut p| {
            let s = p.free.get_mut(&class).and_then(Vec::pop);
            if s.is_some() {
                p.cached -= class;
            }
            s
        });
        let slice = match cached {
            Some(s) => s,
            None => {
                // SAFETY: u8 has no invalid bit patterns; every kernel writes before reading.
                match unsafe { self.stream.alloc::<u8>(class) } {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of memory with blocks cached: give them back and retry once.
                        self.empty_cache();
                        unsafe { self.stream.alloc::<u8>(class) }.map_err(|e| driver_err("alloc", e))?
                    }
                }
            }
        };
        let (ptr, _) = slice.device_ptr(&self.stream);
        self.in_use.fetch_add(class, Ordering::Relaxed);
        Ok(Block { slice: Some(slice), ptr, class })
    }

    /// Takes a block back into the cache. Reuse needs no synchronization: the next user's
    /// work is queued on the same stream after every kernel that touched the block.
    pub(crate) fn release(&self, block: &mut Block) {
        if let Some(s) = block.slice.take() {
            self.in_use.fetch_sub(block.class, Ordering::Relaxed);
            if let Ok(mut p) = self.pool.lock() {
                p.cached += block.class;
                p.free.entry(block.class).or_default().push(s);
            }
        }
    }

    /// Queues a host-to-device copy of `src` into `dst`.
    pub(crate) fn htod<T>(&self, src: &[T], dst: u64) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
        // SAFETY: `dst` is a live block of at least size_of_val(src) bytes.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("memcpy_htod", e))?;
        // Pageable sources are staged by the driver, but syncing keeps `src`'s lifetime obvious.
        self.synchronize_stream()
    }

    /// Copies `dst.len()` elements from device address `src` to the host, waiting for them.
    pub(crate) fn dtoh<T>(&self, src: u64, dst: &mut [T]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
        // SAFETY: `src` is a live block of at least size_of_val(dst) bytes.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_err("memcpy_dtoh", e))?;
        self.synchronize_stream()
    }

    /// Queues `bytes` zero bytes at `dst`.
    pub(crate) fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
        // SAFETY: `dst` is a live block of at least `bytes` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_err("memset", e))
    }

    pub(crate) fn synchronize_stream(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("synchronize", e))
    }

    fn module(&self, name: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().map_err(|_| Error::msg("module table poisoned"))?;
        if let Some(m) = modules.get(name) {
            return Ok(m.clone());
        }
        let m = self.load_ptx(name, compile::module_ptx(name, &self.arch)?)?;
        modules.insert(name, m.clone());
        Ok(m)
    }

    /// Loads PTX into this context, explaining the one failure users hit in practice.
    fn load_ptx(&self, name: &str, ptx: String) -> Result<Arc<CudaModule>> {
        self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|e| {
            if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
                let mut v = 0;
                // SAFETY: the driver is loaded (a context exists); `v` is valid for writes.
                unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
                let nvrtc = compile::nvrtc_version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_default();
                Error::Cuda {
                    op: "load_module",
                    msg: format!(
                        "module {name}: the PTX from NVRTC {nvrtc} is newer than the driver supports (driver CUDA \
                         version {}.{}); update the driver or use an NVRTC no newer than the driver",
                        v / 1000,
                        (v % 1000) / 10
                    ),
                }
            } else {
                driver_err("load_module", e)
            }
        })
    }

    fn function(&self, module: &'static str, kernel: &str) -> Result<CudaFunction> {
        let key = (module, kernel.to_string());
        if let Some(f) = self.functions.lock().map_err(|_| Error::msg("function table poisoned"))?.get(&key) {
            return Ok(f.clone());
        }
        let f = self
            .module(module)?
            .load_function(kernel)
            .map_err(|e| Error::Cuda { op: "load_function", msg: format!("{module}::{kernel}: {e:?}") })?;
        self.functions.lock().map_err(|_| Error::msg("function table poisoned"))?.insert(key, f.clone());
        Ok(f)
    }

    /// Streaming multiprocessors on the device (for sizing grids).
    pub(crate) fn sm_count(&self) -> usize {
        self.sm_count as usize
    }

    /// A 1-D grid for `n` elements: 256 threads a block, capped (kernels loop grid-stride).
    pub(crate) fn grid_1d(&self, n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, self.sm_count as usize * 32) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// Queues `module::kernel` with `args` (by value, in order).
    pub(crate) fn launch(&self, module: &'static str, kernel: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.function(module, kernel)?;
        // SAFETY: every kernel's parameter list matches what its caller pushes (checked by the
        // CUDA parity tests); pointers are live blocks sized for the launch.
        unsafe { self.launch_function(&f, module, kernel, cfg, args) }
    }

    /// Queues `kernel` of a user source `name` (compiled by NVRTC on first use through the
    /// same header splicing and disk cache as the built-in families, then kept per device).
    ///
    /// # Safety
    /// The kernel's parameter list must match `args`, and it must only touch the memory
    /// those pointers cover: the driver cannot check either.
    pub(crate) unsafe fn launch_user(
        &self,
        name: &str,
        source: &str,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        let key = (compile::source_key(name, source), kernel.to_string());
        let cached = self.user_functions.lock().map_err(|_| Error::msg("function table poisoned"))?.get(&key).cloned();
        let f = match cached {
            Some(f) => f,
            None => {
                let m = self.load_ptx(name, compile::user_ptx(name, source, &self.arch)?)?;
                let f = m.load_function(kernel).map_err(|e| Error::Cuda {
                    op: "load_function",
                    msg: format!(
                        "{name}: no kernel `{kernel}` in the CUDA source ({e:?}); is it declared extern \"C\"?"
                    ),
                })?;
                self.user_functions.lock().map_err(|_| Error::msg("function table poisoned"))?.insert(key, f.clone());
                f
            }
        };
        // SAFETY: forwarded to the caller.
        unsafe { self.launch_function(&f, name, kernel, cfg, args) }
    }

    /// # Safety
    /// `args` must match `f`'s parameter list; pointers must be live blocks sized for the launch.
    unsafe fn launch_function(
        &self,
        f: &CudaFunction,
        module: &str,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(x) | Arg::U64(x) => b.arg(x),
                Arg::U32(x) => b.arg(x),
                Arg::U16(x) => b.arg(x),
                Arg::U8(x) => b.arg(x),
                Arg::I64(x) => b.arg(x),
                Arg::F64(x) => b.arg(x),
                Arg::Layout(x) => b.arg(x),
                Arg::Optim(x) => b.arg(x),
                Arg::Window(x) => b.arg(x),
            };
        }
        // SAFETY: guaranteed by the caller (see above).
        unsafe { b.launch(cfg) }
            .map_err(|e| Error::Cuda { op: "launch", msg: format!("{module}::{kernel}: {e:?}") })?;
        Ok(())
    }
}
