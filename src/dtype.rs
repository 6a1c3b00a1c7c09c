//! Element types and the trait that ties a Rust type to its [`DType`].

use crate::backend::cpu::CpuStorage;
use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 16-bit IEEE half-precision float.
    F16,
    /// 16-bit bfloat16 float.
    BF16,
    /// Indices and class labels.
    I64,
    /// Masks and booleans (comparison results).
    U8,
}

impl DType {
    /// All dtypes, for tests and tables.
    pub const ALL: [DType; 6] = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::U8];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// The smallest and largest finite values of this dtype, as f64 (for i64 the largest f64
    /// below 2⁶³, since 2⁶³ itself is out of range): where a scalar fits without overflow.
    pub(crate) fn finite_range(self) -> (f64, f64) {
        match self {
            DType::U8 => (0.0, 255.0),
            DType::I64 => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_774_784.0),
            DType::F16 => (-65504.0, 65504.0),
            DType::BF16 => (-3.389_531_389_251_535_5e38, 3.389_531_389_251_535_5e38),
            DType::F32 => (-f32::MAX as f64, f32::MAX as f64),
            DType::F64 => (f64::MIN, f64::MAX),
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The name used in kernels and file formats (`f32`, `bf16`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }
}

/// A Rust element type the engine can store. f16/bf16 compute in f32 on the CPU.
pub trait WithDType: Copy + Send + Sync + 'static + std::fmt::Debug + PartialOrd + PartialEq + Default {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Lossy conversion from f64 (rounds to nearest, saturates for integers).
    fn from_f64(v: f64) -> Self;
    /// Conversion to f64.
    fn to_f64(self) -> f64;
    /// Wraps a vector into the CPU storage variant of this type.
    fn into_cpu_storage(v: Vec<Self>) -> CpuStorage;
    /// Borrows the CPU storage as a slice of this type, or `None` for another dtype.
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! with_dtype {
    ($t:ty, $variant:ident, $from:expr, $to:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$variant;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn into_cpu_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn cpu_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

with_dtype!(f32, F32, |v: f64| v as f32, |v: f32| v as f64);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);
with_dtype!(f16, F16, |v: f64| f16::from_f32(f64_to_f32_odd(v)), f16::to_f64);
with_dtype!(bf16, BF16, |v: f64| bf16::from_f32(f64_to_f32_odd(v)), bf16::to_f64);

/// `v` rounded to f32 *to odd*: exact when f32 holds it, else the neighbour toward zero with
/// its last bit set. Rounding that to f16 or bf16 (at least 2 bits narrower) to nearest even
/// then gives `v` rounded once, which the `half` crate's `from_f64` does not: it drops the low
/// 32 bits of the f64 first, so 1 + 2⁻⁸ + 2⁻⁴⁰ became bf16 1 instead of 1 + 2⁻⁷. The CUDA
/// kernels do the same (`tf_d2b`, `cvt.rn.f16.f64`).
fn f64_to_f32_odd(v: f64) -> f32 {
    let f = v as f32;
    if f.is_nan() || f as f64 == v {
        return f;
    }
    // One step toward zero when rounding went away from it (also from ±inf to ±MAX).
    let toward_zero = if (f as f64).abs() > v.abs() { f32::from_bits(f.to_bits() - 1) } else { f };
    f32::from_bits(toward_zero.to_bits() | 1)
}
with_dtype!(i64, I64, |v: f64| v as i64, |v: i64| v as f64);
with_dtype!(u8, U8, |v: f64| v as u8, |v: u8| v as f64);
