//! Evaluation of RL agents on held-out tasks (paper Sec. 5.2, Figs. 4, 5, 11, 13, 14): per step
//! t = 1..T, mean and 99% CI over tasks of the reward, the cumulative regret, the posterior's
//! differential entropy and KL(q_t ‖ q_{t−1}), and the return of the whole trajectory; actions
//! are sampled from the policy (or, with `eval.actions = "greedy"`, its most probable ones). The test tasks are exactly those the reference policies of
//! [`crate::envs::reference`] run on (task i drawn from `task_rng(eval.seed, i)`), so the
//! agent's regret curve and the references' are paired. [`tune_rl_prior`] picks a post-hoc
//! Laplace prior by held-out return. [`evaluate_rl_scored`] also scores the posterior against
//! the exact belief ([`super::belief`]).

use super::belief::{BeliefAccumulator, BeliefScores};
use super::tune::{Tuned, log_grid, tune_prior};
use crate::agent::Model;
use crate::agent::rl::{ActionRule, Keep, RlModel, rollout};
use crate::config::EvalConfig;
use crate::envs::bandit::{Bandit, NUM_ARMS};
use crate::envs::gridworld::Gridworld;
use crate::envs::reference::{PARTICLES, simulate_policies, task_rng};
use crate::envs::{EnvKind, MetaEnv};
use crate::posterior::{LaplaceConfig, PosteriorConfig};
use crate::stats::{finite_mean_ci99, mean_ci99};
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Tasks rolled out together during evaluation.
const EVAL_CHUNK: usize = 256;

/// One row of the evaluation table: statistics of interaction t (1-based) over the test tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RlEvalRow {
    pub model: String,
    pub t: usize,
    pub reward_mean: f64,
    pub reward_ci99: f64,
    /// Cumulative regret through interaction t.
    pub cum_regret_mean: f64,
    pub cum_regret_ci99: f64,
    /// Entropy of q_t, the posterior the action at t is drawn under (NaN for the RNN).
    pub entropy_mean: f64,
    pub entropy_ci99: f64,
    /// KL(q_t ‖ q_{t−1}) (q_0 the prior at the zero carry; NaN for the RNN).
    pub kl_mean: f64,
    pub kl_ci99: f64,
}

/// An agent's evaluation.
#[derive(Clone, Debug)]
pub struct RlEvalResult {
    pub model: String,
    pub rows: Vec<RlEvalRow>,
    /// Σ_{t ≤ T} r_t: mean and 99% CI half-width over the tasks.
    pub return_mean: f64,
    pub return_ci99: f64,
    /// The posterior against the exact belief ([`evaluate_rl_scored`] only).
    pub belief: Option<BeliefScores>,
}

/// A reference policy on the same test tasks.
#[derive(Clone, Debug)]
pub struct ReferenceCurve {
    pub policy: String,
    /// Mean cumulative regret through t = 1..T, and its 99% CI half-width.
    pub cum_regret_mean: Vec<f64>,
    pub cum_regret_ci99: Vec<f64>,
    pub return_mean: f64,
    pub return_ci99: f64,
}

/// `count` test tasks starting at task `first`: task i is the one [`simulate_policies`] draws
/// for i (first thing from `task_rng(seed, i)`). Returns the env and its first observation.
pub fn test_env(
    kind: EnvKind,
    alpha: f32,
    first: usize,
    count: usize,
    seed: u64,
) -> (Box<dyn MetaEnv>, Vec<f32>) {
    match kind {
        EnvKind::Bandit => {
            let probs: Vec<[f64; NUM_ARMS]> = (first..first + count)
                .map(|i| {
                    let mut one = Bandit::new(1, alpha);
                    one.reset(&mut task_rng(seed, i));
                    one.probs()[0]
                })
                .collect();
            let mut env = Bandit::new(count, alpha);
            let obs = env.set_probs(&probs);
            (Box::new(env), obs)
        }
        EnvKind::Gridworld => {
            let tasks: Vec<_> = (first..first + count)
                .map(|i| {
                    let mut one = Gridworld::new(1);
                    one.reset(&mut task_rng(seed, i));
                    (one.start(0), one.goal(0))
                })
                .collect();
            let mut env = Gridworld::new(count);
            let obs = env.set_tasks(&tasks);
            (Box::new(env), obs)
        }
    }
}

/// Evaluates `model` on `eval.tasks` test tasks of `kind` (bandit at `alpha_test`), actions
/// sampled from its policy or its most probable ones (`eval.actions`; the agent's randomness
/// is seeded by `eval.seed` too).
pub fn evaluate_rl(
    model: &RlModel,
    label: &str,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha_test: f32,
) -> Result<RlEvalResult> {
    evaluate(model, label, kind, eval, alpha_test, false)
}

/// [`evaluate_rl`] on the same tasks with the same numbers, plus the scores of the posterior
/// against the exact belief ([`super::belief`]) in `belief`: what `lvrnn eval` and a training
/// run's final evaluation write.
pub fn evaluate_rl_scored(
    model: &RlModel,
    label: &str,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha_test: f32,
) -> Result<RlEvalResult> {
    evaluate(model, label, kind, eval, alpha_test, true)
}

fn evaluate(
    model: &RlModel,
    label: &str,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha_test: f32,
    score_belief: bool,
) -> Result<RlEvalResult> {
    let mut belief = score_belief.then(|| BeliefAccumulator::new(kind, alpha_test, eval.seed));
    let mut rng = ChaCha8Rng::seed_from_u64(eval.seed ^ 0xa6e7_5eed);
    let horizon = kind.horizon();
    // Per step t: one value per task.
    let (mut reward, mut cum_regret, mut entropy, mut kl) = (
        vec![vec![]; horizon],
        vec![vec![]; horizon],
        vec![vec![]; horizon],
        vec![vec![]; horizon],
    );
    let mut returns = vec![];
    for first in (0..eval.tasks).step_by(EVAL_CHUNK) {
        let count = EVAL_CHUNK.min(eval.tasks - first);
        let (mut env, obs) = test_env(kind, alpha_test, first, count, eval.seed);
        let rule = ActionRule::of(eval);
        let ro = rollout(model, env.as_mut(), obs, &mut rng, Keep::EVALUATION, rule)?;
        let mut cum = vec![0f64; count];
        for t in 0..horizon {
            for (c, r) in cum.iter_mut().zip(&ro.regrets[t]) {
                *c += *r as f64;
            }
            reward[t].extend(ro.rewards[t].iter().map(|r| *r as f64));
            cum_regret[t].extend_from_slice(&cum);
            entropy[t].extend_from_slice(&ro.posterior_entropy[t]);
            kl[t].extend_from_slice(&ro.posterior_kl[t]);
        }
        returns.extend(ro.returns());
        if let Some(b) = belief.as_mut() {
            b.add(model, &ro)?;
        }
    }
    let rows = (0..horizon)
        .map(|t| {
            let (reward_mean, reward_ci99) = mean_ci99(&reward[t]);
            let (cum_regret_mean, cum_regret_ci99) = mean_ci99(&cum_regret[t]);
            let (entropy_mean, entropy_ci99) = finite_mean_ci99(&entropy[t]);
            let (kl_mean, kl_ci99) = finite_mean_ci99(&kl[t]);
            RlEvalRow {
                model: label.to_string(),
                t: t + 1,
                reward_mean,
                reward_ci99,
                cum_regret_mean,
                cum_regret_ci99,
                entropy_mean,
                entropy_ci99,
                kl_mean,
                kl_ci99,
            }
        })
        .collect();
    let (return_mean, return_ci99) = mean_ci99(&returns);
    Ok(RlEvalResult {
        model: label.to_string(),
        rows,
        return_mean,
        return_ci99,
        belief: belief.map(BeliefAccumulator::finish),
    })
}

/// Every reference policy of `kind` on the same `tasks` test tasks (`alpha` is the bandit's
/// test concentration and the reference policies' prior): the cumulative-regret curves of
/// `envs::reference::reference_curves` plus the return, from one simulation.
pub fn reference_policies(
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
) -> Vec<ReferenceCurve> {
    simulate_policies(kind, alpha, tasks, seed, PARTICLES)
        .into_iter()
        .map(|sim| {
            let horizon = sim.traces.first().map_or(0, |tr| tr.regret.len());
            let mut cum = vec![0f64; sim.traces.len()];
            let (mut cum_regret_mean, mut cum_regret_ci99) = (vec![], vec![]);
            for t in 0..horizon {
                for (c, tr) in cum.iter_mut().zip(&sim.traces) {
                    *c += tr.regret[t];
                }
                let (m, h) = mean_ci99(&cum);
                cum_regret_mean.push(m);
                cum_regret_ci99.push(h);
            }
            let (return_mean, return_ci99) = mean_ci99(
                &sim.traces
                    .iter()
                    .map(|tr| tr.return_at(horizon))
                    .collect::<Vec<_>>(),
            );
            ReferenceCurve {
                policy: sim.policy,
                cum_regret_mean,
                cum_regret_ci99,
                return_mean,
                return_ci99,
            }
        })
        .collect()
}

/// Tunes the prior scales of the post-hoc Laplace posterior `posterior` of `model`
/// ([`crate::eval::tune::tune_prior`]) by the mean return on `tasks` held-out tasks of `kind`
/// (bandit at `alpha`): tasks and agent randomness from another seed than the test tasks.
pub fn tune_rl_prior(
    model: &RlModel,
    posterior: &LaplaceConfig,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha: f32,
    tasks: usize,
) -> Result<Tuned> {
    let held_out = EvalConfig {
        tasks,
        seed: eval.seed ^ super::tune::TUNING_SEED,
        ..eval.clone()
    };
    tune_prior(posterior, &log_grid(), |c| {
        let m = model.with_posterior(&PosteriorConfig::Laplace(c.clone()))?;
        Ok(-evaluate_rl(&m, "tuning", kind, &held_out, alpha)?.return_mean)
    })
}
