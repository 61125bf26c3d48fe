//! Evaluation: the Frechet distance, and a metric that runs on this machine: FD in the
//! feature space of a small Fashion-MNIST classifier (FD-FMNIST) plus the class accuracy
//! of class-conditional samples; and FID through a TorchScript Inception feature extractor
//! against `.npz` reference statistics.
pub mod classifier;
pub mod frechet;
pub mod images;
pub mod inception;
pub mod npz;
pub mod stats;

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::models::MeanFlowNet;
use classifier::Classifier;
use frechet::{frechet_distance, Stats};
use images::ImageSet;
use inception::Inception;
use stats::StatsAccumulator;

/// How samples are drawn from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// MeanFlow steps z_r = z_t - (t - r) u(z_t, r, t): one evaluation per step.
    Meanflow,
    /// Euler steps with the instantaneous velocity u(z_t, t, t): the flow-matching baseline.
    Euler,
    /// Heun steps with u(z_t, t, t): second-order flow-matching baseline, two evaluations per step.
    Heun,
}

impl Sampler {
    /// Function evaluations of `steps` steps.
    pub fn nfe(self, steps: usize) -> usize {
        match self {
            Sampler::Meanflow | Sampler::Euler => steps,
            Sampler::Heun => 2 * steps,
        }
    }

    /// Draws from `noise` in `steps` uniform steps.
    pub fn run(self, net: &dyn MeanFlowNet, noise: &Tensor, labels: Option<&Tensor>, steps: usize) -> Tensor {
        let grid = crate::sample::time_grid(steps);
        match self {
            Sampler::Meanflow => crate::sample::sample(net, noise, labels, &grid),
            Sampler::Euler => crate::sample::euler(net, noise, labels, &grid),
            Sampler::Heun => crate::sample::heun(net, noise, labels, &grid),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sampler::Meanflow => "meanflow",
            Sampler::Euler => "euler",
            Sampler::Heun => "heun",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub sampler: Sampler,
    pub steps: usize,
    /// Network evaluations per sample.
    pub nfe: usize,
    pub num_samples: i64,
    /// Frechet distance to the reference statistics in classifier feature space.
    pub fd: f64,
    /// Share of samples the classifier assigns to the class they were conditioned on.
    pub class_accuracy: Option<f64>,
    pub seconds: f64,
}

/// Draws `num_samples` samples (labels cycling through the classes) in batches of 500 and
/// hands each batch, clamped to [-1, 1], with its labels to `on_batch`. The noise of batch i
/// is seeded by (seed, i): the same samples for every metric.
#[allow(clippy::too_many_arguments)]
pub fn for_each_sample_batch(
    net: &dyn MeanFlowNet,
    num_classes: i64,
    shape: [i64; 3],
    sampler: Sampler,
    steps: usize,
    num_samples: i64,
    seed: u64,
    device: Device,
    quiet: bool,
    mut on_batch: impl FnMut(&Tensor, Option<&Tensor>) -> Result<()>,
) -> Result<()> {
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(num_samples as u64) };
    pb.set_style(ProgressStyle::with_template("sampling {bar:30} {pos}/{len} ({per_sec}, eta {eta})").expect("valid template"));
    for (i, start) in (0..num_samples).step_by(500).enumerate() {
        let b = (num_samples - start).min(500);
        let l = (num_classes > 0).then(|| (Tensor::arange_start(start, start + b, (Kind::Int64, device))).remainder(num_classes));
        let noise = crate::rng::with_seed(crate::rng::mix_seed(seed, crate::rng::STREAM_SAMPLE, 1 + i as u64), || {
            Tensor::randn([b, shape[0], shape[1], shape[2]], (Kind::Float, device))
        });
        let x = sampler.run(net, &noise, l.as_ref(), steps);
        on_batch(&x.clamp(-1.0, 1.0), l.as_ref())?;
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

/// Draws `num_samples` samples (labels cycling through the classes), and scores them.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    net: &dyn MeanFlowNet,
    num_classes: i64,
    shape: [i64; 3],
    sampler: Sampler,
    steps: usize,
    num_samples: i64,
    seed: u64,
    classifier: &Classifier,
    reference: &Stats,
    device: Device,
    quiet: bool,
) -> Result<EvalReport> {
    let started = Instant::now();
    let mut acc = StatsAccumulator::new();
    let (mut correct, mut labelled) = (0i64, 0i64);
    for_each_sample_batch(net, num_classes, shape, sampler, steps, num_samples, seed, device, quiet, |x, l| {
        let (feats, preds) = classifier.features_and_predictions(x);
        acc.add(&feats)?;
        if let Some(l) = l {
            correct += preds.eq_tensor(&l.to_device(preds.device())).sum(Kind::Int64).int64_value(&[]);
            labelled += l.size()[0];
        }
        Ok(())
    })?;
    let fd = frechet_distance(&acc.finish()?, reference)?;
    let class_accuracy = (labelled > 0).then(|| correct as f64 / labelled as f64);
    Ok(EvalReport { sampler, steps, nfe: sampler.nfe(steps), num_samples, fd, class_accuracy, seconds: started.elapsed().as_secs_f64() })
}

#[derive(Debug, Clone, Serialize)]
pub struct FidReport {
    pub sampler: Sampler,
    pub steps: usize,
    /// Network evaluations per sample.
    pub nfe: usize,
    pub num_samples: i64,
    /// Frechet distance to the reference statistics in the feature extractor's space.
    pub fid: f64,
    /// Width of the feature vectors (2048 for Inception-v3).
    pub feature_dim: i64,
    pub seconds: f64,
}

/// FID: samples through a TorchScript feature extractor (see `inception`), statistics
/// accumulated in float64, Frechet distance to `reference`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_fid(
    net: &dyn MeanFlowNet,
    num_classes: i64,
    shape: [i64; 3],
    sampler: Sampler,
    steps: usize,
    num_samples: i64,
    seed: u64,
    extractor: &Inception,
    reference: &Stats,
    device: Device,
    quiet: bool,
) -> Result<FidReport> {
    let started = Instant::now();
    let mut acc = StatsAccumulator::new();
    for_each_sample_batch(net, num_classes, shape, sampler, steps, num_samples, seed, device, quiet, |x, _| acc.add(&extractor.features(x)?))?;
    let stats = acc.finish()?;
    let feature_dim = stats.mu.size()[0];
    let fid = frechet_distance(&stats, reference)?;
    Ok(FidReport { sampler, steps, nfe: sampler.nfe(steps), num_samples, fid, feature_dim, seconds: started.elapsed().as_secs_f64() })
}

/// Feature statistics of the first `limit` (default all) images of a set, fed in batches
/// of `inception::BATCH`, with a progress bar: how reference statistics are made
/// (`meanflow fid-stats`).
pub fn image_stats(extractor: &Inception, images: &ImageSet, limit: Option<i64>, quiet: bool) -> Result<Stats> {
    let n = limit.map_or(images.len(), |l| l.min(images.len()));
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(n as u64) };
    pb.set_style(ProgressStyle::with_template("features {bar:30} {pos}/{len} ({per_sec}, eta {eta})").expect("valid template"));
    let mut acc = StatsAccumulator::new();
    for start in (0..n).step_by(inception::BATCH as usize) {
        let b = (n - start).min(inception::BATCH);
        acc.add(&extractor.features_uint8(&images.batch(start, b)?)?)?;
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    acc.finish()
}

/// A checkpoint scored by `evaluate`, with what was scored.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub checkpoint: std::path::PathBuf,
    pub weights: std::path::PathBuf,
    pub classifier: std::path::PathBuf,
    pub step: u64,
    pub seed: u64,
    pub report: EvalReport,
}

/// Loads a checkpoint's weights (an EMA or the raw ones) and the classifier, then `evaluate`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_checkpoint(
    ckpt: &std::path::Path,
    weights: crate::checkpoint::Weights,
    classifier: &std::path::Path,
    sampler: Sampler,
    steps: usize,
    num_samples: i64,
    seed: u64,
    quiet: bool,
) -> Result<CheckpointReport> {
    use crate::checkpoint;
    let device = Device::cuda_if_available();
    let checkpoint::LoadedModel { dir, state, spec, vs: _vs, net, weights: file } = checkpoint::load_model(ckpt, weights, device)?;
    let cfg = &state.config;
    let (clf, reference) = Classifier::load(classifier, device, 10)?;
    if cfg.model.in_channels != 1 || cfg.model.input_size != 28 {
        return Err(crate::error::Error::file(
            classifier,
            format!(
                "the classifier scores 28x28 grey images; the model of {} makes {}x{}x{}",
                dir.display(),
                cfg.model.in_channels,
                cfg.model.input_size,
                cfg.model.input_size
            ),
        ));
    }
    let report = evaluate(net.as_ref(), spec.num_classes(), [1, 28, 28], sampler, steps, num_samples, seed, &clf, &reference, device, quiet)?;
    Ok(CheckpointReport { checkpoint: dir, weights: file, classifier: classifier.to_path_buf(), step: state.step, seed, report })
}

/// Default report file in a checkpoint folder: eval_nfe1.json, eval_euler_steps10.json, ...
pub fn report_file_name(sampler: Sampler, steps: usize) -> String {
    match sampler {
        Sampler::Meanflow => format!("eval_nfe{steps}.json"),
        other => format!("eval_{}_steps{steps}.json", other.name()),
    }
}
