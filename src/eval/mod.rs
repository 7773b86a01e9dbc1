//! Evaluation of a regression model on held-out tasks (paper Sec. 5.1, Figs. 3, 4, 8): after
//! k = 0, 1, 3, … observed points, the predictive cross-entropy of the posterior predictive
//! E_{q_k} p(y | x, z) (Monte Carlo with m samples) on a dense grid of x in [−1, 1], the
//! posterior's differential entropy, KL(q_k ‖ q_{k−1}), and the coverage of the predictive's
//! 50/90/99% credible intervals over the true function values ([`calibration`]); mean and 99%
//! interval over tasks. [`tune`] picks a post-hoc Laplace prior on held-out tasks.

pub mod belief;
pub mod calibration;
pub mod request;
pub mod rl;
pub mod tune;

use crate::agent::acting::Acting;
use crate::agent::randn;
use crate::agent::regression::RegressionModel;
use crate::config::EvalConfig;
use crate::envs::regression::{FourierTask, sample_x};
use crate::posterior::PosteriorConfig;
use crate::stats::{finite_mean_ci99, mean_ci99};
use anyhow::{Result, bail};
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
                let z = acting.sample(&randn(&mut rng, &[m, b, n], &model.core.device)?)?; // (m, B, n)
                // (m, B, G) predictive means.
                let means =
                    model.predict_mean(&emb_grid.unsqueeze(0)?.unsqueeze(0)?, &z.unsqueeze(2)?)?;
                let means: Vec<Vec<Vec<f32>>> = means.to_vec3()?;
                for j in 0..b {
                    let (task_ce, mu, sd) =
                        mixture_stats(&means, j, &truth[j], sigma, &mut pits[slot]);
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

/// For task j: the cross-entropy −(1/G) Σ_g ln (1/m Σ_s N(f(x_g); μ_s(x_g), σ²)) of the
/// Monte-Carlo posterior predictive, and that mixture's mean and standard deviation per x_g.
/// Appends the PIT value of each f(x_g) under the mixture to `pits`.
fn mixture_stats(
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

/// Builds a copy of a trained model under another posterior family (post hoc: same weights,
/// no retraining). Refuses a family whose parameters the trained network lacks (a VRNN head
/// on a network not trained as a VRNN), see [`PosteriorConfig::check_posthoc`].
pub fn with_posterior(
    model: &RegressionModel,
    posterior: &PosteriorConfig,
) -> Result<RegressionModel> {
    model.cfg.posterior.check_posthoc(posterior)?;
    let mut cfg = model.cfg.clone();
    cfg.posterior = posterior.clone();
    let other = RegressionModel::new(&cfg, 0)?;
    let missing = other.params.load_from(&model.params.tensors(), false)?;
    if !missing.is_empty() {
        bail!(
            "posterior `{}` needs parameters the trained network lacks: {}",
            posterior.label(),
            missing.join(", ")
        );
    }
    Ok(other)
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
/// held-out tasks ([`tuning_config`]).
pub fn tune_regression_prior(
    model: &RegressionModel,
    posterior: &crate::posterior::LaplaceConfig,
    cfg: &EvalConfig,
    tasks: usize,
) -> Result<tune::Tuned> {
    let held_out = tuning_config(cfg, tasks);
    tune::tune_prior(posterior, &tune::log_grid(), |c| {
        let m = with_posterior(model, &PosteriorConfig::Laplace(c.clone()))?;
        let r = evaluate_regression(&m, "tuning", &held_out)?;
        Ok(r.rows.iter().map(|row| row.ce_mean).sum::<f64>() / r.rows.len() as f64)
    })
}
