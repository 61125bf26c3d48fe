//! Sampling: z_r = z_t - (t - r) u(z_t, r, t) on a decreasing time grid from t = 1
//! (noise) to 0 (data). One step is 1-NFE: x = e - u(e, 0, 1).
use tch::{Kind, Tensor};

use crate::models::MeanFlowNet;

/// Uniform grid 1 = t_0 > t_1 > ... > t_k = 0.
pub fn time_grid(k: usize) -> Vec<f64> {
    (0..=k).map(|i| 1.0 - i as f64 / k as f64).collect()
}

/// Runs `grid.len() - 1` MeanFlow steps from `noise`. A guidance-trained model is
/// sampled with its conditional predictions only: no second, null-label pass.
pub fn sample(net: &dyn MeanFlowNet, noise: &Tensor, labels: Option<&Tensor>, grid: &[f64]) -> Tensor {
    tch::no_grad(|| {
        let b = noise.size()[0];
        let opts = (noise.kind(), noise.device());
        let mut z = noise.shallow_clone();
        for w in grid.windows(2) {
            let (t, r) = (w[0], w[1]);
            let tv = Tensor::full([b], t, opts);
            let rv = Tensor::full([b], r, opts);
            let u = net.forward(&z, &tv, &rv, labels, false);
            z = z - u * (t - r);
        }
        z
    })
}

/// Flow-matching baseline: Euler steps with the instantaneous velocity u(z, t, t).
pub fn euler(net: &dyn MeanFlowNet, noise: &Tensor, labels: Option<&Tensor>, grid: &[f64]) -> Tensor {
    tch::no_grad(|| {
        let b = noise.size()[0];
        let opts = (noise.kind(), noise.device());
        let mut z = noise.shallow_clone();
        for w in grid.windows(2) {
            let tv = Tensor::full([b], w[0], opts);
            let u = net.forward(&z, &tv, &tv, labels, false);
            z = z - u * (w[0] - w[1]);
        }
        z
    })
}

/// Flow-matching baseline, second order: Heun's method (the trapezoid of u(z, t, t) at both
/// ends of each interval, EDM's sampler). Every step corrects, including the last one to
/// t = 0 (the network is trained up to t = 0), so K steps cost 2K function evaluations.
pub fn heun(net: &dyn MeanFlowNet, noise: &Tensor, labels: Option<&Tensor>, grid: &[f64]) -> Tensor {
    tch::no_grad(|| {
        let b = noise.size()[0];
        let opts = (noise.kind(), noise.device());
        let mut z = noise.shallow_clone();
        for w in grid.windows(2) {
            let (t, s) = (Tensor::full([b], w[0], opts), Tensor::full([b], w[1], opts));
            let u_t = net.forward(&z, &t, &t, labels, false);
            let z_euler = &z - &u_t * (w[0] - w[1]);
            let u_s = net.forward(&z_euler, &s, &s, labels, false);
            z = z - (u_t + u_s) * (0.5 * (w[0] - w[1]));
        }
        z
    })
}

/// Labels for a class grid: `per_class` samples of each class, class-major (one row per class).
pub fn class_grid_labels(num_classes: i64, per_class: i64, device: tch::Device) -> Tensor {
    Tensor::arange(num_classes, (Kind::Int64, device)).repeat_interleave_self_int(per_class, 0, None)
}
