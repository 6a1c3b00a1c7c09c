//! The library's training loop: a run stopped and resumed ends bit for bit where an
//! uninterrupted one does, with its history carried over; early stopping stops; the metrics
//! CSV and the chart say what a reader needs.

use tensorforge::data::BatchIter;
use tensorforge::nn::{CrossEntropyLoss, Linear, Loss, Module};
use tensorforge::optim::{Adam, AdamConfig, CosineLr};
use tensorforge::param::ParameterStore;
use tensorforge::train::{CHART_FILE, METRICS_FILE, Metrics, Report, Step, Trainer};
use tensorforge::{DType, Device, Result, Tensor, manual_seed, no_grad};

const CPU: Device = Device::Cpu;

/// Fits a 3 → 2 classifier on fixed data for `epochs` under `trainer`; returns the report and
/// the trained parameters.
fn run(trainer: Trainer) -> Result<(Report, Vec<f64>)> {
    manual_seed(11);
    let n = 96;
    let x = Tensor::randn(0.0, 1.0, (n, 3), DType::F32, CPU)?;
    let labels: Vec<i64> = x.to_vec_f64()?.chunks(3).map(|r| i64::from(r[0] + 0.5 * r[1] > 0.0)).collect();
    let y = Tensor::from_vec(labels, n, CPU)?;
    let mut store = ParameterStore::new(CPU);
    let model = Linear::from_store(&mut store, "fc", 3, 2)?;
    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 0.05, ..Default::default() })?;
    let mut batches = BatchIter::new(n, 16, true, 5);
    let ce = |xb: &Tensor, yb: &Tensor| -> Result<(Tensor, usize)> {
        let logits = model.forward(xb)?;
        let right =
            logits.argmax(-1)?.to_vec1::<i64>()?.iter().zip(yb.to_vec1::<i64>()?).filter(|(p, t)| **p == *t).count();
        Ok((CrossEntropyLoss::new().loss(&logits, yb)?, right))
    };
    let report = trainer.schedule(CosineLr::new(0.05, 0.005, 6 * 6)).quiet().fit(
        &mut store,
        &mut opt,
        &mut batches,
        |idx| {
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect(), idx.len(), CPU)?;
            let (loss, right) = ce(&x.index_select(0, &ids)?, &y.index_select(0, &ids)?)?;
            Ok(Step { loss, correct: Some(right) })
        },
        || {
            let (loss, right) = no_grad(|| ce(&x, &y))?;
            Ok(Metrics { loss: loss.item()?, accuracy: Some(right as f64 / n as f64) })
        },
    )?;
    let params = store.parameters().iter().flat_map(|p| p.to_vec_f64().unwrap()).collect();
    Ok((report, params))
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tf-trainer-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    let _ = std::fs::remove_dir_all(&dir);
    let (whole, want) = run(Trainer::new(6).out_dir(&a))?;
    let (first, _) = run(Trainer::new(6).out_dir(&b).stop_after(2))?;
    assert_eq!(first.history.len(), 2);
    let (resumed, got) = run(Trainer::new(6).out_dir(&b).resume(true))?;
    assert_eq!(got, want, "parameters after a resume differ");
    assert_eq!(resumed.history.len(), 6, "the resumed history keeps the first run's epochs");
    for (r, w) in resumed.history.iter().zip(&whole.history) {
        assert_eq!((r.epoch, r.train_loss, r.held_out), (w.epoch, w.train_loss, w.held_out));
    }
    assert!(whole.history.last().unwrap().held_out.accuracy.unwrap() > 0.9, "{:?}", whole.history.last());

    let csv = std::fs::read_to_string(b.join(METRICS_FILE)).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,train_loss,train_accuracy,held_out_loss,held_out_accuracy,seconds");
    assert_eq!(lines.len(), 7);
    let svg = std::fs::read_to_string(b.join(CHART_FILE)).unwrap();
    for text in [">epoch</text>", ">loss</text>", ">accuracy</text>", ">train</text>", ">held-out</text>"] {
        assert!(svg.contains(text), "the chart lacks {text}");
    }
    assert!(run(Trainer::new(6).out_dir(dir.join("none")).resume(true)).is_err(), "resume without a checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn early_stopping_stops_on_a_plateau() -> Result<()> {
    let p = Tensor::from_vec(vec![1.0f64], 1, CPU)?.requires_grad();
    let mut store = ParameterStore::new(CPU);
    store.insert("p", p.clone())?;
    let mut opt = Adam::new(vec![p.clone()], AdamConfig::default())?;
    let mut batches = BatchIter::new(4, 2, false, 0);
    let mut epoch = 0;
    let report = Trainer::new(20).early_stopping(3).quiet().fit(
        &mut store,
        &mut opt,
        &mut batches,
        |_| Ok(Step { loss: p.sqr()?.sum_all()?, correct: None }),
        || {
            epoch += 1;
            // Improves for four epochs, then never again.
            Ok(Metrics { loss: if epoch <= 4 { 10.0 - epoch as f64 } else { 7.0 }, accuracy: None })
        },
    )?;
    assert!(report.stopped_early);
    assert_eq!(report.history.len(), 7, "best at epoch 4, then 3 epochs without improvement");
    assert_eq!(report.step_losses.len(), 14);
    Ok(())
}

/// `max_steps` stops mid-epoch and records the partial epoch; a resumed run that already
/// reached the limit takes no step; `max_seconds(0)` takes exactly one; bad limits are `Err`.
#[test]
fn step_and_time_limits_stop_mid_epoch() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tf-trainer-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 96 samples in batches of 16: 6 steps an epoch, so 10 steps end 4 into epoch 2.
    let (r, _) = run(Trainer::new(6).out_dir(&dir).max_steps(10))?;
    assert!(r.stopped_at_limit && !r.stopped_early);
    assert_eq!((r.step_losses.len(), r.history.len(), r.samples), (10, 2, 160));
    let (again, _) = run(Trainer::new(6).out_dir(&dir).resume(true).max_steps(10))?;
    assert!(again.stopped_at_limit && again.step_losses.is_empty());
    assert_eq!(again.history.len(), 2);
    let (once, _) = run(Trainer::new(6).max_seconds(0.0))?;
    assert_eq!((once.step_losses.len(), once.history.len()), (1, 1));
    assert!(run(Trainer::new(6).max_seconds(f64::NAN)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
