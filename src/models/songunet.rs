//! EDM's SongUNet (DDPM++) as the official MeanFlow PyTorch code configures it for
//! CIFAR-10 (Karras et al. 2022, `training/networks.py`; py-meanflow `models/unet.py`).
//!
//! Variable names are EDM's module names, so every key equals the PyTorch state-dict key:
//! `map_layer0.weight`, `enc.32x32_conv.weight`, `enc.16x16_down.conv0.weight`,
//! `enc.16x16_block0.qkv.weight`, `dec.8x8_in0.norm2.bias`, `dec.32x32_aux_conv.bias`, ...
//! The resample filter is a constant, not a variable: PyTorch keeps it as a buffer, so it
//! is neither in `model.parameters()` nor in our parameter count.
//!
//! Time conditioning (py-meanflow): each time of the `TimeInput` (t and t - r by default)
//! goes through the same parameter-free positional embedding of width
//! `model_channels * channel_mult_noise`, the embeddings are concatenated, and map_layer0
//! reads the concatenation. t stays in [0, 1] (the official code feeds it unscaled;
//! `time_scale` multiplies it). The augmentation and label maps write to the same width.
//!
//! Forward-mode AD: every op here has a forward derivative in libtorch (conv2d,
//! conv_transpose2d, group_norm, softmax, bmm, dropout); the tests compare with finite
//! differences. Dropout draws its mask once per forward, so in the single dual pass of
//! the JVP the output and its tangent share the mask, as torch.func.jvp does.
use tch::{nn, Kind, Tensor};

use super::embed::TimeInput;
use super::MeanFlowNet;
use crate::error::{Error, Result};

// ---------------------------------------------------------------- spec

#[derive(Debug, Clone, PartialEq)]
pub struct SongUnetSpec {
    /// Input and output resolution (square).
    pub img_resolution: i64,
    pub in_channels: i64,
    /// 0 = unconditional; else a one-hot map (EDM's map_label); the null class is all zeros.
    pub num_classes: i64,
    /// Augmentation label width (0 = none); EDM's map_augment, without bias.
    pub augment_dim: i64,
    pub model_channels: i64,
    /// Channel multiplier per resolution level.
    pub channel_mult: Vec<i64>,
    pub channel_mult_emb: i64,
    /// Residual blocks per level (one more per level in the decoder).
    pub num_blocks: i64,
    /// Resolutions whose blocks carry self-attention.
    pub attn_resolutions: Vec<i64>,
    pub dropout: f64,
    /// Width of each time's positional embedding, in units of model_channels.
    pub channel_mult_noise: i64,
    /// 1-D taps of the separable up/downsampling filter (EDM: [1,1] DDPM++, [1,3,3,1] NCSN++).
    pub resample_filter: Vec<f64>,
    pub time_input: TimeInput,
    /// Multiplies every time before the positional embedding (the official code: 1).
    pub time_scale: f64,
}

impl SongUnetSpec {
    /// The official MeanFlow CIFAR-10 network (py-meanflow `MODEL_CONFIGS["unet"]` with
    /// SongUNet's defaults): 32x32x3, unconditional, augment_dim 6, dropout 0.2.
    pub fn meanflow_cifar10() -> Self {
        SongUnetSpec {
            img_resolution: 32,
            in_channels: 3,
            num_classes: 0,
            augment_dim: 6,
            model_channels: 128,
            channel_mult: vec![2, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.2,
            channel_mult_noise: 2,
            resample_filter: vec![1.0, 3.0, 3.0, 1.0],
            time_input: TimeInput::TH,
            time_scale: 1.0,
        }
    }
}

// ---------------------------------------------------------------- layers

/// EDM's `weight_init(mode='xavier_uniform') * gain`: U(-a, a), a = gain sqrt(6 / (fan_in + fan_out)).
fn xavier(gain: f64, fan_in: i64, fan_out: i64) -> nn::Init {
    let a = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform { lo: -a, up: a }
}

/// Initialisation gains of SongUNet: `init`, `init_zero` (1e-5) and `init_attn` (sqrt 0.2).
const GAIN: f64 = 1.0;
const GAIN_ZERO: f64 = 1e-5;
fn gain_attn() -> f64 {
    0.2f64.sqrt()
}

/// EDM's Linear: weight [out, in], bias zero.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(p: nn::Path, fan_in: i64, fan_out: i64, bias: bool, gain: f64) -> Self {
        Linear {
            weight: p.var("weight", &[fan_out, fan_in], xavier(gain, fan_in, fan_out)),
            bias: bias.then(|| p.var("bias", &[fan_out], nn::Init::Const(0.0))),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    None,
    Up,
    Down,
}

/// EDM's Conv2d with optional up/downsampling by a fixed separable filter, applied per
/// channel before the (optional, kernel 0 = none) convolution.
#[derive(Debug)]
struct Conv2d {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    resample: Resample,
    /// [1, 1, L, L], f f^T / (sum f)^2; float64, cast to the input's kind per call.
    filter: Tensor,
}

impl Conv2d {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: i64, resample: Resample, filter: &[f64], gain: f64) -> Self {
        let (fan_in, fan_out) = (cin * kernel * kernel, cout * kernel * kernel);
        let f = Tensor::from_slice(filter).to_kind(Kind::Double);
        let filter = (f.outer(&f) / f.sum(Kind::Double).square()).reshape([1, 1, filter.len() as i64, filter.len() as i64]);
        Conv2d {
            weight: (kernel > 0).then(|| p.var("weight", &[cout, cin, kernel, kernel], xavier(gain, fan_in, fan_out))),
            bias: (kernel > 0).then(|| p.var("bias", &[cout], nn::Init::Const(0.0))),
            resample,
            filter,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        if self.resample != Resample::None {
            let c = x.size()[1];
            let f = self.filter.to_device(x.device()).to_kind(x.kind());
            let pad = (f.size()[3] - 1) / 2;
            x = match self.resample {
                // Zero-insertion upsampling; the filter gain 4 keeps the mean.
                Resample::Up => {
                    x.conv_transpose2d(&(f * 4.0).repeat([c, 1, 1, 1]), None::<Tensor>, [2, 2], [pad, pad], [0, 0], c, [1, 1])
                }
                Resample::Down => x.conv2d(&f.repeat([c, 1, 1, 1]), None::<Tensor>, [2, 2], [pad, pad], [1, 1], c),
                Resample::None => unreachable!(),
            };
        }
        if let Some(w) = &self.weight {
            let pad = w.size()[3] / 2;
            x = x.conv2d(w, self.bias.as_ref(), [1, 1], [pad, pad], [1, 1], 1);
        }
        x
    }
}

/// EDM's GroupNorm: min(32, C / 4) groups.
#[derive(Debug)]
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    fn new(p: nn::Path, channels: i64, eps: f64) -> Result<Self> {
        let groups = 32.min(channels / 4);
        if groups < 1 || channels % groups != 0 {
            return Err(Error::Shape(format!(
                "songunet: group norm over {channels} channels needs min(32, C/4) = {groups} groups to divide C"
            )));
        }
        Ok(GroupNorm {
            weight: p.var("weight", &[channels], nn::Init::Const(1.0)),
            bias: p.var("bias", &[channels], nn::Init::Const(0.0)),
            groups,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}

// ---------------------------------------------------------------- block

/// Options of one UNetBlock (SongUNet's `block_kwargs` plus the per-block choices).
#[derive(Debug, Clone)]
pub struct BlockOptions {
    pub up: bool,
    pub down: bool,
    pub attention: bool,
    pub dropout: f64,
    pub resample_filter: Vec<f64>,
}

/// EDM's UNetBlock as SongUNet uses it: additive embedding (adaptive_scale False), one
/// attention head, skip_scale sqrt(1/2), eps 1e-6, a 1x1 resampling skip projection.
#[derive(Debug)]
pub struct UNetBlock {
    in_channels: i64,
    norm0: GroupNorm,
    conv0: Conv2d,
    affine: Linear,
    norm1: GroupNorm,
    conv1: Conv2d,
    skip: Option<Conv2d>,
    attn: Option<(GroupNorm, Conv2d, Conv2d)>,
    dropout: f64,
}

const SKIP_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;
const EPS: f64 = 1e-6;

impl UNetBlock {
    pub fn new(p: &nn::Path, cin: i64, cout: i64, emb: i64, o: &BlockOptions) -> Result<Self> {
        let rs = match (o.up, o.down) {
            (false, false) => Resample::None,
            (true, false) => Resample::Up,
            (false, true) => Resample::Down,
            (true, true) => return Err(Error::Shape("songunet: a block cannot both up- and downsample".into())),
        };
        let f = &o.resample_filter;
        let attn = if o.attention {
            Some((
                GroupNorm::new(p / "norm2", cout, EPS)?,
                Conv2d::new(p / "qkv", cout, 3 * cout, 1, Resample::None, f, gain_attn()),
                Conv2d::new(p / "proj", cout, cout, 1, Resample::None, f, GAIN_ZERO),
            ))
        } else {
            None
        };
        Ok(UNetBlock {
            in_channels: cin,
            norm0: GroupNorm::new(p / "norm0", cin, EPS)?,
            conv0: Conv2d::new(p / "conv0", cin, cout, 3, rs, f, GAIN),
            affine: Linear::new(p / "affine", emb, cout, true, GAIN),
            norm1: GroupNorm::new(p / "norm1", cout, EPS)?,
            conv1: Conv2d::new(p / "conv1", cout, cout, 3, Resample::None, f, GAIN_ZERO),
            skip: (cout != cin || rs != Resample::None).then(|| Conv2d::new(p / "skip", cin, cout, 1, rs, f, GAIN)),
            attn,
            dropout: o.dropout,
        })
    }

    /// x: [B, Cin, H, W], emb: [B, E] -> [B, Cout, H', W'].
    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.conv0.forward(&self.norm0.forward(x).silu()); // [B, Cout, H', W']
        let params = self.affine.forward(emb).unsqueeze(2).unsqueeze(3); // [B, Cout, 1, 1]
        let mut h = self.norm1.forward(&(h + params)).silu();
        if train && self.dropout > 0.0 {
            h = h.dropout(self.dropout, true);
        }
        let h = self.conv1.forward(&h);
        let skip = match &self.skip {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        let h = (h + skip) * SKIP_SCALE;
        match &self.attn {
            None => h,
            Some((norm2, qkv, proj)) => {
                // One head, as py-meanflow's QKVAttention: q, k, v are consecutive
                // channel chunks; both q and k carry C^(-1/4).
                let (b, c, hh, ww) = h.size4().expect("4-D feature map");
                let qkv = qkv.forward(&norm2.forward(&h)).reshape([b, 3 * c, hh * ww]); // [B, 3C, T]
                let parts = qkv.chunk(3, 1);
                let s = (c as f64).powf(-0.25);
                let q = &parts[0] * s; // [B, C, T]
                let k = &parts[1] * s;
                let w = q.transpose(1, 2).bmm(&k).softmax(-1, None::<Kind>); // [B, T(query), T(key)]
                let a = parts[2].bmm(&w.transpose(1, 2)); // [B, C, T]
                (proj.forward(&a.reshape([b, c, hh, ww])) + h) * SKIP_SCALE
            }
        }
    }
}

// ---------------------------------------------------------------- model

#[derive(Debug)]
pub struct SongUnet {
    map_label: Option<Linear>,
    map_augment: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    /// Encoder in order: the input conv, then blocks (down blocks included).
    enc_conv: Conv2d,
    enc: Vec<UNetBlock>,
    dec: Vec<UNetBlock>,
    aux_norm: GroupNorm,
    aux_conv: Conv2d,
    spec: SongUnetSpec,
    noise_channels: i64,
}

impl SongUnet {
    pub fn new(p: &nn::Path, spec: &SongUnetSpec) -> Result<Self> {
        let s = spec;
        let levels = s.channel_mult.len() as i64;
        if levels == 0 || s.model_channels <= 0 || s.channel_mult.iter().any(|m| *m <= 0) {
            return Err(Error::Shape(format!(
                "songunet: model_channels {} and channel_mult {:?} must be positive and non-empty",
                s.model_channels, s.channel_mult
            )));
        }
        if s.img_resolution % (1 << (levels - 1)) != 0 {
            return Err(Error::Shape(format!("songunet: resolution {} cannot be halved {} times", s.img_resolution, levels - 1)));
        }
        let fl = s.resample_filter.len();
        if fl < 2 || fl % 2 != 0 || s.resample_filter.iter().sum::<f64>() == 0.0 {
            return Err(Error::Shape(format!("songunet: resample_filter {:?} needs an even length >= 2 and a non-zero sum", s.resample_filter)));
        }
        let emb = s.model_channels * s.channel_mult_emb;
        let noise = s.model_channels * s.channel_mult_noise;
        let width = noise * s.time_input.count(); // concatenated time embeddings
        let block = |attention: bool, up: bool, down: bool| BlockOptions {
            up,
            down,
            attention,
            dropout: s.dropout,
            resample_filter: s.resample_filter.clone(),
        };

        let map_label = (s.num_classes > 0).then(|| Linear::new(p / "map_label", s.num_classes, width, true, GAIN));
        let map_augment = (s.augment_dim > 0).then(|| Linear::new(p / "map_augment", s.augment_dim, width, false, GAIN));
        let map_layer0 = Linear::new(p / "map_layer0", width, emb, true, GAIN);
        let map_layer1 = Linear::new(p / "map_layer1", emb, emb, true, GAIN);

        // Encoder: skips are the outputs of the input conv and of every block.
        let enc_p = p / "enc";
        let r0 = s.img_resolution;
        let enc_conv = Conv2d::new(&enc_p / format!("{r0}x{r0}_conv"), s.in_channels, s.model_channels, 3, Resample::None, &s.resample_filter, GAIN);
        let mut cout = s.model_channels;
        let mut skips = vec![cout];
        let mut enc = Vec::new();
        for (level, mult) in s.channel_mult.iter().enumerate() {
            let res = s.img_resolution >> level;
            if level > 0 {
                enc.push(UNetBlock::new(&(&enc_p / format!("{res}x{res}_down")), cout, cout, emb, &block(false, false, true))?);
                skips.push(cout);
            }
            for idx in 0..s.num_blocks {
                let cin = cout;
                cout = s.model_channels * mult;
                let attn = s.attn_resolutions.contains(&res);
                enc.push(UNetBlock::new(&(&enc_p / format!("{res}x{res}_block{idx}")), cin, cout, emb, &block(attn, false, false))?);
                skips.push(cout);
            }
        }

        // Decoder: each block whose input is wider than the running width concatenates a skip.
        let dec_p = p / "dec";
        let mut dec = Vec::new();
        for (level, mult) in s.channel_mult.iter().enumerate().rev() {
            let res = s.img_resolution >> level;
            if level as i64 == levels - 1 {
                dec.push(UNetBlock::new(&(&dec_p / format!("{res}x{res}_in0")), cout, cout, emb, &block(true, false, false))?);
                dec.push(UNetBlock::new(&(&dec_p / format!("{res}x{res}_in1")), cout, cout, emb, &block(false, false, false))?);
            } else {
                dec.push(UNetBlock::new(&(&dec_p / format!("{res}x{res}_up")), cout, cout, emb, &block(false, true, false))?);
            }
            for idx in 0..=s.num_blocks {
                let cin = cout + skips.pop().expect("one skip per encoder output");
                cout = s.model_channels * mult;
                let attn = idx == s.num_blocks && s.attn_resolutions.contains(&res);
                dec.push(UNetBlock::new(&(&dec_p / format!("{res}x{res}_block{idx}")), cin, cout, emb, &block(attn, false, false))?);
            }
        }
        let aux_norm = GroupNorm::new(&dec_p / format!("{r0}x{r0}_aux_norm"), cout, EPS)?;
        let aux_conv = Conv2d::new(&dec_p / format!("{r0}x{r0}_aux_conv"), cout, s.in_channels, 3, Resample::None, &s.resample_filter, GAIN_ZERO);
        Ok(SongUnet {
            map_label,
            map_augment,
            map_layer0,
            map_layer1,
            enc_conv,
            enc,
            dec,
            aux_norm,
            aux_conv,
            spec: spec.clone(),
            noise_channels: noise,
        })
    }

    /// EDM's PositionalEmbedding with endpoint=True, halves swapped as py-meanflow does:
    /// [sin(x f_i), cos(x f_i)], f_i = 10000^(-i / (n/2 - 1)).
    fn positional(&self, x: &Tensor) -> Tensor {
        let half = self.noise_channels / 2;
        let i = Tensor::arange(half, (Kind::Double, x.device()));
        let freqs = (i * (-(10000f64.ln()) / (half - 1).max(1) as f64)).exp().to_kind(x.kind()); // [n/2]
        let args = (x * self.spec.time_scale).unsqueeze(1) * freqs.unsqueeze(0); // [B, n/2]
        Tensor::cat(&[args.sin(), args.cos()], 1)
    }

    /// The conditioning vector [B, emb].
    fn embedding(&self, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, aug: Option<&Tensor>) -> Tensor {
        let times: Vec<Tensor> = self.spec.time_input.times(t, r).iter().map(|x| self.positional(x)).collect();
        let mut emb = Tensor::cat(&times, 1); // [B, k * noise]
        if let (Some(map), Some(y)) = (&self.map_label, labels) {
            // One-hot over num_classes + 1 with the null column dropped: the null class is
            // EDM's zeroed label; the sqrt(num_classes) factor is EDM's.
            let n = self.spec.num_classes;
            let onehot = y.one_hot(n + 1).narrow(1, 0, n).to_kind(emb.kind()) * (n as f64).sqrt(); // [B, n]
            emb = emb + map.forward(&onehot);
        }
        if let (Some(map), Some(a)) = (&self.map_augment, aug) {
            let a = a.to_kind(emb.kind());
            emb = emb + map.forward(&a);
        }
        let emb = self.map_layer0.forward(&emb).silu();
        self.map_layer1.forward(&emb).silu() // [B, emb]
    }
}

impl MeanFlowNet for SongUnet {
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor {
        self.forward_aug(z, t, r, labels, None, train)
    }

    fn forward_aug(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, aug: Option<&Tensor>, train: bool) -> Tensor {
        let emb = self.embedding(t, r, labels, aug); // [B, E]
        let mut x = self.enc_conv.forward(z); // [B, C0, R, R]
        let mut skips = vec![x.shallow_clone()];
        for b in &self.enc {
            x = b.forward(&x, &emb, train); // [B, C, R', R']
            skips.push(x.shallow_clone());
        }
        for b in &self.dec {
            if x.size()[1] != b.in_channels {
                let s = skips.pop().expect("one skip per encoder output");
                x = Tensor::cat(&[x, s], 1); // [B, C + Cskip, R', R']
            }
            x = b.forward(&x, &emb, train);
        }
        self.aux_conv.forward(&self.aux_norm.forward(&x).silu()) // [B, C_in, R, R]
    }

    fn augment_dim(&self) -> i64 {
        self.spec.augment_dim
    }
}
