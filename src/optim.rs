//! Adam / AdamW written out on tensors, so that the moments can be checkpointed and the
//! update matches torch.optim.Adam(W) (non-amsgrad) formula for formula.
use std::collections::HashMap;

use tch::{nn::VarStore, Kind, Tensor};

use crate::config::OptimizerKind;
use crate::error::{Error, Result};

pub struct Adam {
    kind: OptimizerKind,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// Trainable variables sorted by name: a fixed order for checkpoints and sums.
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Number of updates applied (the bias-correction exponent).
    pub updates: i64,
}

impl Adam {
    pub fn new(vs: &VarStore, kind: OptimizerKind, betas: [f64; 2], weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Vec<(String, Tensor)>| p.iter().map(|(_, t)| t.zeros_like()).collect::<Vec<_>>();
        Adam { kind, betas, eps: 1e-8, weight_decay, m: zeros(&params), v: zeros(&params), params, updates: 0 }
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// Global L2 norm of all gradients (a scalar tensor, no host sync).
    pub fn grad_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self.grads().iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
        if norms.is_empty() {
            return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        }
        Tensor::stack(&norms, 0).norm()
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's
    /// clip_grad_norm_); returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Tensor {
        let total = self.grad_norm();
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            for mut g in self.grads() {
                let c = coef.to_device(g.device()).to_kind(g.kind());
                let _ = g.g_mul_(&c);
            }
        });
        total
    }

    pub fn step(&mut self, lr: f64) {
        self.updates += 1;
        let [b1, b2] = self.betas;
        let bc1 = 1.0 - b1.powi(self.updates as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.updates as i32)).sqrt();
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                let g = match self.kind {
                    // Adam: L2 penalty folded into the gradient.
                    OptimizerKind::Adam if self.weight_decay != 0.0 => &g + &p * self.weight_decay,
                    // AdamW: decoupled decay applied to the weights.
                    OptimizerKind::AdamW if self.weight_decay != 0.0 => {
                        let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                        g
                    }
                    _ => g,
                };
                let _ = self.m[i].lerp_(&g, 1.0 - b1);
                let _ = self.v[i].g_mul_scalar_(b2);
                let _ = self.v[i].addcmul_(&(&g * (1.0 - b2)), &g);
                let denom = self.v[i].sqrt() / bc2_sqrt + self.eps;
                let _ = p.g_sub_(&(&self.m[i] / denom * (lr / bc1)));
            }
        });
    }

    /// Moments as named tensors: "m.<param>" and "v.<param>".
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, mut named: HashMap<String, Tensor>, updates: i64, what: &str) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (key, dst) in [(format!("m.{name}"), &mut self.m[i]), (format!("v.{name}"), &mut self.v[i])] {
                    let src = named
                        .remove(&key)
                        .ok_or_else(|| Error::Checkpoint { path: what.into(), msg: format!("missing optimizer state {key}") })?;
                    if src.size() != dst.size() {
                        return Err(Error::Checkpoint {
                            path: what.into(),
                            msg: format!("optimizer state {key} has shape {:?}, expected {:?}", src.size(), dst.size()),
                        });
                    }
                    dst.copy_(&src);
                }
            }
            Ok(())
        })?;
        if let Some(extra) = named.keys().next() {
            return Err(Error::Checkpoint { path: what.into(), msg: format!("unexpected optimizer state {extra}") });
        }
        self.updates = updates;
        Ok(())
    }
}
