//! Files exchanged with numpy and the reference safetensors implementation, compared bit
//! for bit both ways. Runs when `TENSORFORGE_INTEROP_PYTHON` names a python with numpy and
//! safetensors (`scripts/interop-venv.sh` makes one); otherwise it says so and passes:
//!
//! ```text
//! TENSORFORGE_INTEROP_PYTHON=$(scripts/interop-venv.sh) cargo test --no-default-features --test io_interop
//! ```

use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tensorforge::{DType, Device, Tensor, io};

/// The arrays of `expected()` in `scripts/io_interop.py`, built the same way (bool is U8).
fn expected() -> Vec<(&'static str, Tensor)> {
    let c = Device::Cpu;
    let specials = |tiny: f64, max: f64| [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, tiny, max, 1.0 / 3.0];
    let f32s = specials(0.0, 0.0).map(|x| x as f32);
    let mut f32s = f32s.to_vec();
    f32s[5] = f32::from_bits(1);
    f32s[6] = f32::MAX;
    let mut f16s: Vec<f16> = specials(0.0, 0.0).iter().map(|&x| f16::from_f64(x)).collect();
    f16s[5] = f16::from_bits(1);
    f16s[6] = f16::MAX;
    let t = |r: tensorforge::Result<Tensor>| r.unwrap();
    vec![
        ("f32", t(Tensor::from_vec((0..24).map(|i| i as f32 * 0.5 - 3.0).collect(), (2, 3, 4), c))),
        ("f64_fortran", t(Tensor::from_vec((0..12).map(|i| i as f64 / 7.0).collect(), (3, 4), c))),
        ("f32_fortran3", t(Tensor::from_vec((0..24).map(|i| i as f32).collect(), (2, 3, 4), c))),
        (
            "f16",
            t(Tensor::from_vec((-8..8).map(|i| f16::from_f32(i as f32) / f16::from_f32(4.0)).collect(), (4, 4), c)),
        ),
        ("special_f32", t(Tensor::from_vec(f32s, 8, c))),
        ("special_f64", t(Tensor::from_vec(specials(f64::from_bits(1), f64::MAX).to_vec(), 8, c))),
        ("special_f16", t(Tensor::from_vec(f16s, 8, c))),
        ("i64", t(Tensor::from_vec(vec![i64::MIN, -1, 0, 1, i64::MAX], 5, c))),
        ("u8", t(Tensor::from_vec((0..=255u8).collect(), (16, 16), c))),
        ("bool", t(Tensor::from_vec(vec![1u8, 0, 1, 1], (2, 2), c))),
        ("scalar", t(Tensor::scalar(2.5f64, c))),
        ("empty", t(Tensor::zeros((2, 0, 3), DType::F32, c))),
    ]
}

const BF16_BITS: [u16; 7] = [0x3F80, 0xC000, 0x7F80, 0x0000, 0x8000, 0x0001, 0x7FC0];

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::F64 => t.to_vec::<f64>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t.to_vec::<f16>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::BF16 => t.to_vec::<bf16>().unwrap().iter().map(|x| x.to_bits() as u64).collect(),
        DType::I64 => t.to_vec::<i64>().unwrap().iter().map(|&x| x as u64).collect(),
        DType::U8 => t.to_vec::<u8>().unwrap().iter().map(|&x| x as u64).collect(),
    }
}

fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!((got.dtype(), got.dims()), (want.dtype(), want.dims()), "{what}");
    assert_eq!(bits(got), bits(want), "{what}");
}

fn python(py: &str, script: &Path, mode: &str, dir: &Path) {
    let out = Command::new(py).arg(script).arg(mode).arg(dir).output().expect("running the interop python");
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "io_interop.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn interop_with_numpy_and_safetensors() {
    let Ok(py) = std::env::var("TENSORFORGE_INTEROP_PYTHON") else {
        eprintln!(
            "skipping io_interop: set TENSORFORGE_INTEROP_PYTHON to a python with numpy and safetensors \
             (TENSORFORGE_INTEROP_PYTHON=$(scripts/interop-venv.sh))"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/io_interop.py");
    let dir: PathBuf = std::env::temp_dir().join(format!("tensorforge-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rust")).unwrap();

    // numpy / safetensors → tensorforge.
    python(&py, &script, "write", &dir);
    let exp = expected();
    for (name, want) in &exp {
        assert_same(&format!("{name}.npy"), &io::read_npy(dir.join(format!("npy/{name}.npy"))).unwrap(), want);
    }
    assert_eq!(io::read_npy(dir.join("npy/i32.npy")).unwrap().to_vec1::<i64>().unwrap(), vec![i32::MIN as i64, 7]);
    assert_eq!(io::read_npy(dir.join("npy/be_f8.npy")).unwrap().to_vec1::<f64>().unwrap(), vec![1.5, -2.25]);
    for npz in ["all.npz", "all_compressed.npz"] {
        let got = io::read_npz(dir.join(npz)).unwrap();
        assert_eq!(got.len(), exp.len(), "{npz}");
        for ((gn, gt), (wn, wt)) in got.iter().zip(&exp) {
            assert_eq!(gn, wn);
            assert_same(&format!("{npz}:{gn}"), gt, wt);
        }
    }
    let (st, meta) = io::safetensors::read_safetensors_with_metadata(dir.join("all.safetensors")).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("tensorforge-interop"));
    assert_eq!(meta.get("quote\"key").map(String::as_str), Some("é ü"));
    let mut sorted = exp.clone();
    sorted.sort_by_key(|(n, _)| *n);
    assert_eq!(st.len(), sorted.len());
    for ((gn, gt), (wn, wt)) in st.iter().zip(&sorted) {
        assert_eq!(gn, wn);
        assert_same(&format!("all.safetensors:{gn}"), gt, wt);
    }
    let bf = io::read_safetensors(dir.join("bf16.safetensors")).unwrap();
    assert_eq!(bf[0].0, "bf16");
    let want_bf16 = Tensor::from_vec(BF16_BITS.iter().map(|&b| bf16::from_bits(b)).collect(), 7, Device::Cpu).unwrap();
    assert_same("bf16.safetensors", &bf[0].1, &want_bf16);
    assert_eq!(bf[1].1.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);

    // tensorforge → numpy / safetensors.
    let r = dir.join("rust");
    for (name, t) in &exp {
        io::write_npy(r.join(format!("{name}.npy")), t).unwrap();
    }
    let refs: Vec<(&str, &Tensor)> = exp.iter().map(|(n, t)| (*n, t)).collect();
    io::write_npz(r.join("all.npz"), &refs).unwrap();
    io::write_npz_compressed(r.join("all_compressed.npz"), &refs).unwrap();
    let meta = BTreeMap::from([
        ("format".to_string(), "tensorforge-interop".to_string()),
        ("quote\"key".to_string(), "é ü".to_string()),
    ]);
    io::write_safetensors(r.join("all.safetensors"), &refs, Some(&meta)).unwrap();
    let f32s = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu).unwrap();
    io::write_safetensors(r.join("bf16.safetensors"), &[("bf16", &want_bf16), ("f32", &f32s)], None).unwrap();
    python(&py, &script, "check", &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
