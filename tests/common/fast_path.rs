//! Helpers of the fast-path tests (`tests/fast_path.rs`, `tests/fast_path_threads.rs`): the
//! tolerance, the comparison, the tiny RL config and the bias jitter they share.

use super::tensors::values;
use candle_core::Tensor;
use lvrnn::config::ExperimentConfig;
use lvrnn::nn::Params;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Relative tolerance of every comparison (values and gradients).
pub const REL: f64 = 1e-4;

/// max |a − b| ≤ REL · max(|b|∞, floor).
pub fn assert_close(what: &str, a: &[f64], b: &[f64], floor: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= REL * scale,
        "{what}: max |fast − reference| = {err:.3e} against scale {scale:.3e}"
    );
}

/// The tiny RL config of the fast-path tests (`batch` tasks per update).
pub fn rl_config(task: &str, posterior: &str, batch: usize) -> ExperimentConfig {
    let text = format!(
        r#"
name = "fast"
task = "{task}"
seed = 3
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
n_z = 2
[train]
batch = {batch}
"#
    );
    let mut cfg = ExperimentConfig::from_toml_str(&text, "test").unwrap();
    cfg.model.posterior = posterior.parse().unwrap();
    cfg
}

/// Moves every bias off zero so that no unit sits on the leaky-ReLU kink (where two correct
/// implementations may pick different subgradients).
pub fn jitter_biases(params: &Params) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (name, var) in params.vars() {
        if name.ends_with("bias") {
            let noise =
                lvrnn::agent::randn(&mut rng, var.as_tensor().dims(), &candle_core::Device::Cpu)
                    .unwrap();
            var.set(&(var.as_tensor() + (noise * 0.3).unwrap()).unwrap())
                .unwrap();
        }
    }
}

/// Every parameter gradient of `fast` equals that of `reference` within [`REL`] (floor 1e-6);
/// a gradient only one side has must be identically zero.
pub fn assert_same_gradients(what: &str, params: &Params, fast: &Tensor, reference: &Tensor) {
    let gf = fast.backward().unwrap();
    let gr = reference.backward().unwrap();
    for (name, var) in params.vars() {
        match (gf.get(var.as_tensor()), gr.get(var.as_tensor())) {
            (Some(a), Some(b)) => assert_close(
                &format!("{what}: gradient of {name}"),
                &values(a),
                &values(b),
                1e-6,
            ),
            (None, None) => {}
            (a, b) => {
                // One side may lack a gradient that is identically zero on the other.
                let g = a.or(b).unwrap();
                let max = values(g).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(
                    max == 0.0,
                    "{what}: only one path has a gradient for {name}"
                );
            }
        }
    }
}
