//! Where a step's time goes, per op: with `TENSORFORGE_PROFILE=1` in the environment every
//! op's forward (through [`crate::autograd::apply`]) and backward is timed, and [`report`]
//! lists the totals. Times are inclusive: an op whose forward or backward is built from other
//! ops (a convolution's backward is two matrix products, im2col and col2im) counts them too,
//! and they appear on their own lines as well. Off (the default), each op pays one relaxed
//! load of a cached flag.
//!
//! ```
//! use tensorforge::{DType, Device, Tensor};
//! let x = Tensor::ones((8, 8), DType::F32, Device::Cpu)?.requires_grad();
//! x.matmul(&x)?.sum_all()?.backward()?;
//! let table = tensorforge::profile::report(); // empty unless TENSORFORGE_PROFILE=1
//! assert!(table.is_empty() || table.contains("matmul"));
//! # Ok::<(), tensorforge::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether `TENSORFORGE_PROFILE` is set to something other than `0` or empty.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TENSORFORGE_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

type Totals = HashMap<(String, &'static str), (u64, Duration)>;

fn totals() -> &'static Mutex<Totals> {
    static T: OnceLock<Mutex<Totals>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Runs `f`, adding its time to `(op, phase)` when profiling is on.
pub(crate) fn timed<R>(op: &str, phase: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let dt = t.elapsed();
    let mut m = totals().lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry((op.to_string(), phase)).or_default();
    e.0 += 1;
    e.1 += dt;
    r
}

/// The totals so far, one line per op and phase, longest first (`op phase calls ms`); empty
/// when profiling is off.
pub fn report() -> String {
    let m = totals().lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = m.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
    rows.iter()
        .map(|((op, phase), (n, d))| format!("{op:<24} {phase:<8} {n:>8} {:>10.3} ms\n", d.as_secs_f64() * 1e3))
        .collect()
}

/// Clears the totals (after a warm-up, say).
pub fn reset() {
    totals().lock().unwrap_or_else(|e| e.into_inner()).clear();
}
