//! Evaluation: the Frechet distance against closed forms and scipy, and the Fashion-MNIST
//! classifier behind FD-FMNIST on the real data.
mod common;

use std::path::Path;

use meanflow::data::{load_mnist_like, Dataset, DatasetKind, Split};
use meanflow::eval::classifier::Classifier;
use meanflow::eval::frechet::{frechet_distance, Stats};
use meanflow::models::MeanFlowNet;
use tch::{Device, Kind, Tensor};

fn stats(mu: &[f64], sigma: Tensor) -> Stats {
    Stats { mu: Tensor::from_slice(mu), sigma }
}

/// A random orthogonal matrix (QR of a Gaussian one).
fn orthogonal(d: i64) -> Tensor {
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], (Kind::Double, Device::Cpu)), "reduced");
    q
}

#[test]
fn frechet_matches_closed_forms() {
    tch::manual_seed(0);
    let (a, b) = ([0.5, 2.0, 1.0, 3.0], [1.5, 0.25, 1.0, 4.0]);
    let (m1, m2) = ([0.1, -0.2, 0.3, 0.0], [0.0, 0.5, 0.3, -1.0]);
    let mean_term: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum();
    let cov_term: f64 = a.iter().zip(&b).map(|(x, y)| (f64::sqrt(*x) - f64::sqrt(*y)).powi(2)).sum();
    let expected = mean_term + cov_term;
    // Diagonal covariances.
    let diag = |v: &[f64]| Tensor::from_slice(v).diag(0);
    let fd = frechet_distance(&stats(&m1, diag(&a)), &stats(&m2, diag(&b))).unwrap();
    assert!((fd - expected).abs() < 1e-10, "{fd} vs {expected}");
    // Commuting covariances: the same eigenvectors, rotated.
    let q = orthogonal(4);
    let rot = |v: &[f64]| q.matmul(&diag(v)).matmul(&q.transpose(0, 1));
    let fd = frechet_distance(&stats(&m1, rot(&a)), &stats(&m2, rot(&b))).unwrap();
    assert!((fd - expected).abs() < 1e-9, "{fd} vs {expected}");
    // A distribution against itself, even a singular one.
    let s = rot(&[1.0, 0.0, 2.0, 0.0]);
    let fd = frechet_distance(&stats(&m1, s.copy()), &stats(&m1, s)).unwrap();
    // sqrt of round-off-sized eigenvalues (~1e-16) contributes ~1e-8.
    assert!(fd.abs() < 1e-6, "{fd}");
    // Mismatched sizes are an error.
    assert!(frechet_distance(&stats(&m1, diag(&a)), &stats(&[0.0; 3], diag(&[1.0; 3]))).is_err());
}

/// Against scipy.linalg.sqrtm (the pytorch-fid formula) on non-commuting covariances.
#[test]
fn frechet_matches_scipy() {
    let tmp = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let d = 16;
    let mk = || {
        let f = Tensor::randn([200, d], (Kind::Double, Device::Cpu)).matmul(&Tensor::randn([d, d], (Kind::Double, Device::Cpu)));
        Stats::from_features(&(f + Tensor::randn([d], (Kind::Double, Device::Cpu)))).unwrap()
    };
    let (a, b) = (mk(), mk());
    let path = tmp.path().join("stats.safetensors");
    Tensor::write_safetensors(&[("mu1", &a.mu), ("sigma1", &a.sigma), ("mu2", &b.mu), ("sigma2", &b.sigma)], &path).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/reference/frechet_ref.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scipy: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let ours = frechet_distance(&a, &b).unwrap();
    assert!(((ours - scipy) / scipy).abs() < 1e-8, "ours {ours} vs scipy {scipy}");
}

struct Trained {
    clf: Classifier,
    reference: Stats,
    test: Dataset,
    accuracy: f64,
}

/// 3 epochs on the real training set (as `meanflow train-classifier` by default).
fn train_classifier() -> Trained {
    let root = Path::new("/usr/share/datasets/fashion-mnist");
    let train = load_mnist_like(DatasetKind::FashionMnist, root, Split::Train).expect("Fashion-MNIST (make test installs it)");
    let test = load_mnist_like(DatasetKind::FashionMnist, root, Split::Test).unwrap();
    let mut clf = Classifier::new(Device::Cpu, 10, 0);
    clf.fit(&train, 3, 0, |_, _| {}).unwrap();
    let accuracy = clf.accuracy(&test.images, &test.labels);
    let (f, _) = clf.features_and_predictions(&train.images);
    Trained { reference: Stats::from_features(&f).unwrap(), clf, test, accuracy }
}

/// One classifier training (about a minute) serves three checks: accuracy, the ordering
/// of FD-FMNIST on real, flipped and noise images, and `evaluate` on a sampler with a
/// known output.
#[test]
fn classifier_fd_fmnist_and_evaluate() {
    let t = train_classifier();
    println!("classifier test accuracy {:.4}", t.accuracy);
    assert!(t.accuracy >= 0.90, "test accuracy {}", t.accuracy);
    let fd_of = |images: &Tensor| {
        let (f, _) = t.clf.features_and_predictions(images);
        frechet_distance(&Stats::from_features(&f).unwrap(), &t.reference).unwrap()
    };
    let real = fd_of(&t.test.images);
    let flipped = fd_of(&t.test.images.flip([2i64])); // upside down
    let noise = fd_of(&(Tensor::rand_like(&t.test.images) * 2.0 - 1.0));
    println!("FD-FMNIST vs train: test {real:.3}, flipped test {flipped:.3}, noise {noise:.3}");
    assert!(real * 10.0 < flipped, "real {real} vs flipped {flipped}");
    assert!(flipped < noise, "flipped {flipped} vs noise {noise}");

    // Save and load round trip.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("clf.safetensors");
    t.clf.save(&p, &t.reference).unwrap();
    let (back, stats) = Classifier::load(&p, Device::Cpu, 10).unwrap();
    assert!(stats.sigma.equal(&t.reference.sigma));
    let (x, y) = (t.test.images.narrow(0, 0, 500), t.test.labels.narrow(0, 0, 500));
    assert_eq!(back.accuracy(&x, &y), t.clf.accuracy(&x, &y));

    // `evaluate` with a network whose one step lands exactly on the first test image of
    // each class: its class accuracy must equal the classifier's on those 10 images.
    struct ToImages {
        targets: Tensor, // [10, 1, 28, 28]
    }
    impl MeanFlowNet for ToImages {
        fn forward(&self, z: &Tensor, t: &Tensor, _r: &Tensor, labels: Option<&Tensor>, _train: bool) -> Tensor {
            (z - self.targets.index_select(0, labels.unwrap())) / t.view([-1, 1, 1, 1])
        }
    }
    let idx: Vec<i64> = (0..10).map(|c| i64::try_from(t.test.labels.eq(c).nonzero().get(0).get(0)).unwrap()).collect();
    let targets = t.test.images.index_select(0, &Tensor::from_slice(&idx));
    let net = ToImages { targets: targets.shallow_clone() };
    let report = meanflow::eval::evaluate(&net, 10, [1, 28, 28], meanflow::eval::Sampler::Meanflow, 1, 1000, 0, &t.clf, &t.reference, Device::Cpu, true).unwrap();
    let expected = t.clf.accuracy(&targets, &Tensor::arange(10, (Kind::Int64, Device::Cpu)));
    assert!((report.class_accuracy.unwrap() - expected).abs() < 1e-12, "{:?} vs {expected}", report.class_accuracy);
    assert!(report.fd.is_finite() && report.fd > real, "10 distinct images are far from the data: {}", report.fd);
}
