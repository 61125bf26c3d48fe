//! An MLP for 2-D toy data: [z, time features] -> hidden layers with SiLU -> u.
use tch::{nn, nn::Module, Tensor};

use super::embed::{xavier_linear, LabelEmbedder, TimeEmbedding, TimeInput};
use super::MeanFlowNet;

#[derive(Debug, Clone)]
pub struct MlpSpec {
    pub dim: i64,
    pub hidden: i64,
    pub layers: i64,
    pub num_classes: i64,
    pub time_input: TimeInput,
    /// Multiplies t before the sinusoidal features (see `embed::sinusoidal`).
    pub time_scale: f64,
}

#[derive(Debug)]
pub struct MlpNet {
    time_embed: TimeEmbedding,
    y_embedder: Option<LabelEmbedder>,
    input: nn::Linear,
    hidden: Vec<nn::Linear>,
    output: nn::Linear,
}

impl MlpNet {
    pub fn new(p: &nn::Path, spec: &MlpSpec) -> Self {
        let h = spec.hidden;
        MlpNet {
            time_embed: TimeEmbedding::new(p, spec.time_input, 64, h, spec.time_scale),
            y_embedder: (spec.num_classes > 0).then(|| LabelEmbedder::new(p / "y_embedder", spec.num_classes, h)),
            input: xavier_linear(p / "net" / "input", spec.dim, h),
            hidden: (0..spec.layers).map(|i| xavier_linear(p / "net" / "hidden" / i, h, h)).collect(),
            output: xavier_linear(p / "net" / "output", h, spec.dim),
        }
    }
}

impl MeanFlowNet for MlpNet {
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let mut c = self.time_embed.forward(t, r); // [B, H]
        if let (Some(y), Some(labels)) = (&self.y_embedder, labels) {
            c = c + y.forward(labels);
        }
        let mut x = (self.input.forward(z) + c).silu(); // [B, H]
        for l in &self.hidden {
            x = l.forward(&x).silu();
        }
        self.output.forward(&x) // [B, dim]
    }
}
