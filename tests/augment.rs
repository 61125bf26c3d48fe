//! EDM's augmentation pipe on known images: identity at p = 0, x-flip, integer
//! translation with reflection, isotropic scaling against a closed form, label layout.
mod common;

use common::*;
use meanflow::augment::{self, AugmentConfig};
use tch::{Device, Kind, Tensor};

/// img[n, c, y, x] = 1000 n + 100 c + 10 y + x: every pixel distinct and readable.
fn known(n: i64, c: i64, h: i64, w: i64) -> Tensor {
    let f = |k: i64, s: f64, shape: [i64; 4]| Tensor::arange(k, (Kind::Float, Device::Cpu)).reshape(shape) * s;
    f(n, 1000.0, [n, 1, 1, 1]) + f(c, 100.0, [1, c, 1, 1]) + f(h, 10.0, [1, 1, h, 1]) + f(w, 1.0, [1, 1, 1, w])
}

fn paper() -> AugmentConfig {
    AugmentConfig::meanflow_cifar10()
}

#[test]
fn label_widths_follow_edm() {
    assert_eq!(paper().label_dim(), 6, "py-meanflow: xflip 1 + scale 1 + aniso 2 + translate_frac 2");
    let edm = AugmentConfig { yflip: 1.0, rotate_frac: 1.0, ..paper() };
    assert_eq!(edm.label_dim(), 9, "EDM CIFAR-10: + yflip 1 + rotate_frac 2");
    assert_eq!(AugmentConfig { p: 0.5, translate_int: 1.0, ..Default::default() }.label_dim(), 2);
}

#[test]
fn p_zero_is_the_identity_with_zero_labels() {
    tch::manual_seed(0);
    let x = known(4, 3, 8, 8);
    // Pixel blitting only: exactly the input.
    let out = augment::augment(&AugmentConfig { p: 0.0, xflip: 1.0, translate_int: 1.0, ..Default::default() }, &x);
    assert!(out.images.equal(&x));
    assert_eq!(out.labels.size(), vec![4, 3]);
    assert_eq!(max_abs(&out.labels), 0.0);
    // With geometric transforms enabled EDM still resamples (pad, 2x up, sample, 2x down);
    // with identity matrices that round trip reproduces the image (orthogonal wavelet).
    let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let out = augment::augment(&AugmentConfig { p: 0.0, ..paper() }, &x);
    assert_eq!(out.labels.size(), vec![4, 6]);
    assert_eq!(max_abs(&out.labels), 0.0);
    let err = max_abs(&(&out.images - &x));
    assert!(err < 1e-4, "identity resampling changed the image by {err}");
}

#[test]
fn xflip_flips_exactly_the_labelled_samples() {
    tch::manual_seed(1);
    let x = known(16, 2, 5, 7);
    let out = augment::augment(&AugmentConfig { p: 1.0, xflip: 1e8, ..Default::default() }, &x);
    assert_eq!(out.labels.size(), vec![16, 1]);
    let mut seen = [0, 0];
    for i in 0..16 {
        let l = out.labels.double_value(&[i, 0]);
        let want = if l == 1.0 { x.get(i).flip([2]) } else { x.get(i) };
        assert!(l == 0.0 || l == 1.0, "label {l}");
        assert!(out.images.get(i).equal(&want), "sample {i} label {l}");
        seen[l as usize] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both outcomes occur: {seen:?}");
}

/// EDM's reflection: index i maps into [0, n) by reflecting at both ends without
/// repeating the border pixel (period 2n - 2).
fn reflect(i: i64, n: i64) -> i64 {
    let m = i.rem_euclid(2 * n - 2);
    if m >= n {
        2 * n - 2 - m
    } else {
        m
    }
}

#[test]
fn integer_translation_is_a_reflected_shift() {
    tch::manual_seed(2);
    let (n, c, h, w) = (12, 2, 16, 24);
    let x = known(n, c, h, w);
    let cfg = AugmentConfig { p: 1.0, translate_int: 1.0, ..Default::default() };
    let out = augment::augment(&cfg, &x);
    assert_eq!(out.labels.size(), vec![n, 2]);
    let mut moved = 0;
    for b in 0..n {
        // Labels are the shift over its range: tx / (W * 0.125), ty / (H * 0.125).
        let tx = (out.labels.double_value(&[b, 0]) * w as f64 * 0.125).round() as i64;
        let ty = (out.labels.double_value(&[b, 1]) * h as f64 * 0.125).round() as i64;
        assert!(tx.abs() <= 3 && ty.abs() <= 2, "shift ({tx}, {ty}) beyond 0.125 of the size");
        moved += (tx != 0 || ty != 0) as i64;
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let want = x.double_value(&[b, ch, reflect(y + ty, h), reflect(xx - tx, w)]);
                    let got = out.images.double_value(&[b, ch, y, xx]);
                    assert_eq!(got, want, "sample {b} shift ({tx}, {ty}) at ({ch}, {y}, {xx})");
                }
            }
        }
    }
    assert!(moved > n / 2, "most samples move");
    // The helper on its own: a shift by one column to the right reflects at the left edge.
    let one = augment::translate_int(&known(1, 1, 2, 4), &Tensor::from_slice(&[1i64]).reshape([1, 1, 1, 1]), &Tensor::zeros([1, 1, 1, 1], (Kind::Int64, Device::Cpu)));
    assert_eq!(Vec::<f32>::try_from(one.get(0).get(0).get(0)).unwrap(), vec![1.0, 0.0, 1.0, 2.0]);
}

/// Magnifying by 2 about the centre a linear ramp f = a (x - cx) + b (y - cy) + k gives
/// a (x - cx) / 2 + b (y - cy) / 2 + k. Bilinear sampling is exact on a ramp; EDM's
/// asymmetric sym6 up/down filters shift it by a few hundredths of a pixel (error 5e-4
/// here, against 0.2 for an unscaled ramp in the same window).
#[test]
fn isotropic_scale_by_two_matches_the_closed_form_at_the_centre() {
    let (h, w) = (32i64, 32i64);
    let (cx, cy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
    let (a, b, k) = (0.05, -0.03, 0.2);
    let xs = Tensor::arange(w, (Kind::Float, Device::Cpu)).reshape([1, 1, 1, w]) - cx;
    let ys = Tensor::arange(h, (Kind::Float, Device::Cpu)).reshape([1, 1, h, 1]) - cy;
    let img = (&xs * a + &ys * b + k).expand([1, 3, h, w], false).contiguous();
    let half = Tensor::from_slice(&[0.5f32]);
    let out = augment::geometric(&img, &augment::scale2d(&half, &half)); // G_inv = scale2d_inv(2, 2)
    let want = &xs * (a / 2.0) + &ys * (b / 2.0) + k;
    let centre = |t: &Tensor| t.narrow(2, 8, 16).narrow(3, 8, 16);
    let err = max_abs(&(centre(&out) - centre(&want.expand([1, 3, h, w], false))));
    assert!(err < 1e-3, "scaled ramp differs from the closed form by {err}");
    // And the centre pixel pair stays put while the slope halves.
    let d = out.double_value(&[0, 0, 16, 17]) - out.double_value(&[0, 0, 16, 16]);
    assert!((d - a / 2.0).abs() < 2e-4, "x slope {d} vs {}", a / 2.0);
}

#[test]
fn paper_settings_labels_and_determinism() {
    let x = Tensor::rand([64, 3, 16, 16], (Kind::Float, Device::Cpu));
    let run = |cfg: &AugmentConfig| {
        tch::manual_seed(3);
        augment::augment(cfg, &x)
    };
    let cfg = AugmentConfig { p: 1.0, ..paper() };
    let out = run(&cfg);
    assert_eq!(out.labels.size(), vec![64, 6]);
    assert_eq!(out.labels.kind(), Kind::Float);
    let col = |j: i64| out.labels.select(1, j);
    // xflip is binary; the scale, aniso and translation draws are Gaussian (non-zero at p = 1).
    assert!(col(0).eq(0.0).logical_or(&col(0).eq(1.0)).all().int64_value(&[]) == 1);
    for j in [1, 4, 5] {
        assert!(col(j).ne(0.0).all().int64_value(&[]) == 1, "column {j} has zeros at p = 1");
    }
    // aniso labels (w cos r, w sin r): r = 0 on about half of the samples (aniso_rotate_prob).
    let rotated = col(3).ne(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!((10..54).contains(&rotated), "{rotated} of 64 rotated");
    let again = run(&cfg);
    assert!(again.images.equal(&out.images) && again.labels.equal(&out.labels), "same seed, same draw");
    // EDM's full CIFAR-10 settings: rotation labels (cos w - 1, sin w) lie on the unit circle.
    let edm = run(&AugmentConfig { yflip: 1.0, rotate_frac: 1.0, ..cfg });
    assert_eq!(edm.labels.size(), vec![64, 9]);
    let (c, s) = (edm.labels.select(1, 3) + 1.0, edm.labels.select(1, 4));
    assert!(max_abs(&(c.square() + s.square() - 1.0)) < 1e-5);
    // At the paper's p = 0.12 most samples are untouched: all-zero label rows.
    let light = run(&paper());
    let untouched = light.labels.abs().sum_dim_intlist([1i64].as_slice(), false, Kind::Float).eq(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(untouched > 20, "{untouched} of 64 untouched at p = 0.12");
}
