//! Evaluation of RL agents on held-out tasks (paper Sec. 5.2, Figs. 4, 5, 11, 13, 14): per step
//! t = 1..T, mean and 99% CI over tasks of the reward, the cumulative regret, the posterior's
//! differential entropy and KL(q_t ‖ q_{t−1}), and the return of the whole trajectory; actions
//! are sampled from the policy. The test tasks are exactly those the reference policies of
//! [`crate::envs::reference`] run on (task i drawn from `task_rng(eval.seed, i)`), so the
//! agent's regret curve and the references' are paired.
//!
//! Also the RL halves of `lvrnn train` ([`train_and_eval_rl`]), `lvrnn eval`
//! ([`eval_rl_checkpoint`], post-hoc posteriors included) and a PPO timing ([`bench_ppo`]).

use crate::config::{EvalConfig, ExperimentConfig};
use crate::envs::bandit::{Bandit, NUM_ARMS};
use crate::envs::gridworld::Gridworld;
use crate::envs::reference::{PARTICLES, default_checkpoints, simulate_policies, task_rng};
use crate::envs::{EnvKind, MetaEnv};
use crate::eval::request::{EvalRequest, tuned_label, write_provenance, write_tuning_csv};
use crate::eval::tune::{Tuned, log_grid, tune_prior};
use crate::plot::{LinePlot, Series, line_plot};
use crate::posterior::LaplaceConfig;
use crate::posterior::PosteriorConfig;
use crate::run::load_checkpoint;
use crate::stats::mean_ci99;
use crate::train::ppo::{Ppo, RlModel, env_kind, rollout};
use crate::train::{FitOptions, fit, init_from_reporting, open_run};
use crate::util::{read_jsonl, write_csv_atomic};
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Header of `eval_rl.csv`.
pub const EVAL_RL_HEADER: [&str; 10] = [
    "model",
    "t",
    "reward_mean",
    "reward_ci99",
    "cum_regret_mean",
    "cum_regret_ci99",
    "entropy_mean",
    "entropy_ci99",
    "kl_mean",
    "kl_ci99",
];

/// Header of `eval_rl_returns.csv` (agents and reference policies).
pub const RETURNS_HEADER: [&str; 5] = [
    "model",
    "return_mean",
    "return_ci99",
    "final_regret_mean",
    "final_regret_ci99",
];

/// Tasks rolled out together during evaluation.
const EVAL_CHUNK: usize = 256;

/// One row of the evaluation table: statistics of interaction t (1-based) over the test tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RlEvalRow {
    pub model: String,
    pub t: usize,
    pub reward_mean: f64,
    pub reward_ci99: f64,
    /// Cumulative regret through interaction t.
    pub cum_regret_mean: f64,
    pub cum_regret_ci99: f64,
    /// Entropy of q_t, the posterior the action at t is drawn under (NaN for the RNN).
    pub entropy_mean: f64,
    pub entropy_ci99: f64,
    /// KL(q_t ‖ q_{t−1}) (q_0 the prior at the zero carry; NaN for the RNN).
    pub kl_mean: f64,
    pub kl_ci99: f64,
}

/// An agent's evaluation.
#[derive(Clone, Debug)]
pub struct RlEvalResult {
    pub model: String,
    pub rows: Vec<RlEvalRow>,
    /// Σ_{t ≤ T} r_t: mean and 99% CI half-width over the tasks.
    pub return_mean: f64,
    pub return_ci99: f64,
}

/// A reference policy on the same test tasks.
#[derive(Clone, Debug)]
pub struct ReferenceCurve {
    pub policy: String,
    /// Mean cumulative regret through t = 1..T, and its 99% CI half-width.
    pub cum_regret_mean: Vec<f64>,
    pub cum_regret_ci99: Vec<f64>,
    pub return_mean: f64,
    pub return_ci99: f64,
}

/// `count` test tasks starting at task `first`: task i is the one [`simulate_policies`] draws
/// for i (first thing from `task_rng(seed, i)`). Returns the env and its first observation.
pub fn test_env(
    kind: EnvKind,
    alpha: f32,
    first: usize,
    count: usize,
    seed: u64,
) -> (Box<dyn MetaEnv>, Vec<f32>) {
    match kind {
        EnvKind::Bandit => {
            let probs: Vec<[f64; NUM_ARMS]> = (first..first + count)
                .map(|i| {
                    let mut one = Bandit::new(1, alpha);
                    one.reset(&mut task_rng(seed, i));
                    one.probs()[0]
                })
                .collect();
            let mut env = Bandit::new(count, alpha);
            let obs = env.set_probs(&probs);
            (Box::new(env), obs)
        }
        EnvKind::Gridworld => {
            let tasks: Vec<_> = (first..first + count)
                .map(|i| {
                    let mut one = Gridworld::new(1);
                    one.reset(&mut task_rng(seed, i));
                    (one.start(0), one.goal(0))
                })
                .collect();
            let mut env = Gridworld::new(count);
            let obs = env.set_tasks(&tasks);
            (Box::new(env), obs)
        }
    }
}

/// Evaluates `model` on `eval.tasks` test tasks of `kind` (bandit at `alpha_test`), actions
/// sampled from its policy (the agent's randomness is seeded by `eval.seed` too).
pub fn evaluate_rl(
    model: &RlModel,
    label: &str,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha_test: f32,
) -> Result<RlEvalResult> {
    let mut rng = ChaCha8Rng::seed_from_u64(eval.seed ^ 0xa6e7_5eed);
    let horizon = kind.horizon();
    // Per step t: one value per task.
    let (mut reward, mut cum_regret, mut entropy, mut kl) = (
        vec![vec![]; horizon],
        vec![vec![]; horizon],
        vec![vec![]; horizon],
        vec![vec![]; horizon],
    );
    let mut returns = vec![];
    for first in (0..eval.tasks).step_by(EVAL_CHUNK) {
        let count = EVAL_CHUNK.min(eval.tasks - first);
        let (mut env, obs) = test_env(kind, alpha_test, first, count, eval.seed);
        let ro = rollout(model, env.as_mut(), obs, &mut rng, true)?;
        let mut cum = vec![0f64; count];
        for t in 0..horizon {
            for (c, r) in cum.iter_mut().zip(&ro.regrets[t]) {
                *c += *r as f64;
            }
            reward[t].extend(ro.rewards[t].iter().map(|r| *r as f64));
            cum_regret[t].extend_from_slice(&cum);
            entropy[t].extend_from_slice(&ro.posterior_entropy[t]);
            kl[t].extend_from_slice(&ro.posterior_kl[t]);
        }
        returns.extend(ro.returns());
    }
    let rows = (0..horizon)
        .map(|t| {
            let (reward_mean, reward_ci99) = mean_ci99(&reward[t]);
            let (cum_regret_mean, cum_regret_ci99) = mean_ci99(&cum_regret[t]);
            let (entropy_mean, entropy_ci99) = finite_mean_ci(&entropy[t]);
            let (kl_mean, kl_ci99) = finite_mean_ci(&kl[t]);
            RlEvalRow {
                model: label.to_string(),
                t: t + 1,
                reward_mean,
                reward_ci99,
                cum_regret_mean,
                cum_regret_ci99,
                entropy_mean,
                entropy_ci99,
                kl_mean,
                kl_ci99,
            }
        })
        .collect();
    let (return_mean, return_ci99) = mean_ci99(&returns);
    Ok(RlEvalResult {
        model: label.to_string(),
        rows,
        return_mean,
        return_ci99,
    })
}

/// NaN where undefined (point estimates), else mean and 99% half-width.
fn finite_mean_ci(xs: &[f64]) -> (f64, f64) {
    if xs.iter().any(|x| x.is_nan()) {
        (f64::NAN, f64::NAN)
    } else {
        mean_ci99(xs)
    }
}

/// Every reference policy of `kind` on the same `tasks` test tasks (`alpha` is the bandit's
/// test concentration and the reference policies' prior): the cumulative-regret curves of
/// `envs::reference::reference_curves` plus the return, from one simulation.
pub fn reference_policies(
    kind: EnvKind,
    alpha: f32,
    tasks: usize,
    seed: u64,
) -> Vec<ReferenceCurve> {
    simulate_policies(kind, alpha, tasks, seed, PARTICLES)
        .into_iter()
        .map(|sim| {
            let horizon = sim.traces.first().map_or(0, |tr| tr.regret.len());
            let mut cum = vec![0f64; sim.traces.len()];
            let (mut cum_regret_mean, mut cum_regret_ci99) = (vec![], vec![]);
            for t in 0..horizon {
                for (c, tr) in cum.iter_mut().zip(&sim.traces) {
                    *c += tr.regret[t];
                }
                let (m, h) = mean_ci99(&cum);
                cum_regret_mean.push(m);
                cum_regret_ci99.push(h);
            }
            let (return_mean, return_ci99) = mean_ci99(
                &sim.traces
                    .iter()
                    .map(|tr| tr.return_at(horizon))
                    .collect::<Vec<_>>(),
            );
            ReferenceCurve {
                policy: sim.policy,
                cum_regret_mean,
                cum_regret_ci99,
                return_mean,
                return_ci99,
            }
        })
        .collect()
}

/// Evaluates the model under its own posterior (`own`) and each post-hoc variant.
fn evaluate_variants(
    model: &RlModel,
    cfg: &ExperimentConfig,
    posthoc: &[String],
    with_own: bool,
) -> Result<Vec<RlEvalResult>> {
    let kind = env_kind(cfg.task)?;
    let alpha = cfg.env.alpha_test as f32;
    let own = cfg.model.posterior.label();
    let mut results = vec![];
    if with_own {
        eprintln!(
            "evaluating {own} on {} held-out {kind} tasks …",
            cfg.eval.tasks
        );
        results.push(evaluate_rl(model, &own, kind, &cfg.eval, alpha)?);
    }
    for spec in posthoc {
        let p: PosteriorConfig = spec
            .parse()
            .with_context(|| format!("posterior `{spec}`"))?;
        let label = if p == cfg.model.posterior {
            own.clone()
        } else {
            format!("{} (post-hoc on {own})", p.label())
        };
        eprintln!("evaluating {label} …");
        results.push(evaluate_rl(
            &model.with_posterior(&p)?,
            &label,
            kind,
            &cfg.eval,
            alpha,
        )?);
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------------
// Tables and figures
// ---------------------------------------------------------------------------------------------

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:.6}")
    }
}

/// Writes `<metrics>/eval_rl.csv`, `<metrics>/eval_rl_returns.csv` and the figures
/// `cumulative_regret`, `entropy` and `kl` (the last two only when some model is Bayesian) into
/// `figures`; returns the files written.
pub fn write_rl_report(
    results: &[RlEvalResult],
    refs: &[ReferenceCurve],
    metrics: &Path,
    figures: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    let rows: Vec<Vec<String>> = results
        .iter()
        .flat_map(|r| &r.rows)
        .map(|r| {
            vec![
                r.model.clone(),
                r.t.to_string(),
                fmt(r.reward_mean),
                fmt(r.reward_ci99),
                fmt(r.cum_regret_mean),
                fmt(r.cum_regret_ci99),
                fmt(r.entropy_mean),
                fmt(r.entropy_ci99),
                fmt(r.kl_mean),
                fmt(r.kl_ci99),
            ]
        })
        .collect();
    let csv = metrics.join("eval_rl.csv");
    write_csv_atomic(&csv, &EVAL_RL_HEADER, &rows)?;
    written.push(csv);
    let mut returns: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let last = r.rows.last();
            let (m, h) = last.map_or((f64::NAN, f64::NAN), |l| {
                (l.cum_regret_mean, l.cum_regret_ci99)
            });
            vec![
                r.model.clone(),
                fmt(r.return_mean),
                fmt(r.return_ci99),
                fmt(m),
                fmt(h),
            ]
        })
        .collect();
    for c in refs {
        let m = c.cum_regret_mean.last().copied().unwrap_or(f64::NAN);
        let h = c.cum_regret_ci99.last().copied().unwrap_or(f64::NAN);
        returns.push(vec![
            format!("reference: {}", c.policy),
            fmt(c.return_mean),
            fmt(c.return_ci99),
            fmt(m),
            fmt(h),
        ]);
    }
    let csv = metrics.join("eval_rl_returns.csv");
    write_csv_atomic(&csv, &RETURNS_HEADER, &returns)?;
    written.push(csv);

    // Cumulative regret: agents with 99% bands, reference policies dashed (Figs. 11, 13).
    let mut plot = LinePlot::new(
        "Cumulative regret on held-out tasks (99% CI)",
        "interactions t",
        "cumulative regret",
    );
    for r in results {
        let x: Vec<f64> = r.rows.iter().map(|row| row.t as f64).collect();
        let y: Vec<f64> = r.rows.iter().map(|row| row.cum_regret_mean).collect();
        let h: Vec<f64> = r.rows.iter().map(|row| row.cum_regret_ci99).collect();
        plot.series
            .push(Series::new(r.model.clone(), x, y).with_halfwidth(&h));
    }
    for c in refs {
        let x: Vec<f64> = (1..=c.cum_regret_mean.len()).map(|t| t as f64).collect();
        plot.series
            .push(Series::new(c.policy.clone(), x, c.cum_regret_mean.clone()).dashed());
    }
    let stem = figures.join("cumulative_regret");
    line_plot(&stem, &plot)?;
    written.push(stem.with_extension("png"));

    // Posterior statistics over time (Figs. 4, 14), Bayesian models only.
    type Pick = fn(&RlEvalRow) -> (f64, f64);
    let stats: [(&str, &str, &str, Pick); 2] = [
        (
            "entropy",
            "Posterior differential entropy (99% CI)",
            "entropy [nats]",
            |r| (r.entropy_mean, r.entropy_ci99),
        ),
        (
            "kl",
            "KL(q_t ‖ q_t−1) between consecutive posteriors (99% CI)",
            "KL [nats]",
            |r| (r.kl_mean, r.kl_ci99),
        ),
    ];
    for (name, title, ylabel, pick) in stats {
        let mut plot = LinePlot::new(title, "interactions t", ylabel);
        for r in results {
            let (y, h): (Vec<f64>, Vec<f64>) = r.rows.iter().map(pick).unzip();
            if y.iter().all(|v| v.is_nan()) {
                continue;
            }
            let x: Vec<f64> = r.rows.iter().map(|row| row.t as f64).collect();
            plot.series
                .push(Series::new(r.model.clone(), x, y).with_halfwidth(&h));
        }
        if plot.series.is_empty() {
            continue;
        }
        let stem = figures.join(name);
        line_plot(&stem, &plot)?;
        written.push(stem.with_extension("png"));
    }
    Ok(written)
}

/// The `training_return` figure from `train.jsonl`: the mean return per update, raw and as a
/// trailing moving average over ~2% of the updates, and the held-out `test_return` where
/// logged. None when the log holds no return.
pub fn plot_training_return(train_jsonl: &Path, figures: &Path) -> Result<Option<PathBuf>> {
    if !train_jsonl.exists() {
        return Ok(None);
    }
    let records: Vec<serde_json::Value> = read_jsonl(train_jsonl)?;
    let (x, y): (Vec<f64>, Vec<f64>) = records
        .iter()
        .filter_map(|v| Some((v.get("update")?.as_f64()?, v.get("return")?.as_f64()?)))
        .unzip();
    if x.is_empty() {
        return Ok(None);
    }
    let window = (x.len() / 50).max(1);
    let smooth: Vec<f64> = (0..y.len())
        .map(|i| {
            let lo = (i + 1).saturating_sub(window);
            y[lo..=i].iter().sum::<f64>() / (i + 1 - lo) as f64
        })
        .collect();
    let mut plot = LinePlot::new("Mean return per task during training", "update", "return");
    plot.series.push(Series::new("per update", x.clone(), y));
    plot.series.push(Series::new(
        format!("moving average ({window} updates)"),
        x,
        smooth,
    ));
    // Held-out evaluations (`ppo.eval_every`): the row of update u holds the parameters after
    // u − 1 updates.
    let (tx, ty): (Vec<f64>, Vec<f64>) = records
        .iter()
        .filter_map(|v| {
            Some((
                v.get("update")?.as_f64()? - 1.0,
                v.get("test_return")?.as_f64()?,
            ))
        })
        .unzip();
    if !tx.is_empty() {
        plot.series.push(Series::new("held-out tasks", tx, ty));
    }
    let stem = figures.join("training_return");
    line_plot(&stem, &plot)?;
    Ok(Some(stem.with_extension("png")))
}

/// A short text table: return over the whole trajectory and cumulative regret at the default
/// checkpoints, for agents and reference policies.
pub fn format_rl_table(kind: EnvKind, results: &[RlEvalResult], refs: &[ReferenceCurve]) -> String {
    let checkpoints = default_checkpoints(kind);
    let cell = |m: f64, h: f64| format!("{m:.2} ± {h:.2}");
    let mut lines: Vec<(String, Vec<String>)> = vec![];
    for r in results {
        let mut cells = vec![cell(r.return_mean, r.return_ci99)];
        for t in &checkpoints {
            let row = r.rows.iter().find(|row| row.t == *t);
            cells.push(row.map_or("-".into(), |row| {
                cell(row.cum_regret_mean, row.cum_regret_ci99)
            }));
        }
        lines.push((r.model.clone(), cells));
    }
    for c in refs {
        let mut cells = vec![cell(c.return_mean, c.return_ci99)];
        for t in &checkpoints {
            let m = c.cum_regret_mean.get(t - 1).copied().unwrap_or(f64::NAN);
            let h = c.cum_regret_ci99.get(t - 1).copied().unwrap_or(f64::NAN);
            cells.push(cell(m, h));
        }
        lines.push((format!("reference: {}", c.policy), cells));
    }
    let width = lines
        .iter()
        .map(|(m, _)| m.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!("{:<width$} {:>16}", "model", "return");
    for t in &checkpoints {
        s += &format!(" {:>16}", format!("regret@{t}"));
    }
    s.push('\n');
    for (model, cells) in lines {
        s += &format!("{model:<width$}");
        for c in cells {
            s += &format!(" {c:>16}");
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// `lvrnn train` for bandit and gridworld configs: recurrent PPO, then evaluation of the trained
/// agent (own posterior and `eval.posthoc` variants) against the reference policies. Writes
/// metrics/train.jsonl, metrics/eval_rl.csv, metrics/eval_rl_returns.csv and the figures
/// training_return, cumulative_regret, entropy, kl (PNG + SVG).
pub fn train_and_eval_rl(
    cfg: &ExperimentConfig,
    runs: &Path,
    opts: FitOptions,
    overwrite: bool,
    init: Option<&Path>,
    no_eval: bool,
) -> Result<()> {
    let kind = env_kind(cfg.task)?;
    let run = open_run(cfg, runs, &opts, overwrite)?;
    let model = RlModel::for_experiment(cfg)?;
    init_from_reporting(&model.params, init, &run)?;
    eprintln!(
        "run {} — {} on {kind} ({} parameters), {} PPO updates of {} tasks × {} interactions",
        run.root.display(),
        cfg.model.posterior.label(),
        model.params.num_scalars(),
        cfg.train.updates,
        cfg.train.batch,
        kind.horizon()
    );
    let mut learner = Ppo::new(cfg, model)?;
    let summary = fit(&mut learner, cfg, &run, &opts)?;
    eprintln!(
        "trained {} updates in {:.1} s; final {:?}",
        summary.updates_done, summary.wall_seconds, summary.last_metrics
    );
    let mut files: Vec<PathBuf> = plot_training_return(&run.train_metrics(), &run.figures())?
        .into_iter()
        .collect();
    if !no_eval {
        let results = evaluate_variants(&learner.model, cfg, &cfg.eval.posthoc, true)?;
        eprintln!("running the reference policies on the same tasks …");
        let refs = reference_policies(
            kind,
            cfg.env.alpha_test as f32,
            cfg.eval.tasks,
            cfg.eval.seed,
        );
        files.extend(write_rl_report(
            &results,
            &refs,
            &run.metrics(),
            &run.figures(),
        )?);
        println!("{}", format_rl_table(kind, &results, &refs));
    }
    println!("run folder: {}", run.root.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// Loads an RL checkpoint (any of latest / final / snapshot) as a model and its config.
pub fn load_rl(checkpoint: &Path) -> Result<(RlModel, ExperimentConfig)> {
    let ck = load_checkpoint(checkpoint)?;
    env_kind(ck.config.task).with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    let model = RlModel::for_experiment(&ck.config)?;
    let tensors = ck
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("adam."))
        .collect();
    model.params.load_from(&tensors, true)?;
    Ok((model, ck.config))
}

/// Seed offset of the held-out tuning tasks (never the test tasks of `eval.seed`).
const TUNING_SEED: u64 = 0x7u64 << 40 | 0x7e57;

/// Tunes the prior scales of the post-hoc Laplace posterior `posterior` of `model`
/// ([`crate::eval::tune::tune_prior`]) by the mean return on `tasks` held-out tasks of `kind`
/// (bandit at `alpha`): tasks and agent randomness from another seed than the test tasks.
pub fn tune_rl_prior(
    model: &RlModel,
    posterior: &LaplaceConfig,
    kind: EnvKind,
    eval: &EvalConfig,
    alpha: f32,
    tasks: usize,
) -> Result<Tuned> {
    let held_out = EvalConfig {
        tasks,
        seed: eval.seed ^ TUNING_SEED,
        ..eval.clone()
    };
    tune_prior(posterior, &log_grid(), |c| {
        let m = model.with_posterior(&PosteriorConfig::Laplace(c.clone()))?;
        Ok(-evaluate_rl(&m, "tuning", kind, &held_out, alpha)?.return_mean)
    })
}

/// `lvrnn eval` for RL checkpoints: evaluates every variant of `request` (the checkpoint's own
/// posterior and the post-hoc ones; with `--tune-prior` also each Laplace variant with its prior
/// tuned by held-out return) on the config's test tasks — for a bandit at each `--alpha`
/// (default `env.alpha_test`) — beside the reference policies on the same tasks. Writes into
/// `out` (default `<run>/eval-<checkpoint name>`): eval_rl.csv, eval_rl_returns.csv,
/// prior_tuning.csv, figures/.
pub fn eval_rl_checkpoint(
    checkpoint: &Path,
    request: &EvalRequest,
    out: Option<PathBuf>,
) -> Result<()> {
    let (model, mut cfg) = load_rl(checkpoint)?;
    request
        .apply(&mut cfg)
        .with_context(|| format!("cannot evaluate {}", checkpoint.display()))?;
    let kind = env_kind(cfg.task)?;
    let out = out.unwrap_or_else(|| crate::run::default_eval_dir(checkpoint));
    let alphas: Vec<f64> = if request.alphas.is_empty() {
        vec![cfg.env.alpha_test]
    } else {
        request.alphas.clone()
    };
    // With several test distributions every label names its α.
    let at = |label: &str, alpha: f64| {
        if request.alphas.is_empty() {
            label.to_string()
        } else {
            format!("{label} @ alpha={alpha}")
        }
    };
    let tune_tasks = request.tune_tasks.unwrap_or(256);
    let (mut results, mut refs, mut tunings) = (vec![], vec![], vec![]);
    for (label, p) in request.variants(&cfg.model.posterior) {
        let variant = model.with_posterior(&p)?;
        let mut tuned_variant = None;
        if let (true, PosteriorConfig::Laplace(lc)) = (request.tune_prior, &p) {
            eprintln!(
                "tuning the prior of {label} on {tune_tasks} held-out {kind} tasks (not the test tasks) …"
            );
            let tuned = tune_rl_prior(
                &model,
                lc,
                kind,
                &cfg.eval,
                cfg.env.alpha_test as f32,
                tune_tasks,
            )?;
            eprintln!(
                "  chose {} (mean return {:.3} on the tuning tasks)",
                tuned.describe(),
                -tuned.score
            );
            let m = model.with_posterior(&PosteriorConfig::Laplace(tuned.config.clone()))?;
            tuned_variant = Some((tuned_label(&label, &tuned), m));
            tunings.push((label.clone(), tuned));
        }
        for &alpha in &alphas {
            eprintln!(
                "evaluating {} on {} held-out {kind} tasks …",
                at(&label, alpha),
                cfg.eval.tasks
            );
            results.push(evaluate_rl(
                &variant,
                &at(&label, alpha),
                kind,
                &cfg.eval,
                alpha as f32,
            )?);
            if let Some((tuned_label, m)) = &tuned_variant {
                results.push(evaluate_rl(
                    m,
                    &at(tuned_label, alpha),
                    kind,
                    &cfg.eval,
                    alpha as f32,
                )?);
            }
        }
    }
    for &alpha in &alphas {
        for mut r in reference_policies(kind, alpha as f32, cfg.eval.tasks, cfg.eval.seed) {
            r.policy = at(&r.policy, alpha);
            refs.push(r);
        }
    }
    write_provenance(&out, checkpoint, &cfg)?;
    let figures = out.join("figures");
    let mut files = write_rl_report(&results, &refs, &out, &figures)?;
    if !tunings.is_empty() {
        files.push(write_tuning_csv(&out, "negative mean return", &tunings)?);
    }
    println!("{}", format_rl_table(kind, &results, &refs));
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
