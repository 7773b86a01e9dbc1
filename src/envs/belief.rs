//! The exact belief of the two RL task distributions along an observed history, for scoring an
//! agent's posterior against it (`eval::belief`).
//!
//! - **Gridworld.** The goal is uniform over the cells other than the start and never observed.
//!   A transition from cell `from` by `action` enters `next = move_cell(from, action)` (known to
//!   the agent: it sees its position and its action); reward 1 says the goal is `next`, reward 0
//!   that it is not (the agent is then on `next`, or back on the start after an episode's last
//!   step, which still entered `next`). So after s transitions the goal is uniform over the
//!   candidate set C_s: every cell but the start and the cells entered so far, or {goal} once it
//!   was found, and the exact belief's entropy is ln |C_s| (ln 24 at s = 0 on the 5×5 grid, 0
//!   once the goal is found). [`GridBelief`] keeps C_s as a bitset.
//! - **Bandit.** The arm probabilities p ~ Dirichlet(α·1), rewards Bernoulli(p_a). The posterior
//!   is not a Dirichlet (the prior is not conjugate to per-arm Bernoulli rewards) and is
//!   represented as the reference policies represent it, by the importance-weighted particles of
//!   [`DirichletParticles`]; [`bandit_belief_path`] follows one history with them.

use super::bandit::NUM_ARMS;
use super::gridworld::{Cell, move_cell};
use super::reference::DirichletParticles;

/// The exact belief over the goal of one gridworld task: the candidate set C_s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridBelief {
    rows: usize,
    cols: usize,
    /// Bit i: cell (i / cols, i % cols) may still be the goal.
    candidates: u64,
}

impl GridBelief {
    /// Before any transition: every cell of the `rows × cols` grid but `start`.
    pub fn new(rows: usize, cols: usize, start: Cell) -> Self {
        assert!(rows * cols <= 64, "grid cells must fit a 64-bit mask");
        let all = if rows * cols == 64 {
            u64::MAX
        } else {
            (1u64 << (rows * cols)) - 1
        };
        GridBelief {
            rows,
            cols,
            candidates: all & !(1u64 << (start.0 * cols + start.1)),
        }
    }

    /// One transition: from `from` by `action`, paying `reward` (1 on the goal, else 0).
    pub fn observe(&mut self, from: Cell, action: usize, reward: f32) {
        let next = move_cell(from, action, self.rows, self.cols);
        let bit = 1u64 << (next.0 * self.cols + next.1);
        if reward > 0.5 {
            self.candidates = bit;
        } else {
            self.candidates &= !bit;
        }
    }

    /// |C_s|, the cells that may still be the goal.
    pub fn count(&self) -> usize {
        self.candidates.count_ones() as usize
    }

    /// Whether `cell` may still be the goal.
    pub fn contains(&self, cell: Cell) -> bool {
        self.candidates & (1u64 << (cell.0 * self.cols + cell.1)) != 0
    }

    /// The exact belief's entropy ln |C_s| (the goal is uniform over C_s).
    pub fn entropy(&self) -> f64 {
        (self.count().max(1) as f64).ln()
    }
}

/// ln |C_s| for s = 0..=n along one task's n transitions `(from, action, reward)`, starting on
/// `start`: entry s is the belief after the first s transitions.
pub fn grid_belief_entropies(
    rows: usize,
    cols: usize,
    start: Cell,
    steps: &[(Cell, usize, f32)],
) -> Vec<f64> {
    let mut belief = GridBelief::new(rows, cols, start);
    let mut out = Vec::with_capacity(steps.len() + 1);
    out.push(belief.entropy());
    for &(from, action, reward) in steps {
        belief.observe(from, action, reward);
        out.push(belief.entropy());
    }
    out
}

/// The bandit's posterior after some pulls, under the particle approximation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BanditBelief {
    /// E[p_k | data] per arm.
    pub mean: [f64; NUM_ARMS],
    /// Σ_k Var[p_k | data], the posterior's total variance.
    pub total_variance: f64,
    /// The particles' effective sample size 1 / Σ w².
    pub ess: f64,
}

impl BanditBelief {
    fn of(post: &DirichletParticles) -> Self {
        BanditBelief {
            mean: post.mean(),
            total_variance: post.variance().iter().sum(),
            ess: post.ess(),
        }
    }
}

/// The posterior after s = 0..=n of one task's n pulls `(arm, reward)`, starting from the
/// particles `prior` (drawn from the Dirichlet(α·1) prior; not changed): entry s after the first
/// s pulls, each a Bayes update of [`DirichletParticles::update`].
pub fn bandit_belief_path(
    prior: &DirichletParticles,
    pulls: &[(usize, bool)],
) -> Vec<BanditBelief> {
    let mut post = prior.clone();
    let mut out = Vec::with_capacity(pulls.len() + 1);
    out.push(BanditBelief::of(&post));
    for &(arm, reward) in pulls {
        post.update(arm, reward);
        out.push(BanditBelief::of(&post));
    }
    out
}
