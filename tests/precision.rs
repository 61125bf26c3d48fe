//! bf16 autocast (on the CPU here; the same code path on CUDA): the network's plain
//! forwards run in bfloat16 while the JVP stays float32.
mod common;

use meanflow::loss::{Draws, JvpRows, MeanFlowLoss, Tangent};
use meanflow::models::{MeanFlowNet, Unet};
use meanflow::precision::{Autocast, Precision};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn setup() -> (VarStore, Unet, Draws) {
    tch::manual_seed(31);
    let vs = VarStore::new(Device::Cpu);
    let spec = common::unet_spec(&[8, 16], 1, 8, 0);
    let net = Unet::new(&vs.root(), &spec).unwrap();
    common::randomize(&vs, 0.2);
    let b = 6;
    let t = Tensor::from_slice(&[0.9f32, 0.8, 0.7, 0.6, 0.5, 0.4]);
    // Rows 0..3 have r = t (plain forward), rows 3..6 have r < t (dual pass).
    let r = Tensor::from_slice(&[0.9f32, 0.8, 0.7, 0.1, 0.2, 0.3]);
    let d = Draws {
        x: Tensor::randn([b, 1, 8, 8], (Kind::Float, Device::Cpu)),
        e: Tensor::randn([b, 1, 8, 8], (Kind::Float, Device::Cpu)),
        t,
        r,
        labels: None,
        dropped: None,
        aug: None,
    };
    (vs, net, d)
}

#[test]
fn bf16_autocast_keeps_the_jvp_in_float32() {
    let (_vs, net, d) = setup();
    let obj = MeanFlowLoss { tangent: Tangent::V01, jvp_rows: JvpRows::MeanFlowOnly, norm_p: 1.0, norm_eps: 1e-3, guidance: None };
    let fp32 = obj.compute(&net, &d, true).unwrap();
    let bf16 = {
        let _a = Autocast::for_precision(Device::Cpu, Precision::Bf16).unwrap();
        obj.compute(&net, &d, true).unwrap()
    };
    assert_eq!(bf16.dudt.kind(), Kind::Float);
    assert_eq!(bf16.u.kind(), Kind::Float);
    let mf = Tensor::from_slice(&[3i64, 4, 5]);
    let fm = Tensor::from_slice(&[0i64, 1, 2]);
    // The dual pass ran in float32: identical to the float32 run, bit for bit.
    assert!(bf16.dudt.index_select(0, &mf).equal(&fp32.dudt.index_select(0, &mf)));
    assert!(bf16.u.detach().index_select(0, &mf).equal(&fp32.u.detach().index_select(0, &mf)));
    // The plain forward ran in bfloat16: close to float32, but not equal.
    let (a, b) = (bf16.u.detach().index_select(0, &fm), fp32.u.detach().index_select(0, &fm));
    let rel = common::rel_err(&a, &b);
    assert!(rel > 0.0 && rel < 5e-2, "bf16 forward vs fp32: relative error {rel}");
    // Autocast is off again after the guard.
    let z = meanflow::path::interpolate(&d.x, &d.e, &d.t);
    let plain = net.forward(&z, &d.t, &d.t, None, true);
    assert_eq!(plain.kind(), Kind::Float);
    assert!(common::rel_err(&plain.index_select(0, &fm), &b) < 1e-5);
}

#[test]
fn guards_nest_and_restore() {
    let (_vs, net, d) = setup();
    let f = || net.forward(&d.x, &d.t, &d.r, None, true);
    let outer = Autocast::set(Device::Cpu, true).unwrap();
    assert_eq!(f().kind(), Kind::BFloat16);
    {
        let _inner = Autocast::set(Device::Cpu, false).unwrap();
        assert_eq!(f().kind(), Kind::Float);
    }
    assert_eq!(f().kind(), Kind::BFloat16);
    drop(outer);
    assert_eq!(f().kind(), Kind::Float);
}
