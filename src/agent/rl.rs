//! The meta-RL agent (paper Sec. 3.2, App. B.1, B.3) and how it acts: [`RlModel`] is the
//! recurrent core plus a policy head, a value head and, for the bandit, an auxiliary reward
//! head; [`rollout`] runs it on B tasks for the environment's horizon without gradients and
//! records what PPO ([`crate::train::ppo`]) and the evaluation ([`crate::eval::rl`]) need.
//!
//! At step t the core consumes x_t = (s_t, one-hot a_{t−1}, r_{t−1}) (zeros at t = 0), forms
//! q_t, draws n_Z samples z ~ q_t, and the heads see z (bandit default, "z", Thompson-style) or
//! [embedding of s_t, z] (gridworld default, "state_z"). Over the samples the policy's
//! log-softmax is averaged and renormalised, and the value is averaged (App. B.3).

use crate::agent::acting::{Acting, Embedded};
use crate::agent::replay::SequenceInputs;
use crate::agent::{Core, CoreState, CoreStep, Model, randn};
use crate::config::{ExperimentConfig, Task, env_kind, policy_sees_state, reward_loss_scale};
use crate::config::{ModelConfig, SampleEvery};
use crate::envs::{EnvKind, MetaEnv, Step, make_env};
use crate::nn::Params;
use crate::nn::head::{Head, HeadTrace, TableFactors};
use crate::nn::lstm_seq::SequenceTrace;
use anyhow::{Result, bail};
use candle_core::{D, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// The core's inputs (what an experiment config resolves to, e.g. whether the heads see the
// state, is in `crate::config`: `env_kind`, `policy_sees_state`, `reward_loss_scale`)
// ---------------------------------------------------------------------------------------------

/// Core input kind 0: the observation s_t (obs_dim).
pub const INPUT_OBS: usize = 0;
/// Core input kind 1: the previous action a_{t−1}, one-hot (zeros at t = 0).
pub const INPUT_PREV_ACTION: usize = 1;
/// Core input kind 2: the previous reward r_{t−1} (0 at t = 0).
pub const INPUT_PREV_REWARD: usize = 2;

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
    /// The scale s of the noise that [`RlModel::noise`] draws: `cfg.sample_scale`, except
    /// while PPO's rollouts warm it up (`model.sample_warmup`, set per update by the trainer).
    pub noise_scale: f64,
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
            noise_scale: cfg.sample_scale,
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

    /// n_Z, the posterior samples per step (1 for a point estimate: its samples are identical).
    pub fn samples(&self) -> usize {
        if self.core.posterior.is_bayesian() {
            self.cfg.n_z
        } else {
            1
        }
    }

    /// The noise ε (n_Z, B, n) of one step: standard normal, times s = [`RlModel::noise_scale`]
    /// (z = μ + s·Σ^{1/2}ε; s = 1 draws samples of q_t, s = 0 gives its mean). The draws from
    /// `rng` do not depend on s.
    pub fn noise(&self, rng: &mut ChaCha8Rng, batch: usize) -> Result<Tensor> {
        let shape = [self.samples(), batch, self.cfg.features];
        let eps = randn(rng, &shape, &self.core.device)?;
        Ok(match self.noise_scale {
            1.0 => eps,
            s => (eps * s)?,
        })
    }

    /// The noise of a rollout's steps under `model.sample_every`.
    pub fn noise_stream(&self) -> NoiseStream {
        NoiseStream {
            every: self.cfg.sample_every(),
            held: None,
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

    /// The embedded core inputs x_t = (emb(s_t), emb(a_{t−1}), emb(r_{t−1})); the first is
    /// also what the heads see of s_t ([`RlModel::head_input`]).
    pub fn embed_inputs(&self, x: &[Tensor; 3]) -> Result<Vec<Tensor>> {
        [INPUT_OBS, INPUT_PREV_ACTION, INPUT_PREV_REWARD]
            .iter()
            .map(|&k| self.core.embed(k, &x[k]))
            .collect()
    }

    /// Embeds x_t and steps the core: q_t (and KL(q_t ‖ stop_grad q_{t−1})), plus the embedding
    /// of s_t for the heads.
    pub fn observe(&self, state: &CoreState, x: &[Tensor; 3]) -> Result<(CoreStep, Tensor)> {
        let embedded = self.embed_inputs(x)?;
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

    /// [`RlModel::log_probs`] and [`RlModel::values`] together; with `traces` (the rollout's,
    /// at these parameters and for these inputs) the heads' forward values are taken from them
    /// and only their backward runs.
    pub fn log_probs_and_values(
        &self,
        input: &Tensor,
        traces: Option<&HeadTraces>,
    ) -> Result<(Tensor, Tensor)> {
        let (logits, values) = match traces {
            Some(t) => (
                self.policy.forward_traced(input, t.policy.clone())?,
                self.value.forward_traced(input, t.value.clone())?,
            ),
            None => (self.policy.forward(input)?, self.value.forward(input)?),
        };
        let values = values.squeeze(D::Minus1)?.mean(input.rank() - 3)?;
        Ok((average_log_probs(&logits)?, values))
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

impl Model for RlModel {
    const TASKS: &'static [Task] = &[Task::Bandit, Task::Gridworld];
    const KIND: &'static str = "an RL";

    fn params(&self) -> &Params {
        &self.params
    }
    fn core(&self) -> &Core {
        &self.core
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn for_experiment(cfg: &ExperimentConfig) -> Result<Self> {
        RlModel::for_experiment(cfg)
    }
    /// Same observation and action sizes, heads and reward head.
    fn rebuild(&self, cfg: &ModelConfig) -> Result<Self> {
        Self::new(
            cfg,
            self.obs_dim,
            self.num_actions,
            self.policy_sees_state,
            self.reward.is_some(),
            0,
        )
    }
    /// While acting on training tasks at `env.alpha_train` ([`mean_square_of_means`]).
    fn mean_square_of_means(&self, cfg: &ExperimentConfig, tasks: usize) -> Result<f64> {
        let alpha = cfg.env.alpha_train as f32;
        mean_square_of_means(self, env_kind(cfg.task)?, alpha, tasks, cfg.seed)
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

/// B trajectories of T steps, tables indexed `[t][b]` (t = 0 is the first interaction).
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
    /// The policy and value heads' forward on every step (kept for training only).
    pub heads: Option<HeadTraces>,
    /// [`crate::nn::Params::fingerprint`] of the parameters the rollout (and its Laplace
    /// statistics) was computed at; None where not recorded (evaluation rollouts).
    pub params: Option<u64>,
}

/// The noise ε of a rollout's steps (and of its bootstrap step), one [`NoiseStream::next`]
/// per step: a fresh [`RlModel::noise`] each step, or under `model.sample_every = "task"` the
/// first step's for every step. Each step draws from the rng either way, so the environment's
/// own draws are the same under both rules.
pub struct NoiseStream {
    every: SampleEvery,
    held: Option<Tensor>,
}

impl NoiseStream {
    pub fn next(&mut self, model: &RlModel, rng: &mut ChaCha8Rng, batch: usize) -> Result<Tensor> {
        let eps = model.noise(rng, batch)?;
        Ok(match self.every {
            SampleEvery::Step => eps,
            SampleEvery::Task => self.held.get_or_insert(eps).clone(),
        })
    }
}

/// How a rollout picks each action from the (logit- or moment-averaged) policy π(a | z, s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionRule {
    /// Draw a ~ π (training, and `eval.actions = "sample"`).
    Sample,
    /// The most probable action, lowest index on ties (`eval.actions = "greedy"`). The uniform
    /// a draw would use is still taken from the rng, so the environment's own draws are the
    /// same under either rule.
    Greedy,
}

impl ActionRule {
    /// The rule `eval.actions` names.
    pub fn of(eval: &crate::config::EvalConfig) -> Self {
        if eval.greedy() {
            Self::Greedy
        } else {
            Self::Sample
        }
    }

    fn pick(self, log_probs: &[f32], rng: &mut ChaCha8Rng) -> usize {
        let drawn = sample_categorical(log_probs, rng);
        match self {
            Self::Sample => drawn,
            Self::Greedy => crate::stats::argmax(log_probs),
        }
    }
}

/// What a rollout keeps besides the trajectory.
#[derive(Clone, Copy, Debug)]
pub struct Keep {
    /// The entropy of q_t and KL(q_t ‖ q_{t−1}) per step and task.
    pub posterior: bool,
    /// The policy and value heads' activations on every step ([`HeadTraces`]).
    pub heads: bool,
}

impl Keep {
    /// What a PPO update needs: the heads' activations, which the loss pass reuses.
    pub const TRAINING: Keep = Keep {
        posterior: false,
        heads: true,
    };
    /// What an evaluation reports: the posterior's entropy and KL per step.
    pub const EVALUATION: Keep = Keep {
        posterior: true,
        heads: false,
    };
}

/// The policy and value heads' forward on every step of a rollout, rows t-major (step t's rows
/// are its (n_Z, B) head inputs, as in the loss pass's (T, n_Z, B, d) input), and the
/// [`crate::nn::Params::fingerprint`] of the parameters they were computed at. With one
/// gradient step per rollout, the PPO loss is evaluated at exactly these parameters, so it
/// reuses them instead of running the heads forward a second time (`train::ppo::ppo_loss`).
/// The full VRNN's Cayley factors U_0..U_T are kept the same way: its loss pass then runs the
/// Cayley map's backward only; and the LSTM's states and gates: the loss pass's recurrence
/// neither runs forward nor recomputes its gates.
pub struct HeadTraces {
    pub params: u64,
    pub policy: Arc<HeadTrace>,
    pub value: Arc<HeadTrace>,
    /// The full VRNN's U of q_0..q_T, (B, n, n) per step (None for other families).
    pub cayley: Option<Arc<Vec<Tensor>>>,
    /// The LSTM's states and gates of steps 1..T: the loss pass's recurrence takes them
    /// (`nn::lstm_seq::lstm_sequence_known`) instead of running again.
    pub sequence: Option<Arc<SequenceTrace>>,
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

/// The columns `tasks` of a `[t][b]` table, in that order.
pub fn columns<T: Copy>(table: &[Vec<T>], tasks: &[usize]) -> Vec<Vec<T>> {
    table
        .iter()
        .map(|row| tasks.iter().map(|&k| row[k]).collect())
        .collect()
}

impl Rollout {
    /// The trajectories of the tasks `tasks` (indices into the batch, in this order): one
    /// minibatch of whole task sequences. The heads' activations are not carried over (the
    /// loss pass then runs the heads forward); the Laplace statistics are.
    pub fn select(&self, tasks: &[usize]) -> Result<Rollout> {
        let b = self.batch();
        if let Some(&k) = tasks.iter().find(|&&k| k >= b) {
            bail!("task index {k} is out of range for a rollout of {b} tasks");
        }
        let obs_dim = self.obs.first().map_or(0, |o| o.len() / b.max(1));
        let index = Tensor::from_vec(
            tasks.iter().map(|&k| k as u32).collect::<Vec<_>>(),
            tasks.len(),
            self.noise
                .first()
                .map_or(&candle_core::Device::Cpu, |t| t.device()),
        )?;
        let laplace = self
            .laplace
            .iter()
            .map(|r| {
                let n = r.kl_grad.len() / b;
                let nz = r.offsets.len() / (b * n);
                let mut offsets = Vec::with_capacity(nz * tasks.len() * n);
                for s in 0..nz {
                    for &k in tasks {
                        let at = (s * b + k) * n;
                        offsets.extend_from_slice(&r.offsets[at..at + n]);
                    }
                }
                LaplaceRecord {
                    offsets,
                    kl_grad: tasks
                        .iter()
                        .flat_map(|&k| r.kl_grad[k * n..(k + 1) * n].iter().copied())
                        .collect(),
                    kl: tasks.iter().map(|&k| r.kl[k]).collect(),
                }
            })
            .collect();
        Ok(Rollout {
            obs: self
                .obs
                .iter()
                .map(|o| {
                    tasks
                        .iter()
                        .flat_map(|&k| o[k * obs_dim..(k + 1) * obs_dim].iter().copied())
                        .collect()
                })
                .collect(),
            actions: columns(&self.actions, tasks),
            rewards: columns(&self.rewards, tasks),
            discounts: columns(&self.discounts, tasks),
            regrets: columns(&self.regrets, tasks),
            noise: self
                .noise
                .iter()
                .map(|e| Ok(e.index_select(&index, 1)?))
                .collect::<Result<_>>()?,
            log_probs: columns(&self.log_probs, tasks),
            values: columns(&self.values, tasks),
            bootstrap: tasks.iter().map(|&k| self.bootstrap[k]).collect(),
            posterior_entropy: columns(&self.posterior_entropy, tasks),
            posterior_kl: columns(&self.posterior_kl, tasks),
            laplace,
            heads: None,
            params: self.params,
        })
    }

    /// Whether some task's last transition did not end its episode (γ-multiplier ≠ 0): only
    /// then does the rollout need a bootstrap value.
    pub fn continues(&self) -> bool {
        self.discounts
            .last()
            .is_some_and(|d| d.iter().any(|v| *v != 0.0))
    }

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

/// The Laplace filter's statistics of every step of `ro` ([`LaplaceRecord`]) at the model's
/// current parameters: the rollout's inputs and noise replayed through the filter (what
/// [`rollout`] records, for a rollout whose statistics are stale because the parameters have
/// changed since, e.g. PPO's later epochs). Empty for the other families.
pub fn laplace_records(model: &RlModel, ro: &Rollout) -> Result<Vec<LaplaceRecord>> {
    if model.core.posterior.laplace().is_none() {
        return Ok(vec![]);
    }
    let mut acting = Acting::new(&model.core, ro.batch())?;
    acting.skip_stats();
    let mut out = Vec::with_capacity(ro.horizon());
    for t in 0..ro.horizon() {
        let step = acting.observe(&model.raw_inputs(&ro.obs[t], ro.previous(t)), &ro.noise[t])?;
        if let (Some((offsets, kl_grad)), Some(kl)) = (step.laplace, step.kl) {
            out.push(LaplaceRecord {
                offsets,
                kl_grad,
                kl,
            });
        }
    }
    Ok(out)
}

/// The mean of μ_{t,i}² over the steps, tasks and coordinates of the posterior means `model`
/// gives while acting (its current policy, no gradients) on `tasks` training tasks of `kind`
/// drawn from `seed`: the statistic [`crate::posterior::config::auto_scale`] turns into a prior
/// scale.
pub fn mean_square_of_means(
    model: &RlModel,
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
) -> Result<f64> {
    let mut env = make_env(kind, tasks, alpha);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let first = env.reset(&mut rng);
    let keep = Keep {
        posterior: false,
        heads: false,
    };
    let ro = rollout(
        model,
        env.as_mut(),
        first,
        &mut rng,
        keep,
        ActionRule::Sample,
    )?;
    let feed =
        |t: usize, _: &CoreState| model.embed_inputs(&model.inputs(&ro.obs[t], ro.previous(t))?);
    crate::agent::model::mean_square_along(&model.core, tasks, ro.horizon(), feed)
}

/// Runs the policy on the tasks `env` holds (already reset; `first_obs` is s_0) for the env
/// horizon, without gradients (the core is stepped by `agent::acting`), picking actions by
/// `actions`. Per step, in this order: the noise ε, one uniform per task for the action (drawn
/// under either rule), then the env's own draws, all from `rng`. What is kept besides the trajectory is set by `keep` ([`Keep`]). For the Laplace VRNN
/// the filter's statistics are kept for [`crate::train::ppo::ppo_loss`].
///
/// Bootstrap: the task continues past T in the environment's dynamics (only the meta-episode
/// is cut), so the value of the state after the last transition, V(x_T), is computed with one
/// more core step and multiplied by that transition's discount in [`crate::train::ppo::gae`] (the bandit's is
/// always 0, so the step is skipped when every last discount is 0).
pub fn rollout(
    model: &RlModel,
    env: &mut dyn MetaEnv,
    first_obs: Vec<f32>,
    rng: &mut ChaCha8Rng,
    keep: Keep,
    actions: ActionRule,
) -> Result<Rollout> {
    let (b, horizon, nz) = (env.batch(), env.horizon(), model.samples());
    let device = &model.core.device;
    let mut ro = Rollout::default();
    let mut acting = Acting::new(&model.core, b)?;
    if keep.heads {
        acting.keep_cayley()?;
        acting.keep_sequence(horizon);
    }
    if !keep.posterior {
        acting.skip_stats();
    }
    let weights = (model.policy.packed_values()?, model.value.packed_values()?);
    let (mut policy_trace, mut value_trace) = (HeadTrace::default(), HeadTrace::default());
    let mut obs = first_obs;
    let mut noise = model.noise_stream();
    let mut factors = TableFactors::default();
    for t in 0..horizon {
        let prev = ro.previous(t);
        let eps = noise.next(model, rng, b)?;
        let step = acting.observe(&model.raw_inputs(&obs, prev), &eps)?;
        // The heads on the (n_Z, B) inputs, as `RlModel::log_probs` / `values` compute them:
        // [embedding of s_t, z] (gathered from the input cache's table, whose factors are kept
        // for the run) or z.
        let heads = [
            (&model.policy, &weights.0[..]),
            (&model.value, &weights.1[..]),
        ];
        let z: Vec<f32> = step.z.flatten_all()?.to_vec1()?;
        let traces = match (&step.embedded, model.policy_sees_state) {
            (_, false) => Head::trace_all(&heads, &z, nz * b)?,
            (Embedded::Cached(slots), true) => {
                let table = acting.embedding_table(INPUT_OBS);
                Head::trace_all_gathered(&heads, &mut factors, table, slots, &z, nz)?
            }
            (Embedded::Rows(_), true) => {
                let emb = acting.embedding_rows(&step, INPUT_OBS)?;
                let input: Vec<f32> = model.head_input(&emb, &step.z)?.flatten_all()?.to_vec1()?;
                Head::trace_all(&heads, &input, nz * b)?
            }
        };
        let [policy, value]: [HeadTrace; 2] = traces
            .try_into()
            .map_err(|_| anyhow::anyhow!("two head traces"))?;
        let logits = Tensor::from_vec(policy.output.clone(), (nz, b, model.num_actions), device)?;
        let log_probs: Vec<Vec<f32>> = average_log_probs(&logits)?.to_vec2()?;
        let values: Vec<f32> = Tensor::from_vec(value.output.clone(), (nz, b), device)?
            .mean(0)?
            .to_vec1()?;
        if keep.heads {
            policy_trace.append(policy);
            value_trace.append(value);
            if t == 0 {
                policy_trace.reserve_rows(horizon * nz * b);
                value_trace.reserve_rows(horizon * nz * b);
            }
        }
        let chosen: Vec<usize> = log_probs.iter().map(|lp| actions.pick(lp, rng)).collect();
        if keep.posterior {
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
        let out = env.step(&chosen, rng);
        obs = ro.push_step(obs, chosen, &log_probs, out, eps, values);
    }
    // U of q_0..q_T (the bootstrap step below is not replayed by the loss).
    let cayley = acting.take_cayley();
    let sequence = acting.take_sequence();
    ro.bootstrap = if ro.continues() {
        let prev = ro.previous(horizon);
        let eps = noise.next(model, rng, b)?;
        let step = acting.observe(&model.raw_inputs(&obs, prev), &eps)?;
        let input = model.head_input(&acting.embedding_rows(&step, INPUT_OBS)?, &step.z)?;
        model.values(&input)?.to_vec1()?
    } else {
        vec![0.0; b]
    };
    if keep.heads {
        let params = model.params.fingerprint()?;
        ro.params = Some(params);
        ro.heads = Some(HeadTraces {
            params,
            policy: Arc::new(policy_trace),
            value: Arc::new(value_trace),
            cayley: cayley.map(Arc::new),
            sequence: sequence.map(Arc::new),
        });
    }
    Ok(ro)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Greedy takes the most probable action (lowest index on ties) and consumes the same one
    /// uniform a draw does, so the rest of the rollout's randomness is unchanged.
    #[test]
    fn greedy_takes_the_argmax_and_keeps_the_rng_stream() {
        let cases: [(&[f32], usize); 3] = [
            (&[0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()], 1),
            (&[0.4f32.ln(), 0.1f32.ln(), 0.4f32.ln(), 0.1f32.ln()], 0),
            (&[f32::NEG_INFINITY, 0.0], 1),
        ];
        for (log_probs, best) in cases {
            for seed in 0..20 {
                let (mut a, mut b) = (
                    ChaCha8Rng::seed_from_u64(seed),
                    ChaCha8Rng::seed_from_u64(seed),
                );
                assert_eq!(ActionRule::Greedy.pick(log_probs, &mut a), best);
                ActionRule::Sample.pick(log_probs, &mut b);
                assert_eq!(a.r#gen::<u64>(), b.r#gen::<u64>());
            }
        }
        // Sampling follows the probabilities: P(a = 1) = 0.5 above.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let lp = cases[0].0;
        let ones = (0..20_000)
            .filter(|_| ActionRule::Sample.pick(lp, &mut rng) == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 0.5).abs() < 0.015, "{ones}");
    }
}
