//! Gradient checking: autograd against central finite differences, in f64.
//!
//! The engine's own tests use this, and it is public so that a user who writes a new
//! [`Operation`](crate::Operation) can check its backward the same way.
//!
//! ```
//! use tensorforge::{Tensor, Device, gradcheck::gradcheck};
//! let x = Tensor::from_vec(vec![0.3f64, -1.2, 2.0], 3, Device::Cpu)?;
//! gradcheck(|xs| xs[0].tanh()?.mul(&xs[0]), &[x])?;
//! # Ok::<(), tensorforge::Error>(())
//! ```

use crate::{DType, Error, Result, Tensor, no_grad};

/// Settings for [`gradcheck_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradCheck {
    /// The finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Tolerance relative to the numerical derivative.
    pub rtol: f64,
    /// Seed of the fixed random projection that reduces the output to a scalar.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-6, atol: 1e-5, rtol: 1e-4, seed: 0x6C1E }
    }
}

/// [`gradcheck_with`] with the default settings.
pub fn gradcheck<F>(f: F, inputs: &[Tensor]) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    gradcheck_with(f, inputs, &GradCheck::default())
}

/// A fixed pseudo-random projection in `[0.5, 1.5)` with random signs: every output element
/// gets a distinct, nonzero weight, so a wrong gradient of any element shows up (a plain sum
/// would hide errors that cancel, e.g. in softmax).
fn projection(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            // SplitMix64: our own stream, so checking never disturbs the global RNG.
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            if u < 0.5 { -(0.5 + 2.0 * u) } else { 0.5 + 2.0 * (u - 0.5) }
        })
        .collect()
}

/// Checks the gradient of `f` with respect to every floating-point input.
///
/// Float inputs are converted to f64 and become variables; other inputs (i64 indices, u8
/// masks) are passed through unchanged and are not differentiated. The output (any shape,
/// any float dtype) is reduced to a scalar by a fixed random projection, so every output
/// element is checked. An input element passes when
/// `|analytic − numeric| ≤ atol + rtol·|numeric|`; the `Err` names the worst element.
///
/// `f` is called once with recording on and twice per input element with it off, so it must
/// be deterministic (reset any random state inside it).
pub fn gradcheck_with<F>(f: F, inputs: &[Tensor], cfg: &GradCheck) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let base: Vec<Tensor> = inputs
        .iter()
        .map(|t| if t.dtype().is_float() { t.to_dtype(DType::F64).map(|t| t.detach()) } else { Ok(t.detach()) })
        .collect::<Result<_>>()?;
    let vars: Vec<Tensor> =
        base.iter().map(|t| if t.dtype().is_float() { t.clone().requires_grad() } else { t.clone() }).collect();

    let y = f(&vars)?;
    if !y.dtype().is_float() {
        return Err(Error::msg(format!("gradcheck: the function returned a {:?} tensor", y.dtype())));
    }
    let w = projection(y.elem_count(), cfg.seed);
    let project = |y: &Tensor| -> Result<Tensor> {
        let w = Tensor::from_vec(w.clone(), y.shape(), y.device())?;
        y.to_dtype(DType::F64)?.mul(&w)?.sum_all()
    };
    let s = project(&y)?;
    if !s.tracks_grad() {
        return Err(Error::msg("gradcheck: the output does not depend on any float input"));
    }
    s.backward()?;

    // (excess over the tolerance, message) of the worst element seen so far.
    let mut worst: Option<(f64, String)> = None;
    let mut checked = 0usize;
    for (i, v) in vars.iter().enumerate() {
        if !v.is_variable() {
            continue;
        }
        let analytic = match v.grad() {
            Some(g) => g.to_vec_f64()?,
            None => vec![0.0; v.elem_count()],
        };
        let x0 = base[i].to_vec_f64()?;
        for j in 0..x0.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut x = x0.clone();
                x[j] += delta;
                let xt = Tensor::from_vec(x, v.shape(), v.device())?;
                let args: Vec<Tensor> =
                    base.iter().enumerate().map(|(k, b)| if k == i { xt.clone() } else { b.clone() }).collect();
                no_grad(|| project(&f(&args)?)?.item())
            };
            let numeric = (eval(cfg.eps)? - eval(-cfg.eps)?) / (2.0 * cfg.eps);
            let a = analytic[j];
            let err = (a - numeric).abs();
            let tol = cfg.atol + cfg.rtol * numeric.abs();
            checked += 1;
            if err.is_nan() || err > tol {
                let excess = if err.is_nan() { f64::INFINITY } else { err / tol };
                if worst.as_ref().is_none_or(|(e, _)| excess > *e) {
                    worst = Some((
                        excess,
                        format!(
                            "input {i} (shape {:?}) element {j}: autograd {a:.8e}, finite differences {numeric:.8e} \
                             (|diff| {err:.3e} > tolerance {tol:.3e})",
                            v.dims()
                        ),
                    ));
                }
            }
        }
    }
    if checked == 0 {
        return Err(Error::msg("gradcheck: no float input to check"));
    }
    match worst {
        Some((_, msg)) => Err(Error::msg(format!("gradcheck failed; worst mismatch at {msg}"))),
        None => Ok(()),
    }
}
