//! The bandit / gridworld halves of `lvrnn train` and `lvrnn eval`.

use crate::agent::rl::RlModel;
use crate::config::{ExperimentConfig, env_kind};
use crate::eval::request::{EvalRequest, Tunings, tuned_label, write_provenance, write_tuning_csv};
use crate::eval::rl::{
    ReferenceCurve, RlEvalResult, evaluate_rl_scored, reference_policies, tune_rl_prior,
};
use crate::posterior::PosteriorConfig;
use crate::report::rl::{format_rl_table, write_rl_report};
use crate::report::training::plot_training;
use crate::run::load_checkpoint;
use crate::train::ppo::Ppo;
use crate::train::{FitOptions, fit, init_from_reporting, open_run};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Recurrent PPO (Eq. 3), then (unless `no_eval`) evaluation of the trained agent under its own
/// posterior and `eval.posthoc` against the reference policies. Writes metrics/train.jsonl,
/// metrics/eval_rl.csv, metrics/eval_rl_returns.csv and the figures training (every logged
/// metric), training_return, cumulative_regret, entropy, kl (PNG + SVG).
pub fn train(
    cfg: &ExperimentConfig,
    runs: &Path,
    opts: FitOptions,
    overwrite: bool,
    init: Option<&Path>,
    no_eval: bool,
) -> Result<()> {
    let request = super::posthoc_request(cfg)?;
    let kind = env_kind(cfg.task)?;
    let cfg = &super::resolve_auto(cfg, || {
        let probe = RlModel::for_experiment(cfg)?;
        if let Some(path) = init {
            crate::train::init_from(&probe.params, path)?;
        }
        let alpha = cfg.env.alpha_train as f32;
        crate::agent::rl::mean_square_of_means(&probe, kind, alpha, super::AUTO_TASKS, cfg.seed)
    })?;
    let run = open_run(cfg, runs, &opts, overwrite)?;
    let model = RlModel::for_experiment(cfg)?;
    init_from_reporting(&model.params, init, &run)?;
    eprintln!(
        "run {} — {} on {kind} ({} parameters), {} PPO updates of {} tasks × {} interactions",
        run.root.display(),
        cfg.model.posterior.label(),
        model.params.num_scalars(),
        cfg.train.updates,
        cfg.train.batch,
        kind.horizon()
    );
    let mut learner = Ppo::new(cfg, model)?;
    let summary = fit(&mut learner, cfg, &run, &opts)?;
    eprintln!(
        "trained {} updates in {:.1} s; final {:?}",
        summary.updates_done, summary.wall_seconds, summary.last_metrics
    );
    let mut files: Vec<PathBuf> = plot_training(&run.train_metrics(), &run.figures())?;
    if !no_eval {
        let (results, refs, tunings) = evaluate(&learner.model, cfg, &request)?;
        files.extend(write_rl_report(
            &results,
            &refs,
            &run.metrics(),
            &run.figures(),
        )?);
        files.extend(write_tuning_csv(
            &run.metrics(),
            "negative mean return",
            &tunings,
        )?);
        println!("{}", format_rl_table(kind, &results, &refs));
    }
    println!("run folder: {}", run.root.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// Loads an RL checkpoint (any of latest / final / snapshot) as a model and its config.
pub fn load(checkpoint: &Path) -> Result<(RlModel, ExperimentConfig)> {
    let ck = load_checkpoint(checkpoint)?;
    env_kind(ck.config.task).with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    let model = RlModel::for_experiment(&ck.config)?;
    model.params.load_from(&ck.model_tensors(), true)?;
    Ok((model, ck.config))
}

/// Evaluates every variant of `request` on the test tasks of `cfg.eval` — for a bandit at each
/// `request.alphas` (default `env.alpha_test`; labels then end in `@ alpha=A`) — and runs the
/// reference policies on the same tasks. With `tune_prior`, each Laplace variant is also
/// evaluated with its prior tuned by held-out return (at `env.alpha_test`).
pub fn evaluate(
    model: &RlModel,
    cfg: &ExperimentConfig,
    request: &EvalRequest,
) -> Result<(Vec<RlEvalResult>, Vec<ReferenceCurve>, Tunings)> {
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
    Ok((results, refs, tunings))
}

/// `lvrnn eval` for an RL checkpoint: every argument is checked first. Writes into `out`:
/// eval_rl.csv, eval_rl_returns.csv, prior_tuning.csv (with --tune-prior), config.toml,
/// source.json, figures/.
pub fn eval(checkpoint: &Path, request: &EvalRequest, out: Option<PathBuf>) -> Result<()> {
    let (model, mut cfg) = load(checkpoint)?;
    request
        .apply(&mut cfg)
        .with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    let kind = env_kind(cfg.task)?;
    let out = out.unwrap_or_else(|| crate::run::default_eval_dir(checkpoint));
    let (results, refs, tunings) = evaluate(&model, &cfg, request)?;
    write_provenance(&out, checkpoint, &cfg)?;
    let figures = out.join("figures");
    let mut files = write_rl_report(&results, &refs, &out, &figures)?;
    files.extend(write_tuning_csv(&out, "negative mean return", &tunings)?);
    println!("{}", format_rl_table(kind, &results, &refs));
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
