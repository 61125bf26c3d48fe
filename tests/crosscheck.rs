//! Cross-check against the PyTorch reference (tests/reference/meanflow_ref.py, using
//! torch.func.jvp and torch.optim.Adam): same weights, same draws, same loss, gradients,
//! optimizer step and EMA. Rust writes every input of a step to safetensors, Python
//! computes from them (nothing is re-drawn), Rust compares.
//!
//! Tolerance: float32, per tensor max|rust - torch| / max|torch| <= 2e-5. Both sides run
//! the same libtorch kernels, but in different orders (batched vs separate guidance calls,
//! dual tensors vs functorch, a JVP over only the r != t rows here): a few float32 ulps
//! (1.2e-7 each) accumulated over a DiT's depth and a batch sum.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meanflow::ema::Ema;
use meanflow::guidance::Guidance;
use meanflow::loss::{Draws, MeanFlowLoss, Tangent};
use meanflow::models::{self, dit::DitSize, DitSpec, MlpSpec, ModelSpec, TimeInput, UnetSpec};
use meanflow::optim::Adam;
use meanflow::time::{sample_pair, PairSampler, TimeSampler};
use tch::{nn::VarStore, Device, Kind, Tensor};

const TOL: f64 = 2e-5;

/// `MEANFLOW_DEVICE=cuda` runs both sides on the GPU (scripts/gpu-check.sh); the default
/// and the fallback when CUDA is not visible is the CPU.
fn device() -> Device {
    match std::env::var("MEANFLOW_DEVICE").as_deref() {
        Ok("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
        Ok("cuda") => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("MEANFLOW_DEVICE=cuda but CUDA is not visible: cross-checking on the CPU"));
            Device::Cpu
        }
        _ => Device::Cpu,
    }
}

/// The repository root (overridable, for a test binary carried to another machine).
fn root() -> PathBuf {
    std::env::var_os("MEANFLOW_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[derive(Clone)]
struct Case {
    name: String,
    arch: &'static str,
    time_input: TimeInput,
    tangent: Tangent,
    /// What Python is told; differs from `tangent` only in the test of the test.
    reported_tangent: Tangent,
    norm_p: f64,
    ratio: f64,
    guidance: Option<(f64, f64)>,
    adam: bool,
}

fn base(name: &str) -> Case {
    Case {
        name: name.into(),
        arch: "dit",
        time_input: TimeInput::TH,
        tangent: Tangent::V01,
        reported_tangent: Tangent::V01,
        norm_p: 1.0,
        ratio: 0.25,
        guidance: None,
        adam: false,
    }
}

fn cases() -> Vec<Case> {
    let mut out = vec![Case { adam: true, ..base("dit default (t,t-r), adam+ema") }];
    out.push(Case { arch: "mlp", adam: true, ..base("mlp default, adam+ema") });
    out.push(Case { arch: "unet", adam: true, ..base("unet default, adam+ema") });
    out.push(Case { arch: "unet", guidance: Some((2.0, 0.0)), ratio: 0.5, ..base("unet cfg omega 2") });
    for (t, n) in [(Tangent::V00, "v,0,0"), (Tangent::V10, "v,1,0"), (Tangent::V11, "v,1,1")] {
        out.push(Case { tangent: t, reported_tangent: t, ..base(&format!("tangent {n}")) });
    }
    for (ti, n) in [(TimeInput::TR, "t,r"), (TimeInput::TRH, "t,r,t-r"), (TimeInput::H, "t-r")] {
        out.push(Case { time_input: ti, ..base(&format!("time input {n}")) });
    }
    for p in [0.0, 0.5, 2.0] {
        out.push(Case { norm_p: p, ..base(&format!("p = {p}")) });
    }
    for ratio in [0.0, 1.0] {
        out.push(Case { ratio, ..base(&format!("ratio {ratio}")) });
    }
    for (w, k) in [(1.0, 0.0), (3.0, 0.0), (1.0, 0.5), (0.2, 0.92)] {
        out.push(Case { guidance: Some((w, k)), ratio: 0.5, ..base(&format!("cfg omega {w} kappa {k}")) });
    }
    out
}

fn tangent_name(t: Tangent) -> &'static str {
    match t {
        Tangent::V01 => "v,0,1",
        Tangent::V00 => "v,0,0",
        Tangent::V10 => "v,1,0",
        Tangent::V11 => "v,1,1",
    }
}

fn time_input_name(t: TimeInput) -> &'static str {
    match t {
        TimeInput::TR => "t,r",
        TimeInput::TH => "t,t-r",
        TimeInput::TRH => "t,r,t-r",
        TimeInput::H => "t-r",
    }
}

const CLASSES: i64 = 4;

fn spec(c: &Case) -> (ModelSpec, serde_json::Value) {
    let ti = time_input_name(c.time_input);
    if c.arch == "dit" {
        let s = DitSpec {
            size: DitSize { depth: 2, hidden: 32, heads: 4, patch: 2 },
            input_size: 8,
            in_channels: 2,
            num_classes: CLASSES,
            mlp_ratio: 4.0,
            time_input: c.time_input,
            time_scale: 1.0,
        };
        let j = serde_json::json!({"kind": "dit", "input_size": 8, "in_channels": 2, "num_classes": CLASSES,
            "depth": 2, "hidden": 32, "heads": 4, "patch": 2, "mlp_ratio": 4.0, "time_input": ti, "time_scale": 1.0});
        (ModelSpec::Dit(s), j)
    } else if c.arch == "unet" {
        let s = UnetSpec { time_input: c.time_input, ..common::unet_spec(&[8, 16], 2, 8, CLASSES) };
        let j = serde_json::json!({"kind": "unet", "in_channels": 2, "channels": [8, 16], "blocks_per_level": 1,
            "groups": 4, "num_classes": CLASSES, "time_input": ti, "time_scale": 1.0});
        (ModelSpec::Unet(s), j)
    } else {
        let s = MlpSpec { dim: 2, hidden: 32, layers: 2, num_classes: CLASSES, time_input: c.time_input, time_scale: 1.0 };
        let j = serde_json::json!({"kind": "mlp", "dim": 2, "hidden": 32, "layers": 2, "num_classes": CLASSES,
            "time_input": ti, "time_scale": 1.0});
        (ModelSpec::Mlp(s), j)
    }
}

/// Everything Rust computed for one case.
struct Ours {
    values: Vec<(String, Tensor)>,
    /// Rows with r != t, `[B, 1, ...]`: du/dt is only computed (and only used) there.
    mf_rows: Tensor,
}

fn run_rust(c: &Case, dir: &Path, seed: i64) -> Ours {
    std::fs::create_dir_all(dir).unwrap();
    tch::manual_seed(seed);
    let (spec, spec_json) = spec(c);
    let dev = device();
    let vs = VarStore::new(dev);
    let net = models::build(&vs.root(), &spec).unwrap();
    // Random weights everywhere (adaLN-Zero would make most derivatives vanish).
    common::randomize(&vs, 0.2);
    let b = 8;
    let shape: Vec<i64> = if c.arch == "mlp" { vec![b, 2] } else { vec![b, 2, 8, 8] };
    let s = TimeSampler::default();
    let pair = sample_pair(PairSampler::V0, c.ratio, &s, &s, b, dev);
    let d = Draws {
        x: Tensor::randn(shape.as_slice(), (Kind::Float, dev)),
        e: Tensor::randn(shape.as_slice(), (Kind::Float, dev)),
        t: pair.t,
        r: pair.r,
        labels: Some(Tensor::randint(CLASSES, [b], (Kind::Int64, dev))),
        // About a third of the labels dropped, so guided and dropped rows both occur.
        dropped: c.guidance.map(|_| Tensor::rand([b], (Kind::Float, dev)).lt(0.35)),
        aug: None,
    };
    // An interval that leaves rows outside it.
    let (t_min, t_max) = (0.2, 0.8);
    let guidance = c.guidance.map(|(omega, kappa)| Guidance { omega, kappa, t_min, t_max, class_dropout: 0.35, null_class: CLASSES });

    // Fixture: weights before the step and every draw.
    let cpu = |t: &Tensor| t.to_device(Device::Cpu).copy();
    let mut fixture: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (format!("param.{n}"), cpu(&t))).collect();
    for (n, t) in [("x", &d.x), ("e", &d.e), ("t", &d.t), ("r", &d.r)] {
        fixture.push((format!("draw.{n}"), cpu(t)));
    }
    fixture.push(("draw.labels".into(), cpu(d.labels.as_ref().unwrap())));
    if let Some(m) = &d.dropped {
        fixture.push(("draw.dropped".into(), cpu(&m.to_kind(Kind::Uint8))));
    }
    Tensor::write_safetensors(&fixture, dir.join("fixture.safetensors")).unwrap();
    let (lr, betas, ema_decay) = (1e-3, [0.9, 0.95], 0.99);
    let mut case_json = serde_json::json!({
        "model": spec_json, "tangent": tangent_name(c.reported_tangent), "norm_p": c.norm_p, "norm_eps": 1e-3,
        "num_classes": CLASSES, "device": if dev.is_cuda() { "cuda" } else { "cpu" },
    });
    if let Some((omega, kappa)) = c.guidance {
        case_json["guidance"] = serde_json::json!({"omega": omega, "kappa": kappa, "t_min": t_min, "t_max": t_max});
    }
    if c.adam {
        case_json["adam"] = serde_json::json!({"lr": lr, "betas": betas, "ema_decay": ema_decay});
    }
    std::fs::write(dir.join("case.json"), serde_json::to_string_pretty(&case_json).unwrap()).unwrap();

    // The step, as training does it.
    let ema = Ema::new(&spec, &vs, ema_decay).unwrap();
    let mut opt = Adam::new(&vs, meanflow::config::OptimizerKind::Adam, betas, 0.0);
    let obj = MeanFlowLoss { tangent: c.tangent, jvp_rows: Default::default(), norm_p: c.norm_p, norm_eps: 1e-3, guidance };
    let out = obj.compute(net.as_ref(), &d, true).unwrap();
    opt.zero_grad();
    out.loss.backward();
    let mut values = vec![
        ("u".to_string(), out.u.detach()),
        ("dudt".into(), out.dudt.shallow_clone()),
        ("u_tgt".into(), out.u_tgt.shallow_clone()),
        ("per_sample".into(), out.per_sample.shallow_clone()),
        ("loss".into(), out.loss.detach().reshape([1])),
    ];
    for (n, p) in opt.params() {
        values.push((format!("grad.{n}"), p.grad().copy()));
    }
    let mf_rows = meanflow::path::expand_time(&d.t.ne_tensor(&d.r).to_kind(Kind::Float), &d.x).to_device(Device::Cpu);
    if c.adam {
        let grads: Vec<(String, Tensor)> = opt.params().iter().map(|(n, p)| (format!("rustgrad.{n}"), cpu(&p.grad()))).collect();
        let mut all = Tensor::read_safetensors(dir.join("fixture.safetensors")).unwrap();
        all.extend(grads);
        Tensor::write_safetensors(&all, dir.join("fixture.safetensors")).unwrap();
        opt.step(lr);
        ema.update();
        for (n, t) in vs.variables() {
            values.push((format!("after.{n}"), t.copy()));
        }
        for (n, t) in ema.vs.variables() {
            values.push((format!("ema.{n}"), t.copy()));
        }
    }
    let values = values.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect();
    Ours { values, mf_rows }
}

fn python() -> PathBuf {
    std::env::var_os("MEANFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

fn run_python(dirs: &[PathBuf]) {
    let script = root().join("tests/reference/meanflow_ref.py");
    let out = std::process::Command::new(python()).arg(script).args(dirs).output().expect("run the PyTorch reference");
    assert!(out.status.success(), "reference failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// (group, max abs error, max relative error) per group of compared tensors.
fn compare(ours: &Ours, dir: &Path) -> Vec<(String, f64, f64)> {
    let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("result.safetensors")).unwrap().into_iter().collect();
    let mut groups: Vec<(String, f64, f64)> = Vec::new();
    for (name, ours_t) in &ours.values {
        let mut t = theirs.get(name).unwrap_or_else(|| panic!("reference result lacks {name}")).shallow_clone();
        assert_eq!(t.size(), ours_t.size(), "{name}");
        if name == "dudt" {
            // Rows with r = t multiply du/dt by t - r = 0; we skip computing it there.
            t = t * &ours.mf_rows;
        }
        let abs = common::max_abs(&(ours_t - &t));
        let rel = abs / (common::max_abs(&t) + 1e-30);
        let group = name.split('.').next().unwrap().to_string();
        match groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => {
                g.1 = g.1.max(abs);
                g.2 = g.2.max(rel);
            }
            None => groups.push((group, abs, rel)),
        }
    }
    groups
}

fn check(cases: &[Case], tag: &str) -> Vec<(String, String, f64, f64)> {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..cases.len()).map(|i| tmp.path().join(format!("{tag}{i}"))).collect();
    let ours: Vec<Ours> = cases.iter().zip(&dirs).enumerate().map(|(i, (c, d))| run_rust(c, d, 1000 + i as i64)).collect();
    run_python(&dirs);
    let mut rows = Vec::new();
    for ((c, o), d) in cases.iter().zip(&ours).zip(&dirs) {
        for (group, abs, rel) in compare(o, d) {
            rows.push((c.name.clone(), group, abs, rel));
        }
    }
    rows
}

fn print_table(rows: &[(String, String, f64, f64)]) {
    println!("\n{:<32} {:<11} {:>12} {:>12}  result on {:?} (tolerance: max rel <= {TOL:e})", "case", "quantity", "max abs err", "max rel err", device());
    for (case, group, abs, rel) in rows {
        println!("{case:<32} {group:<11} {abs:>12.3e} {rel:>12.3e}  {}", if *rel <= TOL { "pass" } else { "FAIL" });
    }
}

#[test]
fn crosscheck_against_pytorch() {
    let rows = check(&cases(), "case");
    print_table(&rows);
    let failed: Vec<_> = rows.iter().filter(|r| r.3 > TOL).collect();
    assert!(failed.is_empty(), "{} comparisons over tolerance: {failed:?}", failed.len());
    assert!(rows.iter().any(|r| r.1 == "after") && rows.iter().any(|r| r.1 == "ema"));
}

/// Test of the test: Rust computes with the swapped tangent (v,1,0) while the reference
/// is told (v,0,1). The comparison must fail on du/dt, the target and the gradients.
#[test]
fn crosscheck_catches_a_wrong_tangent() {
    let wrong = Case { tangent: Tangent::V10, ..base("wrong rust tangent (v,1,0)") };
    let rows = check(&[wrong], "wrong");
    print_table(&rows);
    for group in ["dudt", "u_tgt", "grad"] {
        let row = rows.iter().find(|r| r.1 == group).unwrap();
        assert!(row.3 > 100.0 * TOL, "a wrong tangent went unnoticed in {group}: rel err {}", row.3);
    }
    let u = rows.iter().find(|r| r.1 == "u").unwrap();
    assert!(u.3 <= TOL, "u itself does not depend on the tangent");
}

/// `meanflow export` writes a state dict that the reference DiT loads with strict=True,
/// and the two forwards agree; `import` of that file round-trips bit for bit.
#[test]
fn crosscheck_exported_weights_load_into_pytorch() {
    use meanflow::checkpoint::{self, Weights};
    let tmp = tempfile::tempdir().unwrap();
    let c = base("export");
    let (spec, spec_json) = spec(&c);
    tch::manual_seed(5);
    let vs = VarStore::new(Device::Cpu);
    let net = models::build(&vs.root(), &spec).unwrap();
    common::randomize(&vs, 0.2);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let sd = tmp.path().join("sd.safetensors");
    Tensor::write_safetensors(&named, &sd).unwrap();
    // A config for this model, import, export again.
    let cfg_text = "data: {dataset: mnist, root: /unused}\n\
        model: {name: dit, in_channels: 2, input_size: 8, num_classes: 4, depth: 2, hidden: 32, heads: 4, patch: 2}\n\
        train: {steps: 1, batch_size: 2, lr: 0.001, ema_decays: [0.999], run_dir: /unused}\n";
    let cfg_path = tmp.path().join("c.yaml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let cfg = meanflow::config::load(&cfg_path, &[]).unwrap();
    let run = tmp.path().join("imported");
    checkpoint::import(&sd, &cfg, &run).unwrap();
    let exported = tmp.path().join("exported.safetensors");
    checkpoint::export(&run, Weights::Ema(None), &exported).unwrap();
    let a: HashMap<String, Tensor> = Tensor::read_safetensors(&sd).unwrap().into_iter().collect();
    let b: HashMap<String, Tensor> = Tensor::read_safetensors(&exported).unwrap().into_iter().collect();
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert!(v.equal(&b[k]), "{k} changed in the import/export round trip");
    }
    // PyTorch loads it strictly and computes the same u.
    let z = Tensor::randn([3, 2, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.9f32, 0.5, 0.2]);
    let r = Tensor::from_slice(&[0.1f32, 0.5, 0.0]);
    let y = Tensor::from_slice(&[0i64, 3, 4]);
    let inputs = tmp.path().join("in.safetensors");
    Tensor::write_safetensors(&[("z", &z), ("t", &t), ("r", &r), ("labels", &y)], &inputs).unwrap();
    let spec_path = tmp.path().join("spec.json");
    std::fs::write(&spec_path, spec_json.to_string()).unwrap();
    let out_path = tmp.path().join("u.safetensors");
    let script = root().join("tests/reference/meanflow_ref.py");
    let st = std::process::Command::new(python())
        .arg(script)
        .args(["--forward".as_ref(), spec_path.as_os_str(), exported.as_os_str(), inputs.as_os_str(), out_path.as_os_str()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let theirs = &Tensor::read_safetensors(&out_path).unwrap()[0].1;
    let ours = net.forward(&z, &t, &r, Some(&y), false);
    let rel = common::rel_err(&ours, theirs);
    println!("exported DiT: PyTorch strict load ok, forward max rel err {rel:.3e}");
    assert!(rel <= TOL, "forward differs: {rel}");
}
