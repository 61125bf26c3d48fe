//! SongUNet (EDM's DDPM++ as the official MeanFlow CIFAR-10 code configures it):
//! parameter counts, state-dict names, conditioning, forward-mode AD against finite
//! differences (whole network and UNetBlock with down/up-sampling and attention), the
//! dropout mask shared by the dual pass, and its config keys.
mod common;

use std::path::Path;

use common::*;
use meanflow::config;
use meanflow::jvp::jvp;
use meanflow::models::songunet::{BlockOptions, UNetBlock};
use meanflow::models::{self, MeanFlowNet, ModelSpec, SongUnet, SongUnetSpec, TimeInput};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// A tiny SongUNet: 8x8 input, levels 8 -> 4, attention at 4x4, 6 augment labels.
fn tiny(num_classes: i64, dropout: f64) -> SongUnetSpec {
    SongUnetSpec {
        img_resolution: 8,
        in_channels: 3,
        num_classes,
        augment_dim: 6,
        model_channels: 16,
        channel_mult: vec![1, 2],
        channel_mult_emb: 2,
        num_blocks: 1,
        attn_resolutions: vec![4],
        dropout,
        channel_mult_noise: 1,
        resample_filter: vec![1.0, 3.0, 3.0, 1.0],
        time_input: TimeInput::TH,
        time_scale: 1.0,
    }
}

/// Counts measured with py-meanflow's `SongUNet` (torch 2.11, `sum(p.numel() for p in
/// model.parameters())`) at its CIFAR-10 config: 55,932,419 with augment_dim 6.
/// EDM's own DDPM++ CIFAR-10 network (one time input, channel_mult_noise 1, augment_dim 9)
/// has 55,733,891 (EDM reports 55.73M); the difference is map_layer0 reading the
/// concatenated (t, t - r) embeddings, 2 x 256 wide instead of 128 (+196,608), and
/// map_augment (6 x 512 instead of 9 x 128, +1,920).
#[test]
fn parameter_counts_match_pytorch() {
    let count = |spec: SongUnetSpec| {
        let vs = VarStore::new(Device::Cpu);
        let _net = models::build(&vs.root(), &ModelSpec::SongUnet(spec)).unwrap();
        (models::num_params(&vs), vs.variables())
    };
    let (n, vars) = count(SongUnetSpec::meanflow_cifar10());
    assert_eq!(n, 55_932_419, "MeanFlow CIFAR-10 SongUNet");
    // Keys and shapes as py-meanflow's state dict (417 parameters; its 8 resample_filter
    // buffers are constants here).
    assert_eq!(vars.len(), 417);
    for (key, shape) in [
        ("map_augment.weight", vec![512, 6]),
        ("map_layer0.weight", vec![512, 512]),
        ("map_layer0.bias", vec![512]),
        ("map_layer1.weight", vec![512, 512]),
        ("enc.32x32_conv.weight", vec![128, 3, 3, 3]),
        ("enc.32x32_block0.norm0.weight", vec![128]),
        ("enc.32x32_block0.affine.weight", vec![256, 512]),
        ("enc.32x32_block0.skip.weight", vec![256, 128, 1, 1]),
        ("enc.16x16_down.conv0.weight", vec![256, 256, 3, 3]),
        ("enc.16x16_down.skip.weight", vec![256, 256, 1, 1]),
        ("enc.16x16_block0.qkv.weight", vec![768, 256, 1, 1]),
        ("enc.16x16_block3.proj.bias", vec![256]),
        ("dec.8x8_in0.norm2.weight", vec![256]),
        ("dec.8x8_in1.conv1.weight", vec![256, 256, 3, 3]),
        ("dec.16x16_up.conv0.weight", vec![256, 256, 3, 3]),
        ("dec.16x16_block4.qkv.weight", vec![768, 256, 1, 1]),
        ("dec.32x32_block4.skip.weight", vec![256, 384, 1, 1]),
        ("dec.32x32_aux_norm.weight", vec![256]),
        ("dec.32x32_aux_conv.weight", vec![3, 256, 3, 3]),
    ] {
        let v = vars.get(key).unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(v.size(), shape, "{key}");
    }
    assert!(!vars.contains_key("map_label.weight") && !vars.contains_key("dec.8x8_in1.qkv.weight"));
    drop(vars);

    let edm = SongUnetSpec { channel_mult_noise: 1, augment_dim: 9, time_input: TimeInput::H, resample_filter: vec![1.0, 1.0], ..SongUnetSpec::meanflow_cifar10() };
    assert_eq!(count(edm).0, 55_733_891, "EDM DDPM++ CIFAR-10");
}

fn inputs(kind: Kind) -> (Tensor, Tensor, Tensor, Tensor) {
    let z = randn(&[2, 3, 8, 8], kind);
    let t = Tensor::from_slice(&[0.7, 0.4]).to_kind(kind);
    let r = Tensor::from_slice(&[0.2, 0.4]).to_kind(kind);
    let aug = randn(&[2, 6], kind);
    (z, t, r, aug)
}

#[test]
fn shapes_and_every_conditioning_input_reaches_the_output() {
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let net = SongUnet::new(&vs.root(), &tiny(10, 0.0)).unwrap();
    let (z, t, r, aug) = inputs(Kind::Float);
    let y = Tensor::from_slice(&[3i64, 10]); // 10 = the null class
    let u = net.forward_aug(&z, &t, &r, Some(&y), Some(&aug), false);
    assert_eq!(u.size(), z.size());
    // aux_conv starts at 1e-5 x Xavier: the initial output is tiny but not zero.
    let m = max_abs(&u);
    assert!(m > 0.0 && m < 1e-2, "initial |u| max {m}");
    assert_eq!(net.augment_dim(), 6);
    randomize(&vs, 0.2);
    let base = net.forward_aug(&z, &t, &r, Some(&y), Some(&aug), false);
    let differs = |other: &Tensor| max_abs(&(&base - other)) > 1e-6;
    assert!(differs(&net.forward_aug(&z, &t, &r, Some(&y), None, false)), "augment labels");
    assert!(differs(&net.forward_aug(&z, &t, &r, Some(&Tensor::from_slice(&[4i64, 10])), Some(&aug), false)), "labels");
    assert!(differs(&net.forward_aug(&z, &t, &(&r * 0.5), Some(&y), Some(&aug), false)), "r");
    // The null class is EDM's zero label vector: with map_label's bias at zero (its
    // initial value), the same output as no label at all.
    tch::no_grad(|| {
        let mut b = vs.variables()["map_label.bias"].shallow_clone();
        let _ = b.zero_();
    });
    let null = net.forward_aug(&z, &t, &r, Some(&Tensor::from_slice(&[10i64, 10])), Some(&aug), false);
    let none = net.forward_aug(&z, &t, &r, None, Some(&aug), false);
    assert!(rel_err(&null, &none) < 1e-6);
    // forward() is forward_aug() without augment labels.
    assert!(net.forward(&z, &t, &r, Some(&y), false).equal(&net.forward_aug(&z, &t, &r, Some(&y), None, false)));
}

/// Central-difference check of jvp() along random tangents, as tests/jvp.rs does.
fn check_fd(name: &str, kind: Kind, f: &dyn Fn(&[Tensor]) -> Tensor, primals: &[&Tensor]) {
    tch::manual_seed(11);
    let tangents: Vec<Tensor> = primals.iter().map(|p| p.randn_like()).collect();
    let trefs: Vec<&Tensor> = tangents.iter().collect();
    let out = jvp(|d| Ok(f(d)), primals, &trefs).unwrap();
    let (h, tol) = fd_setup(kind);
    let fd = central_fd(f, primals, &trefs, h);
    let err = rel_err(&out.tangent, &fd);
    assert!(max_abs(&fd) > 1e-3, "{name} {kind:?}: finite difference is ~0, the check would be vacuous");
    assert!(err < tol, "{name} {kind:?}: JVP vs finite difference relative error {err:.3e} > {tol:e}");
    let plain = tch::no_grad(|| f(&primals.iter().map(|p| p.shallow_clone()).collect::<Vec<_>>()));
    assert!(rel_err(&out.output.detach(), &plain) < 1e-6, "{name} {kind:?}: primal differs from a plain forward");
}

#[test]
fn network_jvp_matches_finite_difference() {
    for kind in [Kind::Double, Kind::Float] {
        tch::manual_seed(4);
        let mut vs = VarStore::new(Device::Cpu);
        let net = SongUnet::new(&vs.root(), &tiny(10, 0.0)).unwrap();
        vs.set_kind(kind);
        randomize(&vs, 0.2);
        let (z, t, r, aug) = inputs(kind);
        let y = Tensor::from_slice(&[0i64, 3]);
        check_fd("songunet", kind, &|p| net.forward_aug(&p[0], &p[1], &p[2], Some(&y), Some(&aug), false), &[&z, &t, &r]);
    }
}

#[test]
fn block_jvp_matches_finite_difference() {
    let kind = Kind::Double;
    for (name, up, down, attention, cin, cout) in [
        ("down", false, true, false, 8, 8),
        ("up", true, false, false, 8, 8),
        ("attention + skip projection", false, false, true, 8, 16),
        ("down + attention", false, true, true, 16, 16),
    ] {
        tch::manual_seed(5);
        let mut vs = VarStore::new(Device::Cpu);
        let o = BlockOptions { up, down, attention, dropout: 0.0, resample_filter: vec![1.0, 3.0, 3.0, 1.0] };
        let block = UNetBlock::new(&(vs.root() / "b"), cin, cout, 12, &o).unwrap();
        vs.set_kind(kind);
        randomize(&vs, 0.3);
        let x = randn(&[2, cin, 8, 8], kind);
        let emb = randn(&[2, 12], kind);
        let out = block.forward(&x, &emb, false);
        let side = if up { 16 } else if down { 4 } else { 8 };
        assert_eq!(out.size(), vec![2, cout, side, side], "{name}");
        check_fd(name, kind, &|p| block.forward(&p[0], &p[1], false), &[&x, &emb]);
    }
}

/// In training mode the single dual pass draws one dropout mask for u and du/dt. With
/// the RNG reseeded before every evaluation, the finite difference sees that same mask.
#[test]
fn dropout_mask_is_shared_by_output_and_tangent() {
    let kind = Kind::Double;
    tch::manual_seed(6);
    let mut vs = VarStore::new(Device::Cpu);
    let net = SongUnet::new(&vs.root(), &tiny(0, 0.5)).unwrap();
    vs.set_kind(kind);
    randomize(&vs, 0.2);
    let (z, t, r, aug) = inputs(kind);
    let f = |p: &[Tensor]| {
        tch::manual_seed(123);
        net.forward_aug(&p[0], &p[1], &p[2], None, Some(&aug), true)
    };
    let eval = tch::no_grad(|| net.forward_aug(&z, &t, &r, None, Some(&aug), false));
    assert!(rel_err(&f(&[z.shallow_clone(), t.shallow_clone(), r.shallow_clone()]), &eval) > 1e-3, "dropout is active");
    check_fd("songunet with dropout", kind, &f, &[&z, &t, &r]);
}

// ---------------------------------------------------------------- config

fn songunet_yaml(extra_model: &str, extra_train: &str) -> String {
    format!(
        "data: {{dataset: fashion_mnist, root: /nonexistent}}\n\
         model: {{name: songunet, in_channels: 3, input_size: 32{extra_model}}}\n\
         train: {{steps: 1, batch_size: 2, lr: 0.001, run_dir: /tmp/x{extra_train}}}\n"
    )
}

fn load_str(yaml: &str) -> meanflow::Result<config::Config> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    config::load(&p, &[])
}

#[test]
fn config_defaults_are_the_official_cifar10_network() {
    let cfg = load_str(&songunet_yaml(", augment_dim: 6", "")).unwrap();
    match cfg.model.spec("x").unwrap() {
        ModelSpec::SongUnet(s) => assert_eq!(s, SongUnetSpec::meanflow_cifar10()),
        other => panic!("{other:?}"),
    }
    let aug = ", augment: {p: 0.12, xflip: 1.0e8, yflip: 0, scale: 1, rotate_frac: 0, aniso: 1, translate_frac: 1}";
    let cfg = load_str(&songunet_yaml(", augment_dim: 6", aug)).unwrap();
    assert_eq!(cfg.train.augment.unwrap(), meanflow::augment::AugmentConfig::meanflow_cifar10());

    let err = |m: &str, t: &str| load_str(&songunet_yaml(m, t)).unwrap_err().to_string();
    let e = err(", augment_dim: 9", aug);
    assert!(e.contains("model.augment_dim") && e.contains("6 labels"), "{e}");
    let e = err(", dropout: 1.5", "");
    assert!(e.contains("model.dropout"), "{e}");
    let e = err(", resample_filter: [1, 2, 1]", "");
    assert!(e.contains("model.resample_filter"), "{e}");
    let e = err(", channels: [8]", "");
    assert!(e.contains("model.channels"), "{e}");
    let e = err(", augment_dim: 6", ", augment: {p: 0.1, xflip: 1, colour: 1}");
    assert!(e.contains("colour"), "{e}");
    let e = err(", augment_dim: 6", ", augment: {p: 2.0, xflip: 1}");
    assert!(e.contains("train.augment.p"), "{e}");
    // A model without an augmentation input refuses augmentation, naming the key.
    let unet = "data: {dataset: fashion_mnist, root: /x}\n\
                model: {name: unet, in_channels: 1, input_size: 28, channels: [8]}\n\
                train: {steps: 1, batch_size: 2, lr: 0.001, run_dir: /tmp/x, augment: {p: 0.5, xflip: 1}}\n";
    let e = load_str(unet).unwrap_err().to_string();
    assert!(e.contains("train.augment") && e.contains("augment_dim"), "{e}");
    let e = load_str(&unet.replace("channels: [8]", "channels: [8], num_blocks: 2")).unwrap_err().to_string();
    assert!(e.contains("model.num_blocks"), "{e}");
}

/// configs/cifar10/*.yaml validate. Until the CIFAR-10 loader lands (`dataset: cifar10`),
/// the dataset is overridden to one this branch knows.
#[test]
fn cifar10_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cifar10");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.contains("dataset: cifar10") && text.contains("FID"), "{}", p.display());
            let cfg = config::load(&p, &["data.dataset=fashion_mnist".into()]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            match cfg.model.spec("x").unwrap() {
                ModelSpec::SongUnet(s) => assert_eq!(s, SongUnetSpec::meanflow_cifar10(), "{}", p.display()),
                other => panic!("{other:?}"),
            }
            assert_eq!(cfg.train.augment.as_ref().unwrap().label_dim(), 6);
            n += 1;
        }
    }
    assert!(n >= 2);
}

// ---------------------------------------------------------------- training step

/// train.augment reaches the training step: draw_step augments the batch (seeded by the
/// step) and hands its labels to the loss; a short run of a tiny SongUNet trains.
#[test]
fn augmented_training_steps_run() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "seed: 1\n\
         data: {{dataset: mnist, root: /unused}}\n\
         model: {{name: songunet, in_channels: 3, input_size: 8, model_channels: 16, channel_mult: [1, 2], channel_mult_emb: 2,\n\
                  num_blocks: 1, attn_resolutions: [4], channel_mult_noise: 1, dropout: 0.1, augment_dim: 6}}\n\
         meanflow: {{ratio: 0.75, norm_p: 0.75}}\n\
         train: {{steps: 3, batch_size: 4, lr: 0.0006, betas: [0.9, 0.999], run_dir: {},\n\
                  augment: {{p: 0.5, xflip: 1.0e8, scale: 1, aniso: 1, translate_frac: 1}}}}\n\
         sample: {{nfe: [1], per_class: 2}}\n",
        dir.path().join("run").display()
    );
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, yaml).unwrap();
    let cfg = config::load(&p, &[]).unwrap();
    let spec = cfg.model.spec("x").unwrap();
    let objective = meanflow::train::objective(&cfg, &spec);
    let x = meanflow::rng::with_seed(7, || Tensor::rand([4, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0);
    let d = meanflow::train::draw_step(&cfg, &objective, 5, x.copy(), None);
    let aug = d.aug.as_ref().expect("augment labels drawn");
    assert_eq!(aug.size(), vec![4, 6]);
    assert!(max_abs(aug) > 0.0 && max_abs(&(&d.x - &x)) > 1e-3, "p = 0.5 augments some of the batch");
    let again = meanflow::train::draw_step(&cfg, &objective, 5, x.copy(), None);
    assert!(again.x.equal(&d.x) && again.aug.unwrap().equal(aug), "a step's draws are fixed by its number");

    let data = meanflow::data::Dataset {
        images: meanflow::rng::with_seed(8, || Tensor::rand([12, 3, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0),
        labels: Tensor::zeros([12], (Kind::Int64, Device::Cpu)),
        num_classes: 10,
    };
    let run = meanflow::train::train_on(&cfg, data, &meanflow::train::TrainOptions { resume: false, quiet: true }).unwrap();
    assert_eq!(run.steps, 3);
    assert!(run.loss.is_finite() && run.mse.is_finite());
}
