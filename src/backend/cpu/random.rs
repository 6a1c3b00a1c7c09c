//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
//! counter-based generator, so any element's random bits are a pure function of
//! (seed, counter) and the CUDA kernel produces the very same stream.

use super::CpuStorage;
use crate::{DType, Error, Result, WithDType};
use half::{bf16, f16};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The four 32-bit words for `counter` under `seed` (the counter's upper 64 bits are 0).
#[inline]
pub fn philox4x32_10(seed: u64, counter: u64) -> [u32; 4] {
    philox_block([counter as u32, (counter >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

/// Philox4x32 with 10 rounds on a full 128-bit counter and 64-bit key.
#[inline]
pub fn philox_block(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// A u32 to a uniform in [0, 1) with 32 random bits.
#[inline]
pub fn u32_to_unit(x: u32) -> f64 {
    x as f64 * (1.0 / 4_294_967_296.0)
}

/// Uniform element `i` of the stream `(seed, offset)` in [0, 1).
#[inline]
pub fn uniform_at(seed: u64, offset: u64, i: u64) -> f64 {
    // The counter wraps as the CUDA kernel's u64 does: a state near u64::MAX (restored from a
    // checkpoint) keeps drawing on both devices alike.
    u32_to_unit(philox4x32_10(seed, offset.wrapping_add(i / 4))[(i % 4) as usize])
}

/// Standard normal element `i` of the stream `(seed, offset)` (Box–Muller).
#[inline]
pub fn normal_at(seed: u64, offset: u64, i: u64) -> f64 {
    let w = philox4x32_10(seed, offset.wrapping_add(i / 2));
    let j = 2 * (i % 2) as usize;
    // u1 in (0, 1] so the log is finite.
    let u1 = (w[j] as f64 + 1.0) * (1.0 / 4_294_967_296.0);
    let u2 = u32_to_unit(w[j + 1]);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn generate<T: WithDType>(n: usize, f: impl Fn(u64) -> f64 + Sync) -> CpuStorage {
    const CHUNK: usize = 4096;
    let v: Vec<T> = super::fill_new(n, |out| {
        super::parallel::for_each_chunk(out, CHUNK, |c, o| {
            for (j, x) in o.iter_mut().enumerate() {
                x.write(T::from_f64(f((c * CHUNK + j) as u64)));
            }
        })
    });
    T::into_cpu_storage(v)
}

fn by_dtype(n: usize, dtype: DType, op: &'static str, f: impl Fn(u64) -> f64 + Sync) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => generate::<f32>(n, f),
        DType::F64 => generate::<f64>(n, f),
        DType::F16 => generate::<f16>(n, f),
        DType::BF16 => generate::<bf16>(n, f),
        _ => return Err(Error::UnsupportedDType { op, dtype }),
    })
}

/// `n` elements of `dtype` drawn uniformly from `[lo, hi)` by the stream `(seed, offset)`.
/// Float dtypes only.
pub fn uniform(n: usize, dtype: DType, seed: u64, offset: u64, lo: f64, hi: f64) -> Result<CpuStorage> {
    by_dtype(n, dtype, "rand_uniform", |i| lo + (hi - lo) * uniform_at(seed, offset, i))
}

/// `n` elements of `dtype` drawn from a normal distribution with the given `mean` and `std`
/// by the stream `(seed, offset)`. Float dtypes only.
pub fn normal(n: usize, dtype: DType, seed: u64, offset: u64, mean: f64, std: f64) -> Result<CpuStorage> {
    by_dtype(n, dtype, "rand_normal", |i| mean + std * normal_at(seed, offset, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
        assert_eq!(philox_block([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox_block([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox_block([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }
}
