//! `prior_precision = "auto"` and `damping = "auto"` (issue 17, item 4): parsed from TOML and
//! SPEC strings, chosen at the start of training by the documented rule from the network's
//! posterior means (checked against an independent recomputation), stored as a number in the
//! run's config and checkpoints, resolved identically on resume, refused post hoc.

use lvrnn::agent::regression::{RegressionModel, mean_square_of_means};
use lvrnn::config::ExperimentConfig;
use lvrnn::posterior::PosteriorConfig;
use lvrnn::posterior::config::auto_scale;
use lvrnn::run::load_checkpoint;
mod common;

use common::{lvrnn, lvrnn_ok, text};

const TINY: &str = r#"
name = "auto"
task = "regression"
seed = 3
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
[model.posterior]
family = "laplace"
window = 1
accumulate = "sigma"
prior_precision = "auto"
[train]
updates = 6
batch = 4
seq_len = 6
checkpoint_every = 2
snapshots = []
[eval]
tasks = 4
posthoc = []
"#;

fn laplace(p: &PosteriorConfig) -> &lvrnn::posterior::LaplaceConfig {
    match p {
        PosteriorConfig::Laplace(c) => c,
        other => panic!("not laplace: {other:?}"),
    }
}

#[test]
fn auto_is_read_from_toml_and_spec_strings_and_written_back_as_auto() {
    let cfg = ExperimentConfig::from_toml_str(TINY, "t.toml").unwrap();
    let c = laplace(&cfg.model.posterior);
    assert!(c.auto.prior_precision && !c.auto.damping && c.has_auto());
    // Serialised, it stays "auto" (a sweep's job file, `lvrnn train`'s input).
    let back = toml::to_string(&cfg).unwrap();
    assert!(back.contains("prior_precision = \"auto\""), "{back}");
    let again = ExperimentConfig::from_toml_str(&back, "back.toml").unwrap();
    assert_eq!(again.model.posterior, cfg.model.posterior);

    let p: PosteriorConfig = "laplace:window=3,accumulate=none,damping=auto"
        .parse()
        .unwrap();
    let c = laplace(&p);
    assert!(c.auto.damping && !c.auto.prior_precision);
    assert!(p.to_string().contains("damping=auto"), "{p}");
    assert_eq!(p.to_string().parse::<PosteriorConfig>().unwrap(), p);

    let e = ExperimentConfig::from_toml_str(&TINY.replace("\"auto\"", "\"big\""), "t.toml")
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("prior_precision") && e.contains("auto"), "{e}");
    let e = "laplace:prior_precision=big"
        .parse::<PosteriorConfig>()
        .unwrap_err();
    assert!(format!("{e:#}").contains("a number > 0 or auto"), "{e:#}");
}

#[test]
fn the_rule_is_one_over_the_mean_square_of_the_means_clamped() {
    assert_eq!(auto_scale(0.01), 100.0);
    assert_eq!(auto_scale(4.0), 0.25);
    assert_eq!(auto_scale(1.0 / 11.843442235684915), 11.84);
    assert_eq!(auto_scale(1e-12), 1e6);
    assert_eq!(auto_scale(1e9), 1e-3);
    assert_eq!(auto_scale(0.0), 1.0);
    assert_eq!(auto_scale(f64::NAN), 1.0);
    let mut c = lvrnn::posterior::LaplaceConfig::default();
    c.auto.damping = true;
    c.resolve_auto(7.5);
    assert_eq!(
        (c.damping, c.prior_precision, c.has_auto()),
        (7.5, 1.0, false)
    );
}

#[test]
fn training_resolves_auto_from_the_initial_network_stores_the_number_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("auto.toml"), TINY).unwrap();
    let o = lvrnn_ok(
        &[
            "train",
            "--config",
            "auto.toml",
            "--runs",
            "runs",
            "--updates",
            "4",
            "--no-eval",
        ],
        d,
    );
    assert!(text(&o).contains("auto prior scale"), "{}", text(&o));

    // Independently: the fresh network of the same config and seed, its posterior means on
    // 16 training tasks of train.seq_len points drawn from the seed, λ = 1 / mean μ².
    lvrnn::init_threads(1);
    let cfg = ExperimentConfig::from_toml_str(TINY, "t.toml").unwrap();
    let model = RegressionModel::new(&cfg.model, cfg.seed).unwrap();
    let ms = mean_square_of_means(&model, 16, cfg.train.seq_len, cfg.seed).unwrap();
    assert!(ms > 0.0 && ms.is_finite());
    let expected: f64 = format!("{:.3e}", 1.0 / ms).parse().unwrap();

    let ck = load_checkpoint(&d.join("runs/auto/checkpoints/latest.safetensors")).unwrap();
    let c = laplace(&ck.config.model.posterior).clone();
    assert!(!c.has_auto(), "the checkpoint stores a number");
    assert!(
        c.chosen.prior_precision && !c.chosen.damping,
        "and which scale was chosen"
    );
    assert!(
        c.prior_precision == expected && (expected * ms - 1.0).abs() < 1e-3,
        "{} vs {expected}",
        c.prior_precision
    );
    assert_eq!(c.damping, 1.0, "damping was not auto");
    let stored = std::fs::read_to_string(d.join("runs/auto/config.toml")).unwrap();
    assert!(
        stored.contains(&format!("prior_precision = {expected}"))
            && stored.contains("chosen_by_auto = [\"prior_precision\"]"),
        "{stored}"
    );

    // The same config resumes: "auto" resolves to the same number, so nothing differs.
    let o = lvrnn(
        &[
            "train",
            "--config",
            "auto.toml",
            "--runs",
            "runs",
            "--resume",
            "--no-eval",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o));
    let ck = load_checkpoint(&d.join("runs/auto/checkpoints/latest.safetensors")).unwrap();
    assert_eq!(ck.update, 6);
    assert_eq!(
        laplace(&ck.config.model.posterior).prior_precision,
        c.prior_precision
    );

    // Post hoc there is no "start of training": refused, naming the way to choose it.
    let o = lvrnn(
        &[
            "eval",
            "--checkpoint",
            "runs/auto/checkpoints/model-final.safetensors",
            "--posterior",
            "laplace:window=1,prior_precision=auto",
            "--tasks",
            "2",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--tune-prior"), "{}", text(&o));
}

#[test]
fn an_rl_run_resolves_auto_damping_for_a_windowed_posterior() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = TINY
        .replace("task = \"regression\"", "task = \"bandit\"")
        .replace(
            "accumulate = \"sigma\"",
            "accumulate = \"none\"\ndamping = \"auto\"",
        )
        .replace("prior_precision = \"auto\"", "prior_precision = 2.0");
    std::fs::write(d.join("auto.toml"), cfg).unwrap();
    lvrnn_ok(
        &[
            "train",
            "--config",
            "auto.toml",
            "--runs",
            "runs",
            "--updates",
            "2",
            "--no-eval",
        ],
        d,
    );
    let ck = load_checkpoint(&d.join("runs/auto/checkpoints/latest.safetensors")).unwrap();
    let c = laplace(&ck.config.model.posterior);
    assert!(!c.has_auto());
    assert_eq!(c.prior_precision, 2.0);
    assert!(c.damping > 0.0 && c.damping != 1.0, "damping {}", c.damping);
}

#[test]
fn the_report_groups_the_seeds_of_an_auto_prior_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for seed in [0, 1] {
        let cfg = TINY
            .replace("name = \"auto\"", &format!("name = \"auto{seed}\""))
            .replace("seed = 3", &format!("seed = {seed}"));
        std::fs::write(d.join("a.toml"), cfg).unwrap();
        lvrnn_ok(&["train", "--config", "a.toml", "--runs", "runs"], d);
    }
    let priors: Vec<String> = [0, 1]
        .iter()
        .map(|s| {
            let c = std::fs::read_to_string(d.join(format!("runs/auto{s}/config.toml"))).unwrap();
            c.lines()
                .find(|l| l.starts_with("prior_precision"))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(priors[0], priors[1], "each seed chose its own number");
    lvrnn_ok(&["report", "runs", "--out", "rep"], d);
    let summary = std::fs::read_to_string(d.join("rep/summary.csv")).unwrap();
    let rows: Vec<&str> = summary
        .lines()
        .filter(|l| l.contains("laplace") && l.contains(",ce,"))
        .collect();
    assert!(!rows.is_empty(), "{summary}");
    // One group over both seeds (n_seeds = 2), not one group per chosen number.
    assert!(rows.iter().all(|l| l.contains(",2,")), "{rows:#?}");
}
