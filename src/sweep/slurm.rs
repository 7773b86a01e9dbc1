//! `--emit slurm DIR`: the same sweep as a Slurm job array.
//!
//! Writes `DIR/jobs.txt` (one worker command per line, the same command `lvrnn sweep` runs
//! locally), `DIR/names.txt` (the job names, same order) and `DIR/sweep.sbatch`, a batch script
//! with `#SBATCH --array=0-(N-1)` and `--cpus-per-task=1` whose task `i` runs line `i + 1` of
//! `jobs.txt` and then writes the job's `status/<name>.json` (atomically, via `mv`), so the
//! cluster fills in the same output folder as a local sweep and a local sweep started afterwards
//! only runs what is missing. Submit with `sbatch DIR/sweep.sbatch`; resubmitting it skips the
//! jobs already done, and requeued tasks continue from their checkpoints (`--resume`).

use super::layout::{SweepDir, shell_line, shell_quote};
use super::spec::Sweep;
use crate::util::write_atomic;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes the job configs into the sweep folder and the job list and batch script into `to`;
/// returns the files written in `to`.
pub fn emit(sweep: &Sweep, dir: &SweepDir, to: &Path, bin: &Path) -> Result<Vec<PathBuf>> {
    dir.write_job_configs(&sweep.jobs)?;
    for d in [dir.logs(), dir.status_dir()] {
        // Slurm does not create the folder of --output.
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let to = std::path::absolute(to).with_context(|| format!("resolving {}", to.display()))?;
    let mut jobs = String::new();
    let mut names = String::new();
    for job in &sweep.jobs {
        jobs.push_str(&shell_line(&dir.command(bin, job)));
        jobs.push('\n');
        names.push_str(&job.name);
        names.push('\n');
    }
    let (jobs_file, names_file, script_file) = (
        to.join("jobs.txt"),
        to.join("names.txt"),
        to.join("sweep.sbatch"),
    );
    write_atomic(&jobs_file, jobs.as_bytes())?;
    write_atomic(&names_file, names.as_bytes())?;
    let script = batch_script(sweep, dir, &jobs_file, &names_file);
    write_atomic(&script_file, script.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script_file, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", script_file.display()))?;
    }
    Ok(vec![script_file, jobs_file, names_file])
}

fn batch_script(sweep: &Sweep, dir: &SweepDir, jobs: &Path, names: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let n = sweep.jobs.len();
    format!(
        r#"#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --cpus-per-task=1
#SBATCH --output={logs}/slurm-%A_%a.out
# lvrnn sweep `{name}`: {n} jobs, one per array task. Written by `lvrnn sweep --emit slurm`.
# Task i runs line i+1 of {jobs_file} and records status/<job>.json in {root}.
set -u
line=$((SLURM_ARRAY_TASK_ID + 1))
cmd=$(sed -n "${{line}}p" {jobs})
job=$(sed -n "${{line}}p" {names})
status={status}/"$job".json
if [ -f "$status" ] && grep -q '"status": "done"' "$status"; then
  echo "job $job is already done"
  exit 0
fi
sh -c "$cmd"
rc=$?
if [ "$rc" -eq 0 ]; then outcome=done; else outcome=failed; fi
printf '{{\n  "job": "%s",\n  "status": "%s",\n  "exit_code": %d,\n  "runner": "slurm"\n}}\n' \
  "$job" "$outcome" "$rc" > "$status.tmp" && mv "$status.tmp" "$status"
exit "$rc"
"#,
        name = sweep.name,
        last = n - 1,
        logs = dir.logs().to_string_lossy(),
        jobs_file = jobs.display(),
        root = dir.root.display(),
        jobs = q(jobs),
        names = q(names),
        status = q(&dir.status_dir()),
    )
}
