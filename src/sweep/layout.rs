//! The sweep output folder: where each job's config, run, log and status live, the worker
//! command line, and the status markers (layout in the module doc of [`crate::sweep`]).

use super::spec::{Action, After, Job};
use crate::util::write_atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `<out>` of one sweep.
pub struct SweepDir {
    /// Absolute, so that the job commands work from any folder.
    pub root: PathBuf,
}

/// How a job ended, as recorded in `status/<name>.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Failed,
    /// Not run because the job it starts from failed or was skipped (`error` says which).
    Skipped,
}

/// `status/<name>.json`, written atomically after the worker exits (by `lvrnn sweep`, or by the
/// Slurm batch script with `runner = "slurm"` and only the first four fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: String,
    pub status: Outcome,
    pub exit_code: Option<i32>,
    pub runner: String,
    /// The attempt (1-based) this status belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    /// Failed jobs: why, and the last lines of the worker's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SweepDir {
    pub fn new(root: &Path) -> Result<Self> {
        let root = std::path::absolute(root)
            .with_context(|| format!("resolving the output folder {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn job_config(&self, name: &str) -> PathBuf {
        self.root.join("jobs").join(format!("{name}.toml"))
    }
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
    pub fn run(&self, name: &str) -> PathBuf {
        self.runs().join(name)
    }
    pub fn evals(&self) -> PathBuf {
        self.root.join("evals")
    }
    /// The `--out` folder of an eval job.
    pub fn eval(&self, name: &str) -> PathBuf {
        self.evals().join(name)
    }
    /// The parent checkpoint a dependent job starts from.
    pub fn checkpoint(&self, after: &After) -> PathBuf {
        self.run(&after.job).join("checkpoints").join(&after.file)
    }
    pub fn status_dir(&self) -> PathBuf {
        self.root.join("status")
    }
    pub fn status(&self, name: &str) -> PathBuf {
        self.status_dir().join(format!("{name}.json"))
    }
    /// The pid of the worker running the job (removed when it exits).
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.status_dir().join(format!("{name}.pid"))
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    /// One JSON line per worker start and end (`attempts.jsonl`).
    pub fn attempts(&self) -> PathBuf {
        self.root.join("attempts.jsonl")
    }
    /// Held (with the pid) by the `lvrnn sweep` process running this folder.
    pub fn lock(&self) -> PathBuf {
        self.root.join("sweep.lock")
    }

    /// The worker command of `job`. A train job: `BIN --threads 1 train --config
    /// <jobs/name.toml> --runs <runs> --name <name> --resume`, plus `--init-from <parent
    /// checkpoint>` for a dependent one (`--resume` also starts a fresh run, so the same line
    /// serves a first start, a restart and a cluster requeue; a resumed run continues from its
    /// own latest checkpoint, not the parent's). An eval job: `BIN --threads 1 eval --checkpoint
    /// <parent checkpoint> --posterior P… --out <evals/name>` (rewritten whole when run again), with
    /// the stage's `--tune-prior`, `--actions` and `--predictive`.
    pub fn command(&self, bin: &Path, job: &Job) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![bin.into(), "--threads".into(), "1".into()];
        match (&job.action, &job.after) {
            (
                Action::Eval {
                    posteriors,
                    tune_prior,
                    actions,
                    predictive,
                },
                Some(after),
            ) => {
                args.extend(["eval".into(), "--checkpoint".into()]);
                args.push(self.checkpoint(after).into());
                for p in posteriors {
                    args.extend(["--posterior".into(), p.into()]);
                }
                if *tune_prior {
                    args.push("--tune-prior".into());
                }
                if let Some(a) = actions {
                    args.extend(["--actions".into(), a.into()]);
                }
                if let Some(p) = predictive {
                    args.extend(["--predictive".into(), p.into()]);
                }
                args.extend(["--out".into(), self.eval(&job.name).into()]);
            }
            _ => {
                args.extend(["train".into(), "--config".into()]);
                args.push(self.job_config(&job.name).into());
                args.extend(["--runs".into(), self.runs().into()]);
                args.extend(["--name".into(), job.name.clone().into()]);
                args.push("--resume".into());
                if let Some(after) = &job.after {
                    args.extend(["--init-from".into(), self.checkpoint(after).into()]);
                }
            }
        }
        args
    }

    /// What `jobs/<name>.toml` holds: a train job's full config; for an eval job, the
    /// checkpoint and posteriors (a record, and what a restart compares).
    pub fn job_text(&self, job: &Job) -> Result<String> {
        match (&job.action, &job.after) {
            (
                Action::Eval {
                    posteriors,
                    tune_prior,
                    actions,
                    predictive,
                },
                Some(after),
            ) => {
                let mut t = toml::Table::new();
                t.insert("kind".into(), "eval".into());
                t.insert("after".into(), after.job.clone().into());
                t.insert(
                    "checkpoint".into(),
                    self.checkpoint(after).to_string_lossy().to_string().into(),
                );
                t.insert(
                    "posteriors".into(),
                    toml::Value::Array(posteriors.iter().map(|p| p.clone().into()).collect()),
                );
                if *tune_prior {
                    t.insert("tune_prior".into(), true.into());
                }
                if let Some(a) = actions {
                    t.insert("actions".into(), a.clone().into());
                }
                if let Some(p) = predictive {
                    t.insert("predictive".into(), p.clone().into());
                }
                toml::to_string(&t).context("serialising an eval job")
            }
            _ => job.config.to_toml(),
        }
    }

    /// Whether a job has left anything behind: its run or eval folder, or a status other than
    /// `skipped`.
    fn started(&self, name: &str) -> bool {
        self.run(name).exists()
            || self.eval(name).exists()
            || self
                .read_status(name)
                .map_or(true, |s| s.is_some_and(|s| s.status != Outcome::Skipped))
    }

    /// Writes `jobs/<name>.toml` for every job (atomically, only where it changed). A job that
    /// has already started with a different config is an error rather than a silent mix.
    pub fn write_job_configs(&self, jobs: &[Job]) -> Result<()> {
        for job in jobs {
            let path = self.job_config(&job.name);
            let text = self.job_text(job)?;
            let old = std::fs::read_to_string(&path).ok();
            if old.as_deref() == Some(text.as_str()) {
                continue;
            }
            if old.is_some() && self.started(&job.name) {
                bail!(
                    "job `{}` in {} was started with a different config ({}); use another --out, or delete {} and {} to run it again",
                    job.name,
                    self.root.display(),
                    path.display(),
                    if job.action == Action::Train {
                        self.run(&job.name)
                    } else {
                        self.eval(&job.name)
                    }
                    .display(),
                    self.status(&job.name).display()
                );
            }
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(())
    }

    /// The recorded status of a job, if any.
    pub fn read_status(&self, name: &str) -> Result<Option<JobStatus>> {
        let path = self.status(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn is_done(&self, name: &str) -> Result<bool> {
        Ok(self
            .read_status(name)?
            .is_some_and(|s| s.status == Outcome::Done))
    }
}

/// `s` quoted for a POSIX shell (unchanged when it needs no quoting).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command as one shell line.
pub fn shell_line(args: &[OsString]) -> String {
    args.iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}
