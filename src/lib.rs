//! # lvrnn — Laplace variational recurrent networks
//!
//! Bayesian meta-reinforcement learning with a Gaussian task posterior over an LSTM's output,
//! obtained by the Laplace approximation (de Vries et al., "Bayesian Meta-Reinforcement Learning
//! with Laplace Variational Recurrent Networks"). See `README.md` and `DESIGN.md`.

pub mod agent;
pub mod bench;
pub mod commands;
pub mod config;
pub mod envs;
pub mod eval;
pub mod inspect;
pub mod linalg;
pub mod nn;
pub mod plot;
pub mod posterior;
pub mod report;
pub mod run;
pub mod stats;
pub mod sweep;
pub mod train;
pub mod util;

/// Sets the number of CPU threads used by the tensor kernels (candle's gemm and the project's
/// batch-parallel loops, `nn::kernels::parts`, read `RAYON_NUM_THREADS`). Call once, before
/// any tensor work; later calls with another value are ignored so that concurrently running
/// tests agree. `n` = 0 leaves the thread count at its default (the machine's cores).
///
/// candle's own elementwise pool (`CANDLE_NUM_THREADS`) is kept at one thread, the caller:
/// its helper threads busy-wait at a barrier between ops, competing for the cores with the
/// rayon threads that do the heavy work, and measured here at two threads it made an update
/// slower (bandit RNN 0.64–0.83 s against 0.44–0.47 s, the optimiser step 0.1 s against
/// 0.01 s, on a loaded 2-core machine; docs/performance.md).
pub fn init_threads(n: usize) {
    tune_allocator();
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called before the tensor kernels spawn threads that read the environment.
        unsafe {
            if n > 0 {
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

/// Makes the calling thread (the CLI's main thread) one of the threads of rayon's global pool,
/// of the configured size ([`init_threads`]), so that the batch-parallel loops
/// (`nn::kernels::run_parts`) and gemm's split products started from it run one part on it and
/// the others on the pool's other threads. Otherwise it hands every part to the pool and waits:
/// with two cores that is three threads, and a wake-up of both workers for each of the
/// rollout's small per-step regions. Call before any parallel work, from the one thread that
/// does all of it (a thread of the pool only picks up work while it waits on its own parallel
/// loops: other threads' loops run on the remaining workers); later calls do nothing.
pub fn join_thread_pool() {
    let threads = candle_core::utils::get_num_threads();
    // Err: the global pool exists already (an earlier call, or rayon work before this one).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .build_global();
}

/// Keeps freed tensor buffers in the process instead of returning them to the kernel (glibc
/// only): buffers up to 32 MB come from the heap rather than fresh `mmap`s, and the heap is not
/// trimmed below 1 GB. A training update allocates and frees the same large tensors every time;
/// without this a quarter of its time went to page faults (measured with `perf`). Called by
/// [`init_threads`] and at the start of the CLI; harmless to call again.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}
