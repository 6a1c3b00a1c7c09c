//! The training loop every example used to write by hand: epochs over a [`BatchIter`], a
//! step function that returns the mini-batch's loss, an optimizer (with an optional
//! learning-rate schedule), held-out metrics after each epoch, progress that fits the output
//! ([`Progress`]), checkpoints with `resume`, a metrics CSV and an SVG chart, and early
//! stopping on a plateau.
//!
//! ```
//! use tensorforge::data::BatchIter;
//! use tensorforge::nn::{Linear, Module};
//! use tensorforge::optim::{Sgd, SgdConfig};
//! use tensorforge::param::ParameterStore;
//! use tensorforge::train::{Metrics, Step, Trainer};
//! use tensorforge::{DType, Device, Tensor, no_grad};
//!
//! // y = 3x − 1 from 64 points.
//! let xs: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
//! let x = Tensor::from_vec(xs.clone(), (64, 1), Device::Cpu)?;
//! let y = x.affine(3.0, -1.0)?;
//! let mut store = ParameterStore::new(Device::Cpu);
//! let model = Linear::from_store(&mut store, "fc", 1, 1)?;
//! let mut opt = Sgd::new(store.parameters(), SgdConfig { lr: 0.1, ..Default::default() })?;
//! let mut batches = BatchIter::new(64, 16, true, 0);
//! let mse = |xb: &Tensor, yb: &Tensor| model.forward(xb)?.sub(yb)?.sqr()?.mean_all();
//! let report = Trainer::new(40).quiet().fit(
//!     &mut store,
//!     &mut opt,
//!     &mut batches,
//!     |idx| {
//!         let ids = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect(), idx.len(), Device::Cpu)?;
//!         Ok(Step { loss: mse(&x.index_select(0, &ids)?, &y.index_select(0, &ids)?)?, correct: None })
//!     },
//!     || Ok(Metrics { loss: no_grad(|| mse(&x, &y))?.item()?, accuracy: None }),
//! )?;
//! assert!(report.history.last().unwrap().held_out.loss < 1e-3);
//! # Ok::<(), tensorforge::Error>(())
//! ```

pub mod plot;
mod progress;

pub use progress::Progress;

use crate::checkpoint::{self, TrainingState};
use crate::data::BatchIter;
use crate::distributed::{DistributedDataParallel, ReduceOp};
use crate::optim::{LrSchedule, Optimizer};
use crate::param::ParameterStore;
use crate::{DType, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// What a step function returns for one mini-batch.
pub struct Step {
    /// The mini-batch's loss: a scalar tensor, still recorded, that the trainer runs
    /// `backward` on.
    pub loss: Tensor,
    /// How many of the mini-batch's samples were classified right, when that means anything.
    pub correct: Option<usize>,
}

/// Held-out metrics after an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// The mean held-out loss (what early stopping watches).
    pub loss: f64,
    /// The held-out accuracy, for classifiers.
    pub accuracy: Option<f64>,
}

/// One epoch's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRecord {
    /// The epoch, counting from 1.
    pub epoch: usize,
    /// The mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// The training accuracy, when the step function counts correct samples.
    pub train_accuracy: Option<f64>,
    /// The held-out metrics after the epoch.
    pub held_out: Metrics,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
}

/// What [`Trainer::fit`] did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every epoch's figures, including those of the run a resume continued.
    pub history: Vec<EpochRecord>,
    /// The loss of every step this run took.
    pub step_losses: Vec<f64>,
    /// Whether early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// Whether [`Trainer::max_steps`] or [`Trainer::max_seconds`] ended the run (mid-epoch:
    /// that epoch's record covers the steps it took).
    pub stopped_at_limit: bool,
    /// The files written (checkpoint, metrics CSV, chart), for the caller to print.
    pub written: Vec<PathBuf>,
    /// Seconds spent in training steps (forward, backward, gradient averaging, optimizer),
    /// without evaluation and file writing: what throughput is measured on.
    pub train_seconds: f64,
    /// Samples trained on by all ranks together in this run.
    pub samples: usize,
    /// Steps whose f16 gradients overflowed, so the optimizer skipped them (loss scaling).
    pub skipped_steps: usize,
}

/// A training loop's settings; [`Trainer::fit`] runs it.
pub struct Trainer {
    epochs: usize,
    out: Option<PathBuf>,
    resume: bool,
    patience: Option<usize>,
    stop_after: Option<usize>,
    max_steps: Option<u64>,
    max_seconds: Option<f64>,
    schedule: Option<Box<dyn LrSchedule>>,
    notes: BTreeMap<String, String>,
    quiet: bool,
    ddp: Option<Mutex<DistributedDataParallel>>,
    precision: DType,
}

/// The metrics file in the output directory.
pub const METRICS_FILE: &str = "metrics.csv";
/// The chart in the output directory.
pub const CHART_FILE: &str = "curves.svg";

impl Trainer {
    /// A loop of `epochs` epochs, writing nothing to disk until [`Trainer::out_dir`].
    pub fn new(epochs: usize) -> Trainer {
        Trainer {
            epochs,
            out: None,
            resume: false,
            patience: None,
            stop_after: None,
            max_steps: None,
            max_seconds: None,
            schedule: None,
            notes: BTreeMap::new(),
            quiet: false,
            ddp: None,
            precision: DType::F32,
        }
    }
    /// Writes a checkpoint after every epoch, and `metrics.csv` and `curves.svg`, to `dir`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(dir.into());
        self
    }
    /// With `true`, continues from the output directory's checkpoint (parameters, optimizer,
    /// epoch, step, RNG) and its metrics; an `Err` if there is none.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }
    /// Stops when the held-out loss has not improved for `patience` epochs.
    pub fn early_stopping(mut self, patience: usize) -> Self {
        self.patience = Some(patience);
        self
    }
    /// Stops after this epoch as if interrupted (the checkpoint stays resumable).
    pub fn stop_after(mut self, epoch: usize) -> Self {
        self.stop_after = Some(epoch);
        self
    }
    /// Stops once the run has taken `steps` optimizer steps in all (a resumed run counts the
    /// steps before it), mid-epoch if need be: that epoch is evaluated, recorded and
    /// checkpointed as done. For runs measured in steps rather than passes over the data (a
    /// language model sampling windows); [`Trainer::new`]'s epochs still bound the run.
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.max_steps = Some(steps);
        self
    }
    /// Stops after `seconds` of wall time in this run, as [`Trainer::max_steps`] does. The
    /// result then depends on the machine's speed; not with [`Trainer::distributed`], where
    /// ranks must stop at the same step (`fit` returns `Err`).
    pub fn max_seconds(mut self, seconds: f64) -> Self {
        self.max_seconds = Some(seconds);
        self
    }
    /// Sets the learning rate from `schedule` (a function of the global step) before each step.
    pub fn schedule(mut self, schedule: impl LrSchedule + 'static) -> Self {
        self.schedule = Some(Box::new(schedule));
        self
    }
    /// Keeps `key = value` in every checkpoint (e.g. the run's settings).
    pub fn note(mut self, key: &str, value: impl ToString) -> Self {
        self.notes.insert(key.to_string(), value.to_string());
        self
    }
    /// Trains one model on all ranks of `ddp`'s communicator: `backward` goes through the
    /// wrapper (gradients averaged across ranks), the epoch's figures are summed over the
    /// ranks, and only rank 0 prints and writes files. The batches passed to
    /// [`Trainer::fit`] should be this rank's shard ([`BatchIter::shard`]); every rank must
    /// have the same number of them, which is checked at each epoch's start.
    pub fn distributed(mut self, ddp: DistributedDataParallel) -> Self {
        self.ddp = Some(Mutex::new(ddp));
        self
    }
    /// Mixed precision ([`crate::amp`]): with `DType::BF16` or `DType::F16`, the step and
    /// evaluation functions run under [`crate::amp::autocast`] (matrix products and
    /// convolutions in that dtype, the rest and the master weights in f32); f16 adds dynamic
    /// loss scaling ([`crate::amp::GradScaler`]), whose skipped steps are counted in
    /// [`Report::skipped_steps`]. `DType::F32` (the default) is plain f32.
    pub fn precision(mut self, dtype: DType) -> Self {
        self.precision = dtype;
        self
    }
    /// Prints nothing (no progress, no epoch lines).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Runs the loop. `step` gets each mini-batch's sample indices and returns its loss (the
    /// trainer clears the gradients, runs backward and steps `opt`); `evaluate` returns the
    /// held-out metrics after each epoch. `store` holds the parameters `opt` updates and is
    /// what checkpoints save. On the CPU (without [`Trainer::distributed`]) each step, with
    /// its backward and optimizer update, runs on a worker of the kernels' thread pool
    /// ([`crate::backend::cpu::on_pool`]), hence `Send` on `step`; thread-local settings
    /// (`no_grad`, autocast) inside `step` apply as usual, since `step` sets them itself.
    pub fn fit(
        &self,
        store: &mut ParameterStore,
        opt: &mut dyn Optimizer,
        batches: &mut BatchIter,
        mut step: impl FnMut(&[usize]) -> Result<Step> + Send,
        mut evaluate: impl FnMut() -> Result<Metrics>,
    ) -> Result<Report> {
        let mut report = Report::default();
        if self.ddp.is_some() && self.max_seconds.is_some() {
            return Err(Error::msg("Trainer: max_seconds with distributed would stop ranks at different steps"));
        }
        if self.max_seconds.is_some_and(|s| s.is_nan() || s < 0.0) {
            return Err(Error::msg("Trainer: max_seconds must be a number ≥ 0"));
        }
        let started = Instant::now();
        let mut ddp = self.ddp.as_ref().map(|d| d.lock().unwrap_or_else(|e| e.into_inner()));
        let main = ddp.as_ref().is_none_or(|d| d.is_main());
        let quiet = self.quiet || !main;
        let mut scaler = (self.precision == DType::F16).then(crate::amp::GradScaler::new);
        let on_cpu = store.device() == crate::Device::Cpu;
        let precision = self.precision;
        let mut step = |idx: &[usize]| crate::amp::autocast(precision, || step(idx));
        let mut evaluate = || crate::amp::autocast(self.precision, &mut evaluate);
        let (mut start_epoch, mut global_step) = (0usize, 0u64);
        if self.resume {
            let dir = self.out.as_ref().ok_or_else(|| Error::msg("Trainer::resume needs an out_dir"))?;
            let s = checkpoint::load(dir.join(checkpoint::FILE_NAME), store, opt)?;
            (start_epoch, global_step) = (s.epoch as usize, s.step);
            report.history = read_metrics(&dir.join(METRICS_FILE)).into_iter().take(start_epoch).collect();
            if !quiet {
                eprintln!("resumed from {} at epoch {start_epoch}, step {global_step}", dir.display());
            }
        }
        batches.set_epoch(start_epoch as u64);
        let mut progress = Progress::new(self.epochs);
        let nb = batches.num_batches();
        let mut best = report.history.iter().map(|r| r.held_out.loss).fold(f64::INFINITY, f64::min);
        let mut since_best = 0usize;
        for epoch in start_epoch..self.epochs {
            if self.max_steps.is_some_and(|m| global_step >= m) {
                // A resumed run that had already reached its step limit.
                report.stopped_at_limit = true;
                break;
            }
            if let Some(d) = &ddp {
                let what = "number of batches per epoch (shard the batches with BatchIter::shard)";
                d.comm().check_agree("Trainer::fit", what, &[nb as i64])?;
            }
            let t0 = Instant::now();
            let (mut sum, mut seen, mut right, mut counted) = (0.0, 0usize, 0usize, false);
            for (b, idx) in (&mut *batches).enumerate() {
                if let Some(s) = &self.schedule {
                    opt.set_lr(s.lr(global_step as usize));
                }
                let t_step = Instant::now();
                let out = match &mut ddp {
                    Some(d) => {
                        let out = step(&idx)?;
                        opt.zero_grad();
                        let loss = match &scaler {
                            Some(s) => s.scale(&out.loss)?,
                            None => out.loss.clone(),
                        };
                        d.backward(&loss)?;
                        if !optimizer_step(opt, &mut scaler)? {
                            report.skipped_steps += 1;
                        }
                        out
                    }
                    // On the CPU the whole step runs on a worker of the kernels' thread pool:
                    // each of its many small parallel kernels then splits without handing
                    // work over from a thread outside the pool (docs/PERFORMANCE.md). With
                    // ranks, MPI may only be called from the thread that started it.
                    None => {
                        let (step, opt, scaler, idx) = (&mut step, &mut *opt, &mut scaler, &idx);
                        let mut run = move || -> Result<(Step, bool)> {
                            let out = step(idx)?;
                            opt.zero_grad();
                            match &*scaler {
                                Some(s) => s.scale(&out.loss)?.backward()?,
                                None => out.loss.backward()?,
                            }
                            Ok((out, optimizer_step(opt, scaler)?))
                        };
                        let (out, stepped) = if on_cpu { crate::backend::cpu::on_pool(run)? } else { run()? };
                        if !stepped {
                            report.skipped_steps += 1;
                        }
                        out
                    }
                };
                global_step = global_step.checked_add(1).ok_or_else(|| {
                    crate::Error::msg("Trainer: the step count overflows u64 (a corrupt checkpoint?)")
                })?;
                let l = out.loss.item()?;
                report.step_losses.push(l);
                sum += l * idx.len() as f64;
                seen += idx.len();
                if let Some(c) = out.correct {
                    (right, counted) = (right + c, true);
                }
                report.train_seconds += t_step.elapsed().as_secs_f64();
                if !quiet {
                    let acc = counted.then(|| right as f64 / seen as f64);
                    progress.update(epoch + 1, b + 1, nb, sum / seen as f64, acc);
                }
                let last = b + 1 == nb && epoch + 1 == self.epochs;
                if !last
                    && (self.max_steps.is_some_and(|m| global_step >= m)
                        || self.max_seconds.is_some_and(|m| started.elapsed().as_secs_f64() >= m))
                {
                    report.stopped_at_limit = true;
                    break;
                }
            }
            batches.next_epoch();
            if let Some(d) = &ddp {
                // The epoch's figures over all ranks' samples.
                let comm = d.comm();
                let t = Tensor::from_vec(vec![sum, seen as f64, right as f64], 3, crate::Device::Cpu)?;
                let t = t.to_device(comm.device())?;
                comm.all_reduce(&t, ReduceOp::Sum)?;
                let v = t.to_vec1::<f64>()?;
                (sum, seen, right) = (v[0], v[1] as usize, v[2] as usize);
            }
            report.samples += seen;
            let held_out = evaluate()?;
            let n = seen.max(1) as f64;
            let rec = EpochRecord {
                epoch: epoch + 1,
                train_loss: sum / n,
                train_accuracy: counted.then(|| right as f64 / n),
                held_out,
                seconds: t0.elapsed().as_secs_f64(),
            };
            report.history.push(rec);
            if !quiet {
                progress.finish_epoch(&summary(&rec, self.epochs));
            }
            if let Some(dir) = self.out.as_ref().filter(|_| main) {
                let mut state = TrainingState::new(global_step, epoch as u64 + 1);
                state.extra.extend(self.notes.clone());
                report.written = write_outputs(dir, (store, &*opt, &state), &report, (start_epoch, nb))?;
            }
            if held_out.loss < best {
                (best, since_best) = (held_out.loss, 0);
            } else {
                since_best += 1;
            }
            if self.patience.is_some_and(|p| since_best >= p) && epoch + 1 < self.epochs {
                report.stopped_early = true;
                if !quiet {
                    eprintln!("stopping early: no held-out improvement for {since_best} epochs");
                }
                break;
            }
            if report.stopped_at_limit {
                if !quiet {
                    eprintln!("stopping at step {global_step} (max_steps / max_seconds)");
                }
                break;
            }
            if self.stop_after == Some(epoch + 1) {
                if !quiet {
                    eprintln!("stopping after epoch {} (stop_after); continue with resume", epoch + 1);
                }
                break;
            }
        }
        Ok(report)
    }
}

/// Steps the optimizer (through the loss scaler, when there is one); `false` when the scaler
/// skipped the step for overflowed gradients.
fn optimizer_step(opt: &mut dyn Optimizer, scaler: &mut Option<crate::amp::GradScaler>) -> Result<bool> {
    Ok(match scaler {
        Some(s) => {
            let stepped = s.step(opt)?;
            s.update();
            stepped
        }
        None => {
            opt.step()?;
            true
        }
    })
}

fn summary(r: &EpochRecord, epochs: usize) -> String {
    let acc = |a: Option<f64>, what: &str| a.map(|a| format!("  {what} acc {a:.4}")).unwrap_or_default();
    format!(
        "epoch {:>3}/{epochs}  loss {:.4}{}  held-out loss {:.4}{}  ({:.2}s)",
        r.epoch,
        r.train_loss,
        acc(r.train_accuracy, "train"),
        r.held_out.loss,
        acc(r.held_out.accuracy, "held-out"),
        r.seconds
    )
}

fn opt_num(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

/// The checkpoint, the metrics CSV and the chart, each written crash-safe.
fn write_outputs(
    dir: &Path,
    (store, opt, state): (&ParameterStore, &dyn Optimizer, &TrainingState),
    report: &Report,
    (start_epoch, batches_per_epoch): (usize, usize),
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io { context: format!("creating {}", dir.display()), msg: e.to_string() })?;
    let ckpt = dir.join(checkpoint::FILE_NAME);
    checkpoint::save(&ckpt, store, opt, state)?;
    let mut csv = String::from("epoch,train_loss,train_accuracy,held_out_loss,held_out_accuracy,seconds\n");
    for r in &report.history {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            r.epoch,
            r.train_loss,
            opt_num(r.train_accuracy),
            r.held_out.loss,
            opt_num(r.held_out.accuracy),
            r.seconds
        );
    }
    let metrics = dir.join(METRICS_FILE);
    crate::io::write_file(&metrics, csv.as_bytes())?;
    let chart = dir.join(CHART_FILE);
    crate::io::write_file(&chart, chart_svg(report, start_epoch, batches_per_epoch).as_bytes())?;
    Ok(vec![ckpt, metrics, chart])
}

/// Loss (per step, and per epoch for training and held-out data) and accuracy per epoch.
fn chart_svg(report: &Report, start_epoch: usize, batches_per_epoch: usize) -> String {
    use plot::{Chart, Series, svg};
    let h = &report.history;
    let series = |name: &str, color: &str, pts: Vec<(f64, f64)>, faint: bool| Series {
        name: name.into(),
        color: color.into(),
        points: pts,
        faint,
    };
    // Step k of this run sits at its place on the epoch axis.
    let (start, nb) = (start_epoch as f64, batches_per_epoch.max(1) as f64);
    let steps: Vec<(f64, f64)> =
        report.step_losses.iter().enumerate().map(|(k, &l)| (start + (k as f64 + 1.0) / nb, l)).collect();
    let mut loss = vec![
        series("train (step)", "#9ecae1", steps, true),
        series("train", "#1f77b4", h.iter().map(|r| (r.epoch as f64, r.train_loss)).collect(), false),
        series("held-out", "#d62728", h.iter().map(|r| (r.epoch as f64, r.held_out.loss)).collect(), false),
    ];
    if report.step_losses.is_empty() {
        loss.remove(0);
    }
    let mut charts =
        vec![Chart { title: "loss".into(), x_label: "epoch".into(), y_label: "loss".into(), series: loss }];
    let acc = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        h.iter().filter_map(|r| f(r).map(|a| (r.epoch as f64, a))).collect()
    };
    let (train_acc, held_acc) = (acc(|r| r.train_accuracy), acc(|r| r.held_out.accuracy));
    if !train_acc.is_empty() || !held_acc.is_empty() {
        charts.push(Chart {
            title: "accuracy".into(),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            series: vec![series("train", "#1f77b4", train_acc, false), series("held-out", "#d62728", held_acc, false)],
        });
    }
    svg(&charts)
}

/// The epochs recorded by an earlier run, for a resumed one; a missing or malformed file
/// gives none (the chart then starts at the resume point).
fn read_metrics(path: &Path) -> Vec<EpochRecord> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let num = |s: &str| s.parse::<f64>().ok();
    text.lines()
        .skip(1)
        .map_while(|line| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 6 {
                return None;
            }
            Some(EpochRecord {
                epoch: f[0].parse().ok()?,
                train_loss: num(f[1])?,
                train_accuracy: num(f[2]),
                held_out: Metrics { loss: num(f[3])?, accuracy: num(f[4]) },
                seconds: num(f[5])?,
            })
        })
        .collect()
}
