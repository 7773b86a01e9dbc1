//! The core stepped online without an autograd graph: what a rollout or an evaluation needs to
//! act, one observation at a time (the counterpart of the time-batched [`super::replay`]).
//!
//! Per step: the input stage of the replay on B rows (embeddings and x W_x + b, computed once per
//! distinct input row of the whole run: see `InputCache`), one LSTM step on plain buffers, φ_t = P h_t + p_b, then the posterior: the point estimate and the
//! VRNN head run as small tensor programs, the Laplace VRNN as the filter of
//! `posterior::filter`, whose statistics (sample offsets, KL parts) the PPO loss reuses so that
//! they are computed once per update.

use super::Core;
use crate::nn::kernels::{Mat, sgemm};
use crate::nn::lstm_seq::{SequenceTrace, lstm_step};
use crate::posterior::Gaussian;
use crate::posterior::filter::{JacobianWeights, LaplaceFilter};
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

/// The posterior's part of an acting state.
enum Posterior {
    /// Point estimate or VRNN: the previous q (detached), for the KL.
    Graph(Gaussian),
    Laplace(Box<LaplaceFilter>),
}

/// What one acting step gives.
pub struct ActStep {
    /// Samples z ~ q_t, (n_Z, B, n).
    pub z: Tensor,
    /// Embeddings of every input kind for the B rows ([`Acting::embedding`]).
    pub embedded: Embedded,
    /// Differential entropy of q_t (None for the point estimate).
    pub entropy: Option<Vec<f64>>,
    /// KL(q_t ‖ q_{t−1}) (None for the point estimate).
    pub kl: Option<Vec<f64>>,
    /// Laplace only: the offsets L_t^{−T} ε (n_Z·B·n) and the KL gradient Λ̃_{t−1}(μ_t − μ_{t−1})
    /// (B·n), for the loss pass.
    pub laplace: Option<(Vec<f32>, Vec<f32>)>,
}

/// The embeddings of one step's B rows.
pub enum Embedded {
    /// Row b of every input kind is row `slots[b]` of the input cache's table of that kind
    /// ([`Acting::embedding`]).
    Cached(Vec<u32>),
    /// The rows themselves, (B·E) values per input kind (inputs that do not repeat, once the
    /// cache is full).
    Rows(Vec<Vec<f32>>),
}

/// B sequences stepped online from the zero carry.
pub struct Acting<'a> {
    core: &'a Core,
    batch: usize,
    /// W_h and P as plain values (also what the Laplace filter's Jacobians need).
    weights: JacobianWeights,
    proj_bias: Vec<f32>,
    c: Vec<f32>,
    h: Vec<f32>,
    posterior: Posterior,
    inputs: InputCache,
    /// The full VRNN's U of q_0, q_1, … as stepped, (B, n, n) each, when kept
    /// ([`Acting::keep_cayley`]).
    cayley: Option<Vec<Tensor>>,
    /// Whether [`Acting::observe`] reports the entropy and the KL of the point estimate's and
    /// the VRNN's posteriors (the Laplace filter computes them anyway).
    stats: bool,
    /// The LSTM's states [h_t, c_t] and activated gates of every step, when kept
    /// ([`Acting::keep_sequence`]).
    sequence: Option<(Vec<f32>, Vec<f32>)>,
}

impl<'a> Acting<'a> {
    /// The state before any observation: zero carry, q_0 from φ_0 = p_b.
    pub fn new(core: &'a Core, batch: usize) -> Result<Self> {
        let (hd, n) = (core.hidden, core.features);
        let weights = core.jacobian_weights()?;
        let proj_bias: Vec<f32> = core.proj.bias.flatten_all()?.to_vec1()?;
        let phi0: Vec<f32> = (0..batch).flat_map(|_| proj_bias.iter().copied()).collect();
        let posterior = match core.posterior.laplace() {
            Some(cfg) => {
                let filter = LaplaceFilter::new(cfg, &phi0, batch, &weights)?;
                Posterior::Laplace(Box::new(filter))
            }
            None => {
                let phi0 = Tensor::from_vec(phi0, (batch, n), &core.device)?;
                Posterior::Graph(core.posterior.init(&phi0)?.detach())
            }
        };
        Ok(Self {
            core,
            batch,
            weights,
            proj_bias,
            c: vec![0.0; batch * hd],
            h: vec![0.0; batch * hd],
            posterior,
            inputs: InputCache::default(),
            cayley: None,
            stats: true,
            sequence: None,
        })
    }

    /// From now on, [`Acting::observe`] leaves out the entropy and the KL of the point
    /// estimate's and the VRNN's posteriors (a training rollout does not use them).
    pub fn skip_stats(&mut self) {
        self.stats = false;
    }

    /// From now on, keeps the full VRNN's Cayley factors U of every posterior, the current one
    /// included (for the loss pass, `agent::rl::HeadTraces`); no-op for other families.
    pub fn keep_cayley(&mut self) -> Result<()> {
        if let Posterior::Graph(q) = &self.posterior {
            let mut kept = vec![];
            if append_cayley(q, &mut kept)? {
                self.cayley = Some(kept);
            }
        }
        Ok(())
    }

    /// From now on, keeps the LSTM's states and gates of every step (for the loss pass's
    /// recurrence, `nn::lstm_seq::lstm_sequence_known`), `steps` of them expected.
    pub fn keep_sequence(&mut self, steps: usize) {
        let (b, hd) = (self.batch, self.core.hidden);
        self.sequence = Some((
            Vec::with_capacity(steps * b * 2 * hd),
            Vec::with_capacity(steps * b * 4 * hd),
        ));
    }

    /// The LSTM values kept since [`Acting::keep_sequence`], step-major.
    pub fn take_sequence(&mut self) -> Option<SequenceTrace> {
        let (states, gates) = self.sequence.take()?;
        Some(SequenceTrace::new(states, gates))
    }

    /// The input cache's embeddings of input kind `kind`, one row per slot (a table that only
    /// grows during a run): row b of a step's [`Embedded::Cached`] slots is row `slots[b]`.
    pub fn embedding_table(&self, kind: usize) -> &[f32] {
        &self.inputs.embedded[kind]
    }

    /// The embeddings of input kind `kind` for the rows of `step` (a step of this acting run),
    /// (B, E).
    pub fn embedding_rows(&self, step: &ActStep, kind: usize) -> Result<Tensor> {
        let rows = match &step.embedded {
            Embedded::Cached(slots) => self.inputs.gather(kind, slots),
            Embedded::Rows(rows) => rows[kind].clone(),
        };
        let e = rows.len() / self.batch.max(1);
        Ok(Tensor::from_vec(rows, (self.batch, e), &self.core.device)?)
    }

    /// The Cayley factors kept since [`Acting::keep_cayley`], step after step.
    pub fn take_cayley(&mut self) -> Option<Vec<Tensor>> {
        self.cayley.take()
    }

    /// Observes the raw inputs of one step (one row-major (B, d_k) block per input kind) and
    /// draws n_Z samples of q_t with the standard-normal noise `eps` (n_Z, B, n).
    pub fn observe(&mut self, kinds: &[Vec<f32>], eps: &Tensor) -> Result<ActStep> {
        let (b, hd, n) = (self.batch, self.core.hidden, self.core.features);
        let (xw, embedded) = self.inputs.project(self.core, kinds, b)?;
        let gates = lstm_step(&xw, &self.weights.wh, &mut self.c, &mut self.h, b, hd);
        if let Some((states, kept)) = &mut self.sequence {
            for (h, c) in self.h.chunks(hd).zip(self.c.chunks(hd)) {
                states.extend_from_slice(h);
                states.extend_from_slice(c);
            }
            kept.extend_from_slice(&gates);
        }
        let mut phi: Vec<f32> = (0..b)
            .flat_map(|_| self.proj_bias.iter().copied())
            .collect();
        sgemm(
            b,
            n,
            hd,
            Mat::rows(&self.h, hd),
            Mat::rows(&self.weights.proj, n),
            &mut phi,
            true,
            true,
        );
        let device = &self.core.device;
        Ok(match &mut self.posterior {
            Posterior::Laplace(filter) => {
                let stats = filter.step(&self.weights, &self.c, &self.h, &xw, &phi)?;
                let (z, offsets) = laplace_samples(filter, eps, device)?;
                ActStep {
                    z,
                    embedded,
                    entropy: Some(stats.entropy),
                    kl: Some(stats.kl),
                    laplace: Some((offsets, stats.kl_grad)),
                }
            }
            Posterior::Graph(prev) => {
                let phi = Tensor::from_vec(phi, (b, n), device)?;
                let q = self.core.posterior.init(&phi)?.detach();
                let z = q.sample(eps)?;
                let (mut kl, mut entropy) = (None, None);
                if self.stats {
                    if let Some(v) = q.kl_to(prev)? {
                        kl = Some(v.to_vec1::<f32>()?.iter().map(|v| *v as f64).collect());
                    }
                    entropy = q.entropy()?;
                }
                if let Some(kept) = &mut self.cayley {
                    append_cayley(&q, kept)?;
                }
                *prev = q;
                ActStep {
                    z,
                    embedded,
                    entropy,
                    kl,
                    laplace: None,
                }
            }
        })
    }

    /// n_Z samples of the current posterior q_t with the standard-normal noise `eps`
    /// (n_Z, B, n), without stepping.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        match &self.posterior {
            Posterior::Laplace(filter) => Ok(laplace_samples(filter, eps, &self.core.device)?.0),
            Posterior::Graph(q) => q.sample(eps),
        }
    }

    /// Differential entropy of the current posterior q_t per task (None for a point estimate).
    pub fn entropy(&self) -> Result<Option<Vec<f64>>> {
        match &self.posterior {
            Posterior::Laplace(filter) => Ok(Some(filter.entropy())),
            Posterior::Graph(q) => q.entropy(),
        }
    }
}

/// Appends q's Cayley factors U (B, n, n) to `kept`; false if q has none (not a full VRNN in
/// f32).
fn append_cayley(q: &Gaussian, kept: &mut Vec<Tensor>) -> Result<bool> {
    let Some((u, _)) = q.full_spectral_f32() else {
        return Ok(false);
    };
    kept.push(u.contiguous()?);
    Ok(true)
}

/// The most distinct input rows an [`InputCache`] keeps (≈ 20 MB at the paper's sizes).
const CACHE_ROWS: usize = 4096;

/// The input stage (embeddings and x W_x + b, `Core::project_inputs`) of every distinct input
/// row seen so far in one acting run. The parameters do not change while acting, and discrete
/// inputs (bandit, gridworld) take a few hundred joint values over a whole rollout, so each is
/// embedded and projected once per run instead of once per step. Continuous inputs
/// (regression) never repeat: once the cache holds [`CACHE_ROWS`] rows, rows it lacks are
/// projected per step as before, without being stored.
#[derive(Default)]
struct InputCache {
    /// Bit pattern of a joint input row → its slot.
    slots: HashMap<Vec<u32>, usize>,
    /// x W_x + b per slot, (slots, 4H).
    xw: Vec<f32>,
    /// Embedding per input kind and slot, (slots, E) each.
    embedded: Vec<Vec<f32>>,
}

impl InputCache {
    /// The embeddings of input kind `kind` of the given slots, one row each.
    fn gather(&self, kind: usize, slots: &[u32]) -> Vec<f32> {
        let store = &self.embedded[kind];
        let e = store.len() / self.slots.len().max(1);
        slots
            .iter()
            .flat_map(|&s| store[s as usize * e..(s as usize + 1) * e].iter().copied())
            .collect()
    }

    /// x W_x + b (B·4H) and the embeddings of every input kind ([`Embedded`]) of one step's
    /// rows (one row-major (B, d_k) block per input kind).
    fn project(
        &mut self,
        core: &Core,
        kinds: &[Vec<f32>],
        b: usize,
    ) -> Result<(Vec<f32>, Embedded)> {
        let dims: Vec<usize> = kinds.iter().map(|k| k.len() / b.max(1)).collect();
        let keys: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (kinds.iter().zip(&dims))
                    .flat_map(|(k, d)| k[r * d..(r + 1) * d].iter().map(|v| v.to_bits()))
                    .collect()
            })
            .collect();
        // Rows not seen before, each distinct one once.
        let mut new_rows: Vec<usize> = vec![];
        let mut new_keys: HashMap<&[u32], ()> = HashMap::new();
        for (r, key) in keys.iter().enumerate() {
            if !self.slots.contains_key(key) && new_keys.insert(key, ()).is_none() {
                new_rows.push(r);
            }
        }
        if self.slots.len() + new_rows.len() > CACHE_ROWS {
            let stage = core.project_inputs(kinds, b)?;
            let embedded = (0..kinds.len())
                .map(|k| Ok(stage.embedding(k)?.flatten_all()?.to_vec1()?))
                .collect::<Result<Vec<_>>>()?;
            return Ok((
                stage.xw()?.flatten_all()?.to_vec1()?,
                Embedded::Rows(embedded),
            ));
        }
        if !new_rows.is_empty() {
            let part: Vec<Vec<f32>> = (kinds.iter().zip(&dims))
                .map(|(k, d)| {
                    new_rows
                        .iter()
                        .flat_map(|r| k[r * d..(r + 1) * d].iter().copied())
                        .collect()
                })
                .collect();
            let stage = core.project_inputs(&part, new_rows.len())?;
            self.xw.extend(stage.xw()?.flatten_all()?.to_vec1::<f32>()?);
            self.embedded.resize(kinds.len(), vec![]);
            for (k, store) in self.embedded.iter_mut().enumerate() {
                store.extend(stage.embedding(k)?.flatten_all()?.to_vec1::<f32>()?);
            }
            for r in new_rows {
                let slot = self.slots.len();
                self.slots.insert(keys[r].clone(), slot);
            }
        }
        let g = 4 * core.hidden;
        let slots: Vec<u32> = keys.iter().map(|k| self.slots[k] as u32).collect();
        let xw = slots
            .iter()
            .flat_map(|&s| {
                self.xw[s as usize * g..(s as usize + 1) * g]
                    .iter()
                    .copied()
            })
            .collect();
        Ok((xw, Embedded::Cached(slots)))
    }
}

/// Samples z = μ_t + L_t^{−T} ε of the filter's current posteriors for the noise ε (n_Z, B, n),
/// with the offsets L_t^{−T} ε as plain values (n_Z·B·n).
fn laplace_samples(
    filter: &LaplaceFilter,
    eps: &Tensor,
    device: &candle_core::Device,
) -> Result<(Tensor, Vec<f32>)> {
    let (_, b, n) = eps.dims3()?;
    let offsets = filter.sample_offsets(&eps.flatten_all()?.to_vec1::<f32>()?);
    let means = Tensor::from_vec(filter.means(), (1, b, n), device)?;
    let z = means.broadcast_add(&Tensor::from_vec(offsets.clone(), eps.shape(), device)?)?;
    Ok((z, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::nn::Params;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The cache gives every step the input stage `Core::project_inputs` computes for that
    /// step: for repeating (discrete) rows, for new rows mixed with cached ones, and once the
    /// cache is full (continuous rows), where it projects the step's rows directly.
    #[test]
    fn input_cache_equals_projecting_each_step() {
        crate::init_threads(1);
        let cfg = ModelConfig {
            embed_width: 8,
            hidden: 4,
            features: 3,
            head_hidden: vec![8],
            ..ModelConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let core = Core::new(&mut Params::new(), &cfg, &[2, 1], &mut rng).unwrap();
        let b = 256;
        let mut cache = InputCache::default();
        // 4 discrete steps (a handful of distinct rows), then continuous rows until the cache
        // has overflowed (CACHE_ROWS rows) for a few steps.
        for step in 0..24 {
            let continuous = step >= 4;
            let mut row = |_: usize| -> f32 {
                if continuous {
                    rng.r#gen::<f32>()
                } else {
                    rng.gen_range(0..3) as f32
                }
            };
            let kinds = vec![
                (0..2 * b).map(&mut row).collect(),
                (0..b).map(&mut row).collect(),
            ];
            let (xw, embedded) = cache.project(&core, &kinds, b).unwrap();
            let stage = core.project_inputs(&kinds, b).unwrap();
            let values = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            let close = |a: &[f32], w: &[f32]| {
                a.len() == w.len()
                    && a.iter()
                        .zip(w)
                        .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
            };
            assert!(close(&xw, &values(stage.xw().unwrap())), "xw, step {step}");
            for k in 0..kinds.len() {
                let got: Vec<f32> = match &embedded {
                    Embedded::Rows(rows) => rows[k].clone(),
                    Embedded::Cached(slots) => cache.gather(k, slots),
                };
                let want = values(stage.embedding(k).unwrap());
                assert!(close(&got, &want), "embedding {k}, step {step}");
            }
        }
        assert!(cache.slots.len() <= CACHE_ROWS);
        assert!(
            cache.slots.len() + b > CACHE_ROWS,
            "the cache never filled up"
        );
    }
}
