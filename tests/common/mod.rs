//! Helpers shared by the integration tests that run the `lvrnn` binary.
#![allow(dead_code)] // each test file uses a subset

pub mod exact_bandit;
pub mod fast_path;
pub mod tensors;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lvrnn --threads 1 ARGS` in `cwd` (one thread: the machines are 2-core and shared).
pub fn lvrnn(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args(["--threads", "1"])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runs")
}

/// Like [`lvrnn`], and fails the test with the output when the command fails.
pub fn lvrnn_ok(args: &[&str], cwd: &Path) -> Output {
    let o = lvrnn(args, cwd);
    assert!(o.status.success(), "lvrnn {args:?}: {}", text(&o));
    o
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
