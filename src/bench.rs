//! `lvrnn bench` / `cargo bench`: seconds per training step (loss + backward + AdamW) for each
//! posterior family at the paper's sizes, and the Jacobian/precision path on its own.

use crate::agent::ModelConfig;
use crate::config::ExperimentConfig;
use crate::posterior::PosteriorConfig;
use crate::train::optim::AdamW;
use crate::train::supervised::{RegressionModel, negative_elbo, sample_batch};
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// The families timed by the benchmark.
pub fn bench_families() -> Vec<(&'static str, &'static str)> {
    vec![
        ("rnn", "rnn"),
        ("vrnn full", "vrnn"),
        ("vrnn diag", "vrnn:diagonal=true"),
        ("laplace Σ k_H=1 full", "laplace:window=1,accumulate=sigma"),
        (
            "laplace Σ k_H=1 diag",
            "laplace:window=1,accumulate=sigma,diagonal=true",
        ),
        (
            "laplace (μ,Σ) k_H=1",
            "laplace:window=1,accumulate=mu_sigma",
        ),
        ("laplace window k_H=10", "laplace:window=10,accumulate=none"),
    ]
}

pub fn run(batch: usize, seq_len: usize, reps: usize) -> Result<()> {
    let threads = candle_core::utils::get_num_threads();
    println!(
        "supervised training step: batch {batch}, T = {seq_len}, LSTM 128, n = 64, embed 256; {threads} thread(s); median of {reps}"
    );
    println!(
        "{:<26} {:>14} {:>22}",
        "posterior", "s / step", "s / Jacobian path"
    );
    for (label, spec) in bench_families() {
        let posterior: PosteriorConfig = spec.parse()?;
        let cfg = ModelConfig {
            posterior,
            ..ModelConfig::default()
        };
        let model = RegressionModel::new(&cfg, 0)?;
        let mut exp =
            ExperimentConfig::from_toml_str("name = \"bench\"\ntask = \"regression\"", "bench")?;
        exp.model = cfg.clone();
        let mut opt = AdamW::new(crate::train::adamw_config(&exp), &model.params)?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut times = vec![];
        for _ in 0..reps {
            let (xs, ys) = sample_batch(&mut rng, batch, seq_len);
            let t0 = Instant::now();
            let parts = negative_elbo(&model, &xs, &ys, 1e-2, &mut rng)?;
            let grads = parts.loss.backward()?;
            opt.step(&model.params, &grads)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let jac = if label.starts_with("laplace") {
            format!("{:.3}", jacobian_path(&model, batch, seq_len)?)
        } else {
            "-".into()
        };
        println!("{:<26} {:>14.3} {:>22}", label, median(&mut times), jac);
    }
    Ok(())
}

/// Time of the Laplace precision path alone over a sequence: Jacobians, Λ update, Cholesky.
fn jacobian_path(model: &RegressionModel, batch: usize, seq_len: usize) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (xs, ys) = sample_batch(&mut rng, batch, seq_len);
    // Record the carries and window inputs of a forward pass (no gradients).
    let mut state = model.core.initial(batch)?.detach();
    let mut total = 0.0;
    for (x, y) in xs.iter().zip(&ys) {
        let emb_x = model.embed_scalar(0, x)?;
        let emb_y = model.embed_scalar(1, y)?;
        let input = candle_core::Tensor::cat(&[&emb_x, &emb_y], 1)?;
        let carry = model.core.lstm.step(&input, &state.carry)?;
        let phi = model.core.proj.forward(&carry.h)?;
        let mut window = state.window.clone();
        window.push_back(input.detach());
        while window.len() > model.core.posterior.history_window() {
            window.pop_front();
        }
        let slice: Vec<_> = window.iter().cloned().collect();
        let step_in = crate::posterior::StepInput {
            phi: &phi,
            carry: &carry,
            lstm: &model.core.lstm,
            proj: &model.core.proj,
            window: &slice,
        };
        let t0 = Instant::now();
        let q = model.core.posterior.step(&step_in, &state.q)?;
        total += t0.elapsed().as_secs_f64();
        state = crate::agent::CoreState { carry, window, q }.detach();
    }
    Ok(total)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
