//! Evaluation: the Frechet distance, and a metric that runs on this machine: FD in the
//! feature space of a small Fashion-MNIST classifier (FD-FMNIST) plus the class accuracy
//! of class-conditional samples.
pub mod classifier;
pub mod frechet;

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::models::MeanFlowNet;
use classifier::Classifier;
use frechet::{frechet_distance, Stats};

/// How samples are drawn from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// MeanFlow steps z_r = z_t - (t - r) u(z_t, r, t).
    Meanflow,
    /// Euler steps with the instantaneous velocity u(z_t, t, t): the flow-matching baseline.
    Euler,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub sampler: Sampler,
    pub nfe: usize,
    pub num_samples: i64,
    /// Frechet distance to the reference statistics in classifier feature space.
    pub fd: f64,
    /// Share of samples the classifier assigns to the class they were conditioned on.
    pub class_accuracy: Option<f64>,
    pub seconds: f64,
}

/// Draws `num_samples` samples (labels cycling through the classes), and scores them.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    net: &dyn MeanFlowNet,
    num_classes: i64,
    shape: [i64; 3],
    sampler: Sampler,
    nfe: usize,
    num_samples: i64,
    seed: u64,
    classifier: &Classifier,
    reference: &Stats,
    device: Device,
    quiet: bool,
) -> Result<EvalReport> {
    let started = Instant::now();
    let grid = crate::sample::time_grid(nfe);
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(num_samples as u64) };
    pb.set_style(ProgressStyle::with_template("sampling {bar:30} {pos}/{len} ({per_sec}, eta {eta})").expect("valid template"));
    let (mut samples, mut labels) = (Vec::new(), Vec::new());
    for (i, start) in (0..num_samples).step_by(500).enumerate() {
        let b = (num_samples - start).min(500);
        let l = (num_classes > 0).then(|| (Tensor::arange_start(start, start + b, (Kind::Int64, device))).remainder(num_classes));
        let noise = crate::rng::with_seed(crate::rng::mix_seed(seed, crate::rng::STREAM_SAMPLE, 1 + i as u64), || {
            Tensor::randn([b, shape[0], shape[1], shape[2]], (Kind::Float, device))
        });
        let x = match sampler {
            Sampler::Meanflow => crate::sample::sample(net, &noise, l.as_ref(), &grid),
            Sampler::Euler => crate::sample::euler(net, &noise, l.as_ref(), &grid),
        };
        samples.push(x.clamp(-1.0, 1.0));
        if let Some(l) = l {
            labels.push(l);
        }
        pb.inc(b as u64);
    }
    pb.finish_and_clear();
    let samples = Tensor::cat(&samples, 0);
    let (feats, preds) = classifier.features_and_predictions(&samples);
    let fd = frechet_distance(&Stats::from_features(&feats)?, reference)?;
    let class_accuracy = (!labels.is_empty()).then(|| {
        let l = Tensor::cat(&labels, 0).to_device(preds.device());
        preds.eq_tensor(&l).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    });
    Ok(EvalReport { sampler, nfe, num_samples, fd, class_accuracy, seconds: started.elapsed().as_secs_f64() })
}
