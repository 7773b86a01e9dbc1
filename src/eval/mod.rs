//! Evaluation of a regression model on held-out tasks (paper Sec. 5.1, Figs. 3, 4, 8): after
//! k = 0, 1, 3, … observed points, the predictive cross-entropy of the posterior predictive
//! E_{q_k} p(y | x, z) (Monte Carlo with m samples) on a dense grid of x in [−1, 1], the
//! posterior's differential entropy, KL(q_k ‖ q_{k−1}), and the coverage of the predictive's
//! 50/90/99% credible intervals over the true function values ([`calibration`]); mean and 99%
//! interval over tasks. [`tune`] picks a post-hoc Laplace prior on held-out tasks.
//!
//! With `eval.predictive = "linearised"` the predictive is instead the head linearised at the
//! posterior mean (laplace-torch's `glm` predictive; Immer et al. 2021): for a task with
//! posterior N(μ, Σ), N(y; mean(x, μ), σ² + J Σ Jᵀ) with J = ∂mean(x, z)/∂z at z = μ
//! ([`RegressionModel::linearised_mean`], analytic through the head). Σ is the covariance the
//! sampled predictive's draws have (Laplace: (Λ_t + jitter·I)⁻¹), read from the sampler as the
//! offsets a_i = sample(e_i) − μ of the unit noises e_i, Σ = Σ_i a_i a_iᵀ
//! ([`posterior_factor`]); so J Σ Jᵀ = Σ_i (J·a_i)².

pub mod belief;
pub mod calibration;
pub mod request;
pub mod rl;
pub mod tune;

use crate::agent::Model;
use crate::agent::acting::Acting;
use crate::agent::randn;
use crate::agent::regression::RegressionModel;
use crate::config::EvalConfig;
use crate::envs::regression::{FourierTask, sample_x};
use crate::posterior::PosteriorConfig;
use crate::stats::{finite_mean_ci99, mean_ci99};
use anyhow::Result;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One row of the evaluation table (per number of observed points).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRow {
    pub model: String,
    pub points: usize,
    pub ce_mean: f64,
    pub ce_ci99: f64,
    pub entropy_mean: f64,
    pub entropy_ci99: f64,
    pub kl_mean: f64,
    pub kl_ci99: f64,
    /// Fraction of (task, grid point) pairs whose true value f(x) lies inside the predictive's
    /// central 50% / 90% / 99% credible interval (calibrated: 0.5 / 0.9 / 0.99).
    pub cover50: f64,
    pub cover90: f64,
    pub cover99: f64,
}

/// Predictions for one task after `example_points` observations (for the example figure).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Example {
    pub grid: Vec<f64>,
    pub truth: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub obs_x: Vec<f64>,
    pub obs_y: Vec<f64>,
}

pub struct EvalResult {
    pub model: String,
    pub rows: Vec<EvalRow>,
    pub examples: Vec<Example>,
}

/// The held-out tasks and their observation sequences (the same for every model evaluated
/// with the same `EvalConfig`).
pub fn test_tasks(cfg: &EvalConfig) -> (Vec<FourierTask>, Vec<Vec<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let horizon = *cfg.points.iter().max().unwrap_or(&0);
    let tasks: Vec<FourierTask> = (0..cfg.tasks)
        .map(|_| FourierTask::sample(&mut rng))
        .collect();
    let xs = tasks
        .iter()
        .map(|_| (0..horizon).map(|_| sample_x(&mut rng)).collect())
        .collect();
    (tasks, xs)
}

/// Evaluates `model` (under its own posterior family) on the test tasks of `cfg`.
pub fn evaluate_regression(
    model: &RegressionModel,
    label: &str,
    cfg: &EvalConfig,
) -> Result<EvalResult> {
    let (tasks, xs) = test_tasks(cfg);
    let horizon = *cfg.points.iter().max().unwrap_or(&0);
    let grid: Vec<f32> = (0..cfg.grid)
        .map(|i| {
            if cfg.grid == 1 {
                0.0
            } else {
                -1.0 + 2.0 * i as f32 / (cfg.grid - 1) as f32
            }
        })
        .collect();
    let emb_grid = model.embed_scalar(0, &grid)?.detach(); // (G, E)
    let emb_grid_values: Vec<f32> = if cfg.linearised() {
        emb_grid.flatten_all()?.to_vec1()?
    } else {
        vec![]
    };
    let sigma = model.log_sigma.to_vec1::<f32>()?[0].exp() as f64;
    let bayes = model.core.posterior.is_bayesian();
    // Samples of the same point estimate are identical: one suffices.
    let m = if bayes { cfg.samples } else { 1 };
    let n = model.cfg.features;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_e7a1);
    let (mut ce, mut ent, mut kl, mut pits) = (
        vec![vec![]; cfg.points.len()],
        vec![vec![]; cfg.points.len()],
        vec![vec![]; cfg.points.len()],
        vec![vec![]; cfg.points.len()],
    );
    let mut examples = vec![];
    let chunk = 32usize;
    for start in (0..tasks.len()).step_by(chunk) {
        let idx: Vec<usize> = (start..(start + chunk).min(tasks.len())).collect();
        let b = idx.len();
        let truth: Vec<Vec<f32>> = idx.iter().map(|&i| tasks[i].eval_many(&grid)).collect();
        let mut acting = Acting::new(&model.core, b)?;
        let no_samples = Tensor::zeros((0, b, n), DType::F32, &model.core.device)?;
        let mut last_kl: Vec<f64> = vec![f64::NAN; b];
        for k in 0..=horizon {
            if let Some(slot) = cfg.points.iter().position(|p| *p == k) {
                let entropy = acting.entropy()?.unwrap_or_else(|| vec![f64::NAN; b]);
                let stats: Vec<(f64, Vec<f64>, Vec<f64>)> = if cfg.linearised() {
                    let (mu, factor) = posterior_factor(&acting, b, n, &model.core.device)?;
                    let (means, jac) = model.linearised_mean(&emb_grid_values, &mu)?;
                    let g = grid.len();
                    (0..b)
                        .map(|j| {
                            linearised_stats(
                                &means[j * g..(j + 1) * g],
                                &jac[j * g * n..(j + 1) * g * n],
                                &factor[j * n * n..(j + 1) * n * n],
                                &truth[j],
                                sigma,
                                &mut pits[slot],
                            )
                        })
                        .collect()
                } else {
                    let eps = randn(&mut rng, &[m, b, n], &model.core.device)?;
                    let z = acting.sample(&eps)?; // (m, B, n)
                    // (m, B, G) predictive means.
                    let means = model
                        .predict_mean(&emb_grid.unsqueeze(0)?.unsqueeze(0)?, &z.unsqueeze(2)?)?;
                    let means: Vec<Vec<Vec<f32>>> = means.to_vec3()?;
                    (0..b)
                        .map(|j| mixture_stats(&means, j, &truth[j], sigma, &mut pits[slot]))
                        .collect()
                };
                for (j, (task_ce, mu, sd)) in stats.into_iter().enumerate() {
                    ce[slot].push(task_ce);
                    ent[slot].push(entropy[j]);
                    kl[slot].push(last_kl[j]);
                    if k == cfg.example_points && start + j < 4 {
                        examples.push(Example {
                            grid: grid.iter().map(|v| *v as f64).collect(),
                            truth: truth[j].iter().map(|v| *v as f64).collect(),
                            mean: mu,
                            std: sd,
                            obs_x: xs[idx[j]][..k].iter().map(|v| *v as f64).collect(),
                            obs_y: xs[idx[j]][..k]
                                .iter()
                                .map(|x| tasks[idx[j]].eval(*x) as f64)
                                .collect(),
                        });
                    }
                }
            }
            if k == horizon {
                break;
            }
            // Input kinds 0 = x, 1 = y (`RegressionModel`).
            let x: Vec<f32> = idx.iter().map(|&i| xs[i][k]).collect();
            let y: Vec<f32> = idx.iter().map(|&i| tasks[i].eval(xs[i][k])).collect();
            let step = acting.observe(&[x, y], &no_samples)?;
            last_kl = step.kl.unwrap_or_else(|| vec![f64::NAN; b]);
        }
    }
    let rows = cfg
        .points
        .iter()
        .enumerate()
        .map(|(s, p)| {
            let (ce_mean, ce_ci99) = mean_ci99(&ce[s]);
            let (entropy_mean, entropy_ci99) = finite_mean_ci99(&ent[s]);
            let (kl_mean, kl_ci99) = finite_mean_ci99(&kl[s]);
            let [cover50, cover90, cover99] = calibration::coverage(&pits[s]);
            EvalRow {
                model: label.to_string(),
                points: *p,
                ce_mean,
                ce_ci99,
                entropy_mean,
                entropy_ci99,
                kl_mean,
                kl_ci99,
                cover50,
                cover90,
                cover99,
            }
        })
        .collect();
    Ok(EvalResult {
        model: label.to_string(),
        rows,
        examples,
    })
}

/// The current posteriors of `acting` as plain values: the means μ (B·n) and, per task, a
/// factor A (n × n, row-major; B of them) with Σ = Aᵀ A, whose row i is the offset
/// sample(e_i) − μ the sampler gives the unit noise e_i (Laplace: row i of L⁻¹ for
/// Λ + jitter·I = L Lᵀ; VRNN: U diag(e^{s/2}) transposed; point estimate: 0).
pub fn posterior_factor(
    acting: &Acting,
    b: usize,
    n: usize,
    device: &candle_core::Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mean: Vec<f32> = acting
        .sample(&Tensor::zeros((1, b, n), DType::F32, device)?)?
        .flatten_all()?
        .to_vec1()?;
    let mut unit = vec![0f32; n * b * n];
    for i in 0..n {
        for j in 0..b {
            unit[(i * b + j) * n + i] = 1.0;
        }
    }
    let z: Vec<f32> = acting
        .sample(&Tensor::from_vec(unit, (n, b, n), device)?)?
        .flatten_all()?
        .to_vec1()?;
    let mut factor = vec![0f32; b * n * n];
    for i in 0..n {
        for j in 0..b {
            for k in 0..n {
                factor[(j * n + i) * n + k] = z[(i * b + j) * n + k] - mean[j * n + k];
            }
        }
    }
    Ok((mean, factor))
}

/// For one task, the linearised predictive N(y; m_g, σ² + J_g Σ J_gᵀ) at each grid point x_g,
/// given the means m_g = mean(x_g, μ) (G), the Jacobians J_g (G × n) and a factor A (n × n)
/// with Σ = Aᵀ A ([`posterior_factor`]), so J Σ Jᵀ = |A J|²: the cross-entropy
/// −(1/G) Σ_g ln N(f(x_g); m_g, v_g), and the predictive's mean and standard deviation per x_g.
/// Appends the PIT value of each f(x_g) to `pits`.
pub fn linearised_stats(
    means: &[f32],
    jac: &[f32],
    factor: &[f32],
    truth: &[f32],
    sigma: f64,
    pits: &mut Vec<f64>,
) -> (f64, Vec<f64>, Vec<f64>) {
    let g = truth.len();
    let n = jac.len() / g.max(1);
    let (mut ce, mut mu, mut sd) = (0.0, vec![0.0; g], vec![0.0; g]);
    let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    for k in 0..g {
        let j = &jac[k * n..(k + 1) * n];
        let spread: f64 = factor
            .chunks(n)
            .map(|a| {
                a.iter()
                    .zip(j)
                    .map(|(a, j)| *a as f64 * *j as f64)
                    .sum::<f64>()
                    .powi(2)
            })
            .sum();
        let var = sigma * sigma + spread;
        let (m, y) = (means[k] as f64, truth[k] as f64);
        ce += half_ln_2pi + 0.5 * var.ln() + 0.5 * (y - m).powi(2) / var;
        mu[k] = m;
        sd[k] = var.sqrt();
        pits.push(calibration::normal_cdf((y - m) / sd[k]));
    }
    (ce / g as f64, mu, sd)
}

/// For task j: the cross-entropy −(1/G) Σ_g ln (1/m Σ_s N(f(x_g); μ_s(x_g), σ²)) of the
/// Monte-Carlo posterior predictive, and that mixture's mean and standard deviation per x_g.
/// Appends the PIT value of each f(x_g) under the mixture to `pits`.
pub fn mixture_stats(
    means: &[Vec<Vec<f32>>],
    j: usize,
    truth: &[f32],
    sigma: f64,
    pits: &mut Vec<f64>,
) -> (f64, Vec<f64>, Vec<f64>) {
    let m = means.len();
    let g = truth.len();
    let mut ce = 0.0;
    let (mut mu, mut sd) = (vec![0.0; g], vec![0.0; g]);
    let log_norm = -(2.0 * std::f64::consts::PI).sqrt().ln() - sigma.ln();
    for k in 0..g {
        let lps: Vec<f64> = (0..m)
            .map(|s| log_norm - 0.5 * ((truth[k] as f64 - means[s][j][k] as f64) / sigma).powi(2))
            .collect();
        let top = lps.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = top + lps.iter().map(|l| (l - top).exp()).sum::<f64>().ln() - (m as f64).ln();
        ce -= lse;
        let avg = (0..m).map(|s| means[s][j][k] as f64).sum::<f64>() / m as f64;
        let var = (0..m)
            .map(|s| (means[s][j][k] as f64 - avg).powi(2))
            .sum::<f64>()
            / m as f64;
        mu[k] = avg;
        sd[k] = (var + sigma * sigma).sqrt();
        let component_means: Vec<f64> = (0..m).map(|s| means[s][j][k] as f64).collect();
        pits.push(calibration::mixture_pit(
            &component_means,
            sigma,
            truth[k] as f64,
        ));
    }
    (ce / g as f64, mu, sd)
}

/// The held-out tasks prior tuning uses: `tasks` tasks drawn from another seed than the test
/// tasks, evaluated at the same numbers of points.
pub fn tuning_config(cfg: &EvalConfig, tasks: usize) -> EvalConfig {
    EvalConfig {
        tasks,
        seed: cfg.seed ^ tune::TUNING_SEED,
        example_points: usize::MAX,
        ..cfg.clone()
    }
}

/// Tunes the prior scales of the post-hoc Laplace posterior `posterior` of `model`
/// ([`tune::tune_prior`]) by the mean predictive cross-entropy over `cfg.points` on `tasks`
/// held-out tasks ([`tuning_config`]), under `cfg`'s predictive (`eval.predictive`): the
/// prior is chosen for the predictive it will be evaluated with.
pub fn tune_regression_prior(
    model: &RegressionModel,
    posterior: &crate::posterior::LaplaceConfig,
    cfg: &EvalConfig,
    tasks: usize,
) -> Result<tune::Tuned> {
    let held_out = tuning_config(cfg, tasks);
    tune::tune_prior(posterior, &tune::log_grid(), |c| {
        let m = model.with_posterior(&PosteriorConfig::Laplace(c.clone()))?;
        let r = evaluate_regression(&m, "tuning", &held_out)?;
        Ok(r.rows.iter().map(|row| row.ce_mean).sum::<f64>() / r.rows.len() as f64)
    })
}
