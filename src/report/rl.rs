//! Writes RL evaluation results: `eval_rl.csv` (per step), `eval_rl_returns.csv` (return and
//! regret, agents and reference policies), the figures (training return, cumulative regret
//! against the references, posterior entropy and KL over time) and the text table; with the
//! scores of the posterior against the exact belief (`eval::belief`), `eval_belief.csv`,
//! `eval_belief_summary.csv` and the figure `exact_belief`.

use super::fmt;
use crate::envs::EnvKind;
use crate::envs::reference::{PARTICLES, default_checkpoints};
use crate::eval::belief::{BeliefRow, BeliefScores};
use crate::eval::rl::{ReferenceCurve, RlEvalResult, RlEvalRow};
use crate::plot::{LinePlot, Series, grid_plot, line_plot};
use crate::util::write_csv_atomic;
use anyhow::Result;
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

/// Header of `eval_belief.csv` on the gridworld.
pub const GRID_BELIEF_HEADER: [&str; 8] = [
    "model",
    "t",
    "entropy_mean",
    "entropy_ci99",
    "exact_entropy_mean",
    "exact_entropy_ci99",
    "entropy_belief_corr_t",
    "entropy_drop_corr_t",
];

/// Header of `eval_belief.csv` on the bandit.
pub const BANDIT_BELIEF_HEADER: [&str; 16] = [
    "model",
    "t",
    "entropy_mean",
    "entropy_ci99",
    "exact_var_mean",
    "exact_var_ci99",
    "ess_mean",
    "ess_ci99",
    "reward_kl_exact_mean",
    "reward_kl_exact_ci99",
    "reward_brier_mean",
    "reward_brier_ci99",
    "reward_brier_exact_mean",
    "reward_brier_exact_ci99",
    "entropy_belief_corr_t",
    "entropy_drop_corr_t",
];

/// Header of `eval_belief_summary.csv` (the reward columns are NaN on the gridworld).
pub const BELIEF_SUMMARY_HEADER: [&str; 8] = [
    "model",
    "entropy_belief_corr",
    "entropy_belief_corr_steps",
    "entropy_drop_corr",
    "entropy_drop_corr_steps",
    "reward_kl_exact_tmean",
    "reward_brier_tmean",
    "reward_brier_exact_tmean",
];

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
    written.extend(write_belief_report(results, metrics, figures)?);
    Ok(written)
}

/// `<metrics>/eval_belief.csv` (per t), `<metrics>/eval_belief_summary.csv` (per model) and the
/// figure `exact_belief`, for the results scored against the exact belief; nothing without.
pub fn write_belief_report(
    results: &[RlEvalResult],
    metrics: &Path,
    figures: &Path,
) -> Result<Vec<PathBuf>> {
    let scored: Vec<(&str, &BeliefScores)> = results
        .iter()
        .filter_map(|r| r.belief.as_ref().map(|b| (r.model.as_str(), b)))
        .collect();
    let Some((_, first)) = scored.first() else {
        return Ok(vec![]);
    };
    let grid = first.kind == EnvKind::Gridworld;
    let pair = |(m, h): (f64, f64)| [fmt(m), fmt(h)];
    let rows: Vec<Vec<String>> = scored
        .iter()
        .flat_map(|(model, b)| b.rows.iter().map(move |r| (model, r)))
        .map(|(model, r)| {
            let mut row = vec![model.to_string(), r.t.to_string()];
            row.extend(pair(r.entropy));
            row.extend(pair(r.exact));
            if !grid {
                row.extend(pair(r.ess));
                row.extend(pair(r.reward_kl));
                row.extend(pair(r.brier));
                row.extend(pair(r.brier_exact));
            }
            row.extend([fmt(r.corr), fmt(r.drop_corr)]);
            row
        })
        .collect();
    let header: &[&str] = if grid {
        &GRID_BELIEF_HEADER
    } else {
        &BANDIT_BELIEF_HEADER
    };
    let mut written = vec![];
    let csv = metrics.join("eval_belief.csv");
    write_csv_atomic(&csv, header, &rows)?;
    written.push(csv);
    let summary: Vec<Vec<String>> = scored
        .iter()
        .map(|(model, b)| {
            vec![
                model.to_string(),
                fmt(b.corr.value),
                b.corr.steps.to_string(),
                fmt(b.drop_corr.value),
                b.drop_corr.steps.to_string(),
                fmt(b.reward_kl),
                fmt(b.brier),
                fmt(b.brier_exact),
            ]
        })
        .collect();
    let csv = metrics.join("eval_belief_summary.csv");
    write_csv_atomic(&csv, &BELIEF_SUMMARY_HEADER, &summary)?;
    written.push(csv);

    // One panel per quantity, a curve per model (99% bands over the test tasks).
    type Pick = fn(&BeliefRow) -> (f64, f64);
    let panel = |title: &str, ylabel: &str, picks: &[(&str, Pick, bool)]| {
        let mut plot = LinePlot::new(title, "interactions t", ylabel);
        for (model, b) in &scored {
            for (suffix, pick, dashed) in picks {
                let (y, h): (Vec<f64>, Vec<f64>) = b.rows.iter().map(pick).unzip();
                let x: Vec<f64> = b.rows.iter().map(|r| r.t as f64).collect();
                if y.iter().all(|v| v.is_nan()) {
                    // Out of the legend, but holding its colour: a model keeps one colour
                    // in every panel.
                    plot.series.push(Series::new("", x, y));
                    continue;
                }
                let mut s = Series::new(format!("{model}{suffix}"), x, y);
                if h.iter().any(|v| v.is_finite()) {
                    s = s.with_halfwidth(&h);
                }
                plot.series.push(if *dashed { s.dashed() } else { s });
            }
        }
        plot
    };
    let corr: [(&str, Pick, bool); 2] = [
        ("", |r| (r.corr, f64::NAN), false),
        (" (drops)", |r| (r.drop_corr, f64::NAN), true),
    ];
    let panels = if grid {
        vec![
            panel(
                "Agent: posterior entropy H[q_t]",
                "entropy [nats]",
                &[("", |r| r.entropy, false)],
            ),
            panel(
                "Exact belief: entropy ln|C_t| of the goal",
                "ln |C_t| [nats]",
                &[("", |r| r.exact, false)],
            ),
            panel(
                "corr over tasks of H[q_t] with ln|C_t|",
                "Pearson r (drops dashed)",
                &corr,
            ),
        ]
    } else {
        vec![
            panel(
                "Reward head vs exact posterior mean",
                "mean Bernoulli KL [nats]",
                &[("", |r| r.reward_kl, false)],
            ),
            panel(
                "Brier score of the pulled arm",
                "Brier (exact mean dashed)",
                &[
                    ("", |r| r.brier, false),
                    (" (exact mean)", |r| r.brier_exact, true),
                ],
            ),
            panel(
                "corr over tasks of H[q_t] with Σ Var[p_k]",
                "Pearson r (drops dashed)",
                &corr,
            ),
            panel(
                "Agent: posterior entropy H[q_t]",
                "entropy [nats]",
                &[("", |r| r.entropy, false)],
            ),
            panel(
                "Exact posterior: total variance Σ_k Var[p_k]",
                "total variance",
                &[("", |r| r.exact, false)],
            ),
            panel(
                "Particles: effective sample size",
                &format!("ESS (of {PARTICLES} particles)"),
                &[("", |r| r.ess, false)],
            ),
        ]
    };
    let panels: Vec<LinePlot> = panels
        .into_iter()
        .filter(|p| p.series.iter().any(|s| !s.name.is_empty()))
        .collect();
    if !panels.is_empty() {
        let stem = figures.join("exact_belief");
        let title = format!(
            "The posterior against the exact belief ({}, 99% CI over test tasks)",
            first.kind
        );
        grid_plot(&stem, &title, &panels, 3)?;
        written.push(stem.with_extension("png"));
    }
    Ok(written)
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
