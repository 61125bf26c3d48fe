//! Frechet distance between two Gaussians, in float64:
//!   d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).
//!
//! tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
//! symmetric matrix A S2 A with A = S1^(1/2) (both from symmetric eigendecompositions,
//! negative round-off eigenvalues clamped to 0). S1 S2 and A S2 A are similar, so this is
//! the same number scipy's sqrtm route gives, without its complex round-off. If the result
//! is not finite (near-singular covariances), eps I is added to both, as pytorch-fid does.
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Mean `[D]` and covariance `[D, D]` of a feature set, in float64.
pub struct Stats {
    pub mu: Tensor,
    pub sigma: Tensor,
}

impl Stats {
    /// From features `[N, D]` (N >= 2): the unbiased covariance, as numpy.cov(rowvar=False).
    pub fn from_features(features: &Tensor) -> Result<Stats> {
        let (n, _) = features.size2().map_err(|_| Error::Shape(format!("features must be [N, D], got {:?}", features.size())))?;
        if n < 2 {
            return Err(Error::Shape(format!("need at least 2 feature rows for a covariance, got {n}")));
        }
        let f = features.to_kind(Kind::Double);
        let mu = f.mean_dim([0i64].as_slice(), false, Kind::Double);
        let c = &f - mu.unsqueeze(0);
        let sigma = c.transpose(0, 1).matmul(&c) / (n - 1) as f64;
        Ok(Stats { mu, sigma })
    }
}

/// Symmetric PSD square root via eigendecomposition.
fn sqrt_psd(m: &Tensor) -> Tensor {
    let (w, v) = m.linalg_eigh("L");
    let w = w.clamp_min(0.0).sqrt();
    (&v * w.unsqueeze(0)).matmul(&v.transpose(0, 1))
}

fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> f64 {
    let a = sqrt_psd(s1);
    let m = a.matmul(s2).matmul(&a);
    let m = (&m + m.transpose(0, 1)) * 0.5; // exact symmetry for eigh
    let (w, _) = m.linalg_eigh("L");
    w.clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[])
}

/// d^2 between N(mu1, sigma1) and N(mu2, sigma2).
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<f64> {
    let d = a.mu.size()[0];
    if a.mu.size() != b.mu.size() || a.sigma.size() != vec![d, d] || b.sigma.size() != vec![d, d] {
        return Err(Error::Shape(format!(
            "statistics do not match: mu {:?} vs {:?}, sigma {:?} vs {:?}",
            a.mu.size(),
            b.mu.size(),
            a.sigma.size(),
            b.sigma.size()
        )));
    }
    let f64s = |t: &Tensor| t.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let (mu1, mu2, s1, s2) = (f64s(&a.mu), f64s(&b.mu), f64s(&a.sigma), f64s(&b.sigma));
    let diff = (&mu1 - &mu2).square().sum(Kind::Double).double_value(&[]);
    let tr = s1.trace().double_value(&[]) + s2.trace().double_value(&[]);
    let mut covmean = trace_sqrt_product(&s1, &s2);
    if !covmean.is_finite() {
        let offset = Tensor::eye(d, (Kind::Double, tch::Device::Cpu)) * 1e-6;
        covmean = trace_sqrt_product(&(&s1 + &offset), &(&s2 + &offset));
    }
    let fd = diff + tr - 2.0 * covmean;
    if !fd.is_finite() {
        return Err(Error::Shape("Frechet distance is not finite (non-finite statistics?)".into()));
    }
    Ok(fd)
}
