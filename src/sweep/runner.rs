//! Running a sweep on this machine: at most `--jobs` worker processes at once, one overall
//! progress bar, and a restart that finishes only what is missing.
//!
//! Each worker is `lvrnn --threads 1 train … --resume` (the current executable) with its output
//! appended to `logs/<name>.log`. When it exits, `status/<name>.json` is written atomically:
//! `done` (exit 0) or `failed` (with the exit code and the tail of its output). A restart skips
//! `done` jobs and runs every other one with `--resume`, which continues from the run's latest
//! checkpoint; failed jobs are retried.
//!
//! Dependencies. A job with a parent (`after`: it starts from the parent's checkpoint) waits
//! until the parent is done, this time or before. When the parent fails (or is itself skipped)
//! the job is not run: its status is `skipped` with the reason, and unrelated jobs go on. A
//! restart treats skipped jobs like failed ones: the parent is retried, then its dependants run.
//! An eval job writes its `evals/<job>` folder whole each time it runs, so a killed one simply
//! runs again.
//!
//! Orphans. A sweep killed with SIGKILL cannot stop its workers, so on Linux (glibc) each worker
//! asks the kernel to SIGKILL it when the sweep dies (`prctl(PR_SET_PDEATHSIG)`, set between fork
//! and exec, with a check that the sweep had not already died). As a second line of defence the
//! worker's pid is kept in `status/<name>.pid` while it runs; a restarted sweep that finds a live
//! process with that pid and the job's name on its command line waits for it to exit before
//! starting the job again, so a job never runs twice at once. A `sweep.lock` with the sweep's
//! pid keeps two sweeps off one folder. Both checks read `/proc`; where there is none (not
//! Linux) a pid file or lock is taken to be stale, and neither safeguard applies.
//!
//! Signals. SIGINT (Ctrl-C) or SIGTERM (Slurm at a time limit, `kill`) to the sweep stops it
//! cleanly: no waiting job starts, each running worker gets the same signal (a training worker
//! stops after its current update with its checkpoint written and exits 130 / 143; an eval
//! worker ends at once), the sweep waits for them and writes their status (`failed`, with the
//! exit code and the worker's message), and exits with 128 + the signal. No job is left marked
//! as running: a status is only ever `done`, `failed` or `skipped`, and a job without one is
//! simply not done. Running the sweep again resumes every job that is not done.
//!
//! One window remains: a sweep killed after a worker exited 0 but before the `done` status was
//! written runs that job once more; `--resume` then starts at the final update, writes the same
//! final checkpoint again and re-evaluates.

use super::layout::{JobStatus, Outcome, SweepDir, shell_line};
use super::spec::{Job, Sweep};
use crate::util::{
    JsonlAppender, PidLock, alive_with, read_jsonl, write_atomic, write_json_atomic,
};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines of a failed worker's output kept in its status.
const TAIL_LINES: usize = 20;
/// How often the scheduler looks at its workers.
const POLL: Duration = Duration::from_millis(100);

pub struct LocalOptions {
    /// Worker processes at once.
    pub jobs: usize,
    /// The lvrnn binary the workers run.
    pub bin: PathBuf,
    /// Show the progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// One line of `attempts.jsonl`.
#[derive(Serialize, Deserialize)]
pub struct Event {
    pub job: String,
    /// `start`, `done` or `failed`.
    pub event: String,
    pub attempt: u32,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub unix_time: u64,
}

struct Running<'a> {
    job: &'a Job,
    child: Child,
    attempt: u32,
    log_start: u64,
    started: Instant,
}

/// Runs every job of `sweep` that is not done yet; fails at the end if any job failed.
pub fn run_local(sweep: &Sweep, dir: &SweepDir, opts: &LocalOptions) -> Result<()> {
    if opts.jobs == 0 {
        bail!("--jobs must be a positive integer");
    }
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("creating {}", dir.root.display()))?;
    let _lock = PidLock::acquire(&dir.lock(), "sweep", |pid, path| {
        format!(
            "another `lvrnn sweep` (pid {pid}) is running in this folder ({}); wait for it to finish or stop it",
            path.display()
        )
    })?;
    dir.write_job_configs(&sweep.jobs)?;
    for d in [dir.runs(), dir.status_dir(), dir.logs()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }

    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    if dir.attempts().exists() {
        for e in read_jsonl::<Event>(&dir.attempts())? {
            if e.event == "start" {
                *attempts.entry(e.job).or_default() += 1;
            }
        }
    }
    // Where each job stands in this sweep: done before or now, failed, or skipped now.
    let mut state: BTreeMap<&str, Outcome> = BTreeMap::new();
    let mut pending: Vec<&Job> = vec![];
    for job in &sweep.jobs {
        if dir.is_done(&job.name)? {
            state.insert(&job.name, Outcome::Done);
        } else {
            wait_for_orphan(dir, &job.name)?;
            pending.push(job);
        }
    }
    let total = sweep.jobs.len();
    let done_before = total - pending.len();
    let mut log = JsonlAppender::open(&dir.attempts())?;
    let bar = progress_bar(opts.progress, total, done_before, &sweep.name);
    let waiting = pending.iter().filter(|j| j.after.is_some()).count();
    say(
        &bar,
        format!(
            "sweep {}: {total} jobs, {done_before} already done, {} to run with {} workers{} → {}",
            sweep.name,
            pending.len(),
            opts.jobs.min(pending.len().max(1)),
            if waiting > 0 {
                format!(" ({waiting} of them after the job they start from)")
            } else {
                String::new()
            },
            dir.root.display()
        ),
    );

    let mut running: Vec<Running> = vec![];
    let mut failed: Vec<(String, String)> = vec![];
    let mut skipped: Vec<(String, String)> = vec![];
    let mut done_now = 0;
    // SIGINT / SIGTERM: no new job starts, the running workers get the signal (they stop at
    // their next safe point with the checkpoint written), their statuses are written as they
    // exit, and the sweep ends with 128 + the signal.
    let _signals = crate::train::interrupt::StopOnSignal::install()
        .context("installing the SIGINT/SIGTERM handlers")?;
    let mut forwarded = None;
    loop {
        let signal = crate::train::interrupt::requested();
        if let Some(sig) = signal
            && forwarded.is_none()
        {
            forwarded = Some(sig);
            say(
                &bar,
                format!(
                    "{}: stopping; {} running jobs finish their update and write a checkpoint, {} waiting jobs are not started",
                    crate::train::interrupt::signal_name(sig),
                    running.len(),
                    pending.len()
                ),
            );
            for r in &running {
                forward(&r.child, sig);
            }
        }
        // Dependants of failed or skipped jobs are skipped (in order, so a chain goes at once);
        // the others start, in file order, once their parent is done and a worker is free.
        let mut i = 0;
        while i < pending.len() && signal.is_none() {
            let job = pending[i];
            let parent = job
                .after
                .as_ref()
                .map(|a| (a, state.get(a.job.as_str()).copied()));
            match parent {
                Some((a, Some(why @ (Outcome::Failed | Outcome::Skipped)))) => {
                    pending.remove(i);
                    let reason = format!(
                        "not run: it starts from job `{}`, which {} (see {})",
                        a.job,
                        if why == Outcome::Failed {
                            "failed"
                        } else {
                            "was skipped"
                        },
                        dir.status(&a.job).display()
                    );
                    write_json_atomic(
                        &dir.status(&job.name),
                        &JobStatus {
                            job: job.name.clone(),
                            status: Outcome::Skipped,
                            exit_code: None,
                            runner: "local".into(),
                            attempt: None,
                            wall_seconds: None,
                            error: Some(reason.clone()),
                        },
                    )?;
                    state.insert(&job.name, Outcome::Skipped);
                    say(&bar, format!("SKIPPED {} ({reason})", job.name));
                    skipped.push((job.name.clone(), reason));
                }
                Some((_, None)) => i += 1,
                _ if running.len() < opts.jobs => {
                    pending.remove(i);
                    let attempt = attempts.get(&job.name).copied().unwrap_or(0) + 1;
                    let r = spawn(dir, &opts.bin, job, attempt)?;
                    log.write(&event(&job.name, "start", attempt, r.child.id(), None))?;
                    running.push(r);
                }
                _ => i += 1,
            }
        }
        if running.is_empty() {
            if let Some(sig) = signal {
                bar.finish_and_clear();
                return Err(crate::train::interrupt::Interrupted {
                    signal: sig,
                    message: format!(
                        "sweep {} interrupted by {}: {} jobs done ({done_now} this time), {} stopped or failed (their runs keep their latest checkpoint), {} not started; status in {}. Run the same `lvrnn sweep` command again to go on: it resumes every job that is not done",
                        sweep.name,
                        crate::train::interrupt::signal_name(sig),
                        total - failed.len() - skipped.len() - pending.len(),
                        failed.len(),
                        pending.len(),
                        dir.status_dir().display()
                    ),
                }
                .into());
            }
            if let Some(job) = pending.first() {
                bail!(
                    "job `{}` waits for a job that is neither done nor in this sweep (a bug in the sweep's order)",
                    job.name
                );
            }
            break;
        }
        bar.set_message(format!(
            "{} running, {} waiting, {} failed, {} skipped",
            running.len(),
            pending.len(),
            failed.len(),
            skipped.len()
        ));
        std::thread::sleep(POLL);
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let r = running.swap_remove(i);
            let wall = r.started.elapsed().as_secs_f64();
            let (outcome, error) = if status.success() {
                (Outcome::Done, None)
            } else {
                let tail = log_tail(&dir.log(&r.job.name), r.log_start)?;
                (
                    Outcome::Failed,
                    Some(format!("worker {}\n{tail}", exit_text(&status))),
                )
            };
            write_json_atomic(
                &dir.status(&r.job.name),
                &JobStatus {
                    job: r.job.name.clone(),
                    status: outcome,
                    exit_code: status.code(),
                    runner: "local".into(),
                    attempt: Some(r.attempt),
                    wall_seconds: Some(wall),
                    error: error.clone(),
                },
            )?;
            state.insert(&r.job.name, outcome);
            let _ = std::fs::remove_file(dir.pid_file(&r.job.name));
            let name = if outcome == Outcome::Done {
                "done"
            } else {
                "failed"
            };
            log.write(&event(
                &r.job.name,
                name,
                r.attempt,
                r.child.id(),
                status.code(),
            ))?;
            match error {
                None => {
                    done_now += 1;
                    bar.inc(1);
                    say(&bar, format!("done    {} ({wall:.1} s)", r.job.name));
                }
                Some(e) => {
                    // A worker stopped by a signal ends with its resume command: show why.
                    let last = e
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("interrupted by"))
                        .or(e.lines().last())
                        .unwrap_or("")
                        .to_string();
                    say(
                        &bar,
                        format!("FAILED  {} ({}): {last}", r.job.name, exit_text(&status)),
                    );
                    failed.push((r.job.name.clone(), last));
                }
            }
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "sweep {}: {} of {total} jobs done ({done_now} this time), {} failed, {} skipped; runs in {}",
        sweep.name,
        total - failed.len() - skipped.len(),
        failed.len(),
        skipped.len(),
        dir.runs().display()
    );
    if !failed.is_empty() || !skipped.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .chain(&skipped)
            .map(|(n, why)| format!("  {n}: {why}"))
            .collect();
        bail!(
            "{} of {total} jobs failed{} (status in {}, output in {}; run the sweep again to retry them):\n{}",
            failed.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(
                    " and {} were skipped because a job they start from failed",
                    skipped.len()
                )
            },
            dir.status_dir().display(),
            dir.logs().display(),
            list.join("\n")
        );
    }
    Ok(())
}

/// Starts the worker of `job`, its output appended to the job's log.
fn spawn<'a>(dir: &SweepDir, bin: &Path, job: &'a Job, attempt: u32) -> Result<Running<'a>> {
    let args = dir.command(bin, job);
    let path = dir.log(&job.name);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let log_start = out.seek(SeekFrom::End(0))?;
    writeln!(
        out,
        "=== attempt {attempt} at unix time {}: {}",
        unix_now(),
        shell_line(&args)
    )?;
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    write_atomic(
        &dir.pid_file(&job.name),
        format!("{}\n", child.id()).as_bytes(),
    )?;
    Ok(Running {
        job,
        child,
        attempt,
        log_start,
        started: Instant::now(),
    })
}

/// Sends `signal` to a worker (best effort: it may have exited already).
fn forward(child: &Child, signal: i32) {
    #[cfg(unix)]
    // SAFETY: kill(2) on the pid of a child this process has not waited for yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    #[cfg(not(unix))]
    let _ = (child, signal);
}

/// Linux (glibc): the kernel SIGKILLs the worker when the thread that spawned it — the sweep's
/// main thread, which lives as long as the sweep — dies.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The sweep died before prctl took effect: do not run as an orphan.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn die_with_parent(_cmd: &mut Command) {}

/// Waits until a worker of `name` left behind by an earlier sweep (its pid in the job's pid
/// file) has exited, then removes the pid file.
fn wait_for_orphan(dir: &SweepDir, name: &str) -> Result<()> {
    let path = dir.pid_file(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    if let Ok(pid) = text.trim().parse::<u32>() {
        let mut told = false;
        while alive_with(pid, name) {
            if !told {
                eprintln!(
                    "waiting for the worker of `{name}` (pid {pid}) left by an earlier sweep to exit"
                );
                told = true;
            }
            std::thread::sleep(POLL);
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// The last lines the worker wrote since byte `start` of its log.
fn log_tail(path: &Path, start: u64) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = vec![];
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok(lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"))
}

fn exit_text(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => "no exit code".into(),
    }
}

fn event(job: &str, event: &str, attempt: u32, pid: u32, exit_code: Option<i32>) -> Event {
    Event {
        job: job.into(),
        event: event.into(),
        attempt,
        pid,
        exit_code,
        unix_time: unix_now(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn progress_bar(show: bool, total: usize, done: usize, name: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = crate::util::progress_bar(total, done, name, "done");
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_secs(1));
    bar
}

/// A line above the bar (or on stderr when the bar is hidden, e.g. not a terminal).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}
