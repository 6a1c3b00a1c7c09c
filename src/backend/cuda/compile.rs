//! NVRTC compilation of the kernel families (`kernels/*.cu`, embedded in the binary) with an
//! on-disk PTX cache, and [`compile_all_kernels`] for CI.

use crate::{Error, Result};
use std::path::PathBuf;

const ABI_H: &str = include_str!("../../../kernels/abi.h");
const COMMON_CUH: &str = include_str!("../../../kernels/common.cuh");

/// Every kernel family: (module name, CUDA source as written in `kernels/`).
pub(crate) const MODULES: &[(&str, &str)] = &[
    ("fill", include_str!("../../../kernels/fill.cu")),
    ("cast", include_str!("../../../kernels/cast.cu")),
    ("unary", include_str!("../../../kernels/unary.cu")),
    ("binary", include_str!("../../../kernels/binary.cu")),
    ("reduce", include_str!("../../../kernels/reduce.cu")),
    ("softmax", include_str!("../../../kernels/softmax.cu")),
    ("matmul", include_str!("../../../kernels/matmul.cu")),
    ("index", include_str!("../../../kernels/index.cu")),
    ("optim", include_str!("../../../kernels/optim.cu")),
    ("conv", include_str!("../../../kernels/conv.cu")),
    ("ctc", include_str!("../../../kernels/ctc.cu")),
];

/// The source NVRTC sees: cudarc's NVRTC wrapper takes no in-memory headers, so the two
/// shared headers are spliced in place of their `#include` lines.
fn expanded_source(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + ABI_H.len() + COMMON_CUH.len());
    for line in src.lines() {
        match line.trim() {
            "#include \"abi.h\"" => out.push_str(ABI_H),
            "#include \"common.cuh\"" => out.push_str(COMMON_CUH),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The NVRTC options, identical at run time and in [`compile_all_kernels`]. A real `sm_XY`
/// target makes NVRTC run ptxas too, so invalid inline PTX fails here and not at load time.
fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()]
}

fn check_arch(arch: &str) -> Result<()> {
    let ok = arch.strip_prefix("sm_").is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok { Ok(()) } else { Err(Error::msg(format!("bad CUDA architecture `{arch}` (expected e.g. sm_80)"))) }
}

/// `Ok` when libnvrtc can be loaded; cudarc would panic on first use otherwise.
pub(crate) fn probe_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the library under cudarc's candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::CudaUnavailable {
            reason: "NVRTC (libnvrtc.so.13) not found; install the CUDA 13 NVRTC library (e.g. pip install \
                     nvidia-cuda-nvrtc==13.0.88, see scripts/nvrtc-venv.sh) and add its folder to LD_LIBRARY_PATH"
                .into(),
        })
    }
}

/// The NVRTC version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    probe_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (probed above); the two pointers are valid for writes.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::msg(format!("nvrtcVersion failed: {rc:?}")));
    }
    Ok((major, minor))
}

/// FNV-1a: stable across Rust releases (unlike `DefaultHasher`), so cache keys survive upgrades.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `TENSORFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/tensorforge`, else `~/.cache/tensorforge`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("TENSORFORGE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tensorforge")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("tensorforge")))
}

fn nvrtc_compile(module: &str, src: &str, arch: &str) -> Result<String> {
    // cudarc turns these into C strings with unwrap: a NUL byte would panic there.
    if src.contains('\0') || module.contains('\0') {
        return Err(Error::KernelCompile {
            module: module.replace('\0', "\\0"),
            log: "the CUDA source or its name contains a NUL byte".into(),
        });
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: compile_options(arch),
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, nvrtc, .. }) => Err(Error::KernelCompile {
            module: module.to_string(),
            log: format!("{nvrtc:?}\n{}", log.to_string_lossy()),
        }),
        Err(e) => Err(Error::KernelCompile { module: module.to_string(), log: format!("{e:?}") }),
    }
}

/// PTX of one family for `arch`, from the disk cache when its key (source, options, NVRTC
/// version) matches, else compiled and stored. An unwritable cache only costs a recompile.
pub(crate) fn module_ptx(module: &str, arch: &str) -> Result<String> {
    check_arch(arch)?;
    let src = MODULES
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, s)| expanded_source(s))
        .ok_or_else(|| Error::msg(format!("unknown kernel module {module}")))?;
    cached_ptx(module, module, &src, arch)
}

/// PTX of a user-supplied source (a [`CustomOp`](crate::custom::CustomOp)'s CUDA code) for
/// `arch`, through the same splicing of `abi.h` / `common.cuh`, options and disk cache as the
/// built-in families. The cache key hashes the source, so editing it recompiles.
pub(crate) fn user_ptx(name: &str, src: &str, arch: &str) -> Result<String> {
    check_arch(arch)?;
    // The name only labels the cache file and the error; keep it to a safe file-name alphabet.
    let label: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    cached_ptx(name, &format!("user-{label}"), &expanded_source(src), arch)
}

/// A stable key of a user source, for the per-device module table.
pub(crate) fn source_key(name: &str, src: &str) -> u64 {
    fnv1a(&[name.as_bytes(), src.as_bytes()])
}

fn cached_ptx(module: &str, file_label: &str, src: &str, arch: &str) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let opts = compile_options(arch).join(" ");
    let version = format!("{major}.{minor}");
    let key = fnv1a(&[src.as_bytes(), opts.as_bytes(), version.as_bytes()]);
    let file = cache_dir().map(|d| d.join(format!("{file_label}-{arch}-{key:016x}.ptx")));
    if let Some(f) = &file
        && let Ok(ptx) = std::fs::read_to_string(f)
        && ptx.contains(".entry")
        && !ptx.contains('\0')
    {
        return Ok(ptx);
    }
    let ptx = nvrtc_compile(module, src, arch)?;
    if let Some(f) = &file {
        // Write-then-rename so a concurrent reader never sees half a file.
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if f.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()) && std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(ptx)
}

/// Compiles every kernel family for `arch` (e.g. `"sm_80"`, `"sm_90"`) with the options used
/// at run time, bypassing the cache, and returns each module's name and PTX size in bytes.
/// Needs only libnvrtc (no GPU, no driver); used by `tests/nvrtc_compile.rs` in CI.
pub fn compile_all_kernels(arch: &str) -> Result<Vec<(String, usize)>> {
    check_arch(arch)?;
    probe_nvrtc()?;
    MODULES
        .iter()
        .map(|(name, src)| Ok((name.to_string(), nvrtc_compile(name, &expanded_source(src), arch)?.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_are_spliced() {
        let s = super::expanded_source("#include \"abi.h\"\n#include \"common.cuh\"\nx");
        assert!(s.contains("typedef struct TfLayout") && s.contains("tf_offset") && s.ends_with("x\n"));
        assert!(!s.contains("#include \""));
    }
    #[test]
    fn arch_is_validated() {
        assert!(super::check_arch("sm_90").is_ok());
        assert!(super::check_arch("sm_90a").is_ok());
        assert!(super::check_arch("sm_80 --foo").is_err());
        assert!(super::check_arch("compute_80").is_err());
    }
}
