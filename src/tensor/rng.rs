//! The process-wide random stream: a seed and a Philox counter offset that advances with
//! every draw, so a seeded program is reproducible on either backend.

use std::sync::Mutex;

static STATE: Mutex<(u64, u64)> = Mutex::new((0x5EED, 0));

/// Restarts the global random stream at `seed`.
pub fn manual_seed(seed: u64) {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = (seed, 0);
}

/// Reserves `counters` Philox counters and returns `(seed, first counter)`.
pub(crate) fn reserve(counters: u64) -> (u64, u64) {
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let r = *s;
    s.1 += counters;
    r
}

/// The current `(seed, offset)`, for checkpoints.
pub fn rng_state() -> (u64, u64) {
    *STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restores a state saved by [`rng_state`].
pub fn set_rng_state(state: (u64, u64)) {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = state;
}
