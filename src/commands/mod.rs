//! The `train`, `eval` and `inspect` commands: each matches on the task once and hands over to
//! its [`regression`] or [`rl`] half. Both halves evaluate the same way after training (the
//! config's `eval.posthoc`) as `lvrnn eval` does (an [`EvalRequest`]).

pub mod reference;
pub mod regression;
pub mod rl;

use crate::config::{ExperimentConfig, Task};
use crate::eval::request::EvalRequest;
use crate::run::load_checkpoint;
use crate::train::FitOptions;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
    match cfg.task {
        Task::Regression => regression::train(cfg, runs, opts, overwrite, init, no_eval),
        Task::Bandit | Task::Gridworld => rl::train(cfg, runs, opts, overwrite, init, no_eval),
    }
}

/// `lvrnn eval`: evaluates a checkpoint as `request` asks, into `out` (default
/// `<run>/eval-<checkpoint stem>`).
pub fn eval(checkpoint: &Path, request: &EvalRequest, out: Option<PathBuf>) -> Result<()> {
    match load_checkpoint(checkpoint)?.config.task {
        Task::Regression => regression::eval(checkpoint, request, out),
        Task::Bandit | Task::Gridworld => rl::eval(checkpoint, request, out),
    }
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
