//! Checkpoints: training 4 steps, checkpointing, and resuming 4 more in a fresh model is bit
//! for bit the same as 8 straight steps (parameters, optimizer moments and step counts, LR
//! schedule, shuffled batches and dropout masks included); hostile files are errors.

use std::path::PathBuf;
use std::sync::Mutex;
use tensorforge::checkpoint::{self, TrainingState};
use tensorforge::data::BatchIter;
use tensorforge::nn::{CrossEntropyLoss, Dropout, Linear, Loss, Module, Sequential, Tanh};
use tensorforge::optim::{Adam, AdamConfig, AdamW, CosineLr, LrSchedule, Optimizer, Sgd, SgdConfig};
use tensorforge::param::{Init, ParameterStore};
use tensorforge::{Device, Result, Tensor};

/// The global RNG is process-wide and tests run on parallel threads: the tests that depend
/// on its sequence take this lock.
static RNG: Mutex<()> = Mutex::new(());

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tf-ckpt-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const N: usize = 24;
const BATCH: usize = 6; // 4 batches an epoch
const TOTAL: usize = 8;

fn data() -> (Vec<f32>, Vec<i64>) {
    let x = (0..N * 4).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
    let y = (0..N).map(|i| (i % 3) as i64).collect();
    (x, y)
}

struct Run {
    store: ParameterStore,
    model: Sequential,
    opt: Adam,
    batches: BatchIter,
    step: usize,
    losses: Vec<f32>,
}

/// The model is built from `seed`; a resumed run uses a different one to show the checkpoint
/// (not the seed) supplies every value.
fn build(seed: u64) -> Result<Run> {
    tensorforge::manual_seed(seed);
    let mut store = ParameterStore::new(Device::Cpu);
    let model = Sequential::new()
        .add(Linear::from_store(&mut store, "fc1", 4, 8)?)
        .add(Tanh)
        .add(Dropout::new(0.25)?)
        .add(Linear::from_store(&mut store, "fc2", 8, 3)?);
    let opt = Adam::new(store.parameters(), AdamConfig { lr: 0.05, weight_decay: 1e-3, ..Default::default() })?;
    Ok(Run { store, model, opt, batches: BatchIter::new(N, BATCH, true, 7), step: 0, losses: Vec::new() })
}

/// Trains until `until` steps have been taken, one epoch of batches at a time.
fn train(r: &mut Run, until: usize) -> Result<()> {
    let (xs, ys) = data();
    let schedule = CosineLr::new(0.05, 0.001, TOTAL);
    while r.step < until {
        for idx in &mut r.batches {
            let x: Vec<f32> = idx.iter().flat_map(|&i| xs[i * 4..i * 4 + 4].to_vec()).collect();
            let y: Vec<i64> = idx.iter().map(|&i| ys[i]).collect();
            let x = Tensor::from_vec(x, (idx.len(), 4), Device::Cpu)?;
            let y = Tensor::from_vec(y, idx.len(), Device::Cpu)?;
            r.opt.set_lr(schedule.lr(r.step));
            let loss = CrossEntropyLoss::new().loss(&r.model.forward(&x)?, &y)?;
            r.opt.zero_grad();
            loss.backward()?;
            r.opt.step()?;
            r.losses.push(loss.to_scalar::<f32>()?);
            r.step += 1;
        }
        r.batches.next_epoch();
    }
    Ok(())
}

fn params(s: &ParameterStore) -> Vec<(String, Vec<u32>)> {
    s.iter().map(|(n, t)| (n.to_string(), t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect())).collect()
}

#[test]
fn resume_is_bit_for_bit_the_same_as_a_straight_run() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp("resume");

    let mut straight = build(1).unwrap();
    train(&mut straight, TOTAL).unwrap();

    let mut first = build(1).unwrap();
    train(&mut first, TOTAL / 2).unwrap();
    let state = TrainingState::new(first.step as u64, first.batches.epoch());
    checkpoint::save(&dir, &first.store, &first.opt, &state).unwrap();
    // Draws after the save must not leak into the resumed run.
    Tensor::rand(0.0, 1.0, 100, tensorforge::DType::F32, Device::Cpu).unwrap();

    let mut resumed = build(999).unwrap();
    assert_ne!(params(&resumed.store), params(&first.store));
    let back = checkpoint::load(&dir, &mut resumed.store, &mut resumed.opt).unwrap();
    assert_eq!(back, state);
    resumed.step = back.step as usize;
    resumed.batches.set_epoch(back.epoch);
    resumed.losses = first.losses.clone();
    train(&mut resumed, TOTAL).unwrap();

    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&resumed.losses), bits(&straight.losses), "loss sequence");
    assert_eq!(params(&resumed.store), params(&straight.store), "final parameters");
    let (a, b) = (resumed.opt.state().unwrap(), straight.opt.state().unwrap());
    assert_eq!((a.steps, a.lr.to_bits()), (b.steps, b.lr.to_bits()));
    for (x, y) in a.buffers.iter().flatten().zip(b.buffers.iter().flatten()) {
        assert_eq!(x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap(), "optimizer moments");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extras_file_paths_and_every_optimizer_kind_round_trip() {
    let dir = tmp("kinds");
    let file = dir.join("run.ckpt");
    let mut store = ParameterStore::new(Device::Cpu);
    let w = store.get_or_init("w", (2, 3), Init::Constant(0.5)).unwrap();
    let mut opt = Sgd::new(store.parameters(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
    w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    opt.step().unwrap();
    let mut state = TrainingState::new(1, 0);
    state.extra.insert("lr_schedule".into(), "cosine, 8 steps".into());
    checkpoint::save(&file, &store, &opt, &state).unwrap();
    assert!(file.is_file() && !dir.join(checkpoint::FILE_NAME).exists());

    // The file is plain safetensors: any reader sees the tensors.
    let names: Vec<String> = tensorforge::io::read_safetensors(&file).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["optim/0/0", "param/w"]);

    let mut store2 = ParameterStore::new(Device::Cpu);
    store2.get_or_init("w", (2, 3), Init::Zeros).unwrap();
    let mut sgd2 = Sgd::new(store2.parameters(), SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() }).unwrap();
    assert_eq!(checkpoint::load(&file, &mut store2, &mut sgd2).unwrap().extra, state.extra);
    assert_eq!(sgd2.state().unwrap().buffers[0][0].to_vec::<f32>().unwrap(), vec![1.0; 6]);

    // Another optimizer kind is refused, and nothing was changed by the attempt.
    let mut store3 = ParameterStore::new(Device::Cpu);
    let w3 = store3.get_or_init("w", (2, 3), Init::Zeros).unwrap();
    let mut adamw = AdamW::new(store3.parameters(), AdamW::default_config()).unwrap();
    let err = checkpoint::load(&file, &mut store3, &mut adamw).unwrap_err().to_string();
    assert!(err.contains("Sgd") && err.contains("AdamW"), "{err}");
    assert_eq!(w3.to_vec2::<f32>().unwrap(), vec![vec![0.0; 3]; 2]);

    // A model of another shape is refused before anything changes.
    let mut store4 = ParameterStore::new(Device::Cpu);
    store4.get_or_init("w", (3, 2), Init::Zeros).unwrap();
    let mut sgd4 = Sgd::new(store4.parameters(), SgdConfig::default()).unwrap();
    assert!(checkpoint::load(&file, &mut store4, &mut sgd4).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Corrupt, truncated, inconsistent or foreign files: always an `Err`, never a panic, and the
/// store, optimizer and RNG stay as they were.
#[test]
fn hostile_checkpoints_are_errors() {
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp("hostile");
    let good = dir.join("good.safetensors");
    let mut store = ParameterStore::new(Device::Cpu);
    let w = store.get_or_init("w", 4, Init::Constant(1.0)).unwrap();
    let mut opt = Adam::new(store.parameters(), AdamConfig::default()).unwrap();
    w.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    opt.step().unwrap();
    checkpoint::save(&good, &store, &opt, &TrainingState::new(1, 0)).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let attempt = |bytes: &[u8], what: &str| {
        let p = dir.join("bad.safetensors");
        std::fs::write(&p, bytes).unwrap();
        let mut s = ParameterStore::new(Device::Cpu);
        let w = s.get_or_init("w", 4, Init::Constant(7.0)).unwrap();
        let mut o = Adam::new(s.parameters(), AdamConfig::default()).unwrap();
        let rng = tensorforge::rng_state();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checkpoint::load(&p, &mut s, &mut o)));
        let r = r.unwrap_or_else(|_| panic!("{what}: load panicked"));
        assert!(r.is_err(), "{what}: loaded");
        assert_eq!(w.to_vec1::<f32>().unwrap(), vec![7.0; 4], "{what}: parameters changed");
        assert!(o.state().unwrap().steps == vec![0], "{what}: optimizer changed");
        assert_eq!(tensorforge::rng_state(), rng, "{what}: rng changed");
    };
    // Metadata edits keep the header length by substituting strings of equal length.
    let edit = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let s = String::from_utf8_lossy(&bytes).into_owned();
        assert!(s.contains(from), "fixture lacks {from}");
        s.replacen(from, to, 1).into_bytes()
    };
    attempt(b"", "empty");
    attempt(b"garbage!garbage!", "garbage");
    for cut in [1, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        attempt(&bytes[..cut], &format!("truncated at {cut}"));
    }
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    attempt(&huge, "huge header length");
    attempt(&edit("\"step\":\"1\"", "\"step\":\"x\""), "non-numeric step");
    attempt(&edit("\"optim.kind\":\"Adam\"", "\"optim.kind\":\"Sgd_\""), "other optimizer kind");
    attempt(&edit("\"optim.buffers\":\"2\"", "\"optim.buffers\":\"9\""), "missing buffers");
    attempt(&edit("\"optim.steps\":\"1\"", "\"optim.steps\":\",\""), "malformed step list");
    attempt(&edit("\"optim.lr\":\"0.001\"", "\"optim.lr\":\"-0.01\""), "negative lr");
    attempt(&edit("\"tensorforge.checkpoint\":\"1\"", "\"tensorforge.checkpoint\":\"2\""), "future version");
    attempt(&edit("\"param/w\"", "\"param/v\""), "parameter names that differ from the model's");
    attempt(&edit("\"optim/0/1\"", "\"optim/0/7\""), "buffer index out of range");
    attempt(&edit("\"shape\":[4]", "\"shape\":[2]"), "shape disagrees with the data");
    // A plain parameter file (no checkpoint metadata) is not a checkpoint.
    let plain = dir.join("plain.safetensors");
    store.save(&plain).unwrap();
    attempt(&std::fs::read(&plain).unwrap(), "a parameter file");
    let mut s = ParameterStore::new(Device::Cpu);
    // (An optimizer needs a parameter: an empty list is itself an error.)
    let p = tensorforge::Tensor::zeros(1, tensorforge::DType::F32, Device::Cpu).unwrap().requires_grad();
    let mut o = Adam::new(vec![p], AdamConfig::default()).unwrap();
    assert!(checkpoint::load(dir.join("missing"), &mut s, &mut o).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
