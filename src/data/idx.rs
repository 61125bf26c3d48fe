//! The IDX format of (Fashion-)MNIST: a big-endian header (magic 0x0000_08_NN with NN
//! the number of dimensions, then one u32 per dimension) followed by u8 data. Files may
//! be gzipped; that is detected from the content, not the name.
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes.
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file with `ndim` dimensions of u8 data (ndim 3 for images, 1 for labels).
pub fn read_idx(path: &Path, ndim: usize) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt or truncated gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, ndim).map_err(|msg| Error::file(path, msg))
}

pub fn parse_idx(bytes: &[u8], ndim: usize) -> std::result::Result<IdxArray, String> {
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format!("file is {} bytes, shorter than the {header}-byte IDX header", bytes.len()));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let magic = word(0);
    let expected = 0x0800 | ndim as u32;
    if magic != expected {
        return Err(format!(
            "bad IDX magic number 0x{magic:08x}, expected 0x{expected:08x} (unsigned bytes, {ndim} dimension(s))"
        ));
    }
    let dims: Vec<usize> = (1..=ndim).map(|i| word(i) as usize).collect();
    let n: usize = dims.iter().product();
    let body = bytes.len() - header;
    if body != n {
        return Err(format!(
            "header says {dims:?} = {n} bytes of data but the file has {body} ({})",
            if body < n { "truncated" } else { "trailing bytes" }
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// Writes an uncompressed IDX file (used by tests and tools).
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + data.len());
    out.extend_from_slice(&(0x0800u32 | dims.len() as u32).to_be_bytes());
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out)
}
