//! Files survive a kill at any moment: a child process (this test binary, re-run) saves two
//! versions of a 16 MiB safetensors file in turn, forever; the parent kills it at moments
//! spread over the write and checks that the file always loads, whole, as one version. Then a
//! save in this process removes the temporary files the killed saves left.
//!
//! One test in this file on purpose: the child is this binary running just this test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tensorforge::io::{read_safetensors, write_safetensors};
use tensorforge::{DType, Device, Tensor};

const CHILD: &str = "TF_CRASH_SAFE_CHILD";
const N: usize = 4 << 20;

fn save(path: &Path, version: f64) {
    let t = Tensor::full(version, N, DType::F32, Device::Cpu).unwrap();
    write_safetensors(path, &[("w", &t)], None).unwrap();
}

/// The version the file holds, checking that every element agrees.
fn version(path: &Path) -> f64 {
    let named = read_safetensors(path).unwrap_or_else(|e| panic!("the file does not load: {e}"));
    assert_eq!(named.len(), 1);
    let v = named[0].1.to_vec_f64().unwrap();
    assert_eq!(v.len(), N, "a tensor of another length");
    assert!(v.iter().all(|&x| x == v[0]), "a mix of two versions");
    assert!(v[0] == 1.0 || v[0] == 2.0, "version {}", v[0]);
    v[0]
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tf-tmp-"))
        .collect()
}

#[test]
fn a_killed_save_leaves_the_old_or_the_new_file() {
    if let Ok(path) = std::env::var(CHILD) {
        for i in 0.. {
            save(Path::new(&path), if i % 2 == 0 { 2.0 } else { 1.0 });
        }
    }
    let dir = std::env::temp_dir().join(format!("tf-crash-safe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    save(&path, 1.0);
    let exe = std::env::current_exe().unwrap();
    let mut seen = [0usize; 2];
    for round in 0..16u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "a_killed_save_leaves_the_old_or_the_new_file", "--test-threads=1"])
            .env(CHILD, &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill moments spread over start-up and several saves (a save takes tens of ms).
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 180));
        child.kill().unwrap();
        child.wait().unwrap();
        seen[(version(&path) - 1.0) as usize] += 1;
    }
    eprintln!("after 16 kills the file held version 1 {} times, version 2 {} times", seen[0], seen[1]);
    // A save by a live process removes the temporary files of the dead ones.
    save(&path, 1.0);
    assert_eq!(temp_files(&dir), Vec::<String>::new(), "stale temporary files were left");
    assert_eq!(version(&path), 1.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
