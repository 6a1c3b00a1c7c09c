//! NumPy's `.npy` format (versions 1.0, 2.0 and 3.0).
//!
//! A file is the magic `\x93NUMPY`, a version, a header length, a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, and the raw elements.
//! See <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use super::{Elem, ElemKind, checked_size, err, read_file, tensor_from_bytes, tensor_to_bytes, with_path, write_file};
use crate::{DType, Result, Tensor};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy pads `magic + lengths + header` to a multiple of this so the data is aligned for
/// memory mapping.
const ALIGN: usize = 64;

/// Reads a `.npy` file into a contiguous CPU tensor.
///
/// Accepts header versions 1.0–3.0, C and Fortran order (a Fortran file comes back in
/// logical, row-major order), either byte order, and the dtypes `f4 f8 f2 i8 u1 b1`
/// (bool becomes U8) plus `i1 i2 i4 u2 u4`, widened to I64.
///
/// ```
/// use tensorforge::{Tensor, Device, io};
/// let path = std::env::temp_dir().join(format!("tf-npy-doc-{}.npy", std::process::id()));
/// let t = Tensor::from_vec(vec![1i64, 2, 3], 3, Device::Cpu)?;
/// io::write_npy(&path, &t)?;
/// assert_eq!(io::read_npy(&path)?.to_vec1::<i64>()?, vec![1, 2, 3]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    parse(&read_file(path)?, &path.display().to_string())
}

/// Writes a tensor as a version 1.0 `.npy` file (version 2.0 if the header needs it),
/// C order, little-endian.
///
/// BF16 has no numpy dtype, so a BF16 tensor is an error rather than a silent widening
/// that would come back as F32: save it with [`crate::io::write_safetensors`], or convert
/// it with `to_dtype(DType::F32)` first.
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_npy_bytes(t).map_err(|e| with_path(path, e))?;
    write_file(path, &bytes)
}

/// Parses the bytes of a `.npy` file. See [`read_npy`].
pub fn from_npy_bytes(bytes: &[u8]) -> Result<Tensor> {
    parse(bytes, "npy")
}

/// The bytes of a `.npy` file holding `t`. See [`write_npy`].
pub fn to_npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let descr = match t.dtype() {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::BF16 => {
            return Err(err(
                "npy",
                "numpy has no bfloat16 dtype: write BF16 tensors with io::write_safetensors \
                 (or convert with to_dtype(DType::F32) first)",
            ));
        }
    };
    let shape = match t.dims() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let data = tensor_to_bytes(t)?;
    // Version 1.0 stores the header length in a u16; 2.0 in a u32.
    let v1 = MAGIC.len() + 2 + 2 + header.len() < u16::MAX as usize;
    let prefix = MAGIC.len() + 2 + if v1 { 2 } else { 4 };
    let pad = (ALIGN - (prefix + header.len() + 1) % ALIGN) % ALIGN;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let mut out = crate::backend::cpu::pool::try_with_capacity("npy", prefix + header.len() + data.len())?;
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Parses `.npy` bytes; `ctx` names the file or npz entry in errors.
pub(crate) fn parse(bytes: &[u8], ctx: &str) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err(ctx, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => return Err(err(ctx, format!("unsupported .npy version {major}.{minor}"))),
    };
    if bytes.len() < 8 + len_bytes {
        return Err(err(ctx, "truncated .npy header"));
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    let start = 8 + len_bytes;
    let Some(header) = bytes.get(start..start.saturating_add(header_len)) else {
        return Err(err(
            ctx,
            format!("header length {header_len} runs past the end of the file ({} bytes)", bytes.len()),
        ));
    };
    // 1.0 and 2.0 headers are latin-1 (in practice ASCII); 3.0 is UTF-8.
    let header = if utf8 {
        std::str::from_utf8(header).map_err(|_| err(ctx, "header is not valid UTF-8"))?
    } else if header.is_ascii() {
        std::str::from_utf8(header).map_err(|_| err(ctx, "header is not ASCII"))?
    } else {
        return Err(err(ctx, "header is not ASCII (a version 1.0/2.0 header must be)"));
    };
    let h = parse_header(header).map_err(|m| err(ctx, format!("bad header {:?}: {m}", truncate(header))))?;
    let elem = parse_descr(&h.descr).map_err(|m| err(ctx, m))?;
    let data = &bytes[start + header_len..];
    let (_, nbytes) = checked_size(ctx, &h.shape, elem)?;
    if data.len() != nbytes {
        return Err(err(
            ctx,
            format!("shape {:?} of {} needs {nbytes} data bytes, the file has {}", h.shape, h.descr, data.len()),
        ));
    }
    if !h.fortran_order || h.shape.len() < 2 {
        return tensor_from_bytes(ctx, data, elem, &h.shape);
    }
    // Column-major data is the row-major data of the reversed shape; reversing the axes
    // again gives the logical array, copied into row-major order.
    let reversed: Vec<usize> = h.shape.iter().rev().copied().collect();
    let t = tensor_from_bytes(ctx, data, elem, &reversed)?;
    let perm: Vec<usize> = (0..reversed.len()).rev().collect();
    t.permute(&perm)?.copy()
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn parse_descr(d: &str) -> std::result::Result<Elem, String> {
    let bad = || format!("unsupported dtype descr {d:?} (supported: <f4 <f8 <f2 <i8 |u1 |b1, and i1 i2 i4 u2 u4)");
    let mut chars = d.chars();
    let (order, code) = match chars.next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, chars.as_str()),
        _ => ('=', d),
    };
    let (dtype, kind) = match code {
        "f4" => (DType::F32, ElemKind::Native),
        "f8" => (DType::F64, ElemKind::Native),
        "f2" | "e" => (DType::F16, ElemKind::Native),
        "i8" => (DType::I64, ElemKind::Native),
        "u1" | "B" => (DType::U8, ElemKind::Native),
        "b1" | "?" => (DType::U8, ElemKind::Bool),
        "i1" | "b" => (DType::I64, ElemKind::Int(1, true)),
        "i2" => (DType::I64, ElemKind::Int(2, true)),
        "i4" => (DType::I64, ElemKind::Int(4, true)),
        "u2" => (DType::I64, ElemKind::Int(2, false)),
        "u4" => (DType::I64, ElemKind::Int(4, false)),
        "u8" => return Err(format!("dtype {d:?} (uint64) does not fit I64 losslessly; convert it in numpy first")),
        _ => return Err(bad()),
    };
    let elem = Elem { dtype, kind, big_endian: order == '>' };
    // '=' (native order of the writing machine) is ambiguous in a file unless the
    // element is a single byte.
    if order == '=' && elem.size() > 1 {
        return Err(format!("dtype descr {d:?} has no explicit byte order"));
    }
    Ok(elem)
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dict: the literal subset numpy writes.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header's dict literal. Strict: exactly the three keys, each once.
fn parse_header(s: &str) -> std::result::Result<Header, String> {
    let mut p = Lit { s: s.as_bytes(), i: 0 };
    p.ws();
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        if !matches!(key.as_str(), "descr" | "fortran_order" | "shape") {
            return Err(format!("unexpected key {key:?}"));
        }
        p.ws();
        p.expect(b':')?;
        p.ws();
        let value = p.value()?;
        let slot_taken = match (key.as_str(), value) {
            ("descr", Value::Str(v)) => descr.replace(v).is_some(),
            ("fortran_order", Value::Bool(v)) => fortran.replace(v).is_some(),
            ("shape", Value::Tuple(v)) => shape.replace(v).is_some(),
            _ => return Err(format!("key {key:?} has the wrong type")),
        };
        if slot_taken {
            return Err(format!("duplicate key {key:?}"));
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the dict".into());
    }
    Ok(Header {
        descr: descr.ok_or("missing key 'descr'")?,
        fortran_order: fortran.ok_or("missing key 'fortran_order'")?,
        shape: shape.ok_or("missing key 'shape'")?,
    })
}

/// A cursor over a Python literal.
struct Lit<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lit<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += hit as usize;
        hit
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) { Ok(()) } else { Err(format!("expected {:?} at offset {}", c as char, self.i)) }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at offset {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        // numpy's keys and descrs never hold quotes or escapes; refuse rather than guess.
        while let Some(c) = self.peek() {
            if c == q {
                let v = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "string is not UTF-8")?;
                self.i += 1;
                return Ok(v.to_string());
            }
            if c == b'\\' {
                return Err("escapes in header strings are not supported".into());
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }
    fn word(&mut self, w: &str) -> bool {
        let hit = self.s[self.i..].starts_with(w.as_bytes());
        if hit {
            self.i += w.len();
        }
        hit
    }
    fn value(&mut self) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => self.tuple().map(Value::Tuple),
            _ if self.word("True") => Ok(Value::Bool(true)),
            _ if self.word("False") => Ok(Value::Bool(false)),
            _ => Err(format!(
                "unsupported value at offset {} (expected a string, True/False or a tuple of ints; \
                 structured dtypes are not supported)",
                self.i
            )),
        }
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                // `(3)` is an int in Python, not a tuple; numpy writes `(3,)`.
                return Ok(dims);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if start == self.i {
                return Err(format!("expected a dimension at offset {}", self.i));
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "bad digits")?;
            let d: usize = digits.parse().map_err(|_| format!("dimension {digits} is too large"))?;
            // Python 2 numpy wrote longs as `3L`.
            self.eat(b'L');
            dims.push(d);
            if dims.len() > 64 {
                return Err("too many dimensions".into());
            }
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                if dims.len() == 1 {
                    return Err("a one-element shape must be written `(n,)`".into());
                }
                return Ok(dims);
            }
        }
    }
}
