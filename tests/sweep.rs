//! `meanflow sweep` as a user runs it, on a toy family: a folder of configs and a base
//! config with --vary; runs trained in order, skipped or resumed on a second call, and
//! scores that equal a separate `meanflow eval` of the same checkpoint.
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meanflow");

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// 28x28 IDX files (the classifier's size): 60 training and 20 test images.
fn write_idx(dir: &Path) {
    tch::manual_seed(0);
    for (prefix, n) in [("train", 60usize), ("t10k", 20)] {
        let imgs =
            tch::Tensor::randint(256, [n as i64 * 784], (tch::Kind::Uint8, tch::Device::Cpu));
        let pixels: Vec<u8> = Vec::try_from(&imgs).unwrap();
        meanflow::data::idx::write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            &[n, 28, 28],
            &pixels,
        )
        .unwrap();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        meanflow::data::idx::write_idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            &[n],
            &labels,
        )
        .unwrap();
    }
}

fn config(data: &Path, clf: &Path, ratio: f64, paper: f64) -> String {
    format!(
        "data: {{dataset: mnist, root: {}}}\n\
         model: {{name: unet, in_channels: 1, input_size: 28, num_classes: 10, channels: [8], groups: 4}}\n\
         meanflow: {{ratio: {ratio}}}\n\
         train: {{steps: 4, batch_size: 5, lr: 0.001, threads: 1, checkpoint_every: 2, log_every: 1, run_dir: unused}}\n\
         sample: {{nfe: [1], per_class: 1}}\n\
         eval: {{classifier: {}, num_samples: 20, samplers: [{{sampler: meanflow, steps: 1}}, {{sampler: euler, steps: 2}}]}}\n\
         paper_fid: {paper}\n",
        data.display(),
        clf.display()
    )
}

fn results(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

#[test]
fn a_folder_sweep_trains_in_order_resumes_and_tabulates() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(tmp.path());
    let clf = tmp.path().join("clf.safetensors");
    let root = tmp.path().to_str().unwrap();
    let (ok, out) = run(&[
        "train-classifier",
        "--dataset",
        "mnist",
        "--root",
        root,
        "--epochs",
        "1",
        "--out",
        clf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let family = tmp.path().join("family");
    std::fs::create_dir(&family).unwrap();
    std::fs::write(
        family.join("a_ratio0.yaml"),
        config(tmp.path(), &clf, 0.0, 328.91),
    )
    .unwrap();
    std::fs::write(
        family.join("b_ratio25.yaml"),
        config(tmp.path(), &clf, 0.25, 61.06),
    )
    .unwrap();
    std::fs::write(family.join("notes.txt"), "not a config").unwrap();
    let sweep_out = tmp.path().join("sweep");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "sweep",
            family.to_str().unwrap(),
            "--out",
            sweep_out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // A first, shorter budget; then the full one resumes both runs from their checkpoints.
    let (ok, out) = run(&args(&["--set", "train.steps=2"]));
    assert!(ok, "{out}");
    assert!(out.contains("ablated keys: meanflow.ratio"), "{out}");
    let first = out.find("a_ratio0: training").unwrap();
    assert!(
        first < out.find("b_ratio25: training").unwrap(),
        "runs in name order: {out}"
    );
    let (ok, out) = run(&args(&[]));
    assert!(ok, "{out}");
    assert!(
        out.contains("a_ratio0: resuming") && out.contains("b_ratio25: resuming"),
        "{out}"
    );
    let r = results(&sweep_out);
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(r[0]["ablated"]["meanflow.ratio"], "0.0");
    assert_eq!(r[1]["ablated"]["meanflow.ratio"], "0.25");
    assert_eq!(r[1]["scores"][0]["step"], 4);

    // The score equals a separate `meanflow eval` of the same checkpoint, seed and size.
    let report = tmp.path().join("eval.json");
    let run_b = sweep_out.join("b_ratio25");
    let (ok, out) = run(&[
        "eval",
        "--checkpoint",
        run_b.to_str().unwrap(),
        "--classifier",
        clf.to_str().unwrap(),
        "--sampler",
        "euler",
        "--steps",
        "2",
        "--num-samples",
        "20",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let direct: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let fd = direct["report"]["fd"].as_f64().unwrap();
    assert!(fd.is_finite() && fd > 0.0);
    assert_eq!(r[1]["scores"][1]["report"]["fd"].as_f64().unwrap(), fd);
    assert_eq!(r[1]["scores"][1]["report"]["nfe"], 2);

    let md = std::fs::read_to_string(sweep_out.join("results.md")).unwrap();
    assert!(
        md.contains("2 of 2 runs done") && md.contains("| run | meanflow.ratio | loss | v-loss |"),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| b_ratio25 | 0.25 |") && l.contains("meanflow x1"))
        .expect(&md);
    assert!(
        row.contains("| 61.06 |"),
        "the paper's value sits on the 1-NFE row: {row}"
    );
    assert!(md.contains(&format!("| {fd:.2} |")), "{md}");

    // A third call trains nothing and reads the stored scores back.
    let ckpt = sweep_out.join("b_ratio25/checkpoints/latest");
    let before = std::fs::metadata(&ckpt).unwrap().modified().unwrap();
    let (ok, out) = run(&args(&[]));
    assert!(ok && out.matches("already trained").count() == 2, "{out}");
    assert_eq!(
        std::fs::metadata(&ckpt).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(sweep_out.join("results.md")).unwrap(),
        md
    );

    // Errors name what is wrong.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, out) = run(&["sweep", empty.to_str().unwrap()]);
    assert!(
        !ok && out.contains("empty") && out.contains("no .yaml"),
        "{out}"
    );
    std::fs::write(
        family.join("c_bad.yaml"),
        config(tmp.path(), &clf, 1.5, 1.0),
    )
    .unwrap();
    let (ok, out) = run(&args(&[]));
    assert!(
        !ok && out.contains("c_bad.yaml") && out.contains("meanflow.ratio"),
        "{out}"
    );
}

#[test]
fn a_base_config_with_vary_runs_every_value() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx(tmp.path());
    let base = tmp.path().join("base.yaml");
    let text = config(tmp.path(), Path::new("unused"), 0.25, 61.06);
    // No eval section: the table has losses only.
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("eval:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&base, text).unwrap();
    let sweep_out = tmp.path().join("sweep");
    let (ok, out) = run(&[
        "sweep",
        base.to_str().unwrap(),
        "--vary",
        "meanflow.tangent=[\"v,0,1\", \"v,0,0\"]",
        "--set",
        "train.steps=2",
        "--out",
        sweep_out.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        sweep_out.join("tangent_v-0-1/checkpoints/latest").exists()
            && sweep_out.join("tangent_v-0-0/checkpoints/latest").exists(),
        "{out}"
    );
    let r = results(&sweep_out);
    assert_eq!(r[1]["ablated"]["meanflow.tangent"], "v,0,0");
    assert!(r[1]["loss"].as_f64().unwrap().is_finite());
    let (ok, out) = run(&[
        "sweep",
        base.to_str().unwrap(),
        "--vary",
        "meanflow.ratio=0.5",
    ]);
    assert!(
        !ok && out.contains("meanflow.ratio") && out.contains("YAML list"),
        "{out}"
    );
    let (ok, out) = run(&["sweep", base.to_str().unwrap()]);
    assert!(!ok && out.contains("--vary"), "{out}");
}
