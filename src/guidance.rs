//! Classifier-free guidance baked into training (spec section 5).
//!
//! The guided field replaces v_t in both places of the target (the JVP tangent too):
//!   v~_t = omega (e - x) + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null)
//! on rows whose t lies in [t_min, t_max] and whose label was not dropped; elsewhere the
//! plain v_t (omega = 1, kappa = 0). The two network calls carry no gradient.
use tch::{Kind, Tensor};

use crate::config::GuidanceConfig;
use crate::models::MeanFlowNet;
use crate::path::expand_time;

#[derive(Debug, Clone, Copy)]
pub struct Guidance {
    pub omega: f64,
    pub kappa: f64,
    pub t_min: f64,
    pub t_max: f64,
    pub class_dropout: f64,
    /// The null label id, = num_classes.
    pub null_class: i64,
}

impl Guidance {
    pub fn new(cfg: &GuidanceConfig, num_classes: i64) -> Self {
        Guidance {
            omega: cfg.omega,
            kappa: cfg.kappa,
            t_min: cfg.t_min,
            t_max: cfg.t_max,
            class_dropout: cfg.class_dropout,
            null_class: num_classes,
        }
    }

    /// Which labels are dropped this step: Bernoulli(class_dropout) per row, `[B]` bool.
    pub fn draw_drop_mask(&self, batch: i64, device: tch::Device) -> Tensor {
        Tensor::rand([batch], (Kind::Float, device)).lt(self.class_dropout)
    }

    /// Labels with dropped rows replaced by the null class.
    pub fn drop_labels(&self, labels: &Tensor, dropped: &Tensor) -> Tensor {
        labels.masked_fill(dropped, self.null_class)
    }

    /// The guided velocity v~_t, `[B, ...]`, computed without gradient.
    pub fn guided_velocity(
        &self,
        net: &dyn MeanFlowNet,
        z: &Tensor,
        t: &Tensor,
        v: &Tensor,
        labels: &Tensor,
        dropped: &Tensor,
        train: bool,
    ) -> Tensor {
        tch::no_grad(|| {
            let b = z.size()[0];
            let null = labels.full_like(self.null_class);
            // kappa = 0 gives u(z, t, t | c) a zero weight: skip that half of the work.
            let (u_cond, u_null) = if self.kappa == 0.0 {
                (None, net.forward(z, t, t, Some(&null), train))
            } else {
                // One batched call for u(z, t, t | c) and u(z, t, t | null).
                let z2 = Tensor::cat(&[z, z], 0);
                let t2 = Tensor::cat(&[t, t], 0);
                let l2 = Tensor::cat(&[labels, &null], 0);
                let u = net.forward(&z2, &t2, &t2, Some(&l2), train);
                (Some(u.narrow(0, 0, b)), u.narrow(0, b, b))
            };
            let active = t.ge(self.t_min).logical_and(&t.le(self.t_max)).logical_and(&dropped.logical_not());
            let omega = t.full_like(1.0).masked_fill(&active, self.omega);
            let kappa = t.zeros_like().masked_fill(&active, self.kappa);
            let (omega, kappa) = (expand_time(&omega, v), expand_time(&kappa, v));
            let w_null = 1.0 - &omega - &kappa;
            let guided = &omega * v + w_null * &u_null;
            match u_cond {
                Some(u_cond) => guided + &kappa * &u_cond,
                None => guided,
            }
        })
    }
}
