//! `.npy` bytes: any input is a tensor or an `Err`, never a panic, an abort or a hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tensorforge::io::from_npy_bytes(data);
});
