//! Convergence: an MLP learns the bundled digits in a few epochs, and a training loop's
//! memory stays flat (the tape is freed by every backward).
//!
//! One test in this file on purpose: the memory check reads the process's resident size,
//! which a second test running in parallel would disturb.

use tensorforge::data::{BatchIter, digits};
use tensorforge::nn::{CrossEntropyLoss, Linear, Loss, Module, ReLU, Sequential};
use tensorforge::optim::{Adam, AdamConfig, Optimizer};
use tensorforge::param::ParameterStore;
use tensorforge::{Device, Tensor, no_grad};

/// Resident set size in bytes (Linux), `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn mlp_learns_digits_with_flat_memory() {
    let (train, test) = digits::load().split(0.2, 7);
    tensorforge::manual_seed(7);
    let mut store = ParameterStore::new(Device::Cpu);
    let model = Sequential::new()
        .add(Linear::from_store(&mut store, "fc1", 64, 64).unwrap())
        .add(ReLU)
        .add(Linear::from_store(&mut store, "fc2", 64, 10).unwrap());
    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 1e-2, ..Default::default() }).unwrap();
    let mut batches = BatchIter::new(train.len(), 32, true, 7);
    let epochs = 8;
    let mut rss_after_warmup = None;
    let mut last_loss = f64::NAN;
    for epoch in 0..epochs {
        for idx in &mut batches {
            let (x, y) = train.gather(&idx);
            let x = Tensor::from_vec(x, (idx.len(), 64), Device::Cpu).unwrap();
            let y = Tensor::from_vec(y, idx.len(), Device::Cpu).unwrap();
            let loss = CrossEntropyLoss::new().loss(&model.forward(&x).unwrap(), &y).unwrap();
            opt.zero_grad();
            loss.backward().unwrap();
            opt.step().unwrap();
            last_loss = loss.item().unwrap();
        }
        batches.next_epoch();
        if epoch == 1 {
            rss_after_warmup = rss_bytes();
        }
    }
    // Six more epochs are ~270 steps; a leaked graph (activations and gradients of a
    // 32×64 batch per step) would add well over 10 MB.
    if let (Some(a), Some(b)) = (rss_after_warmup, rss_bytes()) {
        let grown = b.saturating_sub(a);
        assert!(grown < 8 << 20, "resident memory grew by {} KiB over 6 epochs", grown >> 10);
    }

    let acc = no_grad(|| {
        let idx: Vec<usize> = (0..test.len()).collect();
        let (x, y) = test.gather(&idx);
        let x = Tensor::from_vec(x, (test.len(), 64), Device::Cpu).unwrap();
        let pred = model.forward(&x).unwrap().argmax(-1).unwrap().to_vec1::<i64>().unwrap();
        pred.iter().zip(&y).filter(|(p, t)| p == t).count() as f64 / test.len() as f64
    });
    assert!(last_loss < 0.5, "final training loss {last_loss}");
    assert!(acc >= 0.93, "test accuracy {acc} after {epochs} epochs");
}
