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
