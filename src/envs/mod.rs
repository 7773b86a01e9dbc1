//! Task distributions (paper Appendix B.4): supervised Fourier regression, a 5-armed Dirichlet
//! bandit and a 5×5 sparse-reward gridworld, plus reference policies for evaluation.
//!
//! The two RL environments implement [`MetaEnv`]: a batch of B independent tasks, all stepped at
//! once. Every random draw comes from the `ChaCha8Rng` the caller passes in, in a fixed order,
//! so the same seed gives the same tasks, rewards and observations.

pub mod bandit;
pub mod belief;
pub mod grid_bayes;
pub mod gridworld;
pub mod reference;
pub mod regression;

pub use bandit::Bandit;
pub use gridworld::Gridworld;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The result of stepping every task of the batch once.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// (B·obs_dim) row-major: the observation after the step (after any reset to the start).
    pub obs: Vec<f32>,
    /// (B) reward of this transition.
    pub reward: Vec<f32>,
    /// (B) γ-multiplier of this transition: 0 where an episode ended with it, else 1.
    pub discount: Vec<f32>,
    /// (B) this step's regret against the oracle (evaluation only; never shown to the agent).
    pub regret: Vec<f32>,
}

/// A batch of B tasks from one task distribution, stepped together.
pub trait MetaEnv: Send {
    /// "bandit" or "gridworld".
    fn name(&self) -> &'static str;
    /// Number of tasks B stepped together.
    fn batch(&self) -> usize;
    /// Length of one task's observation vector.
    fn obs_dim(&self) -> usize;
    /// Number of discrete actions.
    fn num_actions(&self) -> usize;
    /// T: interactions per task (bandit 50, gridworld 100).
    fn horizon(&self) -> usize;
    /// Samples B fresh tasks; returns the first observation (B·obs_dim).
    fn reset(&mut self, rng: &mut ChaCha8Rng) -> Vec<f32>;
    /// Applies one action per task (`actions.len() == batch()`).
    fn step(&mut self, actions: &[usize], rng: &mut ChaCha8Rng) -> Step;
    /// True task parameters, for evaluation only (bandit: arm probabilities; gridworld:
    /// `[start_row, start_col, goal_row, goal_col]` as f32), one vector per task.
    fn task_params(&self) -> Vec<Vec<f32>>;
}

/// The RL task distributions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    Bandit,
    Gridworld,
}

impl EnvKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EnvKind; 2] = [EnvKind::Bandit, EnvKind::Gridworld];

    /// The lower-case name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvKind::Bandit => "bandit",
            EnvKind::Gridworld => "gridworld",
        }
    }

    /// T: interactions per task.
    pub fn horizon(self) -> usize {
        match self {
            EnvKind::Bandit => bandit::HORIZON,
            EnvKind::Gridworld => gridworld::HORIZON,
        }
    }

    /// Why `obs` (one task's observation) and `reward` could not have come from this
    /// environment, or `None`: the bandit observes the constant 1; the gridworld the one-hot row
    /// then the one-hot column of a 5×5 grid; both pay rewards 0 or 1.
    pub fn implausible(self, obs: &[f32], reward: f32) -> Option<String> {
        let one_hot = |v: &[f32]| {
            v.iter().all(|&x| x == 0.0 || x == 1.0) && v.iter().filter(|&&x| x == 1.0).count() == 1
        };
        let obs_ok = match self {
            EnvKind::Bandit => obs == [1.0],
            EnvKind::Gridworld => {
                let n = gridworld::SIZE;
                obs.len() == 2 * n && one_hot(&obs[..n]) && one_hot(&obs[n..])
            }
        };
        if !obs_ok {
            let what = match self {
                EnvKind::Bandit => "the bandit's observation is the constant 1".to_string(),
                EnvKind::Gridworld => format!(
                    "a gridworld observation is a one-hot row then a one-hot column ({0} + {0} values of 0 or 1, one 1 in each)",
                    gridworld::SIZE
                ),
            };
            return Some(format!(
                "observation {obs:?} is not one this {self} gives: {what}"
            ));
        }
        if reward != 0.0 && reward != 1.0 {
            return Some(format!(
                "prev_reward {reward} is not a {self} reward (0 or 1)"
            ));
        }
        None
    }
}

impl fmt::Display for EnvKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bandit" => Ok(EnvKind::Bandit),
            "gridworld" => Ok(EnvKind::Gridworld),
            other => anyhow::bail!("unknown environment '{other}' (allowed: bandit, gridworld)"),
        }
    }
}

/// Builds a batch of `batch` tasks. `alpha` is the bandit's Dirichlet concentration (0.2 for
/// training, 0.3 for testing); the gridworld ignores it.
pub fn make_env(kind: EnvKind, batch: usize, alpha: f32) -> Box<dyn MetaEnv> {
    match kind {
        EnvKind::Bandit => Box::new(Bandit::new(batch, alpha)),
        EnvKind::Gridworld => Box::new(Gridworld::new(batch)),
    }
}

/// One-hot encodes `index` into `out` (length = number of classes).
pub(crate) fn one_hot_into(out: &mut [f32], index: usize) {
    out.iter_mut().for_each(|v| *v = 0.0);
    out[index] = 1.0;
}
