//! The real driver: a CUDA context and its one stream through cudarc, kernels compiled by
//! NVRTC ([`super::compile`]) and loaded as modules.

use super::abi::{TfLayout, TfOptim, TfWindow};
use super::compile;
use super::driver::{Arg, Driver, Kernel, LaunchCfg};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

// SAFETY: both are #[repr(C)] plain-old-data structs mirrored from kernels/abi.h, passed to
// kernels by value.
unsafe impl DeviceRepr for TfLayout {}
unsafe impl DeviceRepr for TfOptim {}
// SAFETY: as above, a plain #[repr(C)] struct of integers mirrored from abi.h.
unsafe impl DeviceRepr for TfWindow {}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::CudaUnavailable { reason: reason.into() }
}

/// Runs a driver call, turning a panic inside cudarc (it panics when the driver library lacks
/// a function it needs, e.g. a driver older than the CUDA version this build targets) into
/// an `Err` instead of unwinding through the user's program.
fn guarded<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Cuda {
            op,
            msg: "the CUDA driver library lacks a function this build needs (cudarc panicked); update the NVIDIA \
                  driver"
                .into(),
        })
    })
}

fn driver_err(op: &'static str, e: cudarc::driver::DriverError) -> Error {
    Error::Cuda { op, msg: format!("{e:?}") }
}

/// Rounds a request up to its cache class: powers of two up to 1 MiB, multiples of 2 MiB
/// above, so freed blocks are reused by requests of similar size.
fn size_class(bytes: usize) -> usize {
    if bytes <= 1 << 20 { bytes.max(256).next_power_of_two() } else { bytes.div_ceil(2 << 20) * (2 << 20) }
}

pub(crate) struct RealDriver {
    name: String,
    cc: (u32, u32),
    /// What NVRTC compiles for: the device's `sm_XY`, or `compute_XY` when the device is
    /// newer than this NVRTC (see `compile::target_arch`).
    target: String,
    sm_count: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Live allocations by address; dropping a slice frees it on the stream.
    live: Mutex<HashMap<u64, CudaSlice<u8>>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl RealDriver {
    pub(crate) fn open(ordinal: usize) -> Result<RealDriver> {
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
        let cc = (major.max(0) as u32, minor.max(0) as u32);
        // Without the list (an NVRTC too old to give it), compile for the device itself.
        let target = compile::target_arch(cc.0 * 10 + cc.1, &compile::nvrtc_archs().unwrap_or_default())?;
        Ok(RealDriver {
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            cc,
            target,
            sm_count: sm_count.max(1) as u32,
            ctx,
            stream,
            live: Mutex::default(),
            modules: Mutex::default(),
        })
    }

    /// Loads PTX into this context, explaining the one failure users hit in practice.
    fn load_ptx(&self, name: &str, ptx: String) -> Result<Arc<CudaModule>> {
        if ptx.contains('\0') {
            return Err(Error::Cuda { op: "load_module", msg: format!("module {name}: the PTX contains a NUL byte") });
        }
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

    fn kernel(&self, m: &Arc<CudaModule>, module: &str, kernel: &str) -> Result<Kernel> {
        if kernel.contains('\0') {
            return Err(Error::Cuda {
                op: "load_function",
                msg: format!("{module}: a kernel name contains a NUL byte"),
            });
        }
        let f = m.load_function(kernel).map_err(|e| Error::Cuda {
            op: "load_function",
            msg: format!("{module}: no kernel `{kernel}` ({e:?}); is it declared extern \"C\"?"),
        })?;
        Ok(Kernel { name: format!("{module}::{kernel}"), handle: Arc::new(f) })
    }
}

impl Driver for RealDriver {
    #[cfg(feature = "nccl")]
    fn raw_stream(&self) -> Result<Option<*mut std::ffi::c_void>> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("bind_to_thread", e))?;
        Ok(Some(self.stream.cu_stream().cast()))
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn compute_capability(&self) -> (u32, u32) {
        self.cc
    }
    fn sm_count(&self) -> u32 {
        self.sm_count
    }
    fn size_class(&self, bytes: usize) -> usize {
        size_class(bytes)
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        guarded("alloc", || {
            // SAFETY: u8 has no invalid bit patterns; every kernel writes before reading.
            let s = unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| driver_err("alloc", e))?;
            let (ptr, _) = s.device_ptr(&self.stream);
            self.live.lock().map_err(|_| Error::msg("allocation table poisoned"))?.insert(ptr, s);
            Ok(ptr)
        })
    }
    unsafe fn free(&self, ptr: u64, _bytes: usize) {
        let _ = guarded("free", || {
            if let Ok(mut live) = self.live.lock() {
                live.remove(&ptr);
            }
            Ok(())
        });
    }
    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        guarded("memcpy_htod", || {
            self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
            // SAFETY: forwarded to the caller.
            unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
                .map_err(|e| driver_err("memcpy_htod", e))?;
            // Pageable sources are staged by the driver, but syncing keeps `src`'s lifetime obvious.
            self.synchronize()
        })
    }
    unsafe fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        guarded("memcpy_dtoh", || {
            self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
            // SAFETY: forwarded to the caller.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
                .map_err(|e| driver_err("memcpy_dtoh", e))?;
            self.synchronize()
        })
    }
    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        guarded("memset", || {
            self.ctx.bind_to_thread().map_err(|e| driver_err("bind", e))?;
            // SAFETY: forwarded to the caller.
            unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
                .map_err(|e| driver_err("memset", e))
        })
    }
    fn builtin(&self, family: &'static str, kernel: &str) -> Result<Kernel> {
        guarded("load_module", || {
            let m = {
                let mut modules = self.modules.lock().map_err(|_| Error::msg("module table poisoned"))?;
                match modules.get(family) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.load_ptx(family, compile::module_ptx(family, &self.target)?)?;
                        modules.insert(family, m.clone());
                        m
                    }
                }
            };
            self.kernel(&m, family, kernel)
        })
    }
    fn user(&self, name: &str, source: &str, kernel: &str) -> Result<Kernel> {
        guarded("load_module", || {
            let m = self.load_ptx(name, compile::user_ptx(name, source, &self.target)?)?;
            self.kernel(&m, name, kernel)
        })
    }
    unsafe fn launch(&self, k: &Kernel, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        guarded("launch", || {
            let f = k.handle.downcast_ref::<CudaFunction>().ok_or_else(|| Error::msg("kernel of another driver"))?;
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
            let cfg = LaunchConfig { grid_dim: cfg.grid, block_dim: cfg.block, shared_mem_bytes: cfg.shared_bytes };
            // SAFETY: forwarded to the caller.
            unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda { op: "launch", msg: format!("{}: {e:?}", k.name) })?;
            Ok(())
        })
    }
    fn synchronize(&self) -> Result<()> {
        guarded("synchronize", || self.stream.synchronize().map_err(|e| driver_err("synchronize", e)))
    }
}
