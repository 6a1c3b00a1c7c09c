//! Learning-rate schedules: pure functions of the step (or epoch) number, so resuming a
//! run only needs the step count. Apply one with `opt.set_lr(schedule.lr(step))`.
//!
//! ```
//! use tensorforge::optim::{CosineLr, LrSchedule, WarmUp};
//! let s = WarmUp::new(10, CosineLr::new(0.1, 0.0, 100));
//! assert_eq!(s.lr(0), 0.01);       // linear warm-up: step 0 gets 1/10 of the rate
//! assert_eq!(s.lr(10), 0.1);       // then the cosine from its start
//! assert!(s.lr(110) < 1e-12);
//! ```

/// A learning rate per step.
pub trait LrSchedule {
    /// The learning rate to use at step `step` (counting from 0).
    fn lr(&self, step: usize) -> f64;
}

/// The same rate every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantLr(pub f64);

impl LrSchedule for ConstantLr {
    fn lr(&self, _step: usize) -> f64 {
        self.0
    }
}

/// `base · gammaᵏ` with `k = step / step_size` (PyTorch's StepLR).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLr {
    /// The initial rate.
    pub base: f64,
    /// Steps between decays (0 is treated as 1).
    pub step_size: usize,
    /// Decay factor.
    pub gamma: f64,
}

impl StepLr {
    /// A step schedule.
    pub fn new(base: f64, step_size: usize, gamma: f64) -> Self {
        StepLr { base, step_size, gamma }
    }
}

impl LrSchedule for StepLr {
    fn lr(&self, step: usize) -> f64 {
        // powf: a decay count past i32::MAX (a corrupt or very long run) must not wrap to a
        // negative exponent.
        self.base * self.gamma.powf((step / self.step_size.max(1)) as f64)
    }
}

/// Cosine annealing from `base` to `min` over `total` steps, then `min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineLr {
    /// The initial rate.
    pub base: f64,
    /// The final rate.
    pub min: f64,
    /// Steps of the annealing.
    pub total: usize,
}

impl CosineLr {
    /// A cosine schedule.
    pub fn new(base: f64, min: f64, total: usize) -> Self {
        CosineLr { base, min, total }
    }
}

impl LrSchedule for CosineLr {
    fn lr(&self, step: usize) -> f64 {
        if step >= self.total {
            return self.min;
        }
        let t = step as f64 / self.total as f64;
        self.min + 0.5 * (self.base - self.min) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// A linear warm-up over `warmup` steps (step `i` gets `(i+1)/warmup` of the inner rate at
/// step 0), then the inner schedule shifted to start at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmUp<S> {
    /// Warm-up steps.
    pub warmup: usize,
    /// The schedule after the warm-up.
    pub inner: S,
}

impl<S: LrSchedule> WarmUp<S> {
    /// Wraps `inner` with a linear warm-up.
    pub fn new(warmup: usize, inner: S) -> Self {
        WarmUp { warmup, inner }
    }
}

impl<S: LrSchedule> LrSchedule for WarmUp<S> {
    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.inner.lr(0) * (step + 1) as f64 / self.warmup as f64
        } else {
            self.inner.lr(step - self.warmup)
        }
    }
}
