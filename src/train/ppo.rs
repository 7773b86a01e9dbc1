//! Recurrent PPO for the meta-RL tasks (paper Sec. 3.2 Eq. 3, Sec. 5.2, App. A.1.2, B.1, B.3,
//! Table 1). Read top to bottom, like CleanRL's single-file PPO:
//!
//! 1. [`RlModel`]: the recurrent core (App. B.1) plus a policy head, a value head and, for the
//!    bandit, an auxiliary reward head. At step t the core consumes
//!    x_t = (s_t, one-hot a_{t−1}, r_{t−1}) (zeros at t = 0), forms q_t, draws n_Z samples
//!    z ~ q_t, and the heads see z (bandit default, "z", Thompson-style) or [embedding of s_t, z]
//!    (gridworld default, "state_z"). Over the samples the policy's log-softmax is averaged and
//!    renormalised, and the value is averaged (App. B.3).
//! 2. [`rollout`]: B tasks for the env horizon T without gradients, actions sampled from the
//!    averaged policy; the noise ε of every step is kept.
//! 3. [`gae`]: generalised advantage estimates and λ-return targets with the env's discounts.
//! 4. [`ppo_loss`]: the trajectory is re-run with gradients under the stored noise (so the
//!    probability ratio ρ is exactly 1 at the rollout's parameters), then
//!    policy-clip loss + value loss − entropy bonus (exact entropy of the averaged policy)
//!    + β·mean_t KL(q_t ‖ stop_grad q_{t−1}) (Bayesian families) + reward-prediction loss.
//! 5. [`Ppo`]: the [`Learner`]: one update = one rollout of fresh tasks + one full-batch gradient
//!    step (Table 1: no minibatches). Seeding, AdamW, clipping, checkpoints, snapshots, resume
//!    and divergence handling are the generic `train::fit` loop's.
//!
//! Because each rollout feeds exactly one gradient step, the loss is always evaluated at the
//! rollout's parameters: ρ = 1, the clip never binds, and the policy gradient equals the plain
//! −A·∇log π (as in the authors' full-batch recurrent PPO). The clipped form is kept so that
//! the objective is the one Table 1 names.

use super::Learner;
use crate::agent::acting::Acting;
use crate::agent::replay::{LaplaceConstants, PosteriorSequence, SequenceInputs};
use crate::agent::{Core, CoreState, CoreStep, ModelConfig, randn};
use crate::config::{EvalConfig, ExperimentConfig, PpoConfig, Task};
use crate::envs::{EnvKind, MetaEnv, Step, make_env};
use crate::nn::Params;
use crate::nn::mlp::Head;
use crate::posterior::PosteriorConfig;
use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Settings resolved from the experiment config
// ---------------------------------------------------------------------------------------------

/// Core input kind 0: the observation s_t (obs_dim).
pub const INPUT_OBS: usize = 0;
/// Core input kind 1: the previous action a_{t−1}, one-hot (zeros at t = 0).
pub const INPUT_PREV_ACTION: usize = 1;
/// Core input kind 2: the previous reward r_{t−1} (0 at t = 0).
pub const INPUT_PREV_REWARD: usize = 2;

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

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// Core + policy π(a | [s^g,] z) + value v([s^g,] z) + optional reward model p(r | z, a).
pub struct RlModel {
    pub params: Params,
    pub core: Core,
    /// Logits of the action distribution, parameters `policy.*`.
    pub policy: Head,
    /// State value, parameters `value.*`.
    pub value: Head,
    /// Logit of the Bernoulli reward of the taken action from [z, one-hot a_t], `reward.*`.
    pub reward: Option<Head>,
    pub cfg: ModelConfig,
    pub num_actions: usize,
    pub obs_dim: usize,
    /// Heads see [embedding of s_t, z] (true) or z only (false).
    pub policy_sees_state: bool,
}

impl RlModel {
    /// Fresh weights drawn from `seed`. The reward head is created last, so the other weights
    /// do not depend on whether it exists.
    pub fn new(
        cfg: &ModelConfig,
        obs_dim: usize,
        num_actions: usize,
        policy_sees_state: bool,
        reward_head: bool,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Params::new();
        let core = Core::new(&mut params, cfg, &[obs_dim, num_actions, 1], &mut rng)?;
        let head_in = cfg.features
            + if policy_sees_state {
                cfg.embed_width
            } else {
                0
            };
        let policy = Head::new(
            &mut params,
            "policy",
            head_in,
            &cfg.head_hidden,
            num_actions,
            &mut rng,
        )?;
        let value = Head::new(&mut params, "value", head_in, &cfg.head_hidden, 1, &mut rng)?;
        let reward = match reward_head {
            true => Some(Head::new(
                &mut params,
                "reward",
                cfg.features + num_actions,
                &cfg.head_hidden,
                1,
                &mut rng,
            )?),
            false => None,
        };
        Ok(Self {
            params,
            core,
            policy,
            value,
            reward,
            cfg: cfg.clone(),
            num_actions,
            obs_dim,
            policy_sees_state,
        })
    }

    /// The model an RL experiment config describes (env defaults resolved), seeded by `cfg.seed`.
    pub fn for_experiment(cfg: &ExperimentConfig) -> Result<Self> {
        let env = make_env(env_kind(cfg.task)?, 1, cfg.env.alpha_train as f32);
        let reward_head = reward_loss_scale(cfg)? > 0.0;
        Self::new(
            &cfg.model,
            env.obs_dim(),
            env.num_actions(),
            policy_sees_state(cfg)?,
            reward_head,
            cfg.seed,
        )
    }

    /// The same network under another posterior family (post hoc); refuses a family whose
    /// parameters the network lacks, see [`PosteriorConfig::check_posthoc`].
    pub fn with_posterior(&self, posterior: &PosteriorConfig) -> Result<Self> {
        self.cfg.posterior.check_posthoc(posterior)?;
        let mut cfg = self.cfg.clone();
        cfg.posterior = posterior.clone();
        let other = Self::new(
            &cfg,
            self.obs_dim,
            self.num_actions,
            self.policy_sees_state,
            self.reward.is_some(),
            0,
        )?;
        let missing = other.params.load_from(&self.params.tensors(), false)?;
        if !missing.is_empty() {
            bail!(
                "posterior `{}` needs parameters the trained network lacks: {}",
                posterior.label(),
                missing.join(", ")
            );
        }
        Ok(other)
    }

    /// n_Z, the posterior samples per step (1 for a point estimate: its samples are identical).
    pub fn samples(&self) -> usize {
        if self.core.posterior.is_bayesian() {
            self.cfg.n_z
        } else {
            1
        }
    }

    /// The raw core inputs of one step for B tasks: s_t (B·obs_dim, row-major) and, after the
    /// first step, (a_{t−1}, r_{t−1}).
    pub fn inputs(&self, obs: &[f32], prev: Option<(&[usize], &[f32])>) -> Result<[Tensor; 3]> {
        let b = obs.len() / self.obs_dim;
        let [s, a, r]: [Vec<f32>; 3] = self.raw_inputs(obs, prev).try_into().expect("3 kinds");
        let device = &self.core.device;
        Ok([
            Tensor::from_vec(s, (b, self.obs_dim), device)?,
            Tensor::from_vec(a, (b, self.num_actions), device)?,
            Tensor::from_vec(r, (b, 1), device)?,
        ])
    }

    /// The raw core inputs of one step as plain rows (s_t; a_{t−1} one-hot; r_{t−1}), zeros
    /// for the previous action and reward at t = 0.
    pub fn raw_inputs(&self, obs: &[f32], prev: Option<(&[usize], &[f32])>) -> Vec<Vec<f32>> {
        let b = obs.len() / self.obs_dim;
        let mut a = vec![0f32; b * self.num_actions];
        let mut r = vec![0f32; b];
        if let Some((actions, rewards)) = prev {
            for (k, act) in actions.iter().enumerate() {
                a[k * self.num_actions + act] = 1.0;
            }
            r.copy_from_slice(rewards);
        }
        vec![obs.to_vec(), a, r]
    }

    /// The core inputs x_0..x_{T−1} of a rollout, for the time-batched replay.
    pub fn sequence_inputs(&self, ro: &Rollout) -> Result<SequenceInputs> {
        let mut kinds = vec![vec![]; 3];
        for t in 0..ro.horizon() {
            let prev = ro.previous(t);
            for (k, rows) in self.raw_inputs(&ro.obs[t], prev).into_iter().enumerate() {
                kinds[k].extend(rows);
            }
        }
        Ok(SequenceInputs {
            steps: ro.horizon(),
            batch: ro.batch(),
            kinds,
        })
    }

    /// Embeds x_t and steps the core: q_t (and KL(q_t ‖ stop_grad q_{t−1})), plus the embedding
    /// of s_t for the heads.
    pub fn observe(&self, state: &CoreState, x: &[Tensor; 3]) -> Result<(CoreStep, Tensor)> {
        let embedded = [
            self.core.embed(INPUT_OBS, &x[0])?,
            self.core.embed(INPUT_PREV_ACTION, &x[1])?,
            self.core.embed(INPUT_PREV_REWARD, &x[2])?,
        ];
        let step = self.core.step(state, &embedded)?;
        Ok((step, embedded[INPUT_OBS].clone()))
    }

    /// The heads' input for samples z (…, n_Z, B, n) and state embeddings (…, B, E):
    /// z, or [embedding of s_t, z] broadcast over the samples.
    pub fn head_input(&self, emb_s: &Tensor, z: &Tensor) -> Result<Tensor> {
        if !self.policy_sees_state {
            return Ok(z.clone());
        }
        let mut shape = z.dims().to_vec();
        *shape.last_mut().unwrap() = emb_s.dim(D::Minus1)?;
        let emb = emb_s
            .unsqueeze(z.rank() - 3)?
            .broadcast_as(shape)?
            .contiguous()?;
        Ok(Tensor::cat(&[&emb, z], D::Minus1)?)
    }

    /// log π(· | history) of the averaged policy, (…, B, A), from head inputs (…, n_Z, B, d).
    pub fn log_probs(&self, input: &Tensor) -> Result<Tensor> {
        average_log_probs(&self.policy.forward(input)?)
    }

    /// The value averaged over the samples, (…, B).
    pub fn values(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self
            .value
            .forward(input)?
            .squeeze(D::Minus1)?
            .mean(input.rank() - 3)?)
    }

    /// The reward model's logit for the taken actions, averaged over the samples, (…, B), from
    /// samples z (…, n_Z, B, n) and one-hot actions (…, B, A). None without a reward head.
    pub fn reward_logits(&self, z: &Tensor, actions: &Tensor) -> Result<Option<Tensor>> {
        let Some(head) = &self.reward else {
            return Ok(None);
        };
        let axis = z.rank() - 3;
        let mut shape = z.dims().to_vec();
        *shape.last_mut().unwrap() = self.num_actions;
        let a = actions.unsqueeze(axis)?.broadcast_as(shape)?.contiguous()?;
        let logits = head
            .forward(&Tensor::cat(&[z, &a], D::Minus1)?)?
            .squeeze(D::Minus1)?;
        Ok(Some(logits.mean(axis)?))
    }
}

/// log-softmax over the last axis (shift-invariant, so the max is detached).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    Ok(shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}

/// The ensemble-averaged policy (App. B.3): log-softmax of the logits (…, n_Z, B, A) averaged
/// over the sample axis, then renormalised by another log-softmax; returns (…, B, A).
pub fn average_log_probs(logits: &Tensor) -> Result<Tensor> {
    log_softmax(&log_softmax(logits)?.mean(logits.rank() - 3)?)
}

/// Exact entropy −Σ_a π(a) log π(a) of categorical distributions given as log-probabilities
/// (…, A); returns (…).
pub fn exact_entropy(log_probs: &Tensor) -> Result<Tensor> {
    Ok(log_probs.exp()?.mul(log_probs)?.sum(D::Minus1)?.neg()?)
}

/// One-hot rows (len, k) of `index`.
fn one_hot(index: &[usize], k: usize) -> Result<Tensor> {
    let mut v = vec![0f32; index.len() * k];
    for (row, &i) in index.iter().enumerate() {
        v[row * k + i] = 1.0;
    }
    Ok(Tensor::from_vec(v, (index.len(), k), &Device::Cpu)?)
}

/// A [t][b] table as a (T, B) tensor.
fn table(rows: &[Vec<f32>]) -> Result<Tensor> {
    let b = rows.first().map_or(0, |r| r.len());
    Ok(Tensor::from_vec(
        rows.concat(),
        (rows.len(), b),
        &Device::Cpu,
    )?)
}

/// Draws an index from a categorical distribution given as log-probabilities.
pub fn sample_categorical(log_probs: &[f32], rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.r#gen();
    let mut acc = 0.0;
    for (i, lp) in log_probs.iter().enumerate() {
        acc += (*lp as f64).exp();
        if u < acc {
            return i;
        }
    }
    log_probs.len() - 1
}

// ---------------------------------------------------------------------------------------------
// Rollout
// ---------------------------------------------------------------------------------------------

/// B trajectories of T steps, tables indexed [t][b] (t = 0 is the first interaction).
#[derive(Default)]
pub struct Rollout {
    /// s_t, B·obs_dim each.
    pub obs: Vec<Vec<f32>>,
    pub actions: Vec<Vec<usize>>,
    pub rewards: Vec<Vec<f32>>,
    /// The env's γ-multiplier of transition t (0 where an episode ended).
    pub discounts: Vec<Vec<f32>>,
    /// Per-step regret against the oracle (evaluation only).
    pub regrets: Vec<Vec<f32>>,
    /// The noise ε of step t, (n_Z, B, n): z = μ_t + Σ_t^{1/2} ε.
    pub noise: Vec<Tensor>,
    /// log π_old(a_t | history) of the taken actions.
    pub log_probs: Vec<Vec<f32>>,
    /// V_old(history up to s_t).
    pub values: Vec<Vec<f32>>,
    /// V_old after the last transition (from x_T = (s_T, a_{T−1}, r_{T−1})), used for GAE.
    pub bootstrap: Vec<f32>,
    /// Differential entropy of q_t (NaN for a point estimate); only filled when recorded.
    pub posterior_entropy: Vec<Vec<f64>>,
    /// KL(q_t ‖ q_{t−1}) (q_0 the prior at the zero carry; NaN for a point estimate); only
    /// filled when recorded.
    pub posterior_kl: Vec<Vec<f64>>,
    /// Laplace VRNN: the filter's statistics of every step (empty for the other families).
    pub laplace: Vec<LaplaceRecord>,
}

/// The Laplace statistics of one rollout step, reused by the loss (no gradient).
#[derive(Clone)]
pub struct LaplaceRecord {
    /// L_t^{−T} ε, (n_Z, B, n) row-major.
    pub offsets: Vec<f32>,
    /// (Λ_{t−1} + jitter·I)(μ_t − μ_{t−1}), (B, n).
    pub kl_grad: Vec<f32>,
    /// KL(q_t ‖ q_{t−1}) per task.
    pub kl: Vec<f64>,
}

impl Rollout {
    /// (a_{t−1}, r_{t−1}) of every task, None at t = 0.
    pub fn previous(&self, t: usize) -> Option<(&[usize], &[f32])> {
        (t > 0).then(|| (&self.actions[t - 1][..], &self.rewards[t - 1][..]))
    }

    /// Records one acting step: the actions taken under the policy's log-probabilities, the
    /// environment's answer, the noise ε and the values. Returns the next observation.
    pub fn push_step(
        &mut self,
        obs: Vec<f32>,
        actions: Vec<usize>,
        log_probs: &[Vec<f32>],
        out: Step,
        eps: Tensor,
        values: Vec<f32>,
    ) -> Vec<f32> {
        self.log_probs.push(
            actions
                .iter()
                .zip(log_probs)
                .map(|(a, lp)| lp[*a])
                .collect(),
        );
        self.obs.push(obs);
        self.actions.push(actions);
        self.rewards.push(out.reward);
        self.discounts.push(out.discount);
        self.regrets.push(out.regret);
        self.noise.push(eps);
        self.values.push(values);
        out.obs
    }

    pub fn horizon(&self) -> usize {
        self.actions.len()
    }

    pub fn batch(&self) -> usize {
        self.actions.first().map_or(0, |a| a.len())
    }

    /// Σ_t r_t per task.
    pub fn returns(&self) -> Vec<f64> {
        (0..self.batch())
            .map(|b| self.rewards.iter().map(|r| r[b] as f64).sum())
            .collect()
    }

    /// Σ_t regret_t per task.
    pub fn total_regret(&self) -> Vec<f64> {
        (0..self.batch())
            .map(|b| self.regrets.iter().map(|r| r[b] as f64).sum())
            .collect()
    }
}

/// Runs the policy on the tasks `env` holds (already reset; `first_obs` is s_0) for the env
/// horizon, without gradients (the core is stepped by `agent::acting`). Per step, in this
/// order: the noise ε, one uniform per task for the action, then the env's own draws, all from
/// `rng`. With `record_posterior`, also the entropy of q_t and KL(q_t ‖ q_{t−1}) per step and
/// task. For the Laplace VRNN the filter's statistics are kept for [`ppo_loss`].
///
/// Bootstrap: the task continues past T in the environment's dynamics (only the meta-episode
/// is cut), so the value of the state after the last transition, V(x_T), is computed with one
/// more core step and multiplied by that transition's discount in [`gae`] (the bandit's is
/// always 0, so the step is skipped when every last discount is 0).
pub fn rollout(
    model: &RlModel,
    env: &mut dyn MetaEnv,
    first_obs: Vec<f32>,
    rng: &mut ChaCha8Rng,
    record_posterior: bool,
) -> Result<Rollout> {
    let (b, horizon) = (env.batch(), env.horizon());
    let noise_shape = [model.samples(), b, model.cfg.features];
    let mut ro = Rollout::default();
    let mut acting = Acting::new(&model.core, b)?;
    let mut obs = first_obs;
    for t in 0..horizon {
        let prev = ro.previous(t);
        let eps = randn(rng, &noise_shape)?;
        let step = acting.observe(&model.raw_inputs(&obs, prev), &eps)?;
        let input = model.head_input(&step.embedded[INPUT_OBS], &step.z)?;
        let log_probs: Vec<Vec<f32>> = model.log_probs(&input)?.to_vec2()?;
        let values: Vec<f32> = model.values(&input)?.to_vec1()?;
        let actions: Vec<usize> = log_probs
            .iter()
            .map(|lp| sample_categorical(lp, rng))
            .collect();
        if record_posterior {
            ro.posterior_entropy
                .push(step.entropy.clone().unwrap_or_else(|| vec![f64::NAN; b]));
            ro.posterior_kl
                .push(step.kl.clone().unwrap_or_else(|| vec![f64::NAN; b]));
        }
        if let (Some((offsets, kl_grad)), Some(kl)) = (step.laplace, step.kl) {
            ro.laplace.push(LaplaceRecord {
                offsets,
                kl_grad,
                kl,
            });
        }
        let out = env.step(&actions, rng);
        obs = ro.push_step(obs, actions, &log_probs, out, eps, values);
    }
    let continues = ro
        .discounts
        .last()
        .is_some_and(|d| d.iter().any(|v| *v != 0.0));
    ro.bootstrap = if continues {
        let prev = ro.previous(horizon);
        let eps = randn(rng, &noise_shape)?;
        let step = acting.observe(&model.raw_inputs(&obs, prev), &eps)?;
        let input = model.head_input(&step.embedded[INPUT_OBS], &step.z)?;
        model.values(&input)?.to_vec1()?
    } else {
        vec![0.0; b]
    };
    Ok(ro)
}

// ---------------------------------------------------------------------------------------------
// Generalised advantage estimation
// ---------------------------------------------------------------------------------------------

/// GAE on [t][b] tables: δ_t = r_t + γ d_t V_{t+1} − V_t, A_t = δ_t + γ λ d_t A_{t+1}, with
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
}

/// The loss of Eq. (3) via PPO (Table 1) for a rollout with advantages and value targets
/// ([t][b]), at the rollout's parameters. The trajectory is replayed from the zero carry with
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
    let replay = core.replay(&model.sequence_inputs(ro)?)?;
    let post = core.posterior_sequence(&replay.phi)?;
    let device = &core.device;
    let (noise, laplace) = match &post {
        PosteriorSequence::Laplace { .. } => {
            if ro.laplace.len() != horizon {
                bail!("the rollout holds no Laplace statistics: make it with `ppo::rollout`");
            }
            let records = &ro.laplace;
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
    let z = post.samples(1, horizon, &noise)?; // (T, n_Z, B, n)
    let width = model.cfg.embed_width;
    let emb_s = replay
        .inputs
        .embedding(INPUT_OBS)?
        .reshape((horizon, b, width))?;
    let kl = post
        .kl(laplace.as_ref())?
        .map(|kl| kl.mean_all())
        .transpose()?;
    ppo_objective(model, ro, advantages, targets, ppo, beta, &z, &emb_s, kl)
}

/// The PPO objective from the samples z (T, n_Z, B, n), the state embeddings (T, B, E) and the
/// mean posterior KL (a scalar tensor; None for the point estimate): policy clip, value,
/// exact entropy, β·KL and the reward model. Shared by the fast and the reference loss.
#[allow(clippy::too_many_arguments)]
pub fn ppo_objective(
    model: &RlModel,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
    ppo: &PpoConfig,
    beta: f64,
    z: &Tensor,
    emb_s: &Tensor,
    kl: Option<Tensor>,
) -> Result<LossParts> {
    let (horizon, b) = (ro.horizon(), ro.batch());
    let input = model.head_input(emb_s, z)?;
    let log_probs = model.log_probs(&input)?; // (T, B, A)
    let values = model.values(&input)?; // (T, B)
    let taken = one_hot(&ro.actions.concat(), model.num_actions)?.reshape((
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
    let adv = table(&adv)?;
    let ratio = logp.sub(&table(&ro.log_probs)?)?.exp()?;
    let clipped = ratio.clamp(1.0 - ppo.clip_ratio, 1.0 + ppo.clip_ratio)?;
    let policy_loss = ratio
        .mul(&adv)?
        .minimum(&clipped.mul(&adv)?)?
        .mean_all()?
        .neg()?;
    // Value: semi-gradient towards the fixed λ-return.
    let value_loss = (values.sub(&table(targets)?)?.sqr()?.mean_all()? * 0.5)?;
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
            .sub(&logits.mul(&table(&ro.rewards)?)?)?
            .mean_all()?;
        loss = (loss + bce.affine(ppo.reward_loss_scale, 0.0)?)?;
        reward_loss = Some(bce.to_scalar::<f32>()? as f64);
    }
    let deviation = ratio
        .affine(1.0, -1.0)?
        .abs()?
        .max_keepdim(1)?
        .max_keepdim(0)?;
    Ok(LossParts {
        loss,
        policy_loss: policy_loss.to_scalar::<f32>()? as f64,
        value_loss: value_loss.to_scalar::<f32>()? as f64,
        entropy: entropy.to_scalar::<f32>()? as f64,
        kl,
        reward_loss,
        taken_log_prob: logp.mean_all()?.to_scalar::<f32>()? as f64,
        max_ratio_deviation: deviation.flatten_all()?.to_vec1::<f32>()?[0] as f64,
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
            beta: cfg.train.beta,
            eval: cfg.eval.clone(),
            alpha_test: cfg.env.alpha_test as f32,
        })
    }
}

impl Learner for Ppo {
    fn params(&self) -> &Params {
        &self.model.params
    }

    /// Metrics: return and regret (means over the batch's tasks of Σ_t r_t and Σ_t regret_t),
    /// the loss parts, and every `ppo.eval_every` updates `test_return` / `test_regret` on the
    /// held-out tasks for the parameters after `update` updates (its own random stream, so
    /// training draws the same data whatever `eval_every` is).
    fn loss(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let mut m = BTreeMap::new();
        if self.ppo.eval_every > 0 && update.is_multiple_of(self.ppo.eval_every) {
            let test = crate::rl_eval::evaluate_rl(
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
        let first_obs = self.env.reset(rng);
        let ro = rollout(&self.model, self.env.as_mut(), first_obs, rng, false)?;
        let (advantages, targets) = gae(
            &ro.rewards,
            &ro.values,
            &ro.discounts,
            &ro.bootstrap,
            self.ppo.gamma,
            self.ppo.gae_lambda,
        );
        let parts = ppo_loss(
            &self.model,
            &ro,
            &advantages,
            &targets,
            &self.ppo,
            self.beta,
        )?;
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        m.insert("return".into(), mean(ro.returns()));
        m.insert("regret".into(), mean(ro.total_regret()));
        m.insert("policy_loss".into(), parts.policy_loss);
        m.insert("value_loss".into(), parts.value_loss);
        m.insert("entropy".into(), parts.entropy);
        if let Some(kl) = parts.kl {
            m.insert("kl".into(), kl);
        }
        if let Some(r) = parts.reward_loss {
            m.insert("reward_loss".into(), r);
        }
        Ok((parts.loss, m))
    }

    fn headline(&self) -> &'static str {
        "return"
    }
}
