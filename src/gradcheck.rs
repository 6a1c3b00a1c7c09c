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

/// Settings for [`parity_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parity {
    /// The CUDA device to compare against.
    pub ordinal: usize,
    /// Multiplies the per-dtype tolerances (see [`parity_tolerance`]); raise it for ops
    /// whose CPU and GPU math libraries legitimately differ by more than a few ulps.
    pub scale: f64,
    /// Also compare the gradients of every float input (through a fixed random projection of
    /// the output, as [`gradcheck`] does), which checks the backward on the GPU too.
    pub gradients: bool,
}

impl Default for Parity {
    fn default() -> Self {
        Parity { ordinal: 0, scale: 1.0, gradients: true }
    }
}

/// `(atol, rtol)` for comparing CPU and CUDA results of `dtype`: a value passes when
/// `|cpu − cuda| ≤ scale·(atol + rtol·max(|cpu|, |cuda|))` (a few ulps for each float type,
/// exact for integers).
pub fn parity_tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        DType::I64 | DType::U8 => (0.0, 0.0),
    }
}

/// [`parity_with`] with the default settings (device `cuda:0`, gradients compared).
pub fn parity<F>(f: F, inputs: &[Tensor]) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    parity_with(f, inputs, &Parity::default())
}

/// Runs `f` on copies of `inputs` on the CPU and on a CUDA device and compares the outputs
/// (and, with [`Parity::gradients`], the float inputs' gradients) with dtype-aware tolerances.
///
/// Without a usable CUDA device this returns the `Err(Error::CudaUnavailable { .. })` of
/// [`Device::cuda`](crate::Device::cuda), so a caller can tell "cannot check here" apart
/// from "mismatch" and decide whether to skip:
///
/// ```
/// use tensorforge::{Error, Tensor, Device, gradcheck::parity};
/// let x = Tensor::from_vec(vec![0.3f32, -1.2, 2.0], 3, Device::Cpu)?;
/// match parity(|xs| xs[0].tanh()?.mul(&xs[0]), &[x]) {
///     Ok(()) => println!("CPU and CUDA agree"),
///     Err(Error::CudaUnavailable { reason }) => println!("parity skipped: {reason}"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn parity_with<F>(f: F, inputs: &[Tensor], cfg: &Parity) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let cuda = crate::Device::cuda(cfg.ordinal)?;
    let run = |device: crate::Device| -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let xs: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let t = t.detach().to_device(device)?.copy()?.detach();
                Ok(if cfg.gradients && t.dtype().is_float() { t.requires_grad() } else { t })
            })
            .collect::<Result<_>>()?;
        let y = f(&xs)?;
        if cfg.gradients && y.tracks_grad() {
            let w = Tensor::from_vec(projection(y.elem_count(), 0x9A21), y.shape(), device)?;
            y.to_dtype(DType::F64)?.mul(&w)?.sum_all()?.backward()?;
        }
        Ok((y.detach(), xs.iter().map(|x| x.grad()).collect()))
    };
    let (y_cpu, g_cpu) = run(crate::Device::Cpu)?;
    let (y_gpu, g_gpu) = run(cuda)?;
    compare("output", &y_cpu, &y_gpu, cfg.scale)?;
    for (i, (a, b)) in g_cpu.iter().zip(&g_gpu).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => compare(&format!("gradient of input {i}"), a, b, cfg.scale)?,
            (None, None) => {}
            _ => return Err(Error::msg(format!("parity: input {i} has a gradient on one device only"))),
        }
    }
    Ok(())
}

fn compare(what: &str, cpu: &Tensor, gpu: &Tensor, scale: f64) -> Result<()> {
    if cpu.shape() != gpu.shape() || cpu.dtype() != gpu.dtype() {
        return Err(Error::msg(format!(
            "parity: {what} is {:?} {:?} on the CPU but {:?} {:?} on CUDA",
            cpu.dtype(),
            cpu.dims(),
            gpu.dtype(),
            gpu.dims()
        )));
    }
    let (atol, rtol) = parity_tolerance(cpu.dtype());
    let (a, b) = (cpu.to_vec_f64()?, gpu.to_vec_f64()?);
    let mut worst: Option<(f64, usize)> = None;
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        if (x.is_nan() && y.is_nan()) || x == y {
            continue;
        }
        let tol = scale * (atol + rtol * x.abs().max(y.abs()));
        let excess = if (x - y).is_nan() { f64::INFINITY } else { (x - y).abs() / tol.max(f64::MIN_POSITIVE) };
        if excess > 1.0 && worst.is_none_or(|(e, _)| excess > e) {
            worst = Some((excess, i));
        }
    }
    match worst {
        None => Ok(()),
        Some((_, i)) => Err(Error::msg(format!(
            "parity failed: {what} ({:?}, shape {:?}) element {i}: CPU {:e} vs CUDA {:e}",
            cpu.dtype(),
            cpu.dims(),
            a[i],
            b[i]
        ))),
    }
}
