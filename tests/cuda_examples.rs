//! The examples train end to end on `--device cuda` at small sizes: on a GPU, or on the CPU
//! under the CUDA emulator (`--features cuda-emu`). Each runs the example binary cargo built
//! next to this test and checks its summary line.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

/// Runs `target/<profile>/examples/<name>` with `args`; returns its stdout.
fn run_example(name: &str, args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin: PathBuf = dir.join("examples").join(name);
    assert!(bin.exists(), "{} not built (cargo test builds the examples)", bin.display());
    let out = Command::new(&bin).args(args).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{name} {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The number after `key` on the output's last line that has it.
fn value_after(out: &str, key: &str) -> f64 {
    let line = out.lines().rev().find(|l| l.contains(key)).unwrap_or_else(|| panic!("no `{key}` in:\n{out}"));
    line[line.find(key).unwrap() + key.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

fn out_dir(tag: &str) -> String {
    std::env::temp_dir().join(format!("tf-cuda-example-{tag}-{}", std::process::id())).display().to_string()
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn train_digits_mlp_on_cuda() {
    let out = run_example("train_digits", &["--device", "cuda", "--epochs", "2", "--out", &out_dir("mlp")]);
    let acc = value_after(&out, "test accuracy:");
    assert!(acc >= 0.9, "MLP test accuracy {acc} after 2 epochs on cuda");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn train_digits_cnn_on_cuda() {
    let out =
        run_example("train_digits", &["--device", "cuda", "--model", "cnn", "--epochs", "1", "--out", &out_dir("cnn")]);
    let acc = value_after(&out, "test accuracy:");
    assert!(acc >= 0.85, "CNN test accuracy {acc} after 1 epoch on cuda");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn ctc_toy_on_cuda() {
    let out = run_example("ctc_toy", &["--device", "cuda", "--steps", "8", "--out", &out_dir("ctc")]);
    let acc = value_after(&out, "greedy decode accuracy:");
    assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn char_lstm_on_cuda() {
    let out = run_example(
        "char_lstm",
        &["--device", "cuda", "--seconds", "1", "--sample-len", "16", "--out", &out_dir("char-lstm")],
    );
    let (before, after) =
        (value_after(&out, "initial held-out bits per char:"), value_after(&out, "final held-out bits per char:"));
    assert!(before.is_finite() && after.is_finite() && after <= before + 0.05, "bits per char {before} -> {after}");
}

#[test]
#[cfg_attr(not(feature = "cuda-emu"), ignore = "needs a CUDA device")]
fn custom_op_example_passes_parity_on_cuda() {
    let out = run_example("custom_op", &[]);
    assert!(out.contains("parity passed (F32)") && out.contains("gradcheck passed"), "{out}");
}

/// The general custom-op example checks itself: gradcheck always; CPU/CUDA parity in every
/// float dtype on the emulator or a GPU (and says so when it has to skip it).
#[test]
fn custom_rmsnorm_example_passes_its_checks() {
    let out = run_example("custom_rmsnorm", &["--quick"]);
    assert!(out.contains("gradcheck passed"), "{out}");
    let passed = out.matches("parity passed").count();
    if cfg!(feature = "cuda-emu") {
        assert_eq!(passed, 4, "{out}");
    } else {
        assert!(passed == 4 || out.contains("parity skipped"), "{out}");
    }
    assert!(value_after(&out, "speedup") > 0.0, "{out}");
}
