//! Data-parallel training over MPI, on two processes of this machine.
//!
//! `cargo test --features mpi --test distributed`: the test starts itself again under
//! `mpirun -np 2` (OpenMPI's `openmpi-bin`), and each rank runs the checks below in the same
//! order. The ranks' verdicts come back through mpirun's exit status and output.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tensorforge::data::BatchIter;
use tensorforge::distributed::{Communicator, DistributedDataParallel, Mpi, ReduceOp};
use tensorforge::nn::{Conv2d, CrossEntropyLoss, LSTM, Linear, Loss, MaxPool2d, Module, RnnOptions};
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::param::ParameterStore;
use tensorforge::{DType, Device, Error, Result, Tensor};

/// Each rank prints this once all its checks passed.
const PASSED: &str = "distributed checks passed on rank";

#[test]
fn two_ranks_over_mpi() {
    if Mpi::launched() {
        run_rank();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe"])
        // Root in containers and CI; shared memory without ptrace-based single copy.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .arg(exe)
        .args(["two_ranks_over_mpi", "--exact", "--nocapture", "--test-threads=1"])
        .output()
        .expect("mpirun (OpenMPI: apt-get install openmpi-bin libopenmpi-dev) must be on PATH");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mpirun failed ({}):\n{stdout}\n{stderr}", out.status);
    for rank in 0..2 {
        assert!(stdout.contains(&format!("{PASSED} {rank}")), "rank {rank} did not report:\n{stdout}\n{stderr}");
    }
}

fn run_rank() {
    let comm = Arc::new(Mpi::init().unwrap().with_timeout(Duration::from_secs(20)));
    let rank = comm.rank();
    assert_eq!(comm.world_size(), 2);
    collectives(&*comm);
    mismatches_are_errors_on_every_rank(&comm);
    for model in [Model::Mlp, Model::Cnn, Model::Lstm] {
        let diff = equivalence(comm.clone(), model, DType::F32, 4);
        println!("rank {rank}: {model:?} f32 max relative difference {diff:.3e}");
        assert!(diff <= 1e-5, "{model:?}: 2 ranks × batch B differ from 1 rank × 2B by {diff:e}");
    }
    let diff = equivalence(comm.clone(), Model::Mlp, DType::F64, 4);
    println!("rank {rank}: Mlp f64 max relative difference {diff:.3e}");
    assert!(diff <= 1e-12, "f64: {diff:e}");
    accumulation_with_no_sync(comm.clone());
    trainer_on_two_ranks(comm.clone());
    a_rank_that_leaves_is_an_error_not_a_hang(&comm);
    println!("{PASSED} {rank}");
}

fn collectives(comm: &dyn Communicator) {
    let r = comm.rank() as f64;
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let t = Tensor::from_vec(vec![1.0 + r, 10.0 * r, -r], 3, Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        comm.all_reduce(&t, ReduceOp::Sum).unwrap();
        assert_eq!(t.to_vec_f64().unwrap(), vec![3.0, 10.0, -1.0], "{dtype:?} sum");
        comm.all_reduce(&t, ReduceOp::Average).unwrap();
        assert_eq!(t.to_vec_f64().unwrap(), vec![3.0, 10.0, -1.0], "{dtype:?} average of equal values");
    }
    let t = Tensor::from_vec(vec![r as i64, -(r as i64)], 2, Device::Cpu).unwrap();
    comm.all_reduce(&t, ReduceOp::Max).unwrap();
    assert_eq!(t.to_vec1::<i64>().unwrap(), vec![1, 0]);
    let t = Tensor::from_vec(vec![r as f32 + 0.5], 1, Device::Cpu).unwrap();
    comm.all_reduce(&t, ReduceOp::Min).unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), vec![0.5]);
    let t = Tensor::from_vec(vec![1.0 + r, 2.0 + r], 2, Device::Cpu).unwrap();
    comm.all_reduce(&t, ReduceOp::Average).unwrap();
    assert_eq!(t.to_vec1::<f64>().unwrap(), vec![1.5, 2.5]);
    // Broadcast into a strided view: only the viewed elements change.
    let base = Tensor::full(r + 7.0, (2, 2), DType::F32, Device::Cpu).unwrap();
    let col = base.narrow(1, 1, 1).unwrap();
    comm.broadcast(&col, 1).unwrap();
    assert_eq!(base.to_vec2::<f32>().unwrap(), vec![vec![r as f32 + 7.0, 8.0]; 2]);
    comm.barrier().unwrap();
}

fn mismatches_are_errors_on_every_rank(comm: &Arc<Mpi>) {
    // Rank 1 passes one element more: both ranks get an Err, neither hangs or reads garbage.
    let t = Tensor::zeros(3 + comm.rank(), DType::F32, Device::Cpu).unwrap();
    let e = comm.all_reduce(&t, ReduceOp::Sum).unwrap_err();
    assert!(matches!(e, Error::Distributed { .. }) && e.to_string().contains("disagree"), "{e}");
    let t = Tensor::zeros(3, if comm.rank() == 0 { DType::F32 } else { DType::F64 }, Device::Cpu).unwrap();
    assert!(comm.all_reduce(&t, ReduceOp::Sum).is_err());
    // Models with different parameters cannot be wrapped together.
    let mut store = ParameterStore::new(Device::Cpu);
    Linear::from_store(&mut store, "fc", 4, 2 + comm.rank()).unwrap();
    let e = DistributedDataParallel::new(comm.clone(), &store).err().expect("an Err");
    assert!(e.to_string().contains("parameter names, shapes and dtypes"), "{e}");
    assert!(comm.broadcast(&t, 5).is_err());
}

#[derive(Clone, Copy, Debug)]
enum Model {
    Mlp,
    Cnn,
    Lstm,
}

/// Samples of 64 features (an 8×8 image, or 8 steps of 8 features) in 5 classes.
const FEATURES: usize = 64;
const CLASSES: usize = 5;

/// A model's forward pass, from input rows to logits.
type Forward = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

fn build(model: Model, store: &mut ParameterStore) -> Result<Forward> {
    Ok(match model {
        Model::Mlp => {
            let (a, b) =
                (Linear::from_store(store, "fc1", FEATURES, 32)?, Linear::from_store(store, "fc2", 32, CLASSES)?);
            Box::new(move |x| b.forward(&a.forward(x)?.relu()?))
        }
        Model::Cnn => {
            let same = Conv2dOptions { padding: (1, 1), ..Default::default() };
            let c1 = Conv2d::from_store(store, "conv1", 1, 4, (3, 3), same)?;
            let c2 = Conv2d::from_store(store, "conv2", 4, 8, (3, 3), same)?;
            let fc = Linear::from_store(store, "fc", 8 * 4 * 4, CLASSES)?;
            Box::new(move |x| {
                let n = x.dims()[0];
                let h = c2.forward(&c1.forward(&x.reshape((n, 1, 8, 8))?)?.relu()?)?.relu()?;
                fc.forward(&MaxPool2d::new((2, 2)).forward(&h)?.reshape((n, 8 * 4 * 4))?)
            })
        }
        Model::Lstm => {
            let opts = RnnOptions { batch_first: true, ..Default::default() };
            let lstm = LSTM::from_store(store, "lstm", 8, 16, opts)?;
            let fc = Linear::from_store(store, "fc", 16, CLASSES)?;
            Box::new(move |x| {
                let n = x.dims()[0];
                let (y, _) = lstm.forward_with_state(&x.reshape((n, 8, 8))?, None)?;
                fc.forward(&y.narrow(1, 7, 1)?.reshape((n, 16))?)
            })
        }
    })
}

/// Trains `steps` steps of SGD with momentum on 2 ranks × batch B (through the wrapper, with
/// small buckets so several reductions overlap backward) and on this process alone with
/// batch 2B, from the same start and over the same samples; returns the largest relative
/// difference between the two models' parameters.
fn equivalence(comm: Arc<Mpi>, model: Model, dtype: DType, steps: usize) -> f64 {
    const N: usize = 96;
    const B: usize = 8;
    // The same data on every rank (a fixed stream), the labels a function of the inputs.
    tensorforge::manual_seed(11);
    let x = Tensor::randn(0.0, 1.0, (N, FEATURES), dtype, Device::Cpu).unwrap();
    let y = x.narrow(1, 0, CLASSES).unwrap().argmax(-1).unwrap();
    let train = |world: usize, rank: usize, ddp: bool| -> Vec<Vec<f64>> {
        // Rank 1 starts from other values: the wrapper's broadcast must make them equal.
        tensorforge::manual_seed(if ddp { 5 + rank as u64 } else { 5 });
        let mut store = ParameterStore::with_dtype(Device::Cpu, dtype);
        let f = build(model, &mut store).unwrap();
        let mut wrapper = ddp.then(|| {
            let c: Arc<dyn Communicator> = comm.clone();
            DistributedDataParallel::with_bucket_bytes(c, &store, 2048).unwrap()
        });
        if let Some(w) = &wrapper {
            assert!(w.num_buckets() > 1, "{model:?}: the check needs several buckets");
        }
        let cfg = SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() };
        let mut opt = Sgd::new(store.parameters(), cfg).unwrap();
        let batches = BatchIter::new(N, B * 2 / world, true, 3).shard(rank, world);
        for idx in batches.take(steps) {
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect(), idx.len(), Device::Cpu).unwrap();
            let loss = CrossEntropyLoss::new()
                .loss(&f(&x.index_select(0, &ids).unwrap()).unwrap(), &y.index_select(0, &ids).unwrap())
                .unwrap();
            opt.zero_grad();
            match &mut wrapper {
                Some(w) => w.backward(&loss).unwrap(),
                None => loss.backward().unwrap(),
            }
            opt.step().unwrap();
        }
        store.parameters().iter().map(|p| p.to_vec_f64().unwrap()).collect()
    };
    let two = train(2, comm.rank(), true);
    let one = train(1, 0, false);
    let mut worst = 0f64;
    for (a, b) in two.iter().flatten().zip(one.iter().flatten()) {
        worst = worst.max((a - b).abs() / b.abs().max(1e-3));
    }
    // The replicas agree exactly with each other.
    let first = Tensor::from_vec(two.concat(), two.iter().map(Vec::len).sum::<usize>(), Device::Cpu).unwrap();
    let other = first.copy().unwrap();
    comm.broadcast(&other, 0).unwrap();
    assert_eq!(first.to_vec1::<f64>().unwrap(), other.to_vec1::<f64>().unwrap(), "{model:?}: replicas diverged");
    worst
}

/// Two micro-batches under `no_sync` then one synchronized: the gradient is the average
/// over ranks of each rank's sum over its micro-batches.
fn accumulation_with_no_sync(comm: Arc<Mpi>) {
    let mut store = ParameterStore::new(Device::Cpu);
    let w = store.get_or_init("w", 3, tensorforge::param::Init::Ones).unwrap();
    let c: Arc<dyn Communicator> = comm.clone();
    let mut ddp = DistributedDataParallel::new(c, &store).unwrap();
    let r = comm.rank() as f32;
    let scale = |k: f32| Tensor::from_vec(vec![k; 3], 3, Device::Cpu).unwrap();
    ddp.no_sync(|d| d.backward(&w.mul(&scale(1.0 + r)).unwrap().sum_all().unwrap())).unwrap();
    assert_eq!(w.grad().unwrap().to_vec1::<f32>().unwrap(), vec![1.0 + r; 3], "no_sync keeps the local gradient");
    ddp.backward(&w.mul(&scale(10.0)).unwrap().sum_all().unwrap()).unwrap();
    // ((1 + 10) + (2 + 10)) / 2
    assert_eq!(w.grad().unwrap().to_vec1::<f32>().unwrap(), vec![11.5; 3]);
}

/// The training loop on two ranks: one model (replicas equal), the epoch's loss over both
/// ranks' samples, files written by rank 0 only, and its checkpoint loads in one process.
fn trainer_on_two_ranks(comm: Arc<Mpi>) {
    use tensorforge::train::{Metrics, Step, Trainer};
    const N: usize = 64;
    tensorforge::manual_seed(11);
    let x = Tensor::randn(0.0, 1.0, (N, FEATURES), DType::F32, Device::Cpu).unwrap();
    let y = x.narrow(1, 0, CLASSES).unwrap().argmax(-1).unwrap();
    let model = |seed: u64| {
        tensorforge::manual_seed(seed);
        let mut store = ParameterStore::new(Device::Cpu);
        let f = build(Model::Mlp, &mut store).unwrap();
        let opt = Sgd::new(store.parameters(), SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() }).unwrap();
        (store, f, opt)
    };
    let rank = comm.rank();
    let (mut store, f, mut opt) = model(20 + rank as u64);
    let dir = std::env::temp_dir().join(format!("tensorforge-ddp-trainer-{}-{rank}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ddp = DistributedDataParallel::new(comm.clone(), &store).unwrap();
    let mut batches = BatchIter::new(N, 8, true, 3).shard(rank, 2);
    let loss_of = |idx: &[usize]| {
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect(), idx.len(), Device::Cpu)?;
        CrossEntropyLoss::new().loss(&f(&x.index_select(0, &ids)?)?, &y.index_select(0, &ids)?)
    };
    let all: Vec<usize> = (0..N).collect();
    let report = Trainer::new(2)
        .out_dir(&dir)
        .quiet()
        .distributed(ddp)
        .fit(
            &mut store,
            &mut opt,
            &mut batches,
            |idx| Ok(Step { loss: loss_of(idx)?, correct: None }),
            || Ok(Metrics { loss: tensorforge::no_grad(|| loss_of(&all))?.item()?, accuracy: None }),
        )
        .unwrap();
    assert_eq!(report.samples, 2 * N, "two epochs of all samples over both ranks");
    // Both ranks report the same figures and hold the same parameters.
    let mine: Vec<f64> =
        store.parameters().iter().flat_map(|p| p.to_vec_f64().unwrap()).chain([report.history[1].train_loss]).collect();
    let t = Tensor::from_vec(mine.clone(), mine.len(), Device::Cpu).unwrap();
    comm.broadcast(&t, 0).unwrap();
    assert_eq!(t.to_vec1::<f64>().unwrap(), mine, "rank {rank} differs from rank 0");
    let ckpt = dir.join(tensorforge::checkpoint::FILE_NAME);
    if rank == 0 {
        // One process, another initialization: loading gives the trained model.
        let (mut fresh, _, mut fresh_opt) = model(99);
        tensorforge::checkpoint::load(&ckpt, &mut fresh, &mut fresh_opt).unwrap();
        for (a, b) in fresh.parameters().iter().zip(store.parameters()) {
            assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    } else {
        assert!(!dir.exists(), "rank {rank} wrote {}", dir.display());
    }
}

/// Rank 1 stops taking part (as after an error of its own); rank 0's collective returns
/// `Err` at its deadline instead of blocking forever.
fn a_rank_that_leaves_is_an_error_not_a_hang(comm: &Arc<Mpi>) {
    comm.barrier().unwrap();
    if comm.rank() == 1 {
        return;
    }
    let t = Tensor::ones(4, DType::F32, Device::Cpu).unwrap();
    let start = Instant::now();
    let e = comm.start_all_reduce(&t, &t.zeros_like().unwrap(), ReduceOp::Sum).unwrap().wait().unwrap_err();
    assert!(e.to_string().contains("no completion after"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(60));
}
