//! `cargo bench`: the training-step table of `lvrnn bench` at the paper's sizes, on a fixed
//! thread count (LVRNN_BENCH_THREADS, default 2).

fn main() -> anyhow::Result<()> {
    let threads = std::env::var("LVRNN_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    lvrnn::init_threads(threads);
    lvrnn::bench::run(256, 50, 2)
}
