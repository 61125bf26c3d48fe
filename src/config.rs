//! YAML run configuration. The file structs mirror the paper's knobs; `validate`
//! rejects bad values naming the key; `ModelConfig::spec` resolves the network.
//!
//! Every struct denies unknown keys, so a typo is an error, never a silent default.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::data::{DatasetKind, Split};
use crate::error::{Error, Result};
use crate::loss::Tangent;
use crate::models::{dit, DitSize, DitSpec, MlpSpec, ModelSpec, SongUnetSpec, TimeInput, UnetSpec};
use crate::time::{PairSampler, TimeSampler};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where this config came from (file and overrides), for error messages; not a key.
    #[serde(skip)]
    pub source: String,
    /// Seeds weights, data order and every per-step draw.
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub meanflow: MeanFlowConfig,
    /// Classifier-free guidance baked into training (section 5 of the spec); absent = none.
    #[serde(default)]
    pub guidance: Option<GuidanceConfig>,
    pub train: TrainConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    /// How `meanflow sweep` scores the trained model; training ignores it.
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// The paper's FID-50K for this row, shown next to ours by `meanflow sweep`; training
    /// ignores it.
    #[serde(default)]
    pub paper_fid: Option<f64>,
    /// Multi-process data parallel (README "Data-parallel training"); absent = defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist: Option<DistConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// The data set's folder: IDX files (gzipped or plain), CIFAR-10 `*.bin` batches, a
    /// latent set's `manifest.json` and shards, or an image folder (one sub-folder per class).
    pub root: PathBuf,
    /// `train` or `test`: fashion_mnist, mnist and cifar10 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// Flip each training sample horizontally with probability 1/2, drawn from (seed,
    /// step, row); on latents, the latent is flipped along its width.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hflip: bool,
    /// Side of the center crop (image_folder only; must equal model.input_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// Threads that decode batches ahead of the trainer (image_folder only; default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Expected encoder of an imagenet_latents set; training refuses a manifest that names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// Expected latent scale factor (SD VAE: 0.18215); training refuses a manifest with another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_factor: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DataConfig {
    /// Prefetch threads of an image folder.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or(4)
    }
}

/// `name` is a DiT preset ("DiT-B/4"), or "dit", "unet", "mlp" with their own keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub in_channels: i64,
    #[serde(default)]
    pub input_size: i64,
    /// 0 = unconditional.
    #[serde(default)]
    pub num_classes: i64,
    /// Which times the network embeds (Table 1(c)): "t,r", "t,t-r", "t,r,t-r", "t-r".
    #[serde(default)]
    pub time_input: TimeInput,
    /// t is multiplied by this before the sinusoidal time features.
    #[serde(default = "time_scale")]
    pub time_scale: f64,
    // DiT ("dit", or overriding a preset)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<f64>,
    // U-Net
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_per_level: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<i64>,
    // MLP (also uses `hidden`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<i64>,
    // SongUNet ("songunet"); defaults are the official MeanFlow CIFAR-10 network:
    // model_channels 128, channel_mult [2,2,2], channel_mult_emb 4, num_blocks 4,
    // attn_resolutions [16], dropout 0.2, channel_mult_noise 2, resample_filter [1,3,3,1],
    // augment_dim 0 (6 with the paper's augmentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_channels: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_mult: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_mult_emb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_blocks: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_resolutions: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_mult_noise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample_filter: Option<Vec<f64>>,
    /// Width of the augmentation labels the network reads; must equal the label width of
    /// `train.augment` when that is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment_dim: Option<i64>,
}

impl ModelConfig {
    /// (key, set) for every SongUNet-only key.
    fn songunet_keys(&self) -> [(&'static str, bool); 9] {
        [
            ("model_channels", self.model_channels.is_some()),
            ("channel_mult", self.channel_mult.is_some()),
            ("channel_mult_emb", self.channel_mult_emb.is_some()),
            ("num_blocks", self.num_blocks.is_some()),
            ("attn_resolutions", self.attn_resolutions.is_some()),
            ("dropout", self.dropout.is_some()),
            ("channel_mult_noise", self.channel_mult_noise.is_some()),
            ("resample_filter", self.resample_filter.is_some()),
            ("augment_dim", self.augment_dim.is_some()),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeanFlowConfig {
    /// Share of the batch with r != t (Table 1(a)); the rest is plain flow matching.
    pub ratio: f64,
    /// How the r != t rows are chosen: index (JAX), v0, v1 (PyTorch).
    pub pair_sampler: PairSampler,
    /// Sampler of t (and of r, except under v1 with `r_sampler` set) (Table 1(d)).
    pub time_sampler: TimeSampler,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r_sampler: Option<TimeSampler>,
    /// JVP tangent over (z, r, t) (Table 1(b)): "v,0,1" is the MeanFlow identity.
    pub tangent: Tangent,
    /// Adaptive weight power p (Table 1(e)): loss = S / sg((S + norm_eps)^p).
    pub norm_p: f64,
    pub norm_eps: f64,
}

impl Default for MeanFlowConfig {
    fn default() -> Self {
        MeanFlowConfig {
            ratio: 0.25,
            pair_sampler: PairSampler::default(),
            time_sampler: TimeSampler::default(),
            r_sampler: None,
            tangent: Tangent::default(),
            norm_p: 1.0,
            norm_eps: 1e-3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidanceConfig {
    /// w: guidance scale of the target field (Table 1(f)).
    pub omega: f64,
    /// kappa: weight of the conditional prediction; effective scale w / (1 - kappa).
    #[serde(default)]
    pub kappa: f64,
    /// Guidance acts only for t in [t_min, t_max].
    #[serde(default)]
    pub t_min: f64,
    #[serde(default = "one")]
    pub t_max: f64,
    /// Probability that a label is replaced by the null class.
    #[serde(default = "class_dropout")]
    pub class_dropout: f64,
}

fn time_scale() -> f64 {
    1.0
}
fn one() -> f64 {
    1.0
}
fn class_dropout() -> f64 {
    0.1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Adam,
    AdamW,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Stop with an error naming the step.
    #[default]
    Stop,
    /// Skip the update, log it, and go on.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: i64,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    pub lr: f64,
    #[serde(default = "betas")]
    pub betas: [f64; 2],
    #[serde(default)]
    pub weight_decay: f64,
    /// Linear learning-rate warmup from 0 over this many steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this value; absent = no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// One EMA copy of the weights per decay; the first is the one sampled by default.
    #[serde(default = "ema_decays")]
    pub ema_decays: Vec<f64>,
    #[serde(default = "log_every")]
    pub log_every: u64,
    #[serde(default = "checkpoint_every")]
    pub checkpoint_every: u64,
    /// How many step checkpoints to keep on disk (the newest ones).
    #[serde(default = "keep_checkpoints")]
    pub keep_checkpoints: usize,
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
    #[serde(default)]
    pub device: DeviceChoice,
    /// fp32, or bf16 autocast for all but the JVP (which stays float32).
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// CPU threads for libtorch; absent = libtorch's default. Set once per process by the
    /// CLI (libtorch's count is process-wide); library callers set it themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Where the run folder goes.
    pub run_dir: PathBuf,
    /// EDM augmentation of each data batch, its labels fed to the network (needs a model
    /// with `model.augment_dim` equal to the label width); absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
}

fn betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn ema_decays() -> Vec<f64> {
    vec![0.9999]
}
fn log_every() -> u64 {
    50
}
fn checkpoint_every() -> u64 {
    1000
}
fn keep_checkpoints() -> usize {
    2
}

/// Sample grids written at the end of training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// One grid per entry: the number of function evaluations.
    pub nfe: Vec<usize>,
    /// Columns per class row (or samples in all, for an unconditional model).
    pub per_class: i64,
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { nfe: vec![1, 2], per_class: 10, seed: 0 }
    }
}

/// The metric of a sweep: FD-FMNIST and class accuracy from a `train-classifier` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub classifier: PathBuf,
    #[serde(default = "eval_num_samples")]
    pub num_samples: i64,
    /// Seed of the sampling noise.
    #[serde(default)]
    pub seed: u64,
    /// One score per entry.
    #[serde(default = "eval_samplers")]
    pub samplers: Vec<SamplerSpec>,
}

/// A sampler and its number of steps, e.g. `{sampler: euler, steps: 10}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    pub sampler: crate::eval::Sampler,
    pub steps: usize,
}

fn eval_num_samples() -> i64 {
    10_000
}
fn eval_samplers() -> Vec<SamplerSpec> {
    vec![SamplerSpec { sampler: crate::eval::Sampler::Meanflow, steps: 1 }]
}

/// Data-parallel knobs; they matter only when a launcher (torchrun, srun, RANK/WORLD_SIZE)
/// starts several processes, except `emulate_world_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Every this many steps (and at the last) the ranks compare parameter checksums; a
    /// difference stops training naming the first differing parameter. 0 = never.
    pub sanity_every: u64,
    /// Seconds any collective or rendezvous may wait for the other ranks before this rank
    /// stops with an error (a dead or hung peer).
    pub timeout_s: f64,
    /// Gradient all-reduce bucket size in MiB.
    pub bucket_mb: f64,
    /// A single process trains on the global batch that this many ranks would see (their
    /// data shards and draws concatenated): the reference a data-parallel run is compared
    /// with. Absent = 1 shard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulate_world_size: Option<i64>,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { sanity_every: 100, timeout_s: 300.0, bucket_mb: 25.0, emulate_world_size: None }
    }
}

// ---------------------------------------------------------------- loading

/// Reads `path`, applies `key.path=value` overrides, and validates.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read config: {e}")))?;
    let file = path.display().to_string();
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| Error::config(&file, "(yaml)", e.to_string()))?;
    for o in overrides {
        apply_override(&mut value, o).map_err(|(key, msg)| Error::config(format!("{file} --set {o}"), key, msg))?;
    }
    // An error about a key that an override set (or set a parent of) names that override.
    let source = |key: &str| -> String {
        let by_override = overrides.iter().rev().find(|o| {
            let k = o.split('=').next().unwrap_or_default();
            k == key || key.starts_with(&format!("{k}."))
        });
        match by_override {
            Some(o) => format!("{file} --set {o}"),
            None => file.clone(),
        }
    };
    let mut cfg = parse(value, &source).map_err(|e| match e {
        // serde reports an unknown key at its parent: look for an override of parent.field.
        Error::Config { file: f, key, msg } if f == file && msg.starts_with("unknown field `") => {
            let field = msg.trim_start_matches("unknown field `").split('`').next().unwrap_or_default();
            let full = if key == "(top level)" { field.to_string() } else { format!("{key}.{field}") };
            Error::Config { file: source(&full), key: full, msg }
        }
        other => other,
    })?;
    cfg.source = if overrides.is_empty() { file } else { format!("{file} (with {} --set)", overrides.len()) };
    Ok(cfg)
}

fn parse(value: serde_yaml::Value, source: &dyn Fn(&str) -> String) -> Result<Config> {
    let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "(top level)".to_string() } else { key };
        Error::config(source(&key), key.clone(), e.into_inner().to_string())
    })?;
    cfg.validate_with(source)?;
    Ok(cfg)
}

/// Parses an already-loaded YAML value (a config stored in a checkpoint, say).
pub fn from_value(file: &str, value: serde_yaml::Value) -> Result<Config> {
    let mut cfg = parse(value, &|_| file.to_string())?;
    cfg.source = file.to_string();
    Ok(cfg)
}

/// `a.b.c=value`: value is parsed as YAML, so numbers, lists and strings all work.
fn apply_override(root: &mut serde_yaml::Value, o: &str) -> std::result::Result<(), (String, String)> {
    let (key, raw) = o
        .split_once('=')
        .ok_or_else(|| (o.to_string(), "override must look like key.path=value".to_string()))?;
    let new: serde_yaml::Value =
        serde_yaml::from_str(raw).map_err(|e| (key.to_string(), format!("bad value {raw:?}: {e}")))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if node.is_null() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| (parts[..i].join("."), "is not a mapping, cannot set a key inside it".to_string()))?;
        let k = serde_yaml::Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, new);
            return Ok(());
        }
        node = map.entry(k).or_insert(serde_yaml::Value::Null);
    }
    Ok(())
}

// ---------------------------------------------------------------- validation

struct Check<'a> {
    source: &'a dyn Fn(&str) -> String,
}

impl Check<'_> {
    fn ensure(&self, ok: bool, key: &str, msg: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::config((self.source)(key), key, msg()))
        }
    }
    fn unit(&self, v: f64, key: &str) -> Result<()> {
        self.ensure((0.0..=1.0).contains(&v), key, || format!("must be in [0, 1], got {v}"))
    }
    fn positive(&self, v: f64, key: &str) -> Result<()> {
        self.ensure(v.is_finite() && v > 0.0, key, || format!("must be > 0, got {v}"))
    }
}

impl Config {
    pub fn validate(&self, file: &str) -> Result<()> {
        self.validate_with(&|_| file.to_string())
    }

    fn validate_with(&self, source: &dyn Fn(&str) -> String) -> Result<()> {
        let c = Check { source };
        let m = &self.meanflow;
        c.unit(m.ratio, "meanflow.ratio")?;
        c.ensure(m.norm_p.is_finite() && m.norm_p >= 0.0, "meanflow.norm_p", || format!("must be >= 0, got {}", m.norm_p))?;
        c.positive(m.norm_eps, "meanflow.norm_eps")?;
        for (s, key) in [(Some(m.time_sampler), "meanflow.time_sampler"), (m.r_sampler, "meanflow.r_sampler")] {
            if let Some(TimeSampler::LogitNormal { mu, sigma }) = s {
                c.positive(sigma, &format!("{key}.sigma"))?;
                c.ensure(mu.is_finite(), &format!("{key}.mu"), || format!("must be finite, got {mu}"))?;
            }
        }
        c.ensure(m.r_sampler.is_none() || m.pair_sampler == PairSampler::V1, "meanflow.r_sampler", || {
            "is only used by pair_sampler: v1".into()
        })?;

        if let Some(g) = &self.guidance {
            c.positive(g.omega, "guidance.omega")?;
            c.ensure((0.0..1.0).contains(&g.kappa), "guidance.kappa", || format!("must be in [0, 1), got {}", g.kappa))?;
            c.unit(g.t_min, "guidance.t_min")?;
            c.unit(g.t_max, "guidance.t_max")?;
            c.ensure(g.t_min <= g.t_max, "guidance.t_min", || format!("t_min {} > t_max {}", g.t_min, g.t_max))?;
            c.ensure((0.0..1.0).contains(&g.class_dropout), "guidance.class_dropout", || {
                format!("must be in [0, 1), got {}", g.class_dropout)
            })?;
            c.ensure(self.model.num_classes > 0, "guidance", || {
                "needs a class-conditional model (model.num_classes > 0)".into()
            })?;
        }

        self.validate_data(&c)?;

        let t = &self.train;
        c.ensure(t.steps > 0, "train.steps", || "must be > 0".into())?;
        c.ensure(t.batch_size > 0, "train.batch_size", || format!("must be > 0, got {}", t.batch_size))?;
        c.positive(t.lr, "train.lr")?;
        for (i, b) in t.betas.iter().enumerate() {
            c.ensure((0.0..1.0).contains(b), &format!("train.betas[{i}]"), || format!("must be in [0, 1), got {b}"))?;
        }
        c.ensure(t.weight_decay >= 0.0, "train.weight_decay", || format!("must be >= 0, got {}", t.weight_decay))?;
        if let Some(g) = t.grad_clip {
            c.positive(g, "train.grad_clip")?;
        }
        c.ensure(!t.ema_decays.is_empty(), "train.ema_decays", || "needs at least one decay".into())?;
        for d in &t.ema_decays {
            c.ensure((0.0..1.0).contains(d), "train.ema_decays", || format!("each decay must be in [0, 1), got {d}"))?;
        }
        c.ensure(t.log_every > 0, "train.log_every", || "must be > 0".into())?;
        c.ensure(t.checkpoint_every > 0, "train.checkpoint_every", || "must be > 0".into())?;
        c.ensure(t.keep_checkpoints > 0, "train.keep_checkpoints", || "must be > 0".into())?;
        if let Some(n) = t.threads {
            c.ensure(n > 0, "train.threads", || format!("must be > 0, got {n}"))?;
        }
        for k in &self.sample.nfe {
            c.ensure(*k >= 1, "sample.nfe", || "each entry must be >= 1".into())?;
        }
        c.ensure(self.sample.per_class > 0, "sample.per_class", || "must be > 0".into())?;
        if let Some(e) = &self.eval {
            c.ensure(e.num_samples >= 2, "eval.num_samples", || format!("must be >= 2, got {}", e.num_samples))?;
            c.ensure(!e.samplers.is_empty(), "eval.samplers", || "needs at least one sampler".into())?;
            for (i, s) in e.samplers.iter().enumerate() {
                c.ensure(s.steps >= 1, &format!("eval.samplers[{i}].steps"), || "must be >= 1".into())?;
            }
        }
        if let Some(f) = self.paper_fid {
            c.ensure(f.is_finite() && f >= 0.0, "paper_fid", || format!("must be a finite number >= 0, got {f}"))?;
        }
        if let Some(d) = &self.dist {
            c.positive(d.timeout_s, "dist.timeout_s")?;
            c.positive(d.bucket_mb, "dist.bucket_mb")?;
            if let Some(n) = d.emulate_world_size {
                c.ensure(n >= 1, "dist.emulate_world_size", || format!("must be >= 1, got {n}"))?;
            }
        }
        let spec = self.model.spec_with(source)?;
        if let Some(a) = &t.augment {
            if let Some((k, msg)) = a.invalid() {
                return Err(Error::config(source(&format!("train.augment.{k}")), format!("train.augment.{k}"), msg));
            }
            c.ensure(spec.augment_dim() > 0, "train.augment", || {
                format!("model {:?} has no augmentation-label input (model.augment_dim; only songunet has one)", self.model.name)
            })?;
            c.ensure(spec.augment_dim() == a.label_dim(), "model.augment_dim", || {
                format!("is {} but train.augment produces {} labels", spec.augment_dim(), a.label_dim())
            })?;
        }
        Ok(())
    }

    fn validate_data(&self, c: &Check) -> Result<()> {
        let d = &self.data;
        let kind = serde_yaml::to_value(d.dataset).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let only = |set: bool, key: &str, which: &str| {
            c.ensure(!set, key, || format!("is not a key of data.dataset {kind} (only of {which})"))
        };
        only(d.split.is_some() && !d.dataset.has_splits(), "data.split", "fashion_mnist, mnist, cifar10")?;
        let folder = d.dataset == DatasetKind::ImageFolder;
        let latents = d.dataset == DatasetKind::ImagenetLatents;
        only(d.image_size.is_some() && !folder, "data.image_size", "image_folder")?;
        only(d.workers.is_some() && !folder, "data.workers", "image_folder; the other data sets are held in memory")?;
        only(d.vae.is_some() && !latents, "data.vae", "imagenet_latents")?;
        only(d.scale_factor.is_some() && !latents, "data.scale_factor", "imagenet_latents")?;
        if folder {
            let size = d.image_size.ok_or_else(|| {
                Error::config((c.source)("data.image_size"), "data.image_size", "is required by data.dataset image_folder")
            })?;
            c.ensure(size > 0, "data.image_size", || format!("must be > 0, got {size}"))?;
            c.ensure(size == self.model.input_size, "data.image_size", || {
                format!("is {size} but model.input_size is {}", self.model.input_size)
            })?;
            c.ensure(self.data.workers() > 0, "data.workers", || "must be > 0".into())?;
        }
        if let Some(s) = d.scale_factor {
            c.positive(s, "data.scale_factor")?;
        }
        if let Some(fid) = self.paper_fid {
            c.ensure(fid.is_finite() && fid >= 0.0, "paper_fid", || format!("must be >= 0, got {fid}"))?;
        }
        Ok(())
    }

    /// An error about `key` of this config, naming where the config came from.
    pub fn error(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::config(if self.source.is_empty() { "(config)" } else { self.source.as_str() }, key, msg)
    }
}

impl ModelConfig {
    /// Resolves the network; errors name the key that is wrong or missing.
    pub fn spec(&self, file: &str) -> Result<ModelSpec> {
        self.spec_with(&|_| file.to_string())
    }

    fn spec_with(&self, source: &dyn Fn(&str) -> String) -> Result<ModelSpec> {
        let c = Check { source };
        c.ensure(self.in_channels > 0, "model.in_channels", || format!("must be > 0, got {}", self.in_channels))?;
        c.positive(self.time_scale, "model.time_scale")?;
        c.ensure(self.num_classes >= 0, "model.num_classes", || format!("must be >= 0, got {}", self.num_classes))?;
        let unused = |keys: &[(&str, bool)]| -> Result<()> {
            for (k, set) in keys {
                c.ensure(!set, &format!("model.{k}"), || format!("is not a key of model {:?}", self.name))?;
            }
            Ok(())
        };
        let need = |v: Option<i64>, k: &str| -> Result<i64> {
            let key = format!("model.{k}");
            let v = v.ok_or_else(|| Error::config(source(&key), &key, format!("is required by model {:?}", self.name)))?;
            c.ensure(v > 0, &format!("model.{k}"), || format!("must be > 0, got {v}"))?;
            Ok(v)
        };
        let name = self.name.as_str();
        let unknown = || {
            Error::config(
                source("model.name"),
                "model.name",
                format!("unknown model {name:?}; known: dit, unet, mlp, songunet, {}", dit::NAMED_SIZES.join(", ")),
            )
        };
        if name.starts_with("DiT-") && dit::named_size(name).is_none() {
            return Err(unknown());
        }
        if name == "dit" || name.starts_with("DiT-") {
            unused(&[
                ("channels", self.channels.is_some()),
                ("blocks_per_level", self.blocks_per_level.is_some()),
                ("groups", self.groups.is_some()),
                ("layers", self.layers.is_some()),
            ])?;
            unused(&self.songunet_keys())?;
            let preset = if name == "dit" {
                None
            } else {
                Some(dit::named_size(name).ok_or_else(unknown)?)
            };
            let pick = |v: Option<i64>, k: &str, d: Option<i64>| need(v.or(d), k);
            let size = DitSize {
                depth: pick(self.depth, "depth", preset.map(|p| p.depth))?,
                hidden: pick(self.hidden, "hidden", preset.map(|p| p.hidden))?,
                heads: pick(self.heads, "heads", preset.map(|p| p.heads))?,
                patch: pick(self.patch, "patch", preset.map(|p| p.patch))?,
            };
            need(Some(self.input_size), "input_size")?;
            c.ensure(self.input_size % size.patch == 0, "model.patch", || {
                format!("input_size {} is not a multiple of patch {}", self.input_size, size.patch)
            })?;
            c.ensure(size.hidden % size.heads == 0, "model.heads", || {
                format!("hidden {} is not a multiple of heads {}", size.hidden, size.heads)
            })?;
            c.ensure(size.hidden % 4 == 0, "model.hidden", || "must be a multiple of 4 (sin-cos position embedding)".into())?;
            let mlp_ratio = self.mlp_ratio.unwrap_or(4.0);
            c.positive(mlp_ratio, "model.mlp_ratio")?;
            return Ok(ModelSpec::Dit(DitSpec {
                size,
                input_size: self.input_size,
                in_channels: self.in_channels,
                num_classes: self.num_classes,
                mlp_ratio,
                time_input: self.time_input,
                time_scale: self.time_scale,
            }));
        }
        match name {
            "unet" => {
                unused(&[
                    ("depth", self.depth.is_some()),
                    ("hidden", self.hidden.is_some()),
                    ("heads", self.heads.is_some()),
                    ("patch", self.patch.is_some()),
                    ("mlp_ratio", self.mlp_ratio.is_some()),
                    ("layers", self.layers.is_some()),
                ])?;
                unused(&self.songunet_keys())?;
                let channels = self
                    .channels
                    .clone()
                    .ok_or_else(|| Error::config(source("model.channels"), "model.channels", "is required by model \"unet\""))?;
                c.ensure(!channels.is_empty() && channels.iter().all(|&x| x > 0), "model.channels", || {
                    format!("must be a non-empty list of positive counts, got {channels:?}")
                })?;
                let groups = need(Some(self.groups.unwrap_or(8)), "groups")?;
                c.ensure(channels.iter().all(|x| x % groups == 0), "model.groups", || {
                    format!("every channel count in {channels:?} must be a multiple of groups {groups}")
                })?;
                let input_size = need(Some(self.input_size), "input_size")?;
                let halvings = channels.len() as u32 - 1;
                c.ensure(input_size % (1 << halvings) == 0, "model.input_size", || {
                    format!("{input_size} cannot be halved {halvings} times (one per extra level in model.channels)")
                })?;
                Ok(ModelSpec::Unet(UnetSpec {
                    channels,
                    blocks_per_level: need(Some(self.blocks_per_level.unwrap_or(1)), "blocks_per_level")?,
                    groups,
                    in_channels: self.in_channels,
                    input_size,
                    num_classes: self.num_classes,
                    time_input: self.time_input,
                time_scale: self.time_scale,
                }))
            }
            "mlp" => {
                unused(&[
                    ("depth", self.depth.is_some()),
                    ("heads", self.heads.is_some()),
                    ("patch", self.patch.is_some()),
                    ("mlp_ratio", self.mlp_ratio.is_some()),
                    ("channels", self.channels.is_some()),
                    ("blocks_per_level", self.blocks_per_level.is_some()),
                    ("groups", self.groups.is_some()),
                ])?;
                unused(&self.songunet_keys())?;
                Ok(ModelSpec::Mlp(MlpSpec {
                    dim: self.in_channels,
                    hidden: need(Some(self.hidden.unwrap_or(256)), "hidden")?,
                    layers: need(Some(self.layers.unwrap_or(3)), "layers")?,
                    num_classes: self.num_classes,
                    time_input: self.time_input,
                time_scale: self.time_scale,
                }))
            }
            "songunet" => {
                unused(&[
                    ("depth", self.depth.is_some()),
                    ("hidden", self.hidden.is_some()),
                    ("heads", self.heads.is_some()),
                    ("patch", self.patch.is_some()),
                    ("mlp_ratio", self.mlp_ratio.is_some()),
                    ("channels", self.channels.is_some()),
                    ("blocks_per_level", self.blocks_per_level.is_some()),
                    ("groups", self.groups.is_some()),
                    ("layers", self.layers.is_some()),
                ])?;
                let d = SongUnetSpec::meanflow_cifar10();
                let model_channels = need(Some(self.model_channels.unwrap_or(d.model_channels)), "model_channels")?;
                let channel_mult = self.channel_mult.clone().unwrap_or(d.channel_mult);
                c.ensure(!channel_mult.is_empty() && channel_mult.iter().all(|&m| m > 0), "model.channel_mult", || {
                    format!("must be a non-empty list of positive multipliers, got {channel_mult:?}")
                })?;
                for m in channel_mult.iter().chain([&1]) {
                    let ch = model_channels * m;
                    let groups = 32.min(ch / 4);
                    c.ensure(groups >= 1 && ch % groups == 0, "model.model_channels", || {
                        format!("{ch} channels (model_channels x {m}) need min(32, C/4) = {groups} group-norm groups to divide C")
                    })?;
                }
                let input_size = need(Some(self.input_size), "input_size")?;
                let halvings = channel_mult.len() as u32 - 1;
                c.ensure(input_size % (1 << halvings) == 0, "model.input_size", || {
                    format!("{input_size} cannot be halved {halvings} times (one per extra level in model.channel_mult)")
                })?;
                let dropout = self.dropout.unwrap_or(d.dropout);
                c.ensure((0.0..1.0).contains(&dropout), "model.dropout", || format!("must be in [0, 1), got {dropout}"))?;
                let resample_filter = self.resample_filter.clone().unwrap_or(d.resample_filter);
                c.ensure(
                    resample_filter.len() >= 2 && resample_filter.len() % 2 == 0 && resample_filter.iter().sum::<f64>() != 0.0,
                    "model.resample_filter",
                    || format!("needs an even number (>= 2) of taps with a non-zero sum, got {resample_filter:?}"),
                )?;
                let augment_dim = self.augment_dim.unwrap_or(0);
                c.ensure(augment_dim >= 0, "model.augment_dim", || format!("must be >= 0, got {augment_dim}"))?;
                let attn_resolutions = self.attn_resolutions.clone().unwrap_or(d.attn_resolutions);
                Ok(ModelSpec::SongUnet(SongUnetSpec {
                    img_resolution: input_size,
                    in_channels: self.in_channels,
                    num_classes: self.num_classes,
                    augment_dim,
                    model_channels,
                    channel_mult,
                    channel_mult_emb: need(Some(self.channel_mult_emb.unwrap_or(d.channel_mult_emb)), "channel_mult_emb")?,
                    num_blocks: need(Some(self.num_blocks.unwrap_or(d.num_blocks)), "num_blocks")?,
                    attn_resolutions,
                    dropout,
                    channel_mult_noise: need(Some(self.channel_mult_noise.unwrap_or(d.channel_mult_noise)), "channel_mult_noise")?,
                    resample_filter,
                    time_input: self.time_input,
                    time_scale: self.time_scale,
                }))
            }
            _ => Err(unknown()),
        }
    }
}
