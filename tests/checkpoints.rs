//! Checkpoints that survive a bad write and a stop (issue 28, item 3), through the binary:
//! `--resume` with an unreadable `latest.safetensors` goes on from `previous.safetensors` and
//! says what it lost; SIGINT and SIGTERM stop a run between updates with the checkpoint
//! written, the resume command printed and status 130 / 143, and the resumed run ends with the
//! same bytes as one never stopped.
#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
mod common;

use common::{lvrnn_ok, text};

/// A tiny regression config (8 units; about a millisecond an update on one thread).
fn tiny(updates: usize, checkpoint_every: usize) -> String {
    format!(
        r#"
name = "tiny"
task = "regression"
seed = 0
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
[train]
updates = {updates}
batch = 4
seq_len = 6
checkpoint_every = {checkpoint_every}
snapshots = []
[eval]
tasks = 4
posthoc = []
"#
    )
}

const TRAIN: [&str; 7] = [
    "train",
    "--config",
    "tiny.toml",
    "--runs",
    "runs",
    "--no-eval",
    "--resume",
];

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs/tiny/metrics/train.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn stored_update(path: &Path) -> usize {
    lvrnn::run::load_checkpoint(path).unwrap().update
}

#[test]
fn a_truncated_latest_checkpoint_resumes_from_the_previous_one_and_says_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), tiny(20, 5)).unwrap();
    lvrnn_ok(&TRAIN, d);
    let ck = d.join("runs/tiny/checkpoints");
    // One generation is kept back: the checkpoint before the last.
    assert_eq!(stored_update(&ck.join("latest.safetensors")), 20);
    assert_eq!(stored_update(&ck.join("previous.safetensors")), 15);
    let final_model = read(&ck.join("model-final.safetensors"));
    let log = read(&d.join("runs/tiny/metrics/train.jsonl"));

    // A write gone wrong: half of latest, and the final model not yet written.
    let latest = read(&ck.join("latest.safetensors"));
    std::fs::write(ck.join("latest.safetensors"), &latest[..latest.len() / 2]).unwrap();
    std::fs::remove_file(ck.join("model-final.safetensors")).unwrap();
    let o = lvrnn_ok(&TRAIN, d);
    let msg = text(&o);
    for needle in [
        "warning:",
        "latest.safetensors cannot be read",
        "previous.safetensors (update 15)",
        "updates 16..=20",
    ] {
        assert!(msg.contains(needle), "the warning lacks `{needle}`: {msg}");
    }
    assert!(!msg.contains("nothing was trained"), "{msg}");
    // Updates 16..=20 trained again give what they gave the first time.
    assert_eq!(read(&ck.join("model-final.safetensors")), final_model);
    assert_eq!(read(&d.join("runs/tiny/metrics/train.jsonl")), log);
    assert_eq!(read(&ck.join("latest.safetensors")), latest);
    // The unreadable latest was replaced, not kept as `previous`.
    assert_eq!(stored_update(&ck.join("previous.safetensors")), 15);

    // A crash between the two renames of a checkpoint write: no latest, a good previous.
    std::fs::remove_file(ck.join("latest.safetensors")).unwrap();
    let o = lvrnn_ok(&TRAIN, d);
    assert!(
        text(&o).contains("latest.safetensors is missing"),
        "{}",
        text(&o)
    );
    assert_eq!(read(&ck.join("model-final.safetensors")), final_model);
}

/// Starts `lvrnn --threads 1 train …` in `dir`, its output captured.
fn start(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args(["--threads", "1"])
        .args(TRAIN)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run has logged more than `past` updates, sends `signal`, and returns the
/// exit status and output of the stopped run.
fn stop_with(dir: &Path, signal: i32, past: usize) -> (Option<i32>, String) {
    let child = start(dir);
    let t0 = Instant::now();
    while logged(dir) <= past {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run never got past update {past}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let o = child.wait_with_output().unwrap();
    (o.status.code(), text(&o))
}

#[test]
fn sigint_and_sigterm_stop_at_a_checkpoint_and_the_resumed_run_ends_bit_identical() {
    // Long enough that a signal sent after 50 updates arrives mid-run (a second or two).
    const UPDATES: usize = 3000;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [a.path(), b.path()] {
        std::fs::write(d.join("tiny.toml"), tiny(UPDATES, 1000)).unwrap();
    }
    lvrnn_ok(&TRAIN, a.path());

    let d = b.path();
    let ck = d.join("runs/tiny/checkpoints");
    let mut stopped_at = 0;
    for (signal, name, status) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
    ] {
        let (code, msg) = stop_with(d, signal, stopped_at + 50);
        assert_eq!(code, Some(status), "{name}: {msg}");
        let update = stored_update(&ck.join("latest.safetensors"));
        assert!(
            update > stopped_at + 50 && update < UPDATES,
            "{name}: update {update}"
        );
        for needle in [
            format!("interrupted by {name}: stopped after update {update} of {UPDATES}"),
            "latest.safetensors holds that state".to_string(),
            "train --config tiny.toml --runs runs --no-eval --resume".to_string(),
        ] {
            assert!(
                msg.contains(&needle),
                "{name}: the message lacks `{needle}`: {msg}"
            );
        }
        assert!(!msg.contains("error:"), "{name}: {msg}");
        // The log ends where the checkpoint does; no final model yet.
        assert_eq!(logged(d), update, "{name}");
        assert!(!ck.join("model-final.safetensors").exists(), "{name}");
        stopped_at = update;
    }
    lvrnn_ok(&TRAIN, d);
    let ref_ck = a.path().join("runs/tiny/checkpoints");
    for f in ["model-final.safetensors", "latest.safetensors"] {
        assert!(read(&ck.join(f)) == read(&ref_ck.join(f)), "{f} differs");
    }
    assert!(
        read(&d.join("runs/tiny/metrics/train.jsonl"))
            == read(&a.path().join("runs/tiny/metrics/train.jsonl")),
        "train.jsonl differs"
    );
}
