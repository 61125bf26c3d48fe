//! Networks u_theta(z, r, t | label). Every network takes the two times (t, r) and
//! decides through its `TimeInput` which of t, r, t - r it embeds.
pub mod dit;
pub mod embed;
pub mod mlp;
pub mod unet;

use tch::{nn, Tensor};

pub use dit::{Dit, DitSize, DitSpec};
pub use embed::TimeInput;
pub use mlp::{MlpNet, MlpSpec};
pub use unet::{Unet, UnetSpec};

use crate::error::Result;

/// The average-velocity network u_theta(z_t, r, t | label).
pub trait MeanFlowNet: Send {
    /// z: `[B, ...]`, t and r: `[B]` with t >= r, labels: `[B]` class ids (the null
    /// class = num_classes) or `None` for an unconditional network. Returns u, shaped as z.
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;
}

/// A resolved network description, built from the config.
#[derive(Debug, Clone)]
pub enum ModelSpec {
    Dit(DitSpec),
    Unet(UnetSpec),
    Mlp(MlpSpec),
}

impl ModelSpec {
    pub fn num_classes(&self) -> i64 {
        match self {
            ModelSpec::Dit(s) => s.num_classes,
            ModelSpec::Unet(s) => s.num_classes,
            ModelSpec::Mlp(s) => s.num_classes,
        }
    }
}

/// Creates the network's variables under `p` and returns it.
pub fn build(p: &nn::Path, spec: &ModelSpec) -> Result<Box<dyn MeanFlowNet>> {
    Ok(match spec {
        ModelSpec::Dit(s) => Box::new(Dit::new(p, s)?),
        ModelSpec::Unet(s) => Box::new(Unet::new(p, s)?),
        ModelSpec::Mlp(s) => Box::new(MlpNet::new(p, s)),
    })
}

/// Number of parameters (trainable and fixed, as PyTorch's `model.parameters()` counts
/// DiT's frozen pos_embed).
pub fn num_params(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}
