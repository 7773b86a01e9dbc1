//! The regression half of `lvrnn train` and `lvrnn eval` ([`Regression`]).

use super::Experiment;
use crate::agent::Model;
use crate::agent::regression::RegressionModel;
use crate::config::ExperimentConfig;
use crate::eval::request::{EvalRequest, Tunings, tuned_label};
use crate::eval::{EvalResult, evaluate_regression, tune_regression_prior};
use crate::posterior::PosteriorConfig;
use crate::report::{format_table, write_regression_report};
use crate::train::supervised::Supervised;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Fourier regression (paper Sec. 5.1): the supervised ELBO (Eq. 2), evaluated by the
/// predictive cross-entropy at every number of context points.
pub struct Regression;

impl Experiment for Regression {
    type Model = RegressionModel;
    type Learner = Supervised;
    type Results = Vec<EvalResult>;
    const TUNING_SCORE: &'static str = "mean predictive CE";

    fn describe(cfg: &ExperimentConfig) -> Result<String> {
        Ok(format!(
            "{} updates of {} tasks × {} points",
            cfg.train.updates, cfg.train.batch, cfg.train.seq_len
        ))
    }

    fn learner(cfg: &ExperimentConfig, model: RegressionModel) -> Result<Supervised> {
        Ok(Supervised {
            model,
            batch: cfg.train.batch,
            points: cfg.train.seq_len,
            beta: cfg.beta(),
        })
    }

    fn trained(learner: &Supervised) -> &RegressionModel {
        &learner.model
    }

    /// With `tune_prior`, each Laplace variant is evaluated a second time with its prior tuned
    /// on other held-out tasks (next to the default).
    fn evaluate(
        model: &RegressionModel,
        cfg: &ExperimentConfig,
        request: &EvalRequest,
    ) -> Result<(Vec<EvalResult>, Tunings)> {
        let tune_tasks = request.tune_tasks.unwrap_or(64);
        let (mut results, mut tunings) = (vec![], vec![]);
        for (label, p) in request.variants(&cfg.model.posterior) {
            // The linearised predictive names itself (for a point estimate it is the sampled one).
            let label = if cfg.eval.linearised() && p.is_bayesian() {
                format!("{label}, linearised")
            } else {
                label
            };
            eprintln!("evaluating {label} on {} held-out tasks …", cfg.eval.tasks);
            let variant = model.with_posterior(&p)?;
            results.push(evaluate_regression(&variant, &label, &cfg.eval)?);
            if let (true, PosteriorConfig::Laplace(lc)) = (request.tune_prior, &p) {
                eprintln!("tuning the prior of {label} on {tune_tasks} other held-out tasks …");
                let tuned = tune_regression_prior(model, lc, &cfg.eval, tune_tasks)?;
                eprintln!(
                    "  chose {} (mean CE {:.4} on the tuning tasks)",
                    tuned.describe(),
                    tuned.score
                );
                let tuned_model =
                    model.with_posterior(&PosteriorConfig::Laplace(tuned.config.clone()))?;
                results.push(evaluate_regression(
                    &tuned_model,
                    &tuned_label(&label, &tuned),
                    &cfg.eval,
                )?);
                tunings.push((label, tuned));
            }
        }
        Ok((results, tunings))
    }

    fn write(
        results: &Vec<EvalResult>,
        cfg: &ExperimentConfig,
        dir: &Path,
        figures: &Path,
    ) -> Result<Vec<PathBuf>> {
        write_regression_report(results, dir, figures, Some(cfg.train.seq_len))
    }

    fn table(results: &Vec<EvalResult>, _: &ExperimentConfig) -> Result<String> {
        Ok(format_table(results, &[0, 10, 50, 100]))
    }
}
