//! Random streams: a [`Generator`] is a seed and a Philox counter offset that advances with
//! every draw, so a seeded program is reproducible on either backend. One process-wide
//! generator is the default ([`manual_seed`]); a model or a thread that must not share its
//! draws with others (two trainings at once) gets its own, as PyTorch's `torch.Generator`.

use std::sync::{Arc, Mutex};

/// A random stream: `(seed, next Philox counter)`. Clones share the stream (a model's
/// layers drawing from one generator in turn); [`Generator::new`] starts an independent one.
///
/// ```
/// use tensorforge::{DType, Device, Generator, Tensor};
/// let (a, b) = (Generator::new(7), Generator::new(7));
/// let x = Tensor::rand_with(&a, 0.0, 1.0, 4, DType::F32, Device::Cpu)?;
/// tensorforge::manual_seed(123); // the global stream does not touch `a` or `b`
/// let y = Tensor::rand_with(&b, 0.0, 1.0, 4, DType::F32, Device::Cpu)?;
/// assert_eq!(x.to_vec1::<f32>()?, y.to_vec1::<f32>()?);
/// # Ok::<(), tensorforge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Generator {
    state: Arc<Mutex<(u64, u64)>>,
}

impl Generator {
    /// A new stream starting at `seed`.
    pub fn new(seed: u64) -> Generator {
        Generator { state: Arc::new(Mutex::new((seed, 0))) }
    }
    /// The process-wide default stream (the one [`manual_seed`] seeds).
    pub fn global() -> Generator {
        static GLOBAL: std::sync::OnceLock<Generator> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| Generator::new(0x5EED)).clone()
    }
    /// Restarts the stream at `seed`.
    pub fn manual_seed(&self, seed: u64) {
        self.set_state((seed, 0));
    }
    /// The current `(seed, offset)`, for checkpoints.
    pub fn state(&self) -> (u64, u64) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Restores a state saved by [`Generator::state`].
    pub fn set_state(&self, state: (u64, u64)) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
    /// Reserves `counters` Philox counters and returns `(seed, first counter)`.
    pub(crate) fn reserve(&self, counters: u64) -> (u64, u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = *s;
        s.1 = s.1.wrapping_add(counters);
        r
    }
}

/// Restarts the global random stream at `seed`.
pub fn manual_seed(seed: u64) {
    Generator::global().manual_seed(seed);
}

/// The global stream's current `(seed, offset)`, for checkpoints.
pub fn rng_state() -> (u64, u64) {
    Generator::global().state()
}

/// Restores a state saved by [`rng_state`].
pub fn set_rng_state(state: (u64, u64)) {
    Generator::global().set_state(state);
}
