//! The `meanflow` binary as a user runs it: no environment needed, clear errors, and
//! train -> sample -> resume on IDX files written in the real format.
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meanflow");

fn run(args: &[&str]) -> (bool, String) {
    // RUST_BACKTRACE set, as on many machines: errors must still be one clean line.
    let out = Command::new(BIN).args(args).env("RUST_BACKTRACE", "1").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn runs_with_an_empty_environment() {
    // The rpath finds libtorch; no LD_LIBRARY_PATH.
    let out = Command::new(BIN).arg("info").env_clear().output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("a tensor on"), "{text}");
}

fn write_idx(dir: &Path) {
    tch::manual_seed(0);
    let n = 30usize;
    let imgs = tch::Tensor::randint(256, [n as i64 * 64], (tch::Kind::Uint8, tch::Device::Cpu));
    let pixels: Vec<u8> = Vec::try_from(&imgs).unwrap();
    meanflow::data::idx::write_idx(&dir.join("train-images-idx3-ubyte"), &[n, 8, 8], &pixels).unwrap();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    meanflow::data::idx::write_idx(&dir.join("train-labels-idx1-ubyte"), &[n], &labels).unwrap();
}

#[test]
fn train_sample_and_resume_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(tmp.path());
    let run_dir = tmp.path().join("run");
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data: {{dataset: mnist, root: {}}}\n\
             model: {{name: unet, in_channels: 1, input_size: 8, num_classes: 10, channels: [8], groups: 4}}\n\
             guidance: {{omega: 1.5}}\n\
             train: {{steps: 3, batch_size: 5, lr: 0.001, threads: 1, run_dir: {}}}\n\
             sample: {{nfe: [1], per_class: 1}}\n",
            tmp.path().display(),
            run_dir.display()
        ),
    )
    .unwrap();
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "model.num_classes=3"]);
    assert!(!ok && out.contains("c.yaml") && out.contains("model.num_classes") && out.contains("10 classes"), "{out}");
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("trained 3 steps") && out.contains("samples_nfe1.png"), "{out}");
    let png = tmp.path().join("s.png");
    let (ok, out) = run(&["sample", "--checkpoint", run_dir.to_str().unwrap(), "--steps", "2", "--out", png.to_str().unwrap()]);
    assert!(ok, "{out}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1 * 10 + 2, 10 * 10 + 2));
    let (ok, out) = run(&["sample", "--checkpoint", run_dir.to_str().unwrap(), "--ema", "0.5", "--out", png.to_str().unwrap()]);
    assert!(!ok && out.contains("0.5"), "{out}");
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=5", "--resume"]);
    assert!(ok && out.contains("trained 2 steps (steps 3..5)"), "{out}");
    // Nothing left to do is an error, not a silent success.
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=5", "--resume"]);
    assert!(!ok && out.contains("nothing to resume"), "{out}");
    // A grid too large, a non-PNG name, CUDA where there is none: clean errors, no panic.
    let (ok, out) = run(&["sample", "--checkpoint", run_dir.to_str().unwrap(), "--per-class", "100000", "--out", png.to_str().unwrap()]);
    assert!(!ok && out.contains("sample.per_class") && !out.contains("panicked"), "{out}");
    let jpg = tmp.path().join("s.jpg");
    let (ok, out) = run(&["sample", "--checkpoint", run_dir.to_str().unwrap(), "--out", jpg.to_str().unwrap()]);
    assert!(!ok && out.contains(".png") && !jpg.exists(), "{out}");
    if !tch::Cuda::is_available() {
        let (ok, out) = run(&["sample", "--checkpoint", run_dir.to_str().unwrap(), "--device", "cuda", "--out", png.to_str().unwrap()]);
        assert!(!ok && out.contains("CUDA is not available") && !out.contains("panicked"), "{out}");
    }
    // Resuming with a different model or EMA set is refused, naming the key.
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=9", "--set", "train.ema_decays=[0.5]", "--resume"]);
    assert!(!ok && out.contains("train.ema_decays"), "{out}");
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.steps=9", "--set", "model.channels=[12]", "--resume"]);
    assert!(!ok && out.contains("model.channels"), "{out}");
}

#[test]
fn bad_input_names_the_problem() {
    let (ok, out) = run(&["train", "--config", "/nonexistent.yaml"]);
    assert!(!ok && out.contains("/nonexistent.yaml"), "{out}");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, "data: {dataset: mnist, root: /nowhere}\nmodel: {name: unet, in_channels: 1, input_size: 8, channels: [8]}\ntrain: {steps: 1, batch_size: 2, lr: 0.1, run_dir: /tmp/x}\n").unwrap();
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.lr=-3"]);
    assert!(!ok && out.contains("--set train.lr=-3") && out.contains("train.lr"), "{out}");
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap(), "--set", "train.lrr=0.1"]);
    assert!(!ok && out.contains("--set train.lrr=0.1") && out.contains("lrr"), "{out}");
    assert!(!out.contains("Stack backtrace"), "{out}");
    let (ok, out) = run(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && out.contains("/nowhere/train-images-idx3-ubyte"), "{out}");
    let (ok, out) = run(&["sample", "--checkpoint", "/nowhere", "--out", "/tmp/x.png"]);
    assert!(!ok && out.contains("/nowhere"), "{out}");
}
