//! Reader for the MNIST IDX files (also fits Fashion-MNIST and other u8 IDX image sets).
//!
//! The format is a big-endian header — magic `0x0000_08_NN` (u8 data, `NN` dimensions),
//! then one u32 per dimension — followed by the raw bytes. Headers come from files the user
//! points us at, so every declared size is checked against the actual length *before*
//! anything is allocated from it: a corrupt header must give an `Err`, not an abort from a
//! multi-gigabyte allocation or a panic on a short read.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::{Error, Result};

/// Magic number of an IDX file of u8 images (`0x0803`: u8 data, 3 dimensions).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of u8 labels (`0x0801`: u8 data, 1 dimension).
pub const LABELS_MAGIC: u32 = 2049;

/// File names of the standard training images and labels.
pub const TRAIN_FILES: (&str, &str) = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte");
/// File names of the standard test images and labels.
pub const TEST_FILES: (&str, &str) = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");

/// Loads one images file and its labels file; pixels are scaled to `[0, 1]` (value / 255).
///
/// # Errors
/// If a file is missing or unreadable, has the wrong magic number, is shorter or longer
/// than its header declares, has a zero image size, or if the two files disagree on the
/// number of samples.
pub fn load_idx(images_path: impl AsRef<Path>, labels_path: impl AsRef<Path>) -> Result<Dataset> {
    let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
    let images = read_idx_file(images_path, IMAGES_MAGIC)?;
    let labels = read_idx_file(labels_path, LABELS_MAGIC)?;
    from_bytes(&images, &labels)
        .map_err(|e| Error::msg(format!("MNIST files {} / {}: {e}", images_path.display(), labels_path.display())))
}

/// Loads `(train, test)` from a directory holding the four standard, uncompressed files
/// (see [`TRAIN_FILES`], [`TEST_FILES`]; the `train-images.idx3-ubyte` spelling of some
/// mirrors is accepted too), or the `.gz` files as downloaded.
///
/// # Errors
/// If a file is missing, or as for [`load_idx`].
pub fn load_dir(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let train = load_idx(find(dir, TRAIN_FILES.0)?, find(dir, TRAIN_FILES.1)?)?;
    let test = load_idx(find(dir, TEST_FILES.0)?, find(dir, TEST_FILES.1)?)?;
    Ok((train, test))
}

/// Parses in-memory IDX images and labels (e.g. from `include_bytes!` or a download that
/// was decompressed elsewhere); same checks and scaling as [`load_idx`].
///
/// # Errors
/// As for [`load_idx`], bar the file-system ones.
pub fn from_bytes(images: &[u8], labels: &[u8]) -> Result<Dataset> {
    let (img_dims, pixels) = parse_idx(images, IMAGES_MAGIC).map_err(|e| Error::msg(format!("images: {e}")))?;
    let (lab_dims, label_bytes) = parse_idx(labels, LABELS_MAGIC).map_err(|e| Error::msg(format!("labels: {e}")))?;
    let (n, rows, cols) = (img_dims[0], img_dims[1], img_dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::msg(format!("images: degenerate image size {rows}x{cols}")));
    }
    if lab_dims[0] != n {
        return Err(Error::msg(format!("{n} images but {} labels", lab_dims[0])));
    }
    Ok(Dataset {
        features: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: label_bytes.iter().map(|&l| i64::from(l)).collect(),
        n,
        dim: rows * cols,
        rows,
        cols,
    })
}

/// The dimensions of an expected-magic IDX file, and the payload bytes.
fn parse_idx(bytes: &[u8], magic: u32) -> std::result::Result<(Vec<usize>, &[u8]), String> {
    let (dims, header_len, payload_len) = parse_header(bytes, magic)?;
    let body = &bytes[header_len..];
    if body.len() != payload_len {
        return Err(format!(
            "header declares {payload_len} data bytes but {} follow it ({})",
            body.len(),
            if body.len() < payload_len { "truncated" } else { "trailing garbage" }
        ));
    }
    Ok((dims, body))
}

/// Checks the magic and returns `(dims, header length, declared payload length)`. Only the
/// header needs to be present in `bytes`.
fn parse_header(bytes: &[u8], magic: u32) -> std::result::Result<(Vec<usize>, usize, usize), String> {
    let ndims = (magic & 0xFF) as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(format!("{} bytes is too short for an IDX header", bytes.len()));
    }
    let found = be_u32(&bytes[0..4]);
    if found != magic {
        return Err(format!("bad magic number {found} (0x{found:08x}), expected {magic}"));
    }
    if bytes.len() < header_len {
        return Err(format!("truncated header: {} of {header_len} bytes", bytes.len()));
    }
    let dims: Vec<usize> = bytes[4..header_len].chunks_exact(4).map(|c| be_u32(c) as usize).collect();
    // Overflow is only possible from a corrupt header; report it like any other mismatch.
    let payload_len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("declared dimensions {dims:?} overflow"))?;
    Ok((dims, header_len, payload_len))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads an IDX file, checking its header against the file's real length first so that a
/// corrupt header cannot make us allocate (or wait on) more than the file holds. A `.gz`
/// file (as MNIST is downloaded) is decompressed on the way.
fn read_idx_file(path: &Path, magic: u32) -> Result<Vec<u8>> {
    let fail = |what: String| Error::msg(format!("MNIST file {}: {what}", path.display()));
    let mut file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?.len();
    if path.extension().is_some_and(|e| e == "gz") {
        return read_gz_idx(file, file_len, magic).map_err(fail);
    }

    let max_header = 4 + 4 * (magic & 0xFF) as usize;
    let mut header = Vec::with_capacity(max_header);
    (&mut file).take(max_header as u64).read_to_end(&mut header).map_err(|e| fail(format!("cannot read: {e}")))?;
    let (_, header_len, payload_len) = parse_header(&header, magic).map_err(fail)?;
    let total = (header_len as u64).checked_add(payload_len as u64);
    if total != Some(file_len) {
        return Err(fail(format!(
            "header declares {header_len} + {payload_len} bytes but the file has {file_len} ({})",
            if total.is_some_and(|t| t < file_len) { "trailing garbage" } else { "truncated" }
        )));
    }

    let mut bytes = header;
    bytes.reserve_exact(payload_len);
    // `take` guards against the file growing between the stat and the read.
    (&mut file).take(payload_len as u64).read_to_end(&mut bytes).map_err(|e| fail(format!("cannot read: {e}")))?;
    Ok(bytes)
}

/// A gzipped IDX file: the header from the stream, then exactly the payload it declares.
/// Memory grows with the data that actually arrives, and a payload larger than DEFLATE could
/// produce from the file is refused up front.
fn read_gz_idx(file: File, file_len: u64, magic: u32) -> std::result::Result<Vec<u8>, String> {
    let mut z = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let max_header = 4 + 4 * (magic & 0xFF) as usize;
    let mut bytes = Vec::with_capacity(max_header);
    (&mut z).take(max_header as u64).read_to_end(&mut bytes).map_err(|e| format!("bad gzip data: {e}"))?;
    let (_, header_len, payload_len) = parse_header(&bytes, magic)?;
    // DEFLATE emits at least 2 bits per 258 output bytes.
    if payload_len as u64 > file_len.saturating_mul(1032) {
        return Err(format!("header declares {payload_len} bytes, more than {file_len} gzipped bytes can hold"));
    }
    bytes.truncate(header_len.min(bytes.len()));
    let want = (header_len + payload_len) as u64;
    (&mut z).take(want + 1 - bytes.len() as u64).read_to_end(&mut bytes).map_err(|e| format!("bad gzip data: {e}"))?;
    match (bytes.len() as u64).cmp(&want) {
        std::cmp::Ordering::Equal => Ok(bytes),
        std::cmp::Ordering::Less => Err(format!("truncated: {} of {want} bytes", bytes.len())),
        std::cmp::Ordering::Greater => Err("trailing garbage after the declared data".into()),
    }
}

/// Path of `name` in `dir`, also trying the `name.idxN-ubyte` spelling some mirrors use and
/// the `.gz` files as downloaded.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let dotted = name.replacen("-idx", ".idx", 1);
    for candidate in [name.to_string(), dotted.clone(), format!("{name}.gz"), format!("{dotted}.gz")] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::msg(format!("MNIST file {name} (or {name}.gz) not found in {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("tensorforge-mnist-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    /// Three 2×3 images; pixel `k` of image `i` is `i * 6 + k`, with a 255 to pin the scale.
    fn tiny() -> (Vec<u8>, Vec<u8>) {
        let mut px: Vec<u8> = (0..18).collect();
        px[17] = 255;
        (idx(IMAGES_MAGIC, &[3, 2, 3], &px), idx(LABELS_MAGIC, &[3], &[7, 0, 9]))
    }

    #[test]
    fn round_trip_files() {
        let dir = TempDir::new("roundtrip");
        let (img, lab) = tiny();
        let d = load_idx(dir.write("i", &img), dir.write("l", &lab)).unwrap();
        assert_eq!((d.n, d.rows, d.cols, d.dim), (3, 2, 3, 6));
        assert_eq!(d.labels, vec![7, 0, 9]);
        assert_eq!(d.features.len(), 18);
        assert_eq!(d.features[7], 7.0 / 255.0);
        assert_eq!(d.features[17], 1.0);
        assert_eq!(d, from_bytes(&img, &lab).unwrap());
    }

    #[test]
    fn load_dir_reads_train_and_test() {
        let dir = TempDir::new("dir");
        let (img, lab) = tiny();
        dir.write(TRAIN_FILES.0, &img);
        dir.write(TRAIN_FILES.1, &lab);
        // The dotted spelling of some mirrors is accepted.
        dir.write("t10k-images.idx3-ubyte", &idx(IMAGES_MAGIC, &[1, 1, 2], &[0, 255]));
        dir.write(TEST_FILES.1, &idx(LABELS_MAGIC, &[1], &[4]));
        let (train, test) = load_dir(&dir.0).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!((test.len(), test.rows, test.cols), (1, 1, 2));
        assert_eq!(test.features, vec![0.0, 1.0]);
        assert_eq!(test.labels, vec![4]);
    }

    #[test]
    fn load_dir_reports_missing_and_reads_gz() {
        let dir = TempDir::new("missing");
        let err = load_dir(&dir.0).unwrap_err().to_string();
        assert!(err.contains(TRAIN_FILES.0), "{err}");
        let gz = |b: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut e, b).unwrap();
            e.finish().unwrap()
        };
        let (img, lab) = tiny();
        for (name, bytes) in [TRAIN_FILES, TEST_FILES].iter().flat_map(|f| [(f.0, &img), (f.1, &lab)]) {
            dir.write(&format!("{name}.gz"), &gz(bytes));
        }
        let (train, test) = load_dir(&dir.0).unwrap();
        assert_eq!((train.len(), test.len()), (3, 3));
        assert_eq!(train.features, from_bytes(&img, &lab).unwrap().features);
        // A gzipped file that holds more, or less, than its header declares.
        let mut long = img.clone();
        long.push(0);
        for bad in [gz(&long), gz(&img[..img.len() - 1]), b"\x1f\x8bnot gzip".to_vec()] {
            let p = dir.write("bad.gz", &bad);
            assert!(load_idx(&p, dir.0.join(format!("{}.gz", TRAIN_FILES.1))).is_err());
        }
    }

    #[test]
    fn rejects_corrupt_files() {
        let dir = TempDir::new("corrupt");
        let (img, lab) = tiny();
        let lab_path = dir.write("labels", &lab);
        let huge_n = idx(IMAGES_MAGIC, &[u32::MAX, 28, 28], &[0; 8]);
        let overflow = idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]);
        let mut bad_magic = img.clone();
        bad_magic[3] = 0x01;
        let mut trailing = img.clone();
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short header", img[..10].to_vec()),
            ("truncated data", img[..img.len() - 1].to_vec()),
            ("trailing data", trailing),
            ("bad magic", bad_magic),
            ("labels as images", lab.clone()),
            ("huge count", huge_n),
            ("overflowing dims", overflow),
            ("zero-size images", idx(IMAGES_MAGIC, &[3, 0, 3], &[])),
            ("garbage", (0..200u32).map(|i| (i * 37 + 11) as u8).collect()),
            ("count mismatch", idx(IMAGES_MAGIC, &[2, 2, 3], &[0; 12])),
        ];
        for (what, bytes) in cases {
            let p = dir.write("images", &bytes);
            assert!(load_idx(&p, &lab_path).is_err(), "file: {what}");
            assert!(from_bytes(&bytes, &lab).is_err(), "bytes: {what}");
        }

        let img_path = dir.write("images", &img);
        let short_labels = idx(LABELS_MAGIC, &[3], &[1, 2]);
        assert!(load_idx(&img_path, dir.write("labels", &short_labels)).is_err());
        assert!(load_idx(&img_path, dir.0.join("does-not-exist")).is_err());
        assert!(load_idx(&dir.0, &lab_path).is_err(), "a directory is not a file");
    }
}
