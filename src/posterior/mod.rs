//! Task posteriors q(Z_t | H_<t): three families behind one trait, and the Gaussian helpers
//! they share (reparameterised sampling, differential entropy, KL(q_t ‖ stop_grad q_{t−1})).
//!
//! - [`point::Point`]: the RNN baseline, z = φ_t (no distribution, no KL term).
//! - [`vrnn::Vrnn`]: learned Gaussian with Cayley-map spectral covariance (paper App. B.2).
//! - [`laplace::Laplace`]: the Laplace VRNN (paper Sec. 4, App. A.3), every Table-2 variant.

pub mod config;
pub mod filter;
pub mod laplace;
pub mod point;
pub mod shape;
pub mod spectral_kl;
pub mod standalone;
pub mod vrnn;

pub use config::{Accumulate, LaplaceConfig, PosteriorConfig};

use crate::nn::lstm::{Carry, Lstm};
use crate::nn::mlp::Linear;
use anyhow::Result;
use candle_core::{D, Tensor};
use laplace::Precision;

/// ½·ln(2πe), the per-dimension entropy of a standard normal.
pub const HALF_LN_2PI_E: f64 = 1.418_938_533_204_672_7;

/// A batch of Gaussian posteriors N(μ, Σ) over z ∈ R^n, one per task.
#[derive(Clone)]
pub struct Gaussian {
    /// μ, (B, n); carries gradients.
    pub mean: Tensor,
    pub cov: Covariance,
}

/// How the covariance is represented by each family.
#[derive(Clone)]
pub enum Covariance {
    /// A point estimate (zero covariance): the RNN baseline.
    Point,
    /// Laplace: a precision matrix, a statistic of the fitted network that carries no gradient.
    Precision(Precision),
    /// VRNN: Σ = U diag(exp s) Uᵀ with U orthogonal (None for the diagonal variant, U = I);
    /// differentiable. `log_s` is (B, n), `u` is (B, n, n).
    Spectral { u: Option<Tensor>, log_s: Tensor },
}

/// Everything a family may use to form q_t at one step.
pub struct StepInput<'a> {
    /// φ_t = P h_t + p_b, (B, n), the RNN's projected output.
    pub phi: &'a Tensor,
    /// The carry (c_t, h_t) after the step.
    pub carry: &'a Carry,
    pub lstm: &'a Lstm,
    pub proj: &'a Linear,
    /// The last inputs to the core (embedded), oldest first, the current x_t last.
    pub window: &'a [Tensor],
}

/// [`StepInput::window`] after x_t arrives: x_t appended to `window` and the oldest inputs
/// dropped until at most `keep` remain (none for `keep` = 0); returns the window's inputs,
/// oldest first.
pub fn slide_window(
    window: &mut std::collections::VecDeque<Tensor>,
    x: Tensor,
    keep: usize,
) -> Vec<Tensor> {
    window.push_back(x);
    while window.len() > keep {
        window.pop_front();
    }
    window.iter().cloned().collect()
}

/// The full VRNN's U = cayley(L) of some rows, already computed: the rows of steps `range` of
/// `steps`, each step's U a (B, n, n) f32 tensor.
#[derive(Clone)]
pub struct KnownCayley {
    pub steps: std::sync::Arc<Vec<Tensor>>,
    pub range: std::ops::Range<usize>,
}

/// One posterior family. `init` gives the prior q_0 from the output at the initial carry;
/// `step` gives q_t from the current step's input and the previous posterior q_{t−1}. The
/// per-step reference calls these; the fast paths also ask the family what they need to know
/// about it (`laplace`, `full_spectral`) instead of matching on its configuration.
pub trait PosteriorFamily: Send + Sync {
    fn name(&self) -> String;
    fn init(&self, phi0: &Tensor) -> Result<Gaussian>;
    /// `init` for rows whose Cayley factors U are already known ([`KnownCayley`]: the
    /// rollout's, computed at the same parameters), so that only the full VRNN's backward runs;
    /// the other families have none and ignore them.
    fn init_known(&self, phi0: &Tensor, _known: KnownCayley) -> Result<Gaussian> {
        self.init(phi0)
    }
    fn step(&self, input: &StepInput, prev: &Gaussian) -> Result<Gaussian>;
    /// How many past core inputs `step` needs in `StepInput::window` (0: none; usize::MAX: all).
    fn history_window(&self) -> usize {
        0
    }
    /// Whether KL(q_t ‖ q_{t−1}) and the entropy are defined (false for the point estimate).
    fn is_bayesian(&self) -> bool {
        true
    }
    /// The Laplace VRNN's settings (its Table-2 variant); None for every other family. The
    /// fast paths (`agent::acting`, `agent::replay`, `train::supervised`) run a family that
    /// has them as the filter of [`filter`] on plain numbers instead of calling `step`.
    fn laplace(&self) -> Option<&LaplaceConfig> {
        None
    }
    /// Whether each q_t holds an n×n matrix in the autograd graph (the full VRNN's Cayley
    /// factor U), so that a replay forms the posteriors of a sequence a few steps at a time
    /// instead of all at once (`agent::replay::CHUNK_ELEMENTS`).
    fn full_spectral(&self) -> bool {
        false
    }
}

impl Gaussian {
    /// The full-covariance VRNN's (U, s) when this posterior is one in f32 (what the fused
    /// replay ops take); None otherwise.
    pub fn full_spectral_f32(&self) -> Option<(&Tensor, &Tensor)> {
        match &self.cov {
            Covariance::Spectral { u: Some(u), log_s } if u.dtype() == candle_core::DType::F32 => {
                Some((u, log_s))
            }
            _ => None,
        }
    }

    pub fn batch(&self) -> Result<usize> {
        Ok(self.mean.dim(0)?)
    }

    pub fn dim(&self) -> Result<usize> {
        Ok(self.mean.dim(1)?)
    }

    /// Reparameterised samples z = μ + Σ^{1/2} ε for ε of shape (n_Z, B, n) (paper Sec. 4,
    /// posterior predictive): Laplace z = μ + L^{−T} ε with Λ = L Lᵀ; VRNN
    /// z = μ + U diag(exp(s/2)) ε; point estimate z = μ. Returns (n_Z, B, n).
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        let mean = self.mean.unsqueeze(0)?;
        match &self.cov {
            Covariance::Point => Ok(mean.broadcast_as(eps.shape())?.contiguous()?),
            Covariance::Precision(p) => {
                let offsets = p.noise_offsets(eps)?;
                Ok(mean.broadcast_add(&offsets)?)
            }
            Covariance::Spectral { u, log_s } => {
                let scaled = eps.broadcast_mul(&(log_s * 0.5)?.exp()?.unsqueeze(0)?)?; // (nz,B,n)
                let offsets = match u {
                    None => scaled,
                    Some(u) => {
                        let nz = eps.dim(0)?;
                        let (b, n) = (u.dim(0)?, u.dim(1)?);
                        // (B, n, n) · (B, n, nz) → (B, n, nz)
                        let cols = scaled.permute((1, 2, 0))?.contiguous()?;
                        let out = u.matmul(&cols)?;
                        debug_assert_eq!(out.dims(), &[b, n, nz]);
                        out.permute((2, 0, 1))?.contiguous()?
                    }
                };
                Ok(mean.broadcast_add(&offsets)?)
            }
        }
    }

    /// Differential entropy per task, ½ n ln(2πe) + ½ ln det Σ; None for a point estimate.
    pub fn entropy(&self) -> Result<Option<Vec<f64>>> {
        let n = self.dim()? as f64;
        match &self.cov {
            Covariance::Point => Ok(None),
            Covariance::Precision(p) => Ok(Some(
                p.logdet()
                    .iter()
                    .map(|ld| n * HALF_LN_2PI_E - 0.5 * ld)
                    .collect(),
            )),
            Covariance::Spectral { log_s, .. } => {
                let sums: Vec<f32> = log_s.sum(D::Minus1)?.to_vec1()?;
                Ok(Some(
                    sums.iter()
                        .map(|s| n * HALF_LN_2PI_E + 0.5 * *s as f64)
                        .collect(),
                ))
            }
        }
    }

    /// KL(q_t ‖ stop_grad q_{t−1}) per task, (B,), differentiable with respect to `self` only:
    /// ½[tr(Σ_{t−1}⁻¹Σ_t) + (μ_t−μ_{t−1})ᵀΣ_{t−1}⁻¹(μ_t−μ_{t−1}) − n + ln det Σ_{t−1} − ln det Σ_t]
    /// (the complexity penalty of Eqs. 2 and 3). None for a point estimate.
    pub fn kl_to(&self, prev: &Gaussian) -> Result<Option<Tensor>> {
        let d = self.mean.sub(&prev.mean.detach())?;
        let n = self.dim()? as f64;
        match (&self.cov, &prev.cov) {
            (Covariance::Point, _) | (_, Covariance::Point) => Ok(None),
            (Covariance::Precision(cur), Covariance::Precision(pre)) => {
                // Only the quadratic term depends on θ (the precisions carry no gradient).
                let quad = pre.quadratic_form(&d)?;
                let constant = cur.kl_constant_part(pre);
                let constant = match quad.dtype() {
                    candle_core::DType::F64 => {
                        Tensor::from_vec(constant, quad.dims(), quad.device())?
                    }
                    _ => {
                        let c: Vec<f32> = constant.iter().map(|v| *v as f32).collect();
                        Tensor::from_vec(c, quad.dims(), quad.device())?
                    }
                };
                Ok(Some(((quad * 0.5)? + constant)?))
            }
            (Covariance::Spectral { u, log_s }, Covariance::Spectral { u: up, log_s: lsp }) => {
                let lsp = lsp.detach();
                let inv_sp = lsp.neg()?.exp()?; // (B, n)
                // tr(Σp⁻¹ Σ) = Σ_ij R_ij² exp(s_j − sp_i) with R = Upᵀ U, summed as
                // Σ_i exp(−sp_i) (R∘R · exp s)_i: two (B, n, n) tensors in the graph, not four.
                let trace = match (u, up) {
                    (Some(u), Some(up)) => {
                        let r = up.detach().transpose(1, 2)?.matmul(u)?; // (B, n, n)
                        let weighted = r.sqr()?.matmul(&log_s.exp()?.unsqueeze(2)?)?; // (B, n, 1)
                        weighted.squeeze(2)?.mul(&inv_sp)?.sum(D::Minus1)?
                    }
                    (None, None) => log_s.exp()?.mul(&inv_sp)?.sum(D::Minus1)?,
                    _ => anyhow::bail!("KL between a full and a diagonal VRNN posterior"),
                };
                let dp = match up {
                    Some(up) => up
                        .detach()
                        .transpose(1, 2)?
                        .matmul(&d.unsqueeze(2)?)?
                        .squeeze(2)?,
                    None => d.clone(),
                };
                let quad = dp.sqr()?.mul(&inv_sp)?.sum(D::Minus1)?;
                let logdet = lsp.sum(D::Minus1)?.sub(&log_s.sum(D::Minus1)?)?;
                Ok(Some(((trace + quad)? + logdet)?.affine(0.5, -0.5 * n)?))
            }
            _ => anyhow::bail!("KL between posteriors of different families"),
        }
    }

    /// A copy with every tensor detached (used as the stop-gradient prior).
    pub fn detach(&self) -> Gaussian {
        let cov = match &self.cov {
            Covariance::Spectral { u, log_s } => Covariance::Spectral {
                u: u.as_ref().map(|u| u.detach()),
                log_s: log_s.detach(),
            },
            c => c.clone(),
        };
        Gaussian {
            mean: self.mean.detach(),
            cov,
        }
    }

    /// The covariance Σ (B, n, n) as plain numbers, for inspection (None for a point estimate).
    pub fn covariance_matrix(&self) -> Result<Option<Vec<Vec<f64>>>> {
        match &self.cov {
            Covariance::Point => Ok(None),
            Covariance::Precision(p) => Ok(Some(p.covariance())),
            Covariance::Spectral { u, log_s } => {
                let s: Vec<Vec<f32>> = log_s.exp()?.to_vec2()?;
                let n = s[0].len();
                let us: Option<Vec<Vec<Vec<f32>>>> = match u {
                    Some(u) => Some(u.to_vec3()?),
                    None => None,
                };
                let mut out = vec![];
                for (b, sb) in s.iter().enumerate() {
                    let mut m = vec![0.0; n * n];
                    for i in 0..n {
                        for j in 0..n {
                            m[i * n + j] = match &us {
                                None => (if i == j { sb[i] } else { 0.0 }) as f64,
                                Some(us) => (0..n)
                                    .map(|k| us[b][i][k] as f64 * sb[k] as f64 * us[b][j][k] as f64)
                                    .sum(),
                            };
                        }
                    }
                    out.push(m);
                }
                Ok(Some(out))
            }
        }
    }
}

/// Builds the family a configuration names; the VRNN registers its head in `params`.
pub fn build(
    cfg: &PosteriorConfig,
    params: &mut crate::nn::Params,
    feature_dim: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Box<dyn PosteriorFamily>> {
    Ok(match cfg {
        PosteriorConfig::Rnn => Box::new(point::Point),
        PosteriorConfig::Vrnn { diagonal } => {
            Box::new(vrnn::Vrnn::new(params, feature_dim, *diagonal, rng)?)
        }
        PosteriorConfig::Laplace(c) => Box::new(laplace::Laplace::new(c.clone())),
    })
}
