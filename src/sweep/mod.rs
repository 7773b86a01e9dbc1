//! `lvrnn sweep FILE.toml`: a grid of training runs — a base config, axes over any config keys,
//! and exclusion rules — or stages of them whose jobs start from other jobs' checkpoints
//! (finetuning, post-hoc evaluation), run as worker processes on this machine (resumable), listed
//! (`--dry-run`), or written out as Slurm job arrays (`--emit slurm DIR`).
//!
//! # The sweep file
//! ```toml
//! name = "bandit-small"               # the sweep; default output folder sweeps/<name>
//! base = "../bandit-rnn.toml"         # a config file, relative to this file; or an inline [base] table
//!
//! [set]                               # optional: keys set for every job
//! "train.updates" = 2000
//!
//! [axes]                              # the grid: every combination of these values
//! "model.posterior" = ["rnn", "laplace:window=1,accumulate=sigma", "vrnn"]   # SPECs or tables
//! "train.lr" = [1e-3, 3e-4]
//! seed = { range = [0, 4] }           # integers 0, 1, 2, 3 (end excluded); or a list
//!
//! [[exclude]]                         # drop every combination matching all the listed values
//! "model.posterior" = "vrnn"
//! "train.lr" = 3e-4
//! ```
//! Axis and `[set]` keys are dotted config keys (`train.lr`, `model.posterior.window`, `seed`;
//! see docs/configuration.md); `model.posterior` takes posterior SPEC strings. A job is
//! named by its axis values in file order, `short=value` joined by commas with the short key the
//! last part of the dotted key, e.g. `posterior=laplace-sigma-k1-full,lr=0.001,seed=3`. Unknown
//! keys, empty axes and values a config rejects are errors before anything runs.
//!
//! # Stages: jobs that start from other jobs
//! The paper's protocol (Sec. 5, App. B): pre-train RNNs, finetune their ½ and ¾ snapshots
//! under other posteriors, evaluate the snapshots post hoc. Instead of `[axes]` and
//! `[[exclude]]` at the top, such a sweep lists stages, each with its own `axes`, `set` and
//! `exclude`:
//! ```toml
//! [[stage]]                              # a root stage: a grid like a one-stage sweep
//! name = "pretrain"
//! axes = { seed = { range = [0, 3] } }
//! [[stage]]                              # train, starting from each pretrain job's snapshots
//! name = "finetune"
//! from = { stage = "pretrain", snapshot = [0.5, 0.75], updates = "remaining" }
//! axes = { "model.posterior" = ["vrnn", "laplace:window=1,accumulate=sigma"] }
//! set = { "train.snapshots" = [] }
//! [[stage]]                              # post-hoc evaluation, no training
//! name = "posthoc"
//! kind = "eval"                          # "train" (the default) or "eval"
//! from = { stage = "pretrain", snapshot = [0.5, 0.75, "final"] }
//! posteriors = ["laplace:window=1,accumulate=sigma", "laplace:window=10,accumulate=none"]
//! ```
//! A stage with `from` gets, for each job of the `from` stage (its *parent*), each snapshot and
//! each point of its own axes, one job: the parent's axis values (the seed…), `snapshot=…`,
//! then its own, e.g. `finetune.seed=0,snapshot=0.5,posterior=vrnn`; job names start with the
//! stage name. An own axis whose key the parent stage also has picks parents instead of adding a
//! dimension (`seed = [0]` finetunes only seed 0). `exclude` rules may name the inherited keys
//! and `snapshot`. `snapshot` takes fractions from the parent's `train.snapshots` — the
//! checkpoint `model-step<N>` with N = `train::snapshot_update(fraction, train.updates)`, the
//! trainer's own rounding — or `"final"` (`model-final`); the default is `["final"]`.
//!
//! A dependent train job's config is its parent's (seed, model sizes, `[set]` keys included)
//! with the stage's `set` and axis values written over it; it trains its own `train.updates`, or
//! with `updates = "remaining"` the parent's minus the snapshot's update (so pre-training plus
//! finetuning make one full budget). It runs `train … --init-from <parent
//! run>/checkpoints/<snapshot>` and records that in `runs/<job>/init_from.json`. An eval job
//! (`kind = "eval"`, `posteriors` = SPECs, optional `tune_prior = true`, `actions = "greedy"`
//! (RL), `predictive = "linearised"` (regression); `exclude` but no `axes` or `set`) runs `eval
//! --checkpoint <parent run>/checkpoints/<snapshot> --posterior P… --out <out>/evals/<job>` (plus
//! `--tune-prior`, `--actions`, `--predictive`), which also evaluates the checkpoint under its
//! own posterior. Top-level `[set]` applies to every root stage; a
//! stage's `set` and axes win over it. A dependent job waits until its parent is done; a parent
//! that fails marks it `skipped` with the reason (unrelated jobs go on), and a restart retries
//! both.
//!
//! # The output folder
//! ```text
//! <out>/jobs/<job>.toml      the job's full config (its `name` is the job name)
//!       runs/<job>/…         the run folder of `lvrnn train` (checkpoints, metrics, figures)
//!       evals/<job>/…        an eval job's `lvrnn eval --out` folder (config.toml, source.json, tables)
//!       logs/<job>.log       the worker's output, every attempt appended
//!       status/<job>.json    written after the worker exits: done / failed (+ error tail), or
//!                            skipped (+ reason) when the job it starts from failed
//!       status/<job>.pid     while a worker runs
//!       attempts.jsonl       one line per worker start and end
//!       sweep.lock           while a sweep runs here
//! ```
//! Every train job runs `lvrnn --threads 1 train --config <out>/jobs/<job>.toml --runs
//! <out>/runs --name <job> --resume [--init-from CKPT]`, every eval job `lvrnn --threads 1 eval
//! …`, locally ([`runner`]) or as Slurm array tasks, one array per stage ([`slurm`]).

pub mod layout;
pub mod runner;
pub mod slurm;
pub mod spec;

pub use layout::{JobStatus, Outcome, SweepDir};
pub use spec::{Action, After, Axis, Job, Stage, StageKind, Sweep};

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The arguments of `lvrnn sweep`.
pub struct SweepOptions {
    pub file: PathBuf,
    /// Output folder (default `sweeps/<sweep name>`).
    pub out: Option<PathBuf>,
    /// Worker processes at once (default: one per core).
    pub jobs: Option<usize>,
    /// Only list the jobs and their commands.
    pub dry_run: bool,
    /// `[KIND, DIR]` of `--emit KIND DIR`, or empty.
    pub emit: Vec<String>,
    /// The lvrnn binary in the job commands (default: the running one).
    pub bin: Option<PathBuf>,
}

/// Runs `lvrnn sweep`.
pub fn run(opts: &SweepOptions) -> Result<()> {
    let sweep = Sweep::load(&opts.file)?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweeps").join(&sweep.name));
    let dir = SweepDir::new(&out)?;
    let bin = match &opts.bin {
        Some(b) => std::path::absolute(b).with_context(|| format!("--bin {}", b.display()))?,
        None => std::env::current_exe().context("finding the lvrnn executable")?,
    };
    if opts.dry_run {
        println!(
            "sweep {}: {} jobs ({} excluded) → {}",
            sweep.name,
            sweep.jobs.len(),
            sweep.excluded,
            dir.root.display()
        );
        if sweep.is_staged() {
            for st in &sweep.stages {
                let what = match st.kind {
                    spec::StageKind::Train => "train",
                    spec::StageKind::Eval => "eval",
                };
                let from = st
                    .from
                    .as_ref()
                    .map(|f| format!(", each after its job of stage `{f}`"))
                    .unwrap_or_default();
                println!("stage {}: {} {what} jobs{from}", st.name, st.jobs);
            }
        }
        for job in &sweep.jobs {
            println!("{}", job.name);
            if let Some(a) = &job.after {
                println!(
                    "    after {} (snapshot {}: update {}, {})",
                    a.job,
                    a.snapshot,
                    a.update,
                    dir.checkpoint(a).display()
                );
            }
            println!("    {}", layout::shell_line(&dir.command(&bin, job)));
        }
        return Ok(());
    }
    if !opts.emit.is_empty() {
        let [kind, to] = opts.emit.as_slice() else {
            bail!("--emit takes a kind and a folder, e.g. `--emit slurm cluster/`");
        };
        if kind != "slurm" {
            bail!("--emit `{kind}` is not supported; allowed values: slurm");
        }
        let files = slurm::emit(&sweep, &dir, std::path::Path::new(to), &bin)?;
        if sweep.is_staged() {
            println!(
                "sweep {}: {} jobs as {} Slurm arrays, one per stage; submit with `sh {}`",
                sweep.name,
                sweep.jobs.len(),
                sweep.stages.len(),
                files[0].display()
            );
        } else {
            println!(
                "sweep {}: {} jobs as a Slurm array; submit with `sbatch {}`",
                sweep.name,
                sweep.jobs.len(),
                files[0].display()
            );
        }
        for f in files {
            println!("  {}", f.display());
        }
        return Ok(());
    }
    let jobs = match opts.jobs {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    runner::run_local(
        &sweep,
        &dir,
        &runner::LocalOptions {
            jobs,
            bin,
            progress: true,
        },
    )
}
