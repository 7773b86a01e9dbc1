//! `lvrnn sweep FILE.toml`: a grid of training runs — a base config, axes over any config keys,
//! and exclusion rules — run as worker processes on this machine (resumable), listed
//! (`--dry-run`), or written out as a Slurm job array (`--emit slurm DIR`).
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
//! see README "Configuration files"); `model.posterior` takes posterior SPEC strings. A job is
//! named by its axis values in file order, `short=value` joined by commas with the short key the
//! last part of the dotted key, e.g. `posterior=laplace-sigma-k1-full,lr=0.001,seed=3`. Unknown
//! keys, empty axes and values a config rejects are errors before anything runs.
//!
//! # The output folder
//! ```text
//! <out>/jobs/<job>.toml      the job's full config (its `name` is the job name)
//!       runs/<job>/…         the run folder of `lvrnn train` (checkpoints, metrics, figures)
//!       logs/<job>.log       the worker's output, every attempt appended
//!       status/<job>.json    written after the worker exits: done / failed (+ error tail)
//!       status/<job>.pid     while a worker runs
//!       attempts.jsonl       one line per worker start and end
//!       sweep.lock           while a sweep runs here
//! ```
//! Every job runs `lvrnn --threads 1 train --config <out>/jobs/<job>.toml --runs <out>/runs
//! --name <job> --resume`, locally ([`runner`]) or as a Slurm array task ([`slurm`]).
//!
//! Not yet supported: jobs that start from another job's snapshot (`train --init-from`) and so
//! must wait for it.

pub mod layout;
pub mod runner;
pub mod slurm;
pub mod spec;

pub use layout::{JobStatus, Outcome, SweepDir};
pub use spec::{Axis, Job, Sweep};

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
        for job in &sweep.jobs {
            println!("{}", job.name);
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
        println!(
            "sweep {}: {} jobs as a Slurm array; submit with `sbatch {}`",
            sweep.name,
            sweep.jobs.len(),
            files[0].display()
        );
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
