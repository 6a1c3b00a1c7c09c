//! Two seeded trainings running at once on two threads each give exactly what they give
//! alone: their initial values and dropout masks come from their own `Generator`s, not the
//! process-wide stream, which a third thread keeps drawing from meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use tensorforge::data::BatchIter;
use tensorforge::nn::{CrossEntropyLoss, Dropout, Linear, Loss, Module, ReLU, Sequential};
use tensorforge::optim::{Adam, AdamConfig, Optimizer};
use tensorforge::param::ParameterStore;
use tensorforge::{DType, Device, Generator, Tensor};

/// Ten steps of a dropout MLP on the digits; returns every parameter's bits afterwards.
fn train(seed: u64) -> Vec<u32> {
    let data = tensorforge::data::digits::load();
    let generator = Generator::new(seed);
    let mut store = ParameterStore::new(Device::Cpu).with_generator(generator.clone());
    let model = Sequential::new()
        .add(Linear::from_store(&mut store, "0", data.dim, 32).unwrap())
        .add(ReLU)
        .add(Dropout::new(0.3).unwrap().with_generator(generator))
        .add(Linear::from_store(&mut store, "3", 32, data.num_classes()).unwrap());
    let mut opt = Adam::new(store.parameters(), AdamConfig { lr: 1e-2, ..Default::default() }).unwrap();
    let mut batches = BatchIter::new(data.len(), 32, true, seed);
    for idx in (&mut batches).take(10) {
        let (x, y) = data.gather(&idx);
        let x = Tensor::from_vec(x, (idx.len(), data.dim), Device::Cpu).unwrap();
        let y = Tensor::from_vec(y, idx.len(), Device::Cpu).unwrap();
        let loss = CrossEntropyLoss::new().loss(&model.forward(&x).unwrap(), &y).unwrap();
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
    }
    store.parameters().iter().flat_map(|p| p.to_vec_f64().unwrap()).map(|v| (v as f32).to_bits()).collect()
}

#[test]
fn concurrent_seeded_trainings_match_their_single_threaded_runs() {
    let (alone1, alone2) = (train(1), train(2));
    assert_ne!(alone1, alone2, "different seeds train differently");
    let stop = AtomicBool::new(false);
    let (together1, together2) = std::thread::scope(|s| {
        // Someone else drawing from the global stream all along.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                Tensor::rand(0.0, 1.0, 64, DType::F32, Device::Cpu).unwrap();
            }
        });
        let a = s.spawn(|| train(1));
        let b = s.spawn(|| train(2));
        let r = (a.join().unwrap(), b.join().unwrap());
        stop.store(true, Ordering::Relaxed);
        r
    });
    assert!(together1 == alone1, "seed 1 trained differently next to another training");
    assert!(together2 == alone2, "seed 2 trained differently next to another training");
}

#[test]
fn generators_are_independent_streams_and_clones_share_one() {
    let g = Generator::new(5);
    let a = Tensor::rand_with(&g, 0.0, 1.0, 8, DType::F32, Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    let shared = g.clone();
    let b = Tensor::rand_with(&shared, 0.0, 1.0, 8, DType::F32, Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(a, b, "a clone continues the same stream");
    g.manual_seed(5);
    let again = Tensor::rand_with(&g, 0.0, 1.0, 8, DType::F32, Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, again);
    let state = g.state();
    let n1 = Tensor::randn_with(&g, 0.0, 1.0, 5, DType::F64, Device::Cpu).unwrap().to_vec1::<f64>().unwrap();
    g.set_state(state);
    let n2 = Tensor::randn_with(&g, 0.0, 1.0, 5, DType::F64, Device::Cpu).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(n1, n2);
}
