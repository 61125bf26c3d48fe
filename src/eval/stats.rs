//! Feature statistics: accumulated batch by batch in float64 (both FD-FMNIST and FID go
//! through `StatsAccumulator`), and read from / written to the `.npz` reference files the
//! community uses (`mu` `[D]`, `sigma` `[D, D]`).
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::frechet::Stats;
use super::npz::{read_npz, write_npz, NpyArray};
use crate::error::{Error, Result};

/// Running mean and centred scatter matrix of feature rows, in float64 on the device of
/// the first batch. Batches merge exactly (Chan et al.'s pairwise update):
///   n = na + nb, delta = mb - ma, mean = ma + delta nb / n,
///   M = Ma + Mb + delta delta^T na nb / n,
/// so the result does not depend on the batch split beyond round-off, and no large sums of
/// raw outer products cancel.
#[derive(Default)]
pub struct StatsAccumulator {
    n: i64,
    mean: Option<Tensor>,
    scatter: Option<Tensor>,
}

impl StatsAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows seen so far.
    pub fn count(&self) -> i64 {
        self.n
    }

    /// Adds feature rows `[B, D]` (any float kind).
    pub fn add(&mut self, features: &Tensor) -> Result<()> {
        let (nb, d) = features.size2().map_err(|_| Error::Shape(format!("features must be [N, D], got {:?}", features.size())))?;
        if nb == 0 {
            return Ok(());
        }
        if let Some(m) = &self.mean {
            if m.size()[0] != d {
                return Err(Error::Shape(format!("feature width changed from {} to {d}", m.size()[0])));
            }
        }
        tch::no_grad(|| {
            let device = self.mean.as_ref().map(|m| m.device()).unwrap_or(features.device());
            let f = features.to_device(device).to_kind(Kind::Double);
            let mb = f.mean_dim([0i64].as_slice(), false, Kind::Double);
            let c = &f - mb.unsqueeze(0);
            let sb = c.transpose(0, 1).matmul(&c);
            match (self.mean.take(), self.scatter.take()) {
                (Some(ma), Some(sa)) => {
                    let na = self.n as f64;
                    let n = na + nb as f64;
                    let delta = &mb - &ma;
                    self.mean = Some(&ma + &delta * (nb as f64 / n));
                    self.scatter = Some(sa + sb + delta.unsqueeze(1).matmul(&delta.unsqueeze(0)) * (na * nb as f64 / n));
                }
                _ => {
                    self.mean = Some(mb);
                    self.scatter = Some(sb);
                }
            }
        });
        self.n += nb;
        Ok(())
    }

    /// Mean and unbiased covariance (divided by n - 1, as `np.cov(rowvar=False)`), on the CPU.
    pub fn finish(&self) -> Result<Stats> {
        match (&self.mean, &self.scatter) {
            (Some(m), Some(s)) if self.n >= 2 => Ok(Stats {
                mu: m.to_device(Device::Cpu),
                sigma: s.to_device(Device::Cpu) / (self.n - 1) as f64,
            }),
            _ => Err(Error::Shape(format!("need at least 2 feature rows for a covariance, got {}", self.n))),
        }
    }
}

impl Stats {
    /// Reads `mu` `[D]` and `sigma` `[D, D]` (float64 or float32, returned as float64) from a
    /// `.npz` file: pytorch-fid's and EDM's reference statistics, ADM's reference batches
    /// (whose other arrays, `arr_0`, `mu_s`, `sigma_s`, are not read).
    pub fn read_npz(path: &Path) -> Result<Stats> {
        let mut a = read_npz(path, &["mu", "sigma"])?;
        let mu = a.remove("mu").expect("read").to_tensor().to_kind(Kind::Double);
        let sigma = a.remove("sigma").expect("read").to_tensor().to_kind(Kind::Double);
        let d = mu.size().first().copied().unwrap_or(0);
        if mu.dim() != 1 || sigma.size() != [d, d] {
            return Err(Error::file(
                path,
                format!("mu must be [D] and sigma [D, D]; got mu {:?}, sigma {:?}", mu.size(), sigma.size()),
            ));
        }
        Ok(Stats { mu, sigma })
    }

    /// Writes `mu` and `sigma` as float64 to an uncompressed `.npz` (as `np.savez`), readable
    /// by pytorch-fid, EDM's `fid.py calc --ref` and ADM's evaluator.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let mu = NpyArray::from_tensor(&self.mu.to_kind(Kind::Double))?;
        let sigma = NpyArray::from_tensor(&self.sigma.to_kind(Kind::Double))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        write_npz(path, &[("mu", &mu), ("sigma", &sigma)], false)
    }
}
