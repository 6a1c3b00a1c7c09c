//! `Device::cuda(n)` never panics: on a machine without a driver, NVRTC or the device it is
//! `Err(Error::CudaUnavailable)`; on a GPU machine with NVRTC, device 0 opens. Runs everywhere.
#![cfg(feature = "cuda")]

use tensorforge::{Device, Error};

#[test]
fn missing_device_is_an_error_not_a_panic() {
    match Device::cuda(0) {
        Ok(d) => {
            assert_eq!(d, Device::Cuda(0));
            eprintln!("CUDA device 0 is available");
        }
        Err(Error::CudaUnavailable { reason }) => {
            assert!(!reason.is_empty());
            eprintln!("CUDA unavailable, as expected without a GPU: {reason}");
        }
        Err(e) => panic!("expected Ok or CudaUnavailable, got {e}"),
    }
    // No machine has this many devices.
    match Device::cuda(1000) {
        Err(Error::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
        other => panic!("cuda:1000 must be CudaUnavailable, got {other:?}"),
    }
    assert!(matches!(Device::parse("cuda:1000"), Err(Error::CudaUnavailable { .. })));
}

#[test]
fn tensors_on_a_missing_device_fail_cleanly() {
    if Device::cuda(0).is_ok() {
        return;
    }
    let r = tensorforge::Tensor::zeros(4, tensorforge::DType::F32, Device::Cuda(0));
    assert!(matches!(r, Err(Error::CudaUnavailable { .. })), "got {:?}", r.map(|_| ()));
}
