//! The VRNN baseline (paper App. B.2): a linear head maps φ_t to (μ_t, s_t, L_t) with L_t
//! strictly lower triangular; A = L − Lᵀ is skew-symmetric, U = (I − A)(I + A)⁻¹ (Cayley map) is
//! orthogonal, and Σ_t = U diag(exp s_t) Uᵀ. The diagonal variant uses Σ_t = diag(exp s_t).
//! Fully differentiable; means and covariances are not accumulated.
//!
//! Parameters: `vrnn.mean` (n→n), `vrnn.log_s` (n→n) and, for the full variant, `vrnn.tri`
//! (n→n·n, of which only the strictly-lower entries of the reshaped (n, n) output are used).

use super::{Covariance, Gaussian, PosteriorFamily, StepInput};
use crate::linalg;
use crate::nn::Params;
use crate::nn::mlp::Linear;
use anyhow::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

/// Initial log-variance of the VRNN posterior (bias of `vrnn.log_s`).
pub const INIT_LOG_VAR: f64 = -2.0;

pub struct Vrnn {
    mean: Linear,
    log_s: Linear,
    tri: Option<Linear>,
    pub diagonal: bool,
}

impl Vrnn {
    pub fn new(p: &mut Params, n: usize, diagonal: bool, rng: &mut ChaCha8Rng) -> Result<Self> {
        let mean = Linear::new(p, "vrnn.mean", n, n, rng)?;
        // Small initial weights (U ≈ I) and an initial variance of e^{INIT_LOG_VAR}: the model
        // starts close to its point estimate rather than drowning φ in unit noise.
        let log_s = Linear::with_init(
            p,
            "vrnn.log_s",
            n,
            n,
            0.1 / (n as f64).sqrt(),
            INIT_LOG_VAR as f32,
            rng,
        )?;
        let tri = if diagonal {
            None
        } else {
            Some(Linear::with_bound(
                p,
                "vrnn.tri",
                n,
                n * n,
                0.1 / (n as f64).sqrt(),
                rng,
            )?)
        };
        Ok(Self {
            mean,
            log_s,
            tri,
            diagonal,
        })
    }

    /// (μ, s, L) ↦ N(μ, U diag(exp s) Uᵀ).
    fn head(&self, phi: &Tensor) -> Result<Gaussian> {
        let mean = self.mean.forward(phi)?;
        let log_s = self.log_s.forward(phi)?;
        let u = match &self.tri {
            None => None,
            Some(tri) => {
                let (b, n) = phi.dims2()?;
                // The fused op reads only the strictly lower part of the head's output.
                Some(linalg::cayley_lower(
                    &tri.forward(phi)?.reshape((b, n, n))?,
                )?)
            }
        };
        Ok(Gaussian {
            mean,
            cov: Covariance::Spectral { u, log_s },
        })
    }
}

/// The Cayley map U = (I − A)(I + A)⁻¹ of a batch of skew-symmetric A (B, n, n): orthogonal.
/// Composed of plain tensor ops: the reference the fused [`linalg::cayley_lower`] (which the
/// head uses) is tested against.
pub fn cayley(a: &Tensor, eye: &Tensor) -> Result<Tensor> {
    let inv = linalg::inverse(&a.broadcast_add(eye)?)?;
    Ok(a.neg()?.broadcast_add(eye)?.matmul(&inv)?)
}

impl PosteriorFamily for Vrnn {
    fn name(&self) -> String {
        if self.diagonal {
            "vrnn-diag".into()
        } else {
            "vrnn-full".into()
        }
    }

    fn init(&self, phi0: &Tensor) -> Result<Gaussian> {
        self.head(phi0)
    }

    fn step(&self, input: &StepInput, _prev: &Gaussian) -> Result<Gaussian> {
        self.head(input.phi)
    }
}
