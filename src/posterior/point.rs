//! The point-estimate baseline (RNN, RL²-style): z_t = φ_t, no uncertainty and no KL term.

use super::{Covariance, Gaussian, PosteriorFamily, StepInput};
use anyhow::Result;
use candle_core::Tensor;

pub struct Point;

impl PosteriorFamily for Point {
    fn name(&self) -> String {
        "rnn".into()
    }

    fn init(&self, phi0: &Tensor) -> Result<Gaussian> {
        Ok(Gaussian {
            mean: phi0.clone(),
            cov: Covariance::Point,
        })
    }

    fn step(&self, input: &StepInput, _prev: &Gaussian) -> Result<Gaussian> {
        Ok(Gaussian {
            mean: input.phi.clone(),
            cov: Covariance::Point,
        })
    }

    fn is_bayesian(&self) -> bool {
        false
    }
}
