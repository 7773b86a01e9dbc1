//! `cargo bench`: the training-step table of `lvrnn bench` at the paper's sizes, on a fixed
//! thread count (LVRNN_BENCH_THREADS, default 2); set LVRNN_BENCH_RL for the PPO table.

fn main() -> anyhow::Result<()> {
    let threads = std::env::var("LVRNN_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    lvrnn::init_threads(threads);
    lvrnn::bench::run(&lvrnn::bench::BenchOptions {
        batch: 256,
        seq_len: 50,
        reps: 3,
        rl: std::env::var("LVRNN_BENCH_RL").is_ok(),
        task: None,
        posterior: None,
        json: false,
    })
}
