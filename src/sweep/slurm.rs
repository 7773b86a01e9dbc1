//! `--emit slurm DIR`: the same sweep as Slurm job arrays.
//!
//! A sweep without stages becomes one array: `DIR/jobs.txt` (one worker command per line, the
//! same command `lvrnn sweep` runs locally), `DIR/names.txt` (the job names, same order) and
//! `DIR/sweep.sbatch`, a batch script with `#SBATCH --array=0-(N-1)` and `--cpus-per-task=1`
//! whose task `i` runs line `i + 1` of `jobs.txt` and then writes the job's
//! `status/<name>.json` (atomically, via `mv`), so the cluster fills in the same output folder
//! as a local sweep and a local sweep started afterwards only runs what is missing. Submit with
//! `sbatch DIR/sweep.sbatch`; resubmitting it skips the jobs already done, and requeued tasks
//! continue from their checkpoints (`--resume`).
//!
//! A staged sweep becomes one array per stage — `DIR/<stage>.sbatch`, `<stage>.jobs.txt`,
//! `<stage>.names.txt`, and for a stage with `from`, `<stage>.parents.txt` (each task's parent
//! job) — and `DIR/submit.sh`, which submits the arrays in file order, each dependent one with
//! `--dependency=afterany:<the array of its from-stage>`. `afterany` rather than `afterok`:
//! with `afterok` one failed pretraining task would hold back every finetuning task, and
//! `aftercorr` pairs tasks by index, which a stage that fans out (several snapshots and
//! variants per parent) does not have. Instead each dependent task checks its own parent's
//! `status/<parent>.json`: when the parent is not done it records `skipped` with the reason and
//! exits 1, as a local sweep does; unrelated tasks go on.

use super::layout::{SweepDir, shell_line, shell_quote};
use super::spec::{Job, Sweep};
use crate::util::write_atomic;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes the job configs into the sweep folder and the job lists and batch scripts into `to`;
/// returns the files written in `to`, the one to submit first.
pub fn emit(sweep: &Sweep, dir: &SweepDir, to: &Path, bin: &Path) -> Result<Vec<PathBuf>> {
    dir.write_job_configs(&sweep.jobs)?;
    for d in [dir.logs(), dir.status_dir()] {
        // Slurm does not create the folder of --output.
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let to = std::path::absolute(to).with_context(|| format!("resolving {}", to.display()))?;
    if !sweep.is_staged() {
        let jobs: Vec<&Job> = sweep.jobs.iter().collect();
        let files = array(dir, &to, "", &sweep.name, &jobs, bin)?;
        return Ok(files);
    }
    let mut submit = format!(
        "#!/bin/sh\n# lvrnn sweep `{name}`: one Slurm array per stage. Written by `lvrnn sweep --emit slurm`.\n\
         # A stage that starts from another waits for that stage's whole array to end\n\
         # (--dependency=afterany); each of its tasks then checks its own parent job's status and\n\
         # records `skipped` when the parent is not done.\nset -e\n",
        name = sweep.name
    );
    let mut files = vec![];
    for (i, stage) in sweep.stages.iter().enumerate() {
        let jobs: Vec<&Job> = sweep.stage_jobs(&stage.name).collect();
        let title = format!("{}.{}", sweep.name, stage.name);
        let written = array(dir, &to, &format!("{}.", stage.name), &title, &jobs, bin)?;
        let dependency = match &stage.from {
            Some(from) => {
                let p = sweep
                    .stages
                    .iter()
                    .position(|s| &s.name == from)
                    .context("a stage's `from` is an earlier stage")?;
                format!("--dependency=afterany:$jid{p} ")
            }
            None => String::new(),
        };
        submit.push_str(&format!(
            "jid{i}=$(sbatch --parsable {dependency}{script})\njid{i}=${{jid{i}%%;*}}\necho \"stage {name}: {n} tasks, Slurm job $jid{i}\"\n",
            script = shell_quote(&written[0].to_string_lossy()),
            name = stage.name,
            n = jobs.len(),
        ));
        files.extend(written);
    }
    let submit_file = to.join("submit.sh");
    write_atomic(&submit_file, submit.as_bytes())?;
    executable(&submit_file)?;
    files.insert(0, submit_file);
    Ok(files)
}

/// One array: `<prefix>jobs.txt`, `<prefix>names.txt`, `<prefix>parents.txt` (jobs with a
/// parent) and the batch script (`sweep.sbatch` without a prefix, else `<prefix>sbatch`).
fn array(
    dir: &SweepDir,
    to: &Path,
    prefix: &str,
    title: &str,
    jobs: &[&Job],
    bin: &Path,
) -> Result<Vec<PathBuf>> {
    let mut lines = String::new();
    let mut names = String::new();
    let mut parents = String::new();
    for job in jobs {
        lines.push_str(&shell_line(&dir.command(bin, job)));
        lines.push('\n');
        names.push_str(&job.name);
        names.push('\n');
        if let Some(a) = &job.after {
            parents.push_str(&a.job);
        }
        parents.push('\n');
    }
    let jobs_file = to.join(format!("{prefix}jobs.txt"));
    let names_file = to.join(format!("{prefix}names.txt"));
    let script_file = if prefix.is_empty() {
        to.join("sweep.sbatch")
    } else {
        to.join(format!("{prefix}sbatch"))
    };
    write_atomic(&jobs_file, lines.as_bytes())?;
    write_atomic(&names_file, names.as_bytes())?;
    let mut files = vec![script_file.clone(), jobs_file.clone(), names_file.clone()];
    let parents_file = if jobs.iter().any(|j| j.after.is_some()) {
        let f = to.join(format!("{prefix}parents.txt"));
        write_atomic(&f, parents.as_bytes())?;
        files.push(f.clone());
        Some(f)
    } else {
        None
    };
    let script = batch_script(
        title,
        jobs.len(),
        dir,
        &jobs_file,
        &names_file,
        parents_file.as_deref(),
    );
    write_atomic(&script_file, script.as_bytes())?;
    executable(&script_file)?;
    Ok(files)
}

fn executable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    let _ = path;
    Ok(())
}

fn batch_script(
    name: &str,
    n: usize,
    dir: &SweepDir,
    jobs: &Path,
    names: &Path,
    parents: Option<&Path>,
) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let guard = match parents {
        None => String::new(),
        Some(parents) => format!(
            r#"parent=$(sed -n "${{line}}p" {parents})
if [ -n "$parent" ] && ! grep -qs '"status": "done"' {status}/"$parent".json; then
  echo "job $job not run: it starts from job $parent, which is not done"
  printf '{{\n  "job": "%s",\n  "status": "skipped",\n  "exit_code": null,\n  "runner": "slurm",\n  "error": "not run: it starts from job `%s`, which is not done"\n}}\n' \
    "$job" "$parent" > "$status.tmp" && mv "$status.tmp" "$status"
  exit 1
fi
"#,
            parents = q(parents),
            status = q(&dir.status_dir()),
        ),
    };
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
{guard}sh -c "$cmd"
rc=$?
if [ "$rc" -eq 0 ]; then outcome=done; else outcome=failed; fi
printf '{{\n  "job": "%s",\n  "status": "%s",\n  "exit_code": %d,\n  "runner": "slurm"\n}}\n' \
  "$job" "$outcome" "$rc" > "$status.tmp" && mv "$status.tmp" "$status"
exit "$rc"
"#,
        last = n - 1,
        logs = dir.logs().to_string_lossy(),
        jobs_file = jobs.display(),
        root = dir.root.display(),
        jobs = q(jobs),
        names = q(names),
        status = q(&dir.status_dir()),
    )
}
