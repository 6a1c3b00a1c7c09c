//! Hugging Face's safetensors format.
//!
//! A file is an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, …,
//! "__metadata__": {"k": "v"}}`), then the data buffer the offsets index.
//! See <https://github.com/huggingface/safetensors>.

use super::json::{self, Json};
use super::{Elem, ElemKind, checked_size, err, read_file, tensor_from_bytes, tensor_to_bytes, with_path, write_file};
use crate::{DType, Result, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// The reference implementation refuses headers above 100 MB; so do we, before parsing.
const MAX_HEADER: u64 = 100_000_000;
const METADATA_KEY: &str = "__metadata__";

/// Tensors with their names, as the readers return them.
pub type Named = Vec<(String, Tensor)>;

/// Reads every tensor of a safetensors file, sorted by name, as contiguous CPU tensors.
///
/// Dtypes F32 F64 F16 BF16 I64 U8 come back as themselves, BOOL as U8, and I8 I16 I32
/// U16 U32 widened to I64; any other dtype is an error naming it.
///
/// ```
/// use tensorforge::{Tensor, Device, DType, io};
/// let path = std::env::temp_dir().join(format!("tf-st-doc-{}.safetensors", std::process::id()));
/// let a = Tensor::ones((2, 3), DType::BF16, Device::Cpu)?;
/// let b = Tensor::from_vec(vec![7i64], (), Device::Cpu)?;
/// io::write_safetensors(&path, &[("b", &b), ("a", &a)], None)?;
/// let back = io::read_safetensors(&path)?;
/// assert_eq!(back[0].0, "a");
/// assert_eq!(back[0].1.dtype(), DType::BF16);
/// assert_eq!(back[1].1.to_scalar::<i64>()?, 7);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Named> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// Like [`read_safetensors`], also returning the `__metadata__` strings (empty if none).
pub fn read_safetensors_with_metadata(path: impl AsRef<Path>) -> Result<(Named, BTreeMap<String, String>)> {
    let path = path.as_ref();
    parse(&read_file(path)?, &path.display().to_string())
}

/// Parses the bytes of a safetensors file. See [`read_safetensors`].
pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Named> {
    Ok(parse(bytes, "safetensors")?.0)
}

/// Parses the bytes of a safetensors file, with its metadata.
pub fn from_safetensors_bytes_with_metadata(bytes: &[u8]) -> Result<(Named, BTreeMap<String, String>)> {
    parse(bytes, "safetensors")
}

/// Writes tensors (any dtype, any device) to a safetensors file in the reference writer's
/// order (wider dtypes first, then by name, so every tensor's data is aligned to its element
/// size; byte for byte what `safetensors` writes), with an optional
/// `__metadata__` map. Names must be unique and not `__metadata__`.
///
/// The header is padded with spaces to a multiple of 8 bytes, as the reference writer
/// does, so that the data buffer starts 8-aligned.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_safetensors_bytes(tensors, metadata).map_err(|e| with_path(path, e))?;
    write_file(path, &bytes)
}

/// The bytes of a safetensors file. See [`write_safetensors`].
pub fn to_safetensors_bytes(
    tensors: &[(&str, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let ctx = "safetensors";
    let mut sorted: Vec<&(&str, &Tensor)> = tensors.iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(err(ctx, format!("tensor name {:?} appears twice", w[0].0)));
        }
    }
    // The reference writer's order: by its dtype enum descending (I64, F64, F32, BF16, F16,
    // U8 — never a narrower type before a wider one), then by name. The data buffer starts
    // 8-aligned, so every tensor's offset is a multiple of its element size and zero-copy
    // readers can view it in place, with no gap between tensors.
    let rank = |d: DType| match d {
        DType::I64 => 5,
        DType::F64 => 4,
        DType::F32 => 3,
        DType::BF16 => 2,
        DType::F16 => 1,
        DType::U8 => 0,
    };
    sorted.sort_by_key(|(name, t)| (std::cmp::Reverse(rank(t.dtype())), *name));
    let mut entries = Vec::new();
    if let Some(m) = metadata.filter(|m| !m.is_empty()) {
        entries.push(format!("{}:{}", json::quote(METADATA_KEY), json::string_map(m)));
    }
    let total = sorted.iter().try_fold(0usize, |a, (_, t)| a.checked_add(t.elem_count() * t.dtype().size_in_bytes()));
    let total = total.ok_or_else(|| err(ctx, "the tensors' bytes add up past usize::MAX".to_string()))?;
    let mut data = crate::backend::cpu::pool::try_with_capacity("safetensors", total)?;
    for (name, t) in sorted {
        if *name == METADATA_KEY {
            return Err(err(ctx, format!("{METADATA_KEY:?} is reserved and cannot name a tensor")));
        }
        let dtype = match t.dtype() {
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::U8 => "U8",
        };
        let start = data.len();
        data.extend_from_slice(&tensor_to_bytes(t)?);
        let shape: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{start},{}]}}",
            json::quote(name),
            shape.join(","),
            data.len()
        ));
    }
    let mut header = format!("{{{}}}", entries.join(","));
    header.extend(std::iter::repeat_n(' ', (8 - header.len() % 8) % 8));
    let mut out = crate::backend::cpu::pool::try_with_capacity("safetensors", 8 + header.len() + data.len())?;
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Saves named tensors — a model's [`state_dict`](crate::nn::Module::state_dict), a
/// [`ParameterStore`](crate::param::ParameterStore)'s parameters — as safetensors, with
/// their order in the metadata so [`load_named`] returns them in it. The one way the engine
/// saves parameters: `ParameterStore::save` and checkpoints write through it too.
pub fn save_named(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = crate::param::order_metadata(tensors.iter().map(|(n, _)| n.as_str()));
    write_safetensors(path, &refs, Some(&meta))
}

/// Loads named tensors saved by [`save_named`] in their saved order; any other safetensors
/// file (PyTorch's `safetensors.torch.save_file`) sorted by name.
pub fn load_named(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let (named, meta) = read_safetensors_with_metadata(path)?;
    Ok(crate::param::in_saved_order(named, &meta))
}

fn parse_dtype(s: &str) -> std::result::Result<Elem, String> {
    let (dtype, kind) = match s {
        "F32" => (DType::F32, ElemKind::Native),
        "F64" => (DType::F64, ElemKind::Native),
        "F16" => (DType::F16, ElemKind::Native),
        "BF16" => (DType::BF16, ElemKind::Native),
        "I64" => (DType::I64, ElemKind::Native),
        "U8" => (DType::U8, ElemKind::Native),
        "BOOL" => (DType::U8, ElemKind::Bool),
        "I8" => (DType::I64, ElemKind::Int(1, true)),
        "I16" => (DType::I64, ElemKind::Int(2, true)),
        "I32" => (DType::I64, ElemKind::Int(4, true)),
        "U16" => (DType::I64, ElemKind::Int(2, false)),
        "U32" => (DType::I64, ElemKind::Int(4, false)),
        _ => {
            return Err(format!(
                "unsupported dtype {s:?} (supported: F32 F64 F16 BF16 I64 U8 BOOL I8 I16 I32 U16 U32)"
            ));
        }
    };
    Ok(Elem { dtype, kind, big_endian: false })
}

struct Entry {
    name: String,
    elem: Elem,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

fn parse_entry(name: String, v: &Json) -> std::result::Result<Entry, String> {
    let Json::Obj(fields) = v else { return Err("entry is not an object".into()) };
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v).ok_or(format!("missing {k:?}"));
    let Json::Str(dtype) = get("dtype")? else { return Err("\"dtype\" is not a string".into()) };
    let elem = parse_dtype(dtype)?;
    let Json::Arr(dims) = get("shape")? else { return Err("\"shape\" is not an array".into()) };
    let shape = dims
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or("\"shape\" holds something other than non-negative integers")?;
    let offsets = match get("data_offsets")? {
        Json::Arr(o) if o.len() == 2 => o,
        _ => return Err("\"data_offsets\" is not a pair".into()),
    };
    let off = |j: &Json| j.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or("bad \"data_offsets\"");
    let (start, end) = (off(&offsets[0])?, off(&offsets[1])?);
    if start > end {
        return Err(format!("data_offsets [{start}, {end}] run backwards"));
    }
    Ok(Entry { name, elem, shape, start, end })
}

fn parse(bytes: &[u8], ctx: &str) -> Result<(Named, BTreeMap<String, String>)> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(err(ctx, format!("file of {} bytes is too short for a header length", bytes.len())));
    };
    let n = u64::from_le_bytes(*len);
    if n > MAX_HEADER {
        return Err(err(ctx, format!("header length {n} exceeds the {MAX_HEADER}-byte limit")));
    }
    if n > rest.len() as u64 {
        return Err(err(ctx, format!("header length {n} runs past the end of the file ({} bytes)", bytes.len())));
    }
    let (header, data) = rest.split_at(n as usize);
    let header = std::str::from_utf8(header).map_err(|e| err(ctx, format!("header is not UTF-8: {e}")))?;
    if !header.starts_with('{') {
        return Err(err(ctx, "header does not start with '{'"));
    }
    let Json::Obj(fields) = json::parse(header).map_err(|m| err(ctx, format!("bad header JSON: {m}")))? else {
        return Err(err(ctx, "header is not a JSON object"));
    };
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(fields.len());
    for (name, v) in fields {
        if name == METADATA_KEY {
            let Json::Obj(m) = v else { return Err(err(ctx, "__metadata__ is not an object")) };
            for (k, v) in m {
                let Json::Str(v) = v else {
                    return Err(err(ctx, format!("__metadata__ value for {k:?} is not a string")));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let ectx = format!("{ctx}: tensor {name:?}");
        let e = parse_entry(name, &v).map_err(|m| err(&ectx, m))?;
        let (_, nbytes) = checked_size(&ectx, &e.shape, e.elem)?;
        if e.end - e.start != nbytes {
            return Err(err(
                &ectx,
                format!(
                    "data_offsets [{}, {}] hold {} bytes, shape {:?} needs {nbytes}",
                    e.start,
                    e.end,
                    e.end - e.start,
                    e.shape
                ),
            ));
        }
        entries.push(e);
    }
    // As the reference reader does: the tensors must tile the data buffer exactly, with no
    // overlap, gap, or bytes past the last one.
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0usize;
    for e in &entries {
        if e.start != at {
            let what = if e.start < at { "overlaps the tensor before it" } else { "leaves a gap before it" };
            return Err(err(&format!("{ctx}: tensor {:?}", e.name), format!("data_offsets start {}: {what}", e.start)));
        }
        at = e.end;
    }
    if at != data.len() {
        return Err(err(ctx, format!("the tensors cover {at} bytes, the data buffer has {}", data.len())));
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let ectx = format!("{ctx}: tensor {:?}", e.name);
        let t = tensor_from_bytes(&ectx, &data[e.start..e.end], e.elem, &e.shape)?;
        out.push((e.name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, metadata))
}
