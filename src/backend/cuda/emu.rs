//! The CUDA emulator driver (feature `cuda-emu`): device memory is host memory, and a launch
//! runs every block of the kernel compiled as host C++ (`kernels/emu/`, built by build.rs),
//! blocks in parallel on rayon, each block's threads as fibers. Built to find bugs, not to
//! hide them: allocations are exact (to the 32-bit word) and poisoned with NaN bytes, so a
//! read past the end (under AddressSanitizer) or of an unwritten element shows; schedules are
//! chosen by environment:
//!
//! - `TENSORFORGE_EMU_SCHEDULE`: `in-order` (default), `reverse`, or `random[:SEED]`: the
//!   order in which blocks start and in which a block's threads run between barriers.
//! - `TENSORFORGE_EMU_CP_ASYNC`: `wait` (default: a `cp.async` lands only at its
//!   `wait_group`, so a missing wait reads stale shared memory) or `issue` (lands at once).
//! - `TENSORFORGE_EMU_COVERAGE=DIR`: writes `DIR/all.txt` (every built-in kernel) and
//!   appends each kernel launched to `DIR/launched-<pid>.txt` (`scripts/emu-coverage.sh`).
//!
//! docs/EMULATOR.md says what the emulator cannot check.

use super::driver::{Arg, Driver, Kernel, LaunchCfg};
use crate::{Error, Result};
use rayon::prelude::*;
use std::alloc::Layout;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, c_char, c_void};
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

type Entry = unsafe extern "C" fn(*mut *mut c_void);

#[repr(C)]
struct TfEmuKernel {
    name: *const c_char,
    entry: Option<Entry>,
}

/// Mirrors `TfEmuOptions` in kernels/emu/runtime.cpp.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EmuOptions {
    order: u32,
    cp_async_at_wait: u32,
    seed: u64,
    /// The launch's dynamic shared memory (`TF_DYNAMIC_SHARED`), per block.
    shared_bytes: u64,
}

type RunBlock = unsafe extern "C" fn(
    entry: Entry,
    params: *const *mut c_void,
    kernel: *const c_char,
    grid: *const u32,
    block: *const u32,
    linear: u64,
    opts: *const EmuOptions,
    err: *mut c_char,
    errlen: usize,
) -> i32;

unsafe extern "C" {
    fn tf_emu_builtin(i: usize) -> *const TfEmuKernel;
    fn tf_emu_run_block(
        entry: Entry,
        params: *const *mut c_void,
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        linear: u64,
        opts: *const EmuOptions,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
}

/// An emulated kernel: its entry and the runtime that runs it (the binary's own, or a custom
/// op's shared object, kept loaded by `_lib`).
struct EmuKernel {
    entry: Entry,
    run: RunBlock,
    name: CString,
    _lib: Option<Arc<libloading::Library>>,
}

const ALIGN: usize = 256;
/// 0xFF bytes read as NaN in every float type, and as -1 / 255 in the integer ones.
const POISON: u8 = 0xff;

/// The built-in kernels by name (every family in `kernels/`).
fn builtins() -> &'static HashMap<String, Entry> {
    static TABLE: OnceLock<HashMap<String, Entry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        for i in 0.. {
            // SAFETY: tf_emu_builtin returns entries of a static table, then null.
            let k = unsafe { tf_emu_builtin(i) };
            if k.is_null() {
                break;
            }
            // SAFETY: non-null entries hold a static NUL-terminated name and an entry.
            let (name, entry) = unsafe { (CStr::from_ptr((*k).name), (*k).entry) };
            if let Some(e) = entry {
                m.insert(name.to_string_lossy().into_owned(), e);
            }
        }
        m
    })
}

/// Every built-in kernel entry point the emulator can run, sorted.
pub fn kernel_names() -> Vec<String> {
    let mut v: Vec<String> = builtins().keys().cloned().collect();
    v.sort();
    v
}

fn options() -> Result<EmuOptions> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut o = EmuOptions { order: 0, cp_async_at_wait: 1, seed: 0x5eed, shared_bytes: 0 };
    match env("TENSORFORGE_EMU_SCHEDULE").as_deref() {
        None | Some("in-order") => {}
        Some("reverse") => o.order = 1,
        Some(s) if s == "random" || s.starts_with("random:") => {
            o.order = 2;
            if let Some(seed) = s.strip_prefix("random:") {
                o.seed =
                    seed.parse().map_err(|_| Error::msg(format!("TENSORFORGE_EMU_SCHEDULE: bad seed `{seed}`")))?;
            }
        }
        Some(s) => {
            return Err(Error::msg(format!(
                "TENSORFORGE_EMU_SCHEDULE=`{s}`: expected in-order, reverse, random or random:SEED"
            )));
        }
    }
    match env("TENSORFORGE_EMU_CP_ASYNC").as_deref() {
        None | Some("wait") => {}
        Some("issue") => o.cp_async_at_wait = 0,
        Some(s) => return Err(Error::msg(format!("TENSORFORGE_EMU_CP_ASYNC=`{s}`: expected wait or issue"))),
    }
    Ok(o)
}

/// Kernel launches seen by this process, for the coverage report.
fn record_launch(name: &str) {
    static SEEN: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    let Some(dir) = std::env::var_os("TENSORFORGE_EMU_COVERAGE").filter(|d| !d.is_empty()) else { return };
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else { return };
    if seen.insert(name.to_string()) {
        let file = std::path::Path::new(&dir).join(format!("launched-{}.txt", std::process::id()));
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
            let _ = writeln!(f, "{name}");
        }
    }
}

pub(crate) struct EmuDriver {
    opts: EmuOptions,
}

impl EmuDriver {
    pub(crate) fn open(ordinal: usize) -> Result<EmuDriver> {
        if ordinal != 0 {
            return Err(super::device::unavailable(format!("no CUDA device {ordinal} (the emulator has one)")));
        }
        if let Some(dir) = std::env::var_os("TENSORFORGE_EMU_COVERAGE").filter(|d| !d.is_empty()) {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(std::path::Path::new(&dir).join("all.txt"), kernel_names().join("\n") + "\n");
        }
        Ok(EmuDriver { opts: options()? })
    }
}

/// The kernel-parameter array, shared read-only by the threads running blocks.
struct Params(Vec<*mut c_void>);
// SAFETY: the pointers are only read (by the kernels' trampolines) while `args` is borrowed.
unsafe impl Sync for Params {}

impl Params {
    fn ptr(&self) -> *const *mut c_void {
        self.0.as_ptr()
    }
}

impl Driver for EmuDriver {
    fn name(&self) -> String {
        "tensorforge CUDA emulator (CPU)".into()
    }
    /// sm_90, so the same tile and path selection runs as on an H100.
    fn compute_capability(&self) -> (u32, u32) {
        (9, 0)
    }
    /// A small count keeps grids (sized from it) small on two cores.
    fn sm_count(&self) -> u32 {
        4
    }
    /// Exact: the same caching allocator as on a GPU runs above the seam, but a block is
    /// reused only by a request of exactly its size, so a read past the end is caught.
    fn size_class(&self, bytes: usize) -> usize {
        bytes
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|_| Error::msg(format!("device allocation of {bytes} bytes: size overflows")))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::OutOfMemory { op: "alloc", device: crate::Device::Cuda(0), bytes });
        }
        // SAFETY: p is valid for `bytes` bytes.
        unsafe { std::ptr::write_bytes(p, POISON, bytes) };
        Ok(p as u64)
    }
    unsafe fn free(&self, ptr: u64, bytes: usize) {
        if let Ok(layout) = Layout::from_size_align(bytes.max(1), ALIGN) {
            // SAFETY: forwarded to the caller: `ptr` came from `alloc(bytes)`.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        }
    }
    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    unsafe fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }
    fn builtin(&self, family: &'static str, kernel: &str) -> Result<Kernel> {
        let entry = *builtins().get(kernel).ok_or_else(|| Error::Cuda {
            op: "load_function",
            msg: format!("{family}: no kernel `{kernel}` in the emulator's table"),
        })?;
        let name = CString::new(format!("{family}::{kernel}")).map_err(|e| Error::msg(e.to_string()))?;
        let k = EmuKernel { entry, run: tf_emu_run_block, name, _lib: None };
        Ok(Kernel { name: format!("{family}::{kernel}"), handle: Arc::new(k) })
    }
    fn user(&self, name: &str, source: &str, kernel: &str) -> Result<Kernel> {
        let lib = Arc::new(user::compile(name, source, kernel)?);
        let load = |sym: &[u8]| Error::KernelCompile {
            module: name.to_string(),
            log: format!("the emulator's shared object lacks `{}`", String::from_utf8_lossy(sym)),
        };
        // SAFETY: the shared object was built by `user::compile` from our runtime and a table
        // whose entries have exactly these types.
        let (run, table) = unsafe {
            let run: RunBlock = *lib.get::<RunBlock>(b"tf_emu_run_block").map_err(|_| load(b"tf_emu_run_block"))?;
            let table: *const TfEmuKernel =
                *lib.get::<*const TfEmuKernel>(b"tf_emu_user").map_err(|_| load(b"tf_emu_user"))?;
            (run, table)
        };
        // SAFETY: `tf_emu_user` is a static array of one kernel and a null terminator.
        let entry = unsafe { (*table).entry }.ok_or_else(|| load(b"tf_emu_user[0]"))?;
        let cname = CString::new(format!("{name}::{kernel}")).map_err(|e| Error::msg(e.to_string()))?;
        let k = EmuKernel { entry, run, name: cname, _lib: Some(lib) };
        Ok(Kernel { name: format!("{name}::{kernel}"), handle: Arc::new(k) })
    }
    unsafe fn launch(&self, k: &Kernel, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        let ek = k.handle.downcast_ref::<EmuKernel>().ok_or_else(|| Error::msg("kernel of another driver"))?;
        let (g, b) = (cfg.grid, cfg.block);
        let threads = u64::from(b.0) * u64::from(b.1) * u64::from(b.2);
        // The limits a GPU enforces at launch (CUDA_ERROR_INVALID_VALUE there).
        if threads == 0 || threads > 1024 || b.2 > 64 || g.0 == 0 || g.1 == 0 || g.2 == 0 || g.1 > 65535 || g.2 > 65535
        {
            return Err(Error::Cuda { op: "launch", msg: format!("{}: invalid launch configuration {cfg:?}", k.name) });
        }
        record_launch(k.name.rsplit("::").next().unwrap_or(&k.name));
        let params = Params(args.iter().map(Arg::as_param).collect());
        let blocks = u64::from(g.0) * u64::from(g.1) * u64::from(g.2);
        let mut order: Vec<u64> = (0..blocks).collect();
        match self.opts.order {
            1 => order.reverse(),
            2 => {
                let mut s = self.opts.seed ^ blocks.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for i in (1..order.len()).rev() {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    order.swap(i, (s % (i as u64 + 1)) as usize);
                }
            }
            _ => {}
        }
        let grid = [g.0, g.1, g.2];
        let block = [b.0, b.1, b.2];
        let opts = EmuOptions { shared_bytes: u64::from(cfg.shared_bytes), ..self.opts };
        let failure = order.par_iter().with_max_len(1).find_map_any(|&linear| {
            let mut err = [0 as c_char; 512];
            // SAFETY: the caller guarantees `args` match the kernel; every array outlives the
            // call; a block only touches its own fibers and the memory the arguments cover.
            let rc = unsafe {
                (ek.run)(
                    ek.entry,
                    params.ptr(),
                    ek.name.as_ptr(),
                    grid.as_ptr(),
                    block.as_ptr(),
                    linear,
                    &opts,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            // SAFETY: the runtime NUL-terminates the message.
            (rc != 0).then(|| unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
        });
        match failure {
            Some(msg) => Err(Error::Cuda { op: "launch", msg }),
            None => Ok(()),
        }
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// Custom ops' CUDA sources for the emulator: compiled by the system C++ compiler with the
/// emulator's shim and runtime into a shared object, cached on disk by a hash of everything
/// that goes in, loaded once per source and kernel. A compile error is an `Err` with the log.
mod user {
    use crate::backend::cuda::compile::{cache_dir, source_key};
    use crate::{Error, Result};
    use std::path::PathBuf;

    const FILES: &[(&str, &str)] = &[
        ("shim.h", include_str!("../../../kernels/emu/shim.h")),
        ("runtime.cpp", include_str!("../../../kernels/emu/runtime.cpp")),
        ("abi.h", include_str!("../../../kernels/abi.h")),
        ("common.cuh", include_str!("../../../kernels/common.cuh")),
        ("ops.h", crate::backend::cuda::compile::OPS_H),
    ];

    fn compiler() -> String {
        std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".into())
    }

    pub(super) fn compile(name: &str, source: &str, kernel: &str) -> Result<libloading::Library> {
        let err = |log: String| Error::KernelCompile { module: name.to_string(), log };
        if source.contains('\0') || kernel.contains('\0') {
            return Err(err("the CUDA source or kernel name contains a NUL byte".into()));
        }
        if kernel.is_empty() || !kernel.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!("`{kernel}` is not a kernel name (a C identifier)")));
        }
        let sanitize = option_env!("TENSORFORGE_EMU_SANITIZE").unwrap_or("");
        let mut key_parts: Vec<&str> = FILES.iter().map(|(_, s)| *s).collect();
        key_parts.extend([source, kernel, sanitize]);
        let key = source_key(name, &key_parts.concat());
        let dir = cache_dir().unwrap_or_else(std::env::temp_dir).join("emu").join(format!("{key:016x}"));
        let lib = dir.join(format!("{kernel}.so"));
        if !lib.exists() {
            build(&dir, &lib, source, kernel, sanitize).map_err(err)?;
        }
        // SAFETY: the library is ours (built just now or earlier from the same inputs); its
        // initializers are the C++ runtime's, which have no side effects.
        unsafe { libloading::Library::new(&lib) }.map_err(|e| err(format!("loading {}: {e}", lib.display())))
    }

    fn build(
        dir: &PathBuf,
        lib: &PathBuf,
        source: &str,
        kernel: &str,
        sanitize: &str,
    ) -> std::result::Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (f, text) in FILES {
            std::fs::write(dir.join(f), text).map_err(|e| format!("writing {f}: {e}"))?;
        }
        let unit = format!(
            "#include \"shim.h\"\n#line 1 \"custom op source\"\n{source}\n\
             extern \"C\" const TfEmuKernel tf_emu_user[] = {{TF_EMU_KERNEL({kernel}), {{nullptr, nullptr}}}};\n"
        );
        std::fs::write(dir.join("user.cpp"), unit).map_err(|e| format!("writing user.cpp: {e}"))?;
        let tmp = lib.with_extension(format!("tmp{}", std::process::id()));
        let mut cmd = std::process::Command::new(compiler());
        cmd.current_dir(dir)
            .args(["-std=c++17", "-O1", "-shared", "-fPIC", "-fno-strict-aliasing", "-Wno-unknown-pragmas"])
            .args(["-Wl,-Bsymbolic", "-I."])
            .arg("-o")
            .arg(&tmp)
            .args(["user.cpp", "runtime.cpp"]);
        if !sanitize.is_empty() {
            cmd.arg(format!("-fsanitize={sanitize}"));
        }
        let out = cmd.output().map_err(|e| format!("running the C++ compiler `{}`: {e}", compiler()))?;
        if !out.status.success() {
            return Err(format!(
                "the C++ compiler failed on the custom op's source:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&tmp, lib).map_err(|e| format!("storing {}: {e}", lib.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CudaDevice;
    use super::super::abi::TfLayout;
    use super::super::driver::{Arg, LaunchCfg};
    use std::sync::Arc;

    fn dev() -> Arc<CudaDevice> {
        CudaDevice::get(0).unwrap()
    }

    /// Runs a one-block user kernel `k(int* out)` of `threads` threads; returns `n` ints.
    fn run_user(src: &str, kernel: &str, threads: u32, n: usize) -> crate::Result<Vec<i32>> {
        let d = dev();
        let mut out = d.alloc(n * 4)?;
        // SAFETY: the kernel takes one int pointer and writes at most `n` ints.
        let r = unsafe { d.launch_user("emu_test", src, kernel, LaunchCfg::linear(1, threads), &[Arg::Ptr(out.ptr)]) };
        let mut v = vec![0i32; n];
        let read = r.and_then(|_| d.dtoh(out.ptr, &mut v));
        d.release(&mut out);
        read.map(|_| v)
    }

    #[test]
    fn an_unknown_op_code_traps_and_names_the_kernel() {
        let d = dev();
        let (mut x, mut y) = (d.alloc(64).unwrap(), d.alloc(64).unwrap());
        let mut l = TfLayout { rank: 1, contiguous: 1, ..Default::default() };
        l.dims[0] = 16;
        l.strides[0] = 1;
        let args = [Arg::Ptr(x.ptr), Arg::Layout(l), Arg::Ptr(y.ptr), Arg::U64(16), Arg::U32(999)];
        let err = d.launch("unary", "unary_f32", LaunchCfg::linear(1, 32), &args).unwrap_err().to_string();
        assert!(err.contains("unary::unary_f32") && err.contains("trapped"), "{err}");
        d.release(&mut x);
        d.release(&mut y);
    }

    #[test]
    fn a_barrier_not_every_thread_reaches_is_an_error() {
        let src = r#"extern "C" __global__ void half_sync(int* out) {
            if (threadIdx.x < 16) __syncthreads();
            out[threadIdx.x] = 1;
        }"#;
        let err = run_user(src, "half_sync", 32, 32).unwrap_err().to_string();
        assert!(err.contains("half_sync") && err.contains("reached by 16 of 32"), "{err}");
    }

    #[test]
    fn a_missing_barrier_is_seen_by_the_greedy_schedule() {
        // Thread 0 reads what thread 31 writes; without __syncthreads the greedy schedule runs
        // thread 0 to its end first (in order), so it reads the stale zero.
        let src = |sync: &str| {
            format!(
                r#"extern "C" __global__ void neighbour(int* out) {{
                __shared__ int s[32];
                s[threadIdx.x] = 0;
                {sync}
                s[threadIdx.x] = threadIdx.x + 1;
                {sync}
                out[threadIdx.x] = s[31 - threadIdx.x];
            }}"#
            )
        };
        let good = run_user(&src("__syncthreads();"), "neighbour", 32, 32).unwrap();
        assert_eq!(good, (0..32).map(|i| 32 - i).collect::<Vec<_>>());
        let racy = run_user(&src(""), "neighbour", 32, 32).unwrap();
        assert_ne!(racy, good, "the race went unseen");
    }

    /// Shuffles and ballot against the PTX ISA's definitions (segments of `width` lanes; an
    /// out-of-range source keeps the caller's value; bfly checks only the segment's end).
    #[test]
    fn warp_functions_follow_the_ptx_isa() {
        let src = r#"extern "C" __global__ void shfl_table(int* out) {
            const int lane = threadIdx.x, v = lane * 10;
            out[0 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3);
            out[1 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 5, 16);
            out[2 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 9, 8);
            out[3 * 32 + lane] = __shfl_sync(0xffffffffu, v, lane + 3, 8);
            out[4 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 2, 4);
            out[5 * 32 + lane] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
            double d = __shfl_xor_sync(0xffffffffu, lane + 0.5, 1);
            out[6 * 32 + lane] = (int)(d * 2.0);
        }"#;
        let got = run_user(src, "shfl_table", 32, 7 * 32).unwrap();
        let v = |l: i32| l * 10;
        let mut want = Vec::new();
        for l in 0..32 {
            want.push(if l + 3 <= 31 { v(l + 3) } else { v(l) });
        }
        for l in 0..32 {
            want.push(if l % 16 >= 5 { v(l - 5) } else { v(l) });
        }
        for l in 0..32 {
            let (j, max) = (l ^ 9, (l & !7) | 7);
            want.push(if j <= max { v(j) } else { v(l) });
        }
        for l in 0..32 {
            want.push(v((l & !7) | ((l + 3) & 7)));
        }
        for l in 0..32 {
            let (j, max) = (l + 2, (l & !3) | 3);
            want.push(if j <= max { v(j) } else { v(l) });
        }
        let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | (1 << l)) as i32;
        want.extend(std::iter::repeat_n(ballot, 32));
        want.extend((0..32).map(|l: i32| 2 * (l ^ 1) + 1));
        for (row, name) in
            ["down 3", "up 5 w16", "xor 9 w8", "idx +3 w8", "down 2 w4", "ballot", "xor f64"].iter().enumerate()
        {
            assert_eq!(got[row * 32..row * 32 + 32], want[row * 32..row * 32 + 32], "{name}");
        }
    }

    #[test]
    fn a_shuffle_with_an_exited_lane_is_an_error() {
        let src = r#"extern "C" __global__ void early_exit(int* out) {
            if (threadIdx.x == 5) return;
            out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
        }"#;
        let err = run_user(src, "early_exit", 32, 32).unwrap_err().to_string();
        assert!(err.contains("early_exit") && err.contains("warp function"), "{err}");
    }

    #[test]
    fn a_custom_source_that_does_not_compile_returns_the_log() {
        let err = run_user("extern \"C\" __global__ void broken(int* out) { out[0] = ; }", "broken", 32, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken") && err.contains("error"), "{err}");
    }
}
