//! Config files: the shipped ones load, and every kind of mistake names its key.
use std::path::{Path, PathBuf};

use meanflow::config;

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("c.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = r#"
data: {dataset: fashion_mnist, root: /tmp/none}
model: {name: unet, in_channels: 1, input_size: 28, num_classes: 10, channels: [16, 32]}
guidance: {omega: 2.0, kappa: 0.5, t_min: 0.0, t_max: 0.8}
train: {steps: 10, batch_size: 4, lr: 0.001, run_dir: /tmp/run}
"#;

fn load_with(overrides: &[&str]) -> Result<config::Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), BASE);
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    config::load(&p, &o).map_err(|e| e.to_string())
}

fn expect_err(overrides: &[&str], needles: &[&str]) {
    let e = load_with(overrides).expect_err(&format!("{overrides:?} should fail"));
    for n in needles {
        assert!(e.contains(n), "error for {overrides:?} does not mention {n:?}: {e}");
    }
}

#[test]
fn shipped_configs_load_and_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let cfg = config::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            cfg.model.spec("x").unwrap();
            n += 1;
        }
    }
    assert!(n >= 1);
}

/// Every YAML under `dir`, recursively, in sorted order.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Parameters of the paper's ImageNet models (MeanFlow Table 2; B/4 as DiT-B/2 give or
/// take the patch embedding), for 4x32x32 latents, 1000 classes, (t, t-r) embedders.
const PAPER_PARAMS: [(&str, f64); 5] =
    [("DiT-B/4", 131e6), ("DiT-B/2", 131e6), ("DiT-M/2", 308e6), ("DiT-L/2", 459e6), ("DiT-XL/2", 676e6)];

/// Loads, validates and sizes every shipped config: a DiT by its parameter count (the
/// analytic count, checked against built models in `dit_parameter_count_matches_a_build`),
/// any other network by building it on the CPU. The ImageNet configs must carry the
/// paper's FID and match the paper's parameter counts within 1%.
#[test]
fn every_shipped_config_validates_and_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let mut imagenet = 0;
    for p in &files {
        let cfg = config::load(p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let spec = cfg.model.spec("x").unwrap();
        let params = match &spec {
            meanflow::ModelSpec::Dit(s) => s.num_params(),
            other => {
                let vs = tch::nn::VarStore::new(tch::Device::Cpu);
                meanflow::models::build(&vs.root(), other).unwrap();
                meanflow::models::num_params(&vs)
            }
        };
        assert!(params > 0, "{}", p.display());
        let rel = p.strip_prefix(&root).unwrap();
        if rel.starts_with("imagenet") {
            imagenet += 1;
            assert!(cfg.paper_fid.is_some_and(|f| f > 0.0), "{}: no paper_fid", p.display());
            assert_eq!(cfg.data.dataset, meanflow::data::DatasetKind::ImagenetLatents, "{}", p.display());
            let (_, want) = PAPER_PARAMS
                .iter()
                .find(|(n, _)| *n == cfg.model.name)
                .unwrap_or_else(|| panic!("{}: unexpected model {}", p.display(), cfg.model.name));
            let got = params as f64;
            assert!((got / want - 1.0).abs() < 0.01, "{}: {} has {got} parameters, the paper {want}", p.display(), cfg.model.name);
        }
        eprintln!("{}: {} {:.2}M parameters, paper FID {:?}", rel.display(), cfg.model.name, params as f64 / 1e6, cfg.paper_fid);
    }
    assert!(imagenet >= 5 + 32, "found {imagenet} ImageNet configs");
}

/// The Table 1 files of one family differ from the default row only in their ablated key
/// (and run folder, FID comment and paper_fid).
#[test]
fn table1_rows_differ_from_the_default_only_in_the_ablated_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/imagenet/table1");
    let default = config::load(&root.join("ratio/ratio_025.yaml"), &[]).unwrap();
    let base = serde_yaml::to_value(&default).unwrap();
    let allowed: [(&str, &[&str]); 7] = [
        ("ratio", &["meanflow.ratio"]),
        ("tangent", &["meanflow.tangent"]),
        ("embedding", &["model.time_input"]),
        ("sampler", &["meanflow.time_sampler"]),
        ("norm_p", &["meanflow.norm_p"]),
        ("cfg", &["guidance.omega"]),
        ("kappa", &["guidance.omega", "guidance.kappa"]),
    ];
    for (family, keys) in allowed {
        let mut files = Vec::new();
        yaml_files(&root.join(family), &mut files);
        assert!(files.len() >= 4, "{family}: {} files", files.len());
        for p in files {
            let cfg = config::load(&p, &[]).unwrap();
            let v = serde_yaml::to_value(&cfg).unwrap();
            for (section, _) in base.as_mapping().unwrap() {
                let section = section.as_str().unwrap();
                let (a, b) = (&base[section], &v[section]);
                match a.as_mapping() {
                    Some(m) => {
                        for (k, va) in m {
                            let key = format!("{section}.{}", k.as_str().unwrap());
                            if key == "train.run_dir" || keys.contains(&key.as_str()) {
                                continue;
                            }
                            assert_eq!(va, &b[k.as_str().unwrap()], "{}: {key} differs from the default", p.display());
                        }
                    }
                    None if section == "paper_fid" => {}
                    None => assert_eq!(a, b, "{}: {section}", p.display()),
                }
            }
        }
    }
}

/// The analytic DiT parameter count equals what `Dit::new` creates, on small networks of
/// every shape option and on a full-size DiT-B/4.
#[test]
fn dit_parameter_count_matches_a_build() {
    use meanflow::models::{DitSize, DitSpec, ModelSpec, TimeInput};
    let mut specs = Vec::new();
    for (i, ti) in [TimeInput::TR, TimeInput::TH, TimeInput::TRH, TimeInput::H].into_iter().enumerate() {
        specs.push(DitSpec {
            size: DitSize { depth: 1 + i as i64, hidden: 32, heads: 4, patch: 2 + 2 * (i as i64 % 2) },
            input_size: 8,
            in_channels: 1 + i as i64,
            num_classes: [0, 10, 3, 1000][i],
            mlp_ratio: [4.0, 2.5, 1.0, 4.0][i],
            time_input: ti,
            time_scale: 1.0,
        });
    }
    let c = load_with(&["model={name: DiT-B/4, in_channels: 4, input_size: 32, num_classes: 1000}", "guidance=null"]).unwrap();
    match c.model.spec("x").unwrap() {
        ModelSpec::Dit(s) => specs.push(s),
        other => panic!("{other:?}"),
    }
    for s in specs {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        meanflow::models::build(&vs.root(), &ModelSpec::Dit(s.clone())).unwrap();
        assert_eq!(meanflow::models::num_params(&vs), s.num_params(), "{s:?}");
    }
}

#[test]
fn data_keys_are_checked_per_dataset() {
    expect_err(&["data.image_size=32"], &["data.image_size", "image_folder"]);
    expect_err(&["data.workers=2"], &["data.workers", "image_folder"]);
    expect_err(&["data.scale_factor=0.18215"], &["data.scale_factor", "imagenet_latents"]);
    expect_err(&["data.vae=x"], &["data.vae", "imagenet_latents"]);
    expect_err(&["data.split=val"], &["data.split"]);
    expect_err(&["data.dataset=image_folder"], &["data.image_size", "required"]);
    expect_err(&["data.dataset=image_folder", "data.image_size=32"], &["data.image_size", "32", "model.input_size", "28"]);
    expect_err(&["data.dataset=imagenet_latents", "data.split=test"], &["data.split", "imagenet_latents"]);
    expect_err(&["data.dataset=imagenet_latents", "data.scale_factor=-1"], &["data.scale_factor"]);
    expect_err(&["paper_fid=-3"], &["paper_fid"]);
    let c = load_with(&["data.dataset=cifar10", "data.split=test", "data.hflip=true", "paper_fid=2.92"]).unwrap();
    assert_eq!(c.data.split, Some(meanflow::data::Split::Test));
    assert!(c.data.hflip);
    assert_eq!(c.paper_fid, Some(2.92));
    let c = load_with(&["data.dataset=image_folder", "data.image_size=28", "data.workers=3"]).unwrap();
    assert_eq!(c.data.workers(), 3);
}

#[test]
fn defaults_are_the_papers() {
    let c = load_with(&[]).unwrap();
    assert_eq!(c.meanflow.ratio, 0.25);
    assert_eq!(c.meanflow.norm_p, 1.0);
    assert_eq!(c.meanflow.norm_eps, 1e-3);
    assert_eq!(c.meanflow.tangent, meanflow::Tangent::V01);
    assert_eq!(c.meanflow.time_sampler, meanflow::time::TimeSampler::LogitNormal { mu: -0.4, sigma: 1.0 });
    assert_eq!(c.model.time_input, meanflow::TimeInput::TH);
    assert_eq!(c.train.betas, [0.9, 0.95]);
    assert_eq!(c.train.ema_decays, vec![0.9999]);
    assert_eq!(c.guidance.unwrap().class_dropout, 0.1);
}

#[test]
fn overrides_set_typed_values() {
    let c = load_with(&[
        "train.lr=0.0003",
        "meanflow.ratio=0.5",
        "meanflow.tangent=v,1,0",
        "model.time_input=t-r",
        "meanflow.time_sampler={kind: uniform}",
        "train.ema_decays=[0.99, 0.999]",
    ])
    .unwrap();
    assert_eq!(c.train.lr, 0.0003);
    assert_eq!(c.meanflow.ratio, 0.5);
    assert_eq!(c.meanflow.tangent, meanflow::Tangent::V10);
    assert_eq!(c.model.time_input, meanflow::TimeInput::H);
    assert_eq!(c.meanflow.time_sampler, meanflow::time::TimeSampler::Uniform);
    assert_eq!(c.train.ema_decays, vec![0.99, 0.999]);
}

#[test]
fn mistakes_name_their_key() {
    expect_err(&["train.lrr=0.1"], &["train", "lrr"]);
    expect_err(&["model.colour=red"], &["model", "colour"]);
    expect_err(&["train.lr=-1"], &["train.lr", "-1"]);
    expect_err(&["train.lr=fast"], &["train.lr"]);
    expect_err(&["meanflow.ratio=1.5"], &["meanflow.ratio", "1.5"]);
    expect_err(&["meanflow.ratio=-0.1"], &["meanflow.ratio"]);
    expect_err(&["guidance.t_min=0.9"], &["guidance.t_min", "t_max"]);
    expect_err(&["guidance.kappa=1.0"], &["guidance.kappa"]);
    expect_err(&["model.name=DiT-Q/2"], &["model.name", "DiT-Q/2", "DiT-B/4"]);
    expect_err(&["model.name=resnet"], &["model.name", "resnet"]);
    expect_err(&["model.depth=3"], &["model.depth", "unet"]);
    expect_err(&["model.channels=[16, 30]"], &["model.groups"]);
    expect_err(&["meanflow.tangent=v,2,1"], &["meanflow.tangent"]);
    expect_err(&["model.time_input=t*r"], &["model.time_input"]);
    expect_err(&["meanflow.time_sampler={kind: logit_normal, mu: 0.0, sigma: -1.0}"], &["meanflow.time_sampler.sigma"]);
    expect_err(&["meanflow.time_sampler={kind: logit_normal, mu: 0.0}"], &["meanflow.time_sampler", "sigma"]);
    expect_err(&["train.betas=[0.9, 1.0]"], &["train.betas[1]"]);
    expect_err(&["train.ema_decays=[]"], &["train.ema_decays"]);
    expect_err(&["train.batch_size=0"], &["train.batch_size"]);
    expect_err(&["model.num_classes=0"], &["guidance", "num_classes"]);
    expect_err(&["data.dataset=imagenet"], &["data.dataset", "imagenet"]);
    expect_err(&["train=3"], &["train"]);
    expect_err(&["noequals"], &["noequals", "key.path=value"]);
    expect_err(&["eval={classifier: c.safetensors, samplers: [{sampler: euler, steps: 0}]}"], &["eval.samplers[0].steps"]);
    expect_err(&["eval={classifier: c.safetensors, samplers: [{sampler: rk4, steps: 2}]}"], &["eval.samplers[0].sampler", "rk4"]);
    expect_err(&["eval={classifier: c.safetensors, num_samples: 1}"], &["eval.num_samples"]);
    expect_err(&["eval={num_samples: 100}"], &["eval", "classifier"]);
    expect_err(&["paper_fid=-3"], &["paper_fid"]);
}

#[test]
fn dit_presets_and_custom_sizes() {
    let c = load_with(&["model={name: DiT-B/4, in_channels: 4, input_size: 32, num_classes: 1000}", "guidance=null"]).unwrap();
    match c.model.spec("x").unwrap() {
        meanflow::ModelSpec::Dit(s) => assert_eq!((s.size.depth, s.size.hidden, s.size.heads, s.size.patch), (12, 768, 12, 4)),
        other => panic!("{other:?}"),
    }
    let e = load_with(&["model={name: dit, in_channels: 1, input_size: 28, depth: 2, hidden: 64, heads: 4}", "guidance=null"])
        .unwrap_err();
    assert!(e.contains("model.patch"), "{e}");
    let e = load_with(&["model={name: DiT-S/8, in_channels: 1, input_size: 28}", "guidance=null"]).unwrap_err();
    assert!(e.contains("model.patch") && e.contains("28"), "{e}");
}

#[test]
fn unreadable_and_malformed_files_name_the_file() {
    let e = config::load(Path::new("/nonexistent/x.yaml"), &[]).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/x.yaml"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "train: [unclosed");
    let e = config::load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("c.yaml"), "{e}");
}
