//! A small reader of NumPy `.npy` files (format versions 1.0, 2.0, 3.0): the magic
//! `\x93NUMPY`, a version, a little-endian header length, a Python-dict header
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (N, 4, 32, 32), }`, then the raw
//! C-order data. Only the dtypes the latent sets use: `<f4`, `<f2`, `<i8`, `<i4`.
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    I64,
    I32,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        match descr {
            "<f4" => Some(Dtype::F32),
            "<f2" => Some(Dtype::F16),
            "<i8" => Some(Dtype::I64),
            "<i4" => Some(Dtype::I32),
            // Single-byte-order-free spellings numpy never writes for these, so no '|'.
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 => 2,
            Dtype::I64 => 8,
        }
    }
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
        }
    }
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
            Dtype::I64 => "<i8",
            Dtype::I32 => "<i4",
        }
    }
}

/// The parsed header and where the data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    pub data_offset: usize,
}

/// Parses the header of `.npy` bytes; errors are messages about the file's content.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic at the start)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    if bytes.len() < start + len {
        return Err(format!("truncated .npy header: it declares {len} bytes, the file has {}", bytes.len() - start));
    }
    let text = std::str::from_utf8(&bytes[start..start + len]).map_err(|_| "the .npy header is not text".to_string())?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = text.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}': {text}"))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest.find(':').ok_or_else(|| format!("malformed .npy header: {text}"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or_else(|| format!("malformed descr in {text}"))?;
    let dtype = Dtype::parse(descr)
        .ok_or_else(|| format!("dtype {descr:?} is not supported (use '<f4', '<f2', '<i8' or '<i4', little-endian)"))?;
    if field("fortran_order")?.starts_with("True") {
        return Err("the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)".into());
    }
    let shape = field("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("malformed shape in {text}"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<i64>().map_err(|_| format!("malformed shape in {text}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header { dtype, shape, data_offset: start + len })
}

/// Reads a `.npy` file into a tensor of its dtype and shape.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let h = parse_header(&bytes).map_err(|m| Error::file(path, m))?;
    let n: i64 = h.shape.iter().product();
    let want = n as usize * h.dtype.size();
    let have = bytes.len() - h.data_offset;
    if have != want {
        return Err(Error::file(
            path,
            format!(
                "shape {:?} of {} needs {want} data bytes but the file has {have} ({})",
                h.shape,
                h.dtype.descr(),
                if have < want { "truncated" } else { "trailing bytes" }
            ),
        ));
    }
    let data = &bytes[h.data_offset..];
    Ok(Tensor::f_from_data_size(data, &h.shape, h.dtype.kind())?)
}

/// Writes a C-order `.npy` (version 1.0) of `t` (float32, float16, int64 or int32); for tests and tools.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let dtype = match t.kind() {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        k => return Err(Error::file(path, format!("cannot write {k:?} as .npy"))),
    };
    let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", dtype.descr());
    // Pad so that magic + version + length + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let t = t.contiguous().to_device(tch::Device::Cpu);
    let mut data = vec![0u8; t.numel() * dtype.size()];
    t.f_copy_data_u8(&mut data, t.numel())?;
    out.extend_from_slice(&data);
    std::fs::write(path, out).map_err(|e| Error::file(path, format!("cannot write: {e}")))
}
