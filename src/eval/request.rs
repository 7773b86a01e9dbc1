//! What `lvrnn eval` was asked to do, checked against the checkpoint before any work starts:
//! every argument is validated first, so a bad `--posterior` never costs an evaluation.

use super::tune::{Trial, Tuned};
use crate::config::{ExperimentConfig, Task};
use crate::posterior::PosteriorConfig;
use crate::util::write_csv_atomic;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Arguments of `lvrnn eval` other than the checkpoint and the output folder.
#[derive(Clone, Debug, Default)]
pub struct EvalRequest {
    /// Posterior variants to evaluate under besides the checkpoint's own (post hoc).
    pub posteriors: Vec<PosteriorConfig>,
    /// Override of `eval.tasks`.
    pub tasks: Option<usize>,
    /// Do not evaluate under the checkpoint's own posterior.
    pub only_given: bool,
    /// Also evaluate every Laplace variant with its prior tuned on held-out tasks.
    pub tune_prior: bool,
    /// Held-out tasks for the tuning (default: 64 regression, 256 RL).
    pub tune_tasks: Option<usize>,
    /// Bandit: evaluate at each of these Dirichlet concentrations (default: `env.alpha_test`).
    pub alphas: Vec<f64>,
    /// Override of `eval.actions` ("sample" or "greedy").
    pub actions: Option<String>,
    /// Override of `eval.predictive` ("sampled" or "linearised"; regression).
    pub predictive: Option<String>,
}

impl EvalRequest {
    /// Parses the `--posterior` SPECs; the error names the SPEC.
    pub fn parse_posteriors(specs: &[String]) -> Result<Vec<PosteriorConfig>> {
        specs
            .iter()
            .map(|s| s.parse().with_context(|| format!("--posterior `{s}`")))
            .collect()
    }

    /// Applies the overrides to the checkpoint's config and checks every argument against it.
    pub fn apply(&self, cfg: &mut ExperimentConfig) -> Result<()> {
        if let Some(t) = self.tasks {
            if t == 0 {
                bail!("--tasks must be a positive integer (got 0)");
            }
            cfg.eval.tasks = t;
        }
        if let Some(a) = &self.actions {
            crate::config::check_action_rule("--actions", a)?;
            if cfg.task == Task::Regression {
                bail!(
                    "--actions applies to bandit and gridworld checkpoints only (this one is `regression`)"
                );
            }
            cfg.eval.actions = a.clone();
        }
        if let Some(p) = &self.predictive {
            crate::config::check_predictive("--predictive", p)?;
            if cfg.task != Task::Regression {
                bail!(
                    "--predictive applies to regression checkpoints only (this one is `{}`)",
                    cfg.task
                );
            }
            cfg.eval.predictive = p.clone();
        }
        cfg.validate()?;
        let own = &cfg.model.posterior;
        for p in &self.posteriors {
            own.check_posthoc(p)
                .with_context(|| format!("--posterior `{p}`"))?;
        }
        if self.only_given && self.posteriors.is_empty() {
            bail!("nothing to evaluate: give --posterior or drop --only-given");
        }
        if self.tune_tasks == Some(0) {
            bail!("--tune-tasks must be a positive integer (got 0)");
        }
        if self.tune_prior
            && !self
                .variants(own)
                .iter()
                .any(|(_, p)| matches!(p, PosteriorConfig::Laplace(_)))
        {
            bail!(
                "--tune-prior tunes the prior of Laplace posteriors, but none is evaluated (the checkpoint is `{}`); add e.g. --posterior laplace:window=1,accumulate=sigma",
                own.label()
            );
        }
        if !self.alphas.is_empty() && cfg.task != Task::Bandit {
            bail!(
                "--alpha applies to bandit checkpoints only (this one is `{}`)",
                cfg.task
            );
        }
        if let Some(a) = self.alphas.iter().find(|a| !(**a > 0.0 && a.is_finite())) {
            bail!("--alpha must be a finite number > 0 (got {a})");
        }
        Ok(())
    }

    /// The variants to evaluate, labelled: the checkpoint's own (unless `only_given`), then each
    /// given one as `<label> (post-hoc on <own>)`; duplicates are dropped.
    pub fn variants(&self, own: &PosteriorConfig) -> Vec<(String, PosteriorConfig)> {
        let mut out: Vec<(String, PosteriorConfig)> = vec![];
        if !self.only_given {
            out.push((own.label(), own.clone()));
        }
        for p in &self.posteriors {
            let label = if p == own {
                own.label()
            } else {
                format!("{} (post-hoc on {})", p.label(), own.label())
            };
            if !out.iter().any(|(_, q)| q == p) {
                out.push((label, p.clone()));
            }
        }
        out
    }
}

/// The prior tunings of an evaluation: (variant label, its tuning).
pub type Tunings = Vec<(String, Tuned)>;

/// The label of a variant evaluated with a tuned prior.
pub fn tuned_label(label: &str, tuned: &Tuned) -> String {
    format!("{label}, tuned prior {}", tuned.describe())
}

/// Header of `prior_tuning.csv`.
pub const TUNING_HEADER: [&str; 6] = [
    "model",
    "prior_precision",
    "damping",
    "score",
    "criterion",
    "chosen",
];

/// Writes every tuning trial to `<dir>/prior_tuning.csv` (one row per candidate; `chosen` marks
/// the selected one); nothing (None) when no prior was tuned.
pub fn write_tuning_csv(
    dir: &Path,
    criterion: &str,
    tunings: &Tunings,
) -> Result<Option<std::path::PathBuf>> {
    if tunings.is_empty() {
        return Ok(None);
    }
    let rows: Vec<Vec<String>> = tunings
        .iter()
        .flat_map(|(label, t)| {
            t.trials.iter().map(move |tr: &Trial| {
                let chosen = tr.prior_precision == t.config.prior_precision
                    && tr.damping == t.config.damping;
                vec![
                    label.clone(),
                    format!("{}", tr.prior_precision),
                    format!("{}", tr.damping),
                    format!("{}", tr.score),
                    criterion.to_string(),
                    chosen.to_string(),
                ]
            })
        })
        .collect();
    let path = dir.join("prior_tuning.csv");
    write_csv_atomic(&path, &TUNING_HEADER, &rows)?;
    Ok(Some(path))
}

/// Records where an evaluation folder's results come from, so that `lvrnn report` can group
/// them with the run they belong to: `<out>/config.toml` (the checkpoint's config with this
/// evaluation's overrides) and `<out>/source.json`
/// `{"checkpoint": PATH, "update": U, "init_from": …}` (`init_from` as recorded by the run).
pub fn write_provenance(out: &Path, checkpoint: &Path, cfg: &ExperimentConfig) -> Result<()> {
    let update = crate::run::load_checkpoint(checkpoint)?.update;
    let path = std::fs::canonicalize(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    std::fs::create_dir_all(out)?;
    crate::util::write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let source = serde_json::json!({
        "checkpoint": path.display().to_string(),
        "update": update,
    });
    crate::util::write_atomic(
        &out.join("source.json"),
        serde_json::to_string_pretty(&source)?.as_bytes(),
    )?;
    Ok(())
}
