//! `lvrnn bench` / `cargo bench`: seconds per training update at the paper's sizes, split into
//! rollout / loss forward / backward / optimiser, against a floor: the model's FLOP count per
//! update divided by this machine's matrix-multiply throughput, measured in the same run with
//! the same gemm the project uses, at a shape the model uses. Also the peak resident memory.
//!
//! One row per (task, posterior SPEC); `--json` prints one JSON object per row.

use crate::agent::regression::RegressionModel;
use crate::agent::rl::{ActionRule, Keep, RlModel, rollout};
use crate::config::ModelConfig;
use crate::config::{ExperimentConfig, Task};
use crate::nn::kernels::{Mat, sgemm};
use crate::posterior::PosteriorConfig;
use crate::posterior::filter::WINDOW_GRAM_FROM;
use crate::train::optim::AdamW;
use crate::train::ppo::{Ppo, gae, ppo_loss};
use crate::train::supervised::{negative_elbo, sample_batch};
use crate::train::{adamw_config, update_rng};
use anyhow::Result;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Tasks per update (paper: 256).
    pub batch: usize,
    /// Regression sequence length (paper: 50); the RL horizons are the environments'.
    pub seq_len: usize,
    /// Timed updates per row (after one warm-up update); the median is reported.
    pub reps: usize,
    /// Default task set: bandit and gridworld (true) or regression (false).
    pub rl: bool,
    /// Only this task.
    pub task: Option<Task>,
    /// Only this posterior SPEC (as `--posterior` takes it).
    pub posterior: Option<String>,
    pub json: bool,
}

/// The posterior SPECs timed by default.
pub fn bench_families(rl: bool) -> Vec<&'static str> {
    if rl {
        vec![
            "rnn",
            "vrnn",
            "laplace:window=1,accumulate=sigma",
            "laplace:window=10,accumulate=none",
        ]
    } else {
        vec![
            "rnn",
            "vrnn",
            "vrnn:diagonal=true",
            "laplace:window=1,accumulate=sigma",
            "laplace:window=1,accumulate=sigma,diagonal=true",
            "laplace:window=1,accumulate=mu_sigma",
            "laplace:window=10,accumulate=none",
        ]
    }
}

/// One row of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub task: String,
    pub posterior: String,
    pub threads: usize,
    pub batch: usize,
    pub steps: usize,
    pub s_per_update: f64,
    pub rollout_s: f64,
    pub loss_forward_s: f64,
    pub backward_s: f64,
    pub optimiser_s: f64,
    pub gflop_per_update: f64,
    pub gemm_gflops: f64,
    pub floor_s: f64,
    pub ratio: f64,
    /// RL: one more pass over the same rollout after the step (`ppo.epochs` + 1): the loss at
    /// the moved parameters (head traces and Laplace statistics recomputed), its backward and
    /// the optimiser step. NaN for regression.
    pub extra_epoch_s: f64,
    pub peak_rss_mb: f64,
    /// The projected wall time of the paper's protocol, [`PROTOCOL_UPDATES`] updates at this
    /// row's s/update, in hours (training only: no evaluation, no checkpoints).
    pub protocol_hours: f64,
}

/// Updates of the paper's training protocol (Table 1), for [`BenchRow::protocol_hours`].
pub const PROTOCOL_UPDATES: usize = 20_000;

/// Hours that `updates` updates take at `s_per_update` seconds each.
pub fn protocol_hours(s_per_update: f64, updates: usize) -> f64 {
    s_per_update * updates as f64 / 3600.0
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let tasks: Vec<Task> = match opts.task {
        Some(t) => vec![t],
        None if opts.rl => vec![Task::Bandit, Task::Gridworld],
        None => vec![Task::Regression],
    };
    let gemm = gemm_throughput(opts.batch * opts.seq_len.max(50));
    if !opts.json {
        let m = ModelConfig::default();
        println!(
            "training update at batch {}, LSTM {}, n = {}, embed {}, heads {:?}; {threads} thread(s); median of {}",
            opts.batch,
            m.hidden,
            m.features,
            m.embed_width,
            m.head_hidden,
            opts.reps.max(1)
        );
        println!(
            "gemm throughput (({} × 256)·(256 × 256), the project's gemm): {gemm:.1} GFLOP/s",
            opts.batch * opts.seq_len.max(50)
        );
        println!(
            "{:<10} {:<46} {:>4} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>10}",
            "task",
            "posterior",
            "T",
            "s/update",
            "rollout",
            "fwd",
            "bwd",
            "optim",
            "GFLOP",
            "floor s",
            "ratio",
            "+1 epoch",
            "peak MB",
            "20k upd h"
        );
    }
    for task in tasks {
        let specs: Vec<String> = match &opts.posterior {
            Some(p) => vec![p.clone()],
            None => bench_families(task != Task::Regression)
                .into_iter()
                .map(String::from)
                .collect(),
        };
        for spec in specs {
            let row = bench_one(task, &spec, opts, gemm, threads)?;
            if opts.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!(
                    "{:<10} {:<46} {:>4} {:>9.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.1} {:>8.3} {:>6.1} {:>9.3} {:>8.0} {:>10.2}",
                    row.task,
                    row.posterior,
                    row.steps,
                    row.s_per_update,
                    row.rollout_s,
                    row.loss_forward_s,
                    row.backward_s,
                    row.optimiser_s,
                    row.gflop_per_update,
                    row.floor_s,
                    row.ratio,
                    row.extra_epoch_s,
                    row.peak_rss_mb,
                    row.protocol_hours
                );
            }
        }
    }
    Ok(())
}

fn bench_one(
    task: Task,
    spec: &str,
    opts: &BenchOptions,
    gemm: f64,
    threads: usize,
) -> Result<BenchRow> {
    let posterior: PosteriorConfig = spec.parse()?;
    let mut cfg =
        ExperimentConfig::from_toml_str(&format!("name = \"bench\"\ntask = \"{task}\""), "bench")?;
    cfg.model.posterior = posterior;
    cfg.train.batch = opts.batch;
    reset_peak_rss();
    let mut parts: Vec<[f64; 4]> = vec![];
    let mut extra: Vec<f64> = vec![];
    let steps;
    if task == Task::Regression {
        steps = opts.seq_len;
        let model = RegressionModel::new(&cfg.model, 0)?;
        let mut opt = AdamW::new(adamw_config(&cfg), &model.params)?;
        for rep in 0..=opts.reps.max(1) {
            let mut rng = update_rng(cfg.seed, rep);
            let t0 = Instant::now();
            let (xs, ys) = sample_batch(&mut rng, opts.batch, steps);
            let t1 = Instant::now();
            let elbo = negative_elbo(&model, &xs, &ys, 1e-2, &mut rng)?;
            let t2 = Instant::now();
            let grads = elbo.loss.backward()?;
            let t3 = Instant::now();
            opt.step(&model.params, &grads)?;
            let t4 = Instant::now();
            if rep > 0 {
                parts.push(split(t0, t1, t2, t3, t4));
            }
        }
    } else {
        let mut learner = Ppo::new(&cfg, RlModel::for_experiment(&cfg)?)?;
        steps = learner.env.horizon();
        let mut opt = AdamW::new(adamw_config(&cfg), &learner.model.params)?;
        for rep in 0..=opts.reps.max(1) {
            let mut rng = update_rng(cfg.seed, rep);
            let t0 = Instant::now();
            let first = learner.env.reset(&mut rng);
            let ro = rollout(
                &learner.model,
                learner.env.as_mut(),
                first,
                &mut rng,
                Keep::TRAINING,
                ActionRule::Sample,
            )?;
            let (adv, targets) = gae(
                &ro.rewards,
                &ro.values,
                &ro.discounts,
                &ro.bootstrap,
                learner.ppo.gamma,
                learner.ppo.gae_lambda,
            );
            let t1 = Instant::now();
            let loss = ppo_loss(
                &learner.model,
                &ro,
                &adv,
                &targets,
                &learner.ppo,
                learner.beta,
            )?;
            let t2 = Instant::now();
            let grads = loss.loss.backward()?;
            let t3 = Instant::now();
            opt.step(&learner.model.params, &grads)?;
            let t4 = Instant::now();
            // A second epoch on the same rollout, at the parameters the step moved.
            let loss = ppo_loss(
                &learner.model,
                &ro,
                &adv,
                &targets,
                &learner.ppo,
                learner.beta,
            )?;
            let grads = loss.loss.backward()?;
            opt.step(&learner.model.params, &grads)?;
            if rep > 0 {
                parts.push(split(t0, t1, t2, t3, t4));
                extra.push(t4.elapsed().as_secs_f64());
            }
        }
    }
    let med = |k: usize| median(&mut parts.iter().map(|p| p[k]).collect::<Vec<_>>());
    let mut totals: Vec<f64> = parts.iter().map(|p| p.iter().sum()).collect();
    let total = median(&mut totals);
    let gflop = update_flops(task, &cfg.model, opts.batch, steps) / 1e9;
    let floor = gflop / gemm;
    Ok(BenchRow {
        task: task.to_string(),
        posterior: spec.into(),
        threads,
        batch: opts.batch,
        steps,
        s_per_update: total,
        rollout_s: med(0),
        loss_forward_s: med(1),
        backward_s: med(2),
        optimiser_s: med(3),
        gflop_per_update: gflop,
        gemm_gflops: gemm,
        floor_s: floor,
        ratio: total / floor,
        extra_epoch_s: median(&mut extra),
        peak_rss_mb: peak_rss_mb(),
        protocol_hours: protocol_hours(total, PROTOCOL_UPDATES),
    })
}

fn split(t0: Instant, t1: Instant, t2: Instant, t3: Instant, t4: Instant) -> [f64; 4] {
    [
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        (t4 - t3).as_secs_f64(),
    ]
}

/// GFLOP/s of the project's gemm (`nn::kernels::sgemm`, as candle's matmul) at the heads'
/// hidden-layer shape (rows × 256)·(256 × 256), best of a few repetitions.
pub fn gemm_throughput(rows: usize) -> f64 {
    let (k, n) = (256, 256);
    let a: Vec<f32> = (0..rows * k).map(|i| ((i % 97) as f32) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 89) as f32) * 0.01).collect();
    let mut c = vec![0f32; rows * n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        sgemm(
            rows,
            n,
            k,
            Mat::rows(&a, k),
            Mat::rows(&b, n),
            &mut c,
            false,
            true,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (rows * k * n) as f64 / best / 1e9
}

/// Multiply-adds of an MLP with layer sizes `sizes`, per row.
fn mlp_macs(sizes: &[usize]) -> f64 {
    sizes.windows(2).map(|w| (w[0] * w[1]) as f64).sum()
}

/// The model's FLOP count (2 per multiply-add) of one training update, as this implementation
/// does the work: the rollout's forward pass (RL only), the loss pass's forward (without the
/// policy and value heads and the LSTM recurrence, whose rollout values it reuses), and a
/// backward pass of twice
/// the forward's matrix work for everything that carries a gradient. Counted:
/// the recurrent product h·W_h, the projection P, the heads on every sample, the input stage
/// for continuous inputs (discrete inputs are deduplicated to a handful of rows and count as
/// nothing), the VRNN head, Cayley map and KL, and the Laplace statistics (D, J = PᵀD, JJᵀ,
/// Cholesky, trace solve) once per update. Elementwise work is not counted. The gridworld's
/// heads see [embedding of s_t, z], the embedding gathered from a few hundred distinct rows:
/// their first layer runs its embedding columns through the table (`nn::first_layer`, forward
/// and backward), so it counts n·H_1 instead of (E + n)·H_1 per head and row (the table's own
/// products, U·E·H_1 each, are not counted).
pub fn update_flops(task: Task, m: &ModelConfig, batch: usize, steps: usize) -> f64 {
    let (h, n, e) = (m.hidden as f64, m.features as f64, m.embed_width as f64);
    let rows = (batch * steps) as f64;
    let nz = match m.posterior {
        PosteriorConfig::Rnn => 1.0,
        _ => m.n_z as f64,
    };
    let head = |d_in: usize, d_out: usize| {
        let mut sizes = vec![d_in];
        sizes.extend(&m.head_hidden);
        sizes.push(d_out);
        mlp_macs(&sizes)
    };
    let core = 4.0 * h * h + h * n;
    // (inputs, heads, the policy and value heads among them): the RL loss pass reuses the
    // rollout's policy and value activations (`agent::rl::HeadTraces`) and runs only their
    // backward.
    let (inputs, heads, traced) = match task {
        Task::Regression => (
            2.0 * (e + e * e) + 2.0 * e * 4.0 * h,
            head(m.embed_width + m.features, 1),
            0.0,
        ),
        Task::Bandit => {
            let acting = head(m.features, 5) + head(m.features, 1);
            (0.0, acting + head(m.features + 5, 1), acting)
        }
        Task::Gridworld => {
            // The embedding columns of the first layers go through the table (see above).
            let first = |d_out: usize| e * m.head_hidden.first().copied().unwrap_or(d_out) as f64;
            let acting = head(m.embed_width + m.features, 4) + head(m.embed_width + m.features, 1)
                - first(4)
                - first(1);
            (0.0, acting, acting)
        }
    };
    let graph_posterior = match &m.posterior {
        PosteriorConfig::Vrnn { diagonal: false } => {
            n * (2.0 * n + n * n) + 2.0 * n * n * n + nz * n * n + n * n * n
        }
        PosteriorConfig::Vrnn { diagonal: true } => 2.0 * n * n,
        _ => 0.0,
    };
    let laplace = match &m.posterior {
        PosteriorConfig::Laplace(c) => {
            let window = match c.window {
                0 => (steps as f64 + 1.0) / 2.0,
                k => (k.min(steps)) as f64,
            };
            let gram = if c.diagonal { n * h } else { n * n * h };
            // Explicit Jacobians for short windows, the window Gram Pᵀ(Σ_gg' K ∘ ĀĀᵀ)P from
            // WINDOW_GRAM_FROM inputs on (`posterior::filter`).
            let jacobians = if window >= WINDOW_GRAM_FROM as f64 {
                10.0 * window * h * h + 11.0 * h * h + n * h * h + gram
            } else {
                window * (4.0 * h * h + n * h * h + gram)
            };
            let factor = if c.diagonal {
                0.0
            } else {
                n * n * n / 3.0 + n * n * n / 6.0 + nz * n * n / 2.0
            };
            4.0 * h * h + jacobians + factor
        }
        _ => 0.0,
    };
    let forward = rows * (inputs + core + graph_posterior + nz * heads);
    let rollout = if task == Task::Regression {
        0.0
    } else {
        forward
    };
    // The RL loss pass takes the rollout's LSTM states too (`nn::lstm_seq::lstm_sequence_known`):
    // its recurrence h·W_h does not run again.
    let recurrence = match task {
        Task::Regression => 0.0,
        _ => 4.0 * h * h,
    };
    let loss_forward = forward - rows * (nz * traced + recurrence);
    2.0 * (rollout + loss_forward + 2.0 * forward + rows * laplace)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Resets the kernel's peak-RSS counter of this process (Linux; elsewhere a no-op), after
/// handing the allocator's free memory back (`crate::tune_allocator` keeps it otherwise), so
/// that a row's peak is not an earlier row's leftover.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process in MB since the last reset (NaN where unknown).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
