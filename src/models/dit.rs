//! DiT (Peebles & Xie) as MeanFlow uses it: adaLN-Zero blocks, sin-cos position
//! embedding, patch embedding, one timestep embedder per time input (Table 1(c)) and a
//! label embedder with a null class. Variable names are the PyTorch DiT state-dict keys.
use tch::{nn, nn::Module, Kind, Tensor};

use super::embed::{xavier_linear, zero_linear, LabelEmbedder, TimeEmbedding, TimeInput};
use super::MeanFlowNet;
use crate::error::{Error, Result};

/// Depth, width, heads and patch of one DiT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DitSize {
    pub depth: i64,
    pub hidden: i64,
    pub heads: i64,
    pub patch: i64,
}

/// The paper's named sizes: S/B/M/L/XL with patch 2, 4 or 8, e.g. "DiT-B/4".
pub fn named_size(name: &str) -> Option<DitSize> {
    let rest = name.strip_prefix("DiT-")?;
    let (size, patch) = rest.split_once('/')?;
    let (depth, hidden, heads) = match size {
        "S" => (12, 384, 6),
        "B" => (12, 768, 12),
        "M" => (16, 1024, 16),
        "L" => (24, 1024, 16),
        "XL" => (28, 1152, 16),
        _ => return None,
    };
    let patch = match patch {
        "2" => 2,
        "4" => 4,
        "8" => 8,
        _ => return None,
    };
    Some(DitSize { depth, hidden, heads, patch })
}

pub const NAMED_SIZES: [&str; 15] = [
    "DiT-S/2", "DiT-S/4", "DiT-S/8", "DiT-B/2", "DiT-B/4", "DiT-B/8", "DiT-M/2", "DiT-M/4", "DiT-M/8",
    "DiT-L/2", "DiT-L/4", "DiT-L/8", "DiT-XL/2", "DiT-XL/4", "DiT-XL/8",
];

/// Everything needed to build a DiT.
#[derive(Debug, Clone)]
pub struct DitSpec {
    pub size: DitSize,
    pub input_size: i64,
    pub in_channels: i64,
    pub num_classes: i64,
    pub mlp_ratio: f64,
    pub time_input: TimeInput,
    /// Multiplies t before the sinusoidal features (see `embed::sinusoidal`).
    pub time_scale: f64,
}

impl DitSpec {
    /// Number of parameters `Dit::new` creates (the fixed pos_embed included, as
    /// `models::num_params` counts it), computed without building: a DiT-XL/2 is 2.7 GB
    /// of float32. Checked against built models in tests/config.rs.
    pub fn num_params(&self) -> i64 {
        let DitSize { depth, hidden: d, patch: p, .. } = self.size;
        let c = self.in_channels;
        let grid = self.input_size / p;
        let inner = (d as f64 * self.mlp_ratio) as i64;
        let linear = |i: i64, o: i64| i * o + o;
        let x_embedder = c * p * p * d + d;
        let pos_embed = grid * grid * d;
        let time = self.time_input.num_embedders() * (linear(256, d) + linear(d, d));
        let labels = if self.num_classes > 0 { (self.num_classes + 1) * d } else { 0 };
        let block = linear(d, 3 * d) + linear(d, d) + linear(d, inner) + linear(inner, d) + linear(d, 6 * d);
        let final_layer = linear(d, 2 * d) + linear(d, p * p * c);
        x_embedder + pos_embed + time + labels + depth * block + final_layer
    }
}

// ---------------------------------------------------------------- block

/// x * (1 + scale) + shift, with per-sample shift/scale `[B, D]` over tokens `[B, N, D]`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

fn layer_norm_no_affine(x: &Tensor) -> Tensor {
    let d = *x.size().last().unwrap();
    x.layer_norm([d], None::<&Tensor>, None::<&Tensor>, 1e-6, false)
}

#[derive(Debug)]
pub struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl Attention {
    pub fn new(p: nn::Path, hidden: i64, heads: i64) -> Self {
        Attention {
            qkv: xavier_linear(&p / "qkv", hidden, 3 * hidden),
            proj: xavier_linear(&p / "proj", hidden, hidden),
            heads,
        }
    }

    /// Softmax attention written with matmul/softmax: every op has a forward-mode rule.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().unwrap();
        let hd = d / self.heads;
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]); // [3, B, H, N, hd]
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let attn = (q.matmul(&k.transpose(-2, -1)) * (hd as f64).powf(-0.5)).softmax(-1, x.kind()); // [B, H, N, N]
        let out = attn.matmul(&v).transpose(1, 2).reshape([b, n, d]); // [B, N, D]
        self.proj.forward(&out)
    }
}

#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Mlp {
    pub fn new(p: nn::Path, hidden: i64, inner: i64) -> Self {
        Mlp { fc1: xavier_linear(&p / "fc1", hidden, inner), fc2: xavier_linear(&p / "fc2", inner, hidden) }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).gelu("tanh"))
    }
}

/// A DiT block with adaLN-Zero conditioning.
#[derive(Debug)]
pub struct DitBlock {
    attn: Attention,
    mlp: Mlp,
    ada_ln: nn::Linear,
}

impl DitBlock {
    pub fn new(p: nn::Path, hidden: i64, heads: i64, mlp_ratio: f64) -> Self {
        DitBlock {
            attn: Attention::new(&p / "attn", hidden, heads),
            mlp: Mlp::new(&p / "mlp", hidden, (hidden as f64 * mlp_ratio) as i64),
            // adaLN-Zero: the modulation starts at zero, so each block starts as identity.
            ada_ln: zero_linear(&p / "adaLN_modulation" / "1", hidden, 6 * hidden),
        }
    }

    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let m = self.ada_ln.forward(&c.silu()).chunk(6, 1); // 6 x [B, D]
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);
        let x = x + gate_msa.unsqueeze(1) * self.attn.forward(&modulate(&layer_norm_no_affine(x), shift_msa, scale_msa));
        &x + gate_mlp.unsqueeze(1) * self.mlp.forward(&modulate(&layer_norm_no_affine(&x), shift_mlp, scale_mlp))
    }
}

#[derive(Debug)]
struct FinalLayer {
    linear: nn::Linear,
    ada_ln: nn::Linear,
}

impl FinalLayer {
    fn new(p: nn::Path, hidden: i64, patch: i64, out_channels: i64) -> Self {
        FinalLayer {
            // Zero output layer: the network starts by predicting u = 0.
            linear: zero_linear(&p / "linear", hidden, patch * patch * out_channels),
            ada_ln: zero_linear(&p / "adaLN_modulation" / "1", hidden, 2 * hidden),
        }
    }
    fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let m = self.ada_ln.forward(&c.silu()).chunk(2, 1);
        self.linear.forward(&modulate(&layer_norm_no_affine(x), &m[0], &m[1]))
    }
}

// ---------------------------------------------------------------- model

#[derive(Debug)]
pub struct Dit {
    x_embedder: nn::Conv2D,
    pos_embed: Tensor,
    time_embed: TimeEmbedding,
    y_embedder: Option<LabelEmbedder>,
    blocks: Vec<DitBlock>,
    final_layer: FinalLayer,
    spec: DitSpec,
}

impl Dit {
    pub fn new(p: &nn::Path, spec: &DitSpec) -> Result<Self> {
        let DitSize { depth, hidden, heads, patch } = spec.size;
        if spec.input_size % patch != 0 {
            return Err(Error::Shape(format!("input_size {} is not a multiple of patch {}", spec.input_size, patch)));
        }
        if hidden % heads != 0 {
            return Err(Error::Shape(format!("hidden {hidden} is not a multiple of heads {heads}")));
        }
        let grid = spec.input_size / patch;
        // Patch embedding initialised like an nn.Linear (Xavier on the flattened kernel).
        let fan_in = spec.in_channels * patch * patch;
        let a = (6.0 / (fan_in + hidden) as f64).sqrt();
        let x_embedder = nn::conv2d(
            p / "x_embedder" / "proj",
            spec.in_channels,
            hidden,
            patch,
            nn::ConvConfig {
                stride: patch,
                ws_init: nn::Init::Uniform { lo: -a, up: a },
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        // Fixed sin-cos position embedding: a non-trainable variable so it is saved.
        let mut pos_embed = p.zeros_no_train("pos_embed", &[1, grid * grid, hidden]);
        let table = sincos_2d(hidden, grid).unsqueeze(0).to_kind(pos_embed.kind());
        tch::no_grad(|| pos_embed.copy_(&table));
        let blocks = (0..depth).map(|i| DitBlock::new(p / "blocks" / i, hidden, heads, spec.mlp_ratio)).collect();
        Ok(Dit {
            x_embedder,
            pos_embed,
            time_embed: TimeEmbedding::new(p, spec.time_input, 256, hidden, spec.time_scale),
            y_embedder: (spec.num_classes > 0).then(|| LabelEmbedder::new(p / "y_embedder", spec.num_classes, hidden)),
            blocks,
            final_layer: FinalLayer::new(p / "final_layer", hidden, patch, spec.in_channels),
            spec: spec.clone(),
        })
    }

    /// [B, N, p*p*C] -> [B, C, H, W]
    fn unpatchify(&self, x: &Tensor) -> Tensor {
        let c = self.spec.in_channels;
        let p = self.spec.size.patch;
        let g = self.spec.input_size / p;
        let b = x.size()[0];
        x.reshape([b, g, g, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, g * p, g * p])
    }
}

impl MeanFlowNet for Dit {
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let x = self.x_embedder.forward(z).flatten(2, 3).transpose(1, 2) + &self.pos_embed; // [B, N, D]
        let mut c = self.time_embed.forward(t, r); // [B, D]
        if let (Some(y), Some(labels)) = (&self.y_embedder, labels) {
            c = c + y.forward(labels);
        }
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &c); // [B, N, D]
        }
        let x = self.final_layer.forward(&x, &c); // [B, N, p*p*C]
        self.unpatchify(&x) // [B, C, H, W]
    }
}

// ---------------------------------------------------------------- position embedding

/// 2-D sin-cos position embedding of MAE/DiT: half the channels encode the row, half the
/// column, each as [sin(pos * w), cos(pos * w)] with w = 10000^(-k / (D/4)).
pub fn sincos_2d(dim: i64, grid: i64) -> Tensor {
    let opts = (Kind::Double, tch::Device::Cpu);
    let quarter = dim / 4;
    let omega = (Tensor::arange(quarter, opts) / quarter as f64 * -(10000f64.ln())).exp(); // [D/4]
    let coords = Tensor::arange(grid, opts);
    // DiT's meshgrid puts w first: emb_h uses grid[0] = column index.
    let col = coords.repeat([grid]); // [G*G], index = row * G + col
    let row = coords.repeat_interleave_self_int(grid, 0, None);
    let enc = |pos: &Tensor| {
        let out = pos.unsqueeze(1) * omega.unsqueeze(0);
        Tensor::cat(&[out.sin(), out.cos()], 1)
    };
    Tensor::cat(&[enc(&col), enc(&row)], 1).to_kind(Kind::Float) // [G*G, D]
}
