//! The `meanflow` command line: a thin layer over the library.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meanflow::checkpoint::Weights;
use meanflow::config::DeviceChoice;
use meanflow::data::{self, DatasetKind, Split};
use meanflow::eval::{self, classifier::Classifier, frechet::Stats, images::ImageSet, inception::Inception};
use meanflow::{checkpoint, config, models, sample, sweep, train};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[derive(Parser)]
#[command(name = "meanflow", version, about = "MeanFlow one-step generative models on libtorch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model from a YAML config.
    Train {
        /// The YAML run config (see configs/ and the README's key table).
        #[arg(long)]
        config: PathBuf,
        /// Override a config key, e.g. --set train.steps=500 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Continue from the run folder's latest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Write a sample grid (one row per class for a conditional model).
    Sample {
        /// A checkpoint folder, or a run folder (its latest checkpoint is used).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of function evaluations (uniform time grid from 1 to 0).
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// The PNG file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        weights: WeightsArg,
        /// Samples per class (columns), or per side of an unconditional grid [default: the
        /// checkpoint's sample.per_class].
        #[arg(long)]
        per_class: Option<i64>,
        /// Seed of the noise [default: the checkpoint's sample.seed].
        #[arg(long)]
        seed: Option<u64>,
        /// cpu, cuda, or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Write a checkpoint's weights as a PyTorch state dict (safetensors).
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        weights: WeightsArg,
    },
    /// Turn a state dict (safetensors) into a step-0 checkpoint of the model in --config.
    Import {
        #[arg(long = "state-dict")]
        state_dict: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The run folder to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the small classifier behind FD-FMNIST and the class accuracy of `eval`.
    TrainClassifier {
        /// fashion_mnist or mnist.
        #[arg(long, default_value = "fashion_mnist")]
        dataset: String,
        /// Folder with the IDX files.
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        root: PathBuf,
        #[arg(long, default_value_t = 3)]
        epochs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Weights and training-set feature statistics (safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sample a checkpoint and score it: FD-FMNIST and class accuracy, or FID (--fid), plus a JSON report.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// A file written by `train-classifier` (FD-FMNIST; not with --fid).
        #[arg(long, required_unless_present = "fid", conflicts_with = "fid")]
        classifier: Option<PathBuf>,
        /// FID instead: features from --inception, Frechet distance to --ref.
        #[arg(long, requires_all = ["inception", "reference"])]
        fid: bool,
        /// A TorchScript feature extractor (tools/export_inception.py): uint8 [B,3,H,W] in, [B,D] out.
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Reference statistics (.npz with mu and sigma: pytorch-fid, EDM, ADM, `fid-stats`).
        #[arg(long = "ref")]
        reference: Option<PathBuf>,
        /// Sampling steps (for meanflow and euler also the NFE).
        #[arg(long, visible_alias = "steps", default_value_t = 1)]
        nfe: usize,
        /// meanflow steps, or euler / heun steps with u(z, t, t) (the flow-matching baselines;
        /// heun costs two evaluations per step).
        #[arg(long, value_enum, default_value = "meanflow")]
        sampler: eval::Sampler,
        #[arg(long, default_value_t = 10000)]
        num_samples: i64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        weights: WeightsArg,
        /// The JSON report [default: eval_nfe<K>.json or eval_<sampler>_steps<K>.json in the
        /// checkpoint folder].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train a family of runs in order (resumable), score them with each config's `eval`
    /// section, and write <out>/results.md (one row per run next to the paper's value).
    Sweep {
        /// A folder of configs (one run per file), or one config varied with --vary.
        path: PathBuf,
        /// KEY=[V1, V2, ...]: a YAML list of values for one key of the config; repeat for
        /// all combinations. Only with a config file.
        #[arg(long = "vary", value_name = "KEY=[V1, ...]")]
        vary: Vec<String>,
        /// Override a key of every run, e.g. --set train.steps=200 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Folder of the runs and the table [default: runs/sweep-<folder or config name>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// CPU threads [default: the first run's train.threads, else libtorch's].
        #[arg(long)]
        threads: Option<i32>,
    },
    /// Write FID reference statistics (.npz: mu, sigma in float64) of a set of images.
    FidStats {
        /// The TorchScript feature extractor (tools/export_inception.py).
        #[arg(long)]
        inception: PathBuf,
        /// A folder of PNG images (all the same size), or an .npz whose arr_0 is uint8
        /// [N, H, W, C] images (ADM/EDM sample batches).
        #[arg(long, conflicts_with = "dataset", required_unless_present = "dataset")]
        images: Option<PathBuf>,
        /// Or a dataset: fashion_mnist or mnist (its training split, or --split test).
        #[arg(long)]
        dataset: Option<String>,
        /// Folder with the dataset's IDX files.
        #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
        root: PathBuf,
        /// train or test.
        #[arg(long, default_value = "train")]
        split: String,
        /// Use only the first N images.
        #[arg(long)]
        limit: Option<i64>,
        /// The .npz to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Plot loss, mse and v-loss against step from RUN_DIR/metrics.jsonl into a PNG.
    Plot {
        run_dir: PathBuf,
        /// The PNG to write [default: RUN_DIR/metrics.png].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the libtorch build, devices and thread count.
    Info,
    /// Check the data-parallel collectives (bucketed all-reduce mean, broadcast, barrier)
    /// across the ranks of a launch (torchrun, srun, RANK/WORLD_SIZE), and time the all-reduce.
    DistCheck {
        /// cpu (Gloo) or cuda (NCCL; needs a build with --features nccl).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// MiB all-reduced.
        #[arg(long, default_value_t = 64.0)]
        mb: f64,
        #[arg(long, default_value_t = 25.0)]
        bucket_mb: f64,
        #[arg(long, default_value_t = 60.0)]
        timeout_s: f64,
    },
}

/// Which weights of a checkpoint: an EMA (the default) or the raw ones.
#[derive(clap::Args)]
struct WeightsArg {
    /// Use the raw weights instead of an EMA.
    #[arg(long, conflicts_with = "ema")]
    raw: bool,
    /// Which EMA [default: the first of train.ema_decays].
    #[arg(long)]
    ema: Option<f64>,
}

impl WeightsArg {
    fn which(&self) -> Weights {
        if self.raw {
            Weights::Raw
        } else {
            Weights::Ema(self.ema)
        }
    }
}

fn main() {
    // Print the error chain ourselves: anyhow's Debug form would add a backtrace whenever
    // RUST_BACKTRACE is set, burying the one line a user needs.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `train`, as one rank of a data-parallel job when a launcher (torchrun, srun, or
/// RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT by hand) started this process. `None` on the
/// ranks other than 0, which print nothing.
fn train_maybe_distributed(cfg: &config::Config, resume: bool) -> Result<Option<train::RunSummary>> {
    use meanflow::dist::{launch, Dist};
    let launch = launch::from_env().map_err(|m| anyhow::anyhow!("data-parallel launch: {m}"))?;
    match (cfg.train.threads, &launch) {
        (Some(n), _) => tch::set_num_threads(n),
        // Share this host's cores among its ranks.
        (None, Some(l)) => tch::set_num_threads(l.default_threads()),
        (None, None) => {}
    }
    let opts = train::TrainOptions { resume, quiet: false };
    let Some(l) = launch else { return Ok(Some(train::train(cfg, &opts)?)) };
    let dcfg = cfg.dist.clone().unwrap_or_default();
    let cuda = matches!(train::resolve_device(cfg.train.device), Ok(Device::Cuda(_)));
    let dist = Dist::init(&l, std::time::Duration::from_secs_f64(dcfg.timeout_s), cuda)?;
    if dist.is_lead() {
        eprintln!(
            "meanflow: data parallel, {} ranks ({:?} launch), {} thread(s) per rank, timeout {} s",
            dist.world_size,
            dist.launcher,
            tch::get_num_threads(),
            dcfg.timeout_s
        );
    }
    match train::train_dist(cfg, &opts, Some(&dist)) {
        Ok(s) => {
            let lead = dist.is_lead();
            dist.finish()?;
            Ok(lead.then_some(s))
        }
        Err(e) => {
            dist.abandon();
            Err(anyhow::anyhow!("rank {}/{}: {e}", l.rank, l.world_size))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train { config, overrides, resume } => {
            let cfg = config::load(&config, &overrides)?;
            let Some(s) = train_maybe_distributed(&cfg, resume)? else { return Ok(()) };
            let from = if s.start_step > 0 { format!(" (steps {}..{})", s.start_step, s.start_step + s.steps) } else { String::new() };
            println!(
                "trained {} steps{from} in {:.1} s ({:.2} steps/s): loss {:.4}, mse {:.4}, v-loss {:.4}{}",
                s.steps,
                s.wall_s,
                s.steps_per_s,
                s.loss,
                s.mse,
                s.v_loss,
                if s.skipped > 0 { format!(", {} steps skipped (non-finite)", s.skipped) } else { String::new() }
            );
            for g in &s.grids {
                println!("samples: {}", g.display());
            }
            println!("run folder: {}", s.run_dir.display());
        }
        Cmd::Sample { checkpoint: ckpt, steps, out, weights, per_class, seed, device } => {
            anyhow::ensure!(steps >= 1, "--steps must be >= 1");
            let dir = checkpoint::resolve(&ckpt)?;
            let state = checkpoint::read_state(&dir)?;
            let mut cfg = state.config.clone();
            if let Some(p) = per_class {
                anyhow::ensure!(p > 0, "--per-class must be > 0");
                cfg.sample.per_class = p;
            }
            if let Some(s) = seed {
                cfg.sample.seed = s;
            }
            let choice = match device.as_str() {
                "auto" => DeviceChoice::Auto,
                "cpu" => DeviceChoice::Cpu,
                "cuda" => DeviceChoice::Cuda,
                other => anyhow::bail!("--device must be auto, cpu or cuda, got {other:?}"),
            };
            let device = train::resolve_device(choice).map_err(|m| anyhow::anyhow!("--device: {m}"))?;
            let spec = cfg.model.spec("checkpoint config")?;
            let vs = VarStore::new(device);
            let net = models::build(&vs.root(), &spec)?;
            let file = checkpoint::weights_file(&dir, &state, weights.which())?;
            checkpoint::load_vars(&vs, &file)?;
            train::write_grid(net.as_ref(), &spec, &cfg, steps, device, &out)
                .with_context(|| format!("sampling {}", dir.display()))?;
            println!("wrote {} ({}-NFE, weights {})", out.display(), steps, file.display());
        }
        Cmd::Export { checkpoint: ckpt, out, weights } => {
            let src = checkpoint::export(&ckpt, weights.which(), &out)?;
            println!("wrote {} (from {})", out.display(), src.display());
        }
        Cmd::Import { state_dict, config: cfg_path, overrides, out } => {
            let cfg = config::load(&cfg_path, &overrides)?;
            let dir = checkpoint::import(&state_dict, &cfg, &out)?;
            println!("wrote checkpoint {} (step 0, weights from {})", dir.display(), state_dict.display());
        }
        Cmd::TrainClassifier { dataset, root, epochs, seed, out } => {
            let kind: DatasetKind = serde_yaml::from_str(&dataset).map_err(|_| anyhow::anyhow!("--dataset must be fashion_mnist or mnist, got {dataset:?}"))?;
            anyhow::ensure!(epochs >= 1, "--epochs must be >= 1");
            let device = Device::cuda_if_available();
            let train_set = data::load_mnist_like(kind, &root, Split::Train)?;
            let test_set = data::load_mnist_like(kind, &root, Split::Test)?;
            let mut clf = Classifier::new(device, train_set.num_classes, seed);
            clf.fit(&train_set, epochs, seed, |e, loss| println!("epoch {}: train loss {loss:.4}", e + 1))?;
            let acc = clf.accuracy(&test_set.images, &test_set.labels);
            let (feats, _) = clf.features_and_predictions(&train_set.images);
            clf.save(&out, &Stats::from_features(&feats)?)?;
            println!("test accuracy {:.2}% on {} images; wrote {}", 100.0 * acc, test_set.len(), out.display());
        }
        Cmd::Eval { checkpoint: ckpt, classifier, fid, inception, reference, nfe, sampler, num_samples, seed, weights, out } => {
            anyhow::ensure!(nfe >= 1, "--nfe must be >= 1");
            anyhow::ensure!(num_samples >= 2, "--num-samples must be >= 2");
            if fid {
                let device = Device::cuda_if_available();
                let checkpoint::LoadedModel { dir, state, spec, vs: _vs, net, weights: file } = checkpoint::load_model(&ckpt, weights.which(), device)?;
                let (inception, reference) = (inception.expect("clap requires it"), reference.expect("clap requires it"));
                let fid_args = FidArgs { dir: &dir, state: &state, weights: &file, inception: &inception, reference: &reference };
                return eval_fid(net.as_ref(), &spec, fid_args, sampler, nfe, num_samples, seed, device, out);
            }
            let classifier = classifier.expect("clap requires --classifier without --fid");
            let r = eval::evaluate_checkpoint(&ckpt, weights.which(), &classifier, sampler, nfe, num_samples, seed, false)?;
            let rep = &r.report;
            let acc = rep.class_accuracy.map(|a| format!(", class accuracy {:.2}%", 100.0 * a)).unwrap_or_default();
            println!("{} {} steps ({}-NFE), {num_samples} samples: FD-FMNIST {:.3}{acc} ({:.1} s)", sampler.name(), rep.steps, rep.nfe, rep.fd, rep.seconds);
            let out = out.unwrap_or_else(|| r.checkpoint.join(eval::report_file_name(sampler, nfe)));
            std::fs::write(&out, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", out.display()))?;
            println!("report: {}", out.display());
        }
        Cmd::Sweep { path, vary, overrides, out, threads } => {
            let source = if path.is_dir() {
                anyhow::ensure!(vary.is_empty(), "--vary needs one config file, but {} is a folder", path.display());
                sweep::Source::Folder(path.clone())
            } else {
                let vary = vary
                    .iter()
                    .map(|v| {
                        let (key, list) = v.split_once('=').ok_or_else(|| anyhow::anyhow!("--vary {v:?} must look like KEY=[V1, V2]"))?;
                        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(list)
                            .map_err(|e| anyhow::anyhow!("--vary {key}: {list:?} is not a YAML list of values: {e}"))?;
                        Ok((key.to_string(), values))
                    })
                    .collect::<Result<Vec<_>>>()?;
                sweep::Source::Vary { base: path.clone(), vary }
            };
            let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "sweep".into());
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{stem}")));
            let plan = sweep::plan(&source, &out, &overrides)?;
            if let Some(n) = threads.or(plan.runs[0].config.train.threads) {
                anyhow::ensure!(n > 0, "--threads must be > 0");
                tch::set_num_threads(n);
            }
            println!("sweep: {} runs into {}; ablated keys: {}", plan.runs.len(), out.display(), plan.ablated.join(", "));
            // The command as typed, with the binary's path shortened, heads the table.
            let mut args: Vec<String> = std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect();
            args[0] = "meanflow".into();
            sweep::run(&plan, &out, &sweep::SweepOptions { command: args.join(" "), quiet: false })?;
            println!("table: {}", out.join("results.md").display());
        }
        Cmd::DistCheck { device, mb, bucket_mb, timeout_s } => {
            let l = meanflow::dist::launch::from_env()
                .map_err(|m| anyhow::anyhow!("data-parallel launch: {m}"))?
                .ok_or_else(|| anyhow::anyhow!("dist-check runs under a launcher: torchrun, srun, or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT"))?;
            let dev = match device.as_str() {
                "cpu" => Device::Cpu,
                "cuda" => Device::Cuda(l.local_rank as usize),
                other => anyhow::bail!("--device must be cpu or cuda, got {other:?}"),
            };
            let dist = meanflow::dist::Dist::init(&l, std::time::Duration::from_secs_f64(timeout_s), dev.is_cuda())?;
            match meanflow::dist::self_test(&dist, dev, mb, bucket_mb) {
                Ok(r) => {
                    println!(
                        "rank {}/{}: all-reduce mean of {:.1} MiB on {:?} in {} bucket(s): {:.1} ms; broadcast and barrier ok",
                        r.rank,
                        r.world_size,
                        r.bytes as f64 / (1024.0 * 1024.0),
                        r.device,
                        r.buckets,
                        1e3 * r.all_reduce_s
                    );
                    dist.finish()?;
                }
                Err(e) => {
                    dist.abandon();
                    return Err(e.into());
                }
            }
        }
        Cmd::FidStats { inception, images, dataset, root, split, limit, out } => {
            let device = Device::cuda_if_available();
            let extractor = Inception::load(&inception, device)?;
            let (set, source) = match (images, dataset) {
                (Some(p), _) => (ImageSet::open(&p)?, p.display().to_string()),
                (None, Some(d)) => {
                    let kind: DatasetKind = serde_yaml::from_str(&d).map_err(|_| anyhow::anyhow!("--dataset must be fashion_mnist or mnist, got {d:?}"))?;
                    let split = match split.as_str() {
                        "train" => Split::Train,
                        "test" => Split::Test,
                        other => anyhow::bail!("--split must be train or test, got {other:?}"),
                    };
                    let set = data::load_mnist_like(kind, &root, split)?;
                    (ImageSet::from_tensor(eval::inception::to_uint8(&set.images)), format!("{d} ({})", root.display()))
                }
                (None, None) => unreachable!("clap requires --images or --dataset"),
            };
            anyhow::ensure!(limit.is_none_or(|n| n >= 2), "--limit must be >= 2");
            let n = limit.map_or(set.len(), |l| l.min(set.len()));
            let stats = eval::image_stats(&extractor, &set, limit, false)?;
            stats.write_npz(&out)?;
            println!("wrote {} ({n} images of {source}, {} features)", out.display(), stats.mu.size()[0]);
        }
        Cmd::Plot { run_dir, out } => {
            let (png, n) = meanflow::plot::plot_run(&run_dir, out.as_deref())?;
            println!("wrote {} ({n} logged steps)", png.display());
        }
        Cmd::Info => {
            println!("meanflow {}", env!("CARGO_PKG_VERSION"));
            println!("cuda available: {} ({} device(s))", tch::Cuda::is_available(), tch::Cuda::device_count());
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
            println!("cpu threads: {}", tch::get_num_threads());
            let t = Tensor::ones([2], (Kind::Float, Device::cuda_if_available()));
            println!("a tensor on {:?} sums to {}", t.device(), t.sum(Kind::Float).double_value(&[]));
            let _ = sample::time_grid(1);
        }
    }
    Ok(())
}

/// What `eval --fid` reports about its inputs.
struct FidArgs<'a> {
    dir: &'a std::path::Path,
    state: &'a checkpoint::TrainState,
    weights: &'a std::path::Path,
    inception: &'a std::path::Path,
    reference: &'a std::path::Path,
}

/// `eval --fid`: samples through the TorchScript extractor, FID against the reference
/// `.npz`, printed and written to the JSON report (default eval[_euler]_fid_nfe<K>.json).
#[allow(clippy::too_many_arguments)]
fn eval_fid(
    net: &dyn models::MeanFlowNet,
    spec: &models::ModelSpec,
    a: FidArgs,
    sampler: eval::Sampler,
    nfe: usize,
    num_samples: i64,
    seed: u64,
    device: Device,
    out: Option<PathBuf>,
) -> Result<()> {
    let extractor = Inception::load(a.inception, device)?;
    let reference = Stats::read_npz(a.reference)?;
    let m = &a.state.config.model;
    let shape = [m.in_channels, m.input_size, m.input_size];
    let report = eval::evaluate_fid(net, spec.num_classes(), shape, sampler, nfe, num_samples, seed, &extractor, &reference, device, false)?;
    println!(
        "{} {nfe} steps ({}-NFE), {num_samples} samples: FID {:.3} ({}-d features, {:.1} s)",
        sampler.name(),
        report.nfe,
        report.fid,
        report.feature_dim,
        report.seconds
    );
    let out = out.unwrap_or_else(|| a.dir.join(eval::report_file_name(sampler, nfe).replacen("eval_", "eval_fid_", 1)));
    let json = serde_json::json!({
        "checkpoint": a.dir, "weights": a.weights, "inception": a.inception, "reference": a.reference,
        "step": a.state.step, "report": report,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", out.display()))?;
    println!("report: {}", out.display());
    Ok(())
}
