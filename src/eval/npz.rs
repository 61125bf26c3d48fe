//! NumPy `.npy` arrays and `.npz` archives (a zip of `NAME.npy` entries, stored or
//! deflated), as written by `np.save`, `np.savez` and `np.savez_compressed`: enough to read
//! and write the FID reference statistics the community shares (`mu` `[D]` and `sigma`
//! `[D, D]`: pytorch-fid, EDM's `fid.py ref`, ADM's reference batches, which also hold
//! `arr_0` (uint8 images) and `mu_s`/`sigma_s`; entries not asked for are never read).
//!
//! Format (numpy/lib/format.py): magic `\x93NUMPY`, major and minor version, header length
//! (u16 in 1.0, u32 in 2.0 and 3.0), then an ASCII Python dict literal
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (2048, 2048), }` padded with spaces
//! and a newline to a multiple of 64 bytes, then the raw data in C order.
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Element data of an array, little-endian in memory once read.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    F64(Vec<f64>),
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// One array: shape (C order) and data.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The `descr` numpy writes for this element type.
    pub fn descr(&self) -> &'static str {
        match self.data {
            NpyData::F64(_) => "<f8",
            NpyData::F32(_) => "<f4",
            NpyData::U8(_) => "|u1",
        }
    }

    /// A CPU tensor of the same element type and shape.
    pub fn to_tensor(&self) -> Tensor {
        let shape: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        let t = match &self.data {
            NpyData::F64(v) => Tensor::from_slice(v),
            NpyData::F32(v) => Tensor::from_slice(v),
            NpyData::U8(v) => Tensor::from_slice(v),
        };
        t.reshape(shape.as_slice())
    }

    /// From a tensor of kind Double, Float or Uint8 (on any device, any layout).
    pub fn from_tensor(t: &Tensor) -> Result<NpyArray> {
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let flat = t.to_device(tch::Device::Cpu).contiguous().view([-1]);
        let data = match t.kind() {
            Kind::Double => NpyData::F64(Vec::<f64>::try_from(&flat)?),
            Kind::Float => NpyData::F32(Vec::<f32>::try_from(&flat)?),
            Kind::Uint8 => NpyData::U8(Vec::<u8>::try_from(&flat)?),
            k => return Err(Error::Shape(format!("npy: tensors of kind {k:?} are not written; convert to Double, Float or Uint8"))),
        };
        Ok(NpyArray { shape, data })
    }
}

// ---- .npy

/// The value of `'key':` in a numpy header dict: the text up to the next top-level comma.
fn header_value<'a>(header: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let pat = format!("'{key}':");
    let start = header.find(&pat).ok_or_else(|| format!("header has no '{key}': {header:?}"))? + pat.len();
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1).ok_or_else(|| format!("unclosed shape tuple in header {header:?}"))?
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Ok(rest[..end].trim())
}

/// Parses one `.npy` file held in memory.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v}.{} is not supported (1.0, 2.0, 3.0 are)", bytes[7])),
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(format!("truncated .npy header: {} bytes, the header needs {data_start}", bytes.len()));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| "header is not text".to_string())?;
    let descr = header_value(header, "descr")?.trim_matches(|c| c == '\'' || c == '"');
    match header_value(header, "fortran_order")? {
        "False" => {}
        "True" => return Err("fortran_order True arrays are not supported (save a C-ordered array)".into()),
        v => return Err(format!("bad fortran_order {v:?}")),
    }
    let shape_text = header_value(header, "shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad shape {shape_text:?}"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape {shape_text:?}")))
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let numel: usize = shape.iter().product();
    let (width, big_endian) = match descr {
        "<f8" | "=f8" => (8, false),
        ">f8" => (8, true),
        "<f4" | "=f4" => (4, false),
        ">f4" => (4, true),
        "|u1" | "<u1" | ">u1" | "=u1" => (1, false),
        d => return Err(format!("element type {d:?} is not supported (<f8, <f4, >f8, >f4, |u1 are)")),
    };
    let body = &bytes[data_start..];
    let need = numel * width;
    if body.len() < need {
        return Err(format!("truncated data: shape {shape:?} of {descr} needs {need} bytes, the file has {}", body.len()));
    }
    let body = &body[..need];
    let data = match width {
        8 => NpyData::F64(
            body.chunks_exact(8)
                .map(|c| {
                    let b: [u8; 8] = c.try_into().expect("8 bytes");
                    if big_endian { f64::from_be_bytes(b) } else { f64::from_le_bytes(b) }
                })
                .collect(),
        ),
        4 => NpyData::F32(
            body.chunks_exact(4)
                .map(|c| {
                    let b: [u8; 4] = c.try_into().expect("4 bytes");
                    if big_endian { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) }
                })
                .collect(),
        ),
        _ => NpyData::U8(body.to_vec()),
    };
    Ok(NpyArray { shape, data })
}

/// The bytes of `a` as a `.npy` file: version 1.0 when the header fits a u16 length (what
/// numpy writes), else 2.0; `force_v2` writes 2.0 regardless.
pub fn npy_bytes(a: &NpyArray, force_v2: bool) -> Vec<u8> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!("({})", a.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", a.descr());
    let v2 = force_v2 || dict.len() + 1 + 10 > u16::MAX as usize;
    let prefix = if v2 { 12 } else { 10 };
    // Pad with spaces so that magic + length + header (ending in '\n') is a multiple of 64.
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header = format!("{dict}{}\n", " ".repeat(total - prefix - dict.len() - 1));
    let mut out = Vec::with_capacity(total + a.numel() * 8);
    out.extend_from_slice(MAGIC);
    if v2 {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U8(v) => out.extend_from_slice(v),
    }
    out
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    parse_npy(&bytes).map_err(|m| Error::file(path, m))
}

/// Writes a `.npy` file.
pub fn write_npy(path: &Path, a: &NpyArray) -> Result<()> {
    std::fs::write(path, npy_bytes(a, false)).map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

// ---- .npz

fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| Error::file(path, format!("not a readable .npz (zip) archive: {e}")))
}

/// Names of the arrays in a `.npz` archive (entry names without `.npy`), in archive order.
pub fn npz_names(path: &Path) -> Result<Vec<String>> {
    let z = open_zip(path)?;
    let names = z.file_names().map(|n| n.map(|n| n.trim_end_matches(".npy").to_string())).collect::<zip::result::ZipResult<Vec<_>>>();
    names.map_err(|e| Error::file(path, format!("bad zip directory: {e}")))
}

fn read_entry<R: Read + Seek>(z: &mut zip::ZipArchive<R>, path: &Path, name: &str) -> Result<NpyArray> {
    let entry_name = format!("{name}.npy");
    if z.index_for_name(&entry_name).is_none() {
        let have: Vec<String> = z.file_names().filter_map(|n| n.ok()).map(|n| n.trim_end_matches(".npy").to_string()).collect();
        return Err(Error::file(path, format!("no array {name:?} in this .npz (it has {have:?})")));
    }
    let mut entry = z.by_name(&entry_name).map_err(|e| Error::file(path, format!("array {name:?}: {e}")))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| Error::file(path, format!("array {name:?}: cannot read (truncated or corrupt?): {e}")))?;
    parse_npy(&bytes).map_err(|m| Error::file(path, format!("array {name:?}: {m}")))
}

/// Reads the arrays `names` of a `.npz` archive (other entries are not read). A missing
/// name is an error naming it and the file.
pub fn read_npz(path: &Path, names: &[&str]) -> Result<HashMap<String, NpyArray>> {
    let mut z = open_zip(path)?;
    names.iter().map(|&n| Ok((n.to_string(), read_entry(&mut z, path, n)?))).collect()
}

/// Writes a `.npz` archive of `arrays` (in order), deflated when `compressed` (as
/// `np.savez_compressed`) else stored (as `np.savez`). Written to a temporary file and
/// renamed.
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)], compressed: bool) -> Result<()> {
    let tmp = path.with_extension("npz.tmp");
    let io = |e: &dyn std::fmt::Display| Error::file(path, format!("cannot write: {e}"));
    {
        let f = std::fs::File::create(&tmp).map_err(|e| io(&e))?;
        let mut z = zip::ZipWriter::new(std::io::BufWriter::new(f));
        let method = if compressed { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        for (name, a) in arrays {
            let bytes = npy_bytes(a, false);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(method)
                .large_file(bytes.len() as u64 >= u32::MAX as u64);
            z.start_file(format!("{name}.npy"), opts).map_err(|e| io(&e))?;
            z.write_all(&bytes).map_err(|e| io(&e))?;
        }
        let mut w = z.finish().map_err(|e| io(&e))?;
        w.flush().map_err(|e| io(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(&e))
}
