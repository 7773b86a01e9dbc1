use lvrnn::agent::ModelConfig;
use lvrnn::agent::regression::RegressionModel;
use lvrnn::train::supervised::{negative_elbo, sample_batch};
use rand::SeedableRng;
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    lvrnn::init_threads(1);
    let b: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(256);
    let spec = std::env::args().nth(2).unwrap_or_else(|| "rnn".into());
    let cfg = ModelConfig {
        posterior: spec.parse()?,
        ..ModelConfig::default()
    };
    let model = RegressionModel::new(&cfg, 0)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for _ in 0..2 {
        let (xs, ys) = sample_batch(&mut rng, b, 50);
        let t0 = Instant::now();
        let parts = negative_elbo(&model, &xs, &ys, 1e-2, &mut rng)?;
        let t1 = Instant::now();
        let _g = parts.loss.backward()?;
        let t2 = Instant::now();
        println!(
            "B={b} forward {:.3}s backward {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
    Ok(())
}
