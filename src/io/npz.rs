//! NumPy's `.npz`: a zip archive of `.npy` members, one per array (`np.savez` stores
//! them, `np.savez_compressed` deflates them).
//!
//! The reader trusts the central directory for sizes (numpy writes zip64 local headers
//! whose sizes live in an extra field), checks every offset against the file, and checks
//! each member's CRC-32. The writer stores members ([`write_npz`], like `np.savez`) or
//! deflates them ([`write_npz_compressed`], like `np.savez_compressed`); DEFLATE is `flate2`'s.

use super::{err, npy, read_file, with_path, write_file};
use crate::{Result, Tensor};
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
/// A 32-bit zip field with this value means "see the zip64 extra field".
const ZIP64_MARK: u32 = u32::MAX;
/// DEFLATE emits at least 2 bits per 258 output bytes, so no honest member expands more
/// than this; a larger declared size is refused before decompressing.
const MAX_RATIO: u64 = 1032;
/// 1980-01-01, the earliest DOS date: fixed so that identical tensors give identical files.
const DOS_DATE: u16 = (1 << 5) | 1;

/// Reads every array of a `.npz` archive, in archive order, with numpy's keys (the
/// member names without `.npy`).
///
/// Stored (`np.savez`) and deflated (`np.savez_compressed`) members are both read.
///
/// ```
/// use tensorforge::{Tensor, Device, io};
/// let path = std::env::temp_dir().join(format!("tf-npz-doc-{}.npz", std::process::id()));
/// let x = Tensor::from_vec(vec![1f32, 2., 3.], 3, Device::Cpu)?;
/// let y = Tensor::from_vec(vec![1u8, 0], 2, Device::Cpu)?;
/// io::write_npz(&path, &[("x", &x), ("mask", &y)])?;
/// let back = io::read_npz(&path)?;
/// assert_eq!(back[0].0, "x");
/// assert_eq!(back[1].1.to_vec1::<u8>()?, vec![1, 0]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    parse(&read_file(path)?, &path.display().to_string())
}

/// Writes tensors to an uncompressed `.npz` archive that `np.load` reads; member `name`
/// is stored as `name.npy`. Each member must be under 4 GiB and the archive too (no
/// zip64); BF16 is an error, as for [`crate::io::write_npy`].
pub fn write_npz(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_npz_bytes(tensors).map_err(|e| with_path(path, e))?;
    write_file(path, &bytes)
}

/// Writes tensors to a `.npz` archive with deflated members, as `np.savez_compressed` does;
/// otherwise as [`write_npz`].
///
/// ```
/// use tensorforge::{Tensor, Device, io};
/// let path = std::env::temp_dir().join(format!("tf-npzc-doc-{}.npz", std::process::id()));
/// let x = Tensor::zeros(10_000, tensorforge::DType::F32, Device::Cpu)?;
/// io::write_npz_compressed(&path, &[("x", &x)])?;
/// assert!(std::fs::metadata(&path).unwrap().len() < 1_000, "zeros compress");
/// assert_eq!(io::read_npz(&path)?[0].1.to_vec1::<f32>()?, vec![0.0; 10_000]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub fn write_npz_compressed(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = archive(tensors, true).map_err(|e| with_path(path, e))?;
    write_file(path, &bytes)
}

/// The bytes of a `.npz` archive with deflated members. See [`write_npz_compressed`].
pub fn to_npz_bytes_compressed(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    archive(tensors, true)
}

/// Parses the bytes of a `.npz` archive. See [`read_npz`].
pub fn from_npz_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    parse(bytes, "npz")
}

/// The bytes of an uncompressed `.npz` archive. See [`write_npz`].
pub fn to_npz_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    archive(tensors, false)
}

/// A zip of one `.npy` member per tensor, stored or deflated.
fn archive(tensors: &[(&str, &Tensor)], compress: bool) -> Result<Vec<u8>> {
    let ctx = "npz";
    if tensors.len() > u16::MAX as usize {
        return Err(err(ctx, format!("{} arrays exceed the 65535 a zip without zip64 holds", tensors.len())));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, t) in tensors {
        if !seen.insert(*name) {
            return Err(err(ctx, format!("array name {name:?} appears twice")));
        }
        let fname = format!("{name}.npy");
        let ectx = format!("{ctx}: {fname}");
        let data = npy::to_npy_bytes(t).map_err(|e| match e {
            crate::Error::Io { msg, .. } => err(&ectx, msg),
            e => e,
        })?;
        let offset = out.len();
        if data.len() >= ZIP64_MARK as usize || offset >= ZIP64_MARK as usize || fname.len() > u16::MAX as usize {
            return Err(err(&ectx, "archive would exceed 4 GiB (zip64 is not supported): use safetensors"));
        }
        let crc = crc32(&data);
        let size = data.len();
        let (method, data) = if compress {
            // Level 6: zlib's default, what numpy's zipfile uses.
            let mut enc = DeflateEncoder::new(Vec::with_capacity(size / 2), Compression::new(6));
            let deflated = enc.write_all(&data).and_then(|()| enc.finish());
            (8u16, deflated.map_err(|e| err(&ectx, format!("deflate failed: {e}")))?)
        } else {
            (0u16, data)
        };
        // Bit 11: the name is UTF-8.
        let flags: u16 = if fname.is_ascii() { 0 } else { 1 << 11 };
        let mut common = Vec::new();
        for v in [20u16, flags, method, 0, DOS_DATE] {
            common.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, data.len() as u32, size as u32] {
            common.extend_from_slice(&v.to_le_bytes());
        }
        common.extend_from_slice(&(fname.len() as u16).to_le_bytes());
        common.extend_from_slice(&0u16.to_le_bytes()); // extra length

        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        out.extend_from_slice(&common);
        out.extend_from_slice(fname.as_bytes());
        out.extend_from_slice(&data);

        central.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        central.extend_from_slice(&common);
        for v in [0u16, 0, 0] {
            central.extend_from_slice(&v.to_le_bytes()); // comment length, disk, internal attributes
        }
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&(offset as u32).to_le_bytes());
        central.extend_from_slice(fname.as_bytes());
    }
    let cd_offset = out.len();
    if cd_offset + central.len() >= ZIP64_MARK as usize {
        return Err(err(ctx, "archive would exceed 4 GiB (zip64 is not supported): use safetensors"));
    }
    out.extend_from_slice(&central);
    out.extend_from_slice(&END_SIG.to_le_bytes());
    for v in [0u16, 0, tensors.len() as u16, tensors.len() as u16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&(cd_offset as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*b.get(at..)?.first_chunk::<2>()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..)?.first_chunk::<4>()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*b.get(at..)?.first_chunk::<8>()?))
}

/// Where the end-of-central-directory record starts: the last signature whose comment
/// length reaches exactly to the end of the file.
fn find_end(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(22)?;
    let first = last.saturating_sub(u16::MAX as usize);
    (first..=last).rev().find(|&p| {
        u32_at(bytes, p) == Some(END_SIG) && u16_at(bytes, p + 20).map(|c| p + 22 + c as usize) == Some(bytes.len())
    })
}

/// One member, as the central directory describes it.
struct Member {
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    comp: u64,
    size: u64,
    local: u64,
}

fn parse(bytes: &[u8], ctx: &str) -> Result<Vec<(String, Tensor)>> {
    let trunc = |what: &str| err(ctx, format!("truncated or corrupt zip: {what}"));
    let end = find_end(bytes).ok_or_else(|| err(ctx, "not a zip archive (no end-of-central-directory record)"))?;
    let (disk, cd_disk) = (u16_at(bytes, end + 4).unwrap_or(0), u16_at(bytes, end + 6).unwrap_or(0));
    let count = u16_at(bytes, end + 10).ok_or_else(|| trunc("end record"))?;
    let cd_size = u32_at(bytes, end + 12).ok_or_else(|| trunc("end record"))?;
    let cd_offset = u32_at(bytes, end + 16).ok_or_else(|| trunc("end record"))?;
    if disk != 0 || cd_disk != 0 {
        return Err(err(ctx, "multi-disk zip archives are not supported"));
    }
    if count == u16::MAX || cd_size == ZIP64_MARK || cd_offset == ZIP64_MARK {
        return Err(err(ctx, "zip64 archives (over 65535 members or 4 GiB) are not supported"));
    }
    let (cd_offset, cd_size) = (cd_offset as usize, cd_size as usize);
    if cd_offset.checked_add(cd_size).is_none_or(|e| e > end) {
        return Err(err(ctx, "central directory lies outside the file"));
    }
    let cd = &bytes[cd_offset..cd_offset + cd_size];
    let mut at = 0usize;
    let mut members = Vec::new();
    for _ in 0..count {
        let h = cd.get(at..at + 46).ok_or_else(|| trunc("central directory entry"))?;
        if u32_at(h, 0) != Some(CENTRAL_SIG) {
            return Err(trunc("bad central directory signature"));
        }
        let field16 = |o| u16_at(h, o).unwrap_or(0);
        let field32 = |o| u32_at(h, o).unwrap_or(0);
        let (nlen, xlen, clen) = (field16(28) as usize, field16(30) as usize, field16(32) as usize);
        let name = cd.get(at + 46..at + 46 + nlen).ok_or_else(|| trunc("central directory name"))?;
        let extra = cd.get(at + 46 + nlen..at + 46 + nlen + xlen).ok_or_else(|| trunc("central directory extra"))?;
        let name = std::str::from_utf8(name).map_err(|_| err(ctx, "member name is not UTF-8"))?.to_string();
        let mut m = Member {
            flags: field16(8),
            method: field16(10),
            crc: field32(16),
            comp: field32(20) as u64,
            size: field32(24) as u64,
            local: field32(42) as u64,
            name,
        };
        zip64_extra(&mut m, extra).map_err(|msg| err(&format!("{ctx}: {}", m.name), msg))?;
        members.push(m);
        at += 46 + nlen + xlen + clen;
    }
    // Each member's bytes must be its own: members that share data are the trick of
    // "overlapping" zip bombs, where a small file expands once per member.
    let mut spans = Vec::with_capacity(members.len());
    for m in &members {
        let span = locate(bytes, m, cd_offset).map_err(|msg| err(&format!("{ctx}: {}", m.name), msg))?;
        spans.push((span, m.name.as_str()));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0.0 < w[0].0.2 {
            return Err(err(&format!("{ctx}: {}", w[1].1), "member overlaps another member's data"));
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(members.len());
    for m in &members {
        let ectx = format!("{ctx}: {}", m.name);
        let Some(key) = m.name.strip_suffix(".npy") else {
            return Err(err(&ectx, "member is not a .npy array"));
        };
        if !seen.insert(key.to_string()) {
            return Err(err(&ectx, "member name appears twice"));
        }
        let (_, start, end) = locate(bytes, m, cd_offset).map_err(|msg| err(&ectx, msg))?;
        let data = member_data(&bytes[start..end], m).map_err(|msg| err(&ectx, msg))?;
        out.push((key.to_string(), npy::parse(&data, &ectx)?));
    }
    Ok(out)
}

/// Replaces the 32-bit fields marked 0xFFFFFFFF with their zip64 values.
fn zip64_extra(m: &mut Member, mut extra: &[u8]) -> std::result::Result<(), String> {
    let needs = [m.size, m.comp, m.local].map(|v| v == ZIP64_MARK as u64);
    if !needs.iter().any(|&n| n) {
        return Ok(());
    }
    while extra.len() >= 4 {
        let (id, len) = (u16_at(extra, 0).unwrap_or(0), u16_at(extra, 2).unwrap_or(0) as usize);
        let body = extra.get(4..4 + len).ok_or("truncated extra field")?;
        if id == 1 {
            // The zip64 values appear in this order, each only if its 32-bit field is marked.
            let mut at = 0;
            for (field, need) in [&mut m.size, &mut m.comp, &mut m.local].into_iter().zip(needs) {
                if need {
                    *field = u64_at(body, at).ok_or("truncated zip64 extra field")?;
                    at += 8;
                }
            }
            return Ok(());
        }
        extra = &extra[4 + len..];
    }
    Err("size marked zip64 but no zip64 extra field".into())
}

/// `(local header start, data start, data end)` of a member, all before the central
/// directory.
fn locate(bytes: &[u8], m: &Member, cd_offset: usize) -> std::result::Result<(usize, usize, usize), String> {
    let local = usize::try_from(m.local).map_err(|_| "local header offset out of range")?;
    let h = bytes.get(local..cd_offset).and_then(|b| b.get(..30)).ok_or("local header lies outside the archive")?;
    if u32_at(h, 0) != Some(LOCAL_SIG) {
        return Err("bad local header signature".into());
    }
    let start = local + 30 + u16_at(h, 26).unwrap_or(0) as usize + u16_at(h, 28).unwrap_or(0) as usize;
    let comp = usize::try_from(m.comp).map_err(|_| "compressed size out of range")?;
    match start.checked_add(comp) {
        Some(end) if end <= cd_offset => Ok((local, start, end)),
        _ => Err(format!(
            "member data ({comp} bytes at offset {start}) runs past the archive's data ({cd_offset} bytes)"
        )),
    }
}

/// The member's uncompressed bytes from its raw bytes, checked against its declared size
/// and CRC-32.
fn member_data(raw: &[u8], m: &Member) -> std::result::Result<Vec<u8>, String> {
    if m.flags & 1 != 0 {
        return Err("encrypted members are not supported".into());
    }
    let data = match m.method {
        0 => {
            if m.comp != m.size {
                return Err(format!("stored member declares {} bytes but holds {}", m.size, m.comp));
            }
            raw.to_vec()
        }
        8 => {
            if m.size > m.comp.saturating_mul(MAX_RATIO).saturating_add(1024) {
                return Err(format!("declared size {} is impossible for {} deflated bytes", m.size, m.comp));
            }
            let size = usize::try_from(m.size).map_err(|_| "declared size out of range")?;
            // One byte past the declared size is enough to tell a member that inflates longer.
            let mut d = Vec::new();
            d.try_reserve_exact(size).map_err(|_| format!("cannot allocate {size} bytes"))?;
            DeflateDecoder::new(raw)
                .take(m.size + 1)
                .read_to_end(&mut d)
                .map_err(|e| format!("bad deflate data: {e}"))?;
            if d.len() != size {
                return Err(format!("inflates to {} bytes, the directory declares {size}", d.len()));
            }
            d
        }
        k => return Err(format!("compression method {k} is not supported (only stored and deflate)")),
    };
    if crc32(&data) != m.crc {
        return Err("CRC-32 mismatch: the member is corrupt".into());
    }
    Ok(data)
}

/// The zip (IEEE, reflected) CRC-32, with the CPU's carry-less multiply where it has one.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
