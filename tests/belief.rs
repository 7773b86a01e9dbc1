//! The posterior against the exact belief (issue 26, `eval::belief`, `envs::belief`): the
//! scores' definitions on synthetic posteriors, the gridworld's candidate set on a hand-computed
//! episode, the bandit's particle posterior against the exact finite sum of
//! `common::exact_bandit`, `lvrnn train` / `lvrnn eval` writing the documented tables (post hoc
//! too), and `lvrnn report` aggregating them over seeds with 99% t-intervals (a tiny real run and
//! a fake sweep of known per-seed values).

mod common;

use common::exact_bandit::posterior_moments;
use common::{lvrnn_ok, text};
use lvrnn::agent::rl::{RlModel, Rollout};
use lvrnn::config::ExperimentConfig;
use lvrnn::envs::belief::{GridBelief, bandit_belief_path, grid_belief_entropies};
use lvrnn::envs::gridworld::{self, Gridworld, HORIZON};
use lvrnn::envs::reference::{DirichletParticles, PARTICLES, task_rng};
use lvrnn::envs::{EnvKind, MetaEnv};
use lvrnn::eval::belief::{BeliefAccumulator, BeliefSamples, bernoulli_kl, within_row_corr};
use lvrnn::eval::rl::{evaluate_rl, evaluate_rl_scored};
use lvrnn::report::collect::split_csv;
use lvrnn::report::rl::{BANDIT_BELIEF_HEADER, BELIEF_SUMMARY_HEADER, GRID_BELIEF_HEADER};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Tolerance of exact identities (a correlation of 1, a mean of 1/K).
const EXACT: f64 = 1e-9;
/// Test tasks of the synthetic scores.
const TASKS: usize = 400;

/// ln |C_t| per row t (t = 0..T−1) and task of `tasks` gridworld tasks under a uniformly random
/// policy, as `BeliefAccumulator` computes it from the observations.
fn random_policy_beliefs(tasks: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rows = vec![vec![]; HORIZON];
    for i in 0..tasks {
        let mut rng = task_rng(seed, i);
        let mut env = Gridworld::new(1);
        let mut obs = env.reset(&mut rng);
        let start = env.start(0);
        let mut steps = vec![];
        for _ in 0..HORIZON {
            let from = Gridworld::decode_obs(&obs, gridworld::SIZE, gridworld::SIZE);
            let a = rng.gen_range(0..4);
            let out = env.step(&[a], &mut rng);
            steps.push((from, a, out.reward[0]));
            obs = out.obs;
        }
        let e = grid_belief_entropies(gridworld::SIZE, gridworld::SIZE, start, &steps);
        for (t, row) in rows.iter_mut().enumerate() {
            row.push(e[t]);
        }
    }
    rows
}

fn samples(entropy: Vec<Vec<f64>>, exact: Vec<Vec<f64>>) -> BeliefSamples {
    BeliefSamples {
        entropy,
        exact,
        ..BeliefSamples::default()
    }
}

#[test]
fn a_posterior_whose_entropy_is_the_exact_one_scores_1() {
    let exact = random_policy_beliefs(TASKS, 7);
    // The entropy itself, and an increasing affine function of it (another scale, an offset).
    for (a, b) in [(1.0, 0.0), (3.5, -40.0)] {
        let h: Vec<Vec<f64>> = exact
            .iter()
            .map(|r| r.iter().map(|u| a * u + b).collect())
            .collect();
        let scores = samples(h, exact.clone()).score(EnvKind::Gridworld);
        assert!((scores.corr.value - 1.0).abs() < EXACT, "{:?}", scores.corr);
        assert!(
            (scores.drop_corr.value - 1.0).abs() < EXACT,
            "{:?}",
            scores.drop_corr
        );
        // Row 1 (ln 24 on every task) is undefined and left out; the others are defined
        // while some task is still searching.
        assert!(scores.rows[0].corr.is_nan());
        assert!((scores.rows[0].exact.0 - 24f64.ln()).abs() < EXACT);
        let searching = exact
            .iter()
            .skip(1)
            .filter(|r| r.iter().any(|&u| u > 0.0))
            .count();
        assert_eq!(scores.corr.steps, searching);
        assert!(scores.corr.steps > 50, "{:?}", scores.corr);
    }
    // A decreasing function scores −1.
    let h: Vec<Vec<f64>> = exact
        .iter()
        .map(|r| r.iter().map(|u| -u).collect())
        .collect();
    let scores = samples(h, exact).score(EnvKind::Gridworld);
    assert!((scores.corr.value + 1.0).abs() < EXACT, "{:?}", scores.corr);
}

#[test]
fn an_entropy_that_depends_on_t_only_scores_0() {
    let exact = random_policy_beliefs(TASKS, 8);
    let clock = |t: usize| 12.0 - 0.05 * t as f64;
    // Exactly a clock: the same value on every task at each t.
    let h: Vec<Vec<f64>> = (0..HORIZON).map(|t| vec![clock(t); TASKS]).collect();
    let scores = samples(h, exact.clone()).score(EnvKind::Gridworld);
    assert_eq!(scores.corr.value, 0.0, "{:?}", scores.corr);
    assert_eq!(scores.drop_corr.value, 0.0, "{:?}", scores.drop_corr);
    assert!(scores.corr.steps > 50);
    // A clock plus noise that knows nothing of the task: 0 within the noise. Each defined row's
    // r has sd ≈ 1/√TASKS and the rows' noise is independent, so the mean over ~99 rows has
    // sd ≈ 1/√(TASKS · steps) ≈ 0.005; the bound is 6 of those.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h: Vec<Vec<f64>> = (0..HORIZON)
        .map(|t| {
            (0..TASKS)
                .map(|_| {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    clock(t) + 0.1 * e
                })
                .collect::<Vec<f64>>()
        })
        .collect();
    let scores = samples(h, exact).score(EnvKind::Gridworld);
    let sd = 1.0 / ((TASKS * scores.corr.steps) as f64).sqrt();
    assert!(
        scores.corr.value.abs() < 6.0 * sd,
        "{:?} (sd {sd})",
        scores.corr
    );
}

#[test]
fn undefined_rows_and_point_estimates() {
    // U constant: undefined whatever H does; fewer than 3 finite tasks: undefined.
    assert_eq!(within_row_corr(&[1.0, 2.0, 3.0], &[0.5, 0.5, 0.5]), None);
    assert_eq!(
        within_row_corr(&[1.0, f64::NAN, 3.0], &[0.1, 0.2, 0.3]),
        None
    );
    assert_eq!(
        within_row_corr(&[4.0, 4.0, 4.0], &[0.1, 0.2, 0.3]),
        Some(0.0)
    );
    // A point estimate has no entropy: no row is defined and the score is NaN.
    let exact = random_policy_beliefs(20, 9);
    let h = vec![vec![f64::NAN; 20]; HORIZON];
    let scores = samples(h, exact).score(EnvKind::Gridworld);
    assert!(scores.corr.value.is_nan());
    assert_eq!(scores.corr.steps, 0);
    // Bernoulli KL: 0 at equality, the textbook value elsewhere.
    assert!(bernoulli_kl(0.3, (0.3, 0.7)).abs() < EXACT);
    let kl = 0.3 * (0.3f64 / 0.6).ln() + 0.7 * (0.7f64 / 0.4).ln();
    assert!((bernoulli_kl(0.3, (0.6, 0.4)) - kl).abs() < EXACT);
    assert_eq!(bernoulli_kl(0.0, (0.5, 0.5)), 2f64.ln());
}

/// One hand-computed 20-step task on the 5×5 grid, start (2, 2), goal (4, 4): the candidate
/// count after every step, through a wall bump, revisits, the start, an episode's last
/// (15th) step that enters a new cell and puts the agent back on the start, and the goal.
#[test]
fn the_candidate_count_of_a_hand_computed_gridworld_episode() {
    const UP: usize = 0;
    const DOWN: usize = 1;
    const LEFT: usize = 2;
    const RIGHT: usize = 3;
    let (start, goal) = ((2, 2), (4, 4));
    // (action, |C| after it): a cell entered for the first time removes one candidate.
    let script: [(usize, usize); 20] = [
        (UP, 23),    // (1,2)
        (UP, 22),    // (0,2)
        (UP, 22),    // wall: still (0,2)
        (LEFT, 21),  // (0,1)
        (LEFT, 20),  // (0,0)
        (LEFT, 20),  // wall
        (DOWN, 19),  // (1,0)
        (RIGHT, 18), // (1,1)
        (RIGHT, 18), // (1,2) again
        (DOWN, 18),  // (2,2), the start: never a candidate
        (DOWN, 17),  // (3,2)
        (DOWN, 16),  // (4,2)
        (RIGHT, 15), // (4,3)
        (UP, 14),    // (3,3)
        (RIGHT, 13), // (3,4): the episode's 15th step, then back on the start
        (RIGHT, 12), // (2,3) from the start
        (DOWN, 12),  // (3,3) again
        (RIGHT, 12), // (3,4): entered at step 15, already ruled out
        (DOWN, 1),   // (4,4): the goal, reward 1
        (UP, 1),     // known from now on
    ];
    let mut env = Gridworld::new(1);
    let mut obs = env.set_tasks(&[(start, goal)]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut belief = GridBelief::new(5, 5, start);
    assert_eq!(belief.count(), 24);
    assert!((belief.entropy() - 24f64.ln()).abs() < EXACT);
    let mut steps = vec![];
    for (i, &(action, count)) in script.iter().enumerate() {
        let from = Gridworld::decode_obs(&obs, 5, 5);
        let out = env.step(&[action], &mut rng);
        belief.observe(from, action, out.reward[0]);
        steps.push((from, action, out.reward[0]));
        assert_eq!(belief.count(), count, "after step {}", i + 1);
        assert!(belief.contains(goal));
        obs = out.obs;
        if i + 1 == 15 {
            // The observation after the 15th step is the start, not the cell entered.
            assert_eq!(Gridworld::decode_obs(&obs, 5, 5), start);
        }
    }
    let e = grid_belief_entropies(5, 5, start, &steps);
    assert_eq!(e.len(), 21);
    assert!((e[0] - 24f64.ln()).abs() < EXACT);
    assert!((e[15] - 13f64.ln()).abs() < EXACT);
    assert_eq!(e[19], 0.0);

    // The evaluation's path: the same task as a rollout (s_t the observation the action at t
    // is taken from), row t holding ln |C| after t − 1 steps.
    let cfg = tiny_config("gridworld", "rnn");
    let model = RlModel::for_experiment(&cfg).unwrap();
    let mut env = Gridworld::new(1);
    let mut obs = env.set_tasks(&[(start, goal)]);
    let mut ro = Rollout::default();
    for &(action, _) in &script {
        let out = env.step(&[action], &mut rng);
        ro.obs.push(obs);
        ro.actions.push(vec![action]);
        ro.rewards.push(out.reward.clone());
        ro.posterior_entropy.push(vec![f64::NAN]);
        obs = out.obs;
    }
    let mut acc = BeliefAccumulator::new(EnvKind::Gridworld, 0.3, 0);
    acc.add(&model, &ro).unwrap();
    let got: Vec<f64> = acc.samples().exact.iter().map(|r| r[0]).collect();
    let want: Vec<f64> = std::iter::once(24)
        .chain(script.iter().map(|s| s.1))
        .take(script.len())
        .map(|c| (c as f64).ln())
        .collect();
    assert_eq!(got.len(), want.len());
    for (t, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < EXACT, "row {}: {g} vs {w}", t + 1);
    }
}

#[test]
fn the_finite_sum_is_exact_where_a_closed_form_is_known() {
    // No data: the Dirichlet(α·1) moments, mean 1/K and variance (K − 1)/(K²(Kα + 1)).
    for (alpha, k) in [(0.3, 5usize), (1.0, 3), (0.2, 2)] {
        let (m, v) = posterior_moments(alpha, &vec![0; k], &vec![0; k]);
        let kf = k as f64;
        for (mi, vi) in m.iter().zip(&v) {
            assert!((mi - 1.0 / kf).abs() < EXACT);
            assert!((vi - (kf - 1.0) / (kf * kf * (kf * alpha + 1.0))).abs() < EXACT);
        }
    }
    // K = 2: p_2 = 1 − p_1, so p_1 | data ~ Beta(α + s_1 + f_2, α + f_1 + s_2).
    let alpha = 0.3;
    for (s, f) in [([2, 0], [1, 3]), ([0, 1], [4, 0]), ([3, 2], [2, 2])] {
        let (m, v) = posterior_moments(alpha, &s, &f);
        let (a, b) = (alpha + (s[0] + f[1]) as f64, alpha + (f[0] + s[1]) as f64);
        let beta_mean = a / (a + b);
        let beta_var = a * b / ((a + b).powi(2) * (a + b + 1.0));
        assert!((m[0] - beta_mean).abs() < EXACT, "{s:?} {f:?}: {m:?}");
        assert!((m[1] - (1.0 - beta_mean)).abs() < EXACT);
        assert!((v[0] - beta_var).abs() < EXACT && (v[1] - beta_var).abs() < EXACT);
    }
}

/// The particle posterior the evaluation (and the reference policies) use, along a short
/// history of a 5-armed bandit at α = 0.3, against the exact finite sum: every posterior mean
/// within 5 Monte Carlo standard errors √(Var[p_k | data] / ESS), the total variance within
/// 15%.
#[test]
fn the_bandit_particle_posterior_against_the_exact_one() {
    let alpha = 0.3;
    let pulls = [
        (0, true),
        (0, true),
        (1, false),
        (2, false),
        (0, false),
        (3, true),
        (1, false),
        (4, false),
    ];
    for seed in [0, 1] {
        let prior = DirichletParticles::new(alpha, PARTICLES, &mut ChaCha8Rng::seed_from_u64(seed));
        let path = bandit_belief_path(&prior, &pulls);
        assert_eq!(path.len(), pulls.len() + 1);
        let (mut s, mut f) = ([0usize; 5], [0usize; 5]);
        for (t, b) in path.iter().enumerate() {
            let (mean, var) = posterior_moments(alpha, &s, &f);
            for k in 0..5 {
                let se = (var[k] / b.ess).sqrt();
                assert!(
                    (b.mean[k] - mean[k]).abs() < 5.0 * se,
                    "seed {seed}, after {t} pulls, arm {k}: {} vs exact {} (se {se})",
                    b.mean[k],
                    mean[k]
                );
            }
            let total: f64 = var.iter().sum();
            assert!(
                (b.total_variance - total).abs() < 0.15 * total,
                "after {t} pulls: {} vs {total}",
                b.total_variance
            );
            if t == 0 {
                assert!((b.ess - PARTICLES as f64).abs() < 1e-6);
            }
            if let Some(&(arm, r)) = pulls.get(t) {
                if r {
                    s[arm] += 1;
                } else {
                    f[arm] += 1;
                }
            }
        }
    }
}

fn tiny_config(task: &str, family: &str) -> ExperimentConfig {
    let text = format!(
        r#"
name = "tiny"
task = "{task}"
seed = 2
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[model.posterior]
family = "{family}"
[train]
updates = 2
batch = 8
checkpoint_every = 0
snapshots = []
[eval]
tasks = 24
"#
    );
    ExperimentConfig::from_toml_str(&text, "test").unwrap()
}

/// Scoring changes no number of the evaluation (same tasks, same randomness), and the bandit's
/// scores have their documented ranges: the prior's total variance at row 1, every particle
/// weight equal there, a KL ≥ 0 and Brier scores in [0, 1].
#[test]
fn scoring_leaves_the_evaluation_unchanged_and_fills_the_bandit_columns() {
    let cfg = tiny_config("bandit", "laplace");
    let model = RlModel::for_experiment(&cfg).unwrap();
    let alpha = cfg.env.alpha_test as f32;
    let plain = evaluate_rl(&model, "m", EnvKind::Bandit, &cfg.eval, alpha).unwrap();
    let scored = evaluate_rl_scored(&model, "m", EnvKind::Bandit, &cfg.eval, alpha).unwrap();
    assert!(plain.belief.is_none());
    assert_eq!(plain.return_mean, scored.return_mean);
    for (a, b) in plain.rows.iter().zip(&scored.rows) {
        assert_eq!(
            (a.reward_mean, a.entropy_mean),
            (b.reward_mean, b.entropy_mean)
        );
    }
    let belief = scored.belief.unwrap();
    assert_eq!(belief.rows.len(), EnvKind::Bandit.horizon());
    let k = 5.0;
    let a = alpha as f64;
    let prior_var = (k - 1.0) / (k * (k * a + 1.0));
    let first = &belief.rows[0];
    assert!(
        (first.exact.0 - prior_var).abs() < 0.05 * prior_var,
        "{first:?}"
    );
    // One particle set for every task: the same U on each (a half-width of rounding only).
    assert!(first.exact.1.abs() < EXACT, "{first:?}");
    assert!((first.ess.0 - PARTICLES as f64).abs() < 1e-6);
    assert!(first.corr.is_nan());
    for r in &belief.rows {
        assert!(r.reward_kl.0 >= 0.0, "{r:?}");
        assert!((0.0..=1.0).contains(&r.brier.0) && (0.0..=1.0).contains(&r.brier_exact.0));
        assert!(r.ess.0 >= 1.0 && r.ess.0 <= PARTICLES as f64);
    }
    assert!(belief.reward_kl.is_finite() && belief.corr.value.is_finite());
    assert!(belief.corr.steps > 0 && belief.corr.steps < belief.rows.len());
}

/// `lvrnn eval` on an RNN checkpoint writes the scores for the network's own posterior and for a
/// post-hoc one (the post-hoc row has a correlation, the RNN none), and `lvrnn report` gathers
/// them into its tables and figures.
#[test]
fn eval_writes_the_scores_post_hoc_too_and_report_gathers_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = r#"
name = "tiny-grid"
task = "gridworld"
seed = 1
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[model.posterior]
family = "rnn"
[train]
updates = 2
batch = 8
checkpoint_every = 0
snapshots = []
[eval]
tasks = 16
"#;
    std::fs::write(d.join("g.toml"), toml).unwrap();
    let o = lvrnn_ok(&["train", "--config", "g.toml", "--runs", "runs"], d);
    // A training run's final evaluation writes them.
    assert!(
        d.join("runs/tiny-grid/metrics/eval_belief.csv").is_file(),
        "{}",
        text(&o)
    );
    assert!(d.join("runs/tiny-grid/figures/exact_belief.png").is_file());
    lvrnn_ok(
        &[
            "eval",
            "--checkpoint",
            "runs/tiny-grid/checkpoints/model-final.safetensors",
            "--out",
            "runs/ev",
            "--posterior",
            "laplace:window=1,accumulate=sigma",
        ],
        d,
    );
    let csv = std::fs::read_to_string(d.join("runs/ev/eval_belief.csv")).unwrap();
    assert!(csv.starts_with(
        "model,t,entropy_mean,entropy_ci99,exact_entropy_mean,exact_entropy_ci99,entropy_belief_corr_t,entropy_drop_corr_t\n"
    ));
    // Both models on the same tasks: the same exact belief at row 1 (ln 24).
    assert!(
        csv.contains("\nrnn,1,nan,nan,3.178054,0.000000,nan,nan\n"),
        "{csv}"
    );
    assert!(
        csv.contains("\nlaplace-sigma-k1-full (post-hoc on rnn),1,"),
        "{csv}"
    );
    let summary = std::fs::read_to_string(d.join("runs/ev/eval_belief_summary.csv")).unwrap();
    let rows: Vec<Vec<String>> = summary.lines().skip(1).map(split_csv).collect();
    assert_eq!(rows.len(), 2, "{summary}");
    assert_eq!(rows[0][0], "rnn");
    assert_eq!((rows[0][1].as_str(), rows[0][2].as_str()), ("nan", "0"));
    let corr: f64 = rows[1][1].parse().unwrap();
    let steps: usize = rows[1][2].parse().unwrap();
    assert!((-1.0..=1.0).contains(&corr) && steps > 0, "{summary}");
    assert!(d.join("runs/ev/figures/exact_belief.png").is_file());

    lvrnn_ok(&["report", "runs", "--out", "rep"], d);
    let md = std::fs::read_to_string(d.join("rep/report.md")).unwrap();
    assert!(md.contains("Posterior against the exact belief"), "{md}");
    assert!(md.contains("Exact belief entropy ln |C_t|"), "{md}");
    assert!(md.contains("figures/gridworld-belief.png"), "{md}");
    assert!(d.join("rep/figures/gridworld-belief.png").is_file());
    let sum = std::fs::read_to_string(d.join("rep/summary.csv")).unwrap();
    assert!(sum.contains("entropy_belief_corr"), "{sum}");
}

/// A fake run folder of a sweep: `config.toml`, a 3-step `eval_rl.csv` / `eval_rl_returns.csv`
/// and the belief tables, each model given (U per t, corr per t, summary corr); the other
/// belief columns hold fixed values.
fn fake_scored_run(
    root: &std::path::Path,
    job: &str,
    task: &str,
    seed: u64,
    family: &str,
    models: &[(&str, [f64; 3], [f64; 3], f64)],
) {
    let dir = root.join("runs").join(job);
    std::fs::create_dir_all(dir.join("metrics")).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "name = \"{job}\"\ntask = \"{task}\"\nseed = {seed}\n[model.posterior]\nfamily = \"{family}\"\n[eval]\ntasks = 8\n"
        ),
    )
    .unwrap();
    let grid = task == "gridworld";
    let header = if grid {
        GRID_BELIEF_HEADER.to_vec()
    } else {
        BANDIT_BELIEF_HEADER.to_vec()
    };
    let mut rl = String::from(
        "model,t,reward_mean,reward_ci99,cum_regret_mean,cum_regret_ci99,entropy_mean,entropy_ci99,kl_mean,kl_ci99\n",
    );
    let mut returns =
        String::from("model,return_mean,return_ci99,final_regret_mean,final_regret_ci99\n");
    let mut belief = header.join(",") + "\n";
    let mut summary = BELIEF_SUMMARY_HEADER.join(",") + "\n";
    for (model, u, corr_t, corr) in models {
        for t in 0..3 {
            let h = 10.0 - t as f64;
            rl += &format!("\"{model}\",{},0.1,0.01,0.5,0.01,{h},0.1,0.2,0.01\n", t + 1);
            belief += &format!("\"{model}\",{},{h},0.1,{},0.01,", t + 1, u[t]);
            if !grid {
                belief += "4000,10,0.05,0.01,0.2,0.01,0.19,0.01,";
            }
            belief += &format!("{},nan\n", corr_t[t]);
        }
        returns += &format!("\"{model}\",0.3,0.1,1.5,0.1\n");
        let reward = if grid { "nan,nan,nan" } else { "0.05,0.2,0.19" };
        summary += &format!("\"{model}\",{corr},2,nan,0,{reward}\n");
    }
    std::fs::write(dir.join("metrics/eval_rl.csv"), rl).unwrap();
    std::fs::write(dir.join("metrics/eval_rl_returns.csv"), returns).unwrap();
    std::fs::write(dir.join("metrics/eval_belief.csv"), belief).unwrap();
    std::fs::write(dir.join("metrics/eval_belief_summary.csv"), summary).unwrap();
}

/// t_{0.995, n−1} for n = 2 and 3 seeds (tables; statrs gives the report's).
const T995: [(usize, f64); 2] = [(2, 63.656_741), (3, 9.924_843)];

/// `lvrnn report` over a fake sweep of 3 gridworld seeds and 2 bandit seeds: the belief scores
/// get the mean over seeds and the 99% t-interval over the per-seed values in summary.csv,
/// their tables in report.md, the belief figure and the correlation per family.
#[test]
fn report_aggregates_the_belief_scores_over_seeds_with_99_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sweep = d.join("sweeps/fake");
    let ln24 = 24f64.ln();
    // Per seed: the VRNN's summary correlation 0.2 / 0.4 / 0.6, ln |C| at t = 2 of 3.0 / 3.1 /
    // 2.9; the RNN has no entropy (NaN correlation: no row).
    for (seed, corr, u2) in [(0, 0.2, 3.0), (1, 0.4, 3.1), (2, 0.6, 2.9)] {
        fake_scored_run(
            &sweep,
            &format!("grid-vrnn.seed={seed}"),
            "gridworld",
            seed,
            "vrnn",
            &[("vrnn-diag", [ln24, u2, 2.5], [f64::NAN, corr, corr], corr)],
        );
        fake_scored_run(
            &sweep,
            &format!("grid-rnn.seed={seed}"),
            "gridworld",
            seed,
            "rnn",
            &[("rnn", [ln24, u2, 2.5], [f64::NAN; 3], f64::NAN)],
        );
    }
    for (seed, corr) in [(0, -0.1), (1, 0.3)] {
        fake_scored_run(
            &sweep,
            &format!("bandit.seed={seed}"),
            "bandit",
            seed,
            "vrnn",
            &[(
                "vrnn-diag",
                [0.13, 0.12, 0.11],
                [f64::NAN, corr, corr],
                corr,
            )],
        );
    }
    lvrnn_ok(&["report", "sweeps/fake"], d);
    let out = sweep.join("report");
    let text = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let header = split_csv(lines.next().unwrap());
    let rows: Vec<std::collections::BTreeMap<String, String>> = lines
        .map(|l| header.iter().cloned().zip(split_csv(l)).collect())
        .collect();
    let find = |section: &str, model: &str, metric: &str, x: &str| {
        rows.iter()
            .find(|r| {
                r["section"] == section
                    && r["model"] == model
                    && r["metric"] == metric
                    && r["x"] == x
            })
            .cloned()
    };
    let t995 = |n: usize| T995.iter().find(|(k, _)| *k == n).unwrap().1;
    let check = |r: &std::collections::BTreeMap<String, String>, per_seed: &[f64]| {
        let n = per_seed.len() as f64;
        let mean = per_seed.iter().sum::<f64>() / n;
        let s2 = per_seed.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let h = t995(per_seed.len()) * (s2 / n).sqrt();
        let got = |k: &str| r[k].parse::<f64>().unwrap();
        assert_eq!(r["n_seeds"], per_seed.len().to_string(), "{r:?}");
        assert!((got("mean") - mean).abs() < 1e-6, "{r:?}");
        assert!(
            (got("ci99_halfwidth") - h).abs() < 1e-6 + 1e-4 * h,
            "{r:?} vs {h}"
        );
        assert_eq!(r["interval"], "99% t-interval over seeds");
    };
    // Summary scores at T = 3, per-t scores at their t.
    let corr = find("gridworld", "vrnn-diag", "entropy_belief_corr", "3").expect("corr row");
    check(&corr, &[0.2, 0.4, 0.6]);
    let u = find("gridworld", "vrnn-diag", "exact_entropy", "2").expect("ln |C| row");
    check(&u, &[3.0, 3.1, 2.9]);
    let corr_t = find("gridworld", "vrnn-diag", "entropy_belief_corr_t", "2").unwrap();
    check(&corr_t, &[0.2, 0.4, 0.6]);
    assert!(find("gridworld", "rnn", "entropy_belief_corr", "3").is_none());
    assert!(find("gridworld", "rnn", "exact_entropy", "2").is_some());
    check(
        &find("bandit", "vrnn-diag", "entropy_belief_corr", "3").unwrap(),
        &[-0.1, 0.3],
    );
    check(
        &find("bandit", "vrnn-diag", "reward_kl_exact_tmean", "3").unwrap(),
        &[0.05, 0.05],
    );
    for m in [
        "exact_var",
        "ess",
        "reward_kl_exact",
        "reward_brier",
        "reward_brier_exact",
    ] {
        assert!(find("bandit", "vrnn-diag", m, "1").is_some(), "{m}");
    }

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for title in [
        "**Posterior against the exact belief: correlation over test tasks",
        "**Posterior entropy H[q_t] [nats]",
        "**Exact belief entropy ln |C_t| [nats]**",
    ] {
        assert!(md.contains(title), "{title}\nnot in\n{md}");
    }
    // The gridworld correlation at T: 0.400 ± t_{0.995,2} · 0.2 / √3.
    let h = t995(3) * 0.2 / 3f64.sqrt();
    assert!(md.contains(&format!("| 0.400 ± {h:.3} |")), "{md}");
    assert!(md.contains("**Exact posterior total variance"), "{md}");
    assert!(md.contains("**Effective sample size"), "{md}");
    for fig in [
        "gridworld-belief",
        "bandit-belief",
        "gridworld-provenance-entropy_belief_corr",
        "bandit-provenance-entropy_belief_corr",
    ] {
        assert!(md.contains(&format!("figures/{fig}.png")), "{fig}\n{md}");
        assert!(out.join(format!("figures/{fig}.png")).is_file(), "{fig}");
    }
}

/// Every column of the belief tables is documented in docs/outputs.md, and `lvrnn train` on a
/// bandit (its final evaluation) writes them with the bandit's header.
#[test]
fn the_belief_columns_are_documented_and_written_for_the_bandit() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/outputs.md")).unwrap();
    for col in GRID_BELIEF_HEADER
        .iter()
        .chain(&BANDIT_BELIEF_HEADER)
        .chain(&BELIEF_SUMMARY_HEADER)
    {
        let name = col.trim_end_matches("_mean").trim_end_matches("_ci99");
        assert!(
            docs.contains(&format!("`{name}")),
            "`{name}` not in docs/outputs.md"
        );
    }
    for file in ["eval_belief.csv", "eval_belief_summary.csv", "exact_belief"] {
        assert!(docs.contains(file), "{file} not in docs/outputs.md");
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let toml = r#"
name = "tiny-bandit"
task = "bandit"
seed = 1
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[model.posterior]
family = "vrnn"
[train]
updates = 2
batch = 8
checkpoint_every = 0
snapshots = []
[eval]
tasks = 16
"#;
    std::fs::write(d.join("b.toml"), toml).unwrap();
    lvrnn_ok(&["train", "--config", "b.toml", "--runs", "runs"], d);
    let metrics = d.join("runs/tiny-bandit/metrics");
    let csv = std::fs::read_to_string(metrics.join("eval_belief.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), BANDIT_BELIEF_HEADER.join(","));
    assert_eq!(lines.count(), lvrnn::envs::bandit::HORIZON, "{csv}");
    let summary = std::fs::read_to_string(metrics.join("eval_belief_summary.csv")).unwrap();
    let mut lines = summary.lines();
    assert_eq!(lines.next().unwrap(), BELIEF_SUMMARY_HEADER.join(","));
    let row = split_csv(lines.next().expect("one model"));
    assert_eq!(row.len(), BELIEF_SUMMARY_HEADER.len());
    // A VRNN with a reward head: every score finite.
    for (col, v) in BELIEF_SUMMARY_HEADER.iter().zip(&row).skip(1) {
        assert!(
            v.parse::<f64>().unwrap().is_finite(),
            "{col} = {v}\n{summary}"
        );
    }
    assert!(
        d.join("runs/tiny-bandit/figures/exact_belief.png")
            .is_file()
    );
}
