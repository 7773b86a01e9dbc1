//! The Laplace VRNN posterior (paper Sec. 4, App. A.3, Prop. 2, Table 2).
//!
//! q_t = N(μ_t, Λ_t⁻¹) with
//! - μ_t = φ_t (+ stop_grad μ_{t−1} when the mean is accumulated, "sum (μ, Σ)"),
//! - Λ_t = prior_t + Σ_{i ∈ window} J_i J_iᵀ, J_i = ∂ P h'(x_i, (c_t, h)) / ∂h at (c_t, h_t)
//!   (the Jacobian of one LSTM step applied to the past input x_i, from the current carry),
//! - prior_t = Λ_{t−1} when the precision is accumulated ("sum Σ" / "sum (μ, Σ)", k_Z = 1),
//!   otherwise damping·I (stationary or windowed, k_Z = 0); Λ_0 = prior_precision·I,
//! - the diagonal variant keeps diag(Σ_i J_i J_iᵀ) = row sums of J_i∘J_i,
//! - jitter·I is added before the Cholesky factorisation (entropy, KL and sampling use Λ + jitter·I).
//!
//! The precision carries no gradient: it is a statistic of the fitted network (as in the authors'
//! code), so it is computed outside the autograd graph.

use super::config::{Accumulate, LaplaceConfig};
use super::shape::{self, PrecisionShape};
use super::{Covariance, Gaussian, PosteriorFamily, StepInput};
use crate::linalg::upper;
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

pub struct Laplace {
    pub cfg: LaplaceConfig,
}

impl Laplace {
    pub fn new(cfg: LaplaceConfig) -> Self {
        Self { cfg }
    }

    /// Σ_{i ∈ window} J_i J_iᵀ (or its diagonal), as f64 values (B·n·n or B·n).
    fn jacobian_term(&self, input: &StepInput) -> Result<Vec<f64>> {
        let take = self.history_window().min(input.window.len());
        let window = &input.window[input.window.len() - take..];
        let mut acc: Option<Tensor> = None;
        for x in window {
            let j = input.lstm.output_jacobian(x, input.carry, input.proj)?; // (B, n, H)
            let term = shape::of(self.cfg.diagonal).gram(&j)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let acc = acc.ok_or_else(|| {
            anyhow::anyhow!("the Laplace posterior needs at least the current input")
        })?;
        // f32 networks (every lvrnn model) and f64 ones (`posterior::standalone`'s reference).
        Ok(match acc.dtype() {
            candle_core::DType::F64 => acc.flatten_all()?.to_vec1::<f64>()?,
            _ => acc
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| v as f64)
                .collect(),
        })
    }
}

impl PosteriorFamily for Laplace {
    fn name(&self) -> String {
        self.cfg.label()
    }

    fn laplace(&self) -> Option<&LaplaceConfig> {
        Some(&self.cfg)
    }

    fn history_window(&self) -> usize {
        if self.cfg.window == 0 {
            usize::MAX
        } else {
            self.cfg.window
        }
    }

    /// q_0 = N(φ_0, prior_precision·I): φ_0 is the output at the initial carry.
    fn init(&self, phi0: &Tensor) -> Result<Gaussian> {
        let (b, n) = phi0.dims2()?;
        let values = identity_values(b, n, self.cfg.diagonal, self.cfg.prior_precision);
        let p = Precision::new(values, b, n, self.cfg.diagonal, self.cfg.jitter)?;
        Ok(Gaussian {
            mean: phi0.clone(),
            cov: Covariance::Precision(p),
        })
    }

    fn step(&self, input: &StepInput, prev: &Gaussian) -> Result<Gaussian> {
        let (b, n) = input.phi.dims2()?;
        let mut values = self.jacobian_term(input)?;
        match (self.cfg.accumulate, &prev.cov) {
            (Accumulate::None, _) => {
                let prior = identity_values(b, n, self.cfg.diagonal, self.cfg.damping);
                values.iter_mut().zip(prior).for_each(|(v, p)| *v += p);
            }
            (_, Covariance::Precision(p)) => {
                if p.values.len() != values.len() {
                    bail!("previous Laplace precision has another shape");
                }
                values
                    .iter_mut()
                    .zip(p.values.iter())
                    .for_each(|(v, p)| *v += p);
            }
            _ => bail!("the Laplace posterior can only accumulate a Laplace precision"),
        }
        let mean = match self.cfg.accumulates_mean() {
            true => input.phi.add(&prev.mean.detach())?,
            false => input.phi.clone(),
        };
        let p = Precision::new(values, b, n, self.cfg.diagonal, self.cfg.jitter)?;
        Ok(Gaussian {
            mean,
            cov: Covariance::Precision(p),
        })
    }
}

/// scale·I for each of `b` tasks.
fn identity_values(b: usize, n: usize, diagonal: bool, scale: f64) -> Vec<f64> {
    shape::of(diagonal).scaled_identity(n, scale).repeat(b)
}

/// A batch of precision matrices Λ (no gradient), with the factor of Λ + jitter·I.
#[derive(Clone)]
pub struct Precision {
    pub batch: usize,
    pub n: usize,
    /// Full n×n matrices or their diagonals.
    pub shape: &'static dyn PrecisionShape,
    pub jitter: f64,
    /// Λ without jitter: `shape.size(n)` numbers per task.
    pub values: Arc<Vec<f64>>,
    /// The factor of Λ + jitter·I per task (see `posterior::shape`).
    chol: Arc<Vec<f64>>,
    logdet: Arc<Vec<f64>>,
}

impl Precision {
    pub fn new(
        values: Vec<f64>,
        batch: usize,
        n: usize,
        diagonal: bool,
        jitter: f64,
    ) -> Result<Self> {
        let shape = shape::of(diagonal);
        let size = shape.size(n);
        if values.len() != batch * size {
            bail!(
                "{} precision numbers for {batch} tasks of {size} each",
                values.len()
            );
        }
        let results: Vec<Result<(Vec<f64>, f64)>> = values
            .par_chunks(size.max(1))
            .with_min_len(8)
            .enumerate()
            .map(|(k, m)| {
                let mut factor = vec![0.0; size];
                let ld = shape.factorise(m, n, jitter, &mut factor).map_err(|e| {
                    anyhow::anyhow!("Laplace precision of task {k} is not positive definite: {e}")
                })?;
                Ok((factor, ld))
            })
            .collect();
        let mut chol = Vec::with_capacity(values.len());
        let mut logdet = Vec::with_capacity(batch);
        for r in results {
            let (c, ld) = r?;
            chol.extend(c);
            logdet.push(ld);
        }
        Ok(Self {
            batch,
            n,
            shape,
            jitter,
            values: Arc::new(values),
            chol: Arc::new(chol),
            logdet: Arc::new(logdet),
        })
    }

    /// ln det(Λ + jitter·I) per task.
    pub fn logdet(&self) -> &[f64] {
        &self.logdet
    }

    /// Task k's numbers of Λ and of its factor.
    fn task(&self, k: usize) -> (&[f64], &[f64]) {
        let size = self.shape.size(self.n);
        (
            &self.values[k * size..(k + 1) * size],
            &self.chol[k * size..(k + 1) * size],
        )
    }

    /// Λ + jitter·I as a constant f32 tensor of `shape.dims` ((B, n, n), or (B, n)) on `device`.
    pub fn jittered_tensor(&self, device: &Device) -> Result<Tensor> {
        let (n, size) = (self.n, self.shape.size(self.n));
        let mut v: Vec<f32> = self.values.iter().map(|x| *x as f32).collect();
        for k in 0..self.batch {
            for i in 0..n {
                v[k * size + self.shape.diagonal_index(n, i)] += self.jitter as f32;
            }
        }
        Ok(Tensor::from_vec(v, self.shape.dims(self.batch, n), device)?)
    }

    /// The noise part of reparameterised samples, L^{−T} ε, for ε of shape (n_Z, B, n).
    pub fn noise_offsets(&self, eps: &Tensor) -> Result<Tensor> {
        let (nz, b, n) = eps.dims3()?;
        if b != self.batch || n != self.n {
            bail!(
                "noise of shape {:?} for a posterior batch of ({}, {})",
                eps.dims(),
                self.batch,
                self.n
            );
        }
        let e: Vec<f32> = eps.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; e.len()];
        out.par_chunks_mut(n)
            .with_min_len(16)
            .zip(e.par_chunks(n))
            .enumerate()
            .for_each(|(row, (o, e))| {
                let mut x: Vec<f64> = e.iter().map(|v| *v as f64).collect();
                self.shape.solve_factor_t(self.task(row % b).1, n, &mut x);
                o.iter_mut().zip(x).for_each(|(o, v)| *o = v as f32);
            });
        Ok(Tensor::from_vec(out, (nz, b, n), eps.device())?)
    }

    /// Λ + jitter·I as a constant f64 tensor (the f64 reference of `posterior::standalone`).
    pub fn jittered_tensor_f64(&self, device: &Device) -> Result<Tensor> {
        let (n, size) = (self.n, self.shape.size(self.n));
        let mut v: Vec<f64> = self.values.to_vec();
        for k in 0..self.batch {
            for i in 0..n {
                v[k * size + self.shape.diagonal_index(n, i)] += self.jitter;
            }
        }
        Ok(Tensor::from_vec(v, self.shape.dims(self.batch, n), device)?)
    }

    /// dᵀ(Λ + jitter·I)d per task for d (B, n), differentiable in d (in d's dtype, f32 or f64).
    pub fn quadratic_form(&self, d: &Tensor) -> Result<Tensor> {
        let jittered = match d.dtype() {
            candle_core::DType::F64 => self.jittered_tensor_f64(d.device())?,
            _ => self.jittered_tensor(d.device())?,
        };
        self.shape.quadratic_form(d, &jittered)
    }

    /// The θ-independent part of KL(self ‖ prev): ½[tr(Λ_prev Λ⁻¹) − n + ln det Λ − ln det Λ_prev].
    /// Both precisions have the same shape (`Laplace::step` refuses anything else).
    pub fn kl_constant_part(&self, prev: &Precision) -> Vec<f64> {
        let n = self.n;
        (0..self.batch)
            .into_par_iter()
            .with_min_len(8)
            .map(|k| {
                let trace = self.shape.trace_ratio(self.task(k).1, prev.task(k).1, n);
                0.5 * (trace - n as f64 + self.logdet[k] - prev.logdet[k])
            })
            .collect()
    }

    /// Σ = (Λ + jitter·I)⁻¹ per task, dense row-major.
    pub fn covariance(&self) -> Vec<Vec<f64>> {
        let n = self.n;
        (0..self.batch)
            .map(|k| {
                let u = self.shape.dense(self.task(k).1, n);
                let mut sigma = vec![0.0; n * n];
                let mut col = vec![0.0; n];
                for j in 0..n {
                    col.iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = if i == j { 1.0 } else { 0.0 });
                    // Σ e_j = U⁻¹ U⁻ᵀ e_j.
                    upper::solve_upper_transposed(&u, n, &mut col);
                    upper::solve_upper(&u, n, &mut col);
                    for i in 0..n {
                        sigma[i * n + j] = col[i];
                    }
                }
                sigma
            })
            .collect()
    }

    /// The precision of task k as a dense n×n matrix (without jitter).
    pub fn dense(&self, k: usize) -> Vec<f64> {
        self.shape.dense(self.task(k).0, self.n)
    }
}
