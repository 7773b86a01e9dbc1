//! `lvrnn report` end to end: a results tree of tiny runs (2 seeds × 2 posteriors of regression,
//! a finetuned posterior, an `lvrnn eval --posterior laplace:… --out` folder per seed, 2 seeds of
//! a bandit), then the report: every group with both seeds, post-hoc rows labelled post-hoc,
//! finetuned rows labelled finetuned, and report.md linking every figure, which exists.

use lvrnn::report::collect::split_csv;
use std::collections::{BTreeMap, BTreeSet};
mod common;

use common::lvrnn_ok as lvrnn;
use std::process::Command;

const TINY: &str = r#"
name = "tiny"
task = "regression"
seed = 0
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 3
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

const TINY_BANDIT: &str = r#"
name = "tiny-bandit"
task = "bandit"
seed = 0
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
fn report_groups_seeds_labels_provenance_and_links_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("reg.toml"), TINY).unwrap();
    std::fs::write(d.join("bandit.toml"), TINY_BANDIT).unwrap();
    for seed in ["0", "1"] {
        let rnn = format!("rnn-s{seed}");
        for (name, posterior) in [
            (rnn.as_str(), "rnn"),
            (
                &*format!("lap-s{seed}"),
                "laplace:window=1,accumulate=sigma",
            ),
        ] {
            lvrnn(
                &[
                    "train",
                    "--config",
                    "reg.toml",
                    "--runs",
                    "res/reg",
                    "--name",
                    name,
                    "--seed",
                    seed,
                    "--posterior",
                    posterior,
                ],
                d,
            );
        }
        let ck = format!("res/reg/{rnn}/checkpoints/model-final.safetensors");
        // Finetuned: the RNN's weights trained on as a Laplace VRNN. `train --init-from` writes
        // init_from.json on another branch; written here so the test does not depend on it.
        let ft = format!("ft-s{seed}");
        lvrnn(
            &[
                "train",
                "--config",
                "reg.toml",
                "--runs",
                "res/reg",
                "--name",
                &ft,
                "--seed",
                seed,
                "--posterior",
                "laplace:window=3,accumulate=none",
                "--init-from",
                &ck,
            ],
            d,
        );
        let marker = d.join(format!("res/reg/{ft}/init_from.json"));
        if !marker.exists() {
            std::fs::write(&marker, format!(r#"{{"checkpoint": "{ck}", "update": 3}}"#)).unwrap();
        }
        lvrnn(
            &[
                "eval",
                "--checkpoint",
                &ck,
                "--posterior",
                "laplace:window=0,accumulate=none,diagonal=true",
                "--out",
                &format!("res/evals/{rnn}"),
            ],
            d,
        );
        lvrnn(
            &[
                "train",
                "--config",
                "bandit.toml",
                "--runs",
                "res/rl",
                "--name",
                &format!("bandit-s{seed}"),
                "--seed",
                seed,
            ],
            d,
        );
    }
    lvrnn(&["report", "res"], d);
    let out = d.join("res/report");

    // summary.csv: every agent group has both seeds.
    let text = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let header = split_csv(lines.next().unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (c_sec, c_model, c_prov, c_eval, c_n) = (
        col("section"),
        col("model"),
        col("provenance"),
        col("evaluation"),
        col("n_seeds"),
    );
    let mut groups: BTreeMap<(String, String, String, String), BTreeSet<String>> = BTreeMap::new();
    for line in lines {
        let row = split_csv(line);
        let key = (
            row[c_sec].clone(),
            row[c_model].clone(),
            row[c_prov].clone(),
            row[c_eval].clone(),
        );
        groups.entry(key).or_default().insert(row[c_n].clone());
    }
    let expected = [
        ("regression", "rnn", "trained", "run"),
        ("regression", "laplace-sigma-k1-full", "trained", "run"),
        (
            "regression",
            "laplace-sigma-k1-full (post-hoc on rnn)",
            "post-hoc",
            "run",
        ),
        ("regression", "laplace-none-k3-full", "finetuned", "run"),
        (
            "regression",
            "laplace-sigma-k1-full (post-hoc on laplace-none-k3-full)",
            "post-hoc",
            "run",
        ),
        ("regression", "rnn", "trained", "eval: model-final"),
        (
            "regression",
            "laplace-none-kall-diag (post-hoc on rnn)",
            "post-hoc",
            "eval: model-final",
        ),
        ("bandit", "rnn", "trained", "run"),
    ];
    for (s, m, p, e) in expected {
        let key = (s.into(), m.into(), p.into(), e.into());
        assert_eq!(
            groups
                .get(&key)
                .map(|n| n.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["2".to_string()]),
            "group {key:?} in {:#?}",
            groups.keys().collect::<Vec<_>>()
        );
    }
    for (s, m, p, _) in groups.keys() {
        assert_eq!(
            m.contains("(post-hoc on ") && !m.ends_with("(post-hoc on laplace-sigma-k1-full)"),
            p == "post-hoc",
            "{s} {m}: {p}"
        );
        assert_eq!(m.starts_with("reference: "), p == "reference", "{m}: {p}");
    }
    assert!(
        groups
            .keys()
            .any(|(s, _, p, _)| s == "bandit" && p == "reference"),
        "reference policies in the bandit section"
    );

    // report.md embeds every figure, and every linked PNG exists (with its SVG).
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let linked: BTreeSet<String> = md
        .split("](")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .filter(|l| l.ends_with(".png"))
        .map(String::from)
        .collect();
    for l in &linked {
        assert!(out.join(l).is_file(), "{l} linked but missing");
        assert!(out.join(l).with_extension("svg").is_file(), "{l}: no SVG");
    }
    let pngs: BTreeSet<String> = std::fs::read_dir(out.join("figures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .map(|n| format!("figures/{n}"))
        .collect();
    assert_eq!(linked, pngs, "report.md links exactly the figures written");
    for stem in [
        "regression-ce",
        "regression-entropy",
        "regression-kl",
        "regression-provenance",
        "bandit-cum_regret",
        "bandit-cum_return",
        "bandit-provenance",
        "regression-training_nll",
        "bandit-training_return",
        "bandit-training_regret",
    ] {
        assert!(pngs.contains(&format!("figures/{stem}.png")), "{stem}");
    }
    // Training curves: per update (blocks of one update here), the mean over the two seeds of
    // what each run logged.
    let c_metric = col("metric");
    let (c_x, c_mean, c_xname) = (col("x"), col("mean"), col("x_name"));
    let logged = |seed: &str, update: usize| -> f64 {
        let log = d.join(format!("res/rl/bandit-s{seed}/metrics/train.jsonl"));
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["update"].as_u64() == Some(update as u64))
            .and_then(|v| v["return"].as_f64())
            .unwrap()
    };
    let training: Vec<Vec<String>> = text
        .lines()
        .skip(1)
        .map(split_csv)
        .filter(|r| r[c_sec] == "bandit" && r[c_model] == "rnn" && r[c_metric] == "training_return")
        .collect();
    assert_eq!(training.len(), 2, "updates 1 and 2 of the bandit runs");
    for r in &training {
        let x: usize = r[c_x].parse().unwrap();
        let expected = (logged("0", x) + logged("1", x)) / 2.0;
        let mean: f64 = r[c_mean].parse().unwrap();
        assert!(
            (mean - expected).abs() < 1e-5,
            "update {x}: {mean} vs {expected}"
        );
        assert_eq!((r[c_xname].as_str(), r[c_n].as_str()), ("update", "2"));
    }
    assert!(
        md.contains("99% t-interval over 2 seeds, 8 tasks each"),
        "{md}"
    );
    assert!(out.join("summary.md").is_file() && out.join("sources.csv").is_file());

    // An unknown grouping key is refused with the allowed keys.
    let o = Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args(["--threads", "1", "report", "res", "--by", "train.bogus"])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("--by: unknown key `train.bogus`")
            && err.contains("train.lr"),
        "{err}"
    );

    // A table written before the coverage columns existed still counts (CE, entropy, KL).
    let old = d.join("res/evals/rnn-s0/eval.csv");
    let text = std::fs::read_to_string(&old).unwrap();
    let stripped: String = text
        .lines()
        .map(|l| l.split(',').take(8).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    assert!(
        stripped.starts_with(
            "model,points,ce_mean,ce_ci99,entropy_mean,entropy_ci99,kl_mean,kl_ci99\n"
        )
    );
    std::fs::write(&old, stripped).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args(["--threads", "1", "report", "res", "--out", "res/report2"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(d.join("res/report2/report.md")).unwrap();
    let skipped = md.split("## Skipped folders").nth(1).unwrap_or("");
    assert!(!skipped.contains("evals/rnn-s0"), "{skipped}");
}
