//! The regression agent (paper Sec. 5.1, App. B.1): the recurrent core plus a predictive head
//! p(y | x, z) = N(mean(x, z), σ²). Trained by the ELBO of `crate::train::supervised`,
//! evaluated by `crate::eval`.

use crate::agent::{Core, CoreState, Model};
use crate::config::{ExperimentConfig, ModelConfig, Task};
use crate::nn::Params;
use crate::nn::head::Head;
use anyhow::Result;
use candle_core::{D, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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

    /// The head linearised at z = μ for every pair of an embedded input and a task: for
    /// `emb_x` (G × E, row-major) and the posterior means `mu` (B × n), the means
    /// mean(x_g, μ_b) (B × G) and their Jacobians ∂mean(x_g, z)/∂z at z = μ_b (B × G × n),
    /// analytic through the head ([`Head::input_gradient`]).
    pub fn linearised_mean(&self, emb_x: &[f32], mu: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (e, n) = (self.cfg.embed_width, self.cfg.features);
        let (g, b) = (emb_x.len() / e.max(1), mu.len() / n.max(1));
        let d = e + n;
        let mut rows = Vec::with_capacity(b * g * d);
        for m in mu.chunks(n) {
            for x in emb_x.chunks(e) {
                rows.extend_from_slice(x);
                rows.extend_from_slice(m);
            }
        }
        let packed = self.head.packed_values()?;
        let (means, grads) = self.head.input_gradient(&packed, &rows, b * g)?;
        let jac = grads
            .chunks(d)
            .flat_map(|r| r[e..].iter().copied())
            .collect();
        Ok((means, jac))
    }

    pub fn embed_scalar(&self, kind: usize, v: &[f32]) -> Result<Tensor> {
        self.core.embed(
            kind,
            &Tensor::from_vec(v.to_vec(), (v.len(), 1), &self.core.device)?,
        )
    }

    /// The core's embedded inputs of one observed pair (x_t, y_t) per task, x_t already
    /// embedded: [emb(x_t), emb(y_t)].
    pub fn inputs(&self, emb_x: &Tensor, y: &[f32]) -> Result<Vec<Tensor>> {
        Ok(vec![emb_x.clone(), self.embed_scalar(1, y)?])
    }

    /// Feeds one observed pair (x_t, y_t) per task into the core.
    pub fn observe(
        &self,
        state: &CoreState,
        emb_x: &Tensor,
        y: &[f32],
    ) -> Result<crate::agent::CoreStep> {
        self.core.step(state, &self.inputs(emb_x, y)?)
    }
}

impl Model for RegressionModel {
    const TASKS: &'static [Task] = &[Task::Regression];
    const KIND: &'static str = "a regression";

    fn params(&self) -> &Params {
        &self.params
    }
    fn core(&self) -> &Core {
        &self.core
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn for_experiment(cfg: &ExperimentConfig) -> Result<Self> {
        Self::new(&cfg.model, cfg.seed)
    }
    fn rebuild(&self, cfg: &ModelConfig) -> Result<Self> {
        Self::new(cfg, 0)
    }
    /// On tasks of `train.seq_len` points ([`mean_square_of_means`]).
    fn mean_square_of_means(&self, cfg: &ExperimentConfig, tasks: usize) -> Result<f64> {
        mean_square_of_means(self, tasks, cfg.train.seq_len, cfg.seed)
    }
}

/// The mean of μ_{t,i}² over the posterior means `model` gives on `tasks` training tasks of
/// `points` points each, drawn from `seed`: the statistic
/// [`crate::posterior::config::auto_scale`] turns into a prior scale.
pub fn mean_square_of_means(
    model: &RegressionModel,
    tasks: usize,
    points: usize,
    seed: u64,
) -> Result<f64> {
    use crate::envs::regression::{FourierTask, sample_x};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fns: Vec<FourierTask> = (0..tasks).map(|_| FourierTask::sample(&mut rng)).collect();
    let feed = |_t: usize, _: &CoreState| {
        let xs: Vec<f32> = (0..tasks).map(|_| sample_x(&mut rng)).collect();
        let ys: Vec<f32> = fns.iter().zip(&xs).map(|(f, &x)| f.eval(x)).collect();
        model.inputs(&model.embed_scalar(0, &xs)?, &ys)
    };
    crate::agent::model::mean_square_along(&model.core, tasks, points, feed)
}
