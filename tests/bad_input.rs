//! Bad input a new user ran into (issue 8, part 3): each case must fail with a message that
//! names the key, row or column and says what to change, or (for defaults) resolve to the
//! documented value.

use lvrnn::inspect::read_history;

fn history_error(csv: &str, columns: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.csv");
    std::fs::write(&path, csv).unwrap();
    format!("{:#}", read_history(&path, columns).unwrap_err())
}

#[test]
fn a_nan_in_a_history_with_a_header_names_the_line_and_the_column() {
    let e = history_error("x,y\n0.1,0.2\n0.3,NaN\n", 2);
    assert!(e.contains("line 3, column 2 (`y`)"), "{e}");
    assert!(e.contains("NaN is not a finite number"), "{e}");
    assert!(
        e.contains("replace it with a number or drop the row"),
        "{e}"
    );
}

#[test]
fn an_infinity_in_a_history_without_a_header_names_the_line_and_the_column_index() {
    // Blank lines still count: line numbers are those an editor shows.
    let e = history_error("0.1,0.2\n\n-inf,0.5\n", 2);
    assert!(e.contains("line 3, column 1:"), "{e}");
    assert!(e.contains("-inf is not a finite number"), "{e}");
}

#[test]
fn an_rl_history_with_an_infinite_reward_names_the_reward_column() {
    let e = history_error("obs,prev_action,prev_reward\n0,-1,0\n0,2,inf\n", 3);
    assert!(e.contains("line 3, column 3 (`prev_reward`)"), "{e}");
}

#[test]
fn a_finite_history_still_reads_with_and_without_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    std::fs::write(&path, "x,y\n0.5,1e3\n-2,0\n").unwrap();
    assert_eq!(
        read_history(&path, 2).unwrap(),
        vec![vec![0.5, 1000.0], vec![-2.0, 0.0]]
    );
    std::fs::write(&path, "\n0.5,1\n").unwrap();
    assert_eq!(read_history(&path, 2).unwrap(), vec![vec![0.5, 1.0]]);
}

// ---------------------------------------------------------------------------------------------
// train.clip_element: the task's default where the config leaves it out
// ---------------------------------------------------------------------------------------------

use lvrnn::config::ExperimentConfig;

fn config(task: &str, train: &str) -> ExperimentConfig {
    let text = format!("name = \"t\"\ntask = \"{task}\"\n[train]\nupdates = 3\n{train}");
    ExperimentConfig::from_toml_str(&text, "t.toml").unwrap()
}

#[test]
fn rl_configs_without_clip_element_get_the_papers_rl_value_of_one() {
    for task in ["bandit", "gridworld"] {
        let cfg = config(task, "");
        assert_eq!(cfg.train.clip_element, Some(1.0), "{task}");
        assert_eq!(lvrnn::train::adamw_config(&cfg).clip_element, 1.0, "{task}");
        assert!(
            cfg.to_toml().unwrap().contains("clip_element = 1.0"),
            "{task}: the resolved value is what config.toml stores"
        );
    }
}

#[test]
fn a_regression_config_without_clip_element_keeps_five() {
    let cfg = config("regression", "");
    assert_eq!(cfg.train.clip_element, Some(5.0));
    assert_eq!(lvrnn::train::adamw_config(&cfg).clip_element, 5.0);
}

#[test]
fn an_explicit_clip_element_is_kept_for_every_task() {
    for (task, c) in [("bandit", 2.5), ("gridworld", 5.0), ("regression", 1.0)] {
        let cfg = config(task, &format!("clip_element = {c}\n"));
        assert_eq!(cfg.train.clip_element, Some(c), "{task}");
        assert_eq!(cfg.clip_element(), c, "{task}");
    }
}

#[test]
fn a_checkpoint_stores_the_resolved_clip_element() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let cfg = config("bandit", "");
    // The model's own parameters: a checkpoint whose tensors do not match its config is refused.
    let params = lvrnn::agent::rl::RlModel::for_experiment(&cfg)
        .unwrap()
        .params;
    lvrnn::run::save_checkpoint(&path, &params, &Default::default(), 7, &cfg).unwrap();
    let ck = lvrnn::run::load_checkpoint(&path).unwrap();
    assert_eq!((ck.update, ck.config.train.clip_element), (7, Some(1.0)));
}

/// A 17-digit number in a config survives the checkpoint's JSON metadata exactly (serde_json's
/// `float_roundtrip`): otherwise `--resume` finds "its [train] section differs" from the very
/// config it was written with.
#[test]
fn a_checkpoint_gives_back_its_config_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let mut cfg = config(
        "bandit",
        "lr = 0.0011843442235684915\nbeta = 0.012345678901234567",
    );
    cfg.env.alpha_train = 0.1 + 0.2;
    let params = lvrnn::agent::rl::RlModel::for_experiment(&cfg)
        .unwrap()
        .params;
    lvrnn::run::save_checkpoint(&path, &params, &Default::default(), 7, &cfg).unwrap();
    let ck = lvrnn::run::load_checkpoint(&path).unwrap();
    assert_eq!(ck.config.train.lr.to_bits(), cfg.train.lr.to_bits());
    assert_eq!(
        ck.config.train.beta.unwrap().to_bits(),
        cfg.train.beta.unwrap().to_bits()
    );
    assert_eq!(
        ck.config.env.alpha_train.to_bits(),
        cfg.env.alpha_train.to_bits()
    );
}

#[test]
fn a_non_positive_clip_element_names_the_key() {
    let text = "name = \"t\"\ntask = \"bandit\"\n[train]\nclip_element = 0.0\n";
    let e = format!(
        "{:#}",
        ExperimentConfig::from_toml_str(text, "t.toml").unwrap_err()
    );
    assert!(
        e.contains("train.clip_element must be a finite number > 0 (got 0)"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes: refused with the estimate and the keys, before anything is allocated
// ---------------------------------------------------------------------------------------------

use lvrnn::config::memory::{MemoryEstimate, check_fits};

const GB: u64 = 1_000_000_000;

#[test]
fn training_with_a_hundred_million_features_fails_fast_naming_the_key_and_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("huge.toml"),
        "name = \"huge\"\ntask = \"regression\"\n[model]\nfeatures = 100000000\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lvrnn"))
        .args([
            "--threads",
            "1",
            "train",
            "--config",
            "huge.toml",
            "--runs",
            "runs",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a clean error, not an abort: {e}");
    assert!(e.contains("config `huge` needs an estimated"), "{e}");
    assert!(e.contains(" GB for one training update"), "{e}");
    assert!(e.contains("GB available"), "{e}");
    assert!(
        e.contains("widest through model.features = 100000000"),
        "{e}"
    );
    assert!(
        e.contains("reduce model.features, train.batch, train.seq_len"),
        "{e}"
    );
    assert!(
        !d.join("runs/huge").exists(),
        "refused before the run folder"
    );
}

#[test]
fn a_full_covariance_vrnn_with_a_hundred_million_features_is_refused_on_any_machine() {
    let text = "name = \"x\"\ntask = \"bandit\"\n[model]\nfeatures = 100000000\n[model.posterior]\nfamily = \"vrnn\"\n";
    let e = format!(
        "{:#}",
        ExperimentConfig::from_toml_str(text, "x.toml").unwrap_err()
    );
    assert!(e.contains("invalid config x.toml"), "{e}");
    assert!(
        e.contains("vrnn.tri.weight (100000000 × 10000000000000000)"),
        "{e}"
    );
    assert!(e.contains("more than a single allocation can hold"), "{e}");
    assert!(
        e.contains("reduce model.features or use [model.posterior] diagonal = true"),
        "{e}"
    );
}

#[test]
fn a_paper_size_full_covariance_vrnn_is_refused_on_a_small_machine_with_the_breakdown() {
    let text = "name = \"grid\"\ntask = \"gridworld\"\n[model.posterior]\nfamily = \"vrnn\"\n";
    let cfg = ExperimentConfig::from_toml_str(text, "grid.toml").unwrap();
    let e = format!("{:#}", check_fits(&cfg, GB, "a test budget").unwrap_err());
    assert!(
        e.contains("more than the 1.0 GB available (a test budget)"),
        "{e}"
    );
    assert!(
        e.contains("parameters with their gradient and AdamW moments"),
        "{e}"
    );
    assert!(e.contains("the VRNN's covariances dominate"), "{e}");
    assert!(
        e.contains("train.batch = 256 × the gridworld horizon T = 100 (fixed) rows"),
        "{e}"
    );
    assert!(e.contains("model.features² = 64²"), "{e}");
    assert!(e.contains("diagonal = true"), "{e}");
    check_fits(&cfg, 64 * GB, "a test budget").unwrap();
}

#[test]
fn a_wide_laplace_regression_names_the_batch_and_the_features() {
    let text = "name = \"wide\"\ntask = \"regression\"\n[model]\nfeatures = 4096\n[model.posterior]\nfamily = \"laplace\"\n";
    let cfg = ExperimentConfig::from_toml_str(text, "wide.toml").unwrap();
    let e = format!(
        "{:#}",
        check_fits(&cfg, 8 * GB, "a test budget").unwrap_err()
    );
    assert!(
        e.contains("train.batch = 256 precisions of model.features² = 4096²"),
        "{e}"
    );
}

#[test]
fn the_default_and_every_shipped_config_fit_a_sixteen_gigabyte_machine() {
    let default =
        ExperimentConfig::from_toml_str("name = \"d\"\ntask = \"regression\"\n", "d").unwrap();
    check_fits(&default, 16 * GB, "a 16 GB machine").unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = ExperimentConfig::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            check_fits(&cfg, 16 * GB, "a 16 GB machine")
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let est = MemoryEstimate::for_config(&cfg).unwrap();
            assert!(est.total_bytes() > 0);
            n += 1;
        }
    }
    assert!(n >= 18, "expected the shipped configs in {}", dir.display());
}

fn posterior_config(model: &str) -> Result<ExperimentConfig, String> {
    let text = format!("name = \"t\"\ntask = \"regression\"\n[model]\n{model}");
    ExperimentConfig::from_toml_str(&text, "t.toml").map_err(|e| format!("{e:#}"))
}

#[test]
fn a_config_may_give_the_posterior_as_the_spec_string_the_cli_takes() {
    let spec = "laplace:window=3,accumulate=mu_sigma,diagonal=true";
    let from_string = posterior_config(&format!("posterior = \"{spec}\"")).unwrap();
    let table = "[model.posterior]\nfamily = \"laplace\"\nwindow = 3\naccumulate = \"mu_sigma\"\ndiagonal = true";
    let from_table = posterior_config(table).unwrap();
    assert_eq!(from_string.model.posterior, spec.parse().unwrap());
    assert_eq!(from_string.model.posterior, from_table.model.posterior);
    let vrnn = posterior_config("posterior = \"vrnn\"").unwrap();
    assert_eq!(vrnn.model.posterior, "vrnn".parse().unwrap());
}

#[test]
fn a_bad_posterior_in_a_config_names_what_is_wrong_in_either_form() {
    let err = posterior_config("posterior = \"laplace:windw=3\"").unwrap_err();
    assert!(err.contains("windw"), "{err}");
    let err = posterior_config("[model.posterior]\nfamily = \"laplace\"\nwindw = 3").unwrap_err();
    assert!(err.contains("windw"), "{err}");
    let err = posterior_config("posterior = 3").unwrap_err();
    assert!(err.contains("posterior SPEC"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Post hoc: a posterior that does not belong to the network is refused (issue 19, part 1)
// ---------------------------------------------------------------------------------------------

#[test]
fn a_posterior_the_network_did_not_train_for_is_refused_post_hoc_and_the_rest_allowed() {
    use lvrnn::posterior::PosteriorConfig;
    let p = |s: &str| s.parse::<PosteriorConfig>().unwrap();
    let refused = [
        ("vrnn", "laplace:window=1,accumulate=sigma"),
        ("vrnn:diagonal=true", "laplace:window=10,accumulate=none"),
        ("vrnn", "rnn"),
        ("rnn", "vrnn"),
        ("vrnn:diagonal=true", "vrnn"),
        ("laplace:window=1,accumulate=mu_sigma", "rnn"),
        (
            "laplace:window=1,accumulate=mu_sigma",
            "laplace:window=1,accumulate=sigma",
        ),
    ];
    for (trained, target) in refused {
        let e = p(trained).check_posthoc(&p(target));
        assert!(e.is_err(), "{target} on {trained} should be refused");
        assert!(format!("{:#}", e.unwrap_err()).contains("post hoc"));
    }
    let allowed = [
        ("rnn", "laplace:window=1,accumulate=sigma"),
        ("rnn", "laplace:window=1,accumulate=mu_sigma"),
        ("laplace:window=1,accumulate=sigma", "rnn"),
        ("vrnn", "vrnn:diagonal=true"),
        (
            "laplace:window=1,accumulate=mu_sigma",
            "laplace:window=3,accumulate=mu_sigma,diagonal=true",
        ),
    ];
    for (trained, target) in allowed {
        p(trained).check_posthoc(&p(target)).unwrap();
    }
    // A VRNN config whose eval.posthoc asks for a Laplace posterior is refused when read.
    let mut cfg = config("gridworld", "");
    cfg.model.posterior = p("vrnn");
    cfg.eval.posthoc = vec!["laplace:window=1,accumulate=sigma".into()];
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("eval.posthoc") && e.contains("mean head"), "{e}");
}
