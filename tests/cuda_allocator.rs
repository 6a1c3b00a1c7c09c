//! The CUDA caching allocator: freed blocks are kept, reused by a request of the same class,
//! and given back by `empty_cache`. In a test binary of its own, because the device's counters
//! are process-wide and other tests allocating in parallel would move them.
#![cfg(feature = "cuda")]

use tensorforge::backend::BackendDevice;
use tensorforge::backend::cuda::CudaDevice;
use tensorforge::{DType, Shape};

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn caching_allocator_reuses_and_empties() {
    let d = CudaDevice::get(0).expect("this test needs a CUDA device and NVRTC");
    d.synchronize().unwrap();
    let before = d.bytes_in_use();
    let s = d.full(&Shape::from(1 << 20), DType::F32, 1.0).unwrap();
    assert!(d.bytes_in_use() >= before + (4 << 20));
    drop(s);
    assert!(d.bytes_cached() >= 4 << 20);
    let cached = d.bytes_cached();
    let s = d.full(&Shape::from(1 << 20), DType::F32, 2.0).unwrap();
    assert_eq!(d.bytes_cached(), cached - (4 << 20), "a freed block of the same class is reused");
    drop(s);
    d.empty_cache();
    assert_eq!(d.bytes_cached(), 0);
}
