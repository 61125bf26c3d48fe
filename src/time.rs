//! Time samplers and the joint (t, r) draw with its share `ratio` of rows where r != t.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Distribution of a single time in (0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimeSampler {
    Uniform,
    /// sigmoid(mu + sigma * n), n ~ N(0, 1): the paper's lognorm(mu, sigma).
    LogitNormal { mu: f64, sigma: f64 },
}

impl Default for TimeSampler {
    fn default() -> Self {
        // Table 1(d) default.
        TimeSampler::LogitNormal { mu: -0.4, sigma: 1.0 }
    }
}

impl TimeSampler {
    pub fn sample(&self, n: i64, device: Device) -> Tensor {
        match *self {
            TimeSampler::Uniform => Tensor::rand([n], (Kind::Float, device)),
            TimeSampler::LogitNormal { mu, sigma } => {
                (Tensor::randn([n], (Kind::Float, device)) * sigma + mu).sigmoid()
            }
        }
    }
}

/// How the rows with r != t are chosen, as in the three official implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSampler {
    /// (JAX) t, r drawn i.i.d. and ordered; the first floor(B (1 - ratio)) rows get r = t.
    #[default]
    Index,
    /// (PyTorch "v0") as `index`, but the rows with r != t are a random subset of that size.
    V0,
    /// (PyTorch "v1") t and r from their own samplers; rows kept with probability `ratio`,
    /// then r = min(t, r), so the realised share of r != t is ratio * P(r < t).
    V1,
}

/// One draw of (t, r), each `[B]`, with t >= r.
pub struct TimePair {
    pub t: Tensor,
    pub r: Tensor,
}

pub fn sample_pair(
    pair: PairSampler,
    ratio: f64,
    t_sampler: &TimeSampler,
    r_sampler: &TimeSampler,
    batch: i64,
    device: Device,
) -> TimePair {
    match pair {
        PairSampler::Index | PairSampler::V0 => {
            let a = t_sampler.sample(batch, device);
            let b = t_sampler.sample(batch, device);
            let (t, r) = (a.maximum(&b), a.minimum(&b));
            let n_same = (batch as f64 * (1.0 - ratio)).floor() as i64;
            let n_diff = batch - n_same;
            let keep = if pair == PairSampler::Index {
                // r != t on the rows after the first n_same, as the JAX code's mask.
                Tensor::arange(batch, (Kind::Int64, device)).ge(n_same)
            } else {
                let idx = Tensor::randperm(batch, (Kind::Int64, device)).narrow(0, 0, n_diff);
                Tensor::zeros([batch], (Kind::Bool, device)).index_fill(0, &idx, 1)
            };
            let r = r.where_self(&keep, &t);
            TimePair { t, r }
        }
        PairSampler::V1 => {
            let t = t_sampler.sample(batch, device);
            let r = r_sampler.sample(batch, device);
            let keep = Tensor::rand([batch], (Kind::Float, device)).lt(ratio);
            let r = r.where_self(&keep, &t).minimum(&t);
            TimePair { t, r }
        }
    }
}
