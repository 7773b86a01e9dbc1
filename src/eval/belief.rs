//! The agent's posterior against the exact belief (issue 26), per interaction t of the test
//! tasks an RL evaluation rolls out ([`super::rl::evaluate_rl_scored`]).
//!
//! Row t = 1..T of the tables holds the posterior q the action at t is drawn under, which has
//! seen the first t − 1 transitions, and every exact quantity of that row is the exact belief
//! after the same t − 1 transitions ([`crate::envs::belief`]). With U the exact belief's
//! uncertainty — gridworld: its entropy ln |C| (`exact_entropy`); bandit: its total variance
//! Σ_k Var[p_k | data] (`exact_var`) — and H the differential entropy of q (`entropy`):
//!
//! - `corr_t` = Pearson correlation over the test tasks of H and U at row t. It is **undefined**
//!   (and row t is left out of the averages) when U takes one value on every task (row 1 always:
//!   ln 24 on the 5×5 grid, the prior's variance on the bandit; and late rows where every task
//!   has found its goal), or when fewer than 3 tasks have a finite H (a point estimate has none,
//!   so an RNN scores NaN). When U varies but H does not, corr_t = 0: an entropy that does not
//!   vary over tasks carries no information about the belief. "Does not vary" means
//!   max − min ≤ 10⁻¹² · max(1, max |x|), for H and U alike.
//! - `entropy_belief_corr` = the mean of corr_t over the rows where it is defined, with their
//!   number (`entropy_belief_corr_steps`); NaN when there is none. An entropy that is a function
//!   of t alone (a clock) scores 0; one that is an increasing affine function of U scores 1.
//! - `entropy_drop_corr`: the same for the drops, corr over tasks of H_1 − H_t with U_1 − U_t
//!   (row 1's values of the same task): whether what the posterior has learnt since the start
//!   tracks what the exact belief has learnt (on the gridworld H_1 differs between tasks, since
//!   s_0 is the start cell, while U_1 = ln 24 is the same, so this removes a per-task offset).
//!
//! Bandit only, per row t, means over tasks (`reward_head` of the model needed, else NaN):
//! - `reward_kl_exact` = (1/K) Σ_k KL(Ber(p̄_k) ‖ Ber(p̂_k)), p̄_k = E[p_k | first t − 1 pulls]
//!   the exact posterior mean and p̂_k = (1/n_Z) Σ_s σ(f(z_s, k)) the reward head's probability
//!   for arm k, averaged over the n_Z samples z_s the agent acted on at t (one for a point
//!   estimate);
//! - `reward_brier` = (p̂_{a_t} − r_t)² for the arm pulled at t and its reward, and beside it
//!   `reward_brier_exact` = (p̄_{a_t} − r_t)², the exact posterior mean's Brier score on the same
//!   pulls (the expected Brier score is smallest for p̄);
//! - `ess`: the particles' effective sample size 1/Σw² (of [`PARTICLES`]) after t − 1 pulls.
//!   The particles are one set drawn from the test prior Dirichlet(α_test·1) with a seed fixed by
//!   `eval.seed`, shared by every task (so row 1's U is the same on every task), reweighted along
//!   each task's own pulls.
//!
//! The summary adds `reward_kl_exact`, `reward_brier` and `reward_brier_exact` as means over t
//! of the per-row means.

use crate::agent::acting::Acting;
use crate::agent::rl::{RlModel, Rollout};
use crate::envs::EnvKind;
use crate::envs::belief::{bandit_belief_path, grid_belief_entropies};
use crate::envs::gridworld::{self, Gridworld};
use crate::envs::reference::{DirichletParticles, PARTICLES};
use crate::stats::finite_mean_ci99;
use anyhow::Result;
use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Mixed into `eval.seed` for the bandit's prior particles.
pub const BELIEF_SEED: u64 = 0xbe11_ef5e_ed00;

/// Relative spread under which a row's values count as one value (see the module docs).
pub const CONSTANT_TOL: f64 = 1e-12;

/// Fewest tasks with finite values for a within-row correlation.
pub const MIN_TASKS: usize = 3;

/// Per-task values of an evaluation, indexed `[t][task]` (t = 0 is row 1). Fields that do not
/// apply to the environment (or the model) stay empty or NaN.
#[derive(Clone, Debug, Default)]
pub struct BeliefSamples {
    /// H[q] of the agent.
    pub entropy: Vec<Vec<f64>>,
    /// U: gridworld ln |C|, bandit Σ_k Var[p_k | data].
    pub exact: Vec<Vec<f64>>,
    /// Bandit: effective sample size of the particles.
    pub ess: Vec<Vec<f64>>,
    /// Bandit: mean Bernoulli KL from the exact posterior means to the reward head.
    pub reward_kl: Vec<Vec<f64>>,
    /// Bandit: Brier score of the reward head on the pulled arm.
    pub brier: Vec<Vec<f64>>,
    /// Bandit: Brier score of the exact posterior mean on the pulled arm.
    pub brier_exact: Vec<Vec<f64>>,
}

/// One row of `eval_belief.csv`: means and 99% half-widths over the test tasks at row t.
#[derive(Clone, Debug, PartialEq)]
pub struct BeliefRow {
    pub t: usize,
    pub entropy: (f64, f64),
    pub exact: (f64, f64),
    pub ess: (f64, f64),
    pub reward_kl: (f64, f64),
    pub brier: (f64, f64),
    pub brier_exact: (f64, f64),
    /// corr_t (NaN where undefined).
    pub corr: f64,
    /// The drops' corr_t (NaN where undefined).
    pub drop_corr: f64,
}

/// The mean of a within-row correlation over the rows where it is defined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// NaN when no row has it defined.
    pub value: f64,
    /// Rows averaged.
    pub steps: usize,
}

/// An evaluation's scores against the exact belief.
#[derive(Clone, Debug, PartialEq)]
pub struct BeliefScores {
    pub kind: EnvKind,
    pub rows: Vec<BeliefRow>,
    /// `entropy_belief_corr`.
    pub corr: Score,
    /// `entropy_drop_corr`.
    pub drop_corr: Score,
    /// Bandit: means over t of the per-row means (NaN on the gridworld).
    pub reward_kl: f64,
    pub brier: f64,
    pub brier_exact: f64,
}

/// Whether the finite values of `xs` take one value (see the module docs).
fn constant(xs: &[f64]) -> bool {
    let (lo, hi, big) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY, 1f64), |(l, h, b), &x| {
            (l.min(x), h.max(x), b.max(x.abs()))
        });
    hi - lo <= CONSTANT_TOL * big
}

/// corr over tasks of `h` with `u` at one row: `None` where undefined (U constant, or fewer
/// than [`MIN_TASKS`] tasks with both finite), 0 where H is constant, else Pearson's r.
pub fn within_row_corr(h: &[f64], u: &[f64]) -> Option<f64> {
    let (h, u): (Vec<f64>, Vec<f64>) = h
        .iter()
        .zip(u)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .unzip();
    if h.len() < MIN_TASKS || constant(&u) {
        return None;
    }
    if constant(&h) {
        return Some(0.0);
    }
    let n = h.len() as f64;
    let (mh, mu) = (h.iter().sum::<f64>() / n, u.iter().sum::<f64>() / n);
    let (mut shu, mut shh, mut suu) = (0.0, 0.0, 0.0);
    for (a, b) in h.iter().zip(&u) {
        shu += (a - mh) * (b - mu);
        shh += (a - mh).powi(2);
        suu += (b - mu).powi(2);
    }
    Some((shu / (shh * suu).sqrt()).clamp(-1.0, 1.0))
}

/// corr_t of every row and their mean over the rows where it is defined.
pub fn belief_correlation(h: &[Vec<f64>], u: &[Vec<f64>]) -> (Vec<Option<f64>>, Score) {
    let per_row: Vec<Option<f64>> = h
        .iter()
        .zip(u)
        .map(|(h, u)| within_row_corr(h, u))
        .collect();
    let defined: Vec<f64> = per_row.iter().flatten().copied().collect();
    let value = if defined.is_empty() {
        f64::NAN
    } else {
        defined.iter().sum::<f64>() / defined.len() as f64
    };
    (
        per_row,
        Score {
            value,
            steps: defined.len(),
        },
    )
}

/// The drops x_1 − x_t of every task (row 1 minus row t).
pub fn drops(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let Some(first) = x.first() else {
        return vec![];
    };
    x.iter()
        .map(|row| row.iter().zip(first).map(|(v, f)| f - v).collect())
        .collect()
}

/// KL(Ber(a) ‖ Ber(b)) with b given as (b, 1 − b) computed apart (so a b near 0 or 1 keeps its
/// precision); 0 · ln 0 = 0.
pub fn bernoulli_kl(a: f64, b: (f64, f64)) -> f64 {
    let part = |x: f64, y: f64| {
        if x <= 0.0 {
            0.0
        } else {
            x * (x.ln() - y.max(f64::MIN_POSITIVE).ln())
        }
    };
    part(a, b.0) + part(1.0 - a, b.1)
}

fn mean_over_rows(rows: &[BeliefRow], pick: fn(&BeliefRow) -> f64) -> f64 {
    let v: Vec<f64> = rows.iter().map(pick).filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl BeliefSamples {
    /// The tables of these samples (see the module docs).
    pub fn score(&self, kind: EnvKind) -> BeliefScores {
        let (per_row, corr) = belief_correlation(&self.entropy, &self.exact);
        let (per_row_drop, drop_corr) =
            belief_correlation(&drops(&self.entropy), &drops(&self.exact));
        let stat = |table: &Vec<Vec<f64>>, t: usize| {
            table
                .get(t)
                .map_or((f64::NAN, f64::NAN), |v| finite_mean_ci99(v))
        };
        let rows: Vec<BeliefRow> = (0..self.exact.len())
            .map(|t| BeliefRow {
                t: t + 1,
                entropy: stat(&self.entropy, t),
                exact: stat(&self.exact, t),
                ess: stat(&self.ess, t),
                reward_kl: stat(&self.reward_kl, t),
                brier: stat(&self.brier, t),
                brier_exact: stat(&self.brier_exact, t),
                corr: per_row[t].unwrap_or(f64::NAN),
                drop_corr: per_row_drop[t].unwrap_or(f64::NAN),
            })
            .collect();
        BeliefScores {
            kind,
            reward_kl: mean_over_rows(&rows, |r| r.reward_kl.0),
            brier: mean_over_rows(&rows, |r| r.brier.0),
            brier_exact: mean_over_rows(&rows, |r| r.brier_exact.0),
            rows,
            corr,
            drop_corr,
        }
    }

    fn extend(table: &mut Vec<Vec<f64>>, t: usize, values: impl IntoIterator<Item = f64>) {
        if table.len() <= t {
            table.resize(t + 1, vec![]);
        }
        table[t].extend(values);
    }
}

/// Collects [`BeliefSamples`] chunk by chunk of an evaluation's rollouts.
pub struct BeliefAccumulator {
    kind: EnvKind,
    /// The bandit's prior particles (shared by every task).
    prior: Option<DirichletParticles>,
    samples: BeliefSamples,
}

impl BeliefAccumulator {
    /// For an evaluation of `kind` whose test prior is Dirichlet(`alpha`·1) (bandit), seeded by
    /// `seed` (`eval.seed`).
    pub fn new(kind: EnvKind, alpha: f32, seed: u64) -> Self {
        let prior = (kind == EnvKind::Bandit).then(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ BELIEF_SEED);
            DirichletParticles::new(alpha as f64, PARTICLES, &mut rng)
        });
        Self {
            kind,
            prior,
            samples: BeliefSamples::default(),
        }
    }

    /// Adds the tasks of one evaluation rollout (recorded with the posterior's entropy).
    pub fn add(&mut self, model: &RlModel, ro: &Rollout) -> Result<()> {
        let (b, horizon) = (ro.batch(), ro.horizon());
        let s = &mut self.samples;
        for t in 0..horizon {
            let h = ro
                .posterior_entropy
                .get(t)
                .cloned()
                .unwrap_or_else(|| vec![f64::NAN; b]);
            BeliefSamples::extend(&mut s.entropy, t, h);
        }
        match self.kind {
            EnvKind::Gridworld => {
                let (rows, cols) = (gridworld::SIZE, gridworld::SIZE);
                let dim = rows + cols;
                let per_task: Vec<Vec<f64>> = (0..b)
                    .map(|k| {
                        let cell = |t: usize| {
                            Gridworld::decode_obs(&ro.obs[t][k * dim..(k + 1) * dim], rows, cols)
                        };
                        let steps: Vec<_> = (0..horizon)
                            .map(|t| (cell(t), ro.actions[t][k], ro.rewards[t][k]))
                            .collect();
                        grid_belief_entropies(rows, cols, cell(0), &steps)
                    })
                    .collect();
                for t in 0..horizon {
                    BeliefSamples::extend(&mut s.exact, t, per_task.iter().map(|e| e[t]));
                }
            }
            EnvKind::Bandit => {
                let prior = self.prior.as_ref().expect("bandit prior particles");
                let paths: Vec<_> = (0..b)
                    .into_par_iter()
                    .map(|k| {
                        let pulls: Vec<(usize, bool)> = (0..horizon)
                            .map(|t| (ro.actions[t][k], ro.rewards[t][k] > 0.5))
                            .collect();
                        bandit_belief_path(prior, &pulls)
                    })
                    .collect();
                let predicted = reward_predictions(model, ro)?;
                for t in 0..horizon {
                    let exact = paths.iter().map(|p| p[t].total_variance);
                    BeliefSamples::extend(&mut s.exact, t, exact);
                    BeliefSamples::extend(&mut s.ess, t, paths.iter().map(|p| p[t].ess));
                    let (mut kl, mut brier, mut brier_exact) = (vec![], vec![], vec![]);
                    for (k, path) in paths.iter().enumerate() {
                        let mean = &path[t].mean;
                        let (a, r) = (ro.actions[t][k], ro.rewards[t][k] as f64);
                        brier_exact.push((mean[a] - r).powi(2));
                        match &predicted {
                            Some(p) => {
                                let p = &p[t][k];
                                let sum: f64 =
                                    mean.iter().zip(p).map(|(m, q)| bernoulli_kl(*m, *q)).sum();
                                kl.push(sum / mean.len() as f64);
                                brier.push((p[a].0 - r).powi(2));
                            }
                            None => {
                                kl.push(f64::NAN);
                                brier.push(f64::NAN);
                            }
                        }
                    }
                    BeliefSamples::extend(&mut s.reward_kl, t, kl);
                    BeliefSamples::extend(&mut s.brier, t, brier);
                    BeliefSamples::extend(&mut s.brier_exact, t, brier_exact);
                }
            }
        }
        Ok(())
    }

    /// The per-task values collected so far.
    pub fn samples(&self) -> &BeliefSamples {
        &self.samples
    }

    /// The scores of every task added.
    pub fn finish(self) -> BeliefScores {
        self.samples.score(self.kind)
    }
}

/// The reward head's probability of reward 1 for every arm at every step of `ro`, indexed
/// `[t][task][arm]` as (p̂, 1 − p̂), each the mean over the step's n_Z samples z of σ(±f(z, arm)):
/// the rollout's inputs and noise replayed through the core, so the samples are the ones the
/// agent acted on. `None` for a model without a reward head.
#[allow(clippy::type_complexity)]
pub fn reward_predictions(
    model: &RlModel,
    ro: &Rollout,
) -> Result<Option<Vec<Vec<Vec<(f64, f64)>>>>> {
    let Some(head) = &model.reward else {
        return Ok(None);
    };
    let (b, arms) = (ro.batch(), model.num_actions);
    let mut acting = Acting::new(&model.core, b)?;
    acting.skip_stats();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut out = Vec::with_capacity(ro.horizon());
    for t in 0..ro.horizon() {
        let step = acting.observe(&model.raw_inputs(&ro.obs[t], ro.previous(t)), &ro.noise[t])?;
        let (nz, _, _) = step.z.dims3()?;
        let inputs = (0..arms)
            .map(|k| {
                let mut one_hot = vec![0f32; nz * b * arms];
                one_hot
                    .iter_mut()
                    .skip(k)
                    .step_by(arms)
                    .for_each(|v| *v = 1.0);
                let a = Tensor::from_vec(one_hot, (nz, b, arms), step.z.device())?
                    .to_dtype(step.z.dtype())?;
                Ok(Tensor::cat(&[&step.z, &a], 2)?)
            })
            .collect::<Result<Vec<_>>>()?;
        // (arms, n_Z, B, 1) logits.
        let logits: Vec<f32> = head
            .forward(&Tensor::stack(&inputs, 0)?)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let at = |k: usize, s: usize, task: usize| logits[(k * nz + s) * b + task] as f64;
        let row: Vec<Vec<(f64, f64)>> = (0..b)
            .map(|task| {
                (0..arms)
                    .map(|k| {
                        let (mut p, mut q) = (0.0, 0.0);
                        for s in 0..nz {
                            let l = at(k, s, task);
                            p += sigmoid(l);
                            q += sigmoid(-l);
                        }
                        (p / nz as f64, q / nz as f64)
                    })
                    .collect()
            })
            .collect();
        out.push(row);
    }
    Ok(Some(out))
}
