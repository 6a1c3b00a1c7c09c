//! `.npy`, `.npz` and safetensors: round trips for every dtype and odd shapes, byte-level
//! checks against what numpy and the reference safetensors writer produce, hostile inputs
//! (each an error, never a panic), a fuzzer, and the replayed corpus of found bad cases
//! in `tests/fixtures/io/`.

use half::{bf16, f16};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use tensorforge::{DType, Device, Error, Result, Tensor, io};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tensorforge-io-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The elements' bit patterns, so that NaNs and -0.0 compare exactly.
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

fn assert_same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.dtype(), b.dtype());
    assert_eq!(a.dims(), b.dims());
    assert_eq!(bits(a), bits(b));
}

const SHAPES: &[&[usize]] = &[&[], &[0], &[5], &[2, 0, 3], &[2, 3, 4], &[1, 1, 1, 1, 2, 1, 1, 3]];

/// A tensor of `dtype` and `shape` with awkward values: negatives, extremes, NaN, -0.
fn sample(dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let specials = [0.0, -0.0, 1.5, -2.25, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 65504.0, 1e-7, 3.0];
    let d = Device::Cpu;
    match dtype {
        DType::F32 => Tensor::from_vec((0..n).map(|i| specials[i % 10] as f32).collect(), shape, d),
        DType::F64 => Tensor::from_vec((0..n).map(|i| specials[i % 10] / 3.0).collect(), shape, d),
        DType::F16 => Tensor::from_vec((0..n).map(|i| f16::from_f64(specials[i % 10])).collect(), shape, d),
        DType::BF16 => Tensor::from_vec((0..n).map(|i| bf16::from_f64(specials[i % 10])).collect(), shape, d),
        DType::I64 => {
            let v = [0, -1, i64::MIN, i64::MAX, 42];
            Tensor::from_vec((0..n).map(|i| v[i % 5]).collect(), shape, d)
        }
        DType::U8 => Tensor::from_vec((0..n).map(|i| (i * 37 % 256) as u8).collect(), shape, d),
    }
    .unwrap()
}

// ---- npy -----------------------------------------------------------------------------

#[test]
fn npy_round_trip_every_dtype_and_shape() -> Result<()> {
    for dtype in DType::ALL.into_iter().filter(|&d| d != DType::BF16) {
        for shape in SHAPES {
            let t = sample(dtype, shape);
            let bytes = io::to_npy_bytes(&t)?;
            assert_eq!(bytes.len() % 64, (t.elem_count() * dtype.size_in_bytes()) % 64, "64-aligned header");
            assert_same(&io::from_npy_bytes(&bytes)?, &t);
        }
    }
    let p = tmp("a.npy");
    let t = sample(DType::F64, &[3, 4]);
    io::write_npy(&p, &t)?;
    assert_same(&io::read_npy(&p)?, &t);
    Ok(())
}

#[test]
fn npy_writes_a_non_contiguous_view_in_logical_order() -> Result<()> {
    let t = Tensor::from_vec((0..6).map(|x| x as f32).collect(), (2, 3), Device::Cpu)?.t()?;
    let back = io::from_npy_bytes(&io::to_npy_bytes(&t)?)?;
    assert_eq!(back.to_vec2::<f32>()?, vec![vec![0., 3.], vec![1., 4.], vec![2., 5.]]);
    Ok(())
}

#[test]
fn npy_header_matches_numpy_byte_for_byte() -> Result<()> {
    // np.save of np.zeros((2, 3), np.float32): 128 bytes of header, then the data.
    let bytes = io::to_npy_bytes(&Tensor::zeros((2, 3), DType::F32, Device::Cpu)?)?;
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    let mut want = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    want.extend_from_slice(dict.as_bytes());
    want.resize(127, b' ');
    want.push(b'\n');
    assert_eq!(&bytes[..128], &want[..]);
    assert_eq!(bytes.len(), 128 + 24);
    let scalar = io::to_npy_bytes(&Tensor::scalar(1u8, Device::Cpu)?)?;
    assert!(String::from_utf8_lossy(&scalar).contains("'descr': '|u1', 'fortran_order': False, 'shape': (), }"));
    let vec1 = io::to_npy_bytes(&Tensor::zeros(7, DType::I64, Device::Cpu)?)?;
    assert!(String::from_utf8_lossy(&vec1).contains("'shape': (7,), }"));
    Ok(())
}

#[test]
fn npy_bf16_is_an_error_pointing_to_safetensors() {
    let e = io::to_npy_bytes(&sample(DType::BF16, &[2])).unwrap_err();
    assert!(e.to_string().contains("safetensors"), "{e}");
    let p = tmp("bf16.npy");
    let e = io::write_npy(&p, &sample(DType::BF16, &[2])).unwrap_err();
    assert!(matches!(&e, Error::Io { context, .. } if context.contains("bf16.npy")), "{e}");
}

/// A `.npy` file with a hand-written header (any version) and data.
fn npy_file(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    let header = format!("{dict}\n");
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_fortran_order_comes_back_in_logical_order() -> Result<()> {
    // The 2x3 array [[0,1,2],[3,4,5]] stored column by column.
    let data = le_f32(&[0., 3., 1., 4., 2., 5.]);
    let f = npy_file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &data);
    let t = io::from_npy_bytes(&f)?;
    assert!(t.is_contiguous());
    assert_eq!(t.to_vec2::<f32>()?, vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    // Rank 3: element [i, j, k] sits at i + 2j + 6k.
    let data: Vec<f32> = (0..24).map(|x| x as f32).collect();
    let f = npy_file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }", &le_f32(&data));
    let got = io::from_npy_bytes(&f)?.to_vec::<f32>()?;
    let want: Vec<f32> =
        (0..2).flat_map(|i| (0..3).flat_map(move |j| (0..4).map(move |k| (i + 2 * j + 6 * k) as f32))).collect();
    assert_eq!(got, want);
    let f = npy_file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 0), }", &[]);
    assert_eq!(io::from_npy_bytes(&f)?.dims(), &[2, 0]);
    Ok(())
}

#[test]
fn npy_versions_byte_orders_and_narrow_dtypes() -> Result<()> {
    let data = le_f32(&[1.5, -2.0]);
    for v in [1, 2, 3] {
        let f = npy_file(v, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &data);
        assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<f32>()?, vec![1.5, -2.0]);
    }
    // Big-endian is byte-swapped.
    let be: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    let f = npy_file(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }", &be);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<f64>()?, vec![1.5, -2.0]);
    let be: Vec<u8> = [-3i32, 7].iter().flat_map(|x| x.to_be_bytes()).collect();
    let f = npy_file(1, "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", &be);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<i64>()?, vec![-3, 7]);
    // Bools become 0/1 bytes; narrow integers widen to i64 with their sign.
    let f = npy_file(1, "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", &[1, 0, 2]);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<u8>()?, vec![1, 0, 1]);
    let f = npy_file(1, "{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", &[0xff, 0x7f]);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<i64>()?, vec![-1, 127]);
    let f = npy_file(1, "{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }", &[0xff, 0xff]);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<i64>()?, vec![65535]);
    let f = npy_file(1, "{'descr': '<u4', 'fortran_order': False, 'shape': (1,), }", &[0xff; 4]);
    assert_eq!(io::from_npy_bytes(&f)?.to_vec1::<i64>()?, vec![u32::MAX as i64]);
    // Key order and spacing are free; Python 2 longs are accepted.
    let f = npy_file(1, "{ \"shape\":(2L,),'fortran_order':False,'descr':'<f4'}", &data);
    assert_eq!(io::from_npy_bytes(&f)?.dims(), &[2]);
    Ok(())
}

/// `f` must be an `Error::Io` whose message contains `needle`.
fn assert_io_err<T: std::fmt::Debug>(r: Result<T>, needle: &str) {
    match r {
        Err(Error::Io { msg, context }) => {
            assert!(msg.contains(needle) || context.contains(needle), "{context}: {msg} lacks {needle:?}")
        }
        other => panic!("expected an Io error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn npy_hostile_inputs_are_errors() {
    let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    let data = le_f32(&[1.0, 2.0]);
    let good = npy_file(1, ok, &data);
    assert_io_err(io::from_npy_bytes(&[]), "magic");
    assert_io_err(io::from_npy_bytes(b"PK\x03\x04 not npy at all"), "magic");
    for cut in [6, 9, 20, good.len() - 1] {
        assert!(io::from_npy_bytes(&good[..cut]).is_err(), "truncated at {cut}");
    }
    let mut extra = good.clone();
    extra.push(0);
    assert_io_err(io::from_npy_bytes(&extra), "needs 8 data bytes");
    let mut v9 = good.clone();
    v9[6] = 9;
    assert_io_err(io::from_npy_bytes(&v9), "version 9");
    // A header length past the end of the file.
    let mut long = good.clone();
    long[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    assert_io_err(io::from_npy_bytes(&long), "past the end");
    let mut long = npy_file(2, ok, &data);
    long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_io_err(io::from_npy_bytes(&long), "past the end");
    let cases: &[(&str, &str)] = &[
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }", "needs 4398046511104"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", "more"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", "too large"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1,2), }", "rank 10"),
        ("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", "unsupported dtype"),
        ("{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }", "uint64"),
        ("{'descr': '=f4', 'fortran_order': False, 'shape': (2,), }", "byte order"),
        ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "structured"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", "unexpected key"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'descr': '<f4'}", "duplicate"),
        ("{'descr': '<f4', 'shape': (2,), }", "missing key 'fortran_order'"),
        ("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", "unsupported value"),
        ("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2,), }", "wrong type"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", "(n,)"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", "dimension"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) } junk", "trailing"),
        ("{'descr': '<f4\\', 'fortran_order': False, 'shape': (2,), }", "escape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,", "expected"),
    ];
    for (dict, needle) in cases {
        assert_io_err(io::from_npy_bytes(&npy_file(1, dict, &data)), needle);
    }
    // Non-ASCII in a 1.0 header, invalid UTF-8 in a 3.0 one.
    let mut f = npy_file(1, ok, &data);
    f[12] = 0xE9;
    assert_io_err(io::from_npy_bytes(&f), "ASCII");
    let mut f = npy_file(3, ok, &data);
    f[14] = 0xFF;
    assert_io_err(io::from_npy_bytes(&f), "UTF-8");
    assert_io_err(io::read_npy(tmp("does-not-exist.npy")), "does-not-exist.npy");
}

// ---- safetensors ---------------------------------------------------------------------

#[test]
fn safetensors_round_trip_every_dtype_shape_and_metadata() -> Result<()> {
    let mut named = Vec::new();
    for dtype in DType::ALL {
        for (i, shape) in SHAPES.iter().enumerate() {
            named.push((format!("{}.{i}", dtype.as_str()), sample(dtype, shape)));
        }
    }
    named.reverse();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("q\"uote\n".into(), "é\u{1}".into())]);
    let bytes = io::to_safetensors_bytes(&refs, Some(&meta))?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let (back, meta_back) = io::safetensors::from_safetensors_bytes_with_metadata(&bytes)?;
    assert_eq!(meta_back, meta);
    named.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(back.len(), named.len());
    for ((n1, t1), (n2, t2)) in back.iter().zip(&named) {
        assert_eq!(n1, n2);
        assert_same(t1, t2);
    }
    let p = tmp("named.safetensors");
    io::save_named(&p, &named)?;
    let loaded = io::load_named(&p)?;
    assert_eq!(loaded.len(), named.len());
    assert_eq!(io::read_safetensors(&p)?.len(), named.len());
    // save_named keeps the order in the metadata; load_named returns it.
    assert_eq!(loaded.iter().map(|(n, _)| n).collect::<Vec<_>>(), named.iter().map(|(n, _)| n).collect::<Vec<_>>());
    assert_eq!(io::safetensors::read_safetensors_with_metadata(&p)?.1.len(), 1);
    Ok(())
}

#[test]
fn safetensors_layout_matches_the_reference_writer() -> Result<()> {
    let a = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu)?;
    let b = Tensor::scalar(3i64, Device::Cpu)?;
    let bytes = io::to_safetensors_bytes(&[("b", &b), ("a", &a)], None)?;
    // What `safetensors` 0.8 writes for {"b": int64 scalar, "a": float32 [1, 2]}: dtypes from
    // the widest down, then names.
    let header = r#"{"b":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let padded = format!("{header}{}", " ".repeat((8 - header.len() % 8) % 8));
    assert_eq!(&bytes[8..8 + padded.len()], padded.as_bytes());
    assert_eq!(bytes.len(), 8 + padded.len() + 16);
    assert_io_err(io::to_safetensors_bytes(&[("a", &a), ("a", &b)], None), "twice");
    assert_io_err(io::to_safetensors_bytes(&[("__metadata__", &a)], None), "reserved");
    Ok(())
}

/// A safetensors file from a header string and a data buffer.
fn st_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn safetensors_reads_foreign_headers_bool_and_narrow_ints() -> Result<()> {
    let h = r#" {"m": {"shape": [3], "data_offsets": [8, 11], "dtype": "BOOL", "x": 1},
        "i": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {}}"#;
    let mut data: Vec<u8> = [-5i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
    data.extend_from_slice(&[1, 0, 7]);
    let t = io::from_safetensors_bytes(&st_file(h.trim_start(), &data))?;
    assert_eq!(t[0].0, "i");
    assert_eq!(t[0].1.to_vec1::<i64>()?, vec![-5, 9]);
    assert_eq!(t[1].1.to_vec1::<u8>()?, vec![1, 0, 1]);
    Ok(())
}

#[test]
fn safetensors_hostile_inputs_are_errors() {
    let t = |h: &str, d: &[u8]| io::from_safetensors_bytes(&st_file(h, d));
    let f = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(t(f, &[0; 8]).is_ok());
    assert_io_err(io::from_safetensors_bytes(&[1, 2, 3]), "too short");
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert_io_err(io::from_safetensors_bytes(&huge), "limit");
    let mut past = 50u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    assert_io_err(io::from_safetensors_bytes(&past), "past the end");
    let cases: &[(&str, usize, &str)] = &[
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 7, "cover 8 bytes"),
        (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8, "hold 8 bytes"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 9, "cover 8 bytes"),
        (r#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,8]}}"#, 8, "needs 4398046511104"),
        (r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#, 8, "more"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#, 8, "hold"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}"#, 8, "data_offsets"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, 8, "backwards"),
        (
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
            "overlaps",
        ),
        (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8, "gap"),
        (r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, 8, "non-negative"),
        (r#"{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, 8, "non-negative"),
        (r#"{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#, 8, "unsupported dtype"),
        (r#"{"a":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#, 8, "unsupported dtype"),
        (r#"{"a":{"dtype":"F32","data_offsets":[0,8]}}"#, 8, "missing \"shape\""),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}"#, 8, "pair"),
        (r#"{"a":[1,2]}"#, 0, "not an object"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{}}"#, 8, "duplicate"),
        (r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
        (r#"{"__metadata__":[]}"#, 0, "not an object"),
        (r#"["a"]"#, 0, "start with"),
        (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#, 8, "JSON"),
        (r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}"#, 4, "rank 9"),
    ];
    for (h, n, needle) in cases {
        assert_io_err(t(h, &vec![0; *n]), needle);
    }
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_io_err(t(&deep, &[]), "nesting");
    let mut bad_utf8 = st_file(r#"{"a":{}}"#, &[]);
    bad_utf8[11] = 0xFF;
    assert_io_err(io::from_safetensors_bytes(&bad_utf8), "UTF-8");
}

// ---- npz -----------------------------------------------------------------------------

#[test]
fn npz_round_trip() -> Result<()> {
    let ts: Vec<(String, Tensor)> = DType::ALL
        .into_iter()
        .filter(|&d| d != DType::BF16)
        .flat_map(|d| SHAPES.iter().enumerate().map(move |(i, s)| (format!("{}_{i}", d.as_str()), sample(d, s))))
        .collect();
    let mut refs: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let é = sample(DType::F32, &[2]);
    refs.push(("nön-ascii/ключ", &é));
    let p = tmp("a.npz");
    io::write_npz(&p, &refs)?;
    let back = io::read_npz(&p)?;
    assert_eq!(back.len(), refs.len());
    for ((n1, t1), (n2, t2)) in back.iter().zip(&refs) {
        assert_eq!(n1, n2);
        assert_same(t1, t2);
    }
    assert_eq!(io::from_npz_bytes(&io::to_npz_bytes(&[])?)?.len(), 0);
    assert_io_err(io::to_npz_bytes(&[("x", &é), ("x", &é)]), "twice");
    let e = io::write_npz(tmp("bf16.npz"), &[("w", &sample(DType::BF16, &[2]))]).unwrap_err();
    assert!(e.to_string().contains("w.npy") && e.to_string().contains("safetensors"), "{e}");
    Ok(())
}

#[test]
fn npz_reads_numpy_savez_and_savez_compressed() -> Result<()> {
    // Written by numpy 2 (see tests/fixtures/io/README.md): a = arange(24) f32 (2,3,4),
    // b = a Fortran-ordered (3,5) f64, c = [True, False, True], d = zeros(1000) i64 with
    // d[::7] = arange(143) (compressed only), e = f16 scalar 3.5.
    let comp = io::read_npz(fixtures().join("ok-compressed.npz"))?;
    let stored = io::read_npz(fixtures().join("ok-stored-numpy.npz"))?;
    let names: Vec<&str> = comp.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(comp[0].1.dims(), &[2, 3, 4]);
    assert_eq!(comp[0].1.to_vec::<f32>()?, (0..24).map(|x| x as f32).collect::<Vec<_>>());
    assert_eq!(comp[1].1.dims(), &[3, 5]);
    assert_same(&comp[1].1, &stored[1].1);
    assert_eq!(comp[2].1.to_vec1::<u8>()?, vec![1, 0, 1]);
    let d: Vec<i64> = (0..1000).map(|i| if i % 7 == 0 { i / 7 } else { 0 }).collect();
    assert_eq!(comp[3].1.to_vec1::<i64>()?, d);
    assert_eq!(comp[4].1.to_scalar::<f16>()?, f16::from_f32(3.5));
    for i in [0, 2] {
        assert_same(&comp[i].1, &stored[i].1);
    }
    assert_same(&comp[4].1, &stored[3].1);
    Ok(())
}

#[test]
fn npz_hostile_inputs_are_errors() -> Result<()> {
    let x = sample(DType::F32, &[4]);
    let good = io::to_npz_bytes(&[("x", &x)])?;
    assert!(io::from_npz_bytes(&good).is_ok());
    assert_io_err(io::from_npz_bytes(b""), "not a zip");
    assert_io_err(io::from_npz_bytes(&good[..good.len() - 1]), "not a zip");
    let find = |sig: &[u8]| good.windows(4).rposition(|w| w == sig).unwrap();
    let (cd, end) = (find(b"PK\x01\x02"), find(b"PK\x05\x06"));
    let patch = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    // Data: a flipped byte fails the CRC.
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 1;
    assert!(io::from_npz_bytes(&flipped).is_err());
    assert_io_err(io::from_npz_bytes(&patch(cd + 16, &0u32.to_le_bytes())), "CRC");
    // Sizes and offsets pointing outside the archive.
    assert_io_err(io::from_npz_bytes(&patch(cd + 24, &1_000_000u32.to_le_bytes())), "declares");
    assert_io_err(io::from_npz_bytes(&patch(cd + 20, &1_000_000u32.to_le_bytes())), "runs past");
    let mut both = patch(cd + 20, &1_000_000u32.to_le_bytes());
    both[cd + 24..cd + 28].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert_io_err(io::from_npz_bytes(&both), "runs past");
    assert_io_err(io::from_npz_bytes(&patch(cd + 42, &5u32.to_le_bytes())), "signature");
    assert_io_err(io::from_npz_bytes(&patch(cd + 42, &0xFFFF_FFF0u32.to_le_bytes())), "outside");
    assert_io_err(io::from_npz_bytes(&patch(end + 16, &(good.len() as u32).to_le_bytes())), "outside the file");
    assert_io_err(io::from_npz_bytes(&patch(end + 10, &2u16.to_le_bytes())), "central directory");
    assert_io_err(io::from_npz_bytes(&patch(end + 10, &u16::MAX.to_le_bytes())), "zip64");
    assert_io_err(io::from_npz_bytes(&patch(cd + 10, &12u16.to_le_bytes())), "method 12");
    assert_io_err(io::from_npz_bytes(&patch(cd + 8, &1u16.to_le_bytes())), "encrypted");
    // A deflated member declaring an impossible expansion, and garbage deflate data.
    let mut bomb = patch(cd + 10, &8u16.to_le_bytes());
    bomb[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_io_err(io::from_npz_bytes(&bomb), "zip64");
    bomb[cd + 24..cd + 28].copy_from_slice(&4_000_000_000u32.to_le_bytes());
    assert_io_err(io::from_npz_bytes(&bomb), "impossible");
    assert_io_err(io::from_npz_bytes(&patch(cd + 10, &8u16.to_le_bytes())), "inflates to");
    // A name without .npy, and two directory entries sharing one member's data.
    let mut named = good.clone();
    let name_at = cd + 46;
    named[name_at + 2] = b'z';
    assert_io_err(io::from_npz_bytes(&named), "not a .npy");
    let two = io::to_npz_bytes(&[("x", &x), ("y", &x)])?;
    let cd2 = two.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let cd2b = two.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    let mut shared = two.clone();
    let first_off = two[cd2 + 42..cd2 + 46].to_vec();
    shared[cd2b + 42..cd2b + 46].copy_from_slice(&first_off);
    assert_io_err(io::from_npz_bytes(&shared), "overlaps");
    // A member that is not a valid .npy reports the member's name.
    let e = io::from_npz_bytes(&patch(find(b"\x93NUM"), b"\x93NOPE")).unwrap_err();
    assert!(e.to_string().contains("x.npy"), "{e}");
    Ok(())
}

// ---- fuzzing -------------------------------------------------------------------------

/// SplitMix64: a tiny, good-enough generator for mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

type Reader = fn(&[u8]) -> bool;
const READERS: [(&str, Reader); 3] = [
    ("npy", |b| io::from_npy_bytes(b).is_ok()),
    ("npz", |b| io::from_npz_bytes(b).is_ok()),
    ("safetensors", |b| io::from_safetensors_bytes(b).is_ok()),
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(len);
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 << rng.below(8);
                    }
                }
            }
            1 => b.truncate(rng.below(len + 1)),
            2 => {
                // Splice a chunk of another valid file in.
                let (s, n) = (rng.below(other.len()), rng.below(64));
                let chunk = &other[s..(s + n).min(other.len())];
                let at = rng.below(len + 1);
                b.splice(at..(at + chunk.len()).min(len), chunk.iter().copied());
            }
            3 => {
                let at = rng.below(len + 1);
                let n = rng.below(16);
                b.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
            4 => {
                let at = rng.below(len + 1);
                b.drain(at..(at + rng.below(16)).min(len));
            }
            5 => {
                // An interesting integer at a random offset: sizes and counts live there.
                let vals = [0u64, 1, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, u64::MAX, len as u64];
                let v = vals[rng.below(vals.len())].to_le_bytes();
                let w = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(len);
                for (k, &x) in v[..w].iter().enumerate() {
                    if let Some(y) = b.get_mut(at + k) {
                        *y = x;
                    }
                }
            }
            6 => {
                // An ASCII digit or JSON/Python punctuation: the headers are text.
                let chars = b"0123456789[]{}(),:\"' -e.";
                if let Some(y) = b.get_mut(rng.below(len)) {
                    *y = chars[rng.below(chars.len())];
                }
            }
            _ => {
                let i = rng.below(len);
                if let Some(x) = b.get_mut(i) {
                    *x = rng.next() as u8;
                }
            }
        }
    }
    b
}

fn seeds() -> Vec<Vec<u8>> {
    let f = Device::Cpu;
    let a = Tensor::from_vec((0..12).map(|x| x as f32 - 3.0).collect(), (3, 4), f).unwrap();
    let b = sample(DType::I64, &[2, 0, 3]);
    let c = sample(DType::F16, &[]);
    let d = sample(DType::BF16, &[5]);
    let u = sample(DType::U8, &[7]);
    let fortran = npy_file(1, "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }", &le_f32(&[0.; 6]));
    let mut s = vec![
        io::to_npy_bytes(&a).unwrap(),
        io::to_npy_bytes(&b).unwrap(),
        io::to_npy_bytes(&c).unwrap(),
        fortran,
        io::to_npz_bytes(&[("a", &a), ("b", &b), ("u", &u)]).unwrap(),
        io::to_safetensors_bytes(
            &[("a", &a), ("b", &b), ("c", &c), ("d", &d)],
            Some(&BTreeMap::from([("k".to_string(), "v".to_string())])),
        )
        .unwrap(),
    ];
    for f in ["ok-compressed.npz", "ok-stored-numpy.npz"] {
        s.push(std::fs::read(fixtures().join(f)).unwrap());
    }
    s
}

/// Runs every reader over random bytes and mutated valid files; any panic fails the test
/// and the input is saved in `tests/fixtures/io/` so that `replay_fixture_corpus` keeps
/// replaying it after the fix. `TENSORFORGE_FUZZ_ITERS` (default 10000) sets the mutations
/// per reader and seed; `TENSORFORGE_FUZZ_SEED` varies the stream.
#[test]
fn fuzz_readers_never_panic() {
    let iters: usize = std::env::var("TENSORFORGE_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = std::env::var("TENSORFORGE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng(seed);
    let seeds = seeds();
    let mut panics = Vec::new();
    let mut oks = 0usize;
    let mut runs = 0usize;
    for (name, read) in READERS {
        let mut inputs: Vec<Vec<u8>> =
            (0..iters / 10).map(|_| (0..rng.below(200)).map(|_| rng.next() as u8).collect()).collect();
        for s in &seeds {
            for _ in 0..iters {
                let other = &seeds[rng.below(seeds.len())];
                inputs.push(mutate(&mut rng, s, other));
            }
        }
        for input in inputs {
            runs += 1;
            match catch_unwind(AssertUnwindSafe(|| read(&input))) {
                Ok(ok) => oks += ok as usize,
                Err(_) => {
                    let hash = input
                        .iter()
                        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
                    let path = fixtures().join(format!("crash-{name}-{hash:016x}.bin"));
                    let _ = std::fs::write(&path, &input);
                    panics.push(path);
                }
            }
        }
    }
    eprintln!("fuzz: {runs} inputs, {oks} parsed, {} panics", panics.len());
    assert!(panics.is_empty(), "readers panicked; inputs saved as {panics:?}");
}

/// Every file in `tests/fixtures/io/`: `ok-*` must parse with its reader; everything else
/// (`crash-<reader>-*` found by the fuzzer, `bad-<reader>-*` written by hand) runs through
/// every reader without a panic and must not parse with its own.
#[test]
fn replay_fixture_corpus() {
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        if file.ends_with(".md") {
            continue;
        }
        n += 1;
        for (name, read) in READERS {
            let r = catch_unwind(AssertUnwindSafe(|| read(&bytes)));
            let ok = r.unwrap_or_else(|_| panic!("{name} reader panicked on {file}"));
            if file.starts_with(&format!("crash-{name}-")) || file.starts_with(&format!("bad-{name}-")) {
                assert!(!ok, "{file} parsed");
            }
        }
        if file.starts_with("ok-") && file.ends_with(".npz") {
            io::read_npz(&path).unwrap();
        }
    }
    assert!(n >= 2, "fixture corpus missing");
}

/// Every tensor's data starts at a multiple of its element size (wider dtypes first, as the
/// reference writer orders them), with no gap: zero-copy readers can view each in place.
#[test]
fn safetensors_data_is_aligned_to_each_dtype() -> Result<()> {
    let named = [
        ("a_u8", sample(DType::U8, &[3])),
        ("b_f16", sample(DType::F16, &[3])),
        ("c_f32", sample(DType::F32, &[1])),
        ("d_f64", sample(DType::F64, &[2])),
        ("e_bf16", sample(DType::BF16, &[1])),
        ("f_i64", sample(DType::I64, &[1])),
    ];
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (*n, t)).collect();
    let bytes = io::to_safetensors_bytes(&refs, None)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header_len) % 8, 0, "the data buffer starts 8-aligned");
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let mut spans = Vec::new();
    for (name, t) in &named {
        let at = header.find(&format!("\"{name}\"")).unwrap();
        let offsets = &header[at..][header[at..].find("\"data_offsets\":[").unwrap() + 16..];
        let mut it = offsets[..offsets.find(']').unwrap()].split(',').map(|v| v.parse::<usize>().unwrap());
        let (start, end) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(start % t.dtype().size_in_bytes(), 0, "{name} starts at {start}");
        spans.push((start, end));
    }
    spans.sort();
    assert_eq!(spans[0].0, 0);
    assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "no gaps: {spans:?}");
    // And it still reads back, sorted by name.
    let back = io::from_safetensors_bytes(&bytes)?;
    for ((n, t), (m, u)) in named.iter().zip(&back) {
        assert_eq!(*n, m.as_str());
        assert_same(t, u);
    }
    Ok(())
}
