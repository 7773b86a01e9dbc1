//! The recurrent core shared by every model (paper App. B.1): one embedding per input kind,
//! concatenated into an LSTM, an affine projection φ_t = P h_t + p_b, and a posterior family
//! that turns φ_t (and, for the Laplace VRNN, the LSTM's Jacobians) into q_t.

pub mod acting;
pub mod regression;
pub mod replay;
pub mod rl;

use crate::nn::Params;
use crate::nn::lstm::{Carry, Lstm};
use crate::nn::mlp::{Embedding, Linear};
use crate::posterior::filter::JacobianWeights;
use crate::posterior::{self, Gaussian, PosteriorConfig, PosteriorFamily, StepInput};
use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Architecture and posterior of a model (`[model]` in the TOML configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of each input embedding MLP (two layers) — paper: 256.
    #[serde(default = "d_embed")]
    pub embed_width: usize,
    /// LSTM hidden size — paper: 128.
    #[serde(default = "d_hidden")]
    pub hidden: usize,
    /// Posterior dimensionality n (the projection P: h → φ ∈ R^n) — paper: 32 or 64.
    #[serde(default = "d_features")]
    pub features: usize,
    /// Hidden sizes of the prediction / policy / value heads — paper: [256, 256, 64].
    #[serde(default = "d_head")]
    pub head_hidden: Vec<usize>,
    /// Number of posterior samples n_Z per step (outputs averaged over samples, App. B.3).
    #[serde(default = "d_nz")]
    pub n_z: usize,
    #[serde(default)]
    pub posterior: PosteriorConfig,
    /// RL: the scale s of the posterior noise in what the policy and value heads see,
    /// z = μ_t + s·Σ_t^{1/2} ε (1: samples of q_t, as the paper describes; 0: the posterior
    /// mean, which is what the authors' RL agents act on, see DESIGN.md). The KL term and the
    /// posterior statistics do not depend on it. Must be 1 for regression.
    #[serde(default = "d_sample_scale", skip_serializing_if = "is_one")]
    pub sample_scale: f64,
    /// RL: the fraction w of `train.updates` over which the training rollouts' noise scale
    /// ramps linearly from 0 to `sample_scale`, s_u = sample_scale · min(1, u / (w·U)) at
    /// update u of U (0: `sample_scale` from the first update). Absent:
    /// [`DEFAULT_SAMPLE_WARMUP`]. Evaluation (held out during training, and after it) always
    /// acts at `sample_scale`. Must be absent for regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_warmup: Option<f64>,
    /// RL: how often the heads' posterior sample is redrawn: `"step"` (a fresh ε at every
    /// step, z_t = μ_t + s·Σ_t^{1/2} ε_t) or `"task"` (one ε per task for its whole
    /// meta-episode, z_t = μ_t + s·Σ_t^{1/2} ε: each z_t is still a sample of q_t, and the
    /// agent keeps one hypothesis of the task while q_t narrows, as posterior sampling does).
    /// Absent: [`SampleEvery::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_every: Option<SampleEvery>,
}

/// How often an RL rollout redraws the noise ε of its posterior samples (`model.sample_every`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleEvery {
    /// A fresh ε at every step.
    Step,
    /// One ε per task, held for the whole meta-episode.
    Task,
}

impl SampleEvery {
    /// The rule when `model.sample_every` is absent.
    pub const DEFAULT: SampleEvery = SampleEvery::Step;
}

/// The warm-up fraction of the sample scale when `model.sample_warmup` is absent.
pub const DEFAULT_SAMPLE_WARMUP: f64 = 0.0;

fn d_sample_scale() -> f64 {
    1.0
}
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn d_embed() -> usize {
    256
}
fn d_hidden() -> usize {
    128
}
fn d_features() -> usize {
    64
}
fn d_head() -> Vec<usize> {
    vec![256, 256, 64]
}
fn d_nz() -> usize {
    1
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            embed_width: 256,
            hidden: 128,
            features: 64,
            head_hidden: d_head(),
            n_z: 1,
            posterior: PosteriorConfig::Rnn,
            sample_scale: 1.0,
            sample_warmup: None,
            sample_every: None,
        }
    }
}

impl ModelConfig {
    /// The noise scale of the training rollouts at update `update` (0-based) of `updates`:
    /// s_u = `sample_scale` · min(1, u / (w·U)) with w = `sample_warmup` (or its default);
    /// `sample_scale` throughout when w = 0.
    pub fn sample_scale_at(&self, update: usize, updates: usize) -> f64 {
        let w = self.sample_warmup.unwrap_or(DEFAULT_SAMPLE_WARMUP);
        let ramp = w * updates as f64;
        if ramp <= 0.0 {
            return self.sample_scale;
        }
        self.sample_scale * (update as f64 / ramp).min(1.0)
    }

    /// `model.sample_every`, or its default.
    pub fn sample_every(&self) -> SampleEvery {
        self.sample_every.unwrap_or(SampleEvery::DEFAULT)
    }

    pub fn validate(&self) -> Result<()> {
        for (k, v) in [
            ("model.embed_width", self.embed_width),
            ("model.hidden", self.hidden),
            ("model.features", self.features),
            ("model.n_z", self.n_z),
        ] {
            if v == 0 {
                bail!("{k} must be a positive integer (got 0)");
            }
        }
        if !(0.0..=1.0).contains(&self.sample_scale) {
            bail!(
                "model.sample_scale must be in [0, 1] (got {}): 1 acts on samples of the posterior, 0 on its mean",
                self.sample_scale
            );
        }
        if let Some(w) = self.sample_warmup
            && !(0.0..=1.0).contains(&w)
        {
            bail!(
                "model.sample_warmup must be a fraction in [0, 1] of train.updates (got {w}): the part of training over which the sample scale ramps from 0 to model.sample_scale"
            );
        }
        if self.head_hidden.contains(&0) {
            bail!(
                "model.head_hidden entries must be positive integers (got {:?})",
                self.head_hidden
            );
        }
        self.posterior.validate()
    }
}

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
        let keep = self.posterior.history_window();
        if keep > 0 {
            window.push_back(x.detach());
            while window.len() > keep {
                window.pop_front();
            }
        }
        let slice: Vec<Tensor> = window.iter().cloned().collect();
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
