//! MeanFlow one-step generative modeling (Geng et al., 2025) on libtorch.
//!
//! Time convention throughout: t = 0 is data, t = 1 is noise; z_t = (1 - t) x + t e.
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod ema;
pub mod error;
pub mod eval;
pub mod grid;
pub mod guidance;
pub mod jvp;
pub mod loss;
pub mod models;
pub mod optim;
pub mod path;
pub mod plot;
pub mod precision;
pub mod rng;
pub mod sample;
pub mod sweep;
pub mod time;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
pub use loss::{Draws, LossOutput, MeanFlowLoss, Tangent};
pub use models::{MeanFlowNet, ModelSpec, TimeInput};
