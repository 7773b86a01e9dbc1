//! Recurrent PPO really learns. Gridworld: a small RNN agent trained for a few hundred updates on the
//! gridworld clearly beats the uniformly random policy on 128 held-out tasks (the same tasks the
//! reference policy runs on). The agent sees only what the paper's agent sees (position one-hot,
//! previous action and reward); the goal is never fed to it. Bandit: the RNN and the Laplace Σ
//! agent (acting on its samples, prior scale "auto") reach near-Thompson-sampling regret.

use lvrnn::agent::rl::RlModel;
use lvrnn::config::ExperimentConfig;
use lvrnn::envs::gridworld::Gridworld;
use lvrnn::envs::reference::{GridPolicy, run_grid, task_rng};
use lvrnn::envs::{EnvKind, MetaEnv};
use lvrnn::eval::rl::evaluate_rl;
use lvrnn::run::RunDir;
use lvrnn::stats::mean_ci99;
use lvrnn::train::ppo::Ppo;
use lvrnn::train::{FitOptions, fit};
use std::time::Instant;
mod common;

#[test]
fn rnn_agent_beats_the_random_policy_on_the_gridworld() {
    lvrnn::init_threads(1);
    // Paper Table 1 PPO constants and the RL clipping (element 1, global norm 1); a small model
    // and batch, and a larger learning rate (3e-3) to learn within the test's budget.
    let text = r#"
name = "grid-learning"
task = "gridworld"
seed = 0
[model]
embed_width = 32
hidden = 32
features = 8
head_hidden = [64, 64]
n_z = 1
[model.posterior]
family = "rnn"
[train]
updates = 600
batch = 32
lr = 3e-3
clip_element = 1.0
checkpoint_every = 0
snapshots = []
[eval]
tasks = 128
"#;
    let cfg = ExperimentConfig::from_toml_str(text, "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::open(dir.path(), &cfg.name, false, false).unwrap();
    let mut learner = Ppo::new(&cfg, RlModel::for_experiment(&cfg).unwrap()).unwrap();
    let t0 = Instant::now();
    let summary = fit(&mut learner, &cfg, &run, &FitOptions::default()).unwrap();
    let train_s = t0.elapsed().as_secs_f64();

    let agent = evaluate_rl(
        &learner.model,
        "rnn",
        EnvKind::Gridworld,
        &cfg.eval,
        cfg.env.alpha_test as f32,
    )
    .unwrap();
    // The uniformly random policy on the same held-out tasks (envs::reference).
    let horizon = EnvKind::Gridworld.horizon();
    let traces: Vec<_> = (0..cfg.eval.tasks)
        .map(|i| {
            let mut rng = task_rng(cfg.eval.seed, i);
            let mut env = Gridworld::new(1);
            let obs = env.reset(&mut rng);
            run_grid(GridPolicy::Random, &mut env, &obs, horizon, &mut rng)
        })
        .collect();
    let (random_mean, random_ci) = mean_ci99(
        &traces
            .iter()
            .map(|tr| tr.return_at(horizon))
            .collect::<Vec<_>>(),
    );
    let (random_regret, _) = mean_ci99(
        &traces
            .iter()
            .map(|tr| tr.regret_at(horizon))
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "gridworld, {} updates in {train_s:.1} s (last training return {:.2}): agent return {:.2} ± {:.2}, random {:.2} ± {:.2} (99% CI, {} tasks)",
        summary.updates_done,
        summary.last_metrics["return"],
        agent.return_mean,
        agent.return_ci99,
        random_mean,
        random_ci,
        cfg.eval.tasks
    );
    let margin = 2.0;
    assert!(
        agent.return_mean - agent.return_ci99 > random_mean + random_ci + margin,
        "the agent (return {:.2} ± {:.2}) does not clearly beat the random policy ({random_mean:.2} ± {random_ci:.2})",
        agent.return_mean,
        agent.return_ci99
    );
    // Regret against the oracle is correspondingly lower than the random policy's.
    let agent_regret = agent.rows.last().unwrap().cum_regret_mean;
    assert!(
        agent_regret < random_regret - margin,
        "regret at T: agent {agent_regret:.2}, random {random_regret:.2}"
    );
}

/// `final_regret_mean` of each row of a run's `metrics/eval_rl_returns.csv`, by model label.
fn final_regrets(run: &std::path::Path) -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(run.join("metrics/eval_rl_returns.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "final_regret_mean")
        .unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[col].parse().unwrap())
        })
        .collect()
}

/// The bandit learns for the RNN and for a Bayesian family acting on its samples (Laplace Σ,
/// k_H = 1, with the `"auto"` prior scale): after 400 updates of the small model, the
/// cumulative regret at T = 50 on 128 test tasks (α = 0.3) is within one pull's worth of
/// Thompson sampling on the exact posterior's particle approximation, and under half of the
/// random policy's. (Measured at this budget: regret ≈ 5.2–5.5 for both, Thompson 5.85,
/// random 21.5; `results/bandit-prior`.)
#[test]
fn rnn_and_laplace_agents_learn_the_bandit_to_near_thompson_sampling_regret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = r#"
name = "NAME"
task = "bandit"
seed = 0
[model]
embed_width = 64
hidden = 64
features = 16
head_hidden = [64, 64, 16]
posterior = "POSTERIOR"
[train]
updates = 400
batch = 64
checkpoint_every = 0
snapshots = []
[eval]
tasks = 128
posthoc = []
"#;
    for (name, posterior) in [
        ("rnn", "rnn"),
        (
            "laplace",
            "laplace:window=1,accumulate=sigma,prior_precision=auto",
        ),
    ] {
        let cfg = base.replace("NAME", name).replace("POSTERIOR", posterior);
        std::fs::write(d.join(format!("{name}.toml")), cfg).unwrap();
        let file = format!("{name}.toml");
        let t0 = Instant::now();
        common::lvrnn_ok(&["train", "--config", &file, "--runs", "runs"], d);
        let regrets = final_regrets(&d.join("runs").join(name));
        let agent = regrets
            .iter()
            .find(|(k, _)| !k.starts_with("reference"))
            .map(|(_, v)| *v)
            .unwrap();
        let thompson = regrets["reference: thompson_is"];
        let random = regrets["reference: random"];
        eprintln!(
            "bandit {name}: regret at T {agent:.2} (Thompson {thompson:.2}, random {random:.2}) in {:.0} s",
            t0.elapsed().as_secs_f64()
        );
        assert!(
            agent <= thompson + 1.0 && agent < random / 2.0,
            "{name}: regret {agent:.2} against Thompson {thompson:.2}, random {random:.2}"
        );
    }
}

/// One column of a run's `metrics/eval_rl_returns.csv`, by model label.
fn returns_column(run: &std::path::Path, column: &str) -> std::collections::BTreeMap<String, f64> {
    let text = std::fs::read_to_string(run.join("metrics/eval_rl_returns.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == column).unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[col].parse().unwrap())
        })
        .collect()
}

/// Acting on posterior samples learns the gridworld (issue 26): a Laplace Σ agent with every
/// sampling key at its default (`model.sample_scale` 1, a fresh sample per step, the RL default
/// β = 1e-4) trained 600 updates of a small model returns, on 128 held-out tasks, more than
/// twice the random policy's upper 99% bound at its own lower bound. (Measured: 13.0 ± 3.9
/// on seed 0, 16.3 on seed 1; random 2.6 ± 0.7; the same run at the old β = 1e-2, whose KL
/// collapses the posterior, 3.6 ± 1.2: results/gridworld-samples.)
#[test]
fn an_agent_acting_on_posterior_samples_learns_the_gridworld() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = r#"
name = "grid-sampled"
task = "gridworld"
seed = 0
[model]
embed_width = 32
hidden = 32
features = 8
head_hidden = [64, 64]
posterior = "laplace:window=1,accumulate=sigma,prior_precision=auto"
[train]
updates = 600
batch = 32
lr = 3e-3
checkpoint_every = 0
snapshots = []
[eval]
tasks = 128
posthoc = []
"#;
    std::fs::write(d.join("grid.toml"), cfg).unwrap();
    let t0 = Instant::now();
    common::lvrnn_ok(&["train", "--config", "grid.toml", "--runs", "runs"], d);
    let run = d.join("runs/grid-sampled");
    let stored = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(stored.contains("beta = 0.0001"), "{stored}");
    let (mean, ci) = (
        returns_column(&run, "return_mean"),
        returns_column(&run, "return_ci99"),
    );
    let label = "laplace-sigma-k1-full";
    let random = mean["reference: random"] + ci["reference: random"];
    eprintln!(
        "gridworld, Laplace Σ acting on samples: return {:.2} ± {:.2} (random upper bound {random:.2}) in {:.0} s",
        mean[label],
        ci[label],
        t0.elapsed().as_secs_f64()
    );
    assert!(
        mean[label] - ci[label] > 2.0 * random,
        "acting on samples: return {:.2} ± {:.2}, random up to {random:.2}",
        mean[label],
        ci[label]
    );
}
