//! Test helpers: a tiny seeded RNG, random shapes and views with their logical values, an
//! f64 reference index walker, and per-dtype tolerances.
#![allow(dead_code)]

use tensorforge::{DType, Device, Result, Tensor};

/// SplitMix64: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A random shape of rank `rank`, dims from a set that favours 1 and includes 0 rarely.
    pub fn shape(&mut self, rank: usize, allow_zero: bool) -> Vec<usize> {
        (0..rank)
            .map(|_| {
                let r = self.below(20);
                if allow_zero && r == 0 {
                    0
                } else if r < 6 {
                    1
                } else {
                    2 + self.below(4)
                }
            })
            .collect()
    }
}

/// Per-dtype tolerance: |a - b| <= atol + rtol * |b|.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-12, 1e-12),
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        DType::I64 | DType::U8 => (0.0, 0.0),
    }
}

/// Asserts elementwise closeness (NaNs must match NaNs, infinities must match).
pub fn assert_close(got: &[f64], want: &[f64], dtype: DType, what: &str) {
    assert_close_tol(got, want, tol(dtype), what)
}

pub fn assert_close_tol(got: &[f64], want: &[f64], (atol, rtol): (f64, f64), what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Rounds an f64 to what `dtype` can hold (as the engine stores it).
/// `v` rounded once to nearest even among a 16-bit format's values: the closest of `guess`
/// (any rounding of v) and its two neighbours, ties to the even bit pattern. Independent of
/// how the engine converts.
fn nearest_even(v: f64, guess: u16, value: impl Fn(u16) -> f64) -> f64 {
    if !v.is_finite() {
        return value(guess);
    }
    let mut best = (f64::INFINITY, 0u16);
    for b in [guess.wrapping_sub(1), guess, guess.wrapping_add(1)] {
        let c = value(b);
        let d = (c - v).abs();
        if d < best.0 || (d == best.0 && b % 2 == 0) {
            best = (d, b);
        }
    }
    value(best.1)
}

pub fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::F16 => nearest_even(v, half::f16::from_f64(v).to_bits(), |b| half::f16::from_bits(b).to_f64()),
        DType::BF16 => nearest_even(v, half::bf16::from_f64(v).to_bits(), |b| half::bf16::from_bits(b).to_f64()),
        DType::I64 => v.trunc(),
        DType::U8 => v.trunc().clamp(0.0, 255.0),
    }
}

/// Row-major multi-indices of a shape.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut i| {
            let mut idx = vec![0; shape.len()];
            for k in (0..shape.len()).rev() {
                idx[k] = i % shape[k];
                i /= shape[k];
            }
            idx
        })
        .collect()
}

/// A dense row-major f64 array for the reference computations.
#[derive(Clone, Debug)]
pub struct Ref {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Ref {
    pub fn at(&self, idx: &[usize]) -> f64 {
        let mut off = 0;
        for (k, &i) in idx.iter().enumerate() {
            off = off * self.shape[k] + i;
        }
        self.data[off]
    }
    /// Element at `idx` of this array broadcast to a shape of rank `idx.len()`.
    pub fn at_broadcast(&self, idx: &[usize]) -> f64 {
        let lead = idx.len() - self.shape.len();
        let own: Vec<usize> =
            self.shape.iter().enumerate().map(|(k, &d)| if d == 1 { 0 } else { idx[lead + k] }).collect();
        self.at(&own)
    }
}

/// Random values for `dtype` in `[lo, hi)` (integers in their range).
pub fn values(rng: &mut Rng, n: usize, dtype: DType, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| match dtype {
            DType::I64 => (rng.uniform(lo, hi)).round(),
            DType::U8 => (rng.uniform(lo.max(0.0), hi.min(255.0))).round(),
            _ => round_to(rng.uniform(lo, hi), dtype),
        })
        .collect()
}

/// How a test tensor is laid out in its storage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Contiguous,
    Transposed,
    Sliced,
    Broadcast,
}

pub const KINDS: [Kind; 4] = [Kind::Contiguous, Kind::Transposed, Kind::Sliced, Kind::Broadcast];

/// A tensor of logical shape `shape` and dtype holding `vals` (row-major), built as the
/// given kind of view so kernels see non-trivial strides.
pub fn make(vals: &[f64], shape: &[usize], dtype: DType, kind: Kind) -> Result<Tensor> {
    let r = shape.len();
    let dev = Device::Cpu;
    let base = |v: Vec<f64>, s: Vec<usize>| Tensor::from_vec(v, s, dev)?.to_dtype(dtype);
    match kind {
        Kind::Transposed if r >= 2 => {
            // Store the transpose of the last two axes contiguously, then transpose back.
            let mut ts = shape.to_vec();
            ts.swap(r - 2, r - 1);
            let src = Ref { shape: shape.to_vec(), data: vals.to_vec() };
            let data = indices(&ts)
                .iter()
                .map(|i| {
                    let mut j = i.clone();
                    j.swap(r - 2, r - 1);
                    src.at(&j)
                })
                .collect();
            base(data, ts)?.transpose(-2, -1)
        }
        Kind::Sliced if r >= 1 => {
            // Every other element along the last axis of a twice-as-long buffer, from 1.
            let mut big = shape.to_vec();
            big[r - 1] = 2 * shape[r - 1] + 1;
            let src = Ref { shape: shape.to_vec(), data: vals.to_vec() };
            let data = indices(&big)
                .iter()
                .map(|i| {
                    let l = i[r - 1];
                    if l % 2 == 1 && l / 2 < shape[r - 1] {
                        let mut j = i.clone();
                        j[r - 1] = l / 2;
                        src.at(&j)
                    } else {
                        -7.0
                    }
                })
                .collect();
            base(data, big)?.slice(-1, 1, 1 + 2 * shape[r - 1], 2)
        }
        Kind::Broadcast if r >= 1 && shape[0] > 0 => {
            // Only valid when all rows along axis 0 are equal: the caller passes such data.
            let inner: usize = shape[1..].iter().product();
            let mut s1 = shape.to_vec();
            s1[0] = 1;
            base(vals[..inner].to_vec(), s1)?.broadcast_as(shape.to_vec())
        }
        _ => base(vals.to_vec(), shape.to_vec()),
    }
}

/// Values for `make(.., Kind::Broadcast)`: rows along axis 0 repeat.
pub fn broadcastable_values(rng: &mut Rng, shape: &[usize], dtype: DType, lo: f64, hi: f64) -> Vec<f64> {
    let n: usize = shape.iter().product();
    if shape.is_empty() || shape[0] == 0 {
        return values(rng, n, dtype, lo, hi);
    }
    let inner: usize = shape[1..].iter().product();
    let row = values(rng, inner, dtype, lo, hi);
    (0..n).map(|i| row[i % inner.max(1)]).collect()
}

/// Random (values, tensor) pairs over ranks 0..=6 and all view kinds.
pub fn cases(
    rng: &mut Rng,
    dtype: DType,
    lo: f64,
    hi: f64,
    allow_zero: bool,
) -> Vec<(Vec<usize>, Kind, Vec<f64>, Tensor)> {
    let mut out = vec![];
    for rank in 0..=6 {
        for kind in KINDS {
            let shape = rng.shape(rank, allow_zero);
            let vals = if kind == Kind::Broadcast {
                broadcastable_values(rng, &shape, dtype, lo, hi)
            } else {
                values(rng, shape.iter().product(), dtype, lo, hi)
            };
            let t = make(&vals, &shape, dtype, kind).expect("make test tensor");
            out.push((shape, kind, vals, t));
        }
    }
    out
}

pub const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
