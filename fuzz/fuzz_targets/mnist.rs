//! MNIST idx files: the first byte picks where the input splits into the images file and the
//! labels file, so both parsers and their cross-checks are reached.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&cut, rest)) = data.split_first() {
        let at = (cut as usize * rest.len()) / 255;
        let (images, labels) = rest.split_at(at.min(rest.len()));
        let _ = tensorforge::data::mnist::from_bytes(images, labels);
    }
});
