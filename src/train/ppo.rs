//! Recurrent PPO for the meta-RL tasks (paper Sec. 3.2 Eq. 3, Sec. 5.2, App. A.1.2, B.1, B.3,
//! Table 1). Read top to bottom, like CleanRL's single-file PPO:
//!
//! 1. [`RlModel`] (`crate::agent::rl`): the recurrent core (App. B.1) plus a policy head, a value head and, for the
//!    bandit, an auxiliary reward head. At step t the core consumes
//!    x_t = (s_t, one-hot a_{t−1}, r_{t−1}) (zeros at t = 0), forms q_t, draws n_Z samples
//!    z ~ q_t, and the heads see z (bandit default, "z", Thompson-style) or [embedding of s_t, z]
//!    (gridworld default, "state_z"). Over the samples the policy's log-softmax is averaged and
//!    renormalised, and the value is averaged (App. B.3).
//! 2. [`rollout`] (`crate::agent::rl`): B tasks for the env horizon T without gradients, actions sampled from the
//!    averaged policy; the noise ε of every step is kept.
//! 3. [`gae`]: generalised advantage estimates and λ-return targets with the env's discounts.
//! 4. [`ppo_loss`]: the trajectory is re-run with gradients under the stored noise (so the
//!    probability ratio ρ is exactly 1 at the rollout's parameters; the policy and value heads'
//!    forward values are the rollout's own, [`HeadTraces`], and only their backward runs), then
//!    policy-clip loss + value loss − entropy bonus (exact entropy of the averaged policy)
//!    + β·mean_t KL(q_t ‖ stop_grad q_{t−1}) (Bayesian families) + reward-prediction loss.
//! 5. [`Ppo`]: the [`Learner`]: one update = one rollout of fresh tasks + by default one
//!    full-batch gradient step (Table 1: no minibatches); `ppo.epochs` passes of
//!    `ppo.minibatches` minibatches of whole task sequences, stopped early by `ppo.target_kl`,
//!    as in CleanRL's recurrent PPO. Seeding, AdamW, the learning-rate schedule, clipping,
//!    checkpoints, snapshots, resume and divergence handling are the generic `train::fit` loop's.
//!
//! With the paper's one gradient step per rollout, the loss is evaluated at the rollout's
//! parameters: ρ = 1, the clip never binds, and the policy gradient equals the plain
//! −A·∇log π (as in the authors' full-batch recurrent PPO); the clipped form is kept so that
//! the objective is the one Table 1 names, and it binds from the second step on. Whatever the
//! rollout computed is reused by the loss only at the parameters it was computed at
//! (`Rollout::params`, a [`Params::fingerprint`]); later steps recompute it (the heads'
//! forward, the Cayley factors, the Laplace filter's statistics).

use super::optim::AdamW;
use super::{Learner, gradient_step, insert_step_stats};
use crate::agent::replay::{LaplaceConstants, PosteriorSequence};
use crate::agent::rl::{
    ActionRule, HeadTraces, INPUT_OBS, Keep, RlModel, Rollout, average_log_probs, columns,
    exact_entropy, laplace_records, rollout,
};
use crate::config::{EvalConfig, ExperimentConfig, PpoConfig, env_kind, reward_loss_scale};
use crate::envs::{EnvKind, MetaEnv, make_env};
use crate::nn::Params;
use crate::nn::head::{Gathered, Head};
use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Tensors from rollout tables
// ---------------------------------------------------------------------------------------------

/// One-hot rows (len, k) of `index`.
fn one_hot(index: &[usize], k: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; index.len() * k];
    for (row, &i) in index.iter().enumerate() {
        v[row * k + i] = 1.0;
    }
    Ok(Tensor::from_vec(v, (index.len(), k), device)?)
}

/// A [t][b] table as a (T, B) tensor.
fn table(rows: &[Vec<f32>], device: &Device) -> Result<Tensor> {
    let b = rows.first().map_or(0, |r| r.len());
    Ok(Tensor::from_vec(rows.concat(), (rows.len(), b), device)?)
}

// ---------------------------------------------------------------------------------------------
// Generalised advantage estimation
// ---------------------------------------------------------------------------------------------

/// GAE on `[t][b]` tables: δ_t = r_t + γ d_t V_{t+1} − V_t, A_t = δ_t + γ λ d_t A_{t+1}, with
/// V_T = `bootstrap` and A_T = 0; d_t is the env's discount multiplier of transition t.
/// Returns (advantages A, value targets A + V).
pub fn gae(
    rewards: &[Vec<f32>],
    values: &[Vec<f32>],
    discounts: &[Vec<f32>],
    bootstrap: &[f32],
    gamma: f64,
    lambda: f64,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let horizon = rewards.len();
    let b = bootstrap.len();
    let mut adv = vec![vec![0f32; b]; horizon];
    let mut targets = vec![vec![0f32; b]; horizon];
    for k in 0..b {
        let mut next_value = bootstrap[k] as f64;
        let mut next_adv = 0.0f64;
        for t in (0..horizon).rev() {
            let (r, v, d) = (
                rewards[t][k] as f64,
                values[t][k] as f64,
                discounts[t][k] as f64,
            );
            let delta = r + gamma * d * next_value - v;
            next_adv = delta + gamma * lambda * d * next_adv;
            next_value = v;
            adv[t][k] = next_adv as f32;
            targets[t][k] = (next_adv + v) as f32;
        }
    }
    (adv, targets)
}

// ---------------------------------------------------------------------------------------------
// The loss
// ---------------------------------------------------------------------------------------------

/// The PPO loss of one rollout and its parts (each unscaled; means over steps and tasks).
pub struct LossParts {
    /// policy_scale·policy_loss + value_scale·value_loss − entropy_scale·entropy + β·kl
    /// + reward_loss_scale·reward_loss.
    pub loss: Tensor,
    /// −mean(min(ρA, clip(ρ, 1 ± ε)A)).
    pub policy_loss: f64,
    /// mean(½(V − target)²).
    pub value_loss: f64,
    /// Mean exact entropy of the averaged policy.
    pub entropy: f64,
    /// mean_t KL(q_t ‖ stop_grad q_{t−1}) (None for the point estimate).
    pub kl: Option<f64>,
    /// Binary cross-entropy of the reward model (None without reward loss).
    pub reward_loss: Option<f64>,
    /// Mean log π(a_t | history) of the taken actions under the current parameters.
    pub taken_log_prob: f64,
    /// max |ρ − 1| over steps and tasks (0 up to rounding at the rollout's parameters).
    pub max_ratio_deviation: f64,
    /// CleanRL's `approx_kl`: mean((ρ − 1) − log ρ), an estimate of KL(π_old ‖ π) from the
    /// rollout's actions (0 at the rollout's parameters).
    pub approx_kl: f64,
    /// CleanRL's `clipfrac`: the fraction of steps with |ρ − 1| > ε.
    pub clip_fraction: f64,
    /// Bayesian families: mean over steps, samples and tasks of ‖z − μ‖ / ‖μ‖, how much of what
    /// the heads see is posterior noise (None for the point estimate and the reference loss).
    pub noise_ratio: Option<f64>,
}

/// The loss of Eq. (3) via PPO (Table 1) for a rollout with advantages and value targets
/// (`[t][b]`), at the rollout's parameters. The trajectory is replayed from the zero carry with
/// gradients in one time-batched pass (`agent::replay`: deduplicated embeddings, the fused LSTM
/// sequence, the projection and the posterior over all steps at once) under the rollout's
/// noise; the heads then run once on the stacked steps. For the Laplace VRNN the precisions
/// (sample offsets, KL parts) are the rollout's: they carry no gradient, and with one gradient
/// step per rollout they are exactly the statistics at these parameters.
/// `train::reference::ppo_loss` is the per-step version that the tests compare against.
pub fn ppo_loss(
    model: &RlModel,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
    ppo: &PpoConfig,
    beta: f64,
) -> Result<LossParts> {
    let (horizon, b) = (ro.horizon(), ro.batch());
    let (nz, n) = (model.samples(), model.cfg.features);
    let core = &model.core;
    // What the rollout computed is reused only at the parameters it was computed at.
    let fresh = match ro.params {
        Some(p) => p == model.params.fingerprint()?,
        None => false,
    };
    // The rollout's activations (LSTM, heads, Cayley factors), if computed at these parameters.
    let traces = ro
        .heads
        .as_ref()
        .filter(|t| fresh && Some(t.params) == ro.params);
    let sequence = traces.and_then(|t| t.sequence.as_ref());
    let replay = core.replay_known(&model.sequence_inputs(ro)?, sequence)?;
    let cayley = traces.and_then(|t| t.cayley.as_ref());
    let post = core.posterior_sequence_known(&replay.phi, cayley)?;
    let device = &core.device;
    let (noise, laplace) = match &post {
        PosteriorSequence::Laplace { .. } => {
            // The filter's statistics at these parameters: the rollout's, or computed anew.
            let recomputed;
            let records = if fresh && ro.laplace.len() == horizon {
                &ro.laplace
            } else {
                recomputed = laplace_records(model, ro)?;
                &recomputed
            };
            if records.len() != horizon {
                bail!(
                    "the Laplace filter gave {} steps for a rollout of {horizon}",
                    records.len()
                );
            }
            let offsets = records.iter().flat_map(|r| r.offsets.iter().copied());
            let kl_grad = records.iter().flat_map(|r| r.kl_grad.iter().copied());
            let kl: Vec<f64> = records.iter().flat_map(|r| r.kl.iter().copied()).collect();
            let c = LaplaceConstants::new(
                offsets.collect(),
                kl_grad.collect(),
                &kl,
                (horizon, nz, b, n),
                device,
            )?;
            (c.offsets.clone(), Some(c))
        }
        PosteriorSequence::Graph { .. } => (Tensor::stack(&ro.noise, 0)?, None),
    };
    let (z, kl) = post.samples_and_kl(1, horizon, &noise, laplace.as_ref())?; // z: (T, n_Z, B, n)
    let kl = kl.map(|kl| kl.mean_all()).transpose()?;
    let noise_ratio = match core.posterior.is_bayesian() {
        true => Some(noise_ratio(&post, &z)?),
        false => None,
    };
    // Both heads as one node on the rows [embedding of s_t, z] (or z), the state embeddings
    // gathered from the distinct rows' table inside it (`Head::forward_shared`): the same
    // values as `RlModel::log_probs_and_values` on `RlModel::head_input`, without the
    // (T·n_Z·B, d) input in the graph.
    let (table, index) = replay.inputs.embedding_table(INPUT_OBS);
    let gathered = Gathered {
        table,
        index,
        samples: nz,
        batch: b,
    };
    let outputs = Head::forward_shared(
        &[&model.policy, &model.value],
        model.policy_sees_state.then_some(&gathered),
        &z,
        traces.map(|t| vec![t.policy.clone(), t.value.clone()]),
    )?;
    let logits = outputs[0].reshape((horizon, nz, b, model.num_actions))?;
    let values = outputs[1].reshape((horizon, nz, b))?.mean(1)?;
    let heads = HeadOutputs {
        log_probs: average_log_probs(&logits)?,
        values,
        z: &z,
        kl,
    };
    let mut parts = ppo_terms(model, ro, advantages, targets, ppo, beta, heads)?;
    parts.noise_ratio = noise_ratio;
    Ok(parts)
}

/// mean over steps, samples and tasks of ‖z − μ‖ / ‖μ‖ for samples z (T, n_Z, B, n) of
/// q_1..q_T, the posteriors the heads see (no gradient).
fn noise_ratio(post: &PosteriorSequence, z: &Tensor) -> Result<f64> {
    let z = z.detach();
    let (steps, _, b, n) = z.dims4()?;
    let zero = Tensor::zeros((steps, 1, b, n), z.dtype(), z.device())?;
    let mu = post.samples(1, steps, &zero)?.detach(); // (T, 1, B, n): the means
    let noise = z.broadcast_sub(&mu)?.sqr()?.sum(D::Minus1)?.sqrt()?;
    let scale = mu.sqr()?.sum(D::Minus1)?.sqrt()?.affine(1.0, 1e-12)?;
    Ok(noise
        .broadcast_div(&scale)?
        .mean_all()?
        .to_scalar::<f32>()? as f64)
}

/// What the loss pass gives [`ppo_objective`]: the samples z (T, n_Z, B, n), the state
/// embeddings (T, B, E), the mean posterior KL (a scalar tensor; None for the point estimate)
/// and, where valid, the rollout's head activations ([`HeadTraces`]).
pub struct ObjectiveInputs<'a> {
    pub z: &'a Tensor,
    pub emb_s: &'a Tensor,
    pub kl: Option<Tensor>,
    pub traces: Option<&'a HeadTraces>,
}

/// The PPO objective from what the loss pass computed ([`ObjectiveInputs`]): policy clip,
/// value, exact entropy, β·KL and the reward model. Shared by the fast and the reference loss.
pub fn ppo_objective(
    model: &RlModel,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
    ppo: &PpoConfig,
    beta: f64,
    inputs: ObjectiveInputs,
) -> Result<LossParts> {
    let ObjectiveInputs {
        z,
        emb_s,
        kl,
        traces,
    } = inputs;
    let input = model.head_input(emb_s, z)?;
    // (T, B, A) and (T, B).
    let (log_probs, values) = model.log_probs_and_values(&input, traces)?;
    let heads = HeadOutputs {
        log_probs,
        values,
        z,
        kl,
    };
    ppo_terms(model, ro, advantages, targets, ppo, beta, heads)
}

/// What the heads gave for a rollout: log π of the averaged policy (T, B, A), the averaged
/// values (T, B), and, passed through, the samples z (T, n_Z, B, n) and the mean KL.
pub struct HeadOutputs<'a> {
    pub log_probs: Tensor,
    pub values: Tensor,
    pub z: &'a Tensor,
    pub kl: Option<Tensor>,
}

/// The PPO objective's terms from the heads' outputs ([`HeadOutputs`]): policy clip, value,
/// exact entropy, β·KL and the reward model (see [`LossParts`]).
pub fn ppo_terms(
    model: &RlModel,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
    ppo: &PpoConfig,
    beta: f64,
    heads: HeadOutputs,
) -> Result<LossParts> {
    let (horizon, b) = (ro.horizon(), ro.batch());
    let device = &model.core.device;
    let HeadOutputs {
        log_probs,
        values,
        z,
        kl,
    } = heads;
    let taken = one_hot(&ro.actions.concat(), model.num_actions, device)?.reshape((
        horizon,
        b,
        model.num_actions,
    ))?;
    let logp = log_probs.mul(&taken)?.sum(D::Minus1)?; // (T, B)

    // Policy: clipped surrogate.
    let adv = if ppo.standardize_advantages {
        standardized(advantages)
    } else {
        advantages.to_vec()
    };
    let adv = table(&adv, device)?;
    let log_ratio = logp.sub(&table(&ro.log_probs, device)?)?;
    let ratio = log_ratio.exp()?;
    let clipped = ratio.clamp(1.0 - ppo.clip_ratio, 1.0 + ppo.clip_ratio)?;
    let policy_loss = ratio
        .mul(&adv)?
        .minimum(&clipped.mul(&adv)?)?
        .mean_all()?
        .neg()?;
    // Value: semi-gradient towards the fixed λ-return.
    let value_loss = (values.sub(&table(targets, device)?)?.sqr()?.mean_all()? * 0.5)?;
    // Exact entropy of the averaged policy.
    let entropy = exact_entropy(&log_probs)?.mean_all()?;
    let mut loss = ((policy_loss.affine(ppo.policy_scale, 0.0)?
        + value_loss.affine(ppo.value_scale, 0.0)?)?
        - entropy.affine(ppo.entropy_scale, 0.0)?)?;
    // Posterior KL (Bayesian families).
    let kl = match kl {
        None => None,
        Some(kl) => {
            if beta > 0.0 {
                loss = (loss + kl.affine(beta, 0.0)?)?;
            }
            Some(kl.to_scalar::<f32>()? as f64)
        }
    };
    // Reward model: Bernoulli cross-entropy softplus(l) − r·l of the taken action's reward.
    let mut reward_loss = None;
    if ppo.reward_loss_scale > 0.0
        && let Some(logits) = model.reward_logits(z, &taken)?
    {
        let softplus = (logits.relu()? + logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
        let bce = softplus
            .sub(&logits.mul(&table(&ro.rewards, device)?)?)?
            .mean_all()?;
        loss = (loss + bce.affine(ppo.reward_loss_scale, 0.0)?)?;
        reward_loss = Some(bce.to_scalar::<f32>()? as f64);
    }
    let deviation = ratio
        .affine(1.0, -1.0)?
        .abs()?
        .max_keepdim(1)?
        .max_keepdim(0)?;
    let (log_ratio, ratio_d) = (log_ratio.detach(), ratio.detach());
    let approx_kl = ratio_d.affine(1.0, -1.0)?.sub(&log_ratio)?.mean_all()?;
    let clip_fraction = ratio_d
        .affine(1.0, -1.0)?
        .abs()?
        .gt(ppo.clip_ratio)?
        .to_dtype(candle_core::DType::F32)?
        .mean_all()?;
    Ok(LossParts {
        loss,
        policy_loss: policy_loss.to_scalar::<f32>()? as f64,
        value_loss: value_loss.to_scalar::<f32>()? as f64,
        entropy: entropy.to_scalar::<f32>()? as f64,
        kl,
        reward_loss,
        taken_log_prob: logp.mean_all()?.to_scalar::<f32>()? as f64,
        max_ratio_deviation: deviation.flatten_all()?.to_vec1::<f32>()?[0] as f64,
        approx_kl: approx_kl.to_scalar::<f32>()? as f64,
        clip_fraction: clip_fraction.to_scalar::<f32>()? as f64,
        noise_ratio: None,
    })
}

/// (A − mean) / (std + 1e-8) over all steps and tasks.
fn standardized(adv: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let all: Vec<f64> = adv.iter().flatten().map(|v| *v as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let std =
        (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / all.len().max(1) as f64).sqrt();
    adv.iter()
        .map(|row| {
            row.iter()
                .map(|v| ((*v as f64 - mean) / (std + 1e-8)) as f32)
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The learner
// ---------------------------------------------------------------------------------------------

/// Recurrent PPO on fresh training tasks each update.
pub struct Ppo {
    pub model: RlModel,
    pub kind: EnvKind,
    /// B = `train.batch` training tasks (bandit at `env.alpha_train`).
    pub env: Box<dyn MetaEnv>,
    /// Table 1's constants; `reward_loss_scale` resolved to the environment default.
    pub ppo: PpoConfig,
    /// Weight β of the posterior KL.
    pub beta: f64,
    /// Held-out evaluation every `ppo.eval_every` updates (0: never during training): the
    /// test tasks of `eval` (bandit at `alpha_test`).
    pub eval: EvalConfig,
    pub alpha_test: f32,
    /// `train.updates`, the length of the `ppo.entropy_final` schedule.
    pub updates: usize,
}

impl Ppo {
    pub fn new(cfg: &ExperimentConfig, model: RlModel) -> Result<Self> {
        let kind = env_kind(cfg.task)?;
        let env = make_env(kind, cfg.train.batch, cfg.env.alpha_train as f32);
        if env.obs_dim() != model.obs_dim || env.num_actions() != model.num_actions {
            bail!(
                "the model is built for obs_dim {} / {} actions, the {} has {} / {}",
                model.obs_dim,
                model.num_actions,
                env.name(),
                env.obs_dim(),
                env.num_actions()
            );
        }
        let mut ppo = cfg.ppo.clone();
        ppo.reward_loss_scale = reward_loss_scale(cfg)?;
        Ok(Self {
            model,
            kind,
            env,
            ppo,
            beta: cfg.beta(),
            eval: cfg.eval.clone(),
            alpha_test: cfg.env.alpha_test as f32,
            updates: cfg.train.updates,
        })
    }

    /// The training rollouts' noise scale at update `update` (`model.sample_warmup`).
    fn sample_scale_at(&self, update: usize) -> f64 {
        self.model.cfg.sample_scale_at(update, self.updates)
    }

    /// Whether the rollouts' noise scale changes over the run (it is then logged per update).
    fn warms_up(&self) -> bool {
        self.model.core.posterior.is_bayesian()
            && self.model.cfg.sample_scale_at(0, self.updates) != self.model.cfg.sample_scale
    }

    /// Table 1's constants as update `update` uses them: the entropy bonus on its schedule
    /// (`ppo.entropy_final`), the rest as configured.
    fn ppo_at(&self, update: usize) -> PpoConfig {
        PpoConfig {
            entropy_scale: self.ppo.entropy_at(update, self.updates),
            ..self.ppo.clone()
        }
    }
}

impl Learner for Ppo {
    fn params(&self) -> &Params {
        &self.model.params
    }

    /// The loss of one full-batch gradient step at the rollout's parameters (what one update
    /// is with the paper's `ppo.epochs = 1`, `ppo.minibatches = 1`); see [`Ppo::update`].
    fn loss(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let mut m = self.held_out(update)?;
        let (ro, advantages, targets) = self.collect(update, rng)?;
        let parts = ppo_loss(
            &self.model,
            &ro,
            &advantages,
            &targets,
            &self.ppo_at(update),
            self.beta,
        )?;
        rollout_metrics(&mut m, &ro, &advantages, &targets);
        loss_metrics(&mut m, &[&parts], self.beta);
        Ok((parts.loss, m))
    }

    fn multi_step(&self) -> bool {
        self.ppo.epochs * self.ppo.minibatches > 1
    }

    /// One PPO update, top to bottom: (1) the held-out evaluation when due, (2) a rollout of
    /// B fresh training tasks, (3) GAE, (4) `ppo.epochs` passes over the rollout, each in
    /// `ppo.minibatches` minibatches of whole task sequences (shuffled per pass; each replayed
    /// from the zero carry), one gradient step per minibatch, the passes stopped early once
    /// the last minibatch's approximate KL exceeds `ppo.target_kl`, (5) the diagnostics of the
    /// updated policy on the rollout.
    ///
    /// Metrics: return and regret (means over the batch's tasks of Σ_t r_t and Σ_t regret_t);
    /// the loss parts averaged over the gradient steps; `explained_variance` of the value head
    /// on the rollout; `adv_abs` = mean |A|; `kl_term` = β·KL and `kl_term_ratio` = β·KL /
    /// mean|A| (the KL penalty against the scale of the policy-gradient weights); `noise_ratio`
    /// = mean ‖z − μ‖/‖μ‖ (Bayesian families); the gradient's norms and clipping fractions
    /// (`train::insert_step_stats`); `approx_kl` and `clipfrac` of the updated policy against
    /// the rollout's on up to [`PROBE_TASKS`] of its tasks; with several steps, `ppo_steps`;
    /// and every `ppo.eval_every` updates `test_return` / `test_regret` on the held-out tasks
    /// for the parameters after `update` updates (their own random stream, so training draws
    /// the same data whatever `eval_every` is).
    fn update(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
        opt: &mut AdamW,
    ) -> Result<BTreeMap<String, f64>> {
        let mut m = self.held_out(update)?;
        let (ro, advantages, targets) = self.collect(update, rng)?;
        rollout_metrics(&mut m, &ro, &advantages, &targets);
        let ppo = self.ppo_at(update);
        if self.ppo.entropy_final.is_some() {
            m.insert("entropy_scale".into(), ppo.entropy_scale);
        }
        if self.warms_up() {
            m.insert("sample_scale".into(), self.sample_scale_at(update));
        }

        // Epochs × minibatches of gradient steps.
        let b = ro.batch();
        let per = b / self.ppo.minibatches;
        let mut order: Vec<usize> = (0..b).collect();
        let (mut parts, mut steps, mut losses) = (vec![], vec![], vec![]);
        for _epoch in 0..self.ppo.epochs {
            if self.ppo.minibatches > 1 {
                order.shuffle(rng);
            }
            for tasks in order.chunks(per) {
                let minibatch;
                let (sub, adv, tgt) = if self.ppo.minibatches == 1 {
                    (&ro, advantages.clone(), targets.clone())
                } else {
                    minibatch = ro.select(tasks)?;
                    (
                        &minibatch,
                        columns(&advantages, tasks),
                        columns(&targets, tasks),
                    )
                };
                let mut p = ppo_loss(&self.model, sub, &adv, &tgt, &ppo, self.beta)?;
                let (value, stats) = gradient_step(&p.loss, &self.model.params, opt)?;
                // Keep the numbers, not the step's graph.
                p.loss = Tensor::new(value as f32, &self.model.core.device)?;
                losses.push(value);
                steps.push(stats);
                parts.push(p);
            }
            let last_kl = parts.last().map_or(0.0, |p| p.approx_kl);
            if self.ppo.target_kl.is_some_and(|target| last_kl > target) {
                break;
            }
        }
        let loss = parts
            .iter()
            .map(|p| p.loss.to_scalar::<f32>().map(f64::from));
        let loss = loss.collect::<candle_core::Result<Vec<f64>>>()?;
        m.insert("loss".into(), loss.iter().sum::<f64>() / loss.len() as f64);
        loss_metrics(&mut m, &parts.iter().collect::<Vec<_>>(), self.beta);
        insert_step_stats(&mut m, &steps);
        if steps.len() > 1 {
            m.insert("ppo_steps".into(), steps.len() as f64);
        }

        // The updated policy against the rollout's.
        let probe: Vec<usize> = (0..b.min(PROBE_TASKS)).collect();
        let sub = ro.select(&probe)?;
        let after = ppo_loss(
            &self.model,
            &sub,
            &columns(&advantages, &probe),
            &columns(&targets, &probe),
            &ppo,
            self.beta,
        )?;
        m.insert("approx_kl".into(), after.approx_kl);
        m.insert("clipfrac".into(), after.clip_fraction);
        Ok(m)
    }

    fn headline(&self) -> &'static str {
        "return"
    }
}

/// Tasks of the rollout on which `approx_kl` and `clipfrac` of the updated policy are measured
/// after each update (the first ones; all of them in smaller batches).
pub const PROBE_TASKS: usize = 16;

impl Ppo {
    /// `test_return` / `test_regret` on the held-out tasks when `ppo.eval_every` says so.
    fn held_out(&self, update: usize) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        if self.ppo.eval_every > 0 && update.is_multiple_of(self.ppo.eval_every) {
            let test = crate::eval::rl::evaluate_rl(
                &self.model,
                "",
                self.kind,
                &self.eval,
                self.alpha_test,
            )?;
            m.insert("test_return".into(), test.return_mean);
            m.insert(
                "test_regret".into(),
                test.rows.last().map_or(f64::NAN, |r| r.cum_regret_mean),
            );
        }
        Ok(m)
    }

    /// A rollout of fresh training tasks with its advantages and value targets, acting with
    /// the noise scale of update `update` ([`ModelConfig::sample_scale_at`]).
    #[allow(clippy::type_complexity)]
    fn collect(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Rollout, Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        let first_obs = self.env.reset(rng);
        self.model.noise_scale = self.sample_scale_at(update);
        let ro = rollout(
            &self.model,
            self.env.as_mut(),
            first_obs,
            rng,
            Keep::TRAINING,
            ActionRule::Sample,
        );
        // Evaluation acts at the configured scale, whatever the warm-up did.
        self.model.noise_scale = self.model.cfg.sample_scale;
        let ro = ro?;
        let (advantages, targets) = gae(
            &ro.rewards,
            &ro.values,
            &ro.discounts,
            &ro.bootstrap,
            self.ppo.gamma,
            self.ppo.gae_lambda,
        );
        Ok((ro, advantages, targets))
    }
}

/// Return, regret, `explained_variance` (CleanRL's: 1 − Var(target − V)/Var(target) over the
/// rollout's steps and tasks, V the rollout's values) and `adv_abs` = mean |A|.
fn rollout_metrics(
    m: &mut BTreeMap<String, f64>,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
) {
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    m.insert("return".into(), mean(ro.returns()));
    m.insert("regret".into(), mean(ro.total_regret()));
    let y: Vec<f64> = targets.iter().flatten().map(|v| *v as f64).collect();
    let v: Vec<f64> = ro.values.iter().flatten().map(|v| *v as f64).collect();
    let var = |x: &[f64]| {
        let mu = x.iter().sum::<f64>() / x.len().max(1) as f64;
        x.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / x.len().max(1) as f64
    };
    let resid: Vec<f64> = y.iter().zip(&v).map(|(a, b)| a - b).collect();
    let var_y = var(&y);
    let ev = if var_y > 0.0 {
        1.0 - var(&resid) / var_y
    } else {
        f64::NAN
    };
    m.insert("explained_variance".into(), ev);
    let abs: Vec<f64> = advantages
        .iter()
        .flatten()
        .map(|a| a.abs() as f64)
        .collect();
    m.insert("adv_abs".into(), mean(abs));
}

/// The loss parts averaged over an update's gradient steps, and the KL penalty's size:
/// `kl_term` = β·KL, `kl_term_ratio` = β·KL / mean|A| (needs `adv_abs` in `m`).
fn loss_metrics(m: &mut BTreeMap<String, f64>, parts: &[&LossParts], beta: f64) {
    let k = parts.len().max(1) as f64;
    let mean = |f: &dyn Fn(&LossParts) -> f64| parts.iter().map(|p| f(p)).sum::<f64>() / k;
    m.insert("policy_loss".into(), mean(&|p| p.policy_loss));
    m.insert("value_loss".into(), mean(&|p| p.value_loss));
    m.insert("entropy".into(), mean(&|p| p.entropy));
    if parts.iter().all(|p| p.kl.is_some()) && !parts.is_empty() {
        let kl = mean(&|p| p.kl.unwrap_or(0.0));
        m.insert("kl".into(), kl);
        m.insert("kl_term".into(), beta * kl);
        if let Some(adv) = m.get("adv_abs").copied() {
            m.insert("kl_term_ratio".into(), beta * kl / adv.max(1e-12));
        }
    }
    if parts.iter().all(|p| p.reward_loss.is_some()) && !parts.is_empty() {
        m.insert(
            "reward_loss".into(),
            mean(&|p| p.reward_loss.unwrap_or(0.0)),
        );
    }
    if parts.iter().all(|p| p.noise_ratio.is_some()) && !parts.is_empty() {
        m.insert(
            "noise_ratio".into(),
            mean(&|p| p.noise_ratio.unwrap_or(0.0)),
        );
    }
}
