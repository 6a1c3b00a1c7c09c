//! Trains a classifier on the bundled UCI digits (or real MNIST) and reports test accuracy.
//!
//! ```text
//! cargo run --release --example train_digits -- [--epochs N] [--seed S] [--device cpu|cuda|cuda:N]
//!     [--mnist DIR] [--out DIR] [--model mlp|cnn] [--batch-size B] [--lr LR] [--hidden H]
//!     [--resume] [--stop-after E]
//! ```
//!
//! Writes `loss.png` (the loss curve) and `model.safetensors` (the trained parameters, loadable by numpy and PyTorch) to `--out`
//! (default `runs/train_digits-<model>/`, one directory per model) and ends with the line `test accuracy: <fraction>`.
//!
//! At the end of every epoch it writes `checkpoint.safetensors` to `--out` (parameters,
//! optimizer state, step, epoch, RNG state); `--resume` continues from it. A run stopped after
//! epoch E (`--stop-after E` simulates an interruption) and resumed with the same flags ends
//! with exactly the same model as an uninterrupted run. The learning-rate schedule spans
//! `--epochs`, so resuming with a *different* `--epochs` continues on a different schedule.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;
use tensorforge::data::{BatchIter, Dataset};
use tensorforge::nn::{Conv2d, CrossEntropyLoss, Flatten, Linear, Loss, MaxPool2d, Module, ReLU, Sequential};
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Adam, AdamConfig, CosineLr, LrSchedule, Optimizer};
use tensorforge::param::ParameterStore;
use tensorforge::{Device, Result, Tensor, no_grad};

const USAGE: &str = "usage: train_digits [--epochs N] [--seed S] [--device cpu|cuda|cuda:N] [--mnist DIR]
                    [--out DIR] [--model mlp|cnn] [--batch-size B] [--lr LR] [--hidden H]
                    [--resume] [--stop-after E]";

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
    eprintln!(
        "{name}: {} train / {} test samples, {} features, {classes} classes; {:?} with {} parameters on {device}",
        train.len(),
        test.len(),
        train.dim,
        args.model,
        store.num_parameters()
    );

    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: args.lr, ..Default::default() })?;
    let mut batches = BatchIter::new(train.len(), args.batch_size, true, args.seed);
    let total_steps = args.epochs * batches.num_batches();
    let schedule = CosineLr::new(args.lr, args.lr * 0.01, total_steps);
    let loss_fn = CrossEntropyLoss::new();

    // Checkpoints: resume from the last one (written at every epoch end, below) if asked.
    let ckpt = args.out.join(tensorforge::checkpoint::FILE_NAME);
    let (mut start_epoch, mut start_step) = (0, 0);
    if args.resume {
        let s = tensorforge::checkpoint::load(&ckpt, &mut store, &mut opt)?;
        (start_epoch, start_step) = (s.epoch as usize, s.step as usize);
        batches.set_epoch(s.epoch);
        if s.extra.get("epochs") != Some(&args.epochs.to_string()) {
            eprintln!("note: the checkpoint was written by a run with other --epochs; the LR schedule now differs");
        }
        eprintln!("resumed from {} at epoch {start_epoch}, step {start_step}", ckpt.display());
    }

    let start = Instant::now();
    let mut step_losses = Vec::with_capacity(total_steps);
    let mut epoch_curves: Vec<(f64, f64)> = Vec::new();
    let mut test_acc = 0.0;
    for epoch in start_epoch..args.epochs {
        let t0 = Instant::now();
        let (mut sum_loss, mut right, mut seen) = (0.0, 0usize, 0usize);
        let nb = batches.num_batches();
        for (b, idx) in (&mut batches).enumerate() {
            opt.set_lr(schedule.lr(start_step + step_losses.len()));
            let (x, y) = batch(&train, &idx, device)?;
            let logits = model.forward(&x)?;
            let loss = loss_fn.loss(&logits, &y)?;
            opt.zero_grad();
            loss.backward()?;
            opt.step()?;

            let l = loss.item()?;
            step_losses.push(l);
            sum_loss += l * idx.len() as f64;
            right += correct(&logits, &y)?;
            seen += idx.len();
            progress(epoch + 1, args.epochs, b + 1, nb, sum_loss / seen as f64, right as f64 / seen as f64);
        }
        batches.next_epoch();
        let (test_loss, acc) = evaluate(&model, &test, device)?;
        test_acc = acc;
        epoch_curves.push((sum_loss / seen.max(1) as f64, test_loss));
        // On a terminal the line overwrites the progress bar; in a log it is a plain line.
        let (lead, pad) = if std::io::stderr().is_terminal() { ("\r", "          ") } else { ("", "") };
        eprintln!(
            "{lead}epoch {:>3}/{}  loss {:.4}  train acc {:.4}  test loss {:.4}  test acc {:.4}  ({:.2}s){pad}",
            epoch + 1,
            args.epochs,
            sum_loss / seen.max(1) as f64,
            right as f64 / seen.max(1) as f64,
            test_loss,
            acc,
            t0.elapsed().as_secs_f64()
        );
        // Checkpoint at every epoch end, so an interrupted run can `--resume` from here.
        let mut state =
            tensorforge::checkpoint::TrainingState::new((start_step + step_losses.len()) as u64, epoch as u64 + 1);
        state.extra.insert("epochs".into(), args.epochs.to_string());
        std::fs::create_dir_all(&args.out).map_err(|e| tensorforge::Error::Io {
            context: format!("creating {}", args.out.display()),
            msg: e.to_string(),
        })?;
        tensorforge::checkpoint::save(&ckpt, &store, &opt, &state)?;
        if args.stop_after == Some(epoch + 1) {
            eprintln!("stopping after epoch {} (--stop-after); continue with --resume", epoch + 1);
            break;
        }
    }
    if start_epoch >= args.epochs {
        test_acc = evaluate(&model, &test, device)?.1;
    }
    eprintln!("trained in {:.2}s", start.elapsed().as_secs_f64());

    std::fs::create_dir_all(&args.out).map_err(|e| tensorforge::Error::Io {
        context: format!("creating {}", args.out.display()),
        msg: e.to_string(),
    })?;
    let params = args.out.join("model.safetensors");
    store.save(&params)?;
    let png = args.out.join("loss.png");
    let image = plot::loss_curve(&step_losses, &epoch_curves);
    std::fs::write(&png, image)
        .map_err(|e| tensorforge::Error::Io { context: format!("writing {}", png.display()), msg: e.to_string() })?;
    eprintln!("wrote {}, {} and {}", params.display(), png.display(), ckpt.display());
    println!("test accuracy: {test_acc:.4}");
    Ok(())
}

/// One `\r`-rewritten status line on stderr when it is a terminal; nothing in a log file or
/// CI output, where the epoch lines say enough and `\r` would pile up.
fn progress(epoch: usize, epochs: usize, b: usize, nb: usize, loss: f64, acc: f64) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    const WIDTH: usize = 30;
    let filled = WIDTH * b / nb.max(1);
    let bar: String = "#".repeat(filled) + &".".repeat(WIDTH - filled);
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\repoch {epoch:>3}/{epochs} [{bar}] {b:>4}/{nb}  loss {loss:.4}  acc {acc:.4}");
    let _ = err.flush();
}

/// A loss-curve image and the smallest PNG encoder that works: stored (uncompressed)
/// deflate blocks inside zlib, so no compression library is needed.
mod plot {
    const W: usize = 640;
    const H: usize = 400;
    const MARGIN: usize = 40;

    struct Canvas {
        px: Vec<u8>,
    }

    impl Canvas {
        fn new() -> Self {
            Canvas { px: vec![255; W * H * 3] }
        }
        fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
            if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
                let i = (y as usize * W + x as usize) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
        fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
            let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
            for s in 0..=n {
                let t = s as f64 / n as f64;
                let (x, y) = ((x0 + (x1 - x0) * t).round() as i64, (y0 + (y1 - y0) * t).round() as i64);
                for dx in 0..thick {
                    for dy in 0..thick {
                        self.set(x + dx, y + dy, c);
                    }
                }
            }
        }
        fn polyline(&mut self, pts: &[(f64, f64)], c: [u8; 3], thick: i64) {
            for w in pts.windows(2) {
                self.line(w[0], w[1], c, thick);
            }
        }
    }

    /// Per-step training loss (grey), per-epoch mean training loss (blue) and test loss
    /// (orange), on a log scale (losses span decades); a light grid line at every power of 10.
    pub fn loss_curve(steps: &[f64], epochs: &[(f64, f64)]) -> Vec<u8> {
        let mut c = Canvas::new();
        let (x0, x1, y0, y1) = (MARGIN as f64, (W - MARGIN / 2) as f64, (H - MARGIN) as f64, (MARGIN / 2) as f64);
        let all = || {
            steps.iter().chain(epochs.iter().flat_map(|(a, b)| [a, b])).copied().filter(|v| *v > 0.0 && v.is_finite())
        };
        let hi = all().fold(f64::MIN, f64::max).max(1e-12).log10().ceil();
        // (Clamped in log space: clamping the raw minimum to `hi` gave log10(-0.0) = -inf, and an
        // endless grid loop, whenever every loss was below 1, e.g. in a resumed run.)
        let lo = all().fold(f64::MAX, f64::min).log10().floor().min(hi - 1.0);
        for k in lo as i64..=hi as i64 {
            let y = y0 + (y1 - y0) * (k as f64 - lo) / (hi - lo);
            c.line((x0, y), (x1, y), [225, 225, 225], 1);
        }
        c.line((x0, y0), (x1, y0), [0, 0, 0], 2);
        c.line((x0, y0), (x0, y1), [0, 0, 0], 2);
        let map = |i: f64, n: usize, v: f64| {
            let ly = if v > 0.0 { v.log10().clamp(lo, hi) } else { lo };
            (x0 + (x1 - x0) * i / (n.max(2) - 1) as f64, y0 + (y1 - y0) * (ly - lo) / (hi - lo))
        };
        let step_pts: Vec<_> = steps.iter().enumerate().map(|(i, &v)| map(i as f64, steps.len(), v)).collect();
        c.polyline(&step_pts, [190, 190, 190], 1);
        // Epoch e's mean covers its steps, so draw it at the epoch's last step.
        let per = steps.len() as f64 / epochs.len().max(1) as f64;
        let at = |e: usize| ((e + 1) as f64 * per - 1.0).max(0.0);
        let train: Vec<_> = epochs.iter().enumerate().map(|(e, v)| map(at(e), steps.len(), v.0)).collect();
        let test: Vec<_> = epochs.iter().enumerate().map(|(e, v)| map(at(e), steps.len(), v.1)).collect();
        c.polyline(&train, [31, 119, 180], 2);
        c.polyline(&test, [255, 127, 14], 2);
        encode_png(W, H, &c.px)
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut table = [0u32; 256];
        for (n, e) in table.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// An 8-bit RGB PNG of `w × h` pixels (`rgb` row-major, 3 bytes a pixel).
    pub fn encode_png(w: usize, h: usize, rgb: &[u8]) -> Vec<u8> {
        // Each scanline is prefixed by its filter type (0 = none).
        let mut raw = Vec::with_capacity(h * (w * 3 + 1));
        for row in rgb.chunks_exact(w * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = vec![0x78, 0x01];
        let mut blocks = raw.chunks(65_535).peekable();
        while let Some(b) = blocks.next() {
            z.push(u8::from(blocks.peek().is_none()));
            z.extend_from_slice(&(b.len() as u16).to_le_bytes());
            z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
            z.extend_from_slice(b);
        }
        z.extend_from_slice(&adler32(&raw).to_be_bytes());

        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}
