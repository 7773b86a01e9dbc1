//! The supervised pipeline end to end: learning for each posterior family, post-hoc Laplace,
//! determinism, resume, divergence handling, finetuning and config validation.

use lvrnn::agent::Model;
use lvrnn::agent::regression::RegressionModel;
use lvrnn::config::ExperimentConfig;
use lvrnn::eval::evaluate_regression;
use lvrnn::nn::Params;
use lvrnn::run::{RunDir, load_checkpoint};
use lvrnn::train::supervised::Supervised;
use lvrnn::train::{FitOptions, Learner, fit, init_from};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// A small but real configuration: trains in seconds on one thread.
fn small_config(name: &str, posterior: &str, updates: usize) -> ExperimentConfig {
    let text = format!(
        r#"
name = "{name}"
task = "regression"
seed = 7
[model]
embed_width = 32
hidden = 32
features = 8
head_hidden = [32, 32]
n_z = 1
[train]
updates = {updates}
batch = 32
seq_len = 50
checkpoint_every = 20
snapshots = [0.5]
[eval]
tasks = 48
points = [0, 1, 5, 10, 20, 50]
grid = 32
samples = 10
"#
    );
    let mut cfg = ExperimentConfig::from_toml_str(&text, "test").unwrap();
    cfg.model.posterior = posterior.parse().unwrap();
    cfg
}

fn train(cfg: &ExperimentConfig, dir: &std::path::Path, opts: FitOptions) -> Supervised {
    let run = RunDir::open(dir, &cfg.name, opts.resume, false).unwrap();
    let model = RegressionModel::new(&cfg.model, cfg.seed).unwrap();
    let mut learner = Supervised {
        model,
        batch: cfg.train.batch,
        points: cfg.train.seq_len,
        beta: cfg.beta(),
    };
    fit(&mut learner, cfg, &run, &opts).unwrap();
    learner
}

fn ce_at(rows: &[lvrnn::eval::EvalRow], points: usize) -> f64 {
    rows.iter().find(|r| r.points == points).unwrap().ce_mean
}

/// Trains `posterior` for a small budget and checks that the predictive CE after 50 points is
/// clearly below the CE of the prior predictive (0 points).
fn learns_to_use_the_context(posterior: &str, updates: usize) {
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config("learn", posterior, updates);
    // A larger step than the paper's 1e-3 so that in-context learning shows within the budget.
    cfg.train.lr = 3e-3;
    cfg.eval.tasks = 96;
    let learner = train(&cfg, dir.path(), FitOptions::default());
    let res = evaluate_regression(&learner.model, posterior, &cfg.eval).unwrap();
    let (ce0, ce50) = (ce_at(&res.rows, 0), ce_at(&res.rows, 50));
    eprintln!("{posterior}: CE(0) = {ce0:.3}, CE(50) = {ce50:.3}");
    // The prior predictive cannot know the function; after 50 points the model must be clearly
    // better.
    assert!(
        ce50 < ce0 - 0.2,
        "{posterior}: CE after 50 points {ce50} is not clearly below the prior's {ce0}"
    );
}

#[test]
fn rnn_learns_to_use_the_context() {
    // 600 updates: at 450 the in-context phase transition of this small model is only half-way
    // on some float orderings (the fast and per-step paths agree to 3e-7 for the first ~100
    // updates, then drift apart chaotically and reach it at different times).
    learns_to_use_the_context("rnn", 600);
}

#[test]
fn vrnn_learns_to_use_the_context() {
    // 900 updates: at 600 the VRNN is only just past the bar (CE(50) 0.93 against CE(0) 1.18
    // at seed 7, and seed 8 misses it, 0.99 against 1.18), so float reorderings that change
    // nothing in the first 100 updates decided the test. At 900 it is 0.80–0.84 against 1.19–1.23
    // with either float ordering seen.
    learns_to_use_the_context("vrnn", 900);
}

#[test]
fn laplace_sum_sigma_learns_to_use_the_context() {
    learns_to_use_the_context("laplace:window=1,accumulate=sigma", 600);
}

#[test]
fn laplace_windowed_diagonal_learns_to_use_the_context() {
    learns_to_use_the_context("laplace:window=3,accumulate=none,diagonal=true", 600);
}

#[test]
fn posthoc_laplace_entropy_decreases_with_observations() {
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("posthoc", "rnn", 60);
    let learner = train(&cfg, dir.path(), FitOptions::default());
    let laplace = learner
        .model
        .with_posterior(&"laplace:window=1,accumulate=sigma".parse().unwrap())
        .unwrap();
    let res = evaluate_regression(&laplace, "posthoc", &cfg.eval).unwrap();
    let ent: Vec<f64> = res.rows.iter().map(|r| r.entropy_mean).collect();
    eprintln!("post-hoc entropies {ent:?}");
    for w in ent.windows(2) {
        assert!(
            w[1] < w[0],
            "entropy must decrease with more observations: {ent:?}"
        );
    }
    // Post hoc means no retraining: the RNN's own predictions are those of the posterior mean.
    let rnn = evaluate_regression(&learner.model, "rnn", &cfg.eval).unwrap();
    assert!(
        rnn.rows.iter().all(|r| r.entropy_mean.is_nan()),
        "a point estimate has no entropy"
    );
}

#[test]
fn tuned_posthoc_prior_is_no_worse_than_the_default_on_test_tasks() {
    // A trained RNN, its post-hoc Laplace posterior (Σ, k_H = 1) with the default Λ_0 = I, and
    // the same posterior with Λ_0 tuned on held-out tasks (other seed than the test tasks).
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config("tune", "rnn", 200);
    cfg.train.lr = 3e-3;
    let learner = train(&cfg, dir.path(), FitOptions::default());
    let spec: lvrnn::posterior::PosteriorConfig =
        "laplace:window=1,accumulate=sigma".parse().unwrap();
    let lvrnn::posterior::PosteriorConfig::Laplace(lc) = &spec else {
        unreachable!()
    };
    let tuned = lvrnn::eval::tune_regression_prior(&learner.model, lc, &cfg.eval, 16).unwrap();
    let mean_ce = |p: &lvrnn::posterior::PosteriorConfig| {
        let m = learner.model.with_posterior(p).unwrap();
        let rows = evaluate_regression(&m, "x", &cfg.eval).unwrap().rows;
        rows.iter().map(|r| r.ce_mean).sum::<f64>() / rows.len() as f64
    };
    let default_ce = mean_ce(&spec);
    let tuned_ce = mean_ce(&lvrnn::posterior::PosteriorConfig::Laplace(
        tuned.config.clone(),
    ));
    eprintln!(
        "held-out test CE: default {default_ce:.4}, tuned ({}) {tuned_ce:.4}",
        tuned.describe()
    );
    assert!(
        tuned_ce <= default_ce,
        "tuned prior {} gives test CE {tuned_ce} > default {default_ce}",
        tuned.describe()
    );
    // The tuning saw every grid value (the configured 1.0 is one of them) and chose the best.
    for v in lvrnn::eval::tune::log_grid() {
        assert!(
            tuned.trials.iter().any(|t| t.prior_precision == v),
            "{v} not tried"
        );
    }
    let best = tuned
        .trials
        .iter()
        .map(|t| t.score)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(tuned.score, best);
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn same_seed_same_numbers_and_bytes() {
    lvrnn::init_threads(1);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = small_config("det", "laplace:window=1,accumulate=sigma", 12);
    train(&cfg, a.path(), FitOptions::default());
    train(&cfg, b.path(), FitOptions::default());
    let (ra, rb) = (
        RunDir::open(a.path(), "det", true, false).unwrap(),
        RunDir::open(b.path(), "det", true, false).unwrap(),
    );
    assert_eq!(read(&ra.train_metrics()), read(&rb.train_metrics()));
    assert_eq!(read(&ra.final_model()), read(&rb.final_model()));
    assert_eq!(read(&ra.latest_checkpoint()), read(&rb.latest_checkpoint()));
}

#[test]
fn interrupted_run_resumes_to_the_same_result() {
    lvrnn::init_threads(1);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = small_config("resume", "vrnn", 30);
    train(&cfg, a.path(), FitOptions::default());
    // Stopped after 13 updates (as an interruption would; the stop writes the resumable checkpoint).
    train(
        &cfg,
        b.path(),
        FitOptions {
            stop_after: Some(13),
            ..Default::default()
        },
    );
    let rb = RunDir::open(b.path(), "resume", true, false).unwrap();
    assert_eq!(load_checkpoint(&rb.latest_checkpoint()).unwrap().update, 13);
    assert!(!rb.final_model().exists());
    // Simulate a crash that wrote metrics past the checkpoint: they must be dropped on resume.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(rb.train_metrics())
            .unwrap();
        writeln!(f, "{{\"update\": 14, \"loss\": 123.0}}").unwrap();
    }
    train(
        &cfg,
        b.path(),
        FitOptions {
            resume: true,
            ..Default::default()
        },
    );
    let ra = RunDir::open(a.path(), "resume", true, false).unwrap();
    assert_eq!(read(&ra.train_metrics()), read(&rb.train_metrics()));
    assert_eq!(read(&ra.final_model()), read(&rb.final_model()));
}

/// A learner whose loss turns NaN at a chosen update.
struct Diverging {
    params: Params,
    w: candle_core::Tensor,
    nan_at: usize,
}

impl Learner for Diverging {
    fn params(&self) -> &Params {
        &self.params
    }
    fn loss(
        &mut self,
        update: usize,
        _rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<(candle_core::Tensor, BTreeMap<String, f64>)> {
        let l = self.w.sqr()?.sum_all()?;
        let l = if update == self.nan_at {
            (l * f64::NAN)?
        } else {
            l
        };
        Ok((l, BTreeMap::new()))
    }
}

#[test]
fn diverging_run_stops_with_a_message_and_keeps_the_last_good_checkpoint() {
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config("nan", "rnn", 10);
    cfg.train.checkpoint_every = 2;
    let run = RunDir::open(dir.path(), "nan", false, false).unwrap();
    // The config's own model parameters (a checkpoint whose tensors do not match its config is
    // refused on load); the loss reads one of them.
    let params = lvrnn::agent::regression::RegressionModel::new(&cfg.model, 0)
        .unwrap()
        .params;
    let w = params.get("core.b").unwrap().as_tensor().clone();
    let mut learner = Diverging {
        params,
        w,
        nan_at: 5,
    };
    let err = fit(&mut learner, &cfg, &run, &FitOptions::default())
        .err()
        .expect("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("diverged at update 6") && msg.contains("latest.safetensors"),
        "{msg}"
    );
    let ck = load_checkpoint(&run.latest_checkpoint()).unwrap();
    assert_eq!(ck.update, 5);
    let w: Vec<f32> = ck.tensors["core.b"].to_vec1().unwrap();
    assert!(w.iter().all(|v| v.is_finite()));
    // Metrics hold exactly the 5 good updates.
    let lines = std::fs::read_to_string(run.train_metrics()).unwrap();
    assert_eq!(lines.lines().count(), 5);
}

#[test]
fn finetuning_loads_shared_weights_and_initialises_new_ones() {
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("pre", "rnn", 4);
    let pre = train(&cfg, dir.path(), FitOptions::default());
    let run = RunDir::open(dir.path(), "pre", true, false).unwrap();
    let snap = run.snapshot(2);
    assert!(snap.exists(), "snapshot at half of training");
    let mut ft = small_config("ft", "vrnn", 4);
    ft.seed = 99;
    let model = RegressionModel::new(&ft.model, ft.seed).unwrap();
    let missing = init_from(&model.params, &run.final_model()).unwrap();
    assert!(
        !missing.is_empty() && missing.iter().all(|m| m.starts_with("vrnn.")),
        "{missing:?}"
    );
    let a: Vec<f32> = pre
        .model
        .params
        .get("core.wh")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = model
        .params
        .get("core.wh")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn invalid_configs_name_the_key_and_allowed_values() {
    let base = "name = \"x\"\ntask = \"regression\"\n";
    let err = |extra: &str| {
        format!(
            "{:#}",
            ExperimentConfig::from_toml_str(&format!("{base}{extra}"), "t.toml").unwrap_err()
        )
    };
    let e = err("[train]\nlearning_rate = 0.1\n");
    assert!(e.contains("learning_rate") && e.contains("lr"), "{e}");
    let e = err("[model.posterior]\nfamily = \"laplace\"\naccumulate = \"both\"\n");
    assert!(e.contains("both") && e.contains("mu_sigma"), "{e}");
    let e = err("[model.posterior]\nfamily = \"gaussian\"\n");
    assert!(
        e.contains("gaussian") && e.contains("laplace") && e.contains("vrnn"),
        "{e}"
    );
    let e = err("[train]\nlr = -1.0\n");
    assert!(e.contains("train.lr"), "{e}");
    let e = format!(
        "{:#}",
        ExperimentConfig::from_toml_str("name = \"x\"\ntask = \"poker\"\n", "t.toml").unwrap_err()
    );
    assert!(
        e.contains("poker") && e.contains("regression") && e.contains("gridworld"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        "laplace:window=ten"
            .parse::<lvrnn::posterior::PosteriorConfig>()
            .unwrap_err()
    );
    assert!(e.contains("window") && e.contains("integer"), "{e}");
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            ExperimentConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
    }
    assert!(
        n >= 8,
        "expected the experiment configs in {}",
        dir.display()
    );
}

#[test]
fn resume_refuses_a_changed_config_but_accepts_a_longer_budget() {
    lvrnn::init_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("budget", "rnn", 4);
    train(&cfg, dir.path(), FitOptions::default());
    let run = RunDir::open(dir.path(), "budget", true, false).unwrap();
    let mut changed = cfg.clone();
    changed.train.lr = 0.1;
    let model = RegressionModel::new(&changed.model, changed.seed).unwrap();
    let mut learner = Supervised {
        model,
        batch: 32,
        points: 50,
        beta: 0.01,
    };
    let err = fit(
        &mut learner,
        &changed,
        &run,
        &FitOptions {
            resume: true,
            ..Default::default()
        },
    )
    .err()
    .expect("must refuse");
    assert!(format!("{err:#}").contains("[train] section"), "{err:#}");
    let mut longer = cfg.clone();
    longer.train.updates = 6;
    let learner = train(
        &longer,
        dir.path(),
        FitOptions {
            resume: true,
            ..Default::default()
        },
    );
    drop(learner);
    assert_eq!(load_checkpoint(&run.final_model()).unwrap().update, 6);
}
