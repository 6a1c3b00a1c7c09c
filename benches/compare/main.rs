//! The engine's side of `benches/compare/run.sh`: times one case and prints its median.
//!
//! `compare <case> <threads> <reps>` prints `ours_ms=<median>`;
//! `compare --serve <case> <threads>` warms up, prints `ready`, then answers each line `<reps>`
//! on stdin with `ms=<median>` (how `interleave.py` runs it);
//! `compare --check <case>` prints a checksum of the case's output (for `mlp_step`, the loss of
//! five consecutive steps) to compare with `peers.py --check`.
//! The case `peak:sgemm<n>` is the FMA ceiling for `sgemm<n>`: its 2·n³ flops as register-only
//! FMAs on every thread of the pool (`interleave.py`'s peer `peak`).
//! Cases mirror `benches/compare/peers.py` exactly: same shapes, f32 (bf16/f16 for the
//! `bf16_matmul`/`f16_matmul`/`bf16_vs_f32_matmul` cases), fresh outputs, and the same input values (`det`), so the
//! checksums of all sides agree (the half-precision ones to their rounding).

use std::time::Instant;
use tensorforge::nn::{
    Conv2d, CrossEntropyLoss, Embedding, Flatten, LSTM, Linear, Loss, MaxPool2d, Module, ReLU, RnnOptions, Sequential,
};
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::param::ParameterStore;
use tensorforge::{Device, Error, Result, Tensor};

/// Uniform in [-1, 1) from an integer hash of (index, seed), exactly as `peers.py` computes
/// it: the same inputs on every side without sharing an RNG.
fn det(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 31;
            x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 29;
            ((x >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, Device::Cpu)
}

type Run = Box<dyn FnMut() -> Result<Tensor>>;

/// MLP 784-512-512-10 with ReLU on a batch of 128: one SGD step (lr 0.01) on softmax
/// cross-entropy; returns the loss before the update.
fn mlp_step() -> Result<Run> {
    let mut store = ParameterStore::new(Device::Cpu);
    let mut model = Sequential::new();
    let sizes = [784, 512, 512, 10];
    for (l, io) in sizes.windows(2).enumerate() {
        let (fan_in, fan_out) = (io[0], io[1]);
        // Inserted before `from_store` so the layer picks up these values instead of a random
        // init; the scale is PyTorch's default bound, so the loss starts near ln 10.
        let scale = 1.0 / (fan_in as f64).sqrt();
        store.insert(&format!("fc{l}.weight"), det(&[fan_out, fan_in], 10 + l as u64)?.mul_scalar(scale)?)?;
        store.insert(&format!("fc{l}.bias"), det(&[fan_out], 20 + l as u64)?.mul_scalar(scale)?)?;
        model = model.add(Linear::from_store(&mut store, &format!("fc{l}"), fan_in, fan_out)?);
        if l + 2 < sizes.len() {
            model = model.add(ReLU);
        }
    }
    let x = det(&[128, 784], 30)?;
    let y = Tensor::from_vec((0..128).map(|i| i % 10).collect::<Vec<i64>>(), 128, Device::Cpu)?;
    let mut opt = Sgd::new(store.parameters(), SgdConfig { lr: 0.01, ..Default::default() })?;
    let loss_fn = CrossEntropyLoss::new();
    Ok(Box::new(move || {
        let loss = loss_fn.loss(&model.forward(&x)?, &y)?;
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
        Ok(loss)
    }))
}

/// One SGD step (lr 0.01) of `forward` on cross-entropy against `y`; returns the loss before
/// the update.
fn sgd_step(
    store: &ParameterStore,
    forward: impl Fn() -> Result<Tensor> + Send + Sync + 'static,
    y: Tensor,
) -> Result<Run> {
    let mut opt = Sgd::new(store.parameters(), SgdConfig { lr: 0.01, ..Default::default() })?;
    let loss_fn = CrossEntropyLoss::new();
    // The step as `train::Trainer` runs it on the CPU: on a worker of the kernels' pool.
    Ok(Box::new(move || {
        tensorforge::backend::cpu::on_pool(|| {
            let loss = loss_fn.loss(&forward()?, &y)?;
            opt.zero_grad();
            loss.backward()?;
            opt.step()?;
            Ok(loss)
        })
    }))
}

/// `det` values scaled by PyTorch's default init bound `1/√fan_in`, inserted into `store`
/// under `name` so the layer built next picks them up.
fn put(store: &mut ParameterStore, name: &str, shape: &[usize], seed: u64, fan_in: usize) -> Result<()> {
    store.insert(name, det(shape, seed)?.mul_scalar(1.0 / (fan_in as f64).sqrt())?)?;
    Ok(())
}

/// train_digits' CNN on a batch of 32 8×8 images: conv 1→16 and 16→32 (3×3, padding 1, ReLU),
/// 2×2 max pooling, linear 512→10; one SGD step.
fn cnn_step() -> Result<Run> {
    let mut store = ParameterStore::new(Device::Cpu);
    let same = tensorforge::ops::Conv2dOptions { padding: (1, 1), ..Default::default() };
    put(&mut store, "conv1.weight", &[16, 1, 3, 3], 40, 9)?;
    put(&mut store, "conv1.bias", &[16], 41, 9)?;
    put(&mut store, "conv2.weight", &[32, 16, 3, 3], 42, 144)?;
    put(&mut store, "conv2.bias", &[32], 43, 144)?;
    put(&mut store, "fc.weight", &[10, 512], 44, 512)?;
    put(&mut store, "fc.bias", &[10], 45, 512)?;
    let model = Sequential::new()
        .add(Conv2d::from_store(&mut store, "conv1", 1, 16, (3, 3), same)?)
        .add(ReLU)
        .add(Conv2d::from_store(&mut store, "conv2", 16, 32, (3, 3), same)?)
        .add(ReLU)
        .add(MaxPool2d::new((2, 2)))
        .add(Flatten)
        .add(Linear::from_store(&mut store, "fc", 512, 10)?);
    let x = det(&[32, 1, 8, 8], 46)?;
    let y = Tensor::from_vec((0..32).map(|i| i % 10).collect::<Vec<i64>>(), 32, Device::Cpu)?;
    sgd_step(&store, move || model.forward(&x), y)
}

/// char_lstm's model on a batch of 32 sequences of 48 tokens: embedding 64→32, LSTM 32→64
/// (batch first), linear 64→64 on every step; one SGD step on next-token cross-entropy.
fn lstm_step() -> Result<Run> {
    let (vocab, emb, hidden, (n, t)) = (64, 32, 64, (32, 48));
    let mut store = ParameterStore::new(Device::Cpu);
    store.insert("emb.weight", det(&[vocab, emb], 50)?)?;
    put(&mut store, "lstm.weight_ih_l0", &[4 * hidden, emb], 51, hidden)?;
    put(&mut store, "lstm.weight_hh_l0", &[4 * hidden, hidden], 52, hidden)?;
    put(&mut store, "lstm.bias_ih_l0", &[4 * hidden], 53, hidden)?;
    put(&mut store, "lstm.bias_hh_l0", &[4 * hidden], 54, hidden)?;
    put(&mut store, "fc.weight", &[vocab, hidden], 55, hidden)?;
    put(&mut store, "fc.bias", &[vocab], 56, hidden)?;
    let embedding = Embedding::from_store(&mut store, "emb", vocab, emb)?;
    let opts = RnnOptions { batch_first: true, ..Default::default() };
    let lstm = LSTM::from_store(&mut store, "lstm", emb, hidden, opts)?;
    let fc = Linear::from_store(&mut store, "fc", hidden, vocab)?;
    let token = |i: usize, s: usize| ((i * 7 + s * 3 + (i * s) % 5) % vocab) as i64;
    let ids: Vec<i64> = (0..n).flat_map(|i| (0..t).map(move |s| token(i, s))).collect();
    let next: Vec<i64> = (0..n).flat_map(|i| (0..t).map(move |s| token(i, s + 1))).collect();
    let x = Tensor::from_vec(ids, (n, t), Device::Cpu)?;
    let y = Tensor::from_vec(next, n * t, Device::Cpu)?;
    let forward = move || {
        let h = embedding.forward(&x)?.reshape((n, t, emb))?;
        let (out, _) = lstm.forward_with_state(&h, None)?;
        fc.forward(&out.reshape((n * t, hidden))?)
    };
    sgd_step(&store, forward, y)
}

/// Independent accumulators in [`fma_loop`]: more than FMA latency × FMA pipes on the cores
/// we know (4 × 2), so the loop runs at the FMA units' throughput.
#[cfg(target_arch = "x86_64")]
const PEAK_ACCS: usize = 12;

/// `iters` rounds of `PEAK_ACCS` vector FMAs on registers, with the widest f32 vectors the GEMM
/// kernels use here (AVX-512, else AVX2+FMA); returns a sum so the work is not dropped.
#[cfg(target_arch = "x86_64")]
fn fma_loop(iters: usize, wide: bool) -> f32 {
    use std::arch::x86_64::*;
    macro_rules! fma_loop {
        ($feat:literal, $set1:ident, $fmadd:ident, $store:ident, $lanes:literal) => {{
            #[target_feature(enable = $feat)]
            fn run(iters: usize) -> f32 {
                // |acc| stays near 1000: no overflow, no subnormals.
                let (mul, add) = ($set1(std::hint::black_box(0.999)), $set1(std::hint::black_box(1.0)));
                let mut acc = [$set1(0.0); PEAK_ACCS];
                for _ in 0..iters {
                    for a in acc.iter_mut() {
                        *a = $fmadd(*a, mul, add);
                    }
                }
                let mut lanes = [0.0f32; $lanes];
                let mut sum = 0.0;
                for a in acc {
                    // SAFETY: `lanes` holds one vector.
                    unsafe { $store(lanes.as_mut_ptr(), a) };
                    sum += lanes.iter().sum::<f32>();
                }
                sum
            }
            // SAFETY: called only where the CPU has the features (`peak_lanes`).
            unsafe { run(iters) }
        }};
    }
    if wide {
        fma_loop!("avx512f", _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps, 16)
    } else {
        fma_loop!("avx2,fma", _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps, 8)
    }
}

/// f32 lanes of the vectors [`fma_loop`] can use on this CPU.
#[cfg(target_arch = "x86_64")]
fn peak_lanes() -> Option<usize> {
    if is_x86_feature_detected!("avx512f") {
        Some(16)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Some(8)
    } else {
        None
    }
}

/// The FMA ceiling of case `of`: its flops as register-only FMAs, split evenly over the
/// global pool's threads. Timed in the same rounds as the case, it says what fraction of the
/// machine's FMA throughput each side reaches at that moment.
fn fma_peak(of: &str) -> Result<Run> {
    let n: usize = of
        .strip_prefix("sgemm")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::msg(format!("peak: no flop count for case {of}")))?;
    #[cfg(target_arch = "x86_64")]
    if let Some(lanes) = peak_lanes() {
        let flops = 2 * n * n * n;
        return Ok(Box::new(move || {
            let iters = flops / rayon::current_num_threads() / (2 * PEAK_ACCS * lanes);
            let sums = rayon::broadcast(|_| fma_loop(iters, lanes == 16));
            Tensor::from_vec(vec![sums.iter().sum::<f32>()], 1, Device::Cpu)
        }));
    }
    Err(Error::msg(format!("peak: this CPU has no AVX-512 or AVX2+FMA for {n}")))
}

/// Builds the inputs of `case` and returns a closure running it once.
fn case(name: &str) -> Result<Run> {
    if let Some(of) = name.strip_prefix("peak:") {
        return fma_peak(of);
    }
    if let Some(n) = name.strip_prefix("sgemm") {
        let n: usize = n.parse().map_err(|_| Error::msg(format!("bad case {name}")))?;
        let (a, b) = (det(&[n, n], 0)?, det(&[n, n], 1)?);
        return Ok(Box::new(move || a.matmul(&b)));
    }
    // The same values rounded to bf16 (or f16) on every side; the output stays in that dtype.
    let halves = [
        ("bf16_matmul", tensorforge::DType::BF16),
        ("f16_matmul", tensorforge::DType::F16),
        ("bf16_vs_f32_matmul", tensorforge::DType::BF16),
    ];
    for (prefix, dt) in halves {
        if let Some(n) = name.strip_prefix(prefix) {
            let n: usize = n.parse().map_err(|_| Error::msg(format!("bad case {name}")))?;
            let (a, b) = (det(&[n, n], 0)?.to_dtype(dt)?, det(&[n, n], 1)?.to_dtype(dt)?);
            return Ok(Box::new(move || a.matmul(&b)));
        }
    }
    Ok(match name {
        "bmm64x128" => {
            let (a, b) = (det(&[64, 128, 128], 0)?, det(&[64, 128, 128], 1)?);
            Box::new(move || a.matmul(&b))
        }
        "add16M" => {
            let (a, b) = (det(&[1 << 24], 0)?, det(&[1 << 24], 1)?);
            Box::new(move || a.add(&b))
        }
        "conv2d_n32c64k64" => {
            let (x, w) = (det(&[32, 64, 32, 32], 0)?, det(&[64, 64, 3, 3], 1)?);
            let opt = tensorforge::ops::Conv2dOptions { padding: (1, 1), ..Default::default() };
            Box::new(move || x.conv2d(&w, None, opt))
        }
        "softmax4096x1024" => {
            let a = det(&[4096, 1024], 0)?;
            Box::new(move || a.softmax(-1))
        }
        "mlp_step" => mlp_step()?,
        "cnn_step" => cnn_step()?,
        "lstm_step" => lstm_step()?,
        _ => return Err(Error::msg(format!("unknown case {name}"))),
    })
}

/// Prints what `peers.py --check` prints for the same case.
fn check(name: &str) -> Result<()> {
    let mut run = case(name)?;
    if name.ends_with("_step") {
        let losses = (0..5).map(|_| Ok(format!("{:.6}", run()?.item()?))).collect::<Result<Vec<_>>>()?;
        println!("losses={}", losses.join(","));
        return Ok(());
    }
    // Half-precision outputs are summed as their f32 values, as peers.py does.
    let v = run()?.flatten_all()?.to_dtype(tensorforge::DType::F32)?.to_vec1::<f32>()?;
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    let abs: f64 = v.iter().map(|&x| x.abs() as f64).sum();
    let sq: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
    println!("sum={sum:.6e} abs={abs:.6e} sq={sq:.6e}");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let [flag, name] = args.as_slice()
        && flag == "--check"
    {
        return check(name);
    }
    let (serve, rest) = match args.split_first() {
        Some((flag, rest)) if flag == "--serve" => (true, rest),
        _ => (false, args.as_slice()),
    };
    let (name, threads, reps) = match rest {
        [name, threads] if serve => (name, threads, None),
        [name, threads, reps] if !serve => (name, threads, Some(reps)),
        _ => {
            eprintln!(
                "usage: compare <case> <threads> <reps> | compare --serve <case> <threads> | compare --check <case>"
            );
            std::process::exit(2);
        }
    };
    let threads: usize = threads.parse().unwrap_or(1);
    // The global pool, called from the main thread: how a program uses the engine.
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| Error::msg(e.to_string()))?;
    time_case(name, reps)
}

/// Untimed calls before each `--serve` round (peers.py's `ROUND_WARMUP_S`).
const ROUND_WARMUP_S: f64 = 0.05;

/// Times `name`: the median of `reps` calls, or rounds asked for on stdin (`--serve`).
fn time_case(name: &str, reps: Option<&String>) -> Result<()> {
    let mut run = case(name)?;
    // Warm-up: page-in, thread start, the buffer cache; as many calls as peers.py makes.
    for _ in 0..5 {
        run()?;
    }
    if let Some(reps) = reps {
        tensorforge::profile::reset();
        println!("ours_ms={:.4}", median_ms(&mut run, reps.parse().unwrap_or(10))?);
        // With TENSORFORGE_PROFILE=1: where the timed calls' time went, per op.
        eprint!("{}", tensorforge::profile::report());
        return Ok(());
    }
    // interleave.py keeps this process, warm, for a whole case and asks for a round at a
    // time; each round starts with untimed calls for ROUND_WARMUP_S: after the other
    // sides' turns, every side takes several calls to get back to speed.
    println!("ready");
    for line in std::io::stdin().lines() {
        let line = line.map_err(|e| Error::msg(e.to_string()))?;
        let reps = line.trim().parse().map_err(|_| Error::msg(format!("bad rep count {line:?}")))?;
        let start = Instant::now();
        run()?;
        while start.elapsed().as_secs_f64() < ROUND_WARMUP_S {
            run()?;
        }
        println!("ms={:.4}", median_ms(&mut run, reps)?);
    }
    Ok(())
}

/// The median time of `reps` calls, in milliseconds.
fn median_ms(run: &mut Run, reps: usize) -> Result<f64> {
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let out = run();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            out.map(|_| ms)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
