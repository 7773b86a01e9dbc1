//! `lvrnn sweep` end to end on tiny regression runs: a sweep killed with SIGKILL and started
//! again finishes every job exactly once; the emitted Slurm array runs a job from its command
//! line; bad sweep files get errors naming the key and the allowed values.

use lvrnn::run::load_checkpoint;
use lvrnn::sweep::Sweep;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_lvrnn");

/// Updates per job of the tiny config.
const UPDATES: u64 = 100;

/// A tiny regression config: a hundred updates of a 16-unit model (about half a second on one
/// thread), checkpoints every 5.
const BASE: &str = r#"
name = "base"
task = "regression"
seed = 0
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 100
batch = 8
seq_len = 10
checkpoint_every = 5
snapshots = []
[eval]
tasks = 8
points = [0, 1, 5]
grid = 8
samples = 4
example_points = 3
"#;

/// 2 posteriors × 2 learning rates × 2 seeds = 8 jobs.
const SWEEP: &str = r#"
name = "tiny"
base = "base.toml"
[axes]
"model.posterior" = ["rnn", "laplace:window=1,accumulate=sigma"]
"train.lr" = [1e-3, 3e-3]
seed = { range = [0, 2] }
"#;

fn lvrnn(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(["--threads", "1"])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup(sweep: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    std::fs::write(dir.path().join("s.toml"), sweep).unwrap();
    dir
}

fn is_done(out: &Path, job: &str) -> bool {
    std::fs::read_to_string(out.join("status").join(format!("{job}.json")))
        .is_ok_and(|s| s.contains("\"status\": \"done\""))
}

/// A job that has a resumable checkpoint part-way through and a live worker.
fn interrupted_job(out: &Path, jobs: &[String]) -> Option<String> {
    jobs.iter()
        .find(|j| {
            let latest = out
                .join("runs")
                .join(j)
                .join("checkpoints/latest.safetensors");
            !is_done(out, j)
                && out.join("status").join(format!("{j}.pid")).exists()
                && latest.exists()
                && load_checkpoint(&latest)
                    .is_ok_and(|c| c.update > 0 && c.update < UPDATES as usize)
        })
        .cloned()
}

fn fingerprint(path: &Path) -> (Vec<u8>, SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

fn events(out: &Path) -> Vec<serde_json::Value> {
    lvrnn::util::read_jsonl(&out.join("attempts.jsonl")).unwrap()
}

fn count(events: &[serde_json::Value], job: &str, kind: &str) -> usize {
    events
        .iter()
        .filter(|e| e["job"] == job && e["event"] == kind)
        .count()
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
    })
}

#[test]
fn a_sweep_killed_mid_way_and_restarted_finishes_every_job_exactly_once() {
    let dir = setup(SWEEP);
    let d = dir.path();
    let out = d.join("out");
    let sweep = Sweep::load(&d.join("s.toml")).unwrap();
    let jobs: Vec<String> = sweep.jobs.iter().map(|j| j.name.clone()).collect();
    assert_eq!(jobs.len(), 8);

    let mut child = Command::new(BIN)
        .args([
            "--threads",
            "1",
            "sweep",
            "s.toml",
            "--out",
            "out",
            "--jobs",
            "2",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // While it runs, a second sweep on the same folder is refused.
    let t0 = Instant::now();
    while !out.join("sweep.lock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no sweep.lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = lvrnn(&["sweep", "s.toml", "--out", "out"], d);
    assert!(
        !o.status.success() && text(&o).contains("another `lvrnn sweep`"),
        "{}",
        text(&o)
    );
    // Kill once a job has finished and another is part-way through its updates.
    let interrupted = loop {
        let done = jobs.iter().filter(|j| is_done(&out, j)).count();
        if done >= 1
            && let Some(j) = interrupted_job(&out, &jobs)
        {
            break j;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it could be interrupted"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "sweep too slow");
        std::thread::sleep(Duration::from_millis(10));
    };
    let orphan: u32 = std::fs::read_to_string(out.join(format!("status/{interrupted}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The killed sweep's workers die with it (PR_SET_PDEATHSIG).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = Instant::now();
        while process_alive(orphan) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(orphan), "worker {orphan} outlived the sweep");
    }
    let _ = orphan;

    let finished_before: Vec<String> = jobs.iter().filter(|j| is_done(&out, j)).cloned().collect();
    assert!(!finished_before.is_empty() && finished_before.len() < jobs.len());
    let files = |j: &str| {
        let run = out.join("runs").join(j);
        [
            out.join(format!("status/{j}.json")),
            run.join("checkpoints/model-final.safetensors"),
            run.join("checkpoints/latest.safetensors"),
            run.join("metrics/train.jsonl"),
            run.join("metrics/eval.csv"),
        ]
    };
    let before: BTreeMap<PathBuf, _> = finished_before
        .iter()
        .flat_map(|j| files(j))
        .map(|p| (p.clone(), fingerprint(&p)))
        .collect();

    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(o.status.success(), "{}", text(&o));

    // Finished jobs were neither re-run nor rewritten.
    for (path, fp) in &before {
        assert!(fingerprint(path) == *fp, "{} was rewritten", path.display());
    }
    let ev = events(&out);
    for j in &jobs {
        assert!(is_done(&out, j), "{j} not done: {}", text(&o));
        assert_eq!(count(&ev, j, "done"), 1, "{j} finished more than once");
        assert_eq!(count(&ev, j, "failed"), 0, "{j} failed");
        if finished_before.contains(j) {
            assert_eq!(count(&ev, j, "start"), 1, "{j} was started again");
        }
        // Consistent checkpoints and metrics: one row per update, the final state at the end.
        let run = out.join("runs").join(j);
        let rows: Vec<serde_json::Value> =
            lvrnn::util::read_jsonl(&run.join("metrics/train.jsonl")).unwrap();
        let updates: Vec<u64> = rows.iter().map(|r| r["update"].as_u64().unwrap()).collect();
        assert_eq!(updates, (1..=UPDATES).collect::<Vec<_>>(), "{j}");
        for ck in ["latest", "model-final"] {
            let c = load_checkpoint(&run.join(format!("checkpoints/{ck}.safetensors"))).unwrap();
            assert_eq!(
                (c.update as u64, c.config.name.as_str()),
                (UPDATES, j.as_str())
            );
        }
        assert!(run.join("metrics/eval.csv").exists(), "{j}");
        assert!(!out.join(format!("status/{j}.pid")).exists(), "{j}");
    }
    // The interrupted job ran twice, the second time from its checkpoint.
    assert_eq!(count(&ev, &interrupted, "start"), 2, "{interrupted}");
    let log = std::fs::read_to_string(out.join(format!("logs/{interrupted}.log"))).unwrap();
    assert_eq!(log.matches("=== attempt").count(), 2, "{log}");
    assert!(!out.join("sweep.lock").exists());

    // A third start has nothing to do.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out"], d);
    assert!(
        o.status.success() && text(&o).contains("8 already done, 0 to run"),
        "{}",
        text(&o)
    );
    assert_eq!(events(&out).len(), ev.len());
}

#[test]
fn the_slurm_array_has_one_task_per_job_and_a_job_line_trains_that_job() {
    let sweep = r#"
name = "tiny-slurm"
base = "base.toml"
[set]
"train.updates" = 4
[axes]
"train.lr" = [1e-3, 3e-3]
seed = [0, 1, 2]
[[exclude]]
"train.lr" = 3e-3
seed = 2
"#;
    let dir = setup(sweep);
    let d = dir.path();
    let o = lvrnn(
        &[
            "sweep", "s.toml", "--out", "out", "--emit", "slurm", "cluster",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let script = std::fs::read_to_string(d.join("cluster/sweep.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=0-4\n"), "{script}");
    assert!(script.contains("#SBATCH --cpus-per-task=1\n"), "{script}");
    let lines: Vec<String> = std::fs::read_to_string(d.join("cluster/jobs.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let names: Vec<String> = std::fs::read_to_string(d.join("cluster/names.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(names[1], "lr=0.001,seed=1");
    assert!(!names.contains(&"lr=0.003,seed=2".to_string()));
    assert!(
        lines[1].starts_with(BIN) && lines[1].contains(" --threads 1 train --config "),
        "{}",
        lines[1]
    );

    // Line 2, run as is from another folder, trains job 1 into the sweep's runs folder.
    let o = Command::new("sh")
        .args(["-c", &lines[1]])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let run = d.join("out/runs").join(&names[1]);
    let c = load_checkpoint(&run.join("checkpoints/model-final.safetensors")).unwrap();
    assert_eq!((c.update, c.config.seed, c.config.train.lr), (4, 1, 1e-3));

    // The batch script itself, as array task 0: trains job 0 and records it as done.
    let o = Command::new("bash")
        .arg(d.join("cluster/sweep.sbatch"))
        .env("SLURM_ARRAY_TASK_ID", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_done(&d.join("out"), &names[0]));
    assert!(
        d.join("out/runs")
            .join(&names[0])
            .join("checkpoints/model-final.safetensors")
            .exists()
    );
    // … and a local dry run still lists all five.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--dry-run"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("5 jobs (1 excluded)"), "{}", text(&o));
}

#[test]
fn the_grid_expands_in_file_order_with_stable_names_and_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    let text = SWEEP.replace("3e-3", "3e-4");
    let s = Sweep::from_toml_str(&text, "s.toml", dir.path()).unwrap();
    let names: Vec<&str> = s.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], "posterior=rnn,lr=0.001,seed=0");
    assert_eq!(names[1], "posterior=rnn,lr=0.001,seed=1");
    assert_eq!(names[7], "posterior=laplace-sigma-k1-full,lr=0.0003,seed=1");
    let last = &s.jobs[7].config;
    assert_eq!(
        (last.train.lr, last.seed, last.name.as_str()),
        (3e-4, 1, names[7])
    );
    assert_eq!(
        (last.train.updates as u64, last.model.hidden),
        (UPDATES, 16)
    );
    assert_eq!(last.model.posterior.label(), "laplace-sigma-k1-full");

    // [set] keys inside a table an axis sets apply to each of its values.
    let with_jitter = text
        .replace("[axes]", "[set]\n\"model.posterior.jitter\" = 0.5\n[axes]")
        .replace("\"rnn\", ", "");
    let s = Sweep::from_toml_str(&with_jitter, "s.toml", dir.path()).unwrap();
    let lvrnn::posterior::PosteriorConfig::Laplace(p) = &s.jobs[0].config.model.posterior else {
        panic!("not laplace")
    };
    assert_eq!((s.jobs.len(), p.jitter), (4, 0.5));

    // A SPEC in a rule matches the same posterior written differently.
    let text = format!(
        "{text}[[exclude]]\n\"model.posterior\" = \"laplace:window=1\"\n\"train.lr\" = 3e-4\n"
    );
    let s = Sweep::from_toml_str(&text, "s.toml", dir.path()).unwrap();
    assert_eq!((s.jobs.len(), s.excluded), (6, 2));
    assert!(s.jobs.iter().all(|j| !j.name.contains("full,lr=0.0003")));
}

#[test]
fn a_failed_job_is_recorded_and_does_not_stop_the_others() {
    let sweep = "name = \"f\"\nbase = \"base.toml\"\n[set]\n\"train.updates\" = 4\n[axes]\nseed = [0, 1, 2]\n";
    let dir = setup(sweep);
    let d = dir.path();
    // A worker binary that fails for seed 1 and is lvrnn otherwise.
    let wrapper = d.join("flaky.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \"$*\" in *seed=1*) echo 'boom: no such luck' >&2; exit 3;; esac\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = lvrnn(
        &[
            "sweep", "s.toml", "--out", "out", "--jobs", "2", "--bin", "flaky.sh",
        ],
        d,
    );
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(
        all.contains("1 of 3 jobs failed") && all.contains("seed=1: boom"),
        "{all}"
    );
    let out = d.join("out");
    assert!(is_done(&out, "seed=0") && is_done(&out, "seed=2"), "{all}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("status/seed=1.json")).unwrap())
            .unwrap();
    assert_eq!(
        (status["status"].as_str(), status["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("boom: no such luck"),
        "{status}"
    );

    // Started again (with the real binary), only the failed job runs.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(
        o.status.success() && text(&o).contains("2 already done, 1 to run"),
        "{}",
        text(&o)
    );
    assert!(is_done(&out, "seed=1"));
    let ev = events(&out);
    assert_eq!(
        (count(&ev, "seed=0", "start"), count(&ev, "seed=1", "start")),
        (1, 2)
    );
}

#[test]
fn every_shipped_sweep_file_expands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sweeps");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Sweep::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(!s.jobs.is_empty());
            n += 1;
        }
    }
    assert!(n > 0);
    let s = Sweep::load(&dir.join("bandit-small.toml")).unwrap();
    assert_eq!((s.jobs.len(), s.excluded), (20, 4));
    assert_eq!(s.jobs[0].name, "posterior=rnn,lr=0.001,seed=0");
    assert_eq!(s.jobs[0].config.train.updates, 2000);
}

fn error(sweep: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    format!(
        "{:#}",
        Sweep::from_toml_str(sweep, "s.toml", dir.path()).unwrap_err()
    )
}

#[test]
fn bad_sweep_files_name_the_key_and_the_allowed_values() {
    let head = "name = \"x\"\nbase = \"base.toml\"\n";
    let e = error(&format!("{head}colour = 1\n[axes]\nseed = [0]\n"));
    assert!(
        e.contains("colour") && e.contains("axes") && e.contains("exclude"),
        "{e}"
    );
    let e = error(&format!("{head}[axes]\n\"train.lr\" = []\n"));
    assert!(e.contains("train.lr") && e.contains("empty"), "{e}");
    let e = error(&format!("{head}[axes]\n"));
    assert!(e.contains("[axes] is empty"), "{e}");
    let e = error(&format!("{head}[axes]\nseed = {{ range = [3, 3] }}\n"));
    assert!(e.contains("seed") && e.contains("empty"), "{e}");
    let e = error(&format!("{head}[axes]\n\"train.learning_rate\" = [1e-3]\n"));
    assert!(
        e.contains("train.learning_rate") && e.contains("train.lr") && e.contains("train.batch"),
        "{e}"
    );
    let e = error(&format!("{head}[axes]\ncolour = [1]\n"));
    assert!(
        e.contains("colour") && e.contains("seed") && e.contains("train"),
        "{e}"
    );
    let e = error(&format!("{head}[axes]\nseed = {{ from = 0 }}\n"));
    assert!(e.contains("from") && e.contains("range"), "{e}");
    let e = error(&format!(
        "{head}[axes]\nseed = [0, 1]\n[[exclude]]\n\"train.lr\" = 1e-3\n"
    ));
    assert!(
        e.contains("train.lr") && e.contains("not an axis") && e.contains("seed"),
        "{e}"
    );
    let e = error(&format!(
        "{head}[axes]\nseed = [0, 1]\n[[exclude]]\nseed = 5\n"
    ));
    assert!(e.contains("5") && e.contains("0, 1"), "{e}");
    // A value the config rejects gets the config's error, with the job's name.
    let e = error(&format!("{head}[axes]\n\"train.lr\" = [-1.0]\n"));
    assert!(e.contains("lr=-1") && e.contains("train.lr must be"), "{e}");
    let e = error(&format!("{head}[set]\nseed = 1\n[axes]\nseed = [0]\n"));
    assert!(e.contains("seed") && e.contains("[set]"), "{e}");
    let e = error(&format!(
        "{head}[axes]\n\"model.posterior\" = [\"gaussian\"]\n"
    ));
    assert!(e.contains("gaussian") && e.contains("laplace"), "{e}");

    // The command line: an unsupported --emit kind.
    let dir = setup(SWEEP);
    let o = lvrnn(&["sweep", "s.toml", "--emit", "pbs", "x"], dir.path());
    assert!(
        !o.status.success() && text(&o).contains("pbs") && text(&o).contains("slurm"),
        "{}",
        text(&o)
    );
}
