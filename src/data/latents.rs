//! Pre-encoded ImageNet latents (the VAE runs outside this project; see
//! `tools/encode_imagenet_latents.py` and the README). Layout of `data.root`:
//!
//! ```text
//! manifest.json                      what the shards hold (below)
//! train_00000.safetensors            tensors `latents` [n, C, H, W] (f32/f16/bf16) and `labels` [n] (i64/i32)
//! train_00001.safetensors            ...
//!   or, per shard, two .npy files:   train_00000_latents.npy, train_00000_labels.npy
//! ```
//!
//! The shards hold the encoder's raw output (for the SD VAE: the posterior mean or one
//! sample of `vae.encode(x).latent_dist`, not yet scaled); the model is trained on
//! `(latent - shift) * scale_factor`, which this loader applies. For SD VAE ft-mse the
//! scale factor is 0.18215 and the shift 0 (the MeanFlow JAX code multiplies the sampled
//! latent by 0.18215 and shifts nothing).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{npy, Dataset};
use crate::config::Config;
use crate::error::{Error, Result};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "meanflow-latents/1";

/// Which orientations of the images were encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredFlip {
    /// One latent per image, of the unflipped center crop (what the MeanFlow reference
    /// stores). `data.hflip: true` then flips latents along their width at train time.
    None,
    /// The set also holds, as separate entries, the latents of the flipped images.
    Both,
}

/// What the shards hold of the VAE posterior N(mean, std^2) of each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Posterior {
    /// C channels: the mean.
    Mean,
    /// C channels: one sample drawn when encoding.
    Sample,
    /// 2C channels: the mean, then the std (as the MeanFlow JAX code caches them); the
    /// trainer draws a fresh sample mean + std * eps for every batch, from (seed, step).
    Moments,
}

impl Posterior {
    /// Stored channels per latent channel.
    pub fn channels_per_latent(self) -> i64 {
        if self == Posterior::Moments {
            2
        } else {
            1
        }
    }
}

/// One shard: a safetensors `file`, or a pair of `.npy` files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    pub count: i64,
}

/// `manifest.json` of a latent set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// "meanflow-latents/1".
    pub format: String,
    /// The encoder, e.g. "stabilityai/sd-vae-ft-mse".
    pub vae: String,
    /// The model sees (latent - shift) * scale_factor.
    pub scale_factor: f64,
    #[serde(default)]
    pub shift: f64,
    pub posterior: Posterior,
    /// [C, H, W] of one latent, e.g. [4, 32, 32] for 256x256 images.
    pub latent_shape: [i64; 3],
    /// Side of the (center-cropped) images that were encoded.
    pub image_size: i64,
    pub num_classes: i64,
    pub flip: StoredFlip,
    /// Total number of latents; the sum of the shard counts.
    pub count: i64,
    pub shards: Vec<Shard>,
}

impl Manifest {
    /// Reads and checks `root/manifest.json`.
    pub fn read(root: &Path) -> Result<Manifest> {
        let path = root.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::file(
                &path,
                format!(
                    "cannot read ({e}); data.root of an imagenet_latents set must hold manifest.json and its shards \
                     (write them with tools/encode_imagenet_latents.py; see the README)"
                ),
            )
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("bad manifest: {e}")))?;
        m.check(&path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::file(path, msg));
        if self.format != FORMAT {
            return bad(format!("format is {:?}, this version reads {FORMAT:?}", self.format));
        }
        if !self.scale_factor.is_finite() || self.scale_factor <= 0.0 || !self.shift.is_finite() {
            return bad(format!("scale_factor must be > 0 and shift finite, got {} and {}", self.scale_factor, self.shift));
        }
        if self.latent_shape.iter().any(|&d| d <= 0) || self.num_classes <= 0 || self.image_size <= 0 {
            return bad("latent_shape, num_classes and image_size must be positive".into());
        }
        if self.shards.is_empty() {
            return bad("lists no shards".into());
        }
        for (i, s) in self.shards.iter().enumerate() {
            let ok = matches!((&s.file, &s.latents, &s.labels), (Some(_), None, None) | (None, Some(_), Some(_)));
            if !ok {
                return bad(format!("shards[{i}] must have either \"file\" (safetensors) or both \"latents\" and \"labels\" (.npy)"));
            }
            if s.count <= 0 {
                return bad(format!("shards[{i}].count must be > 0, got {}", s.count));
            }
        }
        let sum: i64 = self.shards.iter().map(|s| s.count).sum();
        if sum != self.count {
            return bad(format!("count is {} but the shards hold {sum}", self.count));
        }
        Ok(())
    }

    /// Refuses a config that disagrees with this set: latent shape vs the model's input,
    /// classes, and (when the config names them) the VAE and its scale factor.
    pub fn check_config(&self, cfg: &Config, root: &Path) -> Result<()> {
        let path = root.join(MANIFEST);
        let m = &cfg.model;
        let says = |what: String| format!("but the latent manifest {} says {what}", path.display());
        let [c, h, w] = self.latent_shape;
        if m.in_channels != c {
            return Err(cfg.error("model.in_channels", format!("is {} {}", m.in_channels, says(format!("latent_shape [{c}, {h}, {w}]")))));
        }
        if m.input_size != h || m.input_size != w {
            return Err(cfg.error("model.input_size", format!("is {} {}", m.input_size, says(format!("latent_shape [{c}, {h}, {w}]")))));
        }
        if m.num_classes != 0 && m.num_classes != self.num_classes {
            return Err(cfg.error("model.num_classes", format!("is {} {}", m.num_classes, says(format!("num_classes {}", self.num_classes)))));
        }
        if let Some(s) = cfg.data.scale_factor {
            if (s - self.scale_factor).abs() > 1e-9 * self.scale_factor.abs().max(1.0) {
                return Err(cfg.error("data.scale_factor", format!("is {s} {}", says(format!("scale_factor {}", self.scale_factor)))));
            }
        }
        if let Some(v) = &cfg.data.vae {
            if *v != self.vae {
                return Err(cfg.error("data.vae", format!("is {v:?} {}", says(format!("vae {:?}", self.vae)))));
            }
        }
        Ok(())
    }
}

/// Reads one shard as (latents [n, C, H, W] in their float dtype, labels [n] int64).
fn read_shard(root: &Path, m: &Manifest, i: usize) -> Result<(Tensor, Tensor)> {
    let s = &m.shards[i];
    let (lat, lab, lat_path, lab_path): (Tensor, Tensor, PathBuf, PathBuf) = match (&s.file, &s.latents, &s.labels) {
        (Some(f), _, _) => {
            let path = root.join(f);
            let named = Tensor::read_safetensors(&path).map_err(|e| {
                Error::file(&path, format!("cannot read as safetensors (missing, truncated or not safetensors): {e}"))
            })?;
            let get = |k: &str| {
                named.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).ok_or_else(|| {
                    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
                    Error::file(&path, format!("has no tensor {k:?} (it has {names:?}); a shard holds \"latents\" and \"labels\""))
                })
            };
            (get("latents")?, get("labels")?, path.clone(), path)
        }
        (None, Some(a), Some(b)) => {
            let (pa, pb) = (root.join(a), root.join(b));
            (npy::read(&pa)?, npy::read(&pb)?, pa, pb)
        }
        _ => unreachable!("checked by Manifest::check"),
    };
    let [c, h, w] = m.latent_shape;
    let want = vec![s.count, c * m.posterior.channels_per_latent(), h, w];
    if lat.size() != want {
        let what = if m.posterior == Posterior::Moments { "count, 2 x channels (mean, std), height, width" } else { "count, latent_shape" };
        return Err(Error::file(&lat_path, format!("latents are {:?}, the manifest says {want:?} ({what})", lat.size())));
    }
    if !matches!(lat.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
        return Err(Error::file(&lat_path, format!("latents are {:?}; use float32, float16 or bfloat16", lat.kind())));
    }
    if lab.size() != vec![s.count] {
        return Err(Error::file(&lab_path, format!("labels are {:?}, the manifest says [{}]", lab.size(), s.count)));
    }
    if !matches!(lab.kind(), Kind::Int64 | Kind::Int) {
        return Err(Error::file(&lab_path, format!("labels are {:?}; use int64 or int32", lab.kind())));
    }
    let lab = lab.to_kind(Kind::Int64);
    let (lo, hi) = (lab.min().int64_value(&[]), lab.max().int64_value(&[]));
    if lo < 0 || hi >= m.num_classes {
        return Err(Error::file(&lab_path, format!("labels span {lo}..={hi}, outside 0..{} (manifest num_classes)", m.num_classes)));
    }
    Ok((lat, lab))
}

/// Loads every shard: images `[count, C, H, W]` = (latent - shift) * scale_factor, in the
/// shards' dtype (float16 stays float16 to halve memory; the trainer casts each batch).
/// With `posterior: moments` they are `[count, 2C, H, W]`: the scaled mean, then the
/// std times scale_factor.
pub fn load(root: &Path, m: &Manifest) -> Result<Dataset> {
    let mut lats = Vec::with_capacity(m.shards.len());
    let mut labs = Vec::with_capacity(m.shards.len());
    let mut kind = None;
    for i in 0..m.shards.len() {
        let (lat, lab) = read_shard(root, m, i)?;
        // Scaled shard by shard, so only one shard is ever held in float32 at once.
        let k = *kind.get_or_insert(lat.kind());
        let lat = lat.to_kind(Kind::Float);
        let scaled = if m.posterior == Posterior::Moments {
            let c = m.latent_shape[0];
            Tensor::cat(&[(lat.narrow(1, 0, c) - m.shift) * m.scale_factor, lat.narrow(1, c, c) * m.scale_factor], 1)
        } else {
            (lat - m.shift) * m.scale_factor
        };
        lats.push(scaled.to_kind(k));
        labs.push(lab);
    }
    Ok(Dataset { images: Tensor::cat(&lats, 0), labels: Tensor::cat(&labs, 0), num_classes: m.num_classes })
}
