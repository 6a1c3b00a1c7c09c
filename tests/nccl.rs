//! The NCCL communicator (feature `nccl`): one rank per GPU, bootstrapped by a CPU
//! communicator (`Local` here: one rank, no MPI needed).

use std::sync::Arc;
use tensorforge::distributed::{Communicator, DistributedDataParallel, Local, Nccl, ReduceOp};
use tensorforge::nn::{Linear, Module};
use tensorforge::param::ParameterStore;
use tensorforge::{DType, Device, Tensor};

/// Without NCCL or a real GPU (this machine, CI, the emulator), joining is an `Err` that
/// says what is missing, never a panic in the library loader.
#[test]
fn without_a_gpu_or_the_library_joining_is_an_error() {
    if cfg!(not(feature = "cuda-emu")) && tensorforge::backend::cuda::CudaDevice::get(0).is_ok() {
        return; // a real GPU: `all_reduce_on_one_gpu` below is the check
    }
    let e = Nccl::init(Arc::new(Local::new(Device::Cpu)), Device::Cuda(0)).err().expect("an Err without a GPU");
    let msg = e.to_string();
    assert!(msg.contains("NCCL library was not found") || msg.contains("CUDA") || msg.contains("emulator"), "{msg}");
    // A bootstrap that moves CUDA tensors is refused up front.
    let e = Nccl::init(Arc::new(Local::new(Device::Cuda(0))), Device::Cuda(0)).err().expect("an Err");
    assert!(e.to_string().contains("bootstrap"), "{e}");
}

/// One rank on one GPU: NCCL's all-reduce and broadcast of CUDA tensors in every float
/// dtype, the barrier, and the wrapper over it.
#[test]
#[ignore = "needs a CUDA device and NCCL (libnccl.so on LD_LIBRARY_PATH)"]
fn all_reduce_on_one_gpu() {
    let dev = Device::Cuda(0);
    let nccl = Arc::new(Nccl::init(Arc::new(Local::new(Device::Cpu)), dev).unwrap());
    assert_eq!((nccl.rank(), nccl.world_size()), (0, 1));
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let t = Tensor::from_vec(vec![1f32, -2., 3.], 3, Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let t = t.to_device(dev).unwrap();
        nccl.all_reduce(&t, ReduceOp::Average).unwrap();
        nccl.all_reduce(&t, ReduceOp::Sum).unwrap();
        nccl.broadcast(&t, 0).unwrap();
        assert_eq!(t.to_vec_f64().unwrap(), vec![1., -2., 3.], "{dtype:?}");
    }
    let send = Tensor::from_vec(vec![5i64, 7], 2, Device::Cpu).unwrap().to_device(dev).unwrap();
    let recv = send.zeros_like().unwrap();
    nccl.start_all_reduce(&send, &recv, ReduceOp::Max).unwrap().wait().unwrap();
    assert_eq!(recv.to_vec1::<i64>().unwrap(), vec![5, 7]);
    nccl.barrier().unwrap();
    let mut store = ParameterStore::new(dev);
    let fc = Linear::from_store(&mut store, "fc", 4, 2).unwrap();
    let mut ddp = DistributedDataParallel::new(nccl.clone(), &store).unwrap();
    let x = Tensor::ones((3, 4), DType::F32, dev).unwrap();
    ddp.backward(&fc.forward(&x).unwrap().sum_all().unwrap()).unwrap();
    assert!(store.parameters().iter().all(|p| p.grad().is_some()));
}
