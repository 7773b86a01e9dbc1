//! The core stepped online without an autograd graph: what a rollout or an evaluation needs to
//! act, one observation at a time (the counterpart of the time-batched [`super::replay`]).
//!
//! Per step: the input stage of the replay on B rows (deduplicated embeddings, x W_x + b), one
//! LSTM step on plain buffers, φ_t = P h_t + p_b, then the posterior: the point estimate and the
//! VRNN head run as small tensor programs, the Laplace VRNN as the filter of
//! `posterior::filter`, whose statistics (sample offsets, KL parts) the PPO loss reuses so that
//! they are computed once per update.

use super::Core;
use crate::nn::kernels::{Mat, sgemm};
use crate::nn::lstm_seq::lstm_step;
use crate::posterior::filter::{JacobianWeights, LaplaceFilter};
use crate::posterior::{Gaussian, PosteriorConfig};
use anyhow::Result;
use candle_core::Tensor;

/// The posterior's part of an acting state.
enum Posterior {
    /// Point estimate or VRNN: the previous q (detached), for the KL.
    Graph(Gaussian),
    Laplace(Box<LaplaceFilter>),
}

/// What one acting step gives.
pub struct ActStep {
    /// Samples z ~ q_t, (n_Z, B, n).
    pub z: Tensor,
    /// Embeddings of every input kind for the B rows, (B, E) each.
    pub embedded: Vec<Tensor>,
    /// Differential entropy of q_t (None for the point estimate).
    pub entropy: Option<Vec<f64>>,
    /// KL(q_t ‖ q_{t−1}) (None for the point estimate).
    pub kl: Option<Vec<f64>>,
    /// Laplace only: the offsets L_t^{−T} ε (n_Z·B·n) and the KL gradient Λ̃_{t−1}(μ_t − μ_{t−1})
    /// (B·n), for the loss pass.
    pub laplace: Option<(Vec<f32>, Vec<f32>)>,
}

/// B sequences stepped online from the zero carry.
pub struct Acting<'a> {
    core: &'a Core,
    batch: usize,
    /// W_h and P as plain values (also what the Laplace filter's Jacobians need).
    weights: JacobianWeights,
    proj_bias: Vec<f32>,
    c: Vec<f32>,
    h: Vec<f32>,
    posterior: Posterior,
}

impl<'a> Acting<'a> {
    /// The state before any observation: zero carry, q_0 from φ_0 = p_b.
    pub fn new(core: &'a Core, batch: usize) -> Result<Self> {
        let (hd, n) = (core.hidden, core.features);
        let weights = core.jacobian_weights()?;
        let proj_bias: Vec<f32> = core.proj.bias.flatten_all()?.to_vec1()?;
        let phi0: Vec<f32> = (0..batch).flat_map(|_| proj_bias.iter().copied()).collect();
        let posterior = match &core.posterior_cfg {
            PosteriorConfig::Laplace(cfg) => {
                let filter = LaplaceFilter::new(cfg, &phi0, batch, &weights)?;
                Posterior::Laplace(Box::new(filter))
            }
            _ => {
                let phi0 = Tensor::from_vec(phi0, (batch, n), &core.device)?;
                Posterior::Graph(core.posterior.init(&phi0)?.detach())
            }
        };
        Ok(Self {
            core,
            batch,
            weights,
            proj_bias,
            c: vec![0.0; batch * hd],
            h: vec![0.0; batch * hd],
            posterior,
        })
    }

    /// Observes the raw inputs of one step (one row-major (B, d_k) block per input kind) and
    /// draws n_Z samples of q_t with the standard-normal noise `eps` (n_Z, B, n).
    pub fn observe(&mut self, kinds: &[Vec<f32>], eps: &Tensor) -> Result<ActStep> {
        let (b, hd, n) = (self.batch, self.core.hidden, self.core.features);
        let stage = self.core.project_inputs(kinds, b)?;
        let xw: Vec<f32> = stage.xw.flatten_all()?.to_vec1()?;
        lstm_step(&xw, &self.weights.wh, &mut self.c, &mut self.h, b, hd);
        let mut phi: Vec<f32> = (0..b)
            .flat_map(|_| self.proj_bias.iter().copied())
            .collect();
        sgemm(
            b,
            n,
            hd,
            Mat::rows(&self.h, hd),
            Mat::rows(&self.weights.proj, n),
            &mut phi,
            true,
            true,
        );
        let embedded = (0..kinds.len())
            .map(|k| stage.embedding(k))
            .collect::<Result<Vec<_>>>()?;
        let device = &self.core.device;
        Ok(match &mut self.posterior {
            Posterior::Laplace(filter) => {
                let stats = filter.step(&self.weights, &self.c, &self.h, &xw, &phi)?;
                let (z, offsets) = laplace_samples(filter, eps, device)?;
                ActStep {
                    z,
                    embedded,
                    entropy: Some(stats.entropy),
                    kl: Some(stats.kl),
                    laplace: Some((offsets, stats.kl_grad)),
                }
            }
            Posterior::Graph(prev) => {
                let phi = Tensor::from_vec(phi, (b, n), device)?;
                let q = self.core.posterior.init(&phi)?.detach();
                let z = q.sample(eps)?;
                let kl = match q.kl_to(prev)? {
                    Some(kl) => Some(kl.to_vec1::<f32>()?.iter().map(|v| *v as f64).collect()),
                    None => None,
                };
                let entropy = q.entropy()?;
                *prev = q;
                ActStep {
                    z,
                    embedded,
                    entropy,
                    kl,
                    laplace: None,
                }
            }
        })
    }

    /// n_Z samples of the current posterior q_t with the standard-normal noise `eps`
    /// (n_Z, B, n), without stepping.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        match &self.posterior {
            Posterior::Laplace(filter) => Ok(laplace_samples(filter, eps, &self.core.device)?.0),
            Posterior::Graph(q) => q.sample(eps),
        }
    }

    /// Differential entropy of the current posterior q_t per task (None for a point estimate).
    pub fn entropy(&self) -> Result<Option<Vec<f64>>> {
        match &self.posterior {
            Posterior::Laplace(filter) => Ok(Some(filter.entropy())),
            Posterior::Graph(q) => q.entropy(),
        }
    }
}

/// Samples z = μ_t + L_t^{−T} ε of the filter's current posteriors for the noise ε (n_Z, B, n),
/// with the offsets L_t^{−T} ε as plain values (n_Z·B·n).
fn laplace_samples(
    filter: &LaplaceFilter,
    eps: &Tensor,
    device: &candle_core::Device,
) -> Result<(Tensor, Vec<f32>)> {
    let (_, b, n) = eps.dims3()?;
    let offsets = filter.sample_offsets(&eps.flatten_all()?.to_vec1::<f32>()?);
    let means = Tensor::from_vec(filter.means(), (1, b, n), device)?;
    let z = means.broadcast_add(&Tensor::from_vec(offsets.clone(), eps.shape(), device)?)?;
    Ok((z, offsets))
}
