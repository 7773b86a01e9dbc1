//! The `lvrnn` binary end to end on a tiny configuration: train, eval (post hoc), inspect,
//! reference, and clear errors for bad input.

mod common;

use common::{lvrnn, text};
use std::process::Output;

const TINY: &str = r#"
name = "tiny"
task = "regression"
seed = 3
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 6
batch = 8
seq_len = 10
checkpoint_every = 3
[eval]
tasks = 8
points = [0, 1, 5, 10]
grid = 8
samples = 4
example_points = 5
posthoc = ["laplace:window=1,accumulate=sigma"]
"#;

#[test]
fn train_eval_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    let o = lvrnn(&["train", "--config", "tiny.toml", "--runs", "runs"], d);
    assert!(o.status.success(), "{}", text(&o));
    // stderr is not a terminal here: progress comes as plain lines (after the first update and
    // the last), with the time per update and the headline metric.
    let err = String::from_utf8_lossy(&o.stderr);
    for line in ["tiny: update 1/6 (17%)", "tiny: update 6/6 (100%)"] {
        assert!(err.contains(line), "no '{line}' in: {err}");
    }
    assert!(err.contains("s/update") && err.contains("nll "), "{err}");
    let run = d.join("runs/tiny");
    for f in [
        "config.toml",
        "metrics/train.jsonl",
        "metrics/eval.csv",
        "figures/training.png",
        "figures/ce.png",
        "figures/entropy.svg",
        "figures/kl.png",
        "checkpoints/model-final.safetensors",
        "checkpoints/model-step000003.safetensors",
    ] {
        assert!(run.join(f).exists(), "missing {f}: {}", text(&o));
    }
    let csv = std::fs::read_to_string(run.join("metrics/eval.csv")).unwrap();
    assert!(
        csv.starts_with("model,points,ce_mean,ce_ci99,entropy_mean,entropy_ci99,kl_mean,kl_ci99")
    );
    assert!(
        csv.contains("laplace-sigma-k1-full (post-hoc on rnn)"),
        "{csv}"
    );

    // Training again without --resume/--overwrite must refuse instead of clobbering the run.
    let o = lvrnn(&["train", "--config", "tiny.toml", "--runs", "runs"], d);
    assert!(
        !o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );

    // Post-hoc evaluation of the RNN checkpoint under two Laplace variants.
    let ck = "runs/tiny/checkpoints/model-final.safetensors";
    let o = lvrnn(
        &[
            "eval",
            "--checkpoint",
            ck,
            "--posterior",
            "laplace:window=2,accumulate=none,diagonal=true",
            "--out",
            "ev",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(d.join("ev/eval.csv")).unwrap();
    assert!(csv.contains("laplace-none-k2-diag"), "{csv}");

    // Inspect: one JSON line per step plus the prior, with precision, entropy and KL.
    std::fs::write(d.join("hist.csv"), "x,y\n0.1,0.5\n-0.3,0.2\n0.7,-0.4\n").unwrap();
    let o = lvrnn(
        &[
            "inspect",
            "--checkpoint",
            ck,
            "--posterior",
            "laplace:window=1,accumulate=sigma",
            "--history",
            "hist.csv",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["t"], 3);
    assert_eq!(lines[3]["precision"].as_array().unwrap().len(), 4);
    let (e1, e3) = (
        lines[1]["entropy"].as_f64().unwrap(),
        lines[3]["entropy"].as_f64().unwrap(),
    );
    assert!(e3 < e1, "Σ-accumulating entropy decreases: {e1} → {e3}");
    assert!(lines[2]["kl"].as_f64().unwrap() >= 0.0);
    // A VRNN head the network never trained is refused (it would act with random weights).
    let o = lvrnn(
        &[
            "inspect",
            "--checkpoint",
            ck,
            "--posterior",
            "vrnn",
            "--history",
            "hist.csv",
        ],
        d,
    );
    assert!(
        !o.status.success() && text(&o).contains("--init-from"),
        "{}",
        text(&o)
    );

    // Finetuning under another family from the snapshot (without the RNN's post-hoc Laplace
    // evaluation, which a VRNN network refuses).
    std::fs::write(
        d.join("tiny-ft.toml"),
        TINY.replace(
            r#"posthoc = ["laplace:window=1,accumulate=sigma"]"#,
            "posthoc = []",
        ),
    )
    .unwrap();
    let o = lvrnn(
        &[
            "train",
            "--config",
            "tiny-ft.toml",
            "--runs",
            "runs",
            "--name",
            "ft",
            "--posterior",
            "vrnn:diagonal=true",
            "--init-from",
            "runs/tiny/checkpoints/model-step000003.safetensors",
            "--no-eval",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("vrnn.mean.weight"),
        "reports the freshly initialised parameters: {}",
        text(&o)
    );
    // … and records where it started from (for `lvrnn report`).
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("runs/ft/init_from.json")).unwrap())
            .unwrap();
    let snapshot =
        std::fs::canonicalize(d.join("runs/tiny/checkpoints/model-step000003.safetensors"))
            .unwrap();
    assert_eq!(record["checkpoint"].as_str(), snapshot.to_str());
    assert_eq!(record["update"], 3);
    assert!(!d.join("runs/tiny/init_from.json").exists());
    // The finetuned VRNN reports its covariance.
    let o = lvrnn(
        &[
            "inspect",
            "--checkpoint",
            "runs/ft/checkpoints/model-final.safetensors",
            "--history",
            "hist.csv",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("covariance"));
}

/// `lvrnn eval` checks every argument against the checkpoint before it evaluates anything.
fn assert_refused_before_work(o: &Output, needle: &str) {
    let t = text(o);
    assert!(!o.status.success(), "should fail: {t}");
    assert!(t.contains(needle), "error should mention `{needle}`: {t}");
    assert!(
        !t.contains("evaluating"),
        "refused only after evaluating: {t}"
    );
}

#[test]
fn eval_validates_arguments_first_and_tunes_the_prior() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    let o = lvrnn(
        &[
            "train",
            "--config",
            "tiny.toml",
            "--runs",
            "runs",
            "--no-eval",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ck = "runs/tiny/checkpoints/model-final.safetensors";
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", ck, "--out", "ev"];
        args.extend_from_slice(extra);
        lvrnn(&args, d)
    };
    let o = eval(&[
        "--posterior",
        "laplace:window=1",
        "--posterior",
        "laplace:bogus=1",
    ]);
    assert_refused_before_work(&o, "unknown posterior key `bogus`");
    let o = eval(&["--posterior", "vrnn"]);
    assert_refused_before_work(&o, "--init-from");
    let o = eval(&["--tasks", "0"]);
    assert_refused_before_work(&o, "--tasks");
    let o = eval(&["--tune-prior"]);
    assert_refused_before_work(&o, "--posterior laplace");
    let o = eval(&["--alpha", "0.2"]);
    assert_refused_before_work(&o, "bandit checkpoints only");
    assert!(!d.join("ev").exists(), "a refused eval writes nothing");
    // A config whose post-hoc list asks for an untrained VRNN head is refused before training.
    std::fs::write(
        d.join("posthoc-vrnn.toml"),
        TINY.replace(
            r#"posthoc = ["laplace:window=1,accumulate=sigma"]"#,
            r#"posthoc = ["vrnn"]"#,
        ),
    )
    .unwrap();
    let o = lvrnn(
        &["train", "--config", "posthoc-vrnn.toml", "--runs", "r2"],
        d,
    );
    assert!(
        !o.status.success() && text(&o).contains("eval.posthoc") && !d.join("r2").exists(),
        "{}",
        text(&o)
    );

    // --tune-prior: the default and the tuned posterior side by side, every trial recorded.
    let o = eval(&[
        "--posterior",
        "laplace:window=1,accumulate=sigma",
        "--tune-prior",
        "--tune-tasks",
        "4",
        "--only-given",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(d.join("ev/eval.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with("cover50,cover90,cover99"),
        "{csv}"
    );
    assert!(csv.contains("tuned prior prior_precision="), "{csv}");
    let tuning = std::fs::read_to_string(d.join("ev/prior_tuning.csv")).unwrap();
    // Every grid value (10^-3 … 10^3 by half decades, to 4 digits) was tried; exactly one row is chosen and
    // it has the lowest score.
    let rows: Vec<Vec<&str>> = tuning
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    for k in 0..13 {
        let v = 10f64.powf(-3.0 + 0.5 * k as f64);
        assert!(
            rows.iter()
                .any(|r| (r[1].parse::<f64>().unwrap() / v - 1.0).abs() < 1e-3),
            "grid value {v} not tried: {tuning}"
        );
    }
    let chosen: Vec<&Vec<&str>> = rows.iter().filter(|r| r[5] == "true").collect();
    assert_eq!(chosen.len(), 1, "{tuning}");
    let best = rows
        .iter()
        .map(|r| r[3].parse::<f64>().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(chosen[0][3].parse::<f64>().unwrap(), best, "{tuning}");
    assert!(d.join("ev/figures/coverage.png").exists());
    // Provenance for `lvrnn report`: the config and the checkpoint the results come from.
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ev/source.json")).unwrap()).unwrap();
    assert_eq!(source["update"], 6);
    assert!(
        source["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("model-final.safetensors")
    );
    assert!(d.join("ev/config.toml").exists());
}

const TINY_BANDIT: &str = r#"
name = "tiny-bandit"
task = "bandit"
seed = 1
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 2
batch = 8
checkpoint_every = 2
[eval]
tasks = 8
"#;

#[test]
fn rl_eval_compares_test_distributions_and_tunes_the_prior() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("b.toml"), TINY_BANDIT).unwrap();
    let o = lvrnn(
        &["train", "--config", "b.toml", "--runs", "runs", "--no-eval"],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ck = "runs/tiny-bandit/checkpoints/model-final.safetensors";
    let o = lvrnn(
        &[
            "eval",
            "--checkpoint",
            ck,
            "--out",
            "ev",
            "--alpha",
            "0.2",
            "--alpha",
            "0.3",
            "--posterior",
            "laplace:window=1,accumulate=sigma",
            "--tune-prior",
            "--tune-tasks",
            "4",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(d.join("ev/eval_rl.csv")).unwrap();
    for label in [
        "rnn @ alpha=0.2",
        "rnn @ alpha=0.3",
        "laplace-sigma-k1-full (post-hoc on rnn) @ alpha=0.2",
        "tuned prior prior_precision=",
    ] {
        assert!(csv.contains(label), "missing {label}: {csv}");
    }
    let returns = std::fs::read_to_string(d.join("ev/eval_rl_returns.csv")).unwrap();
    assert!(returns.contains("@ alpha=0.3"), "{returns}");
    let tuning = std::fs::read_to_string(d.join("ev/prior_tuning.csv")).unwrap();
    assert!(tuning.contains("negative mean return"), "{tuning}");
    let o = lvrnn(&["eval", "--checkpoint", ck, "--alpha=-1"], d);
    assert_refused_before_work(&o, "--alpha");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bad.toml"),
        TINY.replace("features = 4", "featurs = 4"),
    )
    .unwrap();
    let o = lvrnn(&["train", "--config", "bad.toml"], d);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("featurs") && text(&o).contains("features"),
        "{}",
        text(&o)
    );
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    let o = lvrnn(
        &[
            "train",
            "--config",
            "tiny.toml",
            "--posterior",
            "laplace:accumulate=all",
        ],
        d,
    );
    assert!(
        !o.status.success() && text(&o).contains("none, sigma, mu_sigma"),
        "{}",
        text(&o)
    );
    let o = lvrnn(&["reference", "--env", "maze"], d);
    assert!(
        !o.status.success() && text(&o).contains("bandit, gridworld"),
        "{}",
        text(&o)
    );
    let o = lvrnn(&["eval", "--checkpoint", "missing.safetensors"], d);
    assert!(
        !o.status.success() && text(&o).contains("missing.safetensors"),
        "{}",
        text(&o)
    );
}

#[test]
fn reference_writes_the_documented_csv() {
    let dir = tempfile::tempdir().unwrap();
    let o = lvrnn(
        &[
            "reference",
            "--env",
            "bandit",
            "--tasks",
            "200",
            "--csv",
            "ref.csv",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let csv = std::fs::read_to_string(dir.path().join("ref.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "policy,t,return_mean,return_ci99,regret_mean,regret_ci99,ess_mean"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // The particle policies report their mean effective sample size, 1 ≤ ESS ≤ 4096 particles;
    // the others leave the column empty.
    for r in &rows {
        assert_eq!(r.len(), 7, "{r:?}");
        if ["thompson_is", "greedy_is", "knowledge_gradient"].contains(&r[0]) {
            let ess: f64 = r[6].parse().unwrap();
            assert!((1.0..=4096.0).contains(&ess), "{r:?}");
        } else {
            assert_eq!(r[6], "", "{r:?}");
        }
    }
    assert!(text(&o).contains("mean ESS"), "{}", text(&o));
    let policies: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0]).collect();
    for p in [
        "random",
        "thompson_is",
        "thompson_independent",
        "greedy_is",
        "knowledge_gradient",
        "oracle",
    ] {
        assert!(policies.contains(p), "{policies:?}");
    }
}

/// `bench --json` prints one object per configuration with the documented keys, its split adds
/// up to the total, the floor is the FLOP count over the measured gemm throughput, and the
/// projected protocol time is s/update × 20,000 in hours.
#[test]
fn bench_json_rows_carry_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (task, posterior) in [
        ("regression", "laplace:window=1,accumulate=sigma"),
        ("bandit", "rnn"),
    ] {
        let out = lvrnn(
            &[
                "bench",
                "--task",
                task,
                "--posterior",
                posterior,
                "--json",
                "--batch",
                "2",
                "--seq-len",
                "3",
                "--reps",
                "1",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 1, "{stdout}");
        let row = &rows[0];
        assert_eq!(row["task"], task);
        assert_eq!(row["posterior"], posterior);
        assert_eq!(row["threads"], 1);
        let num = |k: &str| {
            row[k]
                .as_f64()
                .unwrap_or_else(|| panic!("key {k} in {row}"))
        };
        let split: f64 = ["rollout_s", "loss_forward_s", "backward_s", "optimiser_s"]
            .iter()
            .map(|k| num(k))
            .sum();
        assert!((split - num("s_per_update")).abs() <= 1e-9 + 1e-9 * split);
        let floor = num("gflop_per_update") / num("gemm_gflops");
        assert!((floor - num("floor_s")).abs() <= 1e-12 + 1e-9 * floor);
        assert!(num("peak_rss_mb") > 0.0);
        // The paper's protocol (20,000 updates) at this s/update, in hours.
        let hours = num("s_per_update") * 20_000.0 / 3600.0;
        assert!((num("protocol_hours") - hours).abs() <= 1e-12 + 1e-9 * hours);
    }
    let bad = lvrnn(&["bench", "--task", "chess"], dir.path());
    assert!(!bad.status.success());
    assert!(text(&bad).contains("allowed values: regression, bandit, gridworld"));
}

/// The README's first command, shortened: the embedded quickstart trains, evaluates the RNN and
/// the post-hoc Laplace posterior with its prior tuned on held-out tasks (labelled so, with the
/// tuning written beside the metrics), and warns about nothing in its own config (issue 28).
#[test]
fn the_quickstart_shows_the_tuned_post_hoc_posterior_and_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = lvrnn(&["quickstart", "--updates", "40", "--runs", "runs"], d);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(!all.contains("warning"), "the quickstart warned: {all}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    for row in [
        "rnn",
        "laplace-sigma-k1-full (post-hoc on rnn)",
        "laplace-sigma-k1-full (post-hoc on rnn), tuned prior",
    ] {
        assert!(stdout.contains(row), "no `{row}` row in:\n{stdout}");
    }
    let metrics = d.join("runs/quickstart/metrics");
    let tuning = std::fs::read_to_string(metrics.join("prior_tuning.csv")).unwrap();
    assert!(tuning.lines().count() > 2, "{tuning}");
}
