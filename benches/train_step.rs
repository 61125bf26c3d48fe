//! One MeanFlow training step (draws, guided target, JVP, backward, Adam, EMA), here and
//! in the PyTorch reference (tests/reference/bench_ref.py) on the same model, batch and
//! settings, in one run. Prints steps/s for each and the ratio. `make bench-train`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use meanflow::config::{self, Config};
use meanflow::ema::Ema;
use meanflow::loss::Draws;
use meanflow::models::{self, ModelSpec};
use meanflow::optim::Adam;
use meanflow::precision::Autocast;
use meanflow::time::sample_pair;
use tch::{nn::VarStore, Device, Kind, Tensor};

struct Workload {
    name: &'static str,
    config: &'static str,
    overrides: Vec<String>,
}

fn spec_json(cfg: &Config) -> serde_json::Value {
    let m = &cfg.model;
    let ti = serde_json::to_value(m.time_input).unwrap();
    match m.spec("bench").unwrap() {
        ModelSpec::Dit(s) => serde_json::json!({"kind": "dit", "input_size": s.input_size, "in_channels": s.in_channels,
            "num_classes": s.num_classes, "depth": s.size.depth, "hidden": s.size.hidden, "heads": s.size.heads,
            "patch": s.size.patch, "mlp_ratio": s.mlp_ratio, "time_input": ti, "time_scale": s.time_scale}),
        ModelSpec::Unet(s) => serde_json::json!({"kind": "unet", "in_channels": s.in_channels, "channels": s.channels,
            "blocks_per_level": s.blocks_per_level, "groups": s.groups, "num_classes": s.num_classes,
            "time_input": ti, "time_scale": s.time_scale}),
        ModelSpec::Mlp(s) => serde_json::json!({"kind": "mlp", "dim": s.dim, "hidden": s.hidden, "layers": s.layers,
            "num_classes": s.num_classes, "time_input": ti, "time_scale": s.time_scale}),
        // The PyTorch reference has no SongUNet: these workloads run ours only.
        ModelSpec::SongUnet(_) => serde_json::json!({"kind": "songunet"}),
    }
}

/// Steps per second of our training step on random data of the config's shape, and the
/// peak memory allocated (CUDA only).
fn rust_steps_per_s(cfg: &Config, device: Device, warmup: usize, steps: usize) -> (f64, Option<u64>) {
    let spec = cfg.model.spec("bench").unwrap();
    let vs = VarStore::new(device);
    let net = models::build(&vs.root(), &spec).unwrap();
    let ema = Ema::new(&spec, &vs, cfg.train.ema_decays[0]).unwrap();
    let mut opt = Adam::new(&vs, cfg.train.optimizer, cfg.train.betas, cfg.train.weight_decay);
    let obj = meanflow::train::objective(cfg, &spec);
    let (b, m) = (cfg.train.batch_size, &cfg.model);
    let shape = [b, m.in_channels, m.input_size, m.input_size];
    let step = |opt: &mut Adam| {
        let x = Tensor::rand(shape, (Kind::Float, device)) * 2.0 - 1.0;
        let (x, aug) = match &cfg.train.augment {
            Some(a) => {
                let o = meanflow::augment::augment(a, &x);
                (o.images, Some(o.labels))
            }
            None => (x, None),
        };
        let labels = (m.num_classes > 0).then(|| Tensor::randint(m.num_classes, [b], (Kind::Int64, device)));
        let mf = &cfg.meanflow;
        let pair = sample_pair(mf.pair_sampler, mf.ratio, &mf.time_sampler, &mf.time_sampler, b, device);
        let dropped = obj.guidance.as_ref().map(|g| g.draw_drop_mask(b, device));
        let d = Draws { e: x.randn_like(), x, t: pair.t, r: pair.r, labels, dropped, aug };
        let out = {
            let _autocast = Autocast::for_precision(device, cfg.train.precision).unwrap();
            obj.compute(net.as_ref(), &d, true).unwrap()
        };
        opt.zero_grad();
        out.loss.backward();
        opt.step(cfg.train.lr);
        ema.update();
        let _ = out.loss.double_value(&[]);
    };
    for _ in 0..warmup {
        step(&mut opt);
    }
    meanflow::precision::reset_peak(device);
    let t0 = Instant::now();
    for _ in 0..steps {
        step(&mut opt);
    }
    // Each step ends in a host read of the loss, so the device has finished.
    (steps as f64 / t0.elapsed().as_secs_f64(), meanflow::precision::peak_allocated(device))
}

fn device() -> Device {
    match std::env::var("MEANFLOW_DEVICE").as_deref() {
        Ok("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
        Ok("cuda") => {
            println!("MEANFLOW_DEVICE=cuda but CUDA is not visible: benchmarking the CPU workloads");
            Device::Cpu
        }
        _ => Device::Cpu,
    }
}

fn gib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "-".into())
}

fn cpu_workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "DiT-S/4, batch 8, 32x32x4, 1000 classes",
            config: "configs/fashion_mnist.yaml",
            overrides: [
                "model={name: DiT-S/4, in_channels: 4, input_size: 32, num_classes: 1000}",
                "train.batch_size=8",
                "guidance={omega: 1.0, kappa: 0.5, t_min: 0.0, t_max: 1.0}",
            ]
            .map(String::from)
            .to_vec(),
        },
        Workload { name: "CPU demo model (configs/fashion_mnist.yaml)", config: "configs/fashion_mnist.yaml", overrides: vec![] },
    ]
}

/// DiT-B/2 at batch 64 on 32x32x4: MeanFlow (ratio 0.25) and flow matching (ratio 0),
/// float32 and bf16 autocast (the JVP stays float32).
fn gpu_workloads() -> Vec<Workload> {
    let mut out = Vec::new();
    for (name, ratio, precision) in [
        ("DiT-B/2 b64 MeanFlow fp32", 0.25, "fp32"),
        ("DiT-B/2 b64 MeanFlow bf16", 0.25, "bf16"),
        ("DiT-B/2 b64 flow matching fp32", 0.0, "fp32"),
        ("DiT-B/2 b64 flow matching bf16", 0.0, "bf16"),
    ] {
        out.push(Workload {
            name,
            config: "configs/fashion_mnist.yaml",
            overrides: vec![
                "model={name: DiT-B/2, in_channels: 4, input_size: 32, num_classes: 1000}".into(),
                "train.batch_size=64".into(),
                "guidance=null".into(),
                format!("meanflow.ratio={ratio}"),
                format!("train.precision={precision}"),
            ],
        });
    }
    out
}

/// `MEANFLOW_BENCH_SET=unet-cifar10`: the CIFAR-10 SongUNet (55.9M, augmentation on) and
/// DiT-B/4 on 32x32x4, batch 8 each, our step only (no PyTorch reference), 1 + 3 steps.
fn unet_cifar10_workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "SongUNet CIFAR-10 (paper.yaml), batch 8",
            config: "configs/cifar10/paper.yaml",
            overrides: ["data.dataset=fashion_mnist", "train.batch_size=8", "train.device=cpu"].map(String::from).to_vec(),
        },
        Workload {
            name: "DiT-B/4, batch 8, 32x32x4, uncond.",
            config: "configs/fashion_mnist.yaml",
            overrides: ["model={name: DiT-B/4, in_channels: 4, input_size: 32, num_classes: 0}", "train.batch_size=8", "guidance=null"]
                .map(String::from)
                .to_vec(),
        },
    ]
}

fn main() {
    if std::env::var("MEANFLOW_BENCH_SET").as_deref() == Ok("unet-cifar10") {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        println!("meanflow bench-train (ours only): {} CPU threads; seconds per training step", tch::get_num_threads());
        for w in unet_cifar10_workloads() {
            let cfg = config::load(&root.join(w.config), &w.overrides).unwrap();
            let spec = cfg.model.spec("bench").unwrap();
            let vs = VarStore::new(Device::Cpu);
            let _ = models::build(&vs.root(), &spec).unwrap();
            let n = models::num_params(&vs);
            drop(vs);
            let (steps_per_s, _) = rust_steps_per_s(&cfg, Device::Cpu, 1, 3);
            println!("{:<44} {:>12} params {:>8.2} s/step (ratio {})", w.name, n, 1.0 / steps_per_s, cfg.meanflow.ratio);
        }
        return;
    }
    let root = std::env::var_os("MEANFLOW_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let python = std::env::var_os("MEANFLOW_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let threads = tch::get_num_threads();
    let device = device();
    let workloads = if device.is_cuda() { gpu_workloads() } else { cpu_workloads() };
    println!("meanflow bench-train: one training step on {device:?}, {threads} CPU threads (steps/s, higher is better)");
    println!(
        "{:<44} {:>10} {:>14} {:>14} {:>10} {:>10} {:>11} {:>11}",
        "workload", "meanflow", "torch jvp", "torch 2-pass", "ratio jvp", "ratio 2p", "peak ours", "peak torch"
    );
    for w in workloads {
        let cfg = config::load(&root.join(w.config), &w.overrides).unwrap();
        let (ours, peak) = rust_steps_per_s(&cfg, device, 3, 10);
        let tmp = std::env::temp_dir().join(format!("meanflow-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let case = serde_json::json!({
            "model": spec_json(&cfg), "batch_size": cfg.train.batch_size, "input_size": cfg.model.input_size, "ratio": cfg.meanflow.ratio,
            "time_sampler": cfg.meanflow.time_sampler, "norm_p": cfg.meanflow.norm_p, "norm_eps": cfg.meanflow.norm_eps,
            "guidance": cfg.guidance, "lr": cfg.train.lr, "betas": cfg.train.betas, "ema_decay": cfg.train.ema_decays[0],
            "threads": threads, "warmup": 3, "steps": 10,
            "device": if device.is_cuda() { "cuda" } else { "cpu" }, "precision": cfg.train.precision,
        });
        let case_path = tmp.join("bench.json");
        std::fs::write(&case_path, case.to_string()).unwrap();
        let out = std::process::Command::new(&python)
            .arg(root.join("tests/reference/bench_ref.py"))
            .arg(&case_path)
            .output()
            .expect("run the PyTorch reference benchmark");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (jvp, two) = (r["jvp"].as_f64().unwrap(), r["two_pass"].as_f64().unwrap());
        let torch_peak = r["jvp_peak"].as_u64();
        println!(
            "{:<44} {:>10.2} {:>14.2} {:>14.2} {:>10.2} {:>10.2} {:>11} {:>11}",
            w.name,
            ours,
            jvp,
            two,
            ours / jvp,
            ours / two,
            gib(peak),
            gib(torch_peak)
        );
        let _ = std::fs::remove_dir_all(Path::new(&tmp));
    }
    println!("ratio = meanflow steps/s / torch steps/s; torch jvp = eager torch.func.jvp over the batch,");
    println!("torch 2-pass = u with grad, then the JVP under no_grad (the reference's cheaper variant).");
    println!("peak = peak memory allocated by the caching allocator during the timed steps (CUDA only).");
}
