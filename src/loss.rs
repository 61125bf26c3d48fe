//! The MeanFlow objective (spec sections 2 and 4) and its flow-matching special case.
//!
//!   u_tgt = v_t - (t - r) (v_t d_z u + d_t u)        (the MeanFlow identity)
//!   S     = || u_theta(z_t, r, t) - sg(u_tgt) ||^2    (summed over a sample's elements)
//!   loss  = mean_batch S / sg((S + norm_eps)^norm_p)
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::Result;
use crate::guidance::Guidance;
use crate::jvp::jvp;
use crate::models::MeanFlowNet;
use crate::path::{expand_time, interpolate, velocity};

/// The JVP tangent over the network inputs (z, r, t), Table 1(b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Tangent {
    /// d/dt u(z_t, r, t) = v d_z u + 0 d_r u + 1 d_t u: the correct one.
    #[default]
    #[serde(rename = "v,0,1")]
    V01,
    #[serde(rename = "v,0,0")]
    V00,
    #[serde(rename = "v,1,0")]
    V10,
    #[serde(rename = "v,1,1")]
    V11,
}

impl Tangent {
    /// (dr, dt) coefficients.
    pub fn time_parts(self) -> (f64, f64) {
        match self {
            Tangent::V01 => (0.0, 1.0),
            Tangent::V00 => (0.0, 0.0),
            Tangent::V10 => (1.0, 0.0),
            Tangent::V11 => (1.0, 1.0),
        }
    }
}

/// Every random quantity of one training step, drawn once outside the loss so that the
/// same step can be recomputed (resume, tests, a PyTorch cross-check).
pub struct Draws {
    /// Data `[B, ...]`.
    pub x: Tensor,
    /// Noise `[B, ...]`.
    pub e: Tensor,
    /// `[B]`, t >= r.
    pub t: Tensor,
    pub r: Tensor,
    /// `[B]` class ids, or `None` for an unconditional model.
    pub labels: Option<Tensor>,
    /// `[B]` bool, true where the label is replaced by the null class.
    pub dropped: Option<Tensor>,
    /// `[B, augment_dim]` augmentation labels of `x` (EDM's augment pipe), fed to the
    /// network as conditioning; `None` when the data was not augmented.
    pub aug: Option<Tensor>,
}

/// What one evaluation of the objective produced.
pub struct LossOutput {
    /// The adaptively weighted loss, scalar, with graph.
    pub loss: Tensor,
    /// Unweighted mean squared error per element, mean over batch (detached): the number
    /// that shows progress, since with p = 1 the weighted loss sits near 1.
    pub mse: Tensor,
    /// Mean squared distance per element between u and the plain v_t (detached).
    pub v_loss: Tensor,
    /// S per sample `[B]` (detached).
    pub per_sample: Tensor,
    pub u: Tensor,
    /// du/dt along the tangent (detached); zero on r = t rows under `JvpRows::MeanFlowOnly`,
    /// where it is multiplied by t - r = 0 anyway.
    pub dudt: Tensor,
    pub u_tgt: Tensor,
}

#[derive(Debug, Clone, Copy)]
pub struct MeanFlowLoss {
    pub tangent: Tangent,
    pub jvp_rows: JvpRows,
    pub norm_p: f64,
    pub norm_eps: f64,
    pub guidance: Option<Guidance>,
}

impl MeanFlowLoss {
    pub fn compute(&self, net: &dyn MeanFlowNet, d: &Draws, train: bool) -> Result<LossOutput> {
        let z = interpolate(&d.x, &d.e, &d.t);
        let v = velocity(&d.x, &d.e);
        let labels_in = match (&d.labels, &d.dropped, &self.guidance) {
            (Some(l), Some(m), Some(g)) => Some(g.drop_labels(l, m)),
            (Some(l), _, _) => Some(l.shallow_clone()),
            _ => None,
        };
        let v_g = match (&self.guidance, &d.labels, &d.dropped) {
            (Some(g), Some(l), Some(m)) => g.guided_velocity(net, &z, &d.t, &v, l, m, train),
            _ => v.shallow_clone(),
        };

        let labels_in = labels_in.as_ref();
        let (u, dudt) = match self.jvp_rows {
            JvpRows::All => self.u_and_dudt(net, &z, &d.t, &d.r, &v_g, labels_in, d.aug.as_ref(), train)?,
            JvpRows::MeanFlowOnly => self.u_and_dudt_split(net, &z, &d.t, &d.r, &v_g, labels_in, d.aug.as_ref(), train)?,
        };

        // u_tgt = v - (t - r) du/dt; (JAX) clips t - r to [0, 1]. sg(u_tgt): no gradient.
        let h = expand_time(&(&d.t - &d.r).clamp(0.0, 1.0), &u);
        let u_tgt = (&v_g - h * &dudt).detach();
        let mut out = weighted(&u, &u_tgt, self.norm_p, self.norm_eps);
        out.v_loss = (u.detach() - &v).square().mean(u.kind());
        out.dudt = dudt;
        Ok(out)
    }

    /// As `u_and_dudt`, but the dual pass runs only on rows with r != t. Rows with r = t
    /// have (t - r) du/dt = 0, so their target is v~ whatever du/dt is: they take a plain
    /// forward and get du/dt = 0.
    #[allow(clippy::too_many_arguments)]
    fn u_and_dudt_split(
        &self,
        net: &dyn MeanFlowNet,
        z: &Tensor,
        t: &Tensor,
        r: &Tensor,
        v_g: &Tensor,
        labels: Option<&Tensor>,
        aug: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let mf = t.ne_tensor(r);
        let n_mf = i64::try_from(mf.sum(tch::Kind::Int64))?; // one host sync
        if n_mf == t.size()[0] {
            return self.u_and_dudt(net, z, t, r, v_g, labels, aug, train);
        }
        if n_mf == 0 {
            return Ok((net.forward_aug(z, t, r, labels, aug, train).to_kind(z.kind()), z.zeros_like()));
        }
        let i_mf = mf.nonzero().squeeze_dim(1);
        let i_fm = mf.logical_not().nonzero().squeeze_dim(1);
        let rows = |x: &Tensor, i: &Tensor| x.index_select(0, i);
        let l_mf = labels.map(|l| rows(l, &i_mf));
        let l_fm = labels.map(|l| rows(l, &i_fm));
        let (a_mf, a_fm) = (aug.map(|a| rows(a, &i_mf)), aug.map(|a| rows(a, &i_fm)));
        let u_fm = net.forward_aug(&rows(z, &i_fm), &rows(t, &i_fm), &rows(r, &i_fm), l_fm.as_ref(), a_fm.as_ref(), train);
        let (u_mf, dudt_mf) = self.u_and_dudt(
            net,
            &rows(z, &i_mf),
            &rows(t, &i_mf),
            &rows(r, &i_mf),
            &rows(v_g, &i_mf),
            l_mf.as_ref(),
            a_mf.as_ref(),
            train,
        )?;
        // index_copy is differentiable in its source: gradients flow back to both parts.
        // Under autocast the plain forward comes out in bf16; the dual one is float32.
        let u = z.zeros_like().index_copy(0, &i_fm, &u_fm.to_kind(z.kind())).index_copy(0, &i_mf, &u_mf);
        let dudt = z.zeros_like().index_copy(0, &i_mf, &dudt_mf);
        Ok((u, dudt))
    }

    /// One dual forward: u(z, r, t) with its graph, and du/dt along (v~, dr, dt).
    #[allow(clippy::too_many_arguments)]
    fn u_and_dudt(
        &self,
        net: &dyn MeanFlowNet,
        z: &Tensor,
        t: &Tensor,
        r: &Tensor,
        v_g: &Tensor,
        labels: Option<&Tensor>,
        aug: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (dr, dt) = self.tangent.time_parts();
        let (tan_t, tan_r) = (t.full_like(dt), r.full_like(dr));
        // Dropout draws its mask once in this single dual pass: u and du/dt share it.
        let out = jvp(|p| Ok(net.forward_aug(&p[0], &p[1], &p[2], labels, aug, train)), &[z, t, r], &[v_g, &tan_t, &tan_r])?;
        Ok((out.output, out.tangent))
    }
}

/// Which rows go through the dual (JVP) forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JvpRows {
    /// Only rows with r != t; the others take a plain forward. Same loss, less work.
    #[default]
    MeanFlowOnly,
    /// Every row, as the reference implementations do.
    All,
}

/// Plain flow matching: u(z_t, t, t) regressed on v_t, with the same adaptive weight.
/// MeanFlow with ratio 0 reduces to exactly this.
pub fn flow_matching(net: &dyn MeanFlowNet, d: &Draws, norm_p: f64, norm_eps: f64, train: bool) -> LossOutput {
    let z = interpolate(&d.x, &d.e, &d.t);
    let v = velocity(&d.x, &d.e);
    let u = net.forward_aug(&z, &d.t, &d.t, d.labels.as_ref(), d.aug.as_ref(), train);
    let mut out = weighted(&u, &v, norm_p, norm_eps);
    out.v_loss = out.mse.shallow_clone();
    out
}

/// loss = mean_b S_b / sg((S_b + eps)^p), S_b = sum of squared errors of sample b.
fn weighted(u: &Tensor, u_tgt: &Tensor, norm_p: f64, norm_eps: f64) -> LossOutput {
    let per_elem = (u - u_tgt).square();
    let dims: Vec<i64> = (1..u.dim() as i64).collect();
    let s = per_elem.sum_dim_intlist(dims.as_slice(), false, u.kind()); // [B]
    // sg(w): the adaptive weight is a constant for the gradient.
    let weight = (s.detach() + norm_eps).pow_tensor_scalar(norm_p);
    let loss = (&s / &weight).mean(u.kind());
    let numel = (per_elem.numel() as i64 / u.size()[0]) as f64;
    LossOutput {
        loss,
        mse: s.detach().mean(u.kind()) / numel,
        v_loss: Tensor::new(),
        per_sample: s.detach(),
        u: u.shallow_clone(),
        dudt: Tensor::new(),
        u_tgt: u_tgt.shallow_clone(),
    }
}
