//! Learns to transcribe synthetic "spoken digit" sequences with CTC: each label 1..=5 is a
//! segment of 2–4 noisy frames around its prototype vector, segments are separated by 1–2
//! noisy silence frames (so repeated labels stay distinguishable), and the network — a
//! bidirectional GRU and a linear layer — never sees where one segment ends and the next
//! begins: CTC sums over all those alignments.
//!
//! ```text
//! cargo run --release --example ctc_toy -- [--device cpu|cuda|cuda:N] [--steps N] [--seed N] [--out DIR] [--resume]
//! ```
//!
//! Trains with the library's `Trainer` on 1 600 generated utterances (an epoch is 50 steps of
//! 32), evaluating the CTC loss and greedy-decode accuracy on 250 others after each epoch;
//! `--out` (default `runs/ctc_toy`) gets the checkpoint, `metrics.csv` and `curves.svg`.
//! Ends with `greedy decode accuracy: <fraction>` (exact sequence matches on held-out data).

use tensorforge::data::BatchIter;
use tensorforge::nn::{CtcLoss, GRU, Linear, Module, RnnOptions};
use tensorforge::optim::{Adam, AdamConfig};
use tensorforge::param::ParameterStore;
use tensorforge::train::{Metrics, Step, Trainer};
use tensorforge::{Device, Result, Tensor, no_grad};

const LABELS: usize = 5; // classes 1..=5; 0 is the blank
const FEATS: usize = 8;
const BATCH: usize = 32;
const TRAIN: usize = 50 * BATCH;
const HELD_OUT: usize = 250;
const USAGE: &str = "usage: ctc_toy [--device cpu|cuda|cuda:N] [--steps N] [--seed N] [--out DIR] [--resume]";

type Utterance = (Vec<[f64; FEATS]>, Vec<usize>);

/// Xorshift plus Box–Muller: the data stream, independent of the engine's RNG.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + ((self.uniform() * (hi - lo + 1) as f64) as usize).min(hi - lo)
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One utterance: frames `[T][FEATS]` and its label sequence.
fn utterance(rng: &mut Rng) -> Utterance {
    let n = rng.range(2, 5);
    let labels: Vec<usize> = (0..n).map(|_| rng.range(1, LABELS)).collect();
    let mut frames = Vec::new();
    let mut frame = |rng: &mut Rng, class: usize| {
        let mut f = [0.0; FEATS];
        // Prototype: a bump on feature `class` (silence = feature 0), plus noise everywhere.
        f[class] = 1.5;
        for x in f.iter_mut() {
            *x += 0.35 * rng.normal();
        }
        frames.push(f);
    };
    for _ in 0..rng.range(0, 2) {
        frame(rng, 0);
    }
    for (i, &l) in labels.iter().enumerate() {
        if i > 0 {
            for _ in 0..rng.range(1, 2) {
                frame(rng, 0);
            }
        }
        for _ in 0..rng.range(2, 4) {
            frame(rng, l);
        }
    }
    for _ in 0..rng.range(0, 2) {
        frame(rng, 0);
    }
    (frames, labels)
}

/// A padded batch: inputs `[T, N, FEATS]`, targets `[N, S]`, and the lengths.
struct Batch {
    x: Tensor,
    targets: Tensor,
    input_lengths: Vec<usize>,
    target_lengths: Vec<usize>,
    labels: Vec<Vec<usize>>,
}

fn batch(utts: &[&Utterance], device: Device) -> Result<Batch> {
    let n = utts.len();
    let t = utts.iter().map(|u| u.0.len()).max().unwrap_or(1);
    let s = utts.iter().map(|u| u.1.len()).max().unwrap_or(1);
    let mut x = vec![0.0f32; t * n * FEATS];
    let mut tg = vec![1i64; n * s];
    for (i, (frames, labels)) in utts.iter().enumerate() {
        for (k, f) in frames.iter().enumerate() {
            for (j, &v) in f.iter().enumerate() {
                x[(k * n + i) * FEATS + j] = v as f32;
            }
        }
        for (j, &l) in labels.iter().enumerate() {
            tg[i * s + j] = l as i64;
        }
    }
    Ok(Batch {
        x: Tensor::from_vec(x, (t, n, FEATS), device)?,
        targets: Tensor::from_vec(tg, (n, s), device)?,
        input_lengths: utts.iter().map(|u| u.0.len()).collect(),
        target_lengths: utts.iter().map(|u| u.1.len()).collect(),
        labels: utts.iter().map(|u| u.1.clone()).collect(),
    })
}

struct Model {
    gru: GRU,
    head: Linear,
}

impl Model {
    /// Log-probabilities `[T, N, 1 + LABELS]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.gru.forward(x)?)?.log_softmax(-1)
    }
}

/// Best-path decoding: the most likely class per frame, repeats merged, blanks dropped.
fn greedy_decode(log_probs: &Tensor, input_lengths: &[usize]) -> Result<Vec<Vec<usize>>> {
    let (t, n, c) = (log_probs.dims()[0], log_probs.dims()[1], log_probs.dims()[2]);
    let v = log_probs.to_vec_f64()?;
    Ok((0..n)
        .map(|i| {
            let mut out = Vec::new();
            let mut prev = 0;
            for k in 0..input_lengths[i].min(t) {
                let row = &v[(k * n + i) * c..(k * n + i + 1) * c];
                let best = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                if best != 0 && best != prev {
                    out.push(best);
                }
                prev = best;
            }
            out
        })
        .collect())
}

struct Args {
    device: String,
    steps: usize,
    seed: u64,
    out: String,
    resume: bool,
}

fn run(a: &Args) -> Result<()> {
    let device = Device::parse(&a.device)?;
    tensorforge::manual_seed(a.seed);
    let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let train: Vec<Utterance> = (0..TRAIN).map(|_| utterance(&mut rng)).collect();
    let held_out: Vec<Utterance> = (0..HELD_OUT).map(|_| utterance(&mut rng)).collect();
    let mut store = ParameterStore::new(device);
    let opts = RnnOptions { bidirectional: true, ..Default::default() };
    let model = Model {
        gru: GRU::from_store(&mut store, "gru", FEATS, 32, opts)?,
        head: Linear::from_store(&mut store, "head", 64, 1 + LABELS)?,
    };
    println!("bidirectional GRU + linear, {} parameters on {device}", store.num_parameters());
    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 1e-2, ..Default::default() })?;
    let ctc = CtcLoss::new();
    let mut batches = BatchIter::new(TRAIN, BATCH, true, a.seed);
    let epochs = (a.steps as u64).div_ceil(batches.num_batches() as u64) as usize;
    // Held-out CTC loss and exact-match accuracy of the greedy decode, in batches of 50.
    let evaluate = || -> Result<Metrics> {
        no_grad(|| {
            let (mut loss, mut right) = (0.0, 0);
            for chunk in held_out.chunks(50) {
                let b = batch(&chunk.iter().collect::<Vec<_>>(), device)?;
                let lp = model.forward(&b.x)?;
                loss += ctc.loss(&lp, &b.targets, &b.input_lengths, &b.target_lengths)?.item()? * chunk.len() as f64;
                let decoded = greedy_decode(&lp, &b.input_lengths)?;
                right += decoded.iter().zip(&b.labels).filter(|(d, l)| d == l).count();
            }
            let n = held_out.len() as f64;
            Ok(Metrics { loss: loss / n, accuracy: Some(right as f64 / n) })
        })
    };
    let report = Trainer::new(epochs).out_dir(&a.out).resume(a.resume).max_steps(a.steps as u64).fit(
        &mut store,
        &mut opt,
        &mut batches,
        |idx| {
            let b = batch(&idx.iter().map(|&i| &train[i]).collect::<Vec<_>>(), device)?;
            let loss = ctc.loss(&model.forward(&b.x)?, &b.targets, &b.input_lengths, &b.target_lengths)?;
            Ok(Step { loss, correct: None })
        },
        evaluate,
    )?;
    for f in &report.written {
        eprintln!("wrote {}", f.display());
    }
    let acc = match report.history.last() {
        Some(r) => r.held_out.accuracy.unwrap_or(0.0),
        None => evaluate()?.accuracy.unwrap_or(0.0),
    };
    println!("greedy decode accuracy: {acc:.3}");
    Ok(())
}

fn main() {
    let mut a = Args { device: "cpu".into(), steps: 400, seed: 1, out: "runs/ctc_toy".into(), resume: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--device" => a.device = value(),
            "--steps" => a.steps = value().parse().unwrap_or(0),
            "--seed" => a.seed = value().parse().unwrap_or(1),
            "--out" => a.out = value(),
            "--resume" => a.resume = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            _ => {
                eprintln!("error: unknown flag {flag}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if a.steps == 0 {
        eprintln!("error: --steps must be a positive integer\n{USAGE}");
        std::process::exit(2);
    }
    if let Err(e) = run(&a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
