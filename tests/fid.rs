//! FID plumbing against numpy and PyTorch run from the project venv: `.npz`/`.npy` files both
//! ways in the formats pytorch-fid, EDM and ADM use; the TorchScript feature path (uint8
//! conversion, channel repeat, batching, float64 statistics) against the same module run in
//! Python; and `fid-stats` / `eval --fid` / `plot` from the command line.
use std::path::{Path, PathBuf};
use std::process::Command;

use meanflow::eval::frechet::{frechet_distance, Stats};
use meanflow::eval::inception::{to_uint8, Inception};
use meanflow::eval::npz::{npy_bytes, npz_names, parse_npy, read_npy, read_npz, write_npy, write_npz, NpyArray, NpyData};
use meanflow::eval::stats::StatsAccumulator;
use meanflow::models::MeanFlowNet;
use tch::{Device, Kind, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_meanflow");

/// Runs `script` with the venv's python (`sys.argv[1:]` = `args`); panics with its stderr.
fn python(script: &str, args: &[&Path]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python")).arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

// The values both sides compute: exact in IEEE arithmetic (one division, one subtraction),
// plus pi, a subnormal and -0.0.
const D: usize = 16;
fn mu_values() -> Vec<f64> {
    let mut v: Vec<f64> = (0..D).map(|i| i as f64 / 7.0 - 1.3).collect();
    v[0] = std::f64::consts::PI;
    v[1] = 1e-310;
    v[2] = -0.0;
    v
}
fn sigma_values() -> Vec<f64> {
    (0..D * D).map(|k| ((k % 13) as f64 - 6.0) / 3.0).collect()
}
const PY_VALUES: &str = "
import numpy as np
D = 16
mu = np.arange(D) / 7.0 - 1.3
mu[0] = np.pi; mu[1] = 1e-310; mu[2] = -0.0
sigma = ((np.arange(D * D) % 13) - 6.0).reshape(D, D) / 3.0
";

fn f64s(a: &NpyArray) -> Vec<f64> {
    match &a.data {
        NpyData::F64(v) => v.clone(),
        other => panic!("expected f64 data, got {other:?}"),
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn npz_written_by_numpy_reads_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    python(
        &format!(
            "{PY_VALUES}
import sys, zipfile, io
d = sys.argv[1]
np.savez(d + '/f64.npz', mu=mu, sigma=sigma)                      # pytorch-fid / EDM fid.py ref
np.savez_compressed(d + '/f32.npz', mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
imgs = (np.arange(4 * 8 * 8 * 3) % 256).astype(np.uint8).reshape(4, 8, 8, 3)
np.savez(d + '/adm.npz', imgs, mu=mu, sigma=sigma, mu_s=mu[:4], sigma_s=sigma[:4, :4])  # ADM reference batch
np.save(d + '/be.npy', sigma.astype('>f8'))
with zipfile.ZipFile(d + '/v2.npz', 'w', zipfile.ZIP_DEFLATED) as z:
    for name, a in (('mu', mu), ('sigma', sigma)):
        b = io.BytesIO(); np.lib.format.write_array(b, a, version=(2, 0)); z.writestr(name + '.npy', b.getvalue())
"
        ),
        &[tmp.path()],
    );
    let (mu, sigma) = (mu_values(), sigma_values());
    for f in ["f64.npz", "v2.npz", "adm.npz"] {
        let a = read_npz(&p(f), &["mu", "sigma"]).unwrap();
        assert_eq!(a["mu"].shape, vec![D], "{f}");
        assert_eq!(a["sigma"].shape, vec![D, D], "{f}");
        assert_eq!(bits(&f64s(&a["mu"])), bits(&mu), "{f}");
        assert_eq!(bits(&f64s(&a["sigma"])), bits(&sigma), "{f}");
        let s = Stats::read_npz(&p(f)).unwrap();
        assert_eq!(s.mu.kind(), Kind::Double);
        assert!(s.mu.equal(&Tensor::from_slice(&mu)) && s.sigma.equal(&Tensor::from_slice(&sigma).view([D as i64, D as i64])), "{f}");
    }
    // float32 (deflated): the same values rounded to f32, widened exactly to f64.
    let a = read_npz(&p("f32.npz"), &["mu", "sigma"]).unwrap();
    let NpyData::F32(m32) = &a["mu"].data else { panic!("{:?}", a["mu"].data) };
    assert_eq!(m32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), mu.iter().map(|x| (*x as f32).to_bits()).collect::<Vec<_>>());
    let s = Stats::read_npz(&p("f32.npz")).unwrap();
    let widened: Vec<f64> = sigma.iter().map(|x| *x as f32 as f64).collect();
    assert_eq!(bits(&Vec::<f64>::try_from(s.sigma.view([-1])).unwrap()), bits(&widened));
    // ADM: arr_0 is uint8 NHWC images; read only when asked.
    let mut names = npz_names(&p("adm.npz")).unwrap();
    names.sort();
    assert_eq!(names, vec!["arr_0", "mu", "mu_s", "sigma", "sigma_s"]);
    let imgs = read_npz(&p("adm.npz"), &["arr_0"]).unwrap().remove("arr_0").unwrap();
    assert_eq!(imgs.shape, vec![4, 8, 8, 3]);
    assert_eq!(imgs.data, NpyData::U8((0..4 * 8 * 8 * 3).map(|k| (k % 256) as u8).collect()));
    let nchw = meanflow::eval::images::load_uint8(&p("adm.npz")).unwrap();
    assert_eq!(nchw.size(), [4, 3, 8, 8]);
    assert!(nchw.equal(&imgs.to_tensor().permute([0, 3, 1, 2])));
    // Big-endian .npy.
    assert_eq!(bits(&f64s(&read_npy(&p("be.npy")).unwrap())), bits(&sigma));
}

#[test]
fn npz_written_here_reads_in_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let stats = Stats { mu: Tensor::from_slice(&mu_values()), sigma: Tensor::from_slice(&sigma_values()).view([D as i64, D as i64]) };
    stats.write_npz(&p("stats.npz")).unwrap();
    let mu32 = NpyArray { shape: vec![D], data: NpyData::F32(mu_values().iter().map(|x| *x as f32).collect()) };
    let u8s = NpyArray { shape: vec![2, 3, 4, 1], data: NpyData::U8((0..24).collect()) };
    let scalar = NpyArray { shape: vec![], data: NpyData::F64(vec![2.5]) };
    write_npz(&p("c.npz"), &[("mu32", &mu32), ("arr_0", &u8s), ("s", &scalar)], true).unwrap();
    write_npy(&p("sigma.npy"), &NpyArray::from_tensor(&stats.sigma).unwrap()).unwrap();
    std::fs::write(p("v2.npy"), npy_bytes(&NpyArray::from_tensor(&stats.sigma).unwrap(), true)).unwrap();
    let out = python(
        &format!(
            "{PY_VALUES}
import sys, zipfile
d = sys.argv[1]
s = np.load(d + '/stats.npz')
assert sorted(s.files) == ['mu', 'sigma'], s.files
assert s['mu'].dtype == np.float64 and s['sigma'].shape == (D, D)
assert (s['mu'].view(np.uint64) == mu.view(np.uint64)).all() and (s['sigma'] == sigma).all()
assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(d + '/stats.npz').infolist())
c = np.load(d + '/c.npz')
assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(d + '/c.npz').infolist())
assert c['mu32'].dtype == np.float32 and (c['mu32'] == mu.astype(np.float32)).all()
assert c['arr_0'].dtype == np.uint8 and (c['arr_0'] == np.arange(24).reshape(2, 3, 4, 1)).all()
assert c['s'].shape == () and c['s'] == 2.5
for f in ('sigma.npy', 'v2.npy'):
    a = np.load(d + '/' + f)
    assert a.flags.c_contiguous and (a == sigma).all(), f
with open(d + '/v2.npy', 'rb') as f:
    assert np.lib.format.read_magic(f) == (2, 0)
print('ok')
"
        ),
        &[tmp.path()],
    );
    assert_eq!(out.trim(), "ok");
    // And back here: the scalar, the header parse of our own v2 file.
    let c = read_npz(&p("c.npz"), &["s", "mu32"]).unwrap();
    assert_eq!(c["s"].to_tensor().size(), Vec::<i64>::new());
    assert_eq!(read_npy(&p("v2.npy")).unwrap(), NpyArray::from_tensor(&stats.sigma).unwrap());
}

#[test]
fn bad_npz_files_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let sigma = NpyArray { shape: vec![3, 4], data: NpyData::F64(vec![0.0; 12]) };
    let mu = NpyArray { shape: vec![3], data: NpyData::F64(vec![0.0; 3]) };
    write_npz(&p("nosigma.npz"), &[("mu", &mu)], false).unwrap();
    let e = Stats::read_npz(&p("nosigma.npz")).err().unwrap().to_string();
    assert!(e.contains("nosigma.npz") && e.contains("\"sigma\"") && e.contains("[\"mu\"]"), "{e}");
    write_npz(&p("shape.npz"), &[("mu", &mu), ("sigma", &sigma)], false).unwrap();
    let e = Stats::read_npz(&p("shape.npz")).err().unwrap().to_string();
    assert!(e.contains("shape.npz") && e.contains("[3, 4]"), "{e}");
    // Truncated archive: the zip directory at the end is gone.
    let good = NpyArray { shape: vec![4, 4], data: NpyData::F64(vec![1.0; 16]) };
    write_npz(&p("good.npz"), &[("mu", &mu), ("sigma", &good)], false).unwrap();
    let bytes = std::fs::read(p("good.npz")).unwrap();
    std::fs::write(p("cut.npz"), &bytes[..bytes.len() / 2]).unwrap();
    let e = Stats::read_npz(&p("cut.npz")).err().unwrap().to_string();
    assert!(e.contains("cut.npz"), "{e}");
    // Truncated .npy data, and a header that is not numpy's.
    let npy = npy_bytes(&good, false);
    let e = parse_npy(&npy[..npy.len() - 8]).err().unwrap();
    assert!(e.contains("truncated") && e.contains("128 bytes"), "{e}");
    std::fs::write(p("cut.npy"), &npy[..npy.len() - 8]).unwrap();
    assert!(read_npy(&p("cut.npy")).err().unwrap().to_string().contains("cut.npy"));
    assert!(parse_npy(b"not an array").err().unwrap().contains("magic"));
    let e = Stats::read_npz(&p("missing.npz")).err().unwrap().to_string();
    assert!(e.contains("missing.npz"), "{e}");
    let mut i8s = npy_bytes(&mu, false);
    let at = i8s.windows(3).position(|w| w == b"<f8").unwrap();
    i8s[at + 1] = b'i';
    let e = parse_npy(&i8s).err().unwrap();
    assert!(e.contains("<i8"), "{e}");
}

#[test]
fn accumulated_stats_match_one_pass() {
    tch::manual_seed(3);
    let f = Tensor::randn([210, 6], (Kind::Double, Device::Cpu)) * 3.0 + 100.0; // a large mean
    let one = Stats::from_features(&f).unwrap();
    let mut acc = StatsAccumulator::new();
    for (start, len) in [(0, 1), (1, 7), (8, 100), (108, 100), (208, 2)] {
        acc.add(&f.narrow(0, start, len)).unwrap();
    }
    assert_eq!(acc.count(), 210);
    let s = acc.finish().unwrap();
    let rel = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
    assert!(rel(&s.mu, &one.mu) < 1e-14 && rel(&s.sigma, &one.sigma) < 1e-12);
    assert!(StatsAccumulator::new().finish().is_err());
    assert!(acc.add(&Tensor::zeros([2, 5], (Kind::Double, Device::Cpu))).is_err());
}

/// tests/reference/tiny_inception.py: a TorchScript module with the extractor contract
/// (uint8 [B, 3, H, W] -> float [B, 8]): resize to 299 bilinear, normalise, a fixed strided
/// conv, ReLU, global average pool.
fn tiny_extractor(dir: &Path) -> PathBuf {
    let path = dir.join("tiny_inception.pt");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Run from a file, not -c: torch.jit.script reads the module's source.
    let out = Command::new(root.join(".venv/bin/python")).arg(root.join("tests/reference/tiny_inception.py")).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// Float images in and out of [-1, 1] through our uint8 conversion and the module, against
/// EDM's conversion and the same module in PyTorch, statistics against np.mean / np.cov.
#[test]
fn inception_path_matches_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tiny_extractor(tmp.path());
    tch::manual_seed(5);
    // 250 grey 28x28 images (three batches of the extractor), some values outside [-1, 1].
    let x = Tensor::rand([250, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.4 - 1.2;
    let xs = tmp.path().join("x.safetensors");
    Tensor::write_safetensors(&[("x", &x)], &xs).unwrap();
    let reference = tmp.path().join("ref.npz");
    python(
        "
import sys, torch, numpy as np
from safetensors.torch import load_file
x = load_file(sys.argv[1])['x']
u8 = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)      # EDM generate.py
m = torch.jit.load(sys.argv[2])
with torch.no_grad():
    f = torch.cat([m(u8[i:i + 100].repeat(1, 3, 1, 1)) for i in range(0, len(u8), 100)]).double().numpy()
np.savez(sys.argv[3], mu=f.mean(0), sigma=np.cov(f, rowvar=False), feats=f, u8=u8.numpy())
",
        &[&xs, &module, &reference],
    );
    let py = read_npz(&reference, &["feats", "u8"]).unwrap();
    // uint8 conversion: bit for bit.
    assert!(to_uint8(&x).equal(&py["u8"].to_tensor()));
    let inception = Inception::load(&module, Device::Cpu).unwrap();
    let feats = inception.features(&x).unwrap();
    assert_eq!(feats.size(), [250, 8]);
    let pyf = py["feats"].to_tensor();
    let err = (&feats - &pyf).abs().max().double_value(&[]) / pyf.abs().max().double_value(&[]);
    assert!(err < 1e-5, "features differ from PyTorch's by {err}");
    // Statistics accumulated batch by batch, against numpy on PyTorch's features.
    let set = meanflow::eval::images::ImageSet::from_tensor(to_uint8(&x));
    let ours = meanflow::eval::image_stats(&inception, &set, None, true).unwrap();
    let theirs = Stats::read_npz(&reference).unwrap();
    let rel = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
    assert!(rel(&ours.mu, &theirs.mu) < 1e-5 && rel(&ours.sigma, &theirs.sigma) < 1e-4);
    let fd_self = frechet_distance(&ours, &theirs).unwrap();
    assert!(fd_self.abs() < 1e-6 * theirs.sigma.trace().double_value(&[]), "FD to PyTorch's own statistics {fd_self}");
    // Contract errors name the module file or the shape.
    let e = inception.features_uint8(&Tensor::zeros([2, 2, 8, 8], (Kind::Uint8, Device::Cpu))).err().unwrap().to_string();
    assert!(e.contains("[2, 2, 8, 8]"), "{e}");
    let e = Inception::load(&reference, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("ref.npz") && e.contains("TorchScript"), "{e}");
}

/// `evaluate_fid` on a network whose one step lands on fixed images: its statistics are
/// those of the images repeated in label order, so the FID to those (computed in PyTorch)
/// is ~0 and to other images is not.
#[test]
fn evaluate_fid_on_known_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tiny_extractor(tmp.path());
    // Targets on uint8 centres (v / 127.5 - 1 maps to v + 0.5 before truncation).
    let v = Tensor::randint(256, [10, 1, 12, 12], (Kind::Int64, Device::Cpu));
    let targets = v.to_kind(Kind::Float) / 127.5 - 1.0;
    struct ToImages(Tensor);
    impl MeanFlowNet for ToImages {
        fn forward(&self, z: &Tensor, t: &Tensor, _r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
            (z - self.0.index_select(0, labels.unwrap())) / t.view([-1, 1, 1, 1])
        }
    }
    let vs = tmp.path().join("v.safetensors");
    Tensor::write_safetensors(&[("v", &v.to_kind(Kind::Uint8))], &vs).unwrap();
    let (same, other) = (tmp.path().join("same.npz"), tmp.path().join("other.npz"));
    python(
        "
import sys, torch, numpy as np
from safetensors.torch import load_file
v = load_file(sys.argv[1])['v']
m = torch.jit.load(sys.argv[2])
def stats(u8, path):
    with torch.no_grad():
        f = m(u8.repeat(1, 3, 1, 1)).double().numpy()
    np.savez(path, mu=f.mean(0), sigma=np.cov(f, rowvar=False))
stats(v[torch.arange(300) % 10], sys.argv[3])            # the samples: labels cycle 0..9
stats(255 - v[torch.arange(300) % 10], sys.argv[4])      # negatives
",
        &[&vs, &module, &same, &other],
    );
    let inception = Inception::load(&module, Device::Cpu).unwrap();
    let net = ToImages(targets);
    let run = |reference: &Path| {
        let r = Stats::read_npz(reference).unwrap();
        let rep = meanflow::eval::evaluate_fid(&net, 10, [1, 12, 12], meanflow::eval::Sampler::Meanflow, 1, 300, 0, &inception, &r, Device::Cpu, true).unwrap();
        (rep, r.sigma.trace().double_value(&[]))
    };
    let (rep, tr) = run(&same);
    assert_eq!((rep.feature_dim, rep.num_samples), (8, 300));
    assert!(rep.fid.abs() < 1e-5 * tr, "FID to the samples' own statistics: {} (trace {tr})", rep.fid);
    let (rep, tr) = run(&other);
    assert!(rep.fid > 1e-2 * tr, "FID to other images: {} (trace {tr})", rep.fid);
}

fn write_idx(dir: &Path) {
    tch::manual_seed(0);
    let n = 30usize;
    let imgs = Tensor::randint(256, [n as i64 * 64], (Kind::Uint8, Device::Cpu));
    let pixels: Vec<u8> = Vec::try_from(&imgs).unwrap();
    meanflow::data::idx::write_idx(&dir.join("train-images-idx3-ubyte"), &[n, 8, 8], &pixels).unwrap();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    meanflow::data::idx::write_idx(&dir.join("train-labels-idx1-ubyte"), &[n], &labels).unwrap();
}

/// train (3 steps) -> fid-stats (dataset, PNG folder) -> eval --fid -> plot, as a user runs them.
#[test]
fn fid_stats_eval_fid_and_plot_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tiny_extractor(tmp.path());
    let m = module.to_str().unwrap();
    write_idx(tmp.path());
    let run_dir = tmp.path().join("run");
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data: {{dataset: mnist, root: {}}}\n\
             model: {{name: unet, in_channels: 1, input_size: 8, num_classes: 10, channels: [8], groups: 4}}\n\
             train: {{steps: 3, batch_size: 5, lr: 0.001, threads: 1, log_every: 1, run_dir: {}}}\n\
             sample: {{nfe: [1], per_class: 1}}\n",
            tmp.path().display(),
            run_dir.display()
        ),
    )
    .unwrap();
    let (ok, out) = cli(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");

    // Reference statistics of the 30 training images, from the IDX files and from PNGs.
    let root = tmp.path().to_str().unwrap();
    let ref_npz = tmp.path().join("ref.npz");
    let (ok, out) = cli(&["fid-stats", "--inception", m, "--dataset", "mnist", "--root", root, "--out", ref_npz.to_str().unwrap()]);
    assert!(ok && out.contains("30 images") && out.contains("8 features"), "{out}");
    let data = meanflow::data::load_mnist_like(meanflow::data::DatasetKind::Mnist, tmp.path(), meanflow::data::Split::Train).unwrap();
    let pngs = tmp.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    let u8s = to_uint8(&data.images);
    for i in 0..30 {
        let px: Vec<u8> = Vec::try_from(u8s.get(i).view([-1])).unwrap();
        image::GrayImage::from_raw(8, 8, px).unwrap().save(pngs.join(format!("{i:03}.png"))).unwrap();
    }
    let loaded = meanflow::eval::images::load_uint8(&pngs).unwrap();
    assert!(loaded.equal(&u8s), "PNG folder round trip");
    let png_npz = tmp.path().join("png.npz");
    let (ok, out) = cli(&["fid-stats", "--inception", m, "--images", pngs.to_str().unwrap(), "--out", png_npz.to_str().unwrap()]);
    assert!(ok && out.contains("30 images"), "{out}");
    let (a, b) = (Stats::read_npz(&ref_npz).unwrap(), Stats::read_npz(&png_npz).unwrap());
    assert!(a.mu.equal(&b.mu) && a.sigma.equal(&b.sigma), "IDX and PNG routes give the same statistics");
    image::GrayImage::new(9, 8).save(pngs.join("999.png")).unwrap();
    let (ok, out) = cli(&["fid-stats", "--inception", m, "--images", pngs.to_str().unwrap(), "--out", png_npz.to_str().unwrap()]);
    assert!(!ok && out.contains("999.png") && out.contains("[1, 8, 9]"), "{out}");
    // PNGs are decoded batch by batch: with --limit the odd file (sorted last) is never read.
    let (ok, out) = cli(&["fid-stats", "--inception", m, "--images", pngs.to_str().unwrap(), "--limit", "29", "--out", png_npz.to_str().unwrap()]);
    assert!(ok && out.contains("29 images"), "{out}");

    // eval --fid: printed and in the JSON report.
    let report = tmp.path().join("fid.json");
    let (ok, out) = cli(&[
        "eval", "--checkpoint", run_dir.to_str().unwrap(), "--fid", "--inception", m, "--ref", ref_npz.to_str().unwrap(),
        "--num-samples", "40", "--nfe", "2", "--out", report.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("FID"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let fid = json["report"]["fid"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{json}");
    assert_eq!(json["report"]["feature_dim"], 8);
    assert_eq!(json["report"]["nfe"], 2);
    // Without --fid a classifier is required; --fid without --ref is refused.
    let (ok, out) = cli(&["eval", "--checkpoint", run_dir.to_str().unwrap()]);
    assert!(!ok && out.contains("--classifier"), "{out}");
    let (ok, out) = cli(&["eval", "--checkpoint", run_dir.to_str().unwrap(), "--fid", "--inception", m]);
    assert!(!ok && out.contains("--ref"), "{out}");

    // plot on the run's own metrics log.
    let (ok, out) = cli(&["plot", run_dir.to_str().unwrap()]);
    assert!(ok && out.contains("3 logged steps"), "{out}");
    let img = image::open(run_dir.join("metrics.png")).unwrap();
    assert_eq!((img.width(), img.height()), (900, 540));
}
