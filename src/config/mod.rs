//! Typed experiment configuration (one TOML file per experiment, see `configs/`), with
//! validation that names the offending key and the allowed values, and the settings a config
//! resolves to where it leaves them to the task ([`env_kind`], [`policy_sees_state`],
//! [`reward_loss_scale`]). [`memory`] estimates what a config needs before anything is
//! allocated; validation ends with its check that no tensor is larger than one allocation.

pub mod memory;

use crate::envs::EnvKind;
use crate::posterior::PosteriorConfig;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The problem a run trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Fourier-series regression, supervised ELBO (Eq. 2).
    Regression,
    /// Dirichlet–Bernoulli bandit, PPO with the posterior KL (Eq. 3).
    Bandit,
    /// 5×5 gridworld, PPO with the posterior KL (Eq. 3).
    Gridworld,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Task::Regression => "regression",
            Task::Bandit => "bandit",
            Task::Gridworld => "gridworld",
        })
    }
}

impl Task {
    /// The paper's element-wise gradient clip c for this task (App. B.1): 5 for regression,
    /// 1 for the RL tasks (the authors' PPO configs).
    pub fn default_clip_element(self) -> f64 {
        match self {
            Task::Regression => 5.0,
            Task::Bandit | Task::Gridworld => 1.0,
        }
    }

    /// The posterior-KL weight β where `train.beta` is left out: 1e-2 for regression (the
    /// paper's Figs. 3, 4, 9, 14), 1e-4 for the RL tasks (from the paper's grid {1, 1e-2,
    /// 1e-4}). At 1e-2 the consecutive-posterior KL collapses an RL agent's posterior before
    /// its policy learns to read it: within 50 updates KL(q_t ‖ q_{t−1}) falls from 3.5 to 4e-4
    /// while ‖z − μ‖/‖μ‖ rises from 1 to 15, and an agent acting on samples stays near random
    /// (results/gridworld-samples; the full VRNN on the bandit: results/bandit-vrnn-kl).
    pub fn default_beta(self) -> f64 {
        match self {
            Task::Regression => 1e-2,
            Task::Bandit | Task::Gridworld => 1e-4,
        }
    }
}

impl std::str::FromStr for Task {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Task::Regression, Task::Bandit, Task::Gridworld]
            .into_iter()
            .find(|t| t.to_string() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "`{s}` is not a task; allowed values: regression, bandit, gridworld"
                )
            })
    }
}

/// A whole experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name (the run folder is `<runs_dir>/<name>`).
    pub name: String,
    pub task: Task,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub ppo: PpoConfig,
    #[serde(default)]
    pub env: EnvConfig,
}

/// Optimisation (paper App. B.1): AdamW, lr 1e-3, weight decay 1e-6, clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of gradient updates (the paper runs 20,000).
    pub updates: usize,
    /// Tasks per batch (paper: 256).
    pub batch: usize,
    /// Points per regression task during training (paper: 50). RL uses the env horizon.
    pub seq_len: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Element-wise gradient clip c: each element to [−c, c]. Left out of the TOML, it is the
    /// task's default (`Task::default_clip_element`: regression 5, RL 1), filled in by
    /// `ExperimentConfig::from_toml_str`, so run folders and checkpoints store the value used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_element: Option<f64>,
    pub clip_global_norm: f64,
    /// Weight β of the posterior KL term (Eqs. 2, 3); absent: the task's default
    /// (`Task::default_beta`: regression 1e-2, RL 1e-4), filled in by
    /// `ExperimentConfig::from_toml_str`, so run folders and checkpoints store the value used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Write a resumable checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Keep model snapshots at these fractions of training (paper: ½ and ¾).
    pub snapshots: Vec<f64>,
    /// Threads for the tensor kernels (0: all cores).
    pub threads: usize,
    /// Learning rate over training: "constant" (the paper) or "linear" (annealed from `lr`
    /// to 0 over `updates`, as CleanRL's PPO does).
    pub lr_schedule: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            updates: 20_000,
            batch: 256,
            seq_len: 50,
            lr: 1e-3,
            weight_decay: 1e-6,
            clip_element: None,
            clip_global_norm: 1.0,
            beta: None,
            checkpoint_every: 500,
            snapshots: vec![0.5, 0.75],
            threads: 0,
            lr_schedule: "constant".into(),
        }
    }
}

/// Evaluation on held-out tasks (seeded separately from training).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Number of held-out test tasks (paper: B = 128).
    pub tasks: usize,
    /// Seed of the test tasks (independent of the training seed).
    pub seed: u64,
    /// Regression: evaluate after this many observed points.
    pub points: Vec<usize>,
    /// Regression: size of the dense test grid on [−1, 1] for the predictive cross-entropy.
    pub grid: usize,
    /// Regression: posterior samples m for the posterior predictive (paper: 30).
    pub samples: usize,
    /// Regression: number of observed points in the example-prediction figure.
    pub example_points: usize,
    /// Posterior variants to evaluate the trained network under, post hoc, besides its own
    /// (e.g. "laplace:window=1,accumulate=sigma").
    pub posthoc: Vec<String>,
    /// Also evaluate each Laplace posterior (the run's own or one of `eval.posthoc`) with its
    /// prior tuned on held-out tasks, beside the configured prior — what `lvrnn eval
    /// --tune-prior` does, in the run's final evaluation (the quickstart sets it).
    #[serde(skip_serializing_if = "is_false")]
    pub tune_prior: bool,
    /// RL: how the agent picks its action from the policy π(a | z, s) on the test tasks:
    /// "sample" (draw from it, as in training) or "greedy" (its most probable action; with a
    /// sampled z the agent still explores through the posterior, as Thompson sampling does).
    #[serde(skip_serializing_if = "is_sample")]
    pub actions: String,
    /// Regression: the posterior predictive p(y | x, H) the metrics are computed under:
    /// "sampled" (the Monte-Carlo mixture (1/m) Σ_s N(y; mean(x, z_s), σ²), z_s ~ q, as in
    /// the paper) or "linearised" (the head linearised at μ: N(y; mean(x, μ), σ² + J Σ Jᵀ),
    /// J = ∂mean/∂z at μ, Σ the posterior covariance; laplace-torch's `glm` predictive).
    #[serde(skip_serializing_if = "is_sampled")]
    pub predictive: String,
}

/// The values of `eval.predictive`.
pub const PREDICTIVES: &[&str] = &["sampled", "linearised"];

/// Refuses a predictive other than [`PREDICTIVES`], naming `key` (`eval.predictive`,
/// `--predictive`, a sweep stage's `predictive`) and the allowed values.
pub fn check_predictive(key: &str, value: &str) -> Result<()> {
    if !PREDICTIVES.contains(&value) {
        bail!(
            "{key} `{value}` is not valid; allowed values: {}",
            PREDICTIVES.join(", ")
        );
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // serde's skip_serializing_if passes &String
fn is_sampled(s: &String) -> bool {
    s == "sampled"
}

/// The values of `eval.actions`.
pub const ACTION_RULES: &[&str] = &["sample", "greedy"];

/// Refuses an action rule other than [`ACTION_RULES`], naming `key` (`eval.actions`,
/// `--actions`, a sweep stage's `actions`) and the allowed values.
pub fn check_action_rule(key: &str, value: &str) -> Result<()> {
    if !ACTION_RULES.contains(&value) {
        bail!(
            "{key} `{value}` is not valid; allowed values: {}",
            ACTION_RULES.join(", ")
        );
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::ptr_arg)] // serde's skip_serializing_if passes &String
fn is_sample(s: &String) -> bool {
    s == "sample"
}

impl EvalConfig {
    /// Whether test-time actions are the policy's most probable ones (`eval.actions = "greedy"`).
    pub fn greedy(&self) -> bool {
        self.actions == "greedy"
    }

    /// Whether the regression metrics use the linearised predictive
    /// (`eval.predictive = "linearised"`).
    pub fn linearised(&self) -> bool {
        self.predictive == "linearised"
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            tasks: 128,
            seed: 1_000_003,
            points: vec![0, 1, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 100, 200],
            grid: 64,
            samples: 30,
            example_points: 10,
            posthoc: vec![],
            tune_prior: false,
            actions: "sample".into(),
            predictive: "sampled".into(),
        }
    }
}

/// Recurrent PPO (paper Table 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    pub gamma: f64,
    pub gae_lambda: f64,
    pub clip_ratio: f64,
    pub value_scale: f64,
    pub policy_scale: f64,
    pub entropy_scale: f64,
    pub standardize_advantages: bool,
    /// Weight of the auxiliary reward-prediction loss (authors' bandit agent; 0 = off).
    pub reward_loss_scale: f64,
    /// What the policy and value heads see: "z" (bandit, Thompson-style) or "state_z" (grid).
    /// Empty: the environment's default.
    pub policy_input: String,
    /// Evaluate on the test tasks every this many updates (0: only at the end).
    pub eval_every: usize,
    /// Passes over each rollout (paper Table 1: 1, one gradient step per rollout).
    pub epochs: usize,
    /// Minibatches of whole task sequences per pass; must divide `train.batch` (paper: 1,
    /// full batch). Each minibatch replays its tasks from the zero carry, as recurrent PPO in
    /// CleanRL's LSTM script does.
    pub minibatches: usize,
    /// Stop the remaining passes of an update once the approximate KL between the rollout's
    /// policy and the current one exceeds this (CleanRL's `target_kl`; absent: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_kl: Option<f64>,
    /// Anneal the entropy bonus linearly from `entropy_scale` at the first update to this at
    /// the last (absent: `entropy_scale` throughout, the paper's constant bonus).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_final: Option<f64>,
}

impl PpoConfig {
    /// The entropy bonus of update `update` (0-based) of `updates`: `entropy_scale`, or with
    /// `entropy_final` the straight line from `entropy_scale` (update 0) to `entropy_final`
    /// (update `updates − 1`).
    pub fn entropy_at(&self, update: usize, updates: usize) -> f64 {
        match self.entropy_final {
            None => self.entropy_scale,
            Some(last) => {
                let frac = (update as f64 / updates.saturating_sub(1).max(1) as f64).min(1.0);
                self.entropy_scale + (last - self.entropy_scale) * frac
            }
        }
    }
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            gamma: 0.9,
            gae_lambda: 0.9,
            clip_ratio: 0.2,
            value_scale: 1.0,
            policy_scale: 1.0,
            entropy_scale: 0.1,
            standardize_advantages: false,
            reward_loss_scale: -1.0,
            policy_input: String::new(),
            eval_every: 0,
            epochs: 1,
            minibatches: 1,
            target_kl: None,
            entropy_final: None,
        }
    }
}

/// Environment parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Bandit Dirichlet concentration for training tasks (paper: 0.2).
    pub alpha_train: f64,
    /// Bandit Dirichlet concentration for test tasks (paper: 0.3).
    pub alpha_test: f64,
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self {
            alpha_train: 0.2,
            alpha_test: 0.3,
        }
    }
}

/// The values of `train.lr_schedule`.
pub const LR_SCHEDULES: &[&str] = &["constant", "linear"];

impl TrainConfig {
    /// The learning rate of update `update` (0-based) of `updates`: `lr`, or for "linear"
    /// lr·(1 − update/updates) (CleanRL's annealing: the first update uses `lr`).
    pub fn lr_at(&self, update: usize) -> f64 {
        match self.lr_schedule.as_str() {
            "linear" => self.lr * (1.0 - update as f64 / self.updates.max(1) as f64),
            _ => self.lr,
        }
    }
}

impl ExperimentConfig {
    pub fn from_toml_str(s: &str, origin: &str) -> Result<Self> {
        let mut cfg: Self =
            toml::from_str(s).map_err(|e| anyhow::anyhow!("invalid config {origin}: {e}"))?;
        cfg.resolve_defaults();
        cfg.validate()
            .with_context(|| format!("invalid config {origin}"))?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml_str(&s, &path.display().to_string())
    }

    /// Fills in the defaults that depend on the task (`train.clip_element`, `train.beta`); explicit values
    /// are kept.
    pub fn resolve_defaults(&mut self) {
        self.train.clip_element = Some(self.clip_element());
        self.train.beta = Some(self.beta());
    }

    /// The posterior-KL weight β training uses: `train.beta`, or the task's default where the
    /// config leaves it out.
    pub fn beta(&self) -> f64 {
        self.train.beta.unwrap_or_else(|| self.task.default_beta())
    }

    /// The element-wise gradient clip c training uses: `train.clip_element`, or the task's
    /// default where the config leaves it out.
    pub fn clip_element(&self) -> f64 {
        self.train
            .clip_element
            .unwrap_or_else(|| self.task.default_clip_element())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            bail!(
                "name must be a non-empty folder name without slashes (got `{}`)",
                self.name
            );
        }
        self.model.validate()?;
        if self.task == Task::Regression && self.model.sample_scale != 1.0 {
            bail!(
                "model.sample_scale = {} applies to the RL heads only; leave it out (1) for regression",
                self.model.sample_scale
            );
        }
        if self.task == Task::Regression
            && let Some(key) = [
                ("model.sample_warmup", self.model.sample_warmup.is_some()),
                ("model.sample_every", self.model.sample_every.is_some()),
            ]
            .iter()
            .find_map(|(k, set)| set.then_some(k))
        {
            bail!("{key} applies to the RL heads only; leave it out for regression");
        }
        let t = &self.train;
        for (k, v) in [
            ("train.updates", t.updates),
            ("train.batch", t.batch),
            ("train.seq_len", t.seq_len),
        ] {
            if v == 0 {
                bail!("{k} must be a positive integer (got 0)");
            }
        }
        for (k, v) in [
            ("train.lr", t.lr),
            ("train.clip_element", self.clip_element()),
            ("train.clip_global_norm", t.clip_global_norm),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{k} must be a finite number > 0 (got {v})");
            }
        }
        for (k, v) in [
            ("train.weight_decay", t.weight_decay),
            ("train.beta", self.beta()),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{k} must be a finite number >= 0 (got {v})");
            }
        }
        if !LR_SCHEDULES.contains(&t.lr_schedule.as_str()) {
            bail!(
                "train.lr_schedule = `{}` is not valid; allowed values: {}",
                t.lr_schedule,
                LR_SCHEDULES.join(", ")
            );
        }
        if let Some(f) = t.snapshots.iter().find(|f| !(**f > 0.0 && **f < 1.0)) {
            bail!("train.snapshots entries must be fractions strictly between 0 and 1 (got {f})");
        }
        let e = &self.eval;
        if e.tasks == 0 || e.grid == 0 || e.samples == 0 {
            bail!("eval.tasks, eval.grid and eval.samples must be positive integers");
        }
        if e.points.is_empty() {
            bail!("eval.points must list at least one number of observed points");
        }
        check_action_rule("eval.actions =", &e.actions)?;
        if self.task == Task::Regression && e.greedy() {
            bail!(
                "eval.actions = \"greedy\" applies to the RL tasks only; leave it out for regression"
            );
        }
        check_predictive("eval.predictive =", &e.predictive)?;
        if self.task != Task::Regression && e.linearised() {
            bail!(
                "eval.predictive = \"linearised\" applies to regression only (the RL tasks act on samples); leave it out for `{}`",
                self.task
            );
        }
        // Whether any posterior the run evaluates is a Laplace one (what `tune_prior` tunes).
        let mut laplace = matches!(self.model.posterior, PosteriorConfig::Laplace(_));
        for p in &e.posthoc {
            let target = p
                .parse::<PosteriorConfig>()
                .with_context(|| format!("eval.posthoc entry `{p}`"))?;
            self.model
                .posterior
                .check_posthoc(&target)
                .with_context(|| format!("eval.posthoc entry `{p}`"))?;
            laplace |= matches!(target, PosteriorConfig::Laplace(_));
        }
        if e.tune_prior && !laplace {
            bail!(
                "eval.tune_prior = true tunes the prior of Laplace posteriors, but the run evaluates none (model.posterior is `{}`, eval.posthoc {:?}); add e.g. eval.posthoc = [\"laplace:window=1,accumulate=sigma\"] or drop the key",
                self.model.posterior.label(),
                e.posthoc
            );
        }
        let p = &self.ppo;
        for (k, v) in [("ppo.gamma", p.gamma), ("ppo.gae_lambda", p.gae_lambda)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{k} must be in [0, 1] (got {v})");
            }
        }
        if p.clip_ratio.is_nan() || p.clip_ratio <= 0.0 {
            bail!("ppo.clip_ratio must be > 0 (got {})", p.clip_ratio);
        }
        for (k, v) in [("ppo.epochs", p.epochs), ("ppo.minibatches", p.minibatches)] {
            if v == 0 {
                bail!("{k} must be a positive integer (got 0)");
            }
        }
        if !t.batch.is_multiple_of(p.minibatches) {
            bail!(
                "ppo.minibatches = {} must divide train.batch = {} (minibatches are whole task sequences)",
                p.minibatches,
                t.batch
            );
        }
        if let Some(k) = p.target_kl
            && !(k > 0.0 && k.is_finite())
        {
            bail!(
                "ppo.target_kl must be a finite number > 0 (got {k}); leave it out to never stop early"
            );
        }
        if let Some(e) = p.entropy_final
            && !(e >= 0.0 && e.is_finite())
        {
            bail!(
                "ppo.entropy_final must be a finite number >= 0 (got {e}); leave it out for a constant bonus"
            );
        }
        if !["", "z", "state_z"].contains(&p.policy_input.as_str()) {
            bail!(
                "ppo.policy_input = `{}` is not valid; allowed values: z, state_z (or leave empty for the environment's default)",
                p.policy_input
            );
        }
        for (k, v) in [
            ("env.alpha_train", self.env.alpha_train),
            ("env.alpha_test", self.env.alpha_test),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{k} must be a finite number > 0 (got {v})");
            }
        }
        // Last: the estimate needs the other keys valid. Sizes no machine can hold fail here;
        // the comparison with this machine's memory is `memory::check_fits_machine`, at the
        // start of `lvrnn train`.
        memory::check_dimensions(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings resolved from an experiment config (the model, the memory estimate and PPO read them)
// ---------------------------------------------------------------------------------------------

/// The environment an RL task trains on.
pub fn env_kind(task: Task) -> Result<EnvKind> {
    match task {
        Task::Bandit => Ok(EnvKind::Bandit),
        Task::Gridworld => Ok(EnvKind::Gridworld),
        Task::Regression => bail!("`regression` is a supervised task, not an RL environment"),
    }
}

/// Whether the policy and value heads see the state embedding besides z
/// (`ppo.policy_input`; empty: bandit "z", gridworld "state_z").
pub fn policy_sees_state(cfg: &ExperimentConfig) -> Result<bool> {
    Ok(match cfg.ppo.policy_input.as_str() {
        "z" => false,
        "state_z" => true,
        "" => env_kind(cfg.task)? == EnvKind::Gridworld,
        other => bail!("ppo.policy_input = `{other}` is not valid; allowed values: z, state_z"),
    })
}

/// The weight of the reward-prediction loss: `ppo.reward_loss_scale`, or where it is negative
/// the environment default (bandit 1.0 as the authors' agent, gridworld 0 = no reward head).
pub fn reward_loss_scale(cfg: &ExperimentConfig) -> Result<f64> {
    if cfg.ppo.reward_loss_scale >= 0.0 {
        return Ok(cfg.ppo.reward_loss_scale);
    }
    Ok(match env_kind(cfg.task)? {
        EnvKind::Bandit => 1.0,
        EnvKind::Gridworld => 0.0,
    })
}

/// Architecture and posterior of a model (`[model]` in the TOML configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of each input embedding MLP (two layers) — paper: 256.
    #[serde(default = "d_embed")]
    pub embed_width: usize,
    /// LSTM hidden size — paper: 128.
    #[serde(default = "d_hidden")]
    pub hidden: usize,
    /// Posterior dimensionality n (the projection P: h → φ ∈ R^n) — paper: 32 or 64.
    #[serde(default = "d_features")]
    pub features: usize,
    /// Hidden sizes of the prediction / policy / value heads — paper: [256, 256, 64].
    #[serde(default = "d_head")]
    pub head_hidden: Vec<usize>,
    /// Number of posterior samples n_Z per step (outputs averaged over samples, App. B.3).
    #[serde(default = "d_nz")]
    pub n_z: usize,
    #[serde(default)]
    pub posterior: PosteriorConfig,
    /// RL: the scale s of the posterior noise in what the policy and value heads see,
    /// z = μ_t + s·Σ_t^{1/2} ε (1: samples of q_t, as the paper describes; 0: the posterior
    /// mean, which is what the authors' RL agents act on, see DESIGN.md). The KL term and the
    /// posterior statistics do not depend on it. Must be 1 for regression.
    #[serde(default = "d_sample_scale", skip_serializing_if = "is_one")]
    pub sample_scale: f64,
    /// RL: the fraction w of `train.updates` over which the training rollouts' noise scale
    /// ramps linearly from 0 to `sample_scale`, s_u = sample_scale · min(1, u / (w·U)) at
    /// update u of U (0: `sample_scale` from the first update). Absent:
    /// [`DEFAULT_SAMPLE_WARMUP`]. Evaluation (held out during training, and after it) always
    /// acts at `sample_scale`. Must be absent for regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_warmup: Option<f64>,
    /// RL: how often the heads' posterior sample is redrawn: `"step"` (a fresh ε at every
    /// step, z_t = μ_t + s·Σ_t^{1/2} ε_t) or `"task"` (one ε per task for its whole
    /// meta-episode, z_t = μ_t + s·Σ_t^{1/2} ε: each z_t is still a sample of q_t, and the
    /// agent keeps one hypothesis of the task while q_t narrows, as posterior sampling does).
    /// Absent: [`SampleEvery::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_every: Option<SampleEvery>,
}

/// How often an RL rollout redraws the noise ε of its posterior samples (`model.sample_every`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleEvery {
    /// A fresh ε at every step.
    Step,
    /// One ε per task, held for the whole meta-episode.
    Task,
}

impl SampleEvery {
    /// The rule when `model.sample_every` is absent.
    pub const DEFAULT: SampleEvery = SampleEvery::Step;
}

/// The warm-up fraction of the sample scale when `model.sample_warmup` is absent.
pub const DEFAULT_SAMPLE_WARMUP: f64 = 0.0;

fn d_sample_scale() -> f64 {
    1.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn d_embed() -> usize {
    256
}
fn d_hidden() -> usize {
    128
}
fn d_features() -> usize {
    64
}
fn d_head() -> Vec<usize> {
    vec![256, 256, 64]
}
fn d_nz() -> usize {
    1
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            embed_width: 256,
            hidden: 128,
            features: 64,
            head_hidden: d_head(),
            n_z: 1,
            posterior: PosteriorConfig::Rnn,
            sample_scale: 1.0,
            sample_warmup: None,
            sample_every: None,
        }
    }
}

impl ModelConfig {
    /// The noise scale of the training rollouts at update `update` (0-based) of `updates`:
    /// s_u = `sample_scale` · min(1, u / (w·U)) with w = `sample_warmup` (or its default);
    /// `sample_scale` throughout when w = 0.
    pub fn sample_scale_at(&self, update: usize, updates: usize) -> f64 {
        let w = self.sample_warmup.unwrap_or(DEFAULT_SAMPLE_WARMUP);
        let ramp = w * updates as f64;
        if ramp <= 0.0 {
            return self.sample_scale;
        }
        self.sample_scale * (update as f64 / ramp).min(1.0)
    }

    /// `model.sample_every`, or its default.
    pub fn sample_every(&self) -> SampleEvery {
        self.sample_every.unwrap_or(SampleEvery::DEFAULT)
    }

    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("model.embed_width", self.embed_width),
            ("model.hidden", self.hidden),
            ("model.features", self.features),
            ("model.n_z", self.n_z),
        ] {
            if v == 0 {
                bail!("{k} must be a positive integer (got 0)");
            }
        }
        if !(0.0..=1.0).contains(&self.sample_scale) {
            bail!(
                "model.sample_scale must be in [0, 1] (got {}): 1 acts on samples of the posterior, 0 on its mean",
                self.sample_scale
            );
        }
        if let Some(w) = self.sample_warmup
            && !(0.0..=1.0).contains(&w)
        {
            bail!(
                "model.sample_warmup must be a fraction in [0, 1] of train.updates (got {w}): the part of training over which the sample scale ramps from 0 to model.sample_scale"
            );
        }
        if self.head_hidden.contains(&0) {
            bail!(
                "model.head_hidden entries must be positive integers (got {:?})",
                self.head_hidden
            );
        }
        self.posterior.validate()
    }
}
