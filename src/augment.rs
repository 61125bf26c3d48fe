//! EDM's augmentation pipe (Karras et al. 2022, `training/augment.py`), geometric part:
//! x-flip, y-flip, integer translation, isotropic scaling, fractional rotation,
//! anisotropic scaling, fractional translation. Colour transforms and integer rotation
//! are not implemented (neither the paper nor the official MeanFlow code uses them).
//!
//! Each transform is applied to a sample with probability `p * multiplier`; its
//! parameters become the augmentation labels the network is conditioned on (zero when
//! the transform was not applied), in EDM's order and layout. The official MeanFlow
//! CIFAR-10 recipe is `p 0.12, xflip 1e8, scale 1, aniso 1, translate_frac 1` (EDM's
//! CIFAR-10 settings with y-flip and rotation off): 1 + 1 + 2 + 2 = 6 labels.
//!
//! The draws follow EDM's order, one tensor op per draw, so the same libtorch RNG
//! state gives the same parameters as PyTorch's AugmentPipe on the same device.
//!
//! The geometric transforms run as EDM runs them: reflect-pad by the margin the
//! transform needs, upsample 2x with the sym6 wavelet filter, bilinear `grid_sample` at
//! the inversely mapped pixel centres, then filter and downsample 2x and crop.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `train.augment`: EDM's `augment_kwargs`. Probabilities are multipliers of `p`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Overall probability multiplier.
    pub p: f64,
    pub xflip: f64,
    pub yflip: f64,
    pub translate_int: f64,
    /// Range of integer translation, relative to the image size.
    pub translate_int_max: f64,
    pub scale: f64,
    pub rotate_frac: f64,
    pub aniso: f64,
    pub translate_frac: f64,
    /// Log2 standard deviation of isotropic scaling.
    pub scale_std: f64,
    /// Range of fractional rotation, 1 = full circle.
    pub rotate_frac_max: f64,
    /// Log2 standard deviation of anisotropic scaling.
    pub aniso_std: f64,
    /// Probability of scaling anisotropically in a rotated frame.
    pub aniso_rotate_prob: f64,
    /// Standard deviation of fractional translation, relative to the image size.
    pub translate_frac_std: f64,
}

impl Default for AugmentConfig {
    /// EDM's AugmentPipe defaults: everything off, p = 1.
    fn default() -> Self {
        AugmentConfig {
            p: 1.0,
            xflip: 0.0,
            yflip: 0.0,
            translate_int: 0.0,
            translate_int_max: 0.125,
            scale: 0.0,
            rotate_frac: 0.0,
            aniso: 0.0,
            translate_frac: 0.0,
            scale_std: 0.2,
            rotate_frac_max: 1.0,
            aniso_std: 0.2,
            aniso_rotate_prob: 0.5,
            translate_frac_std: 0.125,
        }
    }
}

impl AugmentConfig {
    /// The official MeanFlow CIFAR-10 settings (py-meanflow `train_loop.py`).
    pub fn meanflow_cifar10() -> Self {
        AugmentConfig { p: 0.12, xflip: 1e8, scale: 1.0, aniso: 1.0, translate_frac: 1.0, ..Default::default() }
    }

    /// Width of the label vector: one or two entries per enabled transform.
    pub fn label_dim(&self) -> i64 {
        [(self.xflip, 1), (self.yflip, 1), (self.translate_int, 2), (self.scale, 1), (self.rotate_frac, 2), (self.aniso, 2), (self.translate_frac, 2)]
            .iter()
            .filter(|(m, _)| *m > 0.0)
            .map(|(_, n)| n)
            .sum()
    }

    /// The first invalid (key, message), keys relative to `train.augment`.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let fields = [
            ("p", self.p),
            ("xflip", self.xflip),
            ("yflip", self.yflip),
            ("translate_int", self.translate_int),
            ("translate_int_max", self.translate_int_max),
            ("scale", self.scale),
            ("rotate_frac", self.rotate_frac),
            ("aniso", self.aniso),
            ("translate_frac", self.translate_frac),
            ("scale_std", self.scale_std),
            ("rotate_frac_max", self.rotate_frac_max),
            ("aniso_std", self.aniso_std),
            ("aniso_rotate_prob", self.aniso_rotate_prob),
            ("translate_frac_std", self.translate_frac_std),
        ];
        if let Some((k, v)) = fields.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Some((k, format!("must be finite and >= 0, got {v}")));
        }
        if self.p > 1.0 {
            return Some(("p", format!("must be in [0, 1], got {}", self.p)));
        }
        if self.label_dim() == 0 {
            return Some(("p", "no transform is enabled (set xflip, scale, aniso, ... > 0)".into()));
        }
        None
    }

    fn geometric(&self) -> bool {
        self.scale > 0.0 || self.rotate_frac > 0.0 || self.aniso > 0.0 || self.translate_frac > 0.0
    }
}

/// Augmented images and their labels.
pub struct Augmented {
    /// `[N, C, H, W]`, the input's kind.
    pub images: Tensor,
    /// `[N, label_dim]` float32.
    pub labels: Tensor,
}

/// Draws a transform per sample from the current libtorch RNG and applies it.
pub fn augment(cfg: &AugmentConfig, images: &Tensor) -> Augmented {
    let (n, c, h, w) = images.size4().expect("NCHW images");
    let dev = images.device();
    let f32 = (Kind::Float, dev);
    let p = cfg.p;
    let mut images = images.shallow_clone();
    let mut labels: Vec<Tensor> = Vec::new();
    // where(rand < prob, w, 0): EDM's gate, one uniform draw per sample.
    let gate = |w: Tensor, shape: &[i64], prob: f64| -> Tensor {
        let keep = Tensor::rand(shape, f32).lt(prob);
        w.where_self(&keep, &w.zeros_like())
    };

    // ---- pixel blitting
    if cfg.xflip > 0.0 {
        let f = gate(Tensor::randint(2, [n, 1, 1, 1], (Kind::Int64, dev)), &[n, 1, 1, 1], cfg.xflip * p);
        images = images.flip([3]).where_self(&f.eq(1), &images);
        labels.push(f);
    }
    if cfg.yflip > 0.0 {
        let f = gate(Tensor::randint(2, [n, 1, 1, 1], (Kind::Int64, dev)), &[n, 1, 1, 1], cfg.yflip * p);
        images = images.flip([2]).where_self(&f.eq(1), &images);
        labels.push(f);
    }
    if cfg.translate_int > 0.0 {
        let u = gate(Tensor::rand([2, n, 1, 1, 1], f32) * 2.0 - 1.0, &[1, n, 1, 1, 1], cfg.translate_int * p);
        let tx = (u.get(0) * (w as f64 * cfg.translate_int_max)).round().to_kind(Kind::Int64); // [N, 1, 1, 1]
        let ty = (u.get(1) * (h as f64 * cfg.translate_int_max)).round().to_kind(Kind::Int64);
        images = translate_int(&images, &tx, &ty);
        labels.push(tx.to_kind(Kind::Float) / (w as f64 * cfg.translate_int_max));
        labels.push(ty.to_kind(Kind::Float) / (h as f64 * cfg.translate_int_max));
    }

    // ---- geometric parameters, as one inverse matrix per sample
    let mut g_inv = Tensor::eye(3, f32).expand([n, 3, 3], false);
    if cfg.scale > 0.0 {
        let u = gate(Tensor::randn([n], f32), &[n], cfg.scale * p);
        let s = (&u * cfg.scale_std).exp2();
        g_inv = g_inv.matmul(&scale2d(&s.reciprocal(), &s.reciprocal()));
        labels.push(u);
    }
    if cfg.rotate_frac > 0.0 {
        let u = gate((Tensor::rand([n], f32) * 2.0 - 1.0) * (std::f64::consts::PI * cfg.rotate_frac_max), &[n], cfg.rotate_frac * p);
        g_inv = g_inv.matmul(&rotate2d(&u)); // rotate2d_inv(-w) = rotate2d(w)
        labels.push(u.cos() - 1.0);
        labels.push(u.sin());
    }
    if cfg.aniso > 0.0 {
        let u = Tensor::randn([n], f32);
        let r = (Tensor::rand([n], f32) * 2.0 - 1.0) * std::f64::consts::PI;
        let u = u.where_self(&Tensor::rand([n], f32).lt(cfg.aniso * p), &u.zeros_like());
        let r = r.where_self(&Tensor::rand([n], f32).lt(cfg.aniso_rotate_prob), &r.zeros_like());
        let s = (&u * cfg.aniso_std).exp2();
        // rotate2d_inv(r) @ scale2d_inv(s, 1/s) @ rotate2d_inv(-r)
        g_inv = g_inv.matmul(&rotate2d(&-&r)).matmul(&scale2d(&s.reciprocal(), &s)).matmul(&rotate2d(&r));
        labels.push(&u * r.cos());
        labels.push(&u * r.sin());
    }
    if cfg.translate_frac > 0.0 {
        let u = gate(Tensor::randn([2, n], f32), &[1, n], cfg.translate_frac * p);
        let (ux, uy) = (u.get(0), u.get(1));
        g_inv = g_inv.matmul(&translate2d(&(&ux * (-(w as f64) * cfg.translate_frac_std)), &(&uy * (-(h as f64) * cfg.translate_frac_std))));
        labels.push(ux);
        labels.push(uy);
    }
    if cfg.geometric() {
        images = geometric(&images, &g_inv);
    }
    let _ = c;
    if labels.is_empty() {
        return Augmented { images, labels: Tensor::zeros([n, 0], f32) };
    }
    let labels = Tensor::cat(&labels.iter().map(|l| l.to_kind(Kind::Float).reshape([n, -1])).collect::<Vec<_>>(), 1);
    Augmented { images, labels }
}

/// Integer translation by (tx, ty) pixels per sample (`[N, 1, 1, 1]` int64) with
/// reflection at the borders (the border pixel is not repeated): out[y, x] = in[y', x']
/// with x' = reflect(x - tx), y' = reflect(y + ty).
pub fn translate_int(images: &Tensor, tx: &Tensor, ty: &Tensor) -> Tensor {
    let (n, c, h, w) = images.size4().expect("NCHW images");
    let dev = images.device();
    let ar = |k: i64| Tensor::arange(k, (Kind::Int64, dev));
    let x = ar(w).view([1, 1, 1, w]);
    let y = ar(h).view([1, 1, h, 1]);
    let b = ar(n).view([n, 1, 1, 1]);
    let ch = ar(c).view([1, c, 1, 1]);
    let x = -(((x - tx).remainder(2 * w - 2) * -1 + (w - 1)).abs()) + (w - 1); // [N, 1, 1, W]
    let y = -(((y + ty).remainder(2 * h - 2) * -1 + (h - 1)).abs()) + (h - 1); // [N, 1, H, 1]
    let idx = ((b * c + ch) * h + y) * w + x; // [N, C, H, W]
    images.flatten(0, -1).take(&idx)
}

// ---------------------------------------------------------------- matrices

/// [N, 3, 3] from nine [N] tensors, row-major.
fn matrix(elems: [Tensor; 9]) -> Tensor {
    let n = elems[0].size()[0];
    Tensor::stack(&elems, 1).reshape([n, 3, 3])
}

/// Per-sample 3x3 homogeneous matrices, like EDM's `scale2d`, `rotate2d`, `translate2d`.
pub fn scale2d(sx: &Tensor, sy: &Tensor) -> Tensor {
    let (o, z) = (sx.ones_like(), sx.zeros_like());
    matrix([sx.shallow_clone(), z.shallow_clone(), z.shallow_clone(), z.shallow_clone(), sy.shallow_clone(), z.shallow_clone(), z.shallow_clone(), z, o])
}

pub fn rotate2d(theta: &Tensor) -> Tensor {
    let (c, s) = (theta.cos(), theta.sin());
    let (o, z) = (theta.ones_like(), theta.zeros_like());
    matrix([c.shallow_clone(), -&s, z.shallow_clone(), s, c, z.shallow_clone(), z.shallow_clone(), z, o])
}

pub fn translate2d(tx: &Tensor, ty: &Tensor) -> Tensor {
    let (o, z) = (tx.ones_like(), tx.zeros_like());
    matrix([o.shallow_clone(), z.shallow_clone(), tx.shallow_clone(), z.shallow_clone(), o.shallow_clone(), ty.shallow_clone(), z.shallow_clone(), z, o])
}

/// A constant matrix repeated for N samples.
fn constant(n: i64, m: [f64; 9], dev: tch::Device) -> Tensor {
    Tensor::from_slice(&m).to_kind(Kind::Float).to_device(dev).reshape([1, 3, 3]).expand([n, 3, 3], false)
}

/// Daubechies' symlet-6 low-pass filter (EDM's `wavelets['sym6']`).
const SYM6: [f64; 12] = [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
];

/// Applies one inverse transform per sample: `g_inv` `[N, 3, 3]` maps output pixel
/// coordinates (origin at the image centre, x right, y down) to input coordinates.
/// EDM's execution: reflect padding, 2x sym6 upsampling, bilinear sampling, 2x sym6
/// downsampling.
pub fn geometric(images: &Tensor, g_inv: &Tensor) -> Tensor {
    let (n, c, h, w) = images.size4().expect("NCHW images");
    let dev = images.device();
    let g_inv = g_inv.to_kind(Kind::Float);
    let (cx, cy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
    let hz_pad = (SYM6.len() / 4) as i64;

    // Margin each side that the transformed corners reach, clamped to [0, size - 1].
    let corners = Tensor::from_slice(&[-cx, cx, cx, -cx, -cy, -cy, cy, cy, 1.0, 1.0, 1.0, 1.0])
        .to_kind(Kind::Float)
        .to_device(dev)
        .reshape([3, 4]);
    let cp = g_inv.matmul(&corners); // [N, 3, 4]
    let m = cp.narrow(1, 0, 2).permute([1, 0, 2]).flatten(1, 2); // [2, N*4]
    let m = Tensor::cat(&[-&m, m], 0).amax([1i64].as_slice(), false); // [x0, y0, x1, y1]
    let off = Tensor::from_slice(&[2.0 * hz_pad as f64 - cx, 2.0 * hz_pad as f64 - cy, 2.0 * hz_pad as f64 - cx, 2.0 * hz_pad as f64 - cy])
        .to_kind(Kind::Float)
        .to_device(dev);
    let hi = Tensor::from_slice(&[(w - 1) as f32, (h - 1) as f32, (w - 1) as f32, (h - 1) as f32]).to_device(dev);
    let m = (m + off).clamp_min(0.0).minimum(&hi).ceil().to_kind(Kind::Int64);
    let m: Vec<i64> = Vec::<i64>::try_from(m.to_device(tch::Device::Cpu)).expect("four margins");
    let (mx0, my0, mx1, my1) = (m[0], m[1], m[2], m[3]);

    let mut x = images.pad([mx0, mx1, my0, my1], "reflect", None);
    let shift = constant(n, [1.0, 0.0, (mx0 - mx1) as f64 / 2.0, 0.0, 1.0, (my0 - my1) as f64 / 2.0, 0.0, 0.0, 1.0], dev);
    let mut g = shift.matmul(&g_inv);

    // Upsample 2x: zero insertion and the reversed sym6 filter along x, then along y.
    let taps = SYM6.len() as i64;
    let hz = Tensor::from_slice(&SYM6).to_kind(images.kind()).to_device(dev);
    let hz_rev = hz.flip([0]).reshape([1, 1, taps]).repeat([c, 1, 1]); // [C, 1, taps]
    let up_pad = (taps + 1) / 2;
    let (hp, wp) = (x.size()[2], x.size()[3]);
    x = Tensor::stack(&[x.shallow_clone(), x.zeros_like()], 4).reshape([n, c, hp, 2 * wp]).narrow(3, 0, 2 * wp - 1);
    x = x.conv2d(&hz_rev.unsqueeze(2), None::<Tensor>, [1, 1], [0, up_pad], [1, 1], c);
    let w2 = x.size()[3];
    x = Tensor::stack(&[x.shallow_clone(), x.zeros_like()], 3).reshape([n, c, 2 * hp, w2]).narrow(2, 0, 2 * hp - 1);
    x = x.conv2d(&hz_rev.unsqueeze(3), None::<Tensor>, [1, 1], [up_pad, 0], [1, 1], c);
    let s2 = constant(n, [2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0], dev);
    let s2_inv = constant(n, [0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0], dev);
    g = s2.matmul(&g).matmul(&s2_inv);
    let t_half = constant(n, [1.0, 0.0, -0.5, 0.0, 1.0, -0.5, 0.0, 0.0, 1.0], dev);
    let t_half_inv = constant(n, [1.0, 0.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0], dev);
    g = t_half.matmul(&g).matmul(&t_half_inv);

    // Sample: pixel coordinates to grid_sample's [-1, 1] on input and output.
    let (out_h, out_w) = ((h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2);
    let (in_h, in_w) = (x.size()[2] as f64, x.size()[3] as f64);
    let to_in = constant(n, [2.0 / in_w, 0.0, 0.0, 0.0, 2.0 / in_h, 0.0, 0.0, 0.0, 1.0], dev);
    let from_out = constant(n, [out_w as f64 / 2.0, 0.0, 0.0, 0.0, out_h as f64 / 2.0, 0.0, 0.0, 0.0, 1.0], dev);
    g = to_in.matmul(&g).matmul(&from_out);
    let grid = Tensor::affine_grid_generator(&g.narrow(1, 0, 2).to_kind(x.kind()), [n, c, out_h, out_w], false);
    x = x.grid_sampler(&grid, 0, 0, false); // bilinear, zero padding

    // Downsample 2x with the sym6 filter and crop the filter margin.
    let hz_fwd = hz.reshape([1, 1, taps]).repeat([c, 1, 1]);
    let down_pad = (taps - 1) / 2;
    x = x.conv2d(&hz_fwd.unsqueeze(2), None::<Tensor>, [1, 2], [0, down_pad], [1, 1], c);
    x = x.narrow(3, hz_pad, x.size()[3] - 2 * hz_pad);
    x = x.conv2d(&hz_fwd.unsqueeze(3), None::<Tensor>, [2, 1], [down_pad, 0], [1, 1], c);
    x.narrow(2, hz_pad, x.size()[2] - 2 * hz_pad).contiguous()
}
