//! The regression halves of `lvrnn train` and `lvrnn eval`.

use crate::agent::regression::RegressionModel;
use crate::config::{ExperimentConfig, Task};
use crate::eval::request::{EvalRequest, Tunings, tuned_label, write_provenance, write_tuning_csv};
use crate::eval::{EvalResult, evaluate_regression, tune_regression_prior, with_posterior};
use crate::posterior::PosteriorConfig;
use crate::report::training::plot_training;
use crate::report::{format_table, write_regression_report};
use crate::run::load_checkpoint;
use crate::train::supervised::Supervised;
use crate::train::{FitOptions, fit, init_from_reporting, open_run};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Trains the supervised ELBO (Eq. 2), draws its training curves (figures/training), then
/// evaluates (unless `no_eval`) into the run's metrics/ and figures/.
pub fn train(
    cfg: &ExperimentConfig,
    runs: &Path,
    opts: FitOptions,
    overwrite: bool,
    init: Option<&Path>,
    no_eval: bool,
) -> Result<()> {
    let request = super::posthoc_request(cfg)?;
    let cfg = &super::resolve_auto(cfg, || {
        let probe = RegressionModel::new(&cfg.model, cfg.seed)?;
        if let Some(path) = init {
            crate::train::init_from(&probe.params, path)?;
        }
        let points = cfg.train.seq_len;
        crate::agent::regression::mean_square_of_means(&probe, super::AUTO_TASKS, points, cfg.seed)
    })?;
    let run = open_run(cfg, runs, &opts, overwrite)?;
    let model = RegressionModel::new(&cfg.model, cfg.seed)?;
    init_from_reporting(&model.params, init, &run)?;
    eprintln!(
        "run {} — {} ({} parameters), {} updates of {} tasks × {} points",
        run.root.display(),
        cfg.model.posterior.label(),
        model.params.num_scalars(),
        cfg.train.updates,
        cfg.train.batch,
        cfg.train.seq_len
    );
    let mut learner = Supervised {
        model,
        batch: cfg.train.batch,
        points: cfg.train.seq_len,
        beta: cfg.beta(),
    };
    let summary = fit(&mut learner, cfg, &run, &opts)?;
    eprintln!(
        "trained {} updates in {:.1} s; final {:?}",
        summary.updates_done, summary.wall_seconds, summary.last_metrics
    );
    let mut files: Vec<PathBuf> = plot_training(&run.train_metrics(), &run.figures())?;
    if !no_eval {
        let (results, tunings) = evaluate(&learner.model, cfg, &request)?;
        files.extend(write_regression_report(
            &results,
            &run.metrics(),
            &run.figures(),
            Some(cfg.train.seq_len),
        )?);
        files.extend(write_tuning_csv(
            &run.metrics(),
            "mean predictive CE",
            &tunings,
        )?);
        println!("{}", format_table(&results, &[0, 10, 50, 100]));
    }
    println!("run folder: {}", run.root.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// Loads a regression checkpoint (any of latest / final / snapshot) as a model and its config.
pub fn load(checkpoint: &Path) -> Result<(RegressionModel, ExperimentConfig)> {
    let ck = load_checkpoint(checkpoint)?;
    if ck.config.task != Task::Regression {
        bail!(
            "checkpoint {} is a `{}` model, not a regression one",
            checkpoint.display(),
            ck.config.task
        );
    }
    let model = RegressionModel::new(&ck.config.model, ck.config.seed)?;
    model.params.load_from(&ck.model_tensors(), true)?;
    Ok((model, ck.config))
}

/// Evaluates every variant of `request` on the test tasks of `cfg.eval`; with `tune_prior`,
/// each Laplace variant also with its prior tuned on held-out tasks (next to the default).
pub fn evaluate(
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
        let variant = with_posterior(model, &p)?;
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
                with_posterior(model, &PosteriorConfig::Laplace(tuned.config.clone()))?;
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

/// `lvrnn eval` for a regression checkpoint: every argument is checked first.
pub fn eval(checkpoint: &Path, request: &EvalRequest, out: Option<PathBuf>) -> Result<()> {
    let (model, mut cfg) = load(checkpoint)?;
    request
        .apply(&mut cfg)
        .with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    let out = out.unwrap_or_else(|| crate::run::default_eval_dir(checkpoint));
    let (results, tunings) = evaluate(&model, &cfg, request)?;
    write_provenance(&out, checkpoint, &cfg)?;
    let figures = out.join("figures");
    let mut files = write_regression_report(&results, &out, &figures, Some(cfg.train.seq_len))?;
    files.extend(write_tuning_csv(&out, "mean predictive CE", &tunings)?);
    println!("{}", format_table(&results, &[0, 10, 50, 100]));
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
