//! IDX loading on files written in the real format, and on the real Fashion-MNIST.
use std::io::Write;
use std::path::Path;

use meanflow::data::{idx, load_mnist_like, DatasetKind, Split};

fn gzip(path: &Path, bytes: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap();
}

fn idx_bytes(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = (0x0800u32 | dims.len() as u32).to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// 3 images of 4x5 with known pixels and labels [2, 0, 9].
fn write_set(dir: &Path, gz: bool) {
    let pixels: Vec<u8> = (0..60).map(|i| (i * 4 + 3) as u8).collect();
    let imgs = idx_bytes(&[3, 4, 5], &pixels);
    let lbls = idx_bytes(&[3], &[2, 0, 9]);
    if gz {
        gzip(&dir.join("train-images-idx3-ubyte.gz"), &imgs);
        gzip(&dir.join("train-labels-idx1-ubyte.gz"), &lbls);
    } else {
        std::fs::write(dir.join("train-images-idx3-ubyte"), &imgs).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), &lbls).unwrap();
    }
}

#[test]
fn reads_plain_and_gzipped_idx_scaled_to_unit_range() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), gz);
        let d = load_mnist_like(DatasetKind::Mnist, dir.path(), Split::Train).unwrap();
        assert_eq!(d.images.size(), vec![3, 1, 4, 5]);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), vec![2, 0, 9]);
        // pixel p maps to p / 127.5 - 1
        for (n, y, x) in [(0i64, 0i64, 0i64), (1, 2, 3), (2, 3, 4)] {
            let i = n * 20 + y * 5 + x;
            let p = (i * 4 + 3) as u8 as f64;
            let got = d.images.double_value(&[n, 0, y, x]);
            assert!((got - (p / 127.5 - 1.0)).abs() < 1e-6, "{got} vs {p}");
        }
    }
}

#[test]
fn bad_files_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), false);
    let imgs = dir.path().join("train-images-idx3-ubyte");
    let lbls = dir.path().join("train-labels-idx1-ubyte");
    let good = std::fs::read(&imgs).unwrap();
    let err = |want: &[&str]| {
        let e = load_mnist_like(DatasetKind::Mnist, dir.path(), Split::Train).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{e} lacks {w}");
        }
    };
    std::fs::write(&imgs, &good[..good.len() - 7]).unwrap();
    err(&["train-images-idx3-ubyte", "truncated"]);
    std::fs::write(&imgs, &good[..10]).unwrap();
    err(&["train-images-idx3-ubyte", "header"]);
    let mut bad = good.clone();
    bad[3] = 0x01;
    std::fs::write(&imgs, &bad).unwrap();
    err(&["train-images-idx3-ubyte", "magic"]);
    std::fs::write(&imgs, &good).unwrap();
    std::fs::write(&lbls, idx_bytes(&[3], &[2, 10, 1])).unwrap();
    err(&["train-labels-idx1-ubyte", "label 10"]);
    std::fs::write(&lbls, idx_bytes(&[2], &[2, 1])).unwrap();
    err(&["train-labels-idx1-ubyte", "2 labels", "3 images"]);
    std::fs::remove_file(&lbls).unwrap();
    err(&["train-labels-idx1-ubyte", "not found"]);
    // A truncated gzip stream.
    let gz = dir.path().join("t.gz");
    gzip(&gz, &good);
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let e = idx::read_idx(&gz, 3).err().unwrap().to_string();
    assert!(e.contains("t.gz") && e.contains("gzip"), "{e}");
}

/// The real data set that the main job trains on (installed by `make test`).
#[test]
fn real_fashion_mnist_has_the_published_shape() {
    let root = Path::new("/usr/share/datasets/fashion-mnist");
    let train = load_mnist_like(DatasetKind::FashionMnist, root, Split::Train)
        .expect("Fashion-MNIST is installed by `make test` (Debian package dataset-fashion-mnist)");
    let test = load_mnist_like(DatasetKind::FashionMnist, root, Split::Test).unwrap();
    assert_eq!(train.images.size(), vec![60000, 1, 28, 28]);
    assert_eq!(test.images.size(), vec![10000, 1, 28, 28]);
    // Balanced: 6000 / 1000 of each class.
    let counts = train.labels.bincount(None::<tch::Tensor>, 10);
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![6000; 10]);
    let counts = test.labels.bincount(None::<tch::Tensor>, 10);
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![1000; 10]);
    assert_eq!(train.images.min().double_value(&[]), -1.0);
    assert_eq!(train.images.max().double_value(&[]), 1.0);
}
