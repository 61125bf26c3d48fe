//! Sampling against a closed form: for data that is a single point x0 the average
//! velocity is exactly u(z_t, r, t) = (z_t - x0) / t on the straight path, so one step
//! from noise lands on x0, and so does any number of steps.
use meanflow::models::MeanFlowNet;
use meanflow::sample::{class_grid_labels, euler, heun, sample, time_grid};
use tch::{Device, Kind, Tensor};

struct PointMass {
    x0: Tensor,
}

impl MeanFlowNet for PointMass {
    fn forward(&self, z: &Tensor, t: &Tensor, _r: &Tensor, _l: Option<&Tensor>, _train: bool) -> Tensor {
        (z - &self.x0) / t.view([-1, 1])
    }
}

#[test]
fn grid_runs_from_noise_to_data() {
    assert_eq!(time_grid(1), vec![1.0, 0.0]);
    assert_eq!(time_grid(4), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
}

#[test]
fn one_and_many_steps_reach_the_point_mass() {
    let x0 = Tensor::from_slice(&[0.5, -2.0]).view([1, 2]);
    let net = PointMass { x0: x0.shallow_clone() };
    let noise = Tensor::randn([5, 2], (Kind::Double, Device::Cpu));
    for k in [1, 2, 5] {
        let x = sample(&net, &noise, None, &time_grid(k));
        let err = (&x - &x0).abs().max().double_value(&[]);
        assert!(err < 1e-12, "{k} steps: error {err}");
        let x = euler(&net, &noise, None, &time_grid(k));
        assert!((&x - &x0).abs().max().double_value(&[]) < 1e-12);
    }
}

#[test]
fn class_rows() {
    let l = class_grid_labels(3, 2, Device::Cpu);
    assert_eq!(Vec::<i64>::try_from(&l).unwrap(), vec![0, 0, 1, 1, 2, 2]);
}

/// The exact marginal velocity of the straight path between N(0, 1) noise and N(m, s^2)
/// data: z_t = (1 - t) m + sigma_t eps with sigma_t^2 = (1 - t)^2 s^2 + t^2, so the flow
/// from t = 1 takes noise e to m + s e exactly.
struct GaussianFlow {
    m: f64,
    s: f64,
}

impl MeanFlowNet for GaussianFlow {
    fn forward(&self, z: &Tensor, t: &Tensor, _r: &Tensor, _l: Option<&Tensor>, _train: bool) -> Tensor {
        let t = t.view([-1, 1]);
        let one_minus = t.ones_like() - &t;
        let var = one_minus.square() * (self.s * self.s) + t.square();
        let dsigma_sigma = (&t - one_minus.shallow_clone() * (self.s * self.s)) / var;
        dsigma_sigma * (z - one_minus * self.m) - self.m
    }
}

#[test]
fn heun_is_second_order_and_euler_first_on_a_gaussian_flow() {
    let (m, s) = (1.5, 0.3);
    let net = GaussianFlow { m, s };
    let noise = Tensor::linspace(-2.0, 2.0, 9, (Kind::Double, Device::Cpu)).view([9, 1]);
    let exact = &noise * s + m;
    let err = |x: Tensor| (x - &exact).abs().max().double_value(&[]);
    let (e_euler, e_heun): (Vec<f64>, Vec<f64>) = [16usize, 32, 64]
        .iter()
        .map(|&k| (err(euler(&net, &noise, None, &time_grid(k))), err(heun(&net, &noise, None, &time_grid(k)))))
        .unzip();
    for i in 0..2 {
        let (re, rh) = (e_euler[i] / e_euler[i + 1], e_heun[i] / e_heun[i + 1]);
        // Halving the step size divides the error by ~2 (order 1) and ~4 (order 2).
        assert!((1.8..2.2).contains(&re), "euler errors {e_euler:?}");
        assert!((3.4..4.5).contains(&rh), "heun errors {e_heun:?}");
    }
    assert!(e_heun[2] < 1e-3 && e_heun[2] < e_euler[2] / 10.0, "heun {e_heun:?} euler {e_euler:?}");
}
