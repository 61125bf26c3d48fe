//! Evaluation: the Frechet distance, and a metric that runs on this machine: FD in the
//! feature space of a small Fashion-MNIST classifier (FD-FMNIST) plus the class accuracy
//! of class-conditional samples.
pub mod classifier;
pub mod frechet;

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::models::MeanFlowNet;
use classifier::Classifier;
use frechet::{frechet_distance, Stats};

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
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(num_samples as u64) };
    pb.set_style(ProgressStyle::with_template("sampling {bar:30} {pos}/{len} ({per_sec}, eta {eta})").expect("valid template"));
    let (mut samples, mut labels) = (Vec::new(), Vec::new());
    for (i, start) in (0..num_samples).step_by(500).enumerate() {
        let b = (num_samples - start).min(500);
        let l = (num_classes > 0).then(|| (Tensor::arange_start(start, start + b, (Kind::Int64, device))).remainder(num_classes));
        let noise = crate::rng::with_seed(crate::rng::mix_seed(seed, crate::rng::STREAM_SAMPLE, 1 + i as u64), || {
            Tensor::randn([b, shape[0], shape[1], shape[2]], (Kind::Float, device))
        });
        let x = sampler.run(net, &noise, l.as_ref(), steps);
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
    Ok(EvalReport { sampler, steps, nfe: sampler.nfe(steps), num_samples, fd, class_accuracy, seconds: started.elapsed().as_secs_f64() })
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
    let dir = checkpoint::resolve(ckpt)?;
    let state = checkpoint::read_state(&dir)?;
    let cfg = &state.config;
    let device = Device::cuda_if_available();
    let spec = cfg.model.spec(&cfg.source)?;
    let vs = tch::nn::VarStore::new(device);
    let net = crate::models::build(&vs.root(), &spec)?;
    let file = checkpoint::weights_file(&dir, &state, weights)?;
    checkpoint::load_vars(&vs, &file)?;
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
