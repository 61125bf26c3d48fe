//! Times the parts of one training step of a config's model on random data:
//! plain forward, the guidance forward, the dual (JVP) forward, backward.
use std::time::Instant;
use meanflow::{config, models, jvp::jvp};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t0 = Instant::now();
    for _ in 0..n { f(); }
    println!("{name:>28}: {:8.1} ms", t0.elapsed().as_secs_f64() * 1e3 / n as f64);
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = config::load(std::path::Path::new(&args[1]), &args[2..])?;
    tch::set_num_threads(cfg.train.threads.unwrap_or(2));
    let spec = cfg.model.spec("cfg")?;
    let vs = VarStore::new(Device::Cpu);
    let net = models::build(&vs.root(), &spec)?;
    println!("params {}", models::num_params(&vs));
    let b = cfg.train.batch_size;
    let s = cfg.model.input_size;
    let z = Tensor::randn([b, cfg.model.in_channels, s, s], (Kind::Float, Device::Cpu));
    let t = Tensor::rand([b], (Kind::Float, Device::Cpu));
    let r = &t * 0.5;
    let y = Tensor::randint(10, [b], (Kind::Int64, Device::Cpu));
    let v = z.randn_like();
    time("forward no_grad", 5, || { tch::no_grad(|| net.forward(&z, &t, &r, Some(&y), true)); });
    time("forward with grad", 5, || { net.forward(&z, &t, &r, Some(&y), true); });
    time("forward+backward", 5, || { net.forward(&z, &t, &r, Some(&y), true).square().sum(Kind::Float).backward(); });
    let ones = t.ones_like(); let zeros = t.zeros_like();
    time("dual forward", 5, || { jvp(|p| Ok(net.forward(&p[0], &p[1], &p[2], Some(&y), true)), &[&z, &t, &r], &[&v, &ones, &zeros]).unwrap(); });
    time("dual forward+backward", 5, || { let o = jvp(|p| Ok(net.forward(&p[0], &p[1], &p[2], Some(&y), true)), &[&z, &t, &r], &[&v, &ones, &zeros]).unwrap(); o.output.square().sum(Kind::Float).backward(); });
    Ok(())
}
