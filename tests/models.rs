//! Networks: the paper's DiT sizes and parameter counts, state-dict names, shapes,
//! initialisation, and the fixed sin-cos position embedding.
mod common;

use meanflow::models::{self, dit, DitSpec, MlpSpec, ModelSpec, TimeInput, UnetSpec};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn dit_spec(name: &str, input_size: i64, in_channels: i64, num_classes: i64) -> DitSpec {
    DitSpec {
        size: dit::named_size(name).unwrap(),
        input_size,
        in_channels,
        num_classes,
        mlp_ratio: 4.0,
        time_input: TimeInput::TH,
        time_scale: 1.0,
    }
}

fn count(spec: ModelSpec) -> i64 {
    let vs = VarStore::new(Device::Cpu);
    let _net = models::build(&vs.root(), &spec).unwrap();
    models::num_params(&vs)
}

/// Table 2 of the paper: B/2 131M, XL/2 676M (ImageNet 256 latents 32x32x4, 1000 classes).
#[test]
fn dit_parameter_counts_match_the_paper() {
    for (name, paper) in [("DiT-B/2", 131e6), ("DiT-XL/2", 676e6)] {
        let n = count(ModelSpec::Dit(dit_spec(name, 32, 4, 1000))) as f64;
        let rel = (n - paper).abs() / paper;
        assert!(rel < 0.01, "{name}: {n} parameters vs the paper's {paper} ({:.2}% off)", rel * 100.0);
    }
}

#[test]
fn every_named_size_parses() {
    for name in dit::NAMED_SIZES {
        let s = dit::named_size(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(s.hidden % s.heads, 0);
        assert!(name.ends_with(&format!("/{}", s.patch)));
    }
    assert_eq!(dit::named_size("DiT-B/4").unwrap(), dit::DitSize { depth: 12, hidden: 768, heads: 12, patch: 4 });
    assert_eq!(dit::named_size("DiT-XL/2").unwrap(), dit::DitSize { depth: 28, hidden: 1152, heads: 16, patch: 2 });
    assert!(dit::named_size("DiT-Q/2").is_none());
    assert!(dit::named_size("DiT-B/3").is_none());
}

#[test]
fn dit_state_dict_keys_follow_pytorch_dit() {
    let vs = VarStore::new(Device::Cpu);
    let _net = models::build(&vs.root(), &ModelSpec::Dit(dit_spec("DiT-S/8", 32, 4, 10))).unwrap();
    let vars = vs.variables();
    for key in [
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "pos_embed",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.bias",
        "h_embedder.mlp.0.weight",
        "y_embedder.embedding_table.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.bias",
        "blocks.11.mlp.fc1.weight",
        "blocks.11.mlp.fc2.bias",
        "blocks.3.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.bias",
    ] {
        assert!(vars.contains_key(key), "missing {key}; have e.g. {:?}", vars.keys().take(5).collect::<Vec<_>>());
    }
    assert_eq!(vars["y_embedder.embedding_table.weight"].size(), vec![11, 384], "null class row");
    assert!(!vars["pos_embed"].requires_grad(), "pos_embed is fixed");
    assert_eq!(vars["blocks.0.adaLN_modulation.1.weight"].size(), vec![6 * 384, 384]);
}

#[test]
fn zero_initialised_dit_outputs_zeros_with_the_input_shape() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let net = models::build(&vs.root(), &ModelSpec::Dit(dit_spec("DiT-S/4", 16, 4, 10))).unwrap();
    let z = Tensor::randn([2, 4, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.5f32, 0.9]);
    let y = Tensor::from_slice(&[1i64, 10]);
    let u = net.forward(&z, &t, &(&t * 0.5), Some(&y), true);
    assert_eq!(u.size(), z.size());
    assert_eq!(common::max_abs(&u), 0.0, "adaLN-Zero and the zero final layer give u = 0");
}

#[test]
fn unpatchify_inverts_patch_layout() {
    // With every weight random the output is no longer zero and still has z's shape.
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let net = models::build(&vs.root(), &ModelSpec::Dit(dit_spec("DiT-S/2", 8, 3, 0))).unwrap();
    common::randomize(&vs, 0.05);
    let z = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.3f32, 0.6]);
    let u = net.forward(&z, &t, &t, None, true);
    assert_eq!(u.size(), vec![2, 3, 8, 8]);
    assert!(common::max_abs(&u) > 0.0);
}

/// Closed form of MAE/DiT's get_2d_sincos_pos_embed, entry by entry.
#[test]
fn sincos_position_embedding_matches_closed_form() {
    let (dim, grid) = (16i64, 3i64);
    let pe = dit::sincos_2d(dim, grid);
    assert_eq!(pe.size(), vec![grid * grid, dim]);
    let q = dim / 4;
    for row in 0..grid {
        for col in 0..grid {
            let n = row * grid + col;
            for k in 0..q {
                let w = 1.0 / 10000f64.powf(k as f64 / q as f64);
                let want = [
                    (k, (col as f64 * w).sin()),
                    (q + k, (col as f64 * w).cos()),
                    (2 * q + k, (row as f64 * w).sin()),
                    (3 * q + k, (row as f64 * w).cos()),
                ];
                for (j, v) in want {
                    let got = pe.double_value(&[n, j]);
                    assert!((got - v).abs() < 1e-6, "token {n} channel {j}: {got} vs {v}");
                }
            }
        }
    }
}

#[test]
fn unet_and_mlp_shapes_and_conditioning() {
    tch::manual_seed(2);
    let vs = VarStore::new(Device::Cpu);
    let spec = UnetSpec {
        channels: vec![8, 16, 16],
        blocks_per_level: 2,
        groups: 4,
        in_channels: 1,
        input_size: 28,
        num_classes: 10,
        time_input: TimeInput::TRH,
        time_scale: 1.0,
    };
    let net = models::build(&vs.root(), &ModelSpec::Unet(spec)).unwrap();
    common::randomize(&vs, 0.1);
    let z = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.2f32, 0.5, 0.9]);
    let y = Tensor::from_slice(&[0i64, 5, 10]);
    let u = net.forward(&z, &t, &(&t * 0.5), Some(&y), true);
    assert_eq!(u.size(), z.size());
    // The label reaches the output.
    let u2 = net.forward(&z, &t, &(&t * 0.5), Some(&Tensor::from_slice(&[1i64, 6, 3])), true);
    assert!(common::max_abs(&(&u - &u2)) > 0.0);
    for k in ["t_embedder.mlp.0.weight", "r_embedder.mlp.0.weight", "h_embedder.mlp.0.weight"] {
        assert!(vs.variables().contains_key(k), "{k}");
    }

    let vs = VarStore::new(Device::Cpu);
    let mlp = models::build(
        &vs.root(),
        &ModelSpec::Mlp(MlpSpec { dim: 2, hidden: 16, layers: 2, num_classes: 0, time_input: TimeInput::H, time_scale: 1.0 }),
    )
    .unwrap();
    let z = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([5], (Kind::Float, Device::Cpu));
    assert_eq!(mlp.forward(&z, &t, &t, None, true).size(), vec![5, 2]);
}
