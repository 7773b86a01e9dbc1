//! # lvrnn — Laplace variational recurrent networks
//!
//! Bayesian meta-reinforcement learning with a Gaussian task posterior over an LSTM's output,
//! obtained by the Laplace approximation (de Vries et al., "Bayesian Meta-Reinforcement Learning
//! with Laplace Variational Recurrent Networks"). See `README.md` and `DESIGN.md`.

pub mod agent;
pub mod bench;
pub mod config;
pub mod envs;
pub mod eval;
pub mod inspect;
pub mod linalg;
pub mod nn;
pub mod plot;
pub mod posterior;
pub mod report;
pub mod rl_eval;
pub mod run;
pub mod stats;
pub mod train;
pub mod util;

/// Sets the number of CPU threads used by the tensor kernels (candle's gemm reads
/// `RAYON_NUM_THREADS`). Call once, before any tensor work; later calls with another
/// value are ignored so that concurrently running tests agree.
pub fn init_threads(n: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called before the tensor kernels spawn threads that read the environment.
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        }
    });
}
