//! Crash-safe file writes: a file a user will load later is never half written.
//!
//! The bytes go to a temporary file beside the target (`.<name>.tf-tmp-<pid>-<n>`), which is
//! flushed to disk, renamed over the target (atomic on POSIX file systems) and followed by a
//! flush of the directory, so the rename itself survives a power cut. A process killed at any
//! moment leaves either the old file or the new one, plus perhaps its temporary file, which
//! the next save to the same target removes once its process is gone.

use super::err;
use crate::Result;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MARK: &str = ".tf-tmp-";

fn temp_name(target: &Path) -> (PathBuf, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}{MARK}");
    let tmp = dir.join(format!("{prefix}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    (tmp, prefix)
}

/// Removes temporary files of earlier saves to this target whose process has ended (Linux:
/// `/proc/<pid>`; elsewhere none are removed).
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let proc_dir = Path::new("/proc");
        if pid != std::process::id() && proc_dir.is_dir() && !proc_dir.join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` so that a kill or crash at any moment leaves the old file or the
/// new one, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = path.display().to_string();
    let (tmp, prefix) = temp_name(path);
    let dir = tmp.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    remove_stale(&dir, &prefix);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename lives in the directory: flush it too (best effort where a directory
        // cannot be opened for this, e.g. on some non-Linux systems).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(&ctx, e.to_string())
    })
}
