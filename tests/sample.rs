//! Sampling against a closed form: for data that is a single point x0 the average
//! velocity is exactly u(z_t, r, t) = (z_t - x0) / t on the straight path, so one step
//! from noise lands on x0, and so does any number of steps.
use meanflow::models::MeanFlowNet;
use meanflow::sample::{class_grid_labels, euler, sample, time_grid};
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
