//! Hostile input, swept systematically through the binary (issue 19, part 2): malformed and
//! mistyped configs, impossible sizes, non-finite numbers, malformed SPEC strings, damaged or
//! edited checkpoints, hostile history CSVs, `--resume` from damaged checkpoints, two `train`
//! processes on one run folder, `report` on an empty folder and on a damaged table.
//!
//! Every case must end with exit status 1 (an error, never a panic's 101 or an abort's 134), a
//! message that names the file, key or line, and no lost state: files that were there before
//! are byte-for-byte the same after.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
mod common;

use common::{lvrnn, lvrnn_ok, text};

/// A tiny regression config: 20 updates of an 8-unit model (well under a second).
const TINY: &str = r#"
name = "tiny"
task = "regression"
seed = 0
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
[train]
updates = 20
batch = 4
seq_len = 6
checkpoint_every = 5
snapshots = []
[eval]
tasks = 4
posthoc = []
"#;

/// Fails unless `o` is a clean refusal (status 1, never 101 or 134) whose message holds every
/// one of `needles` and is short enough to read (a hostile file must not be echoed back whole).
fn refused(o: &Output, case: &str, needles: &[&str]) {
    let msg = text(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{case}: expected a clean error (status 1), got {:?}: {msg}",
        o.status
    );
    assert!(msg.contains("error:"), "{case}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{case}: the message lacks `{n}`: {msg}");
    }
    assert!(msg.len() < 2000, "{case}: a {} byte message", msg.len());
}

/// `TINY` with `key = value` put in its section (replacing the key if it is there).
fn with(key: &str, value: &str) -> String {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let mut out = vec![];
    let mut current = String::new();
    let mut done = false;
    for line in TINY.lines() {
        if let Some(s) = line.strip_prefix('[') {
            if current == section && !done {
                out.push(format!("{name} = {value}"));
                done = true;
            }
            current = s.trim_end_matches(']').to_string();
        }
        let is_key = line.split('=').next().map(str::trim) == Some(name);
        if current == section && is_key && !done {
            out.push(format!("{name} = {value}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done && current == section {
        // The last section is the key's: add it there rather than open the table again.
        out.push(format!("{name} = {value}"));
    } else if !done {
        out.push(format!("[{section}]\n{name} = {value}"));
    }
    out.join("\n")
}

/// A folder with the tiny regression run trained (`runs/tiny`) and a tiny bandit and gridworld
/// run (`runs/bandit`, `runs/grid`, three updates each).
fn trained() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    lvrnn_ok(&["train", "--config", "tiny.toml", "--runs", "runs"], d);
    for (name, task) in [("bandit", "bandit"), ("grid", "gridworld")] {
        let cfg = TINY
            .replace("name = \"tiny\"", &format!("name = \"{name}\""))
            .replace("task = \"regression\"", &format!("task = \"{task}\""))
            .replace("updates = 20", "updates = 3");
        std::fs::write(d.join(format!("{name}.toml")), cfg).unwrap();
        let file = format!("{name}.toml");
        lvrnn_ok(
            &["train", "--config", &file, "--runs", "runs", "--no-eval"],
            d,
        );
    }
    dir
}

/// Every file under `dir` with its bytes, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn malformed_mistyped_and_impossible_configs_name_the_key_and_leave_the_run_alone() {
    let dir = trained();
    let d = dir.path();
    let before = snapshot(&d.join("runs"));
    let cases: &[(&str, &str, &[&str])] = &[
        ("train.bogus", "1", &["unknown field `bogus`", "lr"]),
        ("train.lr", "\"fast\"", &["invalid type", "line"]),
        ("train.lr", "nan", &["train.lr", "NaN"]),
        ("train.lr", "inf", &["train.lr", "inf"]),
        ("train.lr", "-1", &["train.lr", "-1"]),
        ("train.batch", "0", &["train.batch", "positive"]),
        ("train.batch", "-3", &["-3", "usize"]),
        ("train.batch", "99999999999999999999", &["too large"]),
        ("train.updates", "0", &["train.updates"]),
        ("train.seq_len", "0", &["train.seq_len"]),
        ("train.weight_decay", "nan", &["train.weight_decay"]),
        ("train.beta", "-1", &["train.beta"]),
        ("train.clip_global_norm", "0", &["train.clip_global_norm"]),
        ("train.snapshots", "[1.5]", &["train.snapshots"]),
        (
            "train.lr_schedule",
            "\"cosine\"",
            &["train.lr_schedule", "linear"],
        ),
        ("model.hidden", "0", &["model.hidden"]),
        ("model.features", "0", &["model.features"]),
        ("model.head_hidden", "[0]", &["model.head_hidden"]),
        ("model.n_z", "0", &["model.n_z"]),
        ("model.sample_scale", "0.5", &["model.sample_scale"]),
        ("model.hidden", "1000000", &["GB", "model.hidden"]),
        (
            "model.posterior",
            "\"laplace:window=x\"",
            &["window", "integer"],
        ),
        ("eval.tasks", "0", &["eval.tasks"]),
        (
            "eval.tune_prior",
            "true",
            &["eval.tune_prior", "Laplace", "eval.posthoc"],
        ),
        (
            "eval.actions",
            "\"argmax\"",
            &["eval.actions", "sample, greedy"],
        ),
        (
            "eval.actions",
            "\"greedy\"",
            &["eval.actions", "RL tasks only"],
        ),
        ("ppo.epochs", "0", &["ppo.epochs"]),
        ("task", "\"poker\"", &["poker", "regression"]),
    ];
    for (key, value, needles) in cases {
        // Into the existing run's name with --overwrite: a refused config must not wipe it.
        std::fs::write(d.join("bad.toml"), with(key, value)).unwrap();
        let o = lvrnn(
            &[
                "train",
                "--config",
                "bad.toml",
                "--runs",
                "runs",
                "--overwrite",
            ],
            d,
        );
        refused(&o, &format!("{key} = {value}"), needles);
    }
    std::fs::write(d.join("bad.toml"), "name = \"x\"\ntask = [\n").unwrap();
    let o = lvrnn(&["train", "--config", "bad.toml", "--runs", "runs"], d);
    refused(&o, "unclosed array", &["bad.toml", "line"]);
    let o = lvrnn(&["train", "--config", "missing.toml"], d);
    refused(&o, "missing file", &["missing.toml"]);
    assert!(
        snapshot(&d.join("runs")) == before,
        "a refused config changed runs/"
    );
}

#[test]
fn malformed_spec_strings_are_refused_naming_the_key_and_the_allowed_values() {
    let dir = trained();
    let d = dir.path();
    let ck = "runs/tiny/checkpoints/model-final.safetensors";
    let cases: &[(&str, &[&str])] = &[
        ("laplace:window=x", &["window", "integer"]),
        ("laplace:window=-1", &["window"]),
        ("laplace:window=99999999999999999999", &["window"]),
        ("laplace:bogus=1", &["bogus", "allowed keys"]),
        ("laplace:prior_precision=nan", &["prior_precision"]),
        ("laplace:prior_precision=-1", &["prior_precision"]),
        ("laplace:damping=inf", &["damping"]),
        ("laplace:jitter=-1", &["jitter"]),
        ("laplace:accumulate=all", &["accumulate", "mu_sigma"]),
        ("laplace:window", &["key=value"]),
        ("laplace:window=1,window=2", &["window", "twice"]),
        ("vrnn:diagonal=maybe", &["diagonal", "true, false"]),
        ("rnn:window=1", &["takes no options"]),
        (":", &["family", "laplace"]),
        ("gaussian", &["gaussian", "rnn, vrnn, laplace"]),
    ];
    for (spec, needles) in cases {
        for args in [
            vec![
                "eval",
                "--checkpoint",
                ck,
                "--tasks",
                "2",
                "--posterior",
                spec,
            ],
            vec![
                "inspect",
                "--checkpoint",
                ck,
                "--history",
                "h.csv",
                "--posterior",
                spec,
            ],
        ] {
            std::fs::write(d.join("h.csv"), "x,y\n0.1,0.2\n").unwrap();
            refused(&lvrnn(&args, d), &format!("{} {spec}", args[0]), needles);
        }
    }
}

/// Rewrites the safetensors file `src` into `dst` with `edit` applied to its header (the JSON
/// object of tensor entries and `__metadata__`) and `body` to its data.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>, &mut Vec<u8>),
) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut body = bytes[8 + n..].to_vec();
    edit(&mut header, &mut body);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(body);
    std::fs::write(dst, out).unwrap();
}

/// `rewrite` with the stored config's `path` (dot-separated) set to `value`.
fn edit_config(src: &Path, dst: &Path, path: &str, value: serde_json::Value) {
    rewrite(src, dst, |h, _| {
        let meta = h["__metadata__"]["lvrnn"].as_str().unwrap();
        let mut m: serde_json::Value = serde_json::from_str(meta).unwrap();
        let mut v = &mut m;
        for k in path.split('.') {
            v = &mut v[k];
        }
        *v = value;
        h["__metadata__"]["lvrnn"] = serde_json::Value::String(m.to_string());
    });
}

#[test]
fn damaged_and_edited_checkpoints_are_refused_by_eval_and_inspect_naming_the_file() {
    let dir = trained();
    let d = dir.path();
    let good = d.join("runs/tiny/checkpoints/model-final.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    let bad = d.join("bad.safetensors");
    type Make<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Make, &[&str])> = vec![
        (
            "truncated",
            Box::new(|| std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap()),
            &["not a safetensors file"],
        ),
        (
            "empty",
            Box::new(|| std::fs::write(&bad, b"").unwrap()),
            &["not a safetensors file"],
        ),
        (
            "random bytes",
            Box::new(|| {
                let noise: Vec<u8> = (0..bytes.len() as u64)
                    .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
                    .collect();
                std::fs::write(&bad, noise).unwrap()
            }),
            &["not a safetensors file"],
        ),
        (
            "no metadata",
            Box::new(|| {
                rewrite(&good, &bad, |h, _| {
                    h.remove("__metadata__");
                })
            }),
            &["no lvrnn metadata"],
        ),
        (
            "metadata not JSON",
            Box::new(|| {
                rewrite(&good, &bad, |h, _| {
                    h["__metadata__"]["lvrnn"] = "{not json".into();
                })
            }),
            &["metadata stored in"],
        ),
        (
            "hidden = 0",
            Box::new(|| edit_config(&good, &bad, "config.model.hidden", 0.into())),
            &["model.hidden", "metadata was edited"],
        ),
        (
            "hidden larger than the tensors",
            Box::new(|| edit_config(&good, &bad, "config.model.hidden", 16.into())),
            &["model parameters", "holds"],
        ),
        (
            "features = 4e8 (would take the machine's memory)",
            Box::new(|| edit_config(&good, &bad, "config.model.features", 400_000_000.into())),
            &["model parameters", "model.features = 400000000"],
        ),
        (
            "lr = -1",
            Box::new(|| edit_config(&good, &bad, "config.train.lr", (-1).into())),
            &["train.lr"],
        ),
        (
            "unknown task",
            Box::new(|| edit_config(&good, &bad, "config.task", "poker".into())),
            &["poker"],
        ),
        (
            "a NaN weight",
            Box::new(|| {
                rewrite(&good, &bad, |h, body| {
                    let start = h["core.wh"]["data_offsets"][0].as_u64().unwrap() as usize;
                    body[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                })
            }),
            &["core.wh", "non-finite"],
        ),
    ];
    std::fs::write(d.join("h.csv"), "x,y\n0.1,0.2\n").unwrap();
    for (case, make, needles) in &cases {
        make();
        let damaged = std::fs::read(&bad).unwrap();
        for args in [
            vec!["eval", "--checkpoint", "bad.safetensors", "--tasks", "2"],
            vec![
                "inspect",
                "--checkpoint",
                "bad.safetensors",
                "--history",
                "h.csv",
            ],
        ] {
            let o = lvrnn(&args, d);
            let mut n = needles.to_vec();
            n.push("bad.safetensors");
            refused(&o, &format!("{} on {case}", args[0]), &n);
        }
        assert_eq!(
            std::fs::read(&bad).unwrap(),
            damaged,
            "{case}: file changed"
        );
        assert!(
            !d.join("eval-bad").exists(),
            "{case}: an eval folder was written"
        );
    }
}

#[test]
fn hostile_history_csvs_are_refused_naming_the_line_and_the_column() {
    let dir = trained();
    let d = dir.path();
    let reg = "runs/tiny/checkpoints/model-final.safetensors";
    let bandit = "runs/bandit/checkpoints/model-final.safetensors";
    let grid = "runs/grid/checkpoints/model-final.safetensors";
    let cell = "1,0,0,0,0,0,1,0,0,0";
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            reg,
            "x,y\n0.1,NaN\n".into(),
            &["line 2, column 2 (`y`)", "NaN"],
        ),
        (reg, "0.1,inf\n".into(), &["line 1, column 2", "inf"]),
        (
            reg,
            "x,y\n0.1,zz\n".into(),
            &["line 2, column 2", "`zz` is not a number"],
        ),
        (
            reg,
            "0.1\n".into(),
            &["h.csv:1", "expected 2 columns, found 1"],
        ),
        (
            reg,
            "0.1,0.2,0.3\n".into(),
            &["expected 2 columns, found 3"],
        ),
        (reg, "".into(), &["holds no rows"]),
        (reg, "x,y\n\n".into(), &["holds no rows after its header"]),
        (
            reg,
            format!("x,y\n0.1,{}\n", "7".repeat(10_000_000)),
            &["line 2, column 2", "10000000 characters"],
        ),
        (
            reg,
            format!("x,y\n0.1,{}\n", "z".repeat(10_000_000)),
            &["line 2, column 2", "not a number"],
        ),
        (
            bandit,
            "1,-1,0\n1,5,1\n".into(),
            &["row 2", "prev_action 5", "0..5"],
        ),
        (
            bandit,
            "1,-1,0\n1,1.5,1\n".into(),
            &["row 2", "prev_action 1.5"],
        ),
        (
            bandit,
            "1,-1,0\n1,-2,1\n".into(),
            &["row 2", "prev_action -2"],
        ),
        (
            bandit,
            "1,-1,0\n1,-1,1\n".into(),
            &["row 2", "first row only"],
        ),
        (bandit, "1,2,0\n".into(), &["row 1", "must be -1"]),
        (
            bandit,
            "1,-1,0\n1,0,7\n".into(),
            &["row 2", "prev_reward 7"],
        ),
        (bandit, "5,-1,0\n".into(), &["row 1", "constant 1"]),
        (bandit, "1,-1,inf\n".into(), &["line 1, column 3", "inf"]),
        (
            grid,
            "1,1,0,0,0,0,1,0,0,0,-1,0\n".into(),
            &["row 1", "one-hot"],
        ),
        (
            grid,
            format!("{cell},-1,0\n{cell},4,0\n"),
            &["row 2", "0..4"],
        ),
        (
            grid,
            format!("{cell},-1,0\n{cell},0,0.5\n"),
            &["row 2", "prev_reward 0.5"],
        ),
    ];
    for (ck, csv, needles) in &cases {
        std::fs::write(d.join("h.csv"), csv).unwrap();
        let o = lvrnn(&["inspect", "--checkpoint", ck, "--history", "h.csv"], d);
        let mut n = needles.to_vec();
        if !needles.iter().any(|s| s.starts_with("row")) {
            n.push("h.csv");
        }
        refused(&o, &format!("{ck} on {:?}", &csv[..csv.len().min(60)]), &n);
    }
    // The same files, made valid, are read.
    for (ck, csv) in [
        (reg, "x,y\n0.1,0.2\n".to_string()),
        (bandit, "1,-1,0\n1,2,1\n1,0,0\n".to_string()),
        (grid, format!("{cell},-1,0\n{cell},3,0\n{cell},0,1\n")),
    ] {
        std::fs::write(d.join("h.csv"), csv).unwrap();
        lvrnn_ok(&["inspect", "--checkpoint", ck, "--history", "h.csv"], d);
    }
}

#[test]
fn resume_from_a_damaged_or_finished_checkpoint_is_refused_and_loses_nothing() {
    let dir = trained();
    let d = dir.path();
    let latest = d.join("runs/tiny/checkpoints/latest.safetensors");
    let good = std::fs::read(&latest).unwrap();
    let resume = [
        "train",
        "--config",
        "tiny.toml",
        "--runs",
        "runs",
        "--resume",
    ];

    // Both resumable checkpoints truncated (a truncated latest alone falls back to the previous
    // one: tests/checkpoints.rs), so nothing readable is left to resume from.
    let previous = d.join("runs/tiny/checkpoints/previous.safetensors");
    let good_previous = std::fs::read(&previous).unwrap();
    std::fs::write(&latest, &good[..good.len() / 2]).unwrap();
    std::fs::write(&previous, &good_previous[..good_previous.len() / 2]).unwrap();
    let before = snapshot(&d.join("runs"));
    let o = lvrnn(&resume, d);
    refused(
        &o,
        "truncated latest",
        &["latest.safetensors", "cannot resume", "--overwrite"],
    );
    // It says what the run holds rather than that nothing was trained.
    refused(
        &o,
        "truncated latest",
        &["previous.safetensors", "logs 20 updates"],
    );
    assert!(!text(&o).contains("nothing was trained"), "{}", text(&o));
    assert!(
        snapshot(&d.join("runs")) == before,
        "a refused resume changed the run"
    );
    std::fs::write(&previous, &good_previous).unwrap();

    std::fs::write(d.join("good.safetensors"), &good).unwrap();
    rewrite(&d.join("good.safetensors"), &latest, |h, _| {
        let meta = h["__metadata__"]["lvrnn"].as_str().unwrap();
        let mut m: serde_json::Value = serde_json::from_str(meta).unwrap();
        m["update"] = 999.into();
        h["__metadata__"]["lvrnn"] = m.to_string().into();
    });
    let before = snapshot(&d.join("runs"));
    let o = lvrnn(&resume, d);
    refused(
        &o,
        "update past train.updates",
        &["update 999", "train.updates = 20"],
    );
    assert!(
        snapshot(&d.join("runs")) == before,
        "a refused resume changed the run"
    );

    // The intact checkpoint resumes (a finished run: nothing left to train).
    std::fs::write(&latest, &good).unwrap();
    lvrnn_ok(&resume, d);
}

#[test]
fn a_second_train_on_a_run_folder_in_use_is_refused_and_a_dead_ones_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Long enough to be running when the second process starts; killed once checked.
    std::fs::write(d.join("long.toml"), with("train.updates", "1000000")).unwrap();
    let args = [
        "--threads",
        "1",
        "train",
        "--config",
        "long.toml",
        "--runs",
        "runs",
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args(args)
        .args(["--no-eval"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = d.join("runs/tiny.lock");
    let latest = d.join("runs/tiny/checkpoints/latest.safetensors");
    let t0 = Instant::now();
    while !(lock.exists() && latest.exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for extra in ["--resume", "--overwrite"] {
        let o = lvrnn(
            &["train", "--config", "long.toml", "--runs", "runs", extra],
            d,
        );
        refused(&o, extra, &["another process", "runs/tiny", "tiny.lock"]);
    }
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was stopped"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The dead process's lock is taken over.
    std::fs::write(d.join("short.toml"), with("train.updates", "20")).unwrap();
    let o = lvrnn(
        &[
            "train",
            "--config",
            "short.toml",
            "--runs",
            "runs",
            "--overwrite",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn report_on_an_empty_folder_and_on_a_damaged_table_says_what_is_wrong() {
    let dir = trained();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    refused(
        &lvrnn(&["report", "empty"], d),
        "empty folder",
        &["no result folder", "empty"],
    );
    refused(
        &lvrnn(&["report", "nowhere"], d),
        "missing folder",
        &["nowhere"],
    );

    let eval = d.join("runs/tiny/metrics/eval.csv");
    let table = std::fs::read_to_string(&eval).unwrap();
    let header = table.lines().next().unwrap().to_string();
    for (case, damaged, needle) in [
        (
            "garbage",
            "garbage,,\n\u{0}\u{1}\n".to_string(),
            "not a table header",
        ),
        ("header only", format!("{header}\n"), "a header and no rows"),
        (
            "short row",
            format!("{header}\nrnn,0,1.5\n"),
            "line 2 has 3 fields",
        ),
        ("a 10 MB field", huge_field(&table), "characters"),
    ] {
        std::fs::write(&eval, &damaged).unwrap();
        let o = lvrnn(&["report", "runs", "--out", "rep"], d);
        let msg = text(&o);
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{case}: status {:?}: {msg}",
            o.status
        );
        assert!(msg.len() < 4000, "{case}: a {} byte message", msg.len());
        // Whether the report goes on without the folder (status 0) or stops (1), it names the
        // table and what is wrong with it.
        let said = if o.status.success() {
            std::fs::read_to_string(d.join("rep/report.md")).unwrap()
        } else {
            msg.clone()
        };
        assert!(
            said.contains("eval.csv") && said.contains(needle),
            "{case}: {said}"
        );
        assert_eq!(std::fs::read_to_string(&eval).unwrap(), damaged, "{case}");
        let _ = std::fs::remove_dir_all(d.join("rep"));
    }
}

/// `table` with the third field of its first row replaced by ten million `x`.
fn huge_field(table: &str) -> String {
    let mut lines: Vec<String> = table.lines().map(String::from).collect();
    let mut fields: Vec<String> = lines[1].split(',').map(String::from).collect();
    fields[2] = "x".repeat(10_000_000);
    lines[1] = fields.join(",");
    lines.join("\n") + "\n"
}
