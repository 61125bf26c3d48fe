//! FID features from a TorchScript feature extractor (Inception-v3 pool features, 2048-d),
//! loaded with `tch::CModule`. `tools/export_inception.py` makes one from the standard FID
//! weights.
//!
//! Module contract (what `forward` receives and returns):
//! - input: `uint8` `[B, 3, H, W]`, values 0..255, any H and W (RGB, NCHW);
//! - the module itself resizes to 299x299 (bilinear) and normalises, as EDM's detector
//!   (`inception-2015-12-05.pkl`, called with `return_features=True`) does;
//! - output: float `[B, D]` features (D = 2048 for Inception-v3; `[B, D, 1, 1]` is also
//!   accepted).
//!
//! Generated images in [-1, 1] become uint8 the way EDM's `generate.py` writes its PNGs
//! (which `fid.py` then reads): `(x * 127.5 + 128).clip(0, 255).to(torch.uint8)`, in
//! float32; the cast truncates, so this is round-half-up of `x * 127.5 + 127.5`.
//! One-channel images are repeated to three.
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Images per forward call of the feature extractor.
pub const BATCH: i64 = 100;

/// Images `[B, C, H, W]` in [-1, 1] (any float kind) to uint8 0..255, EDM's convention.
pub fn to_uint8(x: &Tensor) -> Tensor {
    (x.to_kind(Kind::Float) * 127.5 + 128.0).clamp(0.0, 255.0).to_kind(Kind::Uint8)
}

pub struct Inception {
    module: tch::CModule,
    path: PathBuf,
    device: Device,
}

impl Inception {
    /// Loads a TorchScript feature extractor onto `device`, in eval mode.
    pub fn load(path: &Path, device: Device) -> Result<Inception> {
        let mut module = tch::CModule::load_on_device(path, device)
            .map_err(|e| Error::file(path, format!("cannot load as a TorchScript module: {e}")))?;
        module.set_eval();
        Ok(Inception { module, path: path.to_path_buf(), device })
    }

    /// Features `[B, D]` (float64, on the module's device) of uint8 images `[B, C, H, W]`,
    /// C = 1 (repeated to 3) or 3, fed in batches of `BATCH`.
    pub fn features_uint8(&self, images: &Tensor) -> Result<Tensor> {
        let size = images.size();
        if images.kind() != Kind::Uint8 || size.len() != 4 || !(size[1] == 1 || size[1] == 3) {
            return Err(Error::Shape(format!(
                "feature extractor input must be uint8 [B, 1 or 3, H, W], got {:?} {size:?}",
                images.kind()
            )));
        }
        let n = size[0];
        let mut out = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for start in (0..n).step_by(BATCH as usize) {
                let mut x = images.narrow(0, start, (n - start).min(BATCH)).to_device(self.device);
                if size[1] == 1 {
                    x = x.repeat([1, 3, 1, 1]);
                }
                let f = self
                    .module
                    .forward_ts(&[x.contiguous()])
                    .map_err(|e| Error::file(&self.path, format!("forward failed: {e}")))?;
                let f = if f.dim() > 2 { f.flatten(1, -1) } else { f };
                if f.dim() != 2 || f.size()[0] != x.size()[0] {
                    return Err(Error::file(
                        &self.path,
                        format!("the module must return [B, D] features; for input {:?} it returned {:?}", x.size(), f.size()),
                    ));
                }
                out.push(f.to_kind(Kind::Double));
            }
            Ok(())
        })?;
        Ok(Tensor::cat(&out, 0))
    }

    /// Features of images in [-1, 1], converted with `to_uint8`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.features_uint8(&to_uint8(x))
    }
}
