//! The bandit / gridworld half of `lvrnn train` and `lvrnn eval` ([`Rl`]).

use super::Experiment;
use crate::agent::Model;
use crate::agent::rl::RlModel;
use crate::config::{ExperimentConfig, env_kind};
use crate::eval::request::{EvalRequest, Tunings, tuned_label};
use crate::eval::rl::{
    ReferenceCurve, RlEvalResult, evaluate_rl_scored, reference_policies, tune_rl_prior,
};
use crate::posterior::PosteriorConfig;
use crate::report::rl::{format_rl_table, write_rl_report};
use crate::train::ppo::Ppo;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The meta-RL tasks (paper Sec. 5.2–5.3): recurrent PPO (Eq. 3), evaluated by return and
/// regret against the reference policies on the same tasks. Writes metrics/eval_rl.csv,
/// metrics/eval_rl_returns.csv (and the exact-belief scores) and the figures
/// cumulative_regret, entropy, kl.
pub struct Rl;

impl Experiment for Rl {
    type Model = RlModel;
    type Learner = Ppo;
    /// The agent's rows and the reference policies' curves.
    type Results = (Vec<RlEvalResult>, Vec<ReferenceCurve>);
    const TUNING_SCORE: &'static str = "negative mean return";

    fn describe(cfg: &ExperimentConfig) -> Result<String> {
        let kind = env_kind(cfg.task)?;
        Ok(format!(
            "{} PPO updates of {} {kind} tasks × {} interactions",
            cfg.train.updates,
            cfg.train.batch,
            kind.horizon()
        ))
    }

    fn learner(cfg: &ExperimentConfig, model: RlModel) -> Result<Ppo> {
        Ppo::new(cfg, model)
    }

    fn trained(learner: &Ppo) -> &RlModel {
        &learner.model
    }

    /// For a bandit at each `request.alphas` (default `env.alpha_test`; labels then end in
    /// `@ alpha=A`), with the reference policies on the same tasks. With `tune_prior`, each
    /// Laplace variant is also evaluated with its prior tuned by held-out return (at
    /// `env.alpha_test`).
    fn evaluate(
        model: &RlModel,
        cfg: &ExperimentConfig,
        request: &EvalRequest,
    ) -> Result<(Self::Results, Tunings)> {
        let kind = env_kind(cfg.task)?;
        let alphas: Vec<f64> = if request.alphas.is_empty() {
            vec![cfg.env.alpha_test]
        } else {
            request.alphas.clone()
        };
        let at = |label: &str, alpha: f64| {
            if request.alphas.is_empty() {
                label.to_string()
            } else {
                format!("{label} @ alpha={alpha}")
            }
        };
        let tune_tasks = request.tune_tasks.unwrap_or(256);
        let (mut results, mut refs, mut tunings) = (vec![], vec![], vec![]);
        for (label, p) in request.variants(&cfg.model.posterior) {
            let variant = model.with_posterior(&p)?;
            let mut tuned_variant = None;
            if let (true, PosteriorConfig::Laplace(lc)) = (request.tune_prior, &p) {
                eprintln!(
                    "tuning the prior of {label} on {tune_tasks} held-out {kind} tasks (not the test tasks) …"
                );
                let alpha = cfg.env.alpha_test as f32;
                let tuned = tune_rl_prior(model, lc, kind, &cfg.eval, alpha, tune_tasks)?;
                eprintln!(
                    "  chose {} (mean return {:.3} on the tuning tasks)",
                    tuned.describe(),
                    -tuned.score
                );
                let m = model.with_posterior(&PosteriorConfig::Laplace(tuned.config.clone()))?;
                tuned_variant = Some((tuned_label(&label, &tuned), m));
                tunings.push((label.clone(), tuned));
            }
            for &alpha in &alphas {
                eprintln!(
                    "evaluating {} on {} held-out {kind} tasks …",
                    at(&label, alpha),
                    cfg.eval.tasks
                );
                let a = alpha as f32;
                results.push(evaluate_rl_scored(
                    &variant,
                    &at(&label, alpha),
                    kind,
                    &cfg.eval,
                    a,
                )?);
                if let Some((tuned_label, m)) = &tuned_variant {
                    results.push(evaluate_rl_scored(
                        m,
                        &at(tuned_label, alpha),
                        kind,
                        &cfg.eval,
                        a,
                    )?);
                }
            }
        }
        eprintln!("running the reference policies on the same tasks …");
        for &alpha in &alphas {
            for mut r in reference_policies(kind, alpha as f32, cfg.eval.tasks, cfg.eval.seed) {
                r.policy = at(&r.policy, alpha);
                refs.push(r);
            }
        }
        Ok(((results, refs), tunings))
    }

    fn write(
        (results, refs): &Self::Results,
        _: &ExperimentConfig,
        dir: &Path,
        figures: &Path,
    ) -> Result<Vec<PathBuf>> {
        write_rl_report(results, refs, dir, figures)
    }

    fn table((results, refs): &Self::Results, cfg: &ExperimentConfig) -> Result<String> {
        Ok(format_rl_table(env_kind(cfg.task)?, results, refs))
    }
}
