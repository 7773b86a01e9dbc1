//! Teacher-forced replay of a known sequence, time-batched: the one fast pass behind the PPO
//! loss and the supervised loss.
//!
//! In a replay every input is known, so only the recurrence is sequential:
//! 1. the raw inputs of all T·B rows are deduplicated (discrete inputs — bandit, gridworld —
//!    take a handful of distinct values), the embeddings and the input projection
//!    x W_x + b run once per distinct row and are gathered back (gradients scatter-add);
//! 2. the fused LSTM op (`nn::lstm_seq`) runs the recurrence and its backward through time;
//! 3. the projection φ_t = P h_t + p_b runs once over all rows;
//! 4. the posterior family turns φ_0..φ_T into q_0..q_T ([`PosteriorSequence`]): the point
//!    estimate and the VRNN head as batches over many steps (all of them, or a few at a time for
//!    the full-covariance VRNN's (B, n, n) matrices); the Laplace VRNN as means with gradient plus
//!    the statistics of `posterior::filter`, which carry none.
//!    The full VRNN's samples and KL of a chunk come from one fused op
//!    (`posterior::spectral_kl`), and its Cayley factors U, where the rollout kept them at the
//!    same parameters, are taken as known (the map then runs backward only).
//!
//! The per-step path (`Core::step`, `train::reference`) computes the same numbers one step at a
//! time; `tests/fast_path.rs` checks the two against each other, gradients included.

use super::Core;
use crate::nn::kernels::dedup_rows;
use crate::nn::lstm_seq::{
    SequenceTrace, lstm_sequence_gathered, lstm_sequence_known, lstm_sequence_rows, project_hidden,
};
use crate::posterior::spectral_kl::{ChunkNoise, spectral_chunk};
use crate::posterior::{Covariance, Gaussian, KnownCayley};
use anyhow::{Result, bail};
use candle_core::{D, DType, Device, Tensor};
use std::sync::Arc;

/// The raw core inputs of a whole sequence: one row-major (T·B, d_k) block per input kind,
/// step-major (row t·B + b holds step t of task b).
pub struct SequenceInputs {
    pub steps: usize,
    pub batch: usize,
    pub kinds: Vec<Vec<f32>>,
}

/// The input stage of the core for a set of rows (with gradient): embeddings of the distinct
/// rows and x W_x + b of every row.
pub struct InputStage {
    /// Embeddings of the distinct input rows, one (U, E) tensor per kind.
    unique_embedded: Vec<Tensor>,
    /// For every row, its distinct row (None: every row is distinct), as a tensor and as
    /// values.
    index: Option<(Tensor, Arc<Vec<u32>>)>,
    /// x W_x + b of the distinct rows (U, 4H), with gradient.
    distinct_xw: Tensor,
}

impl InputStage {
    /// x W_x + b of every row, (rows, 4H): the distinct rows themselves (with gradient) where
    /// every row is distinct, else gathered from them without a graph (values only: the
    /// replay's recurrence gathers its rows itself, [`lstm_sequence_gathered`]). Formed on
    /// request: the RL loss pass never needs it (the gridworld's is 52 MB).
    pub fn xw(&self) -> Result<Tensor> {
        Ok(match &self.index {
            Some((idx, _)) => self.distinct_xw.detach().index_select(idx, 0)?,
            None => self.distinct_xw.clone(),
        })
    }

    /// The embedding of input kind `kind` for every row, (rows, E).
    pub fn embedding(&self, kind: usize) -> Result<Tensor> {
        let e = &self.unique_embedded[kind];
        Ok(match &self.index {
            Some((idx, _)) => e.index_select(idx, 0)?,
            None => e.clone(),
        })
    }

    /// The embeddings of input kind `kind` as [`InputStage::embedding`] gathers them: the
    /// distinct rows' (U, E) and, per row, its distinct row (None: the rows are distinct).
    pub fn embedding_table(&self, kind: usize) -> (&Tensor, Option<&[u32]>) {
        (
            &self.unique_embedded[kind],
            self.index.as_ref().map(|(_, v)| &v[..]),
        )
    }
}

/// What the core computes over a replayed sequence (all with gradient).
pub struct CoreReplay {
    /// The input stage of all T·B rows (step-major).
    pub inputs: InputStage,
    /// [h_t, c_t] for t = 1..T, (T, B, 2H).
    pub states: Tensor,
    /// φ_0..φ_T, (T+1, B, n); φ_0 = P·0 + p_b is the output at the zero carry.
    pub phi: Tensor,
}

impl CoreReplay {
    /// x_t W_x + b, (T, B, 4H) ([`InputStage::xw`]).
    pub fn xw(&self) -> Result<Tensor> {
        let (steps, batch, _) = self.states.dims3()?;
        Ok(self.inputs.xw()?.reshape((steps, batch, ()))?)
    }
}

impl Core {
    /// Replays a known input sequence from the zero carry (steps 1–3 of the module docs).
    pub fn replay(&self, inputs: &SequenceInputs) -> Result<CoreReplay> {
        self.replay_known(inputs, None)
    }

    /// [`Core::replay`] given the recurrence's values where they are known (a rollout's of
    /// these inputs at these parameters, `agent::rl::HeadTraces::sequence`).
    pub fn replay_known(
        &self,
        inputs: &SequenceInputs,
        known: Option<&Arc<SequenceTrace>>,
    ) -> Result<CoreReplay> {
        let (steps, batch) = (inputs.steps, inputs.batch);
        let rows = steps * batch;
        let stage = self.project_inputs(&inputs.kinds, rows)?;
        // The recurrence reads the step-major rows directly.
        let (xw, wh) = (&stage.distinct_xw, &self.lstm.wh);
        let index = stage.index.as_ref().map(|(_, index)| index.clone());
        let states = match (known, index) {
            (Some(known), index) => lstm_sequence_known(xw, index, wh, steps, known.clone())?,
            (None, Some(index)) => lstm_sequence_gathered(xw, index, wh, steps)?,
            (None, None) => lstm_sequence_rows(xw, wh, steps)?,
        };
        let phi = project_hidden(&states, &self.proj.weight, &self.proj.bias)?; // (T, B, n)
        let zero = Tensor::zeros((1, batch, self.hidden), DType::F32, &self.device)?;
        let phi0 = self.proj.forward(&zero)?;
        Ok(CoreReplay {
            inputs: stage,
            states,
            phi: Tensor::cat(&[&phi0, &phi], 0)?,
        })
    }

    /// The input stage for `rows` rows given one row-major (rows, d_k) block per input kind:
    /// embeddings and x W_x + b run once per distinct joint row and are gathered.
    pub fn project_inputs(&self, kinds: &[Vec<f32>], rows: usize) -> Result<InputStage> {
        if kinds.len() != self.embeds.len() {
            bail!(
                "got {} input kinds, the core has {}",
                kinds.len(),
                self.embeds.len()
            );
        }
        let dims: Vec<usize> = kinds.iter().map(|k| k.len() / rows.max(1)).collect();
        let width: usize = dims.iter().sum();
        let mut joint = Vec::with_capacity(rows * width);
        for r in 0..rows {
            for (k, d) in dims.iter().enumerate() {
                joint.extend_from_slice(&kinds[k][r * d..(r + 1) * d]);
            }
        }
        let (unique, index) = dedup_rows(&joint, width);
        let distinct = unique.len() / width.max(1);
        let (source, index) = if distinct < rows {
            let idx = Tensor::from_vec(index.clone(), rows, &self.device)?;
            (unique, Some((idx, Arc::new(index))))
        } else {
            (joint, None)
        };
        let mut unique_embedded = Vec::with_capacity(dims.len());
        let mut offset = 0;
        for (k, d) in dims.iter().enumerate() {
            let mut part = Vec::with_capacity(distinct * d);
            for r in 0..distinct {
                part.extend_from_slice(&source[r * width + offset..r * width + offset + d]);
            }
            offset += d;
            let x = Tensor::from_vec(part, (distinct, *d), &self.device)?;
            unique_embedded.push(self.embed(k, &x)?);
        }
        let x = Tensor::cat(&unique_embedded, 1)?;
        let distinct_xw = x.matmul(&self.lstm.wx)?.broadcast_add(&self.lstm.b)?;
        Ok(InputStage {
            unique_embedded,
            index,
            distinct_xw,
        })
    }

    /// q_0..q_T of a replay (step 4 of the module docs). The full-covariance VRNN forms its
    /// (B, n, n) matrices a few steps at a time (about [`CHUNK_ELEMENTS`] floats per tensor):
    /// over all T·B rows at once each temporary is hundreds of MB, and the update ran 3× slower
    /// than step by step; the other families take all steps at once.
    pub fn posterior_sequence(&self, phi: &Tensor) -> Result<PosteriorSequence> {
        self.posterior_sequence_known(phi, None)
    }

    /// [`Core::posterior_sequence`] given the full VRNN's Cayley factors U of q_0..q_T where
    /// they are known (`agent::rl::HeadTraces::cayley`: the rollout's, at these parameters).
    pub fn posterior_sequence_known(
        &self,
        phi: &Tensor,
        cayley: Option<&Arc<Vec<Tensor>>>,
    ) -> Result<PosteriorSequence> {
        let (steps1, batch, n) = phi.dims3()?;
        let per_chunk = match self.posterior.full_spectral() {
            true => (CHUNK_ELEMENTS / (batch * n * n)).max(1),
            false => steps1,
        };
        self.chunks(phi, per_chunk, cayley)
    }

    /// As [`Core::posterior_sequence`] with the point estimate and the VRNN formed
    /// `per_chunk` steps at a time (chunks overlap by one step, for the KL to the previous step).
    pub fn posterior_sequence_in_chunks(
        &self,
        phi: &Tensor,
        per_chunk: usize,
    ) -> Result<PosteriorSequence> {
        self.chunks(phi, per_chunk, None)
    }

    fn chunks(
        &self,
        phi: &Tensor,
        per_chunk: usize,
        cayley: Option<&Arc<Vec<Tensor>>>,
    ) -> Result<PosteriorSequence> {
        let (steps1, batch, n) = phi.dims3()?;
        if let Some(known) = cayley
            && (known.len() != steps1 || known.iter().any(|u| u.dims() != [batch, n, n]))
        {
            bail!(
                "known Cayley factors of {} steps for {steps1} steps of ({batch}, {n}, {n})",
                known.len()
            );
        }
        Ok(match self.posterior.laplace() {
            Some(c) => {
                let means = match c.accumulates_mean() {
                    true => {
                        // μ_t = φ_t + stop_grad μ_{t−1}, μ_0 = φ_0: the added term is the running
                        // sum of the φ values, summed in the per-step order.
                        let values: Vec<f32> = phi.flatten_all()?.to_vec1()?;
                        let mut offsets = vec![0f32; values.len()];
                        let step = batch * n;
                        for t in 1..steps1 {
                            for k in 0..step {
                                let prev = (t - 1) * step + k;
                                offsets[t * step + k] = if t == 1 {
                                    values[prev]
                                } else {
                                    values[prev] + offsets[prev]
                                };
                            }
                        }
                        let offsets = Tensor::from_vec(offsets, phi.shape(), &self.device)?;
                        phi.add(&offsets)?
                    }
                    false => phi.clone(),
                };
                PosteriorSequence::Laplace { means, batch }
            }
            None => {
                // Chunk k covers steps first_k ..= last_k, with first_{k+1} = last_k.
                let mut chunks = vec![];
                let mut first = 0;
                loop {
                    let last = (first + per_chunk.max(1)).min(steps1 - 1);
                    let len = last - first + 1;
                    let rows = phi.narrow(0, first, len)?.reshape((len * batch, n))?;
                    let q = match cayley {
                        Some(known) => {
                            let known = KnownCayley {
                                steps: known.clone(),
                                range: first..first + len,
                            };
                            self.posterior.init_known(&rows, known)?
                        }
                        None => self.posterior.init(&rows)?,
                    };
                    chunks.push((first, q));
                    if last + 1 >= steps1 {
                        break;
                    }
                    first = last;
                }
                PosteriorSequence::Graph { chunks, batch }
            }
        })
    }
}

/// The Laplace filter's statistics of T steps as the constants the loss needs (no gradient).
pub struct LaplaceConstants {
    /// L_t^{−T} ε, (T, n_Z, B, n): the `noise` argument of [`PosteriorSequence::samples`].
    pub offsets: Tensor,
    /// Λ̃_{t−1}(μ_t − μ_{t−1}), the KL's gradient with respect to μ_t, (T, B, n).
    pub kl_grad: Tensor,
    /// KL(q_t ‖ q_{t−1}), (T, B).
    pub kl: Tensor,
}

impl LaplaceConstants {
    /// From row-major values: `offsets` (T·n_Z·B·n), `kl_grad` (T·B·n), `kl` (T·B).
    pub fn new(
        offsets: Vec<f32>,
        kl_grad: Vec<f32>,
        kl: &[f64],
        (steps, nz, batch, n): (usize, usize, usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let kl: Vec<f32> = kl.iter().map(|v| *v as f32).collect();
        Ok(Self {
            offsets: Tensor::from_vec(offsets, (steps, nz, batch, n), device)?,
            kl_grad: Tensor::from_vec(kl_grad, (steps, batch, n), device)?,
            kl: Tensor::from_vec(kl, (steps, batch), device)?,
        })
    }
}

/// Floats per (rows, n, n) tensor that the full-covariance VRNN's chunks aim at (16 MB).
pub const CHUNK_ELEMENTS: usize = 1 << 22;

/// q_0..q_T of a replayed sequence.
pub enum PosteriorSequence {
    /// Point estimate and VRNN: Gaussians over step-major rows, in chunks (first step, q) that
    /// overlap by one step; chunk k serves steps (first_k, first_{k+1}] (and chunk 0 step 0).
    Graph {
        chunks: Vec<(usize, Gaussian)>,
        batch: usize,
    },
    /// Laplace VRNN: the means μ_0..μ_T (T+1, B, n) with gradient; the precisions are
    /// statistics of the filter (`posterior::filter`) and enter as constants.
    Laplace { means: Tensor, batch: usize },
}

impl PosteriorSequence {
    /// Samples z of q_first..q_{first+len−1}, (len, n_Z, B, n). `noise` is (len, n_Z, B, n):
    /// the standard-normal ε for the point estimate and the VRNN, the filter's offsets
    /// L_t^{−T} ε for the Laplace VRNN (so that z = μ_t + L_t^{−T} ε).
    pub fn samples(&self, first: usize, len: usize, noise: &Tensor) -> Result<Tensor> {
        match self {
            PosteriorSequence::Laplace { means, .. } => Ok(means
                .narrow(0, first, len)?
                .unsqueeze(1)?
                .broadcast_add(noise)?),
            PosteriorSequence::Graph { chunks, batch } => {
                let (_, nz, b, n) = noise.dims4()?;
                let mut parts = vec![];
                for (k, (start, q)) in chunks.iter().enumerate() {
                    let own_from = if k == 0 { 0 } else { start + 1 };
                    let own_to = q.batch()? / batch + start; // one past the chunk's last step
                    let (from, to) = (own_from.max(first), own_to.min(first + len));
                    if from >= to {
                        continue;
                    }
                    let m = to - from;
                    let eps = noise
                        .narrow(0, from - first, m)?
                        .permute((1, 0, 2, 3))?
                        .reshape((nz, m * b, n))?;
                    let z = rows(q, (from - start) * batch, m * batch)?.sample(&eps)?;
                    parts.push(z.reshape((nz, m, b, n))?.permute((1, 0, 2, 3))?);
                }
                Ok(Tensor::cat(&parts, 0)?.contiguous()?)
            }
        }
    }

    /// KL(q_t ‖ stop_grad q_{t−1}) for t = 1..T, (T, B); None for the point estimate.
    /// The Laplace VRNN needs the filter's statistics; the result has their KL value and
    /// their gradient Λ̃_{t−1}(μ_t − μ_{t−1}) with respect to μ_t.
    pub fn kl(&self, laplace: Option<&LaplaceConstants>) -> Result<Option<Tensor>> {
        match self {
            PosteriorSequence::Laplace { means, .. } => {
                let Some(LaplaceConstants {
                    kl_grad: grad,
                    kl: value,
                    ..
                }) = laplace
                else {
                    bail!("the Laplace KL needs the filter's statistics");
                };
                let steps = means.dim(0)? - 1;
                let mu = means.narrow(0, 1, steps)?;
                // (μ − stop_grad μ) is 0 in value and the identity in gradient.
                let zero = mu.sub(&mu.detach())?;
                Ok(Some(zero.mul(grad)?.sum(D::Minus1)?.add(value)?))
            }
            PosteriorSequence::Graph { chunks, batch } => {
                if matches!(chunks[0].1.cov, Covariance::Point) {
                    return Ok(None);
                }
                let mut parts = vec![];
                for (_, q) in chunks {
                    let steps = q.batch()? / batch - 1;
                    let kl = match full_vrnn_chunk(q, *batch, ChunkNoise::none())? {
                        Some((_, kl)) => Some(kl),
                        None => {
                            rows(q, *batch, steps * batch)?.kl_to(&rows(q, 0, steps * batch)?)?
                        }
                    };
                    if let Some(kl) = kl {
                        parts.push(kl.reshape((steps, *batch))?);
                    }
                }
                Ok(Some(Tensor::cat(&parts, 0)?))
            }
        }
    }

    /// [`PosteriorSequence::samples`] and [`PosteriorSequence::kl`] together: the full VRNN
    /// computes both from one use of each chunk's U (`posterior::spectral_kl`), the other
    /// families as the two methods do.
    pub fn samples_and_kl(
        &self,
        first: usize,
        len: usize,
        noise: &Tensor,
        laplace: Option<&LaplaceConstants>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let PosteriorSequence::Graph { chunks, batch } = self else {
            return Ok((self.samples(first, len, noise)?, self.kl(laplace)?));
        };
        if !chunks.iter().all(|(_, q)| q.full_spectral_f32().is_some()) {
            return Ok((self.samples(first, len, noise)?, self.kl(laplace)?));
        }
        let (_, nz, b, n) = noise.dims4()?;
        let (mut samples, mut kls) = (vec![], vec![]);
        for (k, (start, q)) in chunks.iter().enumerate() {
            let own_from = if k == 0 { 0 } else { start + 1 };
            let own_to = q.batch()? / batch + start;
            let (from, to) = (own_from.max(first), own_to.min(first + len));
            let m = to.saturating_sub(from);
            // The noise of the sampled steps as (step, task, sample, coordinate).
            let eps = if m > 0 {
                noise
                    .narrow(0, from - first, m)?
                    .permute((0, 2, 1, 3))?
                    .flatten_all()?
                    .to_vec1()?
            } else {
                vec![]
            };
            let sampled = (from.max(*start) - start) * b..(to.max(*start) - start) * b;
            let chunk_noise = ChunkNoise {
                rows: if m > 0 { sampled.clone() } else { 0..0 },
                samples: nz,
                eps,
            };
            let (offsets, kl) =
                full_vrnn_chunk(q, *batch, chunk_noise)?.expect("a full-covariance f32 chunk");
            let steps = q.batch()? / batch - 1;
            kls.push(kl.reshape((steps, *batch))?);
            if m > 0 {
                let mean = q.mean.narrow(0, sampled.start, m * b)?;
                let z = offsets
                    .narrow(0, sampled.start, m * b)?
                    .reshape((m * b, nz, n))?
                    .broadcast_add(&mean.unsqueeze(1)?)?;
                samples.push(z.reshape((m, b, nz, n))?.permute((0, 2, 1, 3))?);
            }
        }
        Ok((
            Tensor::cat(&samples, 0)?.contiguous()?,
            Some(Tensor::cat(&kls, 0)?),
        ))
    }
}

/// For a chunk q of full-covariance VRNN posteriors in f32 (step-major, `batch` rows per step),
/// through the fused `spectral_chunk` op: the sample offsets of the rows `noise` samples,
/// (R, n_Z·n) (zero elsewhere), and KL(q_r ‖ stop_grad q_{r−batch}) for the rows after the
/// first step, (R − batch). The same values as `Gaussian::sample` and `Gaussian::kl_to`
/// without U's two consumers or the KL's (rows, n, n) intermediates in the graph; None for
/// any other chunk, which those handle.
fn full_vrnn_chunk(
    q: &Gaussian,
    batch: usize,
    noise: ChunkNoise,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some((u, log_s)) = q.full_spectral_f32() else {
        return Ok(None);
    };
    let (rows, n) = q.mean.dims2()?;
    let k = rows - batch;
    let d = Tensor::cat(
        &[
            Tensor::zeros((batch, n), DType::F32, q.mean.device())?,
            q.mean
                .narrow(0, batch, k)?
                .sub(&q.mean.narrow(0, 0, k)?.detach())?,
        ],
        0,
    )?;
    let width = noise.samples * n;
    let out = spectral_chunk(u, log_s, &d, noise, batch)?;
    let terms = out.narrow(1, width, 1)?.squeeze(1)?.narrow(0, batch, k)?;
    let (s_cur, s_prev) = (log_s.narrow(0, batch, k)?, log_s.narrow(0, 0, k)?.detach());
    let logdet = s_prev.sum(D::Minus1)?.sub(&s_cur.sum(D::Minus1)?)?;
    let kl = (terms + logdet)?.affine(0.5, -0.5 * n as f64)?;
    Ok(Some((out.narrow(1, 0, width)?, kl)))
}

/// Rows [start, start + len) of a batch of Gaussians.
fn rows(q: &Gaussian, start: usize, len: usize) -> Result<Gaussian> {
    let cov = match &q.cov {
        Covariance::Point => Covariance::Point,
        Covariance::Spectral { u, log_s } => Covariance::Spectral {
            u: u.as_ref().map(|u| u.narrow(0, start, len)).transpose()?,
            log_s: log_s.narrow(0, start, len)?,
        },
        Covariance::Precision(_) => bail!("Laplace posteriors are replayed by the filter"),
    };
    Ok(Gaussian {
        mean: q.mean.narrow(0, start, len)?,
        cov,
    })
}
