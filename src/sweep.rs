//! `meanflow sweep`: a family of runs (a folder of configs, or one base config with
//! varied keys) trained one after another into `<out>/<run name>/`, scored with each
//! config's `eval` metric, and tabulated in markdown next to the paper's value.
//!
//! Resumable by construction: a run whose latest checkpoint has reached `train.steps` is
//! not trained again, a partial one is resumed, and a score already written into the
//! final checkpoint folder (same sampler, steps, sample count, seed and classifier) is
//! read back instead of recomputed. The table is rewritten after every run.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{self, Weights};
use crate::config::{self, Config, SamplerSpec};
use crate::error::{Error, Result};
use crate::eval::{self, CheckpointReport};
use crate::train;

/// Where the runs of a sweep come from.
pub enum Source {
    /// Every `*.yaml` / `*.yml` file of a folder, in name order; the run is the file stem.
    Folder(PathBuf),
    /// One base config and, per key, the values to try (all combinations, in order).
    Vary {
        base: PathBuf,
        vary: Vec<(String, Vec<serde_yaml::Value>)>,
    },
}

pub struct PlannedRun {
    pub name: String,
    pub file: PathBuf,
    pub overrides: Vec<String>,
    pub config: Config,
}

pub struct Plan {
    pub runs: Vec<PlannedRun>,
    /// Config keys whose values differ between the runs: the ablated keys.
    pub ablated: Vec<String>,
}

/// One finished run: its ablated values, last logged losses and scores.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub config: PathBuf,
    pub ablated: BTreeMap<String, String>,
    pub steps: u64,
    pub batch_size: i64,
    /// The last `metrics.jsonl` record that is not a skipped step.
    pub last_logged_step: Option<u64>,
    pub loss: Option<f64>,
    pub mse: Option<f64>,
    pub v_loss: Option<f64>,
    pub scores: Vec<CheckpointReport>,
    pub paper_fid: Option<f64>,
}

/// Keys that never count as ablated: where a run lives and what only the sweep reads.
const NOT_ABLATIONS: [&str; 4] = ["train.run_dir", "eval", "paper_fid", "sample"];

/// Loads every config of the sweep (with `common` overrides on each) and finds the ablated keys.
pub fn plan(source: &Source, out: &Path, common: &[String]) -> Result<Plan> {
    let mut runs = Vec::new();
    match source {
        Source::Folder(dir) => {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| Error::file(dir, format!("cannot list the sweep folder: {e}")))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Error::file(dir, "holds no .yaml configs to sweep"));
            }
            for file in files {
                let name = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("run")
                    .to_string();
                runs.push(planned(name, file, common.to_vec(), out)?);
            }
        }
        Source::Vary { base, vary } => {
            if vary.is_empty() {
                return Err(Error::file(
                    base,
                    "a sweep over one config needs at least one --vary KEY=[V1, V2, ...]",
                ));
            }
            let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
            for (key, values) in vary {
                if values.is_empty() {
                    return Err(Error::config(
                        base.display().to_string(),
                        key,
                        "--vary lists no values",
                    ));
                }
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push((key.clone(), yaml_scalar(v)));
                            c
                        })
                    })
                    .collect();
            }
            for combo in combos {
                let name = combo
                    .iter()
                    .map(|(k, v)| format!("{}_{}", k.rsplit('.').next().unwrap_or(k), v))
                    .collect::<Vec<_>>()
                    .join("__");
                let mut overrides = common.to_vec();
                overrides.extend(combo.iter().map(|(k, v)| format!("{k}={v}")));
                runs.push(planned(sanitize(&name), base.clone(), overrides, out)?);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &runs {
        if !seen.insert(r.name.clone()) {
            return Err(Error::file(
                &r.file,
                format!(
                    "two runs of the sweep would share the folder name {:?}",
                    r.name
                ),
            ));
        }
    }
    let flat: Vec<BTreeMap<String, String>> = runs.iter().map(|r| flatten(&r.config)).collect();
    let mut ablated: Vec<String> = flat
        .iter()
        .flat_map(|f| f.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| {
            !NOT_ABLATIONS
                .iter()
                .any(|n| k == n || k.starts_with(&format!("{n}.")))
        })
        .filter(|k| flat.iter().any(|f| f.get(k) != flat[0].get(k)))
        .collect();
    ablated.sort();
    Ok(Plan { runs, ablated })
}

fn planned(name: String, file: PathBuf, overrides: Vec<String>, out: &Path) -> Result<PlannedRun> {
    let mut config = config::load(&file, &overrides)?;
    config.train.run_dir = out.join(&name);
    Ok(PlannedRun {
        name,
        file,
        overrides,
        config,
    })
}

/// A YAML value as an override writes it: `0.25`, `v,0,1`, `[1, 2]`.
fn yaml_scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Leaf values of a config by dotted key (lists are leaves).
fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().unwrap_or("?");
                    walk(
                        &if prefix.is_empty() {
                            k.to_string()
                        } else {
                            format!("{prefix}.{k}")
                        },
                        v,
                        out,
                    );
                }
            }
            other => {
                out.insert(prefix.to_string(), yaml_scalar(other));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &serde_yaml::to_value(cfg).expect("config serialises"),
        &mut out,
    );
    out
}

pub struct SweepOptions {
    /// The command line, quoted at the top of the table.
    pub command: String,
    pub quiet: bool,
}

/// Trains (or resumes, or skips) every run in order, scores it, and rewrites
/// `<out>/results.md` and `<out>/results.json` after each.
pub fn run(plan: &Plan, out: &Path, opts: &SweepOptions) -> Result<Vec<RunResult>> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the sweep folder: {e}")))?;
    let mut results = Vec::new();
    let n = plan.runs.len();
    for (i, run) in plan.runs.iter().enumerate() {
        let cfg = &run.config;
        let run_dir = &cfg.train.run_dir;
        let done = match checkpoint::latest(run_dir)? {
            Some(ckpt) => Some(checkpoint::read_state(&ckpt)?.step),
            None => None,
        };
        match done {
            Some(step) if step >= cfg.train.steps => {
                println!(
                    "sweep [{}/{n}] {}: already trained ({step} steps), not training again",
                    i + 1,
                    run.name
                )
            }
            _ => {
                println!(
                    "sweep [{}/{n}] {}: {} from {}",
                    i + 1,
                    run.name,
                    if done.is_some() {
                        "resuming"
                    } else {
                        "training"
                    },
                    run.file.display()
                );
                let s = train::train(
                    cfg,
                    &train::TrainOptions {
                        resume: done.is_some(),
                        quiet: opts.quiet,
                    },
                )?;
                println!(
                    "sweep [{}/{n}] {}: trained to step {} in {:.1} s",
                    i + 1,
                    run.name,
                    s.start_step + s.steps,
                    s.wall_s
                );
            }
        }
        let final_ckpt = checkpoint::latest(run_dir)?.ok_or_else(|| Error::Checkpoint {
            path: run_dir.clone(),
            msg: "training ended without a checkpoint".into(),
        })?;
        let last = last_metrics(&run_dir.join("metrics.jsonl"))?;
        let mut scores = Vec::new();
        if let Some(e) = &cfg.eval {
            for spec in &e.samplers {
                let r = score(&final_ckpt, e, spec, opts.quiet)?;
                let acc = r
                    .report
                    .class_accuracy
                    .map(|a| format!(", class accuracy {:.1}%", 100.0 * a))
                    .unwrap_or_default();
                println!(
                    "sweep [{}/{n}] {}: {} {} steps: FD-FMNIST {:.2}{acc}",
                    i + 1,
                    run.name,
                    spec.sampler.name(),
                    spec.steps,
                    r.report.fd
                );
                scores.push(r);
            }
        }
        let flat = flatten(cfg);
        results.push(RunResult {
            name: run.name.clone(),
            config: run.file.clone(),
            ablated: plan
                .ablated
                .iter()
                .map(|k| (k.clone(), flat.get(k).cloned().unwrap_or_default()))
                .collect(),
            steps: cfg.train.steps,
            batch_size: cfg.train.batch_size,
            last_logged_step: last.as_ref().map(|m| m.0),
            loss: last.as_ref().map(|m| m.1),
            mse: last.as_ref().map(|m| m.2),
            v_loss: last.as_ref().map(|m| m.3),
            scores,
            paper_fid: cfg.paper_fid,
        });
        write_table(plan, &results, out, opts)?;
    }
    Ok(results)
}

/// The score of `spec`, read from the checkpoint folder when the same evaluation was done.
fn score(
    ckpt: &Path,
    e: &config::EvalConfig,
    spec: &SamplerSpec,
    quiet: bool,
) -> Result<CheckpointReport> {
    let file = ckpt.join(format!(
        "sweep_{}",
        eval::report_file_name(spec.sampler, spec.steps)
    ));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let same = v["report"]["num_samples"] == serde_json::json!(e.num_samples)
                && v["seed"] == serde_json::json!(e.seed)
                && v["classifier"] == serde_json::json!(e.classifier);
            if same {
                if let Ok(r) = serde_json::from_value::<StoredReport>(v) {
                    return Ok(r.into_report(spec));
                }
            }
        }
    }
    let r = eval::evaluate_checkpoint(
        ckpt,
        Weights::Ema(None),
        &e.classifier,
        spec.sampler,
        spec.steps,
        e.num_samples,
        e.seed,
        quiet,
    )?;
    let json = serde_json::to_string_pretty(&r).expect("report serialises");
    std::fs::write(&file, json)
        .map_err(|err| Error::file(&file, format!("cannot write the score: {err}")))?;
    Ok(r)
}

/// The fields of a stored `CheckpointReport` the table needs.
#[derive(serde::Deserialize)]
struct StoredReport {
    checkpoint: PathBuf,
    weights: PathBuf,
    classifier: PathBuf,
    step: u64,
    seed: u64,
    report: StoredEval,
}

#[derive(serde::Deserialize)]
struct StoredEval {
    num_samples: i64,
    fd: f64,
    class_accuracy: Option<f64>,
    seconds: f64,
}

impl StoredReport {
    fn into_report(self, spec: &SamplerSpec) -> CheckpointReport {
        CheckpointReport {
            checkpoint: self.checkpoint,
            weights: self.weights,
            classifier: self.classifier,
            step: self.step,
            seed: self.seed,
            report: eval::EvalReport {
                sampler: spec.sampler,
                steps: spec.steps,
                nfe: spec.sampler.nfe(spec.steps),
                num_samples: self.report.num_samples,
                fd: self.report.fd,
                class_accuracy: self.report.class_accuracy,
                seconds: self.report.seconds,
            },
        }
    }
}

/// (step, loss, mse, v_loss) of the last logged step that was not skipped.
fn last_metrics(path: &Path) -> Result<Option<(u64, f64, f64, f64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(path, e.to_string())),
    };
    for line in text.lines().rev() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::file(path, format!("bad metrics line {line:?}: {e}")))?;
        if let (Some(s), Some(l), Some(m), Some(vl)) = (
            v["step"].as_u64(),
            v["loss"].as_f64(),
            v["mse"].as_f64(),
            v["v_loss"].as_f64(),
        ) {
            return Ok(Some((s, l, m, vl)));
        }
    }
    Ok(None)
}

fn write_table(plan: &Plan, results: &[RunResult], out: &Path, opts: &SweepOptions) -> Result<()> {
    let md = markdown(plan, results, opts);
    let path = out.join("results.md");
    write_atomic(&path, md.as_bytes())?;
    let json = serde_json::to_string_pretty(results).expect("results serialise");
    write_atomic(&out.join("results.json"), json.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::file(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e.to_string()))
}

/// One row per (run, sampler); the paper's value goes on the row it was measured with
/// (MeanFlow 1-NFE), or on the only row of a run without scores.
pub fn markdown(plan: &Plan, results: &[RunResult], opts: &SweepOptions) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Written by `{}`: {} of {} runs done.\n\n",
        opts.command,
        results.len(),
        plan.runs.len()
    ));
    let mut budgets: Vec<(u64, i64)> = results.iter().map(|r| (r.steps, r.batch_size)).collect();
    budgets.dedup();
    if let [(steps, batch)] = budgets[..] {
        s.push_str(&format!(
            "Training budget per run: {steps} steps at batch {batch} ({} examples).\n",
            steps as i64 * batch
        ));
    }
    if let Some(r) = results.iter().flat_map(|r| r.scores.first()).next() {
        s.push_str(&format!(
            "Metric: FD-FMNIST (Frechet distance in the features of the classifier `{}`) over {} samples \
             with the first EMA's weights, and the class accuracy of the class-conditional samples.\n",
            r.classifier.display(),
            r.report.num_samples
        ));
    }
    s.push_str("Loss columns are the last logged training values (with norm_p = 1 the adaptive loss is ~1 by construction).\n\n");
    let mut head = vec!["run".to_string()];
    head.extend(plan.ablated.iter().cloned());
    head.extend(
        [
            "loss",
            "v-loss",
            "sampler",
            "NFE",
            "FD-FMNIST",
            "class acc.",
            "paper FID (1-NFE)",
        ]
        .map(String::from),
    );
    s.push_str(&format!(
        "| {} |\n|{}|\n",
        head.join(" | "),
        vec!["---"; head.len()].join("|")
    ));
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    for r in results {
        let mut base = vec![r.name.clone()];
        base.extend(
            plan.ablated
                .iter()
                .map(|k| r.ablated.get(k).cloned().unwrap_or_default()),
        );
        base.push(fmt(r.loss));
        base.push(fmt(r.v_loss));
        let paper = r
            .paper_fid
            .map(|f| format!("{f:.2}"))
            .unwrap_or_else(|| "-".into());
        if r.scores.is_empty() {
            let mut row = base.clone();
            row.extend([
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                paper.clone(),
            ]);
            s.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        for sc in &r.scores {
            let rep = &sc.report;
            let mut row = base.clone();
            row.push(format!("{} x{}", rep.sampler.name(), rep.steps));
            row.push(rep.nfe.to_string());
            row.push(format!("{:.2}", rep.fd));
            row.push(
                rep.class_accuracy
                    .map(|a| format!("{:.1}%", 100.0 * a))
                    .unwrap_or_else(|| "-".into()),
            );
            let measured_like_paper = rep.sampler == eval::Sampler::Meanflow && rep.steps == 1;
            row.push(if measured_like_paper {
                paper.clone()
            } else {
                "".into()
            });
            s.push_str(&format!("| {} |\n", row.join(" | ")));
        }
    }
    s
}
