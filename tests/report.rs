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

/// A fake sweep folder's RL result folder: `runs/<job>/config.toml` and the two RL tables, where
/// each model's `(model, [v1, v2, …])` gives its mean reward at t = 1, 2, … (so return through t
/// is the sum) and its mean cumulative regret at t = the same value.
fn fake_rl_run(
    root: &std::path::Path,
    job: &str,
    task: &str,
    seed: u64,
    posterior: &str,
    models: &[(&str, &[f64])],
) {
    let dir = root.join("runs").join(job);
    std::fs::create_dir_all(dir.join("metrics")).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "name = \"{job}\"\ntask = \"{task}\"\nseed = {seed}\n[model.posterior]\n{posterior}\n[eval]\ntasks = 8\n"
        ),
    )
    .unwrap();
    let mut rl = String::from(
        "model,t,reward_mean,reward_ci99,cum_regret_mean,cum_regret_ci99,entropy_mean,entropy_ci99,kl_mean,kl_ci99\n",
    );
    let mut returns =
        String::from("model,return_mean,return_ci99,final_regret_mean,final_regret_ci99\n");
    for (model, vs) in models {
        for (t, v) in vs.iter().enumerate() {
            rl += &format!("\"{model}\",{},{v},0.1,{v},0.1,nan,nan,nan,nan\n", t + 1);
        }
        let sum: f64 = vs.iter().sum();
        returns += &format!("\"{model}\",{sum},0.1,{},0.1\n", vs[vs.len() - 1]);
    }
    std::fs::write(dir.join("metrics/eval_rl.csv"), rl).unwrap();
    std::fs::write(dir.join("metrics/eval_rl_returns.csv"), returns).unwrap();
}

const TARGETS: &str = r#"
name = "fake"                 # a sweep file's own keys are ignored
[[target]]
section = "gridworld"
metric = "cum_return"
t = 3
at_least = 2
groups = ["rnn", "vrnn-diag"]
[[target]]
section = "gridworld"
metric = "cum_return"
t = 3
at_least = 1.5
groups = ["*"]
[[target]]
section = "bandit"
metric = "cum_regret"
t = 2
at_most = 1.0
groups = ["rnn"]
[[target]]
section = "regression"
metric = "ce"
t = 10
at_most = 1.0
groups = ["*"]
"#;

#[test]
fn targets_table_gives_every_seed_and_the_seeds_meeting_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sweep = d.join("sweeps/fake");
    const RNN: &str = "family = \"rnn\"";
    const VRNN: &str = "family = \"vrnn\"\ndiagonal = false";
    const POSTHOC: &str = "laplace-sigma-k1-full (post-hoc on rnn)";
    // Gridworld return through t = 3 (rewards v, 0, 0): the RNN 3.0 / 2.5 / 2.2 (all >= 2),
    // its post-hoc Laplace 1.6 on every seed (>= 1.5, the "*" target: "rnn" is not a
    // substring match), the full VRNN 2.0 / 1.2 / 1.9 (seed 1 misses 1.5 by 0.3).
    for (seed, rnn, vrnn) in [(0, 3.0, 2.0), (1, 2.5, 1.2), (2, 2.2, 1.9)] {
        fake_rl_run(
            &sweep,
            &format!("rnn.seed={seed}"),
            "gridworld",
            seed,
            RNN,
            &[("rnn", &[rnn, 0.0, 0.0]), (POSTHOC, &[1.6, 0.0, 0.0])],
        );
        fake_rl_run(
            &sweep,
            &format!("scratch.posterior=vrnn-full,seed={seed}"),
            "gridworld",
            seed,
            VRNN,
            &[("vrnn-full", &[vrnn, 0.0, 0.0])],
        );
    }
    // Bandit regret at t = 2: 0.8 and 1.25 (the second 0.25 above 1.0).
    for (seed, regret) in [(0, 0.8), (1, 1.25)] {
        fake_rl_run(
            &sweep,
            &format!("bandit.seed={seed}"),
            "bandit",
            seed,
            RNN,
            &[("rnn", &[0.5, regret])],
        );
    }
    std::fs::write(d.join("targets.toml"), TARGETS).unwrap();
    lvrnn(&["report", "sweeps/fake", "--targets", "targets.toml"], d);
    let out = sweep.join("report");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let targets = md.split("## Targets").nth(1).expect("a Targets section");
    for row in [
        "| group | provenance | bound | seed 0 | seed 1 | seed 2 | seeds meeting the target | failing seeds: distance to the bound |",
        "| rnn | trained | ≥ 2 | 3.000 | 2.500 | 2.200 | 3 / 3 | – |",
        "| laplace-sigma-k1-full (post-hoc on rnn) | post-hoc | ≥ 1.5 | 1.600 | 1.600 | 1.600 | 3 / 3 | – |",
        "| vrnn-full | trained | ≥ 1.5 | 2.000 | 1.200 ✗ | 1.900 | 2 / 3 | seed 1: 0.300 |",
        "| rnn | trained | ≤ 1 | 0.800 | 1.250 ✗ | 1 / 2 | seed 1: 0.250 |",
        "**Target 4**: `ce` at points = 10 ≤ 1, regression (groups: `*`).\n\nNo group of this report takes this target.",
    ] {
        assert!(targets.contains(row), "{row}\nnot in\n{targets}");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| vrnn-full | trained | ≥ 1.5 | 2.000 | 1.200 ✗ |"));

    // targets.csv: one row per group × seed.
    let text = std::fs::read_to_string(out.join("targets.csv")).unwrap();
    let mut lines = text.lines();
    let header = split_csv(lines.next().unwrap());
    let rows: Vec<BTreeMap<String, String>> = lines
        .map(|l| header.iter().cloned().zip(split_csv(l)).collect())
        .collect();
    assert_eq!(rows.len(), 3 + 3 + 3 + 2, "{text}");
    let got: Vec<[&str; 8]> = rows
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str();
            [
                f("target"),
                f("model"),
                f("seed"),
                f("value"),
                f("meets"),
                f("distance_to_bound"),
                f("seeds_meeting"),
                f("n_seeds"),
            ]
        })
        .collect();
    for row in [
        ["1", "rnn", "1", "2.500000", "true", "", "3", "3"],
        ["2", "vrnn-full", "0", "2.000000", "true", "", "2", "3"],
        [
            "2",
            "vrnn-full",
            "1",
            "1.200000",
            "false",
            "0.300000",
            "2",
            "3",
        ],
        ["2", POSTHOC, "2", "1.600000", "true", "", "3", "3"],
        ["3", "rnn", "1", "1.250000", "false", "0.250000", "1", "2"],
    ] {
        assert!(got.contains(&row), "{row:?} not in {got:#?}");
    }
    assert!(rows.iter().all(|r| r["x_name"] == "t"));
    let bandit: Vec<_> = rows.iter().filter(|r| r["section"] == "bandit").collect();
    assert!(
        bandit
            .iter()
            .all(|r| r["bound"] == "at_most" && r["bound_value"] == "1")
    );

    // A malformed target is refused before anything is written, naming the key.
    for (bad, expected) in [
        (
            "[[target]]\nmetric = \"cum_return\"\nt = 3\nat_lest = 2\ngroups = [\"*\"]\n",
            "[[target]] 1: unknown key `at_lest`; allowed keys: section, metric, t, at_least, at_most, groups",
        ),
        (
            "[[target]]\nmetric = \"cum_return\"\nt = 3\nat_least = 2\ngroups = [\"*\"]\n[[target]]\nmetric = \"cum_return\"\nt = 3\nat_least = 2\nat_most = 4\ngroups = [\"*\"]\n",
            "[[target]] 2: both `at_least` and `at_most`",
        ),
        (
            "[[target]]\nmetric = \"cum_return\"\nt = 3\ngroups = [\"*\"]\n",
            "[[target]] 1: neither `at_least` nor `at_most`",
        ),
        (
            "[[target]]\nmetric = \"return_through\"\nt = 3\nat_least = 2\ngroups = [\"*\"]\n",
            "`metric` = \"return_through\" is not a metric of the report; allowed values: cum_return, cum_regret",
        ),
        (
            "[[target]]\nsection = \"grid\"\nmetric = \"cum_return\"\nt = 3\nat_least = 2\ngroups = [\"*\"]\n",
            "`section` = \"grid\" is not a section; allowed values: regression, bandit, gridworld",
        ),
        (
            "[[targets]]\nmetric = \"cum_return\"\n",
            "unknown key `targets`; allowed keys: target",
        ),
    ] {
        std::fs::write(d.join("bad.toml"), bad).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_lvrnn"))
            .args([
                "--threads",
                "1",
                "report",
                "sweeps/fake",
                "--targets",
                "bad.toml",
            ])
            .args(["--out", "refused"])
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--targets bad.toml") && err.contains(expected),
            "{expected}\nnot in\n{err}"
        );
        assert!(!d.join("refused").exists(), "{expected}: wrote a report");
    }
}

#[test]
fn shipped_study_targets_give_each_family_its_bound() {
    use lvrnn::report::collect::Section;
    use lvrnn::report::targets::{Bound, glob_match, load_targets};
    assert!(glob_match("*", "vrnn-full") && glob_match("rnn", "rnn"));
    assert!(
        !glob_match("rnn", "vrnn-diag")
            && !glob_match("rnn", "laplace-sigma-k1-full (post-hoc on rnn)")
    );
    assert!(glob_match(
        "*post-hoc on rnn*",
        "laplace-none-k10-full, tuned prior (post-hoc on rnn)"
    ));
    assert!(
        glob_match("laplace-*-k1-*", "laplace-mu_sigma-k1-full")
            && !glob_match("laplace-*-k1-*", "laplace-none-k10-full")
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/targets");
    let bound = |file: &str, section: Section, model: &str| -> Bound {
        let targets = load_targets(&dir.join(file)).unwrap();
        let t = targets.iter().find(|t| t.matches(section, model));
        t.unwrap_or_else(|| panic!("{file}: no target for {model}"))
            .bound
    };
    let posthoc = [
        "laplace-sigma-k1-full (post-hoc on rnn)",
        "laplace-none-k10-full (post-hoc on rnn)",
        "laplace-sigma-k1-full, tuned prior (post-hoc on rnn)",
        "laplace-none-k10-full, tuned prior (post-hoc on rnn)",
    ];
    for model in ["rnn", "laplace-sigma-k1-full", "vrnn-diag"] {
        assert_eq!(
            bound("gridworld-study.toml", Section::Gridworld, model),
            Bound::AtLeast(34.0),
            "{model}"
        );
    }
    for model in [
        "vrnn-full",
        "laplace-mu_sigma-k1-full",
        "laplace-none-k10-full",
    ]
    .into_iter()
    .chain(posthoc)
    {
        assert_eq!(
            bound("gridworld-study.toml", Section::Gridworld, model),
            Bound::AtLeast(32.0),
            "{model}"
        );
    }
    for model in ["rnn", "laplace-sigma-k1-full"] {
        assert_eq!(
            bound("bandit-study.toml", Section::Bandit, model),
            Bound::AtMost(4.2),
            "{model}"
        );
    }
    for model in [
        "vrnn-full",
        "vrnn-diag",
        "laplace-mu_sigma-k1-full",
        "laplace-none-k10-full",
    ]
    .into_iter()
    .chain(posthoc)
    {
        assert_eq!(
            bound("bandit-study.toml", Section::Bandit, model),
            Bound::AtMost(5.3),
            "{model}"
        );
    }
    // Each file's targets name their own section only.
    let grid = load_targets(&dir.join("gridworld-study.toml")).unwrap();
    assert!(
        grid.iter()
            .all(|t| !t.matches(Section::Bandit, "rnn") && t.metric == "cum_return" && t.x == 100)
    );
    let bandit = load_targets(&dir.join("bandit-study.toml")).unwrap();
    assert!(
        bandit.iter().all(|t| !t.matches(Section::Gridworld, "rnn")
            && t.metric == "cum_regret"
            && t.x == 50)
    );
}
