//! State dicts: PyTorch's names for parameters and buffers, loading in place with missing,
//! unexpected and mis-shaped names reported, and checkpoints PyTorch itself saved
//! (`tests/fixtures/torch/`, made by `scripts/torch-fixtures.sh`) loading strictly and
//! computing what PyTorch computed.

use tensorforge::io::{load_named, read_safetensors, save_named};
use tensorforge::nn::{
    BatchNorm, Conv2d, Flatten, GRU, LSTM, Linear, Module, RnnOptions, Sequential, children_buffers,
    children_parameters,
};
use tensorforge::ops::Conv2dOptions;
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::{DType, Device, Tensor};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn mlp() -> Sequential {
    Sequential::new()
        .add(Linear::new(4, 8, Device::Cpu).unwrap())
        .add(BatchNorm::new_1d(8, Device::Cpu).unwrap())
        .add(tensorforge::nn::ReLU)
        .add(Linear::new(8, 3, Device::Cpu).unwrap())
}

fn names(m: &dyn Module) -> Vec<String> {
    let mut v: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    v.sort();
    v
}

/// PyTorch's outputs for its own checkpoint, against ours after a strict load.
fn check_against_torch(name: &str, model: &mut dyn Module, tol: f64) {
    let state = load_named(fixture(&format!("{name}.state.safetensors"))).unwrap();
    let mut torch_names: Vec<String> = state.iter().map(|(n, _)| n.clone()).collect();
    torch_names.sort();
    assert_eq!(names(model), torch_names, "{name}: the same names as PyTorch's state_dict");
    let report = model.load_state_dict(&state, true).unwrap();
    assert!(report.is_exact());
    model.set_training(false);
    let io = read_safetensors(fixture(&format!("{name}.io.safetensors"))).unwrap();
    let get = |k: &str| io.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let got = model.forward(&get("input")).unwrap().to_vec_f64().unwrap();
    let want = get("output").to_vec_f64().unwrap();
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max);
    assert!(worst <= tol, "{name}: worst difference {worst:e} from PyTorch");
}

#[test]
fn pytorch_mlp_with_batch_norm_loads_and_matches() {
    check_against_torch("mlp", &mut mlp(), 1e-5);
}

#[test]
fn pytorch_cnn_loads_and_matches() {
    let opts = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let mut cnn = Sequential::new()
        .add(Conv2d::new(2, 4, (3, 3), opts, Device::Cpu).unwrap())
        .add(BatchNorm::new_2d(4, Device::Cpu).unwrap())
        .add(tensorforge::nn::ReLU)
        .add(tensorforge::nn::MaxPool2d::new((2, 2)))
        .add(Flatten)
        .add(Linear::new(36, 5, Device::Cpu).unwrap());
    check_against_torch("cnn", &mut cnn, 1e-5);
}

#[test]
fn pytorch_lstm_and_bidirectional_gru_load_and_match() {
    let two_layers = RnnOptions { num_layers: 2, ..Default::default() };
    check_against_torch("lstm", &mut LSTM::new(3, 5, two_layers, Device::Cpu).unwrap(), 1e-5);
    let bi = RnnOptions { bidirectional: true, ..Default::default() };
    check_against_torch("gru_bidirectional", &mut GRU::new(3, 4, bi, Device::Cpu).unwrap(), 1e-5);
}

#[test]
fn round_trip_through_a_file_restores_outputs_and_statistics() {
    tensorforge::manual_seed(3);
    let (a, b) = (mlp(), mlp());
    let x = Tensor::randn(0.0, 1.0, (5, 4), DType::F32, Device::Cpu).unwrap();
    a.forward(&x).unwrap(); // a training step moves the running statistics
    let path = std::env::temp_dir().join(format!("tf-state-dict-{}.safetensors", std::process::id()));
    save_named(&path, &a.state_dict()).unwrap();
    let loaded = load_named(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        loaded.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        a.state_dict().iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "load_named keeps the saved order"
    );
    b.load_state_dict(&loaded, true).unwrap();
    for ((n, x), (_, y)) in a.state_dict().iter().zip(b.state_dict()) {
        assert_eq!(x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap(), "{n}");
    }
    let nbt = b.state_dict().into_iter().find(|(n, _)| n == "1.num_batches_tracked").unwrap().1;
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn mismatches_are_reported_by_name_and_strict_refuses_them() {
    let m = mlp();
    let before: Vec<Vec<f64>> = m.state_dict().iter().map(|(_, t)| t.to_vec_f64().unwrap()).collect();
    let mut state = mlp().state_dict();
    state.retain(|(n, _)| n != "3.bias");
    state.push(("extra.weight".into(), Tensor::zeros(2, DType::F32, Device::Cpu).unwrap()));
    let err = m.load_state_dict(&state, true).unwrap_err().to_string();
    assert!(err.contains("3.bias") && err.contains("extra.weight"), "{err}");
    let unchanged: Vec<Vec<f64>> = m.state_dict().iter().map(|(_, t)| t.to_vec_f64().unwrap()).collect();
    assert_eq!(before, unchanged, "a refused load writes nothing");
    let report = m.load_state_dict(&state, false).unwrap();
    assert_eq!((report.missing, report.unexpected), (vec!["3.bias".to_string()], vec!["extra.weight".to_string()]));

    let mut wrong = mlp().state_dict();
    wrong[0].1 = Tensor::zeros((8, 5), DType::F32, Device::Cpu).unwrap();
    let err = mlp().load_state_dict(&wrong, false).unwrap_err().to_string();
    assert!(err.contains("0.weight") && err.contains("[8, 5]") && err.contains("[8, 4]"), "{err}");
    let mut twice = mlp().state_dict();
    twice.push(twice[0].clone());
    assert!(mlp().load_state_dict(&twice, false).unwrap_err().to_string().contains("twice"));
}

#[test]
fn loading_writes_in_place_so_an_optimizer_keeps_training_the_loaded_values() {
    let m = Linear::new(2, 1, Device::Cpu).unwrap();
    let mut opt = Sgd::new(m.parameters(), SgdConfig { lr: 0.5, ..Default::default() }).unwrap();
    let w = Tensor::from_vec(vec![1f64, 2.], (1, 2), Device::Cpu).unwrap(); // f64 → the layer's f32
    let b = Tensor::from_vec(vec![0f64], 1, Device::Cpu).unwrap();
    m.load_state_dict(&[("weight".into(), w), ("bias".into(), b)], true).unwrap();
    let x = Tensor::from_vec(vec![1f32, 1.], (1, 2), Device::Cpu).unwrap();
    assert_eq!(m.forward(&x).unwrap().to_vec2::<f32>().unwrap(), vec![vec![3.0]]);
    m.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    opt.step().unwrap();
    assert_eq!(m.forward(&x).unwrap().to_vec2::<f32>().unwrap(), vec![vec![3.0 - 0.5 * 3.0]]);
}

#[test]
fn hand_written_models_name_children_and_their_buffers() {
    struct Net {
        body: Sequential,
        head: Linear,
    }
    impl Module for Net {
        fn forward(&self, x: &Tensor) -> tensorforge::Result<Tensor> {
            self.head.forward(&self.body.forward(x)?)
        }
        fn named_parameters(&self) -> Vec<(String, Tensor)> {
            children_parameters(&[("body", &self.body), ("head", &self.head)])
        }
        fn named_buffers(&self) -> Vec<(String, Tensor)> {
            children_buffers(&[("body", &self.body), ("head", &self.head)])
        }
    }
    let net = Net { body: mlp(), head: Linear::new(3, 1, Device::Cpu).unwrap() };
    let n = names(&net);
    for want in ["body.1.running_var", "body.1.num_batches_tracked", "body.3.weight", "head.bias"] {
        assert!(n.contains(&want.to_string()), "{want} in {n:?}");
    }
    assert_eq!(net.parameters().len(), 8, "buffers are not parameters");
}

#[test]
fn a_parameter_store_loads_state_dicts_too() {
    let mut store = tensorforge::param::ParameterStore::new(Device::Cpu);
    let fc = Linear::from_store(&mut store, "fc", 2, 2).unwrap();
    let state = vec![("fc.weight".to_string(), Tensor::ones((2, 2), DType::F32, Device::Cpu).unwrap())];
    let report = store.load_state_dict(&state, false).unwrap();
    assert_eq!(report.missing, vec!["fc.bias".to_string()]);
    assert!(store.load_state_dict(&state, true).is_err());
    assert_eq!(fc.named_parameters()[0].1.to_vec2::<f32>().unwrap(), vec![vec![1.0, 1.0], vec![1.0, 1.0]]);
}

/// Registration at construction: layers built from one `ParameterStore` under PyTorch's
/// prefixes make a store whose state dict is the model's, buffers included, and which loads
/// PyTorch's checkpoint strictly; the optimizer gets the parameters only.
#[test]
fn a_model_built_from_a_store_loads_pytorch_checkpoints_through_the_store() {
    let mut store = tensorforge::param::ParameterStore::new(Device::Cpu);
    let mut mlp = Sequential::new()
        .add(Linear::from_store(&mut store, "0", 4, 8).unwrap())
        .add(BatchNorm::from_store(&mut store, "1", 8, 0).unwrap())
        .add(tensorforge::nn::ReLU)
        .add(Linear::from_store(&mut store, "3", 8, 3).unwrap());
    assert_eq!(store.parameters().len(), 6, "weights and biases; the running statistics are buffers");
    assert!(store.is_buffer("1.running_var") && !store.is_buffer("1.weight"));
    let mut from_store: Vec<String> = store.state_dict().into_iter().map(|(n, _)| n).collect();
    from_store.sort();
    assert_eq!(from_store, names(&mlp), "the store's state dict is the model's");
    let state = load_named(fixture("mlp.state.safetensors")).unwrap();
    assert!(store.load_state_dict(&state, true).unwrap().is_exact());
    mlp.set_training(false);
    let io = read_safetensors(fixture("mlp.io.safetensors")).unwrap();
    let get = |k: &str| io.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let (got, want) = (mlp.forward(&get("input")).unwrap().to_vec_f64().unwrap(), get("output").to_vec_f64().unwrap());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())), "{got:?} vs {want:?}");
    // A name that is a parameter cannot become a buffer.
    assert!(store.buffer_or_init("0.weight", || Tensor::zeros(1, DType::F32, Device::Cpu)).is_err());
}

/// A store saved to a file and loaded into an empty store keeps its buffers buffers (the
/// counter an i64), so layers built from it afterwards find them.
#[test]
fn buffers_survive_a_save_and_load_of_the_store() {
    let mut store = tensorforge::param::ParameterStore::new(Device::Cpu);
    let bn = BatchNorm::from_store(&mut store, "bn", 3, 0).unwrap();
    bn.forward(&Tensor::randn(0.0, 1.0, (4, 3), DType::F32, Device::Cpu).unwrap()).unwrap();
    let path = std::env::temp_dir().join(format!("tf-store-buffers-{}.safetensors", std::process::id()));
    store.save(&path).unwrap();
    let mut back = tensorforge::param::ParameterStore::new(Device::Cpu);
    back.load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(back.is_buffer("bn.running_mean") && back.is_buffer("bn.num_batches_tracked"));
    assert_eq!(back.parameters().len(), 2);
    assert_eq!(back.get("bn.num_batches_tracked").unwrap().to_scalar::<i64>().unwrap(), 1);
    let again = BatchNorm::from_store(&mut back, "bn", 3, 0).unwrap();
    let (m1, _) = bn.running_stats();
    let (m2, _) = again.running_stats();
    assert_eq!(m1.to_vec_f64().unwrap(), m2.to_vec_f64().unwrap());
}
