//! PPO beyond one gradient step per rollout (`ppo.epochs`, `ppo.minibatches`, `ppo.target_kl`,
//! `train.lr_schedule`) and the posterior noise scale (`model.sample_scale`): validation of the
//! keys, and tiny training runs that log what the keys promise.

use lvrnn::agent::rl::RlModel;
use lvrnn::config::ExperimentConfig;
use lvrnn::run::RunDir;
use lvrnn::train::ppo::Ppo;
use lvrnn::train::{FitOptions, fit};

fn config(extra_ppo: &str, extra_train: &str, posterior: &str) -> String {
    format!(
        r#"
name = "epochs"
task = "gridworld"
seed = 2
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
n_z = 2
posterior = "{posterior}"
[train]
updates = 3
batch = 8
checkpoint_every = 0
snapshots = []
{extra_train}
[ppo]
{extra_ppo}
[eval]
tasks = 8
"#
    )
}

fn error(text: &str) -> String {
    format!(
        "{:#}",
        ExperimentConfig::from_toml_str(text, "test").unwrap_err()
    )
}

#[test]
fn invalid_epoch_minibatch_target_kl_schedule_and_sample_scale_values_name_the_key() {
    let e = error(&config("epochs = 0", "", "rnn"));
    assert!(e.contains("ppo.epochs must be a positive integer"), "{e}");
    let e = error(&config("minibatches = 0", "", "rnn"));
    assert!(
        e.contains("ppo.minibatches must be a positive integer"),
        "{e}"
    );
    let e = error(&config("minibatches = 3", "", "rnn"));
    assert!(
        e.contains("ppo.minibatches = 3 must divide train.batch = 8"),
        "{e}"
    );
    let e = error(&config("target_kl = 0.0", "", "rnn"));
    assert!(
        e.contains("ppo.target_kl must be a finite number > 0"),
        "{e}"
    );
    let e = error(&config("target_kl = nan", "", "rnn"));
    assert!(e.contains("ppo.target_kl"), "{e}");
    let e = error(&config("", "lr_schedule = \"cosine\"", "rnn"));
    assert!(
        e.contains("train.lr_schedule = `cosine` is not valid"),
        "{e}"
    );
    assert!(e.contains("constant, linear"), "{e}");
    let e = error(&config("entropy_final = -0.1", "", "rnn"));
    assert!(
        e.contains("ppo.entropy_final must be a finite number >= 0"),
        "{e}"
    );
    let text = config("", "", "vrnn").replace("n_z = 2", "n_z = 2\nsample_scale = 1.5");
    let e = error(&text);
    assert!(e.contains("model.sample_scale must be in [0, 1]"), "{e}");
    let text = config("", "", "vrnn").replace("n_z = 2", "n_z = 2\nsample_warmup = 1.5");
    let e = error(&text);
    assert!(
        e.contains("model.sample_warmup must be a fraction in [0, 1]"),
        "{e}"
    );
}

fn train(text: &str) -> Vec<serde_json::Value> {
    lvrnn::init_threads(1);
    let cfg = ExperimentConfig::from_toml_str(text, "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::open(dir.path(), &cfg.name, false, false).unwrap();
    let mut learner = Ppo::new(&cfg, RlModel::for_experiment(&cfg).unwrap()).unwrap();
    fit(&mut learner, &cfg, &run, &FitOptions::default()).unwrap();
    std::fs::read_to_string(run.train_metrics())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn several_epochs_and_minibatches_take_that_many_steps_and_move_the_policy() {
    for posterior in ["rnn", "vrnn", "laplace:window=1,accumulate=sigma"] {
        let rows = train(&config(
            "epochs = 3\nminibatches = 2",
            "lr = 1e-2",
            posterior,
        ));
        for row in &rows {
            assert_eq!(row["ppo_steps"].as_f64(), Some(6.0), "{posterior}: {row}");
            // The updated policy differs from the rollout's: a positive approximate KL.
            assert!(
                row["approx_kl"].as_f64().unwrap() > 0.0,
                "{posterior}: {row}"
            );
            for key in [
                "explained_variance",
                "clipfrac",
                "grad_norm_raw",
                "clip_element_frac",
                "clip_norm_frac",
            ] {
                assert!(
                    row[key].as_f64().is_some(),
                    "{posterior}: {key} missing in {row}"
                );
            }
            if posterior != "rnn" {
                assert!(
                    row["noise_ratio"].as_f64().unwrap() > 0.0,
                    "{posterior}: {row}"
                );
                assert!(row["kl_term"].as_f64().is_some(), "{posterior}: {row}");
            }
        }
        // Deterministic: the same config and seed give the same numbers.
        let again = train(&config(
            "epochs = 3\nminibatches = 2",
            "lr = 1e-2",
            posterior,
        ));
        assert_eq!(rows, again, "{posterior}: two identical runs differ");
    }
}

#[test]
fn a_tiny_target_kl_stops_after_the_first_epoch_and_linear_lr_decays() {
    let rows = train(&config(
        "epochs = 4\nminibatches = 2\ntarget_kl = 1e-12",
        "lr = 1e-2\nlr_schedule = \"linear\"",
        "rnn",
    ));
    for row in &rows {
        assert_eq!(row["ppo_steps"].as_f64(), Some(2.0), "{row}");
    }
    let lr: Vec<f64> = rows.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    let expect = [1e-2, 1e-2 * 2.0 / 3.0, 1e-2 / 3.0];
    for (a, b) in lr.iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "lr {lr:?}, expected {expect:?}");
    }
}

/// `ppo.entropy_final`: the bonus goes in a straight line from `entropy_scale` (first update)
/// to `entropy_final` (last), is logged per update, and is the one the loss used: the logged
/// loss minus its other parts is −entropy_scale·entropy (the RNN, so no KL term).
#[test]
fn an_annealed_entropy_bonus_is_the_one_each_update_uses() {
    let rows = train(
        &config(
            "entropy_scale = 0.1\nentropy_final = 0.01\nreward_loss_scale = 0.0",
            "",
            "rnn",
        )
        .replace("updates = 3", "updates = 4"),
    );
    let expect = [0.1, 0.07, 0.04, 0.01];
    assert_eq!(rows.len(), expect.len());
    for (row, want) in rows.iter().zip(expect) {
        let scale = row["entropy_scale"].as_f64().unwrap();
        assert!((scale - want).abs() < 1e-12, "{scale} vs {want}");
        let f = |k: &str| row[k].as_f64().unwrap();
        let implied = (f("policy_loss") + f("value_loss") - f("loss")) / f("entropy");
        assert!(
            (implied - want).abs() < 1e-4,
            "the loss used {implied}, the schedule says {want}: {row}"
        );
    }
    // Without the key the bonus is constant and not logged.
    for row in train(&config("entropy_scale = 0.1", "", "rnn")) {
        assert!(row.get("entropy_scale").is_none(), "{row}");
    }
}

#[test]
fn the_paper_default_takes_one_step_and_its_rollout_kl_is_zero_before_the_step() {
    let rows = train(&config("", "", "rnn"));
    for row in &rows {
        assert!(row.get("ppo_steps").is_none(), "{row}");
        assert!(row["approx_kl"].as_f64().unwrap() >= 0.0, "{row}");
    }
}

#[test]
fn acting_on_the_posterior_mean_has_no_sample_noise() {
    for posterior in ["vrnn", "laplace:window=1,accumulate=sigma"] {
        let text = config("", "", posterior).replace("n_z = 2", "n_z = 2\nsample_scale = 0.0");
        for row in train(&text) {
            let r = row["noise_ratio"].as_f64().unwrap();
            assert!(
                r.abs() < 1e-6,
                "{posterior}: ‖z − μ‖/‖μ‖ = {r} with sample_scale = 0"
            );
        }
        for row in train(&config("", "", posterior)) {
            assert!(
                row["noise_ratio"].as_f64().unwrap() > 1e-3,
                "{posterior}: {row}"
            );
        }
    }
}

/// `model.sample_warmup`: the rollouts' noise scale ramps from 0 to `sample_scale` over that
/// fraction of the updates (logged per update as `sample_scale`; the first update's rollout
/// acts on the mean), while the held-out evaluation acts at `sample_scale` throughout: at the
/// first update (the same parameters) it gives the numbers of a run without the warm-up.
#[test]
fn a_sample_warmup_ramps_the_rollout_noise_and_leaves_evaluation_at_full_scale() {
    for posterior in ["vrnn", "laplace:window=1,accumulate=sigma"] {
        let base = config("eval_every = 1", "", posterior).replace("updates = 3", "updates = 4");
        let warm = train(&base.replace("n_z = 2", "n_z = 2\nsample_warmup = 0.5"));
        let expect = [0.0, 0.5, 1.0, 1.0];
        assert_eq!(warm.len(), expect.len());
        for (row, want) in warm.iter().zip(expect) {
            let s = row["sample_scale"].as_f64().unwrap();
            assert!(
                (s - want).abs() < 1e-12,
                "{posterior}: {s} vs {want}: {row}"
            );
            let ratio = row["noise_ratio"].as_f64().unwrap();
            if want == 0.0 {
                assert!(
                    ratio.abs() < 1e-6,
                    "{posterior}: s = 0 but ‖z − μ‖/‖μ‖ = {ratio}"
                );
            } else {
                assert!(ratio > 1e-3, "{posterior}: s = {want} but no noise: {row}");
            }
        }
        let plain = train(&base.replace("n_z = 2", "n_z = 2\nsample_warmup = 0.0"));
        assert!(plain[0].get("sample_scale").is_none(), "{}", plain[0]);
        assert!(plain[0]["noise_ratio"].as_f64().unwrap() > 1e-3);
        for k in ["test_return", "test_regret"] {
            assert_eq!(
                warm[0][k], plain[0][k],
                "{posterior}: {k} at the first update"
            );
        }
        assert_ne!(warm[1]["return"], plain[1]["return"], "{posterior}");
    }
}

#[test]
fn the_sample_scale_schedule_is_a_straight_line_to_the_configured_scale() {
    use lvrnn::agent::ModelConfig;
    let cfg = ModelConfig {
        sample_scale: 0.8,
        sample_warmup: Some(0.25),
        ..ModelConfig::default()
    };
    let at: Vec<f64> = [0, 50, 100, 101, 399]
        .map(|u| cfg.sample_scale_at(u, 400))
        .to_vec();
    for (a, b) in at.iter().zip([0.0, 0.4, 0.8, 0.8, 0.8]) {
        assert!((a - b).abs() < 1e-12, "{at:?}");
    }
    let constant = ModelConfig {
        sample_warmup: Some(0.0),
        ..cfg.clone()
    };
    assert_eq!(constant.sample_scale_at(0, 400), 0.8);
    let mean = ModelConfig {
        sample_scale: 0.0,
        ..cfg
    };
    assert_eq!(mean.sample_scale_at(399, 400), 0.0);
}

/// `train.beta` left out: the task's default (RL 1e-4, regression 1e-2), written into the
/// resolved config so that run folders store the number used; an explicit value is kept.
#[test]
fn the_posterior_kl_weight_defaults_per_task_and_is_stored_resolved() {
    use lvrnn::config::Task;
    let rl = ExperimentConfig::from_toml_str(&config("", "", "vrnn"), "test").unwrap();
    assert_eq!(rl.train.beta, Some(1e-4));
    assert_eq!(Task::Bandit.default_beta(), 1e-4);
    assert!(rl.to_toml().unwrap().contains("beta = 0.0001"));
    let explicit = config("", "beta = 0.01", "vrnn");
    let cfg = ExperimentConfig::from_toml_str(&explicit, "test").unwrap();
    assert_eq!(cfg.beta(), 1e-2);
    let reg = ExperimentConfig::from_toml_str(
        "name = \"r\"\ntask = \"regression\"\n[model.posterior]\nfamily = \"vrnn\"\n",
        "test",
    )
    .unwrap();
    assert_eq!(reg.beta(), 1e-2);
}
