//! f32 → bf16 and f32 → f16 conversions round to nearest even on every input class, the
//! SIMD paths included: subnormals (of f32 and of the target), values that round into the
//! next binade or to infinity, ties, NaN and signed zero. The reference is the `half` crate.

use half::{bf16, f16};
use tensorforge::{DType, Device, Tensor};

/// Interesting f32 bit patterns, long enough (> 64 elements) to go through the vector loops.
fn inputs() -> Vec<f32> {
    let mut v = Vec::new();
    for bits in [
        0x0000_0001u32, // the smallest f32 subnormal
        0x0000_8000,
        0x0000_8001,
        0x0001_8000, // a tie between two bf16 subnormals
        0x0002_8000,
        0x007f_ffff, // the largest f32 subnormal
        0x0080_0000, // the smallest normal
        0x0080_7fff,
        0x0080_8000,
        0x3f80_8000, // 1 + 2^-8: a tie, rounds to even (1)
        0x3f81_8000, // rounds up to even
        0x7f7f_ffff, // the largest f32: bf16 rounds to infinity
        0x7f7f_7fff,
        0x7f80_0000,
        0x7fc0_0001, // a NaN whose payload would round away
        0x7f80_0001, // a signalling NaN with a 1-bit payload
        0x3380_0000, // f16 subnormal range (2^-24)
        0x3300_0000, // below half of the smallest f16 subnormal
        0x3300_0001,
        0x477f_f000, // f16: 65520 rounds to infinity
        0x477f_efff,
    ] {
        v.push(f32::from_bits(bits));
        v.push(-f32::from_bits(bits));
    }
    v.extend([0.0, -0.0]);
    // Pad with a sweep so every vector lane sees every case.
    let base = v.clone();
    for k in 0..5 {
        v.extend(base.iter().map(|x| if k % 2 == 0 { *x } else { -*x }));
    }
    v
}

#[test]
fn f32_to_bf16_and_f16_round_to_nearest_even_everywhere() {
    let xs = inputs();
    let t = Tensor::from_vec(xs.clone(), xs.len(), Device::Cpu).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap().to_vec1::<bf16>().unwrap();
    let h = t.to_dtype(DType::F16).unwrap().to_vec1::<f16>().unwrap();
    for (i, x) in xs.iter().enumerate() {
        let (wb, wh) = (bf16::from_f32(*x), f16::from_f32(*x));
        if x.is_nan() {
            assert!(b[i].is_nan() && h[i].is_nan(), "NaN {:#010x} stays NaN", x.to_bits());
        } else {
            assert_eq!(b[i].to_bits(), wb.to_bits(), "bf16 of {:#010x} ({x:e})", x.to_bits());
            assert_eq!(h[i].to_bits(), wh.to_bits(), "f16 of {:#010x} ({x:e})", x.to_bits());
        }
    }
}
