//! The training loop, top to bottom in execution order.
//!
//! Determinism: the data order of epoch k is a permutation seeded from (seed, k) (also
//! for data read by background threads: see `data::prefetch`), flips come from (seed,
//! step, row), and
//! every draw of step s (noise, t, r, dropped labels) is seeded from (seed, s). So a
//! checkpoint's step number is its whole RNG state, and N steps + resume + N steps
//! reproduce 2N steps exactly.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::{Config, DeviceChoice, OnNonFinite};
use crate::data::image_folder::ImageFolder;
use crate::data::latents::{Manifest, Posterior};
use crate::data::prefetch::{hflip_rows, shard_flip_seed, Order, Prefetcher, Source};
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::ema::Ema;
use crate::error::{Error, Result};
use crate::guidance::Guidance;
use crate::loss::{Draws, MeanFlowLoss};
use crate::models::{self, MeanFlowNet, ModelSpec};
use crate::rng;
use crate::time::sample_pair;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
    /// No progress bar (tests).
    pub quiet: bool,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// Steps run by this call, from `start_step` to `start_step + steps`.
    pub steps: u64,
    pub start_step: u64,
    pub wall_s: f64,
    pub steps_per_s: f64,
    pub loss: f64,
    pub mse: f64,
    pub v_loss: f64,
    pub skipped: u64,
    pub grids: Vec<PathBuf>,
}

/// The device of a `train.device` / `--device` choice; CUDA asked for but not visible is an error.
pub fn resolve_device(choice: DeviceChoice) -> std::result::Result<Device, String> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err("cuda requested but CUDA is not available (no NVIDIA driver or GPU visible)".into()),
    }
}


/// The objective of a config.
pub fn objective(cfg: &Config, spec: &ModelSpec) -> MeanFlowLoss {
    MeanFlowLoss {
        tangent: cfg.meanflow.tangent,
        jvp_rows: Default::default(),
        norm_p: cfg.meanflow.norm_p,
        norm_eps: cfg.meanflow.norm_eps,
        guidance: cfg.guidance.as_ref().map(|g| Guidance::new(g, spec.num_classes())),
    }
}

/// Draws everything random of step `step` for the batch `(x, labels)`.
pub fn draw_step(cfg: &Config, objective: &MeanFlowLoss, step: u64, x: Tensor, labels: Option<Tensor>) -> Draws {
    draw_step_shard(cfg, objective, step, 0, x, labels)
}

/// The draws of data shard `shard` (= rank) of step `step`: seeded from (seed, step,
/// shard), shard 0 as in a single-process run.
pub fn draw_step_shard(cfg: &Config, objective: &MeanFlowLoss, step: u64, shard: u64, x: Tensor, labels: Option<Tensor>) -> Draws {
    let seed = crate::dist::shard_seed(cfg.seed, rng::STREAM_STEP, step, shard);
    rng::with_seed(seed, || draw_step_seeded(cfg, objective, x, labels))
}

/// One batch made of several shards' draws, in shard order (one process standing in for
/// several ranks: `dist.emulate_world_size`).
fn concat_draws(parts: Vec<Draws>) -> Draws {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap();
    }
    let cat = |f: &dyn Fn(&Draws) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
    let cat_opt = |f: &dyn Fn(&Draws) -> &Option<Tensor>| {
        parts.iter().map(|d| f(d).as_ref()).collect::<Option<Vec<&Tensor>>>().map(|v| Tensor::cat(&v, 0))
    };
    Draws {
        x: cat(&|d| &d.x),
        e: cat(&|d| &d.e),
        t: cat(&|d| &d.t),
        r: cat(&|d| &d.r),
        labels: cat_opt(&|d| &d.labels),
        dropped: cat_opt(&|d| &d.dropped),
        aug: cat_opt(&|d| &d.aug),
    }
}

fn draw_step_seeded(cfg: &Config, objective: &MeanFlowLoss, x: Tensor, labels: Option<Tensor>) -> Draws {
    // EDM augmentation first (its draws precede the others); the labels condition the net.
    let (x, aug) = match &cfg.train.augment {
        Some(a) => {
            let out = crate::augment::augment(a, &x);
            (out.images, Some(out.labels))
        }
        None => (x, None),
    };
    let b = x.size()[0];
    let device = x.device();
    let m = &cfg.meanflow;
    let e = x.randn_like();
    let r_sampler = m.r_sampler.unwrap_or(m.time_sampler);
    let pair = sample_pair(m.pair_sampler, m.ratio, &m.time_sampler, &r_sampler, b, device);
    let dropped = match (&objective.guidance, &labels) {
        (Some(g), Some(_)) => Some(g.draw_drop_mask(b, device)),
        _ => None,
    };
    Draws { x, e, t: pair.t.to_kind(Kind::Float), r: pair.r.to_kind(Kind::Float), labels, dropped, aug }
}

/// What the trainer needs to know of its data before the first batch.
#[derive(Debug, Clone, Copy)]
pub struct DataShape {
    /// [C, H, W] of one sample.
    pub item: [i64; 3],
    pub len: i64,
    pub num_classes: i64,
}

impl DataShape {
    pub fn of(data: &Dataset) -> DataShape {
        let s = data.images.size();
        DataShape { item: [s[1], s[2], s[3]], len: data.len(), num_classes: data.num_classes }
    }
}

fn check_data_matches_model(cfg: &Config, data: &DataShape, shards: i64) -> Result<()> {
    let [c, h, w] = data.item;
    if c != cfg.model.in_channels {
        return Err(cfg.error("model.in_channels", format!("is {} but the data has {c} channel(s)", cfg.model.in_channels)));
    }
    if h != cfg.model.input_size || w != cfg.model.input_size {
        return Err(cfg.error("model.input_size", format!("is {} but the data is {h}x{w}", cfg.model.input_size)));
    }
    if cfg.model.num_classes != 0 && cfg.model.num_classes != data.num_classes {
        return Err(cfg.error(
            "model.num_classes",
            format!("is {} but the data has {} classes (use 0 for unconditional)", cfg.model.num_classes, data.num_classes),
        ));
    }
    if data.len < cfg.train.batch_size * shards {
        return Err(cfg.error(
            "train.batch_size",
            format!("{} x {shards} rank(s) exceeds the {} training images", cfg.train.batch_size, data.len),
        ));
    }
    Ok(())
}

/// Where the batches of a run come from.
pub enum TrainData {
    /// Held in memory, moved to the device once, batches gathered there.
    Memory(Dataset),
    /// Latent posteriors held in memory as `[N, 2C, H, W]` (mean, std): each batch is a
    /// fresh sample mean + std * eps, eps drawn from (seed, step).
    Posterior(Dataset),
    /// Read per batch by background threads (`data.workers`).
    Stream { source: Arc<dyn Source>, workers: usize },
}

impl TrainData {
    fn shape(&self) -> DataShape {
        match self {
            TrainData::Memory(d) => DataShape::of(d),
            TrainData::Posterior(d) => {
                let s = DataShape::of(d);
                DataShape { item: [s.item[0] / 2, s.item[1], s.item[2]], ..s }
            }
            TrainData::Stream { source, .. } => {
                DataShape { item: source.item_shape(), len: source.len() as i64, num_classes: source.num_classes() }
            }
        }
    }
}

/// The batches of steps start, start + 1, ... on the training device.
enum Batches {
    Memory { images: Tensor, labels: Tensor, order: Order, posterior: bool, seed: u64 },
    Stream(Prefetcher),
}

impl Batches {
    /// `mine` are the shards (ranks) of each global batch that this process computes.
    fn new(data: TrainData, cfg: &Config, start: u64, device: Device, shards: i64, mine: &[i64]) -> Batches {
        let order = Order::sharded(cfg.seed, cfg.train.batch_size, data.shape().len, shards, mine.to_vec());
        let posterior = matches!(data, TrainData::Posterior(_));
        match data {
            TrainData::Memory(d) | TrainData::Posterior(d) => Batches::Memory {
                posterior,
                images: d.images.to_device(device),
                labels: d.labels.to_device(device),
                order,
                seed: cfg.seed,
            },
            TrainData::Stream { source, workers } => {
                Batches::Stream(Prefetcher::new(source, order, start, cfg.train.steps, workers, 2 * workers))
            }
        }
    }

    /// Images (float) and labels of `step`, one pair per shard of this process; steps are
    /// asked for in order.
    fn get(&mut self, step: u64, device: Device) -> Result<Vec<(Tensor, Tensor)>> {
        match self {
            Batches::Memory { images, labels, order, posterior, seed } => {
                let mine = order.mine.clone();
                let mut out = Vec::with_capacity(mine.len());
                for k in mine {
                    let idx = order.shard_indices(step, k).to_device(device);
                    let x = images.index_select(0, &idx).to_kind(Kind::Float);
                    let x = if *posterior {
                        let c = x.size()[1] / 2;
                        let (mean, std) = (x.narrow(1, 0, c), x.narrow(1, c, c));
                        let eps_seed = crate::dist::shard_seed(*seed, rng::STREAM_POSTERIOR, step, k as u64);
                        let eps = rng::with_seed(eps_seed, || mean.randn_like());
                        mean + std * eps
                    } else {
                        x
                    };
                    out.push((x, labels.index_select(0, &idx)));
                }
                Ok(out)
            }
            Batches::Stream(p) => {
                let (s, x, y) = p.next_batch()?;
                debug_assert_eq!(s, step);
                let (x, y) = (x.to_device(device), y.to_device(device));
                let b = x.size()[0] / p.shards_per_batch();
                Ok((0..p.shards_per_batch()).map(|j| (x.narrow(0, j * b, b), y.narrow(0, j * b, b))).collect())
            }
        }
    }
}

/// What may change on resume: the step budget, logging and checkpoint cadence, sampling.
/// The seed, model and EMA set must match (an error); any other change is run as asked
/// but listed, since it makes the run differ from an uninterrupted one.
fn check_resume(cfg: &Config, state: &TrainState, ckpt: &Path) -> Result<()> {
    if state.step >= cfg.train.steps {
        return Err(Error::Checkpoint {
            path: ckpt.to_path_buf(),
            msg: format!("is at step {} and train.steps is {}: nothing to resume (raise train.steps)", state.step, cfg.train.steps),
        });
    }
    if state.seed != cfg.seed {
        return Err(cfg.error("seed", format!("is {} but the checkpoint was trained with {}", cfg.seed, state.seed)));
    }
    if state.ema_decays != cfg.train.ema_decays {
        return Err(cfg.error(
            "train.ema_decays",
            format!("are {:?} but the checkpoint has EMAs {:?}", cfg.train.ema_decays, state.ema_decays),
        ));
    }
    let old = serde_yaml::to_value(&state.config).expect("config serialises");
    let new = serde_yaml::to_value(cfg).expect("config serialises");
    let mut changed = Vec::new();
    diff_values("", &old, &new, &mut changed);
    let free = ["train.steps", "train.run_dir", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.threads", "sample.", "data.root", "dist.sanity_every", "dist.timeout_s", "dist.bucket_mb", "eval", "paper_fid", "data.workers"];
    for (key, a, b) in changed {
        if key.starts_with("model.") {
            return Err(cfg.error(&key, format!("is {b} but the checkpoint's model has {a}")));
        }
        if !free.iter().any(|f| key.starts_with(f)) {
            eprintln!("meanflow: resuming with {key} changed from {a} to {b}; the run will differ from an uninterrupted one");
        }
    }
    Ok(())
}

/// Leaf keys whose values differ between two YAML trees, as (dotted key, old, new).
fn diff_values(prefix: &str, a: &serde_yaml::Value, b: &serde_yaml::Value, out: &mut Vec<(String, String, String)>) {
    use serde_yaml::Value;
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            let mut keys: Vec<&Value> = ma.keys().chain(mb.keys()).collect();
            keys.dedup();
            for k in keys {
                let name = k.as_str().unwrap_or("?");
                let key = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
                let (va, vb) = (ma.get(k).unwrap_or(&Value::Null), mb.get(k).unwrap_or(&Value::Null));
                if va != vb && !out.iter().any(|(o, _, _)| *o == key) {
                    diff_values(&key, va, vb, out);
                }
            }
        }
        _ if a != b => {
            let show = |v: &Value| serde_yaml::to_string(v).unwrap_or_default().trim().replace('\n', " ");
            out.push((prefix.to_string(), show(a), show(b)));
        }
        _ => {}
    }
}

/// Loads in-memory data named by the config (the split `data.split`, default train);
/// an image folder, read per batch, is opened by `open_data`.
pub fn load_data(cfg: &Config) -> Result<Dataset> {
    match open_data(cfg)? {
        TrainData::Memory(d) => Ok(d),
        TrainData::Posterior(_) | TrainData::Stream { .. } => Err(cfg.error(
            "data.dataset",
            "is not held in memory as plain samples (an image folder, or latent posterior moments): use train::open_data",
        )),
    }
}

/// Opens the data named by the config (the split `data.split`, default train). A latent
/// set whose manifest disagrees with the config is refused before any shard is read.
pub fn open_data(cfg: &Config) -> Result<TrainData> {
    let d = &cfg.data;
    let split = d.split.unwrap_or(Split::Train);
    Ok(match d.dataset {
        DatasetKind::FashionMnist | DatasetKind::Mnist => TrainData::Memory(data::load_mnist_like(d.dataset, &d.root, split)?),
        DatasetKind::Cifar10 => TrainData::Memory(data::cifar10::load(&d.root, split)?),
        DatasetKind::ImagenetLatents => {
            let manifest = Manifest::read(&d.root)?;
            manifest.check_config(cfg, &d.root)?;
            let set = data::latents::load(&d.root, &manifest)?;
            match manifest.posterior {
                Posterior::Moments => TrainData::Posterior(set),
                Posterior::Mean | Posterior::Sample => TrainData::Memory(set),
            }
        }
        DatasetKind::ImageFolder => {
            let size = d.image_size.ok_or_else(|| cfg.error("data.image_size", "is required by image_folder"))?;
            let folder = ImageFolder::open(&d.root, size as u32)?;
            TrainData::Stream { source: Arc::new(folder), workers: d.workers() }
        }
    })
}

pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<RunSummary> {
    let data = open_data(cfg)?;
    train_with(cfg, data, opts)
}

/// Trains on an in-memory dataset (the CLI loads it from `cfg.data`; tests pass their own).
pub fn train_on(cfg: &Config, data: Dataset, opts: &TrainOptions) -> Result<RunSummary> {
    train_with(cfg, TrainData::Memory(data), opts)
}

/// Trains on in-memory or streamed data.
pub fn train_with(cfg: &Config, data: TrainData, opts: &TrainOptions) -> Result<RunSummary> {
    train_with_dist(cfg, data, opts, None)
}

/// [`train`] as one rank of a data-parallel job (`None`: a single process).
pub fn train_dist(cfg: &Config, opts: &TrainOptions, dist: Option<&crate::dist::Dist>) -> Result<RunSummary> {
    let data = open_data(cfg)?;
    train_with_dist(cfg, data, opts, dist)
}

/// [`train_with`] as one rank of a data-parallel job: rank-sharded data and draws,
/// gradients averaged across ranks, and only rank 0 writes files or shows progress.
pub fn train_with_dist(cfg: &Config, data: TrainData, opts: &TrainOptions, dist: Option<&crate::dist::Dist>) -> Result<RunSummary> {
    let t = &cfg.train;
    let dcfg = cfg.dist.clone().unwrap_or_default();
    let world = dist.map_or(1, |d| d.world_size);
    if world > 1 && dcfg.emulate_world_size.is_some() {
        return Err(cfg.error("dist.emulate_world_size", "is for a single process, but this run has several ranks"));
    }
    // The shards this process computes, out of `shards` in a global batch.
    let shards = world.max(dcfg.emulate_world_size.unwrap_or(1));
    let my_shards: Vec<i64> = match dist {
        Some(d) if world > 1 => vec![d.rank],
        _ => (0..shards).collect(),
    };
    let lead = dist.map_or(true, |d| d.is_lead());
    let opts = &TrainOptions { quiet: opts.quiet || !lead, ..opts.clone() };
    // `train.threads` is applied by the CLI once at start, not here: libtorch's thread
    // count is process-wide, and changing it while another thread computes changed that
    // thread's results (seen as resume tests failing when run in parallel).
    let device = match (resolve_device(t.device).map_err(|m| cfg.error("train.device", m))?, dist) {
        // One GPU per rank of a host.
        (Device::Cuda(_), Some(d)) => Device::Cuda(d.local_rank as usize),
        (dev, _) => dev,
    };
    let shape = data.shape();
    check_data_matches_model(cfg, &shape, shards)?;
    let spec = cfg.model.spec(&cfg.source)?;
    let run_dir = t.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::file(&run_dir, format!("cannot create run folder: {e}")))?;

    // ---- model, EMA, optimizer: built from the seed, then maybe replaced by a checkpoint.
    let vs = VarStore::new(device);
    let net = rng::with_seed(rng::mix_seed(cfg.seed, rng::STREAM_INIT, 0), || models::build(&vs.root(), &spec))?;
    let emas = t.ema_decays.iter().map(|d| Ema::new(&spec, &vs, *d)).collect::<Result<Vec<_>>>()?;
    let mut opt = crate::optim::Adam::new(&vs, t.optimizer, t.betas, t.weight_decay);
    let objective = objective(cfg, &spec);

    let mut start = 0u64;
    match (checkpoint::latest(&run_dir)?, opts.resume) {
        (Some(ckpt), true) => {
            let state = checkpoint::read_state(&ckpt)?;
            check_resume(cfg, &state, &ckpt)?;
            checkpoint::load_vars(&vs, &ckpt.join("model.safetensors"))?;
            for ema in &emas {
                checkpoint::load_vars(&ema.vs, &ckpt.join(Ema::file_name(ema.decay)))?;
            }
            let opt_path = ckpt.join("optimizer.safetensors");
            opt.load_state(checkpoint::read_named(&opt_path)?, state.optimizer_updates, &opt_path.display().to_string())?;
            start = state.step;
        }
        (None, true) => {
            return Err(Error::Checkpoint { path: run_dir.clone(), msg: "--resume given but the run folder has no checkpoint".into() })
        }
        (Some(ckpt), false) => {
            return Err(Error::Checkpoint {
                path: ckpt,
                msg: "the run folder already holds a checkpoint; pass --resume to continue it or set train.run_dir to a new folder".into(),
            })
        }
        (None, false) => {}
    }
    // Every rank starts from rank 0's weights, EMAs and optimizer moments (fresh or resumed).
    if let Some(d) = dist.filter(|d| d.world_size > 1) {
        d.broadcast(&all_state(&vs, &emas, &opt), 0)?;
    }
    let mut metrics: Box<dyn Write> = if lead {
        std::fs::write(run_dir.join("config.yaml"), serde_yaml::to_string(cfg).expect("config serialises"))?;
        let metrics_path = run_dir.join("metrics.jsonl");
        truncate_metrics(&metrics_path, start)?;
        Box::new(std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path)?)
    } else {
        Box::new(std::io::sink())
    };
    let grad_sync = crate::dist::GradSync::new(dist, dcfg.bucket_mb);
    let mut synced_vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    synced_vars.sort_by(|a, b| a.0.cmp(&b.0));

    let conditional = spec.num_classes() > 0;
    let mut batches = Batches::new(data, cfg, start, device, shards, &my_shards);

    let pb = progress_bar(t.steps, start, opts.quiet);
    let started = Instant::now();
    let mut window = Window::default();
    let mut last = [f64::NAN; 3];
    let mut skipped = 0u64;
    let global_batch = t.batch_size * shards;
    let samples_per_epoch = (shape.len / global_batch) * global_batch;
    if lead {
        let ranks = if shards > 1 { format!(" ({} per rank x {shards} ranks{})", t.batch_size, if world == 1 { ", emulated" } else { "" }) } else { String::new() };
        eprintln!(
            "meanflow: {} parameters on {:?}, batch {global_batch}{ranks}, {} steps ({:.1} epochs), run folder {}",
            models::num_params(&vs),
            device,
            t.steps,
            (t.steps as f64 * global_batch as f64) / samples_per_epoch as f64,
            run_dir.display()
        );
    }

    for step in start..t.steps {
        // ---- batch and draws: this rank's shard (or, emulating, every shard in order)
        let parts = batches
            .get(step, device)?
            .into_iter()
            .zip(&my_shards)
            .map(|((x, y), &k)| {
                let x = if cfg.data.hflip { hflip_rows(&x, shard_flip_seed(cfg.seed, k), step) } else { x };
                draw_step_shard(cfg, &objective, step, k as u64, x, conditional.then_some(y))
            })
            .collect();
        let draws = concat_draws(parts);

        // ---- loss, one host sync for the three monitored numbers
        let out = {
            let _autocast = crate::precision::Autocast::for_precision(device, t.precision)?;
            objective.compute(net.as_ref(), &draws, true)?
        };
        let stats = Tensor::stack(&[out.loss.detach().to_kind(Kind::Double), out.mse.to_kind(Kind::Double), out.v_loss.to_kind(Kind::Double)], 0);
        let stats = stats.to_device(Device::Cpu);
        // Data parallel: the logged numbers are means over ranks, and a non-finite loss on
        // any rank is seen by all of them (so they all skip, or all stop).
        if let Some(d) = dist.filter(|d| d.world_size > 1) {
            d.all_reduce(&[stats.shallow_clone()], crate::dist::ReduceOp::Sum)?;
            let _ = stats.shallow_clone().g_div_scalar_(world as f64);
        }
        let s: Vec<f64> = Vec::<f64>::try_from(&stats)?;
        if s.iter().any(|v| !v.is_finite()) {
            let msg = format!("non-finite loss (loss {}, mse {}, v-loss {})", s[0], s[1], s[2]);
            match t.on_nonfinite {
                OnNonFinite::Stop => {
                    pb.abandon();
                    return Err(Error::NonFinite { step, msg });
                }
                OnNonFinite::Skip => {
                    pb.println(format!("step {step}: {msg}; update skipped (train.on_nonfinite: skip)"));
                    writeln!(metrics, "{}", serde_json::json!({"step": step + 1, "skipped": true, "reason": msg}))?;
                    skipped += 1;
                    pb.inc(1);
                    continue;
                }
            }
        }
        last = [s[0], s[1], s[2]];

        // ---- update
        opt.zero_grad();
        out.loss.backward();
        // Averaged across ranks here, whatever computed the loss (JVP included).
        let synced = grad_sync.sync(dist, opt.params())?;
        let lr = t.lr * if t.warmup_steps > 0 { ((step + 1) as f64 / t.warmup_steps as f64).min(1.0) } else { 1.0 };
        let grad_norm = update(&mut opt, synced, t.grad_clip, lr);
        for ema in &emas {
            ema.update();
        }
        window.add(&last, &grad_norm);

        // ---- log, sanity check across ranks, checkpoint
        let done = step + 1;
        if let Some(d) = dist.filter(|d| d.world_size > 1) {
            if dcfg.sanity_every > 0 && (done % dcfg.sanity_every == 0 || done == t.steps) {
                if let Err(e) = d.check_in_sync(&synced_vars, done) {
                    pb.abandon();
                    return Err(e);
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = (done - start) as f64 / elapsed.max(1e-9);
        pb.set_position(done);
        pb.set_message(format!("loss {:.4} mse {:.4} v-loss {:.4} {:.2} steps/s", s[0], s[1], s[2], rate));
        if done % t.log_every == 0 || done == t.steps {
            let m = window.take();
            writeln!(
                metrics,
                "{}",
                serde_json::json!({
                    "step": done, "loss": m[0], "mse": m[1], "v_loss": m[2], "grad_norm": m[3],
                    "lr": lr, "steps_per_s": rate, "elapsed_s": elapsed,
                })
            )?;
            if pb.is_hidden() && !opts.quiet {
                eprintln!("step {done}/{}: loss {:.4} mse {:.4} v-loss {:.4} ({rate:.2} steps/s)", t.steps, m[0], m[1], m[2]);
            }
        }
        if lead && (done % t.checkpoint_every == 0 || done == t.steps) {
            let state = TrainState {
                step: done,
                seed: cfg.seed,
                optimizer_updates: opt.updates,
                ema_decays: t.ema_decays.clone(),
                config: cfg.clone(),
            };
            let ema_refs: Vec<(f64, &VarStore)> = emas.iter().map(|e| (e.decay, &e.vs)).collect();
            checkpoint::save(&run_dir, &state, &vs, &ema_refs, &opt.state(), t.keep_checkpoints)?;
        }
    }
    pb.finish();
    let wall_s = started.elapsed().as_secs_f64();
    crate::dist::dump_weights_for_test(&vs, dist.map_or(0, |d| d.rank))?;

    // ---- sample grids from the first EMA
    let mut grids = Vec::new();
    if let Some(ema) = emas.first().filter(|_| lead) {
        for &k in &cfg.sample.nfe {
            let path = run_dir.join(format!("samples_nfe{k}.png"));
            write_grid(ema.net.as_ref(), &spec, cfg, k, device, &path)?;
            grids.push(path);
        }
    }
    Ok(RunSummary {
        run_dir,
        steps: t.steps - start,
        start_step: start,
        wall_s,
        steps_per_s: (t.steps - start) as f64 / wall_s.max(1e-9),
        loss: last[0],
        mse: last[1],
        v_loss: last[2],
        skipped,
        grids,
    })
}

/// The optimizer update of a step: clipping, then Adam. It takes the token that only
/// the gradient all-reduce produces, so no step can update unsynchronised gradients.
/// Returns the gradient norm before clipping.
fn update(opt: &mut crate::optim::Adam, _synced: crate::dist::SyncedGrads, grad_clip: Option<f64>, lr: f64) -> Tensor {
    let grad_norm = match grad_clip {
        Some(max) => opt.clip_grad_norm(max),
        None => opt.grad_norm(),
    };
    opt.step(lr);
    grad_norm
}

/// Everything rank 0 broadcasts at start: weights and buffers, EMA weights, Adam moments.
fn all_state(vs: &VarStore, emas: &[Ema], opt: &crate::optim::Adam) -> Vec<Tensor> {
    let sorted = |vs: &VarStore| {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t)
    };
    let mut out: Vec<Tensor> = sorted(vs).collect();
    for e in emas {
        out.extend(sorted(&e.vs));
    }
    out.extend(opt.state().into_iter().map(|(_, t)| t));
    out
}

/// Most images one grid may hold.
pub const MAX_GRID: i64 = 4096;

/// A sample grid: one row per class for a conditional model, else `per_class` x `per_class`.
pub fn write_grid(net: &dyn MeanFlowNet, spec: &ModelSpec, cfg: &Config, nfe: usize, device: Device, path: &Path) -> Result<()> {
    let per = cfg.sample.per_class;
    let n = match spec.num_classes() {
        0 => per.saturating_mul(per),
        c => c.saturating_mul(per),
    };
    if n > MAX_GRID {
        return Err(cfg.error("sample.per_class", format!("{per} makes a grid of {n} images; at most {MAX_GRID}")));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("png") {
        return Err(Error::file(path, "sample grids are written as PNG: use a .png file name"));
    }
    let labels = (spec.num_classes() > 0).then(|| crate::sample::class_grid_labels(spec.num_classes(), per, device));
    let shape = [n, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size];
    let noise = rng::with_seed(rng::mix_seed(cfg.sample.seed, rng::STREAM_SAMPLE, 0), || Tensor::randn(shape, (Kind::Float, device)));
    let x = crate::sample::sample(net, &noise, labels.as_ref(), &crate::sample::time_grid(nfe));
    crate::grid::save_grid(&x, per, path)
}

fn progress_bar(steps: u64, start: u64, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(steps), if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})")
            .expect("valid template"),
    );
    pb.set_position(start);
    pb
}

/// Drops metric lines past `step`: a resumed run rewrites the steps it repeats.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept)?;
    Ok(())
}

/// Running means of (loss, mse, v-loss, grad norm) between two log lines. The gradient
/// norm stays on the device until a log line needs it: no extra host sync per step.
#[derive(Default)]
struct Window {
    sum: [f64; 3],
    grad_norm: Option<Tensor>,
    n: u64,
}

impl Window {
    fn add(&mut self, s: &[f64; 3], grad_norm: &Tensor) {
        for i in 0..3 {
            self.sum[i] += s[i];
        }
        let g = grad_norm.detach().to_kind(Kind::Double);
        self.grad_norm = Some(match self.grad_norm.take() {
            Some(acc) => acc + g,
            None => g,
        });
        self.n += 1;
    }
    fn take(&mut self) -> [f64; 4] {
        let n = self.n.max(1) as f64;
        let g = self.grad_norm.as_ref().map(|g| g.double_value(&[])).unwrap_or(f64::NAN);
        let out = [self.sum[0] / n, self.sum[1] / n, self.sum[2] / n, g / n];
        *self = Window::default();
        out
    }
}

