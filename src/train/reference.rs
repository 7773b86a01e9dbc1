//! The straightforward per-step implementations of the training losses and the rollout, kept
//! as the reference the fast paths are tested against (`tests/fast_path.rs`): every step runs
//! the core through `Core::step` (embedding, LSTM cell, projection, `PosteriorFamily::step`
//! with tensors), exactly as the model is defined in DESIGN.md, with nothing precomputed.

use crate::agent::regression::RegressionModel;
use crate::agent::rl::INPUT_OBS;
use crate::agent::rl::{RlModel, Rollout, sample_categorical};
use crate::agent::{CoreState, randn};
use crate::config::PpoConfig;
use crate::envs::MetaEnv;
use crate::train::ppo::{LossParts, ObjectiveInputs, ppo_objective};
use crate::train::supervised::{ElboParts, HALF_LN_2PI, elbo_parts};
use anyhow::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

/// Runs the policy on the tasks `env` holds (already reset; `first_obs` is s_0) for the env
/// horizon, without gradients. Per step, in this order: the noise ε, one uniform per task for
/// the action, then the env's own draws, all from `rng`. With `record_posterior`, also the
/// entropy of q_t and KL(q_t ‖ q_{t−1}) per step and task.
///
/// Bootstrap: the task continues past T in the environment's dynamics (only the meta-episode
/// is cut), so the value of the state after the last transition, V(x_T), is computed with one
/// more core step and multiplied by that transition's discount in [`crate::train::ppo::gae`] (the bandit's is
/// always 0, so the step is skipped when every last discount is 0).
pub fn rollout(
    model: &RlModel,
    env: &mut dyn MetaEnv,
    first_obs: Vec<f32>,
    rng: &mut ChaCha8Rng,
    record_posterior: bool,
) -> Result<Rollout> {
    let (b, horizon) = (env.batch(), env.horizon());
    let mut ro = Rollout::default();
    let mut state = model.core.initial(b)?.detach();
    let mut obs = first_obs;
    let mut noise = model.noise_stream();
    for t in 0..horizon {
        let prev = ro.previous(t);
        let (step, emb_s) = model.observe(&state, &model.inputs(&obs, prev)?)?;
        let eps = noise.next(model, rng, b)?;
        let input = model.head_input(&emb_s, &step.state.q.sample(&eps)?)?;
        let log_probs: Vec<Vec<f32>> = model.log_probs(&input)?.to_vec2()?;
        let values: Vec<f32> = model.values(&input)?.to_vec1()?;
        let actions: Vec<usize> = log_probs
            .iter()
            .map(|lp| sample_categorical(lp, rng))
            .collect();
        if record_posterior {
            ro.posterior_entropy
                .push(step.state.q.entropy()?.unwrap_or_else(|| vec![f64::NAN; b]));
            ro.posterior_kl.push(match &step.kl {
                Some(kl) => kl.to_vec1::<f32>()?.iter().map(|v| *v as f64).collect(),
                None => vec![f64::NAN; b],
            });
        }
        let out = env.step(&actions, rng);
        obs = ro.push_step(obs, actions, &log_probs, out, eps, values);
        state = step.state.detach();
    }
    ro.bootstrap = if ro.continues() {
        let prev = ro.previous(horizon);
        let (step, emb_s) = model.observe(&state, &model.inputs(&obs, prev)?)?;
        let z = step.state.q.sample(&noise.next(model, rng, b)?)?;
        model.values(&model.head_input(&emb_s, &z)?)?.to_vec1()?
    } else {
        vec![0.0; b]
    };
    Ok(ro)
}

/// The loss of Eq. (3) via PPO (Table 1) for a rollout with advantages and value targets
/// (`[t][b]`). The trajectory is re-run from the zero carry with gradients (through time), with
/// the rollout's noise; the heads then run once on the stacked steps.
pub fn ppo_loss(
    model: &RlModel,
    ro: &Rollout,
    advantages: &[Vec<f32>],
    targets: &[Vec<f32>],
    ppo: &PpoConfig,
    beta: f64,
) -> Result<LossParts> {
    let (horizon, b) = (ro.horizon(), ro.batch());
    // Core, per step (slicing a grad-carrying (T, B, ·) tensor per step would make backward
    // quadratic in T): samples z_t under the stored noise, state embeddings, KL terms.
    let (mut zs, mut embs, mut kls) = (
        Vec::with_capacity(horizon),
        Vec::with_capacity(horizon),
        vec![],
    );
    let feed =
        |t: usize, _: &CoreState| model.embed_inputs(&model.inputs(&ro.obs[t], ro.previous(t))?);
    model
        .core
        .unroll(b, horizon, false, feed, |t, step, inputs| {
            zs.push(step.state.q.sample(&ro.noise[t])?);
            embs.push(inputs[INPUT_OBS].clone());
            if let Some(kl) = &step.kl {
                kls.push(kl.mean_all()?);
            }
            Ok(())
        })?;
    let z = Tensor::stack(&zs, 0)?; // (T, n_Z, B, n)
    let kl = match kls.is_empty() {
        true => None,
        false => Some(Tensor::stack(&kls, 0)?.mean_all()?),
    };
    ppo_objective(
        model,
        ro,
        advantages,
        targets,
        ppo,
        beta,
        ObjectiveInputs {
            z: &z,
            emb_s: &Tensor::stack(&embs, 0)?,
            kl,
            traces: None,
        },
    )
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
    let sigma2 = (&model.log_sigma * 2.0)?.exp()?; // (1,)
    let mut nll_terms = Vec::with_capacity(xs.len());
    let mut kl_terms = Vec::with_capacity(xs.len());
    let feed = |t: usize, state: &CoreState| {
        let (x, y) = (&xs[t], &ys[t]);
        let emb_x = model.embed_scalar(0, x)?;
        // Predict y_t from q_{t−1}: averaged mean over the n_Z samples (variance is shared).
        let z = state
            .q
            .sample(&randn(rng, &[nz, b, n], &model.core.device)?)?;
        let mean = model.predict_mean(&emb_x.unsqueeze(0)?, &z)?.mean(0)?; // (B,)
        let target = Tensor::from_vec(y.clone(), b, mean.device())?;
        let sq = mean.sub(&target)?.sqr()?;
        let nll = (sq
            .broadcast_div(&(&sigma2 * 2.0)?)?
            .broadcast_add(&model.log_sigma)?
            + HALF_LN_2PI)?;
        nll_terms.push(nll.mean_all()?);
        model.inputs(&emb_x, y)
    };
    model.core.unroll(b, xs.len(), false, feed, |_, step, _| {
        if let Some(kl) = &step.kl {
            kl_terms.push(kl.mean_all()?);
        }
        Ok(())
    })?;
    let t = xs.len() as f64;
    let nll = (Tensor::stack(&nll_terms, 0)?.sum_all()? / t)?;
    let kl = match kl_terms.is_empty() {
        true => None,
        false => Some((Tensor::stack(&kl_terms, 0)?.sum_all()? / t)?),
    };
    elbo_parts(nll, kl, beta)
}
