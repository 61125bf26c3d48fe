//! Image sets for reference statistics, as uint8 `[N, C, H, W]`: a folder of PNG files, or
//! an `.npz` whose `arr_0` holds uint8 `[N, H, W, C]` images (the sample batches ADM's
//! evaluator and EDM's tooling exchange).
use std::path::Path;

use tch::{Kind, Tensor};

use super::npz::{read_npz, NpyData};
use crate::error::{Error, Result};

/// Loads every `*.png` of a folder (sorted by name; grey or RGB, alpha dropped; all the
/// same size and channel count), or `arr_0` of an `.npz`.
pub fn load_uint8(path: &Path) -> Result<Tensor> {
    if path.is_dir() {
        load_png_folder(path)
    } else {
        load_npz_images(path)
    }
}

fn load_png_folder(dir: &Path) -> Result<Tensor> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::file(dir, "no .png files in this folder"));
    }
    let mut shape: Option<[i64; 3]> = None;
    let mut out = Vec::with_capacity(files.len());
    for f in &files {
        let img = image::open(f).map_err(|e| Error::file(f, format!("cannot read image: {e}")))?;
        let (c, w, h, bytes) = match img.color().channel_count() {
            1 | 2 => {
                let g = img.to_luma8();
                (1, g.width(), g.height(), g.into_raw())
            }
            _ => {
                let g = img.to_rgb8();
                (3, g.width(), g.height(), g.into_raw())
            }
        };
        let s = [c, h as i64, w as i64];
        match shape {
            None => shape = Some(s),
            Some(first) if first != s => {
                return Err(Error::file(f, format!("image is [C, H, W] = {s:?}; the folder's first image is {first:?}")));
            }
            _ => {}
        }
        // HWC bytes -> CHW
        out.push(Tensor::from_slice(&bytes).view([s[1], s[2], s[0]]).permute([2, 0, 1]));
    }
    Ok(Tensor::stack(&out, 0).contiguous())
}

fn load_npz_images(path: &Path) -> Result<Tensor> {
    let a = read_npz(path, &["arr_0"])?.remove("arr_0").expect("read");
    let ok_shape = a.shape.len() == 4 && (a.shape[3] == 1 || a.shape[3] == 3);
    if !matches!(a.data, NpyData::U8(_)) || !ok_shape {
        return Err(Error::file(path, format!("arr_0 must be uint8 images [N, H, W, 1 or 3], got {} {:?}", a.descr(), a.shape)));
    }
    Ok(a.to_tensor().permute([0, 3, 1, 2]).contiguous().to_kind(Kind::Uint8))
}
