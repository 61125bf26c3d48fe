//! CIFAR-10 in its "binary version" (cifar-10-binary.tar.gz, extracted): files
//! `data_batch_1.bin` .. `data_batch_5.bin` (train) and `test_batch.bin` (test), each a
//! run of 3073-byte records: 1 label byte (0..9), then 3072 pixel bytes, 1024 red,
//! 1024 green, 1024 blue, each plane 32x32 row-major. 10000 records per file.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::{Dataset, Split};
use crate::error::{Error, Result};

pub const SIDE: usize = 32;
pub const PIXELS: usize = 3 * SIDE * SIDE;
pub const RECORD: usize = 1 + PIXELS;
pub const NUM_CLASSES: i64 = 10;

pub const CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The files of a split, in the order they are concatenated.
pub fn file_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Decoded records of one file: CHW pixel bytes and labels.
pub struct Records {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Splits the bytes of one batch file into records; `path` only names the file in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Records> {
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(Error::file(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (1 label byte + 3072 pixel bytes); \
                 the file is truncated or not a CIFAR-10 binary batch ({} whole records and {} bytes left over)",
                bytes.len(),
                bytes.len() / RECORD,
                bytes.len() % RECORD
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as i64 >= NUM_CLASSES {
            return Err(Error::file(
                path,
                format!("record {i} (byte offset {}) has label {}, outside 0..{NUM_CLASSES}", i * RECORD, rec[0]),
            ));
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(Records { pixels, labels })
}

/// Loads a split from `root` as images `[N, 3, 32, 32]` in [-1, 1] and labels `[N]`.
pub fn load(root: &Path, split: Split) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in file_names(split) {
        let path: PathBuf = root.join(&name);
        if !path.is_file() {
            return Err(Error::file(
                &path,
                "not found; data.root must be the folder of the CIFAR-10 binary version \
                 (cifar-10-batches-bin: data_batch_1.bin .. data_batch_5.bin, test_batch.bin), \
                 from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        let r = parse(&path, &bytes)?;
        pixels.extend_from_slice(&r.pixels);
        labels.extend_from_slice(&r.labels);
    }
    let n = labels.len() as i64;
    let images = Tensor::from_slice(&pixels).view([n, 3, SIDE as i64, SIDE as i64]).to_kind(Kind::Float) / 127.5 - 1.0;
    let labels = Tensor::from_slice(&labels).to_kind(Kind::Int64);
    Ok(Dataset { images, labels, num_classes: NUM_CLASSES })
}

/// Writes records in the binary format (tests, tools): `pixels` is N x 3072 CHW bytes.
pub fn write(path: &Path, pixels: &[u8], labels: &[u8]) -> std::io::Result<()> {
    assert_eq!(pixels.len(), labels.len() * PIXELS, "pixels must be N x 3072 bytes");
    let mut out = Vec::with_capacity(labels.len() * RECORD);
    for (i, l) in labels.iter().enumerate() {
        out.push(*l);
        out.extend_from_slice(&pixels[i * PIXELS..(i + 1) * PIXELS]);
    }
    std::fs::write(path, out)
}
