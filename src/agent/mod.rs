//! The recurrent core shared by every model (paper App. B.1): one embedding per input kind,
//! concatenated into an LSTM, an affine projection φ_t = P h_t + p_b, and a posterior family
//! that turns φ_t (and, for the Laplace VRNN, the LSTM's Jacobians) into q_t.

pub mod acting;
pub mod model;
pub mod regression;
pub mod replay;
pub mod rl;

use crate::nn::Params;
use crate::nn::lstm::{Carry, Lstm};
use crate::nn::mlp::{Embedding, Linear};
use crate::posterior::filter::JacobianWeights;
use crate::posterior::{self, Gaussian, PosteriorFamily, StepInput};
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::VecDeque;

pub use crate::config::{DEFAULT_SAMPLE_WARMUP, ModelConfig, SampleEvery};
pub use model::Model;

/// Embeddings + LSTM + projection + posterior.
pub struct Core {
    pub embeds: Vec<Embedding>,
    pub lstm: Lstm,
    pub proj: Linear,
    /// The posterior family; the fast paths ask it what they need (`PosteriorFamily::laplace`,
    /// `PosteriorFamily::full_spectral`) rather than matching on a configuration.
    pub posterior: Box<dyn PosteriorFamily>,
    pub features: usize,
    pub hidden: usize,
    /// Where the parameters live.
    pub device: Device,
}

/// Per-sequence recurrent state: the carry, the last core inputs (for the Laplace window), and
/// the current posterior q_t.
#[derive(Clone)]
pub struct CoreState {
    pub carry: Carry,
    pub window: VecDeque<Tensor>,
    pub q: Gaussian,
}

impl CoreState {
    /// Cuts the autograd history (evaluation and rollouts: no gradient needed).
    pub fn detach(&self) -> CoreState {
        CoreState {
            carry: self.carry.detach(),
            window: self.window.clone(),
            q: self.q.detach(),
        }
    }
}

/// What one core step produces.
pub struct CoreStep {
    pub state: CoreState,
    /// KL(q_t ‖ stop_grad q_{t−1}) per task (None for the point estimate).
    pub kl: Option<Tensor>,
}

impl Core {
    /// `input_dims`: the raw size of each input kind (e.g. [1, 1] for regression (x, y)).
    pub fn new(
        p: &mut Params,
        cfg: &ModelConfig,
        input_dims: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let embeds = input_dims
            .iter()
            .enumerate()
            .map(|(k, d)| Embedding::new(p, &format!("embed{k}"), *d, cfg.embed_width, rng))
            .collect::<Result<Vec<_>>>()?;
        let lstm = Lstm::new(p, cfg.embed_width * input_dims.len(), cfg.hidden, rng)?;
        let proj = Linear::new(p, "proj", cfg.hidden, cfg.features, rng)?;
        let posterior = posterior::build(&cfg.posterior, p, cfg.features, rng)?;
        Ok(Self {
            embeds,
            lstm,
            proj,
            posterior,
            features: cfg.features,
            hidden: cfg.hidden,
            device: p.device().clone(),
        })
    }

    /// W_h and P as plain values, for the Laplace filter's Jacobians (`posterior::filter`).
    pub fn jacobian_weights(&self) -> Result<JacobianWeights> {
        Ok(JacobianWeights::new(
            self.lstm.wh.flatten_all()?.to_vec1()?,
            self.proj.weight.flatten_all()?.to_vec1()?,
            self.hidden,
            self.features,
        ))
    }

    pub fn embed(&self, kind: usize, x: &Tensor) -> Result<Tensor> {
        self.embeds[kind].forward(x)
    }

    /// The state before any observation: zero carry and the prior q_0 (from φ_0 = P·0 + p_b).
    pub fn initial(&self, batch: usize) -> Result<CoreState> {
        let carry = Carry::zeros(batch, self.hidden, &self.device)?;
        let phi0 = self.proj.forward(&carry.h)?;
        Ok(CoreState {
            carry,
            window: VecDeque::new(),
            q: self.posterior.init(&phi0)?,
        })
    }

    /// Feeds the embedded inputs of step t (one tensor per input kind, each (B, embed_width))
    /// through the LSTM and forms q_t (and KL(q_t ‖ stop_grad q_{t−1})).
    pub fn step(&self, state: &CoreState, embedded: &[Tensor]) -> Result<CoreStep> {
        let x = Tensor::cat(embedded, 1)?;
        let carry = self.lstm.step(&x, &state.carry)?;
        let phi = self.proj.forward(&carry.h)?;
        let mut window = state.window.clone();
        let slice =
            posterior::slide_window(&mut window, x.detach(), self.posterior.history_window());
        let input = StepInput {
            phi: &phi,
            carry: &carry,
            lstm: &self.lstm,
            proj: &self.proj,
            window: &slice,
        };
        let q = self.posterior.step(&input, &state.q)?;
        let kl = q.kl_to(&state.q)?;
        Ok(CoreStep {
            state: CoreState { carry, window, q },
            kl,
        })
    }

    /// The core along a sequence of `steps` steps for `batch` tasks, from the state before any
    /// observation (q_0): at step t the embedded inputs `feed(t, s_t)` (one tensor per input
    /// kind, read from the state s_t the step starts from) enter [`Core::step`], and
    /// `visit(t, step, inputs)` reads what it produced (the posterior once step t's inputs are in,
    /// and its KL to the one before). With `detached` the
    /// graph is cut between steps (evaluation, statistics); otherwise gradients flow through
    /// time (the per-step reference losses). Returns the last state.
    pub fn unroll(
        &self,
        batch: usize,
        steps: usize,
        detached: bool,
        mut feed: impl FnMut(usize, &CoreState) -> Result<Vec<Tensor>>,
        mut visit: impl FnMut(usize, &CoreStep, &[Tensor]) -> Result<()>,
    ) -> Result<CoreState> {
        let mut state = self.initial(batch)?;
        if detached {
            state = state.detach();
        }
        for t in 0..steps {
            let inputs = feed(t, &state)?;
            let step = self.step(&state, &inputs)?;
            visit(t, &step, &inputs)?;
            state = match detached {
                true => step.state.detach(),
                false => step.state,
            };
        }
        Ok(state)
    }
}

/// Standard-normal noise of the given shape from a seeded stream, on `device` (drawn on the
/// host, so the numbers do not depend on the device).
pub fn randn(rng: &mut ChaCha8Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let v: Vec<f32> = (0..count)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
