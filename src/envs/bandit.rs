//! The 5-armed Bernoulli bandit with arm probabilities p ~ Dirichlet(α·1) (paper Appendix B.4).
//!
//! Each pull is its own episode: the discount of every transition is 0. The bandit has no state,
//! so the observation is the constant 1.0 (obs_dim 1). The regret of a pull of arm a is the
//! pseudo-regret max_i p_i − p_a (expected, not realised, reward difference).

use super::{MetaEnv, Step};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

/// Number of arms K.
pub const NUM_ARMS: usize = 5;
/// Pulls per task T.
pub const HORIZON: usize = 50;
/// Dirichlet concentration used for training tasks.
pub const ALPHA_TRAIN: f32 = 0.2;
/// Dirichlet concentration used for test tasks (harder: flatter arm probabilities).
pub const ALPHA_TEST: f32 = 0.3;

/// Samples p ~ Dirichlet(α·1_k) in f64 via normalised Gamma(α, 1) draws.
///
/// For small α a Gamma(α) draw is U^{1/α}·Gamma(α+1) and can underflow to 0 (in f32 easily, in
/// f64 essentially never); if every draw is 0 the sample falls back to a one-hot vector at a
/// uniformly random arm (the limit of the distribution's mass for α → 0).
pub fn sample_dirichlet(alpha: f64, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    assert!(
        alpha > 0.0 && alpha.is_finite(),
        "Dirichlet α must be positive, got {alpha}"
    );
    assert!(k > 0, "Dirichlet needs at least one component");
    let gamma = Gamma::new(alpha, 1.0).expect("valid Gamma parameters");
    let mut g: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = g.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        g.iter_mut().for_each(|x| *x /= sum);
    } else {
        let i = rng.gen_range(0..k);
        g.iter_mut().for_each(|x| *x = 0.0);
        g[i] = 1.0;
    }
    g
}

/// A batch of B Dirichlet–Bernoulli bandit tasks.
#[derive(Clone, Debug)]
pub struct Bandit {
    alpha: f32,
    /// Arm probabilities per task (f64 so the regret is computed without rounding bias).
    probs: Vec<[f64; NUM_ARMS]>,
}

impl Bandit {
    /// A batch of `batch` tasks with Dirichlet concentration `alpha` (tasks are drawn by `reset`).
    pub fn new(batch: usize, alpha: f32) -> Self {
        assert!(alpha > 0.0, "bandit α must be positive, got {alpha}");
        Bandit {
            alpha,
            probs: vec![[1.0 / NUM_ARMS as f64; NUM_ARMS]; batch],
        }
    }

    /// Uses the given arm probabilities as the tasks (the batch becomes `probs.len()`);
    /// returns the first observation. For tests and hand-built evaluations.
    pub fn set_probs(&mut self, probs: &[[f64; NUM_ARMS]]) -> Vec<f32> {
        for p in probs {
            assert!(
                p.iter().all(|&x| (0.0..=1.0).contains(&x)),
                "arm probabilities must lie in [0, 1]: {p:?}"
            );
        }
        self.probs = probs.to_vec();
        vec![1.0; self.probs.len()]
    }

    /// The Dirichlet concentration α.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The arm probabilities of each task (evaluation only).
    pub fn probs(&self) -> &[[f64; NUM_ARMS]] {
        &self.probs
    }

    /// One pull of `arm` on task b, the body of `step` for one task: one uniform draw u from
    /// `rng`, reward 1 iff u < p_arm, and the regret max p − p_arm. Public so that a caller can
    /// give every task its own random stream (the Python environments).
    pub fn pull(&self, b: usize, arm: usize, rng: &mut ChaCha8Rng) -> (f32, f32) {
        assert!(
            arm < NUM_ARMS,
            "bandit action {arm} out of range 0..{NUM_ARMS}"
        );
        let p = self.probs[b][arm];
        let u: f64 = rng.r#gen();
        (
            if u < p { 1.0 } else { 0.0 },
            (self.best_prob(b) - p) as f32,
        )
    }

    /// max_i p_i of task b.
    pub fn best_prob(&self, b: usize) -> f64 {
        self.probs[b]
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

impl MetaEnv for Bandit {
    fn name(&self) -> &'static str {
        "bandit"
    }
    fn batch(&self) -> usize {
        self.probs.len()
    }
    fn obs_dim(&self) -> usize {
        1
    }
    fn num_actions(&self) -> usize {
        NUM_ARMS
    }
    fn horizon(&self) -> usize {
        HORIZON
    }

    /// Draws p ~ Dirichlet(α·1) for task 0, 1, …, B−1 in order; the observation is 1.0.
    fn reset(&mut self, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let alpha = self.alpha as f64;
        for p in self.probs.iter_mut() {
            let s = sample_dirichlet(alpha, NUM_ARMS, rng);
            p.copy_from_slice(&s);
        }
        vec![1.0; self.probs.len()]
    }

    /// Reward of task b ~ Bernoulli(p_{a_b}) (one uniform draw per task, in task order:
    /// reward 1 iff u < p); discount 0; regret max p − p_a.
    fn step(&mut self, actions: &[usize], rng: &mut ChaCha8Rng) -> Step {
        let b = self.probs.len();
        assert_eq!(actions.len(), b, "one action per task");
        let mut reward = Vec::with_capacity(b);
        let mut regret = Vec::with_capacity(b);
        for (i, &a) in actions.iter().enumerate() {
            let (r, g) = self.pull(i, a, rng);
            reward.push(r);
            regret.push(g);
        }
        Step {
            obs: vec![1.0; b],
            reward,
            discount: vec![0.0; b],
            regret,
        }
    }

    fn task_params(&self) -> Vec<Vec<f32>> {
        self.probs
            .iter()
            .map(|p| p.iter().map(|&x| x as f32).collect())
            .collect()
    }
}
