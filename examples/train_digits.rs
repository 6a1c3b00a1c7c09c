//! Trains a classifier on the bundled UCI digits (or real MNIST) and reports test accuracy.
//!
//! ```text
//! cargo run --release --example train_digits -- [--epochs N] [--seed S] [--device cpu|cuda|cuda:N]
//!     [--mnist DIR] [--out DIR] [--model mlp|cnn] [--batch-size B] [--lr LR] [--hidden H]
//!     [--resume] [--stop-after E] [--precision f32|bf16|f16] [--distributed [--bucket-kb K]]
//! ```
//!
//! The loop is the library's [`tensorforge::train::Trainer`]. It writes to `--out` (default
//! `runs/train_digits-<model>/`, one directory per model): `model.safetensors` (the trained
//! parameters, loadable by numpy and PyTorch), `metrics.csv` and `curves.svg` (loss and
//! accuracy, train and held-out, per epoch), and after every epoch `checkpoint.safetensors`
//! (parameters, optimizer state, step, epoch, RNG state), which `--resume` continues from. It
//! ends with the line `test accuracy: <fraction>`.
//!
//! A run stopped after epoch E (`--stop-after E` simulates an interruption) and resumed with
//! the same flags ends with exactly the same model as an uninterrupted run. The learning-rate schedule spans
//! `--epochs`, so resuming with a *different* `--epochs` continues on a different schedule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tensorforge::data::{BatchIter, Dataset};
use tensorforge::distributed::{Communicator, DistributedDataParallel};
use tensorforge::nn::{Conv2d, CrossEntropyLoss, Flatten, Linear, Loss, MaxPool2d, Module, ReLU, Sequential};
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Adam, AdamConfig, CosineLr};
use tensorforge::param::ParameterStore;
use tensorforge::train::{Metrics, Step, Trainer};
use tensorforge::{Device, Error, Result, Tensor, no_grad};

const USAGE: &str = "usage: train_digits [--epochs N] [--seed S] [--device cpu|cuda|cuda:N] [--mnist DIR]
                    [--out DIR] [--model mlp|cnn] [--batch-size B] [--lr LR] [--hidden H]
                    [--resume] [--stop-after E] [--precision f32|bf16|f16] [--distributed [--bucket-kb K]]
       mpirun -np 2 target/release/examples/train_digits --distributed  (built with --features mpi)";

/// The architectures this example can train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelKind {
    /// in → hidden → classes, ReLU.
    Mlp,
    /// Two 3×3 convolutions (16 and 32 channels), 2×2 max pooling, a linear classifier.
    Cnn,
}

/// Flat feature rows `[N, rows·cols]` as one-channel images `[N, 1, rows, cols]`.
struct ToImage {
    rows: usize,
    cols: usize,
}

impl Module for ToImage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.reshape((x.dims()[0], 1, self.rows, self.cols))
    }
}

#[derive(Debug)]
struct Args {
    device: String,
    mnist: Option<PathBuf>,
    epochs: usize,
    seed: u64,
    out: PathBuf,
    model: ModelKind,
    batch_size: usize,
    lr: f64,
    hidden: usize,
    /// Continue from `--out/checkpoint.safetensors`.
    resume: bool,
    /// Stop after this many epochs (as if interrupted); the checkpoint stays resumable.
    stop_after: Option<usize>,
    /// One model on all the ranks of an MPI job; `--batch-size` is per rank.
    distributed: bool,
    /// Gradient bucket size for `--distributed`, in KiB.
    bucket_kb: usize,
    /// Mixed precision: matmul and conv in bf16 or f16, f32 masters (`tensorforge::amp`).
    precision: tensorforge::DType,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            device: "cpu".into(),
            mnist: None,
            epochs: 30,
            seed: 42,
            out: PathBuf::new(),
            model: ModelKind::Mlp,
            batch_size: 32,
            lr: 1e-2,
            hidden: 256,
            resume: false,
            stop_after: None,
            distributed: false,
            bucket_kb: tensorforge::distributed::DEFAULT_BUCKET_BYTES >> 10,
            precision: tensorforge::DType::F32,
        }
    }
}

/// Parses `--flag value` and `--flag=value`; `Ok(None)` means `--help` was asked for.
fn parse_args(argv: impl IntoIterator<Item = String>) -> std::result::Result<Option<Args>, String> {
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> std::result::Result<T, String> {
        v.parse().map_err(|_| format!("{flag}: cannot parse `{v}`"))
    }
    let mut a = Args::default();
    let mut out_given = false;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument `{arg}`"));
        }
        let mut value = || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => a.device = value()?,
            "--mnist" => a.mnist = Some(PathBuf::from(value()?)),
            "--epochs" => a.epochs = num(&flag, &value()?)?,
            "--seed" => a.seed = num(&flag, &value()?)?,
            "--resume" => a.resume = true,
            "--distributed" => a.distributed = true,
            "--bucket-kb" => a.bucket_kb = num(&flag, &value()?)?,
            "--precision" => a.precision = tensorforge::amp::parse_precision(&value()?).map_err(|e| e.to_string())?,
            "--stop-after" => a.stop_after = Some(num(&flag, &value()?)?),
            "--out" => {
                a.out = PathBuf::from(value()?);
                out_given = true;
            }
            "--batch-size" => a.batch_size = num(&flag, &value()?)?,
            "--lr" => a.lr = num(&flag, &value()?)?,
            "--hidden" => a.hidden = num(&flag, &value()?)?,
            "--model" => {
                a.model = match value()?.as_str() {
                    "mlp" => ModelKind::Mlp,
                    "cnn" => ModelKind::Cnn,
                    m => return Err(format!("--model: unknown model `{m}` (expected mlp or cnn)")),
                }
            }
            _ => return Err(format!("unknown flag `{flag}`")),
        }
    }
    if a.batch_size == 0 || a.hidden == 0 {
        return Err("--batch-size and --hidden must be positive".into());
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        return Err("--lr must be a positive number".into());
    }
    if !out_given {
        // Each model gets its own directory, so a checkpoint is never resumed by the other.
        let model = match a.model {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
        };
        a.out = PathBuf::from(format!("runs/train_digits-{model}"));
    }
    Ok(Some(a))
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
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
        eprintln!("\nerror: {e}");
        std::process::exit(1);
    }
}

/// A mini-batch as tensors on `device`.
fn batch(ds: &Dataset, idx: &[usize], device: Device) -> Result<(Tensor, Tensor)> {
    let (x, y) = ds.gather(idx);
    Ok((Tensor::from_vec(x, (idx.len(), ds.dim), device)?, Tensor::from_vec(y, idx.len(), device)?))
}

/// Number of rows whose arg-max matches the label.
fn correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    let pred = logits.argmax(-1)?.to_vec1::<i64>()?;
    Ok(pred.iter().zip(y.to_vec1::<i64>()?).filter(|(p, t)| **p == *t).count())
}

/// (mean loss, accuracy) over a whole dataset, without recording.
fn evaluate(model: &dyn Module, ds: &Dataset, device: Device) -> Result<(f64, f64)> {
    no_grad(|| {
        let (mut loss, mut right) = (0.0, 0);
        for idx in BatchIter::new(ds.len(), 1000, false, 0) {
            let (x, y) = batch(ds, &idx, device)?;
            let logits = model.forward(&x)?;
            loss += CrossEntropyLoss::new().loss(&logits, &y)?.item()? * idx.len() as f64;
            right += correct(&logits, &y)?;
        }
        let n = ds.len().max(1) as f64;
        Ok((loss / n, right as f64 / n))
    })
}

fn run(args: &Args) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let (train, test, name) = match &args.mnist {
        Some(dir) => {
            let (train, test) = tensorforge::data::mnist::load_dir(dir)?;
            (train, test, "MNIST")
        }
        None => {
            let (train, test) = tensorforge::data::digits::load().split(0.2, args.seed);
            (train, test, "UCI digits")
        }
    };
    let comm = if args.distributed { Some(communicator(device)?) } else { None };
    let main_rank = comm.as_ref().is_none_or(|c| c.rank() == 0);
    let classes = train.num_classes().max(test.num_classes());
    tensorforge::manual_seed(args.seed);

    let mut store = ParameterStore::new(device);
    let model = match args.model {
        ModelKind::Mlp => Sequential::new()
            .add(Linear::from_store(&mut store, "fc1", train.dim, args.hidden)?)
            .add(ReLU)
            .add(Linear::from_store(&mut store, "fc2", args.hidden, classes)?),
        ModelKind::Cnn => {
            let same = Conv2dOptions { padding: (1, 1), ..Default::default() };
            let flat = 32 * (train.rows / 2) * (train.cols / 2);
            Sequential::new()
                .add(ToImage { rows: train.rows, cols: train.cols })
                .add(Conv2d::from_store(&mut store, "conv1", 1, 16, (3, 3), same)?)
                .add(ReLU)
                .add(Conv2d::from_store(&mut store, "conv2", 16, 32, (3, 3), same)?)
                .add(ReLU)
                .add(MaxPool2d::new((2, 2)))
                .add(Flatten)
                .add(Linear::from_store(&mut store, "fc", flat, classes)?)
        }
    };
    if main_rank {
        eprintln!(
            "{name}: {} train / {} test samples, {} features, {classes} classes; {:?} with {} parameters on {device}{}",
            train.len(),
            test.len(),
            train.dim,
            args.model,
            store.num_parameters(),
            comm.as_ref().map(|c| format!(", {} ranks", c.world_size())).unwrap_or_default()
        );
    }

    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: args.lr, ..Default::default() })?;
    let mut batches = BatchIter::new(train.len(), args.batch_size, true, args.seed);
    if let Some(c) = &comm {
        batches = batches.shard(c.rank(), c.world_size());
    }
    // The schedule spans every step of `--epochs`: a resumed run continues on the same curve.
    let total_steps = args.epochs * batches.num_batches();
    let loss_fn = CrossEntropyLoss::new();
    let mut trainer = Trainer::new(args.epochs)
        .out_dir(&args.out)
        .resume(args.resume)
        .schedule(CosineLr::new(args.lr, args.lr * 0.01, total_steps))
        .note("epochs", args.epochs)
        .precision(args.precision);
    if let Some(e) = args.stop_after {
        trainer = trainer.stop_after(e);
    }
    if let Some(c) = comm {
        trainer = trainer.distributed(DistributedDataParallel::with_bucket_bytes(c, &store, args.bucket_kb << 10)?);
    }
    let start = Instant::now();
    let report = trainer.fit(
        &mut store,
        &mut opt,
        &mut batches,
        |idx| {
            let (x, y) = batch(&train, idx, device)?;
            let logits = model.forward(&x)?;
            Ok(Step { loss: loss_fn.loss(&logits, &y)?, correct: Some(correct(&logits, &y)?) })
        },
        || {
            let (loss, accuracy) = evaluate(&model, &test, device)?;
            Ok(Metrics { loss, accuracy: Some(accuracy) })
        },
    )?;
    if !main_rank {
        return Ok(());
    }
    eprintln!(
        "trained in {:.2}s ({:.0} samples/s in training steps)",
        start.elapsed().as_secs_f64(),
        report.samples as f64 / report.train_seconds.max(1e-9)
    );

    let params = args.out.join("model.safetensors");
    store.save(&params)?;
    let written: Vec<String> =
        std::iter::once(&params).chain(&report.written).map(|p| p.display().to_string()).collect();
    eprintln!("wrote {}", written.join(", "));
    let test_acc = match report.history.last() {
        Some(r) => r.held_out.accuracy.unwrap_or(0.0),
        None => evaluate(&model, &test, device)?.1,
    };
    if tensorforge::profile::enabled() {
        eprint!("{}", tensorforge::profile::report());
    }
    println!("test accuracy: {test_acc:.4}");
    Ok(())
}

/// The MPI job this process belongs to (`mpirun -np N … --distributed`).
#[cfg(feature = "mpi")]
fn communicator(device: Device) -> Result<Arc<dyn Communicator>> {
    if device != Device::Cpu {
        return Err(Error::msg("--distributed runs CPU ranks over MPI; use --device cpu"));
    }
    Ok(Arc::new(tensorforge::distributed::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn communicator(_: Device) -> Result<Arc<dyn Communicator>> {
    Err(Error::msg(
        "--distributed needs the `mpi` feature: cargo build --release --features mpi --example train_digits, \
         then mpirun -np 2 target/release/examples/train_digits --distributed",
    ))
}
