//! Helpers shared by the integration tests.
#![allow(dead_code)]
use tch::{nn::VarStore, Device, Kind, Tensor};

use meanflow::models::MeanFlowNet;

/// Replaces every variable with N(0, scale^2) draws (zero-initialised layers would
/// otherwise make derivatives trivially zero).
pub fn randomize(vs: &VarStore, scale: f64) {
    tch::no_grad(|| {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let r = v.randn_like() * scale;
            v.copy_(&r);
        }
    });
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.abs().max().double_value(&[])
}

/// max |a - b| / (max |b| + tiny)
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b)) / (max_abs(b) + 1e-30)
}

/// Step and tolerance of a central finite difference for each precision.
pub fn fd_setup(kind: Kind) -> (f64, f64) {
    match kind {
        Kind::Double => (1e-6, 1e-6),
        _ => (1e-2, 2e-2),
    }
}

/// Central finite difference of f along `tangents` at `primals`.
pub fn central_fd(f: &dyn Fn(&[Tensor]) -> Tensor, primals: &[&Tensor], tangents: &[&Tensor], h: f64) -> Tensor {
    let shifted = |s: f64| -> Vec<Tensor> { primals.iter().zip(tangents).map(|(p, t)| *p + *t * s).collect() };
    tch::no_grad(|| (f(&shifted(h)) - f(&shifted(-h))) / (2.0 * h))
}

pub fn randn(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::randn(shape, (kind, Device::Cpu))
}

/// u(z, r, t) = a z + b t + c r + d t r, elementwise, with scalar coefficients: its
/// derivatives are known in closed form.
pub struct Bilinear {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub d: f64,
}

impl MeanFlowNet for Bilinear {
    fn forward(&self, z: &Tensor, t: &Tensor, r: &Tensor, _labels: Option<&Tensor>, _train: bool) -> Tensor {
        let t = meanflow::path::expand_time(t, z);
        let r = meanflow::path::expand_time(r, z);
        z * self.a + &t * self.b + &r * self.c + &t * &r * self.d
    }
}

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A small U-Net spec for tests (group norm with 4 groups, one block per level).
pub fn unet_spec(channels: &[i64], in_channels: i64, input_size: i64, num_classes: i64) -> meanflow::models::UnetSpec {
    meanflow::models::UnetSpec {
        channels: channels.to_vec(),
        blocks_per_level: 1,
        groups: 4,
        in_channels,
        input_size,
        num_classes,
        time_input: meanflow::models::TimeInput::TH,
        time_scale: 1.0,
    }
}
