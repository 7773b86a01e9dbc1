//! The `train`, `eval` and `inspect` commands, written once over an [`Experiment`]: what
//! differs between the supervised task ([`regression::Regression`]) and the RL tasks
//! ([`rl::Rl`]) — the learner, what an evaluation produces and how it is written — and nothing
//! else. Both evaluate the same way after training (the config's `eval.posthoc`) as `lvrnn eval`
//! does (an [`EvalRequest`]).

pub mod reference;
pub mod regression;
pub mod rl;

use crate::agent::model::{Model, load};
use crate::config::{ExperimentConfig, Task};
use crate::eval::request::{EvalRequest, Tunings, write_provenance, write_tuning_csv};
use crate::report::training::plot_training;
use crate::run::load_checkpoint;
use crate::train::{FitOptions, Learner, fit, init_from_reporting, open_run};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// One kind of experiment as the commands see it.
pub trait Experiment {
    type Model: Model;
    /// What trains the model (the supervised ELBO, PPO).
    type Learner: Learner;
    /// What one evaluation produces.
    type Results;
    /// The score prior tuning minimises, as `prior_tuning.csv` names it.
    const TUNING_SCORE: &'static str;

    /// The training run in a few words: updates, batch, sequence length.
    fn describe(cfg: &ExperimentConfig) -> Result<String>;
    fn learner(cfg: &ExperimentConfig, model: Self::Model) -> Result<Self::Learner>;
    fn trained(learner: &Self::Learner) -> &Self::Model;
    /// Every variant of `request` on the test tasks of `cfg.eval`; with `tune_prior`, each
    /// Laplace variant also with its prior tuned on held-out tasks.
    fn evaluate(
        model: &Self::Model,
        cfg: &ExperimentConfig,
        request: &EvalRequest,
    ) -> Result<(Self::Results, Tunings)>;
    /// Writes the evaluation's CSVs into `dir` and its figures into `figures`.
    fn write(
        results: &Self::Results,
        cfg: &ExperimentConfig,
        dir: &Path,
        figures: &Path,
    ) -> Result<Vec<PathBuf>>;
    /// The evaluation as the table the commands print.
    fn table(results: &Self::Results, cfg: &ExperimentConfig) -> Result<String>;
}

/// `lvrnn train`: trains `cfg` into `<runs>/<name>` (optionally finetuning from `init`), then
/// evaluates it under its own posterior and `eval.posthoc` unless `no_eval`.
pub fn train(
    cfg: &ExperimentConfig,
    runs: &Path,
    opts: FitOptions,
    overwrite: bool,
    init: Option<&Path>,
    no_eval: bool,
) -> Result<()> {
    let args = (runs, opts, overwrite, init, no_eval);
    match cfg.task {
        Task::Regression => train_as::<regression::Regression>(cfg, args),
        Task::Bandit | Task::Gridworld => train_as::<rl::Rl>(cfg, args),
    }
}

/// [`train`] for one kind of experiment: trains (Eq. 2 or Eq. 3), draws the training curves
/// (figures/training*), then evaluates into the run's metrics/ and figures/.
fn train_as<E: Experiment>(
    cfg: &ExperimentConfig,
    (runs, opts, overwrite, init, no_eval): (&Path, FitOptions, bool, Option<&Path>, bool),
) -> Result<()> {
    let request = posthoc_request(cfg)?;
    let cfg = &resolve_auto(cfg, || {
        let probe = E::Model::for_experiment(cfg)?;
        if let Some(path) = init {
            crate::train::init_from(probe.params(), path)?;
        }
        probe.mean_square_of_means(cfg, AUTO_TASKS)
    })?;
    let run = open_run(cfg, runs, &opts, overwrite)?;
    let model = E::Model::for_experiment(cfg)?;
    init_from_reporting(model.params(), init, &run)?;
    eprintln!(
        "run {} — {} ({} parameters), {}",
        run.root.display(),
        cfg.model.posterior.label(),
        model.params().num_scalars(),
        E::describe(cfg)?
    );
    let mut learner = E::learner(cfg, model)?;
    let summary = fit(&mut learner, cfg, &run, &opts)?;
    eprintln!(
        "trained {} updates in {:.1} s; final {:?}",
        summary.updates_done, summary.wall_seconds, summary.last_metrics
    );
    let mut files: Vec<PathBuf> = plot_training(&run.train_metrics(), &run.figures())?;
    if !no_eval {
        let (results, tunings) = E::evaluate(E::trained(&learner), cfg, &request)?;
        files.extend(E::write(&results, cfg, &run.metrics(), &run.figures())?);
        files.extend(write_tuning_csv(&run.metrics(), E::TUNING_SCORE, &tunings)?);
        println!("{}", E::table(&results, cfg)?);
    }
    println!("run folder: {}", run.root.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// `lvrnn eval`: evaluates a checkpoint as `request` asks, into `out` (default
/// `<run>/eval-<checkpoint stem>`): the evaluation's CSVs, prior_tuning.csv (with
/// --tune-prior), config.toml, source.json and figures/.
pub fn eval(checkpoint: &Path, request: &EvalRequest, out: Option<PathBuf>) -> Result<()> {
    match load_checkpoint(checkpoint)?.config.task {
        Task::Regression => eval_as::<regression::Regression>(checkpoint, request, out),
        Task::Bandit | Task::Gridworld => eval_as::<rl::Rl>(checkpoint, request, out),
    }
}

/// [`eval`] for one kind of experiment: every argument is checked before anything runs.
pub fn eval_as<E: Experiment>(
    checkpoint: &Path,
    request: &EvalRequest,
    out: Option<PathBuf>,
) -> Result<()> {
    let (model, mut cfg) = load::<E::Model>(checkpoint)?;
    request
        .apply(&mut cfg)
        .with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    let out = out.unwrap_or_else(|| crate::run::default_eval_dir(checkpoint));
    let (results, tunings) = E::evaluate(&model, &cfg, request)?;
    write_provenance(&out, checkpoint, &cfg)?;
    let mut files = E::write(&results, &cfg, &out, &out.join("figures"))?;
    files.extend(write_tuning_csv(&out, E::TUNING_SCORE, &tunings)?);
    println!("{}", E::table(&results, &cfg)?);
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// `lvrnn inspect`: one JSON line per step of `history` with the posterior the checkpoint (under
/// `posterior`, default its own) gives.
pub fn inspect(checkpoint: &Path, posterior: Option<&str>, history: &Path) -> Result<Vec<String>> {
    let model = crate::inspect::load(checkpoint, posterior)?;
    let rows = crate::inspect::read_history(history, model.columns())?;
    Ok(crate::inspect::trace(model.as_ref(), &rows)?
        .iter()
        .map(|s| s.json())
        .collect())
}

/// What `lvrnn train` evaluates after training: the own posterior and `eval.posthoc`.
fn posthoc_request(cfg: &ExperimentConfig) -> Result<EvalRequest> {
    Ok(EvalRequest {
        posteriors: EvalRequest::parse_posteriors(&cfg.eval.posthoc).context("eval.posthoc")?,
        tune_prior: cfg.eval.tune_prior,
        ..Default::default()
    })
}

/// Training tasks the `"auto"` prior scale is measured on ([`resolve_auto`]).
pub const AUTO_TASKS: usize = 16;

/// `cfg` with a Laplace posterior's `"auto"` scales chosen from the network the run starts
/// from (`mean_square` measures it: the mean of μ_{t,i}² on [`AUTO_TASKS`] training tasks),
/// by the rule of [`crate::posterior::config::auto_scale`]; `cfg` itself when nothing is
/// `"auto"`. Deterministic in the config and seed, so a resumed run resolves the same number.
pub fn resolve_auto(
    cfg: &ExperimentConfig,
    mean_square: impl FnOnce() -> Result<f64>,
) -> Result<ExperimentConfig> {
    let crate::posterior::PosteriorConfig::Laplace(c) = &cfg.model.posterior else {
        return Ok(cfg.clone());
    };
    if !c.has_auto() {
        return Ok(cfg.clone());
    }
    let ms = mean_square().context("measuring the posterior means for `auto`")?;
    let scale = crate::posterior::config::auto_scale(ms);
    let mut resolved = c.clone();
    resolved.resolve_auto(scale);
    eprintln!(
        "auto prior scale: mean μ² = {ms:.3e} on {AUTO_TASKS} training tasks → {scale:.4} ({})",
        [
            ("prior_precision", c.auto.prior_precision),
            ("damping", c.auto.damping)
        ]
        .iter()
        .filter(|(_, a)| *a)
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
    );
    let mut out = cfg.clone();
    out.model.posterior = crate::posterior::PosteriorConfig::Laplace(resolved);
    Ok(out)
}
