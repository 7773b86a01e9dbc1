//! [`Model`]: what the regression model and the RL model have in common — a recurrent core
//! (embeddings, LSTM, projection, posterior family; [`Core`]) with task heads on top, built from
//! a [`ModelConfig`]. Everything that does not care which heads sit on the core is written once
//! against this trait: loading a checkpoint ([`load`]), the post-hoc posterior
//! ([`Model::with_posterior`]: same weights, another family, paper Sec. 3.3), the `"auto"` prior
//! scale, and the `train` / `eval` / `inspect` commands (`crate::commands`, `crate::inspect`).

use crate::agent::{Core, CoreState};
use crate::config::{ExperimentConfig, ModelConfig, Task};
use crate::nn::Params;
use crate::posterior::PosteriorConfig;
use crate::run::load_checkpoint;
use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use std::path::Path;

/// A trained (or fresh) network of this project: a [`Core`] plus heads.
pub trait Model: Sized + Send + Sync + 'static {
    /// The tasks this kind of model is trained on (a checkpoint of another task is refused).
    const TASKS: &'static [Task];
    /// What the model is called in messages, with its article (`a regression`, `an RL`).
    const KIND: &'static str;

    /// Every trainable tensor, by name.
    fn params(&self) -> &Params;
    /// The recurrent core.
    fn core(&self) -> &Core;
    /// The configuration the network was built from.
    fn config(&self) -> &ModelConfig;
    /// The model `cfg` describes (environment defaults resolved), fresh weights from `cfg.seed`.
    fn for_experiment(cfg: &ExperimentConfig) -> Result<Self>;
    /// The same architecture (inputs and heads) under `cfg`, fresh weights from seed 0.
    fn rebuild(&self, cfg: &ModelConfig) -> Result<Self>;
    /// The mean of μ_{t,i}² over the posterior means the model gives on `tasks` training tasks
    /// of `cfg` (drawn from `cfg.seed`): the statistic [`crate::posterior::config::auto_scale`]
    /// turns into a prior scale.
    fn mean_square_of_means(&self, cfg: &ExperimentConfig, tasks: usize) -> Result<f64>;

    /// The same network under another posterior family (post hoc: same weights, no
    /// retraining). Refuses a family whose parameters the network lacks (a VRNN head on a
    /// network not trained as a VRNN), see [`PosteriorConfig::check_posthoc`].
    fn with_posterior(&self, posterior: &PosteriorConfig) -> Result<Self> {
        self.config().posterior.check_posthoc(posterior)?;
        let mut cfg = self.config().clone();
        cfg.posterior = posterior.clone();
        let other = self.rebuild(&cfg)?;
        let missing = other.params().load_from(&self.params().tensors(), false)?;
        if !missing.is_empty() {
            bail!(
                "posterior `{}` needs parameters the trained network lacks: {}",
                posterior.label(),
                missing.join(", ")
            );
        }
        Ok(other)
    }
}

/// Loads a checkpoint (any of latest / final / snapshot) as a model of kind `M` and its config;
/// a checkpoint of a task `M` is not trained on is refused with both names.
pub fn load<M: Model>(checkpoint: &Path) -> Result<(M, ExperimentConfig)> {
    let ck = load_checkpoint(checkpoint)?;
    if !M::TASKS.contains(&ck.config.task) {
        bail!(
            "checkpoint {} is a `{}` model, not {} one ({})",
            checkpoint.display(),
            ck.config.task,
            M::KIND,
            M::TASKS
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    let model = M::for_experiment(&ck.config)
        .with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    model.params().load_from(&ck.model_tensors(), true)?;
    Ok((model, ck.config))
}

/// [`load`], then [`Model::with_posterior`] when `posterior` names another family.
pub fn load_under<M: Model>(
    checkpoint: &Path,
    posterior: Option<&PosteriorConfig>,
) -> Result<(M, ExperimentConfig)> {
    let (model, cfg) = load::<M>(checkpoint)?;
    Ok(match posterior {
        Some(p) => (model.with_posterior(p)?, cfg),
        None => (model, cfg),
    })
}

/// The mean of μ_{t,i}² over the steps, tasks and coordinates of the posterior means along
/// `steps` steps of `batch` tasks whose embedded inputs `feed` gives ([`Core::unroll`],
/// detached): what [`Model::mean_square_of_means`] measures.
pub fn mean_square_along(
    core: &Core,
    batch: usize,
    steps: usize,
    feed: impl FnMut(usize, &CoreState) -> Result<Vec<Tensor>>,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    core.unroll(batch, steps, true, feed, |_, step, _| {
        let mean: Vec<f32> = step.state.q.mean.flatten_all()?.to_vec1()?;
        sum += mean.iter().map(|&m| (m as f64).powi(2)).sum::<f64>();
        count += mean.len();
        Ok(())
    })?;
    Ok(sum / count.max(1) as f64)
}
