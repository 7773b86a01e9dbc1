//! The Laplace posterior as a filter over plain numbers: every statistic of q_t that carries no
//! gradient (paper Sec. 4, App. A.3, Table 2), computed once per update and outside the graph.
//!
//! Per task b and step t, from the LSTM's carry (c_t, h_t), the input projections
//! xw_i = x_i W_x + b of the window and the projected output φ_t (all plain values):
//! - J_i = Pᵀ ∂h'(x_i, (c_t, h))/∂h at h_t, formed as D = ∂h'/∂h = Σ_gate diag(a_gate) W_gateᵀ
//!   (4H² multiply-adds) and then one (n×H)(H×H) product, a quarter of the work of pushing
//!   Pᵀ·diag(a) through all four gate blocks (DESIGN "The model" gives a_gate);
//! - Λ_t = prior_t + Σ_i J_i J_iᵀ (diagonal variant: row sums of J_i∘J_i), prior_t = Λ_{t−1}
//!   (accumulated) or damping·I; the Cholesky factor L_t of Λ_t + jitter·I and ln det;
//! - μ_t = φ_t (+ μ_{t−1} when the mean is accumulated);
//! - the parts of KL(q_t ‖ q_{t−1}) = ½ dᵀ Λ̃_{t−1} d + ½[tr(Λ̃_{t−1} Λ̃_t⁻¹) − n + ln det Λ̃_t
//!   − ln det Λ̃_{t−1}], d = μ_t − μ_{t−1}, Λ̃ = Λ + jitter·I: the constant bracket, and the
//!   vector v = Λ̃_{t−1} d, which is the gradient of the quadratic term with respect to μ_t at
//!   the current parameters (Λ̃_{t−1} and μ_{t−1} are held fixed by the stop-gradient);
//! - sample offsets L_t^{−T} ε for given noise ε (so that z = μ_t + L_t^{−T} ε).
//!
//! The graph then needs only μ_t with gradient (see `agent::replay`). The per-step reference
//! (`posterior::laplace`, tensors and `Precision`) is what `tests/fast_path.rs` checks this
//! against, step by step and for every Table-2 variant.

use super::HALF_LN_2PI_E;
use super::config::{Accumulate, LaplaceConfig};
use crate::linalg;
use crate::nn::kernels::{Mat, activate_gates, sgemm};
use anyhow::{Result, anyhow};
use rayon::prelude::*;

/// The network weights the Jacobian needs, as plain row-major values.
pub struct JacobianWeights {
    pub hidden: usize,
    pub features: usize,
    /// W_h (H, 4H).
    pub wh: Vec<f32>,
    /// W_hᵀ per gate block: row gH + j holds column gH + j of W_h (4H, H).
    wh_t: Vec<f32>,
    /// P (H, n), stored (in, out).
    pub proj: Vec<f32>,
}

impl JacobianWeights {
    pub fn new(wh: Vec<f32>, proj: Vec<f32>, hidden: usize, features: usize) -> Self {
        let g4 = 4 * hidden;
        let mut wh_t = vec![0f32; g4 * hidden];
        for m in 0..hidden {
            for col in 0..g4 {
                wh_t[col * hidden + m] = wh[m * g4 + col];
            }
        }
        Self {
            hidden,
            features,
            wh,
            wh_t,
            proj,
        }
    }
}

/// One task's filter state.
struct TaskState {
    /// Λ without jitter: n·n (full) or n (diagonal).
    lambda: Vec<f64>,
    /// Cholesky factor of Λ + jitter·I (full), or √(λ + jitter) (diagonal).
    chol: Vec<f64>,
    logdet: f64,
    mean: Vec<f32>,
    /// The window's input projections xw_i (4H each), oldest first.
    window: Vec<Vec<f32>>,
    // Scratch space (kept to avoid allocations per step).
    d: Vec<f32>,
    j: Vec<f32>,
    jj: Vec<f32>,
    z: Vec<f32>,
}

/// What one filter step gives per task (row-major over the batch).
#[derive(Default, Clone)]
pub struct StepStats {
    /// v = (Λ_{t−1} + jitter·I)(μ_t − μ_{t−1}), (B·n).
    pub kl_grad: Vec<f32>,
    /// ½[tr(Λ̃_{t−1} Λ̃_t⁻¹) − n + ln det Λ̃_t − ln det Λ̃_{t−1}] per task.
    pub kl_const: Vec<f64>,
    /// KL(q_t ‖ q_{t−1}) per task (the quadratic term included).
    pub kl: Vec<f64>,
    /// Differential entropy of q_t per task.
    pub entropy: Vec<f64>,
}

/// A batch of Laplace posteriors stepped in time (see the module documentation).
pub struct LaplaceFilter {
    cfg: LaplaceConfig,
    n: usize,
    tasks: Vec<TaskState>,
}

impl LaplaceFilter {
    /// q_0 = N(φ_0, prior_precision·I) for each task; `phi0` is (B·n).
    pub fn new(
        cfg: &LaplaceConfig,
        phi0: &[f32],
        batch: usize,
        w: &JacobianWeights,
    ) -> Result<Self> {
        let n = w.features;
        let (h, g4) = (w.hidden, 4 * w.hidden);
        let size = if cfg.diagonal { n } else { n * n };
        let tasks = (0..batch)
            .map(|b| {
                let lambda = scaled_identity(n, cfg.diagonal, cfg.prior_precision);
                let mut t = TaskState {
                    chol: vec![0.0; size],
                    lambda,
                    logdet: 0.0,
                    mean: phi0[b * n..(b + 1) * n].to_vec(),
                    window: vec![],
                    d: vec![0.0; h * h],
                    j: vec![0.0; n * h],
                    jj: vec![0.0; if cfg.diagonal { 0 } else { n * n }],
                    z: vec![0.0; g4],
                };
                factorise(&mut t, n, cfg.diagonal, cfg.jitter).map(|_| t)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| anyhow!("Laplace prior: {e}"))?;
        Ok(Self {
            cfg: cfg.clone(),
            n,
            tasks,
        })
    }

    pub fn batch(&self) -> usize {
        self.tasks.len()
    }

    /// The current means μ_t, (B·n).
    pub fn means(&self) -> Vec<f32> {
        self.tasks
            .iter()
            .flat_map(|t| t.mean.iter().copied())
            .collect()
    }

    /// Differential entropy ½ n ln(2πe) − ½ ln det Λ̃_t per task.
    pub fn entropy(&self) -> Vec<f64> {
        let n = self.n as f64;
        self.tasks
            .iter()
            .map(|t| n * HALF_LN_2PI_E - 0.5 * t.logdet)
            .collect()
    }

    /// The noise part of reparameterised samples of the current posteriors, L_t^{−T} ε, for
    /// ε of shape (n_Z, B, n) given row-major; returns the same shape.
    pub fn sample_offsets(&self, eps: &[f32]) -> Vec<f32> {
        let (n, b) = (self.n, self.tasks.len());
        let mut out = vec![0f32; eps.len()];
        let diagonal = self.cfg.diagonal;
        out.par_chunks_mut(n)
            .with_min_len(64)
            .zip(eps.par_chunks(n))
            .enumerate()
            .for_each(|(row, (o, e))| {
                let task = &self.tasks[row % b];
                let mut x: Vec<f64> = e.iter().map(|v| *v as f64).collect();
                if diagonal {
                    x.iter_mut().zip(&task.chol).for_each(|(v, s)| *v /= s);
                } else {
                    linalg::solve_upper_t(&task.chol, n, &mut x);
                }
                o.iter_mut().zip(x).for_each(|(o, v)| *o = v as f32);
            });
        out
    }

    /// Steps every task: `c`, `h` (B·H) are the carry (c_t, h_t) after the LSTM step,
    /// `xw` (B·4H) the input projection x_t W_x + b of this step, `phi` (B·n) the output φ_t.
    pub fn step(
        &mut self,
        w: &JacobianWeights,
        c: &[f32],
        h: &[f32],
        xw: &[f32],
        phi: &[f32],
    ) -> Result<StepStats> {
        let (hd, n, g4) = (w.hidden, self.n, 4 * w.hidden);
        let batch = self.tasks.len();
        // h_t W_h for every task at once.
        let mut hw = vec![0f32; batch * g4];
        sgemm(
            batch,
            g4,
            hd,
            Mat::rows(h, hd),
            Mat::rows(&w.wh, g4),
            &mut hw,
            false,
            true,
        );
        let keep = if self.cfg.window == 0 {
            usize::MAX
        } else {
            self.cfg.window
        };
        let cfg = &self.cfg;
        let parallel = candle_core::utils::get_num_threads() > 1;
        let work = |(b, task): (usize, &mut TaskState)| -> Result<(Vec<f32>, f64, f64, f64)> {
            task.window.push(xw[b * g4..(b + 1) * g4].to_vec());
            if task.window.len() > keep {
                task.window.remove(0);
            }
            let term = jacobian_term(
                task,
                w,
                &c[b * hd..(b + 1) * hd],
                &hw[b * g4..(b + 1) * g4],
                cfg.diagonal,
            );
            // Previous posterior (for the KL), then the new precision.
            let prev_lambda = std::mem::take(&mut task.lambda);
            let prev_chol = task.chol.clone();
            let prev_logdet = task.logdet;
            let mut lambda = match cfg.accumulate {
                Accumulate::None => scaled_identity(n, cfg.diagonal, cfg.damping),
                _ => prev_lambda.clone(),
            };
            lambda
                .iter_mut()
                .zip(&term)
                .for_each(|(l, t)| *l += *t as f64);
            task.lambda = lambda;
            factorise(task, n, cfg.diagonal, cfg.jitter)
                .map_err(|e| anyhow!("Laplace precision of task {b} is not positive definite ({e}); a larger `jitter` or `prior_precision` may help"))?;
            let prev_mean = std::mem::take(&mut task.mean);
            let phi_b = &phi[b * n..(b + 1) * n];
            task.mean = match cfg.accumulate {
                Accumulate::MuSigma => phi_b.iter().zip(&prev_mean).map(|(p, m)| p + m).collect(),
                _ => phi_b.to_vec(),
            };
            // KL(q_t ‖ q_{t−1}).
            let d: Vec<f32> = task
                .mean
                .iter()
                .zip(&prev_mean)
                .map(|(a, b)| a - b)
                .collect();
            let v = jittered_times(&prev_lambda, &d, n, cfg.diagonal, cfg.jitter);
            let quad: f64 = v.iter().zip(&d).map(|(v, d)| *v as f64 * *d as f64).sum();
            let trace = if cfg.diagonal {
                prev_chol
                    .iter()
                    .zip(&task.chol)
                    .map(|(p, c)| (p / c).powi(2))
                    .sum::<f64>()
            } else {
                linalg::frobenius_sq_lower_solve(&task.chol, &prev_chol, n)
            };
            let constant = 0.5 * (trace - n as f64 + task.logdet - prev_logdet);
            Ok((v, constant, 0.5 * quad + constant, task.logdet))
        };
        let results: Vec<Result<_>> = if parallel {
            self.tasks.par_iter_mut().enumerate().map(work).collect()
        } else {
            self.tasks.iter_mut().enumerate().map(work).collect()
        };
        let mut stats = StepStats::default();
        let nf = n as f64;
        for r in results {
            let (v, constant, kl, logdet) = r?;
            stats.kl_grad.extend(v);
            stats.kl_const.push(constant);
            stats.kl.push(kl);
            stats.entropy.push(nf * HALF_LN_2PI_E - 0.5 * logdet);
        }
        Ok(stats)
    }
}

/// Σ_{i ∈ window} J_i J_iᵀ (n·n) or its diagonal (n), f32 as the per-step reference sums it.
fn jacobian_term(
    task: &mut TaskState,
    w: &JacobianWeights,
    c: &[f32],
    hw: &[f32],
    diagonal: bool,
) -> Vec<f32> {
    let (hd, n) = (w.hidden, w.features);
    let mut term = vec![0f32; if diagonal { n } else { n * n }];
    for x in &task.window {
        // Gates of one step applied to x_i from (c_t, h_t).
        task.z
            .iter_mut()
            .zip(x.iter().zip(hw))
            .for_each(|(z, (a, b))| *z = a + b);
        activate_gates(&mut task.z, hd);
        let (zi, rest) = task.z.split_at(hd);
        let (zf, rest) = rest.split_at(hd);
        let (zg, zo) = rest.split_at(hd);
        // D[j, :] = Σ_gate a_gate[j] · W_gateᵀ[j, :].
        for j in 0..hd {
            let (i, f, g, o) = (zi[j], zf[j], zg[j], zo[j]);
            let c_new = f * c[j] + i * g;
            let tc = c_new.tanh();
            let k = o * (1.0 - tc * tc);
            let a = [
                k * g * i * (1.0 - i),
                k * c[j] * f * (1.0 - f),
                k * i * (1.0 - g * g),
                tc * o * (1.0 - o),
            ];
            let row = &mut task.d[j * hd..(j + 1) * hd];
            row.iter_mut().for_each(|v| *v = 0.0);
            for (gate, a) in a.iter().enumerate() {
                let src = &w.wh_t[(gate * hd + j) * hd..(gate * hd + j + 1) * hd];
                row.iter_mut().zip(src).for_each(|(r, s)| *r += a * s);
            }
        }
        // J = Pᵀ D, (n, H).
        sgemm(
            n,
            hd,
            hd,
            Mat::rows_t(&w.proj, n),
            Mat::rows(&task.d, hd),
            &mut task.j,
            false,
            false,
        );
        if diagonal {
            term.iter_mut()
                .zip(task.j.chunks(hd))
                .for_each(|(t, row)| *t += row.iter().map(|v| v * v).sum::<f32>());
        } else {
            sgemm(
                n,
                n,
                hd,
                Mat::rows(&task.j, hd),
                Mat::rows_t(&task.j, hd),
                &mut task.jj,
                false,
                false,
            );
            term.iter_mut().zip(&task.jj).for_each(|(t, v)| *t += v);
        }
    }
    term
}

/// Cholesky factor and ln det of Λ + jitter·I into the task state.
fn factorise(t: &mut TaskState, n: usize, diagonal: bool, jitter: f64) -> Result<(), String> {
    if diagonal {
        for (c, l) in t.chol.iter_mut().zip(&t.lambda) {
            let x = l + jitter;
            if x.is_nan() || x <= 0.0 {
                return Err("a diagonal entry is not positive (non-finite Jacobian?)".into());
            }
            *c = x.sqrt();
        }
    } else {
        t.chol.copy_from_slice(&t.lambda);
        for i in 0..n {
            t.chol[i * n + i] += jitter;
        }
        linalg::cholesky_in_place(&mut t.chol, n).map_err(|e| e.to_string())?;
    }
    t.logdet = if diagonal {
        t.chol.iter().map(|x| 2.0 * x.ln()).sum()
    } else {
        (0..n).map(|i| 2.0 * t.chol[i * n + i].ln()).sum()
    };
    Ok(())
}

/// (Λ + jitter·I) d in f32, as the reference's quadratic form multiplies.
fn jittered_times(lambda: &[f64], d: &[f32], n: usize, diagonal: bool, jitter: f64) -> Vec<f32> {
    if diagonal {
        return lambda
            .iter()
            .zip(d)
            .map(|(l, d)| (*l as f32 + jitter as f32) * d)
            .collect();
    }
    (0..n)
        .map(|i| {
            let row = &lambda[i * n..(i + 1) * n];
            let mut s: f32 = row.iter().zip(d).map(|(l, d)| *l as f32 * d).sum();
            s += jitter as f32 * d[i];
            s
        })
        .collect()
}

fn scaled_identity(n: usize, diagonal: bool, scale: f64) -> Vec<f64> {
    if diagonal {
        return vec![scale; n];
    }
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = scale);
    v
}

/// The filter run over a whole replayed sequence (the supervised loss): per step t = 1..T its
/// statistics, and the sample offsets of q_{t−1} (`before` = true: the regression predicts y_t
/// from q_{t−1}) or of q_t (`before` = false).
pub struct SequenceStats {
    /// (T, n_Z, B, n) row-major.
    pub offsets: Vec<f32>,
    /// (T, B, n) row-major.
    pub kl_grad: Vec<f32>,
    /// (T, B).
    pub kl: Vec<f64>,
    /// (T, B).
    pub entropy: Vec<f64>,
}

/// Runs the filter over a sequence given as plain values: `states` [h_t, c_t] (T, B, 2H),
/// `xw` (T, B, 4H), `phi` φ_0..φ_T (T+1, B, n), and the noise of each step (n_Z, B, n).
#[allow(clippy::too_many_arguments)]
pub fn filter_sequence(
    cfg: &LaplaceConfig,
    w: &JacobianWeights,
    states: &[f32],
    xw: &[f32],
    phi: &[f32],
    noise: &[Vec<f32>],
    batch: usize,
    before: bool,
) -> Result<SequenceStats> {
    let (hd, n) = (w.hidden, w.features);
    let steps = noise.len();
    let mut filter = LaplaceFilter::new(cfg, &phi[..batch * n], batch, w)?;
    let mut out = SequenceStats {
        offsets: Vec::with_capacity(noise.iter().map(|e| e.len()).sum()),
        kl_grad: Vec::with_capacity(steps * batch * n),
        kl: Vec::with_capacity(steps * batch),
        entropy: Vec::with_capacity(steps * batch),
    };
    let (mut c, mut h) = (vec![0f32; batch * hd], vec![0f32; batch * hd]);
    for (t, eps) in noise.iter().enumerate() {
        if before {
            out.offsets.extend(filter.sample_offsets(eps));
        }
        for b in 0..batch {
            let row = &states[(t * batch + b) * 2 * hd..(t * batch + b + 1) * 2 * hd];
            h[b * hd..(b + 1) * hd].copy_from_slice(&row[..hd]);
            c[b * hd..(b + 1) * hd].copy_from_slice(&row[hd..]);
        }
        let g4 = 4 * hd;
        let stats = filter.step(
            w,
            &c,
            &h,
            &xw[t * batch * g4..(t + 1) * batch * g4],
            &phi[(t + 1) * batch * n..(t + 2) * batch * n],
        )?;
        if !before {
            out.offsets.extend(filter.sample_offsets(eps));
        }
        out.kl_grad.extend(stats.kl_grad);
        out.kl.extend(stats.kl);
        out.entropy.extend(stats.entropy);
    }
    Ok(out)
}
