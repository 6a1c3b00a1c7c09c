//! safetensors bytes, with their metadata: tensors or an `Err`, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tensorforge::io::safetensors::from_safetensors_bytes_with_metadata(data);
});
