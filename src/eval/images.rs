//! Image sets for reference statistics, as uint8 `[N, C, H, W]`: a folder of PNG files, or
//! an `.npz` whose `arr_0` holds uint8 `[N, H, W, C]` images (the sample batches ADM's
//! evaluator and EDM's tooling exchange).  PNG folders are read batch by batch.
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::npz::{read_npz, NpyData};
use crate::error::{Error, Result};

/// A set of uint8 images read batch by batch: PNG files are decoded only when their batch
/// is asked for (a 50k-image folder never sits in memory at once); `.npz` and dataset
/// images are held whole.
pub enum ImageSet {
    Files { files: Vec<PathBuf>, shape: [i64; 3] },
    Loaded(Tensor),
}

impl ImageSet {
    /// A folder's `*.png` files (sorted by name; grey or RGB, alpha dropped; all the same
    /// size and channel count as the first), or `arr_0` of an `.npz`.
    pub fn open(path: &Path) -> Result<ImageSet> {
        if !path.is_dir() {
            return Ok(ImageSet::Loaded(load_npz_images(path)?));
        }
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::file(path, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        let first = files.first().ok_or_else(|| Error::file(path, "no .png files in this folder"))?;
        let shape = read_png(first)?.size()[..].try_into().expect("CHW");
        Ok(ImageSet::Files { files, shape })
    }

    /// uint8 `[N, C, H, W]` images already in memory.
    pub fn from_tensor(images: Tensor) -> ImageSet {
        ImageSet::Loaded(images)
    }

    pub fn len(&self) -> i64 {
        match self {
            ImageSet::Files { files, .. } => files.len() as i64,
            ImageSet::Loaded(t) => t.size()[0],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Images `start..start + len` as uint8 `[len, C, H, W]`.
    pub fn batch(&self, start: i64, len: i64) -> Result<Tensor> {
        match self {
            ImageSet::Loaded(t) => Ok(t.narrow(0, start, len)),
            ImageSet::Files { files, shape } => {
                let mut out = Vec::with_capacity(len as usize);
                for f in &files[start as usize..(start + len) as usize] {
                    let img = read_png(f)?;
                    if img.size() != shape {
                        return Err(Error::file(
                            f,
                            format!("image is [C, H, W] = {:?}; the folder's first image is {shape:?}", img.size()),
                        ));
                    }
                    out.push(img);
                }
                Ok(Tensor::stack(&out, 0))
            }
        }
    }
}

/// Every image of a PNG folder or an `.npz` (`ImageSet::open`), in memory.
pub fn load_uint8(path: &Path) -> Result<Tensor> {
    let set = ImageSet::open(path)?;
    set.batch(0, set.len())
}

/// One PNG as uint8 `[C, H, W]`, C = 1 (grey, grey + alpha) or 3.
fn read_png(f: &Path) -> Result<Tensor> {
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
    // HWC bytes -> CHW
    Ok(Tensor::from_slice(&bytes).view([h as i64, w as i64, c]).permute([2, 0, 1]).contiguous())
}

fn load_npz_images(path: &Path) -> Result<Tensor> {
    let a = read_npz(path, &["arr_0"])?.remove("arr_0").expect("read");
    let ok_shape = a.shape.len() == 4 && (a.shape[3] == 1 || a.shape[3] == 3);
    if !matches!(a.data, NpyData::U8(_)) || !ok_shape {
        return Err(Error::file(path, format!("arr_0 must be uint8 images [N, H, W, 1 or 3], got {} {:?}", a.descr(), a.shape)));
    }
    Ok(a.to_tensor().permute([0, 3, 1, 2]).contiguous().to_kind(Kind::Uint8))
}
