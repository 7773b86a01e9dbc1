//! The `lvrnn` command-line tool. See `lvrnn --help` and README.md.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lvrnn::config::{ExperimentConfig, Task};
use lvrnn::eval::request::{EvalRequest, tuned_label, write_provenance, write_tuning_csv};
use lvrnn::eval::{EvalResult, evaluate_regression, tune_regression_prior, with_posterior};
use lvrnn::posterior::PosteriorConfig;
use lvrnn::report::{format_table, write_regression_report};
use lvrnn::run::load_checkpoint;
use lvrnn::train::supervised::{RegressionModel, Supervised};
use lvrnn::train::{FitOptions, fit, init_from_reporting, open_run};
use std::path::{Path, PathBuf};

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
    /// Exact reference policies (random, Thompson, greedy, oracle, Bayes-optimal search): expected
    /// return and cumulative regret with 99% intervals.
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
    /// See README "Sweeps".
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
}

fn main() {
    lvrnn::tune_allocator();
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or(0);
    if threads > 0 {
        lvrnn::init_threads(threads);
    }
    if let Err(e) = run(cli.cmd) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
            train_and_eval(
                cfg,
                &runs,
                FitOptions {
                    resume: !overwrite,
                    progress: true,
                    ..Default::default()
                },
                overwrite,
                None,
                false,
            )
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
            train_and_eval(
                cfg,
                &runs,
                FitOptions {
                    resume,
                    progress: true,
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
        } => {
            let request = EvalRequest {
                posteriors: EvalRequest::parse_posteriors(&posteriors)?,
                tasks,
                only_given,
                tune_prior,
                tune_tasks,
                alphas,
            };
            if load_checkpoint(&checkpoint)?.config.task == Task::Regression {
                eval_checkpoint(&checkpoint, &request, out)
            } else {
                lvrnn::rl_eval::eval_rl_checkpoint(&checkpoint, &request, out)
            }
        }
        Cmd::Inspect {
            checkpoint,
            posterior,
            history,
        } => inspect(&checkpoint, posterior.as_deref(), &history),
        Cmd::Reference {
            env,
            alpha,
            tasks,
            seed,
            csv,
        } => {
            use lvrnn::envs::reference::{
                default_checkpoints, format_reference_table, reference_table, write_reference_csv,
            };
            let kind: lvrnn::envs::EnvKind = env.parse().context("--env")?;
            if !(alpha > 0.0 && alpha.is_finite()) {
                bail!("--alpha must be a finite number > 0 (got {alpha})");
            }
            if tasks == 0 {
                bail!("--tasks must be a positive integer");
            }
            let rows = reference_table(kind, alpha, tasks, seed, &default_checkpoints(kind));
            let alpha_note = if kind == lvrnn::envs::EnvKind::Bandit {
                format!(", alpha {alpha}")
            } else {
                String::new()
            };
            println!(
                "{} reference policies, {tasks} tasks, seed {seed}{alpha_note}",
                kind.as_str()
            );
            print!("{}", format_reference_table(&rows));
            if let Some(path) = csv {
                write_reference_csv(&path, &rows)?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
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
    }
}

fn train_and_eval(
    cfg: ExperimentConfig,
    runs: &Path,
    opts: FitOptions,
    overwrite: bool,
    init: Option<&Path>,
    no_eval: bool,
) -> Result<()> {
    if cfg.task != Task::Regression {
        return lvrnn::rl_eval::train_and_eval_rl(&cfg, runs, opts, overwrite, init, no_eval);
    }
    let run = open_run(&cfg, runs, &opts, overwrite)?;
    let model = RegressionModel::new(&cfg.model, cfg.seed)?;
    init_from_reporting(&model.params, init, &run)?;
    eprintln!(
        "run {} — {} ({} parameters), {} updates of {} tasks × {} points",
        run.root.display(),
        cfg.model.posterior.label(),
        model.params.num_scalars(),
        cfg.train.updates,
        cfg.train.batch,
        cfg.train.seq_len
    );
    let mut learner = Supervised {
        model,
        batch: cfg.train.batch,
        points: cfg.train.seq_len,
        beta: cfg.train.beta,
    };
    let summary = fit(&mut learner, &cfg, &run, &opts)?;
    eprintln!(
        "trained {} updates in {:.1} s; final {:?}",
        summary.updates_done, summary.wall_seconds, summary.last_metrics
    );
    if no_eval {
        return Ok(());
    }
    let model = learner.model;
    let results = evaluate_all(&model, &cfg, &cfg.eval.posthoc)?;
    let files = write_regression_report(
        &results,
        &run.metrics(),
        &run.figures(),
        Some(cfg.train.seq_len),
    )?;
    println!("{}", format_table(&results, &[0, 10, 50, 100]));
    println!("run folder: {}", run.root.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// Evaluates the model under its own posterior and each post-hoc variant.
fn evaluate_all(
    model: &RegressionModel,
    cfg: &ExperimentConfig,
    posthoc: &[String],
) -> Result<Vec<EvalResult>> {
    let mut results = vec![];
    let own = cfg.model.posterior.label();
    eprintln!("evaluating {own} on {} held-out tasks …", cfg.eval.tasks);
    results.push(evaluate_regression(model, &own, &cfg.eval)?);
    for spec in posthoc {
        let p: PosteriorConfig = spec
            .parse()
            .with_context(|| format!("posterior `{spec}`"))?;
        let label = format!("{} (post-hoc on {own})", p.label());
        eprintln!("evaluating {label} …");
        results.push(evaluate_regression(
            &with_posterior(model, &p)?,
            &label,
            &cfg.eval,
        )?);
    }
    Ok(results)
}

fn load_regression(checkpoint: &Path) -> Result<(RegressionModel, ExperimentConfig)> {
    let ck = load_checkpoint(checkpoint)?;
    if ck.config.task != Task::Regression {
        bail!(
            "checkpoint {} is a `{}` model; this command supports regression checkpoints in this build",
            checkpoint.display(),
            ck.config.task
        );
    }
    let model = RegressionModel::new(&ck.config.model, ck.config.seed)?;
    let tensors = ck
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("adam."))
        .collect();
    model.params.load_from(&tensors, true)?;
    Ok((model, ck.config))
}

fn eval_checkpoint(checkpoint: &Path, request: &EvalRequest, out: Option<PathBuf>) -> Result<()> {
    let (model, mut cfg) = load_regression(checkpoint)?;
    request
        .apply(&mut cfg)
        .with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    let out = out.unwrap_or_else(|| lvrnn::run::default_eval_dir(checkpoint));
    let tune_tasks = request.tune_tasks.unwrap_or(64);
    let (mut results, mut tunings) = (vec![], vec![]);
    for (label, p) in request.variants(&cfg.model.posterior) {
        eprintln!("evaluating {label} on {} held-out tasks …", cfg.eval.tasks);
        let variant = with_posterior(&model, &p)?;
        results.push(evaluate_regression(&variant, &label, &cfg.eval)?);
        if let (true, PosteriorConfig::Laplace(lc)) = (request.tune_prior, &p) {
            eprintln!("tuning the prior of {label} on {tune_tasks} other held-out tasks …");
            let tuned = tune_regression_prior(&model, lc, &cfg.eval, tune_tasks)?;
            eprintln!(
                "  chose {} (mean CE {:.4} on the tuning tasks)",
                tuned.describe(),
                tuned.score
            );
            let tuned_model =
                with_posterior(&model, &PosteriorConfig::Laplace(tuned.config.clone()))?;
            results.push(evaluate_regression(
                &tuned_model,
                &tuned_label(&label, &tuned),
                &cfg.eval,
            )?);
            tunings.push((label, tuned));
        }
    }
    write_provenance(&out, checkpoint, &cfg)?;
    let figures = out.join("figures");
    let mut files = write_regression_report(&results, &out, &figures, Some(cfg.train.seq_len))?;
    if !tunings.is_empty() {
        files.push(write_tuning_csv(&out, "mean predictive CE", &tunings)?);
    }
    println!("{}", format_table(&results, &[0, 10, 50, 100]));
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

fn inspect(checkpoint: &Path, posterior: Option<&str>, history: &Path) -> Result<()> {
    let task = load_checkpoint(checkpoint)?.config.task;
    let lines = if task == Task::Regression {
        let (model, _) = load_regression(checkpoint)?;
        let model = match posterior {
            Some(spec) => with_posterior(&model, &spec.parse().context("--posterior")?)?,
            None => model,
        };
        lvrnn::inspect::regression_trace(&model, &lvrnn::inspect::read_history(history, 2)?)?
    } else {
        let (model, _) = lvrnn::rl_eval::load_rl(checkpoint)?;
        let model = match posterior {
            Some(spec) => model.with_posterior(&spec.parse().context("--posterior")?)?,
            None => model,
        };
        let rows = lvrnn::inspect::read_history(history, model.obs_dim + 2)?;
        lvrnn::inspect::rl_trace(&model, &rows)?
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
