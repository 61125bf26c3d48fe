//! CIFAR-10, latent sets and image folders on files written here in their real formats,
//! the background loader's determinism, and horizontal flips.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meanflow::config::{self, Config};
use meanflow::data::image_folder::{center_crop, ImageFolder};
use meanflow::data::latents::Manifest;
use meanflow::data::prefetch::{flip_mask, hflip_rows, Order, Prefetcher, Source};
use meanflow::data::{cifar10, npy, Split};
use meanflow::train::{self, TrainData, TrainOptions};
use tch::{Device, Kind, Tensor};

fn contains_all(e: &str, want: &[&str]) {
    for w in want {
        assert!(e.contains(w), "error lacks {w:?}: {e}");
    }
}

fn python() -> PathBuf {
    std::env::var_os("MEANFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn config_text(dir: &Path, data: &str, model: &str) -> PathBuf {
    let text = format!(
        "seed: 5\ndata: {data}\nmodel: {model}\nmeanflow: {{ratio: 0.5}}\n\
         train: {{steps: 3, batch_size: 4, lr: 0.001, ema_decays: [0.9], log_every: 1, checkpoint_every: 3, \
         run_dir: {}}}\nsample: {{nfe: []}}\n",
        dir.join("run").display()
    );
    let p = dir.join("c.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------- CIFAR-10

/// Pixel byte of record r, channel c, row y, column x in the test files.
fn cifar_px(file: usize, r: usize, c: usize, y: usize, x: usize) -> u8 {
    ((file * 31 + r * 7 + c * 50 + y * 3 + x * 5) % 256) as u8
}

fn write_cifar(dir: &Path, per_file: usize) {
    for (f, name) in cifar10::file_names(Split::Train).into_iter().chain(cifar10::file_names(Split::Test)).enumerate() {
        let mut pixels = Vec::new();
        for r in 0..per_file {
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        pixels.push(cifar_px(f, r, c, y, x));
                    }
                }
            }
        }
        let labels: Vec<u8> = (0..per_file).map(|r| ((f + r) % 10) as u8).collect();
        cifar10::write(&dir.join(name), &pixels, &labels).unwrap();
    }
}

#[test]
fn cifar10_binary_batches_decode_channel_planes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path(), 3);
    let train = cifar10::load(dir.path(), Split::Train).unwrap();
    assert_eq!(train.images.size(), vec![15, 3, 32, 32]);
    assert_eq!(train.num_classes, 10);
    let labels = Vec::<i64>::try_from(&train.labels).unwrap();
    assert_eq!(labels, (0..5).flat_map(|f| (0..3).map(move |r| ((f + r) % 10) as i64)).collect::<Vec<_>>());
    // The first 1024 pixel bytes are red, then green, then blue; each plane row-major.
    for (n, c, y, x) in [(0usize, 0usize, 0usize, 0usize), (4, 1, 5, 31), (14, 2, 31, 7), (7, 0, 16, 16)] {
        let (f, r) = (n / 3, n % 3);
        let want = cifar_px(f, r, c, y, x) as f64 / 127.5 - 1.0;
        let got = train.images.double_value(&[n as i64, c as i64, y as i64, x as i64]);
        assert!((got - want).abs() < 1e-6, "image {n} c{c} ({y},{x}): {got} vs {want}");
    }
    let test = cifar10::load(dir.path(), Split::Test).unwrap();
    assert_eq!(test.images.size(), vec![3, 3, 32, 32]);
    assert!((test.images.double_value(&[2, 1, 3, 4]) - (cifar_px(5, 2, 1, 3, 4) as f64 / 127.5 - 1.0)).abs() < 1e-6);
}

#[test]
fn cifar10_missing_truncated_and_mislabelled_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(dir.path(), 2);
    let load = || cifar10::load(dir.path(), Split::Train).unwrap_err().to_string();
    let f3 = dir.path().join("data_batch_3.bin");
    let good = std::fs::read(&f3).unwrap();
    std::fs::write(&f3, &good[..good.len() - 100]).unwrap();
    contains_all(&load(), &["data_batch_3.bin", &format!("{}", good.len() - 100), "truncated", "3073"]);
    let mut bad = good.clone();
    bad[3073] = 10; // label of record 1
    std::fs::write(&f3, &bad).unwrap();
    contains_all(&load(), &["data_batch_3.bin", "record 1", "label 10"]);
    std::fs::remove_file(&f3).unwrap();
    contains_all(&load(), &["data_batch_3.bin", "not found", "cifar-10-batches-bin"]);
    std::fs::write(&f3, b"").unwrap();
    contains_all(&load(), &["data_batch_3.bin", "0 bytes"]);
}

// ---------------------------------------------------------------- .npy and latent sets

#[test]
fn npy_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    for kind in [Kind::Float, Kind::Half, Kind::Int64, Kind::Int] {
        let t = (Tensor::arange(24, (Kind::Float, Device::Cpu)) - 7.0).view([2, 3, 4]).to_kind(kind);
        npy::write(&p, &t).unwrap();
        let back = npy::read(&p).unwrap();
        assert_eq!(back.kind(), kind);
        assert_eq!(back.size(), vec![2, 3, 4]);
        assert!(back.equal(&t), "{kind:?}");
    }
    // numpy's own writer: a 1-D int64 array and a float32 array.
    let script = format!(
        "import numpy as np; np.save(r'{0}/b.npy', np.arange(5, dtype=np.int64)); \
         np.save(r'{0}/c.npy', np.full((2, 3), 0.5, dtype=np.float32)); np.save(r'{0}/d.npy', np.zeros(3))",
        dir.path().display()
    );
    let out = std::process::Command::new(python()).args(["-c", &script]).output().expect("run the venv python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Vec::<i64>::try_from(&npy::read(&dir.path().join("b.npy")).unwrap()).unwrap(), vec![0, 1, 2, 3, 4]);
    let c = npy::read(&dir.path().join("c.npy")).unwrap();
    assert_eq!((c.size(), c.double_value(&[1, 2])), (vec![2, 3], 0.5));
    let e = npy::read(&dir.path().join("d.npy")).unwrap_err().to_string();
    contains_all(&e, &["d.npy", "<f8", "not supported"]);

    let good = std::fs::read(&p).unwrap();
    std::fs::write(&p, &good[..good.len() - 5]).unwrap();
    contains_all(&npy::read(&p).unwrap_err().to_string(), &["a.npy", "truncated", "[2, 3, 4]"]);
    std::fs::write(&p, b"PK\x03\x04 not npy").unwrap();
    contains_all(&npy::read(&p).unwrap_err().to_string(), &["a.npy", "not a .npy"]);
    std::fs::write(&p, &good[..20]).unwrap();
    contains_all(&npy::read(&p).unwrap_err().to_string(), &["a.npy", "header"]);
}

/// Writes 10 latents [4, 8, 8] with value (i + 1) * 0.01 * (1 + c) and labels i % 3 as
/// .npy, and converts them with the Python tool into `out` (format `fmt`, 4 per shard).
fn write_latent_set(dir: &Path, out: &Path, fmt: &str, scale: f64) -> Tensor {
    let base = (Tensor::arange(10, (Kind::Float, Device::Cpu)) + 1.0).view([10, 1, 1, 1]) * 0.01;
    let lat = (base * (Tensor::arange(4, (Kind::Float, Device::Cpu)) + 1.0).view([1, 4, 1, 1])).expand([10, 4, 8, 8], false)
        + Tensor::arange(64, (Kind::Float, Device::Cpu)).view([1, 1, 8, 8]) * 1e-3;
    let lat = lat.contiguous();
    npy::write(&dir.join("lat.npy"), &lat).unwrap();
    npy::write(&dir.join("lab.npy"), &(Tensor::arange(10, (Kind::Int64, Device::Cpu)).remainder(3))).unwrap();
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/encode_imagenet_latents.py");
    let out_s = out.display().to_string();
    let args = [
        tool.display().to_string(),
        "--latents".into(),
        dir.join("lat.npy").display().to_string(),
        "--labels".into(),
        dir.join("lab.npy").display().to_string(),
        "--out".into(),
        out_s,
        "--format".into(),
        fmt.into(),
        "--shard-size".into(),
        "4".into(),
        "--latent-shape".into(),
        "4".into(),
        "8".into(),
        "8".into(),
        "--image-size".into(),
        "64".into(),
        "--num-classes".into(),
        "3".into(),
        "--scale-factor".into(),
        scale.to_string(),
        "--shift".into(),
        "0.01".into(),
        "--dtype".into(),
        "float32".into(),
    ];
    let o = std::process::Command::new(python()).args(&args).output().expect("run the venv python");
    assert!(o.status.success(), "tool failed: {}", String::from_utf8_lossy(&o.stderr));
    lat
}

#[test]
fn latent_sets_written_by_the_tool_load_scaled() {
    for fmt in ["safetensors", "npy"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("set");
        let lat = write_latent_set(dir.path(), &out, fmt, 0.5);
        let m = Manifest::read(&out).unwrap();
        assert_eq!((m.count, m.shards.len(), m.latent_shape, m.num_classes), (10, 3, [4, 8, 8], 3));
        assert_eq!(m.vae, "stabilityai/sd-vae-ft-mse");
        let d = meanflow::data::latents::load(&out, &m).unwrap();
        assert_eq!(d.images.size(), vec![10, 4, 8, 8]);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), (0..10).map(|i| i % 3).collect::<Vec<i64>>());
        // (latent - shift) * scale_factor
        let want = (lat - 0.01) * 0.5;
        assert!(d.images.allclose(&want, 1e-6, 1e-7, false), "{fmt}");
    }
}

#[test]
fn latent_set_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let _ = write_latent_set(dir.path(), &out, "safetensors", 0.18215);
    let load = || -> String {
        match Manifest::read(&out) {
            Ok(m) => meanflow::data::latents::load(&out, &m).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let edit = |key: &str, v: serde_json::Value| {
        let mut m = manifest.clone();
        m[key] = v;
        std::fs::write(out.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    };
    let shard = out.join("train_00001.safetensors");
    let good = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &good[..good.len() - 9]).unwrap();
    contains_all(&load(), &["train_00001.safetensors", "safetensors"]);
    std::fs::write(&shard, &good).unwrap();
    edit("count", 11.into());
    contains_all(&load(), &["manifest.json", "count is 11", "10"]);
    edit("num_classes", 2.into());
    contains_all(&load(), &["labels", "outside 0..2"]);
    edit("latent_shape", serde_json::json!([4, 8, 16]));
    contains_all(&load(), &["train_00000.safetensors", "[4, 4, 8, 8]", "[4, 4, 8, 16]"]);
    edit("format", "meanflow-latents/9".into());
    contains_all(&load(), &["manifest.json", "meanflow-latents/9"]);
    let mut m = manifest.clone();
    m["vea"] = m["vae"].clone();
    m.as_object_mut().unwrap().remove("vae");
    std::fs::write(out.join("manifest.json"), serde_json::to_string(&m).unwrap()).unwrap();
    contains_all(&load(), &["manifest.json", "vea"]);
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    contains_all(&load(), &["manifest.json", "encode_imagenet_latents.py"]);
}

#[test]
fn training_refuses_a_manifest_that_disagrees_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let _ = write_latent_set(dir.path(), &out, "npy", 0.18215);
    let data = format!("{{dataset: imagenet_latents, root: {}, vae: stabilityai/sd-vae-ft-mse, scale_factor: 0.18215}}", out.display());
    let model = "{name: dit, in_channels: 4, input_size: 8, num_classes: 3, depth: 1, hidden: 32, heads: 2, patch: 4}";
    let p = config_text(dir.path(), &data, model);
    let refuse = |set: &[&str], want: &[&str]| {
        let o: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let cfg = config::load(&p, &o).unwrap();
        let e = match train::open_data(&cfg) {
            Ok(_) => panic!("{set:?} should be refused"),
            Err(e) => e.to_string(),
        };
        contains_all(&e, want);
        contains_all(&e, &["manifest.json"]);
    };
    refuse(&["model.in_channels=3"], &["model.in_channels", "is 3", "[4, 8, 8]"]);
    refuse(&["model.input_size=16"], &["model.input_size", "is 16", "[4, 8, 8]"]);
    refuse(&["model.num_classes=1000"], &["model.num_classes", "1000", "num_classes 3"]);
    refuse(&["data.scale_factor=0.13025"], &["data.scale_factor", "0.13025", "0.18215"]);
    refuse(&["data.vae=madebyollin/sdxl-vae-fp16-fix"], &["data.vae", "sdxl", "sd-vae-ft-mse"]);
    // The agreeing config trains, with flips on the latents.
    let cfg = config::load(&p, &["data.hflip=true".into()]).unwrap();
    let s = train::train(&cfg, &TrainOptions { resume: false, quiet: true }).unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.loss.is_finite());
}

// ---------------------------------------------------------------- image folders

fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

#[test]
fn center_crop_halves_resizes_and_crops_like_adm() {
    // Short side already the target: no resize, a centered crop (offset floor((12 - 8) / 2) = 2).
    let img = image::RgbImage::from_fn(12, 8, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 7]));
    let c = center_crop(img, 8);
    assert_eq!(c.dimensions(), (8, 8));
    assert_eq!(c.get_pixel(0, 0).0, [20, 0, 7]);
    assert_eq!(c.get_pixel(7, 5).0, [90, 50, 7]);
    // Short side >= 2 x target: a 2x2 box average, exactly.
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([(x * 16 + y) as u8, 100, (x % 2) as u8 * 200]));
    let c = center_crop(img, 8);
    assert_eq!(c.dimensions(), (8, 8));
    for (x, y) in [(0u32, 0u32), (3, 5), (7, 7)] {
        let r = ((2 * x * 16 + 2 * y) + (2 * x * 16 + 2 * y + 1) + ((2 * x + 1) * 16 + 2 * y) + ((2 * x + 1) * 16 + 2 * y + 1) + 2) / 4;
        assert_eq!(c.get_pixel(x, y).0, [r as u8, 100, 100]);
    }
    // Otherwise a bicubic resize of the short side, then the crop: a flat image stays flat.
    let c = center_crop(image::RgbImage::from_pixel(13, 10, image::Rgb([9, 80, 255])), 6);
    assert_eq!(c.dimensions(), (6, 6));
    assert!(c.pixels().all(|p| p.0 == [9, 80, 255]));
}

/// Three classes (sorted names), 2-3 PNGs each, every image flat with colour (class, index).
fn write_folder(root: &Path) {
    for (class, n) in [("b_cat", 3u8), ("a_dog", 2), ("c_emu", 2)] {
        for i in 0..n {
            png(&root.join(class).join(format!("{i}.png")), 10 + i as u32, 8, |_, _| [class.as_bytes()[0], i * 40, 200]);
        }
    }
    png(&root.join("b_cat/deeper/9.png"), 8, 8, |_, _| [1, 2, 3]);
    std::fs::write(root.join("b_cat/notes.txt"), "not an image").unwrap();
}

#[test]
fn image_folder_lists_sorted_classes_and_reads_pixels() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    let f = ImageFolder::open(dir.path(), 8).unwrap();
    assert_eq!(f.classes, vec!["a_dog", "b_cat", "c_emu"]);
    assert_eq!(f.len(), 8);
    assert_eq!(f.item_shape(), [3, 8, 8]);
    let labels: Vec<i64> = f.files.iter().map(|(_, l)| *l).collect();
    assert_eq!(labels, vec![0, 0, 1, 1, 1, 1, 2, 2]);
    let mut out = vec![0f32; 3 * 64];
    // files[3] is b_cat/1.png: colour ('b', 40, 200).
    assert_eq!(f.read(3, &mut out).unwrap(), 1);
    for (c, v) in [(0usize, b'b'), (1, 40), (2, 200)] {
        assert!(out[c * 64..(c + 1) * 64].iter().all(|&p| (p - (v as f32 / 127.5 - 1.0)).abs() < 1e-6), "channel {c}");
    }
    // b_cat/deeper/9.png is found recursively, after b_cat/2.png.
    assert_eq!(f.read(5, &mut out).unwrap(), 1);
    assert!((out[0] - (1.0 / 127.5 - 1.0)).abs() < 1e-6);
}

#[test]
fn image_folder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = ImageFolder::open(dir.path(), 8).unwrap_err().to_string();
    contains_all(&e, &["no sub-folders"]);
    write_folder(dir.path());
    std::fs::create_dir(dir.path().join("d_empty")).unwrap();
    contains_all(&ImageFolder::open(dir.path(), 8).unwrap_err().to_string(), &["d_empty", "no PNG"]);
    std::fs::remove_dir(dir.path().join("d_empty")).unwrap();
    std::fs::write(dir.path().join("a_dog/x.JPEG"), b"\xff\xd8\xff").unwrap();
    contains_all(&ImageFolder::open(dir.path(), 8).unwrap_err().to_string(), &["x.JPEG", "PNG"]);
    std::fs::remove_file(dir.path().join("a_dog/x.JPEG")).unwrap();
    let bad = dir.path().join("a_dog/1.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let f = ImageFolder::open(dir.path(), 8).unwrap();
    let mut out = vec![0f32; 3 * 64];
    contains_all(&f.read(1, &mut out).unwrap_err().to_string(), &["a_dog/1.png", "decode"]);
}

// ---------------------------------------------------------------- background loading

/// Item i is the constant i (shape [1, 2, 2]), label i % 7; reading sleeps a little and
/// unevenly so that workers finish out of order.
struct Numbers(usize);

impl Source for Numbers {
    fn len(&self) -> usize {
        self.0
    }
    fn item_shape(&self) -> [i64; 3] {
        [1, 2, 2]
    }
    fn num_classes(&self) -> i64 {
        7
    }
    fn read(&self, i: usize, out: &mut [f32]) -> meanflow::Result<i64> {
        std::thread::sleep(std::time::Duration::from_micros(((i * 7919) % 5) as u64 * 300));
        out.fill(i as f32);
        Ok((i % 7) as i64)
    }
}

#[test]
fn prefetched_batches_follow_the_seeded_order_whatever_the_threads() {
    let (n, batch, steps) = (23usize, 5i64, 12u64);
    // The order the in-memory path uses.
    let mut order = Order::new(9, batch, n as i64);
    let want: Vec<Vec<i64>> = (0..steps).map(|s| Vec::<i64>::try_from(&order.indices(s)).unwrap()).collect();
    for (workers, start) in [(1usize, 0u64), (3, 0), (4, 7)] {
        let mut p = Prefetcher::new(Arc::new(Numbers(n)), Order::new(9, batch, n as i64), start, steps, workers, 2 * workers);
        for s in start..steps {
            let (step, x, y) = p.next_batch().unwrap();
            assert_eq!(step, s);
            assert_eq!(x.size(), vec![batch, 1, 2, 2]);
            let got: Vec<i64> = Vec::<f32>::try_from(&x.select(2, 0).select(2, 0).select(1, 0)).unwrap().iter().map(|v| *v as i64).collect();
            assert_eq!(got, want[s as usize], "workers {workers}, step {s}");
            assert_eq!(Vec::<i64>::try_from(&y).unwrap(), want[s as usize].iter().map(|i| i % 7).collect::<Vec<_>>());
        }
        assert!(p.next_batch().is_err(), "past the last step");
    }
    // Dropped before the end: the threads stop.
    let mut p = Prefetcher::new(Arc::new(Numbers(n)), Order::new(9, batch, n as i64), 0, 1000, 2, 4);
    let _ = p.next_batch().unwrap();
    drop(p);
}

#[test]
fn flips_are_seeded_per_row_and_flip_the_width() {
    let a = flip_mask(1, 10, 256);
    assert_eq!(a, flip_mask(1, 10, 256));
    assert_ne!(a, flip_mask(1, 11, 256));
    assert_ne!(a, flip_mask(2, 10, 256));
    let k = a.iter().filter(|f| **f).count();
    assert!((96..=160).contains(&k), "{k} of 256 flipped");
    let x = Tensor::arange(6 * 2 * 3 * 4, (Kind::Float, Device::Cpu)).view([6, 2, 3, 4]);
    let y = hflip_rows(&x, 1, 10);
    for (row, f) in flip_mask(1, 10, 6).into_iter().enumerate() {
        let want = if f { x.get(row as i64).flip([2]) } else { x.get(row as i64) };
        assert!(y.get(row as i64).equal(&want), "row {row}");
    }
}

#[test]
fn training_reads_an_image_folder_through_the_loader_threads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    write_folder(&root);
    let data = format!("{{dataset: image_folder, root: {}, image_size: 8, workers: 2, hflip: true}}", root.display());
    let model = "{name: dit, in_channels: 3, input_size: 8, num_classes: 3, depth: 1, hidden: 32, heads: 2, patch: 4}";
    let p = config_text(dir.path(), &data, model);
    let cfg: Config = config::load(&p, &[]).unwrap();
    let loaded = train::open_data(&cfg).unwrap();
    assert!(matches!(loaded, TrainData::Stream { workers: 2, .. }));
    let s = train::train_with(&cfg, loaded, &TrainOptions { resume: false, quiet: true }).unwrap();
    assert_eq!(s.steps, 3);
    assert!(s.loss.is_finite());
    // A second run gives the same losses: the batches do not depend on thread timing.
    let cfg2 = config::load(&p, &[format!("train.run_dir={}", dir.path().join("run2").display())]).unwrap();
    let s2 = train::train(&cfg2, &TrainOptions { resume: false, quiet: true }).unwrap();
    assert_eq!((s.loss, s.mse), (s2.loss, s2.mse));
}

/// A set of cached posteriors (mean, std), as the MeanFlow JAX code keeps them: the std
/// channels are scaled but not shifted, and training draws a fresh sample per step,
/// reproducibly.
#[test]
fn posterior_moment_sets_train_on_fresh_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set");
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/encode_imagenet_latents.py");
    let o = std::process::Command::new(python())
        .arg(&tool)
        .args(["--random", "12", "--posterior", "moments", "--latent-shape", "4", "8", "8", "--num-classes", "3"])
        .args(["--shift", "0.5", "--format", "npy", "--shard-size", "5", "--dtype", "float32", "--out"])
        .arg(&out)
        .output()
        .expect("run the venv python");
    assert!(o.status.success(), "tool failed: {}", String::from_utf8_lossy(&o.stderr));
    let m = Manifest::read(&out).unwrap();
    let d = meanflow::data::latents::load(&out, &m).unwrap();
    assert_eq!(d.images.size(), vec![12, 8, 8, 8]);
    let raw = npy::read(&out.join("train_00000_latents.npy")).unwrap();
    let got = d.images.narrow(0, 0, 5);
    assert!(got.narrow(1, 0, 4).allclose(&((raw.narrow(1, 0, 4) - 0.5) * 0.18215), 1e-6, 1e-7, false));
    assert!(got.narrow(1, 4, 4).allclose(&(raw.narrow(1, 4, 4) * 0.18215), 1e-6, 1e-7, false));

    let data = format!("{{dataset: imagenet_latents, root: {}}}", out.display());
    let model = "{name: dit, in_channels: 4, input_size: 8, num_classes: 3, depth: 1, hidden: 32, heads: 2, patch: 4}";
    let p = config_text(dir.path(), &data, model);
    let cfg = config::load(&p, &[]).unwrap();
    assert!(matches!(train::open_data(&cfg).unwrap(), TrainData::Posterior(_)));
    let s = train::train(&cfg, &TrainOptions { resume: false, quiet: true }).unwrap();
    let cfg2 = config::load(&p, &[format!("train.run_dir={}", dir.path().join("run2").display())]).unwrap();
    let s2 = train::train(&cfg2, &TrainOptions { resume: false, quiet: true }).unwrap();
    assert!(s.loss.is_finite());
    assert_eq!((s.loss, s.mse), (s2.loss, s2.mse));
    // 4 channels in the config but 8 stored is not a mismatch; 8 in the config is.
    let e = match train::open_data(&config::load(&p, &["model.in_channels=8".into()]).unwrap()) {
        Ok(_) => panic!("8 channels should be refused"),
        Err(e) => e.to_string(),
    };
    contains_all(&e, &["model.in_channels", "is 8", "[4, 8, 8]"]);
}

/// A reader that fails or panics gives that step an error instead of a hang.
#[test]
fn loader_errors_and_panics_reach_the_trainer() {
    struct Bad;
    impl Source for Bad {
        fn len(&self) -> usize {
            8
        }
        fn item_shape(&self) -> [i64; 3] {
            [1, 1, 1]
        }
        fn num_classes(&self) -> i64 {
            1
        }
        fn read(&self, i: usize, out: &mut [f32]) -> meanflow::Result<i64> {
            match i {
                3 => panic!("item 3 is cursed"),
                5 => Err(meanflow::Error::file("five.png", "cannot decode")),
                _ => {
                    out[0] = i as f32;
                    Ok(0)
                }
            }
        }
    }
    // Batch size 1: the batch of step s is item order[s].
    let mut order = Order::new(0, 1, 8);
    let items: Vec<i64> = (0..8).map(|s| order.indices(s).int64_value(&[0])).collect();
    let mut p = Prefetcher::new(Arc::new(Bad), Order::new(0, 1, 8), 0, 8, 2, 3);
    for item in items {
        let r = p.next_batch();
        match item {
            3 => contains_all(&r.err().expect("panic becomes an error").to_string(), &["panicked"]),
            5 => contains_all(&r.err().expect("error passed on").to_string(), &["five.png", "cannot decode"]),
            _ => assert_eq!(r.unwrap().1.double_value(&[0, 0, 0, 0]), item as f64),
        }
    }
}
