//! f16 and bf16 matrix products on the CPU against an f64 product of the same half-precision
//! values: transposed, offset and broadcast views, batches, odd depths and shapes that leave
//! partial register tiles. On a CPU with AVX512_BF16, bf16 runs the `vdpbf16ps` kernel.

use tensorforge::{DType, Device, Result, Tensor, manual_seed};

const CPU: Device = Device::Cpu;

/// `x · y` in `dt` against the f64 product of the same (rounded) values, within the rounding
/// of the result to `dt` plus f32 summation.
fn check(x: &Tensor, y: &Tensor, dt: DType, what: &str) -> Result<()> {
    let (xh, yh) = (x.to_dtype(dt)?, y.to_dtype(dt)?);
    let got = xh.matmul(&yh)?;
    assert_eq!(got.dtype(), dt);
    let want = xh.to_dtype(DType::F64)?.matmul(&yh.to_dtype(DType::F64)?)?;
    let mag = xh.to_dtype(DType::F64)?.abs()?.matmul(&yh.to_dtype(DType::F64)?.abs()?)?;
    let eps = if dt == DType::BF16 { 2f64.powi(-8) } else { 2f64.powi(-11) };
    let (g, w, m) = (got.to_vec_f64()?, want.to_vec_f64()?, mag.to_vec_f64()?);
    assert_eq!(got.dims(), want.dims(), "{what}");
    for (i, ((g, w), m)) in g.iter().zip(&w).zip(&m).enumerate() {
        assert!((g - w).abs() <= eps * w.abs() + 1e-5 * m + 1e-30, "{what} {dt:?} [{i}]: {g} vs {w}");
    }
    Ok(())
}

#[test]
fn half_products_match_f64_on_every_view() -> Result<()> {
    manual_seed(3);
    let r = |shape: &[usize]| Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F32, CPU);
    for dt in [DType::BF16, DType::F16] {
        for &(m, k, n) in &[(3, 0, 5), (1, 1, 1), (12, 2, 32), (13, 3, 33), (50, 129, 70), (96, 64, 31), (130, 257, 65)]
        {
            check(&r(&[m, k])?, &r(&[k, n])?, dt, &format!("{m}x{k}x{n}"))?;
        }
        let a = r(&[40, 30])?;
        let b = r(&[50, 30])?;
        check(&a, &b.t()?, dt, "x·yᵀ")?;
        check(&a.t()?.contiguous()?.t()?, &b.t()?, dt, "transposed storage")?;
        // A weight gradient xᵀ·g: a transposed A with few output columns, which bf16 runs as
        // (gᵀ·x)ᵀ; with g itself a transposed view, and with an odd depth.
        let x = r(&[64, 200])?;
        check(&x.t()?, &r(&[64, 5])?, dt, "xᵀ·g")?;
        check(&x.t()?, &r(&[5, 64])?.t()?, dt, "xᵀ·gᵀ")?;
        check(&r(&[63, 130])?.t()?, &r(&[63, 3])?, dt, "xᵀ·g, odd depth")?;
        check(&a.narrow(0, 5, 20)?.narrow(1, 3, 20)?, &r(&[20, 17])?, dt, "offset view")?;
        check(&r(&[3, 2, 9, 11])?, &r(&[3, 2, 11, 7])?, dt, "batches")?;
        check(&r(&[3, 30, 20])?.transpose(1, 2)?, &r(&[3, 30, 7])?, dt, "batches of transposed storage")?;
        // An empty depth through a transposed view (the weight gradient of an empty batch).
        check(&r(&[0, 7])?.t()?, &r(&[0, 5])?, dt, "empty depth, transposed storage")?;
        check(&r(&[4, 9, 11])?, &r(&[11, 7])?.unsqueeze(0)?.broadcast_as((4, 11, 7))?, dt, "broadcast batch")?;
    }
    Ok(())
}
