//! Forward-mode JVP: against central finite differences, closed forms, and for leaks.
mod common;

use common::*;
use meanflow::jvp::{jvp, DualLevel};
use meanflow::models::{dit::DitBlock, MeanFlowNet, MlpNet, MlpSpec, TimeInput, Unet};
use tch::{nn, nn::Module, nn::VarStore, Device, Kind, Tensor};

const KINDS: [Kind; 2] = [Kind::Double, Kind::Float];

/// Checks jvp(f) against a central difference for one precision.
fn check_fd(name: &str, kind: Kind, f: &dyn Fn(&[Tensor]) -> Tensor, primals: &[&Tensor]) {
    tch::manual_seed(11);
    let tangents: Vec<Tensor> = primals.iter().map(|p| p.randn_like()).collect();
    let trefs: Vec<&Tensor> = tangents.iter().collect();
    let out = jvp(|d| Ok(f(d)), primals, &trefs).unwrap();
    let (h, tol) = fd_setup(kind);
    let fd = central_fd(f, primals, &trefs, h);
    let err = rel_err(&out.tangent, &fd);
    assert!(max_abs(&fd) > 1e-3, "{name} {kind:?}: finite difference is ~0, the check would be vacuous");
    assert!(err < tol, "{name} {kind:?}: JVP vs finite difference relative error {err:.3e} > {tol:e}");
    // The primal output equals a plain forward.
    let plain = tch::no_grad(|| f(&primals.iter().map(|p| p.shallow_clone()).collect::<Vec<_>>()));
    assert!(rel_err(&out.output.detach(), &plain) < 1e-6, "{name} {kind:?}: primal differs from a plain forward");
}

fn store(kind: Kind) -> VarStore {
    let _ = kind;
    VarStore::new(Device::Cpu)
}

#[test]
fn mlp_matches_finite_difference() {
    for kind in KINDS {
        tch::manual_seed(1);
        let mut vs = store(kind);
        let net = MlpNet::new(&vs.root(), &MlpSpec { dim: 2, hidden: 32, layers: 2, num_classes: 0, time_input: TimeInput::TH, time_scale: 1.0 });
        vs.set_kind(kind);
        randomize(&vs, 0.3);
        let z = randn(&[5, 2], kind);
        let t = Tensor::rand([5], (kind, Device::Cpu));
        let r = &t * 0.5;
        check_fd("mlp", kind, &|p| net.forward(&p[0], &p[1], &p[2], None, true), &[&z, &t, &r]);
    }
}

#[test]
fn dit_block_matches_finite_difference() {
    for kind in KINDS {
        tch::manual_seed(2);
        let mut vs = store(kind);
        let block = DitBlock::new(vs.root() / "block", 16, 4, 4.0);
        vs.set_kind(kind);
        randomize(&vs, 0.2);
        let x = randn(&[2, 6, 16], kind); // [B, tokens, D]
        let c = randn(&[2, 16], kind); // [B, D]
        check_fd("dit block", kind, &|p| block.forward(&p[0], &p[1]), &[&x, &c]);
    }
}

#[test]
fn conv2d_and_group_norm_match_finite_difference() {
    for kind in KINDS {
        tch::manual_seed(3);
        let mut vs = store(kind);
        let conv = nn::conv2d(vs.root() / "conv", 4, 8, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        let gn = nn::group_norm(vs.root() / "gn", 2, 8, Default::default());
        vs.set_kind(kind);
        randomize(&vs, 0.5);
        let x = randn(&[2, 4, 6, 6], kind);
        check_fd("conv2d", kind, &|p| conv.forward(&p[0]), &[&x]);
        let y = randn(&[2, 8, 5, 5], kind);
        check_fd("group norm", kind, &|p| gn.forward(&p[0]), &[&y]);
        check_fd("conv+gn+silu", kind, &|p| gn.forward(&conv.forward(&p[0])).silu(), &[&x]);
    }
}

#[test]
fn unet_matches_finite_difference() {
    for kind in KINDS {
        tch::manual_seed(4);
        let mut vs = store(kind);
        let spec = common::unet_spec(&[8, 16], 1, 8, 3);
        let net = Unet::new(&vs.root(), &spec).unwrap();
        vs.set_kind(kind);
        randomize(&vs, 0.2);
        let z = randn(&[2, 1, 8, 8], kind);
        let t = Tensor::from_slice(&[0.7, 0.4]).to_kind(kind);
        let r = Tensor::from_slice(&[0.2, 0.4]).to_kind(kind);
        let y = Tensor::from_slice(&[0i64, 3]);
        check_fd("unet", kind, &|p| net.forward(&p[0], &p[1], &p[2], Some(&y), true), &[&z, &t, &r]);
    }
}

/// u = a z + b t + c r + d t r over primals (z, r, t) with tangent (v, 0, 1):
/// du/dt = a v + b + d r, exactly (dyadic values make every product exact).
#[test]
fn closed_form_total_derivative_and_tangent_order() {
    for kind in KINDS {
        let (a, b, c, d) = (0.5, 0.25, -2.0, 4.0);
        let q = |v: &[f64]| Tensor::from_slice(v).to_kind(kind);
        let z = q(&[0.5, -1.25, 3.0, 0.125]);
        let v = q(&[1.0, 0.75, -0.5, 2.0]);
        let t = q(&[0.75, 0.5, 0.25, 1.0]);
        let r = q(&[0.25, 0.5, 0.125, 0.0]);
        let f = |p: &[Tensor]| -> meanflow::Result<Tensor> {
            let (z, r, t) = (&p[0], &p[1], &p[2]);
            Ok(z * a + t * b + r * c + t * r * d)
        };
        let ones = t.ones_like();
        let zeros = t.zeros_like();
        let out = jvp(f, &[&z, &r, &t], &[&v, &zeros, &ones]).unwrap();
        let expected = &v * a + b + &r * d;
        assert!(out.tangent.equal(&expected), "{kind:?}: {:?} != {:?}", out.tangent, expected);
        // The tangents given in the wrong order (0 for t, 1 for r) compute a v + c + d t,
        // which this check tells apart.
        let wrong = jvp(f, &[&z, &r, &t], &[&v, &ones, &zeros]).unwrap();
        assert!(!wrong.tangent.equal(&expected), "{kind:?}: a swapped tangent went unnoticed");
        assert!(wrong.tangent.equal(&(&v * a + c + &t * d)));
        // A tangent of the wrong shape is refused.
        let short = q(&[1.0]);
        assert!(jvp(f, &[&z, &r, &t], &[&v, &zeros, &short]).is_err());
        assert!(jvp(f, &[&z, &r, &t], &[&v, &zeros]).is_err());
    }
}

#[test]
fn tangent_is_never_silently_zero_and_inputs_are_untouched() {
    for kind in KINDS {
        tch::manual_seed(5);
        let mut vs = store(kind);
        let spec = common::unet_spec(&[8], 1, 4, 0);
        let net = Unet::new(&vs.root(), &spec).unwrap();
        vs.set_kind(kind);
        randomize(&vs, 0.3);
        let z = randn(&[3, 1, 4, 4], kind);
        let t = Tensor::from_slice(&[0.9, 0.5, 0.3]).to_kind(kind);
        let r = Tensor::from_slice(&[0.1, 0.5, 0.0]).to_kind(kind);
        let (dz, dt, dr) = (z.zeros_like(), t.ones_like(), r.zeros_like());
        let before: Vec<Tensor> = [&dz, &dt, &dr].iter().map(|x| x.copy()).collect();
        let out = jvp(|p| Ok(net.forward(&p[0], &p[1], &p[2], None, true)), &[&z, &t, &r], &[&dz, &dt, &dr]).unwrap();
        // du/dt of a net whose output depends on t is non-zero on every sample.
        let per_sample = out.tangent.abs().sum_dim_intlist([1i64, 2, 3].as_slice(), false, kind);
        assert!(per_sample.min().double_value(&[]) > 0.0, "{kind:?}: du/dt is zero on some sample");
        for (b, a) in before.iter().zip([&dz, &dt, &dr]) {
            assert!(b.equal(a), "an input tangent was modified");
        }
        assert!(out.output.requires_grad(), "u lost its reverse-mode graph");
        assert!(!out.tangent.requires_grad(), "du/dt must be detached");
    }
}

#[test]
fn output_independent_of_inputs_is_an_error_not_a_zero() {
    let z = randn(&[2, 3], Kind::Float);
    let res = jvp(|p| Ok(p[0].detach() * 2.0), &[&z], &[&z.ones_like()]);
    assert!(res.is_err(), "a detached output must not give a silent zero tangent");
}

#[test]
fn backward_through_the_output_gives_the_plain_gradient() {
    tch::manual_seed(6);
    let vs = VarStore::new(Device::Cpu);
    let lin = nn::linear(vs.root() / "l", 4, 3, Default::default());
    let x = randn(&[5, 4], Kind::Float);
    let out = jvp(|p| Ok(lin.forward(&p[0]).tanh()), &[&x], &[&x.randn_like()]).unwrap();
    out.output.square().sum(Kind::Float).backward();
    let g_dual = lin.ws.grad().copy();
    let _ = lin.ws.grad().zero_();
    lin.forward(&x).tanh().square().sum(Kind::Float).backward();
    assert!(rel_err(&g_dual, &lin.ws.grad()) < 1e-6);
}

#[test]
fn ten_thousand_calls_leak_neither_levels_nor_memory() {
    let x = randn(&[64, 64], Kind::Float);
    let w = randn(&[64, 64], Kind::Float).set_requires_grad(true);
    let v = x.randn_like();
    let call = || {
        let out = jvp(|p| Ok(p[0].matmul(&w).tanh()), &[&x], &[&v]).unwrap();
        out.output.sum(Kind::Float).backward();
    };
    for _ in 0..500 {
        call();
    }
    let rss0 = rss_bytes();
    for _ in 0..10_000 {
        call();
    }
    let grown = rss_bytes().saturating_sub(rss0) as f64 / 1e6;
    assert!(grown < 32.0, "resident memory grew by {grown:.1} MB over 10000 JVPs");
    // Every level was released: the next one gets index 0 again.
    assert_eq!(DualLevel::enter().unwrap().level(), 0);
}

#[test]
fn level_is_released_on_error_and_on_panic() {
    let x = randn(&[3], Kind::Float);
    let res = jvp(|_| Err(meanflow::Error::Jvp("deliberate".into())), &[&x], &[&x]);
    assert!(res.is_err());
    let caught = std::panic::catch_unwind(|| {
        let _ = jvp(|_| -> meanflow::Result<Tensor> { panic!("deliberate panic inside a JVP") }, &[&x], &[&x]);
    });
    assert!(caught.is_err());
    let again = jvp(|p| Ok(&p[0] * 3.0), &[&x], &[&x.ones_like()]).unwrap();
    assert!(again.tangent.equal(&x.ones_like().multiply_scalar(3.0)));
}

#[test]
fn concurrent_threads_take_turns() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let x = Tensor::full([8], i as f64, (Kind::Double, Device::Cpu));
                for _ in 0..200 {
                    let out = jvp(|p| Ok(p[0].square()), &[&x], &[&x.ones_like()]).unwrap();
                    assert!(out.tangent.equal(&(&x * 2.0)));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
