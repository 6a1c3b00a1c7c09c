//! Calls that used to deadlock on the storage locks (a read guard held while the same
//! buffer's write lock was requested) complete, with the right values. Each runs on a thread
//! with a deadline, so a regression fails the test instead of hanging CI.

use std::sync::mpsc;
use std::time::Duration;
use tensorforge::custom::{CpuKernel, CustomOp, Float};
use tensorforge::optim::{Optimizer, Sgd, SgdConfig};
use tensorforge::param::ParameterStore;
use tensorforge::{Device, Tensor};

fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{what}: no answer in 30 s (deadlock?)"))
}

#[test]
fn a_store_restores_a_snapshot_of_itself() {
    within("load_tensors(named_tensors())", || {
        let mut store = ParameterStore::new(Device::Cpu);
        store.insert("w", Tensor::from_vec(vec![1.0f32, 2.0, 3.0], 3, Device::Cpu).unwrap()).unwrap();
        let snapshot = store.named_tensors();
        store.load_tensors(snapshot).unwrap();
        assert_eq!(store.get("w").unwrap().to_vec_f64().unwrap(), vec![1.0, 2.0, 3.0]);
        // A transposed view of itself really copies.
        let w2 = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 2), Device::Cpu).unwrap();
        store.insert("m", w2).unwrap();
        let t = store.get("m").unwrap().transpose(0, 1).unwrap();
        store.load_tensors(vec![("m".into(), t)]).unwrap();
        assert_eq!(store.get("m").unwrap().to_vec_f64().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    });
}

struct Identity;
impl CpuKernel for Identity {
    fn forward<T: Float>(&self, x: &[&[T]], out: &mut [T], _s: &[f64]) {
        out.copy_from_slice(x[0]);
    }
}

#[test]
fn a_gradient_that_is_the_parameter_itself_updates_it() {
    within("Sgd::step with a gradient aliasing its parameter", || {
        // A (wrong, but legal) backward that returns its input as the gradient: the
        // parameter's gradient then shares the parameter's buffer.
        let op = CustomOp::new("alias_grad", Identity).unwrap().backward(|x, _y, _g| Ok(vec![Some(x[0].clone())]));
        let p = Tensor::from_vec(vec![1.0f64, -2.0], 2, Device::Cpu).unwrap().requires_grad();
        let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 0.5, ..Default::default() }).unwrap();
        op.apply(&[&p]).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step().unwrap();
        assert_eq!(p.to_vec_f64().unwrap(), vec![0.5, -1.0], "p - 0.5 p");
    });
}

/// One thread computes with a parameter (ops whose inputs share its buffer, so they read it
/// twice) while another steps the optimizer on it: std's RwLock blocks a second read behind
/// a waiting writer, which deadlocked; writers now never wait on the lock.
#[test]
fn computing_with_a_parameter_while_another_thread_steps_it() {
    const STEPS: usize = 200_000;
    within("p.mul(&p) on one thread, optimizer steps on another", || {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let p = Tensor::ones((2, 2), tensorforge::DType::F32, Device::Cpu).unwrap().requires_grad();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.detach(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    p.mul(&p).unwrap();
                    p.matmul(&p.t().unwrap()).unwrap();
                    n += 1;
                }
                n
            })
        };
        let mut opt = Sgd::new(vec![p.clone()], SgdConfig { lr: 1e-6, ..Default::default() }).unwrap();
        let g = Tensor::ones((2, 2), tensorforge::DType::F32, Device::Cpu).unwrap();
        for _ in 0..STEPS {
            p.set_grad(Some(g.clone())).unwrap();
            opt.step().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let v = p.to_vec_f64().unwrap();
        // Every step applied (f32 rounding of 2·10⁵ small updates stays well inside 1 %).
        assert!((v[0] - (1.0 - STEPS as f64 * 1e-6)).abs() < 0.01, "{}", v[0]);
    });
}

/// A whole step run on the pool (`on_pool`, as the trainer does) keeps the other workers
/// polling for its kernels' helpers; a wait inside the step (a rayon join) may pick up such a
/// keeper on the step's own thread, which must return at once instead of polling above the
/// frame that ends the step. That interleaving needs the keeper still queued when the join
/// waits, which two threads rarely produce, so this is a smoke test: many rounds, with joins
/// and parallel kernels inside, finish with the right values.
#[test]
fn steps_on_the_pool_with_joins_inside_finish() {
    within("on_pool with rayon::join inside", || {
        let x = Tensor::ones((256, 256), tensorforge::DType::F32, Device::Cpu).unwrap();
        for _ in 0..200 {
            let (a, b) = tensorforge::backend::cpu::on_pool(|| {
                rayon::join(|| x.matmul(&x).unwrap().sum_all().unwrap().item().unwrap(), || (0..1000u64).sum::<u64>())
            });
            assert_eq!((a, b), (256.0 * 256.0 * 256.0, 499_500));
        }
    });
}

/// A panic inside `on_pool` (a bug in a user's step, a failed write to a closed pipe) reaches
/// the caller: the workers kept polling for the step's kernels are released while it unwinds.
#[test]
fn a_panic_on_the_pool_reaches_the_caller() {
    let caught = within("a panic inside on_pool", || {
        let x = Tensor::ones((256, 256), tensorforge::DType::F32, Device::Cpu).unwrap();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tensorforge::backend::cpu::on_pool(|| {
                let s = x.matmul(&x).unwrap().sum_all().unwrap().item().unwrap();
                if s > 0.0 {
                    panic!("the step failed");
                }
                s
            })
        }))
        .is_err()
    });
    assert!(caught);
}
