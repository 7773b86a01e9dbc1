//! Writes regression evaluation results: CSV and JSONL tables and the paper-style figures
//! (predictive CE, posterior entropy and consecutive KL against the number of observed points;
//! example predictions ± 2σ against the true function).

use super::fmt;
use crate::eval::calibration::COVERAGE_LEVELS;
use crate::eval::{EvalResult, EvalRow};
use crate::plot::{LinePlot, Series, grid_plot, line_plot};
use crate::util::{write_atomic, write_csv_atomic};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Header of `eval.csv`.
pub const EVAL_HEADER: [&str; 11] = [
    "model",
    "points",
    "ce_mean",
    "ce_ci99",
    "entropy_mean",
    "entropy_ci99",
    "kl_mean",
    "kl_ci99",
    "cover50",
    "cover90",
    "cover99",
];

/// Writes `<metrics>/eval.csv`, `<metrics>/eval.jsonl` and the figures into `figures`;
/// returns the files written.
pub fn write_regression_report(
    results: &[EvalResult],
    metrics: &Path,
    figures: &Path,
    train_cutoff: Option<usize>,
) -> Result<Vec<PathBuf>> {
    let rows: Vec<&EvalRow> = results.iter().flat_map(|r| &r.rows).collect();
    let csv_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model.clone(),
                r.points.to_string(),
                fmt(r.ce_mean),
                fmt(r.ce_ci99),
                fmt(r.entropy_mean),
                fmt(r.entropy_ci99),
                fmt(r.kl_mean),
                fmt(r.kl_ci99),
                fmt(r.cover50),
                fmt(r.cover90),
                fmt(r.cover99),
            ]
        })
        .collect();
    let mut written = vec![];
    let csv = metrics.join("eval.csv");
    write_csv_atomic(&csv, &EVAL_HEADER, &csv_rows)?;
    written.push(csv);
    let jsonl = metrics.join("eval.jsonl");
    let text: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).map(|s| s + "\n"))
        .collect::<Result<String, _>>()?;
    write_atomic(&jsonl, text.as_bytes())?;
    written.push(jsonl);

    let vline = train_cutoff.map(|t| t as f64);
    let metric_plot =
        |title: &str, ylabel: &str, pick: &dyn Fn(&EvalRow) -> (f64, f64), skip_zero: bool| {
            let mut plot = LinePlot::new(title, "observed points", ylabel);
            plot.log_x = true;
            plot.vline = vline;
            for r in results {
                let pts: Vec<&EvalRow> = r
                    .rows
                    .iter()
                    .filter(|row| !(skip_zero && row.points == 0))
                    .collect();
                let (y, h): (Vec<f64>, Vec<f64>) = pts.iter().map(|row| pick(row)).unzip();
                if y.iter().all(|v| v.is_nan()) {
                    continue;
                }
                // log x axis: show "0 points" at x = 0.5.
                let x: Vec<f64> = pts
                    .iter()
                    .map(|row| {
                        if row.points == 0 {
                            0.5
                        } else {
                            row.points as f64
                        }
                    })
                    .collect();
                plot.series
                    .push(Series::new(r.model.clone(), x, y).with_halfwidth(&h));
            }
            plot
        };
    let figs = [
        (
            "ce",
            metric_plot(
                "Predictive cross-entropy (99% CI)",
                "cross-entropy [nats]",
                &|r| (r.ce_mean, r.ce_ci99),
                false,
            ),
        ),
        (
            "entropy",
            metric_plot(
                "Posterior differential entropy (99% CI)",
                "entropy [nats]",
                &|r| (r.entropy_mean, r.entropy_ci99),
                false,
            ),
        ),
        (
            "kl",
            metric_plot(
                "KL(q_t ‖ q_t−1) between consecutive posteriors",
                "KL [nats]",
                &|r| (r.kl_mean, r.kl_ci99),
                true,
            ),
        ),
    ];
    for (name, plot) in figs {
        let stem = figures.join(name);
        line_plot(&stem, &plot)?;
        written.push(stem.with_extension("png"));
    }
    // Calibration: empirical coverage of the central credible intervals, one panel per level,
    // the nominal level dashed.
    let panels: Vec<LinePlot> = COVERAGE_LEVELS
        .iter()
        .enumerate()
        .map(|(i, level)| {
            let mut p = LinePlot::new(
                format!("{:.0}% credible interval", level * 100.0),
                "observed points",
                "coverage of true f(x)",
            );
            p.log_x = true;
            let xs = |rows: &[EvalRow]| -> Vec<f64> {
                rows.iter()
                    .map(|row| (row.points as f64).max(0.5))
                    .collect()
            };
            if let Some(first) = results.first() {
                let x = xs(&first.rows);
                p.series
                    .push(Series::new("nominal", x.clone(), vec![*level; x.len()]).dashed());
            }
            for r in results {
                let y = r
                    .rows
                    .iter()
                    .map(|row| [row.cover50, row.cover90, row.cover99][i])
                    .collect();
                p.series.push(Series::new(r.model.clone(), xs(&r.rows), y));
            }
            p
        })
        .collect();
    let stem = figures.join("coverage");
    grid_plot(
        &stem,
        "Calibration: coverage of the posterior predictive's central intervals",
        &panels,
        3,
    )?;
    written.push(stem.with_extension("png"));
    for r in results {
        if r.examples.is_empty() {
            continue;
        }
        let panels: Vec<LinePlot> = r
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut p = LinePlot::new(
                    format!("task {} ({} points seen)", i + 1, e.obs_x.len()),
                    "x",
                    "y",
                );
                p.series
                    .push(Series::new("true f", e.grid.clone(), e.truth.clone()).dashed());
                let lo: Vec<f64> = e
                    .mean
                    .iter()
                    .zip(&e.std)
                    .map(|(m, s)| m - 2.0 * s)
                    .collect();
                let hi: Vec<f64> = e
                    .mean
                    .iter()
                    .zip(&e.std)
                    .map(|(m, s)| m + 2.0 * s)
                    .collect();
                p.series.push(
                    Series::new("predictive mean ± 2σ", e.grid.clone(), e.mean.clone())
                        .with_band(lo, hi),
                );
                // Observed points as isolated dots (NaN-separated).
                let (mut ox, mut oy) = (vec![], vec![]);
                for (x, y) in e.obs_x.iter().zip(&e.obs_y) {
                    ox.extend([*x, *x]);
                    oy.extend([*y, f64::NAN]);
                }
                p.series.push(Series::new("observed", ox, oy));
                p
            })
            .collect();
        let stem = figures.join(format!("examples-{}", slug(&r.model)));
        grid_plot(
            &stem,
            &format!("{}: posterior predictive", r.model),
            &panels,
            2,
        )?;
        written.push(stem.with_extension("png"));
    }
    Ok(written)
}

/// A file-name-safe version of a model label.
pub fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// A compact text table of CE / entropy / KL / 90%-interval coverage at selected numbers of
/// points.
pub fn format_table(results: &[EvalResult], points: &[usize]) -> String {
    // The model column is as wide as its longest label (a tuned prior's label is long).
    let w = results
        .iter()
        .map(|r| r.model.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut s = format!(
        "{:<w$} {:>6} {:>18} {:>18} {:>18} {:>6}\n",
        "model", "points", "CE", "entropy", "KL", "cov90"
    );
    for r in results {
        for row in r
            .rows
            .iter()
            .filter(|row| points.is_empty() || points.contains(&row.points))
        {
            let cell = |m: f64, h: f64| {
                if m.is_nan() {
                    "-".to_string()
                } else {
                    format!("{m:.3} ± {h:.3}")
                }
            };
            s += &format!(
                "{:<w$} {:>6} {:>18} {:>18} {:>18} {:>6.3}\n",
                r.model,
                row.points,
                cell(row.ce_mean, row.ce_ci99),
                cell(row.entropy_mean, row.entropy_ci99),
                cell(row.kl_mean, row.kl_ci99),
                row.cover90
            );
        }
    }
    s
}
