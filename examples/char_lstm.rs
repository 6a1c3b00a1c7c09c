//! A character-level LSTM language model on the bundled `data/lighthouse.txt` (self-written,
//! see `data/README.md`): Embedding → LSTM → Linear, trained with truncated backpropagation
//! through time on the first 90% of the text and measured in bits per character on the rest.
//!
//! ```text
//! cargo run --release --example char_lstm -- [--device cpu|cuda|cuda:N] [--steps N] [--seconds S] [--seed N]
//!     [--hidden H] [--bptt T] [--batch-size B] [--sample-len L]
//! ```
//!
//! stdout: `initial held-out bits per char: X` first, progress lines, `final held-out bits per
//! char: Y`, then a passage sampled from the trained model. Training runs a fixed number of
//! steps (`--steps`, default 600, near where the held-out figure is lowest), so the result is
//! the same on any machine; `--seconds S` also stops it after S seconds of wall time. The text is small (15 KB of
//! training data), so a larger model or a longer run overfits: held-out bits per char get worse.

use std::time::Instant;
use tensorforge::nn::{CrossEntropyLoss, Embedding, LSTM, Linear, Loss, Module, RnnOptions};
use tensorforge::optim::{Adam, AdamConfig, Optimizer};
use tensorforge::param::ParameterStore;
use tensorforge::{DType, Device, Result, Tensor, no_grad};

const TEXT: &str = include_str!("../data/lighthouse.txt");
const USAGE: &str = "usage: char_lstm [--device cpu|cuda|cuda:N] [--steps N] [--seconds S] [--seed N] [--hidden H]
                 [--bptt T] [--batch-size B] [--sample-len L]";

struct Args {
    device: String,
    steps: usize,
    seconds: Option<f64>,
    seed: u64,
    hidden: usize,
    bptt: usize,
    batch: usize,
    sample_len: usize,
}

fn parse_args() -> std::result::Result<Option<Args>, String> {
    let mut a = Args {
        device: "cpu".into(),
        steps: 1200,
        seconds: None,
        seed: 7,
        hidden: 64,
        bptt: 48,
        batch: 32,
        sample_len: 400,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
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
    let start = Instant::now();
    let mut step = 0usize;
    let mut recent = Vec::new();
    while step < args.steps && args.seconds.is_none_or(|s| start.elapsed().as_secs_f64() < s) {
        // Random windows of the training text; each is an independent sequence from zero state.
        let offs: Vec<usize> = (0..n).map(|_| rng.below(train.len() - t - 1)).collect();
        let pick =
            |d: usize| -> Vec<i64> { (0..t).flat_map(|k| offs.iter().map(move |&o| train[o + k + d])).collect() };
        let x = Tensor::from_vec(pick(0), (t, n), device)?;
        let y = Tensor::from_vec(pick(1), t * n, device)?;
        let (logits, _) = model.forward(&x, None)?;
        let loss = ce.loss(&logits.reshape((t * n, v))?, &y)?;
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
        recent.push(loss.item()?);
        step += 1;
        if step.is_multiple_of(50) {
            let avg = recent.iter().sum::<f64>() / recent.len() as f64;
            recent.clear();
            println!(
                "step {step:4}  train bits/char {:.3}  ({:.0} ms/step)",
                avg / std::f64::consts::LN_2,
                start.elapsed().as_secs_f64() * 1e3 / step as f64
            );
        }
    }
    eprintln!("{step} steps in {:.1} s", start.elapsed().as_secs_f64());
    println!("final held-out bits per char: {:.3}", eval(&model)?);

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
