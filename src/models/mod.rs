//! Networks u_theta(z, r, t | label). Every network takes the two times (t, r) and
//! decides through its `TimeInput` which of t, r, t - r it embeds.
pub mod dit;
pub mod embed;
pub mod mlp;
pub mod songunet;
pub mod unet;

use tch::{nn, Tensor};

pub use dit::{Dit, DitSize, DitSpec};
pub use embed::TimeInput;
pub use mlp::{MlpNet, MlpSpec};
pub use songunet::{SongUnet, SongUnetSpec};
pub use unet::{Unet, UnetSpec};

use crate::error::Result;

/// The average-velocity network u_theta(z_t, r, t | label).
pub trait MeanFlowNet: Send {
    /// z: `[B, ...]`, t and r: `[B]` with t >= r, labels: `[B]` class ids (the null
    /// class = num_classes) or `None` for an unconditional network. Returns u, shaped as z.
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, train: bool) -> Tensor;

    /// As `forward`, with augmentation labels `[B, augment_dim]` (EDM's augment pipe) as
    /// extra conditioning; `None` means "not augmented". Only networks with
    /// `augment_dim() > 0` read them; the config refuses augmentation for the others.
    fn forward_aug(&self, z: &Tensor, t: &Tensor, r: &Tensor, labels: Option<&Tensor>, aug: Option<&Tensor>, train: bool) -> Tensor {
        let _ = aug;
        self.forward(z, t, r, labels, train)
    }

    /// Width of the augmentation labels the network reads (0 = none).
    fn augment_dim(&self) -> i64 {
        0
    }
}

/// A resolved network description, built from the config.
#[derive(Debug, Clone)]
pub enum ModelSpec {
    Dit(DitSpec),
    Unet(UnetSpec),
    Mlp(MlpSpec),
    SongUnet(SongUnetSpec),
}

impl ModelSpec {
    pub fn num_classes(&self) -> i64 {
        match self {
            ModelSpec::Dit(s) => s.num_classes,
            ModelSpec::Unet(s) => s.num_classes,
            ModelSpec::Mlp(s) => s.num_classes,
            ModelSpec::SongUnet(s) => s.num_classes,
        }
    }

    /// Width of the augmentation labels the network reads (0 = none).
    pub fn augment_dim(&self) -> i64 {
        match self {
            ModelSpec::SongUnet(s) => s.augment_dim,
            _ => 0,
        }
    }
}

/// Creates the network's variables under `p` and returns it.
pub fn build(p: &nn::Path, spec: &ModelSpec) -> Result<Box<dyn MeanFlowNet>> {
    Ok(match spec {
        ModelSpec::Dit(s) => Box::new(Dit::new(p, s)?),
        ModelSpec::Unet(s) => Box::new(Unet::new(p, s)?),
        ModelSpec::Mlp(s) => Box::new(MlpNet::new(p, s)),
        ModelSpec::SongUnet(s) => Box::new(SongUnet::new(p, s)?),
    })
}

/// Number of parameters (trainable and fixed, as PyTorch's `model.parameters()` counts
/// DiT's frozen pos_embed).
pub fn num_params(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}
