//! Supervised meta-learning on Fourier regression (paper Sec. 5.1, App. A.1.1): maximise the
//! ELBO of Eq. (2),
//!   Σ_t E_{q_{t−1}} ln p(y_t | x_t, z) − β KL(q_t ‖ stop_grad q_{t−1}),
//! where y_t is predicted from z ~ q_{t−1} and the embedding of x_t *before* (x_t, y_t) enters
//! the core. With n_Z > 1 samples the predictive Gaussian's mean and variance are averaged over
//! the samples (App. B.3). The loss is the negative ELBO averaged over tasks and steps.

use super::Learner;
use crate::agent::randn;
use crate::agent::regression::RegressionModel;
use crate::agent::replay::{LaplaceConstants, PosteriorSequence, SequenceInputs};
use crate::envs::regression::FourierTask;
use crate::nn::Params;
use crate::posterior::filter::filter_sequence;
use anyhow::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// ½ ln(2π).
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Loss parts of one batch.
pub struct ElboParts {
    pub loss: Tensor,
    pub nll: f64,
    pub kl: f64,
}

/// The negative ELBO (Eq. 2) of a batch of tasks: `xs[t][b]`, `ys[t][b]`, in one
/// time-batched replay (`agent::replay`): embeddings, the fused LSTM sequence, the projection,
/// the posteriors and the predictive head run once over all steps. The noise of every step is
/// drawn first, in the per-step order. For the Laplace VRNN the filter (`posterior::filter`)
/// runs over the replay's values (no gradient) and gives the sample offsets and the KL parts.
/// `train::reference::negative_elbo` is the per-step version the tests compare against.
pub fn negative_elbo(
    model: &RegressionModel,
    xs: &[Vec<f32>],
    ys: &[Vec<f32>],
    beta: f64,
    rng: &mut ChaCha8Rng,
) -> Result<ElboParts> {
    let (steps, b) = (xs.len(), xs[0].len());
    let (n, nz) = (model.cfg.features, model.cfg.n_z);
    let core = &model.core;
    let device = &core.device;
    let noise = (0..steps)
        .map(|_| randn(rng, &[nz, b, n], device))
        .collect::<Result<Vec<_>>>()?;
    let inputs = SequenceInputs {
        steps,
        batch: b,
        kinds: vec![xs.concat(), ys.concat()],
    };
    let replay = core.replay(&inputs)?;
    let post = core.posterior_sequence(&replay.phi)?;
    let (noise, laplace) = match (&post, core.posterior.laplace()) {
        (PosteriorSequence::Laplace { .. }, Some(cfg)) => {
            let w = core.jacobian_weights()?;
            let eps = noise
                .iter()
                .map(|e| e.flatten_all()?.to_vec1::<f32>())
                .collect::<candle_core::Result<Vec<_>>>()?;
            let stats = filter_sequence(
                cfg,
                &w,
                &replay.states.flatten_all()?.to_vec1()?,
                &replay.xw()?.flatten_all()?.to_vec1()?,
                &replay.phi.flatten_all()?.to_vec1()?,
                &eps,
                b,
                true,
            )?;
            let dims = (steps, nz, b, n);
            let c = LaplaceConstants::new(stats.offsets, stats.kl_grad, &stats.kl, dims, device)?;
            (c.offsets.clone(), Some(c))
        }
        _ => (Tensor::stack(&noise, 0)?, None),
    };
    // Predict y_t from q_{t−1}: the mean over the n_Z samples (the variance is shared).
    let (z, kl) = post.samples_and_kl(0, steps, &noise, laplace.as_ref())?; // z: (T, n_Z, B, n)
    let emb_x = replay
        .inputs
        .embedding(0)?
        .reshape((steps, 1, b, model.cfg.embed_width))?;
    let mean = model.predict_mean(&emb_x, &z)?.mean(1)?; // (T, B)
    let target = Tensor::from_vec(ys.concat(), (steps, b), device)?;
    let sigma2 = (&model.log_sigma * 2.0)?.exp()?; // (1,)
    let nll = (mean
        .sub(&target)?
        .sqr()?
        .broadcast_div(&(&sigma2 * 2.0)?)?
        .broadcast_add(&model.log_sigma)?
        + HALF_LN_2PI)?
        .mean_all()?;
    let kl = kl.map(|kl| kl.mean_all()).transpose()?;
    elbo_parts(nll, kl, beta)
}

/// The loss nll + β·KL from the mean negative log-likelihood and the mean KL (None for the
/// point estimate). Shared by the fast and the reference ELBO.
pub fn elbo_parts(nll: Tensor, kl: Option<Tensor>, beta: f64) -> Result<ElboParts> {
    let mut loss = nll.clone();
    let mut kl_value = 0.0;
    if let Some(kl) = kl {
        kl_value = kl.to_scalar::<f32>()? as f64;
        if beta > 0.0 {
            loss = (loss + (kl * beta)?)?;
        }
    }
    Ok(ElboParts {
        nll: nll.to_scalar::<f32>()? as f64,
        kl: kl_value,
        loss,
    })
}

/// Draws `batch` tasks with `points` observations each: (`xs[t][b]`, `ys[t][b]`).
pub fn sample_batch(
    rng: &mut ChaCha8Rng,
    batch: usize,
    points: usize,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let tasks: Vec<FourierTask> = (0..batch).map(|_| FourierTask::sample(rng)).collect();
    let mut xs = vec![vec![0f32; batch]; points];
    let mut ys = vec![vec![0f32; batch]; points];
    for (b, task) in tasks.iter().enumerate() {
        for t in 0..points {
            let x = crate::envs::regression::sample_x(rng);
            xs[t][b] = x;
            ys[t][b] = task.eval(x);
        }
    }
    (xs, ys)
}

/// The supervised learner: fresh Fourier tasks each update.
pub struct Supervised {
    pub model: RegressionModel,
    pub batch: usize,
    pub points: usize,
    pub beta: f64,
}

impl Learner for Supervised {
    fn params(&self) -> &Params {
        &self.model.params
    }

    fn loss(
        &mut self,
        _update: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let (xs, ys) = sample_batch(rng, self.batch, self.points);
        let parts = negative_elbo(&self.model, &xs, &ys, self.beta, rng)?;
        let mut m = BTreeMap::new();
        m.insert("nll".into(), parts.nll);
        if self.model.core.posterior.is_bayesian() {
            m.insert("kl".into(), parts.kl);
        }
        Ok((parts.loss, m))
    }

    fn headline(&self) -> &'static str {
        "nll"
    }
}
