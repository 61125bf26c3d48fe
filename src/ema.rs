//! Exponential moving averages of the weights: each a second VarStore built by the same
//! constructor, updated by name under no_grad: ema <- decay ema + (1 - decay) w.
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::Result;
use crate::models::{build, MeanFlowNet, ModelSpec};

pub struct Ema {
    pub decay: f64,
    pub vs: VarStore,
    pub net: Box<dyn MeanFlowNet>,
    /// (ema variable, source variable) pairs, fixed at construction.
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    pub fn new(spec: &ModelSpec, src: &VarStore, decay: f64) -> Result<Self> {
        let mut vs = VarStore::new(src.device());
        let net = build(&vs.root(), spec)?;
        vs.copy(src)?;
        vs.freeze();
        let src_vars = src.variables();
        let mut pairs: Vec<(String, Tensor, Tensor)> =
            vs.variables().into_iter().map(|(n, e)| { let s = src_vars[&n].shallow_clone(); (n, e, s) }).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema { decay, vs, net, pairs: pairs.into_iter().map(|(_, e, s)| (e, s)).collect() })
    }

    pub fn update(&self) {
        tch::no_grad(|| {
            for (e, s) in &self.pairs {
                let _ = e.shallow_clone().lerp_(s, 1.0 - self.decay);
            }
        });
    }

    /// File name of this EMA's weights inside a checkpoint.
    pub fn file_name(decay: f64) -> String {
        format!("ema_{decay}.safetensors")
    }
}
