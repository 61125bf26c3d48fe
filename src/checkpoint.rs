//! Checkpoints: one folder per step under `<run>/checkpoints/`, holding
//!   model.safetensors, ema_<decay>.safetensors, optimizer.safetensors, state.json
//! written into a temporary folder and renamed, then `latest` (a one-line file naming
//! the folder) replaced by rename. A crash at any point leaves the previous checkpoint
//! and `latest` intact.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

use crate::config::Config;
use crate::error::{Error, Result};

/// Everything besides tensors that a resume needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed; training resumes at this step index.
    pub step: u64,
    /// The run's seed. Every draw of step s is seeded from (seed, s), so this plus
    /// `step` is the whole RNG state.
    pub seed: u64,
    /// Adam's update count (bias-correction exponent).
    pub optimizer_updates: i64,
    pub ema_decays: Vec<f64>,
    /// The resolved config the run was trained with.
    pub config: Config,
}

fn ckpt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint for `state.step`; returns its folder.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    model: &VarStore,
    emas: &[(f64, &VarStore)],
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(|e| ckpt_err(&dir, format!("cannot create: {e}")))?;
    let name = format!("step_{:08}", state.step);
    let tmp = dir.join(format!(".tmp-{name}"));
    let fin = dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write_vars(model, &tmp.join("model.safetensors"))?;
    for (decay, vs) in emas {
        write_vars(vs, &tmp.join(crate::ema::Ema::file_name(*decay)))?;
    }
    Tensor::write_safetensors(optimizer, tmp.join("optimizer.safetensors"))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| ckpt_err(&tmp, e.to_string()))?;
    std::fs::write(tmp.join("state.json"), json)?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin)?;
    }
    std::fs::rename(&tmp, &fin)?;
    let latest_tmp = dir.join(".latest.tmp");
    std::fs::write(&latest_tmp, format!("{name}\n"))?;
    std::fs::rename(&latest_tmp, dir.join("latest"))?;
    prune(&dir, keep)?;
    Ok(fin)
}

/// Keeps the newest `keep` step folders.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step_")))
        .collect();
    steps.sort();
    let n = steps.len().saturating_sub(keep);
    for p in &steps[..n] {
        std::fs::remove_dir_all(p)?;
    }
    Ok(())
}

fn write_vars(vs: &VarStore, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path)?;
    Ok(())
}

/// The newest checkpoint folder of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let dir = checkpoints_dir(run_dir);
    let pointer = dir.join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer)?;
    let p = dir.join(name.trim());
    if !p.join("state.json").is_file() {
        return Err(ckpt_err(&pointer, format!("points at {} which has no state.json", p.display())));
    }
    Ok(Some(p))
}

/// Accepts a step folder, a run folder, or its `checkpoints` folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(p) = latest(path)? {
        return Ok(p);
    }
    if let Some(parent) = path.parent().filter(|_| path.ends_with("checkpoints")) {
        if let Some(p) = latest(parent)? {
            return Ok(p);
        }
    }
    Err(ckpt_err(path, "not a checkpoint (no state.json) nor a run folder with checkpoints/latest"))
}

pub fn read_state(ckpt: &Path) -> Result<TrainState> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| ckpt_err(&p, format!("cannot read: {e}")))?;
    let mut state: TrainState = serde_json::from_str(&text).map_err(|e| ckpt_err(&p, e.to_string()))?;
    state.config.source = p.display().to_string();
    state.config.validate(&state.config.source)?;
    Ok(state)
}

pub fn read_named(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(ckpt_err(path, "missing"));
    }
    Ok(Tensor::read_safetensors(path)?.into_iter().collect())
}

/// Copies a safetensors file into the variables of `vs`: every variable must be present
/// with its shape, and no extra key may remain.
pub fn load_vars(vs: &VarStore, path: &Path) -> Result<()> {
    copy_named(vs, read_named(path)?, path)
}

/// As `load_vars`, from named tensors already in memory (`what` names them in errors).
pub fn copy_named(vs: &VarStore, mut named: HashMap<String, Tensor>, what: &Path) -> Result<()> {
    let path = what;
    tch::no_grad(|| -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut dst) in vars {
            let src = named.remove(&name).ok_or_else(|| ckpt_err(path, format!("missing key {name}")))?;
            if src.size() != dst.size() {
                return Err(ckpt_err(path, format!("key {name} has shape {:?}, the model expects {:?}", src.size(), dst.size())));
            }
            dst.copy_(&src);
        }
        Ok(())
    })?;
    if let Some(extra) = named.keys().next() {
        return Err(ckpt_err(path, format!("unexpected key {extra} (not a variable of this model)")));
    }
    Ok(())
}

/// Which weights of a checkpoint to use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weights {
    Raw,
    /// An EMA by decay; `None` = the first of `train.ema_decays`.
    Ema(Option<f64>),
}

/// The safetensors file holding `which` weights of checkpoint `ckpt`.
pub fn weights_file(ckpt: &Path, state: &TrainState, which: Weights) -> Result<PathBuf> {
    match which {
        Weights::Raw => Ok(ckpt.join("model.safetensors")),
        Weights::Ema(decay) => {
            let decay = decay.unwrap_or(state.ema_decays[0]);
            if !state.ema_decays.contains(&decay) {
                return Err(ckpt_err(ckpt, format!("no EMA with decay {decay} (has {:?})", state.ema_decays)));
            }
            Ok(ckpt.join(crate::ema::Ema::file_name(decay)))
        }
    }
}

/// Writes a checkpoint at step 0 whose model and EMA weights are the state dict `file`
/// (checked key by key against the model of `config`), with zero optimizer moments:
/// something to sample from, or to fine-tune with `--resume`.
pub fn import(file: &Path, config: &Config, run_dir: &Path) -> Result<PathBuf> {
    if latest(run_dir)?.is_some() {
        return Err(ckpt_err(run_dir, "already holds a checkpoint; import into a new folder"));
    }
    let spec = config.model.spec(&config.source)?;
    let vs = VarStore::new(tch::Device::Cpu);
    let _net = crate::models::build(&vs.root(), &spec)?;
    load_vars(&vs, file)?;
    let opt = crate::optim::Adam::new(&vs, config.train.optimizer, config.train.betas, config.train.weight_decay);
    let state = TrainState {
        step: 0,
        seed: config.seed,
        optimizer_updates: 0,
        ema_decays: config.train.ema_decays.clone(),
        config: Config { train: crate::config::TrainConfig { run_dir: run_dir.to_path_buf(), ..config.train.clone() }, ..config.clone() },
    };
    let emas: Vec<(f64, &VarStore)> = config.train.ema_decays.iter().map(|d| (*d, &vs)).collect();
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(run_dir.join("config.yaml"), serde_yaml::to_string(&state.config).expect("config serialises"))?;
    save(run_dir, &state, &vs, &emas, &opt.state(), config.train.keep_checkpoints)
}

/// Copies the `which` weights of a checkpoint to `out` as a plain state dict that the
/// PyTorch modules load with `load_state_dict(strict=True)`.
pub fn export(ckpt: &Path, which: Weights, out: &Path) -> Result<PathBuf> {
    let ckpt = resolve(ckpt)?;
    let state = read_state(&ckpt)?;
    let src = weights_file(&ckpt, &state, which)?;
    // Re-validate against the model before handing it out.
    let spec = state.config.model.spec("(checkpoint config)")?;
    let vs = VarStore::new(tch::Device::Cpu);
    let _net = crate::models::build(&vs.root(), &spec)?;
    load_vars(&vs, &src)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("safetensors.tmp");
    write_vars(&vs, &tmp)?;
    std::fs::rename(&tmp, out)?;
    Ok(src)
}

/// A checkpoint's network with the chosen weights loaded: what sampling and evaluation start from.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub state: TrainState,
    pub spec: crate::models::ModelSpec,
    pub vs: VarStore,
    pub net: Box<dyn crate::models::MeanFlowNet>,
    /// The safetensors file the weights came from.
    pub weights: PathBuf,
}

/// Resolves `ckpt` (a run or step folder), rebuilds its model from the stored config on
/// `device`, and loads `which` weights.
pub fn load_model(ckpt: &Path, which: Weights, device: tch::Device) -> Result<LoadedModel> {
    let dir = resolve(ckpt)?;
    let state = read_state(&dir)?;
    let spec = state.config.model.spec(&state.config.source)?;
    let vs = VarStore::new(device);
    let net = crate::models::build(&vs.root(), &spec)?;
    let weights = weights_file(&dir, &state, which)?;
    load_vars(&vs, &weights)?;
    Ok(LoadedModel { dir, state, spec, vs, net, weights })
}
