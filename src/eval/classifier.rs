//! A small CNN classifier for 28x28 grey images (Fashion-MNIST, MNIST). Its penultimate
//! features give a Frechet distance that runs here (FD-FMNIST), where Inception weights
//! cannot be had; its predictions give the class accuracy of class-conditional samples.
use std::path::Path;

use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

use super::frechet::Stats;
use crate::data::Dataset;
use crate::error::{Error, Result};

/// conv(1->32) pool conv(32->64) pool fc(64*7*7 -> 128) = features, fc(128 -> classes).
pub struct Classifier {
    pub vs: nn::VarStore,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

pub const FEATURES: i64 = 128;

impl Classifier {
    /// A freshly initialised classifier (initialisation seeded by `seed`).
    pub fn new(device: Device, num_classes: i64, seed: u64) -> Self {
        crate::rng::with_seed(crate::rng::mix_seed(seed, 8, 0), || Self::build(device, num_classes))
    }

    fn build(device: Device, num_classes: i64) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let conv = |name: &str, i, o| nn::conv2d(&p / name, i, o, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        Classifier {
            conv1: conv("conv1", 1, 32),
            conv2: conv("conv2", 32, 64),
            fc1: nn::linear(&p / "fc1", 64 * 7 * 7, FEATURES, Default::default()),
            fc2: nn::linear(&p / "fc2", FEATURES, num_classes, Default::default()),
            vs,
        }
    }

    /// Penultimate features `[B, 128]` of images `[B, 1, 28, 28]` in [-1, 1].
    pub fn features(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(x).relu().max_pool2d_default(2); // [B, 32, 14, 14]
        let h = self.conv2.forward(&h).relu().max_pool2d_default(2); // [B, 64, 7, 7]
        self.fc1.forward(&h.flatten(1, -1)).relu() // [B, 128]
    }

    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.features(x))
    }

    /// Features and predicted classes of many images, in batches, without gradient.
    pub fn features_and_predictions(&self, images: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let n = images.size()[0];
            let (mut feats, mut preds) = (Vec::new(), Vec::new());
            for start in (0..n).step_by(1000) {
                let x = images.narrow(0, start, (n - start).min(1000)).to_device(self.vs.device());
                let f = self.features(&x);
                preds.push(self.fc2.forward(&f).argmax(1, false));
                feats.push(f);
            }
            (Tensor::cat(&feats, 0), Tensor::cat(&preds, 0))
        })
    }

    /// Share of `images` classified as `labels`.
    pub fn accuracy(&self, images: &Tensor, labels: &Tensor) -> f64 {
        let (_, pred) = self.features_and_predictions(images);
        pred.eq_tensor(&labels.to_device(pred.device())).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    }

    /// Adam, batch 64, lr 1e-3 halved after each epoch, `epochs` passes over `train` in
    /// a seeded order.
    pub fn fit(&mut self, train: &Dataset, epochs: usize, seed: u64, mut on_epoch: impl FnMut(usize, f64)) -> Result<()> {
        const BATCH: i64 = 64;
        let mut opt = nn::Adam::default().build(&self.vs, 1e-3)?;
        let n = train.len();
        let device = self.vs.device();
        for epoch in 0..epochs {
            let perm = crate::rng::with_seed(crate::rng::mix_seed(seed, 7, epoch as u64), || {
                Tensor::randperm(n, (Kind::Int64, Device::Cpu))
            });
            opt.set_lr(1e-3 * 0.5f64.powi(epoch as i32));
            let mut total = 0.0;
            let mut batches = 0;
            for start in (0..n - BATCH + 1).step_by(BATCH as usize) {
                let idx = perm.narrow(0, start, BATCH);
                let x = train.images.index_select(0, &idx).to_device(device);
                let y = train.labels.index_select(0, &idx).to_device(device);
                let loss = self.logits(&x).cross_entropy_for_logits(&y);
                opt.backward_step(&loss);
                total += loss.double_value(&[]);
                batches += 1;
            }
            on_epoch(epoch, total / batches as f64);
        }
        Ok(())
    }

    /// Saves the weights and the feature statistics of the reference set.
    pub fn save(&self, path: &Path, reference: &Stats) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.push(("stats.mu".into(), reference.mu.shallow_clone()));
        named.push(("stats.sigma".into(), reference.sigma.shallow_clone()));
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Loads weights and reference statistics written by `save`.
    pub fn load(path: &Path, device: Device, num_classes: i64) -> Result<(Classifier, Stats)> {
        let mut named = crate::checkpoint::read_named(path)?;
        let take = |named: &mut std::collections::HashMap<String, Tensor>, k: &str| {
            named.remove(k).ok_or_else(|| Error::file(path, format!("not a classifier file: no {k}")))
        };
        let stats = Stats { mu: take(&mut named, "stats.mu")?, sigma: take(&mut named, "stats.sigma")? };
        let c = Classifier::build(device, num_classes);
        crate::checkpoint::copy_named(&c.vs, named, path)?;
        Ok((c, stats))
    }
}
