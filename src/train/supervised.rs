//! Supervised meta-learning on Fourier regression (paper Sec. 5.1, App. A.1.1): maximise the
//! ELBO of Eq. (2),
//!   Σ_t E_{q_{t−1}} ln p(y_t | x_t, z) − β KL(q_t ‖ stop_grad q_{t−1}),
//! where y_t is predicted from z ~ q_{t−1} and the embedding of x_t *before* (x_t, y_t) enters
//! the core. With n_Z > 1 samples the predictive Gaussian's mean and variance are averaged over
//! the samples (App. B.3). The loss is the negative ELBO averaged over tasks and steps.

use super::Learner;
use crate::agent::{Core, CoreState, ModelConfig, randn};
use crate::envs::regression::FourierTask;
use crate::nn::Params;
use crate::nn::mlp::Head;
use anyhow::Result;
use candle_core::{D, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// ½ ln(2π).
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Core + predictive head p(y | x, z) = N(mean(x, z), σ²) with a learned, input-independent σ.
/// Input kinds of the core: 0 = x, 1 = y. Head input: [embedding of x, z].
pub struct RegressionModel {
    pub params: Params,
    pub core: Core,
    pub head: Head,
    /// ln σ of the predictive Gaussian, parameter `pred.log_sigma` (1,).
    pub log_sigma: Tensor,
    pub cfg: ModelConfig,
}

impl RegressionModel {
    /// Fresh weights drawn from `seed`.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Params::new();
        let core = Core::new(&mut params, cfg, &[1, 1], &mut rng)?;
        let head = Head::new(
            &mut params,
            "pred",
            cfg.embed_width + cfg.features,
            &cfg.head_hidden,
            1,
            &mut rng,
        )?;
        let log_sigma = params.constant("pred.log_sigma", &[1], 0.0)?;
        Ok(Self {
            params,
            core,
            head,
            log_sigma,
            cfg: cfg.clone(),
        })
    }

    /// Predictive means for embedded inputs `emb_x` (…, B, E) and samples `z` (…, B, n) whose
    /// leading shapes broadcast; returns (…, B).
    pub fn predict_mean(&self, emb_x: &Tensor, z: &Tensor) -> Result<Tensor> {
        let shape = {
            let mut s = z.dims().to_vec();
            let e = emb_x.dims();
            let lead = s.len() - 1;
            for (i, d) in e[..e.len() - 1].iter().enumerate() {
                let k = lead - (e.len() - 1) + i;
                s[k] = s[k].max(*d);
            }
            s
        };
        let mut ex_shape = shape.clone();
        *ex_shape.last_mut().unwrap() = emb_x.dims()[emb_x.rank() - 1];
        let ex = emb_x.broadcast_as(ex_shape)?;
        let zz = z.broadcast_as(shape)?;
        let input = Tensor::cat(&[&ex, &zz], D::Minus1)?;
        Ok(self.head.forward(&input)?.squeeze(D::Minus1)?)
    }

    pub fn embed_scalar(&self, kind: usize, v: &[f32]) -> Result<Tensor> {
        self.core.embed(
            kind,
            &Tensor::from_vec(v.to_vec(), (v.len(), 1), &Device::Cpu)?,
        )
    }

    /// Feeds one observed pair (x_t, y_t) per task into the core.
    pub fn observe(
        &self,
        state: &CoreState,
        emb_x: &Tensor,
        y: &[f32],
    ) -> Result<crate::agent::CoreStep> {
        let emb_y = self.embed_scalar(1, y)?;
        self.core.step(state, &[emb_x.clone(), emb_y])
    }
}

/// Loss parts of one batch.
pub struct ElboParts {
    pub loss: Tensor,
    pub nll: f64,
    pub kl: f64,
}

/// The negative ELBO (Eq. 2) of a batch of tasks: `xs[t][b]`, `ys[t][b]`.
pub fn negative_elbo(
    model: &RegressionModel,
    xs: &[Vec<f32>],
    ys: &[Vec<f32>],
    beta: f64,
    rng: &mut ChaCha8Rng,
) -> Result<ElboParts> {
    let b = xs[0].len();
    let n = model.cfg.features;
    let nz = model.cfg.n_z;
    let mut state = model.core.initial(b)?;
    let sigma2 = (&model.log_sigma * 2.0)?.exp()?; // (1,)
    let mut nll_terms = Vec::with_capacity(xs.len());
    let mut kl_terms = Vec::with_capacity(xs.len());
    for (x, y) in xs.iter().zip(ys) {
        let emb_x = model.embed_scalar(0, x)?;
        // Predict y_t from q_{t−1}: averaged mean over the n_Z samples (variance is shared).
        let z = state.q.sample(&randn(rng, &[nz, b, n])?)?;
        let mean = model.predict_mean(&emb_x.unsqueeze(0)?, &z)?.mean(0)?; // (B,)
        let target = Tensor::from_vec(y.clone(), b, &Device::Cpu)?;
        let sq = mean.sub(&target)?.sqr()?;
        let nll = (sq
            .broadcast_div(&(&sigma2 * 2.0)?)?
            .broadcast_add(&model.log_sigma)?
            + HALF_LN_2PI)?;
        nll_terms.push(nll.mean_all()?);
        let step = model.observe(&state, &emb_x, y)?;
        if let Some(kl) = &step.kl {
            kl_terms.push(kl.mean_all()?);
        }
        state = step.state;
    }
    let t = xs.len() as f64;
    let nll = (Tensor::stack(&nll_terms, 0)?.sum_all()? / t)?;
    let mut loss = nll.clone();
    let mut kl_value = 0.0;
    if !kl_terms.is_empty() {
        let kl = (Tensor::stack(&kl_terms, 0)?.sum_all()? / t)?;
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

/// Draws `batch` tasks with `points` observations each: (xs[t][b], ys[t][b]).
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
