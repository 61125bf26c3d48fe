//! A folder of images, one sub-folder per class (torchvision's `ImageFolder` layout):
//! `root/<class>/**/<image>.png`. Classes are the sub-folder names in sorted order
//! (label = index); files are taken in sorted path order. Each image is converted to
//! RGB and brought to `image_size` x `image_size` by ADM's `center_crop_arr` (the
//! preprocessing of guided-diffusion, DiT and the MeanFlow JAX code): halve with a 2x2
//! box filter while the shorter side is at least twice `image_size`, resize bicubically
//! (Catmull-Rom, PIL's BICUBIC kernel) so the shorter side is `image_size`, then crop the
//! center. Pixels map to [-1, 1] as p / 127.5 - 1, channels first.
//!
//! Decoding happens per batch on the prefetch threads (`data.workers`), not at load.
//! This build decodes PNG only (the `image` crate's `png` feature); a JPEG file is an
//! error at start-up, naming the file, rather than halfway through training.
use std::path::{Path, PathBuf};

use image::{imageops, imageops::FilterType, RgbImage};

use super::prefetch::Source;
use crate::error::{Error, Result};

/// File extensions of images this build decodes.
pub const DECODED: [&str; 1] = ["png"];
/// Image extensions it recognises but cannot decode.
const UNSUPPORTED: [&str; 7] = ["jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

#[derive(Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// (file, label), sorted by path.
    pub files: Vec<(PathBuf, i64)>,
    pub image_size: u32,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    for entry in rd {
        let path = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Lists the classes and images under `root`; decodes nothing yet.
    pub fn open(root: &Path, image_size: u32) -> Result<ImageFolder> {
        let rd = std::fs::read_dir(root).map_err(|e| {
            Error::file(root, format!("cannot list ({e}); data.root of an image_folder set must be a folder with one sub-folder per class"))
        })?;
        let mut classes: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(Error::file(root, "has no sub-folders; put each class's images in a sub-folder named after the class"));
        }
        let mut files = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut found = Vec::new();
            walk(&root.join(class), &mut found)?;
            found.sort();
            let mut n = 0;
            for p in found {
                let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
                if DECODED.contains(&ext.as_str()) {
                    files.push((p, label as i64));
                    n += 1;
                } else if UNSUPPORTED.contains(&ext.as_str()) {
                    return Err(Error::file(
                        &p,
                        format!("is a .{ext} image; this build decodes {DECODED:?} only (convert the folder to PNG)"),
                    ));
                }
            }
            if n == 0 {
                return Err(Error::file(root.join(class), "class folder holds no PNG images"));
            }
        }
        Ok(ImageFolder { root: root.to_path_buf(), classes, files, image_size })
    }

    /// Decodes file `i`, center-cropped to `image_size`.
    pub fn decode(&self, i: usize) -> Result<RgbImage> {
        let path = &self.files[i].0;
        let img = image::open(path).map_err(|e| Error::file(path, format!("cannot decode: {e}")))?;
        Ok(center_crop(img.to_rgb8(), self.image_size))
    }
}

/// 2x2 box average (PIL's `reduce(2)` / `resize(.., BOX)` on even sizes); an odd last
/// row or column is dropped.
fn halve(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() / 2, img.height() / 2);
    RgbImage::from_fn(w, h, |x, y| {
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let s: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)].iter().map(|(dx, dy)| img.get_pixel(2 * x + dx, 2 * y + dy)[c] as u32).sum();
            *v = ((s + 2) / 4) as u8;
        }
        image::Rgb(px)
    })
}

/// ADM's `center_crop_arr`: box-halve while the short side >= 2 * size, resize so the
/// short side is `size` (bicubic), crop the center (offsets floor((dim - size) / 2)).
pub fn center_crop(mut img: RgbImage, size: u32) -> RgbImage {
    while img.width().min(img.height()) >= 2 * size {
        img = halve(&img);
    }
    let short = img.width().min(img.height());
    if short != size {
        let scale = size as f64 / short as f64;
        let w = ((img.width() as f64 * scale).round() as u32).max(size);
        let h = ((img.height() as f64 * scale).round() as u32).max(size);
        img = imageops::resize(&img, w, h, FilterType::CatmullRom);
    }
    let (x, y) = ((img.width() - size) / 2, (img.height() - size) / 2);
    imageops::crop_imm(&img, x, y, size, size).to_image()
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn item_shape(&self) -> [i64; 3] {
        [3, self.image_size as i64, self.image_size as i64]
    }
    fn num_classes(&self) -> i64 {
        self.classes.len() as i64
    }
    fn read(&self, i: usize, out: &mut [f32]) -> Result<i64> {
        let img = self.decode(i)?;
        let plane = (self.image_size * self.image_size) as usize;
        for (j, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + j] = p[c] as f32 / 127.5 - 1.0;
            }
        }
        Ok(self.files[i].1)
    }
}
