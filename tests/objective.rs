//! The MeanFlow objective: path, time samplers, target, adaptive weight, guidance.
mod common;

use common::*;
use meanflow::guidance::Guidance;
use meanflow::loss::{flow_matching, Draws, JvpRows, MeanFlowLoss, Tangent};
use meanflow::models::{MeanFlowNet, Unet};
use meanflow::path::{interpolate, velocity};
use meanflow::time::{sample_pair, PairSampler, TimeSampler};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn small_unet(kind: Kind, num_classes: i64) -> (VarStore, Unet) {
    tch::manual_seed(21);
    let mut vs = VarStore::new(Device::Cpu);
    let spec = unet_spec(&[8, 16], 1, 8, num_classes);
    let net = Unet::new(&vs.root(), &spec).unwrap();
    vs.set_kind(kind);
    randomize(&vs, 0.15);
    (vs, net)
}

fn draws(kind: Kind, b: i64, ratio: f64, labels: bool) -> Draws {
    tch::manual_seed(22);
    let pair = sample_pair(PairSampler::V0, ratio, &TimeSampler::default(), &TimeSampler::default(), b, Device::Cpu);
    Draws {
        x: randn(&[b, 1, 8, 8], kind),
        e: randn(&[b, 1, 8, 8], kind),
        t: pair.t.to_kind(kind),
        r: pair.r.to_kind(kind),
        labels: labels.then(|| Tensor::arange(b, (Kind::Int64, Device::Cpu)).remainder(3)),
        dropped: None,
        aug: None,
    }
}

fn objective(tangent: Tangent, norm_p: f64, jvp_rows: JvpRows) -> MeanFlowLoss {
    MeanFlowLoss { tangent, jvp_rows, norm_p, norm_eps: 1e-3, guidance: None }
}

#[test]
fn path_endpoints_and_velocity() {
    let x = randn(&[3, 2], Kind::Double);
    let e = randn(&[3, 2], Kind::Double);
    let zeros = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    assert!(interpolate(&x, &e, &zeros).equal(&x), "t = 0 must be data");
    assert!(interpolate(&x, &e, &zeros.ones_like()).equal(&e), "t = 1 must be noise");
    // dz/dt by finite difference equals v = e - x.
    let t = Tensor::from_slice(&[0.2, 0.5, 0.9]);
    let fd = (interpolate(&x, &e, &(&t + 1e-6)) - interpolate(&x, &e, &(&t - 1e-6))) / 2e-6;
    assert!(rel_err(&fd, &velocity(&x, &e)) < 1e-8);
}

#[test]
fn pairs_have_t_ge_r_and_the_requested_share() {
    let s = TimeSampler::default();
    for pair in [PairSampler::Index, PairSampler::V0, PairSampler::V1] {
        for ratio in [0.0, 0.25, 0.5, 1.0] {
            tch::manual_seed(7);
            let b = 4096;
            let p = sample_pair(pair, ratio, &s, &s, b, Device::Cpu);
            assert!(bool::try_from(p.t.ge_tensor(&p.r).all()).unwrap(), "{pair:?}: t < r somewhere");
            assert!(bool::try_from(p.t.gt(0.0).all().logical_and(&p.t.lt(1.0).all())).unwrap());
            let share = p.t.ne_tensor(&p.r).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
            // v1 keeps a row with probability ratio, then sets r = min(t, r), which is r != t
            // with probability 1/2 for i.i.d. t and r: expected share ratio / 2.
            let expected = if pair == PairSampler::V1 { ratio / 2.0 } else { ratio };
            let sd = (expected * (1.0 - expected) / b as f64).sqrt();
            assert!(
                (share - expected).abs() <= 4.0 * sd + 1.0 / b as f64,
                "{pair:?} ratio {ratio}: share {share} vs {expected} (4 sd = {})",
                4.0 * sd
            );
        }
    }
    // index: the r = t rows are the leading ones, as the JAX code's mask.
    let p = sample_pair(PairSampler::Index, 0.25, &s, &s, 8, Device::Cpu);
    let diff: Vec<bool> = Vec::try_from(p.t.ne_tensor(&p.r)).unwrap();
    assert_eq!(diff, vec![false, false, false, false, false, false, true, true]);
}

#[test]
fn logit_normal_has_the_requested_moments() {
    tch::manual_seed(8);
    let n = 200_000;
    let t = TimeSampler::LogitNormal { mu: -0.4, sigma: 1.2 }.sample(n, Device::Cpu).to_kind(Kind::Double);
    let logit = (&t / (t.ones_like() - &t)).log();
    let mean = logit.mean(Kind::Double).double_value(&[]);
    let std = logit.std(true).double_value(&[]);
    assert!((mean + 0.4).abs() < 4.0 * 1.2 / (n as f64).sqrt(), "mean of logit(t) {mean}");
    assert!((std - 1.2).abs() < 0.01, "std of logit(t) {std}");
    let u = TimeSampler::Uniform.sample(n, Device::Cpu).to_kind(Kind::Double);
    assert!((u.mean(Kind::Double).double_value(&[]) - 0.5).abs() < 0.005);
}

#[test]
fn ratio_zero_is_the_flow_matching_loss_bit_for_bit() {
    for kind in [Kind::Double, Kind::Float] {
        let (_vs, net) = small_unet(kind, 3);
        let d = draws(kind, 6, 0.0, true);
        assert!(d.t.equal(&d.r));
        for rows in [JvpRows::All, JvpRows::MeanFlowOnly] {
            for p in [0.0, 0.5, 1.0] {
                let mf = objective(Tangent::V01, p, rows).compute(&net, &d, true).unwrap();
                let fm = flow_matching(&net, &d, p, 1e-3, true);
                assert!(mf.loss.equal(&fm.loss), "{kind:?} {rows:?} p={p}: {} != {}", mf.loss, fm.loss);
                assert!(mf.u_tgt.equal(&velocity(&d.x, &d.e)));
            }
        }
    }
}

#[test]
fn dual_pass_on_all_rows_or_only_r_ne_t_rows_agree() {
    let (vs, net) = small_unet(Kind::Double, 3);
    let d = draws(Kind::Double, 8, 0.5, true);
    let grads = |rows| {
        let out = objective(Tangent::V01, 1.0, rows).compute(&net, &d, true).unwrap();
        for mut v in vs.trainable_variables() {
            v.zero_grad();
        }
        out.loss.backward();
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (out, named.into_iter().map(|(_, v)| v.grad().copy()).collect::<Vec<_>>())
    };
    let (a, ga) = grads(JvpRows::All);
    let (b, gb) = grads(JvpRows::MeanFlowOnly);
    assert!(rel_err(&a.loss, &b.loss) < 1e-12);
    assert!(rel_err(&a.u_tgt, &b.u_tgt) < 1e-12);
    for (x, y) in ga.iter().zip(&gb) {
        assert!(rel_err(x, y) < 1e-10);
    }
}

/// With the closed-form u = a z + b t + c r + d t r, the target of each tangent of
/// Table 1(b) is known: du/dt = a v + dr (c + d t) + dt (b + d r).
#[test]
fn target_matches_closed_form_for_every_tangent() {
    let net = Bilinear { a: 0.7, b: -0.3, c: 0.4, d: 1.1 };
    let d = draws(Kind::Double, 16, 0.5, false);
    let v = velocity(&d.x, &d.e);
    let t = d.t.view([-1, 1, 1, 1]);
    let r = d.r.view([-1, 1, 1, 1]);
    for (tangent, dr, dt) in [(Tangent::V01, 0.0, 1.0), (Tangent::V00, 0.0, 0.0), (Tangent::V10, 1.0, 0.0), (Tangent::V11, 1.0, 1.0)] {
        for rows in [JvpRows::All, JvpRows::MeanFlowOnly] {
            let out = objective(tangent, 1.0, rows).compute(&net, &d, true).unwrap();
            let dudt = &v * net.a + (&t * net.d + net.c) * dr + (&r * net.d + net.b) * dt;
            let expected = &v - (&t - &r) * dudt;
            assert!(rel_err(&out.u_tgt, &expected) < 1e-12, "{tangent:?} {rows:?}");
        }
    }
}

/// With the weight held fixed, grad(loss) = mean_b grad(S_b) / (S_b + eps)^p; here each
/// grad(S_b) comes from its own backward pass and the weights from the S values.
#[test]
fn adaptive_weight_gradient_is_weighted_gradient_of_s() {
    for p in [1.0, 0.5] {
        let (vs, net) = small_unet(Kind::Double, 0);
        let d = draws(Kind::Double, 4, 0.5, false);
        let obj = objective(Tangent::V01, p, JvpRows::All);
        let params = vs.trainable_variables();
        let zero = || {
            for mut v in vs.trainable_variables() {
                v.zero_grad();
            }
        };
        let out = obj.compute(&net, &d, true).unwrap();
        zero();
        out.loss.backward();
        let g_loss: Vec<Tensor> = params.iter().map(|v| v.grad().copy()).collect();

        let s: Vec<f64> = Vec::try_from(&out.per_sample).unwrap();
        let mut g_expected: Vec<Tensor> = params.iter().map(|v| v.zeros_like()).collect();
        for (b, s_b) in s.iter().enumerate() {
            let out = obj.compute(&net, &d, true).unwrap();
            let err = (&out.u - &out.u_tgt).narrow(0, b as i64, 1);
            zero();
            err.square().sum(Kind::Double).backward();
            let w = 1.0 / ((s_b + 1e-3).powf(p) * s.len() as f64);
            for (acc, v) in g_expected.iter_mut().zip(&params) {
                *acc += v.grad() * w;
            }
        }
        for (a, e) in g_loss.iter().zip(&g_expected) {
            assert!(rel_err(a, e) < 1e-9, "p = {p}: {}", rel_err(a, e));
        }
        // p = 0 is the plain squared error.
        let plain = objective(Tangent::V01, 0.0, JvpRows::All).compute(&net, &d, true).unwrap();
        assert!(rel_err(&plain.loss, &plain.per_sample.mean(Kind::Double)) < 1e-14);
    }
}

fn guidance(omega: f64, kappa: f64, t_min: f64, t_max: f64) -> Guidance {
    Guidance { omega, kappa, t_min, t_max, class_dropout: 0.1, null_class: 3 }
}

#[test]
fn omega_one_kappa_zero_is_the_unguided_target_on_every_row() {
    let (_vs, net) = small_unet(Kind::Float, 3);
    let mut d = draws(Kind::Float, 8, 0.5, true);
    d.dropped = Some(Tensor::from_slice(&[true, false, false, true, false, false, false, true]));
    let plain = objective(Tangent::V01, 1.0, JvpRows::All);
    let unguided = plain.compute(&net, &d, true).unwrap();
    let guided = MeanFlowLoss { guidance: Some(guidance(1.0, 0.0, 0.0, 1.0)), ..plain };
    let g = guided.compute(&net, &d, true).unwrap();
    // Compare where labels agree; dropped rows see the null label in the guided run, so
    // compare those against an unguided run with the same labels.
    let mut d_null = draws(Kind::Float, 8, 0.5, true);
    d_null.labels = Some(d.labels.as_ref().unwrap().masked_fill(d.dropped.as_ref().unwrap(), 3));
    let unguided_null = plain.compute(&net, &d_null, true).unwrap();
    assert!(g.u_tgt.equal(&unguided_null.u_tgt), "guided target with omega = 1, kappa = 0 differs");
    assert!(g.loss.equal(&unguided_null.loss));
    let keep = d.dropped.as_ref().unwrap().logical_not().nonzero().squeeze_dim(1);
    assert!(g.u_tgt.index_select(0, &keep).equal(&unguided.u_tgt.index_select(0, &keep)));
}

/// The guided field against its closed form with a network whose outputs are known:
/// u(z, t, t | c) = a_c z + t, so v~ = omega v + kappa u_c + (1 - omega - kappa) u_null
/// inside [t_min, t_max] on kept rows and v elsewhere.
#[test]
fn guided_velocity_matches_closed_form() {
    struct PerClass;
    impl MeanFlowNet for PerClass {
        fn forward(&self, z: &Tensor, t: &Tensor, _r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
            let a = (labels.unwrap().to_kind(Kind::Double) + 1.0) * 0.5;
            z * a.view([-1, 1]) + t.view([-1, 1])
        }
    }
    let b = 6;
    let z = randn(&[b, 2], Kind::Double);
    let v = randn(&[b, 2], Kind::Double);
    let t = Tensor::from_slice(&[0.1, 0.3, 0.5, 0.7, 0.9, 0.5]);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
    let dropped = Tensor::from_slice(&[false, false, false, false, false, true]);
    for (omega, kappa) in [(1.0, 0.0), (3.0, 0.0), (1.0, 0.5), (0.2, 0.92)] {
        let g = guidance(omega, kappa, 0.2, 0.8);
        let got = g.guided_velocity(&PerClass, &z, &t, &v, &labels, &dropped, true);
        assert!(!got.requires_grad());
        let zs: Vec<f64> = Vec::try_from(z.flatten(0, -1)).unwrap();
        let vs: Vec<f64> = Vec::try_from(v.flatten(0, -1)).unwrap();
        let ts: Vec<f64> = Vec::try_from(&t).unwrap();
        let ls: Vec<i64> = Vec::try_from(&labels).unwrap();
        let ds: Vec<bool> = Vec::try_from(&dropped).unwrap();
        let mut expected = vec![0.0; zs.len()];
        for i in 0..b as usize {
            let active = ts[i] >= 0.2 && ts[i] <= 0.8 && !ds[i];
            for j in 0..2 {
                let k = 2 * i + j;
                let u_c = (ls[i] as f64 + 1.0) * 0.5 * zs[k] + ts[i];
                let u_null = (3.0 + 1.0) * 0.5 * zs[k] + ts[i];
                expected[k] = if active { omega * vs[k] + kappa * u_c + (1.0 - omega - kappa) * u_null } else { vs[k] };
            }
        }
        let expected = Tensor::from_slice(&expected).view([b, 2]);
        assert!(rel_err(&got, &expected) < 1e-12, "omega {omega} kappa {kappa}");
    }
}

#[test]
fn guidance_calls_carry_no_gradient() {
    let (vs, net) = small_unet(Kind::Double, 3);
    let mut d = draws(Kind::Double, 4, 1.0, true);
    d.dropped = Some(Tensor::from_slice(&[false, false, true, false]));
    let obj = MeanFlowLoss { guidance: Some(guidance(2.0, 0.5, 0.0, 1.0)), ..objective(Tangent::V01, 1.0, JvpRows::All) };
    let out = obj.compute(&net, &d, true).unwrap();
    assert!(!out.u_tgt.requires_grad());
    // The gradient equals that of the same loss with the target frozen as a constant.
    out.loss.backward();
    let g1: Vec<Tensor> = vs.trainable_variables().iter().map(|v| v.grad().copy()).collect();
    for mut v in vs.trainable_variables() {
        v.zero_grad();
    }
    let labels = obj.guidance.unwrap().drop_labels(d.labels.as_ref().unwrap(), d.dropped.as_ref().unwrap());
    let z = interpolate(&d.x, &d.e, &d.t);
    let u = net.forward(&z, &d.t, &d.r, Some(&labels), true);
    let s = (&u - &out.u_tgt).square().sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Double);
    (&s / (s.detach() + 1e-3)).mean(Kind::Double).backward();
    for (a, v) in g1.iter().zip(vs.trainable_variables()) {
        assert!(rel_err(a, &v.grad()) < 1e-9);
    }
}
