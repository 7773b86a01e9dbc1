//! Reference policies, run on the same environment code as the agents, and the reference tables
//! and regret curves computed from them.
//!
//! Bandit (`alpha` is both the task prior and the policies' prior):
//! - `random`: a uniformly random arm each pull.
//! - `thompson_is`: Thompson sampling on an importance-sampled approximation of the exact
//!   posterior under the Dirichlet(α·1) prior (the arms are dependent through Σp = 1). The
//!   posterior is represented by [`PARTICLES`] self-normalised importance-weighted particles drawn
//!   from the prior (weight ∝ likelihood Π_a p_a^{s_a}(1 − p_a)^{f_a}, updated multiplicatively
//!   after each pull); a particle is drawn by weight and its argmax arm is pulled. The table
//!   reports the particles' mean effective sample size 1/Σw² at each checkpoint.
//! - `greedy_is`: the argmax of the posterior mean under the same particle approximation.
//! - `knowledge_gradient`: the online knowledge-gradient policy (Ryzhov, Powell & Frazier 2012)
//!   on the same particle approximation, see [`knowledge_gradient`] and [`kg_arm`].
//! - `thompson_independent`: Thompson sampling with independent Beta(α, 4α) priors per arm (the
//!   Dirichlet's marginals), updated conjugately to Beta(α + s, 4α + f).
//! - `oracle`: always the best arm (regret 0).
//!
//! Gridworld (5×5, T = 100, episodes of 15 steps):
//! - `oracle`: knows the goal and walks a shortest path (regret 0 by definition).
//! - `random`: uniformly random moves.
//! - `bayes_optimal`: the Bayes-optimal policy over the whole horizon, exactly: the open-loop
//!   search path of [`grid_bayes::solve`] until the goal is found, shortest paths after. Its
//!   expected return over the 600 equally likely (start, goal) pairs, enumerated exactly, is
//!   22421/600 ≈ 37.368, regret 1779/600 ≈ 2.965 against the oracle's 24200/600 ≈ 40.333
//!   (`tests/grid_bayes.rs`).
//! - `episodic_search`: a myopic search, see [`plan_search`]: one episode at a time it visits the
//!   most new cells (all undiscovered cells alike, whatever their distance from the start, whose
//!   value after discovery is ⌊(T − τ)/d⌋ more trips), ties broken by earliest discoveries and
//!   then by search order. Exact expected return 22060/600 ≈ 36.767 (regret ≈ 3.567), i.e.
//!   0.602 below the Bayes-optimal value. Uses only what the agent observes (positions and rewards).

use super::bandit::{self, Bandit, NUM_ARMS};
use super::grid_bayes::{self, FxMap, SearchProblem};
use super::gridworld::{
    self, Cell, EPISODE_LEN, Gridworld, NUM_ACTIONS, manhattan, move_cell, shortest_path_action,
};
use super::{EnvKind, MetaEnv};
use crate::stats::{argmax, mean_ci99};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// Importance-sampling particles per task for the approximation of the exact Dirichlet
/// posterior used by `thompson_is`, `greedy_is` and `knowledge_gradient`.
///
/// Accuracy, measured once (bandit α = 0.3, seed 0, the ignored tests in `tests/reference.rs`):
/// - along 300 exact-Thompson histories, against an independent set of 64× as many particles:
///   total-variation distance of the Thompson action distribution P(argmax p = k | data)
///   ≈ 0.011 on average (90th percentile 0.02–0.04) at t = 1, 10, 25, 50; largest error of the
///   posterior mean ≈ 0.007; effective sample size ≈ 3300 / 980 / 390 / 210 at t = 1/10/25/50;
/// - cumulative regret at T = 50 over 2000 tasks, 4096 vs 65536 particles (paired: same tasks,
///   same reward random numbers): thompson_is 5.31 vs 5.38 (paired difference −0.07 ± 0.24),
///   greedy_is 3.83 vs 3.79 (+0.04 ± 0.33), i.e. indistinguishable at that task count.
pub const PARTICLES: usize = 4096;

/// The bandit reference policies, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BanditPolicy {
    Random,
    ThompsonIs,
    GreedyIs,
    KnowledgeGradient,
    ThompsonIndependent,
    Oracle,
}

impl BanditPolicy {
    pub const ALL: [BanditPolicy; 6] = [
        BanditPolicy::Random,
        BanditPolicy::ThompsonIs,
        BanditPolicy::GreedyIs,
        BanditPolicy::KnowledgeGradient,
        BanditPolicy::ThompsonIndependent,
        BanditPolicy::Oracle,
    ];
    pub fn name(self) -> &'static str {
        match self {
            BanditPolicy::Random => "random",
            BanditPolicy::ThompsonIs => "thompson_is",
            BanditPolicy::GreedyIs => "greedy_is",
            BanditPolicy::KnowledgeGradient => "knowledge_gradient",
            BanditPolicy::ThompsonIndependent => "thompson_independent",
            BanditPolicy::Oracle => "oracle",
        }
    }
    /// Whether the policy acts on the [`DirichletParticles`] posterior approximation.
    pub fn uses_particles(self) -> bool {
        matches!(
            self,
            BanditPolicy::ThompsonIs | BanditPolicy::GreedyIs | BanditPolicy::KnowledgeGradient
        )
    }
}

/// The gridworld reference policies, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GridPolicy {
    Random,
    EpisodicSearch,
    BayesOptimal,
    Oracle,
}

impl GridPolicy {
    pub const ALL: [GridPolicy; 4] = [
        GridPolicy::Random,
        GridPolicy::EpisodicSearch,
        GridPolicy::BayesOptimal,
        GridPolicy::Oracle,
    ];
    pub fn name(self) -> &'static str {
        match self {
            GridPolicy::Random => "random",
            GridPolicy::EpisodicSearch => "episodic_search",
            GridPolicy::BayesOptimal => "bayes_optimal",
            GridPolicy::Oracle => "oracle",
        }
    }
}

/// Per-step rewards and regrets of one task (index t−1 holds step t).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub reward: Vec<f64>,
    pub regret: Vec<f64>,
    /// Effective sample size 1/Σw² of the particle posterior after step t (policies on
    /// [`DirichletParticles`] only; empty otherwise).
    pub ess: Vec<f64>,
    /// The action taken at step t (index t−1).
    pub actions: Vec<usize>,
}

impl Trace {
    fn push(&mut self, reward: f32, regret: f32) {
        self.reward.push(reward as f64);
        self.regret.push(regret as f64);
    }
    /// Cumulative reward up to and including step t (t ≥ 1).
    pub fn return_at(&self, t: usize) -> f64 {
        self.reward[..t].iter().sum()
    }
    /// Cumulative regret up to and including step t (t ≥ 1).
    pub fn regret_at(&self, t: usize) -> f64 {
        self.regret[..t].iter().sum()
    }
    /// Effective sample size of the particle posterior after step t (t ≥ 1), if the policy
    /// has one.
    pub fn ess_at(&self, t: usize) -> Option<f64> {
        self.ess.get(t - 1).copied()
    }
}

/// The rng of task `task` under `seed`: ChaCha8 seeded from `seed`, on stream `task`.
/// Every policy gets a fresh copy, so all policies see the same tasks.
pub fn task_rng(seed: u64, task: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(task as u64);
    rng
}

// ---------------------------------------------------------------------------------------------
// Bandit
// ---------------------------------------------------------------------------------------------

/// An importance-sampled approximation of the exact Dirichlet(α·1) posterior of a Bernoulli
/// bandit: self-normalised importance-weighted particles drawn from the prior.
#[derive(Clone, Debug)]
pub struct DirichletParticles {
    p: Vec<[f64; NUM_ARMS]>,
    w: Vec<f64>,
}

impl DirichletParticles {
    /// `n` particles from the prior Dirichlet(α·1), equal weights.
    pub fn new(alpha: f64, n: usize, rng: &mut ChaCha8Rng) -> Self {
        assert!(n > 0, "need at least one particle");
        let p = (0..n)
            .map(|_| {
                let s = bandit::sample_dirichlet(alpha, NUM_ARMS, rng);
                let mut a = [0.0; NUM_ARMS];
                a.copy_from_slice(&s);
                a
            })
            .collect();
        DirichletParticles {
            p,
            w: vec![1.0 / n as f64; n],
        }
    }

    /// Bayes update with one pull of `arm` that gave `reward` (0 or 1). Weights stay normalised;
    /// if every weight vanished (impossible unless every particle gives the observation
    /// probability 0) they are reset to uniform.
    pub fn update(&mut self, arm: usize, reward: bool) {
        let mut sum = 0.0;
        for (w, p) in self.w.iter_mut().zip(&self.p) {
            *w *= if reward { p[arm] } else { 1.0 - p[arm] };
            sum += *w;
        }
        if sum > 0.0 && sum.is_finite() {
            self.w.iter_mut().for_each(|w| *w /= sum);
        } else {
            let n = self.w.len() as f64;
            self.w.iter_mut().for_each(|w| *w = 1.0 / n);
        }
    }

    /// Posterior mean of p.
    pub fn mean(&self) -> [f64; NUM_ARMS] {
        let mut m = [0.0; NUM_ARMS];
        for (w, p) in self.w.iter().zip(&self.p) {
            for k in 0..NUM_ARMS {
                m[k] += w * p[k];
            }
        }
        m
    }

    /// Posterior variance of each p_k, Σ_i w_i (p_ik − μ_k)².
    pub fn variance(&self) -> [f64; NUM_ARMS] {
        let m = self.mean();
        let mut v = [0.0; NUM_ARMS];
        for (w, p) in self.w.iter().zip(&self.p) {
            for k in 0..NUM_ARMS {
                v[k] += w * (p[k] - m[k]).powi(2);
            }
        }
        v
    }

    /// Posterior probability that each arm is the best one, P(argmax p = k | data): the
    /// action distribution of exact Thompson sampling.
    pub fn argmax_probs(&self) -> [f64; NUM_ARMS] {
        let mut q = [0.0; NUM_ARMS];
        for (w, p) in self.w.iter().zip(&self.p) {
            q[argmax(p)] += w;
        }
        q
    }

    /// The knowledge gradient of every arm under these particles, see [`knowledge_gradient`].
    pub fn knowledge_gradient(&self) -> [f64; NUM_ARMS] {
        knowledge_gradient(&self.p, &self.w)
    }

    /// The particles, each a vector of arm probabilities.
    pub fn particles(&self) -> &[[f64; NUM_ARMS]] {
        &self.p
    }

    /// The particles' normalised weights.
    pub fn weights(&self) -> &[f64] {
        &self.w
    }

    /// Effective sample size 1 / Σ w².
    pub fn ess(&self) -> f64 {
        1.0 / self.w.iter().map(|w| w * w).sum::<f64>()
    }

    /// One posterior sample of p (a particle drawn by weight).
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> [f64; NUM_ARMS] {
        let u: f64 = rng.r#gen();
        let mut acc = 0.0;
        for (w, p) in self.w.iter().zip(&self.p) {
            acc += w;
            if u < acc {
                return *p;
            }
        }
        // Rounding left the cumulative sum just below u: the last particle with weight.
        let last = self.w.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        self.p[last]
    }
}

/// The knowledge gradient of every arm under a weighted-particle posterior over the arms'
/// success probabilities (particles `p_i`, normalised weights `w_i`; the arms may be dependent).
///
/// With posterior mean μ_b = Σ_i w_i p_ib, a hypothetical pull of arm a with outcome y ∈ {0, 1}
/// (P(y = 1) = μ_a) reweights the particles by p_ia or 1 − p_ia, giving the updated means
/// μ_b^{(a,1)} = S_ab / μ_a and μ_b^{(a,0)} = (μ_b − S_ab) / (1 − μ_a), where
/// S_ab = Σ_i w_i p_ia p_ib is the posterior second moment. Every arm's mean moves, not only a's.
/// Hence
///
/// KG_a = E_y[max_b μ_b^{(a,y)}] − max_b μ_b = max_b S_ab + max_b (μ_b − S_ab) − max_b μ_b ≥ 0,
///
/// the expected one-step improvement of the best posterior mean.
pub fn knowledge_gradient<const K: usize>(particles: &[[f64; K]], weights: &[f64]) -> [f64; K] {
    assert_eq!(particles.len(), weights.len(), "one weight per particle");
    let mut mean = [0.0; K];
    let mut second = [[0.0; K]; K];
    for (p, &w) in particles.iter().zip(weights) {
        for a in 0..K {
            let wpa = w * p[a];
            mean[a] += wpa;
            for b in 0..K {
                second[a][b] += wpa * p[b];
            }
        }
    }
    let best = mean.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut kg = [0.0; K];
    for a in 0..K {
        let after_success = second[a].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let after_failure = (0..K)
            .map(|b| mean[b] - second[a][b])
            .fold(f64::NEG_INFINITY, f64::max);
        kg[a] = after_success + after_failure - best;
    }
    kg
}

/// The online knowledge-gradient choice for a finite horizon (Ryzhov, Powell & Frazier 2012):
/// argmax_a [μ_a + r · KG_a] with r = `pulls_after`, the pulls still to come after this one
/// (r = T − t − 1 when t pulls have been made of T), since the information from this pull can
/// only improve the later pulls. At the last pull r = 0 and the choice is greedy. Ties go to the
/// lowest index.
pub fn kg_arm<const K: usize>(mean: &[f64; K], kg: &[f64; K], pulls_after: usize) -> usize {
    let score: Vec<f64> = (0..K)
        .map(|a| mean[a] + pulls_after as f64 * kg[a])
        .collect();
    argmax(&score)
}

/// A Beta(a, b) draw as a ratio of Gamma draws (0.5 if both underflow).
fn sample_beta(a: f64, b: f64, rng: &mut ChaCha8Rng) -> f64 {
    let x = Gamma::new(a, 1.0).expect("Beta a > 0").sample(rng);
    let y = Gamma::new(b, 1.0).expect("Beta b > 0").sample(rng);
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

/// Runs `policy` on the single task of `env` (batch 1, task already drawn) for `steps` pulls
/// (the horizon T of the knowledge gradient). `particles` is the particle count of the policies
/// on [`DirichletParticles`], whose trace also records the effective sample size.
pub fn run_bandit(
    policy: BanditPolicy,
    env: &mut Bandit,
    steps: usize,
    particles: usize,
    rng: &mut ChaCha8Rng,
) -> Trace {
    assert_eq!(env.batch(), 1, "reference policies run one task at a time");
    let alpha = env.alpha() as f64;
    let mut post = policy.uses_particles().then(|| {
        // The particles come from a child rng seeded by one draw, so the rewards and the
        // Thompson draws that follow use the same random numbers whatever the particle
        // count (a paired comparison of particle counts).
        let mut child = ChaCha8Rng::from_seed(rng.r#gen());
        DirichletParticles::new(alpha, particles, &mut child)
    });
    let mut succ = [0usize; NUM_ARMS];
    let mut fail = [0usize; NUM_ARMS];
    let mut trace = Trace::default();
    for t in 0..steps {
        let a = match policy {
            BanditPolicy::Random => rng.gen_range(0..NUM_ARMS),
            BanditPolicy::Oracle => argmax(&env.probs()[0]),
            BanditPolicy::ThompsonIs => argmax(&post.as_ref().unwrap().sample(rng)),
            BanditPolicy::GreedyIs => argmax(&post.as_ref().unwrap().mean()),
            BanditPolicy::KnowledgeGradient => {
                let post = post.as_ref().unwrap();
                kg_arm(&post.mean(), &post.knowledge_gradient(), steps - t - 1)
            }
            BanditPolicy::ThompsonIndependent => {
                let draws: Vec<f64> = (0..NUM_ARMS)
                    .map(|k| sample_beta(alpha + succ[k] as f64, 4.0 * alpha + fail[k] as f64, rng))
                    .collect();
                argmax(&draws)
            }
        };
        trace.actions.push(a);
        let s = env.step(&[a], rng);
        let r = s.reward[0] > 0.5;
        if r {
            succ[a] += 1;
        } else {
            fail[a] += 1;
        }
        if let Some(p) = post.as_mut() {
            p.update(a, r);
            trace.ess.push(p.ess());
        }
        trace.push(s.reward[0], s.regret[0]);
    }
    trace
}

// ---------------------------------------------------------------------------------------------
// Gridworld: episodic search
// ---------------------------------------------------------------------------------------------

/// Weight of a discovery in the plan value: the number of newly visited cells dominates, then
/// the earliness term (at most 15·15 = 225 < 2^10).
const DISCOVERY: u32 = 1 << 10;

struct Search {
    rows: usize,
    cols: usize,
    steps: usize,
    full: u64,
    best_val: u32,
    best_path: Vec<u8>,
    path: Vec<u8>,
    /// (position, visited mask) → Pareto list of (time, value) already explored.
    seen: FxMap<(u8, u64), Vec<(u8, u32)>>,
    nodes: u64,
}

impl Search {
    fn cell(&self, i: usize) -> Cell {
        (i / self.cols, i % self.cols)
    }
    fn index(&self, c: Cell) -> usize {
        c.0 * self.cols + c.1
    }

    /// Upper bound on the value still obtainable from `pos` at plan time `tau` with `mask`
    /// visited: the j-th new cell cannot be found before relative time
    /// lb_j = max(d_(j), lb_{j−1} + 1), d_(j) the j-th smallest Manhattan distance to an
    /// unvisited cell, and must be found within the remaining steps.
    fn bound(&self, pos: Cell, mask: u64, tau: usize) -> u32 {
        let k = self.steps - tau;
        let mut hist = [0u32; 64];
        let mut rest = self.full & !mask;
        while rest != 0 {
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let d = manhattan(pos, self.cell(i));
            if d <= k {
                hist[d] += 1;
            }
        }
        let mut total = 0u32;
        let mut lb = 0usize;
        for (d, &count) in hist.iter().enumerate().take(k + 1) {
            for _ in 0..count {
                lb = d.max(lb + 1);
                if lb > k {
                    return total;
                }
                total += DISCOVERY + (self.steps + 1 - (tau + lb)) as u32;
            }
        }
        total
    }

    fn nearest_unvisited(&self, pos: Cell, mask: u64) -> usize {
        grid_bayes::nearest_in(self.full & !mask, self.cols, pos)
    }

    fn dfs(&mut self, pos: Cell, mask: u64, tau: usize, val: u32) {
        self.nodes += 1;
        if val > self.best_val {
            self.best_val = val;
            self.best_path.clone_from(&self.path);
        }
        if tau == self.steps || val + self.bound(pos, mask, tau) <= self.best_val {
            return;
        }
        // Dominance: the same position and visited set reached no later with no less value.
        let key = (self.index(pos) as u8, mask);
        let entry = self.seen.entry(key).or_default();
        if entry.iter().any(|&(t, v)| t as usize <= tau && v >= val) {
            return;
        }
        entry.retain(|&(t, v)| !(t as usize >= tau && v <= val));
        entry.push((tau as u8, val));

        // Children: moves into unvisited cells first, then towards the nearest unvisited cell.
        let mut children: Vec<(bool, usize, usize, Cell)> = (0..NUM_ACTIONS)
            .filter_map(|a| {
                let next = move_cell(pos, a, self.rows, self.cols);
                (next != pos).then(|| {
                    let new = mask & (1u64 << self.index(next)) == 0;
                    (!new, self.nearest_unvisited(next, mask), a, next)
                })
            })
            .collect();
        children.sort_unstable();
        for (old, _, a, next) in children {
            let gain = if old {
                0
            } else {
                DISCOVERY + (self.steps - tau) as u32
            };
            self.path.push(a as u8);
            self.dfs(next, mask | (1u64 << self.index(next)), tau + 1, val + gain);
            self.path.pop();
        }
    }
}

/// Plans the search of one episode for the `episodic_search` gridworld policy (myopic: one
/// episode at a time, all undiscovered cells counted alike; not Bayes-optimal over the horizon,
/// see [`grid_bayes`] for the exact policy and the module documentation for the gap).
///
/// The belief over the goal is uniform over the cells not yet visited (`visited` is a bit mask,
/// bit `row·cols + col`, that must include the start: the goal is never the start). Among all
/// move sequences of at most `steps` moves from `pos`, the plan maximises the number of newly
/// visited cells, which is proportional to the posterior probability of finding the goal within
/// the remaining steps of the episode; ties are broken by the earliest discoveries (maximal
/// Σ (steps + 1 − t_j) over the discovery times t_j, i.e. minimal expected time to the goal
/// given it is found). The optimum is exact: depth-first branch-and-bound over
/// (position, visited set) with the admissible bound of `Search::bound`, moves into walls
/// skipped (a wall bump is dominated by the same path without it), and a dominance table that
/// prunes a state already reached no later with at least the same value. Returns the actions
/// (possibly fewer than `steps` when later moves cannot find anything new; empty when nothing
/// can be found).
pub fn plan_search(rows: usize, cols: usize, pos: Cell, visited: u64, steps: usize) -> Vec<usize> {
    plan_search_stats(rows, cols, pos, visited, steps).0
}

/// [`plan_search`] plus the number of search nodes expanded.
pub fn plan_search_stats(
    rows: usize,
    cols: usize,
    pos: Cell,
    visited: u64,
    steps: usize,
) -> (Vec<usize>, u64) {
    let n = rows * cols;
    assert!(n <= 64, "grid must fit a 64-bit mask");
    let full = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mut s = Search {
        rows,
        cols,
        steps,
        full,
        best_val: 0,
        best_path: vec![],
        path: vec![],
        seen: FxMap::default(),
        nodes: 0,
    };
    let mask = visited | (1u64 << (pos.0 * cols + pos.1));
    s.dfs(pos, mask, 0, 0);
    (s.best_path.iter().map(|&a| a as usize).collect(), s.nodes)
}

/// Runs `policy` on the single task of `env` (batch 1; `first_obs` is the observation returned
/// by `reset`/`set_tasks`) for `steps` interactions.
pub fn run_grid(
    policy: GridPolicy,
    env: &mut Gridworld,
    first_obs: &[f32],
    steps: usize,
    rng: &mut ChaCha8Rng,
) -> Trace {
    assert_eq!(env.batch(), 1, "reference policies run one task at a time");
    let (rows, cols) = (env.rows(), env.cols());
    let bit = |c: Cell| 1u64 << (c.0 * cols + c.1);
    let mut pos = Gridworld::decode_obs(first_obs, rows, cols);
    let start = pos;
    let oracle_goal = env.goal(0);
    // The Bayes-optimal open-loop search path of this start (the same for every goal).
    let optimal = (policy == GridPolicy::BayesOptimal).then(|| {
        grid_bayes::solve_cached(&SearchProblem {
            rows,
            cols,
            start,
            horizon: steps,
            episode_len: EPISODE_LEN,
        })
    });
    // Episodic search state, built from observations only.
    let mut visited = bit(start);
    let mut found: Option<Cell> = None;
    let mut plan: std::collections::VecDeque<usize> = Default::default();
    let mut timer = 0usize;
    let mut trace = Trace::default();
    for t in 0..steps {
        let a = match policy {
            GridPolicy::Random => rng.gen_range(0..NUM_ACTIONS),
            GridPolicy::Oracle => shortest_path_action(pos, oracle_goal).expect("never on goal"),
            GridPolicy::BayesOptimal => match found {
                Some(g) => shortest_path_action(pos, g).expect("never on goal"),
                // The path ends at its last discovery; after it nothing can be found before T,
                // so any action will do.
                None => optimal
                    .as_ref()
                    .expect("solved")
                    .actions
                    .get(t)
                    .copied()
                    .unwrap_or(0),
            },
            GridPolicy::EpisodicSearch => match found {
                Some(g) => shortest_path_action(pos, g).expect("never on goal"),
                None => {
                    if plan.is_empty() {
                        let left = (EPISODE_LEN - timer).min(steps - t);
                        plan.extend(plan_search(rows, cols, pos, visited, left));
                    }
                    plan.pop_front().unwrap_or_else(|| {
                        // Nothing can be found in this episode any more: head for the nearest
                        // unvisited cell (any action would do).
                        let target = (0..rows * cols)
                            .map(|i| (i / cols, i % cols))
                            .filter(|&c| visited & bit(c) == 0)
                            .min_by_key(|&c| manhattan(pos, c));
                        target
                            .and_then(|c| shortest_path_action(pos, c))
                            .unwrap_or(0)
                    })
                }
            },
        };
        trace.actions.push(a);
        let target = move_cell(pos, a, rows, cols);
        let s = env.step(&[a], rng);
        if s.reward[0] > 0.5 {
            found = Some(target);
        } else {
            visited |= bit(target);
        }
        pos = Gridworld::decode_obs(&s.obs, rows, cols);
        if s.discount[0] == 0.0 {
            timer = 0;
            plan.clear();
        } else {
            timer += 1;
        }
        trace.push(s.reward[0], s.regret[0]);
    }
    trace
}

// ---------------------------------------------------------------------------------------------
// Tables and curves
// ---------------------------------------------------------------------------------------------

/// The traces of one policy over all tasks.
#[derive(Clone, Debug)]
pub struct PolicyTraces {
    pub policy: String,
    pub traces: Vec<Trace>,
}

/// The policy names of `kind`, in table order.
pub fn policy_names(kind: EnvKind) -> Vec<&'static str> {
    match kind {
        EnvKind::Bandit => BanditPolicy::ALL.iter().map(|p| p.name()).collect(),
        EnvKind::Gridworld => GridPolicy::ALL.iter().map(|p| p.name()).collect(),
    }
}

/// Default table checkpoints: bandit 10, 25, 50; gridworld 25, 50, 100.
pub fn default_checkpoints(kind: EnvKind) -> Vec<usize> {
    match kind {
        EnvKind::Bandit => vec![10, 25, 50],
        EnvKind::Gridworld => vec![25, 50, 100],
    }
}

/// Runs every reference policy of `kind` on `tasks` tasks for the full horizon T. Task i uses
/// [`task_rng`]`(seed, i)` (the task is drawn first, so every policy sees the same tasks); tasks
/// run in parallel with rayon and the result does not depend on the thread count.
/// `particles` is the bandit's particle count ([`PARTICLES`] by default).
pub fn simulate_policies(
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
    particles: usize,
) -> Vec<PolicyTraces> {
    let horizon = kind.horizon();
    match kind {
        EnvKind::Bandit => BanditPolicy::ALL
            .iter()
            .map(|&policy| PolicyTraces {
                policy: policy.name().to_string(),
                traces: (0..tasks)
                    .into_par_iter()
                    .map(|i| {
                        let mut rng = task_rng(seed, i);
                        let mut env = Bandit::new(1, alpha);
                        env.reset(&mut rng);
                        run_bandit(policy, &mut env, horizon, particles, &mut rng)
                    })
                    .collect(),
            })
            .collect(),
        EnvKind::Gridworld => GridPolicy::ALL
            .iter()
            .map(|&policy| PolicyTraces {
                policy: policy.name().to_string(),
                traces: (0..tasks)
                    .into_par_iter()
                    .map(|i| {
                        let mut rng = task_rng(seed, i);
                        let mut env = Gridworld::new(1);
                        let obs = env.reset(&mut rng);
                        run_grid(policy, &mut env, &obs, horizon, &mut rng)
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// One row of a reference table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefRow {
    pub policy: String,
    /// Interactions so far.
    pub t: usize,
    /// Mean cumulative reward up to t, and its 99% confidence half-width over tasks.
    pub return_mean: f64,
    pub return_ci99: f64,
    /// Mean cumulative regret up to t, and its 99% confidence half-width over tasks.
    pub regret_mean: f64,
    pub regret_ci99: f64,
    /// Mean over tasks of the particle posterior's effective sample size after t pulls (bandit
    /// policies on [`DirichletParticles`] only).
    pub ess_mean: Option<f64>,
}

/// Rows (policy-major, then checkpoint) from already simulated traces.
pub fn table_from_traces(sims: &[PolicyTraces], checkpoints: &[usize]) -> Vec<RefRow> {
    let mut rows = vec![];
    for sim in sims {
        for &t in checkpoints {
            let (return_mean, return_ci99) = mean_ci99(
                &sim.traces
                    .iter()
                    .map(|tr| tr.return_at(t))
                    .collect::<Vec<_>>(),
            );
            let (regret_mean, regret_ci99) = mean_ci99(
                &sim.traces
                    .iter()
                    .map(|tr| tr.regret_at(t))
                    .collect::<Vec<_>>(),
            );
            let ess: Option<Vec<f64>> = sim.traces.iter().map(|tr| tr.ess_at(t)).collect();
            rows.push(RefRow {
                policy: sim.policy.clone(),
                t,
                return_mean,
                return_ci99,
                regret_mean,
                regret_ci99,
                ess_mean: ess.filter(|e| !e.is_empty()).map(|e| mean_ci99(&e).0),
            });
        }
    }
    rows
}

/// The reference table of `kind`: for every reference policy and checkpoint t (1 ≤ t ≤ T), the
/// mean and 99% CI over `tasks` tasks of the cumulative reward and cumulative regret up to t.
/// `alpha` is the bandit's Dirichlet concentration (ignored by the gridworld).
pub fn reference_table(
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
    checkpoints: &[usize],
) -> Vec<RefRow> {
    let horizon = kind.horizon();
    for &t in checkpoints {
        assert!(
            (1..=horizon).contains(&t),
            "checkpoint {t} outside 1..={horizon} for {kind}"
        );
    }
    table_from_traces(
        &simulate_policies(kind, alpha, tasks, seed, PARTICLES),
        checkpoints,
    )
}

/// Per policy: the mean cumulative regret after t = 1..=T interactions and its 99% CI
/// half-width, for plotting.
pub fn reference_curves(
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    simulate_policies(kind, alpha, tasks, seed, PARTICLES)
        .into_iter()
        .map(|sim| {
            let horizon = sim.traces.first().map_or(0, |tr| tr.regret.len());
            let mut cum: Vec<f64> = vec![0.0; sim.traces.len()];
            let mut mean = Vec::with_capacity(horizon);
            let mut ci = Vec::with_capacity(horizon);
            for t in 0..horizon {
                for (c, tr) in cum.iter_mut().zip(&sim.traces) {
                    *c += tr.regret[t];
                }
                let (m, h) = mean_ci99(&cum);
                mean.push(m);
                ci.push(h);
            }
            (sim.policy, mean, ci)
        })
        .collect()
}

/// The CSV header of [`write_reference_csv`].
pub const CSV_HEADER: &str = "policy,t,return_mean,return_ci99,regret_mean,regret_ci99,ess_mean";

/// Writes the rows as CSV (header [`CSV_HEADER`]; `ess_mean` empty for policies without
/// particles) through a temporary file and a rename, so a
/// reader never sees a half-written file.
pub fn write_reference_csv(path: impl AsRef<Path>, rows: &[RefRow]) -> anyhow::Result<()> {
    let path = path.as_ref();
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        let ess = r.ess_mean.map_or(String::new(), |e| e.to_string());
        writeln!(
            text,
            "{},{},{},{},{},{},{ess}",
            r.policy, r.t, r.return_mean, r.return_ci99, r.regret_mean, r.regret_ci99
        )
        .expect("writing to a String");
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// An aligned text table, one line per row, e.g.
/// `thompson_is             50  return   26.41 ± 0.60   regret    5.31 ± 0.20  ess   210`;
/// the `ess` column (mean effective sample size of the particle posterior) only when some row
/// has one, with `-` for the policies without particles.
pub fn format_reference_table(rows: &[RefRow]) -> String {
    let width = rows
        .iter()
        .map(|r| r.policy.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let with_ess = rows.iter().any(|r| r.ess_mean.is_some());
    let mut out = String::new();
    let header = format!(
        "{:<width$}  {:>4}  {:<23}  {:<23}{}",
        "policy",
        "t",
        "return (mean ± 99% CI)",
        "regret (mean ± 99% CI)",
        if with_ess { "  mean ESS" } else { "" }
    );
    out.push_str(header.trim_end());
    out.push('\n');
    for r in rows {
        let ess = match (with_ess, r.ess_mean) {
            (false, _) => String::new(),
            (true, Some(e)) => format!("  ess {e:>6.0}"),
            (true, None) => format!("  ess {:>6}", "-"),
        };
        let line = format!(
            "{:<width$}  {:>4}  return {:>7.2} ± {:<6.2}  regret {:>7.2} ± {:<6.2}{ess}",
            r.policy, r.t, r.return_mean, r.return_ci99, r.regret_mean, r.regret_ci99
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The gridworld's side length, re-exported for callers that size plots.
pub const GRID_SIZE: usize = gridworld::SIZE;
