//! The `lvrnn` command-line tool. See `lvrnn --help` and README.md.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lvrnn::config::{ExperimentConfig, Task};
use lvrnn::eval::request::EvalRequest;
use lvrnn::train::FitOptions;
use std::path::PathBuf;

/// The embedded default configuration of `lvrnn quickstart`.
const QUICKSTART: &str = include_str!("../configs/quickstart.toml");

#[derive(Parser)]
#[command(
    name = "lvrnn",
    version,
    about = "Laplace variational recurrent networks for Bayesian meta-RL"
)]
struct Cli {
    /// Threads for the tensor kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a small RNN on Fourier regression, evaluate it as RNN and as post-hoc Laplace VRNN,
    /// and write metrics and figures (the embedded default config; a few minutes on 2 cores).
    Quickstart {
        /// Folder holding run folders.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Override the number of updates.
        #[arg(long)]
        updates: Option<usize>,
        /// Start again even if the run folder exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Train from a TOML config (see configs/), then evaluate on held-out tasks.
    Train {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Run name (default: the config's `name`).
        #[arg(long)]
        name: Option<String>,
        /// Override the posterior, e.g. `laplace:window=1,accumulate=sigma` or `vrnn:diagonal=true`.
        #[arg(long)]
        posterior: Option<String>,
        #[arg(long)]
        updates: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Continue an interrupted run from its latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Delete an existing run folder of the same name first.
        #[arg(long)]
        overwrite: bool,
        /// Finetune: start from this checkpoint's weights (any posterior family).
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// Skip the evaluation after training.
        #[arg(long)]
        no_eval: bool,
    },
    /// Evaluate a checkpoint on held-out tasks, under its own posterior and any others given
    /// (post hoc: the same weights, no retraining).
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Posterior variants to evaluate under (repeatable).
        #[arg(long = "posterior")]
        posteriors: Vec<String>,
        /// Output folder (default: <run>/eval-<checkpoint name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        tasks: Option<usize>,
        /// Do not also evaluate under the checkpoint's own posterior.
        #[arg(long)]
        only_given: bool,
        /// Also evaluate each Laplace variant with its prior (prior_precision; and damping when
        /// accumulate=none) tuned on held-out tasks: by mean predictive CE (regression) or mean
        /// return (RL) over a log grid 1e-3..1e3. Writes prior_tuning.csv.
        #[arg(long)]
        tune_prior: bool,
        /// Held-out tasks for --tune-prior (default: 64 regression, 256 bandit/gridworld).
        #[arg(long)]
        tune_tasks: Option<usize>,
        /// Bandit only: evaluate at these Dirichlet concentrations α (repeatable; default the
        /// config's env.alpha_test), e.g. `--alpha 0.2 --alpha 0.3` for in-distribution vs shifted.
        #[arg(long = "alpha")]
        alphas: Vec<f64>,
        /// RL only: `sample` actions from the policy or take its most probable (`greedy`);
        /// default the config's eval.actions (sample).
        #[arg(long)]
        actions: Option<String>,
        /// Regression only: the predictive the metrics use, `sampled` (Monte Carlo over
        /// posterior samples) or `linearised` (the head linearised at the posterior mean);
        /// default the config's eval.predictive (sampled).
        #[arg(long)]
        predictive: Option<String>,
    },
    /// Print, per step of a history, the posterior a checkpoint gives (JSON lines).
    Inspect {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Posterior variant (default: the checkpoint's own).
        #[arg(long)]
        posterior: Option<String>,
        /// CSV with one row per step: regression `x,y`; bandit/gridworld `obs…,prev_action,prev_reward`
        /// (prev_action −1 at the first step). A header row is optional.
        #[arg(long)]
        history: PathBuf,
    },
    /// Reference policies (bandit: random, Thompson / greedy / knowledge gradient on an
    /// importance-sampled posterior, independent-Beta Thompson, oracle; gridworld: random,
    /// episodic search, exact Bayes-optimal search, oracle): expected return and cumulative
    /// regret with 99% intervals,
    /// and the particle posterior's mean effective sample size.
    Reference {
        /// `bandit` or `gridworld`.
        #[arg(long)]
        env: String,
        /// Bandit Dirichlet concentration (default 0.3, the paper's test tasks).
        #[arg(long, default_value_t = 0.3)]
        alpha: f32,
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write the table as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
    },
    /// Time training steps and the Jacobian/precision path (prints a table).
    Bench {
        /// Batch size (paper: 256).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Sequence length (paper: 50).
        #[arg(long, default_value_t = 50)]
        seq_len: usize,
        /// Timed repetitions per row.
        #[arg(long, default_value_t = 2)]
        reps: usize,
        /// Time PPO updates on the bandit and gridworld instead (batch --batch).
        #[arg(long)]
        rl: bool,
        /// Only this task: regression, bandit or gridworld.
        #[arg(long)]
        task: Option<String>,
        /// Only this posterior SPEC (e.g. `laplace:window=1,accumulate=sigma`).
        #[arg(long)]
        posterior: Option<String>,
        /// One JSON object per configuration per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run a grid of training jobs from a sweep file (base config × axes − exclusions) as
    /// parallel worker processes, resumably; or list them, or write a Slurm job array.
    /// See docs/sweeps-and-report.md.
    Sweep {
        /// The sweep file (TOML).
        file: PathBuf,
        /// Output folder (default: sweeps/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Worker processes at once (default: one per core); each runs with --threads 1.
        #[arg(long)]
        jobs: Option<usize>,
        /// List the jobs (name and command line) and exit.
        #[arg(long)]
        dry_run: bool,
        /// Write a cluster batch script and job list instead of running: `--emit slurm DIR`.
        #[arg(long, num_args = 2, value_names = ["KIND", "DIR"])]
        emit: Vec<String>,
        /// The lvrnn binary the job commands call (default: this one).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Aggregate every result folder under DIR (runs, eval folders, sweeps): tables with 99%
    /// t-intervals over seeds, figures, and one report.md. See docs/sweeps-and-report.md.
    Report {
        /// Folder to search recursively for result folders.
        dir: PathBuf,
        /// Output folder (default: DIR/report).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Group by these config keys, comma-separated (e.g. `model.posterior,train.lr`);
        /// default: every key that differs between result folders, except seed and name.
        #[arg(long, value_delimiter = ',')]
        by: Option<Vec<String>>,
        /// A TOML file of `[[target]]` tables (per-seed bounds on a metric at one t): adds a
        /// Targets section (each seed's value, `k / n` seeds meeting the bound) and targets.csv.
        #[arg(long, value_name = "FILE")]
        targets: Option<PathBuf>,
    },
}

fn main() {
    lvrnn::tune_allocator();
    let cli = Cli::parse();
    // 0: the default thread count (the machine's cores).
    lvrnn::init_threads(cli.threads.unwrap_or(0));
    lvrnn::join_thread_pool();
    if let Err(e) = run(cli.cmd) {
        // A run stopped by SIGINT / SIGTERM at a safe point: what happened and how to resume,
        // and the exit status a shell gives a process that signal ended (130, 143).
        if let Some(stop) = e.downcast_ref::<lvrnn::train::interrupt::Interrupted>() {
            eprintln!("{stop}");
            std::process::exit(stop.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The command line that resumes the run this process trains.
fn resume_command() -> String {
    lvrnn::train::interrupt::resume_command(std::env::args_os())
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Quickstart {
            runs,
            updates,
            overwrite,
        } => {
            let mut cfg = ExperimentConfig::from_toml_str(QUICKSTART, "(embedded quickstart)")?;
            if let Some(u) = updates {
                cfg.train.updates = u;
            }
            cfg.validate()?;
            lvrnn::commands::train(
                &cfg,
                &runs,
                FitOptions {
                    resume: !overwrite,
                    progress: true,
                    stop_on_signal: Some(resume_command()),
                    ..Default::default()
                },
                overwrite,
                None,
                false,
            )?;
            let ck = runs
                .join(&cfg.name)
                .join("checkpoints/model-final.safetensors");
            println!(
                "\nThe rows: `rnn` is the trained point estimate; `laplace-sigma-k1-full (post-hoc on rnn)` the same network read as a Laplace VRNN with the untuned prior Λ_0 = I, and `…, tuned prior` with Λ_0 = λ·I chosen on 64 other held-out tasks (metrics/prior_tuning.csv) — the post-hoc posterior to use.\nnext: other post-hoc posteriors or the linearised predictive on the same weights:\n  lvrnn eval --checkpoint {} --posterior laplace:window=0,accumulate=none --tune-prior --predictive linearised",
                ck.display()
            );
            Ok(())
        }
        Cmd::Train {
            config,
            runs,
            name,
            posterior,
            updates,
            seed,
            resume,
            overwrite,
            init_from,
            no_eval,
        } => {
            let mut cfg = ExperimentConfig::load(&config)?;
            if let Some(n) = name {
                cfg.name = n;
            }
            if let Some(p) = posterior {
                cfg.model.posterior = p.parse().context("--posterior")?;
            }
            if let Some(u) = updates {
                cfg.train.updates = u;
            }
            if let Some(s) = seed {
                cfg.seed = s;
            }
            cfg.validate()?;
            lvrnn::commands::train(
                &cfg,
                &runs,
                FitOptions {
                    resume,
                    progress: true,
                    stop_on_signal: Some(resume_command()),
                    ..Default::default()
                },
                overwrite,
                init_from.as_deref(),
                no_eval,
            )
        }
        Cmd::Eval {
            checkpoint,
            posteriors,
            out,
            tasks,
            only_given,
            tune_prior,
            tune_tasks,
            alphas,
            actions,
            predictive,
        } => {
            let request = EvalRequest {
                posteriors: EvalRequest::parse_posteriors(&posteriors)?,
                tasks,
                only_given,
                tune_prior,
                tune_tasks,
                alphas,
                actions,
                predictive,
            };
            lvrnn::commands::eval(&checkpoint, &request, out)
        }
        Cmd::Inspect {
            checkpoint,
            posterior,
            history,
        } => {
            for line in lvrnn::commands::inspect(&checkpoint, posterior.as_deref(), &history)? {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Reference {
            env,
            alpha,
            tasks,
            seed,
            csv,
        } => lvrnn::commands::reference::run(&env, alpha, tasks, seed, csv.as_deref()),
        Cmd::Bench {
            batch,
            seq_len,
            reps,
            rl,
            task,
            posterior,
            json,
        } => {
            let task = task
                .map(|t| t.parse::<Task>())
                .transpose()
                .context("--task")?;
            if let Some(spec) = &posterior {
                spec.parse::<lvrnn::posterior::PosteriorConfig>()
                    .context("--posterior")?;
            }
            if batch == 0 || seq_len == 0 {
                bail!("--batch and --seq-len must be positive integers");
            }
            lvrnn::bench::run(&lvrnn::bench::BenchOptions {
                batch,
                seq_len,
                reps,
                rl,
                task,
                posterior,
                json,
            })
        }
        Cmd::Sweep {
            file,
            out,
            jobs,
            dry_run,
            emit,
            bin,
        } => lvrnn::sweep::run(&lvrnn::sweep::SweepOptions {
            file,
            out,
            jobs,
            dry_run,
            emit,
            bin,
        }),
        Cmd::Report {
            dir,
            out,
            by,
            targets,
        } => {
            let files = lvrnn::report::run_report(&lvrnn::report::ReportOptions {
                dir,
                out,
                by,
                targets,
            })?;
            for f in files {
                println!("  {}", f.display());
            }
            Ok(())
        }
    }
}
