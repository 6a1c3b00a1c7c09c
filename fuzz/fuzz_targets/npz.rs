//! `.npz` bytes (zip, stored or deflated members): tensors or an `Err`, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tensorforge::io::from_npz_bytes(data);
});
