//! `lvrnn sweep` end to end on tiny regression runs: a sweep killed with SIGKILL and started
//! again finishes every job exactly once; the emitted Slurm array runs a job from its command
//! line; bad sweep files get errors naming the key and the allowed values. Staged sweeps:
//! finetune and eval jobs start from the right snapshot of the right parent, wait for it, are
//! skipped when it fails, and become one Slurm array per stage.

use lvrnn::run::load_checkpoint;
use lvrnn::sweep::{Action, Job, Sweep};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
mod common;

use common::{lvrnn, text};
use std::process::{Command, Stdio};
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

/// Every key of the config reference can be a sweep axis, including those a serialised config
/// leaves out at their defaults (`model.sample_scale`, `ppo.target_kl`, `eval.actions`): the key list is not
/// allowed to fall behind the config.
#[test]
fn every_config_key_can_be_swept_including_the_ones_left_out_at_their_default() {
    let dir = tempfile::tempdir().unwrap();
    let base = BASE.replace("task = \"regression\"", "task = \"bandit\"");
    std::fs::write(dir.path().join("base.toml"), base).unwrap();
    let text = r#"
name = "keys"
base = "base.toml"
[axes]
"model.sample_scale" = [0.0, 1.0]
"ppo.target_kl" = [0.02]
"ppo.epochs" = [2]
"ppo.minibatches" = [2]
"train.lr_schedule" = ["linear"]
"train.clip_element" = [0.5]
"eval.actions" = ["greedy"]
"ppo.entropy_final" = [0.01]
"#;
    let s = Sweep::from_toml_str(text, "s.toml", dir.path()).unwrap();
    assert_eq!(s.jobs.len(), 2);
    let c = &s.jobs[0].config;
    assert_eq!(
        (
            c.model.sample_scale,
            c.ppo.target_kl,
            c.ppo.epochs,
            c.ppo.minibatches
        ),
        (0.0, Some(0.02), 2, 2)
    );
    assert_eq!(c.train.clip_element, Some(0.5));
    assert!(c.eval.greedy());
    assert_eq!(c.ppo.entropy_final, Some(0.01));
    assert_eq!(s.jobs[1].config.model.sample_scale, 1.0);
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
    assert!(n >= 7, "{n} sweep files");
    let s = Sweep::load(&dir.join("bandit-small.toml")).unwrap();
    assert_eq!((s.jobs.len(), s.excluded), (20, 4));
    assert_eq!(s.jobs[0].name, "posterior=rnn,lr=0.001,seed=0");
    assert_eq!(s.jobs[0].config.train.updates, 2000);

    // The paper's protocol (Sec. 5, App. B) in each domain, full size and small.
    for domain in ["regression", "bandit", "gridworld"] {
        for file in [
            format!("{domain}-protocol.toml"),
            format!("{domain}-protocol-small.toml"),
        ] {
            let s = Sweep::load(&dir.join(&file)).unwrap();
            let stages: Vec<&str> = s.stages.iter().map(|st| st.name.as_str()).collect();
            assert_eq!(
                stages,
                ["pretrain", "finetune", "posthoc", "scratch"],
                "{file}"
            );
            let seeds = s.stage_jobs("pretrain").count();
            let pre = s.stage_jobs("pretrain").next().unwrap();
            assert_eq!(pre.config.model.posterior.label(), "rnn", "{file}");
            assert_eq!(pre.config.train.snapshots, [0.5, 0.75], "{file}");
            // Finetuning from the ½ and ¾ snapshots of every seed, under the VRNN and Laplace.
            let ft: Vec<&Job> = s.stage_jobs("finetune").collect();
            assert_eq!(ft.len() % (2 * seeds), 0, "{file}");
            let families: std::collections::BTreeSet<String> = ft
                .iter()
                .map(|j| j.config.model.posterior.label())
                .collect();
            assert!(families.iter().any(|f| f.starts_with("vrnn")), "{file}");
            assert!(families.iter().any(|f| f.starts_with("laplace")), "{file}");
            for j in &ft {
                let a = j.after.as_ref().unwrap();
                let parent = s.jobs.iter().find(|p| p.name == a.job).unwrap();
                assert_eq!(j.config.seed, parent.config.seed, "{}", j.name);
                assert_eq!(
                    a.update + j.config.train.updates,
                    parent.config.train.updates
                );
            }
            // Post-hoc Laplace on the snapshots and the final model, without finetuning.
            let ph: Vec<&Job> = s.stage_jobs("posthoc").collect();
            assert_eq!(ph.len(), 3 * seeds, "{file}");
            assert!(ph.iter().all(|j| matches!(&j.action,
                Action::Eval { posteriors, .. } if posteriors.iter().all(|p| p.starts_with("laplace")))));
            // The families trained as such from scratch.
            let scratch = s.stage_jobs("scratch").count();
            assert_eq!(scratch, families.len() * seeds, "{file}");
        }
    }
}

/// Two pretraining seeds of 30 updates with snapshots at ½ and ¾; the Laplace finetuning of
/// each ½ snapshot (for the remaining 15 updates); a post-hoc evaluation of seed 0's ¾ snapshot.
const STAGED: &str = r#"
name = "staged"
base = "base.toml"
[set]
"train.updates" = 30
"train.snapshots" = [0.5, 0.75]
"train.checkpoint_every" = 10

[[stage]]
name = "pretrain"
axes = { seed = [0, 1] }

[[stage]]
name = "finetune"
from = { stage = "pretrain", snapshot = [0.5], updates = "remaining" }
axes = { "model.posterior" = ["laplace:window=1,accumulate=sigma"] }
set = { "train.snapshots" = [] }

[[stage]]
name = "posthoc"
kind = "eval"
from = { stage = "pretrain", snapshot = [0.75] }
posteriors = ["laplace:window=1,accumulate=sigma"]
tune_prior = true
exclude = [{ seed = 1 }]
"#;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn position(events: &[serde_json::Value], job: &str, kind: &str) -> usize {
    events
        .iter()
        .position(|e| e["job"] == job && e["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event of {job}"))
}

#[test]
fn a_staged_sweep_finetunes_and_evaluates_the_right_snapshots_and_a_restart_does_nothing() {
    let dir = setup(STAGED);
    let d = dir.path();
    let out = d.join("out");
    let sweep = Sweep::load(&d.join("s.toml")).unwrap();
    let names: Vec<&str> = sweep.jobs.iter().map(|j| j.name.as_str()).collect();
    let ft =
        |seed: u64| format!("finetune.seed={seed},snapshot=0.5,posterior=laplace-sigma-k1-full");
    assert_eq!(
        names,
        [
            "pretrain.seed=0",
            "pretrain.seed=1",
            &ft(0),
            &ft(1),
            "posthoc.seed=0,snapshot=0.75"
        ]
    );
    assert_eq!(sweep.excluded, 1);

    // The dry run shows what each job waits for.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--dry-run"], d);
    assert!(o.status.success(), "{}", text(&o));
    let listing = text(&o);
    assert!(
        listing.contains("stage finetune: 2 train jobs, each after its job of stage `pretrain`")
            && listing.contains("after pretrain.seed=1 (snapshot 0.5: update 15")
            && listing.contains("model-step000023.safetensors")
            && listing.contains(" --init-from "),
        "{listing}"
    );

    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(o.status.success(), "{}", text(&o));
    let ev = events(&out);
    for name in &names {
        assert!(is_done(&out, name), "{name}: {}", text(&o));
        assert_eq!(count(&ev, name, "start"), 1, "{name}");
    }
    for seed in [0u64, 1] {
        let parent = format!("pretrain.seed={seed}");
        let child = ft(seed);
        // It waited for its parent, and started from the parent's ½ snapshot (update 15).
        assert!(position(&ev, &parent, "done") < position(&ev, &child, "start"));
        let snapshot = out
            .join("runs")
            .join(&parent)
            .join("checkpoints/model-step000015.safetensors");
        let record = json(&out.join("runs").join(&child).join("init_from.json"));
        assert_eq!(
            record["checkpoint"].as_str().unwrap(),
            std::fs::canonicalize(&snapshot).unwrap().to_str().unwrap()
        );
        assert_eq!(record["update"], 15);
        assert_eq!(load_checkpoint(&snapshot).unwrap().update, 15);
        let fin = load_checkpoint(
            &out.join("runs")
                .join(&child)
                .join("checkpoints/model-final.safetensors"),
        )
        .unwrap();
        assert_eq!((fin.update, fin.config.seed), (15, seed));
        assert_eq!(fin.config.model.posterior.label(), "laplace-sigma-k1-full");
    }
    // The eval job evaluated seed 0's ¾ snapshot, update round(22.5) = 23, as the trainer wrote it.
    let ev_dir = out.join("evals/posthoc.seed=0,snapshot=0.75");
    let source = json(&ev_dir.join("source.json"));
    assert!(
        ev_dir.join("prior_tuning.csv").is_file(),
        "tune_prior = true runs eval --tune-prior"
    );
    let snapshot = out.join("runs/pretrain.seed=0/checkpoints/model-step000023.safetensors");
    assert_eq!(
        source["checkpoint"].as_str().unwrap(),
        std::fs::canonicalize(&snapshot).unwrap().to_str().unwrap()
    );
    assert_eq!(source["update"], 23);
    assert!(ev_dir.join("config.toml").exists() && ev_dir.join("eval.csv").exists());
    assert!(
        position(&ev, "pretrain.seed=0", "done")
            < position(&ev, "posthoc.seed=0,snapshot=0.75", "start")
    );

    // A restart has nothing to do.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(
        o.status.success() && text(&o).contains("5 already done, 0 to run"),
        "{}",
        text(&o)
    );
    assert_eq!(events(&out).len(), ev.len());

    // A sweep killed after a finetune and an eval worker exited but before their status was
    // written runs them again: the finetune resumes at its last update (same metrics, same
    // record), the eval rewrites its folder from the same snapshot.
    let child = ft(1);
    let record = std::fs::read(out.join("runs").join(&child).join("init_from.json")).unwrap();
    for job in [child.as_str(), "posthoc.seed=0,snapshot=0.75"] {
        std::fs::remove_file(out.join(format!("status/{job}.json"))).unwrap();
    }
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(
        o.status.success() && text(&o).contains("3 already done, 2 to run"),
        "{}",
        text(&o)
    );
    let run = out.join("runs").join(&child);
    assert_eq!(std::fs::read(run.join("init_from.json")).unwrap(), record);
    let rows: Vec<serde_json::Value> =
        lvrnn::util::read_jsonl(&run.join("metrics/train.jsonl")).unwrap();
    let updates: Vec<u64> = rows.iter().map(|r| r["update"].as_u64().unwrap()).collect();
    assert_eq!(updates, (1..=15).collect::<Vec<_>>());
    assert_eq!(json(&ev_dir.join("source.json")), source);
    let ev = events(&out);
    assert_eq!(count(&ev, &child, "start"), 2);
    assert_eq!(count(&ev, "pretrain.seed=1", "start"), 1);
}

#[cfg(unix)]
fn flaky(d: &Path, pattern: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = d.join("flaky.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \"$*\" in {pattern}) echo 'boom: no such luck' >&2; exit 3;; esac\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// Pretraining over two seeds; a VRNN finetuning and a post-hoc evaluation of each final model.
const CHAIN: &str = r#"
name = "chain"
base = "base.toml"
[set]
"train.updates" = 4
[[stage]]
name = "pretrain"
axes = { seed = [0, 1] }
[[stage]]
name = "finetune"
from = { stage = "pretrain" }
set = { "model.posterior" = "vrnn" }
[[stage]]
name = "posthoc"
kind = "eval"
from = { stage = "pretrain", snapshot = ["final"] }
posteriors = ["laplace:window=1,accumulate=sigma"]
"#;

#[cfg(unix)]
#[test]
fn a_failed_parent_skips_its_dependants_with_the_reason_and_not_the_others() {
    let dir = setup(CHAIN);
    let d = dir.path();
    flaky(d, "*\"--name pretrain.seed=1 \"*");
    let o = lvrnn(
        &[
            "sweep", "s.toml", "--out", "out", "--jobs", "2", "--bin", "flaky.sh",
        ],
        d,
    );
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(
        all.contains("1 of 6 jobs failed and 2 were skipped"),
        "{all}"
    );
    let out = d.join("out");
    for job in [
        "pretrain.seed=0",
        "finetune.seed=0,snapshot=final",
        "posthoc.seed=0,snapshot=final",
    ] {
        assert!(is_done(&out, job), "{job}: {all}");
    }
    for job in [
        "finetune.seed=1,snapshot=final",
        "posthoc.seed=1,snapshot=final",
    ] {
        let status = json(&out.join(format!("status/{job}.json")));
        assert_eq!(status["status"], "skipped", "{job}");
        let why = status["error"].as_str().unwrap();
        assert!(
            why.contains("starts from job `pretrain.seed=1`, which failed"),
            "{job}: {why}"
        );
        assert!(!out.join("runs").join(job).exists() && !out.join("evals").join(job).exists());
    }
    let ev = events(&out);
    assert_eq!(count(&ev, "finetune.seed=1,snapshot=final", "start"), 0);

    // Started again with the real binary: the parent, then its dependants.
    let o = lvrnn(&["sweep", "s.toml", "--out", "out", "--jobs", "2"], d);
    assert!(
        o.status.success() && text(&o).contains("3 already done, 3 to run"),
        "{}",
        text(&o)
    );
    let ev = events(&out);
    assert!(
        position(&ev, "pretrain.seed=1", "done")
            < position(&ev, "finetune.seed=1,snapshot=final", "start")
    );
    let record = json(&out.join("runs/finetune.seed=1,snapshot=final/init_from.json"));
    assert!(
        record["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("runs/pretrain.seed=1/checkpoints/model-final.safetensors"),
        "{record}"
    );
    assert_eq!(record["update"], 4);
}

#[test]
fn a_staged_sweep_emits_one_slurm_array_per_stage_chained_by_dependency() {
    let dir = setup(CHAIN);
    let d = dir.path();
    let o = lvrnn(
        &[
            "sweep", "s.toml", "--out", "out", "--emit", "slurm", "cluster",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 Slurm arrays"), "{}", text(&o));
    let c = d.join("cluster");
    let read = |f: &str| std::fs::read_to_string(c.join(f)).unwrap();
    let submit = read("submit.sh");
    let lines: Vec<&str> = submit.lines().filter(|l| l.contains("sbatch ")).collect();
    assert_eq!(lines.len(), 3, "{submit}");
    assert!(
        lines[0].starts_with("jid0=$(sbatch --parsable ") && lines[0].ends_with("pretrain.sbatch)"),
        "{submit}"
    );
    assert!(
        lines[1].contains("--dependency=afterany:$jid0 ") && lines[1].ends_with("finetune.sbatch)"),
        "{submit}"
    );
    assert!(
        lines[2].contains("--dependency=afterany:$jid0 ") && lines[2].ends_with("posthoc.sbatch)"),
        "{submit}"
    );
    for stage in ["pretrain", "finetune", "posthoc"] {
        let script = read(&format!("{stage}.sbatch"));
        assert!(script.contains("#SBATCH --array=0-1\n"), "{script}");
        assert!(
            script.contains(&format!("--job-name=chain.{stage}\n")),
            "{script}"
        );
    }
    assert_eq!(
        read("finetune.parents.txt"),
        "pretrain.seed=0\npretrain.seed=1\n"
    );
    assert!(!c.join("pretrain.parents.txt").exists());
    assert!(
        read("posthoc.jobs.txt")
            .lines()
            .all(|l| l.contains(" eval --checkpoint "))
    );

    let task = |stage: &str, i: &str| {
        Command::new("bash")
            .arg(c.join(format!("{stage}.sbatch")))
            .env("SLURM_ARRAY_TASK_ID", i)
            .output()
            .unwrap()
    };
    let out = d.join("out");
    // A finetuning task whose parent is not done records why and fails.
    let o = task("finetune", "0");
    assert!(!o.status.success(), "{}", text(&o));
    let status = json(&out.join("status/finetune.seed=0,snapshot=final.json"));
    assert_eq!(status["status"], "skipped");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("`pretrain.seed=0`, which is not done")
    );
    // Once the parent's task has run, it trains from the parent's final model.
    let o = task("pretrain", "0");
    assert!(o.status.success(), "{}", text(&o));
    let o = task("finetune", "0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(is_done(&out, "finetune.seed=0,snapshot=final"));
    let record = json(&out.join("runs/finetune.seed=0,snapshot=final/init_from.json"));
    assert_eq!(record["update"], 4);
    let o = task("posthoc", "0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.join("evals/posthoc.seed=0,snapshot=final/source.json")
            .exists()
    );
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

#[test]
fn bad_staged_sweep_files_name_the_key_and_the_allowed_values() {
    let head = "name = \"x\"\nbase = \"base.toml\"\n[set]\n\"train.snapshots\" = [0.5, 0.75]\n[[stage]]\nname = \"pre\"\naxes = { seed = [0, 1] }\n";
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pretrain\" }}\n"
    ));
    assert!(
        e.contains("stage `ft`") && e.contains("pretrain") && e.contains("allowed values: pre"),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\", snapshot = [0.6] }}\n"
    ));
    assert!(
        e.contains("0.6") && e.contains("0.5, 0.75, \"final\""),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\", snapshot = [\"last\"] }}\n"
    ));
    assert!(e.contains("last") && e.contains("\"final\""), "{e}");
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\", updates = \"all\" }}\n"
    ));
    assert!(e.contains("all") && e.contains("\"remaining\""), "{e}");
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ev\"\nkind = \"eval\"\nfrom = {{ stage = \"pre\" }}\n"
    ));
    assert!(e.contains("`posteriors` is empty"), "{e}");
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ev\"\nkind = \"eval\"\nfrom = {{ stage = \"pre\" }}\nactions = \"argmax\"\n"
    ));
    assert!(
        e.contains("argmax") && e.contains("allowed values: sample, greedy"),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"tr\"\nactions = \"greedy\"\naxes = {{ seed = [2] }}\n"
    ));
    assert!(
        e.contains("`actions` is for stages with kind = \"eval\""),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ev\"\nkind = \"eval\"\nfrom = {{ stage = \"pre\" }}\nposteriors = [\"vrnn\"]\n"
    ));
    assert!(e.contains("VRNN head") && e.contains("finetune"), "{e}");
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ev\"\nkind = \"score\"\n"
    ));
    assert!(
        e.contains("score") && e.contains("train") && e.contains("eval"),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ev\"\nkind = \"eval\"\nposteriors = [\"rnn\"]\n"
    ));
    assert!(e.contains("needs `from"), "{e}");
    // An axis the parent stage also has picks its jobs; a value it lacks is an error.
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\" }}\naxes = {{ seed = [2] }}\n"
    ));
    assert!(
        e.contains("seed") && e.contains("allowed values: 0, 1"),
        "{e}"
    );
    let e = error(&format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\" }}\nexclude = [{{ lr = 1 }}]\n"
    ));
    assert!(
        e.contains("`lr` is not an axis") && e.contains("seed, snapshot"),
        "{e}"
    );
    let e = error(&format!("{head}[axes]\nseed = [0]\n"));
    assert!(e.contains("[[stage]]") && e.contains("own `axes`"), "{e}");

    // Selecting parents by a shared axis, and `updates = "remaining"` with the trainer's rounding.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    let text = format!(
        "{head}[[stage]]\nname = \"ft\"\nfrom = {{ stage = \"pre\", snapshot = [0.5, 0.75], updates = \"remaining\" }}\naxes = {{ seed = [1], \"model.posterior\" = [\"vrnn\", \"laplace:window=10,accumulate=none\"] }}\n"
    )
    .replace("[0.5, 0.75]\n[[stage]]", "[0.5, 0.75]\n\"train.updates\" = 9\n[[stage]]");
    let s = Sweep::from_toml_str(&text, "s.toml", dir.path()).unwrap();
    let ft: Vec<&Job> = s.stage_jobs("ft").collect();
    assert_eq!(ft.len(), 4);
    assert_eq!(ft[0].name, "ft.seed=1,snapshot=0.5,posterior=vrnn-full");
    let a = ft[2].after.as_ref().unwrap();
    // 0.75 × 9 = 6.75 → 7; 0.5 × 9 = 4.5 → 5 (rounded half away from zero, as `fit` does).
    assert_eq!(
        (a.job.as_str(), a.update, a.file.as_str()),
        ("pre.seed=1", 7, "model-step000007.safetensors")
    );
    assert_eq!(ft[2].config.train.updates, 2);
    assert_eq!(ft[0].after.as_ref().unwrap().update, 5);
    assert_eq!((ft[0].config.train.updates, ft[0].config.seed), (4, 1));
}

/// An eval stage with `actions` and no `posteriors` re-evaluates each parent checkpoint under
/// its own posterior with `lvrnn eval --actions …`.
#[test]
fn an_eval_stage_with_actions_passes_them_to_lvrnn_eval() {
    let dir = setup("");
    let bandit = BASE.replace("task = \"regression\"", "task = \"bandit\"");
    std::fs::write(dir.path().join("bandit.toml"), bandit).unwrap();
    let e = format!(
        "{:#}",
        Sweep::from_toml_str(
            "name = \"x\"\nbase = \"base.toml\"\n[[stage]]\nname = \"pre\"\naxes = { seed = [0] }\n[[stage]]\nname = \"g\"\nkind = \"eval\"\nfrom = { stage = \"pre\" }\nactions = \"greedy\"\n",
            "s.toml",
            dir.path()
        )
        .unwrap_err()
    );
    assert!(e.contains("regression job"), "{e}");
    let file = "name = \"x\"\nbase = \"bandit.toml\"\n[[stage]]\nname = \"pre\"\naxes = { seed = [0, 1] }\n[[stage]]\nname = \"greedy\"\nkind = \"eval\"\nfrom = { stage = \"pre\" }\nactions = \"greedy\"\n";
    let sweep = Sweep::from_toml_str(file, "s.toml", dir.path()).unwrap();
    let evals: Vec<&Job> = sweep.stage_jobs("greedy").collect();
    assert_eq!(evals.len(), 2);
    for j in evals {
        assert!(matches!(&j.action,
            Action::Eval { posteriors, actions, .. } if posteriors.is_empty() && actions.as_deref() == Some("greedy")));
    }
}

#[test]
fn an_eval_stage_with_a_predictive_passes_it_to_lvrnn_eval() {
    let dir = setup("");
    let bandit = BASE.replace("task = \"regression\"", "task = \"bandit\"");
    std::fs::write(dir.path().join("bandit.toml"), bandit).unwrap();
    let sweep_file = |base: &str, extra: &str| {
        format!(
            "name = \"x\"\nbase = \"{base}\"\n[[stage]]\nname = \"pre\"\naxes = {{ seed = [0, 1] }}\n{extra}"
        )
    };
    let eval_stage = |predictive: &str| {
        format!(
            "[[stage]]\nname = \"glm\"\nkind = \"eval\"\nfrom = {{ stage = \"pre\" }}\nposteriors = [\"laplace:window=1,accumulate=sigma\"]\ntune_prior = true\npredictive = \"{predictive}\"\n"
        )
    };
    let err = |text: &str| {
        format!(
            "{:#}",
            Sweep::from_toml_str(text, "s.toml", dir.path()).unwrap_err()
        )
    };
    let e = err(&sweep_file("base.toml", &eval_stage("glm")));
    assert!(
        e.contains("predictive") && e.contains("sampled, linearised"),
        "{e}"
    );
    let e = err(&sweep_file("bandit.toml", &eval_stage("linearised")));
    assert!(e.contains("regression jobs"), "{e}");
    let e = err(&sweep_file(
        "base.toml",
        "[[stage]]\nname = \"t\"\nfrom = { stage = \"pre\" }\npredictive = \"linearised\"\n",
    ));
    assert!(e.contains("eval.predictive"), "{e}");
    let sweep = Sweep::from_toml_str(
        &sweep_file("base.toml", &eval_stage("linearised")),
        "s.toml",
        dir.path(),
    )
    .unwrap();
    let layout = lvrnn::sweep::SweepDir::new(&dir.path().join("out")).unwrap();
    let evals: Vec<&Job> = sweep.stage_jobs("glm").collect();
    assert_eq!(evals.len(), 2);
    for j in evals {
        assert!(matches!(&j.action,
            Action::Eval { predictive, tune_prior: true, .. } if predictive.as_deref() == Some("linearised")));
        let line: Vec<String> = layout
            .command(Path::new(BIN), j)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = line.iter().position(|a| a == "--predictive").unwrap();
        assert_eq!(line[at + 1], "linearised", "{line:?}");
        assert!(line.iter().any(|a| a == "--tune-prior"), "{line:?}");
        assert!(
            layout
                .job_text(j)
                .unwrap()
                .contains("predictive = \"linearised\""),
            "{j:?}"
        );
    }
}
