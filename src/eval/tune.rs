//! Post-hoc prior tuning for the Laplace posterior (`lvrnn eval --tune-prior`).
//!
//! The Laplace posterior of a trained network has precision Λ_t = Λ_0 + Σ J Jᵀ (accumulated) or
//! damping·I + Σ_{window} J Jᵀ (k_Z = 0), with Λ_0 = prior_precision·I (paper Sec. 4, Eq. 5).
//! Both scales are arbitrary against the scale of the features φ, so a post-hoc posterior can
//! be far too wide or too narrow. Like laplace-torch's `optimize_prior_precision` (grid search
//! on validation data), we pick them on held-out tasks — never the test tasks — by a score to
//! minimise: the mean predictive cross-entropy (regression, under the predictive the evaluation
//! uses, `eval.predictive`: sampled or linearised) or the negative mean return (RL).
//!
//! Search: a log grid 10^{−3}, 10^{−2.5}, …, 10^{3} plus the configured value (tried first, so a
//! tie keeps it); when the best value is an end of the grid, the search walks on past it by
//! half decades while the score improves (at most 10^{3} further), so the optimum is not clipped.
//! Accumulated variants use only prior_precision (damping does not enter). For k_Z = 0
//! variants, damping is searched first with prior_precision fixed, then prior_precision with
//! the best damping. For the regression score this is the exact optimum over the grid: the CE
//! at 0 points depends only on Λ_0 and every later CE only on the damping, so the score is a
//! sum of a function of each.

use crate::posterior::config::{Accumulate, LaplaceConfig};
use anyhow::Result;
use serde::Serialize;

/// XOR-ed into `eval.seed` for the held-out tuning tasks: never the test tasks.
pub const TUNING_SEED: u64 = 0x7u64 << 40 | 0x7e57;

/// Candidate scales: 10^{−3}, 10^{−2.5}, …, 10^{3} (13 values), to 4 significant digits.
pub fn log_grid() -> Vec<f64> {
    (0..13)
        .map(|i| significant(10f64.powf(-3.0 + 0.5 * i as f64)))
        .collect()
}

/// `v` rounded to 4 significant digits, so candidates print as what they are (0.003162, 1e6).
fn significant(v: f64) -> f64 {
    format!("{v:.3e}").parse().unwrap_or(v)
}

/// One evaluated candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trial {
    pub prior_precision: f64,
    pub damping: f64,
    /// The score (lower is better; NaN or ∞ when the evaluation failed, e.g. not positive definite).
    pub score: f64,
}

/// The chosen configuration and every candidate tried, in order.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub config: LaplaceConfig,
    pub score: f64,
    pub trials: Vec<Trial>,
}

impl Tuned {
    /// e.g. `prior_precision=0.03, damping=1`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        if c.accumulate == Accumulate::None {
            format!(
                "prior_precision={}, damping={}",
                c.prior_precision, c.damping
            )
        } else {
            format!("prior_precision={}", c.prior_precision)
        }
    }
}

/// Largest factor by which the search walks past either end of the grid (10^3 beyond it).
const MAX_EXTENSION: f64 = 1e3;

/// Which prior scale a coordinate search varies.
#[derive(Clone, Copy)]
enum Scale {
    PriorPrecision,
    Damping,
}

impl Scale {
    fn get(self, c: &LaplaceConfig) -> f64 {
        match self {
            Scale::PriorPrecision => c.prior_precision,
            Scale::Damping => c.damping,
        }
    }
    fn set(self, c: &mut LaplaceConfig, v: f64) {
        match self {
            Scale::PriorPrecision => c.prior_precision = v,
            Scale::Damping => c.damping = v,
        }
    }
}

/// The state of a search: every trial so far and the best configuration.
struct Search<F> {
    score: F,
    trials: Vec<Trial>,
    best: LaplaceConfig,
    best_score: f64,
}

impl<F: FnMut(&LaplaceConfig) -> Result<f64>> Search<F> {
    /// Scores `c` unless already tried; a failed or non-finite evaluation scores +∞.
    /// Returns whether `c` became the best.
    fn try_config(&mut self, c: LaplaceConfig) -> bool {
        let seen = self
            .trials
            .iter()
            .any(|t| t.prior_precision == c.prior_precision && t.damping == c.damping);
        if seen {
            return false;
        }
        let s = match (self.score)(&c) {
            Ok(s) if s.is_finite() => s,
            _ => f64::INFINITY,
        };
        self.trials.push(Trial {
            prior_precision: c.prior_precision,
            damping: c.damping,
            score: s,
        });
        if s < self.best_score {
            self.best_score = s;
            self.best = c;
            true
        } else {
            false
        }
    }

    /// Varies `scale` of the best configuration so far over the current value and `grid`; when
    /// the best value is the grid's largest (smallest), keeps stepping up (down) by the grid's
    /// ratio while the score improves, at most [`MAX_EXTENSION`] beyond the grid.
    fn coordinate(&mut self, scale: Scale, grid: &[f64]) {
        let start = self.best.clone();
        let current = scale.get(&start);
        for v in std::iter::once(current).chain(grid.iter().copied()) {
            let mut c = start.clone();
            scale.set(&mut c, v);
            self.try_config(c);
        }
        let (lo, hi) = grid
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        let ratio = if grid.len() > 1 {
            (hi / lo).powf(1.0 / (grid.len() - 1) as f64)
        } else {
            10f64.sqrt()
        };
        for (edge, step) in [(hi, ratio), (lo, 1.0 / ratio)] {
            if scale.get(&self.best) != edge {
                continue;
            }
            for k in 1.. {
                let next = significant(edge * step.powi(k));
                if (next / edge).max(edge / next) > MAX_EXTENSION * (1.0 + 1e-3) {
                    break;
                }
                let mut c = self.best.clone();
                scale.set(&mut c, next);
                if !self.try_config(c) {
                    break;
                }
            }
        }
    }
}

/// Minimises `score` over the prior scales of `base` as described in the module doc. A
/// candidate whose evaluation fails or is not finite scores +∞ (recorded as such). When the
/// best value lies at an end of `grid`, the search continues past it (see `Search::coordinate`),
/// so the optimum is not clipped by the grid.
pub fn tune_prior(
    base: &LaplaceConfig,
    grid: &[f64],
    score: impl FnMut(&LaplaceConfig) -> Result<f64>,
) -> Result<Tuned> {
    let mut search = Search {
        score,
        trials: vec![],
        best: base.clone(),
        best_score: f64::INFINITY,
    };
    if base.accumulate == Accumulate::None {
        search.coordinate(Scale::Damping, grid);
    }
    search.coordinate(Scale::PriorPrecision, grid);
    let Search {
        trials,
        best,
        best_score,
        ..
    } = search;
    if !best_score.is_finite() {
        anyhow::bail!(
            "prior tuning failed: no candidate prior gave a finite score (tried {} values)",
            trials.len()
        );
    }
    Ok(Tuned {
        config: best,
        score: best_score,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulated_variants_search_only_the_prior_precision() {
        // Score with its minimum at prior_precision = 10^{-1}.
        let base = LaplaceConfig::default();
        let t = tune_prior(&base, &log_grid(), |c| {
            Ok((c.prior_precision.log10() + 1.0).powi(2) + c.damping)
        })
        .unwrap();
        assert_eq!(t.config.prior_precision, 0.1);
        assert_eq!(t.config.damping, base.damping);
        assert_eq!(t.trials.len(), 13); // the default 1.0 is on the grid: tried once
        assert_eq!(
            t.trials[0].prior_precision, 1.0,
            "the configured value first"
        );
    }

    #[test]
    fn stationary_variants_search_damping_then_prior_precision() {
        let base = LaplaceConfig {
            accumulate: Accumulate::None,
            window: 0,
            damping: 0.7,
            ..Default::default()
        };
        // Separable score, minimum at damping 10^{2}, prior_precision 10^{-2.5}.
        let t = tune_prior(&base, &log_grid(), |c| {
            Ok((c.damping.log10() - 2.0).powi(2) + (c.prior_precision.log10() + 2.5).powi(2))
        })
        .unwrap();
        assert_eq!(t.config.damping, 100.0);
        assert_eq!(t.config.prior_precision, 0.003162, "10^-2.5 to 4 digits");
        assert_eq!(
            t.trials.len(),
            14 + 12,
            "the pair found by the damping search is not re-run"
        );
    }

    #[test]
    fn an_optimum_beyond_the_grid_is_followed_past_its_end() {
        // Minimum at prior_precision = 10^{4.5}, beyond the grid's 10^3: the search walks up by
        // half decades while improving and stops one step past the minimum.
        let t = tune_prior(&LaplaceConfig::default(), &log_grid(), |c| {
            Ok((c.prior_precision.log10() - 4.5).powi(2))
        })
        .unwrap();
        assert_eq!(t.config.prior_precision, 31620.0, "10^4.5 to 4 digits");
        assert_eq!(
            t.trials.len(),
            13 + 4,
            "10^3.5, 10^4, 10^4.5 improve, 10^5 does not"
        );
        // Far beyond: the walk stops at 10^3 past the grid's end.
        let t = tune_prior(&LaplaceConfig::default(), &log_grid(), |c| {
            Ok(-c.prior_precision)
        })
        .unwrap();
        assert_eq!(t.config.prior_precision, 1e6, "{}", t.describe());
        // And below the grid.
        let t = tune_prior(&LaplaceConfig::default(), &log_grid(), |c| {
            Ok(c.prior_precision)
        })
        .unwrap();
        assert_eq!(t.config.prior_precision, 1e-6, "{}", t.describe());
    }

    #[test]
    fn failed_candidates_are_skipped_and_ties_keep_the_configured_value() {
        let base = LaplaceConfig::default();
        let t = tune_prior(&base, &log_grid(), |c| {
            if c.prior_precision < 0.01 {
                anyhow::bail!("not positive definite")
            }
            Ok(1.0) // flat: the configured value wins the tie
        })
        .unwrap();
        assert_eq!(t.config.prior_precision, 1.0);
        assert!(t.trials.iter().any(|tr| tr.score.is_infinite()));
    }
}
