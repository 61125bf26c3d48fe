//! Conditioning embedders shared by the networks: sinusoidal timestep features with an
//! MLP (DiT's `TimestepEmbedder`), the label table with its null class, and the choice
//! of which times the network sees (Table 1(c)).
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

/// The times fed to the network; each gets its own embedder and the embeddings are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TimeInput {
    #[serde(rename = "t,r")]
    TR,
    /// The paper's default: t and the interval length t - r.
    #[default]
    #[serde(rename = "t,t-r")]
    TH,
    #[serde(rename = "t,r,t-r")]
    TRH,
    #[serde(rename = "t-r")]
    H,
}

impl TimeInput {
    /// How many timestep embedders the network has.
    pub fn num_embedders(self) -> i64 {
        self.slots().len() as i64
    }

    /// (embedder name, which time) pairs; names are the state-dict prefixes.
    fn slots(self) -> &'static [(&'static str, Slot)] {
        use Slot::*;
        match self {
            TimeInput::TR => &[("t_embedder", T), ("r_embedder", R)],
            TimeInput::TH => &[("t_embedder", T), ("h_embedder", H)],
            TimeInput::TRH => &[("t_embedder", T), ("r_embedder", R), ("h_embedder", H)],
            TimeInput::H => &[("h_embedder", H)],
        }
    }
}

impl TimeInput {
    /// The times this choice feeds the network, in slot order: e.g. [t, t - r] for "t,t-r".
    pub fn times(self, t: &Tensor, r: &Tensor) -> Vec<Tensor> {
        self.slots()
            .iter()
            .map(|(_, slot)| match slot {
                Slot::T => t.shallow_clone(),
                Slot::R => r.shallow_clone(),
                Slot::H => t - r,
            })
            .collect()
    }

    /// How many times are embedded.
    pub fn count(self) -> i64 {
        self.slots().len() as i64
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    T,
    R,
    H,
}

/// Sinusoidal features of a scalar time, as DiT's `timestep_embedding`:
/// [cos(s t f_i), sin(s t f_i)] with f_i = max_period^(-i/half), t in [0, 1].
/// The scale s sets the fastest frequency and so how steep u can be in t; MeanFlow's
/// target contains du/dt, which grows with s (see `model.time_scale`).
pub fn sinusoidal(t: &Tensor, dim: i64, scale: f64) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()) / half as f64))
        .exp()
        .to_kind(t.kind());
    let args = (t * scale).unsqueeze(1) * freqs.unsqueeze(0); // [B, half]
    let emb = Tensor::cat(&[args.cos(), args.sin()], 1);
    if dim % 2 == 1 {
        Tensor::cat(&[emb.shallow_clone(), emb.zeros_like().narrow(1, 0, 1)], 1)
    } else {
        emb
    }
}

/// DiT's TimestepEmbedder: sinusoidal(freq_dim) -> Linear -> SiLU -> Linear.
#[derive(Debug)]
pub struct TimestepEmbedder {
    mlp0: nn::Linear,
    mlp2: nn::Linear,
    freq_dim: i64,
    scale: f64,
}

impl TimestepEmbedder {
    pub fn new(p: nn::Path, freq_dim: i64, hidden: i64, scale: f64) -> Self {
        // N(0, 0.02) for the timestep MLP, as DiT's initialize_weights.
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let mlp = &p / "mlp";
        TimestepEmbedder {
            mlp0: nn::linear(&mlp / "0", freq_dim, hidden, cfg),
            mlp2: nn::linear(&mlp / "2", hidden, hidden, cfg),
            freq_dim,
            scale,
        }
    }

    pub fn forward(&self, t: &Tensor) -> Tensor {
        let f = sinusoidal(t, self.freq_dim, self.scale);
        self.mlp2.forward(&self.mlp0.forward(&f).silu())
    }
}

/// One embedder per time input, summed: c = sum_k emb_k(time_k).
#[derive(Debug)]
pub struct TimeEmbedding {
    input: TimeInput,
    embedders: Vec<TimestepEmbedder>,
}

impl TimeEmbedding {
    pub fn new(p: &nn::Path, input: TimeInput, freq_dim: i64, hidden: i64, scale: f64) -> Self {
        let embedders =
            input.slots().iter().map(|(name, _)| TimestepEmbedder::new(p / *name, freq_dim, hidden, scale)).collect();
        TimeEmbedding { input, embedders }
    }

    pub fn forward(&self, t: &Tensor, r: &Tensor) -> Tensor {
        let mut out: Option<Tensor> = None;
        for ((_, slot), emb) in self.input.slots().iter().zip(&self.embedders) {
            let time = match slot {
                Slot::T => t.shallow_clone(),
                Slot::R => r.shallow_clone(),
                Slot::H => t - r,
            };
            let e = emb.forward(&time);
            out = Some(match out {
                None => e,
                Some(acc) => acc + e,
            });
        }
        out.expect("every TimeInput has at least one slot")
    }
}

/// DiT's LabelEmbedder: a table of num_classes + 1 rows; row num_classes is the null
/// (unconditional) class used by classifier-free guidance.
#[derive(Debug)]
pub struct LabelEmbedder {
    table: Tensor,
}

impl LabelEmbedder {
    pub fn new(p: nn::Path, num_classes: i64, hidden: i64) -> Self {
        // nn.Embedding's key: y_embedder.embedding_table.weight
        let table = (p / "embedding_table").var("weight", &[num_classes + 1, hidden], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
        LabelEmbedder { table }
    }

    pub fn forward(&self, labels: &Tensor) -> Tensor {
        Tensor::embedding(&self.table, labels, -1, false, false)
    }
}

/// Xavier-uniform weights and zero bias: DiT's rule for every nn.Linear.
pub fn xavier_linear(p: nn::Path, fan_in: i64, fan_out: i64) -> nn::Linear {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::linear(
        p,
        fan_in,
        fan_out,
        nn::LinearConfig { ws_init: nn::Init::Uniform { lo: -a, up: a }, bs_init: Some(nn::Init::Const(0.0)), bias: true },
    )
}

/// A linear layer whose weight and bias start at zero (adaLN-Zero, final layers).
pub fn zero_linear(p: nn::Path, fan_in: i64, fan_out: i64) -> nn::Linear {
    nn::linear(
        p,
        fan_in,
        fan_out,
        nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true },
    )
}
