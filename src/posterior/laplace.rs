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
use super::{Covariance, Gaussian, PosteriorFamily, StepInput};
use crate::linalg;
use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
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
            let term = if self.cfg.diagonal {
                j.sqr()?.sum(D::Minus1)?
            } else {
                j.matmul(&j.t()?)?
            };
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let acc = acc.ok_or_else(|| {
            anyhow::anyhow!("the Laplace posterior needs at least the current input")
        })?;
        Ok(acc
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v as f64)
            .collect())
    }
}

impl PosteriorFamily for Laplace {
    fn name(&self) -> String {
        self.cfg.label()
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
                if p.diagonal != self.cfg.diagonal || p.values.len() != values.len() {
                    bail!("previous Laplace precision has another shape");
                }
                values
                    .iter_mut()
                    .zip(p.values.iter())
                    .for_each(|(v, p)| *v += p);
            }
            _ => bail!("the Laplace posterior can only accumulate a Laplace precision"),
        }
        let mean = match self.cfg.accumulate {
            Accumulate::MuSigma => input.phi.add(&prev.mean.detach())?,
            _ => input.phi.clone(),
        };
        let p = Precision::new(values, b, n, self.cfg.diagonal, self.cfg.jitter)?;
        Ok(Gaussian {
            mean,
            cov: Covariance::Precision(p),
        })
    }
}

fn identity_values(b: usize, n: usize, diagonal: bool, scale: f64) -> Vec<f64> {
    if diagonal {
        return vec![scale; b * n];
    }
    let mut v = vec![0.0; b * n * n];
    for k in 0..b {
        for i in 0..n {
            v[k * n * n + i * n + i] = scale;
        }
    }
    v
}

/// A batch of precision matrices Λ (no gradient), with the Cholesky factor of Λ + jitter·I.
#[derive(Clone)]
pub struct Precision {
    pub batch: usize,
    pub n: usize,
    pub diagonal: bool,
    pub jitter: f64,
    /// Λ without jitter: B·n·n row-major (full) or B·n (diagonal).
    pub values: Arc<Vec<f64>>,
    /// Lower Cholesky factor of Λ + jitter·I (full), or √(λ + jitter) (diagonal).
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
        let (chol, logdet): (Vec<f64>, Vec<f64>) = if diagonal {
            let mut bad = None;
            let chol: Vec<f64> = values
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let x = v + jitter;
                    if (x.is_nan() || x <= 0.0) && bad.is_none() {
                        bad = Some(k / n);
                    }
                    x.sqrt()
                })
                .collect();
            if let Some(b) = bad {
                bail!("Laplace precision of task {b} is not positive (non-finite Jacobian?)");
            }
            let logdet = chol
                .chunks(n)
                .map(|c| c.iter().map(|x| 2.0 * x.ln()).sum())
                .collect();
            (chol, logdet)
        } else {
            let nn = n * n;
            let results: Vec<Result<(Vec<f64>, f64)>> = values
                .par_chunks(nn)
                .with_min_len(8)
                .enumerate()
                .map(|(k, m)| {
                    let mut a = m.to_vec();
                    for i in 0..n {
                        a[i * n + i] += jitter;
                    }
                    linalg::cholesky_in_place(&mut a, n).map_err(|e| {
                        anyhow::anyhow!(
                            "Laplace precision of task {k} is not positive definite: {e}"
                        )
                    })?;
                    let ld = (0..n).map(|i| 2.0 * a[i * n + i].ln()).sum();
                    Ok((a, ld))
                })
                .collect();
            let mut chol = Vec::with_capacity(values.len());
            let mut logdet = Vec::with_capacity(batch);
            for r in results {
                let (c, ld) = r?;
                chol.extend(c);
                logdet.push(ld);
            }
            (chol, logdet)
        };
        Ok(Self {
            batch,
            n,
            diagonal,
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

    /// Λ + jitter·I as a dense (B, n, n) f32 tensor (constant), or (B, n) for the diagonal.
    pub fn jittered_tensor(&self) -> Result<Tensor> {
        let n = self.n;
        let mut v: Vec<f32> = self.values.iter().map(|x| *x as f32).collect();
        if self.diagonal {
            v.iter_mut().for_each(|x| *x += self.jitter as f32);
            return Ok(Tensor::from_vec(v, (self.batch, n), &Device::Cpu)?);
        }
        for k in 0..self.batch {
            for i in 0..n {
                v[k * n * n + i * n + i] += self.jitter as f32;
            }
        }
        Ok(Tensor::from_vec(v, (self.batch, n, n), &Device::Cpu)?)
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
                let k = row % b;
                let mut x: Vec<f64> = e.iter().map(|v| *v as f64).collect();
                if self.diagonal {
                    x.iter_mut()
                        .zip(&self.chol[k * n..(k + 1) * n])
                        .for_each(|(v, s)| *v /= s);
                } else {
                    linalg::solve_upper_t(&self.chol[k * n * n..(k + 1) * n * n], n, &mut x);
                }
                o.iter_mut().zip(x).for_each(|(o, v)| *o = v as f32);
            });
        Ok(Tensor::from_vec(out, (nz, b, n), &Device::Cpu)?)
    }

    /// dᵀ(Λ + jitter·I)d per task for d (B, n), differentiable in d.
    pub fn quadratic_form(&self, d: &Tensor) -> Result<Tensor> {
        let lam = self.jittered_tensor()?;
        if self.diagonal {
            return Ok(d.sqr()?.mul(&lam)?.sum(D::Minus1)?);
        }
        let ld = d.unsqueeze(1)?.matmul(&lam)?.squeeze(1)?; // (B, n)
        Ok(ld.mul(d)?.sum(D::Minus1)?)
    }

    /// The θ-independent part of KL(self ‖ prev): ½[tr(Λ_prev Λ⁻¹) − n + ln det Λ − ln det Λ_prev].
    pub fn kl_constant_part(&self, prev: &Precision) -> Vec<f64> {
        let n = self.n;
        (0..self.batch)
            .into_par_iter()
            .with_min_len(8)
            .map(|k| {
                let trace = if self.diagonal && prev.diagonal {
                    (0..n)
                        .map(|i| (prev.chol[k * n + i] / self.chol[k * n + i]).powi(2))
                        .sum::<f64>()
                } else {
                    // tr(Λp Λ⁻¹) = ‖L⁻¹ Lp‖²_F with Λ = L Lᵀ, Λp = Lp Lpᵀ.
                    linalg::frobenius_sq_lower_solve(&self.dense_chol(k), &prev.dense_chol(k), n)
                };
                0.5 * (trace - n as f64 + self.logdet[k] - prev.logdet[k])
            })
            .collect()
    }

    /// The Cholesky factor of task k as a dense n×n matrix.
    fn dense_chol(&self, k: usize) -> Vec<f64> {
        let n = self.n;
        if !self.diagonal {
            return self.chol[k * n * n..(k + 1) * n * n].to_vec();
        }
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = self.chol[k * n + i];
        }
        m
    }

    /// Σ = (Λ + jitter·I)⁻¹ per task, dense row-major.
    pub fn covariance(&self) -> Vec<Vec<f64>> {
        let n = self.n;
        (0..self.batch)
            .map(|k| {
                let l = self.dense_chol(k);
                let mut sigma = vec![0.0; n * n];
                let mut col = vec![0.0; n];
                for j in 0..n {
                    col.iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = if i == j { 1.0 } else { 0.0 });
                    linalg::solve_lower(&l, n, &mut col);
                    linalg::solve_upper_t(&l, n, &mut col);
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
        let n = self.n;
        if !self.diagonal {
            return self.values[k * n * n..(k + 1) * n * n].to_vec();
        }
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = self.values[k * n + i];
        }
        m
    }
}
