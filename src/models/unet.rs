//! A small conv U-Net for CPU work (the main job's model): residual blocks with group
//! norm and SiLU, the time embeddings (one per time input, summed) and the class
//! embedding added to every block, strided-conv downsampling, nearest upsampling and
//! skip connections. Resolutions halve per level: 28 -> 14 -> 7 for Fashion-MNIST.
use tch::{nn, nn::Module, Tensor};

use super::embed::{xavier_linear, LabelEmbedder, TimeEmbedding, TimeInput};
use super::MeanFlowNet;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct UnetSpec {
    /// Channels per resolution level, e.g. [32, 64, 128].
    pub channels: Vec<i64>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub blocks_per_level: i64,
    pub groups: i64,
    pub in_channels: i64,
    pub input_size: i64,
    pub num_classes: i64,
    pub time_input: TimeInput,
    /// Multiplies t before the sinusoidal features (see `embed::sinusoidal`).
    pub time_scale: f64,
}

fn conv3(p: nn::Path, cin: i64, cout: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { stride, padding: 1, ..Default::default() })
}

/// Nearest-neighbour 2x upsampling as a broadcast and a reshape: libtorch's
/// upsample_nearest2d has a slow forward-mode rule (about 10x its primal on CPU).
fn upsample2x(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("4-D feature map");
    x.unsqueeze(3).unsqueeze(5).expand([b, c, h, 2, w, 2], false).reshape([b, c, 2 * h, 2 * w])
}

#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, emb: i64, groups: i64) -> Self {
        ResBlock {
            norm1: nn::group_norm(&p / "norm1", groups, cin, Default::default()),
            conv1: conv3(&p / "conv1", cin, cout, 1),
            emb_proj: xavier_linear(&p / "emb_proj", emb, cout),
            norm2: nn::group_norm(&p / "norm2", groups, cout, Default::default()),
            // Near-zero last conv: each block starts close to the identity (as DDPM++).
            conv2: nn::conv2d(
                &p / "conv2",
                cout,
                cout,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ws_init: nn::Init::Uniform { lo: -1e-3, up: 1e-3 },
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            ),
            skip: (cin != cout).then(|| nn::conv2d(&p / "skip", cin, cout, 1, Default::default())),
        }
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu()); // [B, Cout, H, W]
        let h = h + self.emb_proj.forward(emb).unsqueeze(-1).unsqueeze(-1);
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

#[derive(Debug)]
pub struct Unet {
    time_embed: TimeEmbedding,
    y_embedder: Option<LabelEmbedder>,
    conv_in: nn::Conv2D,
    down: Vec<(Vec<ResBlock>, Option<nn::Conv2D>)>,
    mid: Vec<ResBlock>,
    up: Vec<(Vec<ResBlock>, Option<nn::Conv2D>)>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Unet {
    pub fn new(p: &nn::Path, spec: &UnetSpec) -> Result<Self> {
        let ch = &spec.channels;
        if ch.is_empty() {
            return Err(Error::Shape("unet channels is empty".into()));
        }
        if let Some(c) = ch.iter().find(|c| **c % spec.groups != 0) {
            return Err(Error::Shape(format!("unet channel count {c} is not a multiple of groups {}", spec.groups)));
        }
        let levels = ch.len() as i64;
        if spec.input_size % (1 << (levels - 1)) != 0 {
            return Err(Error::Shape(format!(
                "input_size {} cannot be halved {} times",
                spec.input_size,
                levels - 1
            )));
        }
        let emb = 4 * ch[0];
        let g = spec.groups;
        let conv_in = conv3(p / "conv_in", spec.in_channels, ch[0], 1);
        let mut skips = vec![ch[0]];
        let mut cur = ch[0];
        let mut down = Vec::new();
        for (l, &c) in ch.iter().enumerate() {
            let lp = p / "down" / l;
            let mut blocks = Vec::new();
            for i in 0..spec.blocks_per_level {
                blocks.push(ResBlock::new(&lp / "res" / i, cur, c, emb, g));
                cur = c;
                skips.push(cur);
            }
            let ds = (l + 1 < ch.len()).then(|| {
                skips.push(cur);
                conv3(&lp / "downsample", cur, cur, 2)
            });
            down.push((blocks, ds));
        }
        let mid = vec![ResBlock::new(p / "mid" / 0, cur, cur, emb, g), ResBlock::new(p / "mid" / 1, cur, cur, emb, g)];
        let mut up = Vec::new();
        for (l, &c) in ch.iter().enumerate().rev() {
            let lp = p / "up" / l;
            let mut blocks = Vec::new();
            for i in 0..=spec.blocks_per_level {
                let skip = skips.pop().expect("one skip per down block");
                blocks.push(ResBlock::new(&lp / "res" / i, cur + skip, c, emb, g));
                cur = c;
            }
            let us = (l > 0).then(|| conv3(&lp / "upsample", cur, cur, 1));
            up.push((blocks, us));
        }
        Ok(Unet {
            time_embed: TimeEmbedding::new(p, spec.time_input, ch[0], emb, spec.time_scale),
            y_embedder: (spec.num_classes > 0).then(|| LabelEmbedder::new(p / "y_embedder", spec.num_classes, emb)),
            conv_in,
            down,
            mid,
            up,
            norm_out: nn::group_norm(p / "norm_out", g, cur, Default::default()),
            // Zero output conv: the network starts by predicting u = 0.
            conv_out: nn::conv2d(
                p / "conv_out",
                cur,
                spec.in_channels,
                3,
                nn::ConvConfig {
                    padding: 1,
                    ws_init: nn::Init::Const(0.0),
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            ),
        })
    }
}

impl MeanFlowNet for Unet {
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let mut emb = self.time_embed.forward(t, r); // [B, E]
        if let (Some(y), Some(labels)) = (&self.y_embedder, labels) {
            emb = emb + y.forward(labels);
        }
        let emb = emb.silu();
        let mut h = self.conv_in.forward(z); // [B, C0, H, W]
        let mut skips = vec![h.shallow_clone()];
        for (blocks, ds) in &self.down {
            for b in blocks {
                h = b.forward(&h, &emb);
                skips.push(h.shallow_clone());
            }
            if let Some(ds) = ds {
                h = ds.forward(&h); // [B, C, H/2, W/2]
                skips.push(h.shallow_clone());
            }
        }
        for b in &self.mid {
            h = b.forward(&h, &emb);
        }
        for (blocks, us) in &self.up {
            for b in blocks {
                let s = skips.pop().expect("one skip per down block");
                h = b.forward(&Tensor::cat(&[h, s], 1), &emb);
            }
            if let Some(us) = us {
                h = us.forward(&upsample2x(&h)); // [B, C, 2H, 2W]
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu()) // [B, C_in, H, W]
    }
}
