//! The GEMM against a plain triple loop: every kernel, shape class, stride pattern and
//! thread count.

use super::*;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

trait TestElem: GemmElem {
    const EPS: f64;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}
impl TestElem for f32 {
    const EPS: f64 = f32::EPSILON as f64;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl TestElem for f64 {
    const EPS: f64 = f64::EPSILON;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// Layout of a generated operand.
#[derive(Clone, Copy, Debug)]
enum Layout {
    RowMajor,
    ColMajor,
    /// Row stride 0: every row is the same.
    BroadcastRows,
    /// Row-major with padded leading dimension.
    Padded,
}

/// Builds a `rows × cols` operand with the given layout and a non-zero
/// offset; returns (data, offset, row_stride, col_stride).
fn make<T: TestElem>(rng: &mut XorShift, rows: usize, cols: usize, layout: Layout) -> (Vec<T>, usize, usize, usize) {
    let offset = rng.below(5);
    let (rs, cs, len) = match layout {
        Layout::RowMajor => (cols, 1, rows * cols),
        Layout::ColMajor => (1, rows, rows * cols),
        Layout::BroadcastRows => (0, 1, cols),
        Layout::Padded => (cols + 3, 1, rows * (cols + 3)),
    };
    let data = (0..offset + len + 2).map(|_| T::from_f64(rng.unit())).collect();
    (data, offset, rs, cs)
}

fn naive<T: TestElem>(m: usize, n: usize, k: usize, a: &MatRef<T>, b: &MatRef<T>) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = a.data[a.offset + i * a.row_stride + p * a.col_stride];
                let bv = b.data[b.offset + p * b.row_stride + j * b.col_stride];
                s += av.to_f64() * bv.to_f64();
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[allow(clippy::too_many_arguments)]
fn check<T: TestElem>(
    rng: &mut XorShift,
    opts: Opts,
    m: usize,
    n: usize,
    k: usize,
    la: Layout,
    lb: Layout,
    parallel: bool,
) {
    let (ad, ao, ars, acs) = make::<T>(rng, m, k, la);
    let (bd, bo, brs, bcs) = make::<T>(rng, k, n, lb);
    let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
    let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
    // Garbage in C checks that it is overwritten, not accumulated.
    let mut c = vec![T::from_f64(7.0); m * n];
    gemm_with(opts, m, n, k, a, b, &mut c, parallel);
    let want = naive(m, n, k, &a, &b);
    let tol = 4.0 * (k as f64 + 1.0) * T::EPS;
    for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
        let err = (got.to_f64() - w).abs();
        assert!(
            err <= tol,
            "{opts:?} m={m} n={n} k={k} {la:?}x{lb:?} par={parallel}: \
             c[{},{}] = {} want {w} (err {err}, tol {tol})",
            idx / n,
            idx % n,
            got.to_f64()
        );
    }
}

const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
const LAYOUTS: [Layout; 4] = [Layout::RowMajor, Layout::ColMajor, Layout::BroadcastRows, Layout::Padded];

/// Packed path whatever the size, threads whenever asked.
fn packed(isa: Isa, blocking: Option<(usize, usize)>) -> Opts {
    Opts { isa, blocking, small_mnk: 0, par_min_mnk: 0, kept_a_bytes: KEPT_A_BYTES }
}

fn sweep<T: TestElem>(seed: u64) {
    let mut rng = XorShift(seed);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let shapes = [
        (1, 1, 1),
        (1, 37, 50),
        (37, 1, 50),
        (5, 7, 0),
        (13, 33, 17),
        (12, 32, 64),
        (25, 65, 40),
        (61, 70, 90),
        (100, 45, 3),
        (3, 150, 70),
    ];
    for &(m, n, k) in &shapes {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for parallel in [false, true] {
                    pool.install(|| {
                        check::<T>(&mut rng, Opts::DEFAULT, m, n, k, la, lb, parallel);
                        for isa in ISAS {
                            check::<T>(&mut rng, packed(isa, None), m, n, k, la, lb, parallel);
                        }
                    });
                }
            }
        }
    }
    for isa in ISAS {
        // Small blocking forces several kc / nc blocks and partial ones.
        for _ in 0..30 {
            let (m, n, k) = (1 + rng.below(90), 1 + rng.below(90), 1 + rng.below(90));
            let la = LAYOUTS[rng.below(4)];
            let lb = LAYOUTS[rng.below(4)];
            let blocking = Some((1 + rng.below(40), 1 + rng.below(70)));
            let parallel = rng.below(2) == 1;
            let opts = packed(isa, blocking);
            pool.install(|| check::<T>(&mut rng, opts, m, n, k, la, lb, parallel));
        }
    }
}

#[test]
fn matches_naive_f32() {
    sweep::<f32>(0x9E37_79B9_7F4A_7C15);
}

#[test]
fn matches_naive_f64() {
    sweep::<f64>(0xD1B5_4A32_D192_ED03);
}

#[test]
fn larger_default_blocking_parallel() {
    let mut rng = XorShift(42);
    let (rm, cm) = (Layout::RowMajor, Layout::ColMajor);
    for isa in ISAS {
        let opts = Opts { isa, ..Opts::DEFAULT };
        for parallel in [false, true] {
            check::<f32>(&mut rng, opts, 150, 300, 420, rm, cm, parallel);
            check::<f64>(&mut rng, opts, 131, 97, 300, cm, rm, parallel);
            // Deeper than one default depth block (1024 for the AVX-512 f32 kernel), over
            // several column blocks with A packed and kept across them.
            check::<f32>(&mut rng, opts, 100, 300, 1100, cm, rm, parallel);
        }
    }
}

#[test]
fn public_entry_point() {
    let mut rng = XorShift(7);
    for parallel in [false, true] {
        let (ad, ao, ars, acs) = make::<f32>(&mut rng, 70, 80, Layout::Padded);
        let (bd, bo, brs, bcs) = make::<f32>(&mut rng, 80, 90, Layout::ColMajor);
        let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
        let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
        let mut c = vec![0.0f32; 70 * 90];
        gemm(70, 90, 80, a, b, &mut c, parallel);
        let want = naive(70, 90, 80, &a, &b);
        for (&g, &w) in c.iter().zip(&want) {
            assert!((g as f64 - w).abs() <= 1e-4, "{g} vs {w}");
        }
    }
}

#[test]
fn prepacked_a_matches_packing_per_call() {
    // Rows off the register tile, depth past one depth block, threads splitting C.
    let mut rng = XorShift(8);
    for (m, n, k, parallel) in [(70, 90, 80, false), (13, 300, 900, true), (64, 1024, 576, true), (1, 40, 3, false)] {
        let (ad, ao, ars, acs) = make::<f64>(&mut rng, m, k, Layout::Padded);
        let (bd, bo, brs, bcs) = make::<f64>(&mut rng, k, n, Layout::RowMajor);
        let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
        let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
        let mut c = vec![MaybeUninit::uninit(); m * n];
        gemm_packed_a(n, &PackedA::new(m, k, a), &b, &mut c, parallel);
        let want = naive(m, n, k, &a, &b);
        for (i, (g, w)) in c.iter().zip(&want).enumerate() {
            // SAFETY: the product wrote every element.
            let g = unsafe { g.assume_init() };
            assert!((g - w).abs() <= 1e-12 * k as f64, "{m}x{n}x{k} element {i}: {g} vs {w}");
        }
    }
}

#[test]
fn small_row_major_b_read_in_place() {
    // B row-major (or row-padded) with whole register panels is read where it is: every
    // kernel, threads or not, several depth blocks, and a B too wide for it (packed).
    let mut rng = XorShift(10);
    for isa in ISAS {
        for parallel in [false, true] {
            let opts = Opts { isa, small_mnk: 0, par_min_mnk: 0, ..Opts::DEFAULT };
            check::<f32>(&mut rng, opts, 37, 128, 900, Layout::Padded, Layout::RowMajor, parallel);
            check::<f32>(&mut rng, opts, 13, 96, 50, Layout::RowMajor, Layout::Padded, parallel);
            check::<f64>(&mut rng, opts, 20, 64, 33, Layout::ColMajor, Layout::RowMajor, parallel);
            check::<f32>(&mut rng, opts, 5, 1024, 200, Layout::RowMajor, Layout::RowMajor, parallel);
        }
        // Tall enough for one task per few register panels, claimed by 3 threads.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let opts = Opts { isa, small_mnk: 0, par_min_mnk: 0, ..Opts::DEFAULT };
        pool.install(|| check::<f32>(&mut rng, opts, 600, 64, 100, Layout::RowMajor, Layout::RowMajor, true));
    }
}

#[test]
fn rows_claimed_panel_by_panel() {
    // Packed B and enough register panels of rows that threads claim them one at a time:
    // several column and depth blocks (a panel's depth blocks must land in order, and a
    // kept A panel must be packed before a later column block reads it), ragged
    // last row and column panels, 2 and 3 threads, every kernel.
    let mut rng = XorShift(11);
    for isa in ISAS {
        let opts = packed(isa, Some((64, 64)));
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                check::<f32>(&mut rng, opts, 293, 70, 150, Layout::RowMajor, Layout::ColMajor, true);
                check::<f64>(&mut rng, opts, 301, 97, 130, Layout::Padded, Layout::RowMajor, true);
                // A packed (not read in place): its panels are kept for the second column
                // block, packed by one thread and read by whichever claims the next step.
                check::<f32>(&mut rng, opts, 293, 70, 150, Layout::ColMajor, Layout::RowMajor, true);
                check::<f64>(&mut rng, opts, 150, 100, 70, Layout::ColMajor, Layout::ColMajor, true);
            });
        }
    }
}

#[test]
fn tall_products_run_as_row_blocks() {
    // A bound of 20 kept A panels of 50-deep blocks: 49 panels of rows run as 3 row blocks
    // of 17, 17 and 15 panels, so at 2 threads the first two claim rows and the last splits
    // into rectangles; B is packed again per block and A is read from the block's first row.
    // (A row-major A small enough to be read in place keeps nothing and runs whole.)
    let mut rng = XorShift(13);
    for isa in ISAS {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mr = f32::kernel(usable_isa(isa)).mr;
            let opts = Opts { kept_a_bytes: 20 * mr * 50 * size_of::<f32>(), ..packed(isa, Some((50, 64))) };
            let m = 49 * mr - 5;
            pool.install(|| {
                check::<f32>(&mut rng, opts, m, 70, 150, Layout::ColMajor, Layout::RowMajor, true);
                check::<f32>(&mut rng, opts, m, 100, 100, Layout::RowMajor, Layout::ColMajor, true);
            });
            let mr = f64::kernel(usable_isa(isa)).mr;
            let opts = Opts { kept_a_bytes: 20 * mr * 50 * size_of::<f64>(), ..packed(isa, Some((50, 64))) };
            pool.install(|| check::<f64>(&mut rng, opts, 49 * mr - 5, 97, 100, Layout::Padded, Layout::RowMajor, true));
        }
    }
}

#[test]
fn degenerate_shapes() {
    // m or n == 0: nothing to do, even with empty operands.
    let e: [f32; 0] = [];
    let z = MatRef { data: &e, offset: 0, row_stride: 0, col_stride: 0 };
    gemm(0, 5, 3, z, z, &mut [], true);
    gemm(5, 0, 3, z, z, &mut [], false);
    // k == 0 gives zeros without touching the (empty) operands.
    let mut c = [1.0f64; 6];
    let z64 = MatRef { data: &[], offset: 0, row_stride: 0, col_stride: 0 };
    gemm(2, 3, 0, z64, z64, &mut c, true);
    assert_eq!(c, [0.0; 6]);
}

#[test]
fn partition_covers_c_exactly() {
    for &(m, n, t) in &[(128, 128, 2), (1000, 37, 2), (7, 1000, 4), (300, 300, 3), (5, 5, 8)] {
        let tasks = partition(m, n, 12, 32, t);
        assert!(!tasks.is_empty() && tasks.len() <= t);
        let mut seen = vec![0u8; m * n];
        for &(r0, r1, c0, c1) in &tasks {
            for i in r0..r1 {
                for j in c0..c1 {
                    seen[i * n + j] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "m={m} n={n} t={t}");
    }
}

/// f16 operands of every layout, widened while packed, against the f64 sum of the same
/// f16 values: ragged panels, several depth blocks, one thread and all.
#[test]
fn f16_operands_widened_while_packed() {
    use half::f16;
    let mut rng = XorShift(0xf16);
    let to_f16 = |(d, o, rs, cs): (Vec<f32>, usize, usize, usize)| {
        (d.iter().map(|&v| f16::from_f32(v)).collect::<Vec<f16>>(), o, rs, cs)
    };
    for &(m, n, k) in &[(1, 1, 1), (7, 33, 5), (29, 47, 300), (64, 96, 1100), (130, 70, 37)] {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for parallel in [false, true] {
                    let (ad, ao, ars, acs) = to_f16(make::<f32>(&mut rng, m, k, la));
                    let (bd, bo, brs, bcs) = to_f16(make::<f32>(&mut rng, k, n, lb));
                    let a = MatRef { data: &ad, offset: ao, row_stride: ars, col_stride: acs };
                    let b = MatRef { data: &bd, offset: bo, row_stride: brs, col_stride: bcs };
                    let mut c = vec![MaybeUninit::new(7f32); m * n];
                    gemm_f16(m, n, k, a, b, &mut c, parallel);
                    let tol = 4.0 * (k as f64 + 1.0) * f32::EPSILON as f64;
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| {
                                    a.data[ao + i * ars + p * acs].to_f64() * b.data[bo + p * brs + j * bcs].to_f64()
                                })
                                .sum();
                            // SAFETY: the GEMM wrote every element.
                            let got = unsafe { c[i * n + j].assume_init() } as f64;
                            assert!(
                                (got - want).abs() <= tol,
                                "{m}x{n}x{k} {la:?}x{lb:?} par={parallel}: c[{i},{j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
