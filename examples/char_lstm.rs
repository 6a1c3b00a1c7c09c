//! A character-level LSTM language model on the bundled `data/lighthouse.txt` (self-written,
//! see `data/README.md`): Embedding → LSTM → Linear, trained with truncated backpropagation
//! through time on the first 90% of the text and measured in bits per character on the rest.
//!
//! ```text
//! cargo run --release --example char_lstm -- [--device cpu|cuda|cuda:N] [--steps N] [--seconds S] [--seed N]
//!     [--hidden H] [--bptt T] [--batch-size B] [--sample-len L] [--out DIR] [--resume]
//! ```
//!
//! stdout: `initial held-out bits per char: X` first, `final held-out bits per char: Y`, then a
//! passage sampled from the trained model; stderr: the library trainer's progress and a line
//! per epoch (an epoch is one pass over the training windows, ~50 steps), and where it wrote
//! what. `--out` (default `runs/char_lstm`) gets the checkpoint, `metrics.csv` and
//! `curves.svg` (losses in nats per char). Training runs a fixed number of steps (`--steps`,
//! default 600, near where the held-out figure is lowest), so the result is the same on any
//! machine; `--seconds S` also stops it after S seconds of wall time. The text is small
//! (15 KB of training data), so a larger model or a longer run overfits: held-out bits per
//! char get worse.

use std::f64::consts::LN_2;
use tensorforge::data::BatchIter;
use tensorforge::nn::{CrossEntropyLoss, Embedding, LSTM, Linear, Loss, Module, RnnOptions};
use tensorforge::optim::{Adam, AdamConfig};
use tensorforge::param::ParameterStore;
use tensorforge::train::{Metrics, Step, Trainer};
use tensorforge::{DType, Device, Result, Tensor, no_grad};

const TEXT: &str = include_str!("../data/lighthouse.txt");
const USAGE: &str = "usage: char_lstm [--device cpu|cuda|cuda:N] [--steps N] [--seconds S] [--seed N] [--hidden H]
                 [--bptt T] [--batch-size B] [--sample-len L] [--out DIR] [--resume]";
/// Training windows start every `STRIDE` characters (plus a random shift below it), so an
/// epoch reads each stretch of the text about once.
const STRIDE: usize = 8;

struct Args {
    device: String,
    steps: usize,
    seconds: Option<f64>,
    seed: u64,
    hidden: usize,
    bptt: usize,
    batch: usize,
    sample_len: usize,
    out: String,
    resume: bool,
}

fn parse_args() -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        device: "cpu".into(),
        steps: 600,
        seconds: None,
        seed: 7,
        hidden: 64,
        bptt: 48,
        batch: 32,
        sample_len: 400,
        out: "runs/char_lstm".into(),
        resume: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        if flag == "--resume" {
            a.resume = true;
            continue;
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag, None),
        };
        let v = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("{flag}: cannot parse `{v}`"));
        match flag.as_str() {
            "--device" => a.device = v,
            "--steps" => a.steps = num(&v)? as usize,
            "--seconds" => a.seconds = Some(num(&v)?),
            "--seed" => a.seed = num(&v)? as u64,
            "--hidden" => a.hidden = num(&v)? as usize,
            "--bptt" => a.bptt = num(&v)? as usize,
            "--batch-size" => a.batch = num(&v)? as usize,
            "--sample-len" => a.sample_len = num(&v)? as usize,
            "--out" => a.out = v,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.hidden == 0 || a.bptt < 2 || a.batch == 0 || a.seconds.is_some_and(|s| s.is_nan() || s < 0.0) {
        return Err("--hidden, --batch-size must be positive, --bptt at least 2, --seconds ≥ 0".into());
    }
    Ok(Some(a))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

struct Model {
    embed: Embedding,
    lstm: LSTM,
    head: Linear,
}

impl Model {
    /// Logits `[T, N, V]` for ids `[T, N]`, from `state` (zeros when `None`), and the new state.
    fn forward(&self, ids: &Tensor, state: Option<(&Tensor, &Tensor)>) -> Result<(Tensor, (Tensor, Tensor))> {
        let x = self.embed.forward(ids)?;
        let (y, st) = self.lstm.forward_with_state(&x, state)?;
        Ok((self.head.forward(&y)?, st))
    }
}

/// A small xorshift stream for batch offsets and sampling (independent of the engine's RNG).
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next_f64() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

/// Bits per character of `model` over `data`: the text is cut into `streams` parallel
/// streams, read in windows of `window` steps with the state carried across windows.
fn bits_per_char(model: &Model, data: &[i64], device: Device, streams: usize, window: usize) -> Result<f64> {
    no_grad(|| {
        let len = (data.len() - 1) / streams;
        let ce = CrossEntropyLoss { reduction: tensorforge::nn::Reduction::Sum, ..Default::default() };
        let (mut total, mut count) = (0.0, 0usize);
        let mut state: Option<(Tensor, Tensor)> = None;
        let mut start = 0;
        while start < len {
            let w = window.min(len - start);
            // [T, N]: step t of stream s reads data[s·len + start + t].
            let pick = |off: usize| -> Vec<i64> {
                (0..w).flat_map(|t| (0..streams).map(move |s| data[s * len + start + t + off])).collect()
            };
            let x = Tensor::from_vec(pick(0), (w, streams), device)?;
            let y = Tensor::from_vec(pick(1), w * streams, device)?;
            let (logits, st) = model.forward(&x, state.as_ref().map(|(h, c)| (h, c)))?;
            let v = logits.dims()[2];
            total += ce.loss(&logits.reshape((w * streams, v))?, &y)?.item()?;
            count += w * streams;
            state = Some(st);
            start += w;
        }
        Ok(total / count as f64 / std::f64::consts::LN_2)
    })
}

fn run(args: &Args) -> Result<()> {
    let device = Device::parse(&args.device)?;
    tensorforge::manual_seed(args.seed);
    let mut vocab: Vec<char> = TEXT.chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    let index = |c: char| vocab.binary_search(&c).expect("every char is in the vocabulary") as i64;
    let data: Vec<i64> = TEXT.chars().map(index).collect();
    let split = data.len() * 9 / 10;
    let (train, held_out) = (&data[..split], &data[split..]);
    let v = vocab.len();

    let mut store = ParameterStore::new(device);
    let model = Model {
        embed: Embedding::from_store(&mut store, "embed", v, 32)?,
        lstm: LSTM::from_store(&mut store, "lstm", 32, args.hidden, RnnOptions::default())?,
        head: Linear::from_store(&mut store, "head", args.hidden, v)?,
    };
    eprintln!(
        "{} characters ({} train, {} held out), vocabulary {v}, {} parameters on {device}",
        data.len(),
        train.len(),
        held_out.len(),
        store.num_parameters()
    );
    let eval = |m: &Model| bits_per_char(m, held_out, device, 8, 100);
    println!("initial held-out bits per char: {:.3}", eval(&model)?);

    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 5e-3, ..Default::default() })?;
    let ce = CrossEntropyLoss::new();
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (t, n) = (args.bptt, args.batch);
    if train.len() < t + STRIDE + 1 {
        return Err(tensorforge::Error::msg(format!("--bptt {t} is longer than the training text")));
    }
    // Sample i is the window starting near i·STRIDE; each is an independent sequence from
    // zero state.
    let last_start = train.len() - t - 1;
    let mut batches = BatchIter::new(last_start / STRIDE, n, true, args.seed);
    let epochs = (args.steps as u64).div_ceil(batches.num_batches().max(1) as u64) as usize;
    let mut trainer = Trainer::new(epochs).out_dir(&args.out).resume(args.resume).max_steps(args.steps as u64);
    if let Some(s) = args.seconds {
        trainer = trainer.max_seconds(s);
    }
    let report = trainer.fit(
        &mut store,
        &mut opt,
        &mut batches,
        |idx| {
            let offs: Vec<usize> = idx.iter().map(|&i| (i * STRIDE + rng.below(STRIDE)).min(last_start)).collect();
            let pick =
                |d: usize| -> Vec<i64> { (0..t).flat_map(|k| offs.iter().map(move |&o| train[o + k + d])).collect() };
            let x = Tensor::from_vec(pick(0), (t, offs.len()), device)?;
            let y = Tensor::from_vec(pick(1), t * offs.len(), device)?;
            let (logits, _) = model.forward(&x, None)?;
            Ok(Step { loss: ce.loss(&logits.reshape((t * offs.len(), v))?, &y)?, correct: None })
        },
        || Ok(Metrics { loss: eval(&model)? * LN_2, accuracy: None }),
    )?;
    eprintln!(
        "{} steps in {:.1} s of training ({:.0} ms/step)",
        report.step_losses.len(),
        report.train_seconds,
        report.train_seconds * 1e3 / report.step_losses.len().max(1) as f64
    );
    for f in &report.written {
        eprintln!("wrote {}", f.display());
    }
    let last = report.history.last().map(|r| r.held_out.loss / LN_2);
    println!(
        "final held-out bits per char: {:.3}",
        match last {
            Some(b) => b,
            None => eval(&model)?,
        }
    );

    // Sample: prime the state with a phrase, then draw characters at temperature 0.8.
    let prime = "The keeper ";
    let mut passage = String::from(prime);
    no_grad(|| -> Result<()> {
        let ids: Vec<i64> = prime.chars().map(index).collect();
        let x = Tensor::from_vec(ids.clone(), (ids.len(), 1), device)?;
        let (mut logits, mut state) = model.forward(&x, None)?;
        for _ in 0..args.sample_len {
            let last = logits.narrow(0, logits.dims()[0] - 1, 1)?.reshape(v)?;
            let p = last.mul_scalar(1.0 / 0.8)?.softmax(0)?.to_dtype(DType::F64)?.to_vec_f64()?;
            let mut u = rng.next_f64();
            let mut k = v - 1;
            for (i, &pi) in p.iter().enumerate() {
                if u < pi {
                    k = i;
                    break;
                }
                u -= pi;
            }
            passage.push(vocab[k]);
            let x = Tensor::from_vec(vec![k as i64], (1, 1), device)?;
            (logits, state) = model.forward(&x, Some((&state.0, &state.1)))?;
        }
        Ok(())
    })?;
    println!("{passage}");
    Ok(())
}
