//! PNG image grids. Images come in [-1, 1] as `[N, C, H, W]` (C = 1 or 3).
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Tiles `images` into rows of `ncols`, 2 px apart, and writes a PNG.
pub fn save_grid(images: &Tensor, ncols: i64, path: &Path) -> Result<()> {
    let (n, c, h, w) = images.size4().map_err(|_| Error::Shape(format!("grid wants [N, C, H, W], got {:?}", images.size())))?;
    if c != 1 && c != 3 {
        return Err(Error::Shape(format!("grid wants 1 or 3 channels, got {c}")));
    }
    let pad = 2;
    let ncols = ncols.clamp(1, n.max(1));
    let nrows = (n + ncols - 1) / ncols;
    let (gw, gh) = (ncols * (w + pad) + pad, nrows * (h + pad) + pad);
    // [-1, 1] -> [0, 255], rounded as FID tools quantise generated images.
    let px = ((images.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous(); // [N, H, W, C]
    let data: Vec<u8> = Vec::<u8>::try_from(px.flatten(0, -1)).map_err(Error::from)?;
    let mut img = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (x0, y0) = (pad + (i % ncols) * (w + pad), pad + (i / ncols) * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let base = (((i * h + y) * w + x) * c) as usize;
                let rgb = if c == 1 { [data[base]; 3] } else { [data[base], data[base + 1], data[base + 2]] };
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(rgb));
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create folder: {e}")))?;
    }
    // Written beside the target and renamed: a failed write leaves no partial file.
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("cannot write PNG: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, format!("cannot write PNG: {e}")))
}
